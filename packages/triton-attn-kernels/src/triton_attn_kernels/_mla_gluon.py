"""Host side of the Gluon Hopper MLA decode (``_kernels/mla_gluon.py``): whether a launch
qualifies, its tensor descriptors and its launch.

The rule: ``MLADecodeConfig(gluon=1)`` (tile_n and num_stages one of
``tuning.mla.GLUON_MLA_TILES``: 64 or 32 keys, which divide every page served), the Triton
and GPU the Gluon prefill needs (``_gluon.available``, sm_90; never the interpreter), fp16/bf16 queries with a
latent cache of the same dtype (no fp8 cache yet), kv_lora_rank 512 and rope_dim 64 (the
DeepSeek-V2/V3 and Kimi K2 latent), pages that 64 divides, a cache whose rows are
contiguous and 16-byte aligned ([num_blocks, block_size, 576] with unit innermost stride and
block stride block_size x row stride) and an output whose head and dim strides let a row
be addressed as ``token * stride_t + head * stride_h + dim``. Anything else runs the Triton
kernel (``_kernels/mla.py``).

Unlike the Triton kernel, it takes ``max_seqlen_q`` as a bound: rows of new tokens past it
are not computed and keep what ``out`` held (the grid has a program per 64 rows of
``max_seqlen_q`` tokens; debug mode reports an understated value as for every launcher).

The default heuristic (``tuning.mla.mla_decode_heuristic``) picks it wherever
:func:`serves` holds; attn-bench's ``ours-mla-triton`` times the Triton kernel beside it.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _gluon
from ._device import interpreting
from ._intmath import cdiv
from ._launch import launch_kernel
from .tuning.mla import MLADecodeConfig

KV_RANK = 512
ROPE_DIM = 64
ROWS = 64  # query rows per program
TILE_N = 64  # the default tile (tuning.mla.GLUON_MLA_TILES lists the others)
STAGES = 2


def serves(q_nope: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor) -> bool:
    """What :func:`qualifies` checks from dtypes and shapes alone (the heuristic's
    ``MLAProblem.gluon``): GPU, Triton, dtypes, latent widths and the page size."""
    if interpreting() or not _gluon.available() or not _gluon._sm90(q_nope.device):
        return False
    if q_nope.dtype not in (torch.float16, torch.bfloat16) or kv_cache.dtype != q_nope.dtype:
        return False
    return q_nope.shape[2] == KV_RANK and q_pe.shape[2] == ROPE_DIM and kv_cache.shape[1] % TILE_N == 0


def qualifies(q_nope: torch.Tensor, q_pe: torch.Tensor, kv_cache: torch.Tensor, out: torch.Tensor,
              config: MLADecodeConfig) -> bool:  # fmt: skip
    """Whether this launch can run the Gluon MLA decode (the module docstring's rule)."""
    if not config.gluon or not serves(q_nope, q_pe, kv_cache):
        return False
    _, block_size, width = kv_cache.shape
    sb, st, sd = kv_cache.stride()
    if sd != 1 or sb != block_size * st or st < width:
        return False
    if kv_cache.data_ptr() % 16 or (st * kv_cache.element_size()) % 16:
        return False
    return out.stride(2) == 1


def _descriptor(t: torch.Tensor, rows: int, row_stride: int, block: list[int]) -> Any:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    dtype = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}[t.dtype]
    layout = gl.NVMMASharedLayout.get_default_for(block, dtype)
    return TensorDescriptor(t, [rows, KV_RANK + ROPE_DIM], [row_stride, 1], block, layout)


def launch(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    num_seqs: int,
    max_seqlen_q: int,
    scale: float,
    num_splits: int,
    tile_n: int = TILE_N,
    stages: int = STAGES,
) -> None:
    """One launch over every sequence; with ``num_splits > 1`` it writes the partials
    (``merge_kernel``'s layout, ``decode_q = max_seqlen_q``) and the caller merges."""
    from ._kernels.mla_gluon import mla_gluon_kernel

    num_tokens, num_heads, _ = q_nope.shape
    # The query's rows as [num_tokens * num_heads, 576]: one copy (a few microseconds beside
    # a decode step), so that one descriptor covers them whatever q_nope's strides are.
    q = torch.cat((q_nope, q_pe), dim=-1).reshape(num_tokens * num_heads, KV_RANK + ROPE_DIM)
    num_blocks, block_size, _ = kv_cache.shape
    rows = num_blocks * block_size
    st = kv_cache.stride(1)
    dq = max(max_seqlen_q, 1)
    dummy = cu_seqlens_q
    grid = (cdiv(dq * num_heads, ROWS), num_seqs, num_splits)
    launch_kernel(
        mla_gluon_kernel,
        grid,
        _descriptor(q, num_tokens * num_heads, KV_RANK + ROPE_DIM, [ROWS, 256]),
        _descriptor(q, num_tokens * num_heads, KV_RANK + ROPE_DIM, [ROWS, ROPE_DIM]),
        _descriptor(kv_cache, rows, st, [tile_n, 256]),
        _descriptor(kv_cache, rows, st, [tile_n, ROPE_DIM]),
        out,
        lse if lse is not None else dummy,
        part_out if num_splits > 1 else dummy,
        part_lse if num_splits > 1 else dummy,
        block_table,
        seq_lens,
        cu_seqlens_q,
        scale * _gluon.LOG2E,
        num_tokens,
        num_heads,
        num_blocks,
        block_table.shape[1] * block_size,
        out.stride(0),
        out.stride(1),
        block_table.stride(0),
        num_splits,
        KV_RANK=KV_RANK,
        TILE_N=tile_n,
        BLOCK_SIZE=block_size,
        STAGES=stages,
        DECODE_Q=dq,
        SPLIT_KV=num_splits > 1,
        RETURN_LSE=lse is not None,
        LOADER_REGS=_gluon.LOADER_REGS,
        CONSUMER_REGS=_gluon.CONSUMER_REGS,
        num_warps=4,
    )
