"""Random cases of the public kernels against the reference (cases drawn by fuzzing.py).

On a GPU: ``--fuzz-cases`` random cases from ``--fuzz-seed`` on (``gpu`` and ``slow``), the
fixed large cases, and one seed that needs the launcher's ptxas fallback. Everywhere: a few
cases drawn with the ``SMALL`` limits, so that the drawing and checking code runs on every
CPU test run and cannot break unnoticed. A failing case prints its seed; run it alone with
``pytest test_fuzz.py -k SEED``.
"""

from __future__ import annotations

import pytest
from fuzzing import SMALL, SPECIALS, Limits, Outcome, run_case

# A prefill specialisation (head_dim 64, 8 query heads per KV head, fp16, sinks, block_m 128,
# 3 stages) that Triton 3.6's ptxas crashes on: the launcher must fall back to other tiles.
PTXAS_CRASH_SEED = 1_000_048


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "random_seed" in metafunc.fixturenames:
        first = metafunc.config.getoption("--fuzz-seed")
        count = metafunc.config.getoption("--fuzz-cases")
        seeds = [s for s in range(first, first + count) if s != PTXAS_CRASH_SEED]
        metafunc.parametrize("random_seed", seeds)


def expect_pass(outcome: Outcome) -> None:
    """A documented refusal (ValueError/TypeError for a draw the API rejects) or an
    out-of-memory case is a skip, with its reason; anything but a pass otherwise fails."""
    if outcome.status in ("refused", "oom"):
        pytest.skip(f"{outcome.status}: {outcome.detail[:500]}")
    assert outcome.status == "passed", (
        f"{outcome.kind} case, seed {outcome.seed}: {outcome.status}\n{outcome.detail[:3000]}\ncase: {outcome.desc}"
    )


@pytest.mark.gpu
@pytest.mark.slow
def test_random_case(random_seed: int) -> None:
    expect_pass(run_case(random_seed, Limits()))


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("special", SPECIALS)
def test_fixed_large_case(special: str) -> None:
    expect_pass(run_case(999_999 - SPECIALS.index(special), Limits(), special))


@pytest.mark.gpu
def test_case_needing_the_ptxas_fallback() -> None:
    expect_pass(run_case(PTXAS_CRASH_SEED, Limits()))


@pytest.mark.parametrize("seed", range(2_000_000, 2_000_012))
def test_small_random_case(seed: int) -> None:
    expect_pass(run_case(seed, SMALL))


@pytest.mark.slow
@pytest.mark.parametrize("special", [s for s in SPECIALS if s != "kv_max_block_big_cache"])
def test_small_fixed_case(special: str) -> None:
    expect_pass(run_case(1_999_999 - SPECIALS.index(special), SMALL, special))
