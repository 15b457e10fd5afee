"""Launch configurations: explicit argument, else tuning table, else heuristic."""

from .configs import AttentionConfig, DecodeConfig, KVWriteConfig, PrefillConfig
from .heuristics import AttentionProblem, decode_heuristic, kv_write_heuristic, prefill_heuristic

__all__ = [
    "AttentionConfig",
    "AttentionProblem",
    "DecodeConfig",
    "KVWriteConfig",
    "PrefillConfig",
    "decode_heuristic",
    "kv_write_heuristic",
    "prefill_heuristic",
    "select_decode_config",
    "select_prefill_config",
]


def select_decode_config(problem: AttentionProblem) -> DecodeConfig:
    return decode_heuristic(problem)


def select_prefill_config(problem: AttentionProblem) -> PrefillConfig:
    return prefill_heuristic(problem)
