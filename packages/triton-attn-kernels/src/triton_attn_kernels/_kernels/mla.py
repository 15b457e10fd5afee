"""MLA decode: absorbed-weight multi-head latent attention over a paged latent cache.

Every token of the cache holds one latent row ``[c (KV_RANK) | k_pe (ROPE_DIM)]`` shared by
all query heads. With the up-projections absorbed into the query and the output, the
logits are ``scale * (q_nope . c + q_pe . k_pe)`` and the output is ``softmax . c``: MQA with
one KV head whose value is the first KV_RANK dims of its key. One program holds BLOCK_H
query heads times the BLOCK_Q new tokens of one sequence (speculative verification), so each
latent tile is loaded once and serves both dots of every row. The keys are split over
num_splits programs and the partials merged by ``attention.merge_kernel`` (whose layout the
partials follow).

Addresses come from clamped indices only, as in ``attention_kernel``: page numbers lie in
[0, num_blocks), a context never extends past its block-table row, output rows lie in
[0, num_tokens).
"""

import triton
import triton.language as tl

from .paging import pages_of
from .softmax import online_softmax_step, softmax_finish

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _mla_tiles(
    q_nope,  # [BLOCK_M, KV_RANK]
    q_pe,  # [BLOCK_M, ROPE_DIM]
    m_i,
    l_i,
    acc,  # [BLOCK_M, KV_RANK] fp32
    t_lo,
    t_hi,
    kv_ptr,
    bt_row,
    kv_hi,  # keys at positions >= kv_hi are invisible to every row
    q_pos,  # [BLOCK_M]
    row_ok,
    qk_scale,
    num_blocks,
    stride_kv_b,
    stride_kv_t,
    stride_kv_d,
    offs_n,
    dr,
    dp,
    KV_RANK: tl.constexpr,
    TILE_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    DOT_F32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PREFETCH_PAGES: tl.constexpr,
    MASKED: tl.constexpr,  # False: every key of these tiles is visible to every row
):
    if PREFETCH_PAGES:
        # Page numbers one tile ahead, in registers: a tile's latent addresses then do not
        # wait on a load of the same iteration, and the pipeliner can issue the latent loads
        # of later tiles early (without it, sm_90 code waits for every copy: wait_group 0).
        stop = tl.minimum(kv_hi, t_hi * TILE_N)
        first = t_lo * TILE_N + offs_n
        page_next = pages_of(bt_row, first, first < stop, num_blocks, BLOCK_SIZE)
    for t in range(t_lo, t_hi):
        k_pos = t * TILE_N + offs_n
        if MASKED:
            k_ok = k_pos < kv_hi
        else:
            k_ok = offs_n < TILE_N
        if PREFETCH_PAGES:
            page = page_next.to(tl.int64)
            ahead = k_pos + TILE_N
            page_next = pages_of(bt_row, ahead, ahead < stop, num_blocks, BLOCK_SIZE)
        else:
            page = pages_of(bt_row, k_pos, k_ok, num_blocks, BLOCK_SIZE).to(tl.int64)
        row = page * stride_kv_b + (k_pos % BLOCK_SIZE) * stride_kv_t
        # One load of the latent rows: the same registers feed q_nope . c and p . c.
        c = tl.load(kv_ptr + row[:, None] + dr[None, :] * stride_kv_d, mask=k_ok[:, None], other=0.0)
        k_pe = tl.load(kv_ptr + row[:, None] + (KV_RANK + dp)[None, :] * stride_kv_d, mask=k_ok[:, None], other=0.0)
        if DOT_F32:
            c = c.to(tl.float32)
            k_pe = k_pe.to(tl.float32)
        else:
            c = c.to(q_nope.dtype)
            k_pe = k_pe.to(q_nope.dtype)
        s = tl.dot(q_pe, tl.trans(k_pe), input_precision=DOT_PRECISION)
        s = tl.dot(q_nope, tl.trans(c), acc=s, input_precision=DOT_PRECISION)
        if MASKED:
            visible = k_ok[None, :] & row_ok[:, None] & (k_pos[None, :] <= q_pos[:, None])
            s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc, p = online_softmax_step(m_i, l_i, acc, s, qk_scale)
        acc += tl.dot(p.to(c.dtype), c, input_precision=DOT_PRECISION)
    return m_i, l_i, acc


@triton.jit
def _mla_query_tile(
    q_nope_ptr,
    q_pe_ptr,
    kv_ptr,
    out_ptr,
    lse_ptr,
    part_out_ptr,
    part_lse_ptr,
    bt_row,
    k_scale_ptr,
    seq,
    head_tile,
    split,
    q_start,
    q_len,
    q0,  # first query token of this tile, relative to the sequence
    seq_len,
    num_heads,
    num_blocks,
    scale,
    stride_qn_t,
    stride_qn_h,
    stride_qn_d,
    stride_qp_t,
    stride_qp_h,
    stride_qp_d,
    stride_kv_b,
    stride_kv_t,
    stride_kv_d,
    stride_o_t,
    stride_o_h,
    stride_o_d,
    KV_RANK: tl.constexpr,
    ROPE_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    KV_SCALED: tl.constexpr,
    FP8_VIA_F16: tl.constexpr,
    RETURN_LSE: tl.constexpr,
    n_splits,
    TO_PARTS: tl.constexpr,
    DOT_F32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PREFETCH_PAGES: tl.constexpr,
):
    """BLOCK_Q query tokens (from q0) x BLOCK_H heads of one sequence against split
    ``split`` of their visible keys. No early return: the caller runs it inside a loop."""
    rows = tl.arange(0, BLOCK_M)
    row_tok = rows // BLOCK_H
    row_head = head_tile * BLOCK_H + rows % BLOCK_H
    q_idx = q0 + row_tok
    q_tok = (q_start + q_idx).to(tl.int64)
    row_ok = (row_tok < BLOCK_Q) & (q_idx < q_len) & (row_head < num_heads)
    # The new tokens are the last q_len of the context, each seeing keys up to itself.
    ctx = seq_len - q_len
    q_pos = ctx + q_idx
    dr = tl.arange(0, KV_RANK)
    dp = tl.arange(0, ROPE_DIM)

    q_last = tl.minimum(q0 + BLOCK_Q, q_len) - 1
    kv_hi = tl.minimum(seq_len, ctx + q_last + 1)
    # A negative count (a context shorter than its query run) leaves every range empty.
    n_tiles = tl.cdiv(kv_hi, TILE_N)
    per_split = tl.cdiv(n_tiles, n_splits)
    t_begin = split * per_split
    t_end = tl.minimum(t_begin + per_split, n_tiles)
    # Tiles left of the first row's diagonal are visible to every row: no mask code there.
    full_hi = tl.minimum(tl.maximum((ctx + q0 + 1) // TILE_N, t_begin), t_end)

    qk_scale = scale * LOG2E
    if KV_SCALED:
        # One scale for the whole latent: it multiplies the logits and, as the value, the output.
        kv_scale = tl.load(k_scale_ptr)
        qk_scale = qk_scale * kv_scale
    qn = tl.load(
        q_nope_ptr + q_tok[:, None] * stride_qn_t + row_head[:, None] * stride_qn_h + dr[None, :] * stride_qn_d,
        mask=row_ok[:, None],
        other=0.0,
    )
    qp = tl.load(
        q_pe_ptr + q_tok[:, None] * stride_qp_t + row_head[:, None] * stride_qp_h + dp[None, :] * stride_qp_d,
        mask=row_ok[:, None],
        other=0.0,
    )
    if DOT_F32:
        qn = qn.to(tl.float32)
        qp = qp.to(tl.float32)
    elif FP8_VIA_F16:
        # As in attention_kernel: fp8 -> fp16 is exact and cheap, fp8 -> bf16 is not; the
        # query goes to fp16 pre-scaled, so its magnitude stays far from fp16's limit.
        qn = (qn.to(tl.float32) * qk_scale).to(tl.float16)
        qp = (qp.to(tl.float32) * qk_scale).to(tl.float16)
        qk_scale = 1.0

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, KV_RANK], dtype=tl.float32)
    offs_n = tl.arange(0, TILE_N)
    for part_idx in tl.static_range(2):
        if part_idx == 0:
            lo, hi = t_begin, full_hi
        else:
            lo, hi = full_hi, t_end
        m_i, l_i, acc = _mla_tiles(
            qn, qp, m_i, l_i, acc, lo, hi, kv_ptr, bt_row, kv_hi, q_pos, row_ok, qk_scale, num_blocks,
            stride_kv_b, stride_kv_t, stride_kv_d, offs_n, dr, dp, KV_RANK, TILE_N, BLOCK_SIZE, DOT_F32,
            DOT_PRECISION, PREFETCH_PAGES, part_idx == 1,
        )  # fmt: skip

    out, lse = softmax_finish(m_i, l_i, acc)
    if KV_SCALED:
        out = out * kv_scale
    if TO_PARTS:
        # merge_kernel's layout: [num_seqs, BLOCK_Q, num_heads, n_splits, KV_RANK]; a split
        # that saw no key stores lse == -inf and no row.
        part = ((seq.to(tl.int64) * BLOCK_Q + q_idx) * num_heads + row_head) * n_splits + split
        tl.store(part_lse_ptr + part, lse, mask=row_ok)
        tl.store(
            part_out_ptr + part[:, None] * KV_RANK + dr[None, :],
            out,
            mask=(row_ok & (lse > float("-inf")))[:, None],
        )
    else:
        tl.store(
            out_ptr + q_tok[:, None] * stride_o_t + row_head[:, None] * stride_o_h + dr[None, :] * stride_o_d,
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )
        if RETURN_LSE:
            tl.store(lse_ptr + q_tok * num_heads + row_head, lse * LN2, mask=row_ok)


# Per-call sizes only bound indices: not specialised (Triton would on the value 1 and on
# multiples of 16), so every batch shares one compiled variant per configuration.
@triton.jit(do_not_specialize=["num_tokens", "num_blocks", "max_blocks", "num_splits"])
def mla_decode_kernel(
    q_nope_ptr,  # [num_tokens, num_heads, KV_RANK]
    q_pe_ptr,  # [num_tokens, num_heads, ROPE_DIM]
    kv_ptr,  # [num_blocks, BLOCK_SIZE, KV_RANK + ROPE_DIM]
    out_ptr,  # [num_tokens, num_heads, KV_RANK]
    lse_ptr,  # [num_tokens, num_heads] fp32, RETURN_LSE only
    part_out_ptr,  # [num_seqs, BLOCK_Q, num_heads, num_splits, KV_RANK] fp32, SPLIT_KV only
    part_lse_ptr,  # [num_seqs, BLOCK_Q, num_heads, num_splits] fp32, SPLIT_KV only
    block_table_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    k_scale_ptr,  # [1] fp32, KV_SCALED only
    scale,  # softmax scale (natural units)
    num_tokens,  # rows of q and out
    num_heads,
    num_blocks,
    max_blocks,  # columns of the block table
    num_splits,  # programs sharing a sequence's keys (a plain argument: one variant for every count)
    stride_qn_t,
    stride_qn_h,
    stride_qn_d,
    stride_qp_t,
    stride_qp_h,
    stride_qp_d,
    stride_kv_b,
    stride_kv_t,
    stride_kv_d,
    stride_o_t,
    stride_o_h,
    stride_o_d,
    stride_bt_s,
    KV_RANK: tl.constexpr,  # latent dims (power of two)
    ROPE_DIM: tl.constexpr,  # rotary dims after them (power of two)
    BLOCK_H: tl.constexpr,  # query heads per program
    BLOCK_Q: tl.constexpr,  # query tokens per program (max_seqlen_q)
    BLOCK_M: tl.constexpr,  # rows per program: BLOCK_Q * BLOCK_H rounded up to a power of two, >= 16
    TILE_N: tl.constexpr,  # keys per inner iteration
    BLOCK_SIZE: tl.constexpr,  # page size
    KV_SCALED: tl.constexpr,
    FP8_VIA_F16: tl.constexpr,  # fp8 cache with a bf16 query: dots in fp16
    RETURN_LSE: tl.constexpr,
    SPLIT_KV: tl.constexpr,  # num_splits > 1: partials for merge_kernel instead of the output
    DOT_F32: tl.constexpr,  # fp32 dot operands (fp32 queries, or the interpreter's bf16)
    DOT_PRECISION: tl.constexpr,
    PREFETCH_PAGES: tl.constexpr,  # page numbers loaded one tile ahead (see _mla_tiles)
):
    """Grid (cdiv(num_heads, BLOCK_H), num_seqs, num_splits)."""
    head_tile = tl.program_id(0)
    seq = tl.program_id(1)
    split = tl.program_id(2)
    q_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq), 0), num_tokens)
    q_len = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens) - q_start
    seq_len = tl.minimum(tl.maximum(tl.load(seq_lens_ptr + seq), 0), max_blocks * BLOCK_SIZE)
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt_s
    if q_len < 1:
        return
    if q_len <= BLOCK_Q:
        _mla_query_tile(
            q_nope_ptr, q_pe_ptr, kv_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, bt_row, k_scale_ptr,
            seq, head_tile, split, q_start, q_len, 0, seq_len, num_heads, num_blocks, scale,
            stride_qn_t, stride_qn_h, stride_qn_d, stride_qp_t, stride_qp_h, stride_qp_d,
            stride_kv_b, stride_kv_t, stride_kv_d, stride_o_t, stride_o_h, stride_o_d,
            KV_RANK, ROPE_DIM, BLOCK_H, BLOCK_Q, BLOCK_M, TILE_N, BLOCK_SIZE, KV_SCALED, FP8_VIA_F16,
            RETURN_LSE, num_splits, SPLIT_KV, DOT_F32, DOT_PRECISION, PREFETCH_PAGES,
        )  # fmt: skip
    elif split == 0:
        # More new tokens than max_seqlen_q announced: still every row, tile after tile, in
        # split 0 straight to the output (slow but correct; merge_kernel skips these rows).
        for q0 in range(0, q_len, BLOCK_Q):
            _mla_query_tile(
                q_nope_ptr, q_pe_ptr, kv_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, bt_row,
                k_scale_ptr, seq, head_tile, 0, q_start, q_len, q0, seq_len, num_heads, num_blocks, scale,
                stride_qn_t, stride_qn_h, stride_qn_d, stride_qp_t, stride_qp_h, stride_qp_d,
                stride_kv_b, stride_kv_t, stride_kv_d, stride_o_t, stride_o_h, stride_o_d,
                KV_RANK, ROPE_DIM, BLOCK_H, BLOCK_Q, BLOCK_M, TILE_N, BLOCK_SIZE, KV_SCALED,
                FP8_VIA_F16, RETURN_LSE, 1, False, DOT_F32, DOT_PRECISION, PREFETCH_PAGES,
            )  # fmt: skip
