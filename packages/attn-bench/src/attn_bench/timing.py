"""The one timing function, and the device ceilings every row is compared with.

On CUDA: warm-up (compiles), one CUDA-graph capture of the closure, then ``runs`` replays,
each timed by CUDA events with the L2 cache flushed (a buffer twice the L2 size zeroed)
before it, so no provider reads its inputs from a warm L2. Reported: median, p20, p80.
If capture fails the closure is timed eagerly and the row's ``method`` says so.

On CPU (Triton interpreter): plain wall-clock. Those numbers measure the interpreter and
are not performance numbers; every CPU row and summary says so.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CPU_NOTE", "Ceilings", "Timing", "measure", "measure_ceilings"]

CPU_NOTE = "CPU wall-clock through the Triton interpreter: NOT performance numbers"


@dataclass(frozen=True)
class Timing:
    p20_us: float
    p50_us: float
    p80_us: float
    runs: int
    method: str


@dataclass(frozen=True)
class Ceilings:
    copy_gbps: float  # device-to-device copy, bytes read + written per second
    matmul_tflops: float  # bf16 (CPU: fp32) square matmul
    method: str


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summary(times_us: list[float], method: str) -> Timing:
    return Timing(
        p20_us=_quantile(times_us, 0.2),
        p50_us=statistics.median(times_us),
        p80_us=_quantile(times_us, 0.8),
        runs=len(times_us),
        method=method,
    )


_FLUSH: dict[torch.device, torch.Tensor] = {}


def _flush_buffer(device: torch.device) -> torch.Tensor:
    if device not in _FLUSH:
        props = torch.cuda.get_device_properties(device)
        l2 = int(getattr(props, "L2_cache_size", 0) or (64 << 20))
        _FLUSH[device] = torch.empty(max(2 * l2, 128 << 20), dtype=torch.uint8, device=device)
    return _FLUSH[device]


def _capture(fn: Callable[[], Any], device: torch.device) -> tuple[Callable[[], Any], str]:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):  # side-stream warm-up, as torch.cuda.graph asks
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:
        torch.cuda.synchronize(device)
        return fn, f"eager+l2flush (graph capture failed: {type(exc).__name__}: {str(exc)[:80]})"
    return graph.replay, "cuda-graph+l2flush"


def measure(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    runs: int = 100,
    warmup_ms: float = 25.0,
    graph: bool = True,
    flush: bool = True,
) -> Timing:
    """Time ``fn`` (a zero-argument closure doing only the measured work)."""
    if device.type != "cuda":
        fn()  # compile / warm up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
        return _summary(times, "cpu-wallclock (interpreter; not performance)")

    fn()
    torch.cuda.synchronize(device)
    call, method = _capture(fn, device) if graph else (fn, "eager" + ("+l2flush" if flush else ""))
    # Warm-up replays for about warmup_ms (clocks and caches settle).
    t0 = time.perf_counter()
    call()
    torch.cuda.synchronize(device)
    once_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(max(1, min(100, int(warmup_ms / max(once_ms, 1e-3))))):
        call()
    buf = _flush_buffer(device) if flush else None
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    torch.cuda.synchronize(device)
    for i in range(runs):
        if buf is not None:
            buf.zero_()
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends, strict=True)]
    return _summary(times, method)


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
