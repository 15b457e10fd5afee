"""Default configurations as pure functions of the problem. Tables (when present) override.

Branch notes say what each choice rests on; numbers marked "H100" come from runs recorded
in docs/results/h100/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .configs import DecodeConfig, KVWriteConfig, PrefillConfig
from .occupancy import decode_split, decode_tile, prefill_block_m

# Bytes of one element in the dtype of the decode dot (an fp8 cache is converted to it).
_ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


class HeadSizes:
    """``head_dim`` (q/k's) and ``head_dim_v`` (V's where it differs, else None) of a frozen
    dataclass: equal sizes stored as None, so that equal geometries compare and hash equal
    however they were built."""

    head_dim: int
    head_dim_v: int | None

    def __post_init__(self) -> None:
        if self.head_dim_v == self.head_dim:
            object.__setattr__(self, "head_dim_v", None)

    @property
    def v_head_dim(self) -> int:
        """V's (and the output's) head size."""
        return self.head_dim if self.head_dim_v is None else self.head_dim_v

    @property
    def widest_head_dim(self) -> int:
        return max(self.head_dim, self.v_head_dim)


@dataclass(frozen=True)
class AttentionProblem(HeadSizes):
    """What a launch heuristic may look at: shapes and dtypes, never tensor contents."""

    num_seqs: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    max_seqlen_q: int
    max_seqlen_k: int
    dtype: str  # "float16" | "bfloat16" | "float32"
    kv_dtype: str  # dtype name of the cache, e.g. "float8_e4m3fn"
    num_sms: int
    interpreter: bool = False
    # V's head size where it differs from head_dim (MLA prefill: 192-wide q/k, 128-wide v).
    head_dim_v: int | None = None
    # Tokens per page of a paged cache (None: contiguous keys, or not known). The decode's
    # best tiles depend on it (a 128-key tile spans eight 16-token pages or one 128-token one).
    block_size: int | None = None

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads

    @classmethod
    def from_tensors(
        cls,
        q: Any,
        k: Any,
        *,
        v: Any = None,
        num_seqs: int,
        max_seqlen_q: int,
        max_seqlen_k: int,
        kv_layout: str = "NHD",
    ) -> AttentionProblem:
        """The problem of a launch on these tensors: ``q`` [tokens, num_q_heads, head_dim]
        and ``k`` a paged cache (4-D, ``kv_layout`` as in ``paged_attention``) or contiguous
        keys [total_k, num_kv_heads, head_dim], ``v`` (if given) the values, whose last
        dimension is V's head size; the device facts are the launcher's."""
        from .._device import interpreting, num_sms

        heads_dim = 2 if k.dim() == 4 and kv_layout == "NHD" else 1
        block_size = None if k.dim() != 4 else k.shape[1 if kv_layout == "NHD" else 2]
        return cls(
            num_seqs=num_seqs,
            num_q_heads=q.shape[1],
            num_kv_heads=k.shape[heads_dim],
            head_dim=q.shape[2],
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
            dtype=str(q.dtype).removeprefix("torch."),
            kv_dtype=str(k.dtype).removeprefix("torch."),
            num_sms=num_sms(q.device),
            interpreter=interpreting(),
            head_dim_v=None if v is None else v.shape[-1],
            block_size=block_size,
        )


def decode_heuristic(p: AttentionProblem) -> DecodeConfig:
    """Keys per iteration from the register budget of the K/V tiles, splits from the waves of
    programs over the SMs (:mod:`.occupancy`)."""
    if p.interpreter:
        # Tiny tiles so that CPU test shapes still cross tile and page boundaries.
        tile_n = 16
    else:
        # 128 keys at head size 128 in 16-bit dtypes, 64 at 256 (H100, 32q/8kv, d=128, CUDA-graph
        # replays: 128 keys per iteration beat 64 at batch 64 x 1k, 101 vs 117 us, and fp8 batch
        # 64 x 8k, 556 vs 659 us, equal elsewhere).
        tile_n = decode_tile(p.widest_head_dim, _ELEMENT_BYTES.get(p.dtype, 2)).tile_n
    split = decode_split(
        programs=max(p.num_seqs * p.num_kv_heads, 1), num_sms=p.num_sms, max_seqlen_k=p.max_seqlen_k, tile_n=tile_n
    )
    return DecodeConfig(tile_n=tile_n, num_splits=split.num_splits, num_warps=4, num_stages=2)


def prefill_heuristic(p: AttentionProblem) -> PrefillConfig:
    if p.interpreter:
        return PrefillConfig(block_m=16, tile_n=16, num_warps=4, num_stages=1)
    if p.widest_head_dim > 128:
        return PrefillConfig(block_m=64, tile_n=32, num_warps=4, num_stages=2)
    rows = prefill_block_m(
        query_rows=max(p.max_seqlen_q, 1) * p.group,
        num_kv_heads=p.num_kv_heads,
        num_sms=p.num_sms,
        widest=128,
        narrowest=64,
    )
    if rows.block_m == 128:
        # H100, d=128: 128 rows x 64 keys, 4 warps, 3 stages was the best of six probed configs
        # at 1x8k (312 TFLOP/s) and 16x1k (232); its table's winner from 2k-token queries on.
        return PrefillConfig(block_m=128, tile_n=64, num_warps=4, num_stages=3)
    # Queries too short to fill a wave of 128-row programs: 64 rows x 32 keys, 2 stages (the
    # H100 table's winner at 4 and 16 x 1k; the config of the wide-head branch above, so no
    # new variant).
    return PrefillConfig(block_m=64, tile_n=32, num_warps=4, num_stages=2)


def gluon_prefill_config(p: AttentionProblem, *, block_size: int | None = None) -> PrefillConfig | None:
    """The Gluon Hopper prefill's configuration for ``p``'s geometry at pages of
    ``block_size`` tokens (``None``: contiguous K/V), or ``None`` where that kernel does not
    serve it: dtypes other than fp16/bf16, a cache in another 16-bit dtype, a V head size of
    its own, head sizes other than 64, 128 and 256, pages its key tile does not divide,
    Triton's interpreter. An fp8 cache is served at any page size: the prefill reads a
    dequantised copy in pages of its own tile (``_fp8_stage.py``). Whether the GPU runs it
    (sm_90, a verified Triton) and the layers' features (it has no ALiBi or sinks) are the
    caller's facts."""
    from .._gluon import SMEM_LIMIT, TILES, smem_bytes

    fp8 = p.kv_dtype in ("float8_e4m3fn", "float8_e5m2")
    if p.interpreter or p.dtype not in ("float16", "bfloat16") or p.head_dim_v is not None:
        return None
    if p.kv_dtype != p.dtype and not fp8:
        return None
    tiles = TILES.get(p.head_dim)
    if not tiles:
        return None
    # The widest tile: the one measured at head sizes 64 and 128 (H200, 1 x 8k to 1 x 32k at
    # 128-token pages: 0.92-0.96x FA3 at the same pages, docs/results/h200/fa3-2026-12-02);
    # narrower ones are the tuner's. At 256 the 64-key tile is not yet measured (the 32-key
    # one ran 0.74-0.75x FA3, docs/results/h200/gluon-features-2026-12-02).
    tile_n = max(tiles)
    if block_size is not None and block_size % tile_n and not fp8:
        return None
    # 128-key tiles: Q and two K/V slots fill 160 KB of shared memory; narrower tiles take a
    # third slot where it fits (not at head size 256 with 64-key tiles).
    stages = 2 if tile_n == 128 or smem_bytes(p.head_dim, tile_n, 3) > SMEM_LIMIT else 3
    return PrefillConfig(block_m=128, tile_n=tile_n, num_warps=4, num_stages=stages, gluon=1)


# Query rows of one Gluon decode program (one wgmma M: new tokens x the GQA group); the most
# sequences of a one-token decode launch it serves by default (gluon_decode_config says why).
GLUON_DECODE_ROWS = 64
GLUON_DECODE_ONE_TOKEN_MAX_SEQS = 16
GLUON_DECODE_HEAD_DIMS = (64, 128)


def gluon_decode_config(
    p: AttentionProblem,
    *,
    decode_query_len: int,
    min_query_len: int = 1,
    one_token_max_seqs: int | None = GLUON_DECODE_ONE_TOKEN_MAX_SEQS,
) -> DecodeConfig | None:
    """The Gluon Hopper decode's configuration for ``p``'s decode launch of 1 to
    ``decode_query_len`` new tokens per sequence, or ``None`` where that kernel does not serve
    it: fewer than ``min_query_len`` new tokens, one-token decode over more than
    ``one_token_max_seqs`` sequences (``None``: any), dtypes other than fp16/bf16, a cache of another
    dtype (fp8), head sizes other than 64 and 128 or a V head size of its own, more than 64
    query heads per KV head, an unknown page size or one not a multiple of 64 tokens, Triton's
    interpreter. Whether the GPU runs it and the layers' features are the caller's facts.

    Split count: the one that fills one wave of programs (kv heads x row blocks x sequences),
    at most 256. H200, 32 q / 8 KV heads, d128, bf16, 128-token pages, beside vLLM's FA3 in one
    run (docs/results/h200/verify-gluon-2026-12-04): verification of 2-16 tokens at batch 1-64
    x 4k-32k 1.002-1.22x FA3 (the generic kernel: 0.50-1.03x). One-token decode over batch
    1-256 x 1k-32k ran 1.006-1.26x FA3, geometric mean 1.063, where the generic kernel with
    the H200 table ran 0.978-1.34x (1.042), in two runs of both: the Gluon decode was faster
    at batch 16 (by 4-14%) and at batch 1 from 4k contexts (1 x 4k: 1.17x FA3 against
    0.95-0.98x), alike at batch 4, and from batch 32 the same or slower (up to 4% at 1k
    contexts). So one-token decode takes it at batches of up to 16 sequences by default
    (``one_token_max_seqs``; the batch is what a CUDA graph fixes, the context is not). Over
    the verification
    points, 64-key tiles in a ring of 3 ran within 5.5% of the best of four tile shapes (64
    keys x 2, 3 or 4 slots, 128 x 2); one wave was the best split count, or within 1% of it,
    for every shape at every point (16 at batch 1, one from batch 16), and twice that ran up
    to 1.45x slower."""
    if p.interpreter or decode_query_len < max(min_query_len, 1) or p.group > GLUON_DECODE_ROWS:
        return None
    if decode_query_len == 1 and one_token_max_seqs is not None and p.num_seqs > one_token_max_seqs:
        return None
    if p.dtype not in ("float16", "bfloat16") or p.kv_dtype != p.dtype or p.v_head_dim != p.head_dim:
        return None
    if p.head_dim not in GLUON_DECODE_HEAD_DIMS or p.block_size is None or p.block_size % 64:
        return None
    row_blocks = -(-decode_query_len // (GLUON_DECODE_ROWS // p.group))
    programs = max(p.num_seqs * p.num_kv_heads * row_blocks, 1)
    splits = max(1, min(256, p.num_sms // programs))
    return DecodeConfig(tile_n=64, num_splits=splits, num_warps=4, num_stages=3, gluon=1)


def prefill_warps(num_warps: int, block_m: int, *, window: bool, softcap: bool) -> int:
    """Warps of a generic prefill launch of ``block_m`` query rows that its configuration
    gives ``num_warps``, where the layers may have a sliding window or a softcap.

    Either feature keeps more of each score tile live: compiled for sm_90 (Triton 3.6,
    ``nox -s sm90``), the 128-query tile at 4 warps (the H100 table's for d128) spills 868 B
    per thread with softcap, 1,160 B with a window and 1,644 B with both, most of it inside
    the loop, against 476 B without either (ALiBi 516, sinks 496); at 8 warps none of them
    spills. On an H200 that tile ran at 0.31x (softcap) and 0.52x (window) FA3's speed
    (docs/results/h200/split-2026-12-02). Narrower tiles keep the configuration's warps:
    64-query tiles do not spill at 4."""
    if block_m >= 128 and (window or softcap):
        return max(num_warps, 8)
    return num_warps


# Sequences a Gluon prefill launch serves from which its persistent launch is the default.
GLUON_PERSISTENT_MIN_SEQS = 4


def gluon_persistent(num_seqs: int, *, other_launch: bool) -> bool:
    """Whether a Gluon prefill launch over ``num_seqs`` sequences runs persistently (one
    program per SM walking the work tiles) rather than as a grid of query tiles.

    H200, 128-token pages, both launches in one run (docs/results/h200/split-2026-12-02):
    the persistent one took 4 x 4k in 0.94x the grid's time, 16 x 1k in 0.89x, 4 x (a 2k
    chunk on 8k) in 0.99x (the day before: 0.99x, 0.88x, 0.99x on 4 x (2k on 6k)); on one
    sequence it was 1.01-1.03x the grid's (1 x 2k, 8k, 32k, a 2k chunk on 16k). Beside the decode launch
    (``other_launch``: the decode rows share the call) it keeps the grid: the persistent walk
    skips the decode sequences' work tiles one at a time, and was 2.4x slower on 32 x 16k
    decodes plus a 2k chunk in one call. The plugin runs such batches as two calls."""
    return num_seqs >= GLUON_PERSISTENT_MIN_SEQS and not other_launch


def kv_write_heuristic(num_kv_heads: int, head_dim: int) -> KVWriteConfig:
    # One program moves num_kv_heads * head_dim elements of K and of V.
    return KVWriteConfig(num_warps=4 if num_kv_heads * head_dim <= 1024 else 8)
