"""Every provider's output against ``triton_attn_kernels.reference`` before it is timed.

Big cases would make the fp32 reference slow and huge (a 32k causal prefill is a
32k x 32k score matrix per head), so the check samples: the first, a middle and the last
sequence, and in each up to three windows of query rows (first, middle, last), each judged
by :func:`triton_attn_kernels.testing.compare` against
:func:`triton_attn_kernels.testing.paged_rows_ref` (the same sampled check as the tuner's and
the kernels' fuzzer's). An MLA decode's rows are judged against
:func:`triton_attn_kernels.reference_mla.mla_decode_ref` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from triton_attn_kernels.reference import write_kv_cache_ref
from triton_attn_kernels.reference_mla import mla_decode_ref
from triton_attn_kernels.testing import Tolerance, compare, paged_rows_ref
from triton_attn_kernels.testing import tolerance as kernel_tolerance

from .inputs import Inputs

__all__ = ["CheckResult", "check", "tolerance"]

WINDOW = 8  # query rows per sampled window
MAX_KV_SAMPLES = 64  # tokens checked per KV write


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    max_err: float
    detail: str = ""


def tolerance(dtype: str, kv_dtype: str) -> Tolerance:
    """The kernels' tolerance for ``dtype`` (:func:`triton_attn_kernels.testing.tolerance`),
    doubled with an fp8 KV cache: the reference dequantises fp8 exactly as our kernels do, but
    peers may round P (or the query) to fp8 as well."""
    tol = kernel_tolerance(dtype)
    return tol.scaled(2) if kv_dtype.startswith("float8") else tol


def _windows(n: int) -> list[tuple[int, int]]:
    if n <= 3 * WINDOW:
        return [(0, n)]
    mid = n // 2
    return [(0, WINDOW), (mid - WINDOW // 2, mid + WINDOW // 2), (n - WINDOW, n)]


def sampled_sequences(x: Inputs) -> list[int]:
    n = len(x.q_lens)
    picks = [0, n // 2, n - 1]
    if x.problem.op == "mixed":
        picks.append(x.problem.batch)  # the first prefill chunk
    return sorted({i for i in picks if 0 <= i < n})


Reference = Callable[[Inputs, int, int, int], torch.Tensor]


def _paged_rows(x: Inputs, seq: int, lo: int, hi: int) -> torch.Tensor:
    scales: dict[str, Any] = {"scale": x.scale, "k_scale": x.k_scale, "v_scale": x.v_scale}
    return paged_rows_ref(
        x.q, x.k_cache, x.v_cache, x.block_table, x.seq_lens, x.cu_seqlens_q,
        seq=seq, rows=(lo, hi), **scales, **x.features(),
    )  # fmt: skip


def _mla_rows(x: Inputs, seq: int, lo: int, hi: int) -> torch.Tensor:
    """triton_attn_kernels.reference_mla on rows lo:hi of one sequence: the context is cut
    after row hi - 1, as for :func:`paged_rows_ref` (causal rows see no later key)."""
    start, q_len = int(x.cu_seqlens_q[seq].item()), x.q_lens[seq]
    rows = slice(start + lo, start + hi)
    ctx = torch.tensor([x.kv_lens[seq] - q_len + hi], dtype=torch.int32, device=x.device)
    cu = torch.tensor([0, hi - lo], dtype=torch.int32, device=x.device)
    table = x.block_table[seq : seq + 1]
    ref = mla_decode_ref(x.q_nope[rows], x.q_pe[rows], x.latent_cache, table, ctx, cu, scale=x.scale, k_scale=x.k_scale)
    return cast(torch.Tensor, ref)


def _attention(x: Inputs, got: torch.Tensor, reference: Reference) -> CheckResult:
    p = x.problem
    if tuple(got.shape) != x.out_shape:
        return CheckResult(False, float("inf"), f"output shape {tuple(got.shape)} != {x.out_shape}")
    cu = x.cu_seqlens_q.tolist()
    tol = tolerance(p.dtype, p.kv_dtype)
    worst = 0.0
    for i in sampled_sequences(x):
        for lo, hi in _windows(x.q_lens[i]):
            result = compare(got[cu[i] + lo : cu[i] + hi], reference(x, i, lo, hi), tol)
            worst = max(worst, result.max_err)
            if not result.ok:
                return CheckResult(False, result.max_err, f"sequence {i} rows {lo}:{hi}: {result.failure}")
    return CheckResult(True, worst)


def _kv_write(x: Inputs, got: tuple[torch.Tensor, torch.Tensor]) -> CheckResult:
    p = x.problem
    n = x.slot_mapping.shape[0]
    idx = torch.linspace(0, n - 1, min(n, MAX_KV_SAMPLES), device=x.device).round().long().unique()
    small = (idx.numel(), 1, p.num_kv_heads, p.head_dim)
    ref_k = torch.zeros(small, dtype=x.k_cache.dtype, device=x.device)
    ref_v = torch.zeros(small, dtype=x.v_cache.dtype, device=x.device)
    slots = torch.arange(idx.numel(), device=x.device)
    write_kv_cache_ref(x.key[idx], x.value[idx], ref_k, ref_v, slots, k_scale=x.k_scale, v_scale=x.v_scale)
    worst = 0.0
    for cache, ref in zip(got, (ref_k, ref_v), strict=True):
        flat = cache.view(-1, p.num_kv_heads, p.head_dim)[x.slot_mapping[idx]].float()
        want = ref[:, 0].float()
        # fp8 rounding may differ by one unit in the last place: 2^-3 (e4m3) / 2^-2 (e5m2) relative.
        rel = {"float8_e4m3fn": 0.125, "float8_e5m2": 0.25}.get(p.kv_dtype, 0.0)
        err = ((flat - want).abs() - rel * want.abs()).max().item()
        worst = max(worst, err)
    if not worst <= 1e-6:
        return CheckResult(False, worst, f"cache slots differ from the reference by {worst:.3g}")
    return CheckResult(True, max(worst, 0.0))


def check(x: Inputs, output: Any) -> CheckResult:
    """Compare a provider's canonical output with the reference on sampled rows/tokens."""
    if x.problem.op == "kv_write":
        return _kv_write(x, output)
    return _attention(x, output, _mla_rows if x.problem.op == "mla_decode" else _paged_rows)
