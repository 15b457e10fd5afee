"""Our kernels on MLA problems: ``mla_decode`` over the paged latent cache, and the MLA
prefill (q/k head size 192, v head size 128) through ``varlen_attention`` and
``paged_attention``, as ``ours-varlen`` and ``ours-paged`` call them (the plugin's plan)."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from ..inputs import Inputs
from ..registry import Timed, provider
from .ours import _paged, ours_varlen

NO_DV = "unsupported: kernels without dv != dk"


@provider("ours-mla", ops=("mla_decode",), requires=("triton_attn_kernels",))
def ours_mla(x: Inputs) -> Timed:
    """triton_attn_kernels.mla_decode: absorbed-weight MLA decode and verification over the
    paged latent cache, as the default heuristic configures it (the Gluon Hopper kernel where
    it serves, else the Triton one)."""
    from triton_attn_kernels.tuning.mla import mla_decode_heuristic

    return _mla_decode(x, mla_decode_heuristic)


@provider("ours-mla-triton", ops=("mla_decode",), requires=("triton_attn_kernels",))
def ours_mla_triton(x: Inputs) -> Timed:
    """mla_decode on the Triton kernel (mla_triton_config) wherever the Gluon one would serve:
    the comparison for ours-mla on Hopper; elsewhere the same launch as ours-mla."""
    from triton_attn_kernels.tuning.mla import mla_triton_config

    return _mla_decode(x, mla_triton_config)


@provider("ours-mla-v1", ops=("mla_decode",), requires=("triton_attn_kernels",))
def ours_mla_v1(x: Inputs) -> Timed:
    """mla_decode with the previous heuristic's configuration (mla_decode_heuristic_v1: at most
    32 rows a program, mma.sync on Hopper): the Triton kernel's earlier baseline."""
    from triton_attn_kernels.tuning.mla import mla_decode_heuristic_v1

    return _mla_decode(x, mla_decode_heuristic_v1)


def _gluon_serves(p: Any) -> str | None:
    if p.fp8:
        return "no fp8 latent cache on the Gluon MLA decode"
    if p.v_head_dim != 512:
        return f"the Gluon MLA decode serves kv_lora_rank 512, not {p.v_head_dim}"
    return None


@provider(
    "ours-mla-gluon", ops=("mla_decode",), requires=("triton_attn_kernels",), cuda_only=True, supports=_gluon_serves
)
def ours_mla_gluon(x: Inputs) -> Timed:
    """mla_decode on the Gluon Hopper kernel (MLADecodeConfig(gluon=1), mla_gluon_config's
    splits; sm_90 with Triton 3.6.0, kv_lora_rank 512 + rope 64): the QK^T once per 64 rows,
    the 512 output columns over two warpgroups."""
    return _mla_gluon(x, 64, 2)


@provider(
    "ours-mla-gluon-t32s3", ops=("mla_decode",), requires=("triton_attn_kernels",), cuda_only=True,
    supports=_gluon_serves,
)  # fmt: skip
def ours_mla_gluon_t32s3(x: Inputs) -> Timed:
    """ours-mla-gluon with 32-key latent tiles in a ring of 3 (tuning.mla.GLUON_MLA_TILES)."""
    return _mla_gluon(x, 32, 3)


@provider(
    "ours-mla-gluon-t32s4", ops=("mla_decode",), requires=("triton_attn_kernels",), cuda_only=True,
    supports=_gluon_serves,
)  # fmt: skip
def ours_mla_gluon_t32s4(x: Inputs) -> Timed:
    """ours-mla-gluon with 32-key latent tiles in a ring of 4: the same bytes in flight as the
    default's 2 x 64 keys, in finer steps."""
    return _mla_gluon(x, 32, 4)


def _mla_gluon(x: Inputs, tile_n: int, stages: int) -> Timed:
    """The Gluon Hopper MLA decode at this tile, with mla_gluon_config's split count."""
    import dataclasses

    from triton_attn_kernels import _gluon
    from triton_attn_kernels.tuning.mla import mla_gluon_config

    if not (_gluon.available() and torch.cuda.get_device_capability(x.device) == (9, 0)):
        from ..registry import Skip

        raise Skip("the Gluon MLA decode runs on sm_90 with Triton 3.6.0")
    return _mla_decode(x, lambda p: dataclasses.replace(mla_gluon_config(p), tile_n=tile_n, num_stages=stages))


def _mla_decode(x: Inputs, heuristic: Any) -> Timed:
    from triton_attn_kernels import mla_decode, mla_workspace_numel
    from triton_attn_kernels.tuning.mla import MLAProblem

    p = x.problem
    q_nope, q_pe, cache = x.q_nope, x.q_pe, x.latent_cache
    # The configuration and split-KV workspace are chosen here, so that the timed call
    # allocates nothing (as under the plugin's CUDA graphs).
    shape = MLAProblem.from_tensors(
        q_nope, q_pe, cache, num_seqs=p.num_seqs, max_seqlen_q=p.max_seqlen_q, max_seqlen_k=p.max_seqlen_k
    )
    config = heuristic(shape)
    numel = mla_workspace_numel(p.num_seqs, p.num_q_heads, p.v_head_dim, config.num_splits, query_len=p.max_seqlen_q)
    ws = torch.empty(max(numel, 1), dtype=torch.float32, device=x.device)
    scale: dict[str, Any] = {"k_scale": x.k_scale} if p.fp8 else {}
    out = x.new_out()

    def fn() -> Any:
        return mla_decode(
            q_nope,
            q_pe,
            cache,
            x.block_table,
            x.seq_lens,
            x.cu_seqlens_q,
            max_seqlen_q=p.max_seqlen_q,
            max_seqlen_k=p.max_seqlen_k,
            scale=x.scale,
            out=out,
            config=config,
            workspace=ws,
            **scale,
        )

    return Timed(fn)


@functools.cache
def _dv_probe(device_type: str) -> str | None:
    """None where varlen_attention and paged_attention take a V head size other than Q/K's
    (192 and 128, an MLA prefill's), else why not. The probe is an empty batch: the
    arguments are validated and nothing is launched."""
    from triton_attn_kernels import paged_attention, varlen_attention

    dev = torch.device(device_type)
    q = torch.empty(0, 1, 192, dtype=torch.float16, device=dev)
    v = torch.empty(0, 1, 128, dtype=torch.float16, device=dev)
    cu = torch.zeros(1, dtype=torch.int32, device=dev)
    table = torch.zeros(0, 1, dtype=torch.int32, device=dev)
    k_cache = torch.empty(1, 16, 1, 192, dtype=torch.float16, device=dev)
    v_cache = torch.empty(1, 16, 1, 128, dtype=torch.float16, device=dev)
    calls = {
        "varlen_attention": lambda: varlen_attention(q, q, v, cu, cu, max_seqlen_q=0, max_seqlen_k=0),
        "paged_attention": lambda: paged_attention(
            q, k_cache, v_cache, table, cu[:0], cu, max_seqlen_q=0, max_seqlen_k=0
        ),
    }
    for name, call in calls.items():
        try:
            out = call()
        except (TypeError, ValueError) as exc:
            return f"{NO_DV} ({name}: {str(exc).splitlines()[0][:160]})"
        if not isinstance(out, torch.Tensor) or out.shape[-1] != 128:
            return f"{NO_DV} ({name} gave an output of head size {getattr(out, 'shape', ['?'])[-1]}, not 128)"
    return None


def dv_supported() -> str | None:
    """Why our attention cannot run an MLA prefill here (None when it can)."""
    if torch.cuda.is_available():
        return _dv_probe("cuda")
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "needs a GPU, or TRITON_INTERPRET=1 on a CPU"
    return _dv_probe("cpu")


@provider("ours-mla-prefill", ops=("mla_prefill",), requires=("triton_attn_kernels",), available=dv_supported)
def ours_mla_prefill(x: Inputs) -> Timed:
    """triton_attn_kernels.varlen_attention with v heads of 128 and q/k heads of 192 (contiguous K/V, as vLLM's MLA prefill)."""
    return ours_varlen(x)  # the plugin's plan for this geometry, v's head size included


@provider("ours-mla-prefill-paged", ops=("mla_prefill",), requires=("triton_attn_kernels",), available=dv_supported)
def ours_mla_prefill_paged(x: Inputs) -> Timed:
    """triton_attn_kernels.paged_attention with v heads of 128 and q/k heads of 192 (paged K/V)."""
    return _paged(x, prefill=None)
