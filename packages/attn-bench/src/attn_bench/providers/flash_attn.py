"""The ``flash_attn`` package (Dao-AILab FlashAttention 2) on contiguous varlen K/V.

Its paged path needs pages of 256 tokens; the suites use 16, so the contiguous
``flash_attn_varlen_func`` is what is measured here.
"""

from __future__ import annotations

import torch

from ..inputs import Inputs
from ..registry import Timed, provider
from .common import ATTENTION_OPS, supports


@provider(
    "flash-attn",
    ops=ATTENTION_OPS,
    requires=("flash_attn",),
    cuda_only=True,
    supports=supports(fp8=False, variants=("window", "softcap", "alibi")),
)
def flash_attn_varlen(x: Inputs) -> Timed:
    """flash_attn.flash_attn_varlen_func on contiguous K/V (bottom-right causal)."""
    from flash_attn import flash_attn_varlen_func

    p = x.problem
    k, v = x.contiguous_kv
    cu_k = x.cu_seqlens_k
    window = (x.window - 1, 0) if x.window else (-1, -1)  # FA: keys in [i - left, i + right]
    softcap = x.softcap or 0.0
    alibi = x.alibi_slopes

    def fn() -> torch.Tensor:
        return flash_attn_varlen_func(
            x.q,
            k,
            v,
            x.cu_seqlens_q,
            cu_k,
            p.max_seqlen_q,
            p.max_seqlen_k,
            softmax_scale=x.scale,
            causal=True,
            window_size=window,
            softcap=softcap,
            alibi_slopes=alibi,
        )

    return Timed(fn)
