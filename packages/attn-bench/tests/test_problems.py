import pytest

from attn_bench import metrics
from attn_bench.problems import Problem, list_suites, load_suite


def test_every_suite_loads_and_quick_is_a_subset():
    names = list_suites()
    assert {"decode", "prefill", "mixed", "kv-write", "smoke", "default"} <= set(names)
    for name in names:
        s = load_suite(name)
        assert s.problems, name
        assert set(s.quick) <= set(s.problems), name
        assert len(set(s.problems)) == len(s.problems), f"{name} has duplicate cases"


def test_default_is_the_union_of_the_main_suites():
    default = set(load_suite("default").problems)
    for name in ("decode", "verify", "prefill", "mixed", "kv-write"):
        assert set(load_suite(name).problems) <= default


def test_decode_suite_covers_the_issue_grid():
    ps = load_suite("decode").problems
    assert {p.batch for p in ps} >= {1, 16, 64, 256}
    assert {p.context for p in ps} >= {1024, 32768}
    assert {p.head_dim for p in ps} == {64, 128, 256}
    assert any(p.num_q_heads == 64 for p in ps)
    assert any(p.fp8 for p in ps)
    assert all(p.kv_tokens <= 1 << 20 for p in ps)


def test_prefill_has_fresh_and_prefixed_cases():
    ps = load_suite("prefill").problems
    assert any(p.q_len == p.context for p in ps)
    assert any(p.q_len < p.context for p in ps)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op": "decode", "batch": 1, "context": 8, "q_len": 2},
        {"op": "prefill", "batch": 1, "context": 8, "q_len": 9},
        {"op": "nope", "batch": 1, "context": 8},
        {"op": "decode", "batch": 1, "context": 8, "num_q_heads": 6, "num_kv_heads": 4},
        {"op": "mixed", "batch": 1, "context": 8},
        {"op": "decode", "batch": 1, "context": 8, "kv_dtype": "int8"},
    ],
)
def test_invalid_problems_raise(kwargs):
    with pytest.raises(ValueError):
        Problem(**kwargs)


def test_mixed_sequences_put_decodes_first():
    p = Problem(op="mixed", batch=2, context=100, chunks=1, chunk_len=30, chunk_context=50)
    assert p.seqs() == [(1, 100), (1, 100), (30, 50)]
    assert p.num_tokens == 32 and p.kv_tokens == 250 and p.max_seqlen_q == 30


def test_metrics_match_anchor_conventions():
    # ANCHORS.md: batch 1, 8k decode at 34.6 us is 970 GB/s (K and V read once).
    p = Problem(op="decode", batch=1, context=8192)
    assert metrics.bytes_moved(p) / 34.6e-6 / 1e9 == pytest.approx(970, rel=0.01)
    # Causal prefill: 2 * 2 * B * Hq * D * L^2 / 2.
    f = Problem(op="prefill", batch=4, context=4096, q_len=4096)
    assert metrics.flops(f) == 2 * 2 * 4 * 32 * 128 * 4096**2 / 2
    fp8 = Problem(op="decode", batch=1, context=8192, kv_dtype="float8_e4m3fn")
    assert metrics.bytes_moved(fp8) == metrics.bytes_moved(p) / 2
    w = Problem(op="kv_write", batch=2, context=16, q_len=16)
    assert metrics.flops(w) == 0 and metrics.bytes_moved(w) == 2 * 32 * 8 * 128 * (2 + 2)


def test_verify_suite_covers_speculative_verification():
    ps = load_suite("verify").problems
    assert {p.q_len for p in ps} == {2, 4, 8, 16}
    assert {p.batch for p in ps} == {1, 16, 64} and {p.context for p in ps} == {4096, 32768}
    assert any(p.fp8 for p in ps)


def test_tp_suite_has_every_per_rank_share_of_70b():
    shares = {(64 // tp, 8 // tp) for tp in (2, 4, 8)}
    for ps in (load_suite("tp").problems, load_suite("tp").quick):
        for op in ("decode", "prefill"):
            assert {(p.num_q_heads, p.num_kv_heads) for p in ps if p.op == op} == shares, op
