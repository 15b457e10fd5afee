"""attn-bench times each launch the way vLLM runs it: the fp8 prefill (which vLLM runs
outside any CUDA graph, and which takes another route while a graph records) by events
around eager calls, everything else as CUDA-graph replays; the runner passes the provider's
choice to the timer."""

from __future__ import annotations

import pytest
import torch

from attn_bench import runner
from attn_bench.inputs import make_inputs
from attn_bench.problems import Problem
from attn_bench.providers.ours import eager_in_vllm, ours_paged
from attn_bench.registry import get

GEOMETRY = dict(num_q_heads=4, num_kv_heads=2, head_dim=32, dtype="float16", block_size=16)
FP8 = "float8_e4m3fn"

CASES = [
    (Problem(op="prefill", batch=1, context=48, q_len=48, kv_dtype=FP8, **GEOMETRY), True),
    (Problem(op="prefill", batch=2, context=64, q_len=24, kv_dtype=FP8, **GEOMETRY), True),
    (
        Problem(op="mixed", batch=2, context=40, chunks=1, chunk_len=24, chunk_context=32, kv_dtype=FP8, **GEOMETRY),
        True,
    ),
    (Problem(op="decode", batch=2, context=40, kv_dtype=FP8, **GEOMETRY), False),
    (Problem(op="prefill", batch=2, context=40, q_len=4, kv_dtype=FP8, **GEOMETRY), False),  # verification
    (Problem(op="prefill", batch=1, context=48, q_len=48, kv_dtype="float16", **GEOMETRY), False),
    (
        Problem(
            op="mixed", batch=2, context=40, chunks=1, chunk_len=24, chunk_context=32, kv_dtype="float16", **GEOMETRY
        ),
        False,
    ),
]


@pytest.mark.parametrize(
    ("p", "eager"), CASES, ids=lambda c: c.label().replace(" ", "-") if isinstance(c, Problem) else str(c)
)
def test_provider_times_fp8_prefill_eagerly(p: Problem, eager: bool) -> None:
    assert eager_in_vllm(p) is eager
    assert ours_paged(make_inputs(p, "cpu", seed=0)).graph is (not eager)


def test_runner_passes_the_providers_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = runner.measure

    def spy(fn, device, **kw):  # type: ignore[no-untyped-def]
        seen.append(kw["graph"])
        return real(fn, device, **kw)

    monkeypatch.setattr(runner, "measure", spy)
    prov = get("ours-paged")
    base = {"ceiling_gbps": 1.0, "ceiling_tflops": 1.0}
    for p, _ in CASES[:1] + CASES[3:4]:
        row = runner._one(prov, make_inputs(p, "cpu", seed=1), torch.device("cpu"), 1, base)
        assert row["status"] == "ok", row
    assert seen == [False, True]
