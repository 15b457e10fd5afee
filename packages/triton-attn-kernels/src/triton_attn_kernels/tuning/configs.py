"""Launch configurations: one frozen dataclass per kernel."""

from __future__ import annotations

from dataclasses import dataclass


def _pow2(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or value < lo or value > hi or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class DecodeConfig:
    """Split-KV decode: sequences with one new token.

    tile_n: keys per inner iteration (may span several pages).
    num_splits: programs that share one sequence's keys; partials merged afterwards.
    """

    tile_n: int = 64
    num_splits: int = 1
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        _pow2("tile_n", self.tile_n, 16, 512)
        if not isinstance(self.num_splits, int) or not 1 <= self.num_splits <= 256:
            raise ValueError(f"num_splits must be an int in [1, 256], got {self.num_splits!r}")
        _pow2("num_warps", self.num_warps, 1, 16)
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages must be an int in [1, 8], got {self.num_stages!r}")


@dataclass(frozen=True)
class PrefillConfig:
    """Prefill and prefill chunks: sequences with two or more new tokens.

    block_m: query rows per program; a row is one (token, query head) pair, and the
    GROUP query heads of a KV head are packed together, so a program covers
    block_m // GROUP tokens.
    tile_n: keys per inner iteration.
    """

    block_m: int = 64
    tile_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        _pow2("block_m", self.block_m, 16, 256)
        _pow2("tile_n", self.tile_n, 16, 256)
        _pow2("num_warps", self.num_warps, 1, 16)
        if not isinstance(self.num_stages, int) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_stages must be an int in [1, 8], got {self.num_stages!r}")


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
