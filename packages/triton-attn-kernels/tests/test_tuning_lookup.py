"""Config lookup: exact key, nearest key, heuristic; device and family fallback; the user
directory; broken files; memoisation. No kernel runs here (the cost of a lookup is a benchmark, not a test)."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from triton_attn_kernels import tuning
from triton_attn_kernels._device import interpreting
from triton_attn_kernels.tuning import (
    AttentionProblem,
    ConfigSelector,
    DecodeConfig,
    DeviceInfo,
    KVWriteConfig,
    PrefillConfig,
    decode_heuristic,
    kv_write_heuristic,
    prefill_heuristic,
)
from triton_attn_kernels.tuning.tables import device_file_name, find_table

DATA = Path(__file__).parent / "test_tuning_data"
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0))


def problem(num_seqs: int = 1, q: int = 1, k: int = 1024, head_dim: int = 128, **kw: object) -> AttentionProblem:
    base = AttentionProblem(
        num_seqs=num_seqs,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=head_dim,
        max_seqlen_q=q,
        max_seqlen_k=k,
        dtype="bfloat16",
        kv_dtype="bfloat16",
        num_sms=132,
    )
    return replace(base, **kw)


def selector(roots: list[Path] | None = None, device: DeviceInfo = H100, **kw: object) -> ConfigSelector:
    return ConfigSelector(roots=roots if roots is not None else [DATA], device=device, **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fresh_global_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_ATTN_TUNING_DIR", raising=False)
    monkeypatch.delenv("TRITON_ATTN_TUNING", raising=False)
    tuning.reset()
    yield
    tuning.reset()


def test_exact_key_serves_the_table_entry() -> None:
    sel = selector()
    assert sel.decode(problem(1, 1, 32768)) == DecodeConfig(tile_n=128, num_splits=32, num_warps=8, num_stages=3)
    assert sel.prefill(problem(1, 2048, 2048)) == PrefillConfig(block_m=128, tile_n=64, num_warps=8, num_stages=3)
    kv = sel.kv_write(8, 128, num_tokens=4096, dtype="bfloat16", kv_dtype="bfloat16", interpreter=False)
    assert kv == KVWriteConfig(num_warps=4)
    s = sel.stats()
    assert (s["decode"]["exact"], s["prefill"]["exact"], s["kv_write"]["exact"]) == (1, 1, 1)


def test_nearest_key_by_log2_distance() -> None:
    sel = selector()
    # 24k context is 0.4 octaves from 32k and 4.6 from 1k: the 32k entry.
    assert sel.decode(problem(1, 1, 24000)).tile_n == 128
    # 48 sequences at 6k: nearest is (64, 8192).
    assert sel.decode(problem(48, 1, 6000)) == DecodeConfig(tile_n=64, num_splits=2, num_warps=4, num_stages=2)
    # kv write: 3000 tokens -> the 4096 entry; 3 tokens -> the 1-token entry.
    kw = {"dtype": torch.bfloat16, "kv_dtype": torch.bfloat16, "interpreter": False}
    assert sel.kv_write(8, 128, num_tokens=3000, **kw).num_warps == 4  # type: ignore[arg-type]
    assert sel.kv_write(8, 128, num_tokens=3, **kw).num_warps == 1  # type: ignore[arg-type]
    assert sel.stats()["decode"]["nearest"] == 2


def test_nearest_decode_never_splits_beyond_the_tiles() -> None:
    # (1, 1024) stores 8 splits of 64 keys; at 300 keys only 5 tiles exist.
    cfg = selector().decode(problem(1, 1, 300))
    assert (cfg.tile_n, cfg.num_splits) == (64, 5)


def test_categorical_fields_must_match() -> None:
    sel = selector()
    p = problem(1, 1, 32768, head_dim=64)
    assert sel.decode(p) == decode_heuristic(p)  # no head_dim 64 entries
    p = problem(1, 1, 32768, dtype="float16", kv_dtype="float16")
    assert sel.decode(p) == decode_heuristic(p)
    p = problem(1, 1, 32768, kv_dtype="float8_e4m3fn")
    assert sel.decode(p) == decode_heuristic(p)
    p = problem(1, 1, 32768, num_q_heads=64)  # GQA group 8: a different GROUP constexpr
    assert sel.decode(p) == decode_heuristic(p)
    assert sel.stats()["decode"]["heuristic"] == 4
    kv = {"num_tokens": 4096, "dtype": "bfloat16", "kv_dtype": "bfloat16", "interpreter": False}
    assert sel.kv_write(4, 128, **kv) == kv_write_heuristic(4, 128)  # type: ignore[arg-type]


def test_too_far_from_every_key_gives_the_heuristic() -> None:
    sel = selector()
    # 32 KV heads are 2 octaves from the stored 8: still in range.
    p = problem(1, 1, 32768, num_q_heads=128, num_kv_heads=32)
    assert sel.decode(p).tile_n == 128
    # One KV head: 3 octaves from 8, beyond the 2-octave limit.
    p = problem(1, 1, 32768, num_q_heads=4, num_kv_heads=1)
    assert sel.decode(p) == decode_heuristic(p)
    # A 100-token context is 3.4 octaves below the smallest stored 1024.
    p = problem(1, 1, 100)
    assert sel.decode(p) == decode_heuristic(p)


def test_explicit_config_wins_and_is_counted() -> None:
    sel = selector()
    mine = DecodeConfig(tile_n=16, num_splits=3, num_warps=2, num_stages=1)
    assert sel.decode(problem(1, 1, 32768), mine) is mine
    assert tuning.select_prefill_config(problem(1, 8, 8), PrefillConfig(block_m=16)) == PrefillConfig(block_m=16)
    assert sel.stats()["decode"]["explicit"] == 1
    assert tuning.stats()["prefill"]["explicit"] == 1


def test_interpreter_problems_use_the_heuristic_unless_forced() -> None:
    p = problem(1, 1, 32768, interpreter=True)
    assert selector().decode(p) == decode_heuristic(p)
    assert selector(under_interpreter=True).decode(p).tile_n == 128
    assert selector().kv_write(8, 128, num_tokens=1, dtype="bfloat16", kv_dtype="bfloat16", interpreter=True) == (
        kv_write_heuristic(8, 128)
    )
    # interpreter=None: TRITON_INTERPRET decides (set by conftest on machines without CUDA).
    want = kv_write_heuristic(8, 128) if interpreting() else KVWriteConfig(num_warps=1)
    assert selector().kv_write(8, 128, num_tokens=1, dtype="bfloat16", kv_dtype="bfloat16") == want


def test_tables_switched_off() -> None:
    p = problem(1, 1, 32768)
    assert selector(use_tables=False).decode(p) == decode_heuristic(p)


def test_no_cuda_device_means_heuristic() -> None:
    # The global selector on a CPU-only machine (or a CPU tensor) finds no device to look up.
    p = problem(1, 1, 32768)
    assert tuning.select_decode_config(p, device="cpu") == decode_heuristic(p)
    assert tuning.select_prefill_config(problem(1, 2048, 2048), device="cpu") == prefill_heuristic(
        problem(1, 2048, 2048)
    )
    assert tuning.stats()["decode"]["heuristic"] == 1


def test_another_gpu_uses_a_table_only_of_the_same_architecture_and_sm_count(caplog: pytest.LogCaptureFixture) -> None:
    # An H200 (9.0, 132 SMs) has no table: the H100 SXM one (9.0, 132 SMs) serves it.
    sel = selector(device=DeviceInfo("NVIDIA H200", (9, 0), 132))
    with caplog.at_level(logging.INFO, logger="triton_attn_kernels.tuning"):
        assert sel.decode(problem(1, 1, 32768)).tile_n == 128
        sel.decode(problem(2, 1, 32768))
    assert "NVIDIA_H100_80GB_HBM3.json" in next(iter(sel.stats()["tables"].values()))
    chosen = [r.getMessage() for r in caplog.records if "tuning table" in r.getMessage()]
    assert len(chosen) == 1 and "tuned on NVIDIA H100 80GB HBM3" in chosen[0]  # logged once
    # An H100 PCIe (9.0, 114 SMs), an A100 (8.0, 108 SMs) and a device whose SM count is
    # unknown do not: heuristics, logged once each.
    for info in (
        DeviceInfo("NVIDIA H100 PCIe", (9, 0), 114),
        DeviceInfo("NVIDIA A100-SXM4-80GB", (8, 0), 108),
        DeviceInfo("NVIDIA H200", (9, 0)),
    ):
        caplog.clear()
        sel = selector(device=info)
        with caplog.at_level(logging.INFO, logger="triton_attn_kernels.tuning"):
            for k in (32768, 4096):
                assert sel.decode(problem(1, 1, k)) == decode_heuristic(problem(1, 1, k))
        assert list(sel.stats()["tables"].values()) == [None]
        told = [r.getMessage() for r in caplog.records if "tuning table" in r.getMessage()]
        assert len(told) == 1 and "heuristics" in told[0] and info.name in told[0]
    # The device's own table is used whatever SM count it reports.
    sel = selector(device=DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0), 114))
    sel.decode(problem(1, 1, 32768))
    assert "NVIDIA_H100_80GB_HBM3.json" in next(iter(sel.stats()["tables"].values()))


def test_same_sm_count_fallback_prefers_the_closest_name(tmp_path: Path) -> None:
    for name, splits, sms in (("NVIDIA H100 80GB HBM3", 32, 132), ("NVIDIA H200", 16, 132), ("NVIDIA H20", 8, 78)):
        doc = json.loads((DATA / "decode" / "NVIDIA_H100_80GB_HBM3.json").read_text())
        doc["device"].update(name=name, num_sms=sms)
        doc["entries"] = [e for e in doc["entries"] if e["key"]["max_seqlen_k"] == 32768]
        doc["entries"][0]["config"]["num_splits"] = splits
        (tmp_path / "decode").mkdir(exist_ok=True)
        (tmp_path / "decode" / device_file_name(name)).write_text(json.dumps(doc))
    pcie = find_table("decode", "NVIDIA H100 PCIe", (9, 0), [tmp_path], num_sms=132)
    nvl = find_table("decode", "NVIDIA H200 NVL", (9, 0), [tmp_path], num_sms=132)
    assert pcie is not None and pcie.device_name == "NVIDIA H100 80GB HBM3"
    assert nvl is not None and nvl.device_name == "NVIDIA H200"
    # The closest name alone is not enough: an H20-named GPU of 132 SMs skips the H20 table.
    h20 = find_table("decode", "NVIDIA H20 NVL", (9, 0), [tmp_path], num_sms=132)
    assert h20 is not None and h20.device_name != "NVIDIA H20"
    assert find_table("decode", "NVIDIA H200 NVL", (9, 0), [tmp_path], num_sms=114) is None
    assert find_table("decode", "NVIDIA H200 NVL", (9, 0), [tmp_path]) is None


def test_own_table_layered_over_the_same_sm_count_sibling(tmp_path: Path) -> None:
    # The H200's own table covers head size 128 only: those keys come from it, a head size
    # it was not tuned for from the H100 SXM table (9.0, 132 SMs) beneath, not the heuristic.
    (tmp_path / "decode").mkdir()
    sibling = json.loads((DATA / "decode" / "NVIDIA_H100_80GB_HBM3.json").read_text())
    sibling["device"]["num_sms"] = 132
    for e in sibling["entries"]:
        e["config"]["num_splits"] = 3
    other = json.loads(json.dumps(sibling["entries"][0]))
    other["key"]["head_dim"] = 64
    sibling["entries"].append(other)
    (tmp_path / "decode" / "NVIDIA_H100_80GB_HBM3.json").write_text(json.dumps(sibling))
    own = json.loads(json.dumps(sibling))
    own["device"]["name"] = "NVIDIA H200"
    own["entries"] = [json.loads(json.dumps(e)) for e in sibling["entries"] if e["key"]["head_dim"] == 128]
    for e in own["entries"]:
        e["config"]["num_splits"] = 5
    (tmp_path / "decode" / "NVIDIA_H200.json").write_text(json.dumps(own))
    table = find_table("decode", "NVIDIA H200", (9, 0), [tmp_path], num_sms=132)
    assert table is not None and table.device_name == "NVIDIA H200"
    assert "NVIDIA_H200.json over" in table.origin and "NVIDIA_H100_80GB_HBM3.json" in table.origin
    by_dim = {k[0]: e.config.num_splits for k, e in table.entries.items()}
    assert by_dim[128] == 5 and by_dim[64] == 3
    # A GPU of another SM count keeps its own table alone.
    alone = find_table("decode", "NVIDIA H200", (9, 0), [tmp_path], num_sms=114)
    assert alone is not None and {e.config.num_splits for e in alone.entries.values()} == {5}
    assert {k[0] for k in alone.entries} == {128}


def test_user_directory_takes_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "mine"
    (user / "decode").mkdir(parents=True)
    doc = json.loads((DATA / "decode" / "NVIDIA_H100_80GB_HBM3.json").read_text())
    doc["entries"] = [e for e in doc["entries"] if e["key"]["max_seqlen_k"] == 32768]
    doc["entries"][0]["config"] = {"tile_n": 32, "num_splits": 16, "num_warps": 4, "num_stages": 1}
    (user / "decode" / "NVIDIA_H100_80GB_HBM3.json").write_text(json.dumps(doc))
    sel = selector(roots=[user, DATA])
    assert sel.decode(problem(1, 1, 32768)) == DecodeConfig(tile_n=32, num_splits=16, num_warps=4, num_stages=1)
    # Keys the user's table lacks still come from the shipped table.
    assert sel.decode(problem(64, 1, 8192)).num_splits == 2
    assert "mine" in next(iter(sel.stats()["tables"].values()))

    # Through the environment variable: read on first use, the search order user dir first.
    from triton_attn_kernels.tuning import envs
    from triton_attn_kernels.tuning.tables import search_roots

    monkeypatch.setenv("TRITON_ATTN_TUNING_DIR", str(user))
    tuning.reset()
    assert search_roots(envs.tuning_dir())[0] == user
    monkeypatch.setenv("TRITON_ATTN_TUNING", "0")
    tuning.reset()
    assert not envs.tables_enabled()


@pytest.mark.parametrize(
    "damage",
    ["truncated", "not_json", "wrong_version", "bad_config", "missing_field", "duplicate_key", "empty", "wrong_kernel"],
)
def test_broken_table_warns_and_falls_back(tmp_path: Path, damage: str) -> None:
    src = (DATA / "decode" / "NVIDIA_H100_80GB_HBM3.json").read_text()
    doc = json.loads(src)
    if damage == "truncated":
        text = src[: len(src) // 2]
    elif damage == "not_json":
        text = "tile_n = 64\n"
    elif damage == "empty":
        text = ""
    else:
        if damage == "wrong_version":
            doc["schema_version"] = 99
        elif damage == "bad_config":
            doc["entries"][1]["config"]["tile_n"] = 48  # not a power of two
        elif damage == "missing_field":
            del doc["entries"][1]["config"]["num_stages"]
        elif damage == "duplicate_key":
            doc["entries"].append(doc["entries"][1])
        elif damage == "wrong_kernel":
            doc["kernel"] = "prefill"
        text = json.dumps(doc)
    (tmp_path / "decode").mkdir()
    (tmp_path / "decode" / "NVIDIA_H100_80GB_HBM3.json").write_text(text)
    p = problem(1, 1, 32768)
    with pytest.warns(RuntimeWarning, match="skipping tuning table"):
        got = selector(roots=[tmp_path]).decode(p)
    assert got == decode_heuristic(p)
    # A broken user table does not hide the shipped one.
    with pytest.warns(RuntimeWarning, match="skipping tuning table"):
        assert selector(roots=[tmp_path, DATA]).decode(p).tile_n == 128


def test_missing_folders_are_quiet(tmp_path: Path) -> None:
    p = problem(1, 1, 32768)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert selector(roots=[tmp_path / "nothing", tmp_path]).decode(p) == decode_heuristic(p)


def test_memoised_and_nothing_read_twice(tmp_path: Path) -> None:
    root = tmp_path / "t"
    shutil.copytree(DATA, root)
    sel = selector(roots=[root])
    p = problem(1, 1, 32768)
    first = sel.decode(p)
    (root / "decode" / "NVIDIA_H100_80GB_HBM3.json").unlink()  # later lookups never touch the disk
    assert sel.decode(p) is first
    assert sel.decode(problem(64, 1, 8192)).num_splits == 2  # a new problem: the table is in memory
    s = sel.stats()["decode"]
    assert (s["exact"], s["problems"]) == (3, 2)


def test_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from triton_attn_kernels.tuning import select

    monkeypatch.setattr(select, "MEMO_LIMIT", 8)
    sel = selector()
    for k in range(1, 30):
        sel.decode(problem(1, 1, 1000 + k))
    assert sel.stats()["decode"]["problems"] <= 8


def test_nothing_happens_at_import() -> None:
    import subprocess
    import sys

    code = (
        "import sys, triton_attn_kernels.tuning as t; "
        "assert t.stats()['tables'] == {}; "
        "assert 'triton_attn_kernels.tuner' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_shipped_h200_decode_entries_serve_their_page_size_and_the_h100_ones_the_rest() -> None:
    """The shipped H200 decode table holds Llama-3.1-8B's bf16 grid tuned at 128-token pages;
    at vLLM's default 16-token pages the H100 SXM entries beneath it (tuned there) serve."""
    from triton_attn_kernels.tuning.tables import read_table, shipped_root

    root = shipped_root()
    assert root is not None
    own = read_table(root.joinpath("decode", "NVIDIA_H200.json"))
    h100 = read_table(root.joinpath("decode", "NVIDIA_H100_80GB_HBM3.json"))
    sel = selector(roots=[root], device=DeviceInfo("NVIDIA H200", (9, 0), 132))
    for block_size, table in ((128, own), (16, h100)):
        p = problem(64, 1, 8192, block_size=block_size)
        want = table.entries[(128, 4, "bfloat16", "bfloat16", 8, 64, 8192, block_size)].config
        assert sel.decode(p) == want, block_size
    assert own.entries[(128, 4, "bfloat16", "bfloat16", 8, 64, 8192, 128)].config != want  # they differ
    assert sel.stats()["decode"]["exact"] == 2
    # A page size between the two takes the nearer one's entry; an fp8 cache at 128-token
    # pages the fp8 entry tuned at 16 (page size counts in the distance, never bars an entry).
    h200_64x8k = own.entries[(128, 4, "bfloat16", "bfloat16", 8, 64, 8192, 128)].config
    assert sel.decode(problem(64, 1, 8192, block_size=64)) == h200_64x8k
    fp8 = problem(1, 1, 1024, kv_dtype="float8_e4m3fn", block_size=128)
    assert sel.decode(fp8) == own.entries[(128, 4, "bfloat16", "float8_e4m3fn", 8, 1, 1024, 16)].config
