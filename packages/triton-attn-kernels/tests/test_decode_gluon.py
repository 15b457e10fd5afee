"""The Gluon Hopper decode, one-token and verification (``_decode_gluon``, ``_kernels/decode_gluon.py``,
``tuning.gluon_decode_config``).

On any machine: the policy's choice (``gluon_decode_config`` clause by clause, its split
count, ``plan_launch`` and ``ServingPolicy`` with Gluon pretended), the launch rule of
``_decode_gluon.qualifies`` clause by clause, that ``paged_attention`` hands a decode launch
configured for it to it (and merges its partials), and that where it cannot run the same call
computes the reference result on the generic kernel. The
interpreter cannot run Gluon: the kernel's numbers come from the ``gpu`` tests (sm_90,
Triton 3.6.0); its sm_90 code is compiled by ``nox -s sm90`` (``_sm90.GLUON``)."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import AttentionConfig, DecodeConfig, _decode_gluon, _gluon, paged_attention
from triton_attn_kernels import attention as attention_module
from triton_attn_kernels.reference import paged_attention_ref
from triton_attn_kernels.tuning import (
    AttentionProblem,
    ServingLimits,
    ServingPolicy,
    decode_workspace_numel,
    gluon_decode_config,
    plan_launch,
)
from triton_attn_kernels.tuning import policy as policy_module


def _pretend_sm90(monkeypatch):
    monkeypatch.setattr(_decode_gluon, "interpreting", lambda: False)
    monkeypatch.setattr(_gluon, "available", lambda: True)
    monkeypatch.setattr(_gluon, "_sm90", lambda device: True)


def _tensors(why: str):
    """q, k, v, out of a verification launch (8 tokens x GQA 4, d128, 128-token pages) that
    qualifies, but for ``why``."""
    dtype = torch.float32 if why == "fp32" else torch.bfloat16
    kv_dtype = torch.float8_e4m3fn if why == "fp8 cache" else dtype
    head_dim = 256 if why == "head 256" else 128
    kv_heads = 1 if why == "group 128" else 8
    q_heads = 128 if why == "group 128" else 32
    block = 96 if why == "page not a multiple of the tile" else 128
    q = torch.randn(16, q_heads, head_dim).to(dtype)
    if why == "q dims strided":
        q = torch.randn(16, q_heads, 2 * head_dim).to(dtype)[..., ::2]
    k = torch.randn(4, block, kv_heads, head_dim).to(kv_dtype)
    v = torch.randn(4, block, kv_heads, 64 if why == "v head 64" else head_dim).to(kv_dtype)
    if why == "cache rows not 16-byte aligned":
        k = torch.randn(4 * block * kv_heads * head_dim + 1).to(kv_dtype)[1:].view(4, block, kv_heads, head_dim)
    out = torch.empty(16, q_heads, v.shape[-1], dtype=dtype)
    return q, k, v, out


REASONS = [
    "interpreter",
    "other triton",
    "not sm_90",
    "fp32",
    "fp8 cache",
    "head 256",
    "v head 64",
    "group 128",
    "page not a multiple of the tile",
    "q dims strided",
    "cache rows not 16-byte aligned",
    "not causal",
    "window, softcap, alibi or sinks",
]


@pytest.mark.parametrize("why", REASONS)
def test_rule_each_clause(monkeypatch, why):
    _pretend_sm90(monkeypatch)
    if why == "interpreter":
        monkeypatch.setattr(_decode_gluon, "interpreting", lambda: True)
    elif why == "other triton":
        monkeypatch.setattr(_gluon, "available", lambda: False)
    elif why == "not sm_90":
        monkeypatch.setattr(_gluon, "_sm90", lambda device: False)
    kw = dict(
        tile_n=64,
        causal=why != "not causal",
        features_plain=why != "window, softcap, alibi or sinks",
    )
    assert _decode_gluon.qualifies(*_tensors(why), **kw) is None
    # The control: the same launch without the reason qualifies.
    monkeypatch.undo()
    _pretend_sm90(monkeypatch)
    assert _decode_gluon.qualifies(*_tensors("none"), tile_n=64, causal=True, features_plain=True) is not None


def test_rule_page_must_be_a_multiple_of_the_configured_tile(monkeypatch):
    _pretend_sm90(monkeypatch)
    q, k, v, out = _tensors("none")  # 128-token pages
    assert _decode_gluon.qualifies(q, k, v, out, tile_n=128, causal=True, features_plain=True) is not None
    assert _decode_gluon.qualifies(q, k[:, :64], v[:, :64], out, tile_n=128, causal=True, features_plain=True) is None


# --- the policy's choice ---------------------------------------------------------------------


def _problem(**kw) -> AttentionProblem:
    base = dict(num_seqs=4, num_q_heads=32, num_kv_heads=8, head_dim=128, max_seqlen_q=8, max_seqlen_k=4096,
                dtype="bfloat16", kv_dtype="bfloat16", num_sms=132, interpreter=False, block_size=128)  # fmt: skip
    return AttentionProblem(**{**base, **kw})


CONFIG_REFUSALS = {
    "one new token over 17 sequences": ({"num_seqs": 17}, 1),
    "interpreter": ({"interpreter": True}, 8),
    "fp32": ({"dtype": "float32", "kv_dtype": "float32"}, 8),
    "fp8 cache": ({"kv_dtype": "float8_e4m3fn"}, 8),
    "head 256": ({"head_dim": 256}, 8),
    "v head of its own": ({"head_dim_v": 64}, 8),
    "group 128": ({"num_q_heads": 128, "num_kv_heads": 1}, 8),
    "page size unknown": ({"block_size": None}, 8),
    "page of 96": ({"block_size": 96}, 8),
}


@pytest.mark.parametrize("why", sorted(CONFIG_REFUSALS))
def test_config_each_clause(why):
    fields, dq = CONFIG_REFUSALS[why]
    assert gluon_decode_config(_problem(**fields), decode_query_len=dq) is None
    got = gluon_decode_config(_problem(), decode_query_len=8)  # the control
    assert got is not None and got.gluon == 1 and (got.tile_n, got.num_warps, got.num_stages) == (64, 4, 3)


@pytest.mark.parametrize(
    ("num_seqs", "q_heads", "dq", "splits"),
    # One wave of programs (kv heads x row blocks of 64 // group tokens x sequences) on 132 SMs.
    [(1, 32, 8, 16), (1, 64, 16, 8), (4, 32, 2, 4), (16, 32, 8, 1), (64, 32, 16, 1), (1, 8, 3, 16)],
)
def test_config_split_count_fills_one_wave(num_seqs, q_heads, dq, splits):
    got = gluon_decode_config(_problem(num_seqs=num_seqs, num_q_heads=q_heads), decode_query_len=dq)
    assert got is not None and got.num_splits == splits
    one = gluon_decode_config(_problem(num_seqs=num_seqs, num_q_heads=q_heads), decode_query_len=1,
                              one_token_max_seqs=None)  # fmt: skip
    assert one is not None and one.num_splits == max(1, 132 // (num_seqs * 8))


def test_config_one_token_decode_up_to_its_batch_bound():
    for n in (1, 4, 16):
        assert gluon_decode_config(_problem(num_seqs=n), decode_query_len=1) is not None
    for n in (17, 64, 256):
        assert gluon_decode_config(_problem(num_seqs=n), decode_query_len=1) is None
        assert gluon_decode_config(_problem(num_seqs=n), decode_query_len=1, one_token_max_seqs=None) is not None
        assert gluon_decode_config(_problem(num_seqs=n), decode_query_len=2) is not None  # verification: any batch
    assert gluon_decode_config(_problem(num_seqs=1), decode_query_len=1, min_query_len=2) is None


def test_config_flag_needs_the_kernels_shape():
    DecodeConfig(gluon=1, tile_n=128, num_stages=2)
    for bad in ({"num_warps": 8}, {"tile_n": 32}, {"num_stages": 5}, {"prefetch_pages": 1}):
        with pytest.raises(ValueError, match="gluon=1 needs"):
            DecodeConfig(gluon=1, **bad)
    with pytest.raises(ValueError, match="gluon"):
        DecodeConfig(gluon=2)


def test_plan_launch_takes_it_for_verification(monkeypatch):
    monkeypatch.setattr(policy_module, "_runs_gluon", lambda device: True)
    verify = plan_launch(_problem(), hopper_decode=True, device="cuda")
    assert verify.config.decode == gluon_decode_config(_problem(), decode_query_len=8)
    assert verify.workspace_numel == decode_workspace_numel(4, 32, 128, verify.config.decode.num_splits, query_len=8)
    one = plan_launch(_problem(max_seqlen_q=1), hopper_decode=True, device="cuda")
    assert one.config.decode == gluon_decode_config(_problem(max_seqlen_q=1), decode_query_len=1)
    many = plan_launch(_problem(num_seqs=32, max_seqlen_q=1), hopper_decode=True, device="cuda")
    assert not many.config.decode.gluon  # one-token decode over more than 16 sequences: the table
    assert not plan_launch(_problem(dtype="float16", kv_dtype="float8_e4m3fn"), hopper_decode=True,
                           device="cuda").config.decode.gluon  # fmt: skip
    for kw in ({"hopper_decode": False}, {"config": AttentionConfig(decode=DecodeConfig(tile_n=32))}):
        assert not plan_launch(_problem(), device="cuda", **{"hopper_decode": True, **kw}).config.decode.gluon
    monkeypatch.setattr(policy_module, "_runs_gluon", lambda device: False)
    assert not plan_launch(_problem(), hopper_decode=True, device="cuda").config.decode.gluon


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_serving_policy_takes_it_for_verification_steps(monkeypatch, cuda_graphs):
    monkeypatch.setattr(policy_module, "_runs_gluon", lambda device: True)
    geometry = _problem(num_seqs=1, max_seqlen_q=1, max_seqlen_k=1, block_size=None)

    def policy(**kw):
        limits = dict(max_num_seqs=64, max_model_len=32768, max_num_batched_tokens=8192, cuda_graphs=cuda_graphs,
                      decode_query_len=5, block_size=128, plain_attention=True, hopper_decode=True)  # fmt: skip
        return ServingPolicy(geometry, ServingLimits(**{**limits, **kw}), device="cuda")

    served = policy()
    for n in (1, 7, 64):
        config = served.decode(n, 32768)
        assert config == gluon_decode_config(served._problem(n, 1, 1), decode_query_len=5)
        assert served.plan(n, 5, 32768).config.decode == config
    ws = max(decode_workspace_numel(n, 32, 128, served.decode(n, 1).num_splits, query_len=5) for n in range(1, 65))
    assert served.max_workspace_numel() == ws > 0
    for kw in ({"hopper_decode": False}, {"block_size": 16}, {"block_size": None}):
        assert not policy(**kw).decode(4, 32768).gluon, kw
    # Without speculation: one-token steps at batches of up to 16 sequences only.
    assert policy(decode_query_len=1).decode(16, 32768).gluon and not policy(decode_query_len=1).decode(17, 32768).gluon
    with pytest.raises(TypeError, match="hopper_decode must be a bool"):
        ServingLimits(max_num_seqs=1, max_model_len=1, max_num_batched_tokens=1, hopper_decode=1)


@pytest.mark.parametrize("splits", [1, 4])
@pytest.mark.parametrize(("q_lens", "dq", "prefill"), [([8, 5, 8], None, False), ([8, 20, 1], 8, True)])
def test_launcher_routes_qualifying_decode_launches_to_it(monkeypatch, splits, q_lens, dq, prefill):
    """With the rule made true, paged_attention hands the decode launch to
    ``_decode_gluon.launch`` (not run here) with the config's splits and whether a prefill
    launch serves the longer sequences, and merges the partials it would write."""
    _pretend_sm90(monkeypatch)
    seen: list[dict] = []
    merged: list[dict] = []
    monkeypatch.setattr(_decode_gluon, "launch", lambda *a, **kw: seen.append(kw))
    monkeypatch.setattr(attention_module, "merge_partials", lambda *a, **kw: merged.append(kw))
    b = paged_batch(q_lens, [130, 200, 260], num_q_heads=8, num_kv_heads=2, head_dim=64, block_size=128,
                    dtype=torch.bfloat16)  # fmt: skip
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=splits, num_stages=4, gluon=1))
    paged_attention(*b.args(), **b.lens(), config=cfg, decode_query_len=dq)
    assert len(seen) == 1
    assert seen[0]["num_splits"] == splits and seen[0]["decode_q"] == 8
    assert (seen[0]["tile_n"], seen[0]["stages"]) == (64, 4)
    assert seen[0]["other_launch"] == int(prefill)
    assert len(merged) == (splits > 1)
    # A config without the flag keeps the generic kernel on the same launch.
    seen.clear()
    generic = AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=splits))
    paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=generic, decode_query_len=dq)
    assert not seen


@pytest.mark.parametrize("feature", ["window", "softcap", "not causal"])
def test_flagged_config_on_a_layer_it_does_not_serve_runs_the_generic_kernel(monkeypatch, feature):
    _pretend_sm90(monkeypatch)
    seen: list[dict] = []
    monkeypatch.setattr(_decode_gluon, "launch", lambda *a, **kw: seen.append(kw))
    b = paged_batch([4, 2], [70, 130], num_q_heads=8, num_kv_heads=2, head_dim=64, block_size=64)
    kw = {"window": {"sliding_window": 32}, "softcap": {"softcap": 20.0}, "not causal": {"causal": False}}[feature]
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=2, gluon=1))
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=cfg, **kw)
    assert_matches(out, paged_attention_ref(*b.args(), **kw), torch.float16)
    assert not seen


def test_never_chosen_where_it_cannot_run(monkeypatch):
    """Here (the interpreter, or a GPU without Triton 3.6.0 / sm_90) a qualifying shape
    computes the reference result on the generic kernel and never reaches the Gluon one."""
    if _runs_gluon():
        pytest.skip("this machine runs the Gluon decode (the gpu tests cover it)")
    seen: list[dict] = []
    monkeypatch.setattr(_decode_gluon, "launch", lambda *a, **kw: seen.append(kw))
    b = paged_batch([8, 3], [70, 9], num_q_heads=8, num_kv_heads=2, head_dim=64, block_size=64)
    for cfg in (None, AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=2, gluon=1))):
        out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=cfg)
        assert_matches(out, paged_attention_ref(*b.args()), torch.float16)
    assert not seen


# --- numerics on sm_90 with Triton 3.6.0 -----------------------------------------------------


def _runs_gluon() -> bool:
    return DEVICE == "cuda" and _gluon.available() and torch.cuda.get_device_capability() == (9, 0)


needs_sm90 = pytest.mark.skipif(not _runs_gluon(), reason="the Gluon decode runs on sm_90 with Triton 3.6.0")


@pytest.fixture
def gluon_launches(monkeypatch):
    calls: list[dict] = []
    real = _decode_gluon.launch

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(_decode_gluon, "launch", counted)
    return calls


def _nan_past_contexts(b, block_size: int) -> None:
    """NaN in every cache slot no sequence's context covers (tails and spare pages)."""
    used = torch.zeros(b.k_cache.shape[:2], dtype=torch.bool, device=DEVICE)
    for i, n in enumerate(b.seq_lens.tolist()):
        for p in range(0, n, block_size):
            used[int(b.block_table[i, p // block_size]), : min(block_size, n - p)] = True
    b.k_cache[~used] = float("nan")
    b.v_cache[~used] = float("nan")


# (new tokens, q heads, kv heads, splits, dtype, head size, page, layout, (tile, stages) or None)
CASES = [
    (q_len, qh, kvh, splits, torch.bfloat16, hd, bs, layout, None)
    for q_len in (8, 16)
    for qh, kvh in ((32, 8), (64, 8), (16, 1))
    for splits in (1, 3)
    for hd, bs, layout in ((128, 128, "NHD"), (64, 64, "HND"))
] + [
    (5, 64, 8, 8, torch.float16, 128, 128, "NHD", None),
    (8, 32, 8, 3, torch.float16, 64, 128, "HND", None),
    (8, 32, 8, 3, torch.bfloat16, 128, 128, "NHD", (128, 2)),
    (16, 32, 8, 1, torch.bfloat16, 128, 128, "NHD", (64, 3)),
    (8, 32, 8, 8, torch.bfloat16, 128, 64, "NHD", (64, 2)),
]


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize(("q_len", "q_heads", "kv_heads", "splits", "dtype", "head_dim", "block_size", "layout", "tiles"),
                         CASES)  # fmt: skip
def test_matches_reference(q_len, q_heads, kv_heads, splits, dtype, head_dim, block_size, layout, tiles, monkeypatch,
                           gluon_launches):  # fmt: skip
    tile_n, stages = tiles or (64, 3)
    # Contexts of the query run only, off and on tile edges, short and long; sequences of
    # fewer new tokens than the launch's; NaN past every context; padding rows past the batch.
    seq_lens = [q_len, 63, 64, 65, 129, 1000, 4099]
    q_lens = [q_len, q_len, 1, q_len, 2, q_len, q_len]
    b = paged_batch(q_lens, seq_lens, num_q_heads=q_heads, num_kv_heads=kv_heads, head_dim=head_dim,
                    block_size=block_size, dtype=dtype, layout=layout, q_padding=3)  # fmt: skip
    _nan_past_contexts(b, block_size)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=tile_n, num_splits=splits, num_stages=stages, gluon=1))
    out, lse = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=cfg, return_lse=True)
    ref, ref_lse = paged_attention_ref(*b.args(), return_lse=True)
    rows = int(b.cu_seqlens_q[-1])
    assert_matches(out, ref, dtype, rows=rows)
    torch.testing.assert_close(lse[:rows], ref_lse[:rows], atol=2e-3, rtol=1e-3)
    assert torch.isnan(out[rows:].float()).all(), "padding rows written"
    assert len(gluon_launches) == 1


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize(("q_heads", "kv_heads", "head_dim", "dtype"),
                         [(32, 8, 128, torch.bfloat16), (8, 8, 64, torch.float16), (64, 8, 128, torch.bfloat16)])  # fmt: skip
@pytest.mark.parametrize("num_seqs", [1, 5, 40])
def test_one_token_decode_when_asked(q_heads, kv_heads, head_dim, dtype, num_seqs, gluon_launches, monkeypatch):
    # config=None under TRITON_ATTN_HOPPER_DECODE=all: plan_launch's choice, the Gluon decode
    # with its one-wave split count.
    from triton_attn_kernels import tuning

    monkeypatch.setenv("TRITON_ATTN_HOPPER_DECODE", "all")
    tuning.reset()
    seq_lens = [[1, 63, 64, 65, 129, 1000, 4099][i % 7] + 7 * i for i in range(num_seqs)]
    b = paged_batch([1] * num_seqs, seq_lens, num_q_heads=q_heads, num_kv_heads=kv_heads, head_dim=head_dim,
                    block_size=128, dtype=dtype)  # fmt: skip
    _nan_past_contexts(b, 128)
    out, lse = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), return_lse=True)
    ref, ref_lse = paged_attention_ref(*b.args(), return_lse=True)
    assert_matches(out, ref, dtype)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    assert len(gluon_launches) == 1 and gluon_launches[0]["decode_q"] == 1
    monkeypatch.delenv("TRITON_ATTN_HOPPER_DECODE")
    tuning.reset()


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("splits", [1, 4])
def test_mixed_batch_beside_a_prefill_launch(splits, gluon_launches):
    # Verification rows, a plain decode and prefill chunks in one call: the decode launch
    # (Gluon) skips the long sequences, the prefill launch serves them.
    b = paged_batch([8, 300, 1, 6, 129], [4000, 700, 90, 6, 1000], num_q_heads=32, num_kv_heads=8, head_dim=128,
                    block_size=128, dtype=torch.bfloat16)  # fmt: skip
    _nan_past_contexts(b, 128)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=splits, num_stages=3, gluon=1))
    out = paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=cfg, decode_query_len=8)
    assert_matches(out, paged_attention_ref(*b.args()), torch.bfloat16)
    assert len(gluon_launches) == 1 and gluon_launches[0]["other_launch"] == 1


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("splits", [1, 5])
def test_understated_max_seqlen_q_still_computes_every_row(splits, gluon_launches):
    # max_seqlen_q says 8, two sequences have more (12 and 40 new tokens) and no prefill
    # launch runs: they are computed whole in split 0, row block after row block.
    b = paged_batch([8, 12, 3, 40], [900, 500, 3, 2100], num_q_heads=32, num_kv_heads=8, head_dim=128,
                    block_size=128, dtype=torch.bfloat16)  # fmt: skip
    _nan_past_contexts(b, 128)
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=splits, num_stages=3, gluon=1))
    lens = {**b.lens(), "max_seqlen_q": 8}
    out, lse = paged_attention(*b.args(), **lens, out=poisoned_like(b.q), config=cfg, return_lse=True)
    ref, ref_lse = paged_attention_ref(*b.args(), return_lse=True)
    assert_matches(out, ref, torch.bfloat16)
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)
    assert len(gluon_launches) == 1 and gluon_launches[0]["other_launch"] == 0


@pytest.mark.gpu
@needs_sm90
def test_cuda_graph_replay_follows_new_lengths(gluon_launches):
    # Recorded once, replayed with other contexts and block tables in the same tensors.
    b = paged_batch([8] * 4, [3000] * 4, num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=128,
                    dtype=torch.bfloat16, spare_blocks=40)  # fmt: skip
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=64, num_splits=6, num_stages=3, gluon=1))
    ws = torch.empty(1 << 22, dtype=torch.float32, device=DEVICE)
    out = poisoned_like(b.q)
    call = dict(**b.lens(), out=out, config=cfg, workspace=ws)
    paged_attention(*b.args(), **call)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_attention(*b.args(), **call)
    for lens in ([3000, 8, 1500, 2999], [129, 2048, 64, 9]):
        b.seq_lens.copy_(torch.tensor(lens, dtype=torch.int32, device=DEVICE))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, paged_attention_ref(*b.args()), torch.bfloat16)
    assert gluon_launches


@pytest.mark.gpu
@needs_sm90
@pytest.mark.parametrize("dq", [5, 1])
def test_serving_plans_compile_no_new_variant_across_batches_and_lengths(gluon_launches, dq):
    """What the plugin launches for n-gram verification (5 tokens a step) or plain decode
    under full CUDA graphs: after a batch with splits and one without, other batch sizes and
    contexts in a block table of vLLM's fixed width compile nothing, and compute the
    reference result; one-token decode over more than 16 sequences is the generic kernel's."""
    from triton_attn_kernels.compiled import compiled_variants

    limits = ServingLimits(max_num_seqs=64, max_model_len=8192, max_num_batched_tokens=8192, cuda_graphs=True,
                           decode_query_len=dq, block_size=128, plain_attention=True, hopper_decode=True)  # fmt: skip
    policy = ServingPolicy.for_model(num_q_heads=32, num_kv_heads=8, head_dim=128, dtype=torch.bfloat16,
                                     kv_dtype=torch.bfloat16, limits=limits, device=DEVICE)  # fmt: skip
    ws = torch.empty(policy.max_workspace_numel(), dtype=torch.float32, device=DEVICE)

    def step(n: int, length: int) -> None:
        b = paged_batch([dq] * n, [length] * n, num_q_heads=32, num_kv_heads=8, head_dim=128, block_size=128,
                        dtype=torch.bfloat16)  # fmt: skip
        args = list(b.args())
        table = torch.zeros(n, 8192 // 128, dtype=torch.int32, device=DEVICE)
        table[:, : min(args[3].shape[1], 64)] = args[3][:, :64]
        args[3] = table
        plan = policy.plan(n, dq, length)
        assert plan.config.decode.gluon == (1 if dq > 1 or n <= 16 else 0)
        out = paged_attention(*args, **b.lens(), out=poisoned_like(b.q), config=plan.config, decode_query_len=dq,
                              workspace=ws)  # fmt: skip
        assert_matches(out, paged_attention_ref(*args), torch.bfloat16)

    step(1, 300)  # 16 splits
    step(16, 300)  # one split
    before = compiled_variants()["decode_gluon"]
    for n, length in [(1, 17), (3, 1000), (16, 4000), (64, 33), (7, 8192), (2, 129)]:
        step(n, length)
    assert compiled_variants()["decode_gluon"] == before
    assert len(gluon_launches) == (8 if dq > 1 else 7)


@pytest.mark.parametrize(
    ("mode", "verify", "one", "one_of_many"),
    [(None, 1, 1, 0), ("auto", 1, 1, 0), ("1", 1, 1, 0), ("verify", 1, 0, 0), ("all", 1, 1, 1), ("0", 0, 0, 0),
     ("off", 0, 0, 0)],
)  # fmt: skip
def test_environment_switch(monkeypatch, mode, verify, one, one_of_many):
    from triton_attn_kernels import tuning

    monkeypatch.setattr(policy_module, "_runs_gluon", lambda device: True)
    if mode is None:
        monkeypatch.delenv("TRITON_ATTN_HOPPER_DECODE", raising=False)
    else:
        monkeypatch.setenv("TRITON_ATTN_HOPPER_DECODE", mode)
    tuning.reset()
    try:
        assert plan_launch(_problem(), hopper_decode=True, device="cuda").config.decode.gluon == verify
        assert plan_launch(_problem(num_seqs=64), hopper_decode=True, device="cuda").config.decode.gluon == verify
        assert plan_launch(_problem(max_seqlen_q=1), hopper_decode=True, device="cuda").config.decode.gluon == one
        many = plan_launch(_problem(num_seqs=64, max_seqlen_q=1), hopper_decode=True, device="cuda")
        assert many.config.decode.gluon == one_of_many
        limits = ServingLimits(max_num_seqs=64, max_model_len=4096, max_num_batched_tokens=4096, decode_query_len=1,
                               block_size=128, hopper_decode=True, cuda_graphs=True)  # fmt: skip
        served = ServingPolicy(_problem(), limits, device="cuda")
        assert served.decode(4, 4096).gluon == one and served.decode(64, 4096).gluon == one_of_many
    finally:
        monkeypatch.delenv("TRITON_ATTN_HOPPER_DECODE", raising=False)
        tuning.reset()


def test_environment_switch_names_a_bad_value(monkeypatch):
    from triton_attn_kernels import tuning

    monkeypatch.setattr(policy_module, "_runs_gluon", lambda device: True)
    monkeypatch.setenv("TRITON_ATTN_HOPPER_DECODE", "sometimes")
    tuning.reset()
    try:
        with pytest.raises(ValueError, match="TRITON_ATTN_HOPPER_DECODE must be one of"):
            plan_launch(_problem(), hopper_decode=True, device="cuda")
    finally:
        monkeypatch.delenv("TRITON_ATTN_HOPPER_DECODE")
        tuning.reset()
