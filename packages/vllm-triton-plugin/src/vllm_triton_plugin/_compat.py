"""Every difference between the vLLM releases this plugin supports (0.26 through 0.33), in one place.

Differences are detected by feature (does the class have the method?) rather than by version
number wherever vLLM allows it, so that a patch release that back-ports a change still works.

| What                          | vLLM 0.26 - 0.28                          | vLLM 0.29 - 0.33                          |
|-------------------------------|-------------------------------------------|-------------------------------------------|
| KV-cache allocation           | backend's ``get_kv_cache_shape`` and      | vLLM builds a strided view from the spec  |
|                               | ``get_kv_cache_stride_order`` (abstract)  | and ``supported_kv_cache_layouts()``      |
| Own backend name              | only ``CUSTOM`` (fixed enum)              | ``AttentionBackendEnum.register`` (0.32+) |
| ``AttentionImpl.supports_dcp``| defaults to True (backend.py sets False)  | defaults to False                         |
| ``validate_configuration``    | 16 keyword arguments (backend.py takes    | more (``use_dcp``, ``use_rswa``, ...)     |
|                               | ``**kwargs`` and passes them on)          |                                           |
| ``get_supported_kernel_block_ | no argument                               | optional ``kv_cache_spec`` (backend.py    |
| sizes``                       |                                           | accepts and ignores it)                   |
| ``build(common_prefix_len)``  | cascade prefix length (0 unless the       | deprecated, always 0; the builder never   |
|                               | builder's ``use_cascade_attention``)      | asks for cascade attention on any release |

What stayed the same and the backend relies on: the per-layer cache tensor handed to the
impl is the logical view ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (K then V
in the last dimension) with any physical strides; ``forward_includes_kv_cache_update = False``
makes vLLM call ``impl.do_kv_cache_update`` before ``impl.forward``; the builder and impl
constructor signatures; ``CommonAttentionMetadata``'s fields used here.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.attention.backends.registry import AttentionBackendEnum

__all__ = [
    "OWN_BACKEND_NAME",
    "backend_name",
    "can_register_own_name",
    "kv_cache_shape_mixin",
    "kv_cache_stride_order",
    "platform_detected",
    "register_own_name",
    "split_kv_cache",
]

# The name this backend registers under where vLLM lets a plugin add a name (0.32+); on
# older releases the only slot open to plugins is ``CUSTOM``.
OWN_BACKEND_NAME = "TRITON_ONLY"


def can_register_own_name() -> bool:
    return hasattr(AttentionBackendEnum, "register")


def register_own_name(class_path: str) -> None:
    """Add ``OWN_BACKEND_NAME`` to vLLM's backend enum (0.32+); a no-op when present or unsupported."""
    if not can_register_own_name() or OWN_BACKEND_NAME in AttentionBackendEnum.__members__:
        return
    AttentionBackendEnum.register(OWN_BACKEND_NAME, class_path)  # type: ignore[attr-defined]


def backend_name() -> str:
    """What ``get_name()`` returns: an existing member of ``AttentionBackendEnum``, because the
    attention layer looks itself up with ``AttentionBackendEnum[backend.get_name()]``."""
    if OWN_BACKEND_NAME in AttentionBackendEnum.__members__:
        return OWN_BACKEND_NAME
    return "CUSTOM"


def split_kv_cache(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views ``[num_blocks, block_size, num_kv_heads, head_size]`` of K and V inside vLLM's
    per-layer cache ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (any strides;
    the same logical shape on every supported release)."""
    paged = kv_cache.transpose(1, 2)
    return paged[..., :head_size], paged[..., head_size:]


def _legacy_stride_order(include_num_layers_dimension: bool) -> tuple[int, ...]:
    # vLLM <= 0.28 picks NHD or HND per process (VLLM_KV_CACHE_LAYOUT or a backend's
    # requirement); our kernels read any strides, so follow whatever vLLM chose.
    from vllm.v1.attention.backends.utils import get_kv_cache_layout

    hnd = get_kv_cache_layout() == "HND"
    if include_num_layers_dimension:
        # Logical (layers, blocks, heads, tokens, 2*D); blocks outermost in memory.
        return (1, 2, 0, 3, 4) if hnd else (1, 0, 3, 2, 4)
    return (0, 1, 2, 3) if hnd else (0, 2, 1, 3)


class _LegacyKVCacheShape:
    """The two methods vLLM <= 0.28 asks of a backend to allocate its KV cache."""

    @staticmethod
    def get_kv_cache_shape(
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_size: int,
        cache_dtype_str: str = "auto",
    ) -> tuple[int, ...]:
        return (num_blocks, num_kv_heads, block_size, 2 * head_size)

    @staticmethod
    def get_kv_cache_stride_order(include_num_layers_dimension: bool = False) -> tuple[int, ...]:
        return _legacy_stride_order(include_num_layers_dimension)


def kv_cache_stride_order() -> tuple[int, ...] | None:
    """The memory order vLLM allocates the per-layer cache in, as a permutation of the logical
    ``[num_blocks, num_kv_heads, block_size, 2 * head_size]`` (outermost first), where the
    backend itself names it (<= 0.28); None on later releases, whose allocator decides."""
    from vllm.v1.attention.backend import AttentionBackend

    return _legacy_stride_order(False) if hasattr(AttentionBackend, "get_kv_cache_shape") else None


class _NoLegacyMethods:
    pass


def kv_cache_shape_mixin() -> type[Any]:
    """Base class giving the backend the legacy KV-cache methods where vLLM still asks for
    them (<= 0.28; 0.29 removed both from AttentionBackend and never calls them). A function,
    so that importing this module (the entry points do) does not import vLLM's backend base."""
    from vllm.v1.attention.backend import AttentionBackend

    return _LegacyKVCacheShape if hasattr(AttentionBackend, "get_kv_cache_shape") else _NoLegacyMethods


def platform_detected(kind: str) -> bool:
    """Whether vLLM's built-in detector for ``kind`` ("cuda", "rocm", "cpu") finds this machine."""
    from vllm.platforms import builtin_platform_plugins

    return builtin_platform_plugins[kind]() is not None


def decode_query_len(vllm_config: Any) -> int:
    """The widest request a builder serves as a decode, as vLLM's spec-as-decode backends
    count it: 1, or 1 + num_speculative_tokens when a speculative proposer (n-gram, EAGLE,
    MTP, ...) sends verification steps; with parallel drafting on model runner V1 the
    draft's first pass appends up to num_speculative_tokens mask slots to each verified
    request (no V2 speculator builds wider queries). Read from the config on every release
    (``max_decode_query_len`` exists only in newer ones, and reads attributes that a
    partial config may lack); any wider request is served, as a prefill."""
    spec = getattr(vllm_config, "speculative_config", None)
    n = getattr(spec, "num_speculative_tokens", None) if spec is not None else None
    if not n:
        return 1
    widest = 1 + int(n)
    if getattr(spec, "parallel_drafting", False) and not getattr(vllm_config, "use_v2_model_runner", False):
        widest += int(n)
    return widest


def host_seq_lens(common_attn_metadata: Any) -> torch.Tensor:
    """Each request's whole context length as a host tensor, without a device sync where
    vLLM provides one: ``seq_lens_cpu_upper_bound`` (exact for prefill rows, the MLA
    builder's own source on 0.26 and 0.32), else the synchronising ``seq_lens_cpu``."""
    bound = getattr(common_attn_metadata, "seq_lens_cpu_upper_bound", None)
    if bound is not None:
        return bound
    return common_attn_metadata.seq_lens_cpu
