"""Host side of the Hopper prefill (``_kernels/prefill_tma.py``): whether a launch qualifies,
the 2-D views and tensor descriptors it needs, and the launch.

The rule (documented in docs/kernels.md): ``PrefillConfig(tma=1)``, a paged cache whose page
size ``tile_n`` divides, a power-of-two head size shared by Q, K and V, no window, softcap,
ALiBi or sinks, fp16 / bf16 queries (fp8 caches included), Q with heads and dims contiguous,
16-byte aligned rows and bases; and a GPU of compute capability 9.x (or Triton's interpreter,
for the tests).
Anything else runs the generic kernel with the same config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ._device import interpreting


@dataclass(frozen=True)
class CacheRows:
    """A paged cache [num_blocks, block_size, num_kv_heads, head_dim] (any strides with a
    unit innermost one) as a 2-D row view: the row of (page, kv head, slot) is
    ``page * rows_per_block + head * rows_per_head + slot``, its first column
    ``head * cols_per_head``."""

    rows: int
    cols: int
    row_stride: int
    rows_per_block: int
    rows_per_head: int
    cols_per_head: int


def cache_rows(cache: torch.Tensor) -> CacheRows | None:
    num_blocks, _, num_kv_heads, head_dim = cache.shape
    sb, st, sh, sd = cache.stride()
    if sd != 1 or st < head_dim or sb % st:
        return None
    if sh % st == 0:  # HND-like: each head's slots are rows of their own
        return CacheRows(num_blocks * (sb // st), head_dim, st, sb // st, sh // st, 0)
    if (num_kv_heads - 1) * sh + head_dim <= st:  # NHD-like: heads side by side in a row
        return CacheRows(num_blocks * (sb // st), (num_kv_heads - 1) * sh + head_dim, st, sb // st, 0, sh)
    return None


@functools.cache
def warp_specialize() -> bool:
    """Whether to ask Triton to warp-specialise the key loop: on Triton 3.6 (vLLM 0.26's pin)
    its sm_90 pass partitions the loop (``nox -s sm90`` checks it does); Triton 3.9's pass
    fails on it at 2+ stages, so there the loop is only software-pipelined."""
    import triton

    return triton.__version__.startswith("3.6.")


@functools.cache
def _hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def _aligned(t: torch.Tensor, row_stride: int) -> bool:
    return t.data_ptr() % 16 == 0 and (row_stride * t.element_size()) % 16 == 0


def qualifies(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tile_n: int, features_plain: bool
) -> tuple[CacheRows, CacheRows] | None:
    """The row views of k and v when this launch can run the TMA prefill, else None."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401  (Triton >= 3.4)
    except ImportError:
        return None
    head_dim = q.shape[2]
    if not features_plain or q.dtype not in (torch.float16, torch.bfloat16):
        return None
    if head_dim & (head_dim - 1) or head_dim < 16 or k.shape[1] % tile_n:
        return None
    if v.shape[-1] != head_dim:  # its descriptors and output tiles are HEAD_DIM wide
        return None
    if not (interpreting() or _hopper(q.device)):
        return None
    return row_views(q, k, v)


def row_views(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[CacheRows, CacheRows] | None:
    """The row views of caches k and v when Q, K and V can be read by TMA descriptors (Q's
    heads and dims contiguous, 16-byte aligned rows and bases, K and V rows alike), else None."""
    if q.stride(2) != 1 or q.stride(1) != q.shape[2] or not _aligned(q, q.stride(0)):
        return None
    kr, vr = cache_rows(k), cache_rows(v)
    if kr is None or vr is None or not _aligned(k, kr.row_stride) or not _aligned(v, vr.row_stride):
        return None
    if (kr.rows_per_block, kr.rows_per_head, kr.cols_per_head) != (
        vr.rows_per_block,
        vr.rows_per_head,
        vr.cols_per_head,
    ):
        return None
    return kr, vr


def descriptor(t: torch.Tensor, rows: int, cols: int, row_stride: int, block: list[int]) -> Any:
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(t, shape=[rows, cols], strides=[row_stride, 1], block_shape=block)
