"""fp8 caches on the Hopper prefill: the pages a prefill launch reads, dequantised first.

The Gluon prefill feeds K and V from shared memory straight into 16-bit wgmma, which takes
no fp8 operand beside a 16-bit one. So a prefill over an fp8 cache first copies the
sequences' context into a staging cache in the query's dtype, scales applied, as pages of
the prefill's key tile (whatever the source cache's page size), and runs the Gluon kernel on
that copy through an identity block table. The copy reads each key once and writes it twice
as wide: for 8k keys of 8 KV heads at head size 128, 16 MB read and 33 MB written, about 12 us
at an H200's ~4.2 TB/s, beside a prefill of about 900 us over those keys. Decode launches read the fp8 cache
itself.

The staging cache is allocated per launch, ``num_seqs x cdiv(max_seqlen_k, tile_n)`` pages
of K and of V; a launch whose copy would pass :data:`MAX_STAGING_BYTES` runs the generic
kernel on the fp8 cache instead (what a server's prefill launches never need: they hold a
few sequences of the chunked-prefill budget each).
"""

from __future__ import annotations

import torch

from ._intmath import cdiv, next_pow2
from ._kernels.kv_stage import stage_kv_kernel
from ._launch import launch_kernel

# K and V staged for one launch, at most: 1 GiB holds 32k keys of 4 sequences at 8 KV heads
# of head size 128 in bf16.
MAX_STAGING_BYTES = 1 << 30


def staging_bytes(num_seqs: int, max_seqlen_k: int, k_cache: torch.Tensor, *, page: int, elem: int) -> int:
    """Bytes of the staging cache (K and V) of one launch."""
    pages = num_seqs * cdiv(max(max_seqlen_k, 1), page)
    return 2 * pages * page * k_cache.shape[2] * k_cache.shape[3] * elem


def stage(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    *,
    num_seqs: int,
    max_seqlen_k: int,
    page: int,
    dtype: torch.dtype,
    skip_q: int = 0,
    into: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(k, v, block_table)``: the staging caches [num_seqs * P, page, kv_heads, head_dim]
    in ``dtype`` (P = cdiv(max_seqlen_k, page)) and their [num_seqs, P] int32 block table,
    row i holding sequence i's pages in order. A context longer than ``max_seqlen_k`` is cut
    at P pages (its output is unspecified, as for any ``seq_lens`` entry past
    ``max_seqlen_k``; debug mode reports it). Sequences with at most ``skip_q`` new tokens
    (other than 0: those with none) are left unstaged: the launch that follows must not
    serve them. k_cache / v_cache: NHD [num_blocks, block_size, kv_heads, head_dim], fp8,
    any strides; the scales one-element fp32 tensors. ``into``: contiguous staging caches
    of that shape and dtype to fill instead of new ones."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    pages_per_seq = cdiv(max(max_seqlen_k, 1), page)
    shape = (num_seqs * pages_per_seq, page, num_kv_heads, head_dim)
    if into is None:
        k_out = torch.empty(shape, dtype=dtype, device=k_cache.device)
        v_out = torch.empty(shape, dtype=dtype, device=k_cache.device)
    else:
        k_out, v_out = into
        for buf in into:
            if tuple(buf.shape) != shape or buf.dtype != dtype or not buf.is_contiguous():
                raise ValueError(f"into must hold contiguous {dtype} tensors of shape {shape}")
    table = torch.arange(num_seqs * pages_per_seq, dtype=torch.int32, device=k_cache.device)
    table = table.view(num_seqs, pages_per_seq)
    if num_seqs == 0:
        return k_out, v_out, table
    launch_kernel(
        stage_kv_kernel,
        (pages_per_seq, num_seqs, num_kv_heads),
        k_cache,
        v_cache,
        block_table,
        seq_lens,
        cu_seqlens_q,
        k_scale,
        v_scale,
        k_out,
        v_out,
        *k_cache.stride(),
        *v_cache.stride(),
        block_table.stride(0),
        num_blocks,
        block_table.shape[1],
        pages_per_seq,
        skip_q,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_D=next_pow2(head_dim),
        BLOCK_SIZE=block_size,
        PAGE=page,
        num_warps=4 if page * head_dim <= 64 * 128 else 8,
    )
    return k_out, v_out, table
