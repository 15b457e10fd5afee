"""Every environment variable the kernels package reads, in one place.

The tuning variables are read once, on the first launch that needs them (never at import
time and never again on the hot path); :func:`triton_attn_kernels.tuning.reset` forgets the
values, for tests. ``TRITON_ATTN_DEBUG`` is read at every launch (one dictionary lookup), so
that turning it on in a running process takes effect at the next call.

``TRITON_ATTN_TUNING_DIR``
    A directory laid out like ``dejavu_data/`` (``<kernel>/<DEVICE_NAME>.json``). Its tables
    take precedence over the shipped ones: entries for the same key replace the shipped
    entries, other shipped entries stay available. Unset: shipped tables only.

``TRITON_ATTN_TUNING``
    ``1`` (default): use tuning tables. ``0``: heuristics only, for A/B benchmarks of the
    tables against the heuristics. An explicit ``config=`` argument is honoured either way.

``TRITON_ATTN_HOPPER_DECODE``
    Which decode launches on sm_90 may take the Gluon Hopper decode where the policy's rule
    serves them (``tuning.gluon_decode_config``), for A/B runs end to end: ``auto``
    (default; also ``1``): speculative verification (2 or more new tokens per sequence) at
    any batch, one-token decode at batches of up to
    ``tuning.heuristics.GLUON_DECODE_ONE_TOKEN_MAX_SEQS`` sequences; ``verify``: verification
    only; ``all``: every decode launch; ``0`` (also ``off``): none, the generic decode kernel
    and its tables (attn-bench's ``ours-paged-generic`` does the same per launch). An
    explicit ``config=`` is honoured either way.

``TRITON_ATTN_DEBUG``
    ``1`` (also ``true``, ``on``, ``yes``): every launch first checks the contents of its index
    tensors and fp8 scales on the host (:mod:`triton_attn_kernels.debug`), which synchronises
    the device. Unset or ``0``: off. :func:`triton_attn_kernels.debug.set_enabled` overrides
    it from Python.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["debug_requested", "hopper_decode_mode", "tables_enabled", "tuning_dir"]


@functools.cache
def tuning_dir() -> Path | None:
    value = os.environ.get("TRITON_ATTN_TUNING_DIR", "").strip()
    return Path(value).expanduser() if value else None


@functools.cache
def tables_enabled() -> bool:
    value = os.environ.get("TRITON_ATTN_TUNING", "1").strip().lower()
    return value not in ("0", "off", "false", "no")


@functools.cache
def hopper_decode_mode() -> str | None:
    """``TRITON_ATTN_HOPPER_DECODE``: ``"auto"``, ``"verify"``, ``"all"``, or ``None`` (off).
    Any other value is an error naming it."""
    value = os.environ.get("TRITON_ATTN_HOPPER_DECODE", "auto").strip().lower()
    modes: dict[str, str | None] = {
        "auto": "auto",
        "1": "auto",
        "verify": "verify",
        "all": "all",
        "0": None,
        "off": None,
    }
    if value not in modes:
        raise ValueError(f"TRITON_ATTN_HOPPER_DECODE must be one of auto, verify, all, 0 (or 1, off), got {value!r}")
    return modes[value]


def debug_requested() -> bool:
    """``TRITON_ATTN_DEBUG``, read at each call (not memoised)."""
    value = os.environ.get("TRITON_ATTN_DEBUG")
    return value is not None and value.strip().lower() in ("1", "true", "on", "yes")


def _forget() -> None:
    tuning_dir.cache_clear()
    tables_enabled.cache_clear()
    hopper_decode_mode.cache_clear()
