"""The mla suite: its problems, their bytes and flops counted here by hand, our MLA decode
through the runner against triton_attn_kernels.reference_mla (Triton interpreter on CPU),
the MLA prefill's capability check, and the vLLM peers' arguments (built without a GPU)."""

import math

import pytest
import torch

from attn_bench import metrics, registry
from attn_bench.check import check
from attn_bench.inputs import make_inputs
from attn_bench.problems import Problem, load_suite
from attn_bench.providers import ours_mla, vllm_mla
from attn_bench.registry import Timed, get, provider
from attn_bench.results import read_csv
from attn_bench.runner import RunOptions, run
from triton_attn_kernels.reference_mla import mla_decode_ref

# A tenth of DeepSeek's width: latent rows of 64 + 16 rope dims.
TINY = {"num_kv_heads": 1, "head_dim": 80, "head_dim_v": 64, "num_q_heads": 4, "block_size": 16}


def test_suite_covers_the_deepseek_grid():
    s = load_suite("mla")
    dec = [p for p in s.problems if p.op == "mla_decode"]
    pre = [p for p in s.problems if p.op == "mla_prefill"]
    assert {(p.head_dim, p.head_dim_v, p.num_kv_heads) for p in dec} == {(576, 512, 1)}
    bf16 = {(p.num_q_heads, p.batch, p.context) for p in dec if p.q_len == 1 and not p.fp8}
    assert bf16 == {(h, b, c) for h in (16, 128) for b in (1, 16, 64, 128) for c in (4096, 8192, 32768)}
    assert {p.kv_dtype for p in dec} == {"bfloat16", "float8_e4m3fn"} and {p.q_len for p in dec} == {1, 2, 4}
    assert {p.num_q_heads for p in dec if p.fp8} == {16, 128}
    assert {(p.head_dim, p.head_dim_v) for p in pre} == {(192, 128)}
    assert all(p.num_q_heads == p.num_kv_heads for p in pre)
    shapes = {(p.batch, p.context, p.q_len) for p in pre}
    assert shapes == {(1, 4096, 4096), (4, 2048, 2048), (1, 8192, 2048)}
    assert {p.num_q_heads for p in pre} == {16, 128}
    assert {p.block_size for p in s.problems} == {vllm_mla.FLASHMLA_PAGE}
    assert s.quick and set(s.quick) <= set(s.problems)
    assert {"mla_decode", "mla_prefill"} == {p.op for p in s.quick}


def test_decode_bytes_and_flops_by_hand():
    # 3 sequences of 1000 tokens, 16 heads: each sequence reads its 1000 latent rows of
    # 576 bf16 values once; each (query, key) pair costs 2 * 576 (q . latent) + 2 * 512
    # (p . c) flops per head. Pairs as in every suite: the new tokens' causal block counts
    # L^2 / 2, so a one-token decode counts 999 + 1/2.
    p = Problem(op="mla_decode", batch=3, context=1000, num_q_heads=16, num_kv_heads=1, head_dim=576, head_dim_v=512)
    assert metrics.bytes_moved(p) == 3 * 1000 * 576 * 2
    assert metrics.flops(p) == 3 * 999.5 * 16 * (2 * 576 + 2 * 512)
    fp8 = Problem(**{**p.as_dict(), "kv_dtype": "float8_e4m3fn"})
    assert metrics.bytes_moved(fp8) == 3 * 1000 * 576
    # 128 heads read the same rows: bytes do not grow with the heads.
    wide = Problem(**{**p.as_dict(), "num_q_heads": 128})
    assert metrics.bytes_moved(wide) == metrics.bytes_moved(p) and metrics.flops(wide) == 8 * metrics.flops(p)
    # Verification, 4 tokens: the rows are still read once; pairs 4 * 996 + 4^2 / 2.
    v = Problem(**{**p.as_dict(), "q_len": 4})
    assert metrics.bytes_moved(v) == metrics.bytes_moved(p)
    assert metrics.flops(v) == 3 * (4 * 996 + 8) * 16 * 2176


def test_prefill_bytes_and_flops_by_hand():
    # 1 x 4096 fresh, 16 heads: L^2 / 2 pairs, QK^T at 192 and PV at 128.
    p = Problem(
        op="mla_prefill",
        batch=1,
        context=4096,
        q_len=4096,
        num_q_heads=16,
        num_kv_heads=16,
        head_dim=192,
        head_dim_v=128,
    )
    assert metrics.flops(p) == 16 * 4096 * 4096 / 2 * (2 * 192 + 2 * 128)
    assert metrics.bytes_moved(p) == 4096 * 16 * (192 + 128) * 2
    # A 2048-token chunk on a 6144-token prefix: 2048 * 6144 + 2048^2 / 2 pairs.
    c = Problem(**{**p.as_dict(), "context": 8192, "q_len": 2048})
    assert metrics.flops(c) == 16 * (2048 * 6144 + 2048 * 2048 / 2) * 640
    assert metrics.bytes_moved(c) == 8192 * 16 * 320 * 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op": "mla_decode", "num_kv_heads": 8, "num_q_heads": 16},  # one latent head
        {"op": "mla_decode", "num_kv_heads": 1, "q_len": 17},  # past verification
        {"op": "mla_decode", "num_kv_heads": 1, "head_dim_v": 80},  # v not inside the row
        {"op": "mla_decode", "num_kv_heads": 1, "head_dim_v": 0},
        {"op": "mla_prefill", "num_kv_heads": 4, "kv_dtype": "float8_e4m3fn"},  # prefill K/V are activations
        {"op": "mla_prefill", "num_kv_heads": 4, "variant": "alibi"},
        {"op": "decode", "head_dim_v": 64},  # a separate v head size is MLA only
    ],
)
def test_invalid_mla_problems_raise(kwargs):
    base = {"batch": 1, "context": 32, "num_q_heads": 4, "head_dim": 80, "head_dim_v": 64}
    with pytest.raises(ValueError):
        Problem(**{**base, **kwargs})


def test_label_names_the_value_head_and_the_tokens():
    p = Problem(op="mla_decode", batch=2, context=33, q_len=3, **TINY)
    assert p.label() == "mla_decode b2 ctx33 q3 h4:1 d80/64 bf16"


def _tiny(q_len=1, kv_dtype="bfloat16", batch=3, context=37):
    return Problem(op="mla_decode", batch=batch, context=context, q_len=q_len, kv_dtype=kv_dtype, **TINY)


@pytest.mark.parametrize("q_len,kv_dtype", [(1, "bfloat16"), (3, "bfloat16"), (2, "float8_e4m3fn")])
def test_ours_mla_matches_the_reference_on_every_sequence(q_len, kv_dtype):
    x = make_inputs(_tiny(q_len, kv_dtype), "cpu", seed=3)
    timed = get("ours-mla").make(x)
    got = timed.read(timed.fn()).float()
    assert got.shape == (x.q.shape[0], 4, 64) and not torch.isnan(got).any()
    # The whole batch (the bench's check samples sequences), against the MLA reference.
    want = mla_decode_ref(
        x.q_nope, x.q_pe, x.latent_cache, x.block_table, x.seq_lens, x.cu_seqlens_q, scale=x.scale, k_scale=x.k_scale
    )
    torch.testing.assert_close(got, want, atol=0.06, rtol=0.03)
    assert check(x, got).ok


@pytest.mark.parametrize(
    "provider,function,seed",
    [
        # The Triton kernel's earlier heuristic, a comparison baseline.
        ("ours-mla-v1", "mla_decode_heuristic_v1", 4),
        # The Triton kernel where the Gluon one would serve: the comparison for ours-mla.
        ("ours-mla-triton", "mla_triton_config", 6),
    ],
)
def test_comparison_providers_run_their_configuration(monkeypatch, provider, function, seed):
    """mla_decode with that function's configuration (once, at setup), checked against the
    reference like ours-mla."""
    from triton_attn_kernels.tuning import mla as tuning

    seen = []
    real = getattr(tuning, function)
    monkeypatch.setattr(tuning, function, lambda p: seen.append(real(p)) or seen[-1])
    x = make_inputs(_tiny(q_len=2), "cpu", seed=seed)
    timed = get(provider).make(x)
    got = timed.read(timed.fn()).float()
    assert len(seen) == 1 and seen[0].gluon == 0 and not torch.isnan(got).any()
    want = mla_decode_ref(x.q_nope, x.q_pe, x.latent_cache, x.block_table, x.seq_lens, x.cu_seqlens_q, scale=x.scale)
    torch.testing.assert_close(got, want, atol=0.06, rtol=0.03)


def test_the_check_rejects_a_wrong_mla_decode():
    x = make_inputs(_tiny(q_len=2), "cpu", seed=5)
    right = mla_decode_ref(
        x.q_nope, x.q_pe, x.latent_cache, x.block_table, x.seq_lens, x.cu_seqlens_q, scale=x.scale, k_scale=x.k_scale
    )
    assert check(x, right.to(x.q.dtype)).ok
    # No causal mask among the new tokens: the first token of each pair sees its successor.
    table = x.block_table.repeat_interleave(2, 0)
    unmasked = _decode_rows_ref(x, table, x.seq_lens.repeat_interleave(2), k_scale=x.k_scale).to(x.q.dtype)
    assert not check(x, unmasked).ok
    assert not check(x, torch.full_like(right, float("nan"))).ok
    assert not check(x, right[..., :32]).ok  # the output's head size is the value's


def test_ours_mla_through_the_runner(tmp_path):
    name = "test-mla-off-scale"

    @provider(name, ops=("mla_decode",))
    def off_scale(x):
        from triton_attn_kernels import mla_decode

        out = x.new_out()
        args = (x.q_nope, x.q_pe, x.latent_cache, x.block_table, x.seq_lens, x.cu_seqlens_q)
        kw = {"max_seqlen_q": x.problem.max_seqlen_q, "max_seqlen_k": x.problem.max_seqlen_k, "out": out}
        fp8 = {"k_scale": x.k_scale} if x.problem.fp8 else {}
        return Timed(lambda: mla_decode(*args, scale=1.5 * x.scale, **kw, **fp8))

    peers = ["vllm-triton-mla", "vllm-flashmla", "vllm-fa3-mla"]
    try:
        out = run(
            RunOptions(
                suites=["smoke"], providers=["ours-mla", name, *peers], out=tmp_path, quick=True, runs=1,
                only=["mla_decode"], plot=False,
            )
        )  # fmt: skip
    finally:
        registry.REGISTRY.pop(name)
    rows = read_csv(out / "results.csv")
    ours = [r for r in rows if r.provider == "ours-mla"]
    assert {r.q_len for r in ours} == {1, 3} and all(r.status == "ok" for r in ours), [r.detail for r in ours]
    assert all(r.max_err <= 0.05 and r.gbps > 0 and r.head_dim_v == 64 for r in ours)
    p = ours[0].problem()
    assert ours[0].gbps == pytest.approx(metrics.bytes_moved(p) / (ours[0].p50_us * 1e-6) / 1e9, rel=1e-4)
    assert all(r.status == "wrong" for r in rows if r.provider == name)
    skipped = [r for r in rows if r.provider in peers]
    assert len(skipped) == 3 * len(ours) and all(r.status == "skipped" and r.detail for r in skipped)
    assert "mla_decode" in (out / "summary.md").read_text()


def test_mla_prefill_reports_its_capability(tmp_path):
    reason = ours_mla.dv_supported()
    assert reason is None or reason.startswith(ours_mla.NO_DV)
    out = run(
        RunOptions(
            suites=["smoke"], providers=["ours-mla-prefill", "ours-mla-prefill-paged", "vllm-fa3-mla-prefill"],
            out=tmp_path, quick=True, runs=1, only=["mla_prefill"], plot=False,
        )
    )  # fmt: skip
    rows = read_csv(out / "results.csv")
    ours = [r for r in rows if r.provider.startswith("ours")]
    assert len(ours) == 4
    if reason is None:  # kernels with their own v head size: run and checked
        assert all(r.status == "ok" for r in ours), [r.detail for r in ours]
    else:
        assert all(r.status == "skipped" and r.detail == reason for r in ours)
    assert all(r.status == "skipped" for r in rows if r.provider == "vllm-fa3-mla-prefill")


def test_capability_probe_says_unsupported_when_validation_refuses(monkeypatch):
    import triton_attn_kernels

    def refuses(*args, **kw):
        raise ValueError("v must have the shape of k (0, 1, 192), got (0, 1, 128)")

    monkeypatch.setattr(triton_attn_kernels, "varlen_attention", refuses)
    ours_mla._dv_probe.cache_clear()
    try:
        reason = ours_mla._dv_probe("cpu")
    finally:
        ours_mla._dv_probe.cache_clear()
    assert reason is not None and reason.startswith("unsupported: kernels without dv != dk")
    assert "varlen_attention" in reason


# ---------------------------------------------------------------- vLLM peers, no GPU
def _decode_rows_ref(x, table, seq_lens, **kw):
    """What decode_attention_fwd computes for one-token rows: row t attends to the first
    seq_lens[t] latent rows of its block-table row (no mask within)."""
    n = table.shape[0]
    cu = torch.arange(n + 1, dtype=torch.int32)
    return mla_decode_ref(x.q_nope, x.q_pe, x.latent_cache, table, seq_lens, cu, scale=x.scale, **kw)


def test_triton_mla_rows_are_one_decode_per_query_token():
    x = make_inputs(_tiny(q_len=3, batch=2, context=33), "cpu", seed=1)
    args = vllm_mla.triton_mla_args(x, num_kv_splits=4)
    assert args["b_seq_len"].tolist() == [31, 32, 33, 31, 32, 33]
    assert torch.equal(args["req_to_token"], x.block_table[[0, 0, 0, 1, 1, 1]])
    assert args["attn_logits"].shape == (6, 4, 4, 65) and args["o"].shape == (6, 4, 64)
    assert args["v_buffer"].data_ptr() == args["k_buffer"].data_ptr() and args["v_buffer"].shape[-1] == 64
    assert args["page_size"] == 16 and args["is_mla"] and args["v_scale"] is args["k_scale"]
    # The per-token rows give the causal verification the reference computes.
    got = _decode_rows_ref(x, args["req_to_token"], args["b_seq_len"])
    want = mla_decode_ref(x.q_nope, x.q_pe, x.latent_cache, x.block_table, x.seq_lens, x.cu_seqlens_q, scale=x.scale)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_triton_mla_splits_follow_vllm_rule():
    assert vllm_mla.triton_mla_splits(4096, 132) == 8
    assert vllm_mla.triton_mla_splits(32768, 132) == 64
    assert vllm_mla.triton_mla_splits(100, 132) == 1
    assert vllm_mla.triton_mla_splits(1536, 132) == 4  # 3 -> the next power of two
    assert vllm_mla.triton_mla_splits(1 << 20, 4) == 8  # at most 2 per SM


def test_flashmla_arguments():
    x = make_inputs(Problem(op="mla_decode", batch=2, context=70, q_len=2, **{**TINY, "block_size": 64}), "cpu")
    args = vllm_mla.flashmla_args(x)
    q = args["q"]
    assert q.shape == (2, 2, 4, 80) and torch.equal(q[1, 0], x.q[2]) and q.data_ptr() == x.q.data_ptr()
    assert args["k_cache"].shape[2:] == (1, 80) and args["head_dim_v"] == 64 and args["causal"]
    assert args["is_fp8_kvcache"] is False
    assert get("vllm-flashmla").unsupported(_tiny()) and get("vllm-flashmla").unsupported(x.problem) is None
    fp8 = make_inputs(Problem(**{**x.problem.as_dict(), "kv_dtype": "float8_e4m3fn"}), "cpu")
    a8 = vllm_mla.flashmla_args(fp8)
    assert a8["q"].dtype == torch.float8_e4m3fn and "is_fp8_kvcache" not in a8
    assert a8["descale_q"].item() == 1.0 and a8["descale_k"].item() == fp8.k_scale.item()


def test_fa3_mla_arguments_split_the_latent():
    x = make_inputs(_tiny(q_len=2), "cpu")
    args = vllm_mla.fa3_mla_args(x)
    assert args["q"].shape == (6, 4, 16) and args["q_v"].shape == (6, 4, 64)
    assert torch.equal(torch.cat([args["q_v"], args["q"]], -1), x.q)
    assert args["k"].shape[2:] == (1, 16) and args["v"].shape[2:] == (1, 64)
    assert torch.equal(torch.cat([args["v"], args["k"]], -1)[:, :, 0], x.latent_cache)
    assert args["fa_version"] == 3 and args["causal"] and args["max_seqlen_q"] == 2
    assert "fp8" in get("vllm-fa3-mla").unsupported(_tiny(kv_dtype="float8_e4m3fn"))


def test_fa3_prefill_arguments_are_contiguous_varlen():
    p = Problem(
        op="mla_prefill", batch=2, context=50, q_len=17, num_q_heads=2, num_kv_heads=2, head_dim=96, head_dim_v=64
    )
    x = make_inputs(p, "cpu")
    args = vllm_mla.fa3_prefill_args(x)
    assert args["k"].shape == (100, 2, 96) and args["v"].shape == (100, 2, 64)
    assert args["cu_seqlens_k"].tolist() == [0, 50, 100] and args["cu_seqlens_q"].tolist() == [0, 17, 34]
    assert args["out"].shape == (34, 2, 64) and bool(torch.isnan(args["out"]).all())
    assert (args["max_seqlen_q"], args["max_seqlen_k"]) == (17, 50)
    assert math.isclose(args["softmax_scale"], 96**-0.5)
