"""vLLM's MLA kernels, called the way its MLA backends call them (checked against vLLM
0.26.0; the calls are the same in 0.32): TRITON_MLA's ``decode_attention_fwd``, FlashMLA's
``flash_mla_with_kvcache`` (Hopper), FlashAttention 3 with ``q_v`` (FLASH_ATTN_MLA), and
for the prefill FlashAttention 3's varlen call with v heads of their own size.

The arguments are built by plain functions (``*_args``), tested without a GPU; the
``make`` functions only import vLLM and call. Buffers vLLM's backends keep per engine
(split-KV logits, scheduler metadata) are made at setup, outside the timed closure.
"""

from __future__ import annotations

from typing import Any

import torch

from ..inputs import Inputs
from ..problems import Problem
from ..registry import Timed, provider
from .vllm import _fa3_available, _import_vllm

# vllm/v1/attention/backends/mla/triton_mla.py (0.26 and 0.32): a split per 512 keys, a
# power of two, at most 2 per SM. Read from there when present.
_MIN_WORK_PER_SPLIT = 512
_SPLITS_PER_SM = 2
FLASHMLA_PAGE = 64  # FlashMLA's only page size


def triton_mla_splits(max_seq_len: int, num_sms: int) -> int:
    """TRITON_MLA's num_kv_splits for a batch whose longest context is ``max_seq_len``."""
    ideal = 1 << (max(1, max_seq_len // _MIN_WORK_PER_SPLIT) - 1).bit_length()
    return min(ideal, num_sms * _SPLITS_PER_SM)


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _vllm_splits(max_seq_len: int, num_sms: int) -> int:
    try:
        from vllm.v1.attention.backends.mla.triton_mla import _compute_num_kv_splits
    except ImportError:
        return triton_mla_splits(max_seq_len, num_sms)
    return int(_compute_num_kv_splits(max_seq_len, num_sms))


def token_rows(x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode row per query token: its sequence's block-table row and the keys it sees
    (context - q_len + its index + 1). decode_attention_fwd has no causal mask within a
    sequence's new tokens, so verification runs as that many one-token decodes (what
    TRITON_MLA's forward_mqa does from vLLM 0.32; 0.26 sends multi-token requests down its
    prefill path instead)."""
    lens, rows = [], []
    for i, (ql, kl) in enumerate(zip(x.q_lens, x.kv_lens, strict=True)):
        lens += [kl - ql + t + 1 for t in range(ql)]
        rows += [i] * ql
    idx = torch.tensor(rows, dtype=torch.long, device=x.device)
    return x.block_table.index_select(0, idx).contiguous(), torch.tensor(lens, dtype=torch.int32, device=x.device)


def triton_mla_args(x: Inputs, num_kv_splits: int) -> dict[str, Any]:
    """Keyword arguments of vllm's ``decode_attention_fwd`` for an MLA decode problem."""
    p = x.problem
    t, h, rank = x.q.shape[0], p.num_q_heads, p.v_head_dim
    table, seq_lens = token_rows(x)
    return {
        "q": x.q,  # [T, H, rank + rope]
        "k_buffer": x.k_cache,  # [blocks, page, 1, rank + rope]
        "v_buffer": x.v_cache,  # its first rank dims
        "o": x.new_out(),
        "lse": torch.zeros(t, h, dtype=x.q.dtype, device=x.device),
        "req_to_token": table,
        "b_seq_len": seq_lens,
        "attn_logits": torch.empty(t, h, num_kv_splits, rank + 1, dtype=torch.float32, device=x.device),
        "num_kv_splits": num_kv_splits,
        "sm_scale": x.scale,
        "page_size": p.block_size,
        "k_scale": x.k_scale,
        "v_scale": x.k_scale,  # one latent, one scale (TRITON_MLA passes layer._k_scale twice)
        "is_mla": True,
    }


@provider(
    "vllm-triton-mla",
    ops=("mla_decode",),
    requires=("vllm",),
    cuda_only=True,
    available=_import_vllm,
)
def vllm_triton_mla(x: Inputs) -> Timed:
    """vLLM TRITON_MLA: vllm.v1.attention.ops.triton_decode_attention.decode_attention_fwd (one row per query token)."""
    from vllm.v1.attention.ops.triton_decode_attention import decode_attention_fwd

    args = triton_mla_args(x, _vllm_splits(x.problem.max_seqlen_k, _num_sms(x.device)))

    def fn() -> torch.Tensor:
        decode_attention_fwd(**args)
        return args["o"]

    return Timed(fn)


def _flashmla_available() -> str | None:
    _import_vllm()
    from vllm.v1.attention.ops.flashmla import is_flashmla_dense_supported

    ok, reason = is_flashmla_dense_supported()
    return None if ok else f"FlashMLA unsupported here: {reason}"


def _flashmla_supports(p: Problem) -> str | None:
    if p.block_size != FLASHMLA_PAGE:
        return f"FlashMLA reads {FLASHMLA_PAGE}-token pages only, not {p.block_size}"
    return None


def flashmla_args(x: Inputs) -> dict[str, Any]:
    """Keyword arguments of FlashMLA's dense decode (bf16, or with an fp8 latent cache its
    fp8 entry point, whose queries are fp8 too: quantised here with a scale of 1, as vLLM's
    MLA layer does before the call), except the scheduler metadata."""
    p = x.problem
    q = x.q.view(p.num_seqs, p.q_len, p.num_q_heads, p.head_dim)  # uniform q_len: [B, s_q, H, D]
    args: dict[str, Any] = {
        "k_cache": x.k_cache,  # [blocks, 64, 1, rank + rope]
        "block_table": x.block_table,
        "cache_seqlens": x.seq_lens,
        "head_dim_v": p.v_head_dim,
        "softmax_scale": x.scale,
        "causal": True,
    }
    if p.fp8:
        q_scale = torch.ones(1, dtype=torch.float32, device=x.device)
        args |= {"q": q.to(x.k_cache.dtype), "descale_q": q_scale, "descale_k": x.k_scale.reshape(1)}
    else:
        args |= {"q": q, "is_fp8_kvcache": False}
    return args


@provider(
    "vllm-flashmla",
    ops=("mla_decode",),
    requires=("vllm",),
    cuda_only=True,
    supports=_flashmla_supports,
    available=_flashmla_available,
)
def vllm_flashmla(x: Inputs) -> Timed:
    """vLLM FLASHMLA: vllm.v1.attention.ops.flashmla.flash_mla_with_kvcache (Hopper; _fp8 for an fp8 latent cache)."""
    from vllm.v1.attention.ops import flashmla

    p = x.problem
    args = flashmla_args(x)
    if p.fp8:
        tiles, splits = flashmla.get_mla_metadata_dense_fp8(x.seq_lens, p.q_len * p.num_q_heads, 1)
        call: Any = flashmla.flash_mla_with_kvcache_fp8
        args |= {"tile_scheduler_metadata": tiles, "num_splits": splits}
    else:
        # The scheduler metadata object is filled by the first call (the untimed check run).
        call = flashmla.flash_mla_with_kvcache
        args["tile_scheduler_metadata"] = flashmla.get_mla_metadata()[0]

    def fn() -> torch.Tensor:
        return call(**args)[0]

    def read(out: torch.Tensor) -> torch.Tensor:
        return out.reshape(-1, p.num_q_heads, p.v_head_dim)

    return Timed(fn, read)


def _fa3_mla_available() -> str | None:
    _import_vllm()
    from vllm.v1.attention.backends.fa_utils import flash_attn_supports_mla

    return None if flash_attn_supports_mla() else "FlashAttention MLA needs FA3 on a Hopper GPU"


def _no_fp8(p: Problem) -> str | None:
    return "no fp8 latent cache support" if p.fp8 else None


def fa3_mla_args(x: Inputs) -> dict[str, Any]:
    """Keyword arguments of ``flash_attn_varlen_func`` for FLASH_ATTN_MLA's decode: the rope
    parts as q/k, the latent as v, the absorbed query as ``q_v`` (no scheduler metadata)."""
    p = x.problem
    rank = p.v_head_dim
    latent = x.latent_cache
    return {
        "q": x.q_pe,
        "k": latent[..., rank:].unsqueeze(-2),  # [blocks, page, 1, rope]
        "v": latent[..., :rank].unsqueeze(-2),  # [blocks, page, 1, rank]
        "q_v": x.q_nope,
        "max_seqlen_q": p.max_seqlen_q,
        "cu_seqlens_q": x.cu_seqlens_q,
        "max_seqlen_k": p.max_seqlen_k,
        "seqused_k": x.seq_lens,
        "block_table": x.block_table,
        "softmax_scale": x.scale,
        "causal": True,
        "fa_version": 3,
        "num_splits": 0,
    }


@provider(
    "vllm-fa3-mla",
    ops=("mla_decode",),
    requires=("vllm",),
    cuda_only=True,
    supports=_no_fp8,
    available=_fa3_mla_available,
)
def vllm_fa3_mla(x: Inputs) -> Timed:
    """vLLM FLASH_ATTN_MLA: vllm.vllm_flash_attn.flash_attn_varlen_func with q_v (FA3, paged latent cache)."""
    from vllm.vllm_flash_attn import flash_attn_varlen_func, get_scheduler_metadata

    p = x.problem
    args = fa3_mla_args(x)
    # As FlashAttnMLAMetadataBuilder with FA3's ahead-of-time scheduling.
    args["scheduler_metadata"] = get_scheduler_metadata(
        batch_size=p.num_seqs,
        max_seqlen_q=p.max_seqlen_q,
        max_seqlen_k=p.max_seqlen_k,
        num_heads_q=p.num_q_heads,
        num_heads_kv=1,
        headdim=p.head_dim - p.v_head_dim,
        cache_seqlens=x.seq_lens,
        qkv_dtype=x.k_cache.dtype,
        headdim_v=p.v_head_dim,
        page_size=p.block_size,
        cu_seqlens_q=x.cu_seqlens_q,
        causal=True,
        num_splits=0,
    )

    def fn() -> torch.Tensor:
        return flash_attn_varlen_func(**args)

    return Timed(fn)


def fa3_prefill_args(x: Inputs) -> dict[str, Any]:
    """Keyword arguments of ``flash_attn_varlen_func`` for an MLA prefill on contiguous K/V
    (v heads of 128, which FA3 takes as they are on Hopper). vLLM runs a chunk on a cached
    prefix as two calls merged by their lse (new tokens causal, the prefix's up-projected
    K/V not); here it is one causal call over the whole context, the same attention."""
    p = x.problem
    k, v = x.contiguous_kv
    return {
        "q": x.q,
        "k": k,
        "v": v,
        "cu_seqlens_q": x.cu_seqlens_q,
        "cu_seqlens_k": x.cu_seqlens_k,
        "max_seqlen_q": p.max_seqlen_q,
        "max_seqlen_k": p.max_seqlen_k,
        "softmax_scale": x.scale,
        "causal": True,
        "fa_version": 3,
        "out": x.new_out(),
    }


@provider(
    "vllm-fa3-mla-prefill",
    ops=("mla_prefill",),
    requires=("vllm",),
    cuda_only=True,
    available=_fa3_available,
)
def vllm_fa3_mla_prefill(x: Inputs) -> Timed:
    """vLLM's MLA prefill (FLASH_ATTN prefill backend): vllm.vllm_flash_attn.flash_attn_varlen_func, q/k 192, v 128."""
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    args = fa3_prefill_args(x)

    def fn() -> torch.Tensor:
        flash_attn_varlen_func(**args)
        return args["out"]

    return Timed(fn)
