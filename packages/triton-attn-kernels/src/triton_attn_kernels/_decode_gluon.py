"""Host side of the Gluon Hopper decode (``_kernels/decode_gluon.py``, one-token decode and
speculative verification): whether a decode launch the policy configured for it (``DecodeConfig.gluon``, from
``tuning.gluon_decode_config``) runs it, its descriptors and its launch.

A launch runs it on the Triton and GPU the Gluon prefill needs (``_gluon.available``, sm_90;
never the interpreter) with fp16/bf16 queries and K and V of the same dtype (no fp8 cache); one
head size of 64 or 128 for Q, K and V; at most 64 query heads per KV head; a causal launch
without window, softcap, ALiBi or sinks; a paged cache whose page size the key tile divides,
rows contiguous and 16-byte aligned as the TMA descriptors need; queries and output with a
unit innermost stride. Anything else runs the generic decode kernel with the same split count.
"""

from __future__ import annotations

import torch

from . import _gluon, _tma
from ._device import interpreting
from ._intmath import cdiv
from ._launch import launch_kernel
from .tuning.heuristics import GLUON_DECODE_HEAD_DIMS as HEAD_DIMS
from .tuning.heuristics import GLUON_DECODE_ROWS as ROWS


def serves(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tile_n: int, causal: bool,
           features_plain: bool) -> bool:  # fmt: skip
    """What :func:`qualifies` checks from dtypes, shapes and features alone."""
    if interpreting() or not _gluon.available() or not _gluon._sm90(q.device):
        return False
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    if not (causal and features_plain) or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if k.dtype != q.dtype or v.dtype != q.dtype or head_dim not in HEAD_DIMS or v.shape[-1] != head_dim:
        return False
    if k.dim() != 4 or k.shape[1] % tile_n:
        return False
    return num_q_heads // k.shape[-2] <= ROWS


def qualifies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, *, tile_n: int, causal: bool,
              features_plain: bool) -> tuple[_tma.CacheRows, _tma.CacheRows] | None:  # fmt: skip
    """The 2-D row views of caches k and v when this decode launch runs the Gluon decode."""
    if not serves(q, k, v, tile_n=tile_n, causal=causal, features_plain=features_plain):
        return None
    if q.stride(2) != 1 or out.stride(2) != 1:
        return None
    kr, vr = _tma.cache_rows(k), _tma.cache_rows(v)
    if kr is None or vr is None or not _tma._aligned(k, kr.row_stride) or not _tma._aligned(v, vr.row_stride):
        return None
    if (kr.rows_per_block, kr.rows_per_head, kr.cols_per_head) != (
        vr.rows_per_block,
        vr.rows_per_head,
        vr.cols_per_head,
    ):
        return None
    return kr, vr


def launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    rows: tuple[_tma.CacheRows, _tma.CacheRows],
    *,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    num_seqs: int,
    decode_q: int,
    other_launch: int,
    scale: float,
    num_splits: int,
    tile_n: int,
    stages: int,
) -> None:
    """The decode launch over every sequence with 1..decode_q new tokens (and, where
    ``other_launch`` is 0, the longer ones too, in split 0); with ``num_splits > 1`` it
    writes the partials (``merge_kernel``'s layout) and the caller merges. ``rows`` from
    :func:`qualifies`; ``tile_n`` keys per ring slot, ``stages`` slots."""
    from ._kernels.decode_gluon import decode_gluon_kernel

    num_tokens, num_q_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k.shape
    group = num_q_heads // num_kv_heads
    dq = max(decode_q, 1)
    n_rb = cdiv(dq, ROWS // group)
    kr, vr = rows
    dummy = cu_seqlens_q
    launch_kernel(
        decode_gluon_kernel,
        (num_kv_heads * n_rb, num_seqs, num_splits),
        q,
        _gluon._descriptor(k, kr.rows, kr.cols, kr.row_stride, [tile_n, head_dim]),
        _gluon._descriptor(v, vr.rows, vr.cols, vr.row_stride, [tile_n, head_dim]),
        out,
        lse if lse is not None else dummy,
        part_out if num_splits > 1 else dummy,
        part_lse if num_splits > 1 else dummy,
        block_table,
        seq_lens,
        cu_seqlens_q,
        scale * _gluon.LOG2E,
        num_tokens,
        num_blocks,
        block_table.shape[1] * block_size,
        other_launch,
        num_splits,
        kr.rows_per_block,
        kr.rows_per_head,
        kr.cols_per_head,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        block_table.stride(0),
        HEAD_DIM=head_dim,
        GROUP=group,
        DECODE_Q=dq,
        N_RB=n_rb,
        TILE_N=tile_n,
        BLOCK_SIZE=block_size,
        STAGES=stages,
        SPLIT_KV=num_splits > 1,
        RETURN_LSE=lse is not None,
        LOADER_REGS=_gluon.LOADER_REGS,
        num_warps=4,
    )
