"""The vLLM attention backend over ``triton_attn_kernels``, in vLLM's contract order:
Metadata, MetadataBuilder, Backend, Impl.

Every attention computation and the KV-cache write run as Triton kernels; nothing here calls
vLLM's CUDA ops. One ``paged_attention`` call serves any mix of decodes, prefill chunks on
cached prefixes and fresh prefills without a host synchronisation, so the builder declares
full CUDA-graph support for mixed batches (``AttentionCGSupport.ALWAYS``) and preallocates the
split-KV workspace; ``forward`` neither allocates nor reads device values on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.attention.backends.utils import get_num_attention_heads_from_layers

from triton_attn_kernels import (
    MAX_DECODE_QUERY_LEN,
    SUPPORTED_HEAD_DIMS,
    AttentionConfig,
    compiled_variants,
    paged_attention,
    varlen_attention,
    write_kv_cache,
)
from triton_attn_kernels.tuning import (
    ServingLimits,
    ServingPolicy,
    decodes_first,
    model_geometry,
    preferred_block_size,
)

from . import _compat, _prewarm

__all__ = [
    "CaptureAware",
    "DecodesFirst",
    "TritonAttentionBackend",
    "TritonAttentionImpl",
    "TritonAttentionMetadata",
    "TritonAttentionMetadataBuilder",
]

SUPPORTED_HEAD_SIZES = SUPPORTED_HEAD_DIMS  # the kernels' list, not a copy
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# vLLM's cache dtype names -> the dtype the kernels read. vLLM allocates fp8 caches as uint8;
# the plugin writes and reads them itself, so OCP e4m3fn is used on every GPU (ROCm included).
FP8_CACHE_DTYPES = {
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
ENCODER_TYPES = (AttentionType.ENCODER, AttentionType.ENCODER_ONLY)
SUPPORTED_ATTN_TYPES = (AttentionType.DECODER, *ENCODER_TYPES)

logger = logging.getLogger("vllm.plugins.triton_attn")
_start_reported = False
_reported_count: int | None = None  # the variant count of the last start report
_F = TypeVar("_F", bound=Callable[..., Any])


class StartHostTime:
    """Seconds the plugin's own builds, cache writes and forwards spend on the host during
    engine start (graph capture mostly: each capture runs every layer's write and forward),
    the warm-up's apart (it reports itself): what the plugin adds to the start besides its
    compiles. Counted until the start report."""

    seconds: float = 0.0
    calls: int = 0
    paused: bool = False  # set by the warm-up around its own calls


def start_timed(fn: _F) -> _F:
    """``fn``, its host time added to :class:`StartHostTime` until the start report."""

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if _start_reported or StartHostTime.paused or _prewarm.in_prewarm_thread():
            return fn(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            StartHostTime.seconds += time.perf_counter() - t0
            StartHostTime.calls += 1

    return timed  # type: ignore[return-value]


def _report_start_variants() -> None:
    """At the first build outside CUDA-graph capture after the last capture (the first real
    batch): how many kernel variants engine start compiled or loaded from Triton's cache. A
    build outside capture before a later capture (the warm-up runs before each capture of
    vLLM's V1 model runner, which speculative decoding takes) reports early; after the next
    capture the report is written again only if the count has changed since."""
    global _start_reported, _reported_count
    if _start_reported:
        return
    _start_reported = True
    counts = compiled_variants()
    if sum(counts.values()) == _reported_count:
        return
    _reported_count = sum(counts.values())
    logger.info(
        "Triton attention: %d kernel variants compiled or loaded during engine start (%s)%s; "
        "its builds, cache writes and forwards took %.1f s on the host over %d calls (the warm-up's apart).",
        sum(counts.values()),
        ", ".join(f"{k} {n}" for k, n in counts.items()),
        "; Triton's interpreter compiles none" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "",
        StartHostTime.seconds,
        StartHostTime.calls,
    )


class CaptureAware:
    """A metadata builder that knows when vLLM is capturing a CUDA graph (``_capturing``) and
    writes the start report at the first build outside capture after the last capture (the
    first real batch). Both backends' builders put it first among their bases."""

    _capturing: bool = False
    _warming: bool = False  # the warm-up's own builds (``_warmup``) are no real batch either

    def build_for_cudagraph_capture(self, common_attn_metadata: Any) -> Any:
        # Capture belongs to engine start: only a real batch's build after it reports.
        global _start_reported
        _start_reported = False
        self._capturing = True
        try:
            return super().build_for_cudagraph_capture(common_attn_metadata)  # type: ignore[misc]
        finally:
            self._capturing = False

    def _report_if_real(self) -> None:
        if not self._capturing and not self._warming:
            _report_start_variants()


def _plain_attention(vllm_config: Any, layer_names: list[str] | None = None, *, decode: bool = False) -> bool:
    """Whether none of the named layers (all where ``None``) that this backend serves has
    ALiBi or sinks: the layers the Hopper prefill can serve (softcaps and sliding windows
    included); with ``decode``, nor a sliding window or softcap either: the layers the Gluon
    Hopper decode serves."""
    from vllm.config import get_layers_from_vllm_config

    layers = get_layers_from_vllm_config(vllm_config, torch.nn.Module, layer_names)
    impls = [impl for layer in layers.values() if isinstance(impl := getattr(layer, "impl", None), TritonAttentionImpl)]
    return all(impl.plain_decode if decode else impl.plain for impl in impls)


# --------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------
@dataclass
class TritonAttentionMetadata:
    """One batch, shared by every layer of a KV-cache group.

    Each sequence's query tokens are the last ``query_len`` tokens of its ``seq_len`` context:
    decodes (1 token), prefill chunks on cached prefixes and fresh prefills mix freely.
    """

    num_actual_tokens: int  # tokens of real requests (may include CUDA-graph padding)
    num_reqs: int  # rows of seq_lens / block_table (may include padded requests)
    max_query_len: int
    max_seq_len: int  # upper bound of seq_lens
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32
    seq_lens: torch.Tensor  # [num_reqs] int32, whole context including the new tokens
    block_table: torch.Tensor  # [num_reqs, max_blocks] int32
    slot_mapping: torch.Tensor  # [num_tokens] int64, -1 for padding
    causal: bool
    # Requests with at most this many new tokens (decodes, speculative verification) run on
    # the split-KV decode launch.
    decode_query_len: int
    # Launch configuration pinned by the builder (stable per batch size under CUDA graphs)
    # and the preallocated split-KV buffer it needs.
    config: AttentionConfig
    workspace: torch.Tensor | None
    # A mixed batch in vLLM's decode-first order, outside CUDA-graph capture: ``forward`` runs
    # the decode rows and the prefill rows as two calls, so the prefill launch has no program
    # for a decode request (``None``: one call for the whole batch).
    split: DecodesFirst | None = None


@dataclass(frozen=True)
class DecodesFirst:
    """Requests ``[0, num_decodes)`` have at most ``decode_query_len`` new tokens (their
    ``num_decode_tokens`` query rows come first), the others more (or none)."""

    num_decodes: int
    num_decode_tokens: int
    prefill_query_start_loc: torch.Tensor  # query_start_loc[num_decodes:] - num_decode_tokens
    prefill_max_query_len: int


def _decodes_first(starts: list[int], query_start_loc: torch.Tensor, decode_query_len: int) -> DecodesFirst | None:
    """The split of a batch in decode-first order (``tuning.decodes_first``) from the host
    copy of ``query_start_loc`` (as a list); ``None`` for any other batch."""
    q_lens = [b - a for a, b in itertools.pairwise(starts)]
    first = decodes_first(q_lens, decode_query_len)
    if first is None:
        return None
    n = starts[first]
    return DecodesFirst(first, n, query_start_loc[first:] - n, max(q_lens[first:]))


# --------------------------------------------------------------------------------------
# MetadataBuilder
# --------------------------------------------------------------------------------------
class TritonAttentionMetadataBuilder(CaptureAware, AttentionMetadataBuilder[TritonAttentionMetadata]):
    # Decode and prefill both read per-sequence lengths from device tensors and skip
    # padded requests (query length 0) on the device, so any batch can replay a graph
    # captured at its padded size.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.ALWAYS
    # The kernels take sequences in any order; vLLM's decode-first order (requests of at most
    # this many new tokens first; set per builder to the decode query length) lets a mixed
    # batch run its prefill launch over the prefill requests alone (``DecodesFirst``).
    reorder_batch_threshold: int | None = 1
    # Metadata is cheap to build per KV-cache group, and the pinned config and workspace are
    # this builder's (its layers' head counts): never reused for another group's block table.
    supports_update_block_table: bool = False
    # A speculator's draft steps (EAGLE, MTP; vLLM's V2 model runner, 0.32+; inert before)
    # may replay one CUDA graph built with capture-time metadata: every device tensor the
    # metadata holds is vLLM's own persistent buffer, rewritten in place between steps, and
    # the host values are bounds the kernels do not need exact (a context longer than
    # ``max_seq_len`` is read in full), so there is nothing to refresh.
    supports_draft_decode_metadata_update: bool = True
    _warmed: bool = False

    def __init__(
        self,
        kv_cache_spec: Any,
        layer_names: list[str],
        vllm_config: Any,
        device: torch.device,
    ) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        # Before the KV cache exists, so before any graph capture: the compiles started at
        # model load (``_prewarm``) end here at the latest.
        _prewarm.wait()
        model_config = vllm_config.model_config
        parallel_config = vllm_config.parallel_config
        # Per-layer head counts may differ from the model-wide one (non-uniform models).
        self.num_q_heads = get_num_attention_heads_from_layers(
            vllm_config, layer_names
        ) or model_config.get_num_attention_heads(parallel_config)
        self.num_kv_heads = getattr(kv_cache_spec, "num_kv_heads", None) or model_config.get_num_kv_heads(
            parallel_config
        )
        self.head_size = getattr(kv_cache_spec, "head_size", None) or model_config.get_head_size()
        cache_dtype = vllm_config.cache_config.cache_dtype
        scheduler = vllm_config.scheduler_config
        mode = vllm_config.compilation_config.cudagraph_mode
        # The kernels' serving policy decides every configuration (attn-bench measures with the
        # same one): decode pinned per batch size under full CUDA graphs, one prefill config per
        # model; verification steps of speculative decoding (1 + k tokens per request) run as
        # decodes.
        self.policy = ServingPolicy.for_model(
            num_q_heads=self.num_q_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_size,
            dtype=model_config.dtype,
            kv_dtype=FP8_CACHE_DTYPES.get(cache_dtype, model_config.dtype),
            limits=ServingLimits(
                max_num_seqs=scheduler.max_num_seqs,
                max_model_len=model_config.max_model_len,
                max_num_batched_tokens=getattr(scheduler, "max_num_batched_tokens", None) or model_config.max_model_len,
                cuda_graphs=mode is not None and mode.has_full_cudagraphs(),
                decode_query_len=min(_compat.decode_query_len(vllm_config), MAX_DECODE_QUERY_LEN),
                block_size=kv_cache_spec.block_size,
                plain_attention=_plain_attention(vllm_config, layer_names),
                hopper_decode=_plain_attention(vllm_config, layer_names, decode=True),
            ),
            device=device,
        )
        need = self.policy.max_workspace_numel()
        self.workspace = torch.empty(need, dtype=torch.float32, device=device) if need else None
        self.reorder_batch_threshold = self.policy.limits.decode_query_len

    def build_for_cudagraph_capture(self, common_attn_metadata: CommonAttentionMetadata) -> TritonAttentionMetadata:
        if not self._warmed:
            self._warmed = True
            from ._warmup import warm_up_attention

            warm_up_attention(self, common_attn_metadata)
        return super().build_for_cudagraph_capture(common_attn_metadata)  # type: ignore[no-any-return]

    def update_draft_decode_metadata(self, metadata: TritonAttentionMetadata) -> None:
        """Nothing to recompute between draft steps (see ``supports_draft_decode_metadata_update``)."""

    @start_timed
    def build(
        self,
        common_prefix_len: int,
        common_attn_metadata: CommonAttentionMetadata,
        fast_build: bool = False,
    ) -> TritonAttentionMetadata:
        self._report_if_real()
        cm = common_attn_metadata
        if not isinstance(cm.causal, bool):
            raise NotImplementedError("per-request causal masks are not supported by the Triton attention backend")
        num_reqs = cm.num_reqs
        # The query lengths are on the host already (vLLM's CPU copy): a batch without
        # decodes or verification runs is planned as one prefill launch. Not for a CUDA-graph
        # capture, whose launches replay for any later batch (decodes included).
        has_decodes = True
        split = None
        starts = getattr(cm, "query_start_loc_cpu", None)
        if not self._capturing and starts is not None:
            # Plain Python on one host list (a few torch ops cost more on the host): where a
            # step's build cannot overlap the previous step's GPU work (n-gram speculation needs
            # its sampled tokens on the host first), its host time is the step's.
            cu = starts[: num_reqs + 1].tolist()
            dq = self.policy.limits.decode_query_len
            has_decodes = any(1 <= b - a <= dq for a, b in itertools.pairwise(cu))
            if has_decodes:
                split = _decodes_first(cu, cm.query_start_loc[: num_reqs + 1], dq)
        plan = self.policy.plan(num_reqs, cm.max_query_len, cm.max_seq_len, has_decodes=has_decodes)
        config, workspace = plan.config, self.workspace
        if plan.workspace_numel > (workspace.numel() if workspace is not None else 0):
            # More requests than max_num_seqs (not expected): let the kernels size it.
            config, workspace = dataclasses.replace(config, decode=None), None
        return TritonAttentionMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            num_reqs=num_reqs,
            max_query_len=cm.max_query_len,
            max_seq_len=cm.max_seq_len,
            query_start_loc=cm.query_start_loc,
            seq_lens=cm.seq_lens,
            block_table=cm.block_table_tensor,
            slot_mapping=cm.slot_mapping,
            causal=cm.causal,
            decode_query_len=plan.decode_query_len,
            config=config,
            workspace=workspace,
            split=split,
        )


# --------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------
# vLLM's generic reasons -> ours, naming what the kernels support.
_REASONS = {
    "head_size not supported": "head_size {head_size} not supported by the Triton kernels (supported: "
    + ", ".join(map(str, SUPPORTED_HEAD_SIZES))
    + ")",
    "dtype not supported": "dtype {dtype} not supported by the Triton kernels (float16, bfloat16, float32)",
    "kv_cache_dtype not supported": "kv_cache_dtype {kv_cache_dtype} not supported by the Triton kernels "
    "(auto, the model dtype, fp8, fp8_e4m3, fp8_e5m2)",
}


class TritonAttentionBackend(_compat.kv_cache_shape_mixin(), AttentionBackend):  # type: ignore[misc]
    supported_dtypes: ClassVar[list[torch.dtype]] = list(SUPPORTED_DTYPES)
    supported_kv_cache_dtypes: ClassVar[list[Any]] = ["auto", "float16", "bfloat16", *FP8_CACHE_DTYPES]
    # vLLM calls impl.do_kv_cache_update (our Triton write) before impl.forward.
    forward_includes_kv_cache_update: bool = False

    @staticmethod
    def get_name() -> str:
        return _compat.backend_name()

    @staticmethod
    def get_impl_cls() -> type[TritonAttentionImpl]:
        return TritonAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[TritonAttentionMetadataBuilder]:
        return TritonAttentionMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: Any = None) -> list[int | MultipleOf]:
        # Pages are looked up per key, so any page size works (hybrid models pick odd ones).
        return [MultipleOf(1)]

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        """The kernels' page size for this model where they prefer one (128 tokens where the
        Gluon Hopper prefill serves it: sm_90, Triton 3.6.0, bf16/fp16 or fp8 cache, plain attention),
        else vLLM's default. vLLM asks only when the user gave no ``--block-size``, with the
        model built and its config current."""
        from vllm.config import get_current_vllm_config

        size = cls.preferred_block_size_for(get_current_vllm_config(), default_block_size)
        if size != default_block_size:
            logger.info(
                "Triton attention: KV-cache pages of %d tokens (the Hopper prefill's key tile) instead of %d.",
                size,
                default_block_size,
            )
        return size

    @staticmethod
    def preferred_block_size_for(config: Any, default_block_size: int) -> int:
        """:meth:`get_preferred_block_size` for the model of ``config``, without logging."""
        model = config.model_config
        if model is None or not torch.cuda.is_available():
            return default_block_size
        parallel = config.parallel_config
        geometry = model_geometry(
            num_q_heads=model.get_num_attention_heads(parallel),
            num_kv_heads=model.get_num_kv_heads(parallel),
            head_dim=model.get_head_size(),
            dtype=model.dtype,
            kv_dtype=FP8_CACHE_DTYPES.get(config.cache_config.cache_dtype, model.dtype),
            device=torch.device("cuda", torch.cuda.current_device()),
        )
        size = preferred_block_size(
            geometry, plain_attention=_plain_attention(config), device=torch.device("cuda", torch.cuda.current_device())
        )
        return default_block_size if size is None else size

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_SIZES)

    @classmethod
    def supports_sink(cls) -> bool:
        return True

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type in SUPPORTED_ATTN_TYPES

    @classmethod
    def supports_combination(
        cls,
        head_size: int,
        dtype: torch.dtype,
        kv_cache_dtype: Any,
        block_size: int | None,
        use_mla: bool,
        has_sink: bool,
        use_sparse: bool,
        use_mm_prefix: bool,
        device_capability: Any,
    ) -> str | None:
        name = str(dtype).removeprefix("torch.")
        if kv_cache_dtype in ("float16", "bfloat16") and kv_cache_dtype != name:
            return f"kv_cache_dtype {kv_cache_dtype} differs from the model dtype {name}; use auto or fp8"
        if device_capability is None:  # CPU (Triton interpreter)
            return None
        cap = device_capability.major * 10 + device_capability.minor
        if kv_cache_dtype in FP8_CACHE_DTYPES and cap < 89:
            return f"fp8 KV cache needs compute capability 8.9 or newer, got {cap / 10:.1f}"
        if dtype == torch.bfloat16 and cap < 80:
            return f"bfloat16 needs compute capability 8.0 or newer, got {cap / 10:.1f}"
        return None

    @classmethod
    def validate_configuration(
        cls, head_size: int, dtype: torch.dtype, kv_cache_dtype: Any, *args, **kwargs
    ) -> list[str]:
        """vLLM's checks (arguments differ across releases, hence ``*args, **kwargs``), with
        reasons that say what the kernels support, plus checks of our own."""
        reasons = super().validate_configuration(head_size, dtype, kv_cache_dtype, *args, **kwargs)
        fill = {"head_size": head_size, "dtype": str(dtype).removeprefix("torch."), "kv_cache_dtype": kv_cache_dtype}
        reasons = [_REASONS[r].format(**fill) if r in _REASONS else r for r in reasons]
        return reasons


# --------------------------------------------------------------------------------------
# Impl
# --------------------------------------------------------------------------------------
class TritonAttentionImpl(AttentionImpl[TritonAttentionMetadata]):
    # No softmax LSE output, so no decode context parallelism (vLLM <= 0.28 defaults to True).
    supports_dcp: bool = False
    can_return_lse_for_decode: bool = False

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes: list[float] | None = None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        sinks: torch.Tensor | None = None,
    ) -> None:
        if head_size not in SUPPORTED_HEAD_SIZES:
            raise ValueError(f"head_size {head_size} not supported (supported: {SUPPORTED_HEAD_SIZES})")
        if attn_type not in SUPPORTED_ATTN_TYPES:
            raise NotImplementedError(f"attention type {attn_type} not supported by the Triton attention backend")
        if kv_cache_dtype not in ("auto", "float16", "bfloat16", *FP8_CACHE_DTYPES):
            raise NotImplementedError(f"kv_cache_dtype {kv_cache_dtype} not supported by the Triton attention backend")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.sliding_window = sliding_window
        self.kv_cache_dtype = kv_cache_dtype
        self.fp8_dtype = FP8_CACHE_DTYPES.get(kv_cache_dtype)
        # vLLM (like flash-attn) uses 0 for "no softcap".
        self.softcap = float(logits_soft_cap) if logits_soft_cap else None
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        # Built under the model's device context, so this lands where the layer runs.
        self.alibi_slopes = None if alibi_slopes is None else torch.tensor(alibi_slopes, dtype=torch.float32)
        if sinks is not None and sinks.shape != (num_heads,):
            raise ValueError(f"sinks must have shape [num_heads={num_heads}], got {tuple(sinks.shape)}")
        self.sinks = sinks
        self._sinks_f32: torch.Tensor | None = None
        # The model's config while vLLM builds the layers, for compiling ahead (``_prewarm``).
        self._vllm_config = _prewarm.current_config()

    @property
    def plain(self) -> bool:
        """No ALiBi or sinks: the Hopper prefill serves this layer (a sliding window or softcap
        included; a window on a non-causal batch goes to the generic kernel per launch)."""
        return self.alibi_slopes is None and self.sinks is None

    @property
    def plain_decode(self) -> bool:
        """Nor a sliding window or softcap: the Gluon Hopper decode serves this layer."""
        return self.plain and self.sliding_window is None and self.softcap is None

    def process_weights_after_loading(self, act_dtype: torch.dtype) -> None:
        # The kernels read sinks as contiguous fp32; convert the loaded parameter once here
        # rather than in every forward (which must not allocate under CUDA graphs).
        if self.sinks is not None:
            self._sinks_f32 = self.sinks.detach().float().contiguous()
        _prewarm.start_when_loaded(self)

    def _sinks(self) -> torch.Tensor | None:
        return self._sinks_f32 if self._sinks_f32 is not None else self.sinks

    def _caches(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_cache, v_cache = _compat.split_kv_cache(kv_cache, self.head_size)
        if self.fp8_dtype is not None and k_cache.dtype != self.fp8_dtype:
            k_cache, v_cache = k_cache.view(self.fp8_dtype), v_cache.view(self.fp8_dtype)
        return k_cache, v_cache

    def _alibi(self, device: torch.device) -> torch.Tensor | None:
        # Only moves if the layer was built outside its device context; happens once, in
        # vLLM's warm-up runs, never inside a captured graph.
        if self.alibi_slopes is not None and self.alibi_slopes.device != device:
            self.alibi_slopes = self.alibi_slopes.to(device)
        return self.alibi_slopes

    @start_timed
    def do_kv_cache_update(
        self,
        layer: Any,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Scatter this step's K/V into the paged cache with the Triton write (fp8: quantise)."""
        if self.attn_type in ENCODER_TYPES or kv_cache.numel() == 0:
            return
        k_cache, v_cache = self._caches(kv_cache)
        n = min(slot_mapping.shape[0], key.shape[0])
        fp8 = self.fp8_dtype is not None
        write_kv_cache(
            key[:n],
            value[:n],
            k_cache,
            v_cache,
            slot_mapping[:n],
            k_scale=layer._k_scale if fp8 else None,
            v_scale=layer._v_scale if fp8 else None,
        )

    @start_timed
    def forward(
        self,
        layer: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: TritonAttentionMetadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [num_tokens, num_heads, head_size]; key/value [num_tokens, num_kv_heads,
        head_size]; kv_cache as in ``_compat.split_kv_cache``; writes ``output``
        [num_tokens, num_heads, head_size] (rows of padding tokens are left as they are)."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by the Triton attention backend")
        if attn_metadata is None:
            # vLLM's memory-profiling run (right after torch.compile): no metadata, no cache
            # yet; the compiles started at model load must end before it measures memory.
            _prewarm.wait()
            return output.fill_(0)
        md = attn_metadata
        if self.attn_type in ENCODER_TYPES:
            # No KV cache: every sequence attends to its own tokens, bidirectionally.
            n = md.num_actual_tokens
            varlen_attention(
                query[:n],
                key[:n],
                value[:n],
                md.query_start_loc,
                md.query_start_loc,
                max_seqlen_q=md.max_query_len,
                max_seqlen_k=md.max_query_len,
                scale=self.scale,
                causal=False,
                # Non-causal: (W - 1) keys on each side, FLASH_ATTN's window for encoders.
                sliding_window=self.sliding_window,
                softcap=self.softcap,
                alibi_slopes=self._alibi(query.device),
                sinks=self._sinks(),
                out=output[:n],
            )
            return output
        k_cache, v_cache = self._caches(kv_cache)
        fp8 = self.fp8_dtype is not None
        common: dict[str, Any] = dict(
            max_seqlen_k=max(md.max_seq_len, md.max_query_len),
            scale=self.scale,
            causal=md.causal,
            sliding_window=self.sliding_window,
            softcap=self.softcap,
            alibi_slopes=self._alibi(query.device),
            sinks=self._sinks(),
            k_scale=layer._k_scale if fp8 else None,
            v_scale=layer._v_scale if fp8 else None,
        )
        s = md.split
        if s is None:
            paged_attention(
                query, k_cache, v_cache, md.block_table, md.seq_lens, md.query_start_loc,
                max_seqlen_q=md.max_query_len, decode_query_len=md.decode_query_len,
                out=output, config=md.config, workspace=md.workspace, **common,
            )  # fmt: skip
            return output
        # Decodes first: the split-KV decode launch over their rows, then the prefill launch
        # over the rest alone.
        d, t = s.num_decodes, s.num_decode_tokens
        paged_attention(
            query[:t], k_cache, v_cache, md.block_table[:d], md.seq_lens[:d], md.query_start_loc[: d + 1],
            max_seqlen_q=md.decode_query_len, decode_query_len=md.decode_query_len, out=output[:t],
            config=AttentionConfig(decode=md.config.decode), workspace=md.workspace, **common,
        )  # fmt: skip
        paged_attention(
            query[t:], k_cache, v_cache, md.block_table[d:], md.seq_lens[d:], s.prefill_query_start_loc,
            max_seqlen_q=s.prefill_max_query_len, decode_query_len=0, out=output[t:],
            config=AttentionConfig(prefill=md.config.prefill), **common,
        )  # fmt: skip
        return output
