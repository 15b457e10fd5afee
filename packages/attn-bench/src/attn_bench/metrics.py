"""Work and traffic of a problem, as pure functions of its shape.

- Attention bytes count the K and V bytes each sequence's queries can see, read once: the
  whole context, or with a sliding window of W keys only the last ``q_len + W - 1`` keys
  (what a kernel that skips keys left of the window reads; counting the whole context would
  put a windowed decode far above the memory's bandwidth). Queries and outputs are left out
  (<1% for decode).
- Attention flops are 2 * 2 * Hq * D per visible (query, key) pair (QK^T and PV); a causal
  block of L new tokens counts L^2 / 2 pairs (the usual prefill convention), plus L * prefix
  pairs against a cached prefix. With a window, each query's visible keys are counted
  exactly: min(position + 1, W).
- KV write bytes: K and V read in the input dtype plus written in the cache dtype.
- MLA: flops are 2 * Hq * (head_dim + head_dim_v) per visible pair (QK^T at the q/k head
  size, PV at the value head size: 576 and 512 in an absorbed decode, 192 and 128 in a
  prefill). An MLA decode's bytes are the latent rows (head_dim values) each sequence can
  see, read once for all query heads: the values are the rows' first head_dim_v dims, not a
  second read. An MLA prefill reads K at head_dim and V at head_dim_v per head.
"""

from __future__ import annotations

from .problems import Problem

__all__ = ["DTYPE_BYTES", "bytes_moved", "flops", "intensity", "keys_read", "roofline_seconds", "visible_pairs"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _window(p: Problem) -> int | None:
    name, value = p.variant_arg()
    return int(value) if name == "window" else None


def visible_pairs(q_len: int, context: int, window: int | None = None) -> float:
    """(query, key) pairs a causal attention computes for one sequence whose ``q_len`` new
    tokens are the last of ``context``; ``window``: each query sees at most that many keys."""
    if window is None or window >= context:
        return q_len * (context - q_len) + q_len * q_len / 2
    # Queries at positions a..context-1 see min(position + 1, window) keys each.
    a = context - q_len
    ramp_end = min(context, window - 1)  # positions below window - 1 see position + 1 keys
    ramp = _sum_range(a + 1, ramp_end + 1) if a < ramp_end else 0
    full = context - max(a, ramp_end)
    return float(ramp + window * full)


def _sum_range(lo: int, hi: int) -> int:
    """lo + (lo + 1) + ... + (hi - 1)."""
    return (hi - lo) * (lo + hi - 1) // 2


def keys_read(q_len: int, context: int, window: int | None = None) -> int:
    """Keys (per KV head) some query of the sequence can see: all of them, or with a window
    the last ``q_len + window - 1``."""
    return context if window is None else min(context, q_len + window - 1)


def flops(p: Problem) -> float:
    if p.op == "kv_write":
        return 0.0
    w = _window(p)
    pairs = sum(visible_pairs(q, k, w) for q, k in p.seqs())
    return 2.0 * p.num_q_heads * (p.head_dim + p.v_head_dim) * pairs


def bytes_moved(p: Problem) -> float:
    row = p.num_kv_heads * p.head_dim
    if p.op == "kv_write":
        return 2.0 * p.num_tokens * row * (DTYPE_BYTES[p.dtype] + DTYPE_BYTES[p.kv_dtype])
    w = _window(p)
    keys = sum(keys_read(q, k, w) for q, k in p.seqs())
    if p.op == "mla_decode":  # one latent row per key serves as K and (its head_dim_v prefix) V
        return float(keys * row * DTYPE_BYTES[p.kv_dtype])
    return keys * p.num_kv_heads * (p.head_dim + p.v_head_dim) * float(DTYPE_BYTES[p.kv_dtype])


def intensity(p: Problem) -> float:
    """Flops per byte (the roofline's x axis)."""
    return flops(p) / bytes_moved(p)


def roofline_seconds(p: Problem, gbps: float, tflops: float) -> float:
    """The least time the measured ceilings allow: max(bytes / bandwidth, flops / peak)."""
    t_mem = bytes_moved(p) / (gbps * 1e9) if gbps > 0 else 0.0
    t_math = flops(p) / (tflops * 1e12) if tflops > 0 else 0.0
    return max(t_mem, t_math)
