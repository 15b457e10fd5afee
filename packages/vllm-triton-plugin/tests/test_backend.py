"""Backend level: synthetic batches built through vLLM's own types (CommonAttentionMetadata,
FullAttentionSpec, AttentionType, CUDAGraphMode) go through our builder, the Triton KV write
and ``forward``; outputs and caches match ``triton_attn_kernels.reference`` (fp32).

Shapes are small (Triton's interpreter on CPU) but hunt edges: a decode, a prefill chunk on
a cached prefix, a fresh prefill, a sequence with no new tokens, padding tokens (slot -1),
lengths on both sides of a page boundary, GQA 2 and 4, NHD and HND cache strides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from vllm.config import CUDAGraphMode
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType, CommonAttentionMetadata
from vllm.v1.kv_cache_interface import FullAttentionSpec

from triton_attn_kernels import DecodeConfig
from triton_attn_kernels.reference import paged_attention_ref, varlen_attention_ref, write_kv_cache_ref
from triton_attn_kernels.testing import tolerance
from vllm_triton_plugin.backend import (
    FP8_CACHE_DTYPES,
    TritonAttentionBackend,
    TritonAttentionImpl,
    TritonAttentionMetadataBuilder,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BLOCK = 16
HEAD = 32
# (context length, new tokens) per sequence: decode, chunk on a cached prefix crossing a
# page boundary, fresh prefill of exactly one page + 1, no new tokens, decode at page - 1.
SEQS = [(37, 1), (21, 5), (17, 17), (12, 0), (15, 1)]
PADDING = 3  # CUDA-graph style padding tokens after the last sequence


def vllm_config(
    num_q_heads,
    num_kv_heads,
    dtype,
    cache_dtype="auto",
    mode=CUDAGraphMode.NONE,
    max_num_seqs=8,
    *,
    head_size=HEAD,
    max_model_len=256,
    layers=None,
):
    """The attributes of VllmConfig the builder and the backend read, nothing else;
    ``layers``: the forward context's attention layers by name."""
    model = SimpleNamespace(
        get_num_attention_heads=lambda parallel: num_q_heads,
        get_num_kv_heads=lambda parallel: num_kv_heads,
        get_head_size=lambda: head_size,
        max_model_len=max_model_len,
        dtype=dtype,
    )
    return SimpleNamespace(
        model_config=model,
        parallel_config=SimpleNamespace(),
        cache_config=SimpleNamespace(cache_dtype=cache_dtype),
        compilation_config=SimpleNamespace(cudagraph_mode=mode, static_forward_context=layers or {}),
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs),
    )


@dataclass
class Batch:
    common: CommonAttentionMetadata
    query: torch.Tensor  # [tokens + padding, Hq, D]
    key: torch.Tensor  # new tokens' K, [tokens + padding, Hkv, D]
    value: torch.Tensor
    old_key: torch.Tensor  # cached prefix K of every sequence, [sum of prefixes, Hkv, D]
    old_value: torch.Tensor
    old_slots: torch.Tensor


def make_batch(seqs, num_q_heads, num_kv_heads, dtype, num_blocks, gen) -> Batch:
    """Random tokens, a shuffled block table and slot mappings for ``seqs``."""
    blocks_per_seq = [-(-ctx // BLOCK) for ctx, _ in seqs]
    perm = torch.randperm(num_blocks, generator=gen)[: sum(blocks_per_seq)].to(torch.int32)
    table = torch.zeros(len(seqs), max(blocks_per_seq), dtype=torch.int32)
    new_slots, old_slots, cu = [], [], [0]
    taken = 0
    for i, ((ctx, q_len), nb) in enumerate(zip(seqs, blocks_per_seq, strict=True)):
        table[i, :nb] = perm[taken : taken + nb]
        taken += nb
        slots = [int(table[i, p // BLOCK]) * BLOCK + p % BLOCK for p in range(ctx)]
        old_slots += slots[: ctx - q_len]
        new_slots += slots[ctx - q_len :]
        cu.append(cu[-1] + q_len)
    num_tokens = cu[-1]
    new_slots += [-1] * PADDING

    def rand(n, heads):
        return torch.randn(n, heads, HEAD, generator=gen).to(dtype).to(DEVICE)

    query_start_loc = torch.tensor(cu, dtype=torch.int32)
    common = CommonAttentionMetadata(
        query_start_loc=query_start_loc.to(DEVICE),
        query_start_loc_cpu=query_start_loc,
        seq_lens=torch.tensor([ctx for ctx, _ in seqs], dtype=torch.int32, device=DEVICE),
        num_reqs=len(seqs),
        num_actual_tokens=num_tokens + PADDING,
        max_query_len=max(q for _, q in seqs),
        max_seq_len=max(ctx for ctx, _ in seqs),
        block_table_tensor=table.to(DEVICE),
        slot_mapping=torch.tensor(new_slots, dtype=torch.int64, device=DEVICE),
    )
    return Batch(
        common=common,
        query=rand(num_tokens + PADDING, num_q_heads),
        key=rand(num_tokens + PADDING, num_kv_heads),
        value=rand(num_tokens + PADDING, num_kv_heads),
        old_key=rand(len(old_slots), num_kv_heads),
        old_value=rand(len(old_slots), num_kv_heads),
        old_slots=torch.tensor(old_slots, dtype=torch.int64, device=DEVICE),
    )


def kv_cache(num_blocks, num_kv_heads, dtype, layout):
    """vLLM's per-layer cache: logical [blocks, heads, tokens, 2*D], NHD or HND in memory."""
    if layout == "NHD":
        raw = torch.zeros(num_blocks, BLOCK, num_kv_heads, 2 * HEAD, dtype=dtype, device=DEVICE)
        return raw.permute(0, 2, 1, 3)
    return torch.zeros(num_blocks, num_kv_heads, BLOCK, 2 * HEAD, dtype=dtype, device=DEVICE)


def layer(k_scale=1.0, v_scale=1.0):
    return SimpleNamespace(
        _k_scale=torch.tensor([k_scale], dtype=torch.float32, device=DEVICE),
        _v_scale=torch.tensor([v_scale], dtype=torch.float32, device=DEVICE),
    )


def run_case(
    *,
    seqs=SEQS,
    num_q_heads=4,
    num_kv_heads=2,
    dtype=torch.float32,
    cache_dtype="auto",
    layout="NHD",
    sliding_window=None,
    sinks=False,
    softcap=None,
    alibi=False,
    mode=CUDAGraphMode.NONE,
    seed=0,
):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 24
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=num_kv_heads, head_size=HEAD, dtype=dtype)
    config = vllm_config(num_q_heads, num_kv_heads, dtype, cache_dtype, mode)
    builder = TritonAttentionMetadataBuilder(spec, ["layer.0"], config, DEVICE)
    batch = make_batch(seqs, num_q_heads, num_kv_heads, dtype, num_blocks, gen)
    md = builder.build(0, batch.common)

    # Sinks arrive as a model parameter in the model dtype.
    sink_t = torch.randn(num_q_heads, generator=gen).to(dtype).to(DEVICE) if sinks else None
    slopes = [2.0 ** (-(i + 1)) for i in range(num_q_heads)] if alibi else None
    scale = HEAD**-0.5
    impl = TritonAttentionImpl(
        num_q_heads,
        HEAD,
        scale,
        num_kv_heads,
        slopes,
        sliding_window,
        cache_dtype,
        softcap,
        AttentionType.DECODER,
        sinks=sink_t,
    )
    impl.process_weights_after_loading(dtype)
    fp8 = FP8_CACHE_DTYPES.get(cache_dtype)
    lay = layer(0.7, 1.3) if fp8 else layer()
    cache = kv_cache(num_blocks, num_kv_heads, torch.uint8 if fp8 else dtype, layout)
    k_cache, v_cache = impl._caches(cache)
    # The cached prefix, written by the reference; then this step's tokens by our Triton write.
    write_kv_cache_ref(batch.old_key, batch.old_value, k_cache, v_cache, batch.old_slots, k_scale=0.7, v_scale=1.3)
    expect_k, expect_v = k_cache.clone(), v_cache.clone()
    write_kv_cache_ref(batch.key, batch.value, expect_k, expect_v, batch.common.slot_mapping, k_scale=0.7, v_scale=1.3)
    impl.do_kv_cache_update(lay, batch.key, batch.value, cache, md.slot_mapping)
    # Bit for bit, fp8 included: the kernel and the reference both round x / scale (the exact
    # quotient) to the nearest fp8 value, ties to even.
    bits = torch.uint8 if fp8 else k_cache.dtype
    assert torch.equal(k_cache.view(bits), expect_k.view(bits)) and torch.equal(v_cache.view(bits), expect_v.view(bits))

    output = torch.full_like(batch.query, float("nan"))
    impl.forward(lay, batch.query, batch.key, batch.value, cache, md, output)
    ref = paged_attention_ref(
        batch.query,
        k_cache,
        v_cache,
        md.block_table,
        md.seq_lens,
        md.query_start_loc,
        scale=scale,
        sliding_window=sliding_window,
        softcap=softcap,
        alibi_slopes=impl.alibi_slopes,
        sinks=sink_t,
        k_scale=lay._k_scale if fp8 else None,
        v_scale=lay._v_scale if fp8 else None,
    )
    n = int(batch.common.query_start_loc_cpu[-1])
    torch.testing.assert_close(output[:n].float(), ref[:n], **tolerance(dtype).kwargs())
    assert torch.isnan(output[n:]).all(), "padding rows must be left untouched"
    return builder, md, batch


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize(("num_q_heads", "num_kv_heads"), [(4, 2), (4, 1)])
def test_mixed_batch(layout, num_q_heads, num_kv_heads):
    run_case(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, layout=layout)


# vLLM's decode-first order (reorder_batch_threshold): decodes, a request with no new token,
# then a prefill chunk on a cached prefix, a fresh prefill and another empty request.
DECODES_FIRST = [(37, 1), (15, 1), (12, 0), (21, 5), (17, 17), (9, 0)]


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_decodes_first_batch_runs_its_prefill_launch_over_the_prefills_alone(layout, monkeypatch):
    import vllm_triton_plugin.backend as backend

    calls = []
    real = backend.paged_attention

    def spy(q, k, v, block_table, seq_lens, cu_seqlens_q, **kw):
        calls.append((q.shape[0], block_table.shape[0], cu_seqlens_q.tolist(), kw["decode_query_len"]))
        return real(q, k, v, block_table, seq_lens, cu_seqlens_q, **kw)

    monkeypatch.setattr(backend, "paged_attention", spy)
    _, md, _ = run_case(seqs=DECODES_FIRST, layout=layout, seed=9)
    assert md.split is not None and (md.split.num_decodes, md.split.num_decode_tokens) == (3, 2)
    # The decode rows (2 tokens of 3 requests), then the prefill rows alone (22 tokens of 3
    # requests) with their own offsets; padding rows after them are nobody's.
    assert calls == [(2, 3, [0, 1, 2, 2], 1), (22 + PADDING, 3, [0, 5, 22, 22], 0)]


def test_other_orders_and_capture_run_one_call():
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=HEAD, dtype=torch.float32)
    builder = TritonAttentionMetadataBuilder(spec, ["layer.0"], vllm_config(4, 2, torch.float32), DEVICE)
    gen = torch.Generator().manual_seed(10)
    for seqs in (SEQS, [(21, 5), (37, 1)], [(37, 1), (15, 1)], [(21, 5), (17, 17)]):
        md = builder.build(0, make_batch(seqs, 4, 2, torch.float32, 24, gen).common)
        assert md.split is None, seqs
    captured = builder.build_for_cudagraph_capture(make_batch(DECODES_FIRST, 4, 2, torch.float32, 24, gen).common)
    assert captured.split is None


def test_mixed_batch_fp16():
    run_case(dtype=torch.float16, seed=1)


@pytest.mark.parametrize("cache_dtype", ["fp8", "fp8_e5m2"])
def test_fp8_kv_cache(cache_dtype):
    run_case(cache_dtype=cache_dtype, seed=2)


def test_sliding_window():
    run_case(sliding_window=8, seed=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sinks(dtype):
    run_case(sinks=True, dtype=dtype, seed=4)


def test_softcap_and_alibi():
    run_case(softcap=5.0, alibi=True, seed=5)


def test_full_cudagraph_pins_decode_config_and_workspace():
    builder, md, batch = run_case(mode=CUDAGraphMode.FULL_AND_PIECEWISE, seed=6)
    assert builder.policy.limits.cuda_graphs
    # Every step hands the kernels the builder's one workspace, allocated up front, never a
    # buffer of its own (a graph replays the addresses it recorded). A lone decode request
    # splits its keys, so its partial results really go there.
    single = make_batch([(40, 1)], 4, 2, torch.float32, 24, torch.Generator().manual_seed(8))
    one = builder.build(0, single.common)
    assert one.config.decode.num_splits > 1
    assert builder.workspace is not None
    assert one.workspace is builder.workspace and md.workspace is builder.workspace
    # Same batch size, other lengths: a graph recorded with md's launch must stay valid.
    short = builder.build(0, dataclasses.replace(batch.common, max_seq_len=2))
    assert short.config.decode == md.config.decode
    assert short.workspace is md.workspace
    assert TritonAttentionMetadataBuilder.get_cudagraph_support(None, None) == AttentionCGSupport.ALWAYS


def test_profiling_run_without_metadata():
    impl = TritonAttentionImpl(4, HEAD, HEAD**-0.5, 2, None, None, "auto")
    q = torch.randn(5, 4, HEAD, device=DEVICE)
    out = torch.full_like(q, float("nan"))
    impl.forward(layer(), q, q[:, :2], q[:, :2], torch.empty(0, device=DEVICE), None, out)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("attn_type", [AttentionType.ENCODER_ONLY, AttentionType.ENCODER])
def test_encoder_attention(attn_type):
    gen = torch.Generator().manual_seed(7)
    lens = [5, 17, 1]
    cu = torch.tensor([0, 5, 22, 23], dtype=torch.int32)
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=HEAD, dtype=torch.float32)
    builder = TritonAttentionMetadataBuilder(spec, ["enc.0"], vllm_config(4, 2, torch.float32), DEVICE)
    common = CommonAttentionMetadata(
        query_start_loc=cu.to(DEVICE),
        query_start_loc_cpu=cu,
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=DEVICE),
        num_reqs=3,
        num_actual_tokens=23,
        max_query_len=17,
        max_seq_len=17,
        block_table_tensor=torch.zeros(3, 1, dtype=torch.int32, device=DEVICE),
        slot_mapping=torch.full((23,), -1, dtype=torch.int64, device=DEVICE),
        causal=False,
    )
    md = builder.build(0, common)
    impl = TritonAttentionImpl(4, HEAD, HEAD**-0.5, 2, None, None, "auto", None, attn_type)
    q, k, v = (torch.randn(23, h, HEAD, generator=gen).to(DEVICE) for h in (4, 2, 2))
    out = torch.empty_like(q)
    impl.do_kv_cache_update(layer(), k, v, torch.empty(0, device=DEVICE), common.slot_mapping)  # no cache: no-op
    impl.forward(layer(), q, k, v, torch.empty(0, device=DEVICE), md, out)
    ref = varlen_attention_ref(q, k, v, common.query_start_loc, common.query_start_loc, causal=False)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


def _validate(**overrides) -> list[str]:
    args = dict(
        head_size=64,
        dtype=torch.bfloat16,
        kv_cache_dtype="auto",
        block_size=None,
        use_mla=False,
        has_sink=False,
        use_sparse=False,
        use_mm_prefix=False,
        use_per_head_quant_scales=False,
        device_capability=None,
        attn_type=AttentionType.DECODER,
        has_sliding_window=False,
    )
    args.update(overrides)
    return TritonAttentionBackend.validate_configuration(**args)


def test_validate_configuration_reasons():
    assert _validate() == []
    assert _validate(has_sink=True, has_sliding_window=True, kv_cache_dtype="fp8_e5m2") == []
    (reason,) = _validate(head_size=48)
    assert "head_size 48" in reason and "128" in reason
    assert any("float16 differs from the model dtype bfloat16" in r for r in _validate(kv_cache_dtype="float16"))
    assert any("MLA" in r for r in _validate(use_mla=True))
    # Encoder layers with a sliding window are served (bidirectional window, FLASH_ATTN's meaning).
    assert not _validate(attn_type=AttentionType.ENCODER_ONLY, has_sliding_window=True)
    assert any("encoder_decoder" in r.lower() for r in _validate(attn_type=AttentionType.ENCODER_DECODER))
    cap = SimpleNamespace(major=8, minor=0)
    assert any("8.9" in r for r in _validate(kv_cache_dtype="fp8", device_capability=cap))


def test_backend_contract():
    assert TritonAttentionBackend.get_name() in ("CUSTOM", "TRITON_ONLY")
    assert TritonAttentionBackend.get_impl_cls() is TritonAttentionImpl
    assert TritonAttentionBackend.get_builder_cls() is TritonAttentionMetadataBuilder
    assert TritonAttentionBackend.forward_includes_kv_cache_update is False
    assert TritonAttentionBackend.supports_block_size(16) and TritonAttentionBackend.supports_block_size(544)
    with pytest.raises(NotImplementedError, match=r"(?i)encoder_decoder"):
        TritonAttentionImpl(4, HEAD, 1.0, 2, None, None, "auto", None, AttentionType.ENCODER_DECODER)


@pytest.mark.skipif(
    not hasattr(TritonAttentionBackend, "get_kv_cache_shape"), reason="vLLM >= 0.29 builds the cache view itself"
)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_legacy_kv_cache_shape(layout):
    """vLLM <= 0.28: allocate as its model runner does (logical shape permuted by the stride
    order, then viewed back) and check that K/V land where the kernels look for them."""
    from vllm.v1.attention.backends import utils

    utils.set_kv_cache_layout(layout)
    try:
        shape = TritonAttentionBackend.get_kv_cache_shape(3, BLOCK, 2, HEAD)
        order = TritonAttentionBackend.get_kv_cache_stride_order()
        assert len(TritonAttentionBackend.get_kv_cache_stride_order(True)) == 5
    finally:
        utils.set_kv_cache_layout(None)
    physical = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).view([shape[i] for i in order])
    cache = physical.permute(*[order.index(i) for i in range(4)])
    assert tuple(cache.shape) == (3, 2, BLOCK, 2 * HEAD)
    impl = TritonAttentionImpl(4, HEAD, 1.0, 2, None, None, "auto")
    k_cache, v_cache = impl._caches(cache)
    block, token, head = 2, 5, 1
    expect = physical[block, token, head] if layout == "NHD" else physical[block, head, token]
    assert torch.equal(k_cache[block, token, head], expect[:HEAD])
    assert torch.equal(v_cache[block, token, head], expect[HEAD:])


@pytest.mark.parametrize("captured_max_query_len", [1, 8])
def test_graph_replay_with_new_batch_contents(captured_max_query_len):
    """What a full CUDA graph does: the host values of the capture-time metadata are frozen,
    the device tensors are vLLM's persistent buffers, rewritten in place before each replay.
    Capture as vLLM does (uniform decode: max_query_len 1; mixed: max_query_len = tokens),
    then replay batches of the same padded size with other lengths (a padded request with no
    tokens included) and compare with the reference."""
    gen = torch.Generator().manual_seed(8)
    num_reqs, num_tokens, num_blocks = 4, 8 if captured_max_query_len > 1 else 4, 24
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=HEAD, dtype=torch.float32)
    builder = TritonAttentionMetadataBuilder(
        spec, ["layer.0"], vllm_config(4, 1, torch.float32, mode=CUDAGraphMode.FULL), DEVICE
    )
    # Persistent buffers, as the model runner keeps them.
    query_start_loc = torch.zeros(num_reqs + 1, dtype=torch.int32, device=DEVICE)
    seq_lens = torch.ones(num_reqs, dtype=torch.int32, device=DEVICE)
    block_table = torch.zeros(num_reqs, 4, dtype=torch.int32, device=DEVICE)
    capture_lens = [num_tokens // num_reqs] * num_reqs
    query_start_loc.copy_(torch.tensor([0, *torch.tensor(capture_lens).cumsum(0).tolist()]))
    seq_lens.copy_(torch.tensor(capture_lens))
    captured = builder.build_for_cudagraph_capture(
        CommonAttentionMetadata(
            query_start_loc=query_start_loc,
            query_start_loc_cpu=query_start_loc.cpu(),
            seq_lens=seq_lens,
            num_reqs=num_reqs,
            num_actual_tokens=num_tokens,
            max_query_len=captured_max_query_len,
            max_seq_len=captured_max_query_len,
            block_table_tensor=block_table,
            slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=DEVICE),
        ),
    )
    assert captured.config.decode.num_splits > 1  # the split-KV path, with its workspace
    impl = TritonAttentionImpl(4, HEAD, HEAD**-0.5, 1, None, None, "auto")
    cache = kv_cache(num_blocks, 1, torch.float32, "NHD")
    cache.copy_(torch.randn(cache.shape, generator=gen))
    k_cache, v_cache = impl._caches(cache)
    replays = [[(40, 1), (17, 1), (0, 0), (3, 1)]]
    if captured_max_query_len > 1:
        replays.append([(40, 1), (21, 5), (0, 0), (2, 2)])
    for seqs in replays:
        lens = [q for _, q in seqs]
        query_start_loc.copy_(torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()]))
        seq_lens.copy_(torch.tensor([ctx for ctx, _ in seqs]))
        block_table.copy_(torch.randperm(num_blocks, generator=gen)[: block_table.numel()].view(block_table.shape))
        query = torch.randn(num_tokens, 4, HEAD, generator=gen).to(DEVICE)
        output = torch.full_like(query, float("nan"))
        impl.forward(layer(), query, query[:, :1], query[:, :1], cache, captured, output)
        ref = paged_attention_ref(query, k_cache, v_cache, block_table, seq_lens, query_start_loc, scale=HEAD**-0.5)
        n = sum(lens)
        torch.testing.assert_close(output[:n], ref[:n], atol=2e-3, rtol=2e-3)


def test_pinned_decode_config_comes_from_the_tuning_lookup(monkeypatch):
    """Under full CUDA graphs the decode config per batch size is the tuning lookup's (tables,
    else heuristic); per-step choices (no full graphs) stay with the heuristic."""
    import triton_attn_kernels.tuning as tuning

    seen = []

    def lookup(problem, config=None, *, device=None):
        if config is not None:  # the launcher resolving the builder's explicit choice
            return config
        seen.append(problem)
        return DecodeConfig(tile_n=16, num_splits=4, num_warps=4, num_stages=1)

    monkeypatch.setattr(tuning, "select_decode_config", lookup)
    builder, md, _ = run_case(mode=CUDAGraphMode.FULL_AND_PIECEWISE, seed=8)
    assert seen and all(p.max_seqlen_k == builder.policy.limits.max_model_len for p in seen)
    assert md.config.decode == DecodeConfig(tile_n=16, num_splits=4, num_warps=4, num_stages=1)
    seen.clear()
    builder, md, _ = run_case(mode=CUDAGraphMode.PIECEWISE, seed=8)
    assert not seen and not builder.policy.limits.cuda_graphs


def test_prefill_only_batch_is_one_launch_except_under_capture():
    """A batch without decodes is planned as one prefill launch; built for a CUDA-graph
    capture the same batch keeps the decode launch, since the graph replays for any batch."""
    gen = torch.Generator().manual_seed(9)
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=HEAD, dtype=torch.float32)
    builder = TritonAttentionMetadataBuilder(
        spec, ["layer.0"], vllm_config(4, 2, torch.float32, mode=CUDAGraphMode.FULL), DEVICE
    )
    prefills = make_batch([(21, 5), (17, 17)], 4, 2, torch.float32, 24, gen)
    md = builder.build(0, prefills.common)
    assert md.config.decode is None and md.config.prefill is not None
    assert builder.build_for_cudagraph_capture(prefills.common).config.decode is not None
    mixed = make_batch([(21, 5), (9, 1)], 4, 2, torch.float32, 24, gen)
    assert builder.build(0, mixed.common).config.decode is not None


def _spec_config(k, *, parallel_drafting=False, v2=False, mode=CUDAGraphMode.NONE):
    config = vllm_config(4, 2, torch.float32, mode=mode)
    config.speculative_config = SimpleNamespace(num_speculative_tokens=k, parallel_drafting=parallel_drafting)
    config.use_v2_model_runner = v2
    return config


def test_decode_query_len_follows_speculation():
    """What a builder serves as a decode, as vLLM's spec-as-decode backends count it."""
    from vllm_triton_plugin import _compat

    assert _compat.decode_query_len(vllm_config(4, 2, torch.float32)) == 1
    assert _compat.decode_query_len(_spec_config(3)) == 4
    # Parallel drafting (model runner V1): the draft's first pass adds up to k mask slots.
    assert _compat.decode_query_len(_spec_config(3, parallel_drafting=True)) == 7
    assert _compat.decode_query_len(_spec_config(3, parallel_drafting=True, v2=True)) == 4
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=HEAD, dtype=torch.float32)
    builder = TritonAttentionMetadataBuilder(spec, ["layer.0"], _spec_config(12, parallel_drafting=True), DEVICE)
    assert builder.policy.limits.decode_query_len == 16  # the kernels' bound; wider runs as a prefill


def test_builder_declarations_for_speculative_decoding():
    """What vLLM's proposers (0.26 - 0.32) read off a builder: CUDA graphs for any batch (the
    verification shapes of 1 + k tokens included), decode-first ordering with the 1 + k tokens
    of a verification counted as decodes, no metadata reused across KV-cache groups, and draft
    decode steps that need no refresh in place."""
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=HEAD, dtype=torch.float32)
    config = _spec_config(3)
    builder = TritonAttentionMetadataBuilder(spec, ["layer.0"], config, DEVICE)
    assert TritonAttentionMetadataBuilder.get_cudagraph_support(config, spec) == AttentionCGSupport.ALWAYS
    assert builder.reorder_batch_threshold == 4
    assert builder.supports_update_block_table is False
    assert builder.supports_draft_decode_metadata_update is True


@pytest.mark.parametrize("graph", [False, True], ids=["rebuilt", "captured"])
def test_eagle_draft_passes(graph):
    """The metadata an EAGLE proposer hands the draft's builder, then ``forward`` against the
    reference. First pass: the verified tokens (1 + k = 4 per decode request, a prefill chunk
    beside them), as the target saw them. Then k - 1 passes of one token per request on
    contexts one longer each time (seq_lens updated in place, max_seq_len + 1, query rows
    padded as CUDA graphs pad the draft batch). ``rebuilt``: build_for_drafting at every pass
    (model runner V1); ``captured``: the passes replay metadata built once for a full CUDA
    graph, refreshed by update_draft_decode_metadata (V2's speculator)."""
    gen = torch.Generator().manual_seed(11)
    k, num_blocks, pad = 3, 24, 2
    mode = CUDAGraphMode.FULL_AND_PIECEWISE if graph else CUDAGraphMode.NONE
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=2, head_size=HEAD, dtype=torch.float32)
    builder = TritonAttentionMetadataBuilder(spec, ["draft.0"], _spec_config(k, mode=mode), DEVICE)
    impl = TritonAttentionImpl(4, HEAD, HEAD**-0.5, 2, None, None, "auto")
    cache = kv_cache(num_blocks, 2, torch.float32, "HND")
    cache.copy_(torch.randn(cache.shape, generator=gen))
    k_cache, v_cache = impl._caches(cache)
    # (context after the first pass, first-pass query length): verifications at and across a
    # page boundary, a prefill chunk on a cached prefix, a verification right after prefill.
    seqs = [(40, 4), (16, 4), (29, 7), (5, 4)]
    num_reqs = len(seqs)
    table = torch.randperm(num_blocks, generator=gen)[: num_reqs * 4].view(num_reqs, 4).to(torch.int32).to(DEVICE)
    seq_lens = torch.tensor([c for c, _ in seqs], dtype=torch.int32, device=DEVICE)  # persistent

    def slots(positions):
        return torch.tensor(
            [int(table[r, p // BLOCK]) * BLOCK + p % BLOCK for r, p in positions], dtype=torch.int64, device=DEVICE
        )

    def check(md, q_lens):
        n = sum(q_lens)
        query = torch.randn(n + pad, 4, HEAD, generator=gen).to(DEVICE)
        output = torch.full_like(query, float("nan"))
        impl.forward(layer(), query, query[:, :2], query[:, :2], cache, md, output)
        starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
        ref = paged_attention_ref(query, k_cache, v_cache, table, seq_lens, starts, scale=HEAD**-0.5)
        torch.testing.assert_close(output[:n], ref[:n], atol=2e-3, rtol=2e-3)
        assert torch.isnan(output[n:]).all(), "padded draft rows must be left untouched"

    q_lens = [q for _, q in seqs]
    first_starts = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
    first = CommonAttentionMetadata(
        query_start_loc=first_starts.to(DEVICE),
        query_start_loc_cpu=first_starts,
        seq_lens=seq_lens,
        num_reqs=num_reqs,
        num_actual_tokens=sum(q_lens),
        max_query_len=max(q_lens),
        max_seq_len=max(c for c, _ in seqs),
        block_table_tensor=table,
        slot_mapping=slots([(r, c - q + i) for r, (c, q) in enumerate(seqs) for i in range(q)]),
    )
    md = builder.build_for_drafting(first, draft_index=0)
    assert md.decode_query_len == k + 1 and md.config.decode is not None and md.config.prefill is not None
    check(md, q_lens)

    ones = torch.arange(num_reqs + 1, dtype=torch.int32)
    slot_buffer = torch.full((num_reqs + pad,), -1, dtype=torch.int64, device=DEVICE)  # persistent
    step = dataclasses.replace(
        first,
        query_start_loc=ones.to(DEVICE),
        query_start_loc_cpu=ones,
        num_actual_tokens=num_reqs,
        max_query_len=1,
        slot_mapping=slot_buffer[:num_reqs],
    )
    captured = builder.build_for_cudagraph_capture(step) if graph else None
    for draft_index in range(1, k):
        seq_lens += 1  # in place, as the proposer's step kernel does
        step.max_seq_len += 1
        slot_buffer[:num_reqs] = slots([(r, int(seq_lens[r]) - 1) for r in range(num_reqs)])
        if graph:
            builder.update_draft_decode_metadata(captured)
            md = captured
        else:
            md = builder.build_for_drafting(step, draft_index=draft_index)
            assert md.config.prefill is None  # one token per request: the decode launch alone
        check(md, [1] * num_reqs)
