"""vLLM's kernels, called the way vLLM's attention backends call them (checked against
vLLM 0.26.0): the TRITON_ATTN unified kernel, FlashAttention 3 through
``vllm.vllm_flash_attn``, and the KV-cache writes.

Only public functions are called; buffers vLLM's backends preallocate per engine are
allocated here once per case, outside the timed closure.
"""

from __future__ import annotations

import torch

from ..inputs import Inputs
from ..problems import Problem
from ..registry import Skip, Timed, provider
from .common import ATTENTION_OPS, supports

# vllm/v1/attention/backends/triton_attn.py: MIN_LAUNCH_GRID_SIZE_2D and
# NUM_PAR_SOFTMAX_SEGMENTS (read from there when present, these are the 0.26 values).
_MIN_GRID_2D = 128
_SEGMENTS = 16


def _import_vllm() -> str | None:
    import vllm  # noqa: F401  (heavy; only when a vLLM provider is asked for)

    return None


def _fa3_available() -> str | None:
    _import_vllm()
    from vllm.vllm_flash_attn import fa_version_unsupported_reason, is_fa_version_supported

    if not is_fa_version_supported(3):
        return f"FA3 unsupported here: {fa_version_unsupported_reason(3)}"
    return None


def _triton_constants() -> tuple[int, int]:
    try:
        from vllm.v1.attention.backends import triton_attn
    except ImportError:
        return _MIN_GRID_2D, _SEGMENTS
    return (
        getattr(triton_attn, "MIN_LAUNCH_GRID_SIZE_2D", _MIN_GRID_2D),
        getattr(triton_attn, "NUM_PAR_SOFTMAX_SEGMENTS", _SEGMENTS),
    )


@provider(
    "vllm-triton",
    ops=ATTENTION_OPS,
    requires=("vllm",),
    cuda_only=True,
    supports=supports(fp8=True, variants=("window", "softcap", "alibi", "sinks")),
    available=_import_vllm,
)
def vllm_triton(x: Inputs) -> Timed:
    """vLLM TRITON_ATTN: vllm.v1.attention.ops.triton_unified_attention.unified_attention (paged)."""
    from vllm.v1.attention.ops.triton_unified_attention import unified_attention
    from vllm.v1.kv_cache_interface import KVQuantMode

    p = x.problem
    min_grid, segments = _triton_constants()
    # As TritonAttentionMetadataBuilder: below this many sequences the 3D (split) kernel runs.
    # vLLM moves it to the nearest CUDA-graph capture size, which for 8 KV heads is the same 16.
    threshold = max(min_grid // p.num_kv_heads, 1)
    d_pad = 1 << (p.head_dim - 1).bit_length()
    segm_out = torch.empty((threshold, p.num_q_heads, segments, d_pad), dtype=torch.float32, device=x.device)
    segm_max = torch.empty((threshold, p.num_q_heads, segments), dtype=torch.float32, device=x.device)
    segm_sum = torch.empty((threshold, p.num_q_heads, segments), dtype=torch.float32, device=x.device)
    k_descale = x.k_scale.expand(p.num_seqs, p.num_kv_heads)
    v_descale = x.v_scale.expand(p.num_seqs, p.num_kv_heads)
    mode = KVQuantMode.FP8_PER_TENSOR if p.fp8 else KVQuantMode.NONE
    out = x.new_out()
    # As vLLM's backends: window_size = (W - 1, 0) for a causal sliding window of W keys.
    window = (x.window - 1, 0) if x.window else (-1, -1)

    def fn() -> torch.Tensor:
        unified_attention(
            q=x.q,
            k=x.k_cache,
            v=x.v_cache,
            out=out,
            cu_seqlens_q=x.cu_seqlens_q,
            max_seqlen_q=p.max_seqlen_q,
            seqused_k=x.seq_lens,
            max_seqlen_k=p.max_seqlen_k,
            softmax_scale=x.scale,
            causal=True,
            window_size=window,
            block_table=x.block_table,
            softcap=x.softcap or 0,
            q_descale=None,
            k_descale=k_descale,
            v_descale=v_descale,
            seq_threshold_3D=threshold,
            num_par_softmax_segments=segments,
            softmax_segm_output=segm_out,
            softmax_segm_max=segm_max,
            softmax_segm_expsum=segm_sum,
            alibi_slopes=x.alibi_slopes,
            sinks=x.sinks,
            kv_quant_mode=mode,
        )
        return out

    return Timed(fn)


@provider(
    "vllm-fa3",
    ops=ATTENTION_OPS,
    requires=("vllm",),
    cuda_only=True,
    supports=supports(fp8=False, variants=("window", "softcap", "sinks")),
    available=_fa3_available,
)
def vllm_fa3(x: Inputs) -> Timed:
    """vLLM FLASH_ATTN: vllm.vllm_flash_attn.flash_attn_varlen_func with block_table, fa_version=3."""
    return _fa3(x, x.k_cache, x.v_cache, x.block_table)


FA3_DEFAULT_PAGE = 16  # tokens per page of vLLM's FLASH_ATTN backend unless told otherwise


def _fa3_default_pages(problem: Problem) -> str | None:
    if problem.block_size % FA3_DEFAULT_PAGE:
        return f"needs a block size divisible by {FA3_DEFAULT_PAGE}"
    return supports(fp8=False, variants=("window", "softcap", "sinks"))(problem)


@provider(
    "vllm-fa3-p16",
    ops=ATTENTION_OPS,
    requires=("vllm",),
    cuda_only=True,
    supports=_fa3_default_pages,
    available=_fa3_available,
)
def vllm_fa3_p16(x: Inputs) -> Timed:
    """vllm-fa3 on the case's cache viewed as 16-token pages, the page size vLLM's FLASH_ATTN backend serves by default (a 128-token case page is 8 of them, in order): FA3 as served by default, beside ours at the case's page size, on the same data."""
    return _fa3(x, *x.pages_of(FA3_DEFAULT_PAGE))


def _fa3(x: Inputs, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor) -> Timed:
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    p = x.problem
    out = x.new_out()
    window = [x.window - 1, 0] if x.window else None
    softcap = x.softcap or 0.0
    # FA3 reads sinks ("s_aux") in bf16 only; the inputs' values are exact in bf16.
    sinks = {"s_aux": x.sinks.to(torch.bfloat16)} if x.sinks is not None else {}

    def fn() -> torch.Tensor:
        flash_attn_varlen_func(
            q=x.q,
            k=k_cache,
            v=v_cache,
            max_seqlen_q=p.max_seqlen_q,
            cu_seqlens_q=x.cu_seqlens_q,
            max_seqlen_k=p.max_seqlen_k,
            seqused_k=x.seq_lens,
            softmax_scale=x.scale,
            causal=True,
            block_table=block_table,
            out=out,
            fa_version=3,
            window_size=window,
            softcap=softcap,
            **sinks,
        )
        return out

    return Timed(fn)


def _kv_cache_dtype(x: Inputs) -> str:
    if x.problem.kv_dtype == "float8_e5m2":
        return "fp8_e5m2"
    return "fp8" if x.problem.fp8 else "auto"


@provider("vllm-kv-write", ops=("kv_write",), requires=("vllm",), cuda_only=True, available=_import_vllm)
def vllm_kv_write(x: Inputs) -> Timed:
    """vLLM's CUDA reshape_and_cache_flash (what FLASH_ATTN uses)."""
    from vllm import _custom_ops as ops

    dtype = _kv_cache_dtype(x)

    def fn() -> tuple[torch.Tensor, torch.Tensor]:
        ops.reshape_and_cache_flash(x.key, x.value, x.k_cache, x.v_cache, x.slot_mapping, dtype, x.k_scale, x.v_scale)
        return x.k_cache, x.v_cache

    return Timed(fn)


@provider("vllm-triton-kv-write", ops=("kv_write",), requires=("vllm",), cuda_only=True, available=_import_vllm)
def vllm_triton_kv_write(x: Inputs) -> Timed:
    """vLLM's Triton triton_reshape_and_cache_flash."""
    try:
        from vllm.v1.attention.ops.triton_reshape_and_cache_flash import triton_reshape_and_cache_flash
    except ImportError as exc:
        raise Skip(f"no triton_reshape_and_cache_flash in this vLLM: {exc}") from exc
    dtype = _kv_cache_dtype(x)

    def fn() -> tuple[torch.Tensor, torch.Tensor]:
        triton_reshape_and_cache_flash(
            x.key, x.value, x.k_cache, x.v_cache, x.slot_mapping, dtype, x.k_scale, x.v_scale
        )
        return x.k_cache, x.v_cache

    return Timed(fn)
