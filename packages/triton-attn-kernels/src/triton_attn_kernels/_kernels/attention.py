"""The attention kernel: one ``@triton.jit`` body, specialised at compile time.

One program computes BLOCK_M query rows against one range of keys. A row is a
(query token, query head) pair: BLOCK_Q consecutive tokens of one sequence times the
GROUP query heads that share one KV head, so every K/V tile is read once for all of
them (GQA packing). Decode is the specialisation BLOCK_Q == 1 with the key range split
over NUM_SPLITS programs (split-KV); prefill is BLOCK_Q > 1 with NUM_SPLITS == 1. Paged
and contiguous (varlen) K/V, causal masking, sliding window, softcap, ALiBi, sinks and
scaled fp8 KV are ``tl.constexpr`` flags, so a launch compiles only what it uses.

Grid: (num_kv_heads * NUM_SPLITS, num_seqs, query tiles); query tiles run heaviest first.
"""

import triton
import triton.language as tl

from .softmax import merge_splits, online_softmax_step, softmax_finish

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _tanh(x):
    # tanh(|x|) = (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: no overflow for any x.
    e = tl.exp2(tl.abs(x) * (-2.0 * LOG2E))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _attend_tiles(
    q,  # [BLOCK_M, BLOCK_D]
    m_i,
    l_i,
    acc,
    t_lo,  # first key tile (inclusive)
    t_hi,  # last key tile (exclusive)
    k_head,
    v_head,
    bt_row,  # this sequence's block-table row
    k_start,  # first key row of the sequence (contiguous K/V only)
    kv_hi,  # keys at positions >= kv_hi are invisible to every row
    q_pos,  # [BLOCK_M] absolute position of each row's token
    row_ok,  # [BLOCK_M]
    qk_scale,
    softcap,
    window,
    slope,  # [BLOCK_M] ALiBi slope in log2 units
    stride_k_b,
    stride_k_t,
    stride_k_d,
    stride_v_b,
    stride_v_t,
    stride_v_d,
    d,
    d_ok,
    offs_n,
    TILE_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    PAGED: tl.constexpr,
    PREFETCH_PAGES: tl.constexpr,
    CAUSAL: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr,
    DOT_F32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    MASKED: tl.constexpr,  # False: the caller guarantees every key of these tiles is visible
):
    if PAGED and PREFETCH_PAGES:
        # Page numbers one tile ahead, carried in registers: the K/V addresses of a tile then
        # come from the previous iteration, not from a load of this one, and the compiler's
        # pipeliner keeps the K/V loads NUM_STAGES - 1 tiles ahead. Without it (sm_90 code,
        # Triton 3.6) every iteration waits for all its copies (cp.async.wait_group 0).
        stop = tl.minimum(kv_hi, t_hi * TILE_N)  # no key at or beyond it is in this range
        first = t_lo * TILE_N + offs_n
        page_next = tl.load(bt_row + first // BLOCK_SIZE, mask=first < stop, other=0)
    for t in range(t_lo, t_hi):
        k_pos = t * TILE_N + offs_n
        if MASKED:
            k_ok = k_pos < kv_hi
        else:
            k_ok = offs_n < TILE_N
        if PAGED:
            if PREFETCH_PAGES:
                page = page_next.to(tl.int64)
                ahead = k_pos + TILE_N
                page_next = tl.load(bt_row + ahead // BLOCK_SIZE, mask=ahead < stop, other=0)
            else:
                page = tl.load(bt_row + k_pos // BLOCK_SIZE, mask=k_ok, other=0).to(tl.int64)
            slot = k_pos % BLOCK_SIZE
            k_off = page * stride_k_b + slot * stride_k_t
            v_off = page * stride_v_b + slot * stride_v_t
        else:
            tok = (k_start + k_pos).to(tl.int64)
            k_off = tok * stride_k_t
            v_off = tok * stride_v_t
        k = tl.load(k_head + k_off[None, :] + d[:, None] * stride_k_d, mask=k_ok[None, :] & d_ok[:, None], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
        else:
            k = k.to(q.dtype)
        s = tl.dot(q, k, input_precision=DOT_PRECISION)
        if USE_SOFTCAP or USE_ALIBI:
            s = s * qk_scale
            if USE_SOFTCAP:
                s = softcap * _tanh(s / softcap) * LOG2E
            if USE_ALIBI:
                s += slope[:, None] * (k_pos[None, :] - q_pos[:, None]).to(tl.float32)
            s_scale = 1.0
        else:
            # The scale folds into the softmax: max of the raw logits, then one FMA per
            # logit (s * scale - max) instead of a multiply and a subtract.
            s_scale = qk_scale
        if MASKED:
            visible = k_ok[None, :] & row_ok[:, None]
            if CAUSAL:
                visible &= k_pos[None, :] <= q_pos[:, None]
            if USE_WINDOW:
                visible &= k_pos[None, :] > q_pos[:, None] - window
            s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc, p = online_softmax_step(m_i, l_i, acc, s, s_scale)
        v = tl.load(v_head + v_off[:, None] + d[None, :] * stride_v_d, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        if DOT_F32:
            v = v.to(tl.float32)
        else:
            v = v.to(q.dtype)
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_i, l_i, acc


@triton.jit
def attention_kernel(
    q_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]
    k_ptr,  # PAGED: [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]; else [total_k, num_kv_heads, HEAD_DIM]
    v_ptr,  # same shape as k
    out_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]
    part_out_ptr,  # [num_seqs, num_q_heads, NUM_SPLITS, HEAD_DIM] fp32, NUM_SPLITS > 1 only
    part_lse_ptr,  # [num_seqs, num_q_heads, NUM_SPLITS] fp32, NUM_SPLITS > 1 only
    block_table_ptr,  # [num_seqs, max_blocks] int32, PAGED only
    seq_lens_ptr,  # [num_seqs] int32, PAGED only
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    cu_seqlens_k_ptr,  # [num_seqs + 1] int32, not PAGED only
    alibi_ptr,  # [num_q_heads] fp32, USE_ALIBI only
    sinks_ptr,  # [num_q_heads] fp32, USE_SINKS only
    k_scale_ptr,  # [1] fp32, KV_SCALED only
    v_scale_ptr,  # [1] fp32, KV_SCALED only
    scale,  # softmax scale (natural units)
    softcap,  # logit cap, USE_SOFTCAP only
    window,  # left window in tokens (the query's own position included), USE_WINDOW only
    stride_q_t,
    stride_q_h,
    stride_q_d,
    stride_k_b,
    stride_k_t,
    stride_k_h,
    stride_k_d,
    stride_v_b,
    stride_v_t,
    stride_v_h,
    stride_v_d,
    stride_o_t,
    stride_o_h,
    stride_o_d,
    stride_bt_s,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # HEAD_DIM rounded up to a power of two
    GROUP: tl.constexpr,  # query heads per KV head
    BLOCK_M: tl.constexpr,  # rows per program, >= BLOCK_Q * GROUP, power of two, >= 16
    BLOCK_Q: tl.constexpr,  # query tokens per program
    TILE_N: tl.constexpr,  # keys per inner iteration (may span several pages)
    BLOCK_SIZE: tl.constexpr,  # page size of the paged cache
    PAGED: tl.constexpr,
    PREFETCH_PAGES: tl.constexpr,  # PAGED only: page numbers loaded one tile ahead (see _attend_tiles)
    CAUSAL: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr,
    USE_SINKS: tl.constexpr,
    KV_SCALED: tl.constexpr,
    FP8_VIA_F16: tl.constexpr,  # fp8 KV with a bf16 query: dots in fp16 (see below)
    NUM_SPLITS: tl.constexpr,
    IS_DECODE: tl.constexpr,  # serve sequences with exactly one new token; else those with two or more
    DOT_F32: tl.constexpr,  # upcast dot operands to fp32 (fp32 inputs, or the interpreter's bf16)
    DOT_PRECISION: tl.constexpr,
):
    # Causal work grows with the query tile index, and the slowest grid axis is dispatched
    # last: walk it backwards so the heaviest tiles start first and cheap ones fill the tail.
    q_tile = tl.num_programs(2) - 1 - tl.program_id(2)
    kvh_split = tl.program_id(0)
    seq = tl.program_id(1)
    kv_head = kvh_split // NUM_SPLITS
    split = kvh_split % NUM_SPLITS

    q_start = tl.load(cu_seqlens_q_ptr + seq)
    q_len = tl.load(cu_seqlens_q_ptr + seq + 1) - q_start
    # The decode and prefill launches of a mixed batch each skip the other's sequences, so
    # the host never reads the batch composition, and a pure-decode batch compiles the same
    # decode variant as a mixed one.
    if IS_DECODE:
        if q_len != 1:
            return
    else:
        if q_len < 2:
            return
    q0 = q_tile * BLOCK_Q
    if q0 >= q_len:
        return
    if PAGED:
        seq_len = tl.load(seq_lens_ptr + seq)
        k_start = 0
    else:
        k_start = tl.load(cu_seqlens_k_ptr + seq)
        seq_len = tl.load(cu_seqlens_k_ptr + seq + 1) - k_start
    # Query tokens are the last q_len tokens of the context.
    ctx = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    row_tok = rows // GROUP
    row_head = kv_head * GROUP + rows % GROUP
    q_idx = q0 + row_tok
    row_ok = (row_tok < BLOCK_Q) & (q_idx < q_len)
    q_pos = ctx + q_idx
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM

    # Key range this tile of queries can see; tiles outside it are never visited.
    q_last = tl.minimum(q0 + BLOCK_Q, q_len) - 1
    if CAUSAL:
        kv_hi = ctx + q_last + 1
    else:
        kv_hi = seq_len
    kv_lo = 0
    if USE_WINDOW:
        kv_lo = tl.maximum(ctx + q0 - window + 1, 0)
    tile_lo = kv_lo // TILE_N
    n_tiles = tl.cdiv(kv_hi, TILE_N) - tile_lo
    per_split = tl.cdiv(n_tiles, NUM_SPLITS)
    t_begin = tile_lo + split * per_split
    t_end = tl.minimum(t_begin + per_split, tile_lo + n_tiles)
    if NUM_SPLITS > 1:
        # Split-KV partials (decode only, one token per sequence), merged by merge_kernel.
        num_q_heads = (tl.num_programs(0) // NUM_SPLITS) * GROUP
        part = (seq.to(tl.int64) * num_q_heads + row_head) * NUM_SPLITS + split
        if (split > 0) & (t_begin >= t_end):
            # No key for this split (the split count is fixed for the longest context, e.g.
            # under CUDA graphs): an lse of -inf marks it empty and merge_kernel reads no
            # output row for it. Split 0 always runs (it holds the sinks).
            tl.store(part_lse_ptr + part, tl.full([BLOCK_M], float("-inf"), tl.float32), mask=row_ok)
            return

    qk_scale = scale
    if KV_SCALED:
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    if not USE_SOFTCAP:
        qk_scale = qk_scale * LOG2E
    q_tok = (q_start + q_idx).to(tl.int64)
    q = tl.load(
        q_ptr + q_tok[:, None] * stride_q_t + row_head[:, None] * stride_q_h + d[None, :] * stride_q_d,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)
    elif FP8_VIA_F16:
        # fp8 -> fp16 is one instruction per pair of values and exact (every e4m3 and e5m2 value
        # is an fp16 value); fp8 -> bf16 costs one more conversion per value on Hopper, which
        # bounds fp8 decode by conversion throughput, not bandwidth. So K, V and the
        # probabilities go to fp16, and so does the query, scaled first (fp16 has 3 more
        # mantissa bits than bf16; pre-scaling by ~0.13 keeps |q| far from fp16's 65504).
        q = (q.to(tl.float32) * qk_scale).to(tl.float16)
        qk_scale = 1.0

    if USE_ALIBI:
        slope = tl.load(alibi_ptr + row_head).to(tl.float32) * LOG2E
    else:
        slope = tl.zeros([BLOCK_M], dtype=tl.float32)

    if USE_SINKS:
        sink = tl.load(sinks_ptr + row_head).to(tl.float32) * LOG2E
        # The sink joins the denominator once, in split 0, as a key with value zero.
        first = split == 0
        m_i = tl.where(first, sink, float("-inf"))
        l_i = tl.where(first, 1.0, 0.0) + tl.zeros([BLOCK_M], dtype=tl.float32)
    else:
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    offs_n = tl.arange(0, TILE_N)
    k_head = k_ptr + kv_head.to(tl.int64) * stride_k_h
    v_head = v_ptr + kv_head.to(tl.int64) * stride_v_h
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt_s

    # Tiles every valid row sees completely need no mask: left of the causal diagonal and
    # inside every row's window. Only the edges [t_begin, full_lo) and [full_hi, t_end) pay
    # for masking.
    if CAUSAL:
        full_hi = (ctx + q0 + 1) // TILE_N
    else:
        full_hi = seq_len // TILE_N
    full_lo = tile_lo
    if USE_WINDOW:
        full_lo = tl.cdiv(tl.maximum(ctx + q_last - window + 1, 0), TILE_N)
    full_lo = tl.minimum(tl.maximum(full_lo, t_begin), t_end)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), t_end)
    # Three ranges of tiles, in key order: masked left edge, unmasked middle, masked right
    # edge. MASKED is a compile-time constant per range, so the middle carries no mask code.
    for part_idx in tl.static_range(3):
        if part_idx == 0:
            lo, hi = t_begin, full_lo
        elif part_idx == 1:
            lo, hi = full_lo, full_hi
        else:
            lo, hi = full_hi, t_end
        m_i, l_i, acc = _attend_tiles(
            q,
            m_i,
            l_i,
            acc,
            lo,
            hi,
            k_head,
            v_head,
            bt_row,
            k_start,
            kv_hi,
            q_pos,
            row_ok,
            qk_scale,
            softcap,
            window,
            slope,
            stride_k_b,
            stride_k_t,
            stride_k_d,
            stride_v_b,
            stride_v_t,
            stride_v_d,
            d,
            d_ok,
            offs_n,
            TILE_N,
            BLOCK_SIZE,
            PAGED,
            PREFETCH_PAGES,
            CAUSAL,
            USE_WINDOW,
            USE_SOFTCAP,
            USE_ALIBI,
            DOT_F32,
            DOT_PRECISION,
            part_idx != 1,
        )

    out, lse = softmax_finish(m_i, l_i, acc)
    if KV_SCALED:
        out = out * tl.load(v_scale_ptr)
    if NUM_SPLITS == 1:
        tl.store(
            out_ptr + q_tok[:, None] * stride_o_t + row_head[:, None] * stride_o_h + d[None, :] * stride_o_d,
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & d_ok[None, :],
        )
    else:
        tl.store(part_lse_ptr + part, lse, mask=row_ok)
        tl.store(
            part_out_ptr + part[:, None] * HEAD_DIM + d[None, :],
            out,
            mask=row_ok[:, None] & d_ok[None, :],
        )


@triton.jit
def merge_kernel(
    part_out_ptr,  # [num_seqs, num_q_heads, NUM_SPLITS, HEAD_DIM] fp32
    part_lse_ptr,  # [num_seqs, num_q_heads, NUM_SPLITS] fp32
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    out_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]
    stride_o_t,
    stride_o_h,
    stride_o_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_POW2: tl.constexpr,
):
    """Grid (num_q_heads, num_seqs): one output row per decode token and head."""
    head = tl.program_id(0)
    seq = tl.program_id(1)
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    if tl.load(cu_seqlens_q_ptr + seq + 1) - q_start != 1:
        return
    sp = tl.arange(0, SPLITS_POW2)
    d = tl.arange(0, BLOCK_D)
    base = (seq.to(tl.int64) * tl.num_programs(0) + head) * NUM_SPLITS
    lse = tl.load(part_lse_ptr + base + sp, mask=sp < NUM_SPLITS, other=float("-inf"))
    # Splits with lse == -inf saw no key and wrote no output row (their weight is 0 anyway).
    part = tl.load(
        part_out_ptr + (base + sp)[:, None] * HEAD_DIM + d[None, :],
        mask=(lse > float("-inf"))[:, None] & (d < HEAD_DIM)[None, :],
        other=0.0,
    )
    out = merge_splits(lse, part)
    tl.store(
        out_ptr + q_start.to(tl.int64) * stride_o_t + head * stride_o_h + d * stride_o_d,
        out.to(out_ptr.dtype.element_ty),
        mask=d < HEAD_DIM,
    )
