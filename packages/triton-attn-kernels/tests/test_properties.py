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


@st.composite
def varlen_cases(draw):
    n = draw(st.integers(1, 3))
    k_lens = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    q_lens = [draw(st.integers(0, k)) for k in k_lens]
    kv_heads = draw(st.sampled_from([1, 2]))
    return dict(
        q_lens=q_lens,
        k_lens=k_lens,
        kv_heads=kv_heads,
        group=draw(st.sampled_from([1, 3, 4])),
        head_dim=draw(st.sampled_from([32, 96])),
        causal=draw(st.booleans()),
        window=draw(st.sampled_from([None, 3, 17])),
        strided=draw(st.booleans()),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=varlen_cases())
def test_random_varlen_with_strided_views(case):
    from batches import DEVICE

    from triton_attn_kernels import varlen_attention
    from triton_attn_kernels.reference import varlen_attention_ref

    hq, hkv, d = case["kv_heads"] * case["group"], case["kv_heads"], case["head_dim"]
    total_q, total_k = sum(case["q_lens"]), sum(case["k_lens"])
    cu_q = torch.tensor([0, *torch.tensor(case["q_lens"]).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(case["k_lens"]).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    if case["strided"]:
        # q, k, v as views into one packed qkv tensor, as a fused projection produces them.
        qkv = torch.randn(max(total_q, total_k), hq + 2 * hkv, d, device=DEVICE, dtype=torch.float16)
        q, k, v = qkv[:total_q, :hq], qkv[:total_k, hq : hq + hkv], qkv[:total_k, hq + hkv :]
    else:
        q = torch.randn(total_q, hq, d, device=DEVICE, dtype=torch.float16)
        k = torch.randn(total_k, hkv, d, device=DEVICE, dtype=torch.float16)
        v = torch.randn(total_k, hkv, d, device=DEVICE, dtype=torch.float16)
    feats = dict(causal=case["causal"], sliding_window=case["window"])
    out = varlen_attention(
        q,
        k,
        v,
        cu_q,
        cu_k,
        max_seqlen_q=max(case["q_lens"]),
        max_seqlen_k=max(case["k_lens"]),
        out=poisoned_like(q),
        **feats,
    )
    assert_matches(out, varlen_attention_ref(q, k, v, cu_q, cu_k, **feats), torch.float16)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    num_tokens=st.integers(1, 20),
    heads=st.integers(1, 3),
    head_dim=st.sampled_from([32, 80]),
    block_size=st.sampled_from([16, 32]),
    kv=st.sampled_from([None, *FP8]),
    pad_every=st.integers(2, 5),
)
def test_random_kv_writes(num_tokens, heads, head_dim, block_size, kv, pad_every):
    from batches import DEVICE

    from triton_attn_kernels import write_kv_cache
    from triton_attn_kernels.reference import write_kv_cache_ref

    blocks = -(-num_tokens // block_size) + 2
    key = torch.randn(num_tokens, heads, head_dim, device=DEVICE, dtype=torch.bfloat16)
    value = torch.randn_like(key)
    slots = torch.randperm(blocks * block_size, device=DEVICE)[:num_tokens]
    slots[::pad_every] = -1
    cache_dtype = kv or torch.bfloat16
    kc = torch.zeros(blocks, block_size, heads, head_dim, device=DEVICE).to(cache_dtype)
    vc = torch.zeros_like(kc)
    kr, vr = kc.clone(), vc.clone()
    write_kv_cache(key, value, kc, vc, slots, k_scale=0.3, v_scale=0.7)
    write_kv_cache_ref(key, value, kr, vr, slots, k_scale=0.3, v_scale=0.7)
    assert torch.equal(kc.float(), kr.float()) and torch.equal(vc.float(), vr.float())
