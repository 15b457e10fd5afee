"""Opt-in checks of index tensors' contents (block ids, lengths, slots) and fp8 scale tensors.

The default mode never reads device tensors on the host: every kernel bounds the addresses
it forms by the tensors it was given, so wrong index contents give a defined but useless
result for the sequence or token concerned (see each launcher's docstring). These checks
read the tensors on the host, so they synchronise the device: never on by default. Turn them
on with ``TRITON_ATTN_DEBUG=1`` (read at every call), :func:`set_enabled` or
:func:`checking`; then every ``paged_attention`` / ``varlen_attention`` /
``write_kv_cache`` call runs them first. Each failure is a ValueError naming the argument,
the sequence (or token) and the entry, and the bound it broke.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator

import torch

from .tuning import envs

__all__ = [
    "check_fp8_scales",
    "check_paged_batch",
    "check_slot_mapping",
    "check_varlen_batch",
    "checking",
    "enabled",
    "set_enabled",
]

_override: bool | None = None


def enabled() -> bool:
    """Whether launches run the checks: :func:`set_enabled`'s value if one is set, else
    ``TRITON_ATTN_DEBUG`` as it is now."""
    return envs.debug_requested() if _override is None else _override


def set_enabled(on: bool | None) -> None:
    """``True``/``False`` force the checks on/off for the whole process; ``None`` follows
    ``TRITON_ATTN_DEBUG`` again."""
    global _override
    if on is not None and not isinstance(on, bool):
        raise TypeError(f"set_enabled takes True, False or None, got {type(on).__name__}")
    _override = on


@contextlib.contextmanager
def checking(on: bool = True) -> Iterator[None]:
    """``with debug.checking(): ...`` runs the block with the checks on (or off), then
    restores the previous setting."""
    previous = _override
    set_enabled(on)
    try:
        yield
    finally:
        set_enabled(previous)


def _cu_seqlens(name: str, cu: list[int], total: int, what: str, *, first_zero: bool) -> None:
    """Prefix sums: ``cu[0]`` is 0 (or at least >= 0), non-decreasing, ``cu[-1] <= total``."""
    if first_zero and cu[0] != 0:
        raise ValueError(f"{name}[0]={cu[0]} must be 0: sequence 0 starts at {what}'s first row")
    if cu[0] < 0:
        raise ValueError(f"{name}[0]={cu[0]} is negative: sequence 0 starts before {what}'s first row")
    for i in range(len(cu) - 1):
        if cu[i + 1] < cu[i]:
            raise ValueError(
                f"{name} must be non-decreasing: {name}[{i}]={cu[i]} then {name}[{i + 1}]={cu[i + 1]} "
                f"gives sequence {i} a negative length"
            )
        if cu[i + 1] > total:
            raise ValueError(f"{name}[{i + 1}]={cu[i + 1]}: sequence {i} ends past {what}'s {total} rows")


def _query_lengths(cu: list[int], max_seqlen_q: int) -> list[int]:
    lens = [b - a for a, b in itertools.pairwise(cu)]
    for i, q_len in enumerate(lens):
        if q_len > max_seqlen_q:
            raise ValueError(
                f"max_seqlen_q={max_seqlen_q} is less than sequence {i}'s {q_len} new tokens "
                f"(cu_seqlens_q[{i}]={cu[i]}, cu_seqlens_q[{i + 1}]={cu[i + 1]})"
            )
    return lens


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
    """The contents of :func:`~triton_attn_kernels.paged_attention`'s index tensors."""
    cu = cu_seqlens_q.tolist()
    _cu_seqlens("cu_seqlens_q", cu, num_tokens, "q", first_zero=True)
    q_lens = _query_lengths(cu, max_seqlen_q)
    lens = seq_lens.tolist()
    table = block_table.tolist()
    width = block_table.shape[1]
    for i, (q_len, seq_len) in enumerate(zip(q_lens, lens, strict=True)):
        if not q_len <= seq_len <= max_seqlen_k:
            raise ValueError(
                f"seq_lens[{i}]={seq_len} must lie in [new tokens {q_len}, max_seqlen_k {max_seqlen_k}] (sequence {i})"
            )
        pages = -(-seq_len // block_size)
        if pages > width:
            raise ValueError(
                f"seq_lens[{i}]={seq_len} needs {pages} blocks of {block_size}, but block_table has "
                f"{width} columns (sequence {i})"
            )
        for j, block in enumerate(table[i][:pages]):
            if not 0 <= block < num_blocks:
                raise ValueError(
                    f"block_table[{i}, {j}]={block} is outside the cache's [0, {num_blocks}) blocks "
                    f"(sequence {i}, keys {j * block_size}..{min(seq_len, (j + 1) * block_size) - 1})"
                )


def check_varlen_batch(
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    num_tokens: int,
    num_keys: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
) -> None:
    """The contents of :func:`~triton_attn_kernels.varlen_attention`'s prefix sums."""
    cu = cu_seqlens_q.tolist()
    _cu_seqlens("cu_seqlens_q", cu, num_tokens, "q", first_zero=True)
    _query_lengths(cu, max_seqlen_q)
    cuk = cu_seqlens_k.tolist()
    # Keys of sequence i are rows cu_seqlens_k[i]:cu_seqlens_k[i+1] of k; they need not start at 0.
    _cu_seqlens("cu_seqlens_k", cuk, num_keys, "k", first_zero=False)
    for i in range(len(cuk) - 1):
        k_len = cuk[i + 1] - cuk[i]
        if k_len > max_seqlen_k:
            raise ValueError(
                f"max_seqlen_k={max_seqlen_k} is less than sequence {i}'s {k_len} keys "
                f"(cu_seqlens_k[{i}]={cuk[i]}, cu_seqlens_k[{i + 1}]={cuk[i + 1]})"
            )


def check_slot_mapping(slot_mapping: torch.Tensor, *, num_blocks: int, block_size: int) -> None:
    """Every entry of :func:`~triton_attn_kernels.write_kv_cache`'s ``slot_mapping`` is -1
    (padding) or a slot of the cache."""
    slots = num_blocks * block_size
    bad = (slot_mapping < -1) | (slot_mapping >= slots)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"slot_mapping[{i}]={int(slot_mapping[i])} (token {i}) is neither -1 (padding) nor a slot in "
            f"[0, {slots}) ({num_blocks} blocks of {block_size})"
        )


def check_fp8_scales(**scales: float | torch.Tensor | None) -> None:
    """Tensor fp8 scales are finite and > 0 (float scales are checked at every call, tensor
    scales only here: reading them synchronises the device)."""
    for name, scale in scales.items():
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            value = float(scale.reshape(-1)[0])
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} (tensor) must be a finite number > 0")
