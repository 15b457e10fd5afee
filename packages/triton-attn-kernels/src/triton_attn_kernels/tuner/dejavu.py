"""Convert a triton-dejavu ``cache.json`` into our table format, by reading the file (no
dependency on triton-dejavu, which does not run on Triton >= 3.4).

A triton-dejavu cache file (``<storage>/dejavu_<v>/triton_<v>/cuda_<v>/gpu_<NAME>/<kernel>/
.../cache.json``) looks like::

    {"signature": "JITFunction(module:kernel)", "total_bench_time_s": 86841.7,
     "evaluated_configs": 240, "keys": ["HQ", "HK", "MAX_SEQLENS_Q", ...],
     "cache": {"('32', '8', '1024', ..., 'torch.float16', ...)":
               "BLOCK_M: 64, BLOCK_N: 32, num_warps: 4, num_ctas: 1, num_stages: 2, maxnreg: None"},
     "timings": {"(...)": [0.0036]}}

Each cache key is the Triton autotuner key: the values of the ``keys`` arguments, then the
dtypes of the tensor arguments. Names are mapped onto our key and config fields through
the alias tables below, ``--map NAME=FIELD`` and ``--set FIELD=VALUE``.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..tuning.keys import ADDED_KEY_FIELDS, KERNELS
from .store import new_doc

__all__ = ["convert", "parse_config", "parse_key"]

# triton-dejavu key argument names seen in attention kernels -> our fields.
KEY_ALIASES = {
    "head_dim": "head_dim",
    "HEAD_SIZE": "head_dim",
    "HEAD_DIM": "head_dim",
    "head_size": "head_dim",
    "BLOCK_DMODEL": "head_dim",
    "ACTUAL_BLOCK_DMODEL": "head_dim",
    "HQ": "num_q_heads",
    "num_query_heads": "num_q_heads",
    "num_q_heads": "num_q_heads",
    "NUM_QUERY_HEADS": "num_q_heads",
    "HK": "num_kv_heads",
    "num_kv_heads": "num_kv_heads",
    "NUM_KV_HEADS": "num_kv_heads",
    "num_queries_per_kv": "group",
    "NUM_QUERIES_PER_KV": "group",
    "group": "group",
    "MAX_SEQLENS_Q": "max_seqlen_q",
    "max_seqlen_q": "max_seqlen_q",
    "MAX_SEQ_LEN_Q": "max_seqlen_q",
    "MAX_SEQLENS_K": "max_seqlen_k",
    "max_seqlen_k": "max_seqlen_k",
    "MAX_SEQ_LEN": "max_seqlen_k",
    "max_seq_len": "max_seqlen_k",
    "num_seqs": "num_seqs",
    "BATCH": "num_seqs",
    "batch_size": "num_seqs",
    "num_tokens": "num_tokens",
    "BLOCK_SIZE": "block_size",
    "block_size": "block_size",
    "dtype": "dtype",
    "kv_dtype": "kv_dtype",
}
# triton-dejavu config parameter names -> our config fields.
CONFIG_ALIASES = {
    "BLOCK_M": "block_m",
    "BLOCK_N": "tile_n",
    "TILE_N": "tile_n",
    "TILE_SIZE": "tile_n",
    "NUM_SPLITS": "num_splits",
    "NUM_SEGMENTS": "num_splits",
    "NUM_SEGMENTS_PER_SEQ": "num_splits",
    "num_warps": "num_warps",
    "num_stages": "num_stages",
}
_DEVICE_DIR = re.compile(r"^gpu_(.+)$")
_VERSION_DIR = re.compile(r"^(triton|cuda|rocm|torch|dejavu)_(.+)$")


def parse_key(text: str) -> tuple[str, ...]:
    """``"('32', 8, 'torch.float16')"`` -> ``("32", "8", "torch.float16")`` (all strings;
    triton-dejavu writes them quoted or bare depending on its version)."""
    try:
        value = ast.literal_eval(text)
        if isinstance(value, tuple):
            return tuple(str(v) for v in value)
    except (ValueError, SyntaxError):
        pass
    inner = text.strip()[1:-1]
    return tuple(p.strip().strip("'\"") for p in inner.split(",") if p.strip())


def parse_config(text: str) -> dict[str, str]:
    """``"BLOCK_M: 64, num_warps: 4, maxnreg: None"`` -> ``{"BLOCK_M": "64", ...}``."""
    out = {}
    for part in text.split(","):
        if ":" in part:
            name, value = part.split(":", 1)
            out[name.strip()] = value.strip()
    return out


def _device_from_path(path: Path) -> tuple[str | None, dict[str, str]]:
    name, versions = None, {}
    for part in path.resolve().parts:
        m = _DEVICE_DIR.match(part)
        if m:
            name = m.group(1).replace("_", " ")
        v = _VERSION_DIR.match(part)
        if v:
            versions[v.group(1)] = v.group(2)
    return name, versions


# Compute capability of devices by name, for tables imported without a GPU at hand.
_CAPABILITIES = (
    ("GH200", (9, 0)),
    ("H100", (9, 0)),
    ("H200", (9, 0)),
    ("H800", (9, 0)),
    ("H20", (9, 0)),
    ("B200", (10, 0)),
    ("A100", (8, 0)),
    ("A800", (8, 0)),
    ("L40", (8, 9)),
    ("L4", (8, 9)),
    ("A10", (8, 6)),
    ("A40", (8, 6)),
)


def capability_for(name: str) -> tuple[int, int] | None:
    for part, cap in _CAPABILITIES:
        if re.search(rf"\b{part}\b", name):
            return cap
    return None


def convert(
    path: Path,
    kernel: str,
    *,
    device_name: str | None = None,
    capability: tuple[int, int] | None = None,
    key_names: list[str] | None = None,
    mapping: dict[str, str] | None = None,
    constants: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """(table document, notes about skipped entries). Raises ValueError if the file is not a
    triton-dejavu cache or the device cannot be determined."""
    spec = KERNELS[kernel]
    try:
        src = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a triton-dejavu cache: {e}") from None
    if not isinstance(src, dict) or not isinstance(src.get("cache"), dict):
        raise ValueError(f"{path}: no 'cache' object; not a triton-dejavu cache.json")
    path_name, path_versions = _device_from_path(Path(path))
    name = device_name or path_name
    if not name:
        raise ValueError(f"{path}: the device is not in the path (gpu_<NAME>/); pass --device")
    names = key_names or src.get("keys")
    if not names:
        raise ValueError(f"{path}: the file lists no 'keys'; pass --keys NAME,NAME,...")
    aliases = {**KEY_ALIASES, **(mapping or {})}
    config_aliases = {**CONFIG_ALIASES, **(mapping or {})}
    defaults = asdict(spec.config_cls())
    timings = src.get("timings") or {}
    entries: list[dict[str, Any]] = []
    notes: list[str] = []
    seen: set[tuple] = set()
    for raw_key, raw_config in src["cache"].items():
        values = parse_key(raw_key)
        fields: dict[str, Any] = {}
        for arg, value in zip(names, values, strict=False):
            target = aliases.get(arg)
            if target is not None:
                fields[target] = value
        dtypes = [v.removeprefix("torch.") for v in values[len(names) :] if v.startswith("torch.")]
        if dtypes:
            fields.setdefault("dtype", dtypes[0])
            fields.setdefault("kv_dtype", dtypes[1] if len(dtypes) > 1 else dtypes[0])
        fields.update(constants or {})
        added = ADDED_KEY_FIELDS.get(kernel)
        if added is not None:
            # A key field our tables gained later (the decode's page size): a cache that does
            # not give it was tuned, as our own older tables were, at the default.
            fields.setdefault(added[0], added[2])
        try:
            if "group" not in fields and {"num_q_heads", "num_kv_heads"} <= set(fields):
                fields["group"] = int(fields["num_q_heads"]) // int(fields["num_kv_heads"])
            key = {}
            for f in spec.key_fields:
                if f not in fields:
                    raise KeyError(f)
                key[f] = str(fields[f]) if f in ("dtype", "kv_dtype") else int(float(fields[f]))
        except KeyError as e:
            notes.append(f"skipped {raw_key}: no value for {e.args[0]} (use --map or --set)")
            continue
        except ValueError as e:
            notes.append(f"skipped {raw_key}: {e}")
            continue
        config = dict(defaults)
        for param, value in parse_config(raw_config).items():
            target = config_aliases.get(param)
            if target in config and value not in ("None", ""):
                config[target] = int(value)
        try:
            spec.config_cls(**config)
        except ValueError as e:
            notes.append(f"skipped {raw_key}: {e}")
            continue
        k = spec.key_from_dict(key)
        if k in seen:
            notes.append(f"skipped {raw_key}: same key as an earlier entry")
            continue
        seen.add(k)
        t = timings.get(raw_key)
        if isinstance(t, dict):
            t = t.get("values")
        ms = t[0] if isinstance(t, list) and t else t
        time_us = round(float(ms) * 1e3, 3) if isinstance(ms, int | float) and ms > 0 else None
        entries.append({"key": key, "config": config, "time_us": time_us, "runner_up": None})
    versions = {
        "triton": path_versions.get("triton"),
        "torch": path_versions.get("torch"),
        "cuda": path_versions.get("cuda") or path_versions.get("rocm"),
        "triton_dejavu": path_versions.get("dejavu"),
    }
    doc = new_doc(
        kernel,
        name,
        capability or capability_for(name),
        versions=versions,
        config_space={f: sorted({e["config"][f] for e in entries}) for f in spec.config_fields},
        tuning={
            "duration_s": float(src.get("total_bench_time_s") or 0.0),
            "source": f"triton-dejavu {src.get('signature', '')}: {Path(path).name}",
            "configs_per_key": src.get("evaluated_configs") or src.get("total_configs"),
        },
    )
    doc["entries"] = sorted(entries, key=lambda e: spec.key_from_dict(e["key"]))
    return doc, notes
