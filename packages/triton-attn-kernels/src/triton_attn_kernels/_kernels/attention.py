"""The attention kernel: one ``@triton.jit`` body, specialised at compile time.

One program computes BLOCK_M query rows against one range of keys. A row is a
(query token, query head) pair: BLOCK_Q consecutive tokens of one sequence times the
GROUP query heads that share one KV head, so every K/V tile is read once for all of
them (GQA packing). The decode launch serves sequences with 1..decode_q new tokens
(single-token decode, and speculative-decoding verification) in one tile per sequence,
its key range split over num_splits programs (split-KV) and merged by ``merge_kernel``;
the prefill launch serves longer ones, BLOCK_Q tokens per tile. Paged and contiguous
(varlen) K/V, causal masking, windows, softcap, ALiBi, sinks and scaled fp8 KV are
``tl.constexpr`` flags, so a launch compiles only what it uses. V may have another head size
than Q and K (HEAD_DIM_V; MLA prefill attends with 192-wide Q/K and 128-wide V): it sizes
the accumulator, the split partials and the output.

Every address is formed from clamped indices: page numbers lie in [0, num_blocks), a
context never extends past its block-table row (or past k), and output rows lie in
[0, num_tokens), whatever the index tensors hold.
"""

import triton
import triton.language as tl

from .paging import pages_of
from .softmax import merge_finish, merge_splits, merge_step, online_softmax_step, softmax_finish

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


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
    win_left,
    win_right,
    slope,  # [BLOCK_M] ALiBi slope in log2 units
    num_blocks,  # PAGED: pages of the cache; page numbers read are clamped into [0, num_blocks)
    stride_k_b,
    stride_k_t,
    stride_k_d,
    stride_v_b,
    stride_v_t,
    stride_v_d,
    d,  # [BLOCK_D] Q/K columns
    d_ok,
    dv,  # [BLOCK_DV] V columns
    dv_ok,
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
    # Pages that hold whole key tiles (a compile-time fact): every key of a tile lies in one
    # page, so a tile needs one page number (a scalar) instead of one per key, and the keys'
    # offsets inside the page are loop invariant; the 64-bit address math per key, most of
    # the decode loop's integer work, becomes one product per tile. Only for heads of at most
    # 64 dims: the invariant offsets stay in registers (sm_90, Triton 3.6: 168 -> 255 at d128),
    # and on an H200 at 128-token pages that made d128 decodes up to 1.5x slower (batch 64 x
    # 8k: 801 us against 523 with per-key pages) while d64 gained 1.15x (32 x 8k: 155 against
    # 178.5 us; docs/results/h200/plugin-pages-2026-12-02).
    WHOLE_PAGES: tl.constexpr = PAGED and BLOCK_SIZE % TILE_N == 0 and q.shape[1] <= 64
    if PAGED and PREFETCH_PAGES:
        # Page numbers one tile ahead, carried in registers: the K/V addresses of a tile then
        # come from the previous iteration, not from a load of this one, and the compiler's
        # pipeliner keeps the K/V loads NUM_STAGES - 1 tiles ahead. Without it (sm_90 code,
        # Triton 3.6) every iteration waits for all its copies (cp.async.wait_group 0).
        stop = tl.minimum(kv_hi, t_hi * TILE_N)  # no key at or beyond it is in this range
        if WHOLE_PAGES:
            first = t_lo * TILE_N
        else:
            first = t_lo * TILE_N + offs_n
        page_next = pages_of(bt_row, first, first < stop, num_blocks, BLOCK_SIZE)
    if WHOLE_PAGES:
        k_in_page = offs_n * stride_k_t
        v_in_page = offs_n * stride_v_t
    for t in range(t_lo, t_hi):
        k_pos = t * TILE_N + offs_n
        if MASKED:
            k_ok = k_pos < kv_hi
        else:
            k_ok = offs_n < TILE_N
        if PAGED:
            if WHOLE_PAGES:
                k0 = t * TILE_N  # the tile's first key; its page holds the whole tile
                if PREFETCH_PAGES:
                    page = page_next.to(tl.int64)
                    page_next = pages_of(bt_row, k0 + TILE_N, k0 + TILE_N < stop, num_blocks, BLOCK_SIZE)
                else:
                    page = pages_of(bt_row, k0, k0 < kv_hi, num_blocks, BLOCK_SIZE).to(tl.int64)
                slot0 = k0 % BLOCK_SIZE
                k_off = (page * stride_k_b + slot0 * stride_k_t) + k_in_page
                v_off = (page * stride_v_b + slot0 * stride_v_t) + v_in_page
            else:
                if PREFETCH_PAGES:
                    page = page_next.to(tl.int64)
                    ahead = k_pos + TILE_N
                    page_next = pages_of(bt_row, ahead, ahead < stop, num_blocks, BLOCK_SIZE)
                else:
                    page = pages_of(bt_row, k_pos, k_ok, num_blocks, BLOCK_SIZE).to(tl.int64)
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
                visible &= (k_pos[None, :] >= q_pos[:, None] - win_left) & (
                    k_pos[None, :] <= q_pos[:, None] + win_right
                )
            s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc, p = online_softmax_step(m_i, l_i, acc, s, s_scale)
        v = tl.load(v_head + v_off[:, None] + dv[None, :] * stride_v_d, mask=k_ok[:, None] & dv_ok[None, :], other=0.0)
        if DOT_F32:
            v = v.to(tl.float32)
        else:
            v = v.to(q.dtype)
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_i, l_i, acc


@triton.jit
def _attend_query_tile(
    q_ptr,
    out_ptr,
    lse_ptr,
    part_out_ptr,
    part_lse_ptr,
    k_head,
    v_head,
    bt_row,
    alibi_ptr,
    sinks_ptr,
    k_scale_ptr,
    v_scale_ptr,
    seq,
    kv_head,
    split,
    q_start,
    q_len,
    q0,  # first query token of this tile, relative to the sequence
    seq_len,
    k_start,
    num_tokens,
    num_kv_rows,
    num_q_heads,
    scale,
    softcap,
    win_left,
    win_right,
    stride_q_t,
    stride_q_h,
    stride_q_d,
    stride_k_b,
    stride_k_t,
    stride_k_d,
    stride_v_b,
    stride_v_t,
    stride_v_d,
    stride_o_t,
    stride_o_h,
    stride_o_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    TILE_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    PAGED: tl.constexpr,
    PREFETCH_PAGES: tl.constexpr,
    CAUSAL: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_ALIBI: tl.constexpr,
    USE_SINKS: tl.constexpr,
    KV_SCALED: tl.constexpr,
    FP8_VIA_F16: tl.constexpr,
    RETURN_LSE: tl.constexpr,
    n_splits,  # programs sharing this tile's keys
    TO_PARTS: tl.constexpr,  # write split partials for merge_kernel instead of the output
    DOT_F32: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """BLOCK_Q query tokens (from q0) x GROUP heads of one sequence against split
    ``split`` of their visible keys. No early return: callers run it inside loops."""
    rows = tl.arange(0, BLOCK_M)
    row_tok = rows // GROUP
    row_head = kv_head * GROUP + rows % GROUP
    q_idx = q0 + row_tok
    q_tok = (q_start + q_idx).to(tl.int64)
    # q_start and q_len come clamped into [0, num_tokens] (attention_kernel).
    row_ok = (row_tok < BLOCK_Q) & (q_idx < q_len)
    # Query tokens are the last q_len tokens of the context.
    ctx = seq_len - q_len
    q_pos = ctx + q_idx
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    dv = tl.arange(0, BLOCK_DV)
    dv_ok = dv < HEAD_DIM_V

    # Key range this tile of queries can see; tiles outside it are never visited.
    q_last = tl.minimum(q0 + BLOCK_Q, q_len) - 1
    kv_hi = seq_len
    if CAUSAL:
        kv_hi = tl.minimum(kv_hi, ctx + q_last + 1)
    kv_lo = 0
    if USE_WINDOW:
        kv_hi = tl.minimum(kv_hi, ctx + q_last + win_right + 1)
        kv_lo = tl.maximum(ctx + q0 - win_left, 0)
    tile_lo = kv_lo // TILE_N
    # A negative count (a context shorter than its query run) leaves every tile range empty.
    n_tiles = tl.cdiv(kv_hi, TILE_N) - tile_lo
    per_split = tl.cdiv(n_tiles, n_splits)
    t_begin = tile_lo + split * per_split
    t_end = tl.minimum(t_begin + per_split, tile_lo + n_tiles)

    qk_scale = scale
    if KV_SCALED:
        qk_scale = qk_scale * tl.load(k_scale_ptr)
    if not USE_SOFTCAP:
        qk_scale = qk_scale * LOG2E
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
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

    offs_n = tl.arange(0, TILE_N)
    # Tiles every valid row sees completely need no mask: left of the causal diagonal and
    # inside every row's window. Only the edges [t_begin, full_lo) and [full_hi, t_end) pay
    # for masking.
    full_hi = seq_len // TILE_N
    if CAUSAL:
        full_hi = tl.minimum(full_hi, (ctx + q0 + 1) // TILE_N)
    full_lo = tile_lo
    if USE_WINDOW:
        full_hi = tl.minimum(full_hi, (ctx + q0 + win_right + 1) // TILE_N)
        full_lo = tl.cdiv(tl.maximum(ctx + q_last - win_left, 0), TILE_N)
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
            win_left,
            win_right,
            slope,
            num_kv_rows,
            stride_k_b,
            stride_k_t,
            stride_k_d,
            stride_v_b,
            stride_v_t,
            stride_v_d,
            d,
            d_ok,
            dv,
            dv_ok,
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
    if TO_PARTS:
        # Split-KV partials, merged by merge_kernel: BLOCK_Q token slots per sequence. A
        # split that saw no key stores lse == -inf, and merge_kernel reads no row for it.
        part = ((seq.to(tl.int64) * BLOCK_Q + q_idx) * num_q_heads + row_head) * n_splits + split
        tl.store(part_lse_ptr + part, lse, mask=row_ok)
        tl.store(
            part_out_ptr + part[:, None] * HEAD_DIM_V + dv[None, :],
            out,
            mask=(row_ok & (lse > float("-inf")))[:, None] & dv_ok[None, :],
        )
    else:
        tl.store(
            out_ptr + q_tok[:, None] * stride_o_t + row_head[:, None] * stride_o_h + dv[None, :] * stride_o_d,
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None] & dv_ok[None, :],
        )
        if RETURN_LSE:
            tl.store(lse_ptr + q_tok * num_q_heads + row_head, lse * LN2, mask=row_ok)


# Per-call sizes and the launch plan are plain integers Triton must not specialise on (it
# would on the value 1 and on multiples of 16; they only bound indices, so nothing gains):
# every batch shares one compiled variant per config, which halves the variants an engine
# start compiles.
# The per-sequence index tensors are read one scalar at a time, so their alignment buys
# nothing; callers pass slices of them at any offset (the vLLM plugin's prefill launch takes
# the rows after a mixed batch's decodes), and each alignment would be a variant of its own.
INDEX_POINTERS = ["seq_lens_ptr", "cu_seqlens_q_ptr", "cu_seqlens_k_ptr"]


@triton.jit(
    do_not_specialize=["num_tokens", "num_kv_rows", "max_blocks", "decode_q", "other_launch", "num_splits"],
    do_not_specialize_on_alignment=INDEX_POINTERS,
)
def attention_kernel(
    q_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]
    k_ptr,  # PAGED: [num_blocks, BLOCK_SIZE, num_kv_heads, HEAD_DIM]; else [total_k, num_kv_heads, HEAD_DIM]
    v_ptr,  # k's shape, but HEAD_DIM_V for HEAD_DIM
    out_ptr,  # [num_tokens, num_q_heads, HEAD_DIM_V]
    lse_ptr,  # [num_tokens, num_q_heads] fp32, RETURN_LSE only
    part_out_ptr,  # [num_seqs, BLOCK_Q, num_q_heads, num_splits, HEAD_DIM_V] fp32, SPLIT_KV only
    part_lse_ptr,  # [num_seqs, BLOCK_Q, num_q_heads, num_splits] fp32, SPLIT_KV only
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
    win_left,  # USE_WINDOW: a query at position p sees keys in [p - win_left, p + win_right]
    win_right,
    num_tokens,  # rows of q and out
    num_kv_rows,  # PAGED: num_blocks; else total_k
    max_blocks,  # PAGED: columns of the block table
    decode_q,  # sequences with 1..decode_q new tokens belong to the decode launch (0: none)
    other_launch,  # 1: the other launch of this batch runs too; 0: this launch serves all
    num_splits,  # decode: programs per KV head and sequence sharing its keys (1 for the prefill launch)
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
    HEAD_DIM_V: tl.constexpr,  # V's (and out's) head size
    BLOCK_DV: tl.constexpr,  # HEAD_DIM_V rounded up to a power of two
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
    FP8_VIA_F16: tl.constexpr,  # fp8 KV with a bf16 query: dots in fp16 (see _attend_query_tile)
    RETURN_LSE: tl.constexpr,
    SPLIT_KV: tl.constexpr,  # num_splits > 1: partials for merge_kernel instead of the output
    IS_DECODE: tl.constexpr,  # the split-KV decode launch; else the prefill launch
    DOT_F32: tl.constexpr,  # upcast dot operands to fp32 (fp32 inputs, or the interpreter's bf16)
    DOT_PRECISION: tl.constexpr,
):
    """Grid: decode (num_kv_heads, num_seqs, num_splits); prefill (num_kv_heads,
    num_seqs, query-tile programs), the query tiles of a sequence walked grid-stride, so a
    max_seqlen_q smaller than the truth still computes every row."""
    # The split count is a plain argument (one compiled variant serves every count) and has
    # a grid axis of its own, so no program divides by it.
    kv_head = tl.program_id(0)
    seq = tl.program_id(1)
    split = tl.program_id(2) if IS_DECODE else 0

    # Index contents are never trusted with an address (or a loop bound): a sequence's rows
    # lie inside q and out, and its context is bounded by what the block table (or k)
    # holds, so every page number read lies inside the table.
    q_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq), 0), num_tokens)
    q_len = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens) - q_start
    if PAGED:
        seq_len = tl.minimum(tl.maximum(tl.load(seq_lens_ptr + seq), 0), max_blocks * BLOCK_SIZE)
        k_start = 0
    else:
        k_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_k_ptr + seq), 0), num_kv_rows)
        k_stop = tl.minimum(tl.maximum(tl.load(cu_seqlens_k_ptr + seq + 1), k_start), num_kv_rows)
        seq_len = k_stop - k_start
    k_head = k_ptr + kv_head.to(tl.int64) * stride_k_h
    v_head = v_ptr + kv_head.to(tl.int64) * stride_v_h
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt_s
    num_q_heads = tl.num_programs(0) * GROUP

    # The decode and prefill launches of a mixed batch each skip the other's sequences, so
    # the host never reads the batch composition.
    if IS_DECODE:
        if q_len < 1:
            return
        if q_len <= BLOCK_Q:  # BLOCK_Q == decode_q in the decode launch
            _attend_query_tile(
                q_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, k_head, v_head, bt_row,
                alibi_ptr, sinks_ptr, k_scale_ptr, v_scale_ptr, seq, kv_head, split, q_start,
                q_len, 0, seq_len, k_start, num_tokens, num_kv_rows, num_q_heads, scale, softcap, win_left,
                win_right, stride_q_t, stride_q_h, stride_q_d, stride_k_b, stride_k_t, stride_k_d,
                stride_v_b, stride_v_t, stride_v_d, stride_o_t, stride_o_h, stride_o_d, HEAD_DIM,
                BLOCK_D, HEAD_DIM_V, BLOCK_DV, GROUP, BLOCK_M, BLOCK_Q, TILE_N, BLOCK_SIZE, PAGED, PREFETCH_PAGES,
                CAUSAL, USE_WINDOW, USE_SOFTCAP, USE_ALIBI, USE_SINKS, KV_SCALED, FP8_VIA_F16,
                RETURN_LSE, num_splits, SPLIT_KV, DOT_F32, DOT_PRECISION,
            )  # fmt: skip
        elif other_launch == 0:
            # More new tokens than max_seqlen_q announced and no prefill launch: still every
            # row, tile after tile, in split 0 (slow but correct).
            if split == 0:
                for q0 in range(0, q_len, BLOCK_Q):
                    _attend_query_tile(
                        q_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, k_head, v_head,
                        bt_row, alibi_ptr, sinks_ptr, k_scale_ptr, v_scale_ptr, seq, kv_head, 0,
                        q_start, q_len, q0, seq_len, k_start, num_tokens, num_kv_rows, num_q_heads, scale,
                        softcap, win_left, win_right, stride_q_t, stride_q_h, stride_q_d,
                        stride_k_b, stride_k_t, stride_k_d, stride_v_b, stride_v_t, stride_v_d,
                        stride_o_t, stride_o_h, stride_o_d, HEAD_DIM, BLOCK_D, HEAD_DIM_V, BLOCK_DV, GROUP, BLOCK_M,
                        BLOCK_Q, TILE_N, BLOCK_SIZE, PAGED, PREFETCH_PAGES, CAUSAL, USE_WINDOW,
                        USE_SOFTCAP, USE_ALIBI, USE_SINKS, KV_SCALED, FP8_VIA_F16, RETURN_LSE, 1,
                        False, DOT_F32, DOT_PRECISION,
                    )  # fmt: skip
    else:
        if other_launch != 0:
            if q_len <= decode_q:
                return
        elif q_len < 1:
            return
        n_q_tiles = tl.cdiv(q_len, BLOCK_Q)
        for t in range(tl.program_id(2), n_q_tiles, tl.num_programs(2)):
            # Causal work grows with the query tile index, and the slowest grid axis is
            # dispatched last: walk it backwards so the heaviest tiles start first.
            q0 = (n_q_tiles - 1 - t) * BLOCK_Q
            _attend_query_tile(
                q_ptr, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, k_head, v_head, bt_row,
                alibi_ptr, sinks_ptr, k_scale_ptr, v_scale_ptr, seq, kv_head, 0, q_start, q_len,
                q0, seq_len, k_start, num_tokens, num_kv_rows, num_q_heads, scale, softcap, win_left, win_right,
                stride_q_t, stride_q_h, stride_q_d, stride_k_b, stride_k_t, stride_k_d, stride_v_b,
                stride_v_t, stride_v_d, stride_o_t, stride_o_h, stride_o_d, HEAD_DIM, BLOCK_D,
                HEAD_DIM_V, BLOCK_DV, GROUP, BLOCK_M, BLOCK_Q, TILE_N, BLOCK_SIZE, PAGED, PREFETCH_PAGES, CAUSAL,
                USE_WINDOW, USE_SOFTCAP, USE_ALIBI, USE_SINKS, KV_SCALED, FP8_VIA_F16, RETURN_LSE,
                1, False, DOT_F32, DOT_PRECISION,
            )  # fmt: skip


@triton.jit(do_not_specialize=["num_tokens", "num_splits"])
def merge_kernel(
    part_out_ptr,  # [num_seqs, DECODE_Q, num_q_heads, num_splits, HEAD_DIM] fp32
    part_lse_ptr,  # [num_seqs, DECODE_Q, num_q_heads, num_splits] fp32
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    out_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]; HEAD_DIM is the output's (V's) head size
    lse_ptr,  # [num_tokens, num_q_heads] fp32, RETURN_LSE only
    num_tokens,
    num_splits,
    stride_o_t,
    stride_o_h,
    stride_o_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SPLITS_CHUNK: tl.constexpr,  # partials folded in per step (a power of two)
    DECODE_Q: tl.constexpr,
    RETURN_LSE: tl.constexpr,
):
    """Grid (num_q_heads, num_seqs, DECODE_Q): one output row per decode token and head,
    from its num_splits partials, SPLITS_CHUNK at a time (one variant for any count)."""
    head = tl.program_id(0)
    seq = tl.program_id(1)
    tok = tl.program_id(2)
    q_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq), 0), num_tokens)
    q_len = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens) - q_start
    row = q_start.to(tl.int64) + tok
    if (q_len > DECODE_Q) | (tok >= q_len):
        return
    d = tl.arange(0, BLOCK_D)
    base = ((seq.to(tl.int64) * DECODE_Q + tok) * tl.num_programs(0) + head) * num_splits
    m = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, num_splits, SPLITS_CHUNK):
        sp = s0 + tl.arange(0, SPLITS_CHUNK)
        lse = tl.load(part_lse_ptr + base + sp, mask=sp < num_splits, other=float("-inf"))
        # Splits with lse == -inf saw no key and wrote no output row (their weight is 0 anyway).
        part = tl.load(
            part_out_ptr + (base + sp)[:, None] * HEAD_DIM + d[None, :],
            mask=(lse > float("-inf"))[:, None] & (d < HEAD_DIM)[None, :],
            other=0.0,
        )
        m, total, acc = merge_step(m, total, acc, lse, part)
    out, total_lse = merge_finish(m, total, acc)
    tl.store(
        out_ptr + row * stride_o_t + head * stride_o_h + d * stride_o_d,
        out.to(out_ptr.dtype.element_ty),
        mask=d < HEAD_DIM,
    )
    if RETURN_LSE:
        tl.store(lse_ptr + row * tl.num_programs(0) + head, total_lse * LN2)


@triton.jit
def merge_states_kernel(
    out_a_ptr,  # [num_tokens, num_heads, HEAD_DIM]
    lse_a_ptr,  # [num_tokens, num_heads] fp32, natural log
    out_b_ptr,  # [num_tokens, num_heads, HEAD_DIM]
    lse_b_ptr,  # [num_tokens, num_heads] fp32, natural log
    out_ptr,  # [num_tokens, num_heads, HEAD_DIM]
    lse_ptr,  # [num_tokens, num_heads] fp32, natural log
    num_heads,
    stride_a_t,
    stride_a_h,
    stride_a_d,
    stride_b_t,
    stride_b_h,
    stride_b_d,
    stride_o_t,
    stride_o_h,
    stride_o_d,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid (num_tokens * num_heads,): two results over disjoint key sets into one, by the
    split-KV decode's merge."""
    pid = tl.program_id(0).to(tl.int64)
    tok = pid // num_heads
    head = pid % num_heads
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    two = tl.arange(0, 2)
    lse_off = tok * num_heads + head
    lse_a = tl.load(lse_a_ptr + lse_off)
    lse_b = tl.load(lse_b_ptr + lse_off)
    lse = tl.where(two == 0, lse_a, lse_b) * LOG2E
    a = tl.load(out_a_ptr + tok * stride_a_t + head * stride_a_h + d * stride_a_d, mask=d_ok, other=0.0)
    b = tl.load(out_b_ptr + tok * stride_b_t + head * stride_b_h + d * stride_b_d, mask=d_ok, other=0.0)
    # A side with lse == -inf saw no key: weight 0, and whatever its row holds (NaN from an
    # empty softmax elsewhere) stays out of the sum.
    a = tl.where(lse_a > float("-inf"), a.to(tl.float32), 0.0)
    b = tl.where(lse_b > float("-inf"), b.to(tl.float32), 0.0)
    parts = tl.where((two == 0)[:, None], a[None, :], b[None, :])
    out, total = merge_splits(lse, parts)
    tl.store(
        out_ptr + tok * stride_o_t + head * stride_o_h + d * stride_o_d, out.to(out_ptr.dtype.element_ty), mask=d_ok
    )
    tl.store(lse_ptr + lse_off, total * LN2)
