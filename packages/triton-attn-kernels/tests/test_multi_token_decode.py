"""Speculative-decoding verification and other short query runs on the split-KV decode
path: every query token of a sequence and its GQA group in one tile, keys split over
programs, one merge; mixed with plain decodes and prefills in one call; and max_seqlen_q
as a sizing hint only (a smaller value still computes every row)."""

from __future__ import annotations

import pytest
import torch
from batches import FP8, assert_matches, paged_batch, poisoned_like
from launches import counting

from triton_attn_kernels import (
    MAX_DECODE_QUERY_LEN,
    AttentionConfig,
    DecodeConfig,
    PrefillConfig,
    decode_workspace_numel,
    paged_attention,
)
from triton_attn_kernels.reference import paged_attention_ref

SMALL = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=3), prefill=PrefillConfig(block_m=16, tile_n=16))


def run(b, monkeypatch, **kw):
    out = poisoned_like(b.q)
    with counting(monkeypatch) as log:
        paged_attention(*b.args(), **{**b.lens(), **kw.pop("lens", {})}, out=out, **kw)
    return out, log


@pytest.mark.parametrize("q_len", [2, 4, 5, 8, 16])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_verification_batches(q_len, group, num_splits, monkeypatch):
    # Contexts shorter than, equal to and longer than the query run, crossing pages and tiles.
    lens = [q_len, q_len + 15, 40, 77]
    b = paged_batch([q_len] * 4, lens, num_q_heads=2 * group, num_kv_heads=2)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=num_splits))
    out, log = run(b, monkeypatch, config=cfg)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    kinds = [k for k, *_ in log]
    assert kinds == (["decode", "merge"] if num_splits > 1 else ["decode"]), log
    assert log[0][2] == q_len and log[0][3] == num_splits


@pytest.mark.parametrize(
    "features",
    ["window", "softcap", "alibi", "sinks", "noncausal", "fp8"],
)
def test_verification_features(features, monkeypatch):
    b = paged_batch(
        [3, 1, 4, 2], [50, 9, 33, 70], num_q_heads=8, num_kv_heads=2, kv_dtype=FP8[0] if features == "fp8" else None
    )
    heads = b.q.shape[1]
    kw = {
        "window": dict(sliding_window=11),
        "softcap": dict(softcap=2.0),
        "alibi": dict(alibi_slopes=torch.rand(heads, device=b.q.device)),
        "sinks": dict(sinks=torch.randn(heads, device=b.q.device) + 1.0),
        "noncausal": dict(causal=False),
        "fp8": dict(k_scale=0.5, v_scale=1.5),
    }[features]
    out, log = run(b, monkeypatch, config=SMALL, **kw)
    assert_matches(out, paged_attention_ref(*b.args(), **kw), torch.float16)
    assert [k for k, *_ in log] == ["decode", "merge"]


def test_mixed_batch_with_decode_query_len(monkeypatch):
    """Plain decodes, verification rows and prefills in one call: the runs of at most
    decode_query_len tokens on the decode launch, the rest on the prefill launch."""
    q_lens = [1, 3, 4, 20, 0, 5, 1]
    b = paged_batch(q_lens, [30, 3, 44, 20, 8, 61, 1], num_q_heads=8, num_kv_heads=2)
    out, log = run(b, monkeypatch, config=SMALL, decode_query_len=4)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert [k for k, *_ in log] == ["decode", "merge", "prefill"]
    assert log[0][2] == 4


def test_default_decode_query_len():
    b = paged_batch([16, 2], [40, 9], num_q_heads=4, num_kv_heads=2)
    assert MAX_DECODE_QUERY_LEN == 16
    with pytest.MonkeyPatch.context() as mp:
        out, log = run(b, mp, config=SMALL)
    assert [k for k, *_ in log] == ["decode", "merge"] and log[0][2] == 16
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    # One token more than the decode tile holds: single-token decodes and prefills, as before.
    b = paged_batch([17, 1], [40, 9], num_q_heads=4, num_kv_heads=2)
    with pytest.MonkeyPatch.context() as mp:
        out, log = run(b, mp, config=SMALL)
    assert [k for k, *_ in log] == ["decode", "merge", "prefill"] and log[0][2] == 1
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)


def test_prefill_only_batch_is_one_launch(monkeypatch):
    b = paged_batch([20, 33], [20, 70], num_q_heads=4, num_kv_heads=2)
    out, log = run(b, monkeypatch, config=SMALL, decode_query_len=0)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert [k for k, *_ in log] == ["prefill"], log


def test_decode_query_len_zero_still_serves_decodes(monkeypatch):
    # A wrong hint costs speed, never rows: the prefill launch then serves every sequence.
    b = paged_batch([1, 20, 2], [9, 20, 40], num_q_heads=4, num_kv_heads=2)
    out, log = run(b, monkeypatch, config=SMALL, decode_query_len=0)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert [k for k, *_ in log] == ["prefill"]


@pytest.mark.parametrize("claimed", [0, 1, 4])
def test_max_seqlen_q_too_small_still_computes_every_row(claimed, monkeypatch):
    b = paged_batch([1, 9, 30, 2], [20, 9, 50, 41], num_q_heads=4, num_kv_heads=2)
    out, _ = run(b, monkeypatch, config=SMALL, lens=dict(max_seqlen_q=claimed))
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)


def test_prefill_grid_smaller_than_the_tiles(monkeypatch):
    # max_seqlen_q=17 sizes the prefill grid for 2 query tiles of 16 rows; the 60-token
    # sequence has 15 tiles of 4 tokens (16 rows / GQA 4), walked grid-stride.
    b = paged_batch([60, 17, 1], [60, 90, 5], num_q_heads=8, num_kv_heads=2)
    out, log = run(b, monkeypatch, config=SMALL, lens=dict(max_seqlen_q=17))
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    prefill = [g for k, g, *_ in log if k == "prefill"]
    assert prefill and prefill[0][2] < 15


def test_workspace_holds_every_token_slot():
    b = paged_batch([4, 2, 3], [40, 33, 17], num_q_heads=4, num_kv_heads=2)
    n = decode_workspace_numel(3, 4, 32, 3, query_len=4)
    assert n == 3 * 4 * 4 * 3 * 33
    ws = torch.full((n,), float("nan"), device=b.q.device)
    out = paged_attention(*b.args(), **b.lens(), config=SMALL, workspace=ws)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    with pytest.raises(ValueError, match="workspace"):
        paged_attention(*b.args(), **b.lens(), config=SMALL, workspace=ws[: decode_workspace_numel(3, 4, 32, 3)])


def test_decode_query_len_checked():
    b = paged_batch([1], [5])
    with pytest.raises(ValueError, match="decode_query_len"):
        paged_attention(*b.args(), **b.lens(), decode_query_len=MAX_DECODE_QUERY_LEN + 1)
    with pytest.raises(TypeError, match="decode_query_len"):
        paged_attention(*b.args(), **b.lens(), decode_query_len=2.0)
