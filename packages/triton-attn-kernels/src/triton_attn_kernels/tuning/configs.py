"""Launch configurations: one frozen dataclass per kernel."""

from __future__ import annotations

from dataclasses import dataclass


def _int(name: str, value: object) -> int:
    # An int, not a bool or a float: table configs are integers (JSON and the schema), and
    # the values become compile-time constants of the kernels.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value


def _pow2(name: str, value: int, lo: int, hi: int) -> None:
    if _int(name, value) < lo or value > hi or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in [{lo}, {hi}], got {value!r}")


def _stages(value: int) -> None:
    if not 1 <= _int("num_stages", value) <= 8:
        raise ValueError(f"num_stages must be an int in [1, 8], got {value!r}")


def _flag(name: str, value: int) -> None:
    if _int(name, value) not in (0, 1):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")


# Config fields added after the first tables were written: a table entry without one gets
# the field's default (what every launch did before the field existed).
OPTIONAL_FIELDS = ("prefetch_pages", "tma", "gluon")
# Fields that are switches (0 or 1) rather than positive sizes.
FLAG_FIELDS = ("prefetch_pages", "tma", "gluon")


@dataclass(frozen=True)
class DecodeConfig:
    """Split-KV decode: sequences with one new token.

    tile_n: keys per inner iteration (may span several pages).
    num_splits: programs that share one sequence's keys; partials merged afterwards.
    prefetch_pages: 1 loads a paged cache's page numbers one tile ahead, so that the
    compiler pipelines the K/V loads num_stages - 1 tiles ahead (see docs/kernels.md).
    gluon: 1 runs the Gluon Hopper decode (``_kernels/decode_gluon.py``: a TMA loader warp,
    one wgmma consumer warpgroup, 64 query rows, num_stages K/V slots of tile_n keys) where
    the launch qualifies (``_decode_gluon.qualifies``: Triton 3.6.0, sm_90, fp16/bf16 cache,
    head size 64/128, causal without window/softcap/ALiBi/sinks, a page size tile_n divides,
    enough rows); elsewhere this config runs the generic kernel. It requires num_warps 4, tile_n
    64 or 128, num_stages 2-4 and prefetch_pages 0.
    """

    tile_n: int = 64
    num_splits: int = 1
    num_warps: int = 4
    num_stages: int = 2
    prefetch_pages: int = 0
    gluon: int = 0

    def __post_init__(self) -> None:
        _pow2("tile_n", self.tile_n, 16, 512)
        if not 1 <= _int("num_splits", self.num_splits) <= 256:
            raise ValueError(f"num_splits must be an int in [1, 256], got {self.num_splits!r}")
        _pow2("num_warps", self.num_warps, 1, 16)
        _stages(self.num_stages)
        _flag("prefetch_pages", self.prefetch_pages)
        _flag("gluon", self.gluon)
        if self.gluon and (
            self.num_warps != 4 or self.tile_n not in (64, 128) or not 2 <= self.num_stages <= 4 or self.prefetch_pages
        ):
            raise ValueError(
                "gluon=1 needs num_warps=4, tile_n 64 or 128, num_stages 2-4 and prefetch_pages=0, got "
                f"num_warps={self.num_warps}, tile_n={self.tile_n}, num_stages={self.num_stages}, "
                f"prefetch_pages={self.prefetch_pages}"
            )


@dataclass(frozen=True)
class PrefillConfig:
    """Prefill and prefill chunks: sequences with two or more new tokens.

    block_m: query rows per program; a row is one (token, query head) pair, and the
    GROUP query heads of a KV head are packed together, so a program covers
    block_m // GROUP tokens.
    tile_n: keys per inner iteration.
    prefetch_pages: as in :class:`DecodeConfig`.
    tma: 1 runs the Hopper prefill (``_kernels/prefill_tma.py``: Q/K/V by TMA, warp
    specialised, one query head per program, block_m tokens) where the launch qualifies
    (sm_90, a page size that tile_n divides, no window/softcap/ALiBi/sinks, TMA-aligned
    tensors); elsewhere the generic kernel runs this config as if tma were 0.
    gluon: 1 runs the Gluon Hopper prefill (``_kernels/prefill_gluon.py``: a TMA loader warp,
    two consumer warpgroups ping-ponging, num_stages K/V slots) where the launch qualifies
    (``_gluon.qualifies``: Triton 3.6.0, sm_90, fp16/bf16, head size 64/128 at tile_n 64 or
    128, 256 at tile_n 32, ...); elsewhere this config runs as if gluon were 0. Its tile is
    fixed, so it requires block_m 128, num_warps 4, tile_n 32, 64 or 128 and tma 0.
    """

    block_m: int = 64
    tile_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    prefetch_pages: int = 0
    tma: int = 0
    gluon: int = 0

    def __post_init__(self) -> None:
        _pow2("block_m", self.block_m, 16, 256)
        _pow2("tile_n", self.tile_n, 16, 256)
        _pow2("num_warps", self.num_warps, 1, 16)
        _stages(self.num_stages)
        _flag("prefetch_pages", self.prefetch_pages)
        _flag("tma", self.tma)
        _flag("gluon", self.gluon)
        if self.gluon and ((self.block_m, self.num_warps, self.tma) != (128, 4, 0) or self.tile_n not in (32, 64, 128)):
            raise ValueError(
                "gluon=1 needs block_m=128, num_warps=4, tile_n 32, 64 or 128 and tma=0, got "
                f"block_m={self.block_m}, num_warps={self.num_warps}, tile_n={self.tile_n}, tma={self.tma}"
            )


@dataclass(frozen=True)
class KVWriteConfig:
    num_warps: int = 4

    def __post_init__(self) -> None:
        _pow2("num_warps", self.num_warps, 1, 16)


@dataclass(frozen=True)
class AttentionConfig:
    """Explicit choice for :func:`paged_attention` / :func:`varlen_attention`.
    A ``None`` field means "look it up" (table, else heuristic)."""

    decode: DecodeConfig | None = None
    prefill: PrefillConfig | None = None

    def __post_init__(self) -> None:
        for name, cls in (("decode", DecodeConfig), ("prefill", PrefillConfig)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"AttentionConfig.{name} must be a {cls.__name__} or None, got {type(value).__name__}")
