"""``tuner precompile``: the configurations a server launches, each launched once.

Under the interpreter nothing is compiled, so the launches themselves are watched (a hook
on the kernels records each launch's specialisation) and compared with what the serving
policy plans for every batch size."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch

from triton_attn_kernels import compiled_variants
from triton_attn_kernels.compiled import _keys, compiled_keys, kernels
from triton_attn_kernels.tuner.__main__ import main
from triton_attn_kernels.tuner.warmup import Features, context_lengths, precompile, serving_variants
from triton_attn_kernels.tuning import AttentionProblem, ServingLimits, ServingPolicy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _policy(*, max_num_seqs: int = 4, max_model_len: int = 256, cuda_graphs: bool = True, dq: int = 1):
    # GQA 4 over one KV head: with 4 SMs (the interpreter's) the split count halves as the
    # batch doubles, so batch sizes 1..4 get three decode configurations (8, 4, 2 splits).
    return ServingPolicy.for_model(
        num_q_heads=4,
        num_kv_heads=1,
        head_dim=32,
        dtype="float16",
        kv_dtype="float16",
        limits=ServingLimits(
            max_num_seqs=max_num_seqs,
            max_model_len=max_model_len,
            max_num_batched_tokens=32,
            cuda_graphs=cuda_graphs,
            decode_query_len=dq,
        ),
        device=torch.device(DEVICE),
    )


@pytest.fixture
def launches() -> Iterator[list[tuple[str, dict]]]:
    """Every launch of the package's kernels while the test runs: (kernel, arguments by name)."""
    seen: list[tuple[str, dict]] = []
    hooks = []
    for name, fn in kernels().items():

        def hook(*args, _name=name, _fn=fn, **kwargs):
            seen.append((_name, {**dict(zip(_fn.arg_names, args, strict=False)), **kwargs}))

        fn.add_pre_run_hook(hook)
        hooks.append((fn, hook))
    yield seen
    for fn, hook in hooks:
        fn.pre_run_hooks.remove(hook)


def _int_class(value: int) -> str:
    return "one" if value == 1 else "x16" if value % 16 == 0 else "other"


@pytest.mark.skipif(DEVICE == "cuda", reason="watches interpreter launches")
def test_precompile_launches_every_planned_variant(launches: list[tuple[str, dict]]) -> None:
    policy = _policy()
    lim = policy.limits
    # What the plugin's builder asks for, batch by batch: pure decode batches of every size
    # and a batch with a prefill.
    planned = {policy.plan(n, 1, lim.max_model_len).config.decode for n in range(1, lim.max_num_seqs + 1)}
    prefill = policy.plan(2, 20, lim.max_model_len).config.prefill
    assert len(planned) == 4 and prefill is not None

    report = precompile(policy, block_size=16, features=Features(sliding_window=8))

    assert len([v for v in report.variants if v.kind in ("decode", "prefill")]) == len(planned) + 1
    attn = [a for k, a in launches if k == "attention"]
    decode = {(a["TILE_N"], a["num_splits"], a["PREFETCH_PAGES"]) for a in attn if a["IS_DECODE"]}
    assert decode == {(c.tile_n, c.num_splits, bool(c.prefetch_pages)) for c in planned}
    prefills = {(a["BLOCK_M"], a["TILE_N"]) for a in attn if not a["IS_DECODE"]}
    assert prefills == {(prefill.block_m, prefill.tile_n)}
    assert all(a["USE_WINDOW"] and a["BLOCK_SIZE"] == 16 and a["max_blocks"] == 16 for a in attn)
    # Each configuration in every integer class a server's launches can give it.
    for c in planned:
        mine = [a for a in attn if a["IS_DECODE"] and a["num_splits"] == c.num_splits]
        classes = {(_int_class(a["num_tokens"]), _int_class(a["num_kv_rows"])) for a in mine}
        tokens = {"x16", "other"} | ({"one"} if c == policy.decode(1, lim.max_model_len) else set())
        assert classes == {(t, b) for t in tokens for b in ("x16", "other")}, c
    merged = {a["num_splits"] for k, a in launches if k == "merge"}
    assert merged == {c.num_splits for c in planned if c.num_splits > 1}
    assert any(k == "write_kv" for k, _ in launches)
    # The prefill launch alone over 4 sequences too (the persistent form on Hopper).
    alone = [a for a in attn if not a["IS_DECODE"] and not a["other_launch"] and a["cu_seqlens_q_ptr"].numel() == 5]
    assert len(alone) == 2  # one per block-count class
    # 2 block-count classes x (decode 3 + 2 + 2 + 2 token classes, prefill 2 + 1 alone, write 1)
    assert report.calls == 26
    assert report.compiled == compiled_variants()


@pytest.mark.parametrize(("head_dim", "num_sms", "num_kv_heads"), [(128, 132, 8), (256, 78, 2), (64, 4, 1)])
def test_context_lengths_find_every_eager_decode_config(head_dim: int, num_sms: int, num_kv_heads: int) -> None:
    """Without CUDA graphs the decode configuration depends on the context too; the lengths
    sampled must find every configuration that some length gives."""
    geometry = AttentionProblem(1, 4 * num_kv_heads, num_kv_heads, head_dim, 1, 1, "bfloat16", "bfloat16", num_sms)
    limits = ServingLimits(max_num_seqs=40, max_model_len=3000, max_num_batched_tokens=64)
    policy = ServingPolicy(geometry, limits, device=torch.device("cpu"))
    every = {policy.decode(n, length) for n in range(1, 41) for length in range(1, 3001)}
    found = {v.config for v in serving_variants(policy) if v.kind == "decode"}
    assert found == every
    assert len(every) > 1
    assert context_lengths(3000)[:6] == [1, 2, 3, 4, 5, 8] and context_lengths(3000)[-1] == 3000


def test_speculative_decode_query_len_keeps_one_token_class_out() -> None:
    # With 4 tokens per decode the token count is never 1: no launch for that class.
    policy = _policy(max_num_seqs=1, dq=4)
    (decode,) = [v for v in serving_variants(policy) if v.kind == "decode"]
    assert decode.uses == (1,)
    no_tables = dataclasses.replace(policy.limits, decode_query_len=0)
    assert [v.kind for v in serving_variants(ServingPolicy(policy.geometry, no_tables))] == ["prefill", "kv_write"]


@pytest.mark.skipif(DEVICE == "cuda", reason="runs the command under the interpreter")
def test_precompile_command(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["precompile", "--num-q-heads", "4", "--num-kv-heads", "1", "--head-dim", "32", "--dtype", "float16"]
    common += ["--max-model-len", "256", "--max-num-batched-tokens", "32", "--max-num-seqs", "2"]
    assert main([*common, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["decode", "decode", "prefill", "kv_write"]
    # Eager decode follows the context too: 1, 2, 4 and 8 splits over lengths up to 256.
    assert main([*common, "--dry-run", "--no-full-cuda-graphs"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()].count("decode") == 4
    assert main([*common, "--max-num-seqs", "1", "--num-blocks", "32"]) == 0
    out = capsys.readouterr().out
    assert "3 configurations (1 decode, 1 prefill, 1 kv_write), 7 launches" in out
    assert main([*common, "--block-size", "0"]) == 2


@pytest.mark.skipif(DEVICE == "cuda", reason="runs under the interpreter")
def test_precompile_in_worker_processes() -> None:
    said: list[str] = []
    report = precompile(_policy(max_num_seqs=2), block_size=16, num_blocks=32, jobs=2, echo=said.append)
    # decode: 3 token classes for batch 1's config, 2 for batch 2's; prefill 2 + 1 alone; write 1
    assert report.calls == 9
    assert sorted(line.split()[0] for line in said) == ["decode", "decode", "kv_write", "prefill"]
    with pytest.raises(ValueError, match="jobs"):
        precompile(_policy(), block_size=16, jobs=-1)


def test_compiled_variants_and_keys_read_both_cache_layouts() -> None:
    # Triton 3.2+: device -> (kernels by key, key cache, target, backend, binder)
    recent = SimpleNamespace(
        device_caches={0: ({"a": 1, "b": 2}, {}, None, None, None), 1: ({"c": 3}, {}, None, None, None)}
    )
    older = SimpleNamespace(cache={0: {"a": 1}, 1: {}})  # device -> {key: kernel}
    assert (_keys(recent), _keys(older), _keys(object())) == (["a", "b", "c"], ["a"], [])
    counts = compiled_variants()
    assert {k: len(v) for k, v in compiled_keys().items()} == counts
    assert {"attention", "merge", "merge_states", "prefill_tma", "write_kv"} <= set(counts)
    if DEVICE == "cpu":
        assert set(counts.values()) == {0}


def _mla_policy(head_dim: int, head_dim_v: int, *, num_sms: int | None = None, interpreter: bool = True):
    # An MLA model's prefill: q/k and V of their own head sizes, as many KV heads as query
    # heads (the keys and values are up-projected per head).
    geometry = AttentionProblem(1, 2, 2, head_dim, 1, 1, "float16", "float16", num_sms or 4, interpreter, head_dim_v)
    limits = ServingLimits(max_num_seqs=2, max_model_len=64, max_num_batched_tokens=32)
    return ServingPolicy(geometry, limits, device=torch.device(DEVICE))


@pytest.mark.parametrize(("interpreter", "num_sms"), [(True, 4), (False, 132)])
def test_mla_prefill_variants_are_what_its_calls_plan(interpreter: bool, num_sms: int) -> None:
    """The prefill configuration listed for q/k 192, v 128 is the one the MLA backend's
    ``varlen_attention`` calls plan (config=None) at any prefill length, and no KV write."""
    from triton_attn_kernels.tuning import plan_launch

    policy = _mla_policy(192, 128, num_sms=num_sms, interpreter=interpreter)
    variants = serving_variants(policy)
    assert [v.kind for v in variants if v.kind != "decode"] == ["prefill"]
    (prefill,) = [v.config for v in variants if v.kind == "prefill"]
    for num_seqs, q_len in ((1, 17), (2, 32), (1, 4096)):
        call = dataclasses.replace(policy.geometry, num_seqs=num_seqs, max_seqlen_q=q_len, max_seqlen_k=q_len)
        assert plan_launch(call).config.prefill == prefill == policy.plan(num_seqs, q_len, q_len).config.prefill
    # V's head size is part of the problem: the equal-size geometry need not plan the same.
    assert dataclasses.replace(policy.geometry, head_dim_v=None).v_head_dim == 192


@pytest.mark.skipif(DEVICE == "cuda", reason="watches interpreter launches")
def test_precompile_builds_v_with_its_own_head_size(launches: list[tuple[str, dict]]) -> None:
    policy = _mla_policy(64, 32)
    report = precompile(policy, block_size=16, num_blocks=32)
    attn = [a for k, a in launches if k == "attention"]
    assert attn and {(a["HEAD_DIM"], a["HEAD_DIM_V"], a["BLOCK_DV"]) for a in attn} == {(64, 32, 32)}
    assert {a["v_ptr"].shape[-1] for a in attn} == {32} and {a["out_ptr"].shape[-1] for a in attn} == {32}
    prefills = {(a["BLOCK_M"], a["TILE_N"]) for a in attn if not a["IS_DECODE"]}
    assert prefills == {(policy.prefill.block_m, policy.prefill.tile_n)}
    assert not any(k == "write_kv" for k, _ in launches)
    assert [v.kind for v in report.variants].count("kv_write") == 0


@pytest.mark.skipif(DEVICE == "cuda", reason="runs the command under the interpreter")
def test_precompile_command_head_dim_v(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["precompile", "--num-q-heads", "2", "--num-kv-heads", "2", "--head-dim", "192", "--dtype", "float16"]
    common += ["--max-model-len", "64", "--max-num-batched-tokens", "32", "--max-num-seqs", "1"]
    assert main([*common, "--head-dim-v", "128", "--dry-run"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == ["decode", "prefill"]
    assert main([*common, "--dry-run"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == ["decode", "prefill", "kv_write"]
    assert main([*common, "--head-dim-v", "0", "--dry-run"]) == 2
    assert main([*common, "--layout", "varlen", "--dry-run"]) == 0  # its calls launch no decode or write
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == ["prefill"]
    small = [*common[:6], "64", *common[7:], "--head-dim-v", "32", "--layout", "varlen"]
    assert main(small) == 0
    assert "1 configurations (0 decode, 1 prefill, 0 kv_write), 8 launches" in capsys.readouterr().out
    assert main([*small, "--kv-dtype", "fp8"]) == 2


@pytest.mark.skipif(DEVICE == "cuda", reason="watches interpreter launches")
def test_precompile_varlen_layout_launches_the_mla_prefill_calls(launches: list[tuple[str, dict]]) -> None:
    """The MLA backend's prefill: varlen_attention on contiguous K/V (PAGED off), causal
    without and with the LSE, and a prefix chunk without the causal mask, with the LSE."""
    policy = _mla_policy(64, 32)
    said: list[str] = []
    report = precompile(policy, block_size=16, layout="varlen", echo=said.append)
    attn = [a for k, a in launches if k == "attention"]
    assert attn and not any(a["PAGED"] for a in attn)
    assert {(a["HEAD_DIM"], a["HEAD_DIM_V"]) for a in attn} == {(64, 32)}
    assert {a["v_ptr"].shape[-1] for a in attn} == {32} and {a["out_ptr"].shape[-1] for a in attn} == {32}
    prefill = [a for a in attn if not a["IS_DECODE"]]
    assert {(a["BLOCK_M"], a["TILE_N"]) for a in prefill} == {(policy.prefill.block_m, policy.prefill.tile_n)}
    combos = {(a["CAUSAL"], a["RETURN_LSE"], _int_class(a["num_kv_rows"])) for a in prefill}
    assert combos == {(True, False, "x16"), (True, False, "other"), (True, True, "x16"), (True, True, "other")} | {
        (False, True, "x16"),
        (False, True, "other"),
    }
    assert not any(k == "write_kv" for k, _ in launches)
    # The backend's calls pass decode_query_len=0: no decode launch, so none is warmed.
    assert [v.kind for v in report.variants] == ["prefill"] and all("contiguous K/V" in line for line in said)
    assert not any(a["IS_DECODE"] for a in attn) and not any(k == "merge" for k, _ in launches)
    assert report.calls == 4 * 2  # 4 calls (the combinations above) per token class, 2 classes
    fp8 = ServingPolicy(dataclasses.replace(policy.geometry, kv_dtype="float8_e4m3fn"), policy.limits)
    with pytest.raises(ValueError, match="queries' dtype"):
        precompile(fp8, block_size=16, layout="varlen")
    with pytest.raises(ValueError, match="layout"):
        precompile(policy, block_size=16, layout="contiguous")
