"""Public attention launchers: validate, pick configurations, launch.

``paged_attention`` and ``varlen_attention`` share one launch path: sequences with one
new token go to the split-KV decode specialisation, sequences with more go to the
prefill specialisation, and a mixed batch launches both (each skips the other's
sequences on the device, so no host synchronisation is needed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _fallback, debug
from . import _validation as check
from ._device import interpreting, num_sms
from ._intmath import cdiv, next_pow2
from ._kernels.attention import attention_kernel, merge_kernel
from .tuning import (
    AttentionConfig,
    AttentionProblem,
    DecodeConfig,
    PrefillConfig,
    select_decode_config,
    select_prefill_config,
)

__all__ = ["decode_workspace_numel", "paged_attention", "varlen_attention"]


def decode_workspace_numel(num_seqs: int, num_q_heads: int, head_dim: int, num_splits: int) -> int:
    """fp32 elements the split-KV decode needs as ``workspace`` (0 when ``num_splits == 1``)."""
    if num_splits <= 1:
        return 0
    return num_seqs * num_q_heads * num_splits * (head_dim + 1)


@dataclass(frozen=True)
class _Features:
    scale: float
    causal: bool
    window: int | None
    softcap: float | None
    alibi: torch.Tensor | None
    sinks: torch.Tensor | None
    k_scale: torch.Tensor | None  # set only for fp8 caches
    v_scale: torch.Tensor | None


def _features(
    q: torch.Tensor,
    kv_dtype: torch.dtype,
    *,
    scale: float | None,
    causal: bool,
    sliding_window: int | None,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    sinks: torch.Tensor | None,
    k_scale: float | torch.Tensor | None,
    v_scale: float | torch.Tensor | None,
) -> _Features:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    fp8 = kv_dtype in check.FP8_DTYPES
    num_q_heads = q.shape[1]
    return _Features(
        scale=q.shape[2] ** -0.5 if scale is None else check.positive_float("scale", scale),  # type: ignore[arg-type]
        causal=causal,
        window=check.window(sliding_window),
        softcap=check.positive_float("softcap", softcap),
        alibi=check.per_head("alibi_slopes", alibi_slopes, num_q_heads, q.device),
        sinks=check.per_head("sinks", sinks, num_q_heads, q.device),
        k_scale=check.kv_scale("k_scale", k_scale, q.device) if fp8 else None,
        v_scale=check.kv_scale("v_scale", v_scale, q.device) if fp8 else None,
    )


def _problem(
    q: torch.Tensor, num_seqs: int, num_kv_heads: int, kv_dtype: torch.dtype, mq: int, mk: int
) -> AttentionProblem:
    return AttentionProblem(
        num_seqs=num_seqs,
        num_q_heads=q.shape[1],
        num_kv_heads=num_kv_heads,
        head_dim=q.shape[2],
        max_seqlen_q=mq,
        max_seqlen_k=mk,
        dtype=str(q.dtype).removeprefix("torch."),
        kv_dtype=str(kv_dtype).removeprefix("torch."),
        num_sms=num_sms(q.device),
        interpreter=interpreting(),
    )


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
    *,
    paged: bool,
    block_size: int,
    block_table: torch.Tensor | None,
    seq_lens: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None,
    num_seqs: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    feats: _Features,
    config: AttentionConfig,
    workspace: torch.Tensor | None,
) -> torch.Tensor:
    if num_seqs == 0 or max_seqlen_q == 0:
        return out
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k.shape[-2]
    group = num_q_heads // num_kv_heads
    problem = _problem(q, num_seqs, num_kv_heads, k.dtype, max_seqlen_q, max_seqlen_k)
    if paged:
        kstr, vstr = k.stride(), v.stride()
    else:  # contiguous [total, heads, dim]: no block stride
        kstr, vstr = (0, *k.stride()), (0, *v.stride())
    dummy = cu_seqlens_q  # stands in for pointers a specialisation never reads
    # fp8 KV with a bf16 query: the kernel does its dots in fp16 (FP8_VIA_F16), so no bf16
    # dot runs even under the interpreter (which gets bf16 dots wrong: DOT_F32 there).
    fp8_via_f16 = feats.k_scale is not None and q.dtype == torch.bfloat16
    interp_bf16 = interpreting() and q.dtype == torch.bfloat16 and not fp8_via_f16
    common = dict(
        HEAD_DIM=head_dim,
        BLOCK_D=next_pow2(head_dim),
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
        DOT_F32=q.dtype == torch.float32 or interp_bf16,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )

    def run(
        block_m: int,
        block_q: int,
        tile_n: int,
        splits: int,
        decode: bool,
        grid0: int,
        warps: int,
        stages: int,
        prefetch: int,
        part_out: torch.Tensor,
        part_lse: torch.Tensor,
    ) -> None:
        attention_kernel[(num_kv_heads * splits, num_seqs, grid0)](
            q,
            k,
            v,
            out,
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
            feats.window or 0,
            *q.stride(),
            *kstr,
            *vstr,
            *out.stride(),
            block_table.stride(0) if paged and block_table is not None else 0,
            BLOCK_M=block_m,
            BLOCK_Q=block_q,
            TILE_N=tile_n,
            NUM_SPLITS=splits,
            IS_DECODE=decode,
            # Contiguous K/V has no page numbers: one variant whatever the config says.
            PREFETCH_PAGES=bool(prefetch) and paged,
            num_warps=warps,
            num_stages=stages,
            **common,
        )

    # Prefill specialisation (sequences with two or more new tokens): configured and checked
    # first, so that a launch that cannot run fails before anything is written.
    pcfg: PrefillConfig | None = None
    if max_seqlen_q > 1:
        pcfg = select_prefill_config(problem, config.prefill, device=q.device)
        block_m = max(pcfg.block_m, next_pow2(group))
        block_q = block_m // group
        q_tiles = cdiv(max_seqlen_q, block_q)
        if q_tiles > check.MAX_SEQS:
            raise ValueError(
                f"max_seqlen_q={max_seqlen_q} needs more than {check.MAX_SEQS} query tiles of {block_q} tokens; "
                "split the prefill into chunks or pass a PrefillConfig with a larger block_m"
            )

    # Decode specialisation: every sequence with exactly one new token.
    dcfg: DecodeConfig = select_decode_config(problem, config.decode, device=q.device)
    splits = dcfg.num_splits
    need = decode_workspace_numel(num_seqs, num_q_heads, head_dim, splits)
    if need:
        workspace = check.workspace(workspace, q.device, need=need)
        if workspace is None:
            workspace = torch.empty(need, dtype=torch.float32, device=q.device)
        part_lse = workspace[: num_seqs * num_q_heads * splits]
        part_out = workspace[num_seqs * num_q_heads * splits : need]
    else:
        part_lse = part_out = out
    decode_m = max(16, next_pow2(group))
    specialisation = lambda: (*common.items(), q.dtype, k.dtype, out.dtype)  # noqa: E731  (after a crash)
    _fallback.launch(
        lambda tile_n, warps, stages: run(
            decode_m, 1, tile_n, splits, True, 1, warps, stages, dcfg.prefetch_pages, part_out, part_lse
        ),
        (dcfg.tile_n, dcfg.num_warps, dcfg.num_stages),
        lambda: ("decode", decode_m, splits, dcfg.prefetch_pages, *specialisation()),
        narrower=False,
    )
    if splits > 1:
        merge_kernel[(num_q_heads, num_seqs)](
            part_out,
            part_lse,
            cu_seqlens_q,
            out,
            *out.stride(),
            HEAD_DIM=head_dim,
            BLOCK_D=next_pow2(head_dim),
            NUM_SPLITS=splits,
            SPLITS_POW2=next_pow2(splits),
            num_warps=4,
        )
    if pcfg is not None:
        _fallback.launch(
            lambda tile_n, warps, stages: run(
                block_m, block_q, tile_n, 1, False, q_tiles, warps, stages, pcfg.prefetch_pages, out, out
            ),
            (pcfg.tile_n, pcfg.num_warps, pcfg.num_stages),
            lambda: ("prefill", block_m, pcfg.prefetch_pages, *specialisation()),
        )
    return out


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
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of new query tokens against a paged KV cache, for any mix of decodes,
    prefill chunks on cached prefixes and fresh prefills.

    Args:
        q: [num_tokens, num_q_heads, head_dim], float16 / bfloat16 / float32. The tokens of
            sequence ``i`` are rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``; they are the last
            tokens of that sequence's context.
        k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim], q's dtype or
            float8_e4m3fn / float8_e5m2; any strides (NHD or HND views of one tensor).
        block_table: [num_seqs, max_blocks] int32, physical block of each logical block.
        seq_lens: [num_seqs] int32, whole context length of each sequence (new tokens included).
        cu_seqlens_q: [num_seqs + 1] int32, prefix sums of new-token counts (0 allowed).
        max_seqlen_q: host int, the largest new-token count (1 means a pure decode batch).
        max_seqlen_k: host int, the largest ``seq_lens`` entry (used for launch heuristics).
        scale: softmax scale; ``None`` means ``head_dim ** -0.5``.
        causal: mask keys after each query's position.
        sliding_window: ``None`` or W: a query at position p sees keys at positions > p - W.
        softcap: ``None`` or c: logits become ``c * tanh(logit / c)``.
        alibi_slopes: ``None`` or [num_q_heads] float; adds ``slope * (k_pos - q_pos)``.
        sinks: ``None`` or [num_q_heads] float; one extra logit per head in the denominator.
        k_scale, v_scale: per-tensor dequantisation scales of fp8 caches (float or one-element
            tensor; ``None`` means 1.0); ignored for caches in q's dtype.
        out: ``None`` or [num_tokens, num_q_heads, head_dim] in q's dtype to write into.
        config: ``None`` (table, else heuristic) or an :class:`AttentionConfig`.
        workspace: ``None`` or a float32 buffer of at least :func:`decode_workspace_numel`
            elements for split-KV partials (preallocate it for CUDA graphs).

    Returns:
        ``out``: [num_tokens, num_q_heads, head_dim] in q's dtype. Rows of tokens outside
        every sequence (padding) are left untouched.
    """
    check.tensor("q", q, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("k_cache", k_cache, ndim=4)
    check.tensor("v_cache", v_cache, ndim=4)
    check.kv_pair(k_cache, v_cache, q, k_name="k_cache", v_name="v_cache")
    check.cache_blocks("k_cache", k_cache)
    check.head_geometry(q, k_cache.shape[2], k_cache.shape[3], "k_cache")
    check.index("block_table", block_table, ndim=2)
    check.index("seq_lens", seq_lens, ndim=1)
    check.index("cu_seqlens_q", cu_seqlens_q, ndim=1)
    num_seqs = seq_lens.shape[0]
    if block_table.shape[0] != num_seqs:
        raise ValueError(f"block_table must have num_seqs={num_seqs} rows (seq_lens), got {block_table.shape[0]}")
    if cu_seqlens_q.shape[0] != num_seqs + 1:
        raise ValueError(f"cu_seqlens_q must have num_seqs + 1 = {num_seqs + 1} entries, got {cu_seqlens_q.shape[0]}")
    check.batch_limits(num_seqs, max_seqlen_q, max_seqlen_k)
    check.same_device(
        q.device,
        k_cache=k_cache,
        v_cache=v_cache,
        block_table=block_table,
        seq_lens=seq_lens,
        cu_seqlens_q=cu_seqlens_q,
        out=out,
    )
    out = check.output(out, q, k_cache=k_cache, v_cache=v_cache)
    check.workspace(workspace, q.device, q=q, k_cache=k_cache, v_cache=v_cache, out=out)
    if debug.enabled():
        debug.check_paged_batch(
            block_table,
            seq_lens,
            cu_seqlens_q,
            num_tokens=q.shape[0],
            num_blocks=k_cache.shape[0],
            block_size=k_cache.shape[1],
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
        )
        if k_cache.dtype in check.FP8_DTYPES:
            debug.check_fp8_scales(k_scale=k_scale, v_scale=v_scale)
    feats = _features(
        q,
        k_cache.dtype,
        scale=scale,
        causal=causal,
        sliding_window=sliding_window,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        sinks=sinks,
        k_scale=k_scale,
        v_scale=v_scale,
    )
    return _launch(
        q,
        k_cache,
        v_cache,
        out,
        paged=True,
        block_size=k_cache.shape[1],
        block_table=block_table,
        seq_lens=seq_lens,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=None,
        num_seqs=num_seqs,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        feats=feats,
        config=_config(config),
        workspace=workspace,
    )


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
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention of :func:`paged_attention` on contiguous (unpaged) variable-length tensors.

    Args:
        q: [total_q, num_q_heads, head_dim], float16 / bfloat16 / float32.
        k, v: [total_k, num_kv_heads, head_dim] in q's dtype, any strides.
        cu_seqlens_q: [num_seqs + 1] int32 prefix sums of query lengths.
        cu_seqlens_k: [num_seqs + 1] int32 prefix sums of key lengths; each sequence's
            queries are its last ``q_len`` key positions (bottom-right aligned causal mask).
        max_seqlen_q, max_seqlen_k: host ints, the largest query and key lengths.
        Other arguments as in :func:`paged_attention`.

    Returns:
        ``out``: [total_q, num_q_heads, head_dim] in q's dtype.
    """
    check.tensor("q", q, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("k", k, ndim=3, dtypes=(q.dtype,))
    check.tensor("v", v, ndim=3, dtypes=(q.dtype,))
    check.kv_pair(k, v, q, k_name="k", v_name="v")
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
    check.same_device(q.device, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, out=out)
    out = check.output(out, q, k=k, v=v)
    check.workspace(workspace, q.device, q=q, k=k, v=v, out=out)
    if debug.enabled():
        debug.check_varlen_batch(
            cu_seqlens_q,
            cu_seqlens_k,
            num_tokens=q.shape[0],
            num_keys=k.shape[0],
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
        )
    feats = _features(
        q,
        k.dtype,
        scale=scale,
        causal=causal,
        sliding_window=sliding_window,
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        sinks=sinks,
        k_scale=None,
        v_scale=None,
    )
    return _launch(
        q,
        k,
        v,
        out,
        paged=False,
        block_size=1,
        block_table=None,
        seq_lens=None,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        num_seqs=num_seqs,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        feats=feats,
        config=_config(config),
        workspace=workspace,
    )
