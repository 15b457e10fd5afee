"""The split-KV workspace layout of every decode launcher: one fp32 lse per partial, then
each partial's output row (what ``decode_workspace_numel`` and ``mla_workspace_numel``
count)."""

from __future__ import annotations

import torch

from ._intmath import next_pow2
from ._kernels.attention import merge_kernel
from ._launch import launch_kernel


def partials(
    ws: torch.Tensor | None, need: int, row: int, device: torch.device, unused: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(part_lse, part_out)`` inside ``ws`` (allocated where ``None``) of ``need`` elements,
    output rows of ``row`` floats; ``unused`` for both when ``need`` is 0 (one split: the
    kernel writes the output itself and reads neither)."""
    if not need:
        return unused, unused
    if ws is None:
        ws = torch.empty(need, dtype=torch.float32, device=device)
    n_lse = need // (row + 1)
    return ws[:n_lse], ws[n_lse:need]


# Partials the merge folds in per step: one compiled merge serves every split count.
MERGE_CHUNK = 16


def merge_partials(
    part_lse: torch.Tensor,
    part_out: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    *,
    num_seqs: int,
    decode_q: int,
    splits: int,
    num_warps: int | None = None,
) -> None:
    """``out`` (and ``lse``) of the decode tokens, one row per token and head, from their
    ``splits`` partials (``merge_kernel``); the row width is ``out``'s head size.
    ``num_warps``: ``None`` sizes them for the [MERGE_CHUNK, head size] fp32 tile a step holds."""
    num_heads, head_dim = out.shape[1], out.shape[2]
    block_d = next_pow2(head_dim)
    if num_warps is None:
        num_warps = 4 if MERGE_CHUNK * block_d <= 4096 else 8
    launch_kernel(
        merge_kernel,
        (num_heads, num_seqs, decode_q),
        part_out,
        part_lse,
        cu_seqlens_q,
        out,
        lse if lse is not None else cu_seqlens_q,  # never read without RETURN_LSE
        out.shape[0],
        splits,
        *out.stride(),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        SPLITS_CHUNK=MERGE_CHUNK,
        DECODE_Q=decode_q,
        RETURN_LSE=lse is not None,
        num_warps=num_warps,
    )
