"""How a launch fills a GPU: waves of programs over its SMs and bytes per program.

Pure functions of the SM count and the problem, each returning a frozen dataclass that says
what it decided and from what; the heuristics (:mod:`.heuristics`) build their
configurations from them, so a GPU without a tuning table gets choices derived from its own
SM count rather than numbers read off another GPU.

The hardware facts used are those every NVIDIA architecture the kernels target shares
(sm_80 to sm_90): a 256 KB register file per SM. A K and a V tile of one decode program are
held in registers in the dtype of the dot; a quarter of the register file for the two
leaves the rest for the query rows, the accumulator and addressing, so two programs of four
warps are resident per SM, and a wave is ``2 * num_sms`` programs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._intmath import cdiv

__all__ = [
    "MAX_SPLITS",
    "REGISTER_FILE_BYTES",
    "RESIDENT_DECODE_PROGRAMS",
    "TILE_REGISTER_BYTES",
    "DecodeSplit",
    "DecodeTile",
    "PrefillWaves",
    "decode_split",
    "decode_tile",
    "prefill_block_m",
]

REGISTER_FILE_BYTES = 64 * 1024 * 4  # 64K 32-bit registers per SM
TILE_REGISTER_BYTES = REGISTER_FILE_BYTES // 4
RESIDENT_DECODE_PROGRAMS = REGISTER_FILE_BYTES // (2 * TILE_REGISTER_BYTES)
# Keys per decode iteration: at most the widest tile the tuner searches, at least one MMA
# tile of keys.
DECODE_TILES = (16, 128)
# The split-KV merge reads every split's partial row; past 64 splits it costs more than the
# extra programs gain (and the workspace grows with the count).
MAX_SPLITS = 64


def _pow2_floor(x: int) -> int:
    return 1 << (max(x, 1).bit_length() - 1)


@dataclass(frozen=True)
class DecodeTile:
    """Keys per decode iteration, and the register bytes its K and V tiles take."""

    tile_n: int
    register_bytes: int


def decode_tile(head_dim: int, element_bytes: int) -> DecodeTile:
    """The widest power-of-two tile whose K and V tiles (``2 * tile_n * head_dim`` elements
    of ``element_bytes``, the dtype of the dot) fit :data:`TILE_REGISTER_BYTES`, within
    :data:`DECODE_TILES`: 128 keys at head size 128 in 16-bit dtypes, 64 at 256."""
    if head_dim < 1 or element_bytes < 1:
        raise ValueError(f"head_dim and element_bytes must be >= 1, got {head_dim} and {element_bytes}")
    lo, hi = DECODE_TILES
    tile_n = min(max(_pow2_floor(TILE_REGISTER_BYTES // (2 * head_dim * element_bytes)), lo), hi)
    return DecodeTile(tile_n=tile_n, register_bytes=2 * tile_n * head_dim * element_bytes)


@dataclass(frozen=True)
class DecodeSplit:
    """Split-KV decode: ``programs`` (sequences x KV heads) before splitting, ``wave`` the
    programs resident at once, ``tiles`` the key tiles of the longest context."""

    num_splits: int
    programs: int
    wave: int
    tiles: int

    @property
    def launched(self) -> int:
        return self.programs * self.num_splits

    @property
    def waves(self) -> float:
        return self.launched / self.wave


def decode_split(*, programs: int, num_sms: int, max_seqlen_k: int, tile_n: int) -> DecodeSplit:
    """The fewest splits that fill one wave (``RESIDENT_DECODE_PROGRAMS * num_sms``
    programs), but no more splits than the longest context has key tiles (each split keeps
    at least one tile: at one to four sequences the H100 table's winners ran one- and
    two-tile splits) and at most :data:`MAX_SPLITS`. A batch that fills a wave by itself is
    not split. Monotone: more context never means fewer splits, more programs never more."""
    for name, value in (("programs", programs), ("num_sms", num_sms), ("tile_n", tile_n)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    wave = RESIDENT_DECODE_PROGRAMS * num_sms
    tiles = max(cdiv(max_seqlen_k, tile_n), 1)
    num_splits = max(1, min(cdiv(wave, programs), tiles, MAX_SPLITS))
    return DecodeSplit(num_splits=num_splits, programs=programs, wave=wave, tiles=tiles)


@dataclass(frozen=True)
class PrefillWaves:
    """Prefill programs for blocks of ``block_m`` query rows: ``programs`` over the longest
    query's rows (its tokens times the GQA group, packed per KV head), ``wave`` the programs
    resident at once (two per SM, as for decode)."""

    block_m: int
    programs: int
    wave: int


def prefill_block_m(*, query_rows: int, num_kv_heads: int, num_sms: int, widest: int, narrowest: int) -> PrefillWaves:
    """``widest`` rows per program (the block that reuses each K/V tile for the most rows)
    unless the longest query's rows would not fill one wave with it: then halve it, down to
    ``narrowest``, until they do. On the H100 (132 SMs) this picks the block of every one of
    its table's 21 prefill winners (64 rows at 1k-token queries, 128 from 2k)."""
    if not 1 <= narrowest <= widest:
        raise ValueError(f"need 1 <= narrowest <= widest, got {narrowest} and {widest}")
    wave = RESIDENT_DECODE_PROGRAMS * num_sms
    block_m = widest
    while block_m > narrowest and cdiv(query_rows, block_m) * num_kv_heads < wave:
        block_m //= 2
    return PrefillWaves(block_m=block_m, programs=cdiv(query_rows, block_m) * num_kv_heads, wave=wave)
