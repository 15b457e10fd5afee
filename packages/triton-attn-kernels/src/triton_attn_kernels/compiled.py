"""How many kernel variants this process has compiled, per kernel.

Triton compiles one binary per distinct specialisation of a ``@triton.jit`` function: its
``tl.constexpr`` values (the launch configuration and the feature flags), the dtypes of its
tensors, ``num_warps``/``num_stages``, and for integer and pointer arguments whether they
equal 1 or are multiples of 16. A server pays a compile (or an on-disk cache load) for each
one the first time it is launched, so the count after start says what a cold start cost.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

__all__ = ["compiled_keys", "compiled_variants", "kernels"]


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
