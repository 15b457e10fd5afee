"""Public MLA launchers: the decode (validate, pick the configuration, launch, merge) and
the write of new latents into the paged cache it reads.

Multi-head latent attention (DeepSeek-V2/V3, Kimi K2) with the K/V up-projections absorbed
into the query and the output: every query head attends to the same cached latent rows.
The launch reads no tensor contents on the host, so it can be captured in a CUDA graph with
a preallocated ``workspace`` and an explicit ``config``.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _fallback, _mla_gluon, debug
from . import _validation as check
from ._device import interpreting
from ._intmath import cdiv, next_pow2
from ._kernels.mla import mla_decode_kernel
from ._kernels.mla_cache import write_latent_kernel
from ._launch import launch_kernel
from ._workspace import merge_partials, partials
from .tuning.mla import WGMMA_ROWS, MLADecodeConfig, MLAProblem, mla_decode_heuristic, mla_workspace_numel
from .tuning.policy import MAX_DECODE_QUERY_LEN

__all__ = ["MLADecodeConfig", "mla_decode", "mla_workspace_numel", "write_latent_cache"]


def _pow2_dim(name: str, value: int, lo: int) -> None:
    if value < lo or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {lo}, got {value}")


def _check(
    q_nope: Any,
    q_pe: Any,
    kv_cache: Any,
    block_table: Any,
    seq_lens: Any,
    cu_seqlens_q: Any,
    max_seqlen_q: Any,
    max_seqlen_k: Any,
) -> int:
    """Shapes, dtypes and sizes; returns num_seqs."""
    q_nope = check.tensor("q_nope", q_nope, ndim=3, dtypes=check.FLOAT_DTYPES)
    q_pe = check.tensor("q_pe", q_pe, ndim=3, dtypes=(q_nope.dtype,))
    kv_cache = check.tensor("kv_cache", kv_cache, ndim=3, dtypes=(q_nope.dtype, *check.FP8_DTYPES))
    if q_pe.shape[:2] != q_nope.shape[:2]:
        raise ValueError(
            f"q_pe must have q_nope's [num_tokens, num_heads] = {tuple(q_nope.shape[:2])}, got {tuple(q_pe.shape)}"
        )
    rank, rope = q_nope.shape[2], q_pe.shape[2]
    # The dot operands need 16 lanes at least, and tl.arange needs powers of two.
    _pow2_dim("kv_lora_rank (q_nope's last dim)", rank, 16)
    _pow2_dim("rope_dim (q_pe's last dim)", rope, 16)
    if kv_cache.shape[2] != rank + rope:
        raise ValueError(
            f"kv_cache must hold kv_lora_rank + rope_dim = {rank} + {rope} = {rank + rope} dims per token "
            f"(q_nope's and q_pe's last dims), got shape {tuple(kv_cache.shape)}"
        )
    if q_nope.shape[1] < 1:
        raise ValueError(f"q_nope must have at least one head, got shape {tuple(q_nope.shape)}")
    check.cache_blocks("kv_cache", kv_cache)
    num_seqs = check.paged_batch(
        block_table,
        seq_lens,
        cu_seqlens_q,
        block_size=kv_cache.shape[1],
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
    )
    if max_seqlen_q > MAX_DECODE_QUERY_LEN:
        raise ValueError(
            f"max_seqlen_q must be at most {MAX_DECODE_QUERY_LEN} (decode and speculative verification; longer "
            f"runs are prefill work), got {max_seqlen_q}"
        )
    return num_seqs


def mla_decode(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
    k_scale: float | torch.Tensor | None = None,
    return_lse: bool = False,
    out: torch.Tensor | None = None,
    config: MLADecodeConfig | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Absorbed-weight MLA decode (and speculative verification) over a paged latent cache.

    For query token t of a sequence and head h, with the sequence's latent rows
    ``[c | k_pe]``: ``logits = scale * (q_nope[t, h] . c + q_pe[t, h] . k_pe)`` over the keys
    at positions up to the token's own (causal), ``out[t, h] = softmax(logits) . c``.

    Args:
        q_nope: [num_tokens, num_heads, kv_lora_rank], float16 / bfloat16 / float32: the
            non-rotary query already multiplied by W_UK. kv_lora_rank is a power of two
            (512 in DeepSeek-V2/V3). The tokens of sequence ``i`` are rows
            ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``, the last tokens of its context.
        q_pe: [num_tokens, num_heads, rope_dim] in q_nope's dtype, the rotary part (rope_dim
            a power of two, 64 in DeepSeek).
        kv_cache: [num_blocks, block_size, kv_lora_rank + rope_dim], q_nope's dtype or
            float8_e4m3fn / float8_e5m2 (values stored divided by ``k_scale``); any strides.
        block_table: [num_seqs, max_blocks] int32, physical block of each logical block.
        seq_lens: [num_seqs] int32, whole context length (new tokens included).
        cu_seqlens_q: [num_seqs + 1] int32, prefix sums of new-token counts (0 allowed).
        max_seqlen_q: host int in [0, 16], the most new tokens of a sequence. A sizing hint:
            a smaller value than the truth still computes every row, slowly.
        max_seqlen_k: host int, the largest ``seq_lens`` entry (for the heuristic).
        scale: softmax scale, required: MLA models scale by the query-key head size before
            absorption (e.g. ``(128 + 64) ** -0.5``), which these shapes do not show.
        k_scale: per-tensor dequantisation scale of an fp8 cache (float or one-element
            tensor), required for fp8 caches, ignored otherwise. It scales the latent as key
            and as value.
        return_lse: also return each row's log-sum-exp (natural log, fp32).
        out: ``None`` or [num_tokens, num_heads, kv_lora_rank] in q_nope's dtype.
        config: ``None`` (heuristic) or an :class:`MLADecodeConfig`; pass one fixed per batch
            size under CUDA graphs, so that the workspace size is fixed too.
        workspace: ``None`` or a 1-D float32 buffer of at least :func:`mla_workspace_numel`
            elements (``query_len=max_seqlen_q``) for the split-KV partials.

    Returns:
        ``out`` [num_tokens, num_heads, kv_lora_rank] in q_nope's dtype, or ``(out, lse)``
        with lse [num_tokens, num_heads] (-inf for rows that see no key). Rows of tokens
        outside every sequence are left untouched.

    Index contents are never trusted with an address: a block id outside
    ``[0, num_blocks)`` reads some block of the cache, a ``seq_lens`` entry is bounded by the
    block table's row, rows outside ``[0, num_tokens)`` are not written.
    """
    num_seqs = _check(q_nope, q_pe, kv_cache, block_table, seq_lens, cu_seqlens_q, max_seqlen_q, max_seqlen_k)
    if scale is None:
        raise ValueError("scale is required (MLA scales by the unabsorbed query-key head size, e.g. 192 ** -0.5)")
    scale_value: float = check.positive_float("scale", scale)  # type: ignore[assignment]
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if config is not None and not isinstance(config, MLADecodeConfig):
        raise TypeError(f"config must be an MLADecodeConfig or None, got {type(config).__name__}")
    check.same_device(
        q_nope.device,
        q_pe=q_pe,
        kv_cache=kv_cache,
        block_table=block_table,
        seq_lens=seq_lens,
        cu_seqlens_q=cu_seqlens_q,
        out=out,
    )
    out = check.output(out, q_nope, q_pe=q_pe, kv_cache=kv_cache)
    fp8 = kv_cache.dtype in check.FP8_DTYPES
    if fp8 and k_scale is None:
        raise ValueError(
            f"k_scale is required with a {str(kv_cache.dtype).removeprefix('torch.')} cache: pass the scale the "
            "cache was written with, e.g. 1.0"
        )
    scale_t = check.kv_scale("k_scale", k_scale, q_nope.device) if fp8 else None
    if debug.enabled():
        debug.check_paged_batch(
            block_table,
            seq_lens,
            cu_seqlens_q,
            num_tokens=q_nope.shape[0],
            num_blocks=kv_cache.shape[0],
            block_size=kv_cache.shape[1],
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
        )
        if fp8:
            debug.check_fp8_scales(k_scale=k_scale)
    num_tokens, num_heads, rank = q_nope.shape
    if config is None:
        problem = MLAProblem.from_tensors(
            q_nope, q_pe, kv_cache, num_seqs=num_seqs, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k
        )
        config = mla_decode_heuristic(problem)
    dq = max(max_seqlen_q, 1)
    splits = config.num_splits
    need = mla_workspace_numel(num_seqs, num_heads, rank, splits, query_len=dq)
    ws = check.workspace(workspace, q_nope.device, need=need, q_nope=q_nope, q_pe=q_pe, kv_cache=kv_cache, out=out)
    lse = (
        torch.full((num_tokens, num_heads), float("-inf"), dtype=torch.float32, device=q_nope.device)
        if return_lse
        else None
    )
    if num_seqs == 0 or num_tokens == 0:
        return (out, lse) if lse is not None else out  # type: ignore[return-value]
    part_lse, part_out = partials(ws, need, rank, q_nope.device, out)
    if _mla_gluon.qualifies(q_nope, q_pe, kv_cache, out, config):
        _mla_gluon.launch(q_nope, q_pe, kv_cache, out, lse if splits == 1 else None, part_out, part_lse, block_table,
                          seq_lens, cu_seqlens_q, num_seqs=num_seqs, max_seqlen_q=dq, scale=scale_value,
                          num_splits=splits, tile_n=config.tile_n, stages=config.num_stages)  # fmt: skip
        if splits > 1:
            merge_partials(part_lse, part_out, cu_seqlens_q, out, lse, num_seqs=num_seqs, decode_q=dq, splits=splits)
        return (out, lse) if lse is not None else out
    block_h = min(config.block_h, next_pow2(num_heads))
    block_m = max(16, next_pow2(dq * block_h))
    dummy = cu_seqlens_q
    # fp8 -> fp16 is exact and cheaper than fp8 -> bf16, so an fp8 latent with a bf16 query
    # normally runs its dots in fp16 with the query converted in the kernel. At 64 rows a
    # program (wgmma on sm_90) that converted query would become a register operand: Triton
    # 3.6 feeds wgmma's A from registers unless it comes straight from a load, and 64 x 512
    # fp16 values are 128 registers a thread beside the accumulator's 128 (the key loop then
    # spills, ~120 local loads/stores a tile). There the query stays bf16 in shared memory
    # and the latent converts to bf16 (exact for e4m3 and e5m2), shared by the 64 rows.
    fp8_via_f16 = fp8 and q_nope.dtype == torch.bfloat16 and block_m < WGMMA_ROWS
    # The interpreter computes garbage for bf16 dots: fp32 operands there.
    dot_f32 = q_nope.dtype == torch.float32 or (interpreting() and q_nope.dtype == torch.bfloat16 and not fp8_via_f16)

    def run(tile_n: int, warps: int, stages: int) -> None:
        launch_kernel(
            mla_decode_kernel,
            (cdiv(num_heads, block_h), num_seqs, splits),
            q_nope,
            q_pe,
            kv_cache,
            out,
            lse if lse is not None else dummy,
            part_out,
            part_lse,
            block_table,
            seq_lens,
            cu_seqlens_q,
            scale_t if scale_t is not None else dummy,
            scale_value,
            num_tokens,
            num_heads,
            kv_cache.shape[0],
            block_table.shape[1],
            splits,
            *q_nope.stride(),
            *q_pe.stride(),
            *kv_cache.stride(),
            *out.stride(),
            block_table.stride(0),
            KV_RANK=rank,
            ROPE_DIM=q_pe.shape[2],
            BLOCK_H=block_h,
            BLOCK_Q=dq,
            BLOCK_M=block_m,
            TILE_N=tile_n,
            BLOCK_SIZE=kv_cache.shape[1],
            KV_SCALED=fp8,
            FP8_VIA_F16=fp8_via_f16,
            RETURN_LSE=lse is not None,
            SPLIT_KV=splits > 1,
            DOT_F32=dot_f32,
            DOT_PRECISION="ieee" if q_nope.dtype == torch.float32 else "tf32",
            PREFETCH_PAGES=bool(config.prefetch_pages),
            num_warps=warps,
            num_stages=stages,
        )

    _fallback.launch(
        run,
        (config.tile_n, config.num_warps, config.num_stages),
        lambda: (
            "mla",
            block_m,
            block_h,
            splits,
            config.prefetch_pages,
            dq,
            rank,
            fp8,
            q_nope.dtype,
            kv_cache.dtype,
            lse is not None,
        ),
    )
    if splits > 1:
        merge_partials(part_lse, part_out, cu_seqlens_q, out, lse, num_seqs=num_seqs, decode_q=dq, splits=splits)
    return (out, lse) if lse is not None else out


def write_latent_cache(
    kv_c: torch.Tensor,
    k_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float | torch.Tensor | None = None,
) -> None:
    """Write new tokens' latents into the MLA cache read by :func:`mla_decode`, in place.

    Args:
        kv_c: [num_tokens, kv_lora_rank], float16 / bfloat16 / float32 (the normalised
            compressed KV), any strides.
        k_pe: [num_tokens, rope_dim] in kv_c's dtype (the rotary key, already rotated).
        kv_cache: [num_blocks, block_size, kv_lora_rank + rope_dim], kv_c's dtype or
            float8_e4m3fn / float8_e5m2 (then values are stored as ``x / k_scale``, clamped
            to the format's range and rounded as :func:`write_kv_cache` rounds); any strides.
        slot_mapping: [num_tokens] int32 or int64, ``block * block_size + offset``; ``-1``
            (padding) and any other entry outside the cache write nothing.
        k_scale: the fp8 cache's per-tensor scale (float or one-element tensor), required for
            fp8 caches, ignored otherwise.
    """
    check.tensor("kv_c", kv_c, ndim=2, dtypes=check.FLOAT_DTYPES)
    check.tensor("k_pe", k_pe, ndim=2, dtypes=(kv_c.dtype,))
    check.tensor("kv_cache", kv_cache, ndim=3, dtypes=(kv_c.dtype, *check.FP8_DTYPES))
    num_tokens, rank = kv_c.shape
    rope = k_pe.shape[1]
    if k_pe.shape[0] != num_tokens:
        raise ValueError(f"k_pe must have kv_c's {num_tokens} tokens, got shape {tuple(k_pe.shape)}")
    _pow2_dim("kv_lora_rank (kv_c's last dim)", rank, 16)
    _pow2_dim("rope_dim (k_pe's last dim)", rope, 16)
    if kv_cache.shape[2] != rank + rope:
        raise ValueError(
            f"kv_cache must hold kv_lora_rank + rope_dim = {rank + rope} dims per token, got shape {tuple(kv_cache.shape)}"
        )
    check.cache_blocks("kv_cache", kv_cache)
    check.index("slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int32, torch.int64))
    if slot_mapping.shape[0] != num_tokens:
        raise ValueError(f"slot_mapping must have num_tokens={num_tokens} entries, got {slot_mapping.shape[0]}")
    check.same_device(kv_c.device, k_pe=k_pe, kv_cache=kv_cache, slot_mapping=slot_mapping)
    check.not_overlapping("kv_cache", kv_cache, kv_c=kv_c, k_pe=k_pe, slot_mapping=slot_mapping)
    fp8 = kv_cache.dtype in check.FP8_DTYPES
    if fp8 and k_scale is None:
        raise ValueError(
            f"k_scale is required with a {str(kv_cache.dtype).removeprefix('torch.')} cache: the scale "
            "mla_decode will read it with, e.g. 1.0"
        )
    if debug.enabled():
        debug.check_slot_mapping(slot_mapping, num_blocks=kv_cache.shape[0], block_size=kv_cache.shape[1])
        if fp8:
            debug.check_fp8_scales(k_scale=k_scale)
    if num_tokens == 0:
        return
    scale_t = check.kv_scale("k_scale", k_scale, kv_c.device) if fp8 else slot_mapping
    launch_kernel(
        write_latent_kernel,
        (num_tokens,),
        kv_c,
        k_pe,
        kv_cache,
        slot_mapping,
        scale_t,
        *kv_c.stride(),
        *k_pe.stride(),
        *kv_cache.stride(),
        kv_cache.shape[0] * kv_cache.shape[1],
        KV_RANK=rank,
        ROPE_DIM=rope,
        BLOCK_SIZE=kv_cache.shape[1],
        QUANTIZE=fp8,
        FP8_MAX=float(torch.finfo(kv_cache.dtype).max) if fp8 else 0.0,
        # mantissa bits and smallest normal exponent of the fp8 format
        FP8_MANT=3 if kv_cache.dtype == torch.float8_e4m3fn else 2,
        FP8_EMIN=-6 if kv_cache.dtype == torch.float8_e4m3fn else -14,
        num_warps=4,
    )
