"""Helpers shared by providers."""

from __future__ import annotations

from ..problems import Problem

ATTENTION_OPS = ("decode", "prefill", "mixed")


def no_fp8(problem: Problem) -> str | None:
    return "no fp8 KV cache support" if problem.fp8 else None


def plain_only(problem: Problem) -> str | None:
    """For providers benchmarked without attention variants (and without fp8 KV)."""
    if problem.variant:
        return f"variant {problem.variant.split('=')[0]} not wired up for this provider"
    return no_fp8(problem)


def supports(*, fp8: bool, variants: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """A ``supports`` hook: fp8 KV allowed or not, and which variants."""

    def hook(problem: Problem) -> str | None:
        name = problem.variant.split("=")[0]
        if name and name not in variants:
            return f"no {name} support"
        if problem.fp8 and not fp8:
            return "no fp8 KV cache support"
        return None

    return hook
