"""``merge_attention_states``: two attention results over disjoint key sets into one.

Cascade and prefix-sharing callers attend a shared prefix once and each sequence's own
keys separately, then combine the two with their log-sum-exps (``return_lse=True`` of
:func:`~triton_attn_kernels.paged_attention` / :func:`~triton_attn_kernels.varlen_attention`).
The math is the split-KV decode's merge.
"""

from __future__ import annotations

import torch

from . import _validation as check
from ._intmath import next_pow2
from ._kernels.attention import merge_states_kernel
from ._launch import launch_kernel

__all__ = ["merge_attention_states"]


def merge_attention_states(
    out_a: torch.Tensor,
    lse_a: torch.Tensor,
    out_b: torch.Tensor,
    lse_b: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two disjoint key sets, from each set's result.

    Args:
        out_a, out_b: [num_tokens, num_heads, head_dim], float16 / bfloat16 / float32, one
            dtype; each normalised over its own key set.
        lse_a, lse_b: [num_tokens, num_heads] float32, natural log-sum-exp of each row's
            logits over that key set; ``-inf`` for a row that saw no key (its output row is
            then ignored, whatever it holds).
        out: ``None`` or a tensor shaped like ``out_a`` to write into.

    Returns:
        ``(out, lse)``: out in out_a's dtype, lse float32 [num_tokens, num_heads]
        (``-inf`` where neither side saw a key; out is zero there).
    """
    check.tensor("out_a", out_a, ndim=3, dtypes=check.FLOAT_DTYPES)
    check.tensor("out_b", out_b, ndim=3, dtypes=(out_a.dtype,))
    check.tensor("lse_a", lse_a, ndim=2, dtypes=(torch.float32,))
    check.tensor("lse_b", lse_b, ndim=2, dtypes=(torch.float32,))
    if out_b.shape != out_a.shape:
        raise ValueError(f"out_b must have out_a's shape {tuple(out_a.shape)}, got {tuple(out_b.shape)}")
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.shape != out_a.shape[:2]:
            raise ValueError(
                f"{name} must have shape [num_tokens, num_heads] = {tuple(out_a.shape[:2])}, got {tuple(lse.shape)}"
            )
    check.same_device(out_a.device, out_b=out_b, lse_a=lse_a, lse_b=lse_b, out=out)
    num_tokens, num_heads, head_dim = out_a.shape
    lse_a, lse_b = lse_a.contiguous(), lse_b.contiguous()
    if out is None:
        out = torch.empty_like(out_a)
    else:
        check.tensor("out", out, ndim=3, dtypes=(out_a.dtype,))
        if out.shape != out_a.shape:
            raise ValueError(f"out must have out_a's shape {tuple(out_a.shape)}, got {tuple(out.shape)}")
    lse = torch.empty((num_tokens, num_heads), dtype=torch.float32, device=out_a.device)
    if out.numel() == 0:
        return out, lse
    launch_kernel(
        merge_states_kernel,
        (num_tokens * num_heads,),
        out_a,
        lse_a,
        out_b,
        lse_b,
        out,
        lse,
        num_heads,
        *out_a.stride(),
        *out_b.stride(),
        *out.stride(),
        HEAD_DIM=head_dim,
        BLOCK_D=next_pow2(head_dim),
        num_warps=4,
    )
    return out, lse
