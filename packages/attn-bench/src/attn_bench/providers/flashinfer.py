"""FlashInfer's paged wrappers: the decode wrapper for pure decode batches, the prefill
wrapper otherwise. ``plan`` runs at setup; only ``run`` is timed."""

from __future__ import annotations

import torch

from ..inputs import Inputs
from ..registry import Timed, provider
from .common import ATTENTION_OPS, plain_only

_WORKSPACE_BYTES = 256 << 20


@provider("flashinfer", ops=ATTENTION_OPS, requires=("flashinfer",), cuda_only=True, supports=plain_only)
def flashinfer_paged(x: Inputs) -> Timed:
    """flashinfer BatchDecode/BatchPrefillWithPagedKVCacheWrapper (NHD, page size as the suite)."""
    import flashinfer

    p = x.problem
    bs = p.block_size
    pages = [-(-n // bs) for n in x.kv_lens]
    table = x.block_table
    indices = torch.cat([table[i, :n] for i, n in enumerate(pages)]).to(torch.int32)
    indptr = torch.tensor([0, *pages], dtype=torch.int64).cumsum(0).to(torch.int32).to(x.device)
    last = torch.tensor([(n - 1) % bs + 1 for n in x.kv_lens], dtype=torch.int32, device=x.device)
    ws = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=x.device)
    dtype = x.q.dtype
    if p.op == "decode":
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD")
        wrapper.plan(
            indptr, indices, last, p.num_q_heads, p.num_kv_heads, p.head_dim, bs,
            q_data_type=dtype, kv_data_type=x.k_cache.dtype, sm_scale=x.scale,
        )  # fmt: skip
    else:
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
        wrapper.plan(
            x.cu_seqlens_q, indptr, indices, last, p.num_q_heads, p.num_kv_heads, p.head_dim, bs,
            causal=True, q_data_type=dtype, kv_data_type=x.k_cache.dtype, sm_scale=x.scale,
        )  # fmt: skip
    out = x.new_out()
    kv = (x.k_cache, x.v_cache)

    def fn() -> torch.Tensor:
        return wrapper.run(x.q, kv, out=out)

    return Timed(fn)
