"""Opt-in checks of index tensors' contents (block ids, lengths, slots).

They read tensors on the host, so they synchronise the device: never on by default. Call
them directly, or set ``TRITON_ATTN_DEBUG=1`` to have every ``paged_attention`` /
``write_kv_cache`` call run them first. Each failure is a ValueError naming the argument,
the offending entry and the bound it broke, instead of an illegal memory access or
silently wrong output.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["check_paged_batch", "check_slot_mapping", "enabled"]


@functools.cache
def enabled() -> bool:
    """``TRITON_ATTN_DEBUG=1``, read once per process."""
    return os.environ.get("TRITON_ATTN_DEBUG", "0").strip().lower() in ("1", "true", "on", "yes")


def check_paged_batch(
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    num_tokens: int,
    num_blocks: int,
    block_size: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
) -> None:
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens_q[0] must be 0, got {cu[0]}")
    if cu[-1] > num_tokens:
        raise ValueError(f"cu_seqlens_q[-1]={cu[-1]} exceeds q's {num_tokens} tokens")
    table = block_table.tolist()
    for i, seq_len in enumerate(lens):
        q_len = cu[i + 1] - cu[i]
        if q_len < 0:
            raise ValueError(f"cu_seqlens_q must be non-decreasing, got {cu[i]} then {cu[i + 1]} at sequence {i}")
        if not q_len <= seq_len <= max_seqlen_k:
            raise ValueError(f"seq_lens[{i}]={seq_len} must lie in [new tokens {q_len}, max_seqlen_k {max_seqlen_k}]")
        if q_len > max_seqlen_q:
            raise ValueError(f"sequence {i} has {q_len} new tokens, more than max_seqlen_q={max_seqlen_q}")
        pages = -(-seq_len // block_size)
        if pages > len(table[i]):
            raise ValueError(f"sequence {i} needs {pages} blocks, block_table has {len(table[i])} columns")
        for j, block in enumerate(table[i][:pages]):
            if not 0 <= block < num_blocks:
                raise ValueError(f"block_table[{i}, {j}]={block} is outside the cache's [0, {num_blocks}) blocks")


def check_slot_mapping(slot_mapping: torch.Tensor, *, num_blocks: int, block_size: int) -> None:
    bad = (slot_mapping < -1) | (slot_mapping >= num_blocks * block_size)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"slot_mapping[{i}]={int(slot_mapping[i])} is neither -1 (padding) nor a slot in "
            f"[0, {num_blocks * block_size})"
        )
