"""Plain PyTorch: SDPA on contiguous tensors, and an index_copy_ KV write."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..inputs import Inputs
from ..registry import Timed, provider
from .common import ATTENTION_OPS, plain_only


def _groups(x: Inputs) -> list[tuple[int, int, int, int]]:
    """Runs of sequences with equal (q_len, kv_len): (first seq, count, q_len, kv_len)."""
    out: list[tuple[int, int, int, int]] = []
    for i, (ql, kl) in enumerate(zip(x.q_lens, x.kv_lens, strict=True)):
        if out and out[-1][2:] == (ql, kl):
            s, n, _, _ = out[-1]
            out[-1] = (s, n + 1, ql, kl)
        else:
            out.append((i, 1, ql, kl))
    return out


@provider("torch-sdpa", ops=ATTENTION_OPS, supports=plain_only)
def torch_sdpa(x: Inputs) -> Timed:
    """torch.nn.functional.scaled_dot_product_attention on contiguous [B, H, L, D] tensors (enable_gqa; chunks on a prefix: lower-right causal mask, K/V heads expanded), one call per run of equal-length sequences."""
    from torch.nn.attention.bias import causal_lower_right

    if x.device.type == "cuda" and not torch.backends.cuda.cudnn_sdp_enabled():
        # vLLM's CUDA platform turns cuDNN attention off when it is imported (the vllm-*
        # providers import it). Measure SDPA as PyTorch ships it: on the H100 that off switch
        # made causal prefill 1.7x slower (1 x 8k: 1,707 us instead of 985 us).
        torch.backends.cuda.enable_cudnn_sdp(True)
    p = x.problem
    k_all, v_all = x.contiguous_kv
    cu_q = [0, *torch.tensor(x.q_lens).cumsum(0).tolist()]
    cu_k = [0, *torch.tensor(x.kv_lens).cumsum(0).tolist()]
    calls = []
    for first, n, ql, kl in _groups(x):
        q = x.q[cu_q[first] : cu_q[first + n]].view(n, ql, p.num_q_heads, p.head_dim).transpose(1, 2).contiguous()
        k = k_all[cu_k[first] : cu_k[first + n]].view(n, kl, p.num_kv_heads, p.head_dim).transpose(1, 2).contiguous()
        v = v_all[cu_k[first] : cu_k[first + n]].view(n, kl, p.num_kv_heads, p.head_dim).transpose(1, 2).contiguous()
        gqa = p.num_q_heads != p.num_kv_heads
        if ql == 1:
            mask, causal = None, False  # the one new token sees the whole context
        elif ql == kl:
            mask, causal = None, True
        else:  # queries are the last ql positions: bottom-right aligned causal mask
            mask, causal = causal_lower_right(ql, kl), False
            if gqa:
                # The fused kernels that take this mask have no GQA: give them full heads
                # (copied at setup) rather than send them to the unfused math path.
                group = p.num_q_heads // p.num_kv_heads
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
                gqa = False
        calls.append((q, k, v, mask, causal, gqa))
    scale = x.scale

    def fn() -> list[torch.Tensor]:
        return [
            F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=c, scale=scale, enable_gqa=g)
            for q, k, v, m, c, g in calls
        ]

    def read(outs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([o.transpose(1, 2).reshape(-1, p.num_q_heads, p.head_dim) for o in outs])

    return Timed(fn, read)


@provider("torch-kv-write", ops=("kv_write",))
def torch_kv_write(x: Inputs) -> Timed:
    """index_copy_ of K and V into the flattened caches (fp8: divide, clamp, cast first)."""
    p = x.problem
    kc = x.k_cache.view(-1, p.num_kv_heads, p.head_dim)
    vc = x.v_cache.view(-1, p.num_kv_heads, p.head_dim)
    slots = x.slot_mapping
    if p.fp8:
        fmax = torch.finfo(x.k_cache.dtype).max

        def fn() -> tuple[torch.Tensor, torch.Tensor]:
            kq = (x.key.float() / x.k_scale).clamp(-fmax, fmax).to(kc.dtype)
            vq = (x.value.float() / x.v_scale).clamp(-fmax, fmax).to(vc.dtype)
            # index_copy_ has no fp8 kernel everywhere; copy through a same-size integer view.
            kc.view(torch.uint8).index_copy_(0, slots, kq.view(torch.uint8))
            vc.view(torch.uint8).index_copy_(0, slots, vq.view(torch.uint8))
            return x.k_cache, x.v_cache

    else:

        def fn() -> tuple[torch.Tensor, torch.Tensor]:
            kc.index_copy_(0, slots, x.key)
            vc.index_copy_(0, slots, x.value)
            return x.k_cache, x.v_cache

    return Timed(fn)
