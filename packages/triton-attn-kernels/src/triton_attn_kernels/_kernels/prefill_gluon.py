"""Hopper (sm_90) prefill in Gluon: the FlashAttention-3 schedule written out explicitly.

A program owns BLOCK_M = 2 x 64 query tokens of one query head and runs three partitions:

- a loader warp issues TMA copies: the two 64-row halves of Q, then K and V tiles of TILE_N
  keys into a ring of STAGES shared-memory slots, each slot guarded by mbarriers (ready: the
  copy's bytes have landed; empty: both consumers are done with the slot);
- two consumer warpgroups, one per 64-row half. Each issues S = Q K^T by wgmma from shared
  memory, does the online softmax in registers and feeds P to the P V wgmma from registers.
  The QK^T of tile j + 1 is issued before the PV of tile j, so the tensor cores work while
  the softmax of tile j + 1 runs. With PINGPONG the two warpgroups take turns to issue their
  wgmmas (an mbarrier per warpgroup passes the turn), so one warpgroup's softmax overlaps
  the other's matmuls.

WINDOW (causal only): a query at position p sees keys in [p - win_left, p]; a query tile
reads the key tiles from the one holding its first row's left edge, and tiles crossing any
row's left edge are masked. SOFTCAP: the logits are ``softcap * tanh(scale * s / softcap)``;
the host passes ``cap_in = scale / softcap`` and ``qk_scale = softcap * log2(e)``, so the
consumers compute ``tanh(s * cap_in)`` (one MUFU op) and fold qk_scale in as without a cap.

THREAD_ARRIVES (off by default, not yet measured): the consumers release K/V slots, Q and
the other's turn with per-thread arrivals (``_release``) instead of Gluon's mbarrier.arrive,
which has thread 0 arrive after a warpgroup bar.sync; compiled for sm_90 the steady loop then
holds 2 bar.sync per round instead of 4 (FlashAttention-3's holds 2).

Registers are rebalanced with setmaxnreg (the loader keeps few, the consumers get the rest).
Masks are applied only to the tiles that need one: the causal diagonal and the sequence's
last tile; the tiles below the diagonal run unmasked. Query tiles are walked heaviest first
(grid-stride; the slowest grid axis is dispatched last).

PERSISTENT: one program per SM walks work tiles (``_work_tile``: heaviest level first, the
query heads of a GQA group adjacent). Every counter that names a barrier phase (the ring's
key tiles, the query tiles, the ping-pong's rounds, the tail cleans) carries from one work
tile to the next, so nothing drains between them: the consumers release Q after their last
QK^T and the loader issues the next tile's Q and K/V while their last PV and epilogue run.

A key tile is TILE_N consecutive slots of one page (PAGED: the page size is a multiple of
TILE_N; its row in the 2-D view of the cache is ``page * ROWS_PER_BLOCK + kv_head *
ROWS_PER_HEAD + slot``, column ``kv_head * COLS_PER_HEAD``, as in prefill_tma.py) or of a
contiguous [total_k, heads, dim] tensor (varlen: the same view of one page of total_k slots,
row ``kv_head * ROWS_PER_HEAD + k_start + position``). One descriptor
covers the whole cache; index contents are clamped as in ``attention_kernel``.

Cache slots past a sequence's context may hold anything, NaN included, and a zero
probability times NaN is NaN: the first consumer zeroes those rows of the last V tile in
shared memory before either consumer's PV reads it.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .softmax_gluon import online_step

LN2 = gl.constexpr(0.6931471805599453)
HALF_M = gl.constexpr(64)  # query rows per consumer warpgroup (wgmma: 4 warps x 16 rows)
WG_THREADS = gl.constexpr(128)
CLEAN_ROWS = gl.constexpr(32)  # V rows zeroed per shared-memory round trip (bounds registers)


@gluon.jit
def _span(
    cu_seqlens_q_ptr,
    cu_seqlens_k_ptr,
    seq_lens_ptr,
    seq,
    num_tokens,
    max_k,
    decode_q,
    PAGED: gl.constexpr,
):
    """(q_start, q_len, k_start, seq_len, served) of one sequence, clamped into the tensors."""
    q_start = gl.minimum(gl.maximum(gl.load(cu_seqlens_q_ptr + seq), 0), num_tokens)
    q_end = gl.minimum(gl.maximum(gl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens)
    q_len = q_end - q_start
    if PAGED:
        k_start = 0
        seq_len = gl.minimum(gl.maximum(gl.load(seq_lens_ptr + seq), 0), max_k)
    else:
        k_start = gl.minimum(gl.maximum(gl.load(cu_seqlens_k_ptr + seq), 0), max_k)
        seq_len = gl.minimum(gl.maximum(gl.load(cu_seqlens_k_ptr + seq + 1), k_start), max_k) - k_start
    # Sequences of the decode launch (or empty ones) get no query tile.
    served = q_len > decode_q
    return q_start, q_len, k_start, seq_len, served


@gluon.jit
def _kv_tiles(
    q0,
    q_len,
    seq_len,
    win_left,
    BLOCK_M: gl.constexpr,
    TILE_N: gl.constexpr,
    CAUSAL: gl.constexpr,
    WINDOW: gl.constexpr,
):
    """[t_lo, t_hi): the key tiles a query tile starting at row q0 reads (both halves read the
    same tiles)."""
    kv_hi = seq_len
    if CAUSAL:
        kv_hi = gl.minimum(kv_hi, seq_len - q_len + gl.minimum(q0 + BLOCK_M, q_len))
    # At least one (fully masked) tile, so that the two sides never wait for different counts.
    t_hi = gl.maximum(gl.cdiv(kv_hi, TILE_N), 1)
    t_lo = t_hi * 0
    if WINDOW:
        # The tile's first row sees nothing left of first_key; later rows see less.
        first_key = gl.maximum(seq_len - q_len + q0 - win_left, 0)
        t_lo = gl.minimum(first_key // TILE_N, t_hi - 1)
    return t_lo, t_hi


@gluon.jit
def _program():
    """gl.program_id(0), read where it is used: as a pure value the compiler computes it
    once before the partitions split and ptxas spills it across their register moves."""
    return gl.inline_asm_elementwise("mov.u32 $0, %ctaid.x;", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _work_tile(w, num_q_heads, num_seqs):
    """(head, seq, level) of work tile w (PERSISTENT): the query heads of one sequence and
    level adjacent (a GQA group's programs read the same K/V tiles at about the same time,
    from L2), then the sequences, then the levels: level 0 holds every sequence's last query
    tile (causal: the most key tiles), so the work goes heaviest first."""
    head = w % num_q_heads
    rest = w // num_q_heads
    return head, rest % num_seqs, rest // num_seqs


@gluon.jit
def _load_tiles(
    head,
    seq,
    t_first,
    t_step,
    it,
    n_done,
    q_desc,
    k_desc,
    v_desc,
    q_smem,
    k_smem,
    v_smem,
    q_ready,
    q_empty,
    k_ready,
    v_ready,
    k_empty,
    v_empty,
    block_table_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    cu_seqlens_k_ptr,
    num_tokens,
    num_blocks,
    max_k,
    decode_q,
    win_left,
    rows_per_block,
    rows_per_head,
    cols_per_head,
    stride_bt_s,
    HEAD_DIM: gl.constexpr,
    GROUP: gl.constexpr,
    TILE_N: gl.constexpr,
    BLOCK_SIZE: gl.constexpr,
    STAGES: gl.constexpr,
    PAGED: gl.constexpr,
    CAUSAL: gl.constexpr,
    WINDOW: gl.constexpr,
):
    """Issue the copies of query tiles t_first, t_first + t_step, ... (counted from the last)
    of one head and sequence; ``it`` and ``n_done`` (key tiles and query tiles issued so far)
    carry the ring's slot and phase and the Q barriers' phase on."""
    BLOCK_M: gl.constexpr = 2 * HALF_M
    kv_head = head // GROUP
    q_start, q_len, k_start, seq_len, served = _span(
        cu_seqlens_q_ptr, cu_seqlens_k_ptr, seq_lens_ptr, seq, num_tokens, max_k, decode_q, PAGED
    )
    n_q_tiles = gl.where(served, gl.cdiv(q_len, BLOCK_M), 0)
    bt_row = block_table_ptr + seq.to(gl.int64) * stride_bt_s
    row_base = kv_head * rows_per_head
    col = kv_head * cols_per_head
    for t_q in range(t_first, n_q_tiles, t_step):
        q0 = (n_q_tiles - 1 - t_q) * BLOCK_M
        # The consumers of the previous query tile are done with Q (fresh barrier: passes).
        mbarrier.wait(q_empty, (n_done & 1) ^ 1)
        mbarrier.expect(q_ready, 2 * q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_start + q0, head * HEAD_DIM], q_ready, q_smem.index(0))
        tma.async_copy_global_to_shared(q_desc, [q_start + q0 + HALF_M, head * HEAD_DIM], q_ready, q_smem.index(1))
        n_done += 1
        t_lo, t_hi = _kv_tiles(q0, q_len, seq_len, win_left, BLOCK_M, TILE_N, CAUSAL, WINDOW)
        for t in range(t_lo, t_hi):
            slot = it % STAGES
            free = ((it // STAGES) & 1) ^ 1  # a fresh barrier passes this parity at once
            pos = t * TILE_N
            if PAGED:
                page = gl.minimum(gl.maximum(gl.load(bt_row + pos // BLOCK_SIZE), 0), num_blocks - 1)
                row = page * rows_per_block + row_base + pos % BLOCK_SIZE
            else:
                row = row_base + k_start + pos
            mbarrier.wait(k_empty.index(slot), free)
            mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [row, col], k_ready.index(slot), k_smem.index(slot))
            mbarrier.wait(v_empty.index(slot), free)
            mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [row, col], v_ready.index(slot), v_smem.index(slot))
            it += 1
    return it, n_done


@gluon.jit
def _loader(
    q_desc,
    k_desc,
    v_desc,
    q_smem,
    k_smem,
    v_smem,
    q_ready,
    q_empty,
    k_ready,
    v_ready,
    k_empty,
    v_empty,
    block_table_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    cu_seqlens_k_ptr,
    num_tokens,
    num_blocks,
    max_k,
    decode_q,
    win_left,
    num_q_heads,
    num_seqs,
    q_levels,
    n_work,
    programs,
    rows_per_block,
    rows_per_head,
    cols_per_head,
    stride_bt_s,
    HEAD_DIM: gl.constexpr,
    GROUP: gl.constexpr,
    TILE_N: gl.constexpr,
    BLOCK_SIZE: gl.constexpr,
    STAGES: gl.constexpr,
    PAGED: gl.constexpr,
    CAUSAL: gl.constexpr,
    WINDOW: gl.constexpr,
    PERSISTENT: gl.constexpr,
):
    if PERSISTENT:
        # Nothing waits for a work tile to end: the copies of the next one are issued as soon
        # as the ring has a free slot (and Q as soon as both consumers are done with it).
        it = gl.to_tensor(0)
        n_done = gl.to_tensor(0)
        for w in range(_program(), n_work, programs):
            head, seq, level = _work_tile(w, num_q_heads, num_seqs)
            it, n_done = _load_tiles(
                head, seq, level, q_levels, it, n_done, q_desc, k_desc, v_desc, q_smem, k_smem, v_smem,
                q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                block_table_ptr, seq_lens_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr,
                num_tokens, num_blocks, max_k, decode_q, win_left,
                rows_per_block, rows_per_head, cols_per_head, stride_bt_s,
                HEAD_DIM, GROUP, TILE_N, BLOCK_SIZE, STAGES, PAGED, CAUSAL, WINDOW,
            )  # fmt: skip
    else:
        _load_tiles(
            gl.program_id(0), gl.program_id(1), gl.program_id(2), gl.num_programs(2), gl.to_tensor(0), gl.to_tensor(0),
            q_desc, k_desc, v_desc, q_smem, k_smem, v_smem,
            q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
            block_table_ptr, seq_lens_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr,
            num_tokens, num_blocks, max_k, decode_q, win_left,
            rows_per_block, rows_per_head, cols_per_head, stride_bt_s,
            HEAD_DIM, GROUP, TILE_N, BLOCK_SIZE, STAGES, PAGED, CAUSAL, WINDOW,
        )  # fmt: skip


@gluon.jit
def _zero_tail_rows(v_tile, valid, TILE_N: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Zero rows [valid, TILE_N) of a V tile in shared memory (slots past the context)."""
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [gl.num_warps(), 1], [1, 0])
    rows = gl.arange(0, CLEAN_ROWS, layout=gl.SliceLayout(1, layout))
    for r0 in gl.static_range(0, TILE_N, CLEAN_ROWS):
        part = v_tile.slice(r0, CLEAN_ROWS)
        v = part.load(layout)
        part.store(gl.where(gl.expand_dims(r0 + rows < valid, 1), v, gl.zeros_like(v)))
    # Make every thread's generic-proxy stores visible to the wgmma (async proxy) that reads
    # the tile, before one thread signals the other consumer.
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def _release(bar, THREAD_ARRIVES: gl.constexpr):
    """One consumer warpgroup's arrival on ``bar`` (a slot, Q, or the other's turn). Thread 0
    arrives after a warpgroup bar.sync (which Gluon puts before every mbarrier.arrive), or,
    with THREAD_ARRIVES, each of the 128 threads arrives on its own, unsynchronised (the
    barrier counts WG_THREADS per consumer): what it releases was read by wgmma, whose wait
    every thread has passed."""
    if THREAD_ARRIVES:
        # With no cp.async in flight the arrive-on happens at once; .noinc: it counts.
        async_copy.mbarrier_arrive(bar, increment_count=False)
    else:
        mbarrier.arrive(bar)


@gluon.jit
def _take_turn(my_turn, turns, PINGPONG: gl.constexpr):
    """Wait until the other consumer has issued its wgmmas of the previous round."""
    if PINGPONG:
        mbarrier.wait(my_turn, turns & 1)
    return turns + 1


@gluon.jit
def _pass_turn(their_turn, PINGPONG: gl.constexpr, THREAD_ARRIVES: gl.constexpr):
    if PINGPONG:
        _release(their_turn, THREAD_ARRIVES)


@gluon.jit
def _clean_tail(
    v_tile,
    v_clean,
    v_seen,
    tails,
    t,
    seq_len,
    WG: gl.constexpr,
    TILE_N: gl.constexpr,
    HEAD_DIM: gl.constexpr,
    ACK: gl.constexpr,
):
    """Before the PV of tile t: if it is the sequence's last, partial tile, the first consumer
    zeroes its slots past the context and the second waits until it has. With ACK the second
    also confirms each wait and the first waits for the confirmation of the previous clean
    before signalling the next: without the ping-pong's turns (after a short query tile) the
    first could otherwise signal twice before the second waits once, and a parity wait
    would then miss a whole phase (the ping-pong orders them: the first consumer's next
    clean is in a later turn, which the second passes only after its wait)."""
    if (t + 1) * TILE_N > seq_len:
        if WG == 0:
            if ACK:
                mbarrier.wait(v_seen, (tails & 1) ^ 1)  # a fresh barrier passes this parity
            _zero_tail_rows(v_tile, seq_len - t * TILE_N, TILE_N, HEAD_DIM)
            mbarrier.arrive(v_clean)
        else:
            mbarrier.wait(v_clean, tails & 1)
            if ACK:
                mbarrier.arrive(v_seen)
        tails += 1
    return tails


@gluon.jit
def _tanh(x):
    # One MUFU op (max relative error 2^-10.99): below what bf16 P and V round away.
    return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _softmax(
    s,
    m_i,
    l_i,
    t,
    mask_from,
    unmask_from,
    seq_len,
    q_pos,
    qk_scale,
    cap_in,
    win_left,
    cols_s,
    TILE_N: gl.constexpr,
    CAUSAL: gl.constexpr,
    WINDOW: gl.constexpr,
    SOFTCAP: gl.constexpr,
):
    """One online-softmax step on the raw scores s of tile t: (m, l, p, alpha), base 2.
    Only tiles that end past ``mask_from`` (the diagonal or the context's end) or, with
    WINDOW, start before ``unmask_from`` (the last row's left edge) are masked."""
    if SOFTCAP:
        s = _tanh(s * cap_in)
    needs_mask = (t + 1) * TILE_N > mask_from
    if WINDOW:
        needs_mask = needs_mask | (t * TILE_N < unmask_from)
    if needs_mask:
        # Per row, the columns of this tile it may see are those below ``limit``.
        limit = gl.full_like(q_pos, seq_len)
        if CAUSAL:
            limit = gl.minimum(limit, q_pos + 1)
        col = gl.expand_dims(cols_s, 0)
        keep = col < gl.expand_dims(limit - t * TILE_N, 1)
        if WINDOW:
            keep = keep & (col >= gl.expand_dims(q_pos - win_left - t * TILE_N, 1))
        s = gl.where(keep, s, gl.full_like(s, float("-inf")))
    return online_step(s, m_i, l_i, qk_scale)


@gluon.jit
def _consume_tiles(
    head,
    seq,
    t_first,
    t_step,
    num_q_heads,
    it,
    n_done,
    turns,
    tails,
    q_smem,
    k_smem,
    v_smem,
    q_ready,
    q_empty,
    k_ready,
    v_ready,
    k_empty,
    v_empty,
    my_turn,
    their_turn,
    v_clean,
    v_seen,
    out_ptr,
    lse_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    cu_seqlens_k_ptr,
    qk_scale,
    cap_in,
    win_left,
    num_tokens,
    max_k,
    decode_q,
    stride_o_t,
    stride_o_h,
    WG: gl.constexpr,  # 0 or 1: which 64-row half of the query tile
    HEAD_DIM: gl.constexpr,
    TILE_N: gl.constexpr,
    STAGES: gl.constexpr,
    PAGED: gl.constexpr,
    CAUSAL: gl.constexpr,
    WINDOW: gl.constexpr,
    SOFTCAP: gl.constexpr,
    PINGPONG: gl.constexpr,
    RETURN_LSE: gl.constexpr,
    EARLY_Q: gl.constexpr,  # release Q after the last QK^T rather than after the last PV
    ACK: gl.constexpr,  # _clean_tail's confirmation
    THREAD_ARRIVES: gl.constexpr,  # _release's
):
    """Query tiles t_first, t_first + t_step, ... (counted from the last) of one head and
    sequence; the counters (key tiles and query tiles consumed, ping-pong rounds, tail
    cleans) carry every barrier's phase on to the next call."""
    BLOCK_M: gl.constexpr = 2 * HALF_M
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, TILE_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    q_start, q_len, _, seq_len, served = _span(
        cu_seqlens_q_ptr, cu_seqlens_k_ptr, seq_lens_ptr, seq, num_tokens, max_k, decode_q, PAGED
    )
    ctx = seq_len - q_len
    n_q_tiles = gl.where(served, gl.cdiv(q_len, BLOCK_M), 0)
    q_mine = q_smem.index(WG)
    rows_s = gl.arange(0, HALF_M, layout=row_s)
    cols_s = gl.arange(0, TILE_N, layout=col_s)

    for t_q in range(t_first, n_q_tiles, t_step):
        q0 = (n_q_tiles - 1 - t_q) * BLOCK_M + WG * HALF_M
        q_pos = ctx + q0 + rows_s
        # The first key a row of this half cannot see is past every row's diagonal from
        # here on: tiles wholly below ``diag`` need no causal mask.
        diag = ctx + q0 + 1
        t_lo, n_kv = _kv_tiles(q0 - WG * HALF_M, q_len, seq_len, win_left, BLOCK_M, TILE_N, CAUSAL, WINDOW)
        # Keys from here on are inside every row's window (WINDOW: the last row's left edge).
        unmask_from = ctx + q0 + HALF_M - 1 - win_left
        mbarrier.wait(q_ready, n_done & 1)
        n_done += 1

        m_i = gl.full([HALF_M], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([HALF_M], gl.float32, layout=row_s)
        acc = gl.zeros([HALF_M, HEAD_DIM], gl.float32, layout=o_layout)
        zero_s = gl.zeros([HALF_M, TILE_N], gl.float32, layout=s_layout)
        mask_from = seq_len  # the first tile ending past this needs a mask
        if CAUSAL:
            mask_from = gl.minimum(diag, seq_len)

        # Round 0: S of tile t_lo only.
        turns = _take_turn(my_turn, turns, PINGPONG)
        mbarrier.wait(k_ready.index(it % STAGES), (it // STAGES) & 1)
        s_tok = warpgroup_mma(q_mine, k_smem.index(it % STAGES).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        _pass_turn(their_turn, PINGPONG, THREAD_ARRIVES)
        s = warpgroup_mma_wait(num_outstanding=0, deps=[s_tok])
        _release(k_empty.index(it % STAGES), THREAD_ARRIVES)
        m_i, l_i, p, alpha = _softmax(
            s, m_i, l_i, t_lo, mask_from, unmask_from, seq_len, q_pos, qk_scale, cap_in, win_left, cols_s,
            TILE_N, CAUSAL, WINDOW, SOFTCAP,
        )  # fmt: skip
        p = gl.convert_layout(p.to(dtype), p_layout)
        it += 1
        # Round t: S of tile t, then PV of tile t - 1; the softmax of tile t runs while the
        # PV is in flight.
        for t in range(t_lo + 1, n_kv):
            slot = it % STAGES
            prev = (it - 1) % STAGES
            turns = _take_turn(my_turn, turns, PINGPONG)
            mbarrier.wait(k_ready.index(slot), (it // STAGES) & 1)
            s_tok = warpgroup_mma(q_mine, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            # Tile t - 1 is not the sequence's last (tile n_kv - 1 may be): no tail to clean.
            mbarrier.wait(v_ready.index(prev), ((it - 1) // STAGES) & 1)
            acc_tok = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
            _pass_turn(their_turn, PINGPONG, THREAD_ARRIVES)
            s = warpgroup_mma_wait(num_outstanding=1, deps=[s_tok])
            # Both consumers arrive: a slot is free once the second one has.
            _release(k_empty.index(slot), THREAD_ARRIVES)
            m_i, l_i, p_f, alpha = _softmax(
                s, m_i, l_i, t, mask_from, unmask_from, seq_len, q_pos, qk_scale, cap_in, win_left, cols_s,
                TILE_N, CAUSAL, WINDOW, SOFTCAP,
            )  # fmt: skip
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc_tok])
            _release(v_empty.index(prev), THREAD_ARRIVES)
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            p = gl.convert_layout(p_f.to(dtype), p_layout)
            it += 1
        if EARLY_Q:
            # Every QK^T of this query tile has completed: the loader may bring the next Q
            # in while the last PV and the epilogue run.
            _release(q_empty, THREAD_ARRIVES)
        # Last round: PV of the last tile.
        prev = (it - 1) % STAGES
        turns = _take_turn(my_turn, turns, PINGPONG)
        mbarrier.wait(v_ready.index(prev), ((it - 1) // STAGES) & 1)
        tails = _clean_tail(v_smem.index(prev), v_clean, v_seen, tails, n_kv - 1, seq_len, WG, TILE_N, HEAD_DIM, ACK)
        acc_tok = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
        _pass_turn(their_turn, PINGPONG, THREAD_ARRIVES)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc_tok])
        _release(v_empty.index(prev), THREAD_ARRIVES)
        if not EARLY_Q:
            # Both halves are done with this query tile: Q may be replaced.
            _release(q_empty, THREAD_ARRIVES)

        l_safe = gl.where(l_i == 0.0, gl.full_like(l_i, 1.0), l_i)
        out = acc / gl.expand_dims(gl.convert_layout(l_safe, row_o), 1)
        rows_o = gl.arange(0, HALF_M, layout=row_o)
        d = gl.arange(0, HEAD_DIM, layout=col_o)
        row_ok = q0 + rows_o < q_len
        tok = (q_start + q0 + rows_o).to(gl.int64)
        ptrs = out_ptr + gl.expand_dims(tok * stride_o_t + head * stride_o_h, 1) + gl.expand_dims(d, 0)
        gl.store(ptrs, out.to(dtype), mask=gl.expand_dims(row_ok, 1))
        if RETURN_LSE:
            lse = gl.where(l_i == 0.0, gl.full_like(l_i, float("-inf")), (m_i * qk_scale + gl.log2(l_safe)) * LN2)
            tok_s = (q_start + q0 + rows_s).to(gl.int64)
            gl.store(lse_ptr + tok_s * num_q_heads + head, lse, mask=q0 + rows_s < q_len)
    return it, n_done, turns, tails


@gluon.jit
def _consumer(
    q_smem,
    k_smem,
    v_smem,
    q_ready,
    q_empty,
    k_ready,
    v_ready,
    k_empty,
    v_empty,
    my_turn,
    their_turn,
    v_clean,
    v_seen,
    out_ptr,
    lse_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    cu_seqlens_k_ptr,
    qk_scale,
    cap_in,
    win_left,
    num_tokens,
    max_k,
    decode_q,
    stride_o_t,
    stride_o_h,
    num_q_heads,
    num_seqs,
    q_levels,
    n_work,
    programs,
    WG: gl.constexpr,  # 0 or 1: which 64-row half of the query tile
    HEAD_DIM: gl.constexpr,
    TILE_N: gl.constexpr,
    STAGES: gl.constexpr,
    PAGED: gl.constexpr,
    CAUSAL: gl.constexpr,
    WINDOW: gl.constexpr,
    SOFTCAP: gl.constexpr,
    PINGPONG: gl.constexpr,
    RETURN_LSE: gl.constexpr,
    PERSISTENT: gl.constexpr,
    THREAD_ARRIVES: gl.constexpr,
):
    if PERSISTENT:
        it = gl.to_tensor(0)  # key tiles consumed so far (the loader's numbering)
        n_done = gl.to_tensor(0)  # query tiles consumed so far
        turns = gl.to_tensor(0)  # wgmma issue rounds so far (ping-pong parity)
        tails = gl.to_tensor(0)  # tail tiles cleaned so far (v_clean parity)
        # The epilogue's 64-bit row offsets from zero- rather than sign-extended factors (both
        # are non-negative): a sign extension is computed once for the whole kernel, and kept
        # across the partitions' register moves it spills; a zero one is a constant high word.
        heads_64 = num_q_heads.to(gl.uint32).to(gl.int64)
        stride_o_t_64 = stride_o_t.to(gl.uint32).to(gl.int64)
        for w in range(_program(), n_work, programs):
            head, seq, level = _work_tile(w, num_q_heads, num_seqs)
            it, n_done, turns, tails = _consume_tiles(
                head, seq, level, q_levels, heads_64, it, n_done, turns, tails,
                q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                my_turn, their_turn, v_clean, v_seen, out_ptr, lse_ptr, seq_lens_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr,
                qk_scale, cap_in, win_left, num_tokens, max_k, decode_q, stride_o_t_64, stride_o_h,
                WG, HEAD_DIM, TILE_N, STAGES, PAGED, CAUSAL, WINDOW, SOFTCAP, PINGPONG, RETURN_LSE,
                True, not PINGPONG, THREAD_ARRIVES,
            )  # fmt: skip
    else:
        _consume_tiles(
            # The counters start as tensors: a literal would enter as a constant, which a branch
            # may not redefine.
            gl.program_id(0), gl.program_id(1), gl.program_id(2), gl.num_programs(2), gl.num_programs(0),
            gl.to_tensor(0), gl.to_tensor(0), gl.to_tensor(0), gl.to_tensor(0),
            q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                my_turn, their_turn, v_clean, v_seen, out_ptr, lse_ptr, seq_lens_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr,
                qk_scale, cap_in, win_left, num_tokens, max_k, decode_q, stride_o_t, stride_o_h,
                WG, HEAD_DIM, TILE_N, STAGES, PAGED, CAUSAL, WINDOW, SOFTCAP, PINGPONG, RETURN_LSE,
            False, not PINGPONG, THREAD_ARRIVES,
        )  # fmt: skip


@gluon.jit(
    do_not_specialize=[
        "num_tokens",
        "num_blocks",
        "max_k",
        "decode_q",
        "win_left",
        "num_seqs",
        "q_levels",
        "n_work",
        "programs",
        # The block-table row stride: vLLM's is fixed, but the fp8 path's staged table has
        # one column per page of the longest context, 1 for a short one.
        "stride_bt_s",
    ],
    # Index tensors are read one scalar at a time (a page id per key tile): callers' slices
    # at any offset (the plugin's prefill rows after a mixed batch's decodes) share a variant.
    do_not_specialize_on_alignment=["block_table_ptr", "seq_lens_ptr", "cu_seqlens_q_ptr", "cu_seqlens_k_ptr"],
)
def prefill_gluon_kernel(
    q_desc,  # [num_tokens, num_q_heads * HEAD_DIM] rows of q, block [64, HEAD_DIM]
    k_desc,  # the cache (or contiguous keys) as 2-D rows (module docstring), block [TILE_N, HEAD_DIM]
    v_desc,  # same layout as k_desc
    out_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]
    lse_ptr,  # [num_tokens, num_q_heads] fp32, RETURN_LSE only
    block_table_ptr,  # [num_seqs, max_blocks] int32, PAGED only
    seq_lens_ptr,  # [num_seqs] int32, PAGED only
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    cu_seqlens_k_ptr,  # [num_seqs + 1] int32, varlen only
    qk_scale,  # multiplies the (capped) logits into log2 units: scale * log2(e), SOFTCAP softcap * log2(e)
    cap_in,  # SOFTCAP: scale / softcap
    num_tokens,
    num_blocks,  # pages in the cache (PAGED)
    max_k,  # PAGED: max_blocks * BLOCK_SIZE; varlen: rows of k
    decode_q,  # sequences with 0..decode_q new tokens are not this launch's (0: empty ones only)
    win_left,  # WINDOW: keys visible left of the query's position
    num_q_heads,
    num_seqs,
    q_levels,  # query tiles per sequence the launch plans for (max_seqlen_q / BLOCK_M, rounded up)
    n_work,  # PERSISTENT: q_levels x num_seqs x num_q_heads work tiles
    programs,  # PERSISTENT: the grid (given, not read: a value ptxas can reload)
    rows_per_block,
    rows_per_head,
    cols_per_head,
    stride_o_t,
    stride_o_h,
    stride_bt_s,
    HEAD_DIM: gl.constexpr,  # 64, 128 or 256 (_gluon.TILES)
    GROUP: gl.constexpr,  # query heads per KV head
    TILE_N: gl.constexpr,  # keys per tile; divides BLOCK_SIZE when PAGED
    BLOCK_SIZE: gl.constexpr,
    STAGES: gl.constexpr,  # K/V slots in the shared-memory ring
    PAGED: gl.constexpr,
    CAUSAL: gl.constexpr,
    WINDOW: gl.constexpr,  # causal launches only
    SOFTCAP: gl.constexpr,
    PINGPONG: gl.constexpr,
    RETURN_LSE: gl.constexpr,
    LOADER_REGS: gl.constexpr,
    CONSUMER_REGS: gl.constexpr,
    PERSISTENT: gl.constexpr,  # grid (programs,): each walks work tiles (_work_tile), w += programs
    THREAD_ARRIVES: gl.constexpr = False,  # _release: every consumer thread arrives, no bar.sync
):
    """Grid (num_q_heads, num_seqs, query-tile programs), or with PERSISTENT (programs,) over
    q_levels x num_seqs x num_q_heads work tiles, a work tile being query tiles level,
    level + q_levels, ... of one head and sequence (one query tile unless max_seqlen_q is
    understated); 4 warps (the first consumer; the second consumer's 4 warps and the
    loader's warp are added by warp_specialize)."""
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2, HALF_M, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE_N, HEAD_DIM], v_desc.layout)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    q_ready = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    q_empty = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    v_clean = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    # Arrivals per consumer on what it releases (_release): thread 0's, or all its threads'.
    ARRIVALS: gl.constexpr = WG_THREADS if THREAD_ARRIVES else 1
    mbarrier.init(q_ready, count=1)
    mbarrier.init(q_empty, count=2 * ARRIVALS)
    mbarrier.init(v_clean, count=1)
    if not PINGPONG:
        # _clean_tail's confirmation; with the ping-pong the first consumer's next clean is in
        # a later turn than the second's wait, which the second must pass first.
        v_seen = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
        mbarrier.init(v_seen, count=1)
    else:
        v_seen = v_clean  # never waited on nor arrived at
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=ARRIVALS)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2 * ARRIVALS)
        mbarrier.init(v_empty.index(i), count=2 * ARRIVALS)
    # The first consumer issues first.
    mbarrier.arrive(turn.index(0), count=ARRIVALS)
    fence_async_shared()

    gl.warp_specialize(
        [
            (
                _consumer,
                (q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                 turn.index(0), turn.index(1), v_clean, v_seen, out_ptr, lse_ptr,
                 seq_lens_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, qk_scale, cap_in, win_left,
                 num_tokens, max_k, decode_q, stride_o_t, stride_o_h, num_q_heads, num_seqs, q_levels, n_work, programs,
                 0, HEAD_DIM, TILE_N, STAGES, PAGED, CAUSAL, WINDOW, SOFTCAP, PINGPONG, RETURN_LSE, PERSISTENT,
                 THREAD_ARRIVES),
            ),
            (
                _consumer,
                (q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                 turn.index(1), turn.index(0), v_clean, v_seen, out_ptr, lse_ptr,
                 seq_lens_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, qk_scale, cap_in, win_left,
                 num_tokens, max_k, decode_q, stride_o_t, stride_o_h, num_q_heads, num_seqs, q_levels, n_work, programs,
                 1, HEAD_DIM, TILE_N, STAGES, PAGED, CAUSAL, WINDOW, SOFTCAP, PINGPONG, RETURN_LSE, PERSISTENT,
                 THREAD_ARRIVES),
            ),
            (
                _loader,
                (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty,
                 block_table_ptr, seq_lens_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr,
                 num_tokens, num_blocks, max_k, decode_q, win_left, num_q_heads, num_seqs, q_levels, n_work, programs,
                 rows_per_block, rows_per_head, cols_per_head, stride_bt_s,
                 HEAD_DIM, GROUP, TILE_N, BLOCK_SIZE, STAGES, PAGED, CAUSAL, WINDOW, PERSISTENT),
            ),
        ],
        [4, 1],
        [CONSUMER_REGS, LOADER_REGS],
    )  # fmt: skip
