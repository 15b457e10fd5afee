"""Public KV-cache write: scatter new tokens' K and V into their cache slots."""

from __future__ import annotations

import torch

from . import _validation as check
from . import debug
from ._intmath import next_pow2
from ._kernels.kv_cache import write_kv_kernel
from ._launch import launch_kernel
from .tuning import KVWriteConfig, select_kv_write_config

__all__ = ["write_kv_cache"]


def write_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
    config: KVWriteConfig | None = None,
) -> None:
    """Write ``key``/``value`` into the paged caches in place.

    Args:
        key, value: [num_tokens, num_kv_heads, head_dim], float16 / bfloat16 / float32, any strides.
        k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim], key's dtype or
            float8_e4m3fn / float8_e5m2 (then values are stored as ``x / scale``, clamped to the
            format's range); any strides.
        slot_mapping: [num_tokens] int32 or int64; ``slot = block * block_size + offset``;
            ``-1`` marks a padding token, which is skipped. Any other entry outside
            ``[0, num_blocks * block_size)`` is skipped too (that token writes nothing, and no
            byte outside the caches is touched); in debug mode (:mod:`.debug`) it raises a
            ValueError naming ``slot_mapping`` and the token instead.
        k_scale, v_scale: fp8 quantisation scales (float or one-element tensor); required for
            fp8 caches (the same scales go to ``paged_attention``), ignored otherwise.
        config: ``None`` (heuristic) or a :class:`KVWriteConfig`.
    """
    check.tensor("key", key, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("value", value, ndim=3, dtypes=(key.dtype,))
    if value.shape != key.shape:
        raise ValueError(f"value must have key's shape {tuple(key.shape)}, got {tuple(value.shape)}")
    check.tensor("k_cache", k_cache, ndim=4)
    check.tensor("v_cache", v_cache, ndim=4)
    check.kv_pair(k_cache, v_cache, key, k_name="k_cache", v_name="v_cache")
    check.cache_blocks("k_cache", k_cache)
    num_tokens, num_kv_heads, head_dim = key.shape
    if tuple(k_cache.shape[2:]) != (num_kv_heads, head_dim):
        raise ValueError(
            f"k_cache must have shape [num_blocks, block_size, {num_kv_heads}, {head_dim}] to match key, "
            f"got {tuple(k_cache.shape)}"
        )
    check.index("slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int32, torch.int64))
    if slot_mapping.shape[0] != num_tokens:
        raise ValueError(f"slot_mapping must have num_tokens={num_tokens} entries, got {slot_mapping.shape[0]}")
    check.same_device(key.device, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    # Written caches: each one's elements distinct, and no memory shared with what is read.
    # k_cache and v_cache may interleave (halves of one [.., 2 * head_dim] allocation).
    check.not_overlapping("k_cache", k_cache, key=key, value=value, slot_mapping=slot_mapping)
    check.not_overlapping("v_cache", v_cache, key=key, value=value, slot_mapping=slot_mapping)
    if config is not None and not isinstance(config, KVWriteConfig):
        raise TypeError(f"config must be a KVWriteConfig or None, got {type(config).__name__}")
    if num_tokens == 0:
        return
    quantize = k_cache.dtype in check.FP8_DTYPES
    if quantize:
        for name, given in (("k_scale", k_scale), ("v_scale", v_scale)):
            if given is None:
                # No silent 1.0: the reader would need to know, and a mismatch reads wrong.
                raise ValueError(
                    f"{name} is required with a {str(k_cache.dtype).removeprefix('torch.')} cache, e.g. 1.0"
                )
    if debug.enabled():
        debug.check_slot_mapping(slot_mapping, num_blocks=k_cache.shape[0], block_size=k_cache.shape[1])
        if quantize:
            debug.check_fp8_scales(k_scale=k_scale, v_scale=v_scale)
    ks = check.kv_scale("k_scale", k_scale, key.device) if quantize else slot_mapping
    vs = check.kv_scale("v_scale", v_scale, key.device) if quantize else slot_mapping
    cfg = select_kv_write_config(
        num_kv_heads,
        head_dim,
        num_tokens=num_tokens,
        dtype=key.dtype,
        kv_dtype=k_cache.dtype,
        config=config,
        device=key.device,
    )
    launch_kernel(
        write_kv_kernel,
        (num_tokens,),
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        ks,
        vs,
        *key.stride(),
        *value.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        k_cache.shape[0] * k_cache.shape[1],
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=next_pow2(num_kv_heads),
        BLOCK_D=next_pow2(head_dim),
        BLOCK_SIZE=k_cache.shape[1],
        QUANTIZE=quantize,
        FP8_MAX=float(torch.finfo(k_cache.dtype).max) if quantize else 0.0,
        # mantissa bits and smallest normal exponent of the fp8 format
        FP8_MANT=3 if k_cache.dtype == torch.float8_e4m3fn else 2,
        FP8_EMIN=-6 if k_cache.dtype == torch.float8_e4m3fn else -14,
        num_warps=cfg.num_warps,
    )
