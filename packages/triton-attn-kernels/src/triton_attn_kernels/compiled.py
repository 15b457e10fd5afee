"""How many kernel variants this process has compiled, per kernel.

Triton compiles one binary per distinct specialisation of a ``@triton.jit`` function: its
``tl.constexpr`` values (the launch configuration and the feature flags), the dtypes of its
tensors, ``num_warps``/``num_stages``, and for integer and pointer arguments whether they
equal 1 or are multiples of 16. A server pays a compile (or an on-disk cache load) for each
one the first time it is launched, so the count after start says what a cold start cost.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pkgutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _launch

__all__ = ["compiled_keys", "compiled_variants", "compiling", "default_compile_workers", "kernels", "variant_of"]


@functools.cache
def kernels() -> dict[str, Any]:
    """The package's launchable kernels by name: every public ``@triton.jit`` function
    ``NAME_kernel`` of the ``_kernels`` modules (their ``_``-prefixed device functions are
    inlined into them and never compile on their own)."""
    from . import _kernels

    found: dict[str, Any] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(_kernels.__path__)):
        namespace = vars(importlib.import_module(f"{_kernels.__name__}.{module}"))
        for attr, fn in sorted(namespace.items()):
            if attr.endswith("_kernel") and not attr.startswith("_") and hasattr(fn, "add_pre_run_hook"):
                found[attr.removesuffix("_kernel")] = fn
    return found


def _keys(fn: Any) -> list[str]:
    # Triton >= 3.2 (3.6 and 3.9 included): device -> (kernels by key, key cache, target,
    # backend, binder). A compile in flight (async mode) already holds its slot.
    device_caches = getattr(fn, "device_caches", None)
    if device_caches is not None:
        return [str(key) for entry in list(device_caches.values()) for key in list(entry[0])]
    # Older releases: device -> {key: compiled kernel}.
    cache = getattr(fn, "cache", None)
    if isinstance(cache, dict):
        return [str(key) for kernels in cache.values() if isinstance(kernels, dict) for key in list(kernels)]
    # Triton's interpreter (TRITON_INTERPRET=1) runs the Python source and compiles nothing.
    return []


def _exempt(fn: Any) -> tuple[set[str], set[str]]:
    """The arguments ``fn`` does not specialise: on value, and pointers on alignment."""
    options = getattr(fn, "kwargs", None)
    if isinstance(options, dict):  # Triton's interpreter keeps the decorator's options
        return set(options.get("do_not_specialize") or ()), set(options.get("do_not_specialize_on_alignment") or ())
    params = getattr(fn, "params", [])
    return {p.name for p in params if p.do_not_specialize}, {p.name for p in params if p.do_not_specialize_on_alignment}


def variant_of(fn: Any, args: tuple, kwargs: dict[str, Any]) -> tuple:
    """What decides the compiled variant of the launch ``fn[grid](*args, **kwargs)``, as
    Triton's launcher classifies it, computed on the host (no GPU, no compile): each tensor's
    dtype and 16-byte alignment, each integer's class (1, a multiple of 16, other; 64-bit
    where it needs it), each tensor descriptor's dtype and block, and the keyword arguments
    (constexprs and compile options), minus what the kernel exempts. Two launches with equal
    results share a variant."""
    plain, unaligned = _exempt(fn)
    out: list[tuple[Any, ...]] = []
    for name, value in zip(fn.arg_names, args, strict=False):
        if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
            out.append((name, str(value.dtype), name in unaligned or value.data_ptr() % 16 == 0))
        elif hasattr(value, "block_shape"):  # a host-side tensor descriptor
            out.append((name, str(value.base.dtype), tuple(value.block_shape)))
        elif isinstance(value, int) and not isinstance(value, bool):
            wide = not -(2**31) <= value < 2**31
            cls = None if name in plain else 1 if value == 1 else 16 if value % 16 == 0 else 0
            out.append((name, wide, cls))
        else:
            out.append((name, type(value).__name__))
    return (*out, *sorted((k, str(v)) for k, v in kwargs.items()))


def compiled_variants() -> dict[str, int]:
    """Compiled variants per kernel in this process, over all devices, e.g.
    ``{"attention": 9, "merge": 4, "merge_states": 0, "prefill_tma": 0, "write_kv": 1}``.

    Counts what Triton holds in memory: a variant loaded from the on-disk cache counts like
    one compiled here. Under Triton's interpreter nothing is compiled and every count is 0.
    Reads Triton's dictionaries only: cheap enough to call at any time.
    """
    return {name: len(_keys(fn)) for name, fn in kernels().items()}


def compiled_keys() -> dict[str, list[str]]:
    """Each kernel's compiled variants as Triton's cache keys (the specialisation of every
    argument, then the compile options), for telling which argument made a new variant:
    compare a key taken after some work with the ones taken before it."""
    return {name: _keys(fn) for name, fn in kernels().items()}


def default_compile_workers() -> int:
    """The CPUs this process may run on (its affinity mask, which a container's CPU set
    narrows), at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


@contextlib.contextmanager
def compiling(*, workers: int | None = None) -> Iterator[list[str]]:
    """Inside, every launch of this package's kernels compiles the variant it would run (or
    loads it from Triton's on-disk cache) and launches nothing; leaving waits until every one
    is in memory, so the same launches made afterwards run at once. Yields the names of the
    kernels submitted, one per launch.

    With ``workers`` > 1 (default: :func:`default_compile_workers`) the compiles run side by side on
    a thread pool through Triton's asynchronous compile mode: its compiler spends most of a
    compile outside Python's lock (MLIR and LLVM passes, ``ptxas``), so a dozen variants take
    little longer than the slowest. A compile that fails here is dropped silently: the real
    launch compiles it again and reports (or recovers from) the failure where it happens.

    For warming caches only: the launchers still check their arguments and prepare their
    launches on the host, but nothing is written to any output.
    """
    if _launch.COMPILING.get() is not None:
        raise RuntimeError("compiling() is already active")
    submitted: list[str] = []
    token = _launch.COMPILING.set(submitted)
    try:
        with _compile_pool(workers if workers is not None else default_compile_workers()):
            yield submitted
    finally:
        _launch.COMPILING.reset(token)


@contextlib.contextmanager
def _compile_pool(workers: int) -> Iterator[None]:
    try:
        from triton.runtime import _async_compile as mode
    except ImportError:  # a Triton without it compiles each variant in turn
        mode = None
    if workers <= 1 or mode is None or mode.active_mode.get() is not None:
        yield
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="triton-attn-compile") as pool:
        with mode.AsyncCompileMode(pool, ignore_errors=True):
            yield
