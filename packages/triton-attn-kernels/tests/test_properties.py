"""Property test: random mixed batches with random features match the reference."""

from __future__ import annotations

import torch
from batches import FP8, assert_matches, paged_batch, poisoned_like
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triton_attn_kernels import AttentionConfig, DecodeConfig, paged_attention
from triton_attn_kernels.reference import paged_attention_ref


@st.composite
def batches(draw):
    n = draw(st.integers(1, 4))
    seq_lens = draw(st.lists(st.integers(1, 70), min_size=n, max_size=n))
    q_lens = [draw(st.sampled_from([0, 1, 1, min(s, draw(st.integers(1, 24)))])) for s in seq_lens]
    q_lens = [min(q, s) for q, s in zip(q_lens, seq_lens, strict=True)]
    kv_heads = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2, 4]))
    return dict(
        q_lens=q_lens,
        seq_lens=seq_lens,
        num_kv_heads=kv_heads,
        num_q_heads=kv_heads * group,
        head_dim=draw(st.sampled_from([32, 64, 80])),
        block_size=draw(st.sampled_from([16, 32])),
        dtype=draw(st.sampled_from([torch.float16, torch.bfloat16])),
        fp8=draw(st.sampled_from([None, *FP8])),
        layout=draw(st.sampled_from(["NHD", "HND"])),
        window=draw(st.sampled_from([None, 1, 5, 40])),
        softcap=draw(st.sampled_from([None, 2.0])),
        alibi=draw(st.booleans()),
        sinks=draw(st.booleans()),
        causal=draw(st.sampled_from([True, True, False])),
        splits=draw(st.integers(1, 5)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=batches())
def test_random_batches_match_reference(case):
    b = paged_batch(
        case["q_lens"],
        case["seq_lens"],
        num_q_heads=case["num_q_heads"],
        num_kv_heads=case["num_kv_heads"],
        head_dim=case["head_dim"],
        block_size=case["block_size"],
        dtype=case["dtype"],
        kv_dtype=case["fp8"],
        layout=case["layout"],
    )
    dev = b.q.device
    feats = dict(causal=case["causal"], sliding_window=case["window"], softcap=case["softcap"])
    if case["alibi"]:
        feats["alibi_slopes"] = torch.rand(case["num_q_heads"], device=dev)
    if case["sinks"]:
        feats["sinks"] = torch.randn(case["num_q_heads"], device=dev)
    if case["fp8"] is not None:
        feats.update(k_scale=0.5, v_scale=1.5)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=case["splits"]))
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=cfg, **feats)
    assert_matches(out, paged_attention_ref(*b.args(), **feats), case["dtype"])
