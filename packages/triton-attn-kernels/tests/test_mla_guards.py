"""Memory safety of mla_decode and write_latent_cache whatever the index tensors hold: every
tensor a view inside a poisoned buffer (test_guard_buffers' Guards); after each call no guard
changed, the sequences the bad entry does not concern equal the reference, and the concerned
one's rows are finite (a NaN could only come from a guard). Forked per case on CPU."""

from __future__ import annotations

import pytest
import torch
from batches import DEVICE
from test_guard_buffers import Guards, isolated
from test_mla import mla_batch

from triton_attn_kernels import MLADecodeConfig, mla_decode, mla_workspace_numel, write_latent_cache
from triton_attn_kernels.reference_mla import mla_decode_ref, write_latent_cache_ref

Q_LENS, LENS = [1, 3, 1], [20, 37, 9]
ROWS = [slice(0, 1), slice(1, 4), slice(4, 5)]
CONFIG = MLADecodeConfig(block_h=8, tile_n=16, num_splits=2)

CASES = {
    "block id -1": ({("block_table", 0, 0): -1}, {0}),
    "block id past the cache": ({("block_table", 1, 2): 10_000}, {1}),
    "block id -1 mid-sequence": ({("block_table", 1, 1): -1}, {1}),
    "block id 2^31 - 1": ({("block_table", 2, 0): 2**31 - 1}, {2}),
    "seq_len past the table row": ({("seq_lens", 0): 10_000}, {0}),
    "seq_len negative": ({("seq_lens", 1): -5}, {1}),
    "cu_seqlens_q past the rows": ({("cu_seqlens_q", 3): 1_000}, {2}),
    # Sequence 2 then claims rows 0..4, which overlap every other sequence's.
    "cu_seqlens_q decreasing": ({("cu_seqlens_q", 2): 0}, {0, 1, 2}),
    "cu_seqlens_q negative": ({("cu_seqlens_q", 0): -3}, {0}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mla_decode_stays_inside_its_tensors(case):
    changes, concerned = CASES[case]
    b = mla_batch(Q_LENS, LENS, heads=16)
    ref = mla_decode_ref(*b.args(), scale=b.scale)
    index = {
        "block_table": b.block_table.clone(),
        "seq_lens": b.seq_lens.clone(),
        "cu_seqlens_q": b.cu_seqlens_q.clone(),
    }
    for (name, *at), value in changes.items():
        index[name][tuple(at)] = value

    def call() -> None:
        g = Guards()
        q_nope, q_pe, kv = g.put("q_nope", b.q_nope), g.put("q_pe", b.q_pe), g.put("kv_cache", b.kv_cache)
        idx = {name: g.put(name, t) for name, t in index.items()}
        out = g.put("out", torch.zeros_like(b.q_nope))
        ws = g.put("workspace", torch.zeros(mla_workspace_numel(3, 16, 64, 2, query_len=3), device=DEVICE))
        lse = mla_decode(
            q_nope, q_pe, kv, idx["block_table"], idx["seq_lens"], idx["cu_seqlens_q"], max_seqlen_q=3,
            max_seqlen_k=37, scale=b.scale, out=out, config=CONFIG, workspace=ws, return_lse=True,
        )[1]  # fmt: skip
        g.check()
        for seq, rows in enumerate(ROWS):
            got = out[rows].float()
            if seq in concerned:
                assert torch.isfinite(got).all(), f"NaN in sequence {seq}'s rows: a guard was read"
            else:
                torch.testing.assert_close(got, ref[rows], atol=4e-3, rtol=4e-3)
        assert not torch.isnan(lse).any()

    isolated(call)


@pytest.mark.parametrize("slot", [-1, -2, 64, 2**31 - 1])
def test_write_latent_cache_stays_inside_the_cache(slot):
    kv_c = torch.randn(4, 64, device=DEVICE).half()
    k_pe = torch.randn(4, 16, device=DEVICE).half()
    cache = torch.zeros(4, 16, 80, device=DEVICE).half()
    slots = torch.tensor([3, slot, 17, 40], dtype=torch.int64, device=DEVICE)

    def call() -> None:
        g = Guards()
        c = g.put("kv_cache", cache)
        write_latent_cache(g.put("kv_c", kv_c), g.put("k_pe", k_pe), c, g.put("slot_mapping", slots))
        g.check()
        ref = cache.clone()
        write_latent_cache_ref(kv_c, k_pe, ref, slots)
        assert torch.equal(c, ref)

    isolated(call)
