"""Host side of the Gluon Hopper prefill (``_kernels/prefill_gluon.py``): whether a launch
qualifies, its tensor descriptors and its launch.

The rule (documented in docs/kernels.md): ``PrefillConfig(gluon=1)`` (which requires
block_m 128, 4 warps and tile_n 32, 64 or 128), Triton 3.6.0 (the only version whose Gluon API
the kernel is verified against; elsewhere it is off), a GPU of compute capability 9.0 (never
Triton's interpreter, which cannot run Gluon), fp16/bf16 Q, K and V of one dtype (no fp8
cache), one head size for Q, K and V of 64 or 128 (tile_n 64 or 128) or 256 (tile_n 32 or 64), no
ALiBi or sinks, a sliding window only on a causal launch (softcap either way), a paged cache whose page size tile_n divides or contiguous varlen K/V, Q with heads and dims
contiguous, 16-byte aligned rows and bases, and the shared-memory ring within the SM's
227 KB. Anything else runs what the config would run without ``gluon`` (the TMA prefill
where ``tma=1`` qualifies, else the generic kernel).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import _tma
from . import _validation as check
from ._device import interpreting, num_sms
from ._intmath import cdiv
from ._launch import launch_kernel
from .tuning import PrefillConfig, gluon_persistent

# Triton releases whose Gluon API (warp_specialize, warpgroup_mma, tma, mbarrier) the kernel
# is written and compile-checked against (3.9 renamed part of it: thread_barrier is gone).
VERIFIED_TRITON = ("3.6.0",)
# Key-tile widths per head size. At 256 the consumers' accumulator (64 x 256 fp32) takes 128
# registers per thread: 64-key scores are the widest beside it; compiled with Triton 3.6 for
# sm_90 (nox -s sm90) neither 32- nor 64-key tiles spill, and 64-key tiles fit 2 ring stages
# (Q 64 KB + 2 x 64 KB of K/V) in shared memory.
TILES = {64: (64, 128), 128: (64, 128), 256: (32, 64)}
BLOCK_M = 128  # two consumer warpgroups x 64 query rows
LOADER_REGS = 24  # setmaxnreg budgets: 24 + 2 x 240 per thread of the three warpgroups
CONSUMER_REGS = 240
SMEM_LIMIT = 227 * 1024  # sm_90's shared memory per block
LOG2E = 1.4426950408889634


@functools.cache
def available() -> bool:
    """Whether the installed Triton is one the Gluon kernel is verified against."""
    import triton

    return triton.__version__ in VERIFIED_TRITON


@functools.cache
def _sm90(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


def smem_bytes(head_dim: int, tile_n: int, stages: int, elem: int = 2) -> int:
    """Shared memory of one program: Q (two 64-row halves) and the K/V ring (barriers aside)."""
    return (BLOCK_M * head_dim + 2 * stages * tile_n * head_dim) * elem


def serves_launch(q: torch.Tensor, *, v_head_dim: int, config: PrefillConfig, features_served: bool) -> bool:
    """What :func:`qualifies` checks without the cache: the config, the GPU and Triton, q's
    dtype, head size and layout, the tile and its shared memory. ``features_served``: the
    launch's features are ones the kernel has (:func:`serves_features`)."""
    if not config.gluon or interpreting() or not available() or not _sm90(q.device):
        return False
    head_dim = q.shape[2]
    if not features_served or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if config.tile_n not in TILES.get(head_dim, ()) or v_head_dim != head_dim:
        return False
    if smem_bytes(head_dim, config.tile_n, config.num_stages) > SMEM_LIMIT:
        return False
    return q.stride(2) == 1 and q.stride(1) == head_dim


def qualifies(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    paged: bool,
    config: PrefillConfig,
    features_served: bool,
) -> tuple[_tma.CacheRows, _tma.CacheRows] | None:
    """The 2-D row views of k and v when this launch can run the Gluon prefill, else None.
    k and v: a paged cache [num_blocks, block_size, kv_heads, dim] or, not paged, contiguous
    [total_k, kv_heads, dim] (seen as one page of total_k slots). ``features_served``: as
    for :func:`serves_launch`."""
    if not serves_launch(q, v_head_dim=v.shape[-1], config=config, features_served=features_served):
        return None
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return None
    if paged and k.shape[1] % config.tile_n:
        return None
    if not paged and k.shape[0] == 0:  # a TMA descriptor needs at least one key row
        return None
    # Varlen K/V [total_k, heads, dim] is read as one page of total_k slots.
    return _tma.row_views(q, k, v) if paged else _tma.row_views(q, k.unsqueeze(0), v.unsqueeze(0))


def serves_features(*, causal: bool, window: tuple[int, int] | None, alibi: bool, sinks: bool) -> bool:
    """Whether the kernel has a launch's features: softcap and causal sliding windows yes;
    ALiBi, sinks and windows without the causal mask no. (fp8 caches reach it staged:
    ``_fp8_stage.py``.)"""
    return not (alibi or sinks) and (window is None or causal)


def _descriptor(t: torch.Tensor, rows: int, cols: int, row_stride: int, block: list[int]) -> Any:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    dtype = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}[t.dtype]
    layout = gl.NVMMASharedLayout.get_default_for(block, dtype)
    return TensorDescriptor(t, [rows, cols], [row_stride, 1], block, layout)


def launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    rows: tuple[_tma.CacheRows, _tma.CacheRows],
    *,
    block_table: torch.Tensor | None,
    seq_lens: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None,
    num_seqs: int,
    max_seqlen_q: int,
    decode_q: int,
    other_launch: int,
    scale: float,
    causal: bool,
    config: PrefillConfig,
    window_left: int | None = None,
    softcap: float | None = None,
    pingpong: bool = True,
    persistent: bool | None = None,
    thread_arrives: bool = False,
) -> None:
    """One launch of the Gluon prefill over the sequences with more than ``decode_q`` new
    tokens (all of them where ``other_launch`` is 0). ``rows`` from :func:`qualifies`;
    ``block_table`` and ``seq_lens`` for a paged cache, ``cu_seqlens_k`` for varlen K/V.
    ``persistent``: one program per SM (at most one per work tile) walks the work tiles,
    its loader issuing the next tile's copies while the consumers finish the current one;
    ``False``: one program per head, sequence and query tile (also what runs where the work
    tiles would overflow the kernel's int32 index); ``None``: as
    :func:`~triton_attn_kernels.tuning.gluon_persistent` decides for this launch.
    ``window_left`` (causal launches only): keys visible left of each query's position;
    ``softcap``: the logit cap. ``thread_arrives``: the consumers release slots, Q and the
    ping-pong's turn with every thread's own mbarrier arrival instead of thread 0's after a
    warpgroup bar.sync (compiled for sm_90, not yet measured or GPU-tested: off by default)."""
    from ._kernels.prefill_gluon import prefill_gluon_kernel

    if window_left is not None and not causal:
        raise ValueError("the Gluon prefill's sliding window needs causal=True")

    num_tokens, num_q_heads, head_dim = q.shape
    paged = block_table is not None
    kr, vr = rows
    tile = [config.tile_n, head_dim]
    dummy = cu_seqlens_q  # stands in for pointers a specialisation never reads
    if block_table is not None:
        if seq_lens is None:
            raise ValueError("seq_lens is required with a block_table")
        max_k, bt_stride = block_table.shape[1] * k.shape[1], block_table.stride(0)
        if block_table.shape[1] == 0:
            # The loader reads one table entry even for an empty context (the fully masked
            # tile both consumers wait for): give it one to read, page 0.
            block_table, bt_stride = torch.zeros((max(num_seqs, 1), 1), dtype=torch.int32, device=q.device), 1
    elif cu_seqlens_k is None:
        raise ValueError("cu_seqlens_k is required without a block_table")
    else:
        max_k, bt_stride = k.shape[0], 0
    if persistent is None:
        persistent = gluon_persistent(num_seqs, other_launch=bool(other_launch))
    q_levels = min(cdiv(max(max_seqlen_q, 1), BLOCK_M), check.MAX_SEQS)
    n_work = q_levels * num_seqs * num_q_heads
    # The work-tile index is an int32 that steps past n_work by up to one grid's width.
    if persistent and n_work + num_sms(q.device) >= 2**31:
        persistent = False
    if persistent:
        # One resident program per SM at most (the ring takes most of its shared memory).
        grid: tuple[int, ...] = (max(1, min(n_work, num_sms(q.device))),)
    else:
        grid = (num_q_heads, num_seqs, q_levels)
    launch_kernel(
        prefill_gluon_kernel,
        grid,
        _descriptor(q, num_tokens, num_q_heads * head_dim, q.stride(0), [BLOCK_M // 2, head_dim]),
        _descriptor(k, kr.rows, kr.cols, kr.row_stride, tile),
        _descriptor(v, vr.rows, vr.cols, vr.row_stride, tile),
        out,
        lse if lse is not None else dummy,
        block_table if paged else dummy,
        seq_lens if paged else dummy,
        cu_seqlens_q,
        dummy if paged else cu_seqlens_k,
        # The capped logits are softcap * tanh(scale * s / softcap): the kernel takes tanh of
        # s * cap_in and scales that into log2 units.
        scale * LOG2E if softcap is None else softcap * LOG2E,
        1.0 if softcap is None else scale / softcap,
        num_tokens,
        k.shape[0] if paged else 1,
        max_k,
        # The kernel serves the sequences with more new tokens than this (0: every non-empty one).
        decode_q if other_launch else 0,
        0 if window_left is None else min(window_left, 2**30),
        num_q_heads,
        num_seqs,
        q_levels,
        n_work,
        grid[0],
        kr.rows_per_block,
        kr.rows_per_head,
        kr.cols_per_head,
        out.stride(0),
        out.stride(1),
        bt_stride,
        HEAD_DIM=head_dim,
        GROUP=num_q_heads // k.shape[-2],
        TILE_N=config.tile_n,
        BLOCK_SIZE=k.shape[1] if paged else config.tile_n,
        STAGES=config.num_stages,
        PAGED=paged,
        CAUSAL=causal,
        WINDOW=window_left is not None,
        SOFTCAP=softcap is not None,
        PINGPONG=pingpong,
        RETURN_LSE=lse is not None,
        LOADER_REGS=LOADER_REGS,
        CONSUMER_REGS=CONSUMER_REGS,
        PERSISTENT=persistent,
        THREAD_ARRIVES=thread_arrives,
        num_warps=4,
    )
