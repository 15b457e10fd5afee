"""PyTorch FlexAttention over the paged cache, with a block mask built on physical slots.

The cache is seen as one long sequence of ``num_blocks * block_size`` slots; the mask lets a
query see a slot only if the slot belongs to its own sequence and sits at or before its
position. Pages come in runs of 128 tokens (see ``inputs.py``), so the 128x128 block mask
stays sparse. On CUDA the call is ``torch.compile``d (FlexAttention's intended use); on CPU
it runs eagerly, for correctness only.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

from ..inputs import Inputs
from ..registry import Timed, provider
from .common import ATTENTION_OPS, plain_only


@functools.cache
def _compiled() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    # Every case is a new static shape and block mask, so a suite recompiles flex_attention
    # dozens of times; past dynamo's default limit (8) it would silently fall back to the
    # unfused eager path (and run out of memory). Raise the limit for this process.
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 1024))
    return torch.compile(flex_attention, dynamic=False)


def _available() -> str | None:
    from torch.nn.attention import flex_attention  # noqa: F401

    return None


@provider("flex-attention", ops=ATTENTION_OPS, supports=plain_only, available=_available)
def flex(x: Inputs) -> Timed:
    """torch flex_attention with a paged block mask over physical cache slots."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    p = x.problem
    dev = x.device
    bs = p.block_size
    slots = x.k_cache.shape[0] * bs
    slot_seq = torch.full((slots,), -1, dtype=torch.int32)
    slot_pos = torch.zeros((slots,), dtype=torch.int32)
    table = x.block_table.cpu()
    for i, n in enumerate(x.kv_lens):
        pages = table[i, : -(-n // bs)].long()
        s = (pages[:, None] * bs + torch.arange(bs)).flatten()[:n]
        slot_seq[s] = i
        slot_pos[s] = torch.arange(n, dtype=torch.int32)
    q_seq = torch.repeat_interleave(torch.arange(len(x.q_lens), dtype=torch.int32), torch.tensor(x.q_lens))
    q_pos = torch.cat([torch.arange(k - q, k, dtype=torch.int32) for q, k in zip(x.q_lens, x.kv_lens, strict=True)])
    slot_seq, slot_pos, q_seq, q_pos = (t.to(dev) for t in (slot_seq, slot_pos, q_seq, q_pos))

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (slot_seq[kv_idx] == q_seq[q_idx]) & (slot_pos[kv_idx] <= q_pos[q_idx])

    num_tokens = x.q.shape[0]
    block_mask = None
    if dev.type == "cuda":
        try:  # the compiled mask builder avoids materialising [tokens, slots] intermediates
            block_mask = create_block_mask(mask_mod, None, None, num_tokens, slots, device=dev, _compile=True)
        except Exception:  # no _compile switch in this torch, or its compile failed: build eagerly
            block_mask = None
    if block_mask is None:
        block_mask = create_block_mask(mask_mod, None, None, num_tokens, slots, device=dev)
    q = x.q.transpose(0, 1).unsqueeze(0).contiguous()  # [1, Hq, T, D]
    k = x.k_cache.view(1, slots, p.num_kv_heads, p.head_dim).transpose(1, 2)  # [1, Hkv, slots, D], no copy
    v = x.v_cache.view(1, slots, p.num_kv_heads, p.head_dim).transpose(1, 2)
    if dev.type == "cuda":
        attend = _compiled()
    else:  # eager on CPU is the unfused reference path: fine for smoke shapes, say nothing
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        attend = flex_attention
    scale = x.scale

    def fn() -> torch.Tensor:
        return attend(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)

    def read(out: torch.Tensor) -> torch.Tensor:
        return out[0].transpose(0, 1)

    return Timed(fn, read)
