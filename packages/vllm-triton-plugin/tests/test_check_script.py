"""gpu/check_vllm.py without a GPU: its verdict (near-tie vs clear-margin divergences), the
weight draw that makes greedy tokens comparable, the prompts and the command line."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "gpu" / "check_vllm.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_vllm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_vllm"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _run(tokens: list[list[int]], margins: list[list[float]], chosen: float = -0.1) -> dict:
    """An engine's result: per position the chosen token at logprob ``chosen`` and a
    runner-up ``margin`` nats below it."""
    top = [
        [[[t, chosen], [t + 1, chosen - m]] for t, m in zip(prompt, ms, strict=True)]
        for prompt, ms in zip(tokens, margins, strict=True)
    ]
    return {"tokens": tokens, "top_logprobs": top}


def test_identical_runs(check) -> None:
    tokens = [[5, 6, 7], [8, 9, 10]]
    ref = _run(tokens, [[1.0] * 3] * 2)
    c = check.compare_runs(_run(tokens, [[1.0] * 3] * 2, chosen=-0.13), ref, tie_margin=0.05)
    assert c["same"] == 2 and c["prompts"] == 2
    assert c["divergences"] == [] and c["clear"] == []
    assert c["positions"] == 6
    assert math.isclose(c["max_diff"], 0.03) and math.isclose(c["mean_diff"], 0.03)


def test_divergence_at_near_tie_is_noise_and_at_margin_is_a_bug(check) -> None:
    ref = _run([[5, 6, 7], [8, 9, 10]], [[1.0, 0.01, 1.0], [1.0, 1.0, 0.5]])
    run = _run([[5, 60, 7], [8, 9, 11]], [[1.0, 0.02, 1.0], [1.0, 1.0, 0.5]])
    c = check.compare_runs(run, ref, tie_margin=0.05)
    assert c["same"] == 0
    assert [(d["prompt"], d["position"]) for d in c["divergences"]] == [(0, 1), (1, 2)]
    assert c["divergences"][0]["tokens"] == (60, 6)
    assert math.isclose(c["divergences"][0]["ref_margin"], 0.01)
    assert math.isclose(c["divergences"][0]["margin"], 0.02)
    # Only prompt 1's divergence happened where the reference was sure of its token.
    assert [d["prompt"] for d in c["clear"]] == [1]
    # Logprobs are compared only before each prompt's first divergence: 1 + 2 positions.
    assert c["positions"] == 3


def test_logprob_difference_of_the_chosen_token(check) -> None:
    ref = _run([[5, 6]], [[1.0, 1.0]], chosen=-0.5)
    run = _run([[5, 6]], [[1.0, 1.0]], chosen=-0.25)
    run["top_logprobs"][0][1][0][1] = -0.5  # equal at position 1
    c = check.compare_runs(run, ref, tie_margin=0.05)
    assert c["same"] == 1
    assert math.isclose(c["max_diff"], 0.25) and math.isclose(c["mean_diff"], 0.125)


def test_prompts(check) -> None:
    prompts = check.make_prompts(32, seed=0, vocab_size=512, max_len=200)
    assert len(prompts) == 32 and max(map(len, prompts)) <= 200
    assert all(51 <= t < 512 - 51 for p in prompts for t in p)
    shared = [p for i, p in enumerate(prompts) if i % 8 == 7]
    assert all(p[:50] == shared[0][:50] for p in shared)
    assert check.make_prompts(32, seed=0, vocab_size=512, max_len=200) == prompts


def test_help() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--engines", "--tie-margin", "--logprobs", "--live-vocab", "--dtype", "--cpu", "--num-layers"):
        assert flag in out
