"""Helpers shared by providers."""

from __future__ import annotations

from ..problems import Problem

ATTENTION_OPS = ("decode", "prefill", "mixed")


def no_fp8(problem: Problem) -> str | None:
    return "no fp8 KV cache support" if problem.fp8 else None
