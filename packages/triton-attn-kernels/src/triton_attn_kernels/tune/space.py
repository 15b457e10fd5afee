"""What the tuner sweeps: model geometries, problem grids (the attn-bench suites' shapes) and
the declared configuration space of each kernel, searched in two stages."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from ..tuning.configs import DecodeConfig, KVWriteConfig, PrefillConfig

__all__ = ["GEOMETRIES", "GRIDS", "Geometry", "Shape", "Space", "space_for"]


@dataclass(frozen=True)
class Geometry:
    num_q_heads: int
    num_kv_heads: int
    head_dim: int


GEOMETRIES = {
    "llama3-8b": Geometry(32, 8, 128),  # Llama-3.1-8B: the attn-bench default geometry
    "hd64": Geometry(32, 8, 64),  # Llama-3.2-1B
    "hd256": Geometry(16, 8, 256),  # Gemma-2-9B
    "tiny": Geometry(4, 2, 32),  # CPU tests through the interpreter
}


@dataclass(frozen=True)
class Shape:
    """decode: num_seqs sequences of context ``seqlen``, one new token each. prefill:
    num_seqs fresh prompts of ``seqlen`` tokens. kv_write: ``seqlen`` new tokens."""

    num_seqs: int
    seqlen: int

    def __str__(self) -> str:
        return f"{self.num_seqs}x{self.seqlen}"


def _grid(batches: Iterable[int], lengths: Iterable[int], max_work: float, power: int = 1) -> tuple[Shape, ...]:
    # Cheapest first, so that a run cut short by its budget has covered the grid's breadth.
    shapes = [Shape(b, n) for b, n in itertools.product(batches, lengths) if b * n**power <= max_work]
    return tuple(sorted(shapes, key=lambda s: (s.num_seqs * s.seqlen**power, s.num_seqs)))


K = 1024
# attn-bench suites: decode batch 1..256 x context 1k..32k; prefill 1k..32k x batch 1..16.
# Caps keep one timing under ~5 ms on an H100 (decode: 2M cached tokens = 8 GB of bf16 KV at
# head_dim 128; prefill: 2^30 causal key-query pairs per head, one 32k prompt).
GRIDS: dict[str, dict[str, tuple[Shape, ...]]] = {
    "default": {
        "decode": _grid((1, 4, 16, 64, 256), (1 * K, 4 * K, 8 * K, 32 * K), max_work=2 * K * K),
        "prefill": _grid((1, 4, 16), (1 * K, 4 * K, 8 * K, 32 * K), max_work=float(32 * K) ** 2, power=2),
        "kv_write": tuple(Shape(1, n) for n in (1, 16, 128, 1 * K, 4 * K, 16 * K)),
    },
    # A few seconds in the interpreter: for CPU tests and a quick look on a new machine.
    "smoke": {
        "decode": (Shape(1, 40), Shape(3, 70)),
        "prefill": (Shape(1, 33), Shape(2, 20)),
        "kv_write": (Shape(1, 5), Shape(1, 40)),
    },
}


@dataclass(frozen=True)
class Space:
    """Stage 1 sweeps every combination of ``coarse`` with the ``fine`` fields at ``defaults``;
    stage 2 sweeps ``fine`` around the ``keep`` fastest stage-1 configs. The heuristic's
    config is always timed too, so a table entry is never slower than the heuristic on its
    own key (by the tuner's measurement)."""

    config_cls: type
    coarse: dict[str, tuple[int, ...]]
    fine: dict[str, tuple[int, ...]]
    defaults: dict[str, int]
    keep: int = 2

    def declared(self) -> dict[str, list[int]]:
        return {name: list(v) for name, v in {**self.coarse, **self.fine}.items()}

    def _make(self, values: dict[str, Any]) -> Any | None:
        try:
            return self.config_cls(**values)
        except ValueError:  # outside the dataclass's limits: not part of the space
            return None

    def stage1(self) -> list[Any]:
        out = []
        for combo in itertools.product(*self.coarse.values()):
            values = dict(zip(self.coarse, combo, strict=True))
            values = {**self.defaults, **values, **self._dependent(values)}
            config = self._make(values)
            if config is not None:
                out.append(config)
        return out

    def stage2(self, best: Iterable[Any]) -> list[Any]:
        out = []
        for base in best:
            for combo in itertools.product(*self.fine.values()):
                values = {f.name: getattr(base, f.name) for f in fields(base)}
                values.update(zip(self.fine, combo, strict=True))
                config = self._make(values)
                if config is not None:
                    out.append(config)
        return out

    def _dependent(self, coarse: dict[str, int]) -> dict[str, int]:
        # Prefill: 128-row tiles want 8 warps for their two 128-wide dot products.
        if self.config_cls is PrefillConfig and "num_warps" not in self.coarse:
            return {"num_warps": 8 if coarse.get("block_m", 0) >= 128 else 4}
        return {}


def space_for(kernel: str, head_dim: int, interpreter: bool = False) -> Space:
    if kernel == "decode":
        tiles = (16, 32) if interpreter else (16, 32, 64) if head_dim > 128 else (32, 64, 128)
        splits = (1, 2, 4) if interpreter else (1, 2, 4, 8, 16, 32, 64)
        return Space(
            DecodeConfig,
            coarse={"tile_n": tiles, "num_splits": splits},
            fine={"num_warps": (4,) if interpreter else (4, 8), "num_stages": (1, 2) if interpreter else (1, 2, 3)},
            defaults={"num_warps": 4, "num_stages": 2},
        )
    if kernel == "prefill":
        if interpreter:
            coarse = {"block_m": (16, 32), "tile_n": (16, 32)}
        elif head_dim > 128:
            coarse = {"block_m": (32, 64, 128), "tile_n": (16, 32, 64)}
        else:
            coarse = {"block_m": (64, 128), "tile_n": (32, 64, 128)}
        return Space(
            PrefillConfig,
            coarse=coarse,
            fine={"num_warps": (4,) if interpreter else (4, 8), "num_stages": (1, 2) if interpreter else (1, 2, 3)},
            defaults={"num_stages": 2},
        )
    if kernel == "kv_write":
        warps = (2, 4) if interpreter else (1, 2, 4, 8, 16)
        return Space(KVWriteConfig, coarse={"num_warps": warps}, fine={}, defaults={}, keep=0)
    raise ValueError(f"kernel must be one of decode, prefill, kv_write, got {kernel!r}")
