"""Where decode time goes at small batch: per-kernel device durations (torch.profiler)
beside the CUDA-graph replay time, for a few configurations."""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "packages/triton-attn-kernels/tests")
sys.path.insert(0, "tools/gpu")
from batches import paged_batch
from probe_kernels import bench, prefill

from triton_attn_kernels import (
    AttentionConfig,
    DecodeConfig,
    PrefillConfig,
    decode_workspace_numel,
    paged_attention,
)


def kernel_times(fn):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" or "kernel" in e.key:
            out[e.key[:28]] = round(e.device_time / max(e.count, 1), 1) if hasattr(e, "device_time") else None
    return out


if __name__ == "__main__":
    torch.manual_seed(0)
    # (1, 1024) and (1, 4096): the contexts of the e2e latency workload (500 in, 4096 out).
    for batch, ctx in [(1, 1024), (1, 4096), (1, 8192), (1, 32768), (16, 8192)]:
        b = paged_batch(
            [1] * batch,
            [ctx] * batch,
            num_q_heads=32,
            num_kv_heads=8,
            head_dim=128,
            dtype=torch.bfloat16,
            spare_blocks=0,
        )
        out = torch.empty_like(b.q)
        for tile_n, splits, warps, stages in [
            (128, 1, 4, 2),
            (128, 16, 4, 2),
            (128, 33, 4, 2),
            (64, 33, 4, 3),
            (128, 33, 4, 4),
            (256, 33, 4, 2),
            (128, 66, 4, 2),
            (64, 66, 2, 2),
        ]:
            if batch > 1 and splits > 8:
                splits //= 8
            cfg = AttentionConfig(
                decode=DecodeConfig(tile_n=tile_n, num_splits=splits, num_warps=warps, num_stages=stages)
            )
            ws = torch.empty(max(decode_workspace_numel(batch, 32, 128, splits), 1), device="cuda")

            def fn(b=b, out=out, ws=ws, cfg=cfg):
                return paged_attention(*b.args(), **b.lens(), out=out, workspace=ws, config=cfg)

            t = bench(fn)
            gb = 2 * batch * ctx * 8 * 128 * 2 / 1e9
            print(
                f"b={batch} ctx={ctx} {cfg.decode}: graph {t:.1f} us ({gb / (t * 1e-6):.0f} GB/s) kernels {kernel_times(fn)}"
            )
    empty = torch.empty(1, device="cuda")
    print("graph of one tiny kernel:", round(bench(lambda: empty.add_(1)), 1), "us")
    for batch, length in [(1, 2048), (1, 8192), (4, 4096), (16, 1024), (1, 32768)]:
        for pc in [
            PrefillConfig(block_m=128, tile_n=64, num_warps=4, num_stages=3),
            PrefillConfig(block_m=128, tile_n=64, num_warps=8, num_stages=2),
            PrefillConfig(block_m=128, tile_n=128, num_warps=8, num_stages=3),
        ]:
            t, tf, tfs = prefill(batch, length, pc)
            print(f"prefill b={batch} L={length} {pc}: {t:.0f} us {tf:.0f} TFLOP/s (sdpa {tfs:.0f})")
