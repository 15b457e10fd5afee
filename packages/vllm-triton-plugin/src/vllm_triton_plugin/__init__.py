"""vLLM plugin: attention and the KV-cache write served by Triton kernels only (``triton_attn_kernels``).

Two entry points, both cheap, idempotent and free of import side effects (vLLM calls them in
every process it starts, sometimes more than once):

    register_backend   vllm.general_plugins: registers the backend as CUSTOM (and as
                       TRITON_ONLY where vLLM lets plugins add names, 0.32+), so that
                       ``--attention-backend CUSTOM`` selects it on vLLM's stock platforms.
    platform_plugin    vllm.platform_plugins: the Triton-only platform, vLLM's own CUDA / ROCm
                       platform with this backend as the default attention; on a machine
                       without a GPU only when TRITON_INTERPRET=1 (vLLM's CPU platform,
                       kernels run by Triton's interpreter).

``VLLM_PLUGINS=triton_attn_backend`` keeps the registration but not the platform;
``VLLM_PLUGINS=`` (empty) turns both off.
"""

from __future__ import annotations

import logging
import os

__all__ = ["BACKEND_PATH", "platform_plugin", "register_backend"]
__version__ = "0.1.0"

# A child of vLLM's "vllm" logger, so messages reach the handler vLLM configures.
logger = logging.getLogger("vllm.plugins.triton_attn")

BACKEND_PATH = "vllm_triton_plugin.backend.TritonAttentionBackend"
_PLATFORM_MODULE = "vllm_triton_plugin.platform"


def register_backend() -> None:
    """Entry point of ``vllm.general_plugins``: make the backend selectable by name."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.backends.registry import register_backend as vllm_register_backend

    from . import _compat

    custom = AttentionBackendEnum.CUSTOM
    if custom.is_overridden() and custom.get_path() != BACKEND_PATH:
        logger.warning(
            "Attention backend CUSTOM is already registered to %s; vllm-triton-plugin leaves it.", custom.get_path()
        )
    else:
        vllm_register_backend(custom, BACKEND_PATH)
    _compat.register_own_name(BACKEND_PATH)


def platform_plugin() -> str | None:
    """Entry point of ``vllm.platform_plugins``: the Triton-only platform's class path, or
    ``None`` (vLLM then picks its built-in platform)."""
    from . import _compat

    if _compat.platform_detected("cuda"):
        return f"{_PLATFORM_MODULE}.TritonCudaPlatform"
    if _compat.platform_detected("rocm"):
        return f"{_PLATFORM_MODULE}.TritonRocmPlatform"
    if os.environ.get("TRITON_INTERPRET", "0") == "1" and _compat.platform_detected("cpu"):
        return f"{_PLATFORM_MODULE}.TritonCpuPlatform"
    return None
