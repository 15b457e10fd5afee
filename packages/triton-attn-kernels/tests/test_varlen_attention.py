"""varlen_attention (contiguous K/V) against the fp32 reference."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, assert_matches, poisoned_like

from triton_attn_kernels import varlen_attention
from triton_attn_kernels.reference import varlen_attention_ref
from triton_attn_kernels.testing import tolerance


def varlen(q_lens, k_lens, *, hq=4, hkv=2, d=64, dtype=torch.float16, strided=False):
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q = torch.randn(sum(q_lens), hq, d, device=DEVICE).to(dtype)
    if strided:  # k and v as views into one packed kv tensor, as frameworks hand them out
        kv = torch.randn(sum(k_lens), 2, hkv, d, device=DEVICE).to(dtype)
        k, v = kv[:, 0], kv[:, 1]
    else:
        k = torch.randn(sum(k_lens), hkv, d, device=DEVICE).to(dtype)
        v = torch.randn(sum(k_lens), hkv, d, device=DEVICE).to(dtype)
    return q, k, v, cu_q, cu_k, dict(max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen(dtype, causal):
    q, k, v, cu_q, cu_k, lens = varlen([17, 1, 5, 0], [17, 30, 9, 4], dtype=dtype, strided=True)
    out = varlen_attention(q, k, v, cu_q, cu_k, **lens, causal=causal, out=poisoned_like(q))
    assert_matches(out, varlen_attention_ref(q, k, v, cu_q, cu_k, causal=causal), dtype)


@pytest.mark.parametrize(
    "features",
    ["window", "softcap", "alibi", "sinks"],
)
def test_varlen_features(features):
    q, k, v, cu_q, cu_k, lens = varlen([20, 1, 6], [20, 33, 12])
    kw = {
        "window": dict(sliding_window=5),
        "softcap": dict(softcap=2.0),
        "alibi": dict(alibi_slopes=torch.rand(4, device=DEVICE)),
        "sinks": dict(sinks=torch.randn(4, device=DEVICE) + 1),
    }[features]
    out = varlen_attention(q, k, v, cu_q, cu_k, **lens, out=poisoned_like(q), **kw)
    ref = varlen_attention_ref(q, k, v, cu_q, cu_k, **kw)
    assert_matches(out, ref, torch.float16)
    assert not torch.allclose(varlen_attention_ref(q, k, v, cu_q, cu_k), ref, **tolerance(torch.float16).kwargs())


def test_encoder_style_non_causal_equal_lengths():
    q, k, v, cu_q, cu_k, lens = varlen([7, 12], [7, 12], hq=2, hkv=2, d=32)
    out = varlen_attention(q, k, v, cu_q, cu_k, **lens, causal=False)
    assert_matches(out, varlen_attention_ref(q, k, v, cu_q, cu_k, causal=False), torch.float16)
