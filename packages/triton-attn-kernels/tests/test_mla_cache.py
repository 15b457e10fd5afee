"""The write of new latents ``[kv_c | k_pe]`` into the paged MLA cache, against the reference:
bf16/fp16/fp32 and fp8 with a scale (bit-exact), padding and out-of-range slots, strided
views, and a written cache read back by mla_decode."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, FP8

from triton_attn_kernels import debug, mla_decode, write_latent_cache
from triton_attn_kernels.reference_mla import mla_decode_ref, write_latent_cache_ref


def inputs(tokens=7, rank=64, rope=16, blocks=4, block_size=16, dtype=torch.bfloat16, cache_dtype=None, spread=1.0):
    kv_c = (torch.randn(tokens, rank, device=DEVICE) * spread).to(dtype)
    k_pe = (torch.randn(tokens, rope, device=DEVICE) * spread).to(dtype)
    cache = torch.randn(blocks, block_size, rank + rope, device=DEVICE).to(cache_dtype or dtype)
    slots = torch.randperm(blocks * block_size, device=DEVICE)[:tokens].to(torch.int32)
    return kv_c, k_pe, cache, slots


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_write_matches_reference(dtype):
    kv_c, k_pe, cache, slots = inputs(dtype=dtype)
    slots[2] = -1  # padding
    slots[4] = cache.shape[0] * cache.shape[1]  # one past the cache: skipped
    ref = cache.clone()
    write_latent_cache(kv_c, k_pe, cache, slots)
    write_latent_cache_ref(kv_c, k_pe, ref, slots)
    assert torch.equal(cache, ref)
    block, off = divmod(int(slots[0]), cache.shape[1])
    assert torch.equal(cache[block, off, :64], kv_c[0]) and torch.equal(cache[block, off, 64:], k_pe[0])


def near_ties(cache_dtype: torch.dtype, scale: float) -> torch.Tensor:
    """fp32 values whose quotient by ``scale`` rounds to another fp8 value when computed as
    ``x * (1 / scale)`` instead of ``x / scale``: they sit within an ulp of a rounding tie."""
    st = torch.tensor(scale, dtype=torch.float32)
    grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(cache_dtype).float()
    grid = grid[torch.isfinite(grid)].unique().sort().values
    ties = (((grid[1:] + grid[:-1]) / 2).double() * st.double()).float().view(torch.int32)
    x = torch.cat([(ties + d).view(torch.float32) for d in range(-40, 41)])
    fmax = torch.finfo(cache_dtype).max
    exact = (x.double() / st.double()).float().clamp(-fmax, fmax).to(cache_dtype).view(torch.uint8)
    recip = (x * (1 / st)).clamp(-fmax, fmax).to(cache_dtype).view(torch.uint8)
    return x[exact != recip]


@pytest.mark.parametrize("cache_dtype", FP8)
@pytest.mark.parametrize("k_scale", [0.5, 0.3, 0.037])
def test_fp8_write_is_bit_exact(cache_dtype, k_scale):
    # Spread wide enough to hit subnormals, the clamp at the format's maximum and zeros.
    kv_c, k_pe, cache, slots = inputs(tokens=40, blocks=4, cache_dtype=cache_dtype, dtype=torch.float32, spread=30.0)
    kv_c[0, :4] = torch.tensor([0.0, -0.0, 1e-6, 1e6])
    ties = near_ties(cache_dtype, k_scale)[: 39 * 64].to(DEVICE)
    kv_c[1:].view(-1)[: ties.numel()] = ties
    ref = cache.clone()
    write_latent_cache(kv_c, k_pe, cache, slots, k_scale=k_scale)
    write_latent_cache_ref(kv_c, k_pe, ref, slots, k_scale=k_scale)
    assert same_bytes(cache, ref)


def test_strided_views():
    both = torch.randn(9, 2, 96, device=DEVICE).half()  # latents inside a wider projection output
    kv_c, k_pe = both[:, 0, :64], both[:, 1, 16:32]
    pool = torch.zeros(8, 16, 100, device=DEVICE).half()
    cache = pool[1::2, :, 4:84]
    slots = torch.arange(3, 30, 3, device=DEVICE)  # int64
    ref = cache.clone()
    write_latent_cache(kv_c, k_pe, cache, slots)
    write_latent_cache_ref(kv_c, k_pe, ref, slots)
    assert torch.equal(cache, ref)
    assert (pool[0::2] == 0).all() and (pool[1::2, :, :4] == 0).all() and (pool[1::2, :, 84:] == 0).all()


@pytest.mark.parametrize("cache_dtype", [torch.float16, FP8[0]])
def test_written_cache_is_what_mla_decode_reads(cache_dtype):
    """New tokens of two sequences written, then attended: the pair a serving step runs."""
    rank, rope, bs = 64, 16, 16
    cache = torch.zeros(6, bs, rank + rope, device=DEVICE).to(cache_dtype)
    table = torch.tensor([[3, 0, 5], [1, 4, 2]], dtype=torch.int32, device=DEVICE)
    lens = [37, 20]
    slots = torch.cat(
        [
            table[i, torch.arange(n, device=DEVICE) // bs] * bs + torch.arange(n, device=DEVICE) % bs
            for i, n in enumerate(lens)
        ]
    )
    kv_c = torch.randn(sum(lens), rank, device=DEVICE).half()
    k_pe = torch.randn(sum(lens), rope, device=DEVICE).half()
    kw = dict(k_scale=0.25) if cache_dtype in FP8 else {}
    write_latent_cache(kv_c, k_pe, cache, slots, **kw)
    q_nope = torch.randn(2, 16, rank, device=DEVICE).half()
    q_pe = torch.randn(2, 16, rope, device=DEVICE).half()
    args = (q_nope, q_pe, cache, table, torch.tensor(lens, dtype=torch.int32, device=DEVICE))
    cu = torch.tensor([0, 1, 2], dtype=torch.int32, device=DEVICE)
    out = mla_decode(*args, cu, max_seqlen_q=1, max_seqlen_k=37, scale=0.1, **kw)
    ref = mla_decode_ref(*args, cu, scale=0.1, **kw)
    torch.testing.assert_close(out.float(), ref, atol=4e-3, rtol=4e-3)
    # Against attention over the unquantised latents: only fp8 rounding stands between them.
    exact = torch.zeros(6, bs, rank + rope, device=DEVICE)
    write_latent_cache_ref(kv_c, k_pe, exact, slots)
    loose = 0.15 if cache_dtype in FP8 else 4e-3
    torch.testing.assert_close(
        out.float(), mla_decode_ref(*args[:2], exact, *args[3:], cu, scale=0.1), atol=loose, rtol=loose
    )


def _bad():
    def kv_c_ndim(a):
        a[0] = a[0][:, None]

    def pe_dtype(a):
        a[1] = a[1].half()

    def pe_tokens(a):
        a[1] = a[1][:3]

    def cache_dim(a):
        a[2] = a[2][..., :70]

    def cache_dtype(a):
        a[2] = a[2].half()

    def slots_dtype(a):
        a[3] = a[3].float()

    def slots_len(a):
        a[3] = a[3][:2]

    def overlap(a):
        a[0] = a[2][0, :7, :64]

    return [
        (kv_c_ndim, "kv_c", ValueError),
        (pe_dtype, "k_pe", TypeError),
        (pe_tokens, "k_pe", ValueError),
        (cache_dim, "kv_cache", ValueError),
        (cache_dtype, "kv_cache", TypeError),
        (slots_dtype, "slot_mapping", TypeError),
        (slots_len, "slot_mapping", ValueError),
        (overlap, "kv_cache must not share memory", ValueError),
    ]


@pytest.mark.parametrize("mutate,name,exc", _bad(), ids=lambda x: getattr(x, "__name__", None))
def test_bad_inputs_are_refused(mutate, name, exc):
    args = list(inputs())
    mutate(args)
    with pytest.raises(exc, match=name):
        write_latent_cache(*args)


def test_fp8_needs_k_scale_and_debug_names_the_slot():
    kv_c, k_pe, cache, slots = inputs(cache_dtype=FP8[0])
    with pytest.raises(ValueError, match="k_scale is required"):
        write_latent_cache(kv_c, k_pe, cache, slots)
    slots[3] = 10_000
    with debug.checking(), pytest.raises(ValueError, match="slot_mapping"):
        write_latent_cache(kv_c, k_pe, cache, slots, k_scale=1.0)
