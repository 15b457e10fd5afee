"""Work and traffic of a problem, as pure functions of its shape.

- Attention bytes count the K and V bytes of every sequence's context read once (what
  ANCHORS.md uses for decode GB/s); queries and outputs are left out (<1% for decode).
- Attention flops are 2 * 2 * Hq * D per visible (query, key) pair (QK^T and PV); a causal
  block of L new tokens counts L^2 / 2 pairs (ANCHORS.md's prefill convention), plus
  L * prefix pairs against a cached prefix.
- KV write bytes: K and V read in the input dtype plus written in the cache dtype.
"""

from __future__ import annotations

from .problems import Problem

__all__ = ["DTYPE_BYTES", "bytes_moved", "flops", "intensity", "roofline_seconds", "visible_pairs"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def visible_pairs(q_len: int, context: int) -> float:
    return q_len * (context - q_len) + q_len * q_len / 2


def flops(p: Problem) -> float:
    if p.op == "kv_write":
        return 0.0
    pairs = sum(visible_pairs(q, k) for q, k in p.seqs())
    return 4.0 * p.num_q_heads * p.head_dim * pairs


def bytes_moved(p: Problem) -> float:
    row = p.num_kv_heads * p.head_dim
    if p.op == "kv_write":
        return 2.0 * p.num_tokens * row * (DTYPE_BYTES[p.dtype] + DTYPE_BYTES[p.kv_dtype])
    return 2.0 * p.kv_tokens * row * DTYPE_BYTES[p.kv_dtype]


def intensity(p: Problem) -> float:
    """Flops per byte (the roofline's x axis)."""
    return flops(p) / bytes_moved(p)


def roofline_seconds(p: Problem, gbps: float, tflops: float) -> float:
    """The least time the measured ceilings allow: max(bytes / bandwidth, flops / peak)."""
    t_mem = bytes_moved(p) / (gbps * 1e9) if gbps > 0 else 0.0
    t_math = flops(p) / (tflops * 1e12) if tflops > 0 else 0.0
    return max(t_mem, t_math)
