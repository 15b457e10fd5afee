"""The one timing function of the tuner and attn-bench, so that a table wins where the
benchmark looks.

On CUDA: warm-up (compiles), one CUDA-graph capture of the closure (the way vLLM runs
decode), then ``runs`` replays, each timed by CUDA events with the L2 cache flushed (a buffer
twice the L2 size zeroed) before it, so nothing is read from a warm L2. Reported: median,
p20, p80. If capture fails the closure is timed eagerly and ``method`` says so.

On CPU (Triton interpreter): plain wall-clock. Those numbers measure the interpreter and
are not performance numbers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Timing", "measure"]


@dataclass(frozen=True)
class Timing:
    p20_us: float
    p50_us: float
    p80_us: float
    runs: int
    method: str
    pruned: bool = False  # stopped after a short probe: slower than prune_above_us


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _summary(times_us: list[float], method: str, pruned: bool = False) -> Timing:
    return Timing(
        p20_us=_quantile(times_us, 0.2),
        p50_us=statistics.median(times_us),
        p80_us=_quantile(times_us, 0.8),
        runs=len(times_us),
        method=method,
        pruned=pruned,
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
    prune_above_us: float | None = None,
) -> Timing:
    """Time ``fn`` (a zero-argument closure doing only the measured work).

    ``prune_above_us``: time a probe of three runs first and stop there (``pruned``) if its
    median is above this, for a search that only needs to know "clearly slower". On CPU,
    ``warmup_ms=0`` skips the warm-up call (the interpreter compiles nothing)."""
    if device.type != "cuda":
        if warmup_ms > 0:
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
    if prune_above_us is not None:
        probe = _timed_runs(call, device, buf, 3)
        if statistics.median(probe) > prune_above_us:
            return _summary(probe, method, pruned=True)
    return _summary(_timed_runs(call, device, buf, runs), method)


def _timed_runs(call: Callable[[], Any], device: torch.device, buf: torch.Tensor | None, runs: int) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    torch.cuda.synchronize(device)
    for i in range(runs):
        if buf is not None:
            buf.zero_()  # outside the timed span: every run starts from a cold L2
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends, strict=True)]
