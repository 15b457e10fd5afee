"""Tuning tables: one JSON file per kernel and device, ``<root>/<kernel>/<DEVICE_NAME>.json``.

Roots, highest precedence first: ``TRITON_ATTN_TUNING_DIR`` (see :mod:`.envs`), then the
``dejavu_data/`` folder shipped in the wheel (read through :mod:`importlib.resources`; in a
source checkout, the repository's top-level ``dejavu_data/``). The file format is described
in ``docs/tuning.md`` and validated by ``dejavu_data/schema.json`` (:mod:`.schema`); the
reader below checks the same rules by hand so that the runtime needs no ``jsonschema``.
A file that cannot be read or is invalid is skipped with a warning, never an exception:
whatever a file holds (deep nesting, numbers of thousands of digits, bytes that are not
UTF-8), the lookup falls back to the next table or the heuristic, and the selector remembers
the outcome, so the file is read and warned about once, not at every launch.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .keys import ADDED_KEY_FIELDS, KERNELS, Config, KernelSpec, config_from_dict, log2_point
from .schema import DTYPES, KV_DTYPES, SCHEMA_VERSION

__all__ = [
    "Entry",
    "Table",
    "TableError",
    "device_file_name",
    "find_table",
    "parse_table",
    "read_table",
    "search_roots",
    "shipped_root",
    "tuned_sms",
    "upgrade_doc",
]


class Resource(Protocol):
    """What both :class:`pathlib.Path` and importlib's ``Traversable`` offer."""

    @property
    def name(self) -> str: ...

    def is_dir(self) -> bool: ...
    def is_file(self) -> bool: ...
    def iterdir(self) -> Iterator[Any]: ...
    def read_text(self, encoding: str | None = None) -> str: ...
    def joinpath(self, *child: str) -> Any: ...


# Nearest-key search resolution: 1/NEAR_GRID octave.
NEAR_GRID = 8


class TableError(ValueError):
    """A table file that cannot be used (unreadable, not JSON, or not the schema)."""


@dataclass(frozen=True)
class Entry:
    key: tuple
    config: Config
    time_us: float | None
    runner_up: tuple[Config, float | None] | None = None
    heuristic_us: float | None = None


@dataclass
class Table:
    spec: KernelSpec
    device_name: str
    capability: tuple[int, int] | None
    origin: str
    entries: dict[tuple, Entry]
    meta: dict[str, Any] = field(default_factory=dict)
    # categorical part of a key -> [(log2 point of the numeric part, key)], built on first use
    _groups: dict[tuple, list[tuple[tuple[float, ...], tuple]]] | None = field(default=None, repr=False)
    # (categorical part, grid point) -> nearest stored key or None: decode problems change
    # max_seqlen_k at every step, and each new value would otherwise cost a search
    _near: dict[tuple, tuple | None] = field(default_factory=dict, repr=False)

    def over(self, base: Table) -> Table:
        """This table's entries layered over ``base``'s (same kernel)."""
        entries = {**base.entries, **self.entries}
        origin = f"{self.origin} over {base.origin}"
        return Table(self.spec, self.device_name, self.capability, origin, entries, self.meta)

    def lookup(self, key: tuple, max_octaves: float) -> tuple[Entry, str] | None:
        """The entry for ``key`` (``"exact"``), else the stored key with the same categorical
        fields at the smallest summed log2 distance whose every numeric field lies within
        ``max_octaves`` (the spec's ``unbounded`` fields, the decode's page size, at any
        distance) (``"nearest"``), else None. Distances are measured from the key's
        numeric fields rounded to 1/8 octave (so one search serves a range of sizes); ties go
        to the smaller key."""
        hit = self.entries.get(key)
        if hit is not None:
            return hit, "exact"
        n = len(self.spec.categorical)
        point = tuple(round(v * NEAR_GRID) / NEAR_GRID for v in log2_point(self.spec, key))
        memo_key = (key[:n], point, max_octaves)
        if memo_key not in self._near:
            if len(self._near) >= 4096:
                self._near.clear()
            self._near[memo_key] = self._nearest(key[:n], point, max_octaves)
        near = self._near[memo_key]
        return (self.entries[near], "nearest") if near is not None else None

    def _nearest(self, categorical: tuple, point: tuple[float, ...], max_octaves: float) -> tuple | None:
        if self._groups is None:
            groups: dict[tuple, list[tuple[tuple[float, ...], tuple]]] = {}
            n = len(self.spec.categorical)
            for k in sorted(self.entries):
                groups.setdefault(k[:n], []).append((log2_point(self.spec, k), k))
            self._groups = groups
        candidates = self._groups.get(categorical)
        if not candidates:
            return None
        best: tuple[float, tuple] | None = None
        numeric = self.spec.numeric
        bounded = [i for i, name in enumerate(numeric) if name not in self.spec.unbounded]
        for p, k in candidates:
            gaps = [abs(a - b) for a, b in zip(point, p, strict=True)]
            if any(gaps[i] > max_octaves for i in bounded):
                continue
            if best is None or sum(gaps) < best[0]:
                best = (sum(gaps), k)
        return best[1] if best else None


def device_file_name(device_name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"NVIDIA_H100_80GB_HBM3.json"``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", device_name.strip()).strip("_") + ".json"


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise TableError(msg)


def _time(value: Any, where: str) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    _require(ok, f"{where} must be a positive number or null, got {value!r}")
    return float(value)


def _key(spec: KernelSpec, d: Any, where: str) -> tuple:
    _require(isinstance(d, dict) and set(d) == set(spec.key_fields), f"{where} must have exactly {spec.key_fields}")
    _require(d["dtype"] in DTYPES, f"{where}.dtype must be one of {DTYPES}, got {d['dtype']!r}")
    _require(d["kv_dtype"] in KV_DTYPES, f"{where}.kv_dtype must be one of {KV_DTYPES}, got {d['kv_dtype']!r}")
    for name in spec.key_fields:
        if name in ("dtype", "kv_dtype"):
            continue
        value = d[name]
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        _require(ok, f"{where}.{name} must be an integer >= 1, got {value!r}")
    return spec.key_from_dict(d)


def _config(spec: KernelSpec, d: Any, where: str) -> Config:
    try:
        return config_from_dict(spec, d)
    except (TypeError, ValueError) as e:
        raise TableError(f"{where}: {e}") from None


def parse_table(doc: Any, origin: str = "<memory>", kernel: str | None = None) -> Table:
    """Check a loaded JSON document against the table format; raises :class:`TableError`,
    and nothing else, for any document."""
    try:
        return _parse(doc, origin, kernel)
    except TableError:
        raise
    except Exception as e:
        # A document the checks themselves trip over (an integer too large for a float, a
        # nesting too deep for repr): as unusable as one that fails a check.
        raise TableError(f"{type(e).__name__}: {e}") from None


def upgrade_doc(doc: Any) -> Any:
    """A table written before its kernel's key gained a field (``keys.ADDED_KEY_FIELDS``:
    the decode's page size) as the current format: the field in ``key_fields`` and in every
    entry's key, valued as the table's ``tuning`` section records it (every entry of such a
    table was tuned at that value), else the default. Anything else is returned as it is
    (a copy where it changed; the caller's document is left alone)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("kernel"), str):
        return doc
    added = ADDED_KEY_FIELDS.get(doc["kernel"])
    spec = KERNELS.get(doc["kernel"])
    if added is None or spec is None:
        return doc
    name, tuning_name, default = added
    if doc.get("key_fields") != [f for f in spec.key_fields if f != name]:
        return doc
    tuning = doc.get("tuning")
    value = tuning.get(tuning_name) if isinstance(tuning, dict) else None
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        value = default
    entries = doc.get("entries")
    new = {**doc, "key_fields": list(spec.key_fields)}
    if isinstance(entries, list):
        new["entries"] = [
            {**e, "key": {**e["key"], name: value}} if isinstance(e, dict) and isinstance(e.get("key"), dict) else e
            for e in entries
        ]
    return new


def _parse(doc: Any, origin: str, kernel: str | None) -> Table:
    doc = upgrade_doc(doc)
    _require(isinstance(doc, dict), "a table must be a JSON object")
    version = doc.get("schema_version")
    _require(version == SCHEMA_VERSION, f"schema_version {version!r} is not {SCHEMA_VERSION}")
    spec = KERNELS.get(str(doc.get("kernel")))
    if spec is None:
        raise TableError(f"kernel must be one of {sorted(KERNELS)}, got {doc.get('kernel')!r}")
    _require(kernel is None or spec.name == kernel, f"file holds kernel {spec.name!r}, expected {kernel!r}")
    for name in ("device", "versions", "tuning", "config_space"):
        _require(isinstance(doc.get(name), dict), f"{name} must be an object")
    _require(isinstance(doc.get("created"), str), "created must be a string")
    _require(doc.get("key_fields") == list(spec.key_fields), f"key_fields must be {list(spec.key_fields)}")
    device = doc["device"]
    _require(isinstance(device.get("name"), str) and device["name"] != "", "device.name must be a non-empty string")
    cap = device.get("capability")
    ok_cap = cap is None or (isinstance(cap, list) and len(cap) == 2 and all(isinstance(c, int) for c in cap))
    _require(ok_cap, f"device.capability must be [major, minor] or null, got {cap!r}")
    entries_doc = doc.get("entries")
    _require(isinstance(entries_doc, list), "entries must be a list")
    entries: dict[tuple, Entry] = {}
    for i, e in enumerate(entries_doc):
        where = f"entries[{i}]"
        _require(isinstance(e, dict) and {"key", "config", "time_us"} <= set(e), f"{where} needs key, config, time_us")
        key = _key(spec, e["key"], f"{where}.key")
        _require(key not in entries, f"{where}: duplicate key {e['key']}")
        runner_up = None
        if e.get("runner_up") is not None:
            r = e["runner_up"]
            _require(isinstance(r, dict), f"{where}.runner_up must be an object or null")
            runner_up = (_config(spec, r.get("config"), f"{where}.runner_up.config"), _time(r.get("time_us"), where))
        entries[key] = Entry(
            key=key,
            config=_config(spec, e["config"], f"{where}.config"),
            time_us=_time(e["time_us"], f"{where}.time_us"),
            runner_up=runner_up,
            heuristic_us=_time(e.get("heuristic_us"), f"{where}.heuristic_us"),
        )
    meta = {k: v for k, v in doc.items() if k != "entries"}
    return Table(spec, device["name"], tuple(cap) if cap else None, origin, entries, meta)  # type: ignore[arg-type]


def read_table(resource: Resource | Path, kernel: str | None = None) -> Table:
    """Read and check one file; raises :class:`TableError` for any problem with it."""
    try:
        doc = json.loads(resource.read_text(encoding="utf-8"))
    except Exception as e:
        # OSError, UnicodeError, JSONDecodeError, but also ValueError (an integer of more
        # than sys.get_int_max_str_digits() digits), RecursionError (deep nesting) and
        # MemoryError: any of them means this file cannot be used.
        raise TableError(f"cannot read: {type(e).__name__}: {e}") from None
    return parse_table(doc, str(resource), kernel)


def _skip(what: Any, why: Any) -> None:
    warnings.warn(f"triton_attn_kernels: skipping tuning table {what}: {why}", RuntimeWarning, stacklevel=3)


def _load(resource: Resource, kernel: str) -> Table | None:
    try:
        return read_table(resource, kernel)
    except TableError as e:
        _skip(resource, e)
        return None


def _is_file(resource: Resource) -> bool:
    try:
        return resource.is_file()
    except Exception as e:  # e.g. no permission to look into the folder
        _skip(resource, f"cannot read: {type(e).__name__}: {e}")
        return False


def _listing(folder: Resource) -> list[Any]:
    try:
        if not folder.is_dir():
            return []
        return sorted(folder.iterdir(), key=lambda r: r.name)
    except Exception as e:
        _skip(f"folder {folder}", f"cannot list: {type(e).__name__}: {e}")
        return []


def shipped_root() -> Resource | None:
    """The ``dejavu_data/`` folder: inside the installed package (wheel), else the top-level
    folder of a source checkout (editable install)."""
    packaged = importlib.resources.files("triton_attn_kernels").joinpath("dejavu_data")
    if packaged.is_dir():
        return packaged  # type: ignore[return-value]
    # A source checkout: the nearest folder above this file that holds dejavu_data/.
    for folder in Path(__file__).resolve().parents:
        checkout = folder / "dejavu_data"
        if (checkout / "schema.json").is_file():
            return checkout
    return None


def search_roots(user_dir: Path | None) -> list[Resource]:
    roots: list[Resource] = []
    if user_dir is not None:
        try:
            usable = user_dir.is_dir()
        except OSError:  # no permission to look at it
            usable = False
        if usable:
            roots.append(user_dir)
        else:
            warnings.warn(
                f"triton_attn_kernels: TRITON_ATTN_TUNING_DIR={user_dir} is not a directory",
                RuntimeWarning,
                stacklevel=2,
            )
    shipped = shipped_root()
    if shipped is not None:
        roots.append(shipped)
    return roots


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(re.split(r"[\s_]+", a.lower()), re.split(r"[\s_]+", b.lower()), strict=False):
        if x != y:
            break
        n += 1
    return n


def tuned_sms(table: Table) -> int | None:
    """The SM count of the GPU the table was tuned on (``device.num_sms``), if recorded."""
    device = table.meta.get("device")
    value = device.get("num_sms") if isinstance(device, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def find_table(
    kernel: str,
    device_name: str,
    capability: tuple[int, int] | None,
    roots: Iterable[Resource],
    *,
    num_sms: int | None = None,
) -> Table | None:
    """The table tuned on this device (the user's entries over the shipped ones), layered
    over the one tuned on a GPU of the same architecture (compute capability) and the same SM
    count, the closest-named if several (an H200 and an H100 SXM: 9.0 and 132 SMs each): the
    device's own entries first, the sibling's for the keys (a head size, an fp8 cache) its
    own tuning has not covered. A GPU that differs in either (an H100 PCIe has 114 SMs) gets
    no sibling, and with no table of its own the heuristics, which derive splits from its
    own SM count. Without ``capability`` and ``num_sms`` only the device's own table is used."""
    roots = list(roots)
    file_name = device_file_name(device_name)
    own: Table | None = None
    for root in reversed(roots):
        res = root.joinpath(kernel, file_name)
        if _is_file(res):
            table = _load(res, kernel)
            if table is not None:
                own = table if own is None else table.over(own)
    if capability is None or num_sms is None:
        return own
    best: tuple[int, int, Table] | None = None
    for rank, root in enumerate(roots):
        for res in _listing(root.joinpath(kernel)):
            if not res.name.endswith(".json") or res.name == file_name:
                continue
            table = _load(res, kernel)
            if table is None or table.capability != tuple(capability) or tuned_sms(table) != num_sms:
                continue
            score = (_shared_prefix(device_name, table.device_name), -rank)
            if best is None or score > best[:2]:
                best = (*score, table)
    sibling = best[2] if best else None
    if own is None or sibling is None:
        return own or sibling
    return own.over(sibling)
