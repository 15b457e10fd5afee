"""Compile candidate configs in worker processes while the main process times others.

Compiling dominates a tuning run (one Triton compile per distinct tile/split/warp/stage
combination, seconds each, on one CPU core), so workers launch each candidate once on a small
problem of the same geometry and dtypes. That fills Triton's on-disk cache, and when the main
process reaches the config its own launch loads the compiled kernel instead of compiling it.
The small problem keeps every specialised launch argument the same as on the grid's shapes
(strides, and a block table whose width is a multiple of 16), so the cache key matches. If
anything goes wrong here the tuner only loses the head start: it compiles in-process as before.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import time
from typing import Any

import torch

from .space import GEOMETRIES, Shape

__all__ = ["Precompiler"]

# 256 keys = 16 pages of 16: a block-table row width divisible by 16, like every grid shape.
_SMALL_CONTEXT = 256
_cases: dict[tuple, Any] = {}


def _compile(kernel: str, geometry: str, dtype: str, kv_dtype: str, block_size: int, config: Any) -> str | None:
    """Worker: launch ``config`` once on a small problem; None on success, else the error."""
    from .bench import AttentionCase, KVWriteCase

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    k = (kernel, geometry, dtype, kv_dtype, block_size)
    if k not in _cases:
        geom, dt, kvdt = GEOMETRIES[geometry], getattr(torch, dtype), getattr(torch, kv_dtype)
        if kernel == "kv_write":
            _cases[k] = KVWriteCase(geom, Shape(1, 16, 16), dt, kvdt, block_size, device)
        else:
            q_len = 1 if kernel == "decode" else 64
            _cases[k] = AttentionCase(kernel, geom, Shape(2, _SMALL_CONTEXT, q_len), dt, kvdt, block_size, device)
    try:
        _cases[k].launcher(config)()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {e}"


class Precompiler:
    def __init__(
        self, jobs: int, kernel: str, geometry: str, dtype: torch.dtype, kv_dtype: torch.dtype, block_size: int
    ):
        self._args = (kernel, geometry, str(dtype).removeprefix("torch."), str(kv_dtype).removeprefix("torch."))
        self._block_size = block_size
        self._futures: dict[Any, cf.Future] = {}
        self._pool: cf.ProcessPoolExecutor | None = None
        if jobs > 0:
            # spawn: a forked child would inherit the parent's CUDA context, which CUDA forbids.
            self._pool = cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, configs: list[Any]) -> None:
        if self._pool is None:
            return
        try:
            for c in configs:
                if c not in self._futures:
                    self._futures[c] = self._pool.submit(_compile, *self._args, self._block_size, c)
        except Exception:  # a broken pool: carry on without it
            self.close()

    def wait(self, configs: list[Any], timeout_s: float = 120.0) -> None:
        """Block until the workers are done with ``configs`` (so the main process does not
        compile them a second time), or until ``timeout_s``."""
        futures = [self._futures[c] for c in configs if c in self._futures]
        if not futures:
            return
        deadline = time.monotonic() + timeout_s
        cf.wait(futures, timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
