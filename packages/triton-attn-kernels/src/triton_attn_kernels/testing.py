"""How close a kernel's output must be to :mod:`triton_attn_kernels.reference`.

One table, used by this package's tests, the offline tuner, attn-bench's output check and
the GPU fuzzer, so that "correct" means the same thing everywhere::

    from triton_attn_kernels.testing import tolerance

    tol = tolerance(torch.bfloat16)            # Tolerance(atol=0.03, rtol=0.03)
    torch.testing.assert_close(out.float(), ref, **tol.kwargs())
    ok = tol.allows(out, ref)                  # elementwise; NaN never passes

The reference computes in fp32. Attention outputs are convex combinations of the rows of V,
so with V drawn from N(0, 1) they are O(1) and an absolute bound is meaningful next to the
relative one. The fast kernels round P to the query dtype before P @ V and round the output
once more: bf16 keeps 8 significant bits (a rounding is worth up to 2^-9 relative), fp16 11
(2^-12), so the bounds below are a few such roundings of values of magnitude up to ~3.
fp32 runs use IEEE dots; its bound covers the different order of summation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Tolerance", "tolerance"]


@dataclass(frozen=True)
class Tolerance:
    """``|got - ref| <= atol + rtol * |ref|`` elementwise, as :func:`torch.isclose`."""

    atol: float
    rtol: float

    def kwargs(self) -> dict[str, float]:
        """``atol`` and ``rtol`` as keyword arguments of :func:`torch.testing.assert_close`."""
        return {"atol": self.atol, "rtol": self.rtol}

    def allows(self, got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: where ``got`` (any float dtype) is within bounds of ``ref``. NaN or
        infinity in ``got`` is never within bounds."""
        diff = (got.float() - ref.float()).abs()
        return diff <= self.atol + self.rtol * ref.float().abs()

    def scaled(self, factor: float) -> Tolerance:
        """Both bounds multiplied by ``factor``."""
        return Tolerance(self.atol * factor, self.rtol * factor)


_TABLE = {
    torch.float32: Tolerance(atol=2e-4, rtol=2e-4),
    torch.float16: Tolerance(atol=4e-3, rtol=4e-3),
    torch.bfloat16: Tolerance(atol=3e-2, rtol=3e-2),
}


def tolerance(dtype: torch.dtype | str) -> Tolerance:
    """The tolerance for outputs computed with queries of ``dtype`` (``torch.bfloat16`` or
    its name, ``"bfloat16"``). An fp8 KV cache adds nothing: the reference dequantises it the
    same way. Raises ``ValueError`` for a dtype the kernels do not compute in."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)  # type: ignore[assignment]
    if not isinstance(dtype, torch.dtype) or dtype not in _TABLE:
        names = ", ".join(str(d).removeprefix("torch.") for d in _TABLE)
        raise ValueError(f"dtype must be one of {names}, got {dtype!r}")
    return _TABLE[dtype]
