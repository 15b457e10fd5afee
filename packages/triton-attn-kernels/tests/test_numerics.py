"""Numerical edges: rows that see no key, huge logits, softcap at the dtype's range."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import paged_attention, varlen_attention
from triton_attn_kernels.reference import paged_attention_ref, varlen_attention_ref


def test_rows_with_no_visible_key_are_zero_not_nan():
    # Fewer keys than queries (bottom-right aligned): the first rows see nothing.
    q = torch.randn(5, 2, 32, device=DEVICE, dtype=torch.float16)
    k = torch.randn(3, 1, 32, device=DEVICE, dtype=torch.float16)
    cu_q = torch.tensor([0, 5], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 3], dtype=torch.int32, device=DEVICE)
    out = varlen_attention(q, k, k, cu_q, cu_k, max_seqlen_q=5, max_seqlen_k=5, out=poisoned_like(q))
    assert torch.isfinite(out).all()
    assert (out[:2] == 0).all()
    assert_matches(out, varlen_attention_ref(q, k, k, cu_q, cu_k), torch.float16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("softcap", [None, 50.0])
def test_huge_logits_stay_finite(dtype, softcap):
    b = paged_batch([1, 6], [40, 30], dtype=dtype)
    # Scale q and k so that q.k reaches ~1e4 * sqrt(d): far beyond exp's range in any dtype.
    big = 60.0 if dtype == torch.float16 else 300.0
    b.q.mul_(big)
    b.k_cache.mul_(big)
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), softcap=softcap)
    assert torch.isfinite(out).all()
    ref = paged_attention_ref(*b.args(), softcap=softcap)
    # With such logits softmax is (nearly) one-hot; compare loosely on the winning values.
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_huge_negative_sinks_and_positive_sinks():
    b = paged_batch([1, 3], [20, 9], num_q_heads=4, num_kv_heads=2)
    for sinks in (torch.full((4,), -1e4, device=DEVICE), torch.full((4,), 1e4, device=DEVICE)):
        out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), sinks=sinks)
        assert torch.isfinite(out).all()
        assert_matches(out, paged_attention_ref(*b.args(), sinks=sinks), torch.float16)


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_kv_with_large_bf16_queries(kv_dtype):
    """fp8 KV with a bf16 query computes its dots in fp16, the query pre-scaled by the softmax
    scale (and k_scale): queries of magnitude 1e5, beyond fp16's 65504 as they are, stay finite
    and match the reference."""
    b = paged_batch([1, 5], [40, 30], dtype=torch.bfloat16, kv_dtype=kv_dtype)
    b.q.mul_(1e5 / b.q.abs().max())
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), k_scale=0.05, v_scale=0.5)
    assert torch.isfinite(out).all()
    ref = paged_attention_ref(*b.args(), k_scale=0.05, v_scale=0.5)
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
