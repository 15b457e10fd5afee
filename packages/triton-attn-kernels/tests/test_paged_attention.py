"""paged_attention against the fp32 reference: every feature, dtype, head size, layout and
the edge lengths that cross page and tile boundaries."""

from __future__ import annotations

import pytest
import torch
from batches import FP8, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import AttentionConfig, DecodeConfig, PrefillConfig, paged_attention
from triton_attn_kernels.reference import paged_attention_ref
from triton_attn_kernels.testing import tolerance

# Decodes, a prefill chunk on a cached prefix, a fresh prefill and a sequence with no new
# tokens, with lengths 1, block_size-1, block_size, block_size+1 and odd sizes.
MIXED_Q = [1, 5, 0, 1, 17, 3]
MIXED_K = [40, 5, 9, 1, 33, 16]


def run(batch, *, config=None, **features):
    out = poisoned_like(batch.q)
    res = paged_attention(*batch.args(), **batch.lens(), out=out, config=config, **features)
    assert res is out
    ref = paged_attention_ref(*batch.args(), **{k: v for k, v in features.items()})
    return out, ref


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_mixed_batch_dtypes_and_gqa(dtype, group):
    b = paged_batch(MIXED_Q, MIXED_K, num_q_heads=2 * group, num_kv_heads=2, dtype=dtype)
    out, ref = run(b)
    assert_matches(out, ref, dtype)


@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 112, 128, 192, 256])
def test_head_dims(head_dim):
    b = paged_batch([1, 4, 1], [19, 20, 3], num_q_heads=2, num_kv_heads=1, head_dim=head_dim)
    out, ref = run(b)
    assert_matches(out, ref, torch.float16)


@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_block_sizes_and_layouts(block_size, layout):
    lens = [block_size - 1, block_size, block_size + 1, 2 * block_size + 3]
    b = paged_batch([1, 1, 6, 2], lens, block_size=block_size, layout=layout)
    out, ref = run(b)
    assert_matches(out, ref, torch.float16)


@pytest.mark.parametrize(
    "features",
    [
        dict(sliding_window=7),
        dict(sliding_window=1),
        dict(softcap=3.0),
        dict(causal=False),
        dict(scale=0.5),
        "alibi",
        "sinks",
        "all",
    ],
    ids=lambda f: f if isinstance(f, str) else "-".join(f"{k}={v}" for k, v in f.items()),
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_features(features, dtype):
    b = paged_batch(MIXED_Q, MIXED_K, num_q_heads=4, num_kv_heads=2, dtype=dtype)
    if features == "alibi":
        features = dict(alibi_slopes=torch.rand(4, device=b.q.device))
    elif features == "sinks":
        features = dict(sinks=torch.randn(4, device=b.q.device) + 2.0)
    elif features == "all":
        features = dict(
            sliding_window=9,
            softcap=4.0,
            alibi_slopes=torch.rand(4, device=b.q.device),
            sinks=torch.randn(4, device=b.q.device),
        )
    out, ref = run(b, **features)
    assert_matches(out, ref, dtype)
    # The feature must matter on this batch, or the test would not notice it missing.
    plain = paged_attention_ref(*b.args())
    assert not torch.allclose(plain, ref, **tolerance(dtype).kwargs())


@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp8_kv(kv_dtype, dtype):
    b = paged_batch(MIXED_Q, MIXED_K, dtype=dtype, kv_dtype=kv_dtype)
    for k_scale, v_scale in [
        (0.5, 2.0),
        (torch.tensor([0.25], device=b.q.device), torch.tensor(3.0, device=b.q.device)),
    ]:
        out, ref = run(b, k_scale=k_scale, v_scale=v_scale)
        assert_matches(out, ref, dtype)


def test_fp8_scales_matter():
    b = paged_batch([1, 3], [20, 7], kv_dtype=torch.float8_e4m3fn)
    out1, _ = run(b, k_scale=1.0, v_scale=1.0)
    out2, ref2 = run(b, k_scale=1.0, v_scale=2.0)
    assert_matches(out2, ref2, torch.float16)
    torch.testing.assert_close(out2.float(), 2 * out1.float(), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("num_splits", [1, 2, 3, 8, 64, 256])
def test_split_kv_any_count(num_splits):
    # More splits than tiles leaves some splits empty; their partials must not leak in.
    b = paged_batch([1, 1, 1, 1], [1, 16, 17, 90], num_q_heads=8, num_kv_heads=2)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=num_splits))
    out, ref = run(b, config=cfg, sinks=torch.randn(8, device=b.q.device))
    assert_matches(out, ref, torch.float16)


def test_empty_splits_write_and_read_no_output_rows():
    """A split with no key stores only its lse (-inf) and merge_kernel reads no output row for
    it: with a NaN-poisoned workspace, the empty splits' rows stay NaN and the result is clean."""
    from triton_attn_kernels import decode_workspace_numel

    heads, splits, dim = 4, 8, 32
    b = paged_batch([1, 1], [16, 90], num_q_heads=heads, num_kv_heads=2, head_dim=dim)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=splits))
    n = decode_workspace_numel(2, heads, dim, splits)
    ws = torch.full((n,), float("nan"), device=b.q.device)
    sinks = torch.randn(heads, device=b.q.device)
    out = paged_attention(*b.args(), **b.lens(), config=cfg, workspace=ws, sinks=sinks)
    assert_matches(out, paged_attention_ref(*b.args(), sinks=sinks), torch.float16)
    rows = ws[2 * heads * splits :].view(2, heads, splits, dim)
    # Sequence 0 has one tile of 16 keys: only split 0 wrote; sequence 1 (6 tiles) used 6.
    assert not rows[0, :, 0].isnan().any() and rows[0, :, 1:].isnan().all()
    assert not rows[1, :, :6].isnan().any() and rows[1, :, 6:].isnan().all()
    lse = ws[: 2 * heads * splits].view(2, heads, splits)
    assert (lse[0, :, 1:] == float("-inf")).all()


@pytest.mark.parametrize("tile_n,block_m", [(16, 16), (32, 32), (64, 64)])
def test_prefill_tiles(tile_n, block_m):
    b = paged_batch([20, 33, 2], [20, 70, 40], num_q_heads=8, num_kv_heads=2)
    cfg = AttentionConfig(prefill=PrefillConfig(block_m=block_m, tile_n=tile_n), decode=DecodeConfig(tile_n=tile_n))
    out, ref = run(b, config=cfg, sliding_window=25)
    assert_matches(out, ref, torch.float16)


@pytest.mark.parametrize(
    "features",
    [{}, dict(sliding_window=7), dict(causal=False), "all"],
    ids=lambda f: f if isinstance(f, str) else "-".join(f"{k}={v}" for k, v in f.items()) or "plain",
)
@pytest.mark.parametrize("block_size", [16, 32])
def test_prefetched_page_numbers(features, block_size):
    """prefetch_pages=1: page numbers loaded one tile ahead (the last tile of a range loads
    none, masked), for decode splits and prefill tiles, with tiles smaller and larger than a
    page, windows that skip tiles and every feature."""
    b = paged_batch([*MIXED_Q, 1, 9], [*MIXED_K, 130, 75], num_q_heads=8, num_kv_heads=2, block_size=block_size)
    if features == "all":
        features = dict(
            sliding_window=20,
            softcap=5.0,
            alibi_slopes=torch.rand(8, device=b.q.device),
            sinks=torch.randn(8, device=b.q.device),
        )
    for tile_n in (16, 64):
        cfg = AttentionConfig(
            decode=DecodeConfig(tile_n=tile_n, num_splits=3, prefetch_pages=1),
            prefill=PrefillConfig(block_m=16, tile_n=tile_n, prefetch_pages=1),
        )
        out, ref = run(b, config=cfg, **features)
        assert_matches(out, ref, torch.float16)


def test_pure_decode_batch_and_padding_rows_untouched():
    b = paged_batch([1, 1, 0, 1], [30, 1, 12, 64], q_padding=3)
    out, ref = run(b)
    rows = int(b.cu_seqlens_q[-1])
    assert_matches(out, ref, torch.float16, rows=rows)
    assert torch.isnan(out[rows:]).all(), "padding rows beyond cu_seqlens_q[-1] must be left untouched"


def test_empty_batches():
    """No sequence has a new token: the rows of q (all padding past cu_seqlens_q[-1]) must come
    back untouched, and out is returned as given."""
    b = paged_batch([0, 0], [5, 9], q_padding=3)
    out = poisoned_like(b.q)
    got = paged_attention(*b.args(), max_seqlen_q=0, max_seqlen_k=9, out=out)
    assert got is out and out.shape == b.q.shape
    assert torch.isnan(out).all(), "rows past cu_seqlens_q[-1] were written"


def test_workspace_is_used_and_checked():
    from triton_attn_kernels import decode_workspace_numel

    b = paged_batch([1, 1], [40, 33], num_q_heads=4, num_kv_heads=2)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=3))
    n = decode_workspace_numel(2, 4, 32, 3)
    ws = torch.full((n,), float("nan"), device=b.q.device)
    out = paged_attention(*b.args(), **b.lens(), config=cfg, workspace=ws)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert not torch.isnan(ws).all()
    with pytest.raises(ValueError, match="workspace"):
        paged_attention(*b.args(), **b.lens(), config=cfg, workspace=ws[: n - 1])


def test_deterministic_and_batch_invariant_decode():
    b = paged_batch([1, 1, 1], [50, 23, 64])
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=2))
    out1 = paged_attention(*b.args(), **b.lens(), config=cfg)
    out2 = paged_attention(*b.args(), **b.lens(), config=cfg)
    assert torch.equal(out1, out2)
    # The first sequence alone gives bitwise the same row.
    alone = paged_attention(
        b.q[:1],
        b.k_cache,
        b.v_cache,
        b.block_table[:1],
        b.seq_lens[:1],
        b.cu_seqlens_q[:2],
        max_seqlen_q=1,
        max_seqlen_k=50,
        config=cfg,
    )
    assert torch.equal(alone[0], out1[0])


@pytest.mark.parametrize(
    ("features", "block_m", "warps"),
    [({}, 128, 4), (dict(softcap=5.0), 128, 8), (dict(sliding_window=9), 128, 8), (dict(softcap=5.0), 64, 4)],
    ids=["plain", "softcap", "window", "softcap-64-rows"],
)
def test_prefill_warps_with_window_or_softcap(monkeypatch, features, block_m, warps):
    """A 128-query-row prefill tile with a window or softcap runs at 8 warps, whatever the
    configuration says (at 4 it spills on sm_90: tuning.prefill_warps), and still matches."""
    from triton_attn_kernels import _fallback
    from triton_attn_kernels.tuning import prefill_warps

    assert prefill_warps(4, block_m, window="sliding_window" in features, softcap="softcap" in features) == warps
    real, seen = _fallback.launch, []

    def launch(fn, first, key, **kw):
        seen.append((key()[0], first))
        return real(fn, first, key, **kw)

    monkeypatch.setattr(_fallback, "launch", launch)
    b = paged_batch([20, 1], [20, 30], num_q_heads=8, num_kv_heads=2)
    cfg = AttentionConfig(
        prefill=PrefillConfig(block_m=block_m, tile_n=16, num_warps=4), decode=DecodeConfig(tile_n=16)
    )
    out, ref = run(b, config=cfg, **features)
    assert_matches(out, ref, torch.float16)
    assert [first for kind, first in seen if kind == "prefill"] == [(16, warps, cfg.prefill.num_stages)]
