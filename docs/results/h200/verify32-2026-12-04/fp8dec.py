"""Experiment: three inner-loop shapes of an fp8-KV decode (not product code).
MODE 0: q fp16, K and V fp8 -> fp16 in registers, both as wgmma B (today's kernel's shape).
MODE 1: q quantised to e4m3, QK^T as an fp8 MMA on K straight from shared memory; V as MODE 0.
MODE 2: K as the A operand (S^T = K Q^T), converted in registers; V as MODE 0.
KV_FP8=False: the bf16 baseline (MODE 0 without conversions)."""

import sys
from pathlib import Path

import triton
import triton.language as tl


@triton.jit
def dec(
    q_ptr,
    k_ptr,
    v_ptr,
    o_ptr,
    bt_ptr,
    n_tiles,
    stride_bt,
    scale,
    MODE: tl.constexpr,
    KV_FP8: tl.constexpr,
    TILE_N: tl.constexpr,
    HD: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    H: tl.constexpr,
):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    d = tl.arange(0, HD)
    n = tl.arange(0, TILE_N)
    row_ok = rows < GROUP
    q = tl.load(
        q_ptr + (seq * H * GROUP + h * GROUP + rows)[:, None] * HD + d[None, :], mask=row_ok[:, None], other=0.0
    )
    qs = scale * 1.4426950408889634
    if MODE == 1:
        q8 = (q.to(tl.float32) * qs).to(tl.float8e4nv)
    else:
        q16 = (q.to(tl.float32) * qs).to(tl.float16 if KV_FP8 else q.dtype)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HD], tl.float32)
    tok_stride = H * HD
    for t in range(0, n_tiles):
        page = tl.load(bt_ptr + seq * stride_bt + t).to(tl.int64)
        base = page * (TILE_N * tok_stride) + h * HD
        if MODE == 2:
            kt = tl.load(k_ptr + base + n[:, None] * tok_stride + d[None, :]).to(tl.float16)
            s = tl.trans(tl.dot(kt, tl.trans(q16)))
        else:
            k = tl.load(k_ptr + base + n[None, :] * tok_stride + d[:, None])
            if MODE == 1:
                s = tl.dot(q8, k)
            elif KV_FP8:
                s = tl.dot(q16, k.to(tl.float16))
            else:
                s = tl.dot(q16, k)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        m_i = m_new
        v = tl.load(v_ptr + base + n[:, None] * tok_stride + d[None, :])
        if KV_FP8:
            acc += tl.dot(p.to(tl.float16), v.to(tl.float16))
        else:
            acc += tl.dot(p.to(v.dtype), v)
    out = acc / l_i[:, None]
    tl.store(
        o_ptr + (seq * H * GROUP + h * GROUP + rows)[:, None] * HD + d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=row_ok[:, None],
    )


VARIANTS = {"bf16": (0, False), "fp8-f16": (0, True), "fp8-qk8": (1, True), "fp8-kA": (2, True)}


def static():
    sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "tools"))
    import sm90_report as R
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for name, (mode, fp8) in VARIANTS.items():
        kv = "fp8e4nv" if fp8 else "bf16"
        sig = {
            "q_ptr": "*bf16",
            "k_ptr": f"*{kv}",
            "v_ptr": f"*{kv}",
            "o_ptr": "*bf16",
            "bt_ptr": "*i32",
            "n_tiles": "i32",
            "stride_bt": "i32",
            "scale": "fp32",
        }
        cx = dict(MODE=mode, KV_FP8=fp8, TILE_N=128, HD=128, GROUP=4, BLOCK_M=16, H=8)
        for k in cx:
            sig[k] = "constexpr"
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(7)}
        for warps, stages in ((4, 2), (8, 2), (4, 3)):
            try:
                src = ASTSource(
                    fn=dec, signature=sig, constexprs={(dec.arg_names.index(k),): v for k, v in cx.items()}, attrs=attrs
                )
                kern = triton.compile(
                    src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages}
                )
            except Exception as e:
                print(name, warps, stages, "FAIL", str(e).splitlines()[0][:150])
                continue
            ops = R.sass_ops(kern)
            loops = R.sass_loops(kern)
            print(
                f"{name:8s} w{warps} s{stages} {R.report(kern)} LDS {ops['LDS']} LDSM {ops['LDSM']} STS {ops['STS']} F2FP {ops['F2FP']} HGMMA {ops['HGMMA']} LDGSTS {ops['LDGSTS']}"
                f" loops {[(lp.get('mma'), lp.get('local')) for lp in loops]}"
            )


def timed():
    import torch

    torch.manual_seed(0)
    B, H, G, HD, T, CTX = 64, 8, 4, 128, 128, 8192
    tiles = CTX // T
    nb = B * tiles
    q = torch.randn(B, H * G, HD, device="cuda", dtype=torch.bfloat16)
    kb = torch.randn(nb, T, H, HD, device="cuda", dtype=torch.bfloat16)
    vb = torch.randn(nb, T, H, HD, device="cuda", dtype=torch.bfloat16)
    k8, v8 = kb.to(torch.float8_e4m3fn), vb.to(torch.float8_e4m3fn)
    bt = torch.randperm(nb, device="cuda", dtype=torch.int32).view(B, tiles)
    ref_k, ref_v = k8.float(), v8.float()
    # fp32 reference over the fp8 cache, per (seq, head)
    kk = ref_k[bt.long()].view(B, CTX, H, HD).transpose(1, 2)  # B H CTX HD
    vv = ref_v[bt.long()].view(B, CTX, H, HD).transpose(1, 2)
    qq = q.float().view(B, H, G, HD)
    sc = HD**-0.5
    ref = torch.softmax(qq @ kk.transpose(-1, -2) * sc, -1) @ vv
    ref = ref.reshape(B, H * G, HD)
    gbytes_fp8 = 2 * nb * T * H * HD / 1e9
    for name, (mode, fp8) in VARIANTS.items():
        for warps, stages in ((4, 2), (8, 2), (4, 3)):
            o = torch.full_like(q, float("nan"))
            k, v = (k8, v8) if fp8 else (kb, vb)

            def fn(k=k, v=v, o=o, mode=mode, fp8=fp8, warps=warps, stages=stages):
                dec[(B, H)](q, k, v, o, bt, tiles, bt.stride(0), sc, MODE=mode, KV_FP8=fp8, TILE_N=T, HD=HD,
                            GROUP=G, BLOCK_M=16, H=H, num_warps=warps, num_stages=stages)  # fmt: skip

            try:
                fn()
                torch.cuda.synchronize()
            except Exception as e:
                print(name, warps, stages, "FAIL", str(e).splitlines()[0][:120])
                continue
            if fp8:
                err = (o.float() - ref).abs().max().item()
            else:
                err = float("nan")
            ms = triton.testing.do_bench_cudagraph(fn, rep=200)
            gb = gbytes_fp8 * (1 if fp8 else 2)
            print(
                f"{name:8s} w{warps} s{stages} {ms * 1e3:8.1f} us  {gb / ms * 1e3:6.0f} GB/s  max err vs fp32 {err:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    if sys.argv[1:] == ["static"]:
        static()
    else:
        timed()
