"""Config lookup: explicit argument, else table entry for the exact key, else the nearest
stored key, else the heuristic. Memoised per problem: after the first call for a problem a
lookup is one dictionary hit (measured in tests/test_tuning_lookup.py).

Nothing happens at import time; the first lookup that may use a table reads the
environment (:mod:`.envs`), the device and that kernel's table, once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .._device import interpreting
from .._intmath import cdiv
from . import envs
from .configs import DecodeConfig, KVWriteConfig, PrefillConfig
from .heuristics import AttentionProblem, decode_heuristic, kv_write_heuristic, prefill_heuristic
from .keys import DECODE, KV_WRITE, PREFILL, Config, KernelSpec, decode_key, kv_write_key, prefill_key
from .tables import Resource, Table, find_table, search_roots

__all__ = ["SOURCES", "ConfigSelector", "DeviceInfo"]

log = logging.getLogger("triton_attn_kernels.tuning")

# Where a configuration came from, as counted by ConfigSelector.stats().
SOURCES = ("explicit", "exact", "nearest", "heuristic")
# A nearest key must lie within this many octaves (factor 4) in every numeric field; farther
# away the tuned shape says little about the problem and the heuristic is the better guess.
MAX_OCTAVES = 2.0
# Memo entries before the memo starts over: max_seqlen_k changes at every decode step, so
# an unbounded memo would grow for the life of a server.
MEMO_LIMIT = 1 << 16


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3"
    capability: tuple[int, int] | None  # torch.cuda.get_device_capability()
    # multi_processor_count; None (unknown) limits the device to tables tuned on it by name.
    num_sms: int | None = None


class ConfigSelector:
    """Resolves launch configurations for one process.

    Args:
        roots: table folders, highest precedence first; ``None`` means the user directory of
            ``TRITON_ATTN_TUNING_DIR`` (if set) and then the shipped ``dejavu_data/``.
        device: fixes the device instead of asking torch (tests, tools).
        use_tables: ``None`` means ``TRITON_ATTN_TUNING`` (default on); False: heuristics only.
        under_interpreter: also use tables for problems run by Triton's interpreter (tests of
            the lookup on CPU). Otherwise the interpreter gets the heuristic, which keeps
            tiles small enough for CPU tests to cross tile and page boundaries.
    """

    def __init__(
        self,
        *,
        roots: Sequence[Resource | Path] | None = None,
        device: DeviceInfo | None = None,
        use_tables: bool | None = None,
        under_interpreter: bool = False,
        max_octaves: float = MAX_OCTAVES,
    ) -> None:
        self._roots: list[Resource] | None = list(roots) if roots is not None else None  # type: ignore[arg-type]
        self._fixed_device = device
        self._use_tables = use_tables
        self._under_interpreter = under_interpreter
        self._max_octaves = max_octaves
        self._memo: dict[str, dict[Any, tuple[Config, str]]] = {"decode": {}, "prefill": {}, "kv_write": {}}
        self._counts: dict[str, Counter[str]] = {k: Counter() for k in self._memo}
        self._devices: dict[Any, DeviceInfo | None] = {}
        self._tables: dict[tuple[str, DeviceInfo], Table | None] = {}

    # ---- hot path -------------------------------------------------------------------------

    def decode(self, problem: AttentionProblem, config: DecodeConfig | None = None, device: Any = None) -> DecodeConfig:
        return self._attention(DECODE, problem, config, device, decode_key, decode_heuristic)  # type: ignore[return-value]

    def prefill(
        self, problem: AttentionProblem, config: PrefillConfig | None = None, device: Any = None
    ) -> PrefillConfig:
        return self._attention(PREFILL, problem, config, device, prefill_key, prefill_heuristic)  # type: ignore[return-value]

    def _attention(
        self,
        spec: KernelSpec,
        problem: AttentionProblem,
        config: Config | None,
        device: Any,
        key_fn: Callable[[AttentionProblem], tuple],
        heuristic: Callable[[AttentionProblem], Config],
    ) -> Config:
        counts = self._counts[spec.name]
        if config is not None:
            counts["explicit"] += 1
            return config
        memo = self._memo[spec.name]
        k = problem if device is None else (problem, device)
        hit = memo.get(k)
        if hit is None:
            hit = self._remember(memo, k, self._resolve_attention(spec, problem, device, key_fn, heuristic))
        counts[hit[1]] += 1
        return hit[0]

    def kv_write(
        self,
        num_kv_heads: int,
        head_dim: int,
        *,
        num_tokens: int,
        dtype: Any,
        kv_dtype: Any,
        config: KVWriteConfig | None = None,
        device: Any = None,
        interpreter: bool | None = None,
    ) -> KVWriteConfig:
        counts = self._counts["kv_write"]
        if config is not None:
            counts["explicit"] += 1
            return config
        memo = self._memo["kv_write"]
        k = (num_kv_heads, head_dim, num_tokens, dtype, kv_dtype, device, interpreter)
        hit = memo.get(k)
        if hit is None:
            key = kv_write_key(num_kv_heads, head_dim, num_tokens, dtype, kv_dtype)
            fallback = kv_write_heuristic(num_kv_heads, head_dim)
            interp = interpreting() if interpreter is None else interpreter
            hit = self._remember(memo, k, self._resolve(KV_WRITE, key, fallback, device, interp))
        counts[hit[1]] += 1
        return hit[0]  # type: ignore[return-value]

    # ---- first call for a problem ---------------------------------------------------------

    @staticmethod
    def _remember(memo: dict, k: Any, value: tuple[Config, str]) -> tuple[Config, str]:
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo[k] = value
        return value

    def _resolve_attention(
        self,
        spec: KernelSpec,
        problem: AttentionProblem,
        device: Any,
        key_fn: Callable[[AttentionProblem], tuple],
        heuristic: Callable[[AttentionProblem], Config],
    ) -> tuple[Config, str]:
        if problem.head_dim_v is not None:
            # Tables are keyed by one head size; V's own is another compile-time constant of
            # the kernel, which no stored entry was tuned with.
            log.debug("%s %s: heuristic (V head size %d)", spec.name, key_fn(problem), problem.head_dim_v)
            return heuristic(problem), "heuristic"
        config, source = self._resolve(spec, key_fn(problem), heuristic(problem), device, problem.interpreter)
        if isinstance(config, DecodeConfig) and source == "nearest":
            # A split needs at least one tile of keys; a nearest entry tuned for a longer
            # context would leave the extra splits idle and still pay their merge.
            tiles = max(1, cdiv(problem.max_seqlen_k, config.tile_n))
            if config.num_splits > tiles:
                config = replace(config, num_splits=tiles)
        return config, source

    def _resolve(
        self, spec: KernelSpec, key: tuple, fallback: Config, device: Any, interpreter: bool
    ) -> tuple[Config, str]:
        why = "tables off (TRITON_ATTN_TUNING=0)"
        table = None
        use = envs.tables_enabled() if self._use_tables is None else self._use_tables
        if use and interpreter and not self._under_interpreter:
            use, why = False, "interpreter"
        if use:
            info = self._device_info(device)
            table = self._table(spec.name, info) if info is not None else None
            why = f"no table for {info.name if info else 'a non-CUDA device'}"
        if table is not None:
            found = table.lookup(key, self._max_octaves)
            if found is not None:
                entry, source = found
                log.debug("%s %s: %s from %s, %s key %s", spec.name, key, entry.config, table.origin, source, entry.key)
                return entry.config, source
            why = f"no key near {key} in {table.origin}"
        log.debug("%s %s: heuristic %s (%s)", spec.name, key, fallback, why)
        return fallback, "heuristic"

    def _device_info(self, device: Any) -> DeviceInfo | None:
        if self._fixed_device is not None:
            return self._fixed_device
        if device in self._devices:
            return self._devices[device]
        info = None
        dev = torch.device(device) if device is not None else None
        if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
            if dev is None or dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
            cap = torch.cuda.get_device_capability(dev)
            sms = int(torch.cuda.get_device_properties(dev).multi_processor_count)
            info = DeviceInfo(torch.cuda.get_device_name(dev), (int(cap[0]), int(cap[1])), sms)
        self._devices[device] = info
        return info

    def _table(self, kernel: str, info: DeviceInfo) -> Table | None:
        k = (kernel, info)
        if k not in self._tables:
            roots = self._roots if self._roots is not None else search_roots(envs.tuning_dir())
            table = find_table(kernel, info.name, info.capability, roots, num_sms=info.num_sms)
            _log_table_choice(kernel, info, table)
            self._tables[k] = table
        return self._tables[k]

    # ---- introspection --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per kernel: how many lookups each source served (``explicit``, ``exact``,
        ``nearest``, ``heuristic``) and how many distinct problems are memoised; and the
        table in use per (kernel, device) (``None``: none found)."""
        out: dict[str, Any] = {
            kernel: {**{s: counts[s] for s in SOURCES}, "problems": len(self._memo[kernel])}
            for kernel, counts in self._counts.items()
        }
        out["tables"] = {
            f"{kernel} on {info.name}": (t.origin if t is not None else None)
            for (kernel, info), t in self._tables.items()
        }
        return out


def _describe(info: DeviceInfo) -> str:
    cap = f"sm_{info.capability[0]}{info.capability[1]}" if info.capability else "unknown architecture"
    sms = f"{info.num_sms} SMs" if info.num_sms else "unknown SM count"
    return f"{info.name} ({cap}, {sms})"


def _log_table_choice(kernel: str, info: DeviceInfo, table: Table | None) -> None:
    """Once per kernel and device (the selector remembers the outcome): which table serves
    the device and by which rule, or that the heuristics do."""
    if table is None:
        log.info(
            "triton_attn_kernels: no %s tuning table for %s, nor one tuned on a GPU of the same "
            "architecture and SM count: heuristics",
            kernel,
            _describe(info),
        )
    elif table.device_name == info.name:
        log.info("triton_attn_kernels: %s tuning table for %s: %s", kernel, info.name, table.origin)
    else:
        log.info(
            "triton_attn_kernels: no %s tuning table for %s; using the one tuned on %s (same "
            "architecture and SM count): %s",
            kernel,
            _describe(info),
            table.device_name,
            table.origin,
        )
