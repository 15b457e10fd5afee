"""Host-side checks that cost nothing (workspace, cache geometry, out and the written caches
sharing memory with inputs, typed configs), and the debug switch: read at every call,
settable from Python, checking fp8 scale tensors and varlen prefix sums too."""

from __future__ import annotations

import pytest
import torch

from triton_attn_kernels import (
    AttentionConfig,
    DecodeConfig,
    KVWriteConfig,
    PrefillConfig,
    debug,
    decode_workspace_numel,
    paged_attention,
    varlen_attention,
    write_kv_cache,
)
from triton_attn_kernels.reference import paged_attention_ref, write_kv_cache_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPLIT = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=3))


@pytest.fixture(autouse=True)
def _debug_follows_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_ATTN_DEBUG", raising=False)
    debug.set_enabled(None)
    yield
    debug.set_enabled(None)


def batch(num_blocks: int = 6, block_size: int = 16, dtype: torch.dtype = torch.float16) -> dict:
    """Two decodes (contexts 20 and 9) on a small paged cache."""
    k = torch.randn(num_blocks, block_size, 2, 32, device=DEVICE).to(dtype)
    return dict(
        q=torch.randn(2, 4, 32, device=DEVICE).half(),
        k_cache=k,
        v_cache=torch.randn_like(k.float()).to(dtype),
        block_table=torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=DEVICE) % max(num_blocks, 1),
        seq_lens=torch.tensor([20, 9], dtype=torch.int32, device=DEVICE),
        cu_seqlens_q=torch.tensor([0, 1, 2], dtype=torch.int32, device=DEVICE),
    )


def call(b: dict, **kw: object) -> torch.Tensor:
    return paged_attention(*b.values(), max_seqlen_q=1, max_seqlen_k=20, **kw)  # type: ignore[arg-type]


def need(num_splits: int = 3) -> int:
    return decode_workspace_numel(2, 4, 32, num_splits)


# ---- workspace ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,exc,msg",
    [
        (lambda: [0.0] * need(), TypeError, r"workspace must be a torch\.Tensor, got list"),
        (lambda: torch.zeros(need() // 2, 2, device=DEVICE), ValueError, "workspace must have 1 dimensions"),
        (lambda: torch.zeros(1, need(), device=DEVICE), ValueError, "workspace must have 1 dimensions"),
        (lambda: torch.zeros(2 * need(), device=DEVICE)[::2], ValueError, "workspace must be contiguous"),
        (lambda: torch.zeros(need(), device=DEVICE, dtype=torch.float16), TypeError, "workspace must have dtype"),
        (lambda: torch.zeros(need() - 1, device=DEVICE), ValueError, "at least 792 elements"),
    ],
    ids=["list", "2d_half", "2d_row", "strided", "fp16", "short"],
)
def test_workspace_rejected(make, exc, msg) -> None:
    with pytest.raises(exc, match=msg):
        call(batch(), config=SPLIT, workspace=make())


def test_workspace_list_rejected_even_without_splits() -> None:
    with pytest.raises(TypeError, match=r"workspace must be a torch\.Tensor"):
        call(batch(), config=AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=1)), workspace=[1.0])


def test_workspace_sharing_memory_with_out_rejected() -> None:
    b = batch()
    b["q"] = b["q"].float()
    b["k_cache"], b["v_cache"] = b["k_cache"].float(), b["v_cache"].float()
    out = torch.empty(need() + 256, device=DEVICE)
    with pytest.raises(ValueError, match="workspace must not share memory with out"):
        call(b, config=SPLIT, out=out[:256].view(2, 4, 32), workspace=out[128 : 128 + need()])


def test_exact_workspace_accepted() -> None:
    b = batch()
    ws = torch.full((need(),), float("nan"), device=DEVICE)
    out = call(b, config=SPLIT, workspace=ws)
    torch.testing.assert_close(out.float(), paged_attention_ref(*b.values()), atol=4e-3, rtol=4e-3)


# ---- cache geometry and out -------------------------------------------------------------------


@pytest.mark.parametrize("num_blocks,block_size", [(0, 16), (6, 0)])
def test_empty_cache_geometry_rejected(num_blocks: int, block_size: int) -> None:
    b = batch(num_blocks=num_blocks, block_size=block_size)
    with pytest.raises(ValueError, match="k_cache must have num_blocks >= 1 and block_size >= 1"):
        call(b)
    key = torch.randn(2, 2, 32, device=DEVICE).half()
    slots = torch.tensor([0, 1], device=DEVICE)
    with pytest.raises(ValueError, match="k_cache must have num_blocks >= 1 and block_size >= 1"):
        write_kv_cache(key, key, b["k_cache"], b["v_cache"], slots)


def test_out_sharing_memory_rejected() -> None:
    b = batch()
    with pytest.raises(ValueError, match="out must not share memory with q"):
        call(b, out=b["q"])
    buf = torch.randn(3, 4, 32, device=DEVICE).half()
    b["q"] = buf[:2]
    with pytest.raises(ValueError, match="out must not share memory with q"):
        call(b, out=buf[1:])  # shifted by one row
    k = b["k_cache"]
    with pytest.raises(ValueError, match="out must not share memory with k_cache"):
        call(b, out=k.view(-1)[: 2 * 4 * 32].view(2, 4, 32))
    with pytest.raises(ValueError, match="out must not share memory with v_cache"):
        call(b, out=b["v_cache"].view(-1)[64 : 64 + 256].view(2, 4, 32))


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.empty(1, 4, 32, device=DEVICE).half().expand(2, 4, 32),  # rows share memory
        lambda: torch.empty(2, 1, 32, device=DEVICE).half().expand(2, 4, 32),  # heads share memory
        lambda: torch.empty(2 * 4 * 32, device=DEVICE).half().as_strided((2, 4, 32), (32, 16, 1)),  # heads overlap
    ],
    ids=["stride0_rows", "stride0_heads", "overlapping_strides"],
)
def test_self_overlapping_out_rejected(make) -> None:
    with pytest.raises(ValueError, match="out must not have overlapping elements"):
        call(batch(), out=make())


def test_varlen_out_sharing_memory_with_k_rejected() -> None:
    q = torch.randn(4, 4, 32, device=DEVICE).half()
    k = torch.randn(8, 4, 32, device=DEVICE).half()
    cu = torch.tensor([0, 4], dtype=torch.int32, device=DEVICE)
    cuk = torch.tensor([0, 8], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="out must not share memory with k"):
        varlen_attention(q, k[:, :2], k[:, 2:], cu, cuk, max_seqlen_q=4, max_seqlen_k=8, out=k[4:])


def test_packed_qkv_views_and_interleaved_caches_accepted() -> None:
    """Read-only tensors may share memory (q/k/v views of one packed qkv; K and V halves of
    one [..., 2 * head_dim] cache allocation); only written tensors may not."""
    qkv = torch.randn(5, 4 + 2 + 2, 32, device=DEVICE).half()
    q, k, v = qkv[:, :4], qkv[:, 4:6], qkv[:, 6:]
    cu = torch.tensor([0, 5], dtype=torch.int32, device=DEVICE)
    out = varlen_attention(q, k, v, cu, cu, max_seqlen_q=5, max_seqlen_k=5)
    assert torch.isfinite(out).all()
    kv = torch.randn(3, 16, 2, 2 * 32, device=DEVICE).half()  # [blocks, slots, heads, K | V]
    kc, vc = kv[..., :32], kv[..., 32:]
    key = torch.randn(3, 2, 32, device=DEVICE).half()
    slots = torch.tensor([0, 17, 40], device=DEVICE)
    k_ref, v_ref = kc.clone(), vc.clone()
    write_kv_cache(key, key * 2, kc, vc, slots)
    write_kv_cache_ref(key, key * 2, k_ref, v_ref, slots)
    assert torch.equal(kc, k_ref) and torch.equal(vc, v_ref)


def test_written_cache_sharing_memory_with_key_rejected() -> None:
    kc = torch.randn(2, 16, 2, 32, device=DEVICE).half()
    vc = torch.randn_like(kc)
    key = kc[0, :3]  # the new tokens live inside the cache they are written to
    slots = torch.tensor([20, 21, 22], device=DEVICE)
    with pytest.raises(ValueError, match="k_cache must not share memory with key"):
        write_kv_cache(key, key.clone(), kc, vc, slots)
    with pytest.raises(ValueError, match="v_cache must not have overlapping elements"):
        write_kv_cache(key.clone(), key.clone(), kc, vc[:1].expand(2, 16, 2, 32), slots)


# ---- typed configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,msg",
    [
        (
            lambda: AttentionConfig(decode={"tile_n": 16}),
            "AttentionConfig.decode must be a DecodeConfig or None, got dict",
        ),
        (lambda: AttentionConfig(prefill=DecodeConfig()), "AttentionConfig.prefill must be a PrefillConfig"),
        (lambda: AttentionConfig(decode=PrefillConfig()), "AttentionConfig.decode must be a DecodeConfig"),
        (lambda: DecodeConfig(tile_n=64.0), "tile_n must be an int, got float"),
        (lambda: DecodeConfig(num_splits=True), "num_splits must be an int, got bool"),
        (lambda: DecodeConfig(num_splits="4"), "num_splits must be an int, got str"),
        (lambda: PrefillConfig(num_stages=2.0), "num_stages must be an int, got float"),
        (lambda: PrefillConfig(prefetch_pages=True), "prefetch_pages must be an int, got bool"),
        (lambda: KVWriteConfig(num_warps=None), "num_warps must be an int, got NoneType"),
    ],
)
def test_config_field_types(make, msg) -> None:
    with pytest.raises(TypeError, match=msg):
        make()


def test_config_values_stay_value_errors() -> None:
    with pytest.raises(ValueError, match="tile_n must be a power of two"):
        DecodeConfig(tile_n=48)
    with pytest.raises(ValueError, match="num_splits must be an int in"):
        DecodeConfig(num_splits=0)


# ---- the debug switch ---------------------------------------------------------------------------


def bad_block() -> dict:
    b = batch()
    b["block_table"][1, 0] = 6  # one past the cache
    return b


def test_debug_env_read_at_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    b = bad_block()
    call(b)  # off: the kernel clamps the page, no error
    monkeypatch.setenv("TRITON_ATTN_DEBUG", "1")
    with pytest.raises(ValueError, match=r"block_table\[1, 0\]=6 .*sequence 1"):
        call(b)
    monkeypatch.setenv("TRITON_ATTN_DEBUG", "0")
    call(b)


def test_debug_set_from_python(monkeypatch: pytest.MonkeyPatch) -> None:
    b = bad_block()
    debug.set_enabled(True)
    assert debug.enabled()
    with pytest.raises(ValueError, match=r"block_table\[1, 0\]"):
        call(b)
    monkeypatch.setenv("TRITON_ATTN_DEBUG", "1")
    debug.set_enabled(False)  # overrides the environment
    call(b)
    debug.set_enabled(None)  # follows it again
    assert debug.enabled()
    with pytest.raises(TypeError, match="set_enabled takes True, False or None"):
        debug.set_enabled("yes")  # type: ignore[arg-type]


def test_debug_context_manager_restores() -> None:
    b = bad_block()
    with debug.checking():
        assert debug.enabled()
        with debug.checking(False):
            call(b)
        with pytest.raises(ValueError, match=r"block_table\[1, 0\]"):
            call(b)
    assert not debug.enabled()
    call(b)


@pytest.mark.parametrize("value", [0.0, -0.5, float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["k_scale", "v_scale"])
def test_debug_checks_fp8_scale_tensors(which: str, value: float) -> None:
    b = batch(dtype=torch.float8_e4m3fn)
    scales = {"k_scale": torch.tensor([0.5], device=DEVICE), "v_scale": torch.tensor([0.5], device=DEVICE)}
    scales[which] = torch.tensor([value], device=DEVICE)
    with debug.checking(), pytest.raises(ValueError, match=rf"{which}=.* \(tensor\) must be a finite number > 0"):
        call(b, **scales)
    key = torch.randn(2, 2, 32, device=DEVICE).half()
    with debug.checking(), pytest.raises(ValueError, match=rf"{which}=.* \(tensor\) must be a finite number > 0"):
        write_kv_cache(key, key, b["k_cache"], b["v_cache"], torch.tensor([0, 1], device=DEVICE), **scales)


def test_debug_checks_pass_a_valid_batch() -> None:
    b = batch()
    with debug.checking():
        out = call(b)
    torch.testing.assert_close(out.float(), paged_attention_ref(*b.values()), atol=4e-3, rtol=4e-3)
