"""fp8 caches on the Gluon Hopper prefill (``_fp8_stage.py``): the staging copy, and the
launcher's route through it.

On any machine: the staging kernel against a plain torch gather-and-dequantise (exact: the
copy rounds ``fp8 * scale`` once into the query's dtype), zeros past each context, block ids
outside the cache clamped, and ``paged_attention`` on an fp8 cache handing the Gluon launch
the staged copy, checked by computing that launch's result from what it was handed against
the fp32 reference on the fp8 cache itself. The Gluon kernel's own numbers on fp8 caches
come from the ``gpu`` test in test_prefill_gluon.py."""

from __future__ import annotations

import os

import pytest
import torch
from batches import DEVICE, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import AttentionConfig, PrefillConfig, _fp8_stage, _gluon, paged_attention
from triton_attn_kernels.compiled import variant_of
from triton_attn_kernels.reference import paged_attention_ref

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def _rounded(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 -> dtype as the kernel's conversion rounds: to nearest even, except fp32 -> bf16
    in Triton's interpreter, which truncates (whatever rounding mode the code asks for)."""
    if dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1":
        return (x.float().contiguous().view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)
    return x.to(dtype)


def _expected(b, k_scale: float, v_scale: float, page: int, dtype: torch.dtype):
    """The staged caches by hand: each sequence's keys in order, scaled, then zeros."""
    pages = -(-max(b.max_seqlen_k, 1) // page)
    block_size = b.k_cache.shape[1]
    shape = (b.seq_lens.shape[0] * pages, page, *b.k_cache.shape[2:])
    k = torch.zeros(shape, dtype=dtype, device=DEVICE)
    v = torch.zeros(shape, dtype=dtype, device=DEVICE)
    for i, n in enumerate(b.seq_lens.tolist()):
        pos = torch.arange(n, device=DEVICE)
        blocks = b.block_table[i, pos // block_size].long()
        rows = (i * pages * page + pos).long()
        k.view(-1, *shape[2:])[rows] = _rounded(b.k_cache[blocks, pos % block_size].float() * k_scale, dtype)
        v.view(-1, *shape[2:])[rows] = _rounded(b.v_cache[blocks, pos % block_size].float() * v_scale, dtype)
    return k, v


def _scales(k_scale: float, v_scale: float):
    return (torch.tensor([k_scale], device=DEVICE), torch.tensor([v_scale], device=DEVICE))


@pytest.mark.parametrize("kv_dtype", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize(("block_size", "page"), [(16, 32), (32, 32), (64, 16)])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_staged_pages_are_the_dequantised_context(kv_dtype, block_size, page, layout):
    # Contexts of 1, page - 1, page, page + 1 and several pages; shuffled source pages of
    # another size than the staging pages; scales that are not powers of two.
    seq_lens = [1, page - 1, page, page + 1, 3 * page + 5]
    b = paged_batch([1, 2, page, 1, 7], seq_lens, num_kv_heads=2, head_dim=32, block_size=block_size,
                    dtype=torch.bfloat16, kv_dtype=kv_dtype, layout=layout)  # fmt: skip
    ks, vs = 0.37, 1.9
    k, v, table = _fp8_stage.stage(b.k_cache, b.v_cache, b.block_table, b.seq_lens, b.cu_seqlens_q, *_scales(ks, vs),
                                   num_seqs=5, max_seqlen_k=b.max_seqlen_k, page=page, dtype=torch.bfloat16)  # fmt: skip
    want_k, want_v = _expected(b, ks, vs, page, torch.bfloat16)
    assert k.dtype == v.dtype == torch.bfloat16 and k.shape == want_k.shape
    torch.testing.assert_close(k, want_k, atol=0, rtol=0)
    torch.testing.assert_close(v, want_v, atol=0, rtol=0)
    pages = want_k.shape[0] // 5
    assert table.dtype == torch.int32 and table.tolist() == [list(range(i * pages, (i + 1) * pages)) for i in range(5)]


def test_block_ids_outside_the_cache_are_clamped():
    # Entries past [0, num_blocks) read some page of this cache (clamped), never beyond it;
    # the sequences with good entries are staged exactly.
    b = paged_batch([3, 4], [40, 20], num_kv_heads=2, head_dim=32, block_size=16, dtype=torch.float16,
                    kv_dtype=torch.float8_e4m3fn, spare_blocks=0)  # fmt: skip
    num_blocks = b.k_cache.shape[0]
    good = b.block_table.clone()
    b.block_table[0, :3] = torch.tensor([num_blocks, -5, 1 << 30], dtype=torch.int32)
    k, _, _ = _fp8_stage.stage(b.k_cache, b.v_cache, b.block_table, b.seq_lens, b.cu_seqlens_q, *_scales(1.0, 1.0),
                               num_seqs=2, max_seqlen_k=40, page=16, dtype=torch.float16)  # fmt: skip
    clamped = b.block_table.clamp(0, num_blocks - 1)
    b.block_table = clamped
    want_k, _ = _expected(b, 1.0, 1.0, 16, torch.float16)
    torch.testing.assert_close(k, want_k, atol=0, rtol=0)
    assert not torch.equal(clamped, good)  # the control: the entries were bad


def test_sequences_the_decode_launch_serves_are_not_staged():
    # skip_q=2: sequences of 1 or 2 new tokens (and of none) are left to the decode launch;
    # their staging pages are not written (here: keep their poison).
    b = paged_batch([1, 5, 2, 0], [30, 30, 30, 30], num_kv_heads=2, head_dim=32, block_size=16,
                    dtype=torch.float16, kv_dtype=torch.float8_e4m3fn)  # fmt: skip
    shape = (4 * 2, 16, 2, 32)
    poison = tuple(torch.full(shape, float("nan"), dtype=torch.float16, device=DEVICE) for _ in range(2))
    k, v, _ = _fp8_stage.stage(b.k_cache, b.v_cache, b.block_table, b.seq_lens, b.cu_seqlens_q, *_scales(1.0, 1.0),
                               num_seqs=4, max_seqlen_k=30, page=16, dtype=torch.float16, skip_q=2, into=poison)  # fmt: skip
    assert k is poison[0] and v is poison[1]
    per_seq = k.shape[0] // 4
    staged = [not torch.isnan(k[i * per_seq : (i + 1) * per_seq]).any().item() for i in range(4)]
    assert staged == [False, True, False, False]
    want_k, _ = _expected(b, 1.0, 1.0, 16, torch.float16)
    torch.testing.assert_close(k[per_seq : 2 * per_seq], want_k[per_seq : 2 * per_seq], atol=0, rtol=0)


def test_staging_bytes_count_both_caches():
    k = torch.empty(3, 16, 8, 128, dtype=torch.float8_e4m3fn)
    # 4 sequences x cdiv(1000, 128) = 8 pages x 128 keys x 8 heads x 128 x 2 bytes, K and V.
    assert _fp8_stage.staging_bytes(4, 1000, k, page=128, elem=2) == 2 * 4 * 8 * 128 * 8 * 128 * 2


GLUON = PrefillConfig(block_m=128, tile_n=64, num_warps=4, num_stages=2, gluon=1)


@pytest.fixture
def gluon_by_reference(monkeypatch):
    """Makes the launcher believe it runs the Gluon prefill, and stands the reference in for
    the kernel: each launch's output is computed from the caches and block table it was
    handed (so a wrong copy, table or scale shows), for the sequences the launch serves."""
    monkeypatch.setattr(_gluon, "interpreting", lambda: False)
    monkeypatch.setattr(_gluon, "available", lambda: True)
    monkeypatch.setattr(_gluon, "_sm90", lambda device: True)
    seen: list[dict] = []

    def by_reference(q, k, v, out, lse, rows, **kw):
        seen.append({"k": k, "v": v, **kw})
        ref = paged_attention_ref(q, k, v, kw["block_table"], kw["seq_lens"], kw["cu_seqlens_q"], scale=kw["scale"],
                                  causal=kw["causal"])  # fmt: skip
        skip = kw["decode_q"] if kw["other_launch"] else 0
        cu = kw["cu_seqlens_q"].tolist()
        for i in range(kw["num_seqs"]):
            if cu[i + 1] - cu[i] > skip:
                out[cu[i] : cu[i + 1]] = ref[cu[i] : cu[i + 1]].to(out.dtype)

    monkeypatch.setattr(_gluon, "launch", by_reference)
    return seen


@pytest.mark.parametrize("kv_dtype", FP8, ids=["e4m3", "e5m2"])
@pytest.mark.parametrize("block_size", [16, 64])
def test_fp8_prefill_reaches_the_gluon_launch_staged(gluon_by_reference, kv_dtype, block_size):
    # A batch of decodes (the decode launch's), a chunk on a prefix, a fresh prefill and an
    # empty sequence, on 16- and 64-token fp8 pages: the Gluon launch gets q's dtype in pages
    # of its tile, and the whole batch matches the reference on the fp8 cache.
    b = paged_batch([1, 40, 70, 0], [90, 100, 70, 9], num_q_heads=4, num_kv_heads=2, head_dim=64,
                    block_size=block_size, dtype=torch.float16, kv_dtype=kv_dtype)  # fmt: skip
    scales = dict(k_scale=0.8, v_scale=1.3)
    out = paged_attention(
        *b.args(), **b.lens(), **scales, out=poisoned_like(b.q), config=AttentionConfig(prefill=GLUON)
    )
    assert_matches(out, paged_attention_ref(*b.args(), **scales), torch.float16)
    (launch,) = gluon_by_reference
    assert launch["k"].dtype == torch.float16 and launch["k"].shape[1] == GLUON.tile_n
    assert launch["other_launch"] == 1


def _runs_the_generic_kernel(gluon_by_reference) -> None:
    b = paged_batch([40], [100], num_q_heads=4, num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.float16,
                    kv_dtype=torch.float8_e4m3fn)  # fmt: skip
    out = paged_attention(*b.args(), **b.lens(), k_scale=1.0, v_scale=1.0, out=poisoned_like(b.q),
                          config=AttentionConfig(prefill=GLUON))  # fmt: skip
    assert_matches(out, paged_attention_ref(*b.args(), k_scale=1.0, v_scale=1.0), torch.float16)
    assert not gluon_by_reference


def test_a_copy_past_the_limit_runs_the_generic_kernel(gluon_by_reference, monkeypatch):
    monkeypatch.setattr(_fp8_stage, "MAX_STAGING_BYTES", 1000)
    _runs_the_generic_kernel(gluon_by_reference)


def test_no_copy_while_a_cuda_graph_records(gluon_by_reference, monkeypatch):
    # A recorded copy would be sized for the capture's contexts, not a replay's: the generic
    # kernel, which reads the cache itself, runs instead.
    import triton_attn_kernels.attention as attention

    monkeypatch.setattr(attention, "_capturing", lambda device: True)
    _runs_the_generic_kernel(gluon_by_reference)


def test_staging_launch_variant_does_not_follow_the_contexts(gluon_by_reference, monkeypatch):
    # What serving sends: prefills of short and of long contexts, alone and after decodes
    # (the prefill launch then reads the index tensors from an offset). One staging variant,
    # and the Gluon launch is handed a staged block table whose row stride follows the
    # longest context, which its kernel therefore must not specialise on either.
    from triton_attn_kernels._kernels.prefill_gluon import prefill_gluon_kernel

    seen: list[tuple] = []
    real = _fp8_stage.launch_kernel

    def record(kernel, grid, *args, **kwargs):
        seen.append(variant_of(kernel, args, kwargs))
        real(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(_fp8_stage, "launch_kernel", record)
    cfg = AttentionConfig(prefill=GLUON)
    strides = set()
    for q_lens, seq_lens in (([40], [50]), ([40, 30], [45, 60]), ([1, 1, 40], [40, 70, 300]), ([1, 30], [33, 1100])):
        b = paged_batch(q_lens, seq_lens, num_kv_heads=2, head_dim=64, block_size=16, dtype=torch.bfloat16,
                        kv_dtype=torch.float8_e4m3fn)  # fmt: skip
        paged_attention(*b.args(), **b.lens(), out=poisoned_like(b.q), config=cfg, k_scale=1.0, v_scale=1.0)
        strides.add(gluon_by_reference[-1]["block_table"].stride(0))
    assert len(seen) == 4 and len(set(seen)) == 1, set(seen)
    assert 1 in strides and len(strides) > 1
    assert "stride_bt_s" in {p.name for p in prefill_gluon_kernel.params if p.do_not_specialize}
