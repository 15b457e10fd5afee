"""The vLLM MLA (multi-head latent attention) backend over ``triton_attn_kernels``, in vLLM's
contract order: Metadata, MetadataBuilder, Backend, Impl.

vLLM's ``MLAAttention`` layer keeps the model-side work (the W_UK absorption of decode
queries, the W_UV projection of decode outputs, the decode / prefill split of the batch);
the impl here does every attention computation and the cache write with Triton kernels:

- cache write: ``write_latent_cache`` (one ``[kv_c | k_pe]`` row per token; fp8 with the
  layer's ``k_scale``);
- decode and speculative verification (up to ``MAX_DECODE_QUERY_LEN`` new tokens per
  request): ``mla_decode`` on the paged latent cache (absorbed weights), with a launch
  configuration pinned per batch size and a preallocated split-KV workspace under full
  CUDA graphs;
- prefill: the new tokens up-projected by ``kv_b_proj`` and attended causally with
  ``varlen_attention``; a cached prefix (prefix caching, chunked prefill) is gathered from
  the paged cache in workspace-sized chunks, up-projected, attended with
  ``varlen_attention`` and combined with ``merge_attention_states``.

No vLLM CUDA op, no flash-attn: vLLM's layer still constructs the prefill backend its
selector picks, which this impl never calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from vllm.config import get_current_vllm_config
from vllm.model_executor.layers.attention.mla_attention import (
    MLACommonBackend,
    MLACommonImpl,
    MLACommonMetadata,
    MLACommonMetadataBuilder,
    QueryLenSupport,
)
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, MultipleOf

from triton_attn_kernels import (
    MAX_DECODE_QUERY_LEN,
    SUPPORTED_HEAD_DIMS,
    MLADecodeConfig,
    merge_attention_states,
    mla_decode,
    mla_workspace_numel,
    varlen_attention,
    write_latent_cache,
)
from triton_attn_kernels.tuning.mla import MLAProblem, mla_decode_heuristic, mla_preferred_block_size

from . import _compat
from .backend import (
    FP8_CACHE_DTYPES,
    SUPPORTED_DTYPES,
    CaptureAware,
    TritonAttentionBackend,
    logger,
    start_timed,
)

__all__ = [
    "TritonMLABackend",
    "TritonMLAImpl",
    "TritonMLAMetadata",
    "TritonMLAMetadataBuilder",
    "TritonMLAPlan",
    "plan_context_chunks",
]


# --------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------
@dataclass
class ContextChunk:
    """One workspace-sized slice of every prefill's cached prefix, as gather indices."""

    cu_seqlens_k: torch.Tensor  # [num_prefills + 1] int32, keys of each prefill in this chunk
    blocks: torch.Tensor  # [num_keys] physical block of each gathered key
    offsets: torch.Tensor  # [num_keys] its slot inside the block
    max_seqlen_k: int  # host: the most keys of one prefill in this chunk


@dataclass
class TritonMLAPlan:
    """What the kernels need beyond vLLM's MLA metadata, planned once per batch on the host."""

    decode_cu_seqlens_q: torch.Tensor | None  # [num_decodes + 1] int32
    decode_max_query_len: int
    decode_max_seq_len: int
    decode_config: MLADecodeConfig | None
    decode_workspace: torch.Tensor | None
    prefill_max_query_len: int
    context_chunks: list[ContextChunk]


@dataclass
class TritonMLAMetadata(MLACommonMetadata):
    """vLLM's MLA metadata (decodes first, then prefills) plus our launch plan."""

    plan: TritonMLAPlan | None = None


# --------------------------------------------------------------------------------------
# MetadataBuilder
# --------------------------------------------------------------------------------------
class TritonMLAMetadataBuilder(CaptureAware, MLACommonMetadataBuilder[TritonMLAMetadata]):
    # Decode batches replay from full CUDA graphs (mla_decode reads lengths on the device,
    # its configuration is pinned per batch size and its workspace preallocated); prefill
    # plans its context chunks on the host, so mixed batches run piecewise.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH
    # mla_decode takes any mix of 1..MAX_DECODE_QUERY_LEN new tokens per request.
    query_len_support: ClassVar[QueryLenSupport] = QueryLenSupport.VARLEN
    reorder_batch_threshold: int = 1
    _warmed: bool = False

    def __init__(self, kv_cache_spec: Any, layer_names: list[str], vllm_config: Any, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device, metadata_cls=TritonMLAMetadata)
        # Kept for the warm-up (vLLM 0.26's MLA builder does not keep them).
        self._layer_names, self._vllm_config = list(layer_names), vllm_config
        self._init_plan(vllm_config)

    def _init_plan(self, vllm_config: Any) -> None:
        """Our state on top of vLLM's builder: the decode configurations and, under full CUDA
        graphs, the split-KV workspace for every batch size a graph may be captured at."""
        # Longer verification runs than the decode kernel takes go to the prefill path.
        self.reorder_batch_threshold = min(self.reorder_batch_threshold, MAX_DECODE_QUERY_LEN)
        self.kv_lora_rank = self.mla_dims.kv_lora_rank
        self.rope_dim = self.mla_dims.qk_rope_head_dim
        cache_dtype = vllm_config.cache_config.cache_dtype
        self._dtype = self.model_config.dtype
        self._kv_dtype = FP8_CACHE_DTYPES.get(cache_dtype, self._dtype)
        mode = vllm_config.compilation_config.cudagraph_mode
        self.cuda_graphs = bool(mode is not None and mode.has_full_cudagraphs())
        self.max_model_len = self.model_config.max_model_len
        self.max_num_seqs = vllm_config.scheduler_config.max_num_seqs
        self._pinned: dict[int, MLADecodeConfig] = {}
        self.decode_workspace: torch.Tensor | None = None
        if self.cuda_graphs:
            max_seqs = self.max_num_seqs
            dq = self.reorder_batch_threshold
            need = max(
                mla_workspace_numel(
                    n, self.num_heads, self.kv_lora_rank, self._config(n, dq, 1).num_splits, query_len=dq
                )
                for n in range(1, max_seqs + 1)
            )
            if need:
                self.decode_workspace = torch.empty(need, dtype=torch.float32, device=self.device)

    def _config(self, num_decodes: int, max_query_len: int, max_seq_len: int) -> MLADecodeConfig:
        """The decode configuration; under full CUDA graphs a function of the batch size only
        (planned for the longest context), so that a captured launch suits every replay."""
        if self.cuda_graphs:
            pinned = self._pinned.get(num_decodes)
            if pinned is None:
                pinned = self._pinned[num_decodes] = self._heuristic(
                    num_decodes, self.reorder_batch_threshold, self.max_model_len
                )
            return pinned
        return self._heuristic(num_decodes, max_query_len, max_seq_len)

    def _heuristic(self, num_seqs: int, max_query_len: int, max_seq_len: int) -> MLADecodeConfig:
        # Zero-row stand-ins: the problem reads only shapes (the page size among them), dtypes
        # and the device.
        q = torch.empty((0, self.num_heads, self.kv_lora_rank), dtype=self._dtype, device=self.device)
        q_pe = torch.empty((0, self.num_heads, self.rope_dim), dtype=self._dtype, device=self.device)
        width = self.kv_lora_rank + self.rope_dim
        cache = torch.empty((0, self.page_size, width), dtype=self._kv_dtype, device=self.device)
        problem = MLAProblem.from_tensors(
            q, q_pe, cache, num_seqs=num_seqs, max_seqlen_q=max_query_len, max_seqlen_k=max(max_seq_len, 1)
        )
        return mla_decode_heuristic(problem)

    def build_for_cudagraph_capture(self, common_attn_metadata: Any) -> TritonMLAMetadata:
        if not self._warmed:
            self._warmed = True
            from ._warmup import warm_up_mla

            warm_up_mla(self, common_attn_metadata)
        return super().build_for_cudagraph_capture(common_attn_metadata)  # type: ignore[no-any-return]

    @start_timed
    def build(self, common_prefix_len: int, common_attn_metadata: Any, fast_build: bool = False) -> TritonMLAMetadata:
        self._report_if_real()
        md = super().build(common_prefix_len, common_attn_metadata, fast_build)
        md.plan = self._plan(common_attn_metadata, md)
        return md

    def _plan(self, cm: Any, md: TritonMLAMetadata) -> TritonMLAPlan:
        num_decodes, num_reqs = md.num_decodes, cm.num_reqs
        starts = cm.query_start_loc_cpu[: num_reqs + 1].numpy().astype(np.int64)
        q_lens = starts[1:] - starts[:-1]
        decode_cu = config = workspace = None
        decode_max_q = 0
        if num_decodes:
            decode_cu = cm.query_start_loc[: num_decodes + 1]
            decode_max_q = max(int(q_lens[:num_decodes].max()), 1)
            config = self._config(num_decodes, decode_max_q, cm.max_seq_len)
            need = mla_workspace_numel(
                num_decodes,
                self.num_heads,
                self.kv_lora_rank,
                config.num_splits,
                query_len=self.reorder_batch_threshold if self.cuda_graphs else decode_max_q,
            )
            if need and self.decode_workspace is not None and self.decode_workspace.numel() >= need:
                workspace = self.decode_workspace
            if self.cuda_graphs:
                decode_max_q = self.reorder_batch_threshold
        chunks: list[ContextChunk] = []
        prefill_max_q = 0
        if md.num_prefills:
            prefill_max_q = int(q_lens[num_decodes:].max())
            seq_lens = _compat.host_seq_lens(cm)[num_decodes:num_reqs].numpy().astype(np.int64)
            chunks = plan_context_chunks(
                seq_lens - q_lens[num_decodes:],
                cm.block_table_tensor[num_decodes:num_reqs],
                block_size=self.page_size,
                max_keys=self.chunked_prefill_workspace_size,
            )
        return TritonMLAPlan(
            decode_cu_seqlens_q=decode_cu,
            decode_max_query_len=decode_max_q,
            # At least the decode's max_seqlen_q, which full CUDA graphs size for the reorder
            # threshold whatever this batch's contexts are.
            decode_max_seq_len=max(cm.max_seq_len, decode_max_q),
            decode_config=config,
            decode_workspace=workspace,
            prefill_max_query_len=prefill_max_q,
            context_chunks=chunks,
        )


def plan_context_chunks(
    context_lens: np.ndarray, block_table: torch.Tensor, *, block_size: int, max_keys: int
) -> list[ContextChunk]:
    """The gather indices of every prefill's cached prefix, in chunks of at most
    ``max_keys`` keys in all (each prefill with a prefix gets an equal share, all prefills
    side by side in each chunk), so that one chunk's up-projected keys and values stay
    within vLLM's MLA workspace budget.

    Args:
        context_lens: host int array [num_prefills], cached tokens before each prefill's
            new tokens (0 for a fresh prefill).
        block_table: [num_prefills, max_blocks] int32 on the device, the prefills' rows.
        block_size: tokens per page of the cache.
        max_keys: the most keys one chunk gathers (vLLM's ``chunked_prefill_workspace_size``).
    """
    with_context = int((context_lens > 0).sum())
    if not with_context:
        return []
    share = max(max_keys // with_context, 1)
    device = block_table.device
    chunks = []
    for lo in range(0, int(context_lens.max()), share):
        lens = np.clip(context_lens - lo, 0, share)
        cu = np.zeros(len(lens) + 1, dtype=np.int32)
        np.cumsum(lens, out=cu[1:])
        seq = torch.from_numpy(np.repeat(np.arange(len(lens)), lens)).to(device, non_blocking=True)
        pos = lo + np.arange(int(cu[-1])) - np.repeat(cu[:-1].astype(np.int64), lens)
        pos_t = torch.from_numpy(pos).to(device, non_blocking=True)
        chunks.append(
            ContextChunk(
                cu_seqlens_k=torch.from_numpy(cu).to(device, non_blocking=True),
                blocks=block_table[seq, pos_t // block_size],
                offsets=pos_t % block_size,
                max_seqlen_k=int(lens.max()),
            )
        )
    return chunks


# --------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------
class TritonMLABackend(MLACommonBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = list(SUPPORTED_DTYPES)
    supported_kv_cache_dtypes: ClassVar[list[Any]] = ["auto", "float16", "bfloat16", *FP8_CACHE_DTYPES]

    @staticmethod
    def get_name() -> str:
        return "TRITON_ONLY_MLA"

    @staticmethod
    def get_impl_cls() -> type[TritonMLAImpl]:
        return TritonMLAImpl

    @staticmethod
    def get_builder_cls() -> type[TritonMLAMetadataBuilder]:
        return TritonMLAMetadataBuilder

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: Any = None) -> list[int | MultipleOf]:
        # Pages are looked up per key, so any page size works.
        return [MultipleOf(1)]

    @classmethod
    def get_preferred_block_size(cls, default_block_size: int) -> int:
        """64-token pages where the Gluon Hopper MLA decode serves the model (its key tile;
        FlashMLA's page size too), else vLLM's default. Asked only without ``--block-size``."""
        config = get_current_vllm_config()
        model = config.model_config
        if model is None or not torch.cuda.is_available():
            return default_block_size
        text = getattr(model, "hf_text_config", None)
        rank, rope = getattr(text, "kv_lora_rank", None), getattr(text, "qk_rope_head_dim", None)
        if not isinstance(rank, int) or not isinstance(rope, int):
            return default_block_size
        size = mla_preferred_block_size(
            dtype=model.dtype,
            kv_dtype=FP8_CACHE_DTYPES.get(config.cache_config.cache_dtype, model.dtype),
            kv_lora_rank=rank,
            rope_dim=rope,
            device=torch.device("cuda", torch.cuda.current_device()),
        )
        if size is None or size == default_block_size:
            return default_block_size
        logger.info(
            "Triton MLA: KV-cache pages of %d tokens (the Hopper MLA decode's key tile) instead of %d.",
            size,
            default_block_size,
        )
        return size

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        # The latent row kv_lora_rank + rope_dim, both powers of two (mla_decode's rule);
        # vLLM's MLA metadata accepts only these three.
        return [320, 576]

    @classmethod
    def supports_compute_capability(cls, capability: Any) -> bool:
        return True

    @classmethod
    def supports_combination(cls, *args: Any, **kwargs: Any) -> str | None:
        # The same kernels' limits (fp8 from compute capability 8.9, bfloat16 from 8.0, a
        # 16-bit cache dtype equal to the model's) as the non-MLA backend.
        return TritonAttentionBackend.supports_combination(*args, **kwargs)


# --------------------------------------------------------------------------------------
# Impl
# --------------------------------------------------------------------------------------
class TritonMLAImpl(MLACommonImpl[TritonMLAMetadata]):
    # No decode context parallelism (vLLM <= 0.28 defaults to True): not wired or tested.
    supports_dcp: bool = False
    can_return_lse_for_decode: bool = False

    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int,
        alibi_slopes: list[float] | None,
        sliding_window: int | None,
        kv_cache_dtype: str,
        logits_soft_cap: float | None,
        attn_type: str,
        kv_sharing_target_layer_name: str | None,
        **mla_args: Any,
    ) -> None:
        if alibi_slopes is not None or sliding_window is not None or logits_soft_cap:
            raise NotImplementedError(
                "ALiBi, sliding windows and logit soft-capping are not supported by the Triton MLA backend"
            )
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"attention type {attn_type} not supported by the Triton MLA backend")
        if kv_cache_dtype not in TritonMLABackend.supported_kv_cache_dtypes:
            raise NotImplementedError(f"kv_cache_dtype {kv_cache_dtype} not supported by the Triton MLA backend")
        for name in ("qk_head_dim", "v_head_dim"):
            if mla_args[name] not in SUPPORTED_HEAD_DIMS:
                raise ValueError(
                    f"{name} {mla_args[name]} not supported by the Triton MLA prefill (supported: "
                    + ", ".join(map(str, SUPPORTED_HEAD_DIMS))
                    + ")"
                )
        super().__init__(
            num_heads,
            head_size,
            scale,
            num_kv_heads,
            alibi_slopes,
            sliding_window,
            kv_cache_dtype,
            logits_soft_cap,
            attn_type,
            kv_sharing_target_layer_name,
            **mla_args,
        )
        self.fp8_dtype = FP8_CACHE_DTYPES.get(kv_cache_dtype)
        # Queries stay in the model dtype; the kernel dequantises an fp8 cache as it reads.
        self.supports_quant_query_input = False
        # K = [k_nope | k_pe] is assembled by torch copies, never flashinfer's kernel.
        self._use_flashinfer_concat_mla_k = False
        dcp = getattr(get_current_vllm_config().parallel_config, "decode_context_parallel_size", 1)
        if dcp > 1:
            raise NotImplementedError(
                f"decode context parallelism (decode_context_parallel_size={dcp}) is not supported by the "
                "Triton MLA backend"
            )
        # Set here for every release (0.26 leaves it -1 for the layer to fill in).
        self.dcp_world_size = 1

    def fused_output_quant_supported(self, quant_key: Any) -> bool:
        return False

    def _cache(self, kv_cache: torch.Tensor) -> torch.Tensor:
        # vLLM allocates an fp8 cache as uint8 (and views it as its platform's fp8 type);
        # the plugin writes and reads OCP fp8 itself, on every GPU.
        if self.fp8_dtype is not None and kv_cache.dtype != self.fp8_dtype:
            return kv_cache.view(self.fp8_dtype)
        return kv_cache

    @start_timed
    def do_kv_cache_update(
        self,
        kv_c_normed: torch.Tensor,
        k_pe: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        kv_cache_dtype: str,
        k_scale: torch.Tensor,
    ) -> None:
        """kv_c_normed [num_tokens, kv_lora_rank]; k_pe [num_tokens, (1,) rope_dim]; kv_cache
        [num_blocks, block_size, kv_lora_rank + rope_dim]; slot_mapping [>= num_tokens]."""
        if kv_cache.numel() == 0:
            return
        n = min(slot_mapping.shape[0], kv_c_normed.shape[0])
        write_latent_cache(
            kv_c_normed[:n],
            k_pe[:n].reshape(n, k_pe.shape[-1]),
            self._cache(kv_cache),
            slot_mapping[:n],
            k_scale=k_scale if self.fp8_dtype is not None else None,
        )

    @start_timed
    def forward_mqa(
        self,
        q: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        kv_c_and_k_pe_cache: torch.Tensor,
        attn_metadata: TritonMLAMetadata,
        layer: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decode tokens (the batch's first ``num_decode_tokens``): q = (q_nope absorbed
        [B, N, kv_lora_rank], q_pe [B, N, rope_dim]) or both concatenated; returns the
        latent-space output [B, N, kv_lora_rank] (vLLM applies W_UV)."""
        md, plan = attn_metadata, attn_metadata.plan
        if md.decode is None or plan is None or plan.decode_cu_seqlens_q is None:
            raise ValueError("forward_mqa needs the decode part of Triton MLA metadata")
        if isinstance(q, tuple):
            q_nope, q_pe = q
        else:
            q_nope, q_pe = q[..., : self.kv_lora_rank], q[..., self.kv_lora_rank :]
        out = torch.empty(q_nope.shape, dtype=q_nope.dtype, device=q_nope.device)
        mla_decode(
            q_nope,
            q_pe,
            self._cache(kv_c_and_k_pe_cache),
            md.decode.block_table,
            md.decode.seq_lens,
            plan.decode_cu_seqlens_q,
            max_seqlen_q=plan.decode_max_query_len,
            max_seqlen_k=plan.decode_max_seq_len,
            scale=self.scale,
            k_scale=layer._k_scale if self.fp8_dtype is not None else None,
            out=out,
            config=plan.decode_config,
            workspace=plan.decode_workspace,
        )
        return out, None

    def _up_project(self, kv_c: torch.Tensor, k_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K [T, N, qk_nope + rope] and V [T, N, v_head_dim] from latents [T, kv_lora_rank]
        and the rotary key [T, (1,) rope]; the kernels read V with its own head size."""
        kv_nope = self.kv_b_proj(kv_c)[0].view(-1, self.num_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv_nope.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        return self._concat_k_nope_k_pe(k_nope, k_pe.reshape(-1, 1, self.qk_rope_head_dim)), v

    @start_timed
    def forward_mha(  # type: ignore[override]
        self,
        q: torch.Tensor,
        kv_c_normed: torch.Tensor,
        k_pe: torch.Tensor,
        kv_c_and_k_pe_cache: torch.Tensor,
        attn_metadata: TritonMLAMetadata,
        k_scale: torch.Tensor,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
    ) -> None:
        """Prefill tokens (after the decodes): q [T, N, qk_nope + rope], the new latents
        kv_c_normed [T, kv_lora_rank] and k_pe [T, (1,) rope]; writes output [T, N * v_head_dim]."""
        if output_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by the Triton MLA backend")
        md, plan = attn_metadata, attn_metadata.plan
        if md.prefill is None or plan is None:
            raise ValueError("forward_mha needs the prefill part of Triton MLA metadata")
        cu_q, max_q = md.prefill.query_start_loc, plan.prefill_max_query_len
        out = output.view(-1, self.num_heads, self.v_head_dim)
        k, v = self._up_project(kv_c_normed, k_pe)
        new = varlen_attention(
            q,
            k,
            v,
            cu_q,
            cu_q,
            max_seqlen_q=max_q,
            max_seqlen_k=max_q,
            scale=self.scale,
            causal=True,
            # Every row here is a prefill (vLLM sends decodes to forward_mqa): one prefill
            # launch, and one compiled variant whatever the chunk lengths, as precompile warms.
            decode_query_len=0,
            return_lse=bool(plan.context_chunks),
            # Without a cached prefix the result is final: straight into vLLM's output.
            out=None if plan.context_chunks else out,
        )
        if isinstance(new, torch.Tensor):  # no cached prefix
            return
        new_out, new_lse = new
        cache = self._cache(kv_c_and_k_pe_cache)
        first, *rest = plan.context_chunks
        ctx_out, ctx_lse = self._attend_context(q, cache, first, cu_q, max_q, k_scale)
        for chunk in rest:
            part_out, part_lse = self._attend_context(q, cache, chunk, cu_q, max_q, k_scale)
            ctx_out, ctx_lse = merge_attention_states(ctx_out, ctx_lse, part_out, part_lse)
        merge_attention_states(ctx_out, ctx_lse, new_out, new_lse, out=out)

    def _attend_context(
        self,
        q: torch.Tensor,
        cache: torch.Tensor,
        chunk: ContextChunk,
        cu_q: torch.Tensor,
        max_q: int,
        k_scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every prefill token against its prefix's keys in ``chunk`` (no mask: all of them
        precede the new tokens): gathered latents, dequantised (fp8), up-projected."""
        latent = cache[chunk.blocks, chunk.offsets]
        if self.fp8_dtype is not None:
            latent = (latent.float() * k_scale).to(q.dtype)
        k, v = self._up_project(latent[:, : self.kv_lora_rank], latent[:, self.kv_lora_rank :])
        out, lse = varlen_attention(
            q,
            k,
            v,
            cu_q,
            chunk.cu_seqlens_k,
            max_seqlen_q=max_q,
            # A sizing hint; the launcher wants it at least max_seqlen_q even where a chunk
            # holds fewer keys than a prefill has queries.
            max_seqlen_k=max(chunk.max_seqlen_k, max_q),
            scale=self.scale,
            causal=False,
            decode_query_len=0,  # as in forward_mha
            return_lse=True,
        )
        return out, lse
