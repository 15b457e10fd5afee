"""What a tuning table is indexed by: one :class:`KernelSpec` per tuned kernel.

A key is a tuple in ``spec.key_fields`` order: the categorical fields first (they change the
compiled kernel, so a table entry applies only when they match exactly), then the numeric
fields (sizes; a missing key is served by the nearest stored key in log2 distance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .configs import OPTIONAL_FIELDS, DecodeConfig, KVWriteConfig, PrefillConfig
from .heuristics import AttentionProblem

__all__ = [
    "ADDED_KEY_FIELDS",
    "DECODE",
    "KERNELS",
    "KV_WRITE",
    "PREFILL",
    "KernelSpec",
    "config_from_dict",
    "config_to_dict",
    "decode_key",
    "dtype_name",
    "kv_write_key",
    "prefill_key",
]

Config = DecodeConfig | PrefillConfig | KVWriteConfig


@dataclass(frozen=True)
class KernelSpec:
    name: str
    config_cls: type
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    # Numeric fields a nearest key may differ in by any distance (still counted in the sum):
    # an entry at another page size beats the heuristic when none at the problem's is near.
    unbounded: tuple[str, ...] = ()

    @property
    def key_fields(self) -> tuple[str, ...]:
        return self.categorical + self.numeric

    @property
    def config_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.config_cls))

    def key_to_dict(self, key: tuple) -> dict[str, Any]:
        return dict(zip(self.key_fields, key, strict=True))

    def key_from_dict(self, d: dict[str, Any]) -> tuple:
        return tuple(d[name] for name in self.key_fields)


# Categorical fields are compile-time constants of the kernel (HEAD_DIM, GROUP, NUM_KV_HEADS,
# the dtypes): a config tuned for one value says nothing reliable about another (GROUP, for
# one, changes how many tokens a prefill tile of block_m rows holds).
DECODE = KernelSpec(
    "decode",
    DecodeConfig,
    ("head_dim", "group", "dtype", "kv_dtype"),
    # num_kv_heads * num_seqs programs before splitting: both decide num_splits. block_size:
    # the cache's page size, the last field added (tables written before it were all tuned at
    # the page size their tuning.block_size records; the reader fills it in from there).
    ("num_kv_heads", "num_seqs", "max_seqlen_k", "block_size"),
    unbounded=("block_size",),
)
# Key fields a kernel's tables once lacked -> where the reader takes the value from:
# (field, the table's tuning.<name>, the value where even that is missing).
ADDED_KEY_FIELDS: dict[str, tuple[str, str, int]] = {"decode": ("block_size", "block_size", 16)}
# A decode problem without a known page size (contiguous keys) is looked up as 16-token pages.
DEFAULT_BLOCK_SIZE = 16
PREFILL = KernelSpec(
    "prefill",
    PrefillConfig,
    ("head_dim", "group", "dtype", "kv_dtype"),
    ("num_kv_heads", "num_seqs", "max_seqlen_q", "max_seqlen_k"),
)
KV_WRITE = KernelSpec("kv_write", KVWriteConfig, ("head_dim", "num_kv_heads", "dtype", "kv_dtype"), ("num_tokens",))
KERNELS: dict[str, KernelSpec] = {s.name: s for s in (DECODE, PREFILL, KV_WRITE)}


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` or ``"bfloat16"`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def decode_key(p: AttentionProblem) -> tuple:
    block_size = p.block_size if p.block_size else DEFAULT_BLOCK_SIZE
    return (p.head_dim, p.group, p.dtype, p.kv_dtype, p.num_kv_heads, p.num_seqs, p.max_seqlen_k, block_size)


def prefill_key(p: AttentionProblem) -> tuple:
    return (p.head_dim, p.group, p.dtype, p.kv_dtype, p.num_kv_heads, p.num_seqs, p.max_seqlen_q, p.max_seqlen_k)


def kv_write_key(num_kv_heads: int, head_dim: int, num_tokens: int, dtype: Any, kv_dtype: Any) -> tuple:
    return (head_dim, num_kv_heads, dtype_name(dtype), dtype_name(kv_dtype), num_tokens)


def log2_point(spec: KernelSpec, key: tuple) -> tuple[float, ...]:
    """The numeric part of a key on a log2 scale (sizes below 1 count as 1)."""
    n = len(spec.categorical)
    return tuple(math.log2(max(int(v), 1)) for v in key[n:])


def config_to_dict(config: Config) -> dict[str, int]:
    return {f.name: getattr(config, f.name) for f in fields(config)}


def config_from_dict(spec: KernelSpec, d: Any) -> Config:
    """Raises ValueError/TypeError for unknown or missing fields and out-of-range values."""
    if not isinstance(d, dict):
        raise TypeError(f"a {spec.name} config must be an object, got {type(d).__name__}")
    unknown = set(d) - set(spec.config_fields)
    missing = set(spec.config_fields) - set(d) - set(OPTIONAL_FIELDS)
    if unknown or missing:
        raise ValueError(f"{spec.name} config {d}: unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    if any(isinstance(v, bool) for v in d.values()):
        raise TypeError(f"{spec.name} config values must be integers, got {d}")
    return spec.config_cls(**d)
