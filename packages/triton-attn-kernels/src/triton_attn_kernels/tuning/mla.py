"""Configuration of the MLA decode (:func:`triton_attn_kernels.mla_decode`): a frozen
dataclass, the problem it is chosen for, and the default heuristic as a pure function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._intmath import cdiv, next_pow2
from .configs import _flag, _int, _pow2, _stages

__all__ = ["MLADecodeConfig", "MLAProblem", "mla_decode_heuristic", "mla_workspace_numel"]

# Splits beyond this give the merge a [splits, kv_lora_rank] fp32 tile per row that no
# longer fits one program's registers at 512 latent dims.
MAX_MLA_SPLITS = 64


@dataclass(frozen=True)
class MLADecodeConfig:
    """Split-KV MLA decode.

    block_h: query heads per program. All block_h heads (times the query tokens of a
    verification run) read each latent tile once; a program holds block_h x query tokens
    rows of kv_lora_rank fp32 accumulators, so larger groups trade registers for reads.
    tile_n: latent rows (keys) per inner iteration (may span several pages).
    num_splits: programs sharing one sequence's keys; partials merged afterwards.
    prefetch_pages: 1 loads the page numbers one tile ahead, so that the latent loads can be
    pipelined (see ``_kernels/mla.py``).
    """

    block_h: int = 16
    tile_n: int = 32
    num_splits: int = 1
    num_warps: int = 4
    num_stages: int = 2
    prefetch_pages: int = 1

    def __post_init__(self) -> None:
        _pow2("block_h", self.block_h, 1, 128)
        _pow2("tile_n", self.tile_n, 16, 256)
        if not 1 <= _int("num_splits", self.num_splits) <= MAX_MLA_SPLITS:
            raise ValueError(f"num_splits must be an int in [1, {MAX_MLA_SPLITS}], got {self.num_splits!r}")
        _pow2("num_warps", self.num_warps, 1, 16)
        _stages(self.num_stages)
        _flag("prefetch_pages", self.prefetch_pages)


@dataclass(frozen=True)
class MLAProblem:
    """What the heuristic may look at: shapes, dtypes and device facts, never contents."""

    num_seqs: int
    num_heads: int
    kv_lora_rank: int
    rope_dim: int
    max_seqlen_q: int
    max_seqlen_k: int
    dtype: str
    kv_dtype: str
    num_sms: int
    interpreter: bool = False

    @classmethod
    def from_tensors(
        cls, q_nope: Any, q_pe: Any, kv_cache: Any, *, num_seqs: int, max_seqlen_q: int, max_seqlen_k: int
    ) -> MLAProblem:
        from .._device import interpreting, num_sms

        return cls(
            num_seqs=num_seqs,
            num_heads=q_nope.shape[1],
            kv_lora_rank=q_nope.shape[2],
            rope_dim=q_pe.shape[2],
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
            dtype=str(q_nope.dtype).removeprefix("torch."),
            kv_dtype=str(kv_cache.dtype).removeprefix("torch."),
            num_sms=num_sms(q_nope.device),
            interpreter=interpreting(),
        )


def mla_workspace_numel(
    num_seqs: int, num_heads: int, kv_lora_rank: int, num_splits: int, *, query_len: int = 1
) -> int:
    """fp32 elements :func:`~triton_attn_kernels.mla_decode` needs as ``workspace`` (0 when
    ``num_splits == 1``); ``query_len`` is the ``max_seqlen_q`` of the calls that use it."""
    if num_splits <= 1:
        return 0
    return num_seqs * max(query_len, 1) * num_heads * num_splits * (kv_lora_rank + 1)


def mla_decode_heuristic(p: MLAProblem) -> MLADecodeConfig:
    rows_per_head = next_pow2(max(p.max_seqlen_q, 1))
    if p.interpreter:
        # Tiny tiles so that CPU test shapes cross tile and page boundaries, and head tiles
        # of at most 16 so that 32-head tests run two of them.
        block_h, tile_n, warps, stages = min(next_pow2(p.num_heads), 16), 16, 4, 1
    else:
        # sm_90 compiles at kv_lora_rank 512, 8 warps (docs/kernels.md, "MLA decode"): 16 rows
        # x 32-key tiles use 190 registers, 32 rows x 16 keys 235, neither spills; 32 x 32
        # spills 16 B and 64 rows spill at any tile. A wider head tile reads the latent
        # fewer times (128 heads: 4 reads of each tile instead of 8). An fp8 latent's
        # conversion needs registers too: 32 rows spill 28 B there, 16 rows do not (224).
        # Smaller ranks get the same tiles (not measured apart).
        rows = 16 if p.kv_dtype.startswith("float8") else 32
        block_h = max(1, min(next_pow2(p.num_heads), rows // rows_per_head))
        tile_n = 32 if block_h * rows_per_head <= 16 else 16
        # 3 stages with the page numbers prefetched: the only mix whose sm_90 loop keeps latent
        # copies in flight across iterations (cp.async.wait_group 2; at 2 stages, or without
        # the prefetch, every iteration waits for all its copies), still without spills.
        warps, stages = 8, 3
    # Split-KV as the generic decode: about two programs per SM, never a split shorter than
    # two tiles (there the merge costs more than the parallelism gains).
    programs = max(p.num_seqs * cdiv(p.num_heads, block_h), 1)
    want = cdiv(2 * p.num_sms, programs)
    most = max(cdiv(p.max_seqlen_k, 2 * tile_n), 1)
    num_splits = max(1, min(want, most, MAX_MLA_SPLITS))
    return MLADecodeConfig(block_h=block_h, tile_n=tile_n, num_splits=num_splits, num_warps=warps, num_stages=stages)
