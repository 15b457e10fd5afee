"""Prefill over a paged cache with Q, K and V tiles moved by the tensor-memory accelerator.

A program computes BLOCK_M query tokens of one query head (no GQA packing: prefill is
bound by the matmuls, not by K/V reads, and a TMA tile of consecutive rows needs one head).
A key tile is TILE_N consecutive slots of one page (the page size is a multiple of TILE_N),
so one 2-D descriptor over the whole cache serves every tile: the page number comes from
the block table, and the tile's first row is ``page * ROWS_PER_BLOCK + kv_head *
ROWS_PER_HEAD + slot`` with column ``kv_head * COLS_PER_HEAD`` (NHD and HND caches alike).

The loop over key tiles is warp-specialised where Triton supports it (producer warps
issue the copies, consumer warps do the matmuls and the softmax). Triton 3.6 partitions such a loop only when every tensor it reads from outside
the loop lives in shared memory (hence Q by descriptor too), and on sm_90 only at 4 warps
(at 8 it compiles the loop unpartitioned). Descriptors are built on the host: no global
scratch per program, nothing to allocate inside a CUDA graph.

Features: causal or not, fp16/bf16, fp8 KV with per-tensor scales, lse output. Windows,
softcap, ALiBi and sinks take the generic kernel (the launcher's rule). Index contents are
bounded as in ``attention_kernel``.
"""

import triton
import triton.language as tl

from .softmax import online_softmax_step, softmax_finish

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _kv_tile(
    desc, bt_row, t, num_blocks, row_base, col, rows_per_block, TILE_N: tl.constexpr, BLOCK_SIZE: tl.constexpr
):
    pos = t * TILE_N
    page = tl.minimum(tl.maximum(tl.load(bt_row + pos // BLOCK_SIZE), 0), num_blocks - 1)
    return desc.load([page * rows_per_block + row_base + pos % BLOCK_SIZE, col])


@triton.jit(do_not_specialize=["num_tokens", "num_blocks", "max_blocks", "decode_q", "other_launch"])
def prefill_tma_kernel(
    q_desc,  # [num_tokens, num_q_heads * HEAD_DIM] rows of q, block [BLOCK_M, HEAD_DIM]
    k_desc,  # the paged cache as 2-D rows (module docstring), block [TILE_N, HEAD_DIM]
    v_desc,  # same layout as k_desc
    out_ptr,  # [num_tokens, num_q_heads, HEAD_DIM]
    lse_ptr,  # [num_tokens, num_q_heads] fp32, RETURN_LSE only
    block_table_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    cu_seqlens_q_ptr,  # [num_seqs + 1] int32
    k_scale_ptr,  # [1] fp32, KV_SCALED only
    v_scale_ptr,  # [1] fp32, KV_SCALED only
    scale,  # softmax scale (natural units)
    num_tokens,
    num_blocks,
    max_blocks,
    decode_q,  # sequences with 1..decode_q new tokens belong to the decode launch
    other_launch,  # 1: a decode launch serves those; 0: this launch serves every sequence
    rows_per_block,
    rows_per_head,
    cols_per_head,
    stride_o_t,
    stride_o_h,
    stride_bt_s,
    HEAD_DIM: tl.constexpr,  # a power of two (TMA boxes and aranges)
    GROUP: tl.constexpr,  # query heads per KV head
    BLOCK_M: tl.constexpr,  # query tokens per program
    TILE_N: tl.constexpr,  # divides BLOCK_SIZE
    BLOCK_SIZE: tl.constexpr,
    CAUSAL: tl.constexpr,
    KV_SCALED: tl.constexpr,
    FP8_VIA_F16: tl.constexpr,  # fp8 KV with a bf16 query: dots in fp16 (see attention_kernel)
    RETURN_LSE: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
    DOT_F32: tl.constexpr,  # interpreter only: fp32 dots (its bf16 dots are wrong)
):
    """Grid (num_q_heads, num_seqs, query-tile programs); query tiles walked grid-stride."""
    head = tl.program_id(0)
    seq = tl.program_id(1)
    num_q_heads = tl.num_programs(0)
    kv_head = head // GROUP
    # Rows clamped into [0, num_tokens] (as in attention_kernel): they bound the loops too.
    q_start = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq), 0), num_tokens)
    q_len = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + seq + 1), q_start), num_tokens) - q_start
    # Sequences of the decode launch (or empty ones) get no query tile. No early return:
    # Triton 3.6 does not warp-specialise a loop in a kernel that has one.
    served = tl.where(other_launch != 0, q_len > decode_q, q_len >= 1)
    seq_len = tl.minimum(tl.maximum(tl.load(seq_lens_ptr + seq), 0), max_blocks * BLOCK_SIZE)
    ctx = seq_len - q_len
    bt_row = block_table_ptr + seq.to(tl.int64) * stride_bt_s
    row_base = kv_head * rows_per_head
    col = kv_head * cols_per_head
    dot_type: tl.constexpr = tl.float32 if DOT_F32 else (tl.float16 if FP8_VIA_F16 else out_ptr.dtype.element_ty)

    rows = tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, TILE_N)
    qk_scale = scale * LOG2E
    if KV_SCALED:
        qk_scale = qk_scale * tl.load(k_scale_ptr)

    n_q_tiles = tl.where(served, tl.cdiv(q_len, BLOCK_M), 0)
    for t_q in range(tl.program_id(2), n_q_tiles, tl.num_programs(2)):
        # Heaviest causal tiles first (the slowest grid axis is dispatched last).
        q0 = (n_q_tiles - 1 - t_q) * BLOCK_M
        q_idx = q0 + rows
        row_ok = q_idx < q_len
        q_pos = ctx + q_idx
        # Rows past the sequence read the next sequence's tokens (or zeros past the tensor,
        # TMA's bound): harmless, each row's softmax is its own and they are not stored.
        q = q_desc.load([q_start + q0, head * HEAD_DIM])
        s_scale = qk_scale
        if FP8_VIA_F16 or DOT_F32:
            q = (q.to(tl.float32) * qk_scale).to(dot_type)
            s_scale = 1.0
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        q_last = tl.minimum(q0 + BLOCK_M, q_len) - 1
        kv_hi = seq_len
        if CAUSAL:
            kv_hi = tl.minimum(kv_hi, ctx + q_last + 1)
        # One loop over every visible tile, each masked: Triton 3.6 warp-specialises a lone
        # loop, not one followed by a second (unmasked middle + masked diagonal) loop.
        for t in tl.range(0, tl.cdiv(kv_hi, TILE_N), warp_specialize=WARP_SPECIALIZE):
            k_pos = t * TILE_N + offs_n
            k_ok = k_pos < kv_hi
            keep = k_ok[None, :] & row_ok[:, None]
            if CAUSAL:
                keep &= k_pos[None, :] <= q_pos[:, None]
            k = _kv_tile(k_desc, bt_row, t, num_blocks, row_base, col, rows_per_block, TILE_N, BLOCK_SIZE)
            s = tl.where(keep, tl.dot(q, tl.trans(k.to(dot_type))), float("-inf"))
            m_i, l_i, acc, p = online_softmax_step(m_i, l_i, acc, s, s_scale)
            # Slots past the context hold whatever the cache held (NaN included): zero them,
            # since p = 0 times NaN is still NaN.
            v = _kv_tile(v_desc, bt_row, t, num_blocks, row_base, col, rows_per_block, TILE_N, BLOCK_SIZE)
            v = tl.where(k_ok[:, None], v.to(dot_type), 0.0)
            acc = tl.dot(p.to(dot_type), v, acc)

        out, lse = softmax_finish(m_i, l_i, acc)
        if KV_SCALED:
            out = out * tl.load(v_scale_ptr)
        q_tok = (q_start + q_idx).to(tl.int64)
        tl.store(
            out_ptr + q_tok[:, None] * stride_o_t + head * stride_o_h + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_ok[:, None],
        )
        if RETURN_LSE:
            tl.store(lse_ptr + q_tok * num_q_heads + head, lse * LN2, mask=row_ok)
