"""write_kv_cache against the reference: padded slots, layouts, fp8 quantisation."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, FP8, make_cache

from triton_attn_kernels import write_kv_cache
from triton_attn_kernels.reference import write_kv_cache_ref
from triton_attn_kernels.testing import tolerance


def inputs(num_tokens=9, heads=2, dim=32, dtype=torch.float16, slot_dtype=torch.int64, block_size=16, blocks=4):
    key = torch.randn(num_tokens, heads, dim, device=DEVICE).to(dtype)
    value = torch.randn(num_tokens, heads, dim, device=DEVICE).to(dtype)
    slots = torch.randperm(blocks * block_size, device=DEVICE)[:num_tokens].to(slot_dtype)
    slots[1] = -1
    slots[-1] = -1
    return key, value, slots


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_write_exact(dtype, slot_dtype, layout):
    key, value, slots = inputs(dtype=dtype, slot_dtype=slot_dtype)
    kc = make_cache(4, 16, 2, 32, dtype, layout)
    vc = make_cache(4, 16, 2, 32, dtype, layout)
    kr, vr = kc.clone(), vc.clone()
    before = kc.clone(), vc.clone()
    write_kv_cache(key, value, kc, vc, slots)
    write_kv_cache_ref(key, value, kr, vr, slots)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)
    # The padded tokens (slot -1) wrote nothing: every slot that slot_mapping does not name
    # still holds its old contents, whatever the reference does with -1.
    named = torch.zeros(4 * 16, dtype=torch.bool, device=DEVICE)
    named[slots[slots >= 0].long()] = True
    for cache, old in zip((kc, vc), before, strict=True):
        assert torch.equal(cache.reshape(64, 2, 32)[~named], old.reshape(64, 2, 32)[~named])


@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("head_dim", [64, 80])
def test_write_fp8(kv_dtype, head_dim):
    key, value, slots = inputs(dim=head_dim, heads=3)
    key[0, 0, 0] = 1e4  # beyond the format's range: must clamp, not become inf/NaN
    kc = torch.zeros(4, 16, 3, head_dim, device=DEVICE).to(kv_dtype)
    vc = torch.zeros_like(kc)
    kr, vr = kc.clone(), vc.clone()
    write_kv_cache(key, value, kc, vc, slots, k_scale=0.05, v_scale=torch.tensor([0.2], device=DEVICE))
    write_kv_cache_ref(key, value, kr, vr, slots, k_scale=0.05, v_scale=0.2)
    assert torch.isfinite(kc.float()).all()
    # Exact: the kernel rounds to the fp8 grid (nearest even) itself before the cast.
    assert torch.equal(kc.float(), kr.float()) and torch.equal(vc.float(), vr.float())
    assert (kc.float() != 0).sum() > 0


def test_write_then_attend_roundtrip():
    from batches import paged_batch

    from triton_attn_kernels import paged_attention
    from triton_attn_kernels.reference import paged_attention_ref

    b = paged_batch([3, 1], [10, 20])
    key = torch.randn(4, 2, 32, device=DEVICE).to(torch.float16)
    value = torch.randn(4, 2, 32, device=DEVICE).to(torch.float16)
    # Slots of the new tokens: the last positions of each sequence.
    slots = []
    for s, (ql, sl) in enumerate([(3, 10), (1, 20)]):
        for pos in range(sl - ql, sl):
            slots.append(int(b.block_table[s, pos // 16]) * 16 + pos % 16)
    slot_mapping = torch.tensor(slots, device=DEVICE)
    write_kv_cache(key, value, b.k_cache, b.v_cache, slot_mapping)
    out = paged_attention(*b.args(), **b.lens())
    torch.testing.assert_close(out.float(), paged_attention_ref(*b.args()), **tolerance(torch.float16).kwargs())


@pytest.mark.parametrize("kv_dtype", FP8)
def test_fp8_bytes_exhaustive(kv_dtype):
    """Every finite fp8 value, every midpoint between neighbours (ties to even), points just
    off the midpoints, zeros, subnormals, out-of-range values (clamped) and NaN: the written
    bytes equal PyTorch's CPU conversion, the rounding a GPU's own conversion does not
    always match for e5m2."""
    grid = torch.arange(256, dtype=torch.uint8).view(kv_dtype).float()
    grid = grid[torch.isfinite(grid)].unique()  # sorted; -0 and +0 collapse
    mid = (grid[1:] + grid[:-1]) / 2  # exact in fp32
    ulp = torch.finfo(torch.float32).eps * mid.abs().clamp_min(1e-30)
    fmax = torch.finfo(kv_dtype).max
    special = torch.tensor([0.0, -0.0, fmax * 1.01, -fmax * 4, 1e30, float("nan")])
    x = torch.cat([grid, mid, mid + ulp, mid - ulp, special])
    x = torch.cat([x, x.new_zeros(-x.numel() % 64)]).reshape(-1, 1, 64)
    n = x.shape[0]
    slots = torch.arange(n, device=DEVICE) * 16
    kc = torch.zeros(n, 16, 1, 64, dtype=kv_dtype, device=DEVICE)
    vc = torch.zeros_like(kc)
    write_kv_cache(x.to(DEVICE), x.to(DEVICE), kc, vc, slots, k_scale=1.0, v_scale=1.0)
    want = x.clamp(-fmax, fmax).to(kv_dtype)  # CPU conversion, round to nearest even
    got = kc[:, 0].cpu()
    nan = x.isnan()
    assert got.float()[nan].isnan().all()
    assert torch.equal(got.view(torch.uint8)[~nan], want.view(torch.uint8)[~nan])


def test_fp8_quotient_is_the_true_fp32_quotient():
    """0.5625 / fp32(0.3) = 1.87499988 rounds to 1.75 in e5m2; multiplying by the reciprocal
    (what `x / float` does on CUDA) gives 1.875, a tie that rounds to 2.0. Kernel and
    reference must both give 1.75, on every device."""
    x = torch.full((1, 1, 16), 0.5625, dtype=torch.bfloat16, device=DEVICE)
    slots = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    caches = [torch.zeros(1, 16, 1, 16, dtype=torch.float8_e5m2, device=DEVICE) for _ in range(4)]
    write_kv_cache(x, x, caches[0], caches[1], slots, k_scale=0.3, v_scale=torch.tensor(0.3, device=DEVICE))
    write_kv_cache_ref(x, x, caches[2], caches[3], slots, k_scale=0.3, v_scale=0.3)
    assert (x.float() * (1 / torch.tensor(0.3))).to(torch.float8_e5m2).float()[0, 0, 0] == 2.0  # the trap
    for c in caches:
        assert torch.equal(c[0, 0].float(), torch.full((1, 16), 1.75, device=DEVICE))
