"""The Hopper prefill (Q/K/V by TMA, warp-specialised; ``PrefillConfig(tma=1)``) against the
fp32 reference under the interpreter, and the rule that routes a launch to it or to the
generic kernel. Its sm_90 code is checked by ``nox -s sm90`` (the loop must come out
warp-specialised)."""

from __future__ import annotations

import pytest
import torch
from batches import FP8, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import AttentionConfig, DecodeConfig, PrefillConfig, paged_attention
from triton_attn_kernels import attention as attention_module
from triton_attn_kernels.reference import paged_attention_ref

TMA = AttentionConfig(prefill=PrefillConfig(block_m=16, tile_n=16, tma=1), decode=DecodeConfig(tile_n=16, num_splits=2))


@pytest.fixture
def tma_launches(monkeypatch):
    calls: list[int] = []
    real = attention_module._launch_tma

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_module, "_launch_tma", counted)
    return calls


def run(b, config=TMA, **kw):
    out = poisoned_like(b.q, b.v_cache.shape[-1])
    got = paged_attention(*b.args(), **{**b.lens(), **kw.pop("lens", {})}, out=out, config=config, **kw)
    return out, got


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_dtype", [None, FP8[0]], ids=["fp16", "fp8"])
def test_matches_reference(layout, causal, kv_dtype, tma_launches):
    # Fresh prefills, a chunk on a cached prefix, decodes and an empty sequence in one batch;
    # lengths that end inside a tile and inside a page.
    b = paged_batch(
        [20, 33, 1, 17, 0],
        [20, 70, 40, 50, 9],
        num_q_heads=8,
        num_kv_heads=2,
        block_size=32,
        layout=layout,
        kv_dtype=kv_dtype,
    )
    scales = dict(k_scale=0.5, v_scale=2.0) if kv_dtype else {}
    out, (_, lse) = run(b, causal=causal, return_lse=True, **scales)
    ref, ref_lse = paged_attention_ref(*b.args(), causal=causal, return_lse=True, **scales)
    assert_matches(out, ref, torch.float16)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    assert len(tma_launches) == 1


def test_bf16_and_mha(tma_launches):
    b = paged_batch([40, 3], [64, 30], num_q_heads=2, num_kv_heads=2, block_size=16, dtype=torch.bfloat16)
    out, _ = run(b)
    assert_matches(out, paged_attention_ref(*b.args()), torch.bfloat16)
    assert tma_launches


def test_nan_in_unused_cache_slots_stays_out(tma_launches):
    # The last tile of a sequence reads cache slots past its context: NaN there must not leak.
    b = paged_batch([20, 18], [37, 18], num_q_heads=4, num_kv_heads=2, block_size=32)
    used = set()
    for i, n in enumerate(b.seq_lens.tolist()):
        for p in range(n):
            used.add((int(b.block_table[i, p // 32]), p % 32))
    for blk in range(b.k_cache.shape[0]):
        for slot in range(32):
            if (blk, slot) not in used:
                b.k_cache[blk, slot] = float("nan")
                b.v_cache[blk, slot] = float("nan")
    out, _ = run(b)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert tma_launches


def test_understated_max_seqlen_q_still_computes_every_row(tma_launches):
    b = paged_batch([60, 20], [60, 90], num_q_heads=4, num_kv_heads=2, block_size=32)
    out, _ = run(b, lens=dict(max_seqlen_q=17))
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert tma_launches


@pytest.mark.parametrize(
    "why",
    ["window", "softcap", "alibi", "sinks", "page not a multiple of the tile", "tma off", "head_dim 80", "v head 64"],
)
def test_routing_rule(why, tma_launches):
    """Launches outside the rule run the generic kernel with the same config, correctly."""
    head_dim = 80 if why == "head_dim 80" else 32
    # Both powers of two but unequal, in HND memory (in NHD the rows of K and V already differ).
    head_dim_v, layout = (64, "HND") if why == "v head 64" else (None, "NHD")
    b = paged_batch(
        [20, 1],
        [40, 17],
        num_q_heads=4,
        num_kv_heads=2,
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        block_size=16,
        layout=layout,
    )
    config = TMA
    kw: dict = {}
    if why == "page not a multiple of the tile":
        config = AttentionConfig(prefill=PrefillConfig(block_m=16, tile_n=32, tma=1))
    elif why == "tma off":
        config = AttentionConfig(prefill=PrefillConfig(block_m=16, tile_n=16))
    elif why in ("head_dim 80", "v head 64"):
        pass
    else:
        kw = {
            "window": dict(sliding_window=9),
            "softcap": dict(softcap=3.0),
            "alibi": dict(alibi_slopes=torch.rand(4, device=b.q.device)),
            "sinks": dict(sinks=torch.randn(4, device=b.q.device)),
        }[why]
    out, _ = run(b, config=config, **kw)
    assert_matches(out, paged_attention_ref(*b.args(), **kw), torch.float16)
    assert not tma_launches


def test_plain_case_takes_the_tma_path(tma_launches):
    # The control for test_routing_rule: the same batch without the reason does go there.
    b = paged_batch([20, 1], [40, 17], num_q_heads=4, num_kv_heads=2, block_size=16)
    out, _ = run(b)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert len(tma_launches) == 1
