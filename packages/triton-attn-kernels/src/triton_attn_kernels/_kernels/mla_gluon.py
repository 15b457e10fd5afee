"""Hopper (sm_90) MLA decode in Gluon: 64 query rows against TMA-loaded latent tiles, the
512 output columns split over two consumer warpgroups.

A program owns 64 consecutive rows of the query viewed as [num_tokens * num_heads, 576]
(``[q_nope | q_pe]``, 512 + 64) that belong to one sequence: 64 heads of one token (128-head
models: two programs per token), or every head of several tokens (16-head models, or a
verification run of a few new tokens). All its rows read the same latent rows, so each
latent tile is loaded once for all of them. Three partitions:

- a loader warp issues TMA copies: Q once (three boxes: columns 0-255, 256-511, 512-575),
  then latent tiles of TILE_N keys the same way into a ring of STAGES slots (ready: the
  bytes have landed; empty: both consumers are done with the slot);
- the first consumer warpgroup computes S = Q K^T over all 576 columns (three chained
  wgmmas), the online softmax, writes P (bf16/fp16) and the row rescale factor to shared
  memory for the second, and accumulates O[:, 0:256] += P V[:, 0:256]. It issues the QK^T
  of tile j + 1 before the PV of tile j, so the tensor cores work while its softmax runs;
- the second warpgroup accumulates O[:, 256:512] += P V[:, 256:512] from the P in shared
  memory, while the first runs the next tile's softmax.

So the QK^T is computed once (a 64-row tile in both warpgroups would compute it twice), and
each warpgroup's accumulator is 64 x 256 fp32 (128 registers a thread). Keys are split over
the grid's third axis; partials follow ``attention.merge_kernel``'s layout. Latent slots past
a context may hold anything, NaN included: each consumer zeroes its own half's rows of the
last tile in shared memory before its PV reads them (the first only after its QK^T of that
tile has completed, the second only after the first has published P).

Shared memory at TILE_N 64, 2 stages: Q 72 KB, the ring 2 x 72 KB, P 8 KB: 224 KB of the
227 KB an sm_90 block may have.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .softmax_gluon import online_step

ROWS = gl.constexpr(64)  # query rows per program (one wgmma M per warpgroup)
HALF = gl.constexpr(256)  # output columns per consumer warpgroup (wgmma's widest N)
CLEAN_ROWS = gl.constexpr(16)  # latent rows zeroed per shared-memory round trip
LN2 = gl.constexpr(0.6931471805599453)


@gluon.jit
def _rows(cu_seqlens_q_ptr, seq_lens_ptr, seq, rb, split, num_tokens, num_heads, max_k, TILE_N: gl.constexpr,
          num_splits):  # fmt: skip
    """The program's share of the work, as every partition computes it: its first flat query
    row, how many of its 64 rows are the sequence's, the first and last new-token index
    they hold, the context length, its key tiles [t_begin, t_end) and where masking starts."""
    q_start = gl.minimum(gl.maximum(gl.load(cu_seqlens_q_ptr + seq), 0), num_tokens)
    q_len = gl.minimum(gl.maximum(gl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens) - q_start
    seq_len = gl.minimum(gl.maximum(gl.load(seq_lens_ptr + seq), 0), max_k)
    r0 = rb * ROWS
    n_rows = gl.minimum(q_len * num_heads - r0, ROWS)
    first_tok = r0 // num_heads
    last_tok = (r0 + gl.maximum(n_rows, 1) - 1) // num_heads
    ctx = seq_len - q_len
    kv_hi = gl.minimum(seq_len, ctx + last_tok + 1)
    n_tiles = gl.where(n_rows > 0, gl.cdiv(gl.maximum(kv_hi, 0), TILE_N), 0)
    per_split = gl.cdiv(n_tiles, num_splits)
    t_begin = split * per_split
    t_end = gl.minimum(t_begin + per_split, n_tiles)
    # Keys from here on are past some row's diagonal or the context: those tiles are masked.
    mask_from = gl.minimum(ctx + first_tok + 1, seq_len)
    return q_start, r0, n_rows, ctx, seq_len, t_begin, t_end, mask_from


@gluon.jit
def _loader(
    q_desc,
    qpe_desc,
    c_desc,
    kpe_desc,
    q_lo,
    q_hi,
    q_pe,
    c_lo,
    c_hi,
    k_pe,
    q_ready,
    kv_ready,
    kv_empty,
    block_table_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    num_tokens,
    num_heads,
    num_blocks,
    max_k,
    stride_bt_s,
    TILE_N: gl.constexpr,
    BLOCK_SIZE: gl.constexpr,
    STAGES: gl.constexpr,
    num_splits,
):
    rb = gl.program_id(0)
    seq = gl.program_id(1)
    split = gl.program_id(2)
    q_start, r0, _, _, _, t_begin, t_end, _ = _rows(
        cu_seqlens_q_ptr, seq_lens_ptr, seq, rb, split, num_tokens, num_heads, max_k, TILE_N, num_splits
    )
    if t_end > t_begin:
        row_q = q_start * num_heads + r0
        mbarrier.expect(q_ready, 2 * q_desc.block_type.nbytes + qpe_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [row_q, 0], q_ready, q_lo)
        tma.async_copy_global_to_shared(q_desc, [row_q, HALF], q_ready, q_hi)
        tma.async_copy_global_to_shared(qpe_desc, [row_q, 2 * HALF], q_ready, q_pe)
        bt_row = block_table_ptr + seq.to(gl.int64) * stride_bt_s
        NBYTES: gl.constexpr = 2 * c_desc.block_type.nbytes + kpe_desc.block_type.nbytes
        for t in range(t_begin, t_end):
            i = t - t_begin
            slot = i % STAGES
            pos = t * TILE_N
            page = gl.minimum(gl.maximum(gl.load(bt_row + pos // BLOCK_SIZE), 0), num_blocks - 1)
            row = page * BLOCK_SIZE + pos % BLOCK_SIZE
            mbarrier.wait(kv_empty.index(slot), ((i // STAGES) & 1) ^ 1)  # a fresh barrier passes
            mbarrier.expect(kv_ready.index(slot), NBYTES)
            tma.async_copy_global_to_shared(c_desc, [row, 0], kv_ready.index(slot), c_lo.index(slot))
            tma.async_copy_global_to_shared(c_desc, [row, HALF], kv_ready.index(slot), c_hi.index(slot))
            tma.async_copy_global_to_shared(kpe_desc, [row, 2 * HALF], kv_ready.index(slot), k_pe.index(slot))


@gluon.jit
def _zero_tail(c_tile, valid, TILE_N: gl.constexpr):
    """Zero rows [valid, TILE_N) of one consumer's [TILE_N, 256] half of a latent tile."""
    layout: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [gl.num_warps(), 1], [1, 0])
    rows = gl.arange(0, CLEAN_ROWS, layout=gl.SliceLayout(1, layout))
    for r in gl.static_range(0, TILE_N, CLEAN_ROWS):
        part = c_tile.slice(r, CLEAN_ROWS)
        x = part.load(layout)
        part.store(gl.where(gl.expand_dims(r + rows < valid, 1), x, gl.zeros_like(x)))
    fence_async_shared()  # the generic-proxy stores, before the wgmma (async proxy) reads them
    gl.thread_barrier()


@gluon.jit
def _store_rows(acc, l_i, m_i, col0, q_start, r0, n_rows, seq, split, qk_scale, out_ptr, lse_ptr, part_out_ptr,
                part_lse_ptr, num_heads, stride_o_t, stride_o_h, o_layout: gl.constexpr, KV_RANK: gl.constexpr,
                DECODE_Q: gl.constexpr, num_splits, SPLIT_KV: gl.constexpr, RETURN_LSE: gl.constexpr,
                WRITE_LSE: gl.constexpr):  # fmt: skip
    """One consumer's 256 output columns from ``col0`` (and, WRITE_LSE, the rows' lse)."""
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
    l_safe = gl.where(l_i == 0.0, gl.full_like(l_i, 1.0), l_i)
    out = acc / gl.expand_dims(gl.convert_layout(l_safe, row_o), 1)
    lse2 = gl.where(l_i == 0.0, gl.full_like(l_i, float("-inf")), m_i * qk_scale + gl.log2(l_safe))
    r = gl.arange(0, ROWS, layout=row_o)
    d = col0 + gl.arange(0, HALF, layout=col_o)
    flat = r0 + r
    tok_idx = flat // num_heads
    head = flat % num_heads
    # Rows past max_seqlen_q (DECODE_Q) new tokens are not written: an understated
    # max_seqlen_q leaves them as they were (the partials have no room for them).
    ok = (r < n_rows) & (tok_idx < DECODE_Q)
    lse_o = gl.convert_layout(lse2, row_o)
    if SPLIT_KV:
        # merge_kernel's layout: [num_seqs, DECODE_Q, num_heads, num_splits, KV_RANK], lse in
        # log2 units; a split that saw no key stores lse -inf and no row.
        part = ((seq.to(gl.int64) * DECODE_Q + tok_idx) * num_heads + head) * num_splits + split
        seen = ok & (lse_o > float("-inf"))
        ptrs = part_out_ptr + gl.expand_dims(part * KV_RANK, 1) + gl.expand_dims(d, 0)
        gl.store(ptrs, out, mask=gl.expand_dims(seen, 1))
        if WRITE_LSE:
            gl.store(part_lse_ptr + part, lse_o, mask=ok)
    else:
        tok = (q_start + tok_idx).to(gl.int64)
        ptrs = out_ptr + gl.expand_dims(tok * stride_o_t + head * stride_o_h, 1) + gl.expand_dims(d, 0)
        gl.store(ptrs, out.to(out_ptr.dtype.element_ty), mask=gl.expand_dims(ok, 1))
        if RETURN_LSE and WRITE_LSE:
            gl.store(lse_ptr + tok * num_heads + head, lse_o * LN2, mask=ok)


@gluon.jit
def _publish(p, alpha, p_smem, a_smem, p_ready, p_empty, k):
    """Hand publication k (tile t_begin + k's P and rescale factor) to the second consumer,
    once it has read publication k - 1 (a fresh barrier passes the first wait)."""
    mbarrier.wait(p_empty, (k & 1) ^ 1)
    p_smem.store(p.to(p_smem.dtype))
    a_smem.store(alpha)
    # Every thread's generic-proxy stores, before the wgmmas (async proxy) of both consumers
    # read P and before one thread signals.
    fence_async_shared()
    gl.thread_barrier()
    mbarrier.arrive(p_ready)


@gluon.jit
def _softmax_tile(s, m_i, l_i, t, mask_from, seq_len, ctx, r0, num_heads, qk_scale, rows_s, cols_s,
                  TILE_N: gl.constexpr):  # fmt: skip
    """One online-softmax step (base 2) on tile t's scores; masked only past mask_from."""
    if (t + 1) * TILE_N > mask_from:
        # Row r (flat row r0 + r, new token (r0 + r) // num_heads) sees keys below its limit.
        limit = gl.minimum(ctx + (r0 + rows_s) // num_heads + 1, seq_len)
        keep = gl.expand_dims(cols_s, 0) < gl.expand_dims(limit - t * TILE_N, 1)
        s = gl.where(keep, s, gl.full_like(s, float("-inf")))
    return online_step(s, m_i, l_i, qk_scale)


@gluon.jit
def _first(
    q_lo,
    q_hi,
    q_pe,
    c_lo,
    c_hi,
    k_pe,
    p_smem,
    a_smem,
    l_smem,
    m_smem,
    q_ready,
    kv_ready,
    kv_empty,
    p_ready,
    p_empty,
    done,
    out_ptr,
    lse_ptr,
    part_out_ptr,
    part_lse_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    qk_scale,
    num_tokens,
    num_heads,
    max_k,
    stride_o_t,
    stride_o_h,
    KV_RANK: gl.constexpr,
    TILE_N: gl.constexpr,
    STAGES: gl.constexpr,
    DECODE_Q: gl.constexpr,
    num_splits,
    SPLIT_KV: gl.constexpr,
    RETURN_LSE: gl.constexpr,
):
    """The first consumer: QK^T, softmax, P for both, and output columns [0, 256)."""
    rb = gl.program_id(0)
    seq = gl.program_id(1)
    split = gl.program_id(2)
    q_start, r0, n_rows, ctx, seq_len, t_begin, t_end, mask_from = _rows(
        cu_seqlens_q_ptr, seq_lens_ptr, seq, rb, split, num_tokens, num_heads, max_k, TILE_N, num_splits
    )
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, TILE_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HALF, 16])
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    rows_s = gl.arange(0, ROWS, layout=row_s)
    cols_s = gl.arange(0, TILE_N, layout=gl.SliceLayout(0, s_layout))
    m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([ROWS], gl.float32, layout=row_s)
    acc = gl.zeros([ROWS, HALF], gl.float32, layout=o_layout)
    if t_end > t_begin:
        zero_s = gl.zeros([ROWS, TILE_N], gl.float32, layout=s_layout)
        mbarrier.wait(q_ready, 0)
        # Tile t_begin: its scores only.
        mbarrier.wait(kv_ready.index(0), 0)
        s_tok = warpgroup_mma(q_lo, c_lo.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        s_tok = warpgroup_mma(q_hi, c_hi.index(0).permute((1, 0)), s_tok, is_async=True)
        s_tok = warpgroup_mma(q_pe, k_pe.index(0).permute((1, 0)), s_tok, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=[s_tok])
        m_i, l_i, p, alpha = _softmax_tile(s, m_i, l_i, t_begin, mask_from, seq_len, ctx, r0, num_heads, qk_scale,
                                           rows_s, cols_s, TILE_N)  # fmt: skip
        for t in range(t_begin + 1, t_end):
            i = t - t_begin
            slot = i % STAGES
            prev = (i - 1) % STAGES
            mbarrier.wait(kv_ready.index(slot), (i // STAGES) & 1)
            s_tok = warpgroup_mma(q_lo, c_lo.index(slot).permute((1, 0)), zero_s, use_acc=False, is_async=True)
            s_tok = warpgroup_mma(q_hi, c_hi.index(slot).permute((1, 0)), s_tok, is_async=True)
            s_tok = warpgroup_mma(q_pe, k_pe.index(slot).permute((1, 0)), s_tok, is_async=True)
            _publish(p, alpha, p_smem, a_smem, p_ready, p_empty, i - 1)
            # Tile i - 1 is not the split's last: full, nothing to clean.
            acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
            acc_tok = warpgroup_mma(p_smem, c_lo.index(prev), acc, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=[s_tok])
            m_i, l_i, p, alpha = _softmax_tile(s, m_i, l_i, t, mask_from, seq_len, ctx, r0, num_heads, qk_scale,
                                               rows_s, cols_s, TILE_N)  # fmt: skip
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc_tok])
            mbarrier.arrive(kv_empty.index(prev))
        # The last tile's PV.
        i = t_end - t_begin
        prev = (i - 1) % STAGES
        _publish(p, alpha, p_smem, a_smem, p_ready, p_empty, i - 1)
        tail = seq_len - (t_end - 1) * TILE_N
        if tail < TILE_N:
            _zero_tail(c_lo.index(prev), tail, TILE_N)
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)
        acc_tok = warpgroup_mma(p_smem, c_lo.index(prev), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc_tok])
        mbarrier.arrive(kv_empty.index(prev))
    # The second consumer normalises with these.
    l_smem.store(l_i)
    m_smem.store(m_i)
    gl.thread_barrier()
    mbarrier.arrive(done)
    # Every split writes its rows (one split: the output; an empty split: lse -inf only).
    _store_rows(acc, l_i, m_i, 0, q_start, r0, n_rows, seq, split, qk_scale, out_ptr, lse_ptr, part_out_ptr,
                part_lse_ptr, num_heads, stride_o_t, stride_o_h, o_layout, KV_RANK, DECODE_Q, num_splits, SPLIT_KV,
                RETURN_LSE, True)  # fmt: skip


@gluon.jit
def _second(
    c_hi,
    p_smem,
    a_smem,
    l_smem,
    m_smem,
    kv_ready,
    kv_empty,
    p_ready,
    p_empty,
    done,
    out_ptr,
    lse_ptr,
    part_out_ptr,
    part_lse_ptr,
    seq_lens_ptr,
    cu_seqlens_q_ptr,
    qk_scale,
    num_tokens,
    num_heads,
    max_k,
    stride_o_t,
    stride_o_h,
    KV_RANK: gl.constexpr,
    TILE_N: gl.constexpr,
    STAGES: gl.constexpr,
    DECODE_Q: gl.constexpr,
    num_splits,
    SPLIT_KV: gl.constexpr,
    RETURN_LSE: gl.constexpr,
):
    """The second consumer: output columns [256, 512) from the first's P."""
    rb = gl.program_id(0)
    seq = gl.program_id(1)
    split = gl.program_id(2)
    q_start, r0, n_rows, _, seq_len, t_begin, t_end, _ = _rows(
        cu_seqlens_q_ptr, seq_lens_ptr, seq, rb, split, num_tokens, num_heads, max_k, TILE_N, num_splits
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HALF, 16])
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    acc = gl.zeros([ROWS, HALF], gl.float32, layout=o_layout)
    for t in range(t_begin, t_end):
        i = t - t_begin
        slot = i % STAGES
        mbarrier.wait(kv_ready.index(slot), (i // STAGES) & 1)
        mbarrier.wait(p_ready, i & 1)
        alpha = a_smem.load(row_o)
        if t == t_end - 1:
            tail = seq_len - t * TILE_N
            if tail < TILE_N:
                _zero_tail(c_hi.index(slot), tail, TILE_N)
        acc = acc * gl.expand_dims(alpha, 1)
        acc_tok = warpgroup_mma(p_smem, c_hi.index(slot), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc_tok])
        mbarrier.arrive(p_empty)
        mbarrier.arrive(kv_empty.index(slot))
    mbarrier.wait(done, 0)
    l_i = l_smem.load(row_o)
    m_i = m_smem.load(row_o)
    _store_rows(acc, l_i, m_i, HALF, q_start, r0, n_rows, seq, split, qk_scale, out_ptr, lse_ptr, part_out_ptr,
                part_lse_ptr, num_heads, stride_o_t, stride_o_h, o_layout, KV_RANK, DECODE_Q, num_splits, SPLIT_KV,
                RETURN_LSE, False)  # fmt: skip


@gluon.jit(do_not_specialize=["num_tokens", "num_blocks", "max_k", "num_splits"])
def mla_gluon_kernel(
    q_desc,  # q as [num_tokens * num_heads, 576] rows, block [64, 256]
    qpe_desc,  # the same rows, block [64, 64] (the rope columns)
    c_desc,  # the cache as [num_blocks * BLOCK_SIZE, 576] rows, block [TILE_N, 256]
    kpe_desc,  # the same rows, block [TILE_N, 64]
    out_ptr,  # [num_tokens, num_heads, KV_RANK]
    lse_ptr,  # [num_tokens, num_heads] fp32, RETURN_LSE with one split only
    part_out_ptr,  # merge_kernel's partials, SPLIT_KV
    part_lse_ptr,
    block_table_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    qk_scale,  # scale * log2(e)
    num_tokens,
    num_heads,
    num_blocks,
    max_k,  # max_blocks * BLOCK_SIZE: no context reads past its block-table row
    stride_o_t,
    stride_o_h,
    stride_bt_s,
    num_splits,  # key splits (the grid's third axis); a plain argument: one variant for every count
    KV_RANK: gl.constexpr,  # 512
    TILE_N: gl.constexpr,  # keys per tile (divides BLOCK_SIZE)
    BLOCK_SIZE: gl.constexpr,
    STAGES: gl.constexpr,
    DECODE_Q: gl.constexpr,  # max_seqlen_q (the partials' layout)
    SPLIT_KV: gl.constexpr,  # num_splits > 1: partials for merge_kernel, else the output
    RETURN_LSE: gl.constexpr,
    LOADER_REGS: gl.constexpr,
    CONSUMER_REGS: gl.constexpr,
):
    """Grid (cdiv(max_seqlen_q * num_heads, 64), num_seqs, num_splits); 4 warps (the first
    consumer; the second's 4 and the loader's 1 are added by warp_specialize)."""
    dtype: gl.constexpr = q_desc.dtype
    q_lo = gl.allocate_shared_memory(dtype, [ROWS, HALF], q_desc.layout)
    q_hi = gl.allocate_shared_memory(dtype, [ROWS, HALF], q_desc.layout)
    q_pe = gl.allocate_shared_memory(dtype, [ROWS, 64], qpe_desc.layout)
    c_lo = gl.allocate_shared_memory(dtype, [STAGES, TILE_N, HALF], c_desc.layout)
    c_hi = gl.allocate_shared_memory(dtype, [STAGES, TILE_N, HALF], c_desc.layout)
    k_pe = gl.allocate_shared_memory(dtype, [STAGES, TILE_N, 64], kpe_desc.layout)
    p_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, TILE_N], dtype)
    p_smem = gl.allocate_shared_memory(dtype, [ROWS, TILE_N], p_layout)
    flat: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
    a_smem = gl.allocate_shared_memory(gl.float32, [ROWS], flat)
    l_smem = gl.allocate_shared_memory(gl.float32, [ROWS], flat)
    m_smem = gl.allocate_shared_memory(gl.float32, [ROWS], flat)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    q_ready = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    p_ready = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    p_empty = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    done = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    kv_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    mbarrier.init(q_ready, count=1)
    mbarrier.init(p_ready, count=1)
    mbarrier.init(p_empty, count=1)
    mbarrier.init(done, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(kv_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=2)
    fence_async_shared()

    gl.warp_specialize(
        [
            (
                _first,
                (q_lo, q_hi, q_pe, c_lo, c_hi, k_pe, p_smem, a_smem, l_smem,
    m_smem, q_ready, kv_ready, kv_empty,
                 p_ready, p_empty, done, out_ptr, lse_ptr, part_out_ptr, part_lse_ptr, seq_lens_ptr, cu_seqlens_q_ptr,
                 qk_scale, num_tokens, num_heads, max_k, stride_o_t, stride_o_h,
                 KV_RANK, TILE_N, STAGES, DECODE_Q, num_splits, SPLIT_KV, RETURN_LSE),
            ),
            (
                _second,
                (c_hi, p_smem, a_smem, l_smem,
    m_smem, kv_ready, kv_empty, p_ready, p_empty, done, out_ptr, lse_ptr,
                 part_out_ptr, part_lse_ptr, seq_lens_ptr, cu_seqlens_q_ptr, qk_scale, num_tokens, num_heads, max_k,
                 stride_o_t, stride_o_h, KV_RANK, TILE_N, STAGES, DECODE_Q, num_splits, SPLIT_KV, RETURN_LSE),
            ),
            (
                _loader,
                (q_desc, qpe_desc, c_desc, kpe_desc, q_lo, q_hi, q_pe, c_lo, c_hi, k_pe, q_ready, kv_ready, kv_empty,
                 block_table_ptr, seq_lens_ptr, cu_seqlens_q_ptr, num_tokens, num_heads, num_blocks, max_k,
                 stride_bt_s, TILE_N, BLOCK_SIZE, STAGES, num_splits),
            ),
        ],
        [4, 1],
        [CONSUMER_REGS, LOADER_REGS],
    )  # fmt: skip
