"""The Triton MLA impl's cache write, decode (forward_mqa) and prefill (forward_mha, with
cached prefixes gathered in several chunks) on hand-built vLLM MLA metadata with the plan
our builder makes for it (also under full CUDA graphs), against the fp32 references
(triton_attn_kernels.reference_mla for the absorbed decode, reference's attention_ref over
the up-projected latents for prefill); outputs poisoned with NaN.

Shapes are small for Triton's interpreter: kv_lora_rank 64, rope 16, qk_nope 48 (q/k head
size 64), v_head_dim 32 (V read with its own head size), 2 heads, 4-token pages; a context
budget of 6 keys cuts the cached prefixes into several chunks.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.attention.mla_attention import (
    MLACommonDecodeMetadata,
    MLACommonPrefillMetadata,
)

from triton_attn_kernels.reference import attention_ref
from triton_attn_kernels.reference_mla import mla_decode_ref, write_latent_cache_ref
from triton_attn_kernels.testing import tolerance
from vllm_triton_plugin import _warmup as _w
from vllm_triton_plugin.mla_backend import (
    TritonMLAImpl,
    TritonMLAMetadata,
    TritonMLAMetadataBuilder,
    TritonMLAPlan,
    plan_context_chunks,
)

RANK, ROPE, NOPE, V_DIM, HEADS, BLOCK = 64, 16, 48, 32, 2, 4
QK = NOPE + ROPE
SCALE = QK**-0.5


class _Proj:
    """kv_b_proj: kv_c [T, RANK] -> [T, HEADS * (NOPE + V_DIM)], as vLLM's linear layers
    return it (output, bias)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight  # [RANK, HEADS * (NOPE + V_DIM)]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x @ self.weight.to(x.dtype), None


def _impl(proj: _Proj, kv_cache_dtype: str, *, v_head_dim: int = V_DIM) -> TritonMLAImpl:
    # An explicit device: vLLM 0.26 cannot infer one without its CUDA binaries.
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        return TritonMLAImpl(
            num_heads=HEADS,
            head_size=RANK + ROPE,
            scale=SCALE,
            num_kv_heads=1,
            alibi_slopes=None,
            sliding_window=None,
            kv_cache_dtype=kv_cache_dtype,
            logits_soft_cap=None,
            attn_type="decoder",
            kv_sharing_target_layer_name=None,
            q_lora_rank=None,
            kv_lora_rank=RANK,
            qk_nope_head_dim=NOPE,
            qk_rope_head_dim=ROPE,
            qk_head_dim=QK,
            v_head_dim=v_head_dim,
            kv_b_proj=proj,
        )


def _builder(dtype: torch.dtype, cache: str, *, cuda_graphs: bool, chunk_keys: int = 6) -> TritonMLAMetadataBuilder:
    """Our part of the metadata builder on the attributes vLLM's MLA builder sets (its own
    __init__ needs a whole engine; test_mla_engine.py runs that)."""
    builder = object.__new__(TritonMLAMetadataBuilder)
    builder.reorder_batch_threshold = 4  # speculative decoding with 3 draft tokens
    builder.mla_dims = SimpleNamespace(kv_lora_rank=RANK, qk_rope_head_dim=ROPE)
    builder.model_config = SimpleNamespace(dtype=dtype, max_model_len=64)
    builder.num_heads = HEADS
    builder.device = torch.device("cpu")
    builder.page_size = BLOCK
    builder.chunked_prefill_workspace_size = chunk_keys  # keys per context chunk: several chunks
    mode = SimpleNamespace(has_full_cudagraphs=lambda: cuda_graphs)
    builder._init_plan(
        SimpleNamespace(
            cache_config=SimpleNamespace(cache_dtype=cache),
            compilation_config=SimpleNamespace(cudagraph_mode=mode),
            scheduler_config=SimpleNamespace(max_num_seqs=8),
        )
    )
    return builder


def _batch(
    decodes: list[tuple[int, int]],
    prefills: list[tuple[int, int]],
    dtype,
    cache: str,
    seed: int,
    *,
    cuda_graphs=False,
    chunk_keys: int = 6,
    table_width: int = 0,
):
    """(context_len, query_len) per request, decodes first (vLLM's MLA order). Returns the
    latents of every token, the cache with the contexts written (unused slots NaN), the
    metadata and the new tokens' slot mapping. ``table_width``: block-table columns at least
    (vLLM's table is as wide as the longest context a request may have, whatever the batch)."""
    g = torch.Generator().manual_seed(seed)
    reqs = [*decodes, *prefills]
    seq_lens = [c + q for c, q in reqs]
    blocks_per = [math.ceil(s / BLOCK) for s in seq_lens]
    max_blocks = max(blocks_per)
    num_blocks = sum(blocks_per) + 3
    perm = torch.randperm(num_blocks, generator=g)  # scattered pages
    table = torch.zeros(len(reqs), max(max_blocks, table_width), dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per):
        table[i, :n] = perm[used : used + n].int()
        used += n
    cache_dtype = torch.float8_e4m3fn if cache == "fp8" else dtype
    kv_cache = torch.full((num_blocks, BLOCK, RANK + ROPE), float("nan"), dtype=dtype).to(cache_dtype)
    latents = [torch.randn(s, RANK + ROPE, generator=g).to(dtype) for s in seq_lens]
    k_scale = torch.tensor([0.5], dtype=torch.float32)
    slots = []
    for i, (c, _) in enumerate(reqs):
        pos = torch.arange(seq_lens[i])
        slot = table[i, pos // BLOCK].long() * BLOCK + pos % BLOCK
        # Contexts are in the cache already; the new tokens go through the impl's write.
        write_latent_cache_ref(latents[i][:c, :RANK], latents[i][:c, RANK:], kv_cache, slot[:c], k_scale=k_scale)
        slots.append(slot[c:])
    q_lens = [q for _, q in reqs]
    cu = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32)
    nd = len(decodes)
    seq_t = torch.tensor(seq_lens, dtype=torch.int32)
    decode_md = None
    if nd:
        decode_md = MLACommonDecodeMetadata(block_table=table[:nd], seq_lens=seq_t[:nd], dcp_tot_seq_lens=None)
    prefill_md = None
    if prefills:
        prefill_md = MLACommonPrefillMetadata(
            block_table=table[nd:], query_start_loc=cu[nd:] - cu[nd], max_query_len=max(q_lens)
        )
    num_tokens = int(cu[-1])
    md = TritonMLAMetadata(
        num_reqs=len(reqs),
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        num_actual_tokens=num_tokens,
        query_start_loc=cu,
        slot_mapping=torch.cat(slots),
        num_decodes=nd,
        num_decode_tokens=int(cu[nd]),
        num_prefills=len(prefills),
        prefill=prefill_md,
        decode=decode_md,
    )
    # The fields of vLLM's CommonAttentionMetadata the plan reads.
    common = SimpleNamespace(
        num_reqs=len(reqs),
        query_start_loc=cu,
        query_start_loc_cpu=cu.clone(),
        max_seq_len=max(seq_lens),
        seq_lens_cpu_upper_bound=seq_t.clone(),
        block_table_tensor=table,
    )
    md.plan = _builder(dtype, cache, cuda_graphs=cuda_graphs, chunk_keys=chunk_keys)._plan(common, md)
    return reqs, latents, kv_cache, md, table, seq_t, k_scale


CASES = {
    "decode": ([(9, 1), (0, 1), (14, 2), (3, 4)], []),
    "prefill": ([], [(0, 5), (7, 3), (13, 4), (4, 1)]),
    "mixed": ([(6, 1), (11, 3)], [(0, 6), (9, 2), (16, 5)]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype,cache", [("float32", "auto"), ("float16", "auto"), ("float16", "fp8")])
def test_mla_impl_matches_reference(case: str, dtype: str, cache: str) -> None:
    _check(case, dtype, cache, cuda_graphs=False)


def test_mla_decode_under_cuda_graph_plan() -> None:
    """The plan of full CUDA graphs: a configuration pinned per batch size (planned for
    max_model_len, whatever this batch's lengths), the builder's preallocated workspace, the
    decode launch sized for the reorder threshold; the result is the same."""
    builder = _builder(torch.float16, "auto", cuda_graphs=True)
    assert builder.decode_workspace is not None
    plan = _check("decode", "float16", "auto", cuda_graphs=True)
    assert plan.decode_config == builder._config(4, 1, 1) == builder._config(4, 4, 60)
    assert plan.decode_config.num_splits > 1 and plan.decode_workspace is not None
    assert plan.decode_max_query_len == 4


def _check(case: str, dtype: str, cache: str, *, cuda_graphs: bool) -> TritonMLAPlan:
    decodes, prefills = CASES[case]
    dt = getattr(torch, dtype)
    reqs, latents, kv_cache, md, table, seq_lens, k_scale = _batch(
        decodes, prefills, dt, cache, seed=len(case) * 7 + len(dtype) + len(cache), cuda_graphs=cuda_graphs
    )
    g = torch.Generator().manual_seed(11)
    proj = _Proj(torch.randn(RANK, HEADS * (NOPE + V_DIM), generator=g) * RANK**-0.5)
    impl = _impl(proj, cache)
    layer = SimpleNamespace(_k_scale=k_scale)
    tol = tolerance(dt)
    n_dec = md.num_decode_tokens

    # The cache write of this step's tokens (vLLM hands fp8 caches over as uint8).
    new = torch.cat([lat[c:] for lat, (c, _) in zip(latents, reqs, strict=True)])
    raw = kv_cache.view(torch.uint8) if cache == "fp8" else kv_cache
    impl.do_kv_cache_update(new[:, :RANK], new[:, None, RANK:], raw, md.slot_mapping, cache, k_scale)
    ref_cache = kv_cache.clone()
    for lat, (c, _), slot in zip(latents, reqs, md.slot_mapping.split([q for _, q in reqs]), strict=True):
        ref_cache.view(-1, RANK + ROPE)[slot] = float("nan")
        write_latent_cache_ref(lat[c:, :RANK], lat[c:, RANK:], ref_cache, slot, k_scale=k_scale)
    assert torch.equal(kv_cache.view(torch.uint8), ref_cache.view(torch.uint8))

    if n_dec:
        q_nope = torch.randn(n_dec, HEADS, RANK, generator=g).to(dt)
        q_pe = torch.randn(n_dec, HEADS, ROPE, generator=g).to(dt)
        got, lse = impl.forward_mqa((q_nope, q_pe), kv_cache, md, layer)
        assert lse is None
        nd = md.num_decodes
        want = mla_decode_ref(
            q_nope,
            q_pe,
            kv_cache,
            table[:nd],
            seq_lens[:nd],
            md.query_start_loc[: nd + 1],
            scale=SCALE,
            k_scale=k_scale,
        )
        assert not got.isnan().any()
        torch.testing.assert_close(got.float(), want, **tol.kwargs())

    if md.num_prefills:
        n_pre = md.num_actual_tokens - n_dec
        q = torch.randn(n_pre, HEADS, QK, generator=g).to(dt)
        output = torch.full((n_pre, HEADS * V_DIM), float("nan"), dtype=dt)
        impl.forward_mha(q, new[n_dec:, :RANK], new[n_dec:, None, RANK:], kv_cache, md, k_scale, output=output)
        w = proj.weight.float().view(RANK, HEADS, NOPE + V_DIM)
        want = torch.empty(n_pre, HEADS, V_DIM)
        lo = 0
        for i in range(md.num_decodes, md.num_reqs):
            c, ql = reqs[i]
            # Context keys as the cache holds them (fp8: dequantised), new keys as computed.
            pos = torch.arange(c)
            ctx = kv_cache[table[i, pos // BLOCK].long(), pos % BLOCK].float() * (k_scale if cache == "fp8" else 1.0)
            lat = torch.cat([ctx, latents[i][c:].float()])
            kv = torch.einsum("tl,lhd->thd", lat[:, :RANK], w)
            k = torch.cat([kv[..., :NOPE], lat[:, None, RANK:].expand(-1, HEADS, -1)], dim=-1)
            want[lo : lo + ql] = attention_ref(q[lo : lo + ql], k, kv[..., NOPE:], scale=SCALE, causal=True)
            lo += ql
        assert not output.isnan().any()
        torch.testing.assert_close(output.float().view(n_pre, HEADS, V_DIM), want, **tol.kwargs())
    return md.plan


def test_prefill_calls_launch_no_decode_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """forward_mha's rows are all prefills (one of them a single token): every
    varlen_attention call says so (decode_query_len=0), so each is one prefill launch, the
    variant `tuner precompile --layout varlen` warms, and none starts a split-KV decode."""
    from vllm_triton_plugin import mla_backend

    calls: list[dict] = []
    real = mla_backend.varlen_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mla_backend, "varlen_attention", spy)
    _check("prefill", "float32", "auto", cuda_graphs=False)
    assert len(calls) >= 2 and all(c.get("decode_query_len") == 0 for c in calls)


def _record_launches(monkeypatch: pytest.MonkeyPatch) -> set[tuple]:
    """Replace the impl's launchers with recorders of what Triton compiles a variant for:
    the launch form and the integer class of every size the launch passes (the decode's
    configuration with its split count as a class)."""
    import dataclasses

    from vllm_triton_plugin import mla_backend as mb

    seen: set[tuple] = set()
    cls = _w._int_class

    def decode(q_nope, q_pe, cache, table, seq_lens, cu, *, config, out, workspace, max_seqlen_q, **kw):
        key = dataclasses.replace(config, num_splits=1), cls(config.num_splits), cls(q_nope.shape[0])
        seen.add(("decode", *key, max_seqlen_q, workspace is not None, q_nope.stride()[2], q_pe.stride()[2]))
        return out

    def varlen(q, k, v, cu_q, cu_k, *, causal, return_lse, out=None, **kw):
        seen.add(
            ("varlen", causal, return_lse, out is None, cls(q.shape[0]), cls(k.shape[0]), q.stride(), k.stride(),
             v.stride(), kw["decode_query_len"])
        )  # fmt: skip
        o = out if out is not None else torch.zeros(q.shape[0], q.shape[1], v.shape[-1], dtype=q.dtype)
        return (o, torch.zeros(q.shape[0], q.shape[1])) if return_lse else o

    def merge(a, la, b, lb, *, out=None):
        seen.add(("merge", out is None, cls(a.shape[0])))
        return (a if out is None else out), la

    monkeypatch.setattr(mb, "mla_decode", decode)
    monkeypatch.setattr(mb, "varlen_attention", varlen)
    monkeypatch.setattr(mb, "merge_attention_states", merge)
    return seen


def _warm_layer(monkeypatch: pytest.MonkeyPatch, builder, cache: str = "auto"):
    """The builder, the layer vLLM would hand it and the capture's block table."""
    import vllm.config

    impl = _impl(_Proj(torch.randn(RANK, HEADS * (NOPE + V_DIM)) * RANK**-0.5), cache)
    kv = torch.zeros(17, BLOCK, RANK + ROPE, dtype=torch.float16)
    layer = SimpleNamespace(impl=impl, kv_cache=kv, _k_scale=torch.ones(1))
    builder._vllm_config, builder._layer_names = SimpleNamespace(), ["layers.0.attn"]
    monkeypatch.setattr(vllm.config, "get_layers_from_vllm_config", lambda *a, **k: {"layers.0.attn": layer})
    return layer, SimpleNamespace(block_table_tensor=torch.zeros(8, 16, dtype=torch.int32))


@pytest.mark.parametrize("level", ["launcher", "kernel"])
def test_warm_up_launches_every_variant_a_batch_can(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    """Under full CUDA graphs the warm-up before the first capture launches every form of
    launch, with every integer class, that any batch of 1..max_num_seqs decodes (1..4 new
    tokens each) and of prefills on cached prefixes (chunked, merged) launches later, so
    that no kernel compiles in a real batch. ``launcher``: the forms at our launchers' calls
    (stood in for); ``kernel``: the kernels' own variants (``compiled.variant_of``), the
    launchers running for real."""
    from test_warmup import _record_variants

    seen = _record_launches(monkeypatch) if level == "launcher" else _record_variants(monkeypatch)
    builder = _builder(torch.float16, "auto", cuda_graphs=True)
    layer, cm = _warm_layer(monkeypatch, builder)
    _w.warm_up_mla(builder, cm)
    warmed = set(seen)
    if level == "launcher":
        assert any(k[0] == "decode" for k in warmed) and any(k[0] == "merge" and k[1] for k in warmed)
    else:
        assert {"mla_decode_kernel", "attention_kernel", "merge_states_kernel"} <= {k[0] for k in warmed}
    seen.clear()
    g = np.random.default_rng(5)
    for n in range(1, builder.max_num_seqs + 1):
        for t in range(n, 4 * n + 1):
            q_lens = np.full(n, t // n)
            q_lens[: t % n] += 1
            decodes = [(int(c), int(q)) for c, q in zip(g.integers(0, 9, n), q_lens, strict=True)]
            _, _, kv_cache, md, *_ = _batch(
                decodes, [], torch.float16, "auto", seed=t, cuda_graphs=True, table_width=cm.block_table_tensor.shape[1]
            )
            # As the layer hands them over: q_nope a transposed bmm output, q_pe a slice.
            q_nope = torch.zeros(HEADS, t, RANK, dtype=torch.float16).transpose(0, 1)
            q_pe = torch.zeros(t, HEADS, NOPE + ROPE, dtype=torch.float16)[..., NOPE:]
            layer.impl.forward_mqa((q_nope, q_pe), kv_cache, md, layer)
    for trial in range(60):
        num = int(g.integers(1, 4))
        prefills = [(int(g.integers(0, 40)), int(g.integers(2, 20))) for _ in range(num)]
        # Chunk budgets that give chunks of every class of key count (1, 16, other).
        chunk_keys = (6, 16, 32)[trial % 3]
        _, _, kv_cache, md, *_ = _batch(
            [], prefills, torch.float16, "auto", seed=trial, cuda_graphs=True, chunk_keys=chunk_keys,
            table_width=cm.block_table_tensor.shape[1],
        )  # fmt: skip
        t = md.num_actual_tokens
        layer.impl.forward_mha(
            torch.zeros(t, HEADS, QK, dtype=torch.float16), torch.zeros(t, RANK, dtype=torch.float16),
            torch.zeros(t, 1, ROPE, dtype=torch.float16), kv_cache, md, layer._k_scale,
            output=torch.zeros(t, HEADS * V_DIM, dtype=torch.float16),
        )  # fmt: skip
    if level == "launcher":
        assert seen and {k[0] for k in seen} == {"decode", "varlen", "merge"}
    assert seen <= warmed, sorted(map(str, seen - warmed))


def test_warm_up_runs_the_kernels(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The warm-up's launches run for real (Triton's interpreter here) and it says what it
    did; without full CUDA graphs it does nothing (the decode's configuration then follows
    the context length, which no warm-up can cover)."""
    import logging

    from vllm_triton_plugin import mla_backend as mb

    calls: list[str] = []
    for name in ("mla_decode", "varlen_attention", "merge_attention_states"):
        real = getattr(mb, name)
        monkeypatch.setattr(mb, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    builder = _builder(torch.float16, "auto", cuda_graphs=True)
    builder.max_num_seqs = 2
    _, cm = _warm_layer(monkeypatch, builder)
    with caplog.at_level(logging.INFO, logger="vllm.plugins.triton_attn"):
        _w.warm_up_mla(builder, cm)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.endswith("triton_attn")], (
        caplog.text
    )
    assert "warm-up made" in caplog.text and {"mla_decode", "varlen_attention", "merge_attention_states"} == set(calls)
    calls.clear()
    eager = _builder(torch.float16, "auto", cuda_graphs=False)
    _warm_layer(monkeypatch, eager)
    _w.warm_up_mla(eager, cm)
    assert calls == []


def test_context_chunks_cover_each_prefix_once() -> None:
    """Every cached position of every prefill is gathered exactly once, from its own page,
    and no chunk gathers more than the budget."""
    ctx = np.array([0, 7, 13, 1], dtype=np.int64)
    table = torch.arange(4 * 5, dtype=torch.int32).view(4, 5) * 10
    chunks = plan_context_chunks(ctx, table, block_size=BLOCK, max_keys=6)
    seen: list[list[int]] = [[] for _ in ctx]
    for ch in chunks:
        cu = ch.cu_seqlens_k.tolist()
        assert cu[-1] <= 6 and ch.max_seqlen_k == max(b - a for a, b in itertools.pairwise(cu))
        for r in range(len(ctx)):
            for j in range(cu[r], cu[r + 1]):
                block = int(ch.blocks[j])
                assert block % 10 == 0 and int(table[r, block // 10 - r * 5]) == block
                seen[r].append((block // 10 - r * 5) * BLOCK + int(ch.offsets[j]))
    assert seen == [list(range(c)) for c in ctx]
    assert plan_context_chunks(np.zeros(3, dtype=np.int64), table[:3], block_size=BLOCK, max_keys=6) == []


def test_unsupported_v_head_dim_is_named() -> None:
    proj = _Proj(torch.zeros(RANK, HEADS * (NOPE + 16)))
    with pytest.raises(ValueError, match="v_head_dim 16 not supported"):
        _impl(proj, "auto", v_head_dim=16)


def test_backend_names_what_the_device_lacks() -> None:
    from vllm.platforms.interface import DeviceCapability

    from vllm_triton_plugin.mla_backend import TritonMLABackend

    def reason(kv_cache_dtype: str, capability: DeviceCapability) -> str | None:
        # vLLM's argument order (the same on 0.26 and 0.32).
        return TritonMLABackend.supports_combination(
            576, torch.bfloat16, kv_cache_dtype, 16, True, False, False, False, capability
        )

    assert reason("fp8", DeviceCapability(9, 0)) is None
    assert "fp8 KV cache needs compute capability 8.9" in (reason("fp8", DeviceCapability(8, 0)) or "")
    assert "differs from the model dtype" in (reason("float16", DeviceCapability(9, 0)) or "")
    assert TritonMLABackend.supports_head_size(576) and not TritonMLABackend.supports_head_size(192)


# --- the page size and the Gluon Hopper decode ------------------------------------------------


@pytest.fixture
def hopper(monkeypatch):
    """A GPU that runs the Gluon MLA decode (CUDA present, sm_90 with a verified Triton),
    stood in for on this CPU."""
    import vllm_triton_plugin.mla_backend as mla_backend
    from triton_attn_kernels import _device, _gluon, _mla_gluon

    real = mla_backend.mla_preferred_block_size
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    # The GPU's page-size question asked of this CPU's tensors.
    monkeypatch.setattr(mla_backend, "mla_preferred_block_size", lambda **kw: real(**{**kw, "device": "cpu"}))
    monkeypatch.setattr(_device, "interpreting", lambda: False)
    monkeypatch.setattr(_mla_gluon, "interpreting", lambda: False)
    monkeypatch.setattr(_gluon, "available", lambda: True)
    monkeypatch.setattr(_gluon, "_sm90", lambda device: True)


def _preferred(monkeypatch, *, cache_dtype="auto", rank=512, rope=64):
    from vllm_triton_plugin.mla_backend import TritonMLABackend

    config = SimpleNamespace(
        model_config=SimpleNamespace(
            dtype=torch.bfloat16, hf_text_config=SimpleNamespace(kv_lora_rank=rank, qk_rope_head_dim=rope)
        ),
        cache_config=SimpleNamespace(cache_dtype=cache_dtype),
    )
    import vllm_triton_plugin.mla_backend as mla_backend

    monkeypatch.setattr(mla_backend, "get_current_vllm_config", lambda: config)
    return TritonMLABackend.get_preferred_block_size(16)


def test_prefers_64_token_pages_where_the_gluon_decode_serves(hopper, monkeypatch):
    assert _preferred(monkeypatch) == 64
    # An fp8 latent cache, another latent width: the Triton kernel, vLLM's default pages.
    assert _preferred(monkeypatch, cache_dtype="fp8") == 16
    assert _preferred(monkeypatch, rank=256) == 16
    assert _preferred(monkeypatch, rope=32) == 16


def test_keeps_the_default_pages_without_a_hopper_gpu(monkeypatch):
    assert _preferred(monkeypatch) == 16


def test_builder_plans_the_gluon_decode_at_64_token_pages(hopper):
    for block, want in ((64, 1), (16, 0)):
        builder = object.__new__(TritonMLAMetadataBuilder)
        builder.reorder_batch_threshold = 1
        builder.mla_dims = SimpleNamespace(kv_lora_rank=512, qk_rope_head_dim=64)
        builder.model_config = SimpleNamespace(dtype=torch.bfloat16, max_model_len=8192)
        builder.num_heads = 16
        builder.device = torch.device("cpu")
        builder.page_size = block
        mode = SimpleNamespace(has_full_cudagraphs=lambda: True)
        builder._init_plan(
            SimpleNamespace(
                cache_config=SimpleNamespace(cache_dtype="auto"),
                compilation_config=SimpleNamespace(cudagraph_mode=mode),
                scheduler_config=SimpleNamespace(max_num_seqs=4),
            )
        )
        assert builder._config(4, 1, 100).gluon == want, block
