"""Compile at engine start what vLLM's own warm-up leaves to the first real batches.

vLLM warms a model with a prefill of a few tokens per request, one decode step and the
CUDA-graph captures. Triton compiles a kernel variant per distinct specialisation (the
configuration and feature flags, and for integer and pointer arguments that the kernel
does not exempt, whether they equal 1 or are multiples of 16), so batches that warm-up
never formed compile in the middle of serving: a decode at a request count no graph is
captured for (mixed batches launch it outside any graph), a prefill launch beside decodes
or over fewer sequences than the persistent launch takes, a KV-cache write of a token count
whose configuration differs, an MLA prefill on a cached prefix.

Both builders call their warm-up once, at the first CUDA-graph capture (caches allocated,
outside the graph). Each launch is a tiny batch through the builder's own ``build`` (or
plan) and the impl's own forward, on the real cache (read only; writes get slot -1, which
writes nothing) and a block table as wide as vLLM's, so that every specialised argument
falls in the class a real batch gives it. The launches are made twice: first inside
``triton_attn_kernels.compiling()``, where they only compile, the variants side by side on
a thread pool, then for real. Without full CUDA graphs nothing is warmed: the decode
configuration then follows the context length as well. A failure is logged and costs only
the head start.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from triton_attn_kernels import compiled_variants, compiling
from triton_attn_kernels.compiled import default_compile_workers
from triton_attn_kernels.tuning import select_kv_write_config

from .backend import ENCODER_TYPES, StartHostTime, TritonAttentionImpl, logger
from .mla_backend import TritonMLAImpl, TritonMLAPlan, plan_context_chunks

__all__ = ["decode_warm_up_batches", "warm_up_attention", "warm_up_mla"]


def _int_class(value: int) -> int:
    # How Triton specialises an integer argument: equal to 1, a multiple of 16, other.
    return 1 if value == 1 else 16 if value % 16 == 0 else 0


def _token_count_in_class(n: int, most: int, cls: int) -> int | None:
    """A token count in [n, most] of Triton's class ``cls``, or None."""
    if cls == 1:
        return 1 if n == 1 else None
    if cls == 16:
        t = -(-n // 16) * 16
        return t if t <= most else None
    return next((t for t in range(n, min(most, n + 17) + 1) if t != 1 and t % 16), None)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _table(cm: Any, rows: int, *, fabricated: bool = False) -> torch.Tensor:
    # Zeros (block 0) with the width and row stride of vLLM's block table.
    real = cm.block_table_tensor
    table = real.new_empty(rows, real.stride(0)) if fabricated else real.new_zeros(rows, real.stride(0))
    return table[:, : real.shape[1]]


def _layers(vllm_config: Any, layer_names: list[str], impl_type: type) -> list[Any]:
    from vllm.config import get_layers_from_vllm_config

    layers = get_layers_from_vllm_config(vllm_config, torch.nn.Module, layer_names)
    return [x for x in layers.values() if isinstance(getattr(x, "impl", None), impl_type)]


def _cache(layer: Any) -> torch.Tensor | None:
    cache = layer.kv_cache
    cache = cache[0] if isinstance(cache, (list, tuple)) else cache
    return cache if isinstance(cache, torch.Tensor) and cache.numel() else None


def _run(name: str, device: torch.device, warm: Callable[[], int]) -> None:
    """Run ``warm`` (returns its launch count) twice: first inside ``compiling()``, where its
    launches only compile, side by side on a thread pool, then for real (every variant in
    memory by then, so the launches check the compiled set and run); then log what it did
    or why it stopped."""
    t0, before = time.perf_counter(), sum(compiled_variants().values())
    workers = default_compile_workers()
    StartHostTime.paused = True  # the warm-up's own builds and forwards are reported below
    try:
        with compiling(workers=workers):
            warm()
        t1 = time.perf_counter()
        calls = warm()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as e:  # the first real batches compile what is missing
        logger.warning("%s: warm-up stopped (%s: %s); the first batches compile the rest.", name, type(e).__name__, e)
        return
    finally:
        StartHostTime.paused = False
    if calls == 0:  # no layer of this builder's to warm
        return
    logger.info(
        "%s: warm-up made %d launches, %d kernel variants compiled or loaded in %.1f s on %d threads, then run in %.1f s.",
        name,
        calls,
        sum(compiled_variants().values()) - before,
        t1 - t0,
        workers,
        time.perf_counter() - t1,
    )


def _distinct(keys: Callable[[int], list[Any]], sizes: range) -> list[int]:
    """The first size of ``sizes`` to give each distinct key (``keys(size)`` lists a size's)."""
    seen: set[Any] = set()
    first = []
    for n in sizes:
        new = [k for k in keys(n) if k not in seen]
        if new:
            seen.update(new)
            first.append(n)
    return first


# --------------------------------------------------------------------------------------
# The standard backend
# --------------------------------------------------------------------------------------
def warm_up_attention(builder: Any, cm: Any) -> None:
    """The standard builder's warm-up (module docstring): for each kind of layer (window,
    softcap, ALiBi, sinks), the decode launch of every distinct pinned configuration, the
    prefill launch alone and beside a decode over 1 and over 4 sequences (the grid and the
    persistent launch), and the KV-cache write of every distinct configuration up to the
    chunked-prefill budget."""
    if not builder.policy.limits.cuda_graphs or _capturing(builder.device):
        return

    def warm() -> int:
        cached = {id(x): (x, c) for x in _layers(builder.vllm_config, builder.layer_names, TritonAttentionImpl)
                  if (c := _cache(x)) is not None}  # fmt: skip
        kinds = attention_kinds([x for x, _ in cached.values()])
        return sum(_warm_attention_layer(builder, x, cm, cached[id(x)][1]) for x in kinds)

    builder._warming = True
    try:
        _run("Triton attention", builder.device, warm)
    finally:
        builder._warming = False


def attention_kinds(layers: list[Any]) -> list[Any]:
    """One decoder layer with a cache per distinct (window, softcap, ALiBi, sinks)."""
    kinds: dict[tuple, Any] = {}
    for layer in layers:
        impl = layer.impl
        if impl.attn_type not in ENCODER_TYPES:
            kinds.setdefault((impl.sliding_window, impl.softcap, impl.alibi_slopes is None, impl.sinks is None), layer)
    return list(kinds.values())


def _warm_attention_layer(builder: Any, layer: Any, cm: Any, cache: torch.Tensor, *, fabricated: bool = False) -> int:
    """The launches of :func:`warm_up_attention` for one kind of layer, on ``cache``.
    ``fabricated``: for compiling only (``_prewarm``), every device tensor is left
    uninitialised, so that nothing runs on the GPU."""
    policy, device = builder.policy, builder.device
    lim = policy.limits
    dq = lim.decode_query_len
    dtype = getattr(torch, policy.geometry.dtype)

    def dev(values: list[int], dtype: torch.dtype) -> torch.Tensor:
        if fabricated:
            return torch.empty(len(values), dtype=dtype, device=device)
        return torch.tensor(values, dtype=dtype, device=device)

    def filled(shape: tuple[int, ...], dtype: torch.dtype, fill: float) -> torch.Tensor:
        empty = torch.empty(shape, dtype=dtype, device=device)
        return empty if fabricated else empty.fill_(fill)

    # The dtype the cache write reads the cache as (an fp8 cache comes as uint8).
    kv_dtype = layer.impl._caches(cache)[0].dtype
    calls = 0

    def batch(decodes: int, prefills: int, prefill_len: int) -> None:
        # decodes of dq tokens on a context of their own length, then prefills of
        # prefill_len tokens on a short cached prefix.
        q_lens = [dq] * decodes + [prefill_len] * prefills
        seq_lens = [dq] * decodes + [prefill_len + 5] * prefills
        cu_host = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32)
        t, hq, hk, d = int(cu_host[-1]), builder.num_q_heads, builder.num_kv_heads, builder.head_size
        common = SimpleNamespace(
            causal=True,
            num_reqs=len(q_lens),
            num_actual_tokens=t,
            max_query_len=max(q_lens),
            max_seq_len=max(seq_lens),
            query_start_loc_cpu=cu_host,
            query_start_loc=dev(cu_host.tolist(), torch.int32),
            seq_lens=dev(seq_lens, torch.int32),
            block_table_tensor=_table(cm, len(q_lens), fabricated=fabricated),
            slot_mapping=filled((t,), torch.int64, -1),
        )
        md = builder.build(0, common)
        # As vLLM hands them over: views of one projection, the output a fresh buffer.
        qkv = filled((t, (hq + 2 * hk) * d), dtype, 0.5)
        q = qkv[:, : hq * d].view(t, hq, d)
        k = qkv[:, hq * d : (hq + hk) * d].view(t, hk, d)
        v = qkv[:, (hq + hk) * d :].view(t, hk, d)
        out = torch.empty(t, hq, d, dtype=q.dtype, device=device)
        layer.impl.forward(layer, q, k, v, cache, md, out)

    if dq >= 1:
        for n in _distinct(
            lambda n: [_decode_key(policy.decode(n, lim.max_model_len))], range(1, lim.max_num_seqs + 1)
        ):
            batch(n, 0, 0)
            calls += 1
    for decodes, prefills in ((0, 1), (0, 4), (min(dq, 1), 1), (min(dq, 1), 4)):
        batch(decodes, prefills, dq + 16)
        calls += 1
    hq, hk, d = builder.num_q_heads, builder.num_kv_heads, builder.head_size

    def write_config(t: int) -> list[Any]:
        return [select_kv_write_config(hk, d, num_tokens=t, dtype=dtype, kv_dtype=kv_dtype, device=device)]

    for t in _distinct(write_config, range(1, lim.max_num_batched_tokens + 1)):
        qkv = filled((t, (hq + 2 * hk) * d), dtype, 0.0)
        k, v = qkv[:, hq * d : (hq + hk) * d].view(t, hk, d), qkv[:, (hq + hk) * d :].view(t, hk, d)
        layer.impl.do_kv_cache_update(layer, k, v, cache, filled((t,), torch.int64, -1))
        calls += 1
    return calls


def _decode_key(config: Any) -> tuple:
    # The split count is a plain argument of the decode kernel; whether it splits is not.
    return dataclasses.replace(config, num_splits=1), config.num_splits > 1


# --------------------------------------------------------------------------------------
# The MLA backend
# --------------------------------------------------------------------------------------
def decode_warm_up_batches(builder: Any) -> list[tuple[int, int]]:
    """(decodes, tokens) batches whose launches between them compile every MLA decode
    variant that 1..max_num_seqs decodes of 1..reorder_batch_threshold new tokens each can
    launch under full CUDA graphs: one per distinct (pinned configuration, its split
    count's integer class, the token count's class)."""
    seen: set[tuple[Any, ...]] = set()
    batches = []
    dq = builder.reorder_batch_threshold
    for n in range(1, builder.max_num_seqs + 1):
        config = builder._config(n, dq, builder.max_model_len)
        for cls in (1, 16, 0):
            t = _token_count_in_class(n, n * dq, cls)
            key = (dataclasses.replace(config, num_splits=1), _int_class(config.num_splits), cls)
            if t is not None and key not in seen:
                seen.add(key)
                batches.append((n, t))
    return batches


def warm_up_mla(builder: Any, cm: Any) -> None:
    """The MLA builder's warm-up (module docstring): the decode of
    :func:`decode_warm_up_batches`, and the prefill of new tokens (both classes of their
    count) on no prefix and on prefixes cut into chunks of every class of key count
    (16 + 16 + 1, 17 + 1), so that the log-sum-exp forms and the chained merges run too."""
    if not getattr(builder, "cuda_graphs", False) or _capturing(builder.device):
        return

    def warm() -> int:
        layer = next(iter(_layers(builder._vllm_config, builder._layer_names, TritonMLAImpl)), None)
        cache = None if layer is None else _cache(layer)
        if layer is None or cache is None:
            raise RuntimeError("no MLA layer with a KV cache to warm up on")
        return _warm_mla_decodes(builder, layer, cache, cm) + _warm_mla_prefills(builder, layer, cache, cm)

    _run("Triton MLA", builder.device, warm)


def _warm_mla_decodes(builder: Any, layer: Any, cache: torch.Tensor, cm: Any) -> int:
    impl, device = layer.impl, builder.device
    rank, rope, heads = builder.kv_lora_rank, builder.rope_dim, builder.num_heads
    calls = 0
    for n, t in decode_warm_up_batches(builder):
        # The layer's decode queries: the absorbed q_nope as a transposed bmm output, q_pe a
        # slice of the projected query.
        q_nope = torch.randn(heads, t, rank, dtype=builder._dtype, device=device).transpose(0, 1)
        q_pe = torch.randn(t, heads, impl.qk_nope_head_dim + rope, dtype=builder._dtype, device=device)[..., -rope:]
        q_lens = np.full(n, t // n, dtype=np.int64)
        q_lens[: t % n] += 1
        cu_host = torch.from_numpy(np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32))
        cu = cu_host.to(device)
        md = SimpleNamespace(num_decodes=n, num_prefills=0, plan=None)
        common = SimpleNamespace(
            num_reqs=n, query_start_loc=cu, query_start_loc_cpu=cu_host, max_seq_len=int(q_lens.max())
        )
        md.plan = builder._plan(common, md)
        seq_lens = torch.from_numpy(q_lens.astype(np.int32)).to(device)
        md.decode = SimpleNamespace(block_table=_table(cm, n), seq_lens=seq_lens)
        impl.forward_mqa((q_nope, q_pe), cache, md, layer)
        calls += 1
    return calls


def _warm_mla_prefills(builder: Any, layer: Any, cache: torch.Tensor, cm: Any) -> int:
    impl, device, dtype = layer.impl, builder.device, builder._dtype
    heads = builder.num_heads
    qk = impl.qk_nope_head_dim + impl.qk_rope_head_dim
    calls = 0
    for t in (16, 17):
        for context, chunk_keys in ((0, 16), (33, 16), (18, 17)):
            q = torch.randn(t, heads, qk, dtype=dtype, device=device)
            kv_c = torch.randn(t, builder.kv_lora_rank, dtype=dtype, device=device)
            k_pe = torch.randn(t, 1, impl.qk_rope_head_dim, dtype=dtype, device=device)
            out = torch.empty(t, heads * impl.v_head_dim, dtype=dtype, device=device)
            cu = torch.tensor([0, t], dtype=torch.int32, device=device)
            chunks = plan_context_chunks(
                np.array([context]), _table(cm, 1), block_size=builder.page_size, max_keys=chunk_keys
            )
            plan = TritonMLAPlan(None, 0, context + t, None, None, t, chunks)
            md = SimpleNamespace(prefill=SimpleNamespace(query_start_loc=cu), plan=plan)
            impl.forward_mha(q, kv_c, k_pe, cache, md, layer._k_scale, out)
            calls += 1
    return calls
