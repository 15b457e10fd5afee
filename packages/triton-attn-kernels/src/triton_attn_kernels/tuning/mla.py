"""Configuration of the MLA decode (:func:`triton_attn_kernels.mla_decode`): a frozen
dataclass, the problem it is chosen for, and the default heuristic as a pure function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._intmath import cdiv, next_pow2
from .configs import _flag, _int, _pow2, _stages

__all__ = [
    "MLADecodeConfig",
    "MLAProblem",
    "mla_decode_heuristic",
    "mla_decode_heuristic_v1",
    "mla_gluon_config",
    "mla_preferred_block_size",
    "mla_triton_config",
    "mla_workspace_numel",
]

# Splits beyond this give the merge a [splits, kv_lora_rank] fp32 tile per row that no
# longer fits one program's registers at 512 latent dims.
MAX_MLA_SPLITS = 64


# (tile_n, num_stages) of the Gluon MLA decode: 72 KB of queries plus the latent ring (576
# columns a key) within the 227 KB of an sm_90 block. The 32-key rings hold 3 and 4 tiles in
# flight for the same bytes as (64, 2) (sm_90, Triton 3.6: 168 registers for each, no spill
# stores at 32 keys, 28 B at 64). The default, (32, 4), ran 1.08-1.25x as fast as (64, 2) at
# every point of attn-bench's `mla --quick` on an H200 (docs/results/h200/mla-2026-12-04).
GLUON_MLA_TILES = ((64, 2), (32, 3), (32, 4))
GLUON_MLA_DEFAULT = (32, 4)


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
    gluon: 1 runs the Gluon Hopper kernel (``_kernels/mla_gluon.py``: a TMA loader warp, the
    QK^T once per 64 query rows, the output columns split over two warpgroups) where
    ``_mla_gluon.qualifies``: 64 rows, tile_n keys in a ring of num_stages latent tiles, one
    of ``GLUON_MLA_TILES`` (what fits an sm_90 block's shared memory; block_h and num_warps
    unused), num_splits is this config's.
    Elsewhere the config runs as if gluon were 0. The heuristic's choice wherever the
    problem says the Gluon kernel serves (:attr:`MLAProblem.gluon`).
    """

    block_h: int = 16
    tile_n: int = 32
    num_splits: int = 1
    num_warps: int = 4
    num_stages: int = 2
    prefetch_pages: int = 1
    gluon: int = 0

    def __post_init__(self) -> None:
        _pow2("block_h", self.block_h, 1, 128)
        _pow2("tile_n", self.tile_n, 16, 256)
        if not 1 <= _int("num_splits", self.num_splits) <= MAX_MLA_SPLITS:
            raise ValueError(f"num_splits must be an int in [1, {MAX_MLA_SPLITS}], got {self.num_splits!r}")
        _pow2("num_warps", self.num_warps, 1, 16)
        _stages(self.num_stages)
        _flag("prefetch_pages", self.prefetch_pages)
        _flag("gluon", self.gluon)
        if self.gluon and (self.tile_n, self.num_stages) not in GLUON_MLA_TILES:
            raise ValueError(
                "gluon=1 needs (tile_n, num_stages) in "
                + ", ".join(map(str, GLUON_MLA_TILES))
                + f" (the Gluon kernel's shared-memory budget), got ({self.tile_n}, {self.num_stages})"
            )


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
    # The Gluon Hopper kernel serves this launch (``_mla_gluon.serves``: sm_90, the Triton it
    # is verified with, a 16-bit latent of the query's dtype, rank 512 + rope 64, pages that
    # its 64-key tile divides); the launch still checks strides and alignment.
    gluon: bool = False

    @classmethod
    def from_tensors(
        cls, q_nope: Any, q_pe: Any, kv_cache: Any, *, num_seqs: int, max_seqlen_q: int, max_seqlen_k: int
    ) -> MLAProblem:
        from .. import _mla_gluon
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
            gluon=_mla_gluon.serves(q_nope, q_pe, kv_cache),
        )


def mla_workspace_numel(
    num_seqs: int, num_heads: int, kv_lora_rank: int, num_splits: int, *, query_len: int = 1
) -> int:
    """fp32 elements :func:`~triton_attn_kernels.mla_decode` needs as ``workspace`` (0 when
    ``num_splits == 1``); ``query_len`` is the ``max_seqlen_q`` of the calls that use it."""
    if num_splits <= 1:
        return 0
    return num_seqs * max(query_len, 1) * num_heads * num_splits * (kv_lora_rank + 1)


# Rows a program needs for Hopper's wgmma: Triton 3.6 lowers a dot to it only when its M is a
# multiple of 64 (one 64-row instruction per warpgroup); below that it emits mma.sync.
WGMMA_ROWS = 64


def mla_decode_heuristic(p: MLAProblem) -> MLADecodeConfig:
    """The default configuration: the Gluon Hopper kernel's (:func:`mla_gluon_config`) where
    it serves (``p.gluon``; on the H200 1.16-1.29x the Triton kernel's speed at 16 heads,
    1.33-1.95x at 128, docs/results/h200/mla-2026-12-03), else :func:`mla_triton_config`'s."""
    if p.gluon and not p.interpreter:
        return mla_gluon_config(p)
    return mla_triton_config(p)


def mla_triton_config(p: MLAProblem) -> MLADecodeConfig:
    """The Triton kernel's configuration (``_kernels/mla.py``); :func:`mla_decode_heuristic_v1`
    is its previous version, kept as a comparison baseline (attn-bench's ``ours-mla-v1``)."""
    rows_per_head = next_pow2(max(p.max_seqlen_q, 1))
    if p.interpreter:
        # Tiny tiles so that CPU test shapes cross tile and page boundaries, and head tiles
        # of at most 16 so that 32-head tests run two of them.
        block_h, tile_n, warps, stages = min(next_pow2(p.num_heads), 16), 16, 4, 1
    elif _wgmma_fits(p, rows_per_head):
        # 64 rows (64 heads, 32 heads x 2 verification tokens, 16 x 4, 4 x 16) per program,
        # 8 warps, for a 16-bit or an fp8 latent. sm_90 compiles at kv_lora_rank 512 + rope
        # 64 (Triton 3.6; docs/kernels.md, "MLA decode"; tools/sm90_report.py loops): both
        # dots are HGMMA, no mma.sync. QK^T is 64x16x16 per warpgroup (the two warpgroups
        # compute the same logits), P.V 64x256x16 with each warpgroup owning 256 of the 512
        # accumulator columns (128 fp32 registers a thread). 255 registers. 16-bit latent:
        # the unmasked key loop (every tile left of the diagonal) has no local loads or
        # stores, the masked loop (the diagonal tile: one iteration per program at one new
        # token) 8-19; ptxas's 350-730 B of spill stores lie there and in the path for more
        # new tokens than max_seqlen_q. The query stays in shared memory (72 KB) beside 3
        # latent stages of 36 KB: 180 KB, copies in flight across iterations
        # (cp.async.wait_group 2). 16-key tiles give 64x8x16 QK^T instructions; 64-key tiles
        # do not fit 3 stages, and at 2 every iteration waits for all its copies
        # (wait_group 0 only). fp8 latent (e4m3 or e5m2, converted in the loop; the query
        # as loaded, the launcher's fp8_via_f16 off at 64 rows): 144 KB, 1-2 local
        # loads/stores a key-loop tile, 110-130 in the masked loop; a query converted to
        # fp16 in registers becomes wgmma's register operand and the key loop has ~120.
        block_h = max(1, min(next_pow2(p.num_heads), WGMMA_ROWS // rows_per_head))
        tile_n, warps, stages = 32, 8, 3
    else:
        # Fewer than 64 rows (16 heads, or 32 at one token), or a 32-bit query: mma.sync.
        # 16 rows x 32-key tiles at 4 stages: 229 registers, no spills, three latent tiles in
        # flight (cp.async.wait_group 4; two at 3 stages) in 127 KB; 16 x 64 at 3 stages
        # spills 72 B, 4 warps 20-448 B. 32 rows x 16 keys at 3 stages: 248 registers, 73 KB,
        # no spills. An fp8 latent at 32 rows x 16 keys: key loops without local memory (the
        # 40 B ptxas counts lie in the path for more new tokens than max_seqlen_q); at 16
        # rows 4 stages pipeline no deeper than 3 (wait_group 2), so 3.
        fp8 = p.kv_dtype.startswith("float8")
        block_h = max(1, min(next_pow2(p.num_heads), 32 // rows_per_head))
        if block_h * rows_per_head <= 16:
            tile_n, warps, stages = 32, 8, (3 if fp8 else 4)
        else:
            tile_n, warps, stages = 16, 8, 3
    programs = max(p.num_seqs * cdiv(p.num_heads, block_h), 1)
    # Never a split shorter than two tiles: there the merge costs more than the parallelism gains.
    most = max(cdiv(p.max_seqlen_k, 2 * tile_n), 1)
    if p.interpreter:
        num_splits = max(1, min(cdiv(2 * p.num_sms, programs), most, MAX_MLA_SPLITS))
    else:
        # 8 warps of 229-255 registers (57-65 K of an SM's 64 K): one program per SM, so
        # the splits are counted in waves of num_sms programs.
        num_splits = _fill_waves(programs, p.num_sms, min(most, MAX_MLA_SPLITS))
    return MLADecodeConfig(block_h=block_h, tile_n=tile_n, num_splits=num_splits, num_warps=warps, num_stages=stages)


def mla_gluon_config(p: MLAProblem) -> MLADecodeConfig:
    """The Gluon Hopper MLA decode's configuration for ``p`` (``gluon=1``; whether it runs
    is ``_mla_gluon.qualifies``'s): its fixed tile, and splits that fill the SMs in waves of
    one program each (224 KB of shared memory a program), never shorter than 128 keys (the
    bound measured with both rings)."""
    programs = max(p.num_seqs * cdiv(max(p.max_seqlen_q, 1) * p.num_heads, WGMMA_ROWS), 1)
    most = max(min(cdiv(p.max_seqlen_k, 2 * 64), MAX_MLA_SPLITS), 1)
    splits = _fill_waves(programs, p.num_sms, most)
    tile_n, stages = GLUON_MLA_DEFAULT
    return MLADecodeConfig(tile_n=tile_n, num_splits=splits, num_stages=stages, gluon=1)


def mla_preferred_block_size(*, dtype: Any, kv_dtype: Any, kv_lora_rank: int, rope_dim: int, device: Any) -> int | None:
    """The latent cache's page size the decode prefers, for a server that chooses it: 64 (the
    Gluon kernel's key tile) where that kernel serves such a cache on ``device``, else None
    (any page size; the Triton kernel looks pages up per key)."""
    import torch

    from .. import _mla_gluon

    q_nope = torch.empty((0, 1, kv_lora_rank), dtype=dtype, device=device)
    q_pe = torch.empty((0, 1, rope_dim), dtype=dtype, device=device)
    cache = torch.empty((0, 64, kv_lora_rank + rope_dim), dtype=kv_dtype, device=device)
    return 64 if _mla_gluon.serves(q_nope, q_pe, cache) else None


def _wgmma_fits(p: MLAProblem, rows_per_head: int) -> bool:
    """Whether the 64-row wgmma configuration applies: a 16-bit query (fp32 operands would not
    fit shared memory) with a latent of its dtype or fp8, at most 512 latent dims (the
    accumulator is 512 / 2 fp32 registers a thread per warpgroup) and enough rows."""
    return (
        p.dtype in ("float16", "bfloat16")
        and (p.kv_dtype == p.dtype or p.kv_dtype.startswith("float8"))
        and p.kv_lora_rank <= 512
        and p.rope_dim <= 64
        and next_pow2(p.num_heads) * rows_per_head >= WGMMA_ROWS
    )


def _fill_waves(programs: int, slots: int, most: int) -> int:
    """The fewest splits (at most ``most``) whose run time in waves of ``slots`` programs,
    each split doing 1 / splits of the keys, is within 5% of the best: e.g. 64 programs on
    132 SMs take 2 splits (one wave of 128), 128 programs 1, a single program ``most``."""

    def waves(s: int) -> float:
        return cdiv(programs * s, slots) / s

    best = min(waves(s) for s in range(1, most + 1))
    return next(s for s in range(1, most + 1) if waves(s) <= best * 1.05)


def mla_decode_heuristic_v1(p: MLAProblem) -> MLADecodeConfig:
    """The previous heuristic, kept as an explicit baseline to compare the current one with
    on a GPU (attn-bench's ``ours-mla-v1``): at most 32 rows a program (mma.sync on sm_90),
    two programs per SM."""
    rows_per_head = next_pow2(max(p.max_seqlen_q, 1))
    if p.interpreter:
        block_h, tile_n, warps, stages = min(next_pow2(p.num_heads), 16), 16, 4, 1
    else:
        # sm_90 compiles at kv_lora_rank 512, 8 warps: 16 rows x 32-key tiles use 190
        # registers, 32 rows x 16 keys 235, neither spills; an fp8 latent: 16 rows.
        rows = 16 if p.kv_dtype.startswith("float8") else 32
        block_h = max(1, min(next_pow2(p.num_heads), rows // rows_per_head))
        tile_n = 32 if block_h * rows_per_head <= 16 else 16
        warps, stages = 8, 3
    programs = max(p.num_seqs * cdiv(p.num_heads, block_h), 1)
    want = cdiv(2 * p.num_sms, programs)
    most = max(cdiv(p.max_seqlen_k, 2 * tile_n), 1)
    num_splits = max(1, min(want, most, MAX_MLA_SPLITS))
    return MLADecodeConfig(block_h=block_h, tile_n=tile_n, num_splits=num_splits, num_warps=warps, num_stages=stages)
