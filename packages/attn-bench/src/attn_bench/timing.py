"""Timing (the tuner's own :func:`triton_attn_kernels.tuner.timing.measure`, so that a
table wins where the benchmark looks) and the device ceilings every row is compared with.

On CUDA: warm-up, one CUDA-graph capture of the closure, then replays timed by CUDA events
with the L2 cache flushed before each. On CPU (Triton interpreter): plain wall-clock; those
numbers measure the interpreter and are not performance numbers; every CPU row and summary
says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from triton_attn_kernels.tuner.timing import Timing, measure

__all__ = ["CPU_NOTE", "Ceilings", "Timing", "measure", "measure_ceilings"]

CPU_NOTE = "CPU wall-clock through the Triton interpreter: NOT performance numbers"


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float  # device-to-device copy, bytes read + written per second
    matmul_tflops: float  # bf16 (CPU: fp32) square matmul
    method: str


def _copy_gbps(device: torch.device, n: int, runs: int) -> float:
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, runs=runs, graph=False, flush=False).p50_us
    return 2 * n / (t * 1e-6) / 1e9


def _matmul_tflops(device: torch.device, m: int, dtype: torch.dtype, runs: int) -> float:
    a = torch.randn(m, m, dtype=dtype, device=device)
    b = torch.randn(m, m, dtype=dtype, device=device)
    t = measure(lambda: a @ b, device, runs=runs, graph=False, flush=False).p50_us
    return 2 * m**3 / (t * 1e-6) / 1e12


def measure_ceilings(device: torch.device) -> Ceilings:
    """Device copy bandwidth and matmul throughput, measured now (not datasheet values)."""
    if device.type != "cuda":
        return Ceilings(
            _copy_gbps(device, 1 << 24, 5), _matmul_tflops(device, 512, torch.float32, 5), "cpu (not a GPU ceiling)"
        )
    return Ceilings(
        _copy_gbps(device, 1 << 30, 30),
        _matmul_tflops(device, 8192, torch.bfloat16, 30),
        "1 GiB copy_ (read + write bytes); 8192^3 bf16 matmul; medians of 30",
    )
