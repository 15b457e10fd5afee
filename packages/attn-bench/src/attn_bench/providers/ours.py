"""Our kernels (triton-attn-kernels): every public entry point."""

from __future__ import annotations

from typing import Any

import torch

from ..inputs import Inputs
from ..registry import Timed, provider
from .common import ATTENTION_OPS, supports


def _decode_config(x: Inputs, paged: bool):  # type: ignore[no-untyped-def]
    """The heuristic's decode config, made explicit so the split-KV workspace can be
    preallocated outside the timed (and CUDA-graph-captured) closure."""
    from triton_attn_kernels import AttentionConfig

    # The launcher's own view of the device, so the choice is the launcher's.
    from triton_attn_kernels._device import interpreting, num_sms
    from triton_attn_kernels.tuning import AttentionProblem, select_decode_config

    p = x.problem
    problem = AttentionProblem(
        num_seqs=p.num_seqs,
        num_q_heads=p.num_q_heads,
        num_kv_heads=p.num_kv_heads,
        head_dim=p.head_dim,
        max_seqlen_q=p.max_seqlen_q,
        max_seqlen_k=p.max_seqlen_k,
        dtype=p.dtype,
        kv_dtype=p.kv_dtype if paged else p.dtype,
        num_sms=num_sms(x.device),
        interpreter=interpreting(),
    )
    return AttentionConfig(decode=select_decode_config(problem))


def _workspace(x: Inputs, config) -> torch.Tensor:  # type: ignore[no-untyped-def]
    from triton_attn_kernels import decode_workspace_numel

    p = x.problem
    n = decode_workspace_numel(p.num_seqs, p.num_q_heads, p.head_dim, config.decode.num_splits)
    return torch.empty(max(n, 1), dtype=torch.float32, device=x.device)


@provider(
    "ours-paged",
    ops=ATTENTION_OPS,
    requires=("triton_attn_kernels",),
    supports=supports(fp8=True, variants=("window", "softcap", "alibi", "sinks")),
)
def ours_paged(x: Inputs) -> Timed:
    """triton_attn_kernels.paged_attention: one call for decodes, prefills and mixed batches (paged)."""
    from triton_attn_kernels import paged_attention

    p = x.problem
    config = _decode_config(x, paged=True)
    ws = _workspace(x, config)
    out = x.new_out()
    scales: dict[str, Any] = {"k_scale": x.k_scale, "v_scale": x.v_scale} if p.fp8 else {}
    feats = x.features()

    def fn() -> Any:
        return paged_attention(
            x.q,
            x.k_cache,
            x.v_cache,
            x.block_table,
            x.seq_lens,
            x.cu_seqlens_q,
            max_seqlen_q=p.max_seqlen_q,
            max_seqlen_k=p.max_seqlen_k,
            out=out,
            config=config,
            workspace=ws,
            **scales,
            **feats,
        )

    return Timed(fn)


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
    config = _decode_config(x, paged=False)
    ws = _workspace(x, config)
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
            config=config,
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
