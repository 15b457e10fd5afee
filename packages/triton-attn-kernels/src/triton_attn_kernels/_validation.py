"""Argument checks shared by the public launchers. Every failure is a ValueError or
TypeError naming the argument and what was expected; nothing here reads tensor
contents (no host synchronisation)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from ._device import interpreting

SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 192, 256)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Grid axes 1 (sequences) and 2 (query tiles) are limited to 65535 programs by CUDA.
MAX_SEQS = 65535


def tensor(name: str, t: Any, *, ndim: int, dtypes: tuple[torch.dtype, ...] | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).removeprefix('torch.')}")
    return t


def same_device(device: torch.device, **tensors: torch.Tensor | None) -> None:
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"tensors must be on a CUDA/ROCm device (or run with TRITON_INTERPRET=1 on CPU), got {device}")
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name} must be on {device} like q, got {t.device}")


def index(name: str, t: Any, *, ndim: int, dtypes: tuple[torch.dtype, ...] = (torch.int32,)) -> torch.Tensor:
    tensor(name, t, ndim=ndim, dtypes=dtypes)
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {t.stride()}")
    return t


def count(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def batch_limits(num_seqs: int, max_seqlen_q: Any, max_seqlen_k: Any) -> None:
    if num_seqs > MAX_SEQS:
        raise ValueError(f"at most {MAX_SEQS} sequences per call, got {num_seqs}")
    count("max_seqlen_q", max_seqlen_q)
    count("max_seqlen_k", max_seqlen_k)
    if max_seqlen_q > max_seqlen_k:
        raise ValueError(f"max_seqlen_q ({max_seqlen_q}) must not exceed max_seqlen_k ({max_seqlen_k})")


def positive_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or None, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def window(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"sliding_window must be an int or None, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"sliding_window must be >= 1 (keys visible to a query, itself included), got {value}")
    return value


def per_head(name: str, t: Any, num_q_heads: int, device: torch.device) -> torch.Tensor | None:
    if t is None:
        return None
    tensor(name, t, ndim=1, dtypes=FLOAT_DTYPES)
    if t.shape[0] != num_q_heads:
        raise ValueError(f"{name} must have shape [num_q_heads={num_q_heads}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on {device} like q, got {t.device}")
    return t.float().contiguous()


@functools.lru_cache(maxsize=64)
def _constant_scale(value: float, device: torch.device) -> torch.Tensor:
    # Read-only for the kernels, so one tensor per (value, device) serves every call: no
    # allocation and no host-to-device copy per launch.
    return torch.full((1,), value, dtype=torch.float32, device=device)


def kv_scale(name: str, value: Any, device: torch.device) -> torch.Tensor:
    """A per-tensor fp8 scale as a one-element fp32 tensor on the device (no host sync)."""
    if value is None:
        return _constant_scale(1.0, device)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold one element (per-tensor scale), got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{name} must be on {device} like the cache, got {value.device}")
        return value.reshape(1).to(torch.float32)
    positive_float(name, value)
    return _constant_scale(float(value), device)


def head_geometry(q: torch.Tensor, num_kv_heads: int, head_dim: int, kv_name: str) -> int:
    num_q_heads = q.shape[1]
    if q.shape[2] != head_dim:
        raise ValueError(f"{kv_name} head_dim {head_dim} must equal q's head_dim {q.shape[2]}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    if num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise ValueError(f"num_q_heads ({num_q_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    return num_q_heads // num_kv_heads


def kv_pair(
    k: torch.Tensor, v: torch.Tensor, q: torch.Tensor, *, k_name: str, v_name: str, own_v_head_dim: bool = False
) -> int:
    """K and V of one launch; returns V's head size. ``own_v_head_dim``: V may have another
    head size than K (one of :data:`SUPPORTED_HEAD_DIMS`), every other dimension equal."""
    if own_v_head_dim:
        if v.shape[:-1] != k.shape[:-1]:
            raise ValueError(
                f"{v_name} must have the shape of {k_name} {tuple(k.shape)} but for its last (head) dimension, "
                f"got {tuple(v.shape)}"
            )
        # An equal one is k's, which head_geometry checks.
        if v.shape[-1] != k.shape[-1] and v.shape[-1] not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"{v_name} head size must be one of {SUPPORTED_HEAD_DIMS}, got {v.shape[-1]}")
    elif v.shape != k.shape:
        raise ValueError(f"{v_name} must have the shape of {k_name} {tuple(k.shape)}, got {tuple(v.shape)}")
    if v.dtype != k.dtype:
        raise TypeError(f"{v_name} dtype {v.dtype} must equal {k_name} dtype {k.dtype}")
    if k.dtype != q.dtype and k.dtype not in FP8_DTYPES:
        raise TypeError(f"{k_name} dtype must be q's dtype ({q.dtype}) or an fp8 dtype, got {k.dtype}")
    return int(v.shape[-1])


def cache_blocks(name: str, cache: torch.Tensor) -> None:
    """A paged cache [num_blocks, block_size, ...] with at least one block of one slot."""
    num_blocks, block_size = cache.shape[0], cache.shape[1]
    if num_blocks < 1 or block_size < 1:
        raise ValueError(f"{name} must have num_blocks >= 1 and block_size >= 1, got shape {tuple(cache.shape)}")


def byte_range(t: torch.Tensor) -> tuple[int, int]:
    """``[first, last + 1)``: the bytes ``t``'s elements can occupy (empty for no elements)."""
    if t.numel() == 0:
        return (0, 0)
    lo = hi = t.data_ptr()
    for size, stride in zip(t.shape, t.stride(), strict=True):
        span = (size - 1) * stride * t.element_size()
        if span < 0:
            lo += span
        else:
            hi += span
    return lo, hi + t.element_size()


def _storage_span(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    p = s.data_ptr()
    return p, p + s.nbytes()


def _self_overlapping(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` may share memory (a zero stride, or strides too small
    for the sizes); decided from shape and strides alone, conservatively."""
    if t.is_contiguous():
        return False
    reach = 1  # elements spanned by the dimensions taken so far, smallest stride first
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape, strict=True) if sz > 1):
        if stride < reach:
            return True
        reach = stride * (size - 1) + reach
    return False


def not_overlapping(name: str, t: torch.Tensor, **others: torch.Tensor | None) -> None:
    """A tensor a kernel writes: its elements distinct, sharing no memory with ``others``.

    Tensors of different allocations never share memory, so the byte ranges of the elements
    are compared only when the storages' spans meet (views of one allocation). Byte ranges,
    not element sets: two views interleaved in one buffer (``out = buf[..., :d]``,
    ``q = buf[..., d:]``) count as sharing memory; no caller needs such a layout for a tensor
    one kernel writes while it reads the other. Costs about a microsecond per pair."""
    if _self_overlapping(t):
        raise ValueError(
            f"{name} must not have overlapping elements (a zero stride or strides too small for "
            f"shape {tuple(t.shape)}), got strides {t.stride()}"
        )
    if t.numel() == 0:
        return
    t0, t1 = _storage_span(t)
    mine: tuple[int, int] | None = None
    for other_name, other in others.items():
        if other is None or other.numel() == 0:
            continue
        o0, o1 = _storage_span(other)
        if not (t0 < o1 and o0 < t1):
            continue
        mine = mine or byte_range(t)
        b0, b1 = byte_range(other)
        if mine[0] < b1 and b0 < mine[1]:
            raise ValueError(
                f"{name} must not share memory with {other_name} (it is written while {other_name} is read)"
            )


def output(out: Any, q: torch.Tensor, *, head_dim: int | None = None, **others: torch.Tensor | None) -> torch.Tensor:
    """``out`` checked (or allocated): q's shape (with ``head_dim`` as the last dimension
    where given: V's head size), dtype and device, elements distinct, and no memory shared
    with ``q`` or any of ``others`` (the tensors the launch reads)."""
    shape = q.shape if head_dim is None else torch.Size((*q.shape[:-1], head_dim))
    if out is None:
        return torch.empty_like(q) if shape == q.shape else q.new_empty(shape)
    tensor("out", out, ndim=3, dtypes=(q.dtype,))
    if out.shape != shape:
        what = "q's shape" if shape == q.shape else "shape [num_tokens, num_q_heads, v head size]"
        raise ValueError(f"out must have {what} {tuple(shape)}, got {tuple(out.shape)}")
    if out.device != q.device:
        raise ValueError(f"out must be on {q.device} like q, got {out.device}")
    not_overlapping("out", out, q=q, **others)
    return out


def workspace(ws: Any, device: torch.device, *, need: int = 0, **others: torch.Tensor | None) -> torch.Tensor | None:
    """``None``, or a 1-D contiguous float32 tensor on ``device`` with at least ``need``
    elements that shares no memory with ``others``."""
    if ws is None:
        return None
    tensor("workspace", ws, ndim=1, dtypes=(torch.float32,))
    if ws.numel() > 1 and ws.stride(0) != 1:
        raise ValueError(f"workspace must be contiguous, got stride {ws.stride(0)}")
    if ws.device != device:
        raise ValueError(f"workspace must be on {device} like q, got {ws.device}")
    if ws.numel() < need:
        raise ValueError(f"workspace must have at least {need} elements (decode_workspace_numel), got {ws.numel()}")
    not_overlapping("workspace", ws, **others)
    return ws


def paged_batch(
    block_table: Any,
    seq_lens: Any,
    cu_seqlens_q: Any,
    *,
    block_size: int,
    max_seqlen_q: Any,
    max_seqlen_k: Any,
    hint: str = "",
) -> int:
    """The index tensors of a paged launch (dtypes, ranks, one row per sequence) and the
    host sizes against them; returns num_seqs. ``hint`` ends the capacity error (what a
    context too long for its block-table row usually means for this caller)."""
    index("block_table", block_table, ndim=2)
    index("seq_lens", seq_lens, ndim=1)
    index("cu_seqlens_q", cu_seqlens_q, ndim=1)
    num_seqs = seq_lens.shape[0]
    if block_table.shape[0] != num_seqs:
        raise ValueError(f"block_table must have num_seqs={num_seqs} rows (seq_lens), got {block_table.shape[0]}")
    if cu_seqlens_q.shape[0] != num_seqs + 1:
        raise ValueError(f"cu_seqlens_q must have num_seqs + 1 = {num_seqs + 1} entries, got {cu_seqlens_q.shape[0]}")
    batch_limits(num_seqs, max_seqlen_q, max_seqlen_k)
    capacity = block_table.shape[1] * block_size
    if num_seqs and max_seqlen_k > capacity:
        raise ValueError(
            f"max_seqlen_k={max_seqlen_k} exceeds what a block-table row holds (max_blocks * block_size = "
            f"{block_table.shape[1]} * {block_size}){hint}"
        )
    return num_seqs
