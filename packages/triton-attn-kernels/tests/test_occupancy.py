"""The heuristics' derivations (tuning.occupancy): properties of the split count, the decode
tile and the prefill block over SM counts and problems, and how the heuristics compare with
what the H100 tables measured (the tables are read, never changed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triton_attn_kernels._intmath import cdiv
from triton_attn_kernels.tuning import AttentionProblem, decode_heuristic, prefill_heuristic
from triton_attn_kernels.tuning.occupancy import (
    MAX_SPLITS,
    RESIDENT_DECODE_PROGRAMS,
    TILE_REGISTER_BYTES,
    decode_split,
    decode_tile,
    prefill_block_m,
)
from triton_attn_kernels.tuning.tables import shipped_root

SMS = st.sampled_from([4, 46, 78, 108, 114, 132, 142, 170])
PROGRAMS = st.integers(1, 4096)
CONTEXT = st.integers(0, 1 << 20)
TILES = st.sampled_from([16, 32, 64, 128])


@settings(max_examples=300, deadline=None)
@given(programs=PROGRAMS, num_sms=SMS, ctx=CONTEXT, tile_n=TILES)
def test_decode_split_bounds_and_waves(programs: int, num_sms: int, ctx: int, tile_n: int) -> None:
    s = decode_split(programs=programs, num_sms=num_sms, max_seqlen_k=ctx, tile_n=tile_n)
    wave = RESIDENT_DECODE_PROGRAMS * num_sms
    assert s.wave == wave and s.programs == programs
    # Never more splits than the context has tiles, nor than the merge bound.
    assert 1 <= s.num_splits <= min(max(cdiv(ctx, tile_n), 1), MAX_SPLITS)
    # A small batch is split until it fills a wave, as far as the context allows.
    if programs < wave and cdiv(wave, programs) <= min(cdiv(ctx, tile_n), MAX_SPLITS):
        assert s.launched >= wave and s.waves >= 1
    # ... and no further: one split fewer would not fill it.
    if s.num_splits > 1:
        assert (s.num_splits - 1) * programs < wave
    # A batch that fills a wave by itself is not split.
    if programs >= wave:
        assert s.num_splits == 1


@settings(max_examples=200, deadline=None)
@given(programs=PROGRAMS, num_sms=SMS, ctx=CONTEXT, tile_n=TILES, more=st.integers(1, 1 << 16))
def test_decode_split_is_monotone(programs: int, num_sms: int, ctx: int, tile_n: int, more: int) -> None:
    def splits(**kw: int) -> int:
        args = {"programs": programs, "num_sms": num_sms, "max_seqlen_k": ctx, "tile_n": tile_n, **kw}
        return decode_split(**args).num_splits

    base = splits()
    assert splits(max_seqlen_k=ctx + more) >= base  # more context: never fewer splits
    assert splits(programs=programs + more) <= base  # more programs: never more
    assert splits(num_sms=2 * num_sms) >= base  # more SMs: never fewer


@pytest.mark.parametrize("element_bytes", [1, 2, 4])
def test_decode_tile_fits_the_register_budget(element_bytes: int) -> None:
    tiles = [decode_tile(d, element_bytes) for d in (32, 64, 80, 96, 128, 160, 192, 256, 512)]
    for t in tiles:
        assert t.tile_n & (t.tile_n - 1) == 0 and 16 <= t.tile_n <= 128
        assert t.register_bytes <= TILE_REGISTER_BYTES or t.tile_n == 16
    assert [t.tile_n for t in tiles] == sorted((t.tile_n for t in tiles), reverse=True)
    assert decode_tile(128, 2).tile_n == 128 and decode_tile(256, 2).tile_n == 64
    with pytest.raises(ValueError, match="head_dim"):
        decode_tile(0, 2)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 1 << 18), kv=st.sampled_from([1, 2, 4, 8, 16]), num_sms=SMS, more=st.integers(1, 1 << 14))
def test_prefill_block_fills_a_wave_when_it_can(rows: int, kv: int, num_sms: int, more: int) -> None:
    w = prefill_block_m(query_rows=rows, num_kv_heads=kv, num_sms=num_sms, widest=128, narrowest=64)
    assert w.block_m in (64, 128) and w.programs == cdiv(rows, w.block_m) * kv
    if w.block_m == 128:
        assert w.programs >= w.wave  # the widest block only where it fills a wave
    else:
        assert cdiv(rows, 128) * kv < w.wave
    # Longer queries never get the narrower block.
    longer = prefill_block_m(query_rows=rows + more, num_kv_heads=kv, num_sms=num_sms, widest=128, narrowest=64)
    assert longer.block_m >= w.block_m
    with pytest.raises(ValueError, match="narrowest"):
        prefill_block_m(query_rows=rows, num_kv_heads=kv, num_sms=num_sms, widest=64, narrowest=128)


def _today(p: AttentionProblem) -> tuple[int, int]:
    """The decode heuristic the H100 tables were compared with when they were tuned: 128
    keys (64 above head size 128), two programs per SM, splits of at least two tiles."""
    tile_n = 64 if p.head_dim > 128 else 128
    want = cdiv(2 * p.num_sms, max(p.num_seqs * p.num_kv_heads, 1))
    return tile_n, max(1, min(want, max(cdiv(p.max_seqlen_k, 2 * tile_n), 1), 64))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_same_decode_configs_as_before_on_the_h100_at_long_contexts(dtype: str, head_dim: int) -> None:
    """Where the two-tile minimum never bound (long contexts), the derivation gives the H100
    exactly the configurations it had; shorter contexts get more splits (next test)."""
    for kv in (1, 2, 8):
        for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
            for ctx in (32768, 131072):
                p = AttentionProblem(n, 4 * kv, kv, head_dim, 1, ctx, dtype, dtype, num_sms=132)
                c = decode_heuristic(p)
                assert (c.tile_n, c.num_splits) == _today(p), (n, kv, ctx)


def _table(kernel: str) -> list[dict]:
    root = shipped_root()
    assert root is not None
    return json.loads(Path(str(root.joinpath(kernel, "NVIDIA_H100_80GB_HBM3.json"))).read_text())["entries"]


def _problem(key: dict) -> AttentionProblem:
    return AttentionProblem(
        key["num_seqs"],
        key["group"] * key["num_kv_heads"],
        key["num_kv_heads"],
        key["head_dim"],
        key.get("max_seqlen_q", 1),
        key["max_seqlen_k"],
        key["dtype"],
        key["kv_dtype"],
        num_sms=132,
    )


def test_heuristics_against_the_h100_tables() -> None:
    """Against the winners the tuner measured on the H100 (split counts as the serving policy
    rounds them, to a power of two): the decode splits are never farther from a winner than
    before and closer at 1 and 4 sequences up to 8k keys (where the winners ran splits of
    one or two tiles); the prefill block is every winner's."""
    pow2 = lambda n: 1 << (n - 1).bit_length()  # noqa: E731
    closer = 0
    for e in _table("decode"):
        p, best = _problem(e["key"]), e["config"]["num_splits"]
        now = abs(math.log2(pow2(decode_heuristic(p).num_splits) / best))
        before = abs(math.log2(pow2(_today(p)[1]) / best))
        assert now <= before, e["key"]
        closer += now < before
    assert closer == 6
    for e in _table("prefill"):
        assert prefill_heuristic(_problem(e["key"])).block_m == e["config"]["block_m"], e["key"]
