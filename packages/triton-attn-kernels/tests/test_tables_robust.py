"""Hostile tuning files: whatever a table file holds, lookups fall back (to the next table or
the heuristic) with one warning naming the file, and the file is not read again. No kernel
runs here."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triton_attn_kernels import tuning
from triton_attn_kernels.tuning import AttentionProblem, ConfigSelector, DeviceInfo, decode_heuristic, tables
from triton_attn_kernels.tuning.tables import Table, TableError, parse_table

DATA = Path(__file__).parent / "test_tuning_data"
H100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0))
FILE = "NVIDIA_H100_80GB_HBM3.json"
GOOD = json.loads((DATA / "decode" / FILE).read_text())


def problem(num_seqs: int, k: int) -> AttentionProblem:
    return AttentionProblem(
        num_seqs=num_seqs,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
        max_seqlen_q=1,
        max_seqlen_k=k,
        dtype="bfloat16",
        kv_dtype="bfloat16",
        num_sms=132,
    )


def with_entry_field(path: tuple, value: Any) -> str:
    doc = copy.deepcopy(GOOD)
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return json.dumps(doc)


def deep(n: int) -> str:
    return "[" * n + "]" * n


# name -> file contents (bytes or text)
HOSTILE: dict[str, bytes | str] = {
    # json's C scanner raises RecursionError
    "deep_nesting": deep(200_000),
    "deep_nesting_inside": with_entry_field(("entries", 0, "config"), "@").replace('"@"', deep(100_000)),
    # int() refuses more than sys.get_int_max_str_digits() (4300) digits: ValueError
    "int_5000_digits": '{"schema_version": ' + "7" * 5000 + "}",
    "int_5000_digits_in_entry": with_entry_field(("entries", 0, "time_us"), "@").replace('"@"', "9" * 5000),
    # parses, but too large for a float: OverflowError in the check
    "int_400_digits_time": with_entry_field(("entries", 0, "time_us"), 10**400),
    "not_utf8": b"\xff\xfe\x00{\x80\x81",
    "utf16": json.dumps(GOOD).encode("utf-16"),
    "nan_time": with_entry_field(("entries", 0, "time_us"), float("nan")),
    "list_as_dtype": with_entry_field(("entries", 0, "key", "dtype"), ["bfloat16"]),
    "dict_as_kernel": with_entry_field(("kernel",), {"decode": 1}),
    "entries_object": with_entry_field(("entries",), {"0": GOOD["entries"][0]}),
    "config_bool": with_entry_field(("entries", 0, "config", "num_splits"), True),
    "config_float": with_entry_field(("entries", 0, "config", "tile_n"), 64.0),
    "config_huge": with_entry_field(("entries", 0, "config", "tile_n"), 2**4000),
    "capability_strings": with_entry_field(("device", "capability"), ["9", "0"]),
    "runner_up_list": with_entry_field(("entries", 0, "runner_up"), [1, 2]),
    "nul_bytes": b"\x00" * 64,
}


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_ATTN_TUNING_DIR", raising=False)
    monkeypatch.delenv("TRITON_ATTN_TUNING", raising=False)
    tuning.reset()
    yield
    tuning.reset()


def _counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real = tables.read_table

    def counted(resource: Any, kernel: str | None = None) -> Table:
        reads.append(str(resource))
        return real(resource, kernel)

    monkeypatch.setattr(tables, "read_table", counted)
    return reads


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_warns_once_and_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    content = HOSTILE[name]
    path = tmp_path / "decode" / FILE
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    reads = _counting_reads(monkeypatch)
    sel = ConfigSelector(roots=[tmp_path], device=H100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Many launches, each a new problem (decode lengths change every step).
        got = [sel.decode(problem(s, k)) for s in (1, 8) for k in (1024, 1025, 4096, 32768)]
    assert got == [decode_heuristic(problem(s, k)) for s in (1, 8) for k in (1024, 1025, 4096, 32768)]
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    assert "skipping tuning table" in msgs[0] and str(path) in msgs[0]
    assert reads == [str(path)]  # read once, remembered


@pytest.mark.parametrize("name", ["deep_nesting", "int_5000_digits", "int_400_digits_time"])
def test_hostile_user_file_keeps_the_shipped_table(tmp_path: Path, name: str) -> None:
    (tmp_path / "decode").mkdir()
    (tmp_path / "decode" / FILE).write_text(HOSTILE[name])  # type: ignore[arg-type]
    sel = ConfigSelector(roots=[tmp_path, DATA], device=H100)
    with pytest.warns(RuntimeWarning, match="skipping tuning table"):
        assert sel.decode(problem(1, 32768)).tile_n == 128  # the entry of test_tuning_data
    assert sel.stats()["decode"]["exact"] == 1


def test_huge_key_is_legal_and_harmless(tmp_path: Path) -> None:
    # A key field of 400 digits is an integer >= 1, as the format asks: the table loads, and
    # the nearest-key search (log2 of every key) copes with it.
    (tmp_path / "decode").mkdir()
    (tmp_path / "decode" / FILE).write_text(with_entry_field(("entries", 0, "key", "num_seqs"), 10**400))
    sel = ConfigSelector(roots=[tmp_path], device=H100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sel.decode(problem(1, 32768)).tile_n == 128
        assert sel.decode(problem(3, 1000)) is not None


def test_hostile_file_of_another_device_is_skipped_in_the_family_search(tmp_path: Path) -> None:
    # An H200 has no table; the search over same-architecture, same-SM-count files meets the
    # broken one.
    (tmp_path / "decode").mkdir()
    (tmp_path / "decode" / "NVIDIA_H100_PCIe.json").write_text(HOSTILE["deep_nesting"])  # type: ignore[arg-type]
    sel = ConfigSelector(roots=[tmp_path, DATA], device=DeviceInfo("NVIDIA H200", (9, 0), 132))
    with pytest.warns(RuntimeWarning, match="NVIDIA_H100_PCIe.json"):
        assert sel.decode(problem(1, 32768)).tile_n == 128


class _Unreadable:
    """A resource whose reads fail the way a network or permission problem does."""

    def __init__(self, name: str, exc: BaseException, listing: bool = False) -> None:
        self.name, self.exc, self.listing = name, exc, listing

    def is_dir(self) -> bool:
        if self.listing:
            raise self.exc
        return True

    def is_file(self) -> bool:
        return True

    def iterdir(self) -> Any:
        raise self.exc

    def read_text(self, encoding: str | None = None) -> str:
        raise self.exc

    def joinpath(self, *child: str) -> _Unreadable:
        return _Unreadable("/".join((self.name, *child)), self.exc, self.listing)

    def __str__(self) -> str:
        return self.name


@pytest.mark.parametrize(
    "exc", [OSError(5, "Input/output error"), PermissionError(13, "Permission denied"), MemoryError()]
)
@pytest.mark.parametrize("listing", [False, True])
def test_unreadable_files_and_folders(exc: BaseException, listing: bool) -> None:
    root = _Unreadable("remote-root", exc, listing)
    sel = ConfigSelector(roots=[root], device=H100)  # type: ignore[list-item]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in (1024, 2048, 4096):
            assert sel.decode(problem(1, k)) == decode_heuristic(problem(1, k))
    # The device's own file (unless is_dir fails first) and the folder of the family search.
    assert 1 <= len(caught) <= 2 and all("remote-root/decode" in str(w.message) for w in caught), caught


def _json_values() -> st.SearchStrategy[Any]:
    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    big = st.integers(min_value=10**300, max_value=10**400)
    return st.recursive(
        leaves | big,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=12,
    )


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:2]):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(GOOD)[1:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_document_is_a_table_or_a_table_error(data: st.DataObject) -> None:
    """One or two values anywhere in a valid document replaced by arbitrary JSON values:
    parse_table returns a Table or raises TableError, nothing else."""
    doc = copy.deepcopy(GOOD)
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(PATHS))
        node = doc
        try:
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = data.draw(_json_values())
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed the path
    try:
        table = parse_table(doc)
    except TableError:
        return
    assert isinstance(table, Table)
