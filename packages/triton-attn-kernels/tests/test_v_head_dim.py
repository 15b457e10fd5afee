"""V with its own head size (MLA prefill: q/k 128 nope + 64 rope, v 128): varlen and paged
attention against the fp32 reference, on the prefill launch, the split-KV decode (its
workspace laid out by V's size) and multi-token decode, with every feature; the argument
checks; the tuning policy's view of it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from batches import DEVICE, FP8, assert_matches, paged_batch, poisoned_like
from launches import counting

from triton_attn_kernels import (
    AttentionConfig,
    DecodeConfig,
    PrefillConfig,
    decode_workspace_numel,
    paged_attention,
    varlen_attention,
)
from triton_attn_kernels.reference import paged_attention_ref, varlen_attention_ref
from triton_attn_kernels.tuning import AttentionProblem, ConfigSelector, DeviceInfo, decode_heuristic, plan_launch

# (q/k head size, v head size): v narrower and padded to a smaller power of two, v wider
# within the same power of two, v wider and padded to a larger one.
DIMS = [(80, 32), (80, 112), (96, 192)]
SPLITS = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=3), prefill=PrefillConfig(block_m=16, tile_n=16))
# Decodes, a prefill chunk on a cached prefix, an empty sequence, a fresh prefill.
MIXED_Q = [1, 5, 0, 17, 1]
MIXED_K = [40, 21, 9, 17, 16]


def varlen(q_lens, k_lens, dk, dv, *, hq=4, hkv=2, dtype=torch.float16):
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q = torch.randn(sum(q_lens), hq, dk, device=DEVICE).to(dtype)
    # k and v as views of one buffer, as an MLA up-projection hands them out.
    kv = torch.randn(sum(k_lens), hkv, dk + dv, device=DEVICE).to(dtype)
    k, v = kv[..., :dk], kv[..., dk:]
    return q, k, v, cu_q, cu_k, dict(max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens))


@pytest.mark.parametrize(("dk", "dv"), DIMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen(dk, dv, dtype, causal):
    q, k, v, cu_q, cu_k, lens = varlen([17, 1, 5, 0], [17, 30, 9, 4], dk, dv, dtype=dtype)
    out = poisoned_like(q, dv)
    got, lse = varlen_attention(q, k, v, cu_q, cu_k, **lens, causal=causal, out=out, config=SPLITS, return_lse=True)
    ref, ref_lse = varlen_attention_ref(q, k, v, cu_q, cu_k, causal=causal, return_lse=True)
    assert got is out and out.shape == (q.shape[0], q.shape[1], dv)
    assert_matches(out, ref, dtype)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)


def test_varlen_allocates_the_output_with_v_head_size():
    q, k, v, cu_q, cu_k, lens = varlen([6, 1], [6, 12], 80, 32)
    out = varlen_attention(q, k, v, cu_q, cu_k, **lens, scale=0.3)
    assert out.shape == (7, 4, 32) and out.dtype == q.dtype
    assert_matches(out, varlen_attention_ref(q, k, v, cu_q, cu_k, scale=0.3), torch.float16)


@pytest.mark.parametrize(("dk", "dv"), DIMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_paged_mixed_batch(dk, dv, dtype, layout):
    b = paged_batch(MIXED_Q, MIXED_K, num_q_heads=8, num_kv_heads=2, head_dim=dk, head_dim_v=dv, dtype=dtype)
    if layout == "HND":
        k, v = b.k_cache.transpose(1, 2).contiguous(), b.v_cache.transpose(1, 2).contiguous()
    else:
        k, v = b.k_cache, b.v_cache
    out = poisoned_like(b.q, dv)
    args = (b.q, k, v, b.block_table, b.seq_lens, b.cu_seqlens_q)
    _, lse = paged_attention(*args, **b.lens(), kv_layout=layout, out=out, config=SPLITS, return_lse=True)
    ref, ref_lse = paged_attention_ref(*b.args(), return_lse=True)
    assert_matches(out, ref, dtype)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize(("dk", "dv"), [(80, 32), (80, 112)])
def test_paged_split_kv_decode_with_a_poisoned_workspace(dk, dv, monkeypatch):
    """The partials are laid out by V's head size: a NaN-filled workspace of exactly
    decode_workspace_numel(..., dv, ...) elements gives a clean result."""
    heads, splits = 4, 3
    b = paged_batch([1, 1, 1], [1, 40, 90], num_q_heads=heads, num_kv_heads=2, head_dim=dk, head_dim_v=dv)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=splits))
    ws = torch.full((decode_workspace_numel(3, heads, dv, splits),), float("nan"), device=DEVICE)
    out = poisoned_like(b.q, dv)
    with counting(monkeypatch) as log:
        paged_attention(*b.args(), **b.lens(), out=out, config=cfg, workspace=ws)
    assert [kind for kind, *_ in log] == ["decode", "merge"]
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert not ws.isnan().all()


@pytest.mark.parametrize("num_splits", [1, 3])
def test_paged_multi_token_decode(num_splits, monkeypatch):
    # Verification runs of 4 tokens (contexts shorter than, equal to and longer than them) on
    # the decode launch, and a sequence past decode_query_len on the prefill launch.
    b = paged_batch([4, 4, 4, 9], [4, 19, 77, 30], num_q_heads=8, num_kv_heads=2, head_dim=80, head_dim_v=32)
    cfg = AttentionConfig(
        decode=DecodeConfig(tile_n=16, num_splits=num_splits), prefill=PrefillConfig(block_m=16, tile_n=16)
    )
    out = poisoned_like(b.q, 32)
    with counting(monkeypatch) as log:
        paged_attention(*b.args(), **b.lens(), decode_query_len=4, out=out, config=cfg)
    kinds = [kind for kind, *_ in log]
    assert kinds == (["decode", "merge", "prefill"] if num_splits > 1 else ["decode", "prefill"]), log
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)


@pytest.mark.parametrize("features", ["window", "softcap", "alibi", "sinks", "all"])
def test_paged_features(features):
    b = paged_batch(MIXED_Q, MIXED_K, num_q_heads=4, num_kv_heads=2, head_dim=80, head_dim_v=112)
    heads = b.q.shape[1]
    kw = {
        "window": dict(sliding_window=7),
        "softcap": dict(softcap=3.0),
        "alibi": dict(alibi_slopes=torch.rand(heads, device=DEVICE)),
        "sinks": dict(sinks=torch.randn(heads, device=DEVICE) + 2.0),
        "all": dict(
            window_size=(9, 0),
            softcap=4.0,
            alibi_slopes=torch.rand(heads, device=DEVICE),
            sinks=torch.randn(heads, device=DEVICE),
        ),
    }[features]
    out = poisoned_like(b.q, 112)
    paged_attention(*b.args(), **b.lens(), out=out, config=SPLITS, **kw)
    ref = paged_attention_ref(*b.args(), **kw)
    assert_matches(out, ref, torch.float16)
    assert not torch.allclose(paged_attention_ref(*b.args()), ref, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_paged_fp8_kv(kv_dtype, dtype):
    b = paged_batch(MIXED_Q, MIXED_K, head_dim=80, head_dim_v=32, dtype=dtype, kv_dtype=kv_dtype)
    out = poisoned_like(b.q, 32)
    paged_attention(*b.args(), **b.lens(), out=out, config=SPLITS, k_scale=0.5, v_scale=2.0)
    assert_matches(out, paged_attention_ref(*b.args(), k_scale=0.5, v_scale=2.0), dtype)


def test_deepseek_geometry():
    """q/k 192 (128 nope + 64 rope), v 128, one KV head per query head, DeepSeek's scale
    (its own, not 192 ** -0.5): a fresh prefill (varlen) and chunks on cached prefixes
    through the paged cache, with the interpreter's heuristic tiles."""
    scale = 0.1352
    q, k, v, cu_q, cu_k, lens = varlen([9, 3], [9, 20], 192, 128, hq=2, hkv=2)
    out = poisoned_like(q, 128)
    varlen_attention(q, k, v, cu_q, cu_k, **lens, scale=scale, out=out)
    assert_matches(out, varlen_attention_ref(q, k, v, cu_q, cu_k, scale=scale), torch.float16)
    b = paged_batch([9, 3], [30, 20], num_q_heads=2, num_kv_heads=2, head_dim=192, head_dim_v=128)
    out = poisoned_like(b.q, 128)
    paged_attention(*b.args(), **b.lens(), scale=scale, out=out, decode_query_len=0)
    assert_matches(out, paged_attention_ref(*b.args(), scale=scale), torch.float16)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda k, v: (k, v[..., :48]), "v_cache head size must be one of"),
        (lambda k, v: (k, v[..., :0]), "v_cache head size must be one of"),
        (lambda k, v: (k, torch.cat([v, v, v], dim=-1)[..., :320]), "v_cache head size must be one of"),
        (lambda k, v: (k, v[:, :, :1]), "v_cache must have the shape of k_cache"),
        (lambda k, v: (k, v[:-1]), "v_cache must have the shape of k_cache"),
    ],
    ids=["48", "0", "320", "kv heads", "blocks"],
)
def test_paged_checks_v(make, match):
    b = paged_batch([3, 1], [10, 5], num_q_heads=4, num_kv_heads=2, head_dim=64, head_dim_v=128)
    k, v = make(b.k_cache, b.v_cache)
    with pytest.raises(ValueError, match=match):
        paged_attention(b.q, k, v, *b.args()[3:], **b.lens())


def test_output_shape_is_checked_against_v():
    b = paged_batch([3, 1], [10, 5], head_dim=80, head_dim_v=32)
    with pytest.raises(ValueError, match=r"out must have shape \[num_tokens, num_q_heads, v head size\]"):
        paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q))
    q, k, v, cu_q, cu_k, lens = varlen([3], [5], 80, 32)
    with pytest.raises(ValueError, match=r"out must have shape .* \(3, 4, 32\)"):
        varlen_attention(q, k, v, cu_q, cu_k, **lens, out=poisoned_like(q, 80))
    with pytest.raises(ValueError, match="v head size must be one of"):
        varlen_attention(q, k, v[..., :24], cu_q, cu_k, **lens)


def test_policy_sizes_the_workspace_by_v():
    p = AttentionProblem(2, 8, 2, 192, 1, 4096, "bfloat16", "bfloat16", num_sms=132, head_dim_v=128)
    assert (p.v_head_dim, p.widest_head_dim) == (128, 192)
    plan = plan_launch(p, config=AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=4)))
    assert plan.workspace_numel == decode_workspace_numel(2, 8, 128, 4) == 2 * 8 * 4 * 129
    # The same head size twice is the ordinary problem: equal, same hash, same table keys.
    same = AttentionProblem(2, 8, 2, 128, 1, 4096, "bfloat16", "bfloat16", num_sms=132, head_dim_v=128)
    plain = AttentionProblem(2, 8, 2, 128, 1, 4096, "bfloat16", "bfloat16", num_sms=132)
    assert same == plain and hash(same) == hash(plain) and same.head_dim_v is None


def test_tables_are_not_used_for_another_v_head_size():
    """Table keys hold one head size; an entry tuned with V as wide as K says nothing about
    the kernel compiled for another V, so such a problem gets the heuristic."""
    data = Path(__file__).parent / "test_tuning_data"
    sel = ConfigSelector(roots=[data], device=DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0)))
    tabled = AttentionProblem(1, 32, 8, 128, 1, 32768, "bfloat16", "bfloat16", num_sms=132)
    assert sel.decode(tabled) != decode_heuristic(tabled)  # the table has this key
    other_v = replace(tabled, head_dim_v=64)
    assert sel.decode(other_v) == decode_heuristic(other_v)
    assert sel.stats()["decode"]["exact"] == 1 and sel.stats()["decode"]["heuristic"] == 1
