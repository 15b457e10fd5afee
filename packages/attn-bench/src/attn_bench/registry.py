"""The provider registry.

A provider is a function ``make(inputs) -> Timed``: it does all setup (layouts, plans,
workspaces, compilation) and returns a zero-argument closure that does only the timed work,
plus how to read that closure's result as the canonical output for the correctness check:

- attention ops: [num_tokens, num_q_heads, head_dim] in packed token order (``cu_seqlens_q``);
- ``kv_write``: the pair ``(k_cache, v_cache)`` after the write.

Each provider declares the ops it runs, the modules it needs and, optionally, a
``supports(problem)`` hook returning why a problem is not supported. A provider whose
modules or device are missing is reported as skipped with the reason, never dropped.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .inputs import Inputs
from .problems import OPS, Problem

__all__ = ["REGISTRY", "Provider", "Skip", "Timed", "all_providers", "get", "provider", "providers_for"]


class Skip(Exception):
    """Raised by a provider's setup when it cannot run a problem (the message says why)."""


def _identity(x: Any) -> Any:
    return x


@dataclass(frozen=True)
class Timed:
    fn: Callable[[], Any]  # the timed work, nothing else
    read: Callable[[Any], Any] = _identity  # fn's result -> canonical output (untimed)
    # False: timed by events around eager calls, not as CUDA-graph replays, for work that vLLM
    # runs outside any graph and whose launch takes another route while a graph records.
    graph: bool = True


@dataclass(frozen=True)
class Provider:
    name: str
    ops: tuple[str, ...]
    make: Callable[[Inputs], Timed]
    description: str = ""
    requires: tuple[str, ...] = ()
    cuda_only: bool = False
    supports: Callable[[Problem], str | None] | None = None
    available: Callable[[], str | None] | None = field(default=None)

    def unavailable(self, device: torch.device) -> str | None:
        """Why this provider cannot run on ``device`` at all (None when it can)."""
        for mod in self.requires:
            if _find_spec(mod) is None:
                return f"{mod} is not installed"
        if self.cuda_only and device.type != "cuda":
            return "needs a CUDA device"
        if self.available is not None:
            return _cached_available(self.name, self.available)
        return None

    def unsupported(self, problem: Problem) -> str | None:
        """Why this provider does not run ``problem`` (None when it does)."""
        if problem.op not in self.ops:
            return f"does not run {problem.op}"
        return self.supports(problem) if self.supports is not None else None


def _find_spec(mod: str) -> Any:
    try:
        return importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        return None


_AVAILABLE: dict[str, str | None] = {}


def _cached_available(name: str, check: Callable[[], str | None]) -> str | None:
    if name not in _AVAILABLE:
        try:
            _AVAILABLE[name] = check()
        except Exception as exc:  # an optional peer that fails to import is a skip reason
            _AVAILABLE[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return _AVAILABLE[name]


REGISTRY: dict[str, Provider] = {}


def provider(
    name: str,
    *,
    ops: tuple[str, ...],
    description: str = "",
    requires: tuple[str, ...] = (),
    cuda_only: bool = False,
    supports: Callable[[Problem], str | None] | None = None,
    available: Callable[[], str | None] | None = None,
) -> Callable[[Callable[[Inputs], Timed]], Callable[[Inputs], Timed]]:
    """Register ``make(inputs) -> Timed`` under ``name``."""
    bad = set(ops) - set(OPS)
    if bad:
        raise ValueError(f"unknown ops {sorted(bad)} for provider {name!r}")

    def register(make: Callable[[Inputs], Timed]) -> Callable[[Inputs], Timed]:
        if name in REGISTRY:
            raise ValueError(f"provider {name!r} registered twice")
        REGISTRY[name] = Provider(
            name=name,
            ops=ops,
            make=make,
            description=description or (make.__doc__ or name).strip().splitlines()[0],
            requires=requires,
            cuda_only=cuda_only,
            supports=supports,
            available=available,
        )
        return make

    return register


@functools.cache
def _load() -> None:
    from . import providers  # noqa: F401  (registers every provider)


def get(name: str) -> Provider:
    _load()
    if name not in REGISTRY:
        raise ValueError(f"unknown provider {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def all_providers() -> list[Provider]:
    _load()
    return list(REGISTRY.values())


def providers_for(names: list[str] | None) -> list[Provider]:
    """The named providers (all when ``names`` is None or empty), in registration order."""
    if not names:
        return all_providers()
    return [get(n) for n in names]
