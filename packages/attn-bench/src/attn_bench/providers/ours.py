"""Our kernels (triton-attn-kernels): every public entry point."""

from __future__ import annotations

from typing import Any

import torch

from ..inputs import Inputs
from ..registry import Timed, provider
from .common import ATTENTION_OPS, supports


def serving_limits(p: Any, *, cuda_graphs: bool | None = None, hopper_decode: bool = True) -> Any:
    """The limits the vLLM plugin would serve this problem under, so that the configurations
    measured are the plugin's: a uniform run of at most 16 new tokens per sequence (decode,
    speculative verification) is a full-CUDA-graph decode step with decode_query_len = q_len;
    anything longer is a piecewise (no full graph) prefill or mixed step. vLLM's default
    batch limits (256 sequences, 8192 batched tokens), the problem's context as
    max_model_len, its page size, plain attention (what the Hopper prefill serves) unless
    the variant is ALiBi or sinks. ``cuda_graphs`` overrides the graph mode (True: vLLM's full graphs for
    every batch; False: none); the Gluon Hopper decode for decode steps of plain attention
    (no variant) unless ``hopper_decode=False`` (ServingLimits.hopper_decode)."""
    from triton_attn_kernels.tuning import MAX_DECODE_QUERY_LEN, ServingLimits

    decode_like = p.op in ("decode", "prefill") and p.max_seqlen_q <= MAX_DECODE_QUERY_LEN
    return ServingLimits(
        max_num_seqs=max(256, p.num_seqs),
        max_model_len=p.max_seqlen_k,
        max_num_batched_tokens=max(8192, p.num_tokens),
        cuda_graphs=decode_like if cuda_graphs is None else cuda_graphs,
        decode_query_len=p.max_seqlen_q if decode_like else 1,
        block_size=p.block_size,
        plain_attention=p.variant not in ("alibi", "sinks"),
        hopper_decode=hopper_decode and not p.variant,
    )


def eager_in_vllm(p: Any) -> bool:
    """Whether ``p`` must be timed eagerly to measure what the plugin runs: a prefill or mixed
    step over an fp8 cache. vLLM runs such a step piecewise (attention outside any CUDA graph),
    and there the Hopper prefill reads a dequantised copy of the pages; while a graph records,
    the launch takes the generic kernel instead (the copy is sized for one call's contexts), so
    a graph replay would time a route vLLM does not take."""
    return bool(p.fp8) and not serving_limits(p).cuda_graphs


def launch_plan(p: Any, device: torch.device, *, paged: bool = True, hopper_decode: bool = True):  # type: ignore[no-untyped-def]
    """The plugin's plan for problem ``p`` (triton_attn_kernels.tuning.ServingPolicy under
    :func:`serving_limits`), made explicit so the split-KV workspace can be preallocated
    outside the timed (and CUDA-graph-captured) closure."""
    from triton_attn_kernels.tuning import ServingPolicy

    policy = ServingPolicy.for_model(
        num_q_heads=p.num_q_heads,
        num_kv_heads=p.num_kv_heads,
        head_dim=p.head_dim,
        head_dim_v=p.head_dim_v or None,
        dtype=p.dtype,
        kv_dtype=p.kv_dtype if paged else p.dtype,
        limits=serving_limits(p, hopper_decode=hopper_decode),
        device=device,
    )
    dq = policy.limits.decode_query_len
    has_decodes = any(1 <= q <= dq for q, _ in p.seqs())
    return policy.plan(p.num_seqs, p.max_seqlen_q, p.max_seqlen_k, has_decodes=has_decodes)


def _workspace(x: Inputs, plan) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.empty(max(plan.workspace_numel, 1), dtype=torch.float32, device=x.device)


@provider(
    "ours-paged",
    ops=ATTENTION_OPS,
    requires=("triton_attn_kernels",),
    supports=supports(fp8=True, variants=("window", "softcap", "alibi", "sinks")),
)
def ours_paged(x: Inputs) -> Timed:
    """triton_attn_kernels.paged_attention as the vLLM plugin calls it (paged): one call for decodes and prefills; a decode-first mixed batch as two (decode rows, then prefill rows alone)."""
    return _paged(x, prefill=None)


@provider(
    "ours-paged-generic",
    ops=ATTENTION_OPS,
    requires=("triton_attn_kernels",),
    supports=supports(fp8=True, variants=("window", "softcap", "alibi", "sinks")),
)
def ours_paged_generic(x: Inputs) -> Timed:
    """ours-paged with every decode launch on the generic kernel and its tables (ServingLimits(hopper_decode=False)): the comparison for the Gluon Hopper decode, which serves decode and verification steps on sm_90; elsewhere the same launches as ours-paged."""
    return _paged(x, prefill=None, hopper_decode=False)


def _gluon_decode_supported(p: Any) -> str | None:
    from triton_attn_kernels.tuning import MAX_DECODE_QUERY_LEN

    if p.op == "prefill" and p.q_len > MAX_DECODE_QUERY_LEN:
        return f"decode and verification (at most {MAX_DECODE_QUERY_LEN} new tokens) only"
    if p.variant or p.fp8 or p.head_dim not in (64, 128) or p.block_size % 64:
        return "the Gluon decode serves plain causal attention over a bf16/fp16 cache, d64/d128, 64-token pages"
    return None


@provider("ours-gluon-decode", ops=("decode", "prefill"), requires=("triton_attn_kernels",), cuda_only=True,
          supports=_gluon_decode_supported)  # fmt: skip
def ours_gluon_decode(x: Inputs) -> Timed:
    """paged_attention with the Gluon Hopper decode's configuration (tuning.gluon_decode_config) for one-token decode at any batch as for verification (q_len <= 16), as TRITON_ATTN_HOPPER_DECODE=all runs it; by default the policy keeps one-token decode over more than 16 sequences on the generic kernel and its tables."""
    from triton_attn_kernels.tuning import AttentionProblem, gluon_decode_config

    p = x.problem
    problem = AttentionProblem.from_tensors(
        x.q, x.k_cache, v=x.v_cache, num_seqs=p.num_seqs, max_seqlen_q=p.max_seqlen_q, max_seqlen_k=p.max_seqlen_k
    )
    config = gluon_decode_config(problem, decode_query_len=p.max_seqlen_q, one_token_max_seqs=None)
    if config is None:
        raise ValueError(f"the Gluon decode does not serve {p.label()}")
    return _paged(x, prefill=None, decode=config)


def _paged(x: Inputs, *, prefill: Any, hopper_decode: bool = True, decode: Any = None) -> Timed:
    """paged_attention under the plugin's plan (``hopper_decode``: ServingLimits');
    ``prefill`` / ``decode`` replace its configurations where given (a decode one sizes the
    workspace itself). A mixed batch in decode-first order runs as the plugin runs it: the
    decode rows, then the prefill rows alone (``tuning.decodes_first``)."""
    import dataclasses

    from triton_attn_kernels import AttentionConfig, paged_attention
    from triton_attn_kernels.tuning import decode_workspace_numel, decodes_first

    p = x.problem
    plan = launch_plan(p, x.device, paged=True, hopper_decode=hopper_decode)
    config = plan.config
    if prefill is not None and config.prefill is not None:
        config = dataclasses.replace(config, prefill=prefill)
    if decode is not None and config.decode is not None:
        config = dataclasses.replace(config, decode=decode)
        need = decode_workspace_numel(
            p.num_seqs, p.num_q_heads, p.head_dim_v or p.head_dim, decode.num_splits, query_len=plan.decode_query_len
        )
        plan = dataclasses.replace(plan, config=config, workspace_numel=need)
    ws = _workspace(x, plan)
    out = x.new_out()
    common: dict[str, Any] = {"max_seqlen_k": p.max_seqlen_k, **x.features()}
    if p.fp8:
        common.update(k_scale=x.k_scale, v_scale=x.v_scale)
    dq = plan.decode_query_len
    lens = [q for q, _ in p.seqs()]
    d = decodes_first(lens, dq) if dq >= 1 else None
    graph = not eager_in_vllm(p)

    if d is None:

        def fn() -> Any:
            return paged_attention(
                x.q, x.k_cache, x.v_cache, x.block_table, x.seq_lens, x.cu_seqlens_q, max_seqlen_q=p.max_seqlen_q,
                out=out, config=config, decode_query_len=dq, workspace=ws, **common,
            )  # fmt: skip

        return Timed(fn, graph=graph)

    t = sum(lens[:d])
    pre_cu = x.cu_seqlens_q[d:] - t  # what the plugin's builder computes once per batch
    decode_cfg, prefill_cfg = AttentionConfig(decode=config.decode), AttentionConfig(prefill=config.prefill)

    def split() -> Any:
        paged_attention(
            x.q[:t], x.k_cache, x.v_cache, x.block_table[:d], x.seq_lens[:d], x.cu_seqlens_q[: d + 1],
            max_seqlen_q=dq, out=out[:t], config=decode_cfg, decode_query_len=dq, workspace=ws, **common,
        )  # fmt: skip
        paged_attention(
            x.q[t:], x.k_cache, x.v_cache, x.block_table[d:], x.seq_lens[d:], pre_cu,
            max_seqlen_q=max(lens[d:]), out=out[t:], config=prefill_cfg, decode_query_len=0, **common,
        )  # fmt: skip
        return out

    return Timed(split, graph=graph)


# The TMA prefill's launch shape, one that compiles with no spill for sm_90 (nox -s sm90): TMA
# + Triton's warp specialisation, 128 tokens x 64-key tiles, 4 warps, 2 stages. The Gluon
# prefill's is the serving policy's (tuning.gluon_prefill_config).
TMA_TILE_N = 64


def _gluon_config(head_dim: int, block_size: int | None = None) -> Any:
    """The policy's Gluon prefill configuration at this head size (bf16, no fp8 cache)."""
    from triton_attn_kernels.tuning import AttentionProblem, gluon_prefill_config

    geometry = AttentionProblem(
        num_seqs=1, num_q_heads=1, num_kv_heads=1, head_dim=head_dim, max_seqlen_q=1, max_seqlen_k=1,
        dtype="bfloat16", kv_dtype="bfloat16", num_sms=1, interpreter=False,
    )  # fmt: skip
    return gluon_prefill_config(geometry, block_size=block_size)


def _gluon_tile_n(head_dim: int) -> int:
    config = _gluon_config(head_dim)
    return config.tile_n if config is not None else 0


def _hopper_supported(tile_n: Any, *, fp8: bool, variants: tuple[str, ...] = ()) -> Any:
    def check(p: Any) -> str | None:
        if p.variant and p.variant.split("=")[0] not in variants:
            return f"variant {p.variant.split('=')[0]} runs on the generic kernel"
        if not tile_n(p.head_dim):
            return f"head_dim {p.head_dim} runs on the generic kernel"
        if p.fp8 and not fp8:
            return "an fp8 cache runs on the generic kernel"
        n = tile_n(p.head_dim)
        if p.block_size % n:
            return f"block_size {p.block_size} is not a multiple of the {n}-key tile"
        return None

    return check


@provider(
    "ours-tma",
    ops=("prefill", "mixed"),
    requires=("triton_attn_kernels",),
    cuda_only=True,
    supports=_hopper_supported(lambda d: TMA_TILE_N, fp8=True),
)
def ours_tma(x: Inputs) -> Timed:
    """paged_attention with the Hopper prefill (PrefillConfig(tma=1)): TMA + warp specialisation; pages a multiple of 64."""
    from triton_attn_kernels import PrefillConfig

    return _paged(x, prefill=PrefillConfig(block_m=128, tile_n=TMA_TILE_N, num_warps=4, num_stages=2, tma=1))


# Where the Gluon prefill runs: both of its launches take the same problems.
GLUON_PROVIDER: dict[str, Any] = dict(
    ops=("prefill", "mixed"),
    requires=("triton_attn_kernels",),
    cuda_only=True,
    supports=_hopper_supported(_gluon_tile_n, fp8=False, variants=("window", "softcap")),
)


@provider("ours-gluon", **GLUON_PROVIDER)
def ours_gluon(x: Inputs) -> Timed:
    """paged_attention with the Gluon Hopper prefill (PrefillConfig(gluon=1)) as a grid of query tiles: TMA loader warp, two ping-ponging consumer warpgroups; pages a multiple of its 128-key tile."""
    return _gluon_launched(x, persistent=False)


@provider("ours-gluon-persistent", **GLUON_PROVIDER)
def ours_gluon_persistent(x: Inputs) -> Timed:
    """ours-gluon with its persistent launch: one program per SM walks the work tiles (query tile, head, sequence), heaviest first, the loader issuing the next tile's copies while the consumers finish the current one."""
    return _gluon_launched(x, persistent=True)


@provider("ours-gluon-thread-arrives", **GLUON_PROVIDER)
def ours_gluon_thread_arrives(x: Inputs) -> Timed:
    """The Gluon prefill as ours-paged launches it (grid or persistent by the policy), its consumers releasing slots, Q and turns with per-thread mbarrier arrivals instead of thread 0's after a warpgroup bar.sync (_gluon.launch(thread_arrives=True))."""
    return _gluon_launched(x, thread_arrives=True)


def _gluon_launched(x: Inputs, **launch: Any) -> Timed:
    """The Gluon prefill with these ``_gluon.launch`` options (e.g. one launch kind, whatever
    the policy, tuning.gluon_persistent, which ours-paged follows, would pick)."""
    import functools

    from triton_attn_kernels import _gluon

    inner = _paged(x, prefill=_gluon_config(x.problem.head_dim))
    real = _gluon.launch

    def fn() -> Any:
        # The launcher calls _gluon.launch leaving the launch kind to the policy; for the
        # duration of this call it gets the one asked for.
        _gluon.launch = functools.partial(real, **launch)
        try:
            return inner.fn()
        finally:
            _gluon.launch = real

    return Timed(fn, inner.read)


@provider(
    "ours-varlen",
    ops=ATTENTION_OPS,
    requires=("triton_attn_kernels",),
    supports=supports(fp8=False, variants=("window", "softcap", "alibi", "sinks")),
)
def ours_varlen(x: Inputs) -> Timed:
    """triton_attn_kernels.varlen_attention on contiguous (unpaged) K/V."""
    from triton_attn_kernels import varlen_attention

    p = x.problem
    k, v = x.contiguous_kv
    cu_k = x.cu_seqlens_k
    plan = launch_plan(p, x.device, paged=False)
    ws = _workspace(x, plan)
    out = x.new_out()
    feats = x.features()

    def fn() -> Any:
        return varlen_attention(
            x.q,
            k,
            v,
            x.cu_seqlens_q,
            cu_k,
            max_seqlen_q=p.max_seqlen_q,
            max_seqlen_k=p.max_seqlen_k,
            out=out,
            config=plan.config,
            decode_query_len=plan.decode_query_len,
            workspace=ws,
            **feats,
        )

    return Timed(fn)


@provider("ours-kv-write", ops=("kv_write",), requires=("triton_attn_kernels",))
def ours_kv_write(x: Inputs) -> Timed:
    """triton_attn_kernels.write_kv_cache (fp8 caches quantise with per-tensor scales)."""
    from triton_attn_kernels import write_kv_cache

    scales: dict[str, Any] = {"k_scale": x.k_scale, "v_scale": x.v_scale} if x.problem.fp8 else {}

    def fn() -> tuple[torch.Tensor, torch.Tensor]:
        write_kv_cache(x.key, x.value, x.k_cache, x.v_cache, x.slot_mapping, **scales)
        return x.k_cache, x.v_cache

    return Timed(fn)
