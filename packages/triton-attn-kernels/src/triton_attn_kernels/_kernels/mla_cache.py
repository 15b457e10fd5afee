"""Scatter new tokens' latents ``[kv_c | k_pe]`` into the paged MLA cache, quantising to fp8
with one per-tensor scale if asked (the rounding of ``write_kv_kernel``)."""

import triton
import triton.language as tl

from .kv_cache import _fp8_bits


@triton.jit
def _fp8_of(x, scale, FP8_MAX: tl.constexpr, FP8_MANT: tl.constexpr, FP8_EMIN: tl.constexpr):
    """The fp8 bytes of ``x / scale``, clamped to the format's range (NaN kept)."""
    x = tl.clamp(tl.math.div_rn(x.to(tl.float32), scale), -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)
    return _fp8_bits(x, FP8_MANT, FP8_EMIN)


@triton.jit(do_not_specialize=["num_slots"])
def write_latent_kernel(
    kv_c_ptr,  # [num_tokens, KV_RANK]
    k_pe_ptr,  # [num_tokens, ROPE_DIM]
    cache_ptr,  # [num_blocks, BLOCK_SIZE, KV_RANK + ROPE_DIM]
    slot_ptr,  # [num_tokens] int32 or int64; -1 marks padding, any entry outside [0, num_slots) is skipped
    k_scale_ptr,  # [1] fp32, QUANTIZE only
    stride_c_t,
    stride_c_d,
    stride_pe_t,
    stride_pe_d,
    stride_cache_b,
    stride_cache_t,
    stride_cache_d,
    num_slots,  # num_blocks * BLOCK_SIZE
    KV_RANK: tl.constexpr,
    ROPE_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    QUANTIZE: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FP8_MANT: tl.constexpr,
    FP8_EMIN: tl.constexpr,
):
    """Grid (num_tokens,): one program writes one token's latent row. Addresses in int64;
    a slot outside the cache writes nothing."""
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if (slot < 0) | (slot >= num_slots):
        return
    dr = tl.arange(0, KV_RANK).to(tl.int64)
    dp = tl.arange(0, ROPE_DIM).to(tl.int64)
    c = tl.load(kv_c_ptr + tok * stride_c_t + dr * stride_c_d)
    pe = tl.load(k_pe_ptr + tok * stride_pe_t + dp * stride_pe_d)
    out_ty = cache_ptr.dtype.element_ty
    if QUANTIZE:
        scale = tl.load(k_scale_ptr)
        c = _fp8_of(c, scale, FP8_MAX, FP8_MANT, FP8_EMIN).to(out_ty, bitcast=True)
        pe = _fp8_of(pe, scale, FP8_MAX, FP8_MANT, FP8_EMIN).to(out_ty, bitcast=True)
    row = cache_ptr + (slot // BLOCK_SIZE) * stride_cache_b + (slot % BLOCK_SIZE) * stride_cache_t
    tl.store(row + dr * stride_cache_d, c.to(out_ty))
    tl.store(row + (KV_RANK + dp) * stride_cache_d, pe.to(out_ty))
