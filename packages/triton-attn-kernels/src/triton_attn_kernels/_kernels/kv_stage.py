"""Dequantise the pages a prefill launch reads from an fp8 cache into a staging cache of the
query's dtype, laid out as pages of the Hopper prefill's key tile (``_fp8_stage.py``)."""

import triton
import triton.language as tl

from .paging import pages_of


# No integer that varies per batch or per engine specialises: pages_per_seq follows the
# longest context of the batch (a prefill whose contexts fit one page would compile a variant
# of its own), the cache's page count is what fits in memory (the warm-up could not predict
# it) and the block table's width follows max_model_len. The per-sequence index tensors are
# read one scalar at a time: a mixed batch's slice after its decodes shares the variant.
@triton.jit(
    do_not_specialize=["num_blocks", "max_blocks", "pages_per_seq"],
    do_not_specialize_on_alignment=["seq_lens_ptr", "cu_seqlens_q_ptr"],
)
def stage_kv_kernel(
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM] fp8
    v_cache_ptr,  # [num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM] fp8
    block_table_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    k_scale_ptr,  # [1] fp32
    v_scale_ptr,  # [1] fp32
    k_out_ptr,  # [num_seqs * pages_per_seq, PAGE, NUM_KV_HEADS, HEAD_DIM], contiguous, q's dtype
    v_out_ptr,  # as k_out_ptr
    stride_kc_b,
    stride_kc_t,
    stride_kc_h,
    stride_kc_d,
    stride_vc_b,
    stride_vc_t,
    stride_vc_h,
    stride_vc_d,
    stride_bt_s,
    num_blocks,
    max_blocks,  # block-table columns: no sequence reads past them
    pages_per_seq,  # staging pages per sequence
    skip_q,  # sequences with at most this many new tokens are not staged (another launch serves them)
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    PAGE: tl.constexpr,
):
    """Grid (pages_per_seq, num_seqs, NUM_KV_HEADS): one program fills one head of one staging
    page. Keys at or past the sequence's context (or its block-table row) are written as
    zeros, so the staging page holds no uninitialised bytes the prefill might multiply by a
    zero probability. Page numbers are clamped into the cache (``pages_of``): whatever the
    index tensors hold, no byte outside the caches is read, none outside the staging cache
    written."""
    p = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - tl.load(cu_seqlens_q_ptr + seq)
    if q_len <= skip_q:
        return
    ctx = tl.minimum(tl.load(seq_lens_ptr + seq), max_blocks * BLOCK_SIZE)
    rows = tl.arange(0, PAGE)
    d = tl.arange(0, BLOCK_D)
    keys = p * PAGE + rows
    ok = keys < ctx
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt_s
    page = pages_of(bt_row, keys, ok, num_blocks, BLOCK_SIZE).to(tl.int64)
    slot = (keys % BLOCK_SIZE).to(tl.int64)
    d_ok = d < HEAD_DIM
    mask = ok[:, None] & d_ok[None, :]
    k_src = k_cache_ptr + (page * stride_kc_b + slot * stride_kc_t + head * stride_kc_h)[:, None]
    v_src = v_cache_ptr + (page * stride_vc_b + slot * stride_vc_t + head * stride_vc_h)[:, None]
    k = tl.load(k_src + d[None, :] * stride_kc_d, mask=mask, other=0.0).to(tl.float32) * tl.load(k_scale_ptr)
    v = tl.load(v_src + d[None, :] * stride_vc_d, mask=mask, other=0.0).to(tl.float32) * tl.load(v_scale_ptr)
    k = tl.where(mask, k, 0.0)  # a NaN scale must not leak into the zeros past the context
    v = tl.where(mask, v, 0.0)
    staged_page = seq.to(tl.int64) * pages_per_seq + p
    dst = (staged_page * PAGE + rows.to(tl.int64))[:, None] * (NUM_KV_HEADS * HEAD_DIM) + head * HEAD_DIM + d[None, :]
    out_ty = k_out_ptr.dtype.element_ty
    tl.store(k_out_ptr + dst, k.to(out_ty, fp_downcast_rounding="rtne"), mask=d_ok[None, :])
    tl.store(v_out_ptr + dst, v.to(out_ty, fp_downcast_rounding="rtne"), mask=d_ok[None, :])
