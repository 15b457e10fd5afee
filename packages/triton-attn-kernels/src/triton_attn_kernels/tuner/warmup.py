"""Compile ahead what a server will launch: ``python -m triton_attn_kernels.tuner precompile``.

A server's kernel variants are known at start (:class:`~triton_attn_kernels.tuning.ServingPolicy`):
one decode configuration per batch size (or per batch size and context under eager
launches), one prefill configuration per model, the KV-cache write's. :func:`serving_variants`
lists the distinct ones; :func:`precompile` launches each once on a tiny problem, which
leaves the compiled binaries in Triton's on-disk cache (``TRITON_CACHE_DIR``), so that a
server started afterwards on the same machine and software loads them instead of compiling.

A launch hits the cache only with the same specialisation, which besides the configuration
includes how Triton classifies the integer arguments (equal to 1, a multiple of 16, other).
The tiny problems reproduce the classes a server's launches can have: the token count
(padding rows, which no sequence owns, give every class), the block-table width
(``ceil(max_model_len / block_size)``, vLLM's), the cache's block count (``num_blocks`` when
known, else both classes) and the strides of vLLM's tensors (queries, keys and values as
views of one fused projection, the cache as ``[blocks, block_size, kv_heads, head_dim +
head_dim_v]`` split in two).

V may have its own head size (the policy's ``geometry.head_dim_v``: an MLA model's prefill,
128 beside q/k's 192): the tiny problems then build V, the cache's V half and the output with
it, and the KV-cache write is left out (``write_kv_cache`` takes K and V of one head size; an
MLA server writes its latent cache with ``write_latent_cache``).

``layout="varlen"`` launches through ``varlen_attention`` on contiguous K/V instead of the
paged cache, as the vLLM plugin's MLA backend runs its prefill (its keys and values are
up-projected from the latents): the new tokens causal, without and with the log-sum-exp
(the latter when a prefix is cached), and the prefix's chunks without a causal mask, with
it, all with ``decode_query_len=0`` as the backend calls them (no decode launch). Each is its
own compiled variant, and none of them is a paged one.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._intmath import cdiv
from ..compiled import compiled_variants
from ..tuning import AttentionConfig, DecodeConfig, KVWriteConfig, PrefillConfig, select_kv_write_config
from ..tuning.heuristics import GLUON_PERSISTENT_MIN_SEQS
from ..tuning.policy import ServingPolicy

__all__ = ["LAYOUTS", "Features", "PrecompileReport", "Variant", "context_lengths", "precompile", "serving_variants"]

# How the server's attention reads K and V: its paged cache, or contiguous tensors.
LAYOUTS = ("paged", "varlen")


@dataclass(frozen=True)
class Variant:
    """One configuration a server launches.

    kind: "decode", "prefill" or "kv_write".
    uses: decode: the batch sizes the policy gives this configuration; kv_write: the token
    counts; prefill: empty (one configuration serves every batch).
    """

    kind: str
    config: DecodeConfig | PrefillConfig | KVWriteConfig
    uses: tuple[int, ...] = ()


@dataclass(frozen=True)
class Features:
    """The attention features of the model's layers, each its own compiled variant. A model
    whose layers differ (sliding and full layers, say) needs one run per kind of layer."""

    sliding_window: int | None = None
    softcap: float | None = None
    alibi: bool = False
    sinks: bool = False


@dataclass(frozen=True)
class PrecompileReport:
    variants: tuple[Variant, ...]
    calls: int  # launcher calls (a prefill call also starts the decode launch)
    seconds: float
    compiled: dict[str, int]  # compiled_variants() afterwards (0 under the interpreter)


def context_lengths(max_model_len: int) -> list[int]:
    """Context lengths at which an eager decode configuration can change: 1, each power of
    two and the next length, and ``max_model_len``. The heuristic's split count grows with
    ``ceil(L / (2 * tile_n))`` for a power-of-two ``tile_n``, and the policy rounds it up to
    a power of two, so the rounded count changes only just past a power of two of ``L``
    (test_precompile.py checks this against every length)."""
    lengths = {1, max_model_len}
    p = 1
    while p <= max_model_len:
        lengths.update((p, min(p + 1, max_model_len)))
        p *= 2
    return sorted(lengths)


def serving_variants(policy: ServingPolicy, *, layout: str = "paged") -> list[Variant]:
    """The distinct configurations ``policy`` gives any batch up to its limits: decode for
    every batch size 1..max_num_seqs (every context length too without CUDA graphs), the
    prefill configuration, and the KV-cache write for every token count up to the
    chunked-prefill budget (none where V has its own head size: see the module's docstring).
    Decode first, by first batch size; then prefill; then kv_write. ``layout="varlen"``: the
    prefill configuration only (the MLA backend's prefill calls launch nothing else)."""
    lim, g = policy.limits, policy.geometry
    if layout == "varlen":
        return [Variant("prefill", policy.prefill)]
    variants: list[Variant] = []
    if lim.decode_query_len >= 1:
        lengths = [lim.max_model_len] if lim.cuda_graphs else context_lengths(lim.max_model_len)
        by_config: dict[DecodeConfig, list[int]] = {}
        for n in range(1, lim.max_num_seqs + 1):
            for length in lengths:
                uses = by_config.setdefault(policy.decode(n, length), [])
                if not uses or uses[-1] != n:
                    uses.append(n)
        variants += [Variant("decode", c, tuple(uses)) for c, uses in by_config.items()]
    variants.append(Variant("prefill", policy.prefill))
    if g.head_dim_v is not None:
        return variants
    writes: dict[KVWriteConfig, list[int]] = {}
    for t in range(1, lim.max_num_batched_tokens + 1):
        c = select_kv_write_config(
            g.num_kv_heads,
            g.head_dim,
            num_tokens=t,
            dtype=g.dtype,
            kv_dtype=g.kv_dtype,
            device=policy.device,
            interpreter=g.interpreter,
        )
        writes.setdefault(c, []).append(t)
    variants += [Variant("kv_write", c, tuple(uses)) for c, uses in writes.items()]
    return variants


def _token_counts(min_tokens: int, *, one: bool) -> list[int]:
    # One count per integer class Triton tells apart: a multiple of 16, other, and 1.
    aligned = 16 * cdiv(min_tokens, 16)
    other = min_tokens if min_tokens % 16 and min_tokens != 1 else min_tokens + 1
    return ([1] if one else []) + [aligned, other]


def _block_counts(num_blocks: int | None) -> list[int]:
    # Tiny caches in the class of the server's block count; unknown: both classes.
    if num_blocks is None:
        return [16, 17]
    return [1 if num_blocks == 1 else 16 if num_blocks % 16 == 0 else 17]


class _Problem:
    """Tensors shaped and strided like vLLM's for one launch geometry."""

    def __init__(self, policy: ServingPolicy, block_size: int, num_blocks: int, features: Features) -> None:
        g = policy.geometry
        self.g, self.features, self.block_size = g, features, block_size
        self.device = torch.device(policy.device) if policy.device is not None else torch.device("cuda")
        self.dtype, self.kv_dtype = getattr(torch, g.dtype), getattr(torch, g.kv_dtype)
        self.fp8 = self.kv_dtype != self.dtype
        dk, dv = g.head_dim, g.v_head_dim
        cache = torch.zeros(num_blocks, block_size, g.num_kv_heads, dk + dv, device=self.device).to(self.kv_dtype)
        self.k_cache, self.v_cache = cache[..., :dk], cache[..., dk:]
        self.max_blocks = cdiv(policy.limits.max_model_len, block_size)
        self.scale = torch.ones(1, dtype=torch.float32, device=self.device) if self.fp8 else None
        heads = torch.linspace(0.1, 1.0, g.num_q_heads, device=self.device)
        self.alibi = heads if features.alibi else None
        self.sinks = heads if features.sinks else None

    def _qkv(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.g
        qd, kd, vd = g.num_q_heads * g.head_dim, g.num_kv_heads * g.head_dim, g.num_kv_heads * g.v_head_dim
        qkv = torch.randn(num_tokens, qd + kd + vd, device=self.device).to(self.dtype)
        return (
            qkv[:, :qd].view(num_tokens, g.num_q_heads, g.head_dim),
            qkv[:, qd : qd + kd].view(num_tokens, g.num_kv_heads, g.head_dim),
            qkv[:, qd + kd :].view(num_tokens, g.num_kv_heads, g.v_head_dim),
        )

    def _common(self, query_len: int, config: AttentionConfig, decode_query_len: int) -> dict[str, Any]:
        # The keyword arguments both layouts' calls share.
        f = self.features
        return dict(
            max_seqlen_q=query_len,
            max_seqlen_k=query_len,
            sliding_window=f.sliding_window,
            softcap=f.softcap,
            alibi_slopes=self.alibi,
            sinks=self.sinks,
            decode_query_len=decode_query_len,
            config=config,
        )

    def attention(
        self, num_tokens: int, query_len: int, config: AttentionConfig, decode_query_len: int, *, seqs: int = 1
    ) -> int:
        """One ``paged_attention`` call over ``seqs`` sequences of ``query_len`` new tokens
        each (the rest of the ``num_tokens`` rows padding); the number of launcher calls."""
        g = self.g
        q, _, _ = self._qkv(num_tokens)
        out = torch.empty(num_tokens, g.num_q_heads * g.v_head_dim, dtype=self.dtype, device=self.device)
        from .. import paged_attention

        def i32(values: list[Any]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32, device=self.device)

        paged_attention(
            q,
            self.k_cache,
            self.v_cache,
            i32([[0] * self.max_blocks] * seqs),
            i32([query_len] * seqs),
            i32([query_len * i for i in range(seqs + 1)]),
            k_scale=self.scale,
            v_scale=self.scale,
            out=out.view(num_tokens, g.num_q_heads, g.v_head_dim),
            **self._common(query_len, config, decode_query_len),
        )
        return 1

    def varlen(self, num_tokens: int, query_len: int, config: AttentionConfig, decode_query_len: int) -> int:
        """The MLA backend's three prefill calls on contiguous K/V (see the module's
        docstring); the number of launcher calls."""
        g = self.g
        from .. import varlen_attention

        q = torch.randn(num_tokens, g.num_q_heads, g.head_dim, device=self.device).to(self.dtype)
        out = torch.empty(num_tokens, g.num_q_heads, g.v_head_dim, dtype=self.dtype, device=self.device)
        cu_q = torch.tensor([0, query_len], dtype=torch.int32, device=self.device)
        # A prefix chunk holds any number of keys: both integer classes of the key rows.
        calls = [(True, False, num_tokens), (True, True, num_tokens)]
        calls += [(False, True, keys) for keys in _token_counts(query_len, one=False)]
        for causal, lse, keys in calls:
            # K contiguous; V a slice of a wider per-head projection (kv_b_proj's [k_nope | v]).
            k = torch.randn(keys, g.num_kv_heads, g.head_dim, device=self.device).to(self.dtype)
            kv = torch.randn(keys, g.num_kv_heads, g.head_dim + g.v_head_dim, device=self.device).to(self.dtype)
            varlen_attention(
                q,
                k,
                kv[..., g.head_dim :],
                cu_q,
                torch.tensor([0, min(query_len, keys)], dtype=torch.int32, device=self.device),
                causal=causal,
                return_lse=lse,
                out=out,
                **self._common(query_len, config, decode_query_len),
            )
        return len(calls)

    def kv_write(self, num_tokens: int, config: KVWriteConfig) -> None:
        from .. import write_kv_cache

        _, k, v = self._qkv(num_tokens)
        slots = torch.arange(num_tokens, dtype=torch.int64, device=self.device) % (
            self.k_cache.shape[0] * self.block_size
        )
        write_kv_cache(k, v, self.k_cache, self.v_cache, slots, k_scale=self.scale, v_scale=self.scale, config=config)


def precompile(
    policy: ServingPolicy,
    *,
    block_size: int,
    num_blocks: int | None = None,
    features: Features | None = None,
    jobs: int = 0,
    echo: Callable[[str], Any] | None = None,
    layout: str = "paged",
) -> PrecompileReport:
    """Launch every configuration of :func:`serving_variants` once per integer class its
    server launches can have (see the module's docstring), on ``policy.device``.

    block_size: the server's KV-cache page size. num_blocks: the cache's block count if
    known (vLLM logs the cache size at start), else both of Triton's classes are compiled.
    jobs: worker processes that compile side by side (each fills the same on-disk cache);
    0 or 1: in this process. ``compiled`` then counts this process's variants only.
    layout: ``"paged"`` (``paged_attention`` on the cache, and the cache write), or
    ``"varlen"``: ``varlen_attention`` on contiguous K/V in the queries' dtype, as the
    plugin's MLA backend runs its prefill (the module's docstring); no cache, so
    ``block_size`` and ``num_blocks`` play no part and there is no KV-cache write.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    g = policy.geometry
    if layout == "varlen" and g.kv_dtype != g.dtype:
        raise ValueError(f"layout 'varlen' reads K/V in the queries' dtype {g.dtype}, got policy kv_dtype {g.kv_dtype}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if num_blocks is not None and (isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1):
        raise ValueError(f"num_blocks must be None or an int >= 1, got {num_blocks!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise ValueError(f"jobs must be an int >= 0, got {jobs!r}")
    features = features or Features()
    say = echo or (lambda s: None)
    # varlen: the MLA backend's prefill calls pass decode_query_len=0 (its decodes are
    # mla_decode's): one prefill launch each, no attention decode or cache write.
    variants = serving_variants(policy, layout=layout)
    # The decode launch that runs beside a prefill launch: batch 1's, warmed anyway.
    first_decode = next((v.config for v in variants if isinstance(v.config, DecodeConfig)), None)
    t0 = time.perf_counter()
    # Block count 0: no cache.
    work = [(v, blocks) for blocks in (_block_counts(num_blocks) if layout == "paged" else [0]) for v in variants]
    if jobs <= 1:
        calls = _launch(policy, work, first_decode, block_size, features, say)
    else:
        # spawn: a forked child would inherit the parent's CUDA context, which CUDA forbids.
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = [work[i::jobs] for i in range(min(jobs, len(work)))]
            futures = [pool.submit(_launch, policy, part, first_decode, block_size, features, None) for part in parts]
            calls = 0
            for future, part in zip(futures, parts, strict=True):
                calls += future.result()
                for v, blocks in part:
                    say(f"{v.kind:8s} {_describe(v.config)}  ({_where(blocks)})")
    return PrecompileReport(tuple(variants), calls, time.perf_counter() - t0, compiled_variants())


def _launch(
    policy: ServingPolicy,
    work: list[tuple[Variant, int]],
    first_decode: DecodeConfig | None,
    block_size: int,
    features: Features,
    say: Callable[[str], Any] | None,
) -> int:
    """Launch each (variant, block count) of ``work`` (block count 0: the varlen layout);
    the number of launcher calls."""
    dq = policy.limits.decode_query_len
    calls = 0
    problems: dict[int, _Problem] = {}
    for v, blocks in work:
        if blocks not in problems:
            problems[blocks] = _Problem(policy, block_size, blocks, features)
        problem = problems[blocks]
        attend = problem.attention if blocks else problem.varlen
        if v.kind == "decode":
            counts = _token_counts(dq, one=dq == 1 and 1 in v.uses)
            for t in counts:
                calls += attend(t, dq, AttentionConfig(decode=v.config), dq)  # type: ignore[arg-type]
        elif v.kind == "prefill":
            counts = _token_counts(dq + 1, one=False)
            for t in counts:
                dq_call = dq if blocks else 0  # varlen: as the MLA backend calls it
                calls += attend(t, dq + 1, AttentionConfig(decode=first_decode, prefill=v.config), dq_call)  # type: ignore[arg-type]
            if blocks:
                # The prefill launch alone over several sequences (a batch of prefills, or the
                # plugin's prefill call after a mixed batch's decodes): on Hopper its
                # persistent form (tuning.gluon_persistent), a variant of its own.
                seqs = GLUON_PERSISTENT_MIN_SEQS
                calls += problem.attention(counts[0] * seqs, dq + 1, AttentionConfig(prefill=v.config), 0, seqs=seqs)  # type: ignore[arg-type]
        else:
            counts = [v.uses[0]]
            problem.kv_write(v.uses[0], v.config)  # type: ignore[arg-type]
            calls += 1
        if say is not None:
            say(f"{v.kind:8s} {_describe(v.config)}  ({_where(blocks)}, tokens {', '.join(map(str, counts))})")
    for problem in problems.values():
        if problem.device.type == "cuda":
            torch.cuda.synchronize(problem.device)
    return calls


def _where(blocks: int) -> str:
    return f"{blocks} blocks" if blocks else "contiguous K/V"


def _describe(config: Any) -> str:
    return " ".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
