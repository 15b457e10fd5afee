"""Hopper (sm_90) decode for wide verification rows in Gluon: 64 query rows of one KV head
against TMA-loaded K/V pages, split-KV.

A row is a (new token, query head) pair of one sequence, the GROUP query heads of one KV
head side by side, so a program's 64 rows are ROWS // GROUP new tokens of one sequence times
its GROUP heads (8 or 16 tokens of a speculative-decoding verification step at GQA 8 or 4),
and every K/V tile is read once for all of them. The generic decode kernel does the same
with ``tl.dot`` on pointer loads, one program doing loads, both products and the softmax in
sequence; at 32+ rows it ran at 0.51-0.72x FlashAttention-3 on an H200 (and FA3 takes the
same time for 2 and 16 new tokens). Here two partitions overlap them:

- a loader warp issues TMA copies of K and V tiles (TILE_N consecutive slots of one page:
  the page size is a multiple of TILE_N, one 2-D descriptor covers the cache, as in
  ``prefill_gluon.py``) into a ring of STAGES slots;
- one consumer warpgroup loads its 64 query rows into shared memory (plain loads: the rows
  of a KV head are not one box of any tensor view), then per key tile issues S = Q K^T by
  wgmma, runs the online softmax in registers and feeds P to the P V wgmma from registers;
  the QK^T of tile j + 1 is issued before the PV of tile j.

Keys are split over the grid's third axis; partials follow ``attention.merge_kernel``'s
layout (DECODE_Q token slots per sequence). A sequence with more new tokens than DECODE_Q
(an understated ``max_seqlen_q``) is, where no prefill launch runs, computed whole in split
0, row block after row block, and written directly (merge_kernel skips it), as the generic
kernel's rescue path does.

Only the causal mask (decode and verification are causal), and only on tiles past the first
row's diagonal. Cache slots past a context may hold anything, NaN included: the consumer
zeroes those rows of the sequence's last V tile in shared memory before its PV reads them.
Index contents are clamped as in ``attention_kernel``.
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

from .prefill_gluon import _zero_tail_rows
from .softmax_gluon import online_step

ROWS = gl.constexpr(64)  # query rows per program (one wgmma M)
LN2 = gl.constexpr(0.6931471805599453)


@gluon.jit
def _sequence(cu_seqlens_q_ptr, seq_lens_ptr, seq, num_tokens, max_k, other_launch, TOKS: gl.constexpr,
              DECODE_Q: gl.constexpr):  # fmt: skip
    """(q_start, q_len, seq_len, row blocks, rescue) of one sequence, clamped into the
    tensors: rescue when it has more than DECODE_Q new tokens and no prefill launch runs
    (then it has row blocks for all of them; with a prefill launch, none)."""
    q_start = gl.minimum(gl.maximum(gl.load(cu_seqlens_q_ptr + seq), 0), num_tokens)
    q_len = gl.minimum(gl.maximum(gl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens) - q_start
    seq_len = gl.minimum(gl.maximum(gl.load(seq_lens_ptr + seq), 0), max_k)
    over = q_len > DECODE_Q
    rescue = over & (other_launch == 0)
    n_rb = gl.where(over & (other_launch != 0), 0, gl.cdiv(q_len, TOKS))
    return q_start, q_len, seq_len, n_rb, rescue


@gluon.jit
def _row_block(rb, q_len, seq_len, split, num_splits, rescue, TOKS: gl.constexpr, TILE_N: gl.constexpr):
    """Row block rb's first new token, its key tiles [t_begin, t_end) in this split, and the
    first key some row of it cannot see (tiles ending past it are masked). A rescued
    sequence's row blocks run whole in split 0."""
    ctx = seq_len - q_len
    tok0 = rb * TOKS
    last_tok = gl.minimum(tok0 + TOKS, q_len) - 1
    kv_hi = gl.maximum(gl.minimum(seq_len, ctx + last_tok + 1), 0)
    n_tiles = gl.cdiv(kv_hi, TILE_N)
    splits = gl.where(rescue, 1, num_splits)
    per_split = gl.cdiv(n_tiles, splits)
    t_begin = gl.where(rescue, 0, split * per_split)
    t_end = gl.where(rescue & (split != 0), 0, gl.minimum(t_begin + per_split, n_tiles))
    mask_from = gl.minimum(ctx + tok0 + 1, seq_len)
    return tok0, t_begin, t_end, mask_from


@gluon.jit
def _loader(
    k_desc,
    v_desc,
    k_smem,
    v_smem,
    k_ready,
    v_ready,
    k_empty,
    v_empty,
    block_table_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    num_tokens,
    num_blocks,
    max_k,
    other_launch,
    num_splits,
    rows_per_block,
    rows_per_head,
    cols_per_head,
    stride_bt_s,
    GROUP: gl.constexpr,
    DECODE_Q: gl.constexpr,
    N_RB: gl.constexpr,
    TILE_N: gl.constexpr,
    BLOCK_SIZE: gl.constexpr,
    STAGES: gl.constexpr,
):
    TOKS: gl.constexpr = ROWS // GROUP
    kv_head = gl.program_id(0) // N_RB
    seq = gl.program_id(1)
    split = gl.program_id(2)
    _, q_len, seq_len, n_rb, rescue = _sequence(
        cu_seqlens_q_ptr, seq_lens_ptr, seq, num_tokens, max_k, other_launch, TOKS, DECODE_Q
    )
    bt_row = block_table_ptr + seq.to(gl.int64) * stride_bt_s
    row_base = kv_head * rows_per_head
    col = kv_head * cols_per_head
    it = gl.to_tensor(0)  # tiles issued so far: the ring's slot and phase
    for rb in range(gl.program_id(0) % N_RB, n_rb, N_RB):
        _, t_begin, t_end, _ = _row_block(rb, q_len, seq_len, split, num_splits, rescue, TOKS, TILE_N)
        for t in range(t_begin, t_end):
            slot = it % STAGES
            free = ((it // STAGES) & 1) ^ 1  # a fresh barrier passes this parity at once
            pos = t * TILE_N
            page = gl.minimum(gl.maximum(gl.load(bt_row + pos // BLOCK_SIZE), 0), num_blocks - 1)
            row = page * rows_per_block + row_base + pos % BLOCK_SIZE
            mbarrier.wait(k_empty.index(slot), free)
            mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [row, col], k_ready.index(slot), k_smem.index(slot))
            mbarrier.wait(v_empty.index(slot), free)
            mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [row, col], v_ready.index(slot), v_smem.index(slot))
            it += 1


@gluon.jit
def _hold_wait_here(order):
    """Keep the next wgmma wait below this point. ptxas moves a wait up to the previous
    barrier operation: the PV's wait, after the softmax in the source, had moved to the
    softmax's start, so the softmax never ran beside the PV in flight. Each thread's arrival
    on ``order``, a barrier nobody waits for, is such an operation (one instruction; no
    cp.async is in flight, so it arrives at once). Checked in the SASS by
    ``_sm90.exps_beside_pv`` (``nox -s sm90``). Measured on the H200 (verification at
    128-token pages): 0-1.3% faster at every point; the same change to the prefill, whose
    two ping-ponging warpgroups already hide each other's softmax, was not faster."""
    async_copy.mbarrier_arrive(order, increment_count=False)


@gluon.jit
def _softmax(s, m_i, l_i, t, mask_from, seq_len, ctx, tok0, qk_scale, rows_s, cols_s, GROUP: gl.constexpr,
             TILE_N: gl.constexpr):  # fmt: skip
    """One online-softmax step (base 2) on tile t's raw scores; masked only past mask_from."""
    if (t + 1) * TILE_N > mask_from:
        # Row r (new token tok0 + r // GROUP) sees the keys below its limit.
        limit = gl.minimum(ctx + tok0 + rows_s // GROUP + 1, seq_len)
        keep = gl.expand_dims(cols_s, 0) < gl.expand_dims(limit - t * TILE_N, 1)
        s = gl.where(keep, s, gl.full_like(s, float("-inf")))
    return online_step(s, m_i, l_i, qk_scale)


@gluon.jit
def _consumer(
    q_ptr,
    q_smem,
    k_smem,
    v_smem,
    k_ready,
    v_ready,
    k_empty,
    v_empty,
    order,
    out_ptr,
    lse_ptr,
    part_out_ptr,
    part_lse_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    qk_scale,
    num_tokens,
    max_k,
    other_launch,
    num_splits,
    stride_q_t,
    stride_q_h,
    stride_o_t,
    stride_o_h,
    HEAD_DIM: gl.constexpr,
    GROUP: gl.constexpr,
    DECODE_Q: gl.constexpr,
    N_RB: gl.constexpr,
    TILE_N: gl.constexpr,
    STAGES: gl.constexpr,
    SPLIT_KV: gl.constexpr,
    RETURN_LSE: gl.constexpr,
):
    TOKS: gl.constexpr = ROWS // GROUP
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, TILE_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    q_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)

    kv_head = gl.program_id(0) // N_RB
    seq = gl.program_id(1)
    split = gl.program_id(2)
    num_q_heads = (gl.num_programs(0) // N_RB) * GROUP
    q_start, q_len, seq_len, n_rb, rescue = _sequence(
        cu_seqlens_q_ptr, seq_lens_ptr, seq, num_tokens, max_k, other_launch, TOKS, DECODE_Q
    )
    ctx = seq_len - q_len
    rows_s = gl.arange(0, ROWS, layout=row_s)
    cols_s = gl.arange(0, TILE_N, layout=gl.SliceLayout(0, s_layout))
    rows_q = gl.arange(0, ROWS, layout=gl.SliceLayout(1, q_layout))
    d_q = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, q_layout))
    rows_o = gl.arange(0, ROWS, layout=row_o)
    d_o = gl.arange(0, HEAD_DIM, layout=col_o)
    it = gl.to_tensor(0)  # tiles consumed so far (the loader's numbering)
    for rb in range(gl.program_id(0) % N_RB, n_rb, N_RB):
        tok0, t_begin, t_end, mask_from = _row_block(rb, q_len, seq_len, split, num_splits, rescue, TOKS, TILE_N)
        # This block's rows into shared memory: rows past the sequence's tokens (or past
        # TOKS x GROUP) read zeros and are never stored.
        tok_q = tok0 + rows_q // GROUP
        ok_q = (rows_q < TOKS * GROUP) & (tok_q < q_len)
        q_off = (q_start + tok_q).to(gl.int64) * stride_q_t + (kv_head * GROUP + rows_q % GROUP) * stride_q_h
        q = gl.load(q_ptr + gl.expand_dims(q_off, 1) + gl.expand_dims(d_q, 0), mask=gl.expand_dims(ok_q, 1), other=0.0)
        gl.thread_barrier()  # every wgmma of the previous block has read Q
        q_smem.store(q)
        fence_async_shared()
        gl.thread_barrier()

        m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([ROWS], gl.float32, layout=row_s)
        acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
        if t_end > t_begin:
            zero_s = gl.zeros([ROWS, TILE_N], gl.float32, layout=s_layout)
            # Tile t_begin: its scores only.
            mbarrier.wait(k_ready.index(it % STAGES), (it // STAGES) & 1)
            s_tok = warpgroup_mma(q_smem, k_smem.index(it % STAGES).permute((1, 0)), zero_s, use_acc=False,
                                  is_async=True)  # fmt: skip
            s = warpgroup_mma_wait(num_outstanding=0, deps=[s_tok])
            mbarrier.arrive(k_empty.index(it % STAGES))
            m_i, l_i, p_f, alpha = _softmax(s, m_i, l_i, t_begin, mask_from, seq_len, ctx, tok0, qk_scale, rows_s,
                                            cols_s, GROUP, TILE_N)  # fmt: skip
            p = gl.convert_layout(p_f.to(dtype), p_layout)
            it += 1
            # Tile t: its scores, then the PV of tile t - 1 (never the sequence's last
            # tile: nothing to clean); tile t's softmax runs while that PV is in flight.
            for t in range(t_begin + 1, t_end):
                slot = it % STAGES
                prev = (it - 1) % STAGES
                mbarrier.wait(k_ready.index(slot), (it // STAGES) & 1)
                s_tok = warpgroup_mma(q_smem, k_smem.index(slot).permute((1, 0)), zero_s, use_acc=False,
                                      is_async=True)  # fmt: skip
                mbarrier.wait(v_ready.index(prev), ((it - 1) // STAGES) & 1)
                acc_tok = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=1, deps=[s_tok])
                mbarrier.arrive(k_empty.index(slot))
                m_i, l_i, p_f, alpha = _softmax(s, m_i, l_i, t, mask_from, seq_len, ctx, tok0, qk_scale, rows_s,
                                                cols_s, GROUP, TILE_N)  # fmt: skip
                _hold_wait_here(order)  # the softmax above runs beside the PV
                acc, p = warpgroup_mma_wait(num_outstanding=0, deps=[acc_tok, p])  # p: the PV's operand
                mbarrier.arrive(v_empty.index(prev))
                acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
                p = gl.convert_layout(p_f.to(dtype), p_layout)
                it += 1
            # The last tile's PV.
            prev = (it - 1) % STAGES
            mbarrier.wait(v_ready.index(prev), ((it - 1) // STAGES) & 1)
            tail = seq_len - (t_end - 1) * TILE_N
            if tail < TILE_N:
                _zero_tail_rows(v_smem.index(prev), tail, TILE_N, HEAD_DIM)
            acc_tok = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc_tok])
            mbarrier.arrive(v_empty.index(prev))

        # Epilogue: one split's rows (partials for merge_kernel) or, with one split or for a
        # rescued sequence, the output. A split that saw no key stores lse -inf and no row.
        l_safe = gl.where(l_i == 0.0, gl.full_like(l_i, 1.0), l_i)
        out = acc / gl.expand_dims(gl.convert_layout(l_safe, row_o), 1)
        lse2 = gl.convert_layout(
            gl.where(l_i == 0.0, gl.full_like(l_i, float("-inf")), m_i * qk_scale + gl.log2(l_safe)), row_o
        )
        tok_idx = tok0 + rows_o // GROUP
        head = kv_head * GROUP + rows_o % GROUP
        ok = (rows_o < TOKS * GROUP) & (tok_idx < q_len) & ((split == 0) | (~rescue))
        direct = ok & rescue
        if not SPLIT_KV:
            direct = ok
        tok = (q_start + tok_idx).to(gl.int64)
        o_ptrs = out_ptr + gl.expand_dims(tok * stride_o_t + head * stride_o_h, 1) + gl.expand_dims(d_o, 0)
        gl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=gl.expand_dims(direct, 1))
        if RETURN_LSE:
            gl.store(lse_ptr + tok * num_q_heads + head, lse2 * LN2, mask=direct)
        if SPLIT_KV:
            part = ((seq.to(gl.int64) * DECODE_Q + tok_idx) * num_q_heads + head) * num_splits + split
            to_part = ok & (~rescue)
            seen = to_part & (lse2 > float("-inf"))
            p_ptrs = part_out_ptr + gl.expand_dims(part * HEAD_DIM, 1) + gl.expand_dims(d_o, 0)
            gl.store(p_ptrs, out, mask=gl.expand_dims(seen, 1))
            gl.store(part_lse_ptr + part, lse2, mask=to_part)


@gluon.jit(
    do_not_specialize=["num_tokens", "num_blocks", "max_k", "other_launch", "num_splits"],
    # Index tensors are read one scalar at a time: callers' slices at any offset share a variant.
    do_not_specialize_on_alignment=["block_table_ptr", "seq_lens_ptr", "cu_seqlens_q_ptr"],
)
def decode_gluon_kernel(
    q_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]
    k_desc,  # the cache as 2-D rows (prefill_gluon.py's view), block [TILE_N, HEAD_DIM]
    v_desc,  # same layout as k_desc
    out_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]
    lse_ptr,  # [num_tokens, num_q_heads] fp32, RETURN_LSE only
    part_out_ptr,  # merge_kernel's partials [num_seqs, DECODE_Q, num_q_heads, num_splits, HEAD_DIM], SPLIT_KV
    part_lse_ptr,  # [num_seqs, DECODE_Q, num_q_heads, num_splits] fp32 (log2 units), SPLIT_KV
    block_table_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    qk_scale,  # softmax scale x log2(e)
    num_tokens,
    num_blocks,
    max_k,  # max_blocks * BLOCK_SIZE: no context reads past its block-table row
    other_launch,  # 1: a prefill launch serves sequences of more than DECODE_Q new tokens
    num_splits,  # key splits (the grid's third axis); a plain argument: one variant for every count
    rows_per_block,
    rows_per_head,
    cols_per_head,
    stride_q_t,
    stride_q_h,
    stride_o_t,
    stride_o_h,
    stride_bt_s,
    HEAD_DIM: gl.constexpr,  # Q, K and V's head size: 64 or 128
    GROUP: gl.constexpr,  # query heads per KV head (at most ROWS)
    DECODE_Q: gl.constexpr,  # new tokens per sequence of this launch (max_seqlen_q; the partials' layout)
    N_RB: gl.constexpr,  # row blocks per KV head: cdiv(DECODE_Q, ROWS // GROUP)
    TILE_N: gl.constexpr,  # keys per tile; divides BLOCK_SIZE
    BLOCK_SIZE: gl.constexpr,
    STAGES: gl.constexpr,  # K/V slots in the shared-memory ring
    SPLIT_KV: gl.constexpr,  # num_splits > 1: partials for merge_kernel
    RETURN_LSE: gl.constexpr,
    LOADER_REGS: gl.constexpr,
):
    """Grid (num_kv_heads x N_RB, num_seqs, num_splits); 4 warps (the consumer; the loader's
    warp is added by warp_specialize)."""
    dtype: gl.constexpr = k_desc.dtype
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, HEAD_DIM], dtype)
    q_smem = gl.allocate_shared_memory(dtype, [ROWS, HEAD_DIM], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE_N, HEAD_DIM], v_desc.layout)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    order = gl.allocate_shared_memory(gl.int64, [1], bar_layout)  # _hold_wait_here's
    mbarrier.init(order, count=128)  # one warpgroup's arrivals; its phase turns over unobserved
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=1)
    fence_async_shared()

    gl.warp_specialize(
        [
            (
                _consumer,
                (q_ptr, q_smem, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, order, out_ptr, lse_ptr, part_out_ptr,
                 part_lse_ptr, seq_lens_ptr, cu_seqlens_q_ptr, qk_scale, num_tokens, max_k, other_launch, num_splits,
                 stride_q_t, stride_q_h, stride_o_t, stride_o_h,
                 HEAD_DIM, GROUP, DECODE_Q, N_RB, TILE_N, STAGES, SPLIT_KV, RETURN_LSE),
            ),
            (
                _loader,
                (k_desc, v_desc, k_smem, v_smem, k_ready, v_ready, k_empty, v_empty, block_table_ptr, seq_lens_ptr,
                 cu_seqlens_q_ptr, num_tokens, num_blocks, max_k, other_launch, num_splits, rows_per_block,
                 rows_per_head, cols_per_head, stride_bt_s, GROUP, DECODE_Q, N_RB, TILE_N, BLOCK_SIZE, STAGES),
            ),
        ],
        [1],
        [LOADER_REGS],
    )  # fmt: skip
