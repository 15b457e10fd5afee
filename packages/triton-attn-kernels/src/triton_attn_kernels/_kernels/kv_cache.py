"""Scatter new K/V tokens into the paged cache, quantising to fp8 on the way if asked."""

import triton
import triton.language as tl


@triton.jit
def write_kv_kernel(
    key_ptr,  # [num_tokens, NUM_KV_HEADS, HEAD_DIM]
    value_ptr,  # [num_tokens, NUM_KV_HEADS, HEAD_DIM]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM]
    v_cache_ptr,  # [num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM]
    slot_ptr,  # [num_tokens] int32 or int64; -1 marks padding
    k_scale_ptr,  # [1] fp32, QUANTIZE only
    v_scale_ptr,  # [1] fp32, QUANTIZE only
    stride_key_t,
    stride_key_h,
    stride_key_d,
    stride_value_t,
    stride_value_h,
    stride_value_d,
    stride_kc_b,
    stride_kc_t,
    stride_kc_h,
    stride_kc_d,
    stride_vc_b,
    stride_vc_t,
    stride_vc_h,
    stride_vc_d,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    QUANTIZE: tl.constexpr,
    FP8_MAX: tl.constexpr,
    ROUNDING: tl.constexpr,  # "rtne" for fp8 (as torch's .to()), None otherwise
):
    """Grid (num_tokens,): one program copies all heads of one token."""
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    ok = (h < NUM_KV_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
    k = tl.load(key_ptr + tok * stride_key_t + h[:, None] * stride_key_h + d[None, :] * stride_key_d, mask=ok)
    v = tl.load(value_ptr + tok * stride_value_t + h[:, None] * stride_value_h + d[None, :] * stride_value_d, mask=ok)
    if QUANTIZE:
        k = tl.clamp(k.to(tl.float32) / tl.load(k_scale_ptr), -FP8_MAX, FP8_MAX)
        v = tl.clamp(v.to(tl.float32) / tl.load(v_scale_ptr), -FP8_MAX, FP8_MAX)
    kc = k_cache_ptr + block * stride_kc_b + offset * stride_kc_t
    vc = v_cache_ptr + block * stride_vc_b + offset * stride_vc_t
    tl.store(
        kc + h[:, None] * stride_kc_h + d[None, :] * stride_kc_d,
        k.to(k_cache_ptr.dtype.element_ty, fp_downcast_rounding=ROUNDING),
        mask=ok,
    )
    tl.store(
        vc + h[:, None] * stride_vc_h + d[None, :] * stride_vc_d,
        v.to(v_cache_ptr.dtype.element_ty, fp_downcast_rounding=ROUNDING),
        mask=ok,
    )
