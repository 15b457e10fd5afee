"""The parts of ``attn-bench check-vllm`` and ``attn-bench soak`` that need no engine: the
verdict (near-tie against clear-margin divergences), the prompts, the options an engine's
process receives, and the soak's answer parsing and rerun comparison."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from attn_bench import check_vllm, soak
from attn_bench.cli import build_parser


def _run(tokens: list[list[int]], margins: list[list[float]], chosen: float = -0.1) -> dict:
    """An engine's result: per position the chosen token at logprob ``chosen`` and a
    runner-up ``margin`` nats below it."""
    top = [
        [[[t, chosen], [t + 1, chosen - m]] for t, m in zip(prompt, ms, strict=True)]
        for prompt, ms in zip(tokens, margins, strict=True)
    ]
    return {"tokens": tokens, "top_logprobs": top}


def test_identical_runs() -> None:
    tokens = [[5, 6, 7], [8, 9, 10]]
    ref = _run(tokens, [[1.0] * 3] * 2)
    c = check_vllm.compare_runs(_run(tokens, [[1.0] * 3] * 2, chosen=-0.13), ref, tie_margin=0.05)
    assert c["same"] == 2 and c["prompts"] == 2
    assert c["divergences"] == [] and c["clear"] == []
    assert c["positions"] == 6
    assert math.isclose(c["max_diff"], 0.03) and math.isclose(c["mean_diff"], 0.03)


def test_divergence_at_near_tie_is_noise_and_at_margin_is_a_bug() -> None:
    ref = _run([[5, 6, 7], [8, 9, 10]], [[1.0, 0.01, 1.0], [1.0, 1.0, 0.5]])
    run = _run([[5, 60, 7], [8, 9, 11]], [[1.0, 0.02, 1.0], [1.0, 1.0, 0.5]])
    c = check_vllm.compare_runs(run, ref, tie_margin=0.05)
    assert c["same"] == 0
    assert [(d["prompt"], d["position"]) for d in c["divergences"]] == [(0, 1), (1, 2)]
    assert c["divergences"][0]["tokens"] == (60, 6)
    assert math.isclose(c["divergences"][0]["ref_margin"], 0.01)
    assert math.isclose(c["divergences"][0]["margin"], 0.02)
    # Only prompt 1's divergence happened where the reference was sure of its token.
    assert [d["prompt"] for d in c["clear"]] == [1]
    # Logprobs are compared only before each prompt's first divergence: 1 + 2 positions.
    assert c["positions"] == 3


def test_logprob_difference_of_the_chosen_token() -> None:
    ref = _run([[5, 6]], [[1.0, 1.0]], chosen=-0.5)
    run = _run([[5, 6]], [[1.0, 1.0]], chosen=-0.25)
    run["top_logprobs"][0][1][0][1] = -0.5  # equal at position 1
    c = check_vllm.compare_runs(run, ref, tie_margin=0.05)
    assert c["same"] == 1
    assert math.isclose(c["max_diff"], 0.25) and math.isclose(c["mean_diff"], 0.125)


def test_prompts() -> None:
    prompts = check_vllm.make_prompts(32, seed=0, vocab_size=512, max_len=200)
    assert len(prompts) == 32 and max(map(len, prompts)) <= 200
    assert all(51 <= t < 512 - 51 for p in prompts for t in p)
    shared = [p for i, p in enumerate(prompts) if i % 8 == 7]
    assert all(p[:50] == shared[0][:50] for p in shared)
    assert check_vllm.make_prompts(32, seed=0, vocab_size=512, max_len=200) == prompts


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_engine_process_gets_the_parents_options(tmp_path: Path) -> None:
    """The child's command line, parsed by the same CLI, reproduces every option that shapes
    the generation: an option left out would make the engines disagree for no kernel reason."""
    parent = check_vllm.resolve(
        _parse("check-vllm", "--kv-cache-dtype", "fp8", "--prompts", "8", "--tokens", "4", "--enforce-eager")
    )
    parent.live_vocab, parent.dead_scale, parent.dtype = 3, 0.0, "bfloat16"
    cmd = check_vllm.child_command("flash_attn", parent, tmp_path / "model", tmp_path / "out.json")
    assert cmd[1:4] == ["-m", "attn_bench", "check-vllm"]
    child = check_vllm.resolve(_parse(*cmd[3:]))
    assert child.child == "flash_attn" and child.model == tmp_path / "model"
    # Options only the parent acts on (which engines, how to judge them, where to write).
    parent_only = {"engines", "reference", "matrix", "serve", "serve_only", "port", "workdir"}
    parent_only |= {"min_match", "tie_margin", "child", "engine", "model", "out"}
    shared = set(vars(parent)) - parent_only
    assert {"dtype", "live_vocab", "kv_cache_dtype", "enforce_eager"} <= shared
    for name in sorted(shared):
        assert getattr(child, name) == getattr(parent, name), name


def test_option_defaults_follow_cpu_and_prompts() -> None:
    gpu = check_vllm.resolve(_parse("check-vllm", "--prompts", "64"))
    assert (gpu.max_model_len, gpu.max_num_batched_tokens, gpu.min_match, gpu.enforce_eager) == (4096, 512, 58, False)
    cpu = check_vllm.resolve(_parse("check-vllm", "--cpu"))
    assert (cpu.max_model_len, cpu.max_num_batched_tokens, cpu.min_match, cpu.enforce_eager) == (512, 64, 29, True)
    with pytest.raises(ValueError, match="--logprobs"):
        check_vllm.resolve(_parse("check-vllm", "--logprobs", "1"))


def test_soak_model_process_gets_the_parents_options(tmp_path: Path) -> None:
    parent = soak.resolve(_parse("soak", "--tiny", "--weights", "random", "--seed", "7"))
    cmd = soak.prepare_command(parent, tmp_path)
    child = soak.resolve(_parse(*cmd[3:]))
    assert child.prepare_only and child.workdir == tmp_path
    for name in ("tiny", "num_layers", "weights", "weight_std", "seed", "dtype", "max_prompt", "max_tokens"):
        assert getattr(child, name) == getattr(parent, name), name
    with pytest.raises(ValueError, match="max-model-len"):
        soak.resolve(_parse("soak", "--max-prompt", "4090"))


def test_soak_answer_parsing_counts_non_finite_logprobs() -> None:
    body = {
        "choices": [
            {
                "token_ids": [11, 12],
                "logprobs": {
                    "token_logprobs": [-0.1, float("nan")],
                    "top_logprobs": [{"a": -0.1, "b": -0.9}, {"c": -9999.0, "d": -10000.0}],
                },
            }
        ]
    }
    answer = soak.parse_answer(body)
    assert answer.tokens == [11, 12]
    assert math.isclose(answer.margins[0], 0.8)
    # the NaN token logprob and both -inf sentinels of the second position
    assert answer.nonfinite == 3


def test_soak_divergence_is_a_near_tie_only_when_a_margin_is_small() -> None:
    a = soak.Answer([1, 2, 3], [1.0, 1.0, 1.0], 0)
    assert soak.divergence(a, soak.Answer([1, 2, 3], [1.0, 1.0, 1.0], 0), tie=0.2) is None
    clear = soak.divergence(a, soak.Answer([1, 5, 3], [1.0, 0.9, 1.0], 0), tie=0.2)
    assert clear == dict(position=1, margin_a=1.0, margin_b=0.9, near_tie=False)
    tie = soak.divergence(a, soak.Answer([1, 5, 3], [1.0, 0.1, 1.0], 0), tie=0.2)
    assert tie is not None and tie["near_tie"]
    shorter = soak.divergence(a, soak.Answer([1, 2], [1.0, 1.0], 0), tie=0.2)
    assert shorter is not None and shorter["position"] == 2


def test_soak_abandons_the_share_asked_for_in_both_ways_and_the_same_each_run() -> None:
    plans = [soak.abandon_plan(i, 0.25, 48, seed=3) for i in range(4000)]
    again = [soak.abandon_plan(i, 0.25, 48, seed=3) for i in range(4000)]
    assert plans == again
    chosen = [p for p in plans if p is not None]
    assert 0.22 < len(chosen) / len(plans) < 0.28
    early = [p for p in chosen if p.chunks == 0]
    mid = [p for p in chosen if p.chunks]
    assert 0.4 < len(early) / len(chosen) < 0.6
    assert all(0.0 <= p.after_s <= 0.5 for p in early)
    # mid-stream: at least one token read, and never the whole answer
    assert min(p.chunks for p in mid) >= 1 and max(p.chunks for p in mid) <= 47
    assert all(soak.abandon_plan(i, 0.0, 48, seed=3) is None for i in range(200))
    with pytest.raises(ValueError, match="abandon-share"):
        soak.resolve(_parse("soak", "--abandon-share", "1"))


def test_soak_reads_the_engines_queue_from_prometheus_text() -> None:
    text = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:num_requests_running_created{engine="0"} 1.7e9
"""
    assert soak.parse_queue(text) == {"running": 4.0, "waiting": 0.0, "kv_cache_usage": 0.25}
