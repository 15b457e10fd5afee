"""The Triton-only platform: vLLM's own platform for the machine, with our backend as default attention.

``TritonCudaPlatform``, ``TritonRocmPlatform`` and ``TritonCpuPlatform`` are built on first
access (PEP 562 ``__getattr__``), so importing this module never imports a parent platform
that the machine does not have. Each keeps everything of its parent except the attention
backend choice:

- no backend chosen by the user: ours, after vLLM's ``validate_configuration`` (an unsupported
  head size, dtype or feature fails here, before weights load, with our reason);
- ``CUSTOM`` / ``TRITON_ONLY`` chosen: ours, validated the same way;
- any other backend chosen: the parent's selection, untouched;
- MLA attention (DeepSeek-V2/V3, Kimi K2; no backend chosen, or ``CUSTOM`` / ``TRITON_ONLY``):
  our MLA backend (``mla_backend.TritonMLABackend``: ``mla_decode`` for decodes,
  ``varlen_attention`` + ``merge_attention_states`` for prefill and cached prefixes,
  ``write_latent_cache``), validated the same way;
- sparse MLA (DeepSeek-V3.2's top-k attention and its indexer, which the kernels do not
  implement): the parent's choice, logged with that reason.
"""

from __future__ import annotations

import logging
from typing import Any

from . import BACKEND_PATH

__all__ = ["BACKEND_PATH", "MLA_BACKEND_PATH", "PARENTS", "TritonOnlyPlatformMixin"]

MLA_BACKEND_PATH = "vllm_triton_plugin.mla_backend.TritonMLABackend"

# A child of vLLM's "vllm" logger, so messages reach the handler vLLM configures.
logger = logging.getLogger("vllm.plugins.triton_attn")

# Platform class name -> (module, class) of the vLLM platform it extends.
PARENTS = {
    "TritonCudaPlatform": ("vllm.platforms.cuda", "CudaPlatform"),
    "TritonRocmPlatform": ("vllm.platforms.rocm", "RocmPlatform"),
    "TritonCpuPlatform": ("vllm.platforms.cpu", "CpuPlatform"),
}


class TritonOnlyPlatformMixin:
    """Placed before the parent platform in the MRO; overrides only the backend choice."""

    @classmethod
    def get_attn_backend_cls(
        cls,
        selected_backend: Any,
        attn_selector_config: Any,
        num_heads: int | None = None,
    ) -> str:
        from . import _compat, register_backend

        parent: Any = super()
        register_backend()  # the general plugin may be switched off by VLLM_PLUGINS
        name = getattr(selected_backend, "name", None)
        if selected_backend is not None and name not in ("CUSTOM", _compat.OWN_BACKEND_NAME):
            return parent.get_attn_backend_cls(selected_backend, attn_selector_config, num_heads)
        if attn_selector_config.use_sparse:
            logger.info(
                "Triton-only platform: sparse MLA attention is served by the platform's own backend "
                "(the Triton kernels have no top-k sparse attention or lightning indexer)."
            )
            return parent.get_attn_backend_cls(None, attn_selector_config, num_heads)
        if attn_selector_config.use_mla:
            from .mla_backend import TritonMLABackend

            return cls._validated(TritonMLABackend, "MLA", MLA_BACKEND_PATH, attn_selector_config)

        from .backend import TritonAttentionBackend

        return cls._validated(TritonAttentionBackend, "attention", BACKEND_PATH, attn_selector_config)

    @classmethod
    def _validated(cls, backend: Any, kind: str, path: str, attn_selector_config: Any) -> str:
        """``path`` when vLLM's checks of ``backend`` pass (an unsupported head size, dtype or
        feature fails here, before weights load, with the reason); raises otherwise."""
        reasons = backend.validate_configuration(
            device_capability=cls.get_device_capability(),  # type: ignore[attr-defined]
            **attn_selector_config._asdict(),
        )
        if reasons:
            raise ValueError(
                f"The Triton {kind} backend (vllm-triton-plugin) cannot serve this model: "
                + "; ".join(reasons)
                + ". Choose another backend with --attention-backend, or turn the platform plugin off "
                "with VLLM_PLUGINS=triton_attn_backend."
            )
        logger.info("Using the Triton %s backend (vllm-triton-plugin).", kind)
        return path


def __getattr__(name: str) -> type:
    if name not in PARENTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, parent_name = PARENTS[name]
    parent = getattr(importlib.import_module(module), parent_name)
    platform = type(name, (TritonOnlyPlatformMixin, parent), {"__module__": __name__})
    globals()[name] = platform  # build once per process
    return platform
