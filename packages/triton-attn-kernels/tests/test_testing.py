"""The sampled reference check shared by the tests, the tuner, attn-bench and the fuzzer."""

from __future__ import annotations

import pytest
import torch

from triton_attn_kernels.reference import paged_attention_ref
from triton_attn_kernels.testing import compare, paged_rows_ref, tolerance


def _paged_batch(gen: torch.Generator, seq_lens: list[int], q_lens: list[int], *, bs: int = 4):
    hkv, hq, d = 2, 4, 16
    pages = [-(-n // bs) for n in seq_lens]
    perm = torch.randperm(sum(pages), generator=gen)
    table = torch.zeros(len(seq_lens), max(pages), dtype=torch.int32)
    at = 0
    for i, n in enumerate(pages):
        table[i, :n] = perm[at : at + n].to(torch.int32)
        at += n
    k = torch.randn(sum(pages), bs, hkv, d, generator=gen)
    v = torch.randn(sum(pages), bs, hkv, d, generator=gen)
    q = torch.randn(sum(q_lens), hq, d, generator=gen)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, table, torch.tensor(seq_lens, dtype=torch.int32), cu


@pytest.mark.parametrize("causal", [True, False])
def test_rows_ref_equals_the_whole_batch_reference(causal: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    batch = _paged_batch(gen, [37, 5, 20], [11, 5, 1])
    whole = paged_attention_ref(*batch, causal=causal, sliding_window=9, softcap=3.0)
    assert isinstance(whole, torch.Tensor)
    cu = batch[-1].tolist()
    spans = [(0, 0, 4), (0, 3, 11), (1, 0, 5), (2, 0, 1)] if causal else [(0, 6, 11), (1, 0, 5), (2, 0, 1)]
    for seq, lo, hi in spans:
        rows = paged_rows_ref(*batch, seq=seq, rows=(lo, hi), causal=causal, sliding_window=9, softcap=3.0)
        torch.testing.assert_close(rows, whole[cu[seq] + lo : cu[seq] + hi], atol=1e-6, rtol=1e-6)


def test_rows_ref_refuses_what_it_cannot_compute() -> None:
    batch = _paged_batch(torch.Generator().manual_seed(1), [12], [6])
    with pytest.raises(ValueError, match="must end the chunk"):
        paged_rows_ref(*batch, seq=0, rows=(0, 3), causal=False)
    with pytest.raises(ValueError, match="must end the chunk"):
        paged_rows_ref(*batch, seq=0, rows=(0, 3), window_size=(4, 2))
    with pytest.raises(ValueError, match="within sequence 0"):
        paged_rows_ref(*batch, seq=0, rows=(2, 7))


def test_compare_passes_rounding_and_fails_real_defects() -> None:
    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(8, 4, 16, generator=gen)
    tol = tolerance(torch.bfloat16)
    assert compare(ref.to(torch.bfloat16), ref, tol).ok
    unwritten = ref.clone()
    unwritten[3] = float("nan")
    assert "non-finite" in (compare(unwritten, ref, tol).failure or "")
    assert not compare(ref[:4], ref, tol).ok  # shape
    off = ref.clone()
    off[0, 0, 0] += 0.5
    assert not compare(off, ref, tol).ok


def test_compare_is_not_fooled_by_small_outputs() -> None:
    """Over a long context outputs shrink: at 32k keys a zero output is within a fixed atol of
    0.03, and so is one with its sign flipped. Both must fail, and bf16 rounding of the true rows pass."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(4, 2, 16, generator=gen)
    k = torch.randn(32768, 2, 16, generator=gen)
    v = torch.randn(32768, 2, 16, generator=gen)
    p = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / 4, dim=-1)
    ref = torch.einsum("hqk,khd->qhd", p, v)
    tol = tolerance(torch.bfloat16)
    assert bool(tol.allows(torch.zeros_like(ref), ref).all())  # the premise: a fixed atol alone passes zeros
    assert compare(ref.to(torch.bfloat16), ref, tol).ok
    assert not compare(torch.zeros_like(ref), ref, tol).ok
    assert not compare(-ref, ref, tol).ok
