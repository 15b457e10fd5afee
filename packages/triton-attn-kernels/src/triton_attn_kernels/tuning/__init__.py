"""Launch configurations: explicit argument, else tuning table, else heuristic.

``select_*_config`` resolve one launch's configuration; :mod:`.policy` decides the
launches of a call (:func:`plan_launch`) or of a server's batches (:class:`ServingPolicy`).
A table lookup happens once per distinct problem (then it is one dictionary hit); tables
live in ``dejavu_data/<kernel>/<DEVICE>.json`` (see docs/tuning.md) and a user directory
named by ``TRITON_ATTN_TUNING_DIR`` overrides them (:mod:`.envs`). ``stats()`` says which source served how many lookups; the logger
``triton_attn_kernels.tuning`` says the same per problem at DEBUG level.
"""

from __future__ import annotations

from typing import Any

from . import envs
from .configs import AttentionConfig, DecodeConfig, KVWriteConfig, PrefillConfig
from .heuristics import (
    AttentionProblem,
    decode_heuristic,
    gluon_decode_config,
    gluon_persistent,
    gluon_prefill_config,
    kv_write_heuristic,
    prefill_heuristic,
    prefill_warps,
)
from .policy import (
    MAX_DECODE_QUERY_LEN,
    LaunchPlan,
    ServingLimits,
    ServingPolicy,
    decode_workspace_numel,
    decodes_first,
    model_geometry,
    plan_launch,
    preferred_block_size,
    resolve_decode_query_len,
)
from .select import ConfigSelector, DeviceInfo

__all__ = [
    "MAX_DECODE_QUERY_LEN",
    "AttentionConfig",
    "AttentionProblem",
    "ConfigSelector",
    "DecodeConfig",
    "DeviceInfo",
    "KVWriteConfig",
    "LaunchPlan",
    "PrefillConfig",
    "ServingLimits",
    "ServingPolicy",
    "decode_heuristic",
    "decode_workspace_numel",
    "decodes_first",
    "gluon_decode_config",
    "gluon_persistent",
    "gluon_prefill_config",
    "kv_write_heuristic",
    "model_geometry",
    "plan_launch",
    "preferred_block_size",
    "prefill_heuristic",
    "prefill_warps",
    "reset",
    "resolve_decode_query_len",
    "select_decode_config",
    "select_kv_write_config",
    "select_prefill_config",
    "stats",
]

# Holds empty dictionaries until the first lookup; creating it reads nothing.
_selector = ConfigSelector()


def select_decode_config(
    problem: AttentionProblem, config: DecodeConfig | None = None, *, device: Any = None
) -> DecodeConfig:
    """``config`` if given, else the table's choice for ``problem`` on ``device`` (a
    ``torch.device``; ``None`` means the current CUDA device), else the heuristic."""
    return _selector.decode(problem, config, device)


def select_prefill_config(
    problem: AttentionProblem, config: PrefillConfig | None = None, *, device: Any = None
) -> PrefillConfig:
    """As :func:`select_decode_config`, for the prefill specialisation."""
    return _selector.prefill(problem, config, device)


def select_kv_write_config(
    num_kv_heads: int,
    head_dim: int,
    *,
    num_tokens: int,
    dtype: Any,
    kv_dtype: Any,
    config: KVWriteConfig | None = None,
    device: Any = None,
    interpreter: bool | None = None,
) -> KVWriteConfig:
    """``config`` if given, else the table's choice, else :func:`kv_write_heuristic`.
    ``dtype``/``kv_dtype``: torch dtypes (or their names) of the new keys and of the cache;
    ``device``: as in :func:`select_decode_config`; ``interpreter``: the launch runs in
    Triton's interpreter, which gets the heuristic (``None``: ``TRITON_INTERPRET=1``)."""
    return _selector.kv_write(
        num_kv_heads,
        head_dim,
        num_tokens=num_tokens,
        dtype=dtype,
        kv_dtype=kv_dtype,
        config=config,
        device=device,
        interpreter=interpreter,
    )


def stats() -> dict[str, Any]:
    """Lookups served per kernel and source, and the tables in use; see
    :meth:`ConfigSelector.stats`."""
    return _selector.stats()


def reset() -> None:
    """Forget memoised lookups, loaded tables, counters and environment variables (tests,
    or after writing new tables in a running process)."""
    global _selector
    envs._forget()
    _selector = ConfigSelector()
