"""Where write_kv_cache's fp8 output and write_kv_cache_ref part ways on the GPU (fuzz_gpu found
e5m2 mismatches): per input dtype, fp8 format and scale, the number of differing elements and
the first few with their input, the exact quotient and both results; the reference run on the
GPU and on the CPU. Usage: PYTHONPATH=packages/triton-attn-kernels/src python3 tools/gpu/probe_fp8_write.py"""

import torch

from triton_attn_kernels import write_kv_cache
from triton_attn_kernels.reference import write_kv_cache_ref

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def case(dtype, fp8, scale, dev=DEV):
    torch.manual_seed(0)
    n, h, d, bs = 64, 8, 128, 16
    x = torch.randn(n, h, d, device=dev) * torch.exp2(torch.randint(-20, 4, (n, h, d), device=dev).float())
    x = x.to(dtype)
    slots = torch.arange(n, device=dev) * bs  # one block per token
    caches = [torch.zeros(n, bs, h, d, device=dev, dtype=fp8) for _ in range(2)]
    write_kv_cache(x, x, caches[0], caches[1], slots, k_scale=scale, v_scale=scale)
    got = caches[0][:, 0].float()
    refs = {}
    for where in (dev, "cpu"):
        r = torch.zeros(n, bs, h, d, device=where, dtype=fp8)
        sc = scale.to(where) if isinstance(scale, torch.Tensor) else scale
        write_kv_cache_ref(x.to(where), x.to(where), r, r.clone(), slots.to(where), k_scale=sc, v_scale=sc)
        refs[where] = r[:, 0].float().to(dev)
    s32 = (
        float(torch.tensor(float(scale), dtype=torch.float32)) if not isinstance(scale, torch.Tensor) else float(scale)
    )
    q = (x.double() / s32).float()
    line = f"{dtype!s:15} {fp8!s:20} scale {float(scale):.3f}"
    for where, ref in refs.items():
        bad = (got != ref) & ~(got.isnan() & ref.isnan())
        line += f" | vs ref on {where}: {int(bad.sum())} of {bad.numel()} differ"
    print(line)
    bad = (got != refs[dev]).nonzero()[:6]
    for i in bad.tolist():
        t = tuple(i)
        print(
            f"    x={x[t].item():.8e} x/s={q[t].item():.8e} ours={got[t].item():.8e} "
            f"ref_gpu={refs[dev][t].item():.8e} ref_cpu={refs['cpu'][t].item():.8e}"
        )


if __name__ == "__main__":
    for dtype in (torch.float16, torch.bfloat16):
        for fp8 in (torch.float8_e4m3fn, torch.float8_e5m2):
            for scale in (1.0, 0.3, torch.tensor(0.7, device=DEV)):
                case(dtype, fp8, scale)
