import dataclasses
import math

import pytest

from attn_bench import cli
from attn_bench.results import COLUMNS, Row, compare, fill_baselines, markdown_summary, read_csv, write_csv


def test_columns_are_the_dataclass_fields_and_contain_the_issue_fields():
    from attn_bench.problems import PROBLEM_FIELDS

    assert COLUMNS == tuple(f.name for f in dataclasses.fields(Row))
    assert set(PROBLEM_FIELDS) <= set(COLUMNS), "Row must carry every Problem field"
    needed = {"op", "provider", "batch", "context", "head_dim", "kv_dtype", "p20_us", "p50_us", "p80_us", "gbps",
              "tflops", "pct_roofline", "ratio_to_baseline", "device", "torch", "triton", "vllm", "git_sha"}  # fmt: skip
    assert needed <= set(COLUMNS)


def test_csv_round_trip(tmp_path, synthetic):
    rows = [synthetic("a", 10.0), synthetic("b", 20.0), synthetic("c", 1.0, status="skipped")]
    write_csv(rows, tmp_path / "r.csv")
    back = read_csv(tmp_path / "r.csv")
    assert len(back) == 3
    assert back[0].p50_us == 10.0 and back[0].batch == 1 and back[0].op == "decode"
    assert math.isnan(back[2].p50_us) and back[2].detail == "not installed"
    assert back[1].problem() == rows[1].problem()


def test_read_rejects_other_csvs(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError):
        read_csv(tmp_path / "x.csv")


def test_baseline_ratio_and_summary(synthetic):
    rows = [synthetic("ours-paged", 10.0), synthetic("torch-sdpa", 20.0), synthetic("vllm-fa3", 1.0, status="skipped")]
    fill_baselines(rows, {"decode": ("vllm-fa3", "torch-sdpa")})
    assert rows[0].baseline == "torch-sdpa" and rows[0].ratio_to_baseline == pytest.approx(2.0)
    md = markdown_summary(rows, {"device": "Synthetic GPU"})
    assert "ours-paged" in md and "2.00x" in md and "not installed" in md


def test_compare_flags_regressions(tmp_path, capsys, synthetic):
    old = [synthetic("a", 10.0), synthetic("b", 10.0, batch=2), synthetic("c", 10.0, batch=4)]
    new = [synthetic("a", 12.0), synthetic("b", 10.1, batch=2), synthetic("c", 8.0, batch=4)]
    cmp = compare(old, new, threshold=0.05)
    flags = {c.provider: c.flag for c in cmp}
    assert flags == {"a": "regression", "b": "", "c": "improvement"}
    write_csv(old, tmp_path / "old.csv")
    write_csv(new, tmp_path / "new.csv")
    assert cli.main(["compare", str(tmp_path / "old.csv"), str(tmp_path / "new.csv")]) == 0
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "1 regressions" in out
    assert cli.main(["compare", str(tmp_path / "old.csv"), str(tmp_path / "new.csv"), "--fail-on-regression"]) == 1


def test_anchors_set_a_run_beside_anchors_md(tmp_path, synthetic):
    from attn_bench.anchors import anchors_markdown, check_anchors

    rows = [
        synthetic("vllm-triton", 34.6 * 1.2, batch=1, context=8192),
        synthetic("vllm-fa3", 16.0, batch=1, context=8192),
    ]
    write_csv(rows, tmp_path / "r.csv")
    checks = {(c.what, c.provider): c for c in check_anchors(tmp_path / "r.csv", None)}
    assert checks[("decode b1 ctx8192", "vllm-triton")].ratio() == pytest.approx(1.2)
    assert checks[("decode b32 ctx32768", "vllm-fa3")].measured is None
    md = anchors_markdown(list(checks.values()), 0.10)
    assert "**differs**" in md and "not in run" in md


def test_merge_combines_run_folders(tmp_path, synthetic):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_csv([synthetic("ours-paged", 10.0), synthetic("torch-sdpa", 20.0)], a / "results.csv")
    write_csv([synthetic("ours-paged", 8.0), synthetic("ours-paged", 5.0, batch=2)], b / "results.csv")
    assert cli.main(["merge", str(a), str(b), "--out", str(tmp_path / "m"), "--no-plot"]) == 0
    rows = {(r.provider, r.batch): r for r in read_csv(tmp_path / "m" / "results.csv")}
    assert set(rows) == {("ours-paged", 1), ("torch-sdpa", 1), ("ours-paged", 2)}
    assert rows[("ours-paged", 1)].p50_us == 8.0  # the later folder wins
    assert (tmp_path / "m" / "summary.md").exists()
