"""The tuner and its tools on CPU: atomic, locked writes; resume and budget; the reference
check that gates timing; import of a triton-dejavu cache; validate and show."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from triton_attn_kernels.tuner import bench, store
from triton_attn_kernels.tuner.__main__ import main
from triton_attn_kernels.tuner.dejavu import convert, parse_config, parse_key
from triton_attn_kernels.tuner.runner import RunOptions, run
from triton_attn_kernels.tuner.space import GEOMETRIES, Geometry, Shape, space_for
from triton_attn_kernels.tuning import ConfigSelector, DecodeConfig, DeviceInfo, KVWriteConfig
from triton_attn_kernels.tuning.tables import TableError, read_table

EXAMPLES = Path(__file__).parent / "test_tuning_data"
H100 = "NVIDIA H100 80GB HBM3"


def _entry(tokens: int, warps: int = 4) -> dict:
    key = {"head_dim": 128, "dtype": "bfloat16", "kv_dtype": "bfloat16", "num_kv_heads": 8, "num_tokens": tokens}
    return {"key": key, "config": {"num_warps": warps}, "time_us": 1.0 + tokens, "runner_up": None}


def _base() -> dict:
    return store.new_doc(
        "kv_write", H100, (9, 0), versions={"triton": "x", "torch": "y"}, config_space={"num_warps": [4]}
    )


def test_merge_creates_adds_and_replaces(tmp_path: Path) -> None:
    path = store.table_path(tmp_path, "kv_write", H100)
    store.merge_entries(path, _base(), [_entry(16), _entry(1)], duration_s=2.0)
    doc = store.merge_entries(path, _base(), [_entry(16, warps=8), _entry(64)], duration_s=3.0)
    assert [e["key"]["num_tokens"] for e in doc["entries"]] == [1, 16, 64]  # sorted by key
    assert doc["entries"][1]["config"] == {"num_warps": 8}
    assert doc["tuning"]["duration_s"] == 5.0
    assert read_table(path).entries  # valid for the reader
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary or lock files left


def test_each_command_that_wrote_to_a_table_is_recorded(tmp_path: Path) -> None:
    path = store.table_path(tmp_path, "kv_write", H100)

    def base(command: str) -> dict:
        doc = _base()
        doc["tuning"] = {"command": command}
        return doc

    store.merge_entries(path, base("tune --budget 30"), [_entry(1)])
    store.merge_entries(path, base("tune --budget 30"), [_entry(16)])  # resumed: the same command
    doc = store.merge_entries(path, base("tune --budget 60 --block-size 128"), [_entry(64)])
    assert doc["tuning"]["command"] == "tune --budget 30"
    assert doc["tuning"]["commands"] == ["tune --budget 30", "tune --budget 60 --block-size 128"]
    assert read_table(path).entries


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = store.table_path(tmp_path, "kv_write", H100)
    store.merge_entries(path, _base(), [_entry(1)])
    before = path.read_text()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr(store.json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        store.merge_entries(path, _base(), [_entry(2)])
    assert path.read_text() == before
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = store.table_path(tmp_path, "kv_write", H100)
    path.parent.mkdir(parents=True)
    path.write_text('{"schema_version": 1, "kern')
    with pytest.warns(RuntimeWarning, match="moved to"):
        doc = store.merge_entries(path, _base(), [_entry(1)])
    assert len(doc["entries"]) == 1
    assert Path(str(path) + ".corrupt").read_text().startswith('{"schema_version"')


def _writer(args: tuple[str, int]) -> None:
    root, worker = args
    path = store.table_path(Path(root), "kv_write", H100)
    for i in range(8):
        store.merge_entries(path, _base(), [_entry(1 + worker * 100 + i)])


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.map(_writer, [(str(tmp_path), w) for w in range(4)])
    doc = store.load_doc(store.table_path(tmp_path, "kv_write", H100))
    assert doc is not None and len(doc["entries"]) == 32


def _tiny_run(tmp_path: Path, kernel: str, budget: float = 60.0, **kw: object) -> tuple[dict, list[str]]:
    lines: list[str] = []
    opts = RunOptions(
        kernel=kernel,
        geometries=["tiny"],
        grid="smoke",
        budget_s=budget,
        out=tmp_path,
        device_name="CPU test",
        echo=lines.append,
        **kw,  # type: ignore[arg-type]
    )
    return run(opts), lines


def test_run_writes_resumes_and_honours_the_budget(tmp_path: Path) -> None:
    # Budget 0: the first shape still completes (every run makes progress), then it stops.
    summary, lines = _tiny_run(tmp_path, "kv_write", budget=0)
    assert summary["written"] == 1
    assert any("budget" in line and "resume" in line for line in lines)
    summary, lines = _tiny_run(tmp_path, "kv_write")
    assert (summary["written"], summary["skipped"]) == (1, 1)
    summary, _ = _tiny_run(tmp_path, "kv_write")
    assert (summary["written"], summary["skipped"]) == (0, 2)
    table = read_table(Path(summary["path"]))
    assert len(table.entries) == 2
    assert table.meta["tuning"]["duration_s"] > 0
    assert set(table.meta["config_space"]) == {"num_warps"}
    for entry in table.entries.values():
        assert entry.time_us and entry.heuristic_us and entry.runner_up is not None
    summary, _ = _tiny_run(tmp_path, "kv_write", fresh=True)
    assert (summary["written"], summary["skipped"]) == (2, 0)


def test_run_decode_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from triton_attn_kernels.tuner import space

    monkeypatch.setitem(space.GRIDS["smoke"], "decode", (Shape(2, 37),))
    # One compile worker: on CPU it only runs the interpreter, but exercises the hand-off.
    summary, lines = _tiny_run(tmp_path, "decode", jobs=1)
    assert "1 compile workers" in lines[0]
    assert summary["written"] == 1, lines
    table = read_table(Path(summary["path"]))
    ((key, entry),) = table.entries.items()
    assert key == (32, 2, "bfloat16", "bfloat16", 2, 2, 37, 16)  # the run's page size last
    assert isinstance(entry.config, DecodeConfig)
    # The written table serves that key at that page size exactly, and another page size as
    # the nearest entry (a page size's distance is counted, never a bar).
    sel = ConfigSelector(roots=[tmp_path], device=DeviceInfo("CPU test", None), under_interpreter=True)
    from triton_attn_kernels.tuning import AttentionProblem

    p = AttentionProblem(2, 4, 2, 32, 1, 37, "bfloat16", "bfloat16", 4, interpreter=True, block_size=16)
    assert sel.decode(p) == entry.config
    assert sel.stats()["decode"]["exact"] == 1
    assert sel.decode(replace(p, block_size=128)) == entry.config
    assert sel.stats()["decode"]["nearest"] == 1


def test_reference_check_rejects_wrong_output(monkeypatch: pytest.MonkeyPatch) -> None:
    case = bench.AttentionCase(
        "prefill", GEOMETRIES["tiny"], Shape(2, 40, 20), torch.bfloat16, torch.bfloat16, 16, torch.device("cpu")
    )
    config = space_for("prefill", 32, interpreter=True).stage1()[0]
    assert case.check(config) is None
    real = bench.paged_attention

    def off_by_a_bit(*args: object, **kwargs: object) -> torch.Tensor:
        out = real(*args, **kwargs)
        out[-1, 0, 0] += 0.5
        return out

    monkeypatch.setattr(bench, "paged_attention", off_by_a_bit)
    assert "max abs error" in (case.check(config) or "")

    kv = bench.KVWriteCase(GEOMETRIES["tiny"], Shape(3, 8, 8), torch.bfloat16, torch.bfloat16, 16, torch.device("cpu"))
    assert kv.check(KVWriteConfig(num_warps=2)) is None


def _dejavu_cache(tmp_path: Path) -> Path:
    folder = tmp_path / "dejavu_0.7" / "triton_3.2.0" / "cuda_12.4" / "gpu_NVIDIA_H100_80GB_HBM3" / "attn" / "x"
    folder.mkdir(parents=True)
    dtypes = "'torch.bfloat16', 'torch.bfloat16', 'torch.bfloat16', 'torch.int32'"
    cache = {
        "signature": "JITFunction(ibm_triton_lib.kernels:kernel_paged_attention_2d)",
        "total_bench_time_s": 12.5,
        "evaluated_configs": 16,
        "keys": ["num_query_heads", "num_kv_heads", "HEAD_SIZE", "MAX_SEQ_LEN", "num_seqs"],
        "cache": {
            f"('32', '8', '128', '1024', '1', {dtypes})": (
                "TILE_SIZE: 64, NUM_SEGMENTS: 8, num_warps: 4, num_ctas: 1, num_stages: 2, maxnreg: None"
            ),
            f"(32, 8, 128, 32768, 16, {dtypes})": "TILE_SIZE: 128, NUM_SEGMENTS: 4, num_warps: 8, num_stages: 3",
            f"('32', '8', '128', '1024', '1', {dtypes.replace('bfloat16', 'float16')})": "TILE_SIZE: 32, num_warps: 2",
        },
        "timings": {
            f"('32', '8', '128', '1024', '1', {dtypes})": [0.0091],
            f"(32, 8, 128, 32768, 16, {dtypes})": {"values": [0.25, 0.24, 0.3], "lables": ["ms", "min_ms", "max_ms"]},
        },
    }
    path = folder / "cache.json"
    path.write_text(json.dumps(cache))
    return path


def test_parse_dejavu_strings() -> None:
    assert parse_key("('32', 8, 'torch.float16')") == ("32", "8", "torch.float16")
    assert parse_key("(32, 8, torch.float16)") == ("32", "8", "torch.float16")  # not a Python literal
    assert parse_config("BLOCK_M: 64, num_warps: 4, maxnreg: None") == {
        "BLOCK_M": "64",
        "num_warps": "4",
        "maxnreg": "None",
    }


def test_import_dejavu(tmp_path: Path) -> None:
    src = _dejavu_cache(tmp_path)
    doc, notes = convert(src, "decode")
    assert doc["device"] == {"name": H100, "capability": [9, 0]}
    assert doc["versions"]["triton"] == "3.2.0" and doc["tuning"]["duration_s"] == 12.5
    keys = [
        (e["key"]["dtype"], e["key"]["num_seqs"], e["key"]["max_seqlen_k"], e["key"]["group"]) for e in doc["entries"]
    ]
    assert keys == [("bfloat16", 1, 1024, 4), ("bfloat16", 16, 32768, 4), ("float16", 1, 1024, 4)]
    first, second, third = doc["entries"]
    assert first["config"] == {
        "tile_n": 64,
        "num_splits": 8,
        "num_warps": 4,
        "num_stages": 2,
        "prefetch_pages": 0,
        "gluon": 0,
    }
    assert first["time_us"] == pytest.approx(9.1)
    assert second["config"] == {
        "tile_n": 128,
        "num_splits": 4,
        "num_warps": 8,
        "num_stages": 3,
        "prefetch_pages": 0,
        "gluon": 0,
    }
    assert second["time_us"] == pytest.approx(250.0)
    # Fields the file does not give keep the config's defaults; no timing -> null.
    assert third["config"] == {**DecodeConfig().__dict__, "tile_n": 32, "num_warps": 2}
    assert third["time_us"] is None
    assert notes == []

    # Through the CLI: written to OUT/decode/<device>.json, valid, and served by the lookup.
    out = tmp_path / "tables"
    assert main(["import-dejavu", str(src), "--kernel", "decode", "--out", str(out)]) == 0
    path = out / "decode" / "NVIDIA_H100_80GB_HBM3.json"
    assert main(["validate", str(path)]) == 0
    sel = ConfigSelector(roots=[out], device=DeviceInfo(H100, (9, 0)))
    from triton_attn_kernels.tuning import AttentionProblem

    assert sel.decode(AttentionProblem(16, 32, 8, 128, 1, 32768, "bfloat16", "bfloat16", 132)).tile_n == 128


def test_import_dejavu_reports_what_it_cannot_map(tmp_path: Path) -> None:
    src = _dejavu_cache(tmp_path)
    doc, notes = convert(src, "prefill")  # no max_seqlen_q in these keys
    assert doc["entries"] == [] and len(notes) == 3 and "max_seqlen_q" in notes[0]
    doc, notes = convert(src, "prefill", constants={"max_seqlen_q": "1"}, mapping={"TILE_SIZE": "tile_n"})
    assert len(doc["entries"]) == 3 and doc["entries"][0]["config"]["tile_n"] == 64
    bad = tmp_path / "not_dejavu.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a triton-dejavu"):
        convert(bad, "decode", device_name="X")
    assert main(["import-dejavu", str(bad), "--kernel", "decode", "--device", "X"]) == 2


def test_validate_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = EXAMPLES / "decode" / "NVIDIA_H100_80GB_HBM3.json"
    assert main(["validate", str(good)]) == 0
    misplaced = tmp_path / "prefill" / "NVIDIA_H100_80GB_HBM3.json"
    misplaced.parent.mkdir()
    misplaced.write_text(good.read_text())
    broken = tmp_path / "decode" / "NVIDIA_H100_80GB_HBM3.json"
    broken.parent.mkdir()
    broken.write_text(good.read_text()[:-40])
    assert main(["validate", str(misplaced), str(broken)]) == 1
    out = capsys.readouterr().out
    assert out.count("INVALID") == 2 and "folder 'prefill'" in out
    assert main(["show", str(good)]) == 0
    out = capsys.readouterr().out
    assert "max_seqlen_k" in out and "runner-up" in out and "1.27x" in out
    with pytest.raises(TableError):
        read_table(broken)
    assert main(["show"]) == 0  # lists the tables found


def test_nox_tune_default_command_runs() -> None:
    assert main(["validate"]) == 0  # every shipped table (none yet is fine)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["decode", "prefill", "kv_write"])
def test_run_on_gpu(tmp_path: Path, kernel: str) -> None:
    """The CUDA path: compile workers, CUDA-graph timing, reference gate; tiny shapes."""
    summary, lines = _tiny_run(tmp_path, kernel, budget=120, jobs=2, reps=5)
    assert summary["written"] == 2, lines
    table = read_table(Path(summary["path"]))
    assert table.capability is not None and "CUDA-graph" in table.meta["tuning"]["timing"]
    assert all(e.time_us and e.heuristic_us and e.time_us <= e.heuristic_us * 1.01 for e in table.entries.values())
    assert main(["validate", summary["path"]]) == 0


def test_prefill_space_never_offers_tma_and_offers_gluon_only_where_pages_hold_whole_tiles():
    from triton_attn_kernels.tuner.space import space_for

    for block_size in (16, 64, 128):
        assert "tma" not in space_for("prefill", 128, block_size=block_size).declared()
    assert "gluon" not in space_for("prefill", 128, block_size=16).declared()
    space = space_for("prefill", 128, block_size=64)
    assert space.declared()["gluon"] == [0, 1]
    configs = space.stage2(space.stage1())
    assert not any(c.tma for c in configs)
    with_gluon = [c for c in configs if c.gluon]
    assert with_gluon and all(64 % c.tile_n == 0 for c in with_gluon)
    assert any(c.tile_n == 128 and not c.gluon for c in configs)


# V narrower than q/k, as in an MLA model's prefill (192 and 128), at CPU sizes.
_DV_GEOMETRY = Geometry(4, 2, 64, 32)


def test_paged_rows_ref_with_v_of_its_own_head_size() -> None:
    """The tuner's reference rows against plain softmax attention over the gathered cache."""
    from triton_attn_kernels.testing import paged_rows_ref

    case = bench.AttentionCase(
        "prefill", _DV_GEOMETRY, Shape(1, 40, 20), torch.float32, torch.float32, 16, torch.device("cpu")
    )
    g, n, q_len = _DV_GEOMETRY, 40, 20
    pages = case.block_table[0]
    k = case.k_cache[pages].reshape(-1, g.num_kv_heads, g.head_dim)[:n].repeat_interleave(g.num_q_heads // 2, 1)
    v = case.v_cache[pages].reshape(-1, g.num_kv_heads, 32)[:n].repeat_interleave(g.num_q_heads // 2, 1)
    logits = torch.einsum("qhd,khd->hqk", case.q, k) * g.head_dim**-0.5
    mask = torch.arange(n)[None, :] > torch.arange(n - q_len, n)[:, None]
    want = torch.einsum("hqk,khd->qhd", logits.masked_fill(mask, float("-inf")).softmax(-1), v)
    batch = (case.q, case.k_cache, case.v_cache, case.block_table, case.seq_lens, case.cu_seqlens_q)
    got = paged_rows_ref(*batch, seq=0, rows=(3, 11), scale=g.head_dim**-0.5)
    assert got.shape == (8, 4, 32)
    torch.testing.assert_close(got, want[3:11], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kernel", "shape"), [("decode", Shape(2, 37)), ("prefill", Shape(2, 40, 20))])
def test_attention_case_with_v_of_its_own_head_size(kernel: str, shape: Shape, monkeypatch: pytest.MonkeyPatch) -> None:
    case = bench.AttentionCase(kernel, _DV_GEOMETRY, shape, torch.float16, torch.float16, 16, torch.device("cpu"))
    assert case.v_cache.shape[-1] == case.out.shape[-1] == 32
    assert case.problem(4, True).head_dim_v == 32
    config = space_for(kernel, _DV_GEOMETRY.widest_head_dim, interpreter=True).stage1()[-1]
    assert case.check(config) is None
    real = bench.paged_attention

    def last_v_column_off(*args: object, **kwargs: object) -> torch.Tensor:
        out = real(*args, **kwargs)
        out[0, 0, -1] += 0.5
        return out

    monkeypatch.setattr(bench, "paged_attention", last_v_column_off)
    assert "max abs error" in (case.check(config) or "")
    with pytest.raises(ValueError, match="one head size"):
        bench.KVWriteCase(_DV_GEOMETRY, Shape(1, 4, 4), torch.float16, torch.float16, 16, torch.device("cpu"))


def test_run_refuses_a_geometry_with_v_of_its_own_head_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GEOMETRIES, "dv", _DV_GEOMETRY)
    opts = RunOptions(kernel="prefill", geometries=["dv"], grid="smoke", out=tmp_path, dtype=torch.float16)
    with pytest.raises(ValueError, match="no V head size"):
        run(opts)
    assert Geometry(4, 2, 64, 64) == Geometry(4, 2, 64) and Geometry(4, 2, 64, 64).head_dim_v is None


def test_a_table_from_before_the_page_size_key_is_read_and_resumed(tmp_path: Path) -> None:
    """Decode tables written before block_size joined the key: every entry reads as tuned at
    the page size the table's tuning section records (16 where it records none), and a tuner
    run that resumes the file writes it back in the current format."""
    legacy = json.loads((EXAMPLES / "decode" / "NVIDIA_H100_80GB_HBM3.json").read_text())
    legacy["key_fields"].remove("block_size")
    for e in legacy["entries"]:
        del e["key"]["block_size"]
    legacy["tuning"]["block_size"] = 128
    path = store.table_path(tmp_path, "decode", H100)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(legacy))
    assert {key[-1] for key in read_table(path).entries} == {128}
    del legacy["tuning"]["block_size"]
    path.write_text(json.dumps(legacy))
    n = len(legacy["entries"])
    assert {key[-1] for key in read_table(path).entries} == {16} and len(read_table(path).entries) == n
    base = store.new_doc("decode", H100, (9, 0), versions={"triton": "x", "torch": "y"}, config_space={"tile_n": [64]})
    doc = store.merge_entries(path, base, [])
    assert doc["key_fields"][-1] == "block_size"
    assert all(e["key"]["block_size"] == 16 for e in doc["entries"]) and len(doc["entries"]) == n
    assert json.loads(path.read_text())["key_fields"] == doc["key_fields"]
