"""Plain-PyTorch fp32 implementations of the public API: the ground truth of every test
and benchmark. Written for clarity, one sequence at a time; never fast.

Semantics shared with the kernels:
- A sequence's query tokens are the last ``q_len`` tokens of its ``seq_len``-token context,
  so query ``i`` sits at absolute position ``seq_len - q_len + i``.
- ``causal``: query at position p sees keys at positions <= p.
- ``sliding_window=W``: query at position p sees keys at positions > p - W (W keys
  including itself when causal); without ``causal`` also keys at positions < p + W.
- ``window_size=(left, right)``: keys at positions in [p - left, p + right]; -1 means no
  bound on that side.
- Logits: ``s = scale * q.k``; then ``softcap * tanh(s / softcap)``; then
  ``+ alibi_slope[h] * (k_pos - q_pos)``.
- ``sinks[h]``: one extra logit per query head that joins the softmax denominator with a
  zero value vector.
- fp8 caches hold ``x / scale``; reading multiplies by ``k_scale`` / ``v_scale``.
- A query row that sees no key gives zeros (and an lse of -inf).
- V may have its own head size (its last dimension); the output has V's head size and the
  default scale stays q's ``head_dim ** -0.5``.
- ``return_lse``: also the natural log-sum-exp of each row's logits (the sink included).
"""

from __future__ import annotations

import torch

__all__ = [
    "attention_ref",
    "merge_attention_states_ref",
    "paged_attention_ref",
    "varlen_attention_ref",
    "write_kv_cache_ref",
]


def _scale_value(scale: float | torch.Tensor | None) -> float:
    if scale is None:
        return 1.0
    if isinstance(scale, torch.Tensor):
        return float(scale.reshape(-1)[0].item())
    return float(scale)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool = True,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    window_size: tuple[int, int] | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One sequence. q [q_len, Hq, D]; k [seq_len, Hkv, D], v [seq_len, Hkv, Dv] (already
    dequantised). Returns fp32 [q_len, Hq, Dv] (and with ``return_lse`` the lse, fp32 [q_len, Hq])."""
    q_len, num_q_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_q_heads // num_kv_heads
    qf = q.float().transpose(0, 1)  # [Hq, q_len, D]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    s = scale * qf @ kf.transpose(1, 2)  # [Hq, q_len, seq_len]
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
    k_pos = torch.arange(seq_len, device=q.device)[None, :]
    if alibi_slopes is not None:
        s = s + alibi_slopes.float()[:, None, None] * (k_pos - q_pos).float()[None]
    visible = torch.ones(q_len, seq_len, dtype=torch.bool, device=q.device)
    if causal:
        visible &= k_pos <= q_pos
    if sliding_window is not None:
        visible &= k_pos > q_pos - sliding_window
        if not causal:
            visible &= k_pos < q_pos + sliding_window
    if window_size is not None:
        left, right = window_size
        if left >= 0:
            visible &= k_pos >= q_pos - left
        if right >= 0:
            visible &= k_pos <= q_pos + right
    s = s.masked_fill(~visible[None], float("-inf"))
    if sinks is not None:
        sink_col = sinks.float()[:, None, None].expand(num_q_heads, q_len, 1)
        s = torch.cat([s, sink_col], dim=-1)
        vf = torch.cat([vf, torch.zeros_like(vf[:, :1])], dim=1)
    if s.shape[-1] == 0:  # no key at all
        out = torch.zeros(q_len, num_q_heads, vf.shape[-1], device=q.device)
        return (out, torch.full((q_len, num_q_heads), float("-inf"), device=q.device)) if return_lse else out
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    denom = p.sum(-1, keepdim=True)
    out = (p @ vf) / torch.where(denom == 0, torch.ones_like(denom), denom)
    out = out.transpose(0, 1).contiguous()
    if return_lse:
        return out, torch.logsumexp(s, -1).transpose(0, 1).contiguous()
    return out


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
    window_size: tuple[int, int] | None = None,
    kv_layout: str = "NHD",
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`triton_attn_kernels.paged_attention`. Returns fp32
    [num_tokens, num_q_heads, head_dim_v] (v_cache's head size); rows of tokens outside
    every sequence are zero (their lse -inf)."""
    if kv_layout == "HND":
        k_cache, v_cache = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    head_dim = q.shape[-1]
    scale = head_dim**-0.5 if scale is None else scale
    ks, vs = _scale_value(k_scale), _scale_value(v_scale)
    block_size = k_cache.shape[1]
    out = torch.zeros(*q.shape[:2], v_cache.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)
    cu = cu_seqlens_q.tolist()
    for i, seq_len in enumerate(seq_lens.tolist()):
        q_lo, q_hi = cu[i], cu[i + 1]
        if q_hi == q_lo:
            continue
        n_blocks = -(-seq_len // block_size)
        blocks = block_table[i, :n_blocks].long()
        k = k_cache[blocks].float().reshape(-1, *k_cache.shape[2:])[:seq_len] * ks
        v = v_cache[blocks].float().reshape(-1, *v_cache.shape[2:])[:seq_len] * vs
        out[q_lo:q_hi], lse[q_lo:q_hi] = attention_ref(
            q[q_lo:q_hi],
            k,
            v,
            scale=scale,
            causal=causal,
            sliding_window=sliding_window,
            softcap=softcap,
            alibi_slopes=alibi_slopes,
            sinks=sinks,
            window_size=window_size,
            return_lse=True,
        )
    return (out, lse) if return_lse else out


def varlen_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    sliding_window: int | None = None,
    softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    window_size: tuple[int, int] | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`triton_attn_kernels.varlen_attention`. Returns fp32
    [total_q, num_q_heads, head_dim_v] (v's head size)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(*q.shape[:2], v.shape[-1], dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(cq) - 1):
        if cq[i + 1] == cq[i]:
            continue
        out[cq[i] : cq[i + 1]], lse[cq[i] : cq[i + 1]] = attention_ref(
            q[cq[i] : cq[i + 1]],
            k[ck[i] : ck[i + 1]],
            v[ck[i] : ck[i + 1]],
            scale=scale,
            causal=causal,
            sliding_window=sliding_window,
            softcap=softcap,
            alibi_slopes=alibi_slopes,
            sinks=sinks,
            window_size=window_size,
            return_lse=True,
        )
    return (out, lse) if return_lse else out


def merge_attention_states_ref(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`triton_attn_kernels.merge_attention_states`: fp32 (out, lse)."""
    lse = torch.logaddexp(lse_a.float(), lse_b.float())
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    wa = torch.exp(lse_a.float() - safe).nan_to_num(0.0)
    wb = torch.exp(lse_b.float() - safe).nan_to_num(0.0)
    a = torch.where(torch.isinf(lse_a)[..., None], torch.zeros_like(out_a.float()), out_a.float())
    b = torch.where(torch.isinf(lse_b)[..., None], torch.zeros_like(out_b.float()), out_b.float())
    return a * wa[..., None] + b * wb[..., None], lse


def write_kv_cache_ref(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: float | torch.Tensor | None = None,
    v_scale: float | torch.Tensor | None = None,
) -> None:
    """Reference of :func:`triton_attn_kernels.write_kv_cache` (in place)."""
    block_size = k_cache.shape[1]
    for cache, src, sc in ((k_cache, key, k_scale), (v_cache, value, v_scale)):
        for tok, slot in enumerate(slot_mapping.tolist()):
            if slot < 0:
                continue
            x = src[tok].float()
            if cache.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                fmax = torch.finfo(cache.dtype).max
                # The fp32 quotient by the fp32 scale, correctly rounded: computed in float64
                # (exact enough that rounding to fp32 is the true quotient's rounding). A
                # plain `x / float` on CUDA multiplies by the reciprocal, one ulp off at
                # times, which moves values across fp8 rounding boundaries.
                scale = torch.tensor(_scale_value(sc), dtype=torch.float32).double()
                x = (x.double() / scale.to(x.device)).float().clamp(-fmax, fmax)
            cache[slot // block_size, slot % block_size] = x.to(cache.dtype)
