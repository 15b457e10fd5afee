"""Scatter new K/V tokens into the paged cache, quantising to fp8 on the way if asked."""

import triton
import triton.language as tl


@triton.jit
def _round_to_grid(x, MANT: tl.constexpr, EMIN: tl.constexpr):
    """Round fp32 ``x`` to nearest-even on the grid of a float format with MANT mantissa
    bits and smallest normal exponent EMIN (Triton's interpreter loses the carry across
    binades in its own conversion, and the GPU's was seen to differ for e5m2)."""
    bits = x.to(tl.int32, bitcast=True)
    exp = tl.maximum(((bits >> 23) & 0xFF) - 127, EMIN)
    step = ((exp - MANT + 127) << 23).to(tl.float32, bitcast=True)
    inv_step = ((MANT - exp + 127) << 23).to(tl.float32, bitcast=True)
    # (v + 1.5 * 2**23) - 1.5 * 2**23 rounds |v| < 2**22 to an integer, ties to even;
    # scaling by powers of two is exact.
    magic = 12582912.0
    return ((x * inv_step + magic) - magic) * step


@triton.jit
def _fp8_bits(x, MANT: tl.constexpr, EMIN: tl.constexpr):
    """The fp8 byte of fp32 ``x`` (within the format's range), rounded to nearest even and
    built with integer arithmetic: exact on every backend, whatever its own fp32 -> fp8
    conversion does with subnormals and rounding (the GPU's was seen to differ for e5m2).
    Exponent bias 1 - EMIN (e4m3fn: 7, e5m2: 15); the sign of zero kept; NaN becomes 0x7F,
    a NaN in both formats."""
    sign = (x.to(tl.int32, bitcast=True) >> 24) & 0x80
    r = _round_to_grid(tl.abs(x), MANT, EMIN)
    bits = r.to(tl.int32, bitcast=True)
    exp = ((bits >> 23) & 0xFF) - 127
    normal = ((exp + 1 - EMIN) << MANT) | ((bits >> (23 - MANT)) & ((1 << MANT) - 1))
    # below the smallest normal r is a multiple of 2**(EMIN - MANT): this product is an integer
    sub = (r * (1 << (MANT - EMIN))).to(tl.int32)
    byte = sign | tl.where(exp >= EMIN, normal, sub)
    return tl.where(x != x, 0x7F, byte).to(tl.uint8)


# The cache's size (what fits in memory) does not specialise: one variant per configuration
# on every engine, whatever its page count.
@triton.jit(do_not_specialize=["num_slots"])
def write_kv_kernel(
    key_ptr,  # [num_tokens, NUM_KV_HEADS, HEAD_DIM]
    value_ptr,  # [num_tokens, NUM_KV_HEADS, HEAD_DIM]
    k_cache_ptr,  # [num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM]
    v_cache_ptr,  # [num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM]
    slot_ptr,  # [num_tokens] int32 or int64; -1 marks padding, any entry outside [0, num_slots) is skipped
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
    num_slots,  # num_blocks * BLOCK_SIZE
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    QUANTIZE: tl.constexpr,
    FP8_MAX: tl.constexpr,
    FP8_MANT: tl.constexpr,
    FP8_EMIN: tl.constexpr,
):
    """Grid (num_tokens,): one program copies all heads of one token.

    Every address is formed in int64 (a slot, or a head times a large stride of an HND view,
    can pass 2**31 elements), and a slot outside the cache writes nothing: whatever
    slot_mapping holds, no byte outside k_cache and v_cache is touched."""
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if (slot < 0) | (slot >= num_slots):
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    d = tl.arange(0, BLOCK_D).to(tl.int64)
    ok = (h < NUM_KV_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
    k = tl.load(key_ptr + tok * stride_key_t + h[:, None] * stride_key_h + d[None, :] * stride_key_d, mask=ok)
    v = tl.load(value_ptr + tok * stride_value_t + h[:, None] * stride_value_h + d[None, :] * stride_value_d, mask=ok)
    if QUANTIZE:
        k = tl.clamp(
            tl.math.div_rn(k.to(tl.float32), tl.load(k_scale_ptr)),
            -FP8_MAX,
            FP8_MAX,
            propagate_nan=tl.PropagateNan.ALL,
        )
        v = tl.clamp(
            tl.math.div_rn(v.to(tl.float32), tl.load(v_scale_ptr)),
            -FP8_MAX,
            FP8_MAX,
            propagate_nan=tl.PropagateNan.ALL,
        )
        k = _fp8_bits(k, FP8_MANT, FP8_EMIN).to(k_cache_ptr.dtype.element_ty, bitcast=True)
        v = _fp8_bits(v, FP8_MANT, FP8_EMIN).to(v_cache_ptr.dtype.element_ty, bitcast=True)
    kc = k_cache_ptr + block * stride_kc_b + offset * stride_kc_t
    vc = v_cache_ptr + block * stride_vc_b + offset * stride_vc_t
    tl.store(kc + h[:, None] * stride_kc_h + d[None, :] * stride_kc_d, k.to(k_cache_ptr.dtype.element_ty), mask=ok)
    tl.store(vc + h[:, None] * stride_vc_h + d[None, :] * stride_vc_d, v.to(v_cache_ptr.dtype.element_ty), mask=ok)
