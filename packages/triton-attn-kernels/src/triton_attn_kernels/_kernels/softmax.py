"""Online softmax and split-KV merge, written once and used by every attention kernel.

All logits arrive here in the base-2 domain (already multiplied by log2(e)), so the
exponentials are ``exp2``, which maps to one MUFU instruction on NVIDIA GPUs.
A running maximum of ``-inf`` means "no key seen yet"; every step guards it so that
rows with no visible key end with ``l == 0`` and give zeros, never NaN.
"""

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(
    m_i,  # [BLOCK_M] running max (log2 units)
    l_i,  # [BLOCK_M] running denominator
    acc,  # [BLOCK_M, BLOCK_D] running numerator
    s,  # [BLOCK_M, TILE_N] logits of this tile, -inf where masked; s * scale is in log2 units
    scale,  # > 0 (1.0 where the caller has scaled s already)
):
    """Fold one tile of logits in; return the new state and the tile's probabilities."""
    # scale > 0, so the row maximum of s * scale is the row maximum of s, times scale.
    m_new = tl.maximum(m_i, tl.max(s, 1) * scale)
    # A row that has seen only masked keys keeps m == -inf; subtract 0 instead so that
    # exp2(-inf - (-inf)) never appears.
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s * scale - m_ref[:, None])
    alpha = tl.exp2(m_i - m_ref)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    return m_new, l_i, acc, p


@triton.jit
def softmax_finish(m_i, l_i, acc):
    """Normalise the numerator; return (out, lse) with lse in log2 units (-inf if empty)."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    return out, lse


@triton.jit
def merge_step(
    m,  # [] running maximum of the partials' lse seen so far (log2 units), -inf if none
    total,  # [] running sum of their weights, relative to m
    acc,  # [BLOCK_D] running weighted sum of their outputs, relative to m
    lse,  # [CHUNK] this chunk's per-split log-sum-exp in log2 units, -inf for empty splits
    out,  # [CHUNK, BLOCK_D] this chunk's per-split normalised outputs (0 where empty)
):
    """Fold a chunk of partial results of disjoint key ranges into the running merge state."""
    m_new = tl.maximum(m, tl.max(lse, 0))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_ref)  # 0 while nothing was seen (m == -inf)
    w = tl.exp2(lse - m_ref)
    total = total * alpha + tl.sum(w, 0)
    acc = acc * alpha + tl.sum(out * w[:, None], 0)
    return m_new, total, acc


@triton.jit
def merge_finish(m, total, acc):
    """The merged output row and its lse (log2 units; -inf when no range saw a key)."""
    empty = total == 0.0
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    out = acc / tl.where(empty, 1.0, total)
    return out, tl.where(empty, float("-inf"), m_ref + tl.log2(tl.where(empty, 1.0, total)))


@triton.jit
def merge_splits(
    lse,  # [S] per-split log-sum-exp in log2 units, -inf for empty splits
    out,  # [S, BLOCK_D] per-split normalised output
):
    """Combine normalised partial results of disjoint key ranges into one output row;
    returns (out, lse) with lse in log2 units (-inf when no range saw a key)."""
    m, total, acc = merge_step(
        tl.full([], float("-inf"), tl.float32), tl.zeros([], tl.float32), tl.sum(tl.zeros_like(out), 0), lse, out
    )
    return merge_finish(m, total, acc)
