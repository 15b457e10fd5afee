"""Counting the kernel launches a call makes, by kind, without changing what runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from triton_attn_kernels import _workspace
from triton_attn_kernels import attention as attention_module


class _Counted:
    def __init__(self, kernel, name: str, log: list) -> None:
        self._kernel, self._name, self._log = kernel, name, log

    def __getitem__(self, grid):
        launch = self._kernel[grid]

        def run(*args, **kwargs):
            kind = self._name
            if "IS_DECODE" in kwargs:
                kind = "decode" if kwargs["IS_DECODE"] else "prefill"
            named = {**dict(zip(self._kernel.arg_names, args, strict=False)), **kwargs}
            self._log.append((kind, tuple(grid), named.get("BLOCK_Q"), named.get("num_splits")))
            return launch(*args, **kwargs)

        return run


@contextlib.contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Yields a list that fills with (kind, grid, BLOCK_Q, num_splits) per launch; kind is
    "decode", "prefill" or "merge"."""
    log: list = []
    monkeypatch.setattr(
        attention_module, "attention_kernel", _Counted(attention_module.attention_kernel, "attention", log)
    )
    monkeypatch.setattr(_workspace, "merge_kernel", _Counted(_workspace.merge_kernel, "merge", log))
    yield log
