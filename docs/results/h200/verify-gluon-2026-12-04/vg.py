"""Verification decode on an H200: the generic decode kernel (the plugin's plan) against the
Gluon decode (same plan, and swept splits / tiles), Llama-3.1-8B geometry, 128-token pages.
`python vg.py verify OUT.csv` or `python vg.py decode OUT.csv` (one-token decode, the plan only).

Written against the tree just before cee3fe7, which renamed what it reaches into:
`_decode_gluon.TILES` (the Gluon decode's tile and ring, now `DecodeConfig(tile_n, num_stages,
gluon=1)`), `_decode_gluon.MIN_ROWS` (now the policy's rule, `tuning.gluon_decode_config`) and
`_decode_gluon.generic_decode()` (now `ServingLimits(hopper_decode=False)`)."""
import csv, sys, math, contextlib
import torch

from triton_attn_kernels import AttentionConfig, paged_attention
from triton_attn_kernels.tuning import ServingLimits, ServingPolicy
from triton_attn_kernels.tuner.timing import measure
from triton_attn_kernels.reference import paged_attention_ref

dev = torch.device("cuda")
QH, KVH, D, BS = 32, 8, 128, 128
POINTS = [(1, 4096), (1, 32768), (16, 4096), (16, 32768), (64, 4096), (64, 32768)]
DECODE = [(b, c) for b in (1, 4, 16, 32, 64, 128, 256) for c in (1024, 4096, 8192, 32768) if b * c <= 1 << 20]


def batch(n, ctx, q):
    pages = -(-ctx // BS)
    nb = n * pages + 4
    k = torch.randn(nb, BS, KVH, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(nb, BS, KVH, D, device=dev, dtype=torch.bfloat16)
    table = torch.randperm(nb, device=dev)[: n * pages].view(n, pages).to(torch.int32).contiguous()
    seq_lens = torch.full((n,), ctx, dtype=torch.int32, device=dev)
    cu = torch.arange(0, (n + 1) * q, q, dtype=torch.int32, device=dev)
    qt = torch.randn(n * q, QH, D, device=dev, dtype=torch.bfloat16)
    return qt, k, v, table, seq_lens, cu


def plan(n, ctx, q):
    lim = ServingLimits(max_num_seqs=max(256, n), max_model_len=ctx, max_num_batched_tokens=8192, cuda_graphs=True,
                        decode_query_len=q, block_size=BS, plain_attention=True)
    pol = ServingPolicy.for_model(num_q_heads=QH, num_kv_heads=KVH, head_dim=D, dtype="bfloat16", kv_dtype="bfloat16",
                                  limits=lim, device=dev)
    return pol.plan(n, q, ctx)


def run(args, q, ctx, cfg, ws, out, ctxman):
    def fn():
        with ctxman():
            return paged_attention(*args, max_seqlen_q=q, max_seqlen_k=ctx, out=out, config=cfg, decode_query_len=q,
                                   workspace=ws)
    return fn


def main():
    import dataclasses
    mode, path = sys.argv[1], sys.argv[2]
    try:
        from triton_attn_kernels import _decode_gluon
        _decode_gluon.MIN_ROWS = 1  # the Gluon decode at every row count here
    except ImportError:  # an older tree: its generic kernel only
        _decode_gluon = None
    rows = []
    cases = [(1, n, c) for n, c in DECODE] if mode == "decode" else [(q, n, c) for q in (2, 4, 8, 16) for n, c in POINTS]
    for q, n, ctx in cases:
        args = batch(n, ctx, q)
        p = plan(n, ctx, q)
        base = p.config.decode
        nbytes = n * ctx * KVH * D * 2 * 2
        variants = [("plan", base, contextlib.nullcontext, None)]
        if mode == "verify" and _decode_gluon is not None:
            variants.insert(0, ("generic", base, _decode_gluon.generic_decode, None))
            fill = max(1, round(132 / (KVH * n)))
            for tiles in ((64, 4), (64, 3), (128, 2), (64, 2)):
                for s in sorted({base.num_splits, fill, 2 * fill, max(1, fill // 2)}):
                    cfg = dataclasses.replace(base, num_splits=min(s, 256))
                    variants.append((f"gluon t{tiles[0]}s{tiles[1]}", cfg, contextlib.nullcontext, tiles))
        ref = None
        for name, dcfg, ctxman, tiles in variants:
            if tiles is not None:
                _decode_gluon.TILES[D] = tiles
            elif _decode_gluon is not None:
                _decode_gluon.TILES[D] = (64, 4)
            numel = n * q * QH * dcfg.num_splits * (D + 1) if dcfg.num_splits > 1 else 1
            ws = torch.empty(numel, dtype=torch.float32, device=dev)
            out = torch.full_like(args[0], float("nan"))
            cfg = AttentionConfig(decode=dcfg)
            fn = run(args, q, ctx, cfg, ws, out, ctxman)
            try:
                fn(); torch.cuda.synchronize()
                if ref is None:
                    ref = paged_attention_ref(*args).float() if n * ctx <= 1 << 18 else None
                err = (out.float() - ref).abs().max().item() if ref is not None else float("nan")
                if torch.isnan(out).any():
                    err = float("inf")
                t = measure(fn, dev, runs=40).p50_us
            except Exception as e:  # report and go on
                print("FAIL", q, n, ctx, name, type(e).__name__, str(e)[:300], flush=True)
                continue
            row = dict(q=q, batch=n, context=ctx, variant=name, splits=dcfg.num_splits, tile=dcfg.tile_n,
                       warps=dcfg.num_warps, stages=dcfg.num_stages, us=round(t, 2), tbps=round(nbytes / t / 1e6, 3),
                       maxerr=f"{err:.3g}")
            rows.append(row)
            print(row, flush=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader(); w.writerows(rows)


if __name__ == "__main__":
    main()
