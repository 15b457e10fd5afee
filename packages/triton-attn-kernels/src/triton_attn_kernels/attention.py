"""Public attention launchers: validate, pick configurations, launch.

``paged_attention`` and ``varlen_attention`` share one launch path. Sequences with at most
``decode_query_len`` new tokens (one for plain decode, a few for speculative-decoding
verification) go to the split-KV decode launch; longer ones to the prefill launch. A batch
launches one or both; each skips the other's sequences on the device, so no host
synchronisation is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _decode_gluon, _fallback, _fp8_stage, _gluon, _tma, debug
from . import _validation as check
from ._device import interpreting
from ._intmath import cdiv, next_pow2
from ._kernels.attention import attention_kernel
from ._kernels.prefill_tma import prefill_tma_kernel
from ._launch import launch_kernel
from ._workspace import merge_partials, partials
from .tuning import AttentionConfig, AttentionProblem, PrefillConfig, prefill_warps
from .tuning.policy import MAX_DECODE_QUERY_LEN, decode_workspace_numel, plan_launch

__all__ = ["MAX_DECODE_QUERY_LEN", "decode_workspace_numel", "paged_attention", "varlen_attention"]

# "No bound" for one side of a window: larger than any context a launch can address.
_UNBOUNDED = 1 << 30


@dataclass(frozen=True)
class _Features:
    scale: float
    causal: bool
    window: tuple[int, int] | None  # (left, right) keys visible beside the query's position
    softcap: float | None
    alibi: torch.Tensor | None
    sinks: torch.Tensor | None
    k_scale: torch.Tensor | None  # set only for fp8 caches
    v_scale: torch.Tensor | None


def _window(causal: bool, sliding_window: int | None, window_size: object) -> tuple[int, int] | None:
    if window_size is not None and sliding_window is not None:
        raise ValueError("pass sliding_window or window_size, not both")
    if sliding_window is not None:
        w: int = check.window(sliding_window)  # type: ignore[assignment]
        # W keys counting the query itself; without a causal mask the window is symmetric, as
        # in vLLM's FLASH_ATTN backend for encoder layers.
        return (w - 1, 0 if causal else w - 1)
    if window_size is None:
        return None
    if (
        not isinstance(window_size, tuple | list)
        or len(window_size) != 2
        or any(isinstance(x, bool) or not isinstance(x, int) or x < -1 for x in window_size)
    ):
        raise ValueError(f"window_size must be a pair of ints >= -1 (-1: unbounded side), got {window_size!r}")
    left, right = window_size
    if left == -1 and right == -1:
        return None
    return (_UNBOUNDED if left == -1 else left, _UNBOUNDED if right == -1 else right)


def _softcap(value: object) -> float | None:
    # 0 means "no cap", as in flash-attn.
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return None
    return check.positive_float("softcap", value)


def _features(
    q: torch.Tensor,
    kv_dtype: torch.dtype,
    scale: float | None,
    causal: bool,
    sliding_window: int | None,
    window_size: tuple[int, int] | None,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
) -> _Features:
    """The public call's feature arguments, checked (in the public functions' parameter order,
    so that both pass them positionally on one line)."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    fp8 = kv_dtype in check.FP8_DTYPES

    def fp8_scale(name: str, value: float | torch.Tensor | None) -> torch.Tensor | None:
        if not fp8:
            return None
        if value is None:
            # No silent 1.0: a cache written with another scale would read wrong by that factor.
            raise ValueError(
                f"{name} is required with a {str(kv_dtype).removeprefix('torch.')} cache: pass the scale the "
                "cache was written with (write_kv_cache's), e.g. 1.0"
            )
        return check.kv_scale(name, value, q.device)

    num_q_heads = q.shape[1]
    return _Features(
        scale=q.shape[2] ** -0.5 if scale is None else check.positive_float("scale", scale),  # type: ignore[arg-type]
        causal=causal,
        window=_window(causal, sliding_window, window_size),
        softcap=_softcap(softcap),
        alibi=check.per_head("alibi_slopes", alibi_slopes, num_q_heads, q.device),
        sinks=check.per_head("sinks", sinks, num_q_heads, q.device),
        k_scale=fp8_scale("k_scale", k_scale),
        v_scale=fp8_scale("v_scale", v_scale),
    )


@dataclass(frozen=True)
class _Batch:
    """Where the sequences' tokens are: a paged cache (``block_table``, ``seq_lens``) or
    contiguous keys (``cu_seqlens_k``), and the host sizes the launch is planned from."""

    cu_seqlens_q: torch.Tensor
    num_seqs: int
    max_seqlen_q: int
    max_seqlen_k: int
    block_table: torch.Tensor | None = None
    seq_lens: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None

    def index_tensors(self) -> dict[str, torch.Tensor]:
        """The index tensors by argument name, in the public functions' order."""
        named = (
            ("block_table", self.block_table),
            ("seq_lens", self.seq_lens),
            ("cu_seqlens_q", self.cu_seqlens_q),
            ("cu_seqlens_k", self.cu_seqlens_k),
        )
        return {name: t for name, t in named if t is not None}


def _checked_out(
    q: torch.Tensor,
    batch: _Batch,
    out: torch.Tensor | None,
    workspace: torch.Tensor | None,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
    **kv: torch.Tensor,
) -> torch.Tensor:
    """The checks every launch makes after its own (devices, ``out`` of V's head size,
    ``workspace``; with ``TRITON_ATTN_DEBUG=1`` the index contents), in that order; returns
    ``out``, allocated where ``None``. ``kv``: K and V by argument name."""
    k, v = kv.values()
    check.same_device(q.device, **kv, **batch.index_tensors(), out=out)
    out = check.output(out, q, head_dim=v.shape[-1], **kv)
    check.workspace(workspace, q.device, need=0, q=q, **kv, out=out)
    if debug.enabled():
        if batch.block_table is not None and batch.seq_lens is not None:
            debug.check_paged_batch(
                batch.block_table,
                batch.seq_lens,
                batch.cu_seqlens_q,
                num_tokens=q.shape[0],
                num_blocks=k.shape[0],
                block_size=k.shape[1],
                max_seqlen_q=batch.max_seqlen_q,
                max_seqlen_k=batch.max_seqlen_k,
            )
            if k.dtype in check.FP8_DTYPES:
                debug.check_fp8_scales(k_scale=k_scale, v_scale=v_scale)
        elif batch.cu_seqlens_k is not None:
            debug.check_varlen_batch(
                batch.cu_seqlens_q,
                batch.cu_seqlens_k,
                num_tokens=q.shape[0],
                num_keys=k.shape[0],
                max_seqlen_q=batch.max_seqlen_q,
                max_seqlen_k=batch.max_seqlen_k,
            )
    return out


def _config(config: AttentionConfig | None) -> AttentionConfig:
    if config is None:
        return AttentionConfig()
    if not isinstance(config, AttentionConfig):
        raise TypeError(f"config must be an AttentionConfig or None, got {type(config).__name__}")
    return config


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    batch: _Batch,
    feats: _Features,
    config: AttentionConfig | None,
    workspace: torch.Tensor | None,
    decode_query_len: int | None,
    return_lse: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    config = _config(config)
    block_table, seq_lens, cu_seqlens_q, cu_seqlens_k = (
        batch.block_table,
        batch.seq_lens,
        batch.cu_seqlens_q,
        batch.cu_seqlens_k,
    )
    num_seqs, max_seqlen_q, max_seqlen_k = batch.num_seqs, batch.max_seqlen_q, batch.max_seqlen_k
    paged = block_table is not None
    block_size = k.shape[1] if paged else 1
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device) if return_lse else None
    if num_seqs == 0 or q.shape[0] == 0:
        return (out, lse) if lse is not None else out  # type: ignore[return-value]
    num_q_heads, head_dim, head_dim_v = q.shape[1], q.shape[2], v.shape[-1]
    num_kv_heads = k.shape[-2]
    group = num_q_heads // num_kv_heads
    problem = AttentionProblem.from_tensors(
        q, k, v=v, num_seqs=num_seqs, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k
    )
    plain = feats.window is None and feats.softcap is None and feats.alibi is None and feats.sinks is None
    plan = plan_launch(
        problem, decode_query_len=decode_query_len, config=config, device=q.device, hopper_decode=feats.causal and plain
    )
    dq = plan.decode_query_len
    if paged:
        kstr, vstr = k.stride(), v.stride()
    else:  # contiguous [total, heads, dim]: no block stride
        kstr, vstr = (0, *k.stride()), (0, *v.stride())
    dummy = cu_seqlens_q  # stands in for pointers a specialisation never reads
    # fp8 KV with a bf16 query: the kernel does its dots in fp16 (FP8_VIA_F16), so no bf16
    # dot runs even under the interpreter (which gets bf16 dots wrong: DOT_F32 there).
    fp8_via_f16 = feats.k_scale is not None and q.dtype == torch.bfloat16
    interp_bf16 = interpreting() and q.dtype == torch.bfloat16 and not fp8_via_f16
    # Both launches run when the batch may hold sequences of both kinds.
    dcfg, pcfg = plan.config.decode, plan.config.prefill
    decode_runs, prefill_runs = dcfg is not None, pcfg is not None
    left, right = feats.window if feats.window is not None else (0, 0)
    common = dict(
        HEAD_DIM=head_dim,
        BLOCK_D=next_pow2(head_dim),
        HEAD_DIM_V=head_dim_v,
        BLOCK_DV=next_pow2(head_dim_v),
        GROUP=group,
        BLOCK_SIZE=block_size,
        PAGED=paged,
        CAUSAL=feats.causal,
        USE_WINDOW=feats.window is not None,
        USE_SOFTCAP=feats.softcap is not None,
        USE_ALIBI=feats.alibi is not None,
        USE_SINKS=feats.sinks is not None,
        KV_SCALED=feats.k_scale is not None,
        FP8_VIA_F16=fp8_via_f16,
        RETURN_LSE=lse is not None,
        DOT_F32=q.dtype == torch.float32 or interp_bf16,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )

    def run(
        block_m: int,
        block_q: int,
        tile_n: int,
        splits: int,
        decode: bool,
        grid2: int,
        warps: int,
        stages: int,
        prefetch: int,
        part_out: torch.Tensor,
        part_lse: torch.Tensor,
    ) -> None:
        launch_kernel(
            attention_kernel,
            (num_kv_heads, num_seqs, splits if decode else grid2),
            q,
            k,
            v,
            out,
            lse if lse is not None else dummy,
            part_out,
            part_lse,
            block_table if paged else dummy,
            seq_lens if paged else dummy,
            cu_seqlens_q,
            dummy if paged else cu_seqlens_k,
            feats.alibi if feats.alibi is not None else dummy,
            feats.sinks if feats.sinks is not None else dummy,
            feats.k_scale if feats.k_scale is not None else dummy,
            feats.v_scale if feats.v_scale is not None else dummy,
            feats.scale,
            feats.softcap or 0.0,
            left,
            right,
            q.shape[0],
            k.shape[0],
            block_table.shape[1] if paged and block_table is not None else 0,
            dq,
            int(decode_runs and prefill_runs),
            splits,
            *q.stride(),
            *kstr,
            *vstr,
            *out.stride(),
            block_table.stride(0) if paged and block_table is not None else 0,
            BLOCK_M=block_m,
            BLOCK_Q=block_q,
            TILE_N=tile_n,
            SPLIT_KV=splits > 1,
            IS_DECODE=decode,
            # Contiguous K/V has no page numbers: one variant whatever the config says.
            PREFETCH_PAGES=bool(prefetch) and paged,
            num_warps=warps,
            num_stages=stages,
            **common,
        )

    specialisation = lambda: (*common.items(), q.dtype, k.dtype, out.dtype)  # noqa: E731  (after a crash)
    # The prefill launch is configured first, so that a launch that cannot run fails before
    # anything is written.
    if pcfg is not None:
        block_m = max(pcfg.block_m, next_pow2(group))
        block_q = block_m // group
        # Query tiles are walked grid-stride, so the grid is a sizing choice only.
        q_programs = min(cdiv(max_seqlen_q, block_q), check.MAX_SEQS)

    if dcfg is not None:
        splits = dcfg.num_splits
        need = plan.workspace_numel
        ws = check.workspace(workspace, q.device, need=need)
        part_lse, part_out = partials(ws, need, head_dim_v, q.device, out)
        decode_m = max(16, next_pow2(dq * group))
        # Verification tiles of 64+ rows: sm_90 code (Triton 3.6) spills 48 B (64 rows) and
        # 3.3 KB (128 rows) per thread at 4 warps, nothing at 8. 32 rows stay at the table's
        # warps: they spill 204 B at 4 warps, yet on an H200 8 warps ran them 1.33-1.54x slower
        # from batch 16 up (8 tokens x GQA 4, 128-token pages, 16 x 32k: 807.8 us against 524.8)
        # and level at batch 1; n-gram speculation end to end (5 tokens a step) fell to
        # 0.93-0.94x FLASH_ATTN from 0.98-1.00x (docs/results/h200/verify32-2026-12-04).
        # The tables hold one-token decodes.
        decode_warps = dcfg.num_warps if decode_m < 64 else max(dcfg.num_warps, 8)
        g_rows = None
        if dcfg.gluon and paged:
            g_rows = _decode_gluon.qualifies(
                q, k, v, out, tile_n=dcfg.tile_n, causal=feats.causal, features_plain=plain
            )
        if g_rows is not None and block_table is not None and seq_lens is not None:
            # Verification on Hopper (DecodeConfig.gluon where _decode_gluon serves the launch).
            _decode_gluon.launch(q, k, v, out, lse, part_out, part_lse, g_rows, block_table=block_table,
                                 seq_lens=seq_lens, cu_seqlens_q=cu_seqlens_q, num_seqs=num_seqs, decode_q=dq,
                                 other_launch=int(prefill_runs), scale=feats.scale, num_splits=splits,
                                 tile_n=dcfg.tile_n, stages=dcfg.num_stages)  # fmt: skip
        else:
            _fallback.launch(
                lambda tile_n, warps, stages: run(
                    decode_m, dq, tile_n, splits, True, 1, warps, stages, dcfg.prefetch_pages, part_out, part_lse
                ),
                (dcfg.tile_n, decode_warps, dcfg.num_stages),
                lambda: ("decode", decode_m, splits, dcfg.prefetch_pages, *specialisation()),
                narrower=False,
            )
        if splits > 1:
            merge_partials(part_lse, part_out, cu_seqlens_q, out, lse, num_seqs=num_seqs, decode_q=dq, splits=splits)
    if pcfg is not None:
        rows = None
        if pcfg.tma and paged:
            rows = _tma.qualifies(q, k, v, tile_n=pcfg.tile_n, features_plain=plain)
        served = _gluon.serves_features(causal=feats.causal, window=feats.window, alibi=feats.alibi is not None,
                                        sinks=feats.sinks is not None)  # fmt: skip
        gk, gv, g_table = k, v, block_table
        if feats.k_scale is not None and feats.v_scale is not None and block_table is not None and seq_lens is not None:
            # An fp8 cache: the Gluon prefill reads a dequantised copy of the pages (_fp8_stage).
            staged = None
            # Not while a CUDA graph records: the copy is sized for this call's max_seqlen_k,
            # and a replay may bring longer contexts (the generic kernel reads the cache itself).
            if not _capturing(q.device) and _gluon.serves_launch(
                q, v_head_dim=head_dim_v, config=pcfg, features_served=served
            ):
                nbytes = _fp8_stage.staging_bytes(num_seqs, max_seqlen_k, k, page=pcfg.tile_n, elem=q.element_size())
                if nbytes <= _fp8_stage.MAX_STAGING_BYTES:
                    staged = _fp8_stage.stage(k, v, block_table, seq_lens, cu_seqlens_q, feats.k_scale, feats.v_scale,
                                              num_seqs=num_seqs, max_seqlen_k=max_seqlen_k, page=pcfg.tile_n,
                                              dtype=q.dtype, skip_q=dq if decode_runs else 0)  # fmt: skip
            if staged is not None:
                gk, gv, g_table = staged
        g_rows = _gluon.qualifies(q, gk, gv, paged=paged, config=pcfg, features_served=served)
        if g_rows is not None:
            _gluon.launch(q, gk, gv, out, lse, g_rows, block_table=g_table if paged else None, seq_lens=seq_lens,
                          cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, num_seqs=num_seqs,
                          max_seqlen_q=max_seqlen_q, decode_q=dq, other_launch=int(decode_runs), scale=feats.scale,
                          causal=feats.causal, config=pcfg, softcap=feats.softcap,
                          window_left=None if feats.window is None else feats.window[0])  # fmt: skip
        elif rows is not None and block_table is not None and seq_lens is not None:
            _launch_tma(q, k, v, out, lse, rows, block_table, seq_lens, cu_seqlens_q, num_seqs, max_seqlen_q, dq,
                        int(decode_runs), feats, pcfg, fp8_via_f16, interp_bf16)  # fmt: skip
        else:
            warps = prefill_warps(
                pcfg.num_warps, block_m, window=feats.window is not None, softcap=feats.softcap is not None
            )
            _fallback.launch(
                lambda tile_n, warps, stages: run(
                    block_m, block_q, tile_n, 1, False, q_programs, warps, stages, pcfg.prefetch_pages, out, out
                ),
                (pcfg.tile_n, warps, pcfg.num_stages),
                lambda: ("prefill", block_m, pcfg.prefetch_pages, *specialisation()),
            )
    return (out, lse) if lse is not None else out


def _capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is recording on the current stream of ``device``."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _launch_tma(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    rows: tuple[_tma.CacheRows, _tma.CacheRows],
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    num_seqs: int,
    max_seqlen_q: int,
    dq: int,
    other_launch: int,
    feats: _Features,
    pcfg: PrefillConfig,
    fp8_via_f16: bool,
    interp_bf16: bool,
) -> None:
    """The Hopper prefill (see :mod:`._tma`): one query head per program, block_m tokens."""
    num_tokens, num_q_heads, head_dim = q.shape
    kr, vr = rows
    block_m = pcfg.block_m
    dummy = cu_seqlens_q
    launch_kernel(
        prefill_tma_kernel,
        (num_q_heads, num_seqs, min(cdiv(max(max_seqlen_q, 1), block_m), check.MAX_SEQS)),
        _tma.descriptor(q, num_tokens, num_q_heads * head_dim, q.stride(0), [block_m, head_dim]),
        _tma.descriptor(k, kr.rows, kr.cols, kr.row_stride, [pcfg.tile_n, head_dim]),
        _tma.descriptor(v, vr.rows, vr.cols, vr.row_stride, [pcfg.tile_n, head_dim]),
        out,
        lse if lse is not None else dummy,
        block_table,
        seq_lens,
        cu_seqlens_q,
        feats.k_scale if feats.k_scale is not None else dummy,
        feats.v_scale if feats.v_scale is not None else dummy,
        feats.scale,
        num_tokens,
        k.shape[0],
        block_table.shape[1],
        dq,
        other_launch,
        kr.rows_per_block,
        kr.rows_per_head,
        kr.cols_per_head,
        out.stride(0),
        out.stride(1),
        block_table.stride(0),
        HEAD_DIM=head_dim,
        GROUP=num_q_heads // k.shape[2],
        BLOCK_M=block_m,
        TILE_N=pcfg.tile_n,
        BLOCK_SIZE=k.shape[1],
        CAUSAL=feats.causal,
        KV_SCALED=feats.k_scale is not None,
        FP8_VIA_F16=fp8_via_f16,
        RETURN_LSE=lse is not None,
        WARP_SPECIALIZE=_tma.warp_specialize(),
        DOT_F32=interp_bf16,
        num_warps=pcfg.num_warps,
        num_stages=pcfg.num_stages,
    )


def _paged_layout(k_cache: torch.Tensor, v_cache: torch.Tensor, kv_layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The caches as [num_blocks, block_size, num_kv_heads, head_dim] views."""
    if kv_layout == "NHD":
        return k_cache, v_cache
    if kv_layout == "HND":
        return k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {kv_layout!r}")


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    window_size: tuple[int, int] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
    kv_layout: str = "NHD",
    decode_query_len: int | None = None,
    return_lse: bool = False,
    out: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of new query tokens against a paged KV cache, for any mix of decodes,
    speculative-decoding verification, prefill chunks on cached prefixes and fresh prefills.

    Args:
        q: [num_tokens, num_q_heads, head_dim], float16 / bfloat16 / float32. The tokens of
            sequence ``i`` are rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``; they are the last
            tokens of that sequence's context.
        k_cache, v_cache: ``kv_layout="NHD"``: [num_blocks, block_size, num_kv_heads, head_dim];
            ``"HND"``: [num_blocks, num_kv_heads, block_size, head_dim]. q's dtype or
            float8_e4m3fn / float8_e5m2; any strides. v_cache may have its own head size
            ``head_dim_v`` (its last dimension, one of :data:`SUPPORTED_HEAD_DIMS`; e.g. MLA
            prefill: 192-wide q and k, 128-wide v); the output then has that head size.
        block_table: [num_seqs, max_blocks] int32, physical block of each logical block.
        seq_lens: [num_seqs] int32, whole context length of each sequence (new tokens included).
        cu_seqlens_q: [num_seqs + 1] int32, prefix sums of new-token counts (0 allowed).
        max_seqlen_q: host int, the largest new-token count (1 means a pure decode batch). A
            sizing hint: a smaller value than the truth still computes every row, slowly.
        max_seqlen_k: host int, the largest ``seq_lens`` entry (used for launch heuristics).
        scale: softmax scale; ``None`` means ``head_dim ** -0.5`` (q's head size).
        causal: mask keys after each query's position.
        sliding_window: ``None`` or W, the keys a query sees counting itself: with ``causal``,
            positions ``[p - W + 1, p]``; without, ``[p - W + 1, p + W - 1]`` (vLLM's meaning
            for encoder layers). Same as ``window_size=(W - 1, 0 or W - 1)``.
        window_size: ``None`` or ``(left, right)`` as in flash-attn: a query at position p
            sees keys in ``[p - left, p + right]``; -1 leaves that side unbounded.
        softcap: ``None`` or 0 (off), or c > 0: logits become ``c * tanh(logit / c)``.
        alibi_slopes: ``None`` or [num_q_heads] float; adds ``slope * (k_pos - q_pos)``.
        sinks: ``None`` or [num_q_heads] float; one extra logit per head in the denominator.
        k_scale, v_scale: per-tensor dequantisation scales (float or one-element tensor);
            required for fp8 caches, ignored for caches in q's dtype.
        kv_layout: ``"NHD"`` or ``"HND"`` (FlashInfer's names), the order of the cache's
            middle dimensions. A context longer than ``max_blocks * block_size`` is refused,
            which catches most caches passed with the wrong layout.
        decode_query_len: sequences with at most this many new tokens run on the split-KV
            decode path (e.g. ``num_speculative_tokens + 1``); longer ones on the prefill
            path. ``None``: ``max_seqlen_q`` if it is at most :data:`MAX_DECODE_QUERY_LEN`,
            else 1. 0: no decode path (a prefill-only batch is then one launch).
        return_lse: also return the log-sum-exp of each row's logits.
        out: ``None`` or [num_tokens, num_q_heads, head_dim_v] in q's dtype to write into.
        config: ``None`` (table, else heuristic) or an :class:`AttentionConfig`.
        workspace: ``None`` or a 1-D float32 buffer of at least :func:`decode_workspace_numel`
            elements for split-KV partials (preallocate it for CUDA graphs; its ``head_dim``
            is V's head size).

    Returns:
        ``out``: [num_tokens, num_q_heads, head_dim_v] in q's dtype; with ``return_lse``,
        ``(out, lse)``, lse [num_tokens, num_q_heads] float32, natural log, ``-inf`` for rows
        that see no key (including the sinks when given). Rows of tokens outside every
        sequence (padding) are left untouched (their lse is -inf).

    Index contents are never trusted with an address: a block id outside
    ``[0, num_blocks)`` reads some block of the cache, a ``seq_lens`` entry is bounded by the
    block table's row, rows outside ``[0, num_tokens)`` are not written. Such a sequence's
    output is unspecified; ``TRITON_ATTN_DEBUG=1`` reports the entry instead.
    """
    check.tensor("q", q, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("k_cache", k_cache, ndim=4)
    check.tensor("v_cache", v_cache, ndim=4)
    k_cache, v_cache = _paged_layout(k_cache, v_cache, kv_layout)
    check.kv_pair(k_cache, v_cache, q, k_name="k_cache", v_name="v_cache", own_v_head_dim=True)
    check.cache_blocks("k_cache", k_cache)
    check.head_geometry(q, k_cache.shape[2], k_cache.shape[3], "k_cache")
    num_seqs = check.paged_batch(
        block_table,
        seq_lens,
        cu_seqlens_q,
        block_size=k_cache.shape[1],
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        hint="; a cache shaped [num_blocks, num_kv_heads, block_size, head_dim] needs kv_layout='HND'",
    )
    batch = _Batch(cu_seqlens_q, num_seqs, max_seqlen_q, max_seqlen_k, block_table=block_table, seq_lens=seq_lens)
    out = _checked_out(q, batch, out, workspace, k_scale, v_scale, k_cache=k_cache, v_cache=v_cache)
    feats = _features(
        q, k_cache.dtype, scale, causal, sliding_window, window_size, softcap, alibi_slopes, sinks, k_scale, v_scale
    )
    return _launch(q, k_cache, v_cache, out, batch, feats, config, workspace, decode_query_len, return_lse)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    window_size: tuple[int, int] | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    decode_query_len: int | None = None,
    return_lse: bool = False,
    out: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The attention of :func:`paged_attention` on contiguous (unpaged) variable-length tensors.

    Args:
        q: [total_q, num_q_heads, head_dim], float16 / bfloat16 / float32.
        k, v: [total_k, num_kv_heads, head_dim] in q's dtype, any strides; v may have its
            own head size ``head_dim_v`` (as in :func:`paged_attention`).
        cu_seqlens_q: [num_seqs + 1] int32 prefix sums of query lengths.
        cu_seqlens_k: [num_seqs + 1] int32 prefix sums of key lengths; each sequence's
            queries are its last ``q_len`` key positions (bottom-right aligned causal mask).
        max_seqlen_q, max_seqlen_k: host ints, the largest query and key lengths (sizing
            hints, as in :func:`paged_attention`).
        Other arguments as in :func:`paged_attention`.

    Returns:
        ``out`` [total_q, num_q_heads, head_dim_v] in q's dtype, or ``(out, lse)`` with
        ``return_lse``. Key ranges of ``cu_seqlens_k`` are clipped to ``[0, total_k)``.
    """
    check.tensor("q", q, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("k", k, ndim=3, dtypes=(q.dtype,))
    check.tensor("v", v, ndim=3, dtypes=(q.dtype,))
    check.kv_pair(k, v, q, k_name="k", v_name="v", own_v_head_dim=True)
    check.head_geometry(q, k.shape[1], k.shape[2], "k")
    check.index("cu_seqlens_q", cu_seqlens_q, ndim=1)
    check.index("cu_seqlens_k", cu_seqlens_k, ndim=1)
    num_seqs = cu_seqlens_q.shape[0] - 1
    if num_seqs < 0 or cu_seqlens_k.shape[0] != num_seqs + 1:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must both have num_seqs + 1 entries, got "
            f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}"
        )
    check.batch_limits(num_seqs, max_seqlen_q, max_seqlen_k)
    batch = _Batch(cu_seqlens_q, num_seqs, max_seqlen_q, max_seqlen_k, cu_seqlens_k=cu_seqlens_k)
    out = _checked_out(q, batch, out, workspace, k=k, v=v)
    feats = _features(q, k.dtype, scale, causal, sliding_window, window_size, softcap, alibi_slopes, sinks)
    return _launch(q, k, v, out, batch, feats, config, workspace, decode_query_len, return_lse)
