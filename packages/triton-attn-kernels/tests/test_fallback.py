"""A ptxas crash on one specialisation (Triton 3.6's ptxas crashes on some, e.g. the prefill
kernel that test_fuzz.py's seed 1000048 draws) makes the launcher retry with fewer stages / narrower tiles, warn once and remember; when nothing
compiles the error names the configuration to change. The crash is simulated here."""

from __future__ import annotations

import warnings

import pytest
import torch
from batches import assert_matches, paged_batch, poisoned_like
from triton.runtime.errors import PTXASError

from triton_attn_kernels import AttentionConfig, DecodeConfig, PrefillConfig, _fallback, paged_attention
from triton_attn_kernels import attention as launcher
from triton_attn_kernels.reference import paged_attention_ref


class CrashingKernel:
    """attention_kernel, except that ptxas "crashes" on prefill launches for which
    ``crash(num_stages, tile_n)`` holds; records every prefill attempt."""

    def __init__(self, real, crash):
        self.real, self.crash, self.prefill_attempts = real, crash, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            if not kw["IS_DECODE"]:
                self.prefill_attempts.append((kw["TILE_N"], kw["num_stages"]))
                if self.crash(kw["num_stages"], kw["TILE_N"]):
                    raise PTXASError("PTXAS error: `ptxas` failed with error code -11 (simulated)")
            return self.real[grid](*args, **kw)

        return launch


@pytest.fixture
def crashing(monkeypatch):
    monkeypatch.setattr(_fallback, "_CHOSEN", {})

    def install(crash):
        kernel = CrashingKernel(launcher.attention_kernel, crash)
        monkeypatch.setattr(launcher, "attention_kernel", kernel)
        return kernel

    return install


CFG = AttentionConfig(prefill=PrefillConfig(block_m=16, tile_n=64, num_stages=3), decode=DecodeConfig(tile_n=16))


def attend(b):
    out = poisoned_like(b.q)
    paged_attention(*b.args(), **b.lens(), out=out, config=CFG)
    return out


def test_fewer_stages_then_remembered(crashing):
    kernel = crashing(lambda stages, tile_n: stages >= 2)
    b = paged_batch([1, 20, 7], [30, 20, 40], num_q_heads=4, num_kv_heads=2)
    with pytest.warns(RuntimeWarning, match="ptxas failed"):
        out = attend(b)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert kernel.prefill_attempts == [(64, 3), (64, 2), (64, 1)]
    # Same specialisation again: straight to the tiles that compiled, no warning.
    kernel.prefill_attempts.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = attend(b)
    assert kernel.prefill_attempts == [(64, 1)]
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)


def test_narrower_tiles_when_stages_do_not_help(crashing):
    kernel = crashing(lambda stages, tile_n: tile_n == 64)
    b = paged_batch([20], [50], num_q_heads=4, num_kv_heads=2)
    with pytest.warns(RuntimeWarning):
        out = attend(b)
    assert kernel.prefill_attempts[-1] == (32, 2)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)


def test_nothing_compiles_names_the_config(crashing):
    crashing(lambda stages, tile_n: True)
    b = paged_batch([20], [50], num_q_heads=4, num_kv_heads=2)
    with pytest.raises(RuntimeError, match=r"ptxas failed on \(tile_n, num_warps, num_stages\)=\(64, 4, 3\)"):
        attend(b)


def test_alternatives():
    assert _fallback.alternatives(64, 4, 3) == [(64, 4, 2), (64, 4, 1), (32, 4, 2), (32, 4, 1)]
    assert _fallback.alternatives(32, 8, 2) == [(32, 8, 1)]
    assert _fallback.alternatives(16, 4, 1) == []
