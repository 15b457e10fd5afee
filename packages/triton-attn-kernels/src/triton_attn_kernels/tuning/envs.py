"""Every environment variable the kernels package reads, in one place.

Each is read once, on the first launch that needs it (never at import time and never again
on the hot path); :func:`triton_attn_kernels.tuning.reset` forgets the values, for tests.

``TRITON_ATTN_TUNING_DIR``
    A directory laid out like ``dejavu_data/`` (``<kernel>/<DEVICE_NAME>.json``). Its tables
    take precedence over the shipped ones: entries for the same key replace the shipped
    entries, other shipped entries stay available. Unset: shipped tables only.

``TRITON_ATTN_TUNING``
    ``1`` (default): use tuning tables. ``0``: heuristics only, for A/B benchmarks of the
    tables against the heuristics. An explicit ``config=`` argument is honoured either way.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["tables_enabled", "tuning_dir"]


@functools.cache
def tuning_dir() -> Path | None:
    value = os.environ.get("TRITON_ATTN_TUNING_DIR", "").strip()
    return Path(value).expanduser() if value else None


@functools.cache
def tables_enabled() -> bool:
    value = os.environ.get("TRITON_ATTN_TUNING", "1").strip().lower()
    return value not in ("0", "off", "false", "no")


def _forget() -> None:
    tuning_dir.cache_clear()
    tables_enabled.cache_clear()
