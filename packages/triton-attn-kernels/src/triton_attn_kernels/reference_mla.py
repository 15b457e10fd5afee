"""Plain-PyTorch fp32 references of :func:`triton_attn_kernels.mla_decode` (one sequence at
a time) and :func:`triton_attn_kernels.write_latent_cache`: the ground truth of the MLA tests.

Each cached token holds a latent row ``[c | k_pe]`` (kv_lora_rank + rope_dim values; an fp8
cache holds them divided by ``k_scale``). A sequence's new tokens are the last ``q_len`` of
its ``seq_len``-token context; token i sits at position ``seq_len - q_len + i`` and sees the
keys at positions up to its own. Logits ``scale * (q_nope . c + q_pe . k_pe)``; output
``softmax . c``. A row that sees no key gives zeros and an lse of -inf.
"""

from __future__ import annotations

import torch

__all__ = ["mla_decode_ref", "write_latent_cache_ref"]


def mla_decode_ref(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    scale: float,
    k_scale: float | torch.Tensor | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """fp32 [num_tokens, num_heads, kv_lora_rank] (and with ``return_lse`` the natural-log
    lse, fp32 [num_tokens, num_heads]); rows of tokens outside every sequence are zero."""
    num_tokens, num_heads, rank = q_nope.shape
    block_size = kv_cache.shape[1]
    ks = 1.0
    if kv_cache.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and k_scale is not None:
        ks = float(k_scale.reshape(-1)[0].item()) if isinstance(k_scale, torch.Tensor) else float(k_scale)
    out = torch.zeros(num_tokens, num_heads, rank, dtype=torch.float32, device=q_nope.device)
    lse = torch.full((num_tokens, num_heads), float("-inf"), dtype=torch.float32, device=q_nope.device)
    cu = cu_seqlens_q.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        lo, hi = cu[i], cu[i + 1]
        q_len = hi - lo
        if q_len <= 0:
            continue
        pages = block_table[i, : -(-seq_len // block_size)].long()
        latent = kv_cache[pages].float().reshape(-1, kv_cache.shape[2])[:seq_len] * ks
        c, k_pe = latent[:, :rank], latent[:, rank:]
        s = scale * (
            torch.einsum("thr,kr->htk", q_nope[lo:hi].float(), c)
            + torch.einsum("thp,kp->htk", q_pe[lo:hi].float(), k_pe)
        )
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q_nope.device)
        k_pos = torch.arange(seq_len, device=q_nope.device)
        visible = k_pos[None, :] <= q_pos[:, None]  # [q_len, seq_len]
        s = s.masked_fill(~visible[None], float("-inf"))
        seen = visible.any(1)  # tokens that see at least one key
        p = torch.softmax(s, -1).nan_to_num(0.0)  # rows of -inf only give NaN: zeros instead
        out[lo:hi] = torch.einsum("htk,kr->thr", p, c) * seen[:, None, None]
        lse[lo:hi] = torch.logsumexp(s, -1).transpose(0, 1)
    return (out, lse) if return_lse else out


def write_latent_cache_ref(
    kv_c: torch.Tensor,
    k_pe: torch.Tensor,
    kv_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float | torch.Tensor | None = None,
) -> None:
    """Reference of :func:`triton_attn_kernels.write_latent_cache` (in place)."""
    num_blocks, block_size, _ = kv_cache.shape
    fp8 = kv_cache.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    for tok, slot in enumerate(slot_mapping.tolist()):
        if not 0 <= slot < num_blocks * block_size:
            continue
        x = torch.cat([kv_c[tok].float(), k_pe[tok].float()])
        if fp8:
            fmax = torch.finfo(kv_cache.dtype).max
            ks = float(k_scale.reshape(-1)[0].item()) if isinstance(k_scale, torch.Tensor) else float(k_scale or 1.0)
            # The correctly rounded fp32 quotient (float64 division), as write_kv_cache_ref.
            scale = torch.tensor(ks, dtype=torch.float32).double().to(x.device)
            x = (x.double() / scale).float().clamp(-fmax, fmax)
        kv_cache[slot // block_size, slot % block_size] = x.to(kv_cache.dtype)
