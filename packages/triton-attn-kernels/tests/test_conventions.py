"""The conventions flash-attn, FlashInfer and vLLM users bring: HND caches (kv_layout),
log-sum-exp outputs and merging partial results, two-sided windows, softcap 0 as "off",
and fp8 caches that refuse to guess their scales."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, FP8, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import AttentionConfig, DecodeConfig, merge_attention_states, paged_attention, varlen_attention
from triton_attn_kernels.reference import (
    attention_ref,
    merge_attention_states_ref,
    paged_attention_ref,
    varlen_attention_ref,
)

SPLIT = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=3))


def hnd_tensor(cache: torch.Tensor) -> torch.Tensor:
    """The same cache as a contiguous [num_blocks, num_kv_heads, block_size, head_dim] tensor."""
    return cache.permute(0, 2, 1, 3).contiguous()


def test_hnd_cache_with_kv_layout():
    # Llama geometry in small: 4 query heads per KV head, block 16.
    b = paged_batch([1, 5, 1, 17], [16, 40, 33, 17], num_q_heads=8, num_kv_heads=2)
    k, v = hnd_tensor(b.k_cache), hnd_tensor(b.v_cache)
    out = poisoned_like(b.q)
    paged_attention(b.q, k, v, *b.args()[3:], **b.lens(), kv_layout="HND", out=out)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert_matches(out, paged_attention_ref(b.q, k, v, *b.args()[3:], kv_layout="HND"), torch.float16)


def test_hnd_cache_without_kv_layout_is_refused():
    # Read as NHD, [blocks, 2 heads, 16 slots, d] is 16 heads of 2-slot blocks: a context that
    # fills its block-table row (here 40 of 48 slots) no longer fits, which gives the mistake away.
    b = paged_batch([1, 1], [40, 7], num_q_heads=16, num_kv_heads=2)
    k, v = hnd_tensor(b.k_cache), hnd_tensor(b.v_cache)
    with pytest.raises(ValueError, match="kv_layout='HND'"):
        paged_attention(b.q, k, v, *b.args()[3:], **b.lens())
    with pytest.raises(ValueError, match="kv_layout"):
        paged_attention(*b.args(), **b.lens(), kv_layout="NDH")


@pytest.mark.parametrize("q_lens,seq_lens", [([1, 1, 0, 1], [40, 1, 5, 70]), ([3, 1, 20], [50, 9, 20])])
@pytest.mark.parametrize("config", [None, SPLIT], ids=["table", "split3"])
def test_return_lse_paged(q_lens, seq_lens, config):
    b = paged_batch(q_lens, seq_lens, num_q_heads=8, num_kv_heads=2)
    sinks = torch.randn(8, device=DEVICE)
    out, lse = paged_attention(*b.args(), **b.lens(), sinks=sinks, config=config, return_lse=True)
    ref, ref_lse = paged_attention_ref(*b.args(), sinks=sinks, return_lse=True)
    assert_matches(out, ref, torch.float16)
    assert lse.dtype == torch.float32 and lse.shape == b.q.shape[:2]
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)


def test_return_lse_varlen_and_empty_rows():
    # A window of one key left of a non-causal query... and a sequence with no keys at all.
    cu_q = torch.tensor([0, 3, 5], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 7, 7], dtype=torch.int32, device=DEVICE)
    q = torch.randn(5, 4, 32, device=DEVICE, dtype=torch.float16)
    k = torch.randn(7, 2, 32, device=DEVICE, dtype=torch.float16)
    v = torch.randn(7, 2, 32, device=DEVICE, dtype=torch.float16)
    out, lse = varlen_attention(q, k, v, cu_q, cu_k, max_seqlen_q=3, max_seqlen_k=7, return_lse=True)
    ref, ref_lse = varlen_attention_ref(q, k, v, cu_q, cu_k, return_lse=True)
    assert_matches(out, ref, torch.float16)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    assert torch.isneginf(lse[3:]).all()


@pytest.mark.parametrize("split_at", [4, 16, 29])
def test_merge_of_two_halves_is_the_whole(split_at):
    """Attention over keys [0, split_at) and over [split_at, n), merged, equals attention
    over all n keys: the cascade / shared-prefix use of return_lse."""
    n, heads = 45, 8
    cu_q = torch.tensor([0, 4], dtype=torch.int32, device=DEVICE)
    q = torch.randn(4, heads, 64, device=DEVICE, dtype=torch.float16)
    k = torch.randn(n, 2, 64, device=DEVICE, dtype=torch.float16)
    v = torch.randn(n, 2, 64, device=DEVICE, dtype=torch.float16)

    def part(lo, hi):
        cu_k = torch.tensor([0, hi - lo], dtype=torch.int32, device=DEVICE)
        return varlen_attention(
            q, k[lo:hi], v[lo:hi], cu_q, cu_k, max_seqlen_q=4, max_seqlen_k=hi - lo, causal=False, return_lse=True
        )

    (oa, la), (ob, lb), (whole, whole_lse) = part(0, split_at), part(split_at, n), part(0, n)
    assert_matches(whole, attention_ref(q, k, v, scale=64**-0.5, causal=False), torch.float16)
    out, lse = merge_attention_states(oa, la, ob, lb)
    ref_out, ref_lse = merge_attention_states_ref(oa, la, ob, lb)
    assert_matches(out, ref_out, torch.float16)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)
    assert_matches(out, attention_ref(q, k, v, scale=64**-0.5, causal=False), torch.float16)
    torch.testing.assert_close(lse, whole_lse, atol=2e-3, rtol=1e-3)


def test_merge_with_an_empty_side():
    heads = 4
    oa = torch.randn(3, heads, 32, device=DEVICE)
    ob = torch.full_like(oa, float("nan"))  # a side that saw no key: its rows are never read
    la = torch.randn(3, heads, device=DEVICE)
    lb = torch.full_like(la, float("-inf"))
    lb[0, 0] = la[0, 0]
    ob[0, 0] = torch.randn(32, device=DEVICE)
    out, lse = merge_attention_states(oa, la, ob, lb)
    ref_out, ref_lse = merge_attention_states_ref(oa, la, ob, lb)
    assert not out.isnan().any()
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse)
    both_empty, _ = merge_attention_states(oa, torch.full_like(la, float("-inf")), ob, lb)
    assert (both_empty[1:] == 0).all()
    with pytest.raises(ValueError, match="lse_b"):
        merge_attention_states(oa, la, ob, lb[:2])


@pytest.mark.parametrize("window", [(3, 0), (0, 0), (5, 2), (-1, 4), (7, -1), (2, 9), (-1, -1)])
@pytest.mark.parametrize("causal", [True, False])
def test_window_size(window, causal):
    b = paged_batch([1, 6, 20, 2], [30, 6, 40, 9], num_q_heads=4, num_kv_heads=2)
    out = poisoned_like(b.q)
    paged_attention(*b.args(), **b.lens(), causal=causal, window_size=window, config=SPLIT, out=out)
    ref = paged_attention_ref(*b.args(), causal=causal, window_size=window)
    assert_matches(out, ref, torch.float16)
    if window != (-1, -1) and not (causal and window[0] == -1):
        assert not torch.allclose(ref, paged_attention_ref(*b.args(), causal=causal), atol=1e-3)


@pytest.mark.parametrize("w", [1, 4, 13])
def test_noncausal_sliding_window_is_symmetric(w):
    """vLLM's FLASH_ATTN meaning for encoder layers: (W - 1) keys on each side."""
    cu = torch.tensor([0, 9, 30], dtype=torch.int32, device=DEVICE)
    q = torch.randn(30, 4, 32, device=DEVICE, dtype=torch.float16)
    k = torch.randn(30, 2, 32, device=DEVICE, dtype=torch.float16)
    v = torch.randn(30, 2, 32, device=DEVICE, dtype=torch.float16)
    out = varlen_attention(q, k, v, cu, cu, max_seqlen_q=21, max_seqlen_k=21, causal=False, sliding_window=w)
    ref = varlen_attention_ref(q, k, v, cu, cu, causal=False, window_size=(w - 1, w - 1))
    assert_matches(out, ref, torch.float16)
    # Independent of the reference's sliding_window path: a dense mask built here.
    pos = torch.arange(9, device=DEVICE)
    keep = (pos[None, :] - pos[:, None]).abs() < w
    s = torch.einsum("qhd,khd->hqk", q[:9].float(), k[:9].float().repeat_interleave(2, 1)) * 32**-0.5
    p = s.masked_fill(~keep, float("-inf")).softmax(-1)
    dense = torch.einsum("hqk,khd->qhd", p, v[:9].float().repeat_interleave(2, 1))
    torch.testing.assert_close(out[:9].float(), dense, atol=2e-3, rtol=2e-3)


def test_window_arguments_checked():
    b = paged_batch([1], [5])
    with pytest.raises(ValueError, match="not both"):
        paged_attention(*b.args(), **b.lens(), sliding_window=4, window_size=(3, 0))
    for bad in [(1,), (1, -2), (1.0, 2), "3,0"]:
        with pytest.raises(ValueError, match="window_size"):
            paged_attention(*b.args(), **b.lens(), window_size=bad)


def test_softcap_zero_means_off():
    b = paged_batch([1, 3], [20, 9])
    off = paged_attention(*b.args(), **b.lens(), softcap=0.0)
    none = paged_attention(*b.args(), **b.lens(), softcap=None)
    assert torch.equal(off, none)
    assert_matches(off, paged_attention_ref(*b.args()), torch.float16)
    with pytest.raises(ValueError, match="softcap"):
        paged_attention(*b.args(), **b.lens(), softcap=-1.0)


@pytest.mark.parametrize("missing", ["k_scale", "v_scale", "both"])
def test_fp8_cache_requires_its_scales(missing):
    b = paged_batch([1, 2], [20, 9], kv_dtype=FP8[0])
    scales = {"k_scale": 0.25, "v_scale": 0.5}
    if missing == "both":
        scales = {}
    else:
        del scales[missing]
    with pytest.raises(ValueError, match=r"(k|v)_scale is required"):
        paged_attention(*b.args(), **b.lens(), **scales)


@pytest.mark.parametrize("missing", ["k_scale", "v_scale"])
def test_fp8_cache_write_requires_its_scales(missing):
    from triton_attn_kernels import write_kv_cache

    key = torch.randn(3, 2, 32, device=DEVICE, dtype=torch.float16)
    cache = torch.zeros(2, 16, 2, 32, device=DEVICE).to(FP8[0])
    slots = torch.tensor([0, 1, 17], device=DEVICE)
    scales = {"k_scale": 0.5, "v_scale": 0.5}
    del scales[missing]
    before = cache.clone()
    with pytest.raises(ValueError, match=f"{missing} is required"):
        write_kv_cache(key, key, cache, cache.clone(), slots, **scales)
    assert torch.equal(cache.view(torch.uint8), before.view(torch.uint8))
