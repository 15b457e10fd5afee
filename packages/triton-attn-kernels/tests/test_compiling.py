"""``compiling()``: launches inside it compile their variants and run nothing; the same
launches afterwards run without compiling again."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, assert_matches, paged_batch, poisoned_like

from triton_attn_kernels import (
    AttentionConfig,
    DecodeConfig,
    compiling,
    merge_attention_states,
    paged_attention,
    write_kv_cache,
)
from triton_attn_kernels.compiled import compiled_keys
from triton_attn_kernels.reference import paged_attention_ref


def _batch(head_dim: int = 32):
    # A split decode (attention + merge) and a prefill row in one call.
    return paged_batch([1, 1, 9], [40, 70, 9], head_dim=head_dim, dtype=torch.float16)


def _calls(b, out, head_dim: int = 32):
    cfg = AttentionConfig(decode=DecodeConfig(tile_n=16, num_splits=3))
    paged_attention(*b.args(), **b.lens(), out=out, config=cfg)
    slots = torch.tensor([3, 17, 30], dtype=torch.int64, device=DEVICE)
    kv = torch.randn(3, b.k_cache.shape[2], head_dim, device=DEVICE).half()
    write_kv_cache(kv, kv, b.k_cache, b.v_cache, slots)


def test_launches_inside_run_nothing():
    b = _batch()
    k_before, v_before = b.k_cache.clone(), b.v_cache.clone()
    out = poisoned_like(b.q)
    with compiling() as submitted:
        _calls(b, out)
        a = torch.randn(4, 2, 32, device=DEVICE).half()
        lse = torch.randn(4, 2, device=DEVICE)
        merged = torch.full_like(a, float("nan"))
        merge_attention_states(a, lse, a, lse, out=merged)
    assert out.isnan().all() and merged.isnan().all()
    assert torch.equal(b.k_cache, k_before) and torch.equal(b.v_cache, v_before)
    # One entry per launch: attention (decodes split in 3), the splits' merge, the write, the
    # merge of two states.
    assert sorted(set(submitted)) == ["attention_kernel", "merge_kernel", "merge_states_kernel", "write_kv_kernel"]
    assert submitted.count("write_kv_kernel") == 1
    # Outside, the same calls run (the reference first: the write changes the cache).
    ref = paged_attention_ref(*b.args())
    _calls(b, out)
    assert not torch.equal(b.k_cache, k_before)
    assert_matches(out, ref, torch.float16)


def test_not_nested():
    with compiling(), pytest.raises(RuntimeError, match="already active"), compiling():
        pass
    # The outer one ended cleanly: a launch now runs again.
    b = _batch()
    out = poisoned_like(b.q)
    _calls(b, out)
    assert not out.isnan().any()


@pytest.mark.gpu
@pytest.mark.parametrize(("workers", "head_dim"), [(1, 96), (4, 80)])
def test_compiled_variants_serve_the_launches(workers, head_dim):
    # Head sizes and a 3-way split of 16-key tiles that nothing else in the suite forms.
    b = _batch(head_dim=head_dim)
    before = compiled_keys()
    with compiling(workers=workers):
        _calls(b, poisoned_like(b.q), head_dim=head_dim)
    after_compile = compiled_keys()
    for kernel in ("attention", "merge", "write_kv"):
        assert len(after_compile[kernel]) > len(before[kernel]), kernel
    out = poisoned_like(b.q)
    ref = paged_attention_ref(*b.args())
    _calls(b, out, head_dim=head_dim)
    torch.cuda.synchronize()
    assert compiled_keys() == after_compile
    assert_matches(out, ref, torch.float16)


def test_default_workers_follow_the_cpus_this_process_may_use(monkeypatch):
    from triton_attn_kernels import compiled

    for cpus, workers in ((1, 1), (3, 3), (64, 8)):
        monkeypatch.setattr(compiled.os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        assert compiled.default_compile_workers() == workers
