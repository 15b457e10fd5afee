"""Writing tables: merge new entries into a file under an exclusive lock, then replace the
file atomically (temporary file + ``os.replace``), so that a reader never sees half a file
and two tuner processes writing the same file lose neither's entries."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..tuning.keys import KERNELS
from ..tuning.schema import SCHEMA_VERSION
from ..tuning.tables import TableError, device_file_name, parse_table, upgrade_doc

__all__ = ["load_doc", "locked", "merge_entries", "new_doc", "table_path", "write_atomic"]


def table_path(root: Path, kernel: str, device_name: str) -> Path:
    return Path(root) / kernel / device_file_name(device_name)


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def new_doc(
    kernel: str,
    device_name: str,
    capability: tuple[int, int] | list[int] | None,
    *,
    num_sms: int | None = None,
    versions: dict[str, str | None] | None = None,
    config_space: dict[str, list[int]] | None = None,
    tuning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An empty table with its metadata."""
    device: dict[str, Any] = {"name": device_name, "capability": list(capability) if capability else None}
    if num_sms:
        device["num_sms"] = num_sms
    return {
        "schema_version": SCHEMA_VERSION,
        "kernel": kernel,
        "device": device,
        "versions": versions or {"triton": None, "torch": None},
        "created": now_utc(),
        "tuning": {"duration_s": 0.0, **(tuning or {})},
        "key_fields": list(KERNELS[kernel].key_fields),
        "config_space": config_space or {},
        "entries": [],
    }


def load_doc(path: Path) -> dict[str, Any] | None:
    """The file's document (in the current format) if it exists and is a valid table; None if
    it does not exist. Raises TableError if it exists but is not a valid table."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TableError(f"{path}: cannot read: {e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TableError(f"{path}: not JSON: {e}") from None
    parse_table(doc, str(path))
    # A table from before its key's newest field: its keys gain it (tables.upgrade_doc).
    return upgrade_doc(doc)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (POSIX ``flock``) on the folder of ``path``: a lock on
    the folder rather than on a lock file leaves nothing behind to be committed or shipped."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":  # no flock; a single writer is assumed
        yield
        return
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sort_key(kernel: str, entry: dict[str, Any]) -> tuple:
    return KERNELS[kernel].key_from_dict(entry["key"])


def merge_entries(
    path: Path, base: dict[str, Any], entries: list[dict[str, Any]], *, duration_s: float = 0.0
) -> dict[str, Any]:
    """Add ``entries`` (replacing those with the same key) to the table at ``path``, creating it
    from ``base`` (metadata, no entries needed) if absent. A corrupt file is moved aside to
    ``<path>.corrupt`` with a warning. Returns the document written."""
    path = Path(path)
    kernel = base["kernel"]
    spec = KERNELS[kernel]
    with locked(path):
        try:
            doc = load_doc(path)
        except TableError as err:
            aside = Path(str(path) + ".corrupt")
            warnings.warn(f"{err}; moved to {aside}, starting a new table", RuntimeWarning, stacklevel=2)
            os.replace(path, aside)
            doc = None
        if doc is None:
            doc = json.loads(json.dumps(base))
            doc["entries"] = []
        elif doc["kernel"] != kernel:
            raise TableError(f"{path} holds kernel {doc['kernel']!r}, not {kernel!r}")
        merged = {spec.key_from_dict(e["key"]): e for e in doc["entries"]}
        for e in entries:
            merged[spec.key_from_dict(e["key"])] = e
        doc["entries"] = sorted(merged.values(), key=lambda e: _sort_key(kernel, e))
        doc["created"] = now_utc()
        tuning = doc["tuning"]
        tuning["duration_s"] = round(float(tuning.get("duration_s", 0.0)) + duration_s, 3)
        # A table filled by several runs (resumed after a budget ran out, other geometries,
        # another page size) names each command that wrote to it, in order.
        command = (base.get("tuning") or {}).get("command")
        if command:
            commands = tuning.setdefault("commands", [tuning["command"]] if tuning.get("command") else [])
            if command not in commands:
                commands.append(command)
        if base.get("versions"):
            doc["versions"] = base["versions"]
        # Runs over several geometries declare different spaces (head_dim 256 uses smaller
        # tiles): the file records their union.
        space = doc.setdefault("config_space", {})
        for name, values in (base.get("config_space") or {}).items():
            space[name] = sorted(set(space.get(name, [])) | set(values))
        parse_table(doc, str(path))  # never write what the reader would reject
        write_atomic(path, doc)
    return doc
