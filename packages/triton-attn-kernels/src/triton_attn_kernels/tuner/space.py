"""What the tuner sweeps: model geometries, problem grids (the attn-bench suites' shapes) and
the declared configuration space of each kernel, searched in two stages."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from .._gluon import TILES as GLUON_TILES
from ..tuning.configs import DecodeConfig, KVWriteConfig, PrefillConfig
from ..tuning.heuristics import HeadSizes

__all__ = ["GEOMETRIES", "GRIDS", "Geometry", "Shape", "Space", "space_for"]


@dataclass(frozen=True)
class Geometry(HeadSizes):
    """A model's attention heads (per GPU). ``head_dim_v``: V's head size where it differs
    from q/k's ``head_dim`` (an MLA model's prefill: 192 and 128), else None. Tables have no
    V head size in their keys, so such a geometry is not in :data:`GEOMETRIES` and ``run``
    refuses it; :class:`~.bench.AttentionCase` builds, times and checks its batches."""

    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_v: int | None = None


# The attn-bench geometries (packages/attn-bench/src/attn_bench/suites/*.toml).
GEOMETRIES = {
    "llama3-8b": Geometry(32, 8, 128),  # Llama-3.1-8B: the default of every suite
    "hd64": Geometry(32, 8, 64),
    "hd256": Geometry(32, 8, 256),
    "q64": Geometry(64, 8, 128),  # GQA group 8
    "tiny": Geometry(4, 2, 32),  # CPU tests through the interpreter
}


@dataclass(frozen=True)
class Shape:
    """``num_seqs`` sequences of ``context`` tokens, the last ``q_len`` of them new (decode:
    q_len 1; fresh prefill: q_len == context). The KV write stores the new tokens,
    ``num_seqs * q_len`` of them."""

    num_seqs: int
    context: int
    q_len: int = 1

    @property
    def num_tokens(self) -> int:
        return self.num_seqs * self.q_len

    def __str__(self) -> str:
        q = "" if self.q_len in (1, self.context) else f" q{self.q_len}"
        return f"{self.num_seqs}x{self.context}{q}"


K = 1024
CONTEXTS = (1 * K, 2 * K, 4 * K, 8 * K, 16 * K, 32 * K)


def _sweep(batches: Iterable[int], contexts: Iterable[int], q_len: int | None, max_kv_tokens: int) -> list[Shape]:
    """Shapes as an attn-bench sweep lists them; ``q_len=None`` means fresh prefill."""
    out = []
    for b, n in itertools.product(batches, contexts):
        if b * n <= max_kv_tokens:
            out.append(Shape(b, n, n if q_len is None else q_len))
    return out


def _ordered(shapes: Iterable[Shape]) -> tuple[Shape, ...]:
    # Cheapest first (keys read, plus query-key pairs), so that a run cut short by its budget
    # has covered the grid's breadth; nearest-key lookup fills the rest.
    unique = dict.fromkeys(shapes)
    return tuple(sorted(unique, key=lambda s: (s.num_seqs * (s.context + s.q_len * s.context / 64), s.num_seqs)))


_ANCHOR_DECODE = [Shape(b, n) for b, n in ((1, 8 * K), (1, 32 * K), (16, 8 * K), (32, 32 * K), (64, 1 * K))]
_ANCHOR_DECODE += [Shape(b, n) for b, n in ((64, 8 * K), (128, 4 * K), (256, 2 * K))]
_ANCHOR_PREFILL = [Shape(b, n, n) for b, n in ((1, 2 * K), (1, 8 * K), (4, 4 * K), (16, 1 * K), (1, 32 * K))]

# The attn-bench suites' shapes. default: the full decode / prefill / kv-write grids (one
# geometry: about 4 + 3 + 0.5 minutes on an H100). quick: the suites' quick points.
GRIDS: dict[str, dict[str, tuple[Shape, ...]]] = {
    "default": {
        "decode": _ordered(_sweep((1, 4, 16, 32, 64, 128, 256), CONTEXTS, 1, 1 << 20)),
        "prefill": _ordered(_sweep((1, 4, 16), CONTEXTS, None, 1 << 16) + _sweep((1, 4), CONTEXTS[2:], 2 * K, 1 << 16)),
        "kv_write": _ordered(
            _sweep((1, 16, 64, 256), (4 * K,), 1, 1 << 20) + _sweep((1, 4, 16), (1 * K, 8 * K), None, 1 << 20)
        ),
    },
    "quick": {
        "decode": _ordered(_ANCHOR_DECODE + _sweep((1, 64), (2 * K, 16 * K), 1, 1 << 20) + [Shape(32, 8 * K)]),
        "prefill": _ordered([*_ANCHOR_PREFILL, Shape(1, 16 * K, 2 * K)]),
        "kv_write": _ordered([Shape(256, 4 * K, 1), Shape(4, 8 * K, 8 * K)]),
    },
    # Seconds in the interpreter with the tiny geometry: for CPU tests.
    "smoke": {
        "decode": (Shape(1, 40), Shape(3, 70)),
        "prefill": (Shape(1, 33, 33), Shape(2, 40, 20)),
        "kv_write": (Shape(1, 5, 5), Shape(4, 40, 10)),
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
    block_size: int = 16  # page size of the cases: a TMA prefill config needs tiles that divide it
    gluon_tiles: tuple[int, ...] = ()  # tile_n values the Gluon prefill runs at this head size

    def declared(self) -> dict[str, list[int]]:
        return {name: list(v) for name, v in {**self.coarse, **self.fine}.items()}

    def _make(self, values: dict[str, Any]) -> Any | None:
        if (values.get("tma") or values.get("gluon")) and self.block_size % values["tile_n"]:
            return None  # would run the generic kernel: the same config timed twice
        if values.get("gluon") and values["tile_n"] not in self.gluon_tiles:
            return None  # likewise
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


def space_for(kernel: str, head_dim: int, interpreter: bool = False, *, block_size: int = 16) -> Space:
    # Page numbers one tile ahead let Triton 3.6 pipeline paged K/V loads (sm_90 code: its
    # copies otherwise wait for each other every iteration); it also changes registers and
    # shared memory, so the tuner decides. Not swept in the interpreter (no pipelining there).
    prefetch: dict[str, tuple[int, ...]] = {} if interpreter else {"prefetch_pages": (0, 1)}
    if kernel == "decode":
        tiles: tuple[int, ...] = (16, 32) if interpreter else (16, 32, 64) if head_dim > 128 else (32, 64, 128)
        # Up to 256: at batch 1 from 2k to 32k keys an H100 table chose 64 splits, then the
        # largest count searched (with one stage: occupancy hides the latency), so the space
        # goes on to where more programs per SM stop paying.
        splits: tuple[int, ...] = (1, 2, 4) if interpreter else (1, 2, 4, 8, 16, 32, 64, 128, 256)
        return Space(
            DecodeConfig,
            coarse={"tile_n": tiles, "num_splits": splits},
            fine={
                "num_warps": (4,) if interpreter else (4, 8),
                "num_stages": (1, 2) if interpreter else (1, 2, 3),
                **prefetch,
            },
            defaults={"num_warps": 4, "num_stages": 2},
        )
    if kernel == "prefill":
        coarse: dict[str, tuple[int, ...]]
        if interpreter:
            coarse = {"block_m": (16, 32), "tile_n": (16, 32)}
        elif head_dim > 128:
            coarse = {"block_m": (32, 64, 128), "tile_n": (16, 32, 64)}
        else:
            coarse = {"block_m": (64, 128), "tile_n": (32, 64, 128)}
        # No tma=1: on an H200 (Triton 3.6.0) that path did not finish a 1 x 8k prefill at
        # 128-token pages in 110 s (docs/kernels.md); a tuner must not walk into it.
        # The Gluon prefill at the head sizes it serves; its fixed tile (block_m 128, 4 warps,
        # tma 0) leaves every other combination out (PrefillConfig rejects them).
        gluon_ok = not interpreter and block_size >= 64 and head_dim in GLUON_TILES
        gluon: dict[str, tuple[int, ...]] = {"gluon": (0, 1)} if gluon_ok else {}
        return Space(
            PrefillConfig,
            coarse=coarse,
            fine={
                "num_warps": (4,) if interpreter else (4, 8),
                "num_stages": (1, 2) if interpreter else (1, 2, 3),
                **prefetch,
                **gluon,
            },
            defaults={"num_stages": 2},
            block_size=block_size,
            gluon_tiles=GLUON_TILES.get(head_dim, ()),
        )
    if kernel == "kv_write":
        warps = (2, 4) if interpreter else (1, 2, 4, 8, 16)
        return Space(KVWriteConfig, coarse={"num_warps": warps}, fine={}, defaults={}, keep=0)
    raise ValueError(f"kernel must be one of decode, prefill, kv_write, got {kernel!r}")
