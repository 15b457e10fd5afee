"""Builders of random paged batches for the tests: shuffled, non-contiguous block tables,
NHD or HND cache views, fp8 caches, poisoned outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from triton_attn_kernels.testing import tolerance

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass
class PagedBatch:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    extra: dict = field(default_factory=dict)

    def args(self) -> tuple:
        return (self.q, self.k_cache, self.v_cache, self.block_table, self.seq_lens, self.cu_seqlens_q)

    def lens(self) -> dict:
        return dict(max_seqlen_q=self.max_seqlen_q, max_seqlen_k=self.max_seqlen_k)


def make_cache(
    num_blocks: int, block_size: int, heads: int, dim: int, dtype: torch.dtype, layout: str, scale: float = 1.0
) -> torch.Tensor:
    """A cache tensor [num_blocks, block_size, heads, dim] whose memory is NHD or HND."""
    x = torch.randn(num_blocks, block_size, heads, dim, device=DEVICE)
    if dtype in FP8:
        x = (x / scale).to(dtype)
    else:
        x = x.to(dtype)
    if layout == "HND":
        x = x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    return x


def paged_batch(
    q_lens: list[int],
    seq_lens: list[int],
    *,
    num_q_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    head_dim_v: int | None = None,
    block_size: int = 16,
    dtype: torch.dtype = torch.float16,
    kv_dtype: torch.dtype | None = None,
    layout: str = "NHD",
    spare_blocks: int = 3,
    q_padding: int = 0,
) -> PagedBatch:
    assert len(q_lens) == len(seq_lens) and all(q <= s for q, s in zip(q_lens, seq_lens, strict=True))
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    kv_dtype = kv_dtype or dtype
    k = make_cache(num_blocks, block_size, num_kv_heads, head_dim, kv_dtype, layout)
    v = make_cache(num_blocks, block_size, num_kv_heads, head_dim_v or head_dim, kv_dtype, layout)
    perm = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
    width = max([*blocks_per_seq, 1]) + 2
    # Unused table entries hold garbage block ids: the kernel must never follow them.
    table = torch.randint(0, num_blocks, (len(seq_lens), width), dtype=torch.int32, device=DEVICE)
    start = 0
    for i, n in enumerate(blocks_per_seq):
        table[i, :n] = perm[start : start + n]
        start += n
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32, device=DEVICE)
    cu[1:] = torch.tensor(q_lens, device=DEVICE).cumsum(0)
    q = torch.randn(int(sum(q_lens)) + q_padding, num_q_heads, head_dim, device=DEVICE).to(dtype)
    return PagedBatch(
        q=q,
        k_cache=k,
        v_cache=v,
        block_table=table,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        cu_seqlens_q=cu,
        max_seqlen_q=max([*q_lens, 0]),
        max_seqlen_k=max([*seq_lens, 0]),
    )


def poisoned_like(q: torch.Tensor, head_dim: int | None = None) -> torch.Tensor:
    """NaN in q's shape, or with ``head_dim`` as the last dimension (an output of V's size)."""
    if head_dim is None:
        return torch.full_like(q, float("nan"))
    return torch.full((*q.shape[:-1], head_dim), float("nan"), dtype=q.dtype, device=q.device)


def assert_matches(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, rows: int | None = None) -> None:
    rows = ref.shape[0] if rows is None else rows
    got = out[:rows].float()
    assert not torch.isnan(got).any(), "NaN in output (poisoned rows left unwritten?)"
    torch.testing.assert_close(got, ref[:rows], **tolerance(dtype).kwargs())
