import pytest
import torch

from attn_bench import registry
from attn_bench.problems import OPS, Problem
from attn_bench.registry import Timed, all_providers, get, provider

EXPECTED = {
    "ours-paged",
    "ours-paged-generic",
    "ours-gluon-decode",
    "ours-tma",
    "ours-gluon",
    "ours-gluon-persistent",
    "ours-gluon-thread-arrives",
    "ours-varlen",
    "ours-kv-write",
    "torch-sdpa",
    "torch-kv-write",
    "flex-attention",
    "vllm-triton",
    "vllm-fa3",
    "vllm-fa3-p16",
    "vllm-kv-write",
    "vllm-triton-kv-write",
    "flash-attn",
    "flashinfer",
    "ours-mla",
    "ours-mla-v1",
    "ours-mla-gluon",
    "ours-mla-gluon-t32s3",
    "ours-mla-gluon-t32s4",
    "ours-mla-triton",
    "ours-mla-prefill",
    "ours-mla-prefill-paged",
    "vllm-triton-mla",
    "vllm-flashmla",
    "vllm-fa3-mla",
    "vllm-fa3-mla-prefill",
}


def test_every_peer_is_registered_with_known_ops():
    provs = all_providers()
    assert {p.name for p in provs} == EXPECTED
    for p in provs:
        assert p.ops and set(p.ops) <= set(OPS)
        assert p.description


def test_missing_or_gpu_only_peers_say_why():
    cpu = torch.device("cpu")
    for p in all_providers():
        why = p.unavailable(cpu)
        assert why is None or (isinstance(why, str) and why)
    assert get("vllm-fa3").unavailable(cpu)  # not installed or needs CUDA: never silently available on CPU
    assert get("ours-paged").unavailable(cpu) is None


def test_unsupported_problems_are_explained():
    fp8 = Problem(op="decode", batch=1, context=64, kv_dtype="float8_e4m3fn")
    assert "fp8" in get("torch-sdpa").unsupported(fp8)
    assert get("ours-paged").unsupported(fp8) is None
    assert "kv_write" in get("ours-paged").unsupported(Problem(op="kv_write", batch=1, context=4, q_len=4))


def test_registration_rejects_duplicates_and_unknown_ops():
    with pytest.raises(ValueError):
        provider("x", ops=("nope",))
    get("ours-paged")  # loads the registry

    def make(x):
        return Timed(lambda: None)

    with pytest.raises(ValueError):
        provider("ours-paged", ops=("decode",))(make)
    with pytest.raises(ValueError):
        get("no-such-provider")
    assert "no-such-provider" not in registry.REGISTRY


def test_list_command_names_every_provider_and_skip_reason(capsys):
    from attn_bench import cli

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out
    if not torch.cuda.is_available():
        assert "SKIPPED" in out  # at least the CUDA-only peers
    for suite in ("decode", "prefill", "mixed", "kv-write", "smoke", "default"):
        assert suite in out


def test_tma_provider_says_why_it_skips():
    tma = get("ours-tma")
    fresh = dict(op="prefill", batch=1, context=256, q_len=256)
    assert "block_size 16" in tma.unsupported(Problem(**fresh))
    assert tma.unsupported(Problem(**fresh, block_size=128)) is None
    assert "window" in tma.unsupported(Problem(**fresh, block_size=128, variant="window=64"))
    assert tma.unsupported(Problem(**fresh, block_size=128, kv_dtype="float8_e4m3fn")) is None
    gluon = get("ours-gluon")
    assert "fp8" in gluon.unsupported(Problem(**fresh, block_size=128, kv_dtype="float8_e4m3fn"))
    assert "128-key tile" in gluon.unsupported(Problem(**fresh, block_size=64))
    assert gluon.unsupported(Problem(**fresh, block_size=128)) is None
    # Head size 256: the policy's 64-key tile (pages of 32 keys hold half of one).
    assert "64-key tile" in gluon.unsupported(Problem(**fresh, block_size=32, head_dim=256))
    assert gluon.unsupported(Problem(**fresh, block_size=64, head_dim=256)) is None
    assert gluon.unsupported(Problem(**fresh, block_size=128, variant="window=64")) is None
    assert "alibi" in gluon.unsupported(Problem(**fresh, block_size=128, variant="alibi"))
    persistent = get("ours-gluon-persistent")
    for p in [Problem(**fresh, block_size=b, head_dim=d, kv_dtype=kv) for b in (16, 32, 64, 128) for d in (128, 256)
              for kv in ("bfloat16", "float8_e4m3fn")]:  # fmt: skip
        assert persistent.unsupported(p) == gluon.unsupported(p)


def test_gluon_persistent_provider_launches_persistent(monkeypatch):
    """The provider's closure hands the launcher a persistent Gluon launch, and only while
    it runs (ours-gluon, timed beside it, keeps the default)."""
    import types

    from attn_bench.providers import ours
    from triton_attn_kernels import _gluon

    seen: list[dict] = []
    monkeypatch.setattr(_gluon, "launch", lambda *a, **kw: seen.append(kw))
    configs: list = []

    def paged(x, *, prefill):
        configs.append(prefill)
        return Timed(lambda: _gluon.launch(config=prefill))

    monkeypatch.setattr(ours, "_paged", paged)
    x = types.SimpleNamespace(problem=types.SimpleNamespace(head_dim=128))
    timed = ours.ours_gluon_persistent(x)
    timed.fn()
    assert seen == [{"config": configs[0], "persistent": True}]
    assert configs[0].gluon == 1 and configs[0].tile_n == 128
    _gluon.launch(config=None)
    assert seen[-1] == {"config": None}
    # The per-thread releases: the policy's launch kind, only that option set.
    ours.ours_gluon_thread_arrives(x).fn()
    assert seen[-1] == {"config": configs[-1], "thread_arrives": True}


def test_generic_provider_keeps_verification_off_the_gluon_decode(monkeypatch):
    """With Gluon pretended to run, ours-paged's plan for a verification step is the Gluon
    decode's configuration and ours-paged-generic's the generic kernel's; so is one-token
    decode over up to 16 sequences, over more it and an fp8 cache are the generic kernel's
    in both."""
    from attn_bench.providers.ours import launch_plan
    from triton_attn_kernels import _device
    from triton_attn_kernels.tuning import policy

    monkeypatch.setattr(policy, "_runs_gluon", lambda device: True)
    monkeypatch.setattr(_device, "interpreting", lambda: False)
    cpu = torch.device("cpu")
    verify = Problem(op="prefill", batch=4, context=4096, q_len=4, block_size=128)
    assert launch_plan(verify, cpu).config.decode.gluon == 1
    assert launch_plan(verify, cpu, hopper_decode=False).config.decode.gluon == 0
    one = Problem(op="decode", batch=4, context=4096, block_size=128)
    assert launch_plan(one, cpu).config.decode.gluon == 1
    assert launch_plan(one, cpu, hopper_decode=False).config.decode.gluon == 0
    many = Problem(op="decode", batch=64, context=4096, block_size=128)
    assert launch_plan(many, cpu).config.decode == launch_plan(many, cpu, hopper_decode=False).config.decode
    assert launch_plan(many, cpu).config.decode.gluon == 0
    fp8 = Problem(op="decode", batch=4, context=4096, block_size=128, kv_dtype="float8_e4m3fn")
    assert launch_plan(fp8, cpu).config.decode == launch_plan(fp8, cpu, hopper_decode=False).config.decode
    assert launch_plan(fp8, cpu).config.decode.gluon == 0


def test_gluon_decode_provider_says_what_it_serves():
    prov = get("ours-gluon-decode")
    ok = Problem(op="decode", batch=1, context=4096, block_size=128)
    assert prov.unsupported(ok) is None
    assert prov.unsupported(Problem(op="prefill", batch=1, context=4096, q_len=16, block_size=64)) is None
    assert "verification" in prov.unsupported(Problem(op="prefill", batch=1, context=4096, q_len=17, block_size=64))
    for bad in (dict(block_size=16), dict(kv_dtype="float8_e4m3fn"), dict(head_dim=256), dict(variant="window=64")):
        assert "Gluon decode serves" in prov.unsupported(Problem(**{**ok.as_dict(), **bad}))


@pytest.mark.parametrize("block_size", [16, 32, 128])
def test_cache_seen_as_smaller_pages_holds_the_same_attention(block_size):
    """vllm-fa3-p16's view of a case's cache: every sequence's keys in the same order, so
    the reference attends the same way over either layout; a page size that does not
    divide the block size is refused."""
    from attn_bench.inputs import make_inputs
    from triton_attn_kernels.reference import paged_attention_ref

    p = Problem(op="prefill", batch=3, context=150, q_len=20, block_size=block_size, num_q_heads=4, num_kv_heads=2,
                head_dim=32)  # fmt: skip
    x = make_inputs(p, "cpu", seed=3)
    k16, v16, table16 = x.pages_of(16)
    assert k16.data_ptr() == x.k_cache.data_ptr() and k16.shape[1] == 16  # a view, no copy
    assert table16.shape == (x.block_table.shape[0], x.block_table.shape[1] * (block_size // 16))
    want = paged_attention_ref(x.q, x.k_cache, x.v_cache, x.block_table, x.seq_lens, x.cu_seqlens_q)
    got = paged_attention_ref(x.q, k16, v16, table16, x.seq_lens, x.cu_seqlens_q)
    assert torch.equal(got, want) and not torch.isnan(got).any()
    with pytest.raises(ValueError, match="page must divide the block size"):
        x.pages_of(24 if block_size != 16 else 32)


def test_fa3_at_default_pages_says_what_it_needs():
    prov = get("vllm-fa3-p16")
    assert "divisible by 16" in prov.unsupported(Problem(op="decode", batch=1, context=64, block_size=8))
    assert prov.unsupported(Problem(op="decode", batch=1, context=64, block_size=128)) is None
    assert "fp8" in prov.unsupported(Problem(op="decode", batch=1, context=64, kv_dtype="float8_e4m3fn"))
