"""The Gluon Hopper prefill (``PrefillConfig(gluon=1)``, ``_kernels/prefill_gluon.py``).

On any machine: the config's limits, the rule of ``_gluon.qualifies`` clause by clause, that
the launcher reaches the kernel exactly where the rule says, and that where it cannot run
(Triton's interpreter, other Triton versions, no sm_90 GPU) the same call computes the
reference result on another path. The interpreter cannot run Gluon, so the kernel's numbers
come from the ``gpu`` tests below (sm_90 with Triton 3.6.0); its sm_90 code is checked by
``nox -s sm90`` (``_sm90.GLUON``: wgmma, TMA, mbarrier waits, setmaxnreg budgets)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch
from batches import DEVICE, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import AttentionConfig, PrefillConfig, _gluon, _tma, paged_attention, varlen_attention
from triton_attn_kernels.reference import paged_attention_ref, varlen_attention_ref

GLUON = PrefillConfig(block_m=128, tile_n=128, num_warps=4, num_stages=2, gluon=1)


@pytest.fixture
def gluon_launches(monkeypatch):
    """Counts the launcher's calls of the Gluon kernel (each still runs)."""
    calls: list[dict] = []
    real = _gluon.launch

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_gluon, "launch", counted)
    return calls


# --- the config and the rule (any machine) -------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(block_m=64, tile_n=128),
        dict(block_m=128, tile_n=16),
        dict(block_m=128, tile_n=128, num_warps=8),
        dict(block_m=128, tile_n=128, tma=1),
    ],
)
def test_config_rejects_what_the_kernel_does_not_run(kw):
    with pytest.raises(ValueError, match="gluon=1 needs block_m=128"):
        PrefillConfig(**kw, gluon=1)


def test_config_flag_is_a_switch():
    assert PrefillConfig().gluon == 0
    assert PrefillConfig(block_m=128, tile_n=64, gluon=1).gluon == 1
    with pytest.raises(ValueError, match="gluon must be 0 or 1"):
        PrefillConfig(block_m=128, tile_n=128, gluon=2)


@pytest.mark.parametrize(
    ("version", "verified"), [("3.6.0", True), ("3.9.0", False), ("3.6.1", False), ("3.5.1", False)]
)
def test_available_only_on_the_verified_triton(monkeypatch, version, verified):
    import triton

    monkeypatch.setattr(triton, "__version__", version)
    assert _gluon.available.__wrapped__() is verified


def test_tuner_offers_it_only_where_it_can_run():
    from triton_attn_kernels.tuner.space import space_for

    space = space_for("prefill", 128, block_size=128)
    assert space.declared()["gluon"] == [0, 1]
    with_gluon = [c for c in space.stage2(space.stage1()) if c.gluon]
    assert with_gluon and all((c.block_m, c.num_warps, c.tma) == (128, 4, 0) for c in with_gluon)
    assert {c.tile_n for c in with_gluon} <= set(_gluon.TILES[128])
    for head_dim, block_size, interpreter in [(96, 128, False), (128, 16, False), (128, 128, True)]:
        assert "gluon" not in space_for("prefill", head_dim, interpreter, block_size=block_size).declared()


def _pretend_sm90(monkeypatch):
    """The rule's device and version clauses made true, so the others can be checked here."""
    monkeypatch.setattr(_gluon, "interpreting", lambda: False)
    monkeypatch.setattr(_gluon, "available", lambda: True)
    monkeypatch.setattr(_gluon, "_sm90", lambda device: True)


def _tensors(why: str):
    d = {"head_dim 80": 80, "head_dim 256 at 128-key tiles": 256}.get(why, 128)
    dv = 64 if why == "v head 64" else d
    block = 96 if why == "page not a multiple of the tile" else 128
    dtype = torch.float32 if why == "fp32" else torch.float16
    kv_dtype = torch.float8_e4m3fn if why == "fp8 cache" else dtype
    q = torch.randn(8, 4, d).to(dtype)
    if why == "q not contiguous":
        q = torch.randn(8, 4, 2 * d).to(dtype)[..., :d]
    k = torch.randn(3, block, 2, d).to(kv_dtype)
    v = torch.randn(3, block, 2, dv).to(kv_dtype)
    if why == "v head 64":  # HND memory: K's and V's rows then have the same geometry
        k, v = (x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3) for x in (k, v))
    return q, k, v


REASONS = [
    "interpreter",
    "other triton",
    "not sm_90",
    "gluon off",
    "fp32",
    "fp8 cache",
    "head_dim 80",
    "head_dim 256 at 128-key tiles",
    "v head 64",
    "features",
    "page not a multiple of the tile",
    "q not contiguous",
    "shared memory",
]


@pytest.mark.parametrize("why", REASONS)
def test_rule_each_clause(monkeypatch, why):
    _pretend_sm90(monkeypatch)
    if why == "interpreter":
        monkeypatch.setattr(_gluon, "interpreting", lambda: True)
    elif why == "other triton":
        monkeypatch.setattr(_gluon, "available", lambda: False)
    elif why == "not sm_90":
        monkeypatch.setattr(_gluon, "_sm90", lambda device: False)
    config = GLUON
    if why == "gluon off":
        config = PrefillConfig(block_m=128, tile_n=128)
    elif why == "shared memory":  # Q 32 KB + 4 stages x 64 KB of K/V > 227 KB
        config = PrefillConfig(block_m=128, tile_n=128, num_stages=4, gluon=1)
    q, k, v = _tensors(why)
    plain = why != "features"
    assert _gluon.qualifies(q, k, v, paged=True, config=config, features_served=plain) is None
    # The control: the same launch without the reason qualifies.
    monkeypatch.undo()
    _pretend_sm90(monkeypatch)
    q, k, v = _tensors("none")
    assert _gluon.qualifies(q, k, v, paged=True, config=GLUON, features_served=True) is not None


@pytest.mark.parametrize(
    ("causal", "window", "alibi", "sinks", "served"),
    [
        (True, None, False, False, True),
        (False, None, False, False, True),
        (True, (1023, 0), False, False, True),  # softcap needs no flag: always served
        (False, (1023, 1023), False, False, False),
        (True, None, True, False, False),
        (True, None, False, True, False),
    ],
)
def test_rule_features(causal, window, alibi, sinks, served):
    # Softcap and causal sliding windows run on the kernel; ALiBi, sinks and two-sided
    # windows go to the generic kernel (fp8 caches reach it staged: test_fp8_stage.py).
    got = _gluon.serves_features(causal=causal, window=window, alibi=alibi, sinks=sinks)
    assert got is served


def test_launch_refuses_a_window_without_the_causal_mask():
    q = torch.randn(8, 4, 64, dtype=torch.float16)
    k = torch.randn(3, 128, 2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="causal=True"):
        _gluon.launch(q, k, k, torch.empty_like(q), None, _tma.row_views(q, k, k),
                      block_table=torch.zeros((1, 1), dtype=torch.int32), seq_lens=torch.tensor([8], dtype=torch.int32),
                      cu_seqlens_q=torch.tensor([0, 8], dtype=torch.int32), cu_seqlens_k=None, num_seqs=1,
                      max_seqlen_q=8, decode_q=0, other_launch=0, scale=0.125, causal=False, config=GLUON,
                      window_left=15)  # fmt: skip


@pytest.mark.parametrize(("tile_n", "stages", "fits"), [(32, 3, True), (64, 2, True), (64, 3, False)])
def test_rule_head_dim_256_at_32_and_64_key_tiles(monkeypatch, tile_n, stages, fits):
    # 64-key tiles at head size 256 fit two ring stages, not three (227 KB of shared memory).
    _pretend_sm90(monkeypatch)
    q, k, v = torch.randn(8, 4, 256).half(), torch.randn(3, 128, 2, 256).half(), torch.randn(3, 128, 2, 256).half()
    config = PrefillConfig(block_m=128, tile_n=tile_n, num_stages=stages, gluon=1)
    assert (_gluon.qualifies(q, k, v, paged=True, config=config, features_served=True) is not None) is fits


def test_rule_varlen_views(monkeypatch):
    _pretend_sm90(monkeypatch)
    q = torch.randn(40, 8, 64, dtype=torch.float16)
    kv = torch.randn(50, 2, 2, 64, dtype=torch.float16)  # k and v views of one packed tensor
    rows = _gluon.qualifies(q, kv[:, 0], kv[:, 1], paged=False, config=GLUON, features_served=True)
    assert rows is not None
    kr, _ = rows
    assert (kr.rows, kr.row_stride, kr.rows_per_head, kr.cols_per_head) == (50, 2 * 2 * 64, 0, 64)


def test_rule_varlen_without_keys(monkeypatch):
    # No key rows: no TMA descriptor can be made (its shape must be positive).
    _pretend_sm90(monkeypatch)
    q, kv = torch.randn(8, 4, 64, dtype=torch.float16), torch.randn(0, 2, 64, dtype=torch.float16)
    assert _gluon.qualifies(q, kv, kv, paged=False, config=GLUON, features_served=True) is None


def test_launch_gives_the_loader_a_table_entry_to_read(monkeypatch):
    # A block table of no columns (every context empty): the loader still reads entry 0 of
    # its row for the one fully masked tile, so the launch must pass a table that has it.
    from triton_attn_kernels._kernels import prefill_gluon

    seen: list[tuple] = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append(args)

    monkeypatch.setattr(prefill_gluon, "prefill_gluon_kernel", Kernel())
    q = torch.randn(8, 4, 64, dtype=torch.float16)
    k = torch.randn(3, 128, 2, 64, dtype=torch.float16)
    rows = _tma.row_views(q, k, k)
    table = torch.zeros((2, 0), dtype=torch.int32)
    lens = torch.zeros(2, dtype=torch.int32)
    cu_q = torch.tensor([0, 4, 8], dtype=torch.int32)
    _gluon.launch(q, k, k, torch.empty_like(q), None, rows, block_table=table, seq_lens=lens, cu_seqlens_q=cu_q,
                  cu_seqlens_k=None, num_seqs=2, max_seqlen_q=4, decode_q=0, other_launch=0, scale=0.125,
                  causal=True, config=PrefillConfig(block_m=128, tile_n=64, num_warps=4, num_stages=2, gluon=1))  # fmt: skip
    (args,) = seen
    passed, max_k = args[5], args[13]
    assert max_k == 0 and passed.numel() >= 1 and passed.shape[0] == 2


@pytest.mark.parametrize(("sms", "programs"), [(132, 3 * 4 * 2), (5, 5), (2**31 - 24, None)])
def test_persistent_launch_grid(monkeypatch, sms, programs):
    # Persistent: one program per SM at most, over the work tiles (query-tile levels x
    # sequences x heads: 3 x 2 x 4 here); otherwise one per head, sequence and level, which
    # is also what runs where the persistent walk's int32 index could overflow.
    from triton_attn_kernels._kernels import prefill_gluon

    seen: list[tuple] = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((grid, args, kwargs))

    monkeypatch.setattr(prefill_gluon, "prefill_gluon_kernel", Kernel())
    monkeypatch.setattr(_gluon, "num_sms", lambda device: sms)
    q = torch.randn(300, 4, 64, dtype=torch.float16)
    k = torch.randn(4, 128, 2, 64, dtype=torch.float16)
    table = torch.arange(4, dtype=torch.int32).reshape(2, 2)
    lens = torch.tensor([256, 200], dtype=torch.int32)
    cu_q = torch.tensor([0, 256, 300], dtype=torch.int32)
    for persistent, other_launch in [(True, 1), (False, 0)]:
        _gluon.launch(q, k, k, torch.empty_like(q), None, _tma.row_views(q, k, k), block_table=table, seq_lens=lens,
                      cu_seqlens_q=cu_q, cu_seqlens_k=None, num_seqs=2, max_seqlen_q=257, decode_q=4,
                      other_launch=other_launch, scale=0.125, causal=True, config=GLUON, persistent=persistent)  # fmt: skip
    (grid_p, args_p, kw_p), (grid, args, kw) = seen
    if programs is None:
        assert grid_p == (4, 2, 3) and kw_p["PERSISTENT"] is False
        return
    assert grid_p == (programs,) and kw_p["PERSISTENT"] is True
    assert grid == (4, 2, 3) and kw["PERSISTENT"] is False
    # The kernel skips sequences of at most this many new tokens: the decode launch's where
    # there is one, else only empty ones.
    assert (args_p[14], args[14]) == (4, 0)
    # num_q_heads, num_seqs, q_levels, work tiles, programs
    assert args_p[16:21] == (4, 2, 3, 24, programs) and args[16:19] == (4, 2, 3)


@pytest.mark.parametrize(
    ("num_seqs", "other_launch", "persistent"),
    [(1, 0, False), (3, 0, False), (4, 0, True), (64, 0, True), (4, 1, False), (64, 1, False)],
)
def test_launch_takes_the_policys_choice_unless_told(monkeypatch, num_seqs, other_launch, persistent):
    # Left to the policy, a launch over 4 or more sequences with no decode launch beside it
    # runs persistently; told, it does what it is told.
    from triton_attn_kernels._kernels import prefill_gluon
    from triton_attn_kernels.tuning import gluon_persistent

    assert gluon_persistent(num_seqs, other_launch=bool(other_launch)) is persistent
    seen: list[dict] = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append(kwargs)

    monkeypatch.setattr(prefill_gluon, "prefill_gluon_kernel", Kernel())
    q = torch.randn(num_seqs * 4, 4, 64, dtype=torch.float16)
    k = torch.randn(num_seqs, 128, 2, 64, dtype=torch.float16)
    table = torch.arange(num_seqs, dtype=torch.int32).reshape(num_seqs, 1)
    lens = torch.full((num_seqs,), 4, dtype=torch.int32)
    cu_q = torch.arange(0, 4 * num_seqs + 1, 4, dtype=torch.int32)
    for told in (None, True, False):
        _gluon.launch(q, k, k, torch.empty_like(q), None, _tma.row_views(q, k, k), block_table=table, seq_lens=lens,
                      cu_seqlens_q=cu_q, cu_seqlens_k=None, num_seqs=num_seqs, max_seqlen_q=4, decode_q=1,
                      other_launch=other_launch, scale=0.125, causal=True, config=GLUON, persistent=told)  # fmt: skip
    assert [kw["PERSISTENT"] for kw in seen] == [persistent, True, False]


def test_launcher_routes_qualifying_launches_to_it(monkeypatch):
    """With the rule made true (device and version), paged_attention and varlen_attention hand
    the prefill launch to ``_gluon.launch`` with the batch's index tensors and no other
    prefill launch; the kernel itself is not run here (the interpreter cannot)."""
    _pretend_sm90(monkeypatch)
    seen: list[dict] = []
    monkeypatch.setattr(_gluon, "launch", lambda *a, **kw: seen.append(kw))
    b = paged_batch([20, 1, 0], [40, 17, 5], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=128)
    paged_attention(*b.args(), **b.lens(), config=AttentionConfig(prefill=GLUON))
    assert len(seen) == 1 and seen[0]["block_table"] is not None and seen[0]["other_launch"] == 1
    q = torch.randn(30, 4, 64, dtype=torch.float16, device=DEVICE)
    k = torch.randn(50, 2, 64, dtype=torch.float16, device=DEVICE)
    cu_q = torch.tensor([0, 10, 30], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 20, 50], dtype=torch.int32, device=DEVICE)
    cfg = AttentionConfig(prefill=GLUON)
    varlen_attention(q, k, k, cu_q, cu_k, max_seqlen_q=20, max_seqlen_k=30, config=cfg, decode_query_len=0)
    assert len(seen) == 2 and seen[1]["block_table"] is None and seen[1]["other_launch"] == 0


def test_never_chosen_where_it_cannot_run(gluon_launches):
    """Here (the interpreter, or a GPU without Triton 3.6.0 / sm_90) a gluon config computes
    the reference result on another path and never reaches the Gluon kernel."""
    if _gluon.available() and DEVICE == "cuda" and torch.cuda.get_device_capability() == (9, 0):
        pytest.skip("this machine runs the Gluon prefill (the gpu tests cover it)")
    b = paged_batch([20, 1], [40, 17], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=64)
    cfg = AttentionConfig(prefill=PrefillConfig(block_m=128, tile_n=64, gluon=1))
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=cfg)
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert not gluon_launches


def _nvidia_backend() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton.backends.nvidia") is not None


@pytest.mark.skipif(
    not (_nvidia_backend() and _gluon.available()), reason="compiles with the Triton the kernel is verified on"
)
def test_sm90_code_has_the_schedule():
    """Every registered sm_90 variant (``_sm90.GLUON``), compiled by the real compiler in a
    subprocess without the interpreter: three warpgroups, wgmma, TMA copies, mbarrier waits,
    and setmaxnreg moving registers to the consumers (240) from the loader (24)."""
    code = (
        "import json; from triton_attn_kernels import _sm90; "
        "print(json.dumps({n: _sm90.gluon_facts(f()) for n, f in _sm90.GLUON.items()}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(facts) >= 8
    for name, f in facts.items():
        assert f["warps"] == 12, name
        assert f["wgmma"] and f["tma_loads"] and f["mbarrier_waits"], name
        assert {_gluon.LOADER_REGS, _gluon.CONSUMER_REGS} <= set(f["setmaxnreg"]), name


# --- numerics on sm_90 with Triton 3.6.0 -----------------------------------------------------


def _runs_gluon() -> bool:
    return DEVICE == "cuda" and _gluon.available() and torch.cuda.get_device_capability() == (9, 0)


def _why_not() -> str:
    import triton

    return f"the Gluon prefill runs on sm_90 with Triton {', '.join(_gluon.VERIFIED_TRITON)} (here: Triton {triton.__version__})"


needs_sm90 = pytest.mark.skipif(not _runs_gluon(), reason=_why_not())


def _config(tile_n: int, stages: int) -> AttentionConfig:
    return AttentionConfig(prefill=PrefillConfig(block_m=128, tile_n=tile_n, num_warps=4, num_stages=stages, gluon=1))


@pytest.fixture(
    params=[(True, False), (False, False), (True, True)], ids=["pingpong", "no-pingpong", "pingpong-thread-arrives"]
)
def pingpong(request, monkeypatch, gluon_launches):
    """With and without the ping-pong; with it, also the consumers' per-thread releases
    (``thread_arrives``: every thread arrives, the barriers count 128 per consumer)."""
    real = _gluon.launch
    pp, thread_arrives = request.param
    monkeypatch.setattr(_gluon, "launch", functools.partial(real, pingpong=pp, thread_arrives=thread_arrives))
    return gluon_launches


@pytest.fixture(params=[False, True], ids=["grid", "persistent"])
def persistent(request, monkeypatch, gluon_launches):
    """Every numerics case runs both launches: a program per query tile, and the persistent
    one (a program per SM walking the work tiles)."""
    real = _gluon.launch
    monkeypatch.setattr(_gluon, "launch", functools.partial(real, persistent=request.param))
    return request.param


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("head_dim", "tile_n", "stages"), [(128, 128, 2), (128, 64, 3), (64, 128, 3), (256, 32, 3), (256, 64, 2)]
)
@pytest.mark.parametrize("gqa", [(32, 8), (8, 8)], ids=["gqa4", "mha"])
@pytest.mark.usefixtures("pingpong")
def test_paged_matches_reference(causal, dtype, head_dim, tile_n, stages, gqa, gluon_launches):
    # Fresh prefills of lengths off the 128-row tile, a chunk on a cached prefix, decodes
    # (the decode launch's) and an empty sequence; shuffled 128-slot pages.
    b = paged_batch(
        [1000, 1, 300, 77, 0, 129, 2],
        [1000, 2000, 2348, 77, 50, 4000, 9],
        num_q_heads=gqa[0],
        num_kv_heads=gqa[1],
        head_dim=head_dim,
        block_size=128,
        dtype=dtype,
    )
    out, lse = paged_attention(
        *b.args(), **b.lens(), out=poisoned_like(b.q), causal=causal, return_lse=True, config=_config(tile_n, stages)
    )
    ref, ref_lse = paged_attention_ref(*b.args(), causal=causal, return_lse=True)
    assert_matches(out, ref, dtype)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    assert len(gluon_launches) == 1


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
@pytest.mark.parametrize(
    ("window", "softcap"), [(1024, None), (100, None), (1, None), (None, 30.0), (None, 5.0), (200, 20.0)]
)
@pytest.mark.parametrize(
    ("head_dim", "tile_n", "stages"), [(128, 128, 2), (128, 64, 3), (64, 128, 3), (256, 32, 3), (256, 64, 2)]
)
@pytest.mark.usefixtures("pingpong")
def test_window_and_softcap_match_reference(window, softcap, head_dim, tile_n, stages, gluon_launches):
    # Causal windows wider than, off and down to one key of the tiles (a query tile starts
    # its key walk at its first row's left edge, tiles crossing any row's edge are masked),
    # softcaps that bend most logits (5) or only the largest (30), and both; lengths off
    # the tiles, a chunk on a long prefix, a decode, an empty sequence; NaN past contexts.
    b = paged_batch([1000, 300, 1, 0, 129], [1000, 3000, 77, 50, 4000], num_q_heads=8, num_kv_heads=2,
                    head_dim=head_dim, block_size=128, dtype=torch.bfloat16)  # fmt: skip
    _nan_past_contexts(b, 128)
    feats = dict(sliding_window=window, softcap=softcap)
    out, lse = paged_attention(
        *b.args(), **b.lens(), **feats, out=poisoned_like(b.q), return_lse=True, config=_config(tile_n, stages)
    )
    ref, ref_lse = paged_attention_ref(*b.args(), **feats, return_lse=True)
    assert_matches(out, ref, torch.bfloat16)
    torch.testing.assert_close(lse, ref_lse, atol=5e-3, rtol=2e-3)
    assert len(gluon_launches) == 1


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
@pytest.mark.parametrize("kv_dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 128])
@pytest.mark.parametrize(("head_dim", "tile_n", "stages"), [(128, 128, 2), (64, 128, 3), (256, 64, 2)])
def test_fp8_cache_matches_reference(kv_dtype, dtype, block_size, head_dim, tile_n, stages, gluon_launches):
    # An fp8 cache reaches the kernel staged (_fp8_stage): dequantised into q's dtype in
    # pages of the tile, from 16- and 128-token pages; scales off powers of two; decodes and
    # an empty sequence beside (the decode launch's, not staged); NaN past the contexts.
    b = paged_batch([1000, 1, 300, 0, 129], [1000, 2000, 2348, 50, 4000], num_q_heads=16, num_kv_heads=4,
                    head_dim=head_dim, block_size=block_size, dtype=dtype, kv_dtype=kv_dtype)  # fmt: skip
    _nan_past_contexts(b, block_size)
    scales = dict(k_scale=0.7, v_scale=1.4)
    out, lse = paged_attention(*b.args(), **b.lens(), **scales, out=poisoned_like(b.q), return_lse=True,
                               config=_config(tile_n, stages))  # fmt: skip
    ref, ref_lse = paged_attention_ref(*b.args(), **scales, return_lse=True)
    assert_matches(out, ref, dtype)
    torch.testing.assert_close(lse, ref_lse, atol=5e-3, rtol=2e-3)
    assert len(gluon_launches) == 1 and gluon_launches[0]["block_table"].shape[0] == 5


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_varlen_matches_reference(causal, dtype, gluon_launches):
    q_lens, k_lens = [700, 128, 5, 257], [700, 1000, 5, 300]
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q = torch.randn(sum(q_lens), 16, 128, device=DEVICE).to(dtype)
    kv = torch.randn(sum(k_lens), 2, 4, 128, device=DEVICE).to(dtype)  # packed: strided views
    k, v = kv[:, 0], kv[:, 1]
    lens = dict(max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens))
    out = varlen_attention(
        q, k, v, cu_q, cu_k, **lens, causal=causal, out=poisoned_like(q), config=_config(128, 2), decode_query_len=0
    )
    assert_matches(out, varlen_attention_ref(q, k, v, cu_q, cu_k, causal=causal), dtype)
    assert len(gluon_launches) == 1


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
def test_nan_in_unused_cache_slots_stays_out(gluon_launches):
    # Slots past each context (the last tile's tail, whole spare pages) hold NaN.
    b = paged_batch([300, 130], [357, 130], num_q_heads=8, num_kv_heads=2, head_dim=128, block_size=128)
    _nan_past_contexts(b, 128)
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=_config(128, 2))
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert gluon_launches


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
def test_understated_max_seqlen_q_still_computes_every_row(gluon_launches):
    b = paged_batch([600, 300], [600, 900], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=128)
    lens = {**b.lens(), "max_seqlen_q": 130}
    out = paged_attention(*b.args(), **lens, out=poisoned_like(b.q), config=_config(128, 2))
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert gluon_launches


def _nan_past_contexts(b, block_size: int) -> None:
    """Fill every cache slot no sequence's context covers with NaN (tails and spare pages)."""
    used = torch.zeros(b.k_cache.shape[:2], dtype=torch.bool, device=DEVICE)
    for i, n in enumerate(b.seq_lens.tolist()):
        for p in range(0, n, block_size):
            used[int(b.block_table[i, p // block_size]), : min(block_size, n - p)] = True
    for cache in (b.k_cache, b.v_cache):
        if cache.element_size() == 1:  # fp8 has no masked fill: 0x7F is NaN in e4m3fn and e5m2
            cache.view(torch.uint8)[~used] = 0x7F
        else:
            cache[~used] = float("nan")


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
@pytest.mark.parametrize(
    ("head_dim", "tile_n", "stages"), [(128, 128, 2), (128, 64, 3), (64, 128, 3), (256, 32, 3), (256, 64, 2)]
)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.usefixtures("pingpong")
def test_nan_tails_of_every_length_stay_out(head_dim, tile_n, stages, layout, gluon_launches):
    # Contexts ending 1, 31, 33 slots into a key tile, on a tile boundary (no clean), inside
    # the first tile, and a chunk on a prefix whose first query tile's causal range ends at
    # key 928, mid-context (its last key tile is no tail): the first consumer's clean of the
    # last V tile must precede both halves' PV, and happen only where a tail is.
    seq_lens = [257, 128 + 31, 128 + 33, 256, 40, 1100]
    b = paged_batch([200, 159, 100, 256, 40, 300], seq_lens, num_q_heads=8, num_kv_heads=2,
                    head_dim=head_dim, block_size=128, layout=layout)  # fmt: skip
    _nan_past_contexts(b, 128)
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=_config(tile_n, stages))
    assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert len(gluon_launches) == 1


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("head_dim", "tile_n", "stages"), [(128, 128, 2), (128, 64, 3), (256, 32, 3), (256, 64, 2)])
@pytest.mark.usefixtures("pingpong")
def test_query_tiles_walked_in_turn_share_the_ring(causal, head_dim, tile_n, stages, gluon_launches):
    # max_seqlen_q understated to 130: two programs per head and sequence walk 5, 3 and 1
    # query tiles, so the ring's slot and phase, the Q barriers' phases and the ping-pong's
    # turn count carry over from one query tile to the next, at key counts that leave the
    # ring mid-way; the last sequence's tile ends the tensor (its second half past it).
    b = paged_batch([600, 300, 129], [600, 1000, 129], num_q_heads=4, num_kv_heads=2, head_dim=head_dim,
                    block_size=128)  # fmt: skip
    _nan_past_contexts(b, 128)
    lens = {**b.lens(), "max_seqlen_q": 130}
    out, lse = paged_attention(
        *b.args(), **lens, out=poisoned_like(b.q), causal=causal, return_lse=True, config=_config(tile_n, stages)
    )
    ref, ref_lse = paged_attention_ref(*b.args(), causal=causal, return_lse=True)
    assert_matches(out, ref, torch.float16)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    assert len(gluon_launches) == 1


@pytest.mark.gpu
@needs_sm90
@pytest.mark.usefixtures("persistent")
@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
def test_bench_geometry_8k(causal, gluon_launches):
    # The prefill bench point: one 8k sequence, 32 query heads over 8 KV heads, d128, bf16.
    b = paged_batch([8192], [8192], num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=128, dtype=torch.bfloat16)
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), causal=causal, config=_config(128, 2))
    assert_matches(out, paged_attention_ref(*b.args(), causal=causal), torch.bfloat16)
    assert gluon_launches


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("programs", [1, 7, None], ids=["1-program", "7-programs", "sms"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("head_dim", "tile_n", "stages"), [(128, 128, 2), (128, 64, 3), (64, 128, 3), (256, 32, 3), (256, 64, 2)]
)
@pytest.mark.usefixtures("pingpong")
def test_persistent_walks_many_work_tiles(monkeypatch, programs, causal, head_dim, tile_n, stages, gluon_launches):
    # Work tiles outnumber the programs many times over (1 or 7 programs, or one per SM over
    # 12 levels x 24 sequences x 32 heads): every barrier phase, the ring's slot, the tail
    # cleans and the ping-pong's turns carry from one work tile to the next across mixed
    # lengths: decodes (the decode launch's: their work tiles are skipped), empty sequences,
    # lengths off the 128-row and key tiles, a chunk on a prefix, one-key-tile sequences
    # after a long one, and NaN in every slot past a context.
    if programs is not None:
        monkeypatch.setattr(_gluon, "num_sms", lambda device: programs)
    monkeypatch.setattr(_gluon, "launch", functools.partial(_gluon.launch, persistent=True))
    q_lens = [1500, 1, 0, 129, 2, 77, 128, 1, 300, 5, 0, 1000, 33, 1, 64, 257, 3, 1, 130, 17, 640, 1, 31, 200]
    seq_lens = [
        1500,
        900,
        40,
        129,
        2,
        77,
        128,
        60,
        2348,
        5,
        0,
        1000,
        33,
        4000,
        64,
        257,
        3,
        1,
        1100,
        17,
        640,
        2,
        31,
        203,
    ]
    b = paged_batch(q_lens, seq_lens, num_q_heads=32, num_kv_heads=8, head_dim=head_dim, block_size=128)
    _nan_past_contexts(b, 128)
    out, lse = paged_attention(
        *b.args(), **b.lens(), out=poisoned_like(b.q), causal=causal, return_lse=True, config=_config(tile_n, stages)
    )
    ref, ref_lse = paged_attention_ref(*b.args(), causal=causal, return_lse=True)
    assert_matches(out, ref, torch.float16)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    assert len(gluon_launches) == 1 and gluon_launches[0]["persistent"] is True


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.usefixtures("pingpong")
def test_persistent_varlen_many_work_tiles(monkeypatch, causal, gluon_launches):
    # Varlen K/V (every sequence served: no decode launch), 3 programs over mixed lengths,
    # empty query or key ranges, a chunk on a prefix.
    monkeypatch.setattr(_gluon, "num_sms", lambda device: 3)
    monkeypatch.setattr(_gluon, "launch", functools.partial(_gluon.launch, persistent=True))
    q_lens = [700, 0, 128, 5, 257, 1, 0, 64, 300]
    k_lens = [700, 10, 1000, 5, 300, 1, 0, 64, 1300]
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q = torch.randn(sum(q_lens), 16, 128, device=DEVICE).half()
    kv = torch.randn(sum(k_lens), 2, 4, 128, device=DEVICE).half()
    k, v = kv[:, 0], kv[:, 1]
    lens = dict(max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens))
    out = varlen_attention(
        q, k, v, cu_q, cu_k, **lens, causal=causal, out=poisoned_like(q), config=_config(128, 2), decode_query_len=0
    )
    assert_matches(out, varlen_attention_ref(q, k, v, cu_q, cu_k, causal=causal), torch.float16)
    assert len(gluon_launches) == 1 and gluon_launches[0]["persistent"] is True
