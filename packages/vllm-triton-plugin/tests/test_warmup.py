"""The standard backend's warm-up at the first CUDA-graph capture (``_warmup``): it launches
every form of launch that later batches of any mix (decodes, verification rows, prefills
beside them or alone, over few or many sequences, cache writes of any token count) launch,
so that nothing compiles while a real batch runs; it runs for real and reports; without full
CUDA graphs it does nothing. The MLA backend's warm-up is tested in test_mla_backend.py."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import vllm.config
from test_backend import BLOCK, DEVICE, HEAD, kv_cache, layer, make_batch, vllm_config
from vllm.config import CUDAGraphMode
from vllm.v1.attention.backend import AttentionType
from vllm.v1.kv_cache_interface import FullAttentionSpec

from triton_attn_kernels import _launch
from triton_attn_kernels.tuning import select_kv_write_config
from vllm_triton_plugin import _warmup
from vllm_triton_plugin import backend as be

HQ, HKV = 4, 2


def _setup(monkeypatch: pytest.MonkeyPatch, mode=CUDAGraphMode.FULL_AND_PIECEWISE, *, dq: int = 1):
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=HKV, head_size=HEAD, dtype=torch.float16)
    config = vllm_config(HQ, HKV, torch.float16, mode=mode)
    if dq > 1:  # speculative decoding: verification rows of dq tokens run as decodes
        monkeypatch.setattr(be._compat, "decode_query_len", lambda cfg: dq)
    builder = be.TritonAttentionMetadataBuilder(spec, ["layer.0"], config, DEVICE)
    impl = be.TritonAttentionImpl(HQ, HEAD, HEAD**-0.5, HKV, None, None, "auto", None, AttentionType.DECODER)
    lay = layer()
    lay.impl, lay.kv_cache = impl, kv_cache(17, HKV, torch.float16, "NHD")
    monkeypatch.setattr(vllm.config, "get_layers_from_vllm_config", lambda *a, **k: {"layer.0": lay})
    cm = SimpleNamespace(block_table_tensor=torch.zeros(8, 16, dtype=torch.int32, device=DEVICE))
    return builder, lay, cm


def decode_first_mix(
    rng: np.random.Generator, dq: int, *, most: int, contexts: tuple[int, int]
) -> list[tuple[int, int]]:
    """(context, new tokens) of 1..``most`` requests in vLLM's order: decodes (1..dq new
    tokens) first, then prefills (more than dq new tokens, at most 40), contexts drawn from
    ``contexts`` (from dq + 2 up)."""
    n = int(rng.integers(1, most + 1))
    decodes = int(rng.integers(0, n + 1))
    ctxs = [int(rng.integers(max(contexts[0], dq + 2), contexts[1])) for _ in range(n)]
    seqs = [(c, int(rng.integers(1, dq + 1))) for c in ctxs[:decodes]]
    return seqs + [(c, int(rng.integers(dq + 1, min(c, 40) + 1))) for c in ctxs[decodes:]]


def _classes(strides: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(_warmup._int_class(s) for s in strides)


def _record(monkeypatch: pytest.MonkeyPatch, compiled: set[tuple] | None = None) -> set[tuple]:
    """Replace the impl's launchers with recorders of the launch forms Triton compiles a
    variant for: the decode configuration (its split count only as split or not), the
    prefill configuration, whether a prefill launch runs alone over 4+ sequences (the
    persistent launch), the query strides' integer classes; the cache write's configuration.
    Forms launched inside ``compiling()`` go to ``compiled`` instead."""
    ran: set[tuple] = set()

    class Seen:
        def add(self, form: tuple) -> None:
            (ran if _launch.COMPILING.get() is None or compiled is None else compiled).add(form)

    seen = Seen()

    def attend(q, k_cache, v_cache, block_table, seq_lens, cu, *, config, decode_query_len, max_seqlen_q, **kw):
        d = config.decode
        decode = None if d is None else (dataclasses.replace(d, num_splits=1), d.num_splits > 1)
        prefill = config.prefill if max_seqlen_q > decode_query_len else None
        alone = prefill is not None and decode is None and seq_lens.shape[0] >= 4
        seen.add(("attention", decode, prefill, alone, decode_query_len, _classes(q.stride()), q.dtype))

    def write(key, value, k_cache, v_cache, slots, **kw):
        n = key.shape[0]
        cfg = select_kv_write_config(HKV, HEAD, num_tokens=n, dtype=key.dtype, kv_dtype=k_cache.dtype, device=DEVICE)
        seen.add(("write", cfg, _classes(key.stride()), slots.dtype))

    monkeypatch.setattr(be, "paged_attention", attend)
    monkeypatch.setattr(be, "write_kv_cache", write)
    return ran


@pytest.mark.parametrize("dq", [1, 3])
def test_warm_up_launches_every_form_a_batch_can(monkeypatch: pytest.MonkeyPatch, dq: int) -> None:
    compiled: set[tuple] = set()
    seen = _record(monkeypatch, compiled)
    builder, lay, cm = _setup(monkeypatch, dq=dq)
    # The interpreter's heuristic gives every batch size one decode configuration; a GPU's
    # differ by batch size, as these do.
    pinned = builder.policy.decode
    monkeypatch.setattr(
        builder.policy, "decode", lambda n, k: dataclasses.replace(pinned(n, k), num_warps=2 if n in (3, 6) else 4)
    )
    _warmup.warm_up_attention(builder, cm)
    warmed = set(seen)
    # Every form compiled first, side by side, then launched.
    assert compiled == warmed
    seen.clear()
    g = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(3)
    for _ in range(80):
        seqs = decode_first_mix(rng, dq, most=8, contexts=(5, 40))
        batch = make_batch(seqs, HQ, HKV, torch.float16, 24, g)
        md = builder.build(0, batch.common)
        lay.impl.forward(lay, batch.query, batch.key, batch.value, lay.kv_cache, md, torch.empty_like(batch.query))
    for t in range(1, builder.policy.limits.max_num_batched_tokens + 1):
        kv = torch.zeros(t, HQ + 2 * HKV, HEAD, dtype=torch.float16, device=DEVICE)
        lay.impl.do_kv_cache_update(lay, kv[:, HQ : HQ + HKV], kv[:, HQ + HKV :], lay.kv_cache, torch.full((t,), -1))
    assert {k[0] for k in seen} == {"attention", "write"}
    assert any(k[3] for k in seen) and any(k[2] is not None and not k[3] for k in seen)
    assert seen <= warmed, sorted(map(str, seen - warmed))


def test_warm_up_runs_and_reports(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    builder, _, cm = _setup(monkeypatch)
    builder.policy.limits = dataclasses.replace(builder.policy.limits, max_num_seqs=2, max_num_batched_tokens=20)
    with caplog.at_level(logging.INFO, logger="vllm.plugins.triton_attn"):
        _warmup.warm_up_attention(builder, cm)
    ours = [r for r in caplog.records if r.name.endswith("triton_attn")]
    assert [r.levelno for r in ours] == [logging.INFO] and "warm-up made" in ours[0].getMessage()
    assert "kernel variants compiled or loaded during engine start" not in caplog.text  # no real batch yet


def test_no_warm_up_without_full_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record(monkeypatch)
    builder, _, cm = _setup(monkeypatch, CUDAGraphMode.PIECEWISE)
    _warmup.warm_up_attention(builder, cm)
    assert seen == set()


def _record_variants(monkeypatch: pytest.MonkeyPatch) -> set[tuple]:
    """Every kernel launch reduced to its compiled variant (``compiled.variant_of``: Triton's
    classes of every argument the kernel specialises). The Gluon kernels are recorded and not
    run (the interpreter has no Gluon); the others run."""
    from triton_attn_kernels import _fp8_stage, _gluon, _mla_gluon, _workspace, attention, kv_cache, merge, mla
    from triton_attn_kernels.compiled import variant_of

    seen: set[tuple] = set()

    def recorder(real: Any, runs: bool) -> Any:
        def launch(kernel: Any, grid: tuple, *args: Any, **kwargs: Any) -> None:
            seen.add((getattr(kernel, "fn", kernel).__name__, variant_of(kernel, args, kwargs)))
            if runs:
                real(kernel, grid, *args, **kwargs)

        return launch

    for module in (_fp8_stage, _gluon, _mla_gluon, _workspace, attention, kv_cache, merge, mla):
        runs = module not in (_gluon, _mla_gluon)
        monkeypatch.setattr(module, "launch_kernel", recorder(module.launch_kernel, runs))
    return seen


@pytest.mark.parametrize(("cache_dtype", "dq"), [("auto", 1), ("auto", 3), ("fp8_e4m3", 1)])
def test_warm_up_compiles_every_kernel_variant_later_batches_launch(monkeypatch: pytest.MonkeyPatch, cache_dtype, dq):
    # Kernel level, where the forms above cannot see: how Triton classifies each integer
    # and pointer argument. The fp8 cache takes the Hopper route (the staging copy, then the
    # Gluon prefill), as on an H200, where short warm-up contexts once gave two arguments
    # the value 1 that real batches never have.
    import test_backend

    from triton_attn_kernels import PrefillConfig, _gluon

    head, hq, hkv, width = 64, 4, 2, 24  # 24 table columns: 384 tokens per sequence at most
    monkeypatch.setattr(test_backend, "HEAD", head)
    fp8 = cache_dtype != "auto"
    if fp8:
        for name in ("available", "_sm90"):
            monkeypatch.setattr(_gluon, name, lambda *a: True)
        monkeypatch.setattr(_gluon, "interpreting", lambda: False)
    if dq > 1:  # speculative decoding: verification rows of dq tokens run as decodes
        monkeypatch.setattr(be._compat, "decode_query_len", lambda cfg: dq)
    seen = _record_variants(monkeypatch)
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=hkv, head_size=head, dtype=torch.float16)
    config = vllm_config(hq, hkv, torch.float16, cache_dtype, CUDAGraphMode.FULL_AND_PIECEWISE, head_size=head,
                         max_model_len=width * BLOCK)  # fmt: skip
    builder = be.TritonAttentionMetadataBuilder(spec, ["layer.0"], config, DEVICE)
    if fp8:  # what the serving policy picks on sm_90 for head size 64 (the interpreter's has none)
        builder.policy.prefill = PrefillConfig(block_m=128, tile_n=128, num_warps=4, num_stages=2, gluon=1)
    impl = be.TritonAttentionImpl(hq, head, head**-0.5, hkv, None, None, cache_dtype, None, AttentionType.DECODER)
    impl.process_weights_after_loading(torch.float16)
    lay = layer(0.7, 1.3)
    lay.impl = impl
    lay.kv_cache = kv_cache(160, hkv, torch.uint8 if fp8 else torch.float16, "NHD")
    monkeypatch.setattr(vllm.config, "get_layers_from_vllm_config", lambda *a, **k: {"layer.0": lay})
    cm = SimpleNamespace(block_table_tensor=torch.zeros(8, width, dtype=torch.int32, device=DEVICE))
    _warmup.warm_up_attention(builder, cm)
    warmed = set(seen)
    kernels = {name for name, _ in warmed}
    assert {"attention_kernel", "write_kv_kernel"} <= kernels
    assert not fp8 or {"stage_kv_kernel", "prefill_gluon_kernel"} <= kernels
    seen.clear()
    g = torch.Generator().manual_seed(5)
    rng = np.random.default_rng(5)
    for _ in range(10):
        # Contexts from a few tokens to many pages, vLLM's full-width block table.
        seqs = decode_first_mix(rng, dq, most=6, contexts=(8, width * BLOCK - 8))
        batch = make_batch(seqs, hq, hkv, torch.float16, 160, g)
        table = torch.zeros(len(seqs), width, dtype=torch.int32, device=DEVICE)
        table[:, : batch.common.block_table_tensor.shape[1]] = batch.common.block_table_tensor
        common = dataclasses.replace(batch.common, block_table_tensor=table)
        md = builder.build(0, common)
        impl.do_kv_cache_update(lay, batch.key, batch.value, lay.kv_cache, md.slot_mapping)
        impl.forward(lay, batch.query, batch.key, batch.value, lay.kv_cache, md, torch.empty_like(batch.query))
    assert {name for name, _ in seen} >= ({"prefill_gluon_kernel"} if fp8 else {"attention_kernel"})
    assert seen <= warmed, sorted(map(str, seen - warmed))
