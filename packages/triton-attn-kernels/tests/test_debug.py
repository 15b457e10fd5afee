"""The opt-in debug checks catch out-of-range block ids, lengths and slots."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE, paged_batch

from triton_attn_kernels import debug, paged_attention, write_kv_cache


@pytest.fixture
def debug_on(monkeypatch):
    monkeypatch.setenv("TRITON_ATTN_DEBUG", "1")


def test_bad_block_id(debug_on):
    b = paged_batch([1, 2], [20, 30])
    b.block_table[1, 1] = b.k_cache.shape[0]  # one past the last block
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]"):
        paged_attention(*b.args(), **b.lens())


@pytest.mark.parametrize(
    "mutate,msg",
    [
        (lambda b: b.seq_lens.__setitem__(0, 0), r"seq_lens\[0\]=0 must lie"),
        (lambda b: b.cu_seqlens_q.__setitem__(2, 0), "non-decreasing"),
        (lambda b: b.seq_lens.__setitem__(1, 10_000), "max_seqlen_k"),
    ],
)
def test_bad_lengths(debug_on, mutate, msg):
    b = paged_batch([1, 2], [20, 30])
    mutate(b)
    with pytest.raises(ValueError, match=msg):
        paged_attention(*b.args(), **b.lens())


def test_bad_slot(debug_on):
    key = torch.randn(2, 2, 32, device=DEVICE, dtype=torch.float16)
    kc = torch.zeros(2, 16, 2, 32, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"slot_mapping\[1\]=32"):
        write_kv_cache(key, key, kc, kc.clone(), torch.tensor([0, 32], device=DEVICE))


def test_off_by_default(monkeypatch):
    monkeypatch.delenv("TRITON_ATTN_DEBUG", raising=False)
    assert not debug.enabled()
