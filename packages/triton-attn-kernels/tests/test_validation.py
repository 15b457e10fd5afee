"""Bad input raises ValueError/TypeError naming the argument; never a crash or garbage."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, paged_batch

from triton_attn_kernels import AttentionConfig, DecodeConfig, paged_attention, varlen_attention, write_kv_cache


def good():
    return paged_batch([1, 3], [10, 20], num_q_heads=4, num_kv_heads=2, head_dim=32)


def call(b, **over):
    args = dict(zip(["q", "k_cache", "v_cache", "block_table", "seq_lens", "cu_seqlens_q"], b.args(), strict=True))
    kw = b.lens()
    for k, v in over.items():
        (args if k in args else kw)[k] = v
    return paged_attention(*args.values(), **kw)


CASES = [
    ("q", lambda b: b.q[0], ValueError, "q must have 3 dimensions"),
    ("q", lambda b: b.q.to(torch.int32), TypeError, "q must have dtype"),
    ("q", lambda b: b.q.numpy(), TypeError, "q must be a torch.Tensor"),
    ("q", lambda b: b.q[..., :16], ValueError, "head_dim"),
    ("v_cache", lambda b: b.v_cache[:, :, :1], ValueError, "v_cache must have the shape"),
    ("k_cache", lambda b: b.k_cache.float(), TypeError, "k_cache dtype|v_cache dtype"),
    ("k_cache", lambda b: b.k_cache[:, :, :, None], ValueError, "k_cache must have 4 dimensions"),
    ("block_table", lambda b: b.block_table.long(), TypeError, "block_table must have dtype"),
    ("block_table", lambda b: b.block_table[:1], ValueError, "block_table must have num_seqs"),
    ("seq_lens", lambda b: b.seq_lens.long(), TypeError, "seq_lens must have dtype"),
    ("cu_seqlens_q", lambda b: b.cu_seqlens_q[:2], ValueError, "cu_seqlens_q must have num_seqs"),
    ("cu_seqlens_q", lambda b: b.cu_seqlens_q.float(), TypeError, "cu_seqlens_q must have dtype"),
    ("max_seqlen_q", lambda b: 3.0, TypeError, "max_seqlen_q must be an int"),
    ("max_seqlen_q", lambda b: -1, ValueError, "max_seqlen_q must be >= 0"),
    ("max_seqlen_k", lambda b: 2, ValueError, "must not exceed max_seqlen_k"),
    ("sliding_window", lambda b: 0, ValueError, "sliding_window must be >= 1"),
    ("sliding_window", lambda b: 2.5, TypeError, "sliding_window must be an int"),
    ("softcap", lambda b: -1.0, ValueError, "softcap must be a finite number > 0"),
    # An infinite cap would compute inf * tanh(s / inf) = inf * 0 = NaN: refused, not run.
    ("softcap", lambda b: float("inf"), ValueError, "softcap must be a finite number > 0"),
    ("scale", lambda b: float("nan"), ValueError, "scale must be a finite number > 0"),
    ("scale", lambda b: "x", TypeError, "scale must be a float"),
    ("causal", lambda b: 1, TypeError, "causal must be a bool"),
    ("alibi_slopes", lambda b: torch.ones(3, device=DEVICE), ValueError, "alibi_slopes must have shape"),
    ("sinks", lambda b: torch.ones(4, 1, device=DEVICE), ValueError, "sinks must have 1 dimensions"),
    ("out", lambda b: torch.empty(1, 4, 32, device=DEVICE, dtype=b.q.dtype), ValueError, "out must have q's shape"),
    ("out", lambda b: torch.empty_like(b.q, dtype=torch.float32), TypeError, "out must have dtype"),
    ("config", lambda b: {"tile_n": 16}, TypeError, "config must be an AttentionConfig"),
]


@pytest.mark.parametrize("arg,make,exc,msg", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_paged_attention_rejects(arg, make, exc, msg):
    b = good()
    with pytest.raises(exc, match=msg):
        call(b, **{arg: make(b)})


def test_head_ratio_and_head_dim():
    b = paged_batch([1], [5], num_q_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        paged_attention(*b.args(), **b.lens())
    b = paged_batch([1], [5], head_dim=48)
    with pytest.raises(ValueError, match="head_dim must be one of"):
        paged_attention(*b.args(), **b.lens())


def test_float_fp8_scales_share_one_device_tensor():
    # A float scale becomes a one-element device tensor once, not on every launch.
    from triton_attn_kernels import _validation as check

    a = check.kv_scale("k_scale", 0.5, torch.device(DEVICE))
    assert a.dtype == torch.float32 and a.tolist() == [0.5]
    assert check.kv_scale("v_scale", 0.5, torch.device(DEVICE)) is a
    assert check.kv_scale("k_scale", None, torch.device(DEVICE)).tolist() == [1.0]
    with pytest.raises(ValueError, match="k_scale must be a finite number > 0"):
        check.kv_scale("k_scale", float("inf"), torch.device(DEVICE))


def test_fp8_scale_must_be_one_element():
    b = paged_batch([1], [5], kv_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="k_scale must hold one element"):
        paged_attention(*b.args(), **b.lens(), k_scale=torch.ones(2, device=DEVICE))


@pytest.mark.parametrize(
    "kwargs,msg",
    [(dict(tile_n=24), "tile_n must be a power of two"), (dict(num_splits=0), "num_splits must be an int")],
)
def test_config_values(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        AttentionConfig(decode=DecodeConfig(**kwargs))


def test_varlen_rejects():
    q = torch.randn(4, 4, 32, device=DEVICE, dtype=torch.float16)
    k = torch.randn(6, 2, 32, device=DEVICE, dtype=torch.float16)
    cu = torch.tensor([0, 4], dtype=torch.int32, device=DEVICE)
    cuk = torch.tensor([0, 6], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="cu_seqlens_q and cu_seqlens_k"):
        varlen_attention(q, k, k, cu, cuk[:1], max_seqlen_q=4, max_seqlen_k=6)
    with pytest.raises(TypeError, match="k must have dtype"):
        varlen_attention(q, k.float(), k, cu, cuk, max_seqlen_q=4, max_seqlen_k=6)
    with pytest.raises(TypeError, match="cu_seqlens_k must have dtype"):
        varlen_attention(q, k, k, cu, cuk.long(), max_seqlen_q=4, max_seqlen_k=6)


def test_write_kv_cache_rejects():
    key = torch.randn(3, 2, 32, device=DEVICE, dtype=torch.float16)
    kc = torch.zeros(2, 16, 2, 32, device=DEVICE, dtype=torch.float16)
    slots = torch.tensor([0, 1, 2], device=DEVICE)
    with pytest.raises(ValueError, match="slot_mapping must have num_tokens"):
        write_kv_cache(key, key, kc, kc.clone(), slots[:2])
    with pytest.raises(TypeError, match="slot_mapping must have dtype"):
        write_kv_cache(key, key, kc, kc.clone(), slots.float())
    with pytest.raises(ValueError, match="k_cache must have shape"):
        write_kv_cache(key, key, kc[:, :, :1], kc[:, :, :1].clone(), slots)
    with pytest.raises(ValueError, match="value must have key's shape"):
        write_kv_cache(key, key[:2], kc, kc.clone(), slots)
    with pytest.raises(TypeError, match="value must have dtype"):
        write_kv_cache(key, key.float(), kc, kc.clone(), slots)


def test_validation_does_not_use_assert():
    # `python -O` strips asserts; validation must survive it.
    import pathlib

    import triton_attn_kernels

    src = pathlib.Path(triton_attn_kernels.__file__).parent
    for path in src.rglob("*.py"):
        assert "\n    assert " not in path.read_text() and "\nassert " not in path.read_text(), path
