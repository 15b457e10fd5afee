"""Compile the warm-up's kernel variants while vLLM compiles the model.

The warm-up (``_warmup``) runs at the first CUDA-graph capture, when the KV cache exists; on
a cold start its compiles then add their time to graph capture. Everything that decides
those variants is known earlier, once the model's layers are loaded: head counts, dtypes,
features per layer, the page size the backend will ask for, the block table's width
(``max_model_len`` over the page size), the serving policy's configurations. So when the last
of our layers has loaded its weights, a background thread makes the same launches inside
``compiling()`` on a KV cache and block table of the real strides that it allocates itself
(uninitialised: nothing runs on the GPU), while vLLM's torch.compile runs in the engine's
own thread. The warm-up later finds the variants in memory. A variant predicted wrongly
costs CPU time only: the warm-up compiles the right one as before.

The thread is joined before anything could capture a graph: by every metadata builder's
construction (the KV cache's initialisation, before vLLM's warm-up and captures), and by the
first forward (vLLM's profiling run, right after torch.compile).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import SimpleNamespace
from typing import Any

import torch

from triton_attn_kernels import compiled_variants, compiling
from triton_attn_kernels.compiled import default_compile_workers

__all__ = ["ENV", "start_when_loaded", "wait"]

# Set to 0 to leave every compile to the warm-up at the first CUDA-graph capture.
ENV = "VLLM_TRITON_PREWARM"

logger = logging.getLogger("vllm.plugins.triton_attn")
_THREAD_NAME = "triton-attn-prewarm"
_lock = threading.Lock()
_loaded: set[int] = set()  # ids of the impls whose weights have loaded
_started = False
_thread: threading.Thread | None = None
# How many kernel variants to compile side by side: half the warm-up's, so that the model's
# own compile (Inductor's worker processes) keeps most of the CPUs.
_WORKERS = max(1, default_compile_workers() // 2)


def current_config() -> Any:
    """vLLM's config of the model being built, or None (outside model construction, or a
    release without ``get_current_vllm_config_or_none``)."""
    import vllm.config

    get = getattr(vllm.config, "get_current_vllm_config_or_none", None)
    config = get() if get is not None else None
    return config if getattr(config, "model_config", None) is not None else None


def in_prewarm_thread() -> bool:
    return threading.current_thread().name == _THREAD_NAME


def wait() -> None:
    """Join the prewarm thread if one runs (not from inside it)."""
    thread = _thread
    if thread is not None and thread.is_alive() and not in_prewarm_thread():
        thread.join()


def _our_layers(config: Any) -> dict[str, Any]:
    from .backend import TritonAttentionImpl

    context = config.compilation_config.static_forward_context
    return {name: x for name, x in context.items() if isinstance(getattr(x, "impl", None), TritonAttentionImpl)}


def start_when_loaded(impl: Any) -> None:
    """Called by each impl once its weights have loaded; the call that completes the set of
    our layers in the model starts the thread (once per process)."""
    global _started, _thread
    config = getattr(impl, "_vllm_config", None)
    if config is None or not torch.cuda.is_available() or os.environ.get(ENV, "1").strip() == "0":
        return
    with _lock:
        _loaded.add(id(impl))
        if _started:
            return
        layers = _our_layers(config)
        if not layers or any(id(x.impl) not in _loaded for x in layers.values()):
            return
        _started = True
        _thread = threading.Thread(target=_prewarm, args=(config, layers, _device()), name=_THREAD_NAME, daemon=True)
        _thread.start()


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def _block_size(config: Any) -> int | None:
    """The page size vLLM will allocate: the user's, else what the backend will prefer."""
    from vllm.config import CacheConfig

    from .backend import TritonAttentionBackend

    cache = config.cache_config
    user = getattr(cache, "user_specified_block_size", None)
    if user or (user is None and cache.block_size is not None):
        return int(cache.block_size)
    if getattr(config.model_config, "is_hybrid", False):
        return None  # vLLM aligns hybrid models' page sizes later
    return TritonAttentionBackend.preferred_block_size_for(config, CacheConfig.DEFAULT_BLOCK_SIZE)


def _cache_like_vllms(block_size: int, impl: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """An uninitialised per-layer cache with vLLM's logical shape and the strides its
    allocation gives (outside the number of pages, which no stride depends on); None where
    the release's allocator decides the strides (0.29+)."""
    from . import _compat

    num_blocks = 17  # neither 1 nor a multiple of 16, as almost every real page count
    shape = (num_blocks, impl.num_kv_heads, block_size, 2 * impl.head_size)
    order = _compat.kv_cache_stride_order()
    if order is None:
        return None
    raw = torch.empty(tuple(shape[i] for i in order), dtype=dtype, device=device)
    return raw.permute(*[order.index(i) for i in range(len(order))])


def _prewarm(config: Any, layers: dict[str, Any], device: torch.device) -> None:
    from . import _warmup
    from .backend import FP8_CACHE_DTYPES, TritonAttentionMetadataBuilder

    t0, before = time.perf_counter(), sum(compiled_variants().values())
    try:
        if device.type == "cuda":  # a new thread starts on device 0
            torch.cuda.set_device(device)
        mode = config.compilation_config.cudagraph_mode
        block_size = _block_size(config)
        if mode is None or not mode.has_full_cudagraphs() or block_size is None:
            return  # the warm-up does nothing either, or the page size is not known yet
        kinds = _warmup.attention_kinds(list(layers.values()))
        if not kinds:
            return
        impl = kinds[0].impl
        model = config.model_config
        cache_dtype = torch.uint8 if impl.kv_cache_dtype in FP8_CACHE_DTYPES else model.dtype
        spec = SimpleNamespace(block_size=block_size, num_kv_heads=impl.num_kv_heads, head_size=impl.head_size)
        builder = TritonAttentionMetadataBuilder(spec, list(layers), config, device)
        width = -(-model.max_model_len // block_size)  # vLLM's block table: one column per page
        cm = SimpleNamespace(block_table_tensor=torch.empty(1, width, dtype=torch.int32, device=device))
        calls = 0
        builder._warming = True
        with compiling(workers=_WORKERS):
            for layer in kinds:
                cache = _cache_like_vllms(block_size, layer.impl, cache_dtype, device)
                if cache is None:
                    return
                calls += _warmup._warm_attention_layer(builder, layer, cm, cache, fabricated=True)
    except Exception as e:  # the warm-up compiles whatever this did not
        logger.warning("Triton attention: compiling ahead stopped (%s: %s).", type(e).__name__, e)
        return
    logger.info(
        "Triton attention: %d kernel variants compiled or loaded ahead in %.1f s (%d launches on %d threads, "
        "beside the model's compile; pages of %d tokens).",
        sum(compiled_variants().values()) - before,
        time.perf_counter() - t0,
        calls,
        _WORKERS,
        block_size,
    )
