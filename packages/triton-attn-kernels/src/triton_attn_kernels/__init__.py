"""Triton-only attention for LLM inference: paged decode (split-KV), prefill and mixed
batches, and the KV-cache write, with fp8 KV. Pure Triton + PyTorch; no vLLM import.

The whole public API::

    paged_attention(q, k_cache, v_cache, block_table, seq_lens, cu_seqlens_q, *, ...)
    varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, ...)
    merge_attention_states(out_a, lse_a, out_b, lse_b, *, out=None)
    mla_decode(q_nope, q_pe, kv_cache, block_table, seq_lens, cu_seqlens_q, *, ...)
    write_latent_cache(kv_c, k_pe, kv_cache, slot_mapping, *, k_scale=None)
    write_kv_cache(key, value, k_cache, v_cache, slot_mapping, *, ...)
    compiled_variants()             kernel variants compiled in this process, per kernel
    compiling(*, workers=None)      a context: launches inside compile (in parallel), not run
    triton_attn_kernels.reference   fp32 PyTorch ground truth of all three
    triton_attn_kernels.tuning      launch configurations, heuristics and tables
"""

from ._validation import SUPPORTED_HEAD_DIMS
from .attention import MAX_DECODE_QUERY_LEN, decode_workspace_numel, paged_attention, varlen_attention
from .compiled import compiled_variants, compiling
from .kv_cache import write_kv_cache
from .merge import merge_attention_states
from .mla import MLADecodeConfig, mla_decode, mla_workspace_numel, write_latent_cache
from .tuning import AttentionConfig, DecodeConfig, KVWriteConfig, PrefillConfig

__version__ = "0.1.0"

__all__ = [
    "MAX_DECODE_QUERY_LEN",
    "SUPPORTED_HEAD_DIMS",
    "AttentionConfig",
    "DecodeConfig",
    "KVWriteConfig",
    "MLADecodeConfig",
    "PrefillConfig",
    "__version__",
    "compiled_variants",
    "compiling",
    "decode_workspace_numel",
    "merge_attention_states",
    "mla_decode",
    "mla_workspace_numel",
    "paged_attention",
    "varlen_attention",
    "write_kv_cache",
    "write_latent_cache",
]
