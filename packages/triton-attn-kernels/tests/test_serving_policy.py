"""The serving policy's prefill choice: the Gluon Hopper prefill exactly where it serves the
model at the server's page size, the heuristic elsewhere; and the page size it asks for."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from triton_attn_kernels import _gluon
from triton_attn_kernels.tuning import (
    PrefillConfig,
    ServingLimits,
    ServingPolicy,
    decodes_first,
    gluon_prefill_config,
    model_geometry,
    policy,
    preferred_block_size,
    prefill_heuristic,
)


def _geometry(*, head_dim=128, dtype=torch.bfloat16, kv_dtype=None, head_dim_v=None):
    # A GPU's geometry (the tests run under Triton's interpreter, which rules Gluon out).
    g = model_geometry(
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=head_dim,
        dtype=dtype,
        kv_dtype=kv_dtype or dtype,
        device="cpu",
        head_dim_v=head_dim_v,
    )
    return dataclasses.replace(g, interpreter=False)


def _limits(**kw):
    return ServingLimits(max_num_seqs=8, max_model_len=4096, max_num_batched_tokens=2048, **kw)


@pytest.fixture
def sm90(monkeypatch):
    """A device that runs the Gluon prefill (this machine has none)."""
    monkeypatch.setattr(policy, "_runs_gluon", lambda device: True)
    return torch.device("cuda")


@pytest.mark.parametrize(("head_dim", "tile_n", "stages"), [(64, 128, 2), (128, 128, 2), (256, 64, 2)])
def test_gluon_config_at_the_head_sizes_it_serves(head_dim, tile_n, stages):
    config = gluon_prefill_config(_geometry(head_dim=head_dim), block_size=128)
    assert config is not None and config.gluon == 1 and (config.tile_n, config.num_stages) == (tile_n, stages)
    assert _gluon.smem_bytes(head_dim, tile_n, stages) <= _gluon.SMEM_LIMIT
    assert (config.block_m, config.num_warps, config.tma) == (128, 4, 0)


@pytest.mark.parametrize(
    "geometry, block_size",
    [
        (_geometry(), 16),  # pages smaller than the tile
        (_geometry(), 192),  # not a multiple of it
        (_geometry(dtype=torch.float32), 128),
        (_geometry(kv_dtype=torch.float16), 128),  # a 16-bit cache of another dtype than q's
        (_geometry(head_dim=96), 128),
        (_geometry(head_dim=128, head_dim_v=64), 128),
    ],
)
def test_no_gluon_config_where_the_kernel_does_not_serve(geometry, block_size):
    assert gluon_prefill_config(geometry, block_size=block_size) is None


@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("block_size", [16, 128, 192, None])
def test_gluon_config_for_fp8_caches_at_any_page_size(kv_dtype, block_size):
    # The prefill reads an fp8 cache's staged copy (in pages of its tile), not the cache.
    config = gluon_prefill_config(_geometry(kv_dtype=kv_dtype), block_size=block_size)
    assert config == gluon_prefill_config(_geometry(), block_size=128)


def test_policy_runs_gluon_at_whole_tile_pages_of_plain_models(sm90):
    g = _geometry()
    chosen = ServingPolicy(g, _limits(block_size=128, plain_attention=True), device=sm90).prefill
    assert chosen == gluon_prefill_config(g, block_size=128)
    plan = ServingPolicy(g, _limits(block_size=256, plain_attention=True), device=sm90).plan(4, 512, 512)
    assert plan.config.prefill is not None and plan.config.prefill.gluon == 1


@pytest.mark.parametrize(
    "limits",
    [
        _limits(block_size=16, plain_attention=True),
        _limits(block_size=128, plain_attention=False),
        _limits(block_size=None, plain_attention=True),
    ],
)
def test_policy_keeps_the_heuristic_elsewhere(sm90, limits):
    g = _geometry()
    chosen = ServingPolicy(g, limits, device=sm90).prefill
    assert isinstance(chosen, PrefillConfig) and not chosen.gluon
    assert chosen == prefill_heuristic(dataclasses.replace(g, num_seqs=8, max_seqlen_q=2048, max_seqlen_k=4096))


def test_policy_without_a_hopper_gpu_never_runs_gluon():
    g = _geometry()
    assert gluon_prefill_config(dataclasses.replace(g, interpreter=True), block_size=128) is None
    chosen = ServingPolicy(g, _limits(block_size=128, plain_attention=True), device="cpu").prefill
    assert not chosen.gluon
    assert preferred_block_size(g, plain_attention=True, device="cpu") is None


def test_preferred_block_size(sm90):
    assert preferred_block_size(_geometry(), plain_attention=True, device=sm90) == 128
    assert preferred_block_size(_geometry(), plain_attention=False, device=sm90) is None
    assert preferred_block_size(_geometry(kv_dtype=torch.float8_e4m3fn), plain_attention=True, device=sm90) == 128
    # Served but not yet measured against the generic kernel on a GPU: no page size asked for.
    assert preferred_block_size(_geometry(head_dim=256), plain_attention=True, device=sm90) is None


@pytest.mark.parametrize("bad", [0, -16, 1.5, True, "128"])
def test_limits_reject_bad_block_sizes(bad):
    with pytest.raises(ValueError, match="block_size"):
        _limits(block_size=bad)


def test_limits_reject_non_bool_plain_attention():
    with pytest.raises(TypeError, match="plain_attention"):
        _limits(plain_attention=1)


@pytest.mark.parametrize(
    ("q_lens", "dq", "expect"),
    [
        ([1, 1, 0, 5, 17, 0], 1, 3),  # decodes, an empty request, prefills, an empty one
        ([4, 4, 9], 4, 2),  # verification rows of 1 + 3 tokens count as decodes
        ([1, 5, 1], 1, None),  # a decode after a prefill
        ([5, 1], 1, None),
        ([1, 1], 1, None),  # no prefill
        ([5, 17], 1, None),  # no decode
        ([0, 5], 1, None),  # nothing to split off
        ([], 1, None),
    ],
)
def test_decodes_first(q_lens, dq, expect):
    assert decodes_first(q_lens, dq) == expect
    assert decodes_first(torch.tensor(q_lens, dtype=torch.int32), dq) == expect


def test_graph_plans_are_reused_across_lengths():
    # Under CUDA graphs a plan depends on the batch size and on which launches run only: a
    # server's steps get the same object back (host time per step is on its path).
    graphs = ServingPolicy(_geometry(), _limits(cuda_graphs=True), device="cpu")
    first = graphs.plan(4, 1, 100)
    assert graphs.plan(4, 1, 4000) is first
    assert graphs.plan(5, 1, 100) is not first and graphs.plan(5, 1, 100).config.decode is not None
    mixed = graphs.plan(4, 600, 4000)
    assert mixed is not first and mixed.config.prefill is not None and mixed.config.decode == first.config.decode
    prefill_only = graphs.plan(4, 600, 4000, has_decodes=False)
    assert prefill_only.config.decode is None and prefill_only.decode_query_len == 0
    # Eager launches follow the context (the heuristic's split count), so nothing is reused.
    gpu = dataclasses.replace(_geometry(), num_sms=132)
    eager = ServingPolicy(gpu, _limits(cuda_graphs=False), device="cpu")
    short, long = eager.plan(1, 1, 64), eager.plan(1, 1, 4096)
    assert short.config.decode.num_splits < long.config.decode.num_splits
