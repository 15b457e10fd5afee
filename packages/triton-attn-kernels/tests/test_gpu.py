"""Realistic shapes on a GPU: Llama-3.1-8B geometry, long contexts, int64 offsets, CUDA
graphs and recompilation. Deselected on machines without CUDA."""

from __future__ import annotations

import pytest
import torch
from batches import FP8, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import AttentionConfig, DecodeConfig, PrefillConfig, decode_workspace_numel, paged_attention
from triton_attn_kernels._kernels.attention import attention_kernel
from triton_attn_kernels.reference import paged_attention_ref

pytestmark = pytest.mark.gpu

LLAMA = dict(num_q_heads=32, num_kv_heads=8, head_dim=128)


def check(b, dtype, config=None, **feats):
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=config, **feats)
    assert_matches(out, paged_attention_ref(*b.args(), **feats), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kv", ["same", *FP8])
def test_llama_decode(dtype, kv):
    b = paged_batch([1] * 6, [1, 15, 16, 17, 1000, 4097], dtype=dtype, kv_dtype=None if kv == "same" else kv, **LLAMA)
    feats = dict(k_scale=0.7, v_scale=1.3) if kv != "same" else {}
    check(b, dtype, **feats)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kv", ["same", torch.float8_e4m3fn])
def test_llama_prefill_and_mixed(dtype, kv):
    b = paged_batch(
        [1024, 1, 300, 1, 0, 77],
        [1024, 2000, 2348, 9, 50, 77],
        dtype=dtype,
        kv_dtype=None if kv == "same" else kv,
        **LLAMA,
    )
    check(b, dtype, **({} if kv == "same" else dict(k_scale=0.7, v_scale=1.3)))


@pytest.mark.parametrize("kv", ["same", torch.float8_e4m3fn])
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_prefetched_page_numbers_on_tensor_cores(kv, stages):
    """prefetch_pages=1 (the compiler pipelines the K/V copies num_stages - 1 tiles ahead) on
    a GPU's tensor cores: mixed batch, bf16, with and without fp8 KV, a sliding window."""
    b = paged_batch(
        [1024, 1, 300, 1, 0, 77],
        [1024, 2000, 2348, 9, 50, 77],
        dtype=torch.bfloat16,
        kv_dtype=None if kv == "same" else kv,
        **LLAMA,
    )
    cfg = AttentionConfig(
        decode=DecodeConfig(tile_n=64, num_splits=4, num_stages=stages, prefetch_pages=1),
        prefill=PrefillConfig(block_m=128, tile_n=64, num_warps=8, num_stages=stages, prefetch_pages=1),
    )
    scales = {} if kv == "same" else dict(k_scale=0.7, v_scale=1.3)
    for feats in ({}, dict(sliding_window=700)):
        check(b, torch.bfloat16, config=cfg, **feats, **scales)


@pytest.mark.parametrize("head_dim", [64, 80, 256])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_other_head_dims(head_dim, dtype):
    b = paged_batch([1, 513, 1], [3000, 600, 100], num_q_heads=16, num_kv_heads=2, head_dim=head_dim, dtype=dtype)
    check(b, dtype, sliding_window=256, sinks=torch.randn(16, device="cuda"))


@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_block_sizes_features(block_size):
    b = paged_batch([1, 200, 1], [5000, 700, 33], block_size=block_size, dtype=torch.bfloat16, **LLAMA)
    check(b, torch.bfloat16, softcap=30.0, alibi_slopes=torch.rand(32, device="cuda") * 0.1)


def test_long_context_decode_128k():
    b = paged_batch([1, 1], [131072, 65537], dtype=torch.bfloat16, **LLAMA)
    check(b, torch.bfloat16)


def test_cache_beyond_int32_elements():
    # 2^31 / (16 * 8 * 128) = 131072 blocks; put the sequence's pages past that.
    blocks, bs = 140_000, 16
    k = torch.randn(blocks, bs, 8, 128, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    assert k.numel() > 2**31
    seq = 4000
    table = torch.arange(blocks - 300, blocks - 300 + seq // bs + 1, device="cuda", dtype=torch.int32)[None]
    q = torch.randn(1, 32, 128, device="cuda", dtype=torch.float16)
    args = (
        q,
        k,
        v,
        table,
        torch.tensor([seq], device="cuda", dtype=torch.int32),
        torch.tensor([0, 1], device="cuda", dtype=torch.int32),
    )
    out = paged_attention(*args, max_seqlen_q=1, max_seqlen_k=seq)
    assert_matches(out, paged_attention_ref(*args), torch.float16)


def _compiled_variants(fn) -> int:
    caches = getattr(fn, "device_caches", None)
    if caches is not None:
        return sum(len(c[0]) for c in caches.values())
    return sum(len(c) for c in fn.cache.values())


def test_no_recompile_across_batch_sizes_and_lengths():
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=4))
    b = paged_batch([1] * 3, [100, 200, 300], dtype=torch.bfloat16, **LLAMA)
    paged_attention(*b.args(), **b.lens(), config=cfg)
    before = _compiled_variants(attention_kernel)
    for n, length in [(1, 17), (5, 1000), (16, 4000), (64, 33), (7, 1)]:
        b = paged_batch([1] * n, [length] * n, dtype=torch.bfloat16, **LLAMA)
        paged_attention(*b.args(), **b.lens(), config=cfg)
    assert _compiled_variants(attention_kernel) == before


@pytest.mark.parametrize("mixed", [False, True])
def test_cuda_graph_replay_with_changing_lengths(mixed):
    q_lens = [1, 1, 1, 1] if not mixed else [1, 64, 1, 30]
    b = paged_batch(q_lens, [4000, 3000, 2000, 1000], dtype=torch.bfloat16, **LLAMA)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=8))
    ws = torch.empty(decode_workspace_numel(4, 32, 128, 8), device="cuda")
    out = torch.empty_like(b.q)
    kw = dict(max_seqlen_q=b.max_seqlen_q, max_seqlen_k=4000, config=cfg, workspace=ws, out=out)
    paged_attention(*b.args(), **kw)  # compile outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        paged_attention(*b.args(), **kw)
    for lens in ([4000, 3000, 2000, 1000], [70, 3999, 1500, 64], [64, 65, 66, 67]):
        b.seq_lens.copy_(torch.tensor(lens, device="cuda", dtype=torch.int32))
        out.fill_(float("nan"))
        g.replay()
        eager = paged_attention(*b.args(), max_seqlen_q=b.max_seqlen_q, max_seqlen_k=4000, config=cfg)
        assert torch.equal(out, eager)
        assert_matches(out, paged_attention_ref(*b.args()), torch.bfloat16)
