"""The one place the package's kernels are launched, so that a caller can have the launches
compile their variants instead of running them (:func:`triton_attn_kernels.compiled.compiling`).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["launch_kernel"]

# The list :func:`compiled.compiling` collects into while it is active; None outside it.
COMPILING: ContextVar[list[str] | None] = ContextVar("triton_attn_kernels_compiling", default=None)


def launch_kernel(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``; inside :func:`compiled.compiling`, compile (or load)
    the variant those arguments select and launch nothing."""
    submitted = COMPILING.get()
    if submitted is None:
        kernel[grid](*args, **kwargs)
        return
    # The same binder as a launch: the same specialisation, so the same cache key.
    kernel.warmup(*args, grid=grid, **kwargs)
    submitted.append(getattr(kernel, "fn", kernel).__name__)
