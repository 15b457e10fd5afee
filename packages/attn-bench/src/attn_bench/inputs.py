"""Device tensors for a problem: one paged cache, block table and query batch that every
provider reads (providers build their own layouts from it outside the timed closure).

Pages are handed out in runs of 8 (128 tokens) in a shuffled order: the paged kernels
really gather, while a provider whose mask works on 128-token blocks (FlexAttention)
still sees whole blocks of one sequence.

An MLA decode's cache is the latent cache: ``k_cache`` [num_blocks, block_size, 1, head_dim]
holds one ``[c | k_pe]`` row per token and ``v_cache`` is its view of the first head_dim_v
dims (the same memory), so an fp8 latent has one scale for both (``v_scale`` is
``k_scale``). ``latent_cache`` and ``q_nope``/``q_pe`` are the views ``mla_decode`` takes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

from .problems import Problem

__all__ = ["Inputs", "make_inputs", "torch_dtype"]

PAGE_RUN = 8  # pages handed out together


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class Inputs:
    problem: Problem
    device: torch.device
    q: torch.Tensor  # [num_tokens, Hq, D], problem.dtype
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D], problem.kv_dtype
    v_cache: torch.Tensor  # [num_blocks, block_size, Hkv, Dv] (Dv = problem.v_head_dim)
    block_table: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor  # [num_seqs] int32, whole context
    cu_seqlens_q: torch.Tensor  # [num_seqs + 1] int32
    k_scale: torch.Tensor  # [1] float32 (1.0 unless fp8)
    v_scale: torch.Tensor
    key: torch.Tensor  # kv_write: [num_tokens, Hkv, D] new K (problem.dtype)
    value: torch.Tensor
    slot_mapping: torch.Tensor  # [num_tokens] int64, the new tokens' cache slots
    q_lens: list[int] = field(default_factory=list)
    kv_lens: list[int] = field(default_factory=list)
    # The problem's attention variant (at most one is set).
    window: int | None = None  # a query at p sees keys at positions > p - window
    softcap: float | None = None
    alibi_slopes: torch.Tensor | None = None  # [Hq] float32
    sinks: torch.Tensor | None = None  # [Hq] float32

    @property
    def scale(self) -> float:
        return self.problem.head_dim**-0.5

    def features(self) -> dict[str, Any]:
        """The variant as keyword arguments of triton_attn_kernels / its reference."""
        return {
            "sliding_window": self.window,
            "softcap": self.softcap,
            "alibi_slopes": self.alibi_slopes,
            "sinks": self.sinks,
        }

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.q.shape[0], self.problem.num_q_heads, self.problem.v_head_dim)

    def new_out(self) -> torch.Tensor:
        """An output buffer poisoned with NaN, so an unwritten row fails the check."""
        return torch.full(self.out_shape, float("nan"), dtype=self.q.dtype, device=self.device)

    # -- MLA decode views (no copies) ---------------------------------------------------
    @property
    def latent_cache(self) -> torch.Tensor:
        """[num_blocks, block_size, kv_lora_rank + rope_dim]: one latent row per token."""
        return self.k_cache[:, :, 0]

    @property
    def q_nope(self) -> torch.Tensor:
        """[num_tokens, Hq, kv_lora_rank]: the absorbed non-rotary query."""
        return self.q[..., : self.problem.v_head_dim]

    @property
    def q_pe(self) -> torch.Tensor:
        """[num_tokens, Hq, rope_dim]."""
        return self.q[..., self.problem.v_head_dim :]

    @functools.cached_property
    def cu_seqlens_k(self) -> torch.Tensor:
        lens = torch.tensor([0, *self.kv_lens], dtype=torch.int64).cumsum(0)
        return lens.to(torch.int32).to(self.device)

    @functools.cached_property
    def contiguous_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of every sequence packed into [total_k, Hkv, D] (cache dtype)."""
        bs = self.problem.block_size
        ks, vs = [], []
        for i, n in enumerate(self.kv_lens):
            blocks = self.block_table[i, : _cdiv(n, bs)].long()
            ks.append(self.k_cache[blocks].flatten(0, 1)[:n])
            vs.append(self.v_cache[blocks].flatten(0, 1)[:n])
        return torch.cat(ks).contiguous(), torch.cat(vs).contiguous()

    def pages_of(self, page: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cache as pages of ``page`` tokens (a divisor of the block size): K and V views
        (no copy; page j of block b is block b's slots j * page ...) and the block table
        that names them, for a peer timed at a page size of its own on the same data."""
        bs = self.problem.block_size
        if page <= 0 or bs % page:
            raise ValueError(f"page must divide the block size {bs}, got {page}")
        r = bs // page
        k = self.k_cache.reshape(-1, page, *self.k_cache.shape[2:])
        v = self.v_cache.reshape(-1, page, *self.v_cache.shape[2:])
        parts = torch.arange(r, dtype=torch.int32, device=self.block_table.device)
        table = (self.block_table.unsqueeze(-1) * r + parts).flatten(1).contiguous()
        return k, v, table

    def release(self) -> None:
        self.__dict__.pop("contiguous_kv", None)


def _block_table(kv_lens: list[int], block_size: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    pages = [_cdiv(n, block_size) for n in kv_lens]
    runs = [_cdiv(p, PAGE_RUN) for p in pages]
    order = torch.randperm(sum(runs), generator=gen).tolist()
    width = max(runs) * PAGE_RUN
    table = torch.zeros(len(kv_lens), max(width, 1), dtype=torch.int32)
    at = 0
    for i, r in enumerate(runs):
        for j in range(r):
            first = order[at + j] * PAGE_RUN
            table[i, j * PAGE_RUN : (j + 1) * PAGE_RUN] = torch.arange(first, first + PAGE_RUN, dtype=torch.int32)
        at += r
    return table, sum(runs) * PAGE_RUN


def _random(shape: tuple[int, ...], dtype: torch.dtype, scale: float, device: torch.device) -> torch.Tensor:
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        # Fill in slices: a transient bf16 copy of a 4 GiB cache would double its memory.
        out = torch.empty(shape, dtype=dtype, device=device)
        flat = out.view(shape[0], -1)
        step = max(1, (1 << 26) // max(flat.shape[1], 1))
        for lo in range(0, shape[0], step):
            hi = min(lo + step, shape[0])
            flat[lo:hi] = (torch.randn((hi - lo, flat.shape[1]), device=device) / scale).to(dtype)
        return out
    return torch.randn(shape, dtype=dtype, device=device)


def make_inputs(problem: Problem, device: torch.device | str, *, seed: int = 0) -> Inputs:
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    p = problem
    q_lens = [q for q, _ in p.seqs()]
    kv_lens = [k for _, k in p.seqs()]
    dtype, kv_dtype = torch_dtype(p.dtype), torch_dtype(p.kv_dtype)
    table, num_blocks = _block_table(kv_lens, p.block_size, gen)
    fp8 = p.fp8
    k_scale = torch.tensor([0.25 if fp8 else 1.0], dtype=torch.float32, device=device)
    latent = p.op == "mla_decode"
    v_scale = k_scale if latent else torch.tensor([0.5 if fp8 else 1.0], dtype=torch.float32, device=device)
    cache_shape = (num_blocks, p.block_size, p.num_kv_heads, p.head_dim)
    v_shape = (*cache_shape[:3], p.v_head_dim)
    num_tokens = sum(q_lens)
    if p.op == "kv_write":
        k_cache = torch.zeros(cache_shape, dtype=kv_dtype, device=device)
        v_cache = torch.zeros(cache_shape, dtype=kv_dtype, device=device)
        key = torch.randn((num_tokens, p.num_kv_heads, p.head_dim), dtype=dtype, device=device)
        value = torch.randn((num_tokens, p.num_kv_heads, p.head_dim), dtype=dtype, device=device)
        q = torch.empty((0, p.num_q_heads, p.head_dim), dtype=dtype, device=device)
    else:
        k_cache = _random(cache_shape, kv_dtype, k_scale.item(), device)
        v_cache = k_cache[..., : p.v_head_dim] if latent else _random(v_shape, kv_dtype, v_scale.item(), device)
        key = value = torch.empty(0, dtype=dtype, device=device)
        q = torch.randn((num_tokens, p.num_q_heads, p.head_dim), dtype=dtype, device=device)
    slots = []
    for i, (ql, kl) in enumerate(zip(q_lens, kv_lens, strict=True)):
        pos = torch.arange(kl - ql, kl)
        slots.append(table[i, pos // p.block_size].long() * p.block_size + pos % p.block_size)
    cu = torch.tensor([0, *q_lens], dtype=torch.int64).cumsum(0).to(torch.int32)
    feature, arg = p.variant_arg()
    variant: dict[str, object] = {}
    if feature == "window":
        variant["window"] = int(arg)
    elif feature == "softcap":
        variant["softcap"] = arg
    elif feature == "alibi":  # the ALiBi paper's geometric slopes, 2^(-8 i / H)
        variant["alibi_slopes"] = torch.tensor(
            [2.0 ** (-8.0 * (i + 1) / p.num_q_heads) for i in range(p.num_q_heads)], device=device
        )
    elif feature == "sinks":
        # Values bf16 holds exactly: FA3 takes its sinks in bf16 only, the others in fp32, and
        # every provider (and the reference) should see the same numbers.
        variant["sinks"] = torch.randn(p.num_q_heads, generator=gen).to(torch.bfloat16).float().to(device)
    return Inputs(
        problem=p,
        device=device,
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        block_table=table.to(device),
        seq_lens=torch.tensor(kv_lens, dtype=torch.int32, device=device),
        cu_seqlens_q=cu.to(device),
        k_scale=k_scale,
        v_scale=v_scale,
        key=key,
        value=value,
        slot_mapping=torch.cat(slots).to(device),
        q_lens=q_lens,
        kv_lens=kv_lens,
        **variant,  # type: ignore[arg-type]
    )
