"""The Gluon Hopper MLA decode (``MLADecodeConfig(gluon=1)``, ``_kernels/mla_gluon.py``).

On any machine: the config's limits, the rule of ``_mla_gluon.qualifies`` clause by clause,
that ``mla_decode`` hands qualifying launches to it (and merges its partials), and that where
it cannot run the same call computes the reference result on the Triton kernel. The
interpreter cannot run Gluon: the kernel's numbers come from the ``gpu`` tests (sm_90,
Triton 3.6.0); its sm_90 code is compiled by ``nox -s sm90`` (``_sm90.GLUON``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from batches import DEVICE
from test_mla import check, graph_replay_follows_new_lengths, mla_batch, run

from triton_attn_kernels import MLADecodeConfig, _gluon, _mla_gluon
from triton_attn_kernels.reference_mla import mla_decode_ref
from triton_attn_kernels.tuning.mla import GLUON_MLA_TILES, mla_decode_heuristic


def gluon_cfg(splits: int = 1, tile: tuple[int, int] = (64, 2)) -> MLADecodeConfig:
    return MLADecodeConfig(tile_n=tile[0], num_stages=tile[1], num_splits=splits, gluon=1)


@pytest.mark.parametrize("tile", [(32, 2), (64, 3), (128, 2), (16, 4)])
def test_config_rejects_what_the_kernel_does_not_run(tile):
    with pytest.raises(ValueError, match=r"gluon=1 needs \(tile_n, num_stages\) in \(64, 2\), \(32, 3\), \(32, 4\)"):
        gluon_cfg(tile=tile)
    for ok in GLUON_MLA_TILES:
        assert gluon_cfg(tile=ok).tile_n == ok[0]


def test_config_flag_is_a_switch_and_the_default_where_it_serves():
    assert MLADecodeConfig().gluon == 0
    with pytest.raises(ValueError, match="gluon must be 0 or 1"):
        MLADecodeConfig(tile_n=64, num_stages=2, gluon=2)
    from triton_attn_kernels.tuning.mla import MLAProblem, mla_gluon_config, mla_triton_config

    for heads in (16, 128):
        p = MLAProblem(64, heads, 512, 64, 1, 8192, "bfloat16", "bfloat16", num_sms=132)
        assert mla_decode_heuristic(p) == mla_triton_config(p) and mla_decode_heuristic(p).gluon == 0
        served = replace(p, gluon=True)
        assert mla_decode_heuristic(served) == mla_gluon_config(served) and mla_decode_heuristic(served).gluon == 1
        # The interpreter keeps the Triton kernel's tiny tiles whatever the flag says.
        assert mla_decode_heuristic(replace(served, interpreter=True)).gluon == 0


def test_problem_from_tensors_says_where_it_serves(monkeypatch):
    from triton_attn_kernels.tuning.mla import MLAProblem

    def problem(why: str) -> MLAProblem:
        q_nope, q_pe, kv, _ = _tensors(why)
        return MLAProblem.from_tensors(q_nope, q_pe, kv, num_seqs=4, max_seqlen_q=1, max_seqlen_k=100)

    assert not problem("none").gluon  # the interpreter or a CPU here
    _pretend_sm90(monkeypatch)
    assert problem("none").gluon
    for why in ("fp32", "fp8 cache", "rank 256", "rope 32", "page not a multiple of 64"):
        assert not problem(why).gluon, why


def _pretend_sm90(monkeypatch):
    monkeypatch.setattr(_mla_gluon, "interpreting", lambda: False)
    monkeypatch.setattr(_gluon, "available", lambda: True)
    monkeypatch.setattr(_gluon, "_sm90", lambda device: True)


def _tensors(why: str):
    rank = 256 if why == "rank 256" else 512
    rope = 32 if why == "rope 32" else 64
    dtype = torch.float32 if why == "fp32" else torch.bfloat16
    kv_dtype = torch.float8_e4m3fn if why == "fp8 cache" else dtype
    block = 48 if why == "page not a multiple of 64" else 64
    q_nope = torch.randn(4, 16, rank).to(dtype)
    q_pe = torch.randn(4, 16, rope).to(dtype)
    kv = torch.randn(3, block, rank + rope).to(kv_dtype)
    if why == "cache rows not contiguous":
        kv = torch.randn(3, block, 2 * (rank + rope)).to(kv_dtype)[..., : rank + rope]
    if why == "cache pages strided":
        kv = torch.randn(6, block, rank + rope).to(kv_dtype)[::2]
    out = torch.empty_like(q_nope)
    if why == "out dims strided":
        out = torch.empty(4, 16, 2 * rank).to(dtype)[..., ::2]
    return q_nope, q_pe, kv, out


REASONS = [
    "interpreter",
    "other triton",
    "not sm_90",
    "gluon off",
    "fp32",
    "fp8 cache",
    "rank 256",
    "rope 32",
    "page not a multiple of 64",
    "cache pages strided",
    "out dims strided",
]


@pytest.mark.parametrize("why", REASONS)
def test_rule_each_clause(monkeypatch, why):
    _pretend_sm90(monkeypatch)
    if why == "interpreter":
        monkeypatch.setattr(_mla_gluon, "interpreting", lambda: True)
    elif why == "other triton":
        monkeypatch.setattr(_gluon, "available", lambda: False)
    elif why == "not sm_90":
        monkeypatch.setattr(_gluon, "_sm90", lambda device: False)
    config = MLADecodeConfig() if why == "gluon off" else gluon_cfg()
    assert not _mla_gluon.qualifies(*_tensors(why), config)
    # The control: the same launch without the reason qualifies.
    monkeypatch.undo()
    _pretend_sm90(monkeypatch)
    assert _mla_gluon.qualifies(*_tensors("none"), gluon_cfg())


@pytest.mark.parametrize("splits", [1, 4])
def test_mla_decode_routes_qualifying_launches_to_it(monkeypatch, splits):
    """With the rule made true, mla_decode hands the launch to ``_mla_gluon.launch`` (not
    run here) with the config's splits, and merges the partials it would write."""
    from triton_attn_kernels import mla as mla_module

    _pretend_sm90(monkeypatch)
    seen: list[dict] = []
    merged: list[dict] = []
    monkeypatch.setattr(_mla_gluon, "launch", lambda *a, **kw: seen.append(kw))
    monkeypatch.setattr(mla_module, "merge_partials", lambda *a, **kw: merged.append(kw))
    b = mla_batch([1, 1, 2], [70, 200, 64], heads=16, rank=512, rope=64, block_size=64, dtype=torch.bfloat16)
    out, res = run(b, config=gluon_cfg(splits))
    assert res is out
    assert len(seen) == 1 and seen[0]["num_splits"] == splits and seen[0]["max_seqlen_q"] == 2
    assert (seen[0]["tile_n"], seen[0]["stages"]) == (64, 2)
    assert len(merged) == (splits > 1)
    run(b, config=gluon_cfg(splits, tile=(32, 4)))
    assert (seen[1]["tile_n"], seen[1]["stages"]) == (32, 4)


def test_never_chosen_where_it_cannot_run(monkeypatch):
    """Here (the interpreter, or a GPU without Triton 3.6.0 / sm_90) a gluon config computes
    the reference result on the Triton kernel and never reaches the Gluon one."""
    if _gluon.available() and DEVICE == "cuda" and torch.cuda.get_device_capability() == (9, 0):
        pytest.skip("this machine runs the Gluon MLA decode (the gpu tests cover it)")
    seen: list[dict] = []
    monkeypatch.setattr(_mla_gluon, "launch", lambda *a, **kw: seen.append(kw))
    b = mla_batch([1, 1], [40, 17], heads=16, rank=64, rope=16, block_size=16)
    out, _ = run(b, config=MLADecodeConfig(tile_n=64, num_stages=2, num_splits=2, gluon=1))
    check(out, mla_decode_ref(*b.args(), scale=b.scale), torch.float16)
    assert not seen


# --- numerics on sm_90 with Triton 3.6.0 -----------------------------------------------------


def _runs_gluon() -> bool:
    return DEVICE == "cuda" and _gluon.available() and torch.cuda.get_device_capability() == (9, 0)


needs_sm90 = pytest.mark.skipif(not _runs_gluon(), reason="the Gluon MLA decode runs on sm_90 with Triton 3.6.0")


@pytest.fixture
def gluon_launches(monkeypatch):
    calls: list[dict] = []
    real = _mla_gluon.launch

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_mla_gluon, "launch", counted)
    return calls


def _nan_past_contexts(b) -> None:
    """NaN in every cache slot no sequence's context covers (tails and spare pages)."""
    bs = b.kv_cache.shape[1]
    used = torch.zeros(b.kv_cache.shape[:2], dtype=torch.bool, device=DEVICE)
    for i, n in enumerate(b.seq_lens.tolist()):
        for p in range(0, n, bs):
            used[int(b.block_table[i, p // bs]), : min(bs, n - p)] = True
    b.kv_cache[~used] = float("nan")


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("heads", [16, 128])
@pytest.mark.parametrize("q_len", [1, 2, 4])
@pytest.mark.parametrize("splits", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [64, 128])
def test_matches_reference(heads, q_len, splits, dtype, block_size, gluon_launches):
    # Contexts of the query run only, 63, 64, 65 and long ones; more splits than tiles for
    # the short ones; NaN past every context; padding query rows past the batch.
    b = mla_batch([q_len] * 6, [q_len, 63, 64, 65, 1000, 4099], heads=heads, rank=512, rope=64,
                  block_size=block_size, dtype=dtype, q_padding=3)  # fmt: skip
    _nan_past_contexts(b)
    out, (_, lse) = run(b, config=gluon_cfg(splits), return_lse=True)
    ref, ref_lse = mla_decode_ref(*b.args(), scale=b.scale, return_lse=True)
    rows = 6 * q_len
    check(out, ref, dtype, rows=rows)
    torch.testing.assert_close(lse[:rows], ref_lse[:rows], atol=2e-3, rtol=1e-3)
    assert torch.isnan(out[rows:]).all(), "padding rows were written"
    assert len(gluon_launches) == 1


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("tile", [t for t in GLUON_MLA_TILES if t != (64, 2)])
@pytest.mark.parametrize("heads", [16, 128])
@pytest.mark.parametrize("q_len", [1, 4])
@pytest.mark.parametrize("splits", [1, 8])
def test_other_tiles_match_reference(tile, heads, q_len, splits, gluon_launches):
    """The 32-key rings (3 and 4 latent tiles in flight), on the same edges: contexts of 31,
    32, 33 and long ones, NaN past every context."""
    b = mla_batch([q_len] * 6, [q_len, 31, 32, 33, 1000, 4099], heads=heads, rank=512, rope=64,
                  block_size=64, dtype=torch.bfloat16, q_padding=3)  # fmt: skip
    _nan_past_contexts(b)
    out, (_, lse) = run(b, config=gluon_cfg(splits, tile=tile), return_lse=True)
    ref, ref_lse = mla_decode_ref(*b.args(), scale=b.scale, return_lse=True)
    rows = 6 * q_len
    check(out, ref, torch.bfloat16, rows=rows)
    torch.testing.assert_close(lse[:rows], ref_lse[:rows], atol=2e-3, rtol=1e-3)
    assert torch.isnan(out[rows:]).all(), "padding rows were written"
    assert len(gluon_launches) == 1 and gluon_launches[0]["tile_n"] == tile[0]


@pytest.mark.gpu
@needs_sm90
def test_cuda_graph_replay_follows_new_lengths(gluon_launches):
    graph_replay_follows_new_lengths(gluon_cfg(4), 128)
    assert gluon_launches
