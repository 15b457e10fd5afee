"""Quick H100 probe of our kernels against torch SDPA / the copy ceiling: not the
benchmark (attn-bench is), a sanity check of speed while developing."""

import sys

import torch

sys.path.insert(0, "packages/triton-attn-kernels/tests")
from batches import paged_batch

from triton_attn_kernels import (
    AttentionConfig,
    DecodeConfig,
    PrefillConfig,
    decode_workspace_numel,
    paged_attention,
)
from triton_attn_kernels.attention import _problem
from triton_attn_kernels.tuning import select_decode_config


def bench(fn, iters=50):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(5):
        g.replay()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(True), torch.cuda.Event(True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2] * 1e3  # us


def copy_ceiling():
    x = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x), 10)
    return 2 * x.numel() * 2 / (t * 1e-6) / 1e9


def decode(batch, ctx, kv=None, cfg=None):
    b = paged_batch(
        [1] * batch,
        [ctx] * batch,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
        dtype=torch.bfloat16,
        kv_dtype=kv,
        spare_blocks=0,
    )
    p = _problem(b.q, batch, 8, b.k_cache.dtype, 1, ctx)
    dc = cfg or select_decode_config(p)
    ws = torch.empty(max(decode_workspace_numel(batch, 32, 128, dc.num_splits), 1), device="cuda")
    out = torch.empty_like(b.q)
    c = AttentionConfig(decode=dc)
    t = bench(lambda: paged_attention(*b.args(), **b.lens(), out=out, workspace=ws, config=c))
    gb = 2 * batch * ctx * 8 * 128 * b.k_cache.element_size() / 1e9
    return t, gb / (t * 1e-6), dc


def prefill(batch, length, cfg=None):
    b = paged_batch(
        [length] * batch,
        [length] * batch,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
        dtype=torch.bfloat16,
        spare_blocks=0,
    )
    out = torch.empty_like(b.q)
    c = AttentionConfig(prefill=cfg)
    t = bench(lambda: paged_attention(*b.args(), **b.lens(), out=out, config=c), 20)
    fl = 4 * batch * 32 * 128 * length * length / 2
    q = b.q.view(batch, length, 32, 128).transpose(1, 2)
    k = torch.randn(batch, 8, length, 128, device="cuda", dtype=torch.bfloat16)
    ts = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True), 20)
    return t, fl / (t * 1e-6) / 1e12, fl / (ts * 1e-6) / 1e12


if __name__ == "__main__":
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), "copy ceiling GB/s", round(copy_ceiling()))
    for batch, ctx in [(1, 8192), (1, 32768), (16, 8192), (32, 32768), (64, 1024), (64, 8192), (256, 2048)]:
        base = decode(batch, ctx)
        print(f"decode b={batch} ctx={ctx}: {base[0]:.1f} us {base[1]:.0f} GB/s {base[2]}")
        for tile_n, mult, warps, stages in [
            (128, 1, 4, 2),
            (128, 2, 4, 3),
            (64, 2, 4, 3),
            (128, 1, 8, 3),
            (256, 1, 8, 2),
        ]:
            sp = max(1, base[2].num_splits * mult)
            t, bw, dc = decode(
                batch, ctx, cfg=DecodeConfig(tile_n=tile_n, num_splits=sp, num_warps=warps, num_stages=stages)
            )
            print(f"   {t:.1f} us {bw:.0f} GB/s {dc}")
    for tile_n, warps, stages in [(64, 4, 2), (128, 4, 2), (128, 8, 3), (256, 8, 2)]:
        t, bw, dc = decode(
            64,
            8192,
            kv=torch.float8_e4m3fn,
            cfg=DecodeConfig(tile_n=tile_n, num_splits=1, num_warps=warps, num_stages=stages),
        )
        print(f"decode fp8 b=64 ctx=8192: {t:.1f} us {bw:.0f} GB/s {dc}")
    for batch, length in [(1, 2048), (1, 8192), (16, 1024)]:
        for pc in [
            None,
            PrefillConfig(block_m=64, tile_n=64, num_warps=4, num_stages=3),
            PrefillConfig(block_m=128, tile_n=64, num_warps=4, num_stages=3),
            PrefillConfig(block_m=128, tile_n=64, num_warps=8, num_stages=3),
            PrefillConfig(block_m=64, tile_n=128, num_warps=4, num_stages=2),
            PrefillConfig(block_m=128, tile_n=32, num_warps=4, num_stages=4),
        ]:
            t, tf, tfs = prefill(batch, length, pc)
            print(f"prefill b={batch} L={length} {pc}: {t:.0f} us {tf:.0f} TFLOP/s (sdpa {tfs:.0f})")
