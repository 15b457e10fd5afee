"""The page size the backend asks vLLM for, and the serving limits its builder passes on:
128-token pages where the Gluon Hopper prefill serves the model (sm_90 with Triton 3.6.0, here
stood in for), vLLM's default everywhere else; the builder runs the Gluon prefill exactly at
whole-tile pages of models without ALiBi or sinks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_backend import vllm_config
from vllm.config import CUDAGraphMode
from vllm.v1.kv_cache_interface import FullAttentionSpec

from triton_attn_kernels.tuning import policy
from vllm_triton_plugin.backend import TritonAttentionBackend, TritonAttentionImpl, TritonAttentionMetadataBuilder

HEAD = 128


def _config(*, cache_dtype="auto", layers=None):
    return vllm_config(
        32, 8, torch.bfloat16, cache_dtype, CUDAGraphMode.PIECEWISE, head_size=HEAD, max_model_len=4096, layers=layers
    )


class _Layer(torch.nn.Module):
    """What vLLM's forward context holds per attention layer, as far as the backend looks."""

    def __init__(self, **features):
        super().__init__()
        self.impl = TritonAttentionImpl(32, HEAD, HEAD**-0.5, 8, **features)


@pytest.fixture
def hopper(monkeypatch):
    """A GPU that runs the Gluon prefill: CUDA present, sm_90 with a verified Triton. Its
    geometry is this CPU's (SM count), read as a GPU's (not the interpreter)."""
    import vllm_triton_plugin.backend as backend

    real = backend.model_geometry
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(policy, "_runs_gluon", lambda device: True)

    def geometry(**kw):
        return dataclasses.replace(real(**{**kw, "device": "cpu"}), interpreter=False)

    monkeypatch.setattr(backend, "model_geometry", geometry)
    monkeypatch.setattr(policy, "model_geometry", geometry)  # the builder's, via ServingPolicy.for_model


def _preferred(monkeypatch, config):
    import vllm.config

    monkeypatch.setattr(vllm.config, "get_current_vllm_config", lambda: config)
    return TritonAttentionBackend.get_preferred_block_size(16)


def test_prefers_128_token_pages_for_plain_models_on_hopper(hopper, monkeypatch):
    layers = {"model.layers.0.attn": _Layer(), "model.layers.1.attn": _Layer()}
    assert _preferred(monkeypatch, _config(layers=layers)) == 128


@pytest.mark.parametrize("features", [{"sliding_window": 1024}, {"logits_soft_cap": 30.0}])
def test_prefers_128_token_pages_with_windows_and_softcaps(hopper, monkeypatch, features):
    # The Hopper prefill serves both: such a model still gets its whole-tile pages.
    layers = {"model.layers.0.attn": _Layer(), "model.layers.1.attn": _Layer(**features)}
    assert _preferred(monkeypatch, _config(layers=layers)) == 128


@pytest.mark.parametrize("features", [{"alibi_slopes": [0.5] * 32}, {"sinks": torch.zeros(32)}])
def test_keeps_the_default_when_a_layer_is_not_plain(hopper, monkeypatch, features):
    layers = {"model.layers.0.attn": _Layer(), "model.layers.1.attn": _Layer(**features)}
    assert _preferred(monkeypatch, _config(layers=layers)) == 16


def test_asks_for_the_prefill_tile_for_an_fp8_cache_too(hopper, monkeypatch):
    # The prefill reads an fp8 cache staged in its own pages; decode and the staging copy
    # read whole tiles per page at 128 (2-4% quicker fp8 decodes on an H200).
    assert _preferred(monkeypatch, _config(cache_dtype="fp8")) == 128


def test_keeps_the_default_without_a_hopper_gpu(monkeypatch):
    # This machine: no CUDA (and the kernels' own check would say no sm_90 either).
    assert _preferred(monkeypatch, _config()) == 16


def _builder(block_size, layers):
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=8, head_size=HEAD, dtype=torch.bfloat16)
    return TritonAttentionMetadataBuilder(spec, list(layers), _config(layers=layers), torch.device("cpu"))


def test_builder_runs_the_gluon_prefill_at_whole_tile_pages(hopper):
    plain = {"l0": _Layer(), "l1": _Layer()}
    assert _builder(128, plain).policy.prefill.gluon == 1
    assert _builder(128, plain).policy.limits.plain_attention
    assert not _builder(16, plain).policy.prefill.gluon
    windowed = {"l0": _Layer(), "l1": _Layer(sliding_window=512)}
    assert _builder(128, windowed).policy.prefill.gluon == 1
    with_alibi = {"l0": _Layer(), "l1": _Layer(alibi_slopes=[0.5] * 32)}
    assert not _builder(128, with_alibi).policy.prefill.gluon
    # Only the builder's own layers count: an ALiBi layer of another group does not.
    builder = TritonAttentionMetadataBuilder(
        FullAttentionSpec(block_size=128, num_kv_heads=8, head_size=HEAD, dtype=torch.bfloat16),
        ["l0"],
        _config(layers=with_alibi),
        torch.device("cpu"),
    )
    assert builder.policy.prefill.gluon == 1


def test_builder_runs_the_gluon_decode_for_layers_it_serves(hopper):
    # At whole-tile pages, the Gluon decode's configuration exactly where no layer has a
    # window, softcap, ALiBi or sinks: verification at any batch, one-token decode over up to
    # 16 sequences (more keep the generic kernel).
    from triton_attn_kernels.tuning import ServingPolicy

    plain = _builder(128, {"l0": _Layer(), "l1": _Layer()}).policy
    assert plain.limits.hopper_decode and plain.decode(4, 4096).gluon and not plain.decode(64, 4096).gluon
    verify = dataclasses.replace(plain.limits, decode_query_len=5)
    assert ServingPolicy(plain.geometry, verify, device=plain.device).decode(4, 4096).gluon == 1
    assert _builder(16, {"l0": _Layer()}).policy.limits.hopper_decode
    for features in ({"sliding_window": 512}, {"logits_soft_cap": 30.0}, {"alibi_slopes": [0.5] * 32}):
        layers = {"l0": _Layer(), "l1": _Layer(**features)}
        assert not _builder(128, layers).policy.limits.hopper_decode, features
