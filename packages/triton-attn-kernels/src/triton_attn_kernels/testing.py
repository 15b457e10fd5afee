"""How close a kernel's output must be to :mod:`triton_attn_kernels.reference`.

One table, used by this package's tests, the offline tuner, attn-bench's output check and
the GPU fuzzer, so that "correct" means the same thing everywhere::

    from triton_attn_kernels.testing import tolerance

    tol = tolerance(torch.bfloat16)            # Tolerance(atol=0.03, rtol=0.03)
    torch.testing.assert_close(out.float(), ref, **tol.kwargs())
    ok = tol.allows(out, ref)                  # elementwise; NaN never passes

Big batches are checked on a sample, the same way everywhere: :func:`paged_rows_ref` gives the
reference for a window of query rows of one sequence of a paged batch (cheap at any context
length) and :func:`compare` judges a kernel's rows against it::

    ref = paged_rows_ref(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, seq=3, rows=(0, 8))
    result = compare(out[cu[3] : cu[3] + 8], ref, tol)   # result.ok, result.max_err, result.failure

The reference computes in fp32. Attention outputs are convex combinations of the rows of V,
so with V drawn from N(0, 1) they are O(1) and an absolute bound is meaningful next to the
relative one. The fast kernels round P to the query dtype before P @ V and round the output
once more: bf16 keeps 8 significant bits (a rounding is worth up to 2^-9 relative), fp16 11
(2^-12), so the bounds below are a few such roundings of values of magnitude up to ~3.
fp32 runs use IEEE dots; its bound covers the different order of summation.

Over long contexts the outputs are averages of many rows of V and shrink towards 0 (about
``sqrt(e / n)`` for n keys and random scores), so a fixed absolute bound would let a wrong
result through there (a zero output passes ``atol`` 0.03 at 32k keys). :func:`compare`
therefore scales the absolute part by the window's largest reference value where that is
below 1, and bounds the window's relative error norm as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from .reference import paged_attention_ref

__all__ = ["Comparison", "Tolerance", "compare", "paged_rows_ref", "tolerance"]


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


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` found: ``failure`` is None when the rows pass, else why not."""

    max_err: float
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def compare(got: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> Comparison:
    """Judge a kernel's output rows ``got`` against their fp32 reference ``ref``.

    Passing needs all three: every value finite (NaN marks a row the kernel did not write),
    ``|got - ref| <= atol * min(1, peak) + rtol * |ref|`` elementwise with ``peak`` the
    largest ``|ref|``, and ``||got - ref|| <= rtol * ||ref||`` over the rows."""
    if got.shape != ref.shape:
        return Comparison(float("inf"), f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
    if got.numel() == 0:
        return Comparison(0.0)
    g, r = got.float(), ref.float()
    if not bool(torch.isfinite(g).all()):
        n = int((~torch.isfinite(g)).sum())
        return Comparison(float("nan"), f"{n} non-finite values (a row left unwritten, or overflow)")
    err = (g - r).abs()
    max_err = err.max().item()
    peak = r.abs().max().item()
    atol = tol.atol * min(1.0, max(peak, 1e-3))
    bad = ~(err <= atol + tol.rtol * r.abs())
    rel = ((g - r).norm() / r.norm().clamp_min(1e-12)).item()
    if bool(bad.any()):
        return Comparison(
            max_err,
            f"{int(bad.sum())} of {bad.numel()} values beyond {atol:.3g} + {tol.rtol:.3g} * |ref| "
            f"(max abs error {max_err:.3g}, largest |ref| {peak:.3g})",
        )
    if not rel <= tol.rtol:
        return Comparison(max_err, f"relative error {rel:.3g} above {tol.rtol:.3g}")
    return Comparison(max_err)


def paged_rows_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    seq: int,
    rows: tuple[int, int],
    causal: bool = True,
    **features: Any,
) -> torch.Tensor:
    """fp32 reference of query rows ``rows = (lo, hi)`` (counted within sequence ``seq``'s
    chunk) of a :func:`triton_attn_kernels.paged_attention` batch, computed without the
    rest of the batch: [hi - lo, num_q_heads, head_dim_v] (v_cache's head size).

    Queries are the last tokens of their sequence (bottom-right alignment), so causal rows
    ``lo..hi-1`` attend exactly as they would as the last rows of the context cut after row
    ``hi - 1``; the reference only sees that prefix. Rows that see keys after them
    (``causal=False``, or a ``window_size`` reaching right) must end the chunk (``hi`` equal
    to its length) for the context to stay whole. ``features`` are the other keyword
    arguments of :func:`triton_attn_kernels.reference.paged_attention_ref`."""
    cu = cu_seqlens_q[seq : seq + 2].tolist()
    q_len, seq_len = cu[1] - cu[0], int(seq_lens[seq].item())
    lo, hi = rows
    if not 0 <= lo <= hi <= q_len:
        raise ValueError(f"rows must lie within sequence {seq}'s {q_len} query rows, got {rows}")
    window = features.get("window_size")
    sees_right = not causal or (window is not None and window[1] != 0)
    if sees_right and hi != q_len:
        raise ValueError(f"rows {rows}: rows that see later keys must end the chunk (hi == {q_len})")
    ctx = seq_len - q_len + hi
    device = q.device
    return cast(
        torch.Tensor,
        paged_attention_ref(
            q[cu[0] + lo : cu[0] + hi],
            k_cache,
            v_cache,
            block_table[seq : seq + 1],
            torch.tensor([ctx], dtype=torch.int32, device=device),
            torch.tensor([0, hi - lo], dtype=torch.int32, device=device),
            causal=causal,
            **features,
        ),
    )
