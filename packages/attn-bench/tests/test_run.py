"""A tiny end-to-end run of the runner on the smoke suite (Triton interpreter on CPU)."""

import torch

from attn_bench import registry
from attn_bench.registry import Timed, provider
from attn_bench.results import read_csv
from attn_bench.runner import RunOptions, run


def test_smoke_run_writes_csv_markdown_and_plots(tmp_path):
    out = run(
        RunOptions(
            suites=["smoke"],
            providers=[
                "ours-paged",
                "ours-paged-generic",
                "torch-sdpa",
                "vllm-fa3",
                "ours-kv-write",
                "torch-kv-write",
            ],
            out=tmp_path,
            quick=True,
            runs=1,
            only=["decode", "kv_write"],
        )
    )
    rows = read_csv(out / "results.csv")
    by = {(r.provider, r.label): r for r in rows}
    ok = [r for r in rows if r.status == "ok"]
    assert {r.provider for r in ok} >= {
        "ours-paged",
        "ours-paged-generic",
        "torch-sdpa",
        "ours-kv-write",
        "torch-kv-write",
    }
    assert all(r.p20_us <= r.p50_us <= r.p80_us for r in ok), [(r.provider, r.p20_us, r.p50_us, r.p80_us) for r in ok]
    assert all(r.max_err <= 0.05 for r in ok), [(r.provider, r.label, r.max_err) for r in ok]
    # A missing peer is listed with its reason, never dropped.
    fa3 = [r for r in rows if r.provider == "vllm-fa3" and r.op == "decode"]
    assert fa3 and all(r.status == "skipped" and r.detail for r in fa3)
    assert not [r for r in rows if r.status in ("error", "wrong")], [(r.provider, r.detail) for r in rows]
    assert any(r.ratio_to_baseline == 1.0 for r in ok), [(r.provider, r.baseline, r.ratio_to_baseline) for r in ok]
    assert by and (out / "summary.md").read_text().count("NOT performance numbers") >= 1
    assert list((out / "plots").glob("*.png"))


def test_a_wrong_provider_is_reported_not_timed(tmp_path):
    name = "test-wrong-zeros"

    @provider(name, ops=("decode",))
    def zeros(x):
        out = torch.zeros_like(x.q)
        return Timed(lambda: out)

    broken = "test-raises"

    @provider(broken, ops=("decode",))
    def raises(x):
        def fn():
            raise RuntimeError("kernel exploded")

        return Timed(fn)

    try:
        out = run(RunOptions(suites=["smoke"], providers=[name, broken], out=tmp_path, max_cases=1, runs=1, plot=False))
    finally:
        registry.REGISTRY.pop(name)
        registry.REGISTRY.pop(broken)
    rows = {r.provider: r for r in read_csv(out / "results.csv")}
    assert rows[name].status == "wrong" and "error" in rows[name].detail and rows[name].runs == 0
    assert rows[broken].status == "error" and "kernel exploded" in rows[broken].detail
    assert "kernel exploded" in (out / "errors.log").read_text()


def test_append_keeps_earlier_rows(tmp_path):
    common = {"suites": ["smoke"], "out": tmp_path, "runs": 1, "plot": False, "max_cases": 1}
    run(RunOptions(providers=["torch-kv-write"], only=["kv_write"], **common))
    run(RunOptions(providers=["torch-sdpa"], only=["decode"], append=True, **common))
    rows = read_csv(tmp_path / "results.csv")
    assert {(r.provider, r.status) for r in rows} == {("torch-kv-write", "ok"), ("torch-sdpa", "ok")}
    run(RunOptions(providers=["torch-sdpa"], only=["decode"], append=True, **common))
    assert len(read_csv(tmp_path / "results.csv")) == 2  # the rerun replaced its row
