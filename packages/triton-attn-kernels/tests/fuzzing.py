"""Seeded random cases of the public kernels on large shapes, for test_fuzz.py:
``paged_attention``, ``varlen_attention`` and ``write_kv_cache`` against
``triton_attn_kernels.reference``.

Each case draws its batch from its own seed: contexts up to 32k, batches up to 256, GQA ratios
1-8, head dims 64/128/256, fp16/bf16, fp8 KV (e4m3/e5m2), sliding window, softcap, ALiBi,
sinks, non-causal, shuffled block tables with garbage beyond each sequence's blocks, HND cache
views, q rows past ``cu_seqlens_q[-1]`` (must stay untouched), sequences with no new tokens,
padded slots (-1), packed-qkv views, random split-KV configs. The reference is per-sequence
PyTorch, so each case checks a few sampled sequences, and of a long prefill chunk a window of
rows: rows ``[a, a+r)`` of a chunk of ``q`` tokens on an ``L``-token context are exactly the
last ``r`` queries of the ``L - q + a + r``-token prefix (causal), which the reference computes
alone. ``SPECIALS`` are fixed large cases: 1024 sequences in one batch, a cache of more than
2^31 elements whose last block (the maximum block index) is read and written, a 131072-token
context. ``SMALL`` limits shrink every draw to what Triton's interpreter runs in seconds.
"""

from __future__ import annotations

import math
import random
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from triton_attn_kernels import AttentionConfig, DecodeConfig, paged_attention, varlen_attention, write_kv_cache
from triton_attn_kernels.reference import varlen_attention_ref, write_kv_cache_ref
from triton_attn_kernels.testing import compare, paged_rows_ref, tolerance

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass(frozen=True)
class Limits:
    """Shape bounds of the random draws (--small: for Triton's interpreter on CPU)."""

    max_context: int = 32768
    max_batch: int = 256
    head_dims: tuple[int, ...] = (64, 128, 256)
    kv_heads: tuple[int, ...] = (1, 2, 4, 8)
    groups: tuple[int, ...] = (1, 2, 4, 8)
    block_sizes: tuple[int, ...] = (16, 32, 64)
    max_chunk: int = 2048  # new tokens of one prefill chunk
    max_kv_bytes: int = 6 << 30  # K + V cache of one case
    max_q_tokens: int = 32768
    ref_seqs: int = 4  # sequences checked against the reference per case
    ref_rows: int = 128  # rows of a long prefill chunk checked
    big_batch: int = 1024
    long_context: int = 131072
    big_cache: bool = True  # the > 2^31-element cache case


SMALL = Limits(
    max_context=80,
    max_batch=5,
    head_dims=(32, 64),
    kv_heads=(1, 2),
    groups=(1, 2, 4),
    block_sizes=(16, 32),
    max_chunk=24,
    max_kv_bytes=1 << 24,
    max_q_tokens=64,
    ref_seqs=3,
    ref_rows=8,
    big_batch=24,
    long_context=300,
    big_cache=False,
)


@dataclass
class Outcome:
    seed: int
    kind: str
    desc: dict
    status: str = "passed"  # passed | mismatch | refused | oom | error
    detail: str = ""
    max_err: float = 0.0
    checked_rows: int = 0
    seconds: float = 0.0


class Mismatch(AssertionError):
    pass


# ---------------------------------------------------------------------------------------
# draws


def log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))))))


def draw_lengths(rng: random.Random, lim: Limits, n: int, max_ctx: int) -> tuple[list[int], list[int]]:
    """seq_lens (log-uniform, plus edges around block sizes) and q_lens (decode, none,
    prefill chunk on a cached prefix, fresh prefill)."""
    seq_lens = []
    for _ in range(n):
        if rng.random() < 0.15:
            b = rng.choice(lim.block_sizes)
            seq_lens.append(max(1, min(max_ctx, rng.choice([1, b - 1, b, b + 1, 2 * b + 1]))))
        else:
            seq_lens.append(log_uniform(rng, 1, max_ctx))
    q_lens = []
    for s in seq_lens:
        kind = rng.random()
        if kind < 0.55:
            q = 1
        elif kind < 0.62:
            q = 0
        elif kind < 0.85:
            q = log_uniform(rng, 2, max(2, lim.max_chunk))  # chunk on a cached prefix
        else:
            q = s  # fresh prefill
        q_lens.append(min(q, s, lim.max_chunk))
    # Keep the total of new tokens bounded (prefill compute), shrinking chunks first.
    while sum(q_lens) > lim.max_q_tokens:
        i = max(range(n), key=q_lens.__getitem__)
        q_lens[i] = max(1, q_lens[i] // 2)
    return seq_lens, q_lens


def draw_features(rng: random.Random, lim: Limits, max_ctx: int, *, fp8_ok: bool) -> dict:
    kv_heads = rng.choice(lim.kv_heads)
    group = rng.choice(lim.groups)
    return dict(
        num_kv_heads=kv_heads,
        num_q_heads=kv_heads * group,
        head_dim=rng.choice(lim.head_dims),
        block_size=rng.choice(lim.block_sizes),
        dtype=rng.choice(["float16", "bfloat16"]),
        kv_dtype=rng.choice([None, None, "float8_e4m3fn", "float8_e5m2"]) if fp8_ok else None,
        layout=rng.choice(["NHD", "HND"]),
        causal=rng.random() < 0.85,
        window=rng.choice([None, None, 1, rng.randint(1, max(1, max_ctx)), rng.randint(1, 4096)]),
        softcap=rng.choice([None, None, 5.0, 30.0]),
        alibi=rng.random() < 0.2,
        sinks=rng.random() < 0.2,
        scale=rng.choice([None, None, None, 0.05]),
        q_padding=rng.choice([0, 0, 3]),
        config=rng.choice([None, None, None, "random"]),
    )


def kv_bytes(seq_lens: list[int], f: dict) -> int:
    elem = 1 if f["kv_dtype"] else 2
    blocks = sum(-(-s // f["block_size"]) for s in seq_lens)
    return 2 * blocks * f["block_size"] * f["num_kv_heads"] * f["head_dim"] * elem


def fit_budget(seq_lens: list[int], q_lens: list[int], f: dict, lim: Limits) -> None:
    """Halve the longest contexts until the caches fit --max-kv-gib (in place)."""
    while kv_bytes(seq_lens, f) > lim.max_kv_bytes:
        i = max(range(len(seq_lens)), key=seq_lens.__getitem__)
        seq_lens[i] = max(1, seq_lens[i] // 2)
        q_lens[i] = min(q_lens[i], seq_lens[i])


# ---------------------------------------------------------------------------------------
# batch building (as tests/batches.py, plus explicit block counts)


def make_cache(num_blocks: int, f: dict, gen: torch.Generator) -> torch.Tensor:
    shape = (num_blocks, f["block_size"], f["num_kv_heads"], f["head_dim"])
    x = torch.randn(*shape, device=DEVICE, generator=gen, dtype=torch.float16)
    dtype = getattr(torch, f["kv_dtype"] or f["dtype"])
    x = x.to(dtype) if dtype not in FP8 else (x * 2.0).to(dtype)  # fp8 holds x / scale, scale 0.5
    if f["layout"] == "HND":
        x = x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    return x


def build_paged(seq_lens: list[int], q_lens: list[int], f: dict, gen: torch.Generator, spare: int = 3) -> dict:
    bs = f["block_size"]
    per_seq = [-(-s // bs) for s in seq_lens]
    num_blocks = sum(per_seq) + spare
    k = make_cache(num_blocks, f, gen)
    v = make_cache(num_blocks, f, gen)
    perm = torch.randperm(num_blocks, device=DEVICE, generator=gen).to(torch.int32)
    width = max([*per_seq, 1]) + 2
    # Entries past each sequence's blocks hold garbage ids: the kernel must not follow them.
    table = torch.randint(0, num_blocks, (len(seq_lens), width), dtype=torch.int32, device=DEVICE, generator=gen)
    start = 0
    for i, n in enumerate(per_seq):
        table[i, :n] = perm[start : start + n]
        start += n
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32, device=DEVICE)
    cu[1:] = torch.tensor(q_lens, device=DEVICE).cumsum(0)
    dtype = getattr(torch, f["dtype"])
    q = torch.randn(sum(q_lens) + f["q_padding"], f["num_q_heads"], f["head_dim"], device=DEVICE, generator=gen)
    return dict(
        q=q.to(dtype),
        k_cache=k,
        v_cache=v,
        block_table=table,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        cu_seqlens_q=cu,
    )


def features_kwargs(f: dict, gen: torch.Generator, *, paged: bool) -> dict:
    hq = f["num_q_heads"]
    kw = dict(causal=f["causal"], sliding_window=f["window"], softcap=f["softcap"], scale=f["scale"])
    if f["alibi"]:
        # Real ALiBi slopes are 2^(-8i/H); random ones in (0, 1) hit the same code.
        kw["alibi_slopes"] = torch.rand(hq, device=DEVICE, generator=gen)
    if f["sinks"]:
        kw["sinks"] = torch.randn(hq, device=DEVICE, generator=gen) * 2
    if paged and f["kv_dtype"]:
        kw.update(k_scale=0.5, v_scale=torch.tensor([0.5], device=DEVICE))
    return kw


def random_config(rng: random.Random, f: dict):
    if f["config"] != "random":
        return None
    return AttentionConfig(
        decode=DecodeConfig(tile_n=rng.choice([16, 32, 64, 128]), num_splits=rng.choice([1, 2, 3, 7, 16, 64]))
    )


# ---------------------------------------------------------------------------------------
# reference on a sample


def row_window(rng: random.Random, q_len: int, causal: bool, lim: Limits) -> tuple[int, int]:
    """Rows [a, a + r) of a chunk to check. Causal: any window (a prefix of the context is a
    smaller problem of its own). Non-causal queries see keys after them, so the window must
    end at the chunk's last row to keep the context whole."""
    r = min(q_len, lim.ref_rows)
    if not causal or q_len == r:
        return q_len - r, q_len
    a = rng.choice([0, q_len - r, rng.randint(0, q_len - r)])
    return a, a + r


def pick_seqs(rng: random.Random, q_lens: list[int], seq_lens: list[int], lim: Limits) -> list[int]:
    live = [i for i, q in enumerate(q_lens) if q > 0]
    if not live:
        return []
    chosen = {max(live, key=lambda i: seq_lens[i]), max(live, key=lambda i: q_lens[i]), live[-1]}
    rest = [i for i in live if i not in chosen]
    chosen.update(rng.sample(rest, min(len(rest), max(0, lim.ref_seqs - len(chosen)))))
    return sorted(chosen)


def judge(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> float:
    result = compare(out, ref, tolerance(dtype))
    if not result.ok:
        raise Mismatch(f"{what}: {result.failure}")
    return result.max_err


def check_paged(rng, b: dict, q_lens: list[int], seq_lens: list[int], out, feats: dict, f: dict, lim, outcome):
    dtype = getattr(torch, f["dtype"])
    cu = b["cu_seqlens_q"].tolist()
    batch = (b["q"], b["k_cache"], b["v_cache"], b["block_table"], b["seq_lens"], b["cu_seqlens_q"])
    for i in pick_seqs(rng, q_lens, seq_lens, lim):
        a, e = row_window(rng, q_lens[i], f["causal"], lim)
        ref = paged_rows_ref(*batch, seq=i, rows=(a, e), **feats)
        outcome.max_err = max(
            outcome.max_err, judge(out[cu[i] + a : cu[i] + e], ref, dtype, f"seq {i} rows {a}:{e} of {q_lens[i]}")
        )
        outcome.checked_rows += e - a
    pad = f["q_padding"]
    if pad and not torch.isnan(out[out.shape[0] - pad :].float()).all():
        raise Mismatch("q rows past cu_seqlens_q[-1] were written")


# ---------------------------------------------------------------------------------------
# cases


def _usual_head_dim(lim: Limits) -> int:
    return 128 if 128 in lim.head_dims else lim.head_dims[0]


def run_paged(seed: int, rng: random.Random, gen: torch.Generator, lim: Limits, outcome: Outcome, special=None):
    f = draw_features(rng, lim, lim.max_context, fp8_ok=True)
    n = log_uniform(rng, 1, lim.max_batch)
    seq_lens, q_lens = draw_lengths(rng, lim, n, lim.max_context)
    spare = 3
    if special == "batch1024":
        n = lim.big_batch
        seq_lens, q_lens = draw_lengths(rng, lim, n, min(lim.max_context, 4096))
        f.update(num_kv_heads=max(lim.kv_heads), num_q_heads=4 * max(lim.kv_heads), head_dim=_usual_head_dim(lim))
    elif special == "long_context":
        seq_lens = [lim.long_context, lim.long_context - 1, 17]
        q_lens = [1, min(lim.max_chunk, 300), 17]
        kvh = max(lim.kv_heads)
        f.update(kv_dtype=None, window=None, num_kv_heads=kvh, num_q_heads=4 * kvh, head_dim=_usual_head_dim(lim))
    elif special == "max_block_big_cache":
        # A cache of more than 2^31 elements: offsets of its last blocks overflow int32.
        kvh, d = max(lim.kv_heads), _usual_head_dim(lim)
        f.update(num_kv_heads=kvh, num_q_heads=4 * kvh, head_dim=d, block_size=16, kv_dtype=None, dtype="bfloat16")
        per_block = 16 * kvh * d
        seq_lens = [4000, 1, 33, 2500] if lim.big_cache else [60, 1, 33, 40]
        q_lens = [1, 1, 20, 300] if lim.big_cache else [1, 1, 20, 8]
        used = sum(-(-s // 16) for s in seq_lens)
        spare = (2**31 // per_block + 64) - used if lim.big_cache else 64
    if special != "max_block_big_cache":
        fit_budget(seq_lens, q_lens, f, lim)
    outcome.desc = dict(
        f,
        num_seqs=len(seq_lens),
        max_seqlen_k=max(seq_lens),
        max_seqlen_q=max(q_lens),
        total_q=sum(q_lens),
        total_kv=sum(seq_lens),
        seq_lens_head=seq_lens[:8],
        q_lens_head=q_lens[:8],
    )
    b = build_paged(seq_lens, q_lens, f, gen, spare=spare)
    num_blocks = b["k_cache"].shape[0]
    if special == "max_block_big_cache":
        # Every sequence's last block is among the highest ids; the maximum one is used.
        for i, s in enumerate(seq_lens):
            b["block_table"][i, -(-s // 16) - 1] = num_blocks - 1 - i
        outcome.desc.update(num_blocks=num_blocks, cache_elements=b["k_cache"].numel())
    feats = features_kwargs(f, gen, paged=True)
    cfg = random_config(rng, f)
    outcome.desc["config"] = str(cfg) if cfg else None
    out = torch.full_like(b["q"], float("nan"))
    paged_attention(
        *(b[k] for k in ("q", "k_cache", "v_cache", "block_table", "seq_lens", "cu_seqlens_q")),
        max_seqlen_q=max(q_lens),
        max_seqlen_k=max(seq_lens),
        out=out,
        config=cfg,
        **feats,
    )
    check_paged(rng, b, q_lens, seq_lens, out, feats, f, lim, outcome)


def run_varlen(seed: int, rng: random.Random, gen: torch.Generator, lim: Limits, outcome: Outcome):
    f = draw_features(rng, lim, lim.max_context, fp8_ok=False)
    n = log_uniform(rng, 1, max(1, lim.max_batch // 4))
    # Prefill-shaped: k lengths up to max_context, q lengths up to k (often equal).
    k_lens = [log_uniform(rng, 1, lim.max_context) for _ in range(n)]
    q_lens = [rng.choice([k, k, 0, 1, rng.randint(0, k)]) for k in k_lens]
    while sum(k_lens) * f["num_kv_heads"] * f["head_dim"] * 4 > lim.max_kv_bytes or sum(q_lens) > 4 * lim.max_q_tokens:
        i = max(range(n), key=k_lens.__getitem__)
        k_lens[i] = max(1, k_lens[i] // 2)
        q_lens[i] = min(q_lens[i], k_lens[i])
    strided = rng.random() < 0.5
    outcome.desc = dict(
        f,
        num_seqs=n,
        k_lens_head=k_lens[:8],
        q_lens_head=q_lens[:8],
        strided=strided,
        total_q=sum(q_lens),
        total_k=sum(k_lens),
    )
    dtype = getattr(torch, f["dtype"])
    hq, hkv, d = f["num_q_heads"], f["num_kv_heads"], f["head_dim"]
    tq, tk = sum(q_lens), sum(k_lens)
    if strided:  # views into one packed qkv tensor, as a fused projection makes them
        qkv = torch.randn(max(tq, tk), hq + 2 * hkv, d, device=DEVICE, generator=gen).to(dtype)
        q, k, v = qkv[:tq, :hq], qkv[:tk, hq : hq + hkv], qkv[:tk, hq + hkv :]
    else:
        q = torch.randn(tq, hq, d, device=DEVICE, generator=gen).to(dtype)
        k = torch.randn(tk, hkv, d, device=DEVICE, generator=gen).to(dtype)
        v = torch.randn(tk, hkv, d, device=DEVICE, generator=gen).to(dtype)
    cq = [0, *torch.tensor(q_lens).cumsum(0).tolist()]
    ck = [0, *torch.tensor(k_lens).cumsum(0).tolist()]
    cu_q = torch.tensor(cq, dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor(ck, dtype=torch.int32, device=DEVICE)
    feats = features_kwargs(f, gen, paged=False)
    cfg = random_config(rng, f)
    out = torch.full_like(q, float("nan"))
    varlen_attention(
        q, k, v, cu_q, cu_k, max_seqlen_q=max(q_lens), max_seqlen_k=max(k_lens), out=out, config=cfg, **feats
    )
    for i in pick_seqs(rng, q_lens, k_lens, lim):
        a, e = row_window(rng, q_lens[i], f["causal"], lim)
        ctx = k_lens[i] - q_lens[i] + e
        rows = slice(cq[i] + a, cq[i] + e)
        ref = varlen_attention_ref(
            q[rows],
            k[ck[i] : ck[i] + ctx],
            v[ck[i] : ck[i] + ctx],
            torch.tensor([0, e - a], dtype=torch.int32, device=DEVICE),
            torch.tensor([0, ctx], dtype=torch.int32, device=DEVICE),
            **feats,
        )
        outcome.max_err = max(outcome.max_err, judge(out[rows], ref, dtype, f"seq {i} rows {a}:{e}"))
        outcome.checked_rows += e - a


def run_kv_write(seed: int, rng: random.Random, gen: torch.Generator, lim: Limits, outcome: Outcome, special=None):
    f = draw_features(rng, lim, lim.max_context, fp8_ok=True)
    bs, hkv, d = f["block_size"], f["num_kv_heads"], f["head_dim"]
    num_tokens = log_uniform(rng, 1, lim.max_q_tokens * 2)
    num_blocks = -(-num_tokens // bs) + rng.randint(0, 64)
    if special == "max_block_big_cache" and lim.big_cache:
        bs, hkv, d = 16, 8, 128
        f.update(block_size=bs, num_kv_heads=hkv, head_dim=d, kv_dtype=None, dtype="bfloat16")
        num_blocks = 2**31 // (bs * hkv * d) + 64
        num_tokens = 4096
    dtype = getattr(torch, f["dtype"])
    cache_dtype = getattr(torch, f["kv_dtype"] or f["dtype"])
    slot_dtype = rng.choice([torch.int32, torch.int64])
    total = num_blocks * bs
    slots = torch.randperm(total, device=DEVICE, generator=gen)[:num_tokens]
    if special == "max_block_big_cache":
        last = min(bs, num_tokens)  # the last slots of the last block
        slots[:last] = torch.arange(total - last, total, device=DEVICE)
    pad_every = rng.choice([0, 2, 7])
    if pad_every:
        slots[1::pad_every] = -1
    slots = slots.to(slot_dtype)
    big = rng.random() < 0.15  # beyond fp8's range: must clamp, not become inf/NaN
    strided = rng.random() < 0.5
    outcome.desc = dict(
        f,
        num_tokens=num_tokens,
        num_blocks=num_blocks,
        slot_dtype=str(slot_dtype),
        pad_every=pad_every,
        big_values=big,
        strided=strided,
    )
    if strided:
        kv = torch.randn(num_tokens, 3 * hkv, d, device=DEVICE, generator=gen).to(dtype)
        key, value = kv[:, :hkv], kv[:, 2 * hkv :]
    else:
        key = torch.randn(num_tokens, hkv, d, device=DEVICE, generator=gen).to(dtype)
        value = torch.randn(num_tokens, hkv, d, device=DEVICE, generator=gen).to(dtype)
    if big:
        key, value = key * 1000, value * 1000
    sentinel = 7.0  # exact in every cache dtype; slots not written must keep it
    shape = (num_blocks, bs, hkv, d)
    kc = torch.full(shape, sentinel, device=DEVICE, dtype=cache_dtype)
    vc = torch.full(shape, sentinel, device=DEVICE, dtype=cache_dtype)
    if f["layout"] == "HND":
        kc, vc = (x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3) for x in (kc, vc))
    scales = dict(k_scale=0.3, v_scale=torch.tensor(0.7, device=DEVICE)) if f["kv_dtype"] else {}
    outcome.desc["cache_elements"] = kc.numel()
    write_kv_cache(key, value, kc, vc, slots, **scales)

    live = (slots >= 0).nonzero().flatten()
    sl = slots.long()
    # Reference on a sample of tokens, into small caches of one block per token.
    sample = live[torch.randperm(live.numel(), device=DEVICE, generator=gen)[:64]]
    m = sample.numel()
    # On the CPU: PyTorch's CPU fp8 conversion is the ground truth (round to nearest even).
    rk = torch.full((m, bs, hkv, d), sentinel, dtype=cache_dtype)
    rv = rk.clone()
    local = (torch.arange(m, device=DEVICE) * bs + sl[sample] % bs).cpu()
    write_kv_cache_ref(key[sample].cpu(), value[sample].cpu(), rk, rv, local, **scales)
    for name, cache, ref in (("k_cache", kc, rk), ("v_cache", vc, rv)):
        got = cache[sl[sample] // bs, sl[sample] % bs].cpu()
        want = ref[torch.arange(m), (sl[sample] % bs).cpu()]
        if not torch.equal(got.float(), want.float()):
            bad = (got.float() != want.float()).nonzero()
            i = tuple(bad[0].tolist())
            raise Mismatch(
                f"{name}: sampled slots differ from write_kv_cache_ref ({bad.shape[0]} of {got.numel()} "
                f"elements; first: got {got[i].float().item()!r}, want {want[i].float().item()!r})"
            )
        if not torch.isfinite(got.float()).all():
            raise Mismatch(f"{name}: non-finite values written")
        # Nothing else changed: count entries that left the sentinel (fp8 and 16-bit alike).
        changed = (cache.float() != sentinel).any(-1).any(-1).flatten()
        written = torch.zeros(num_blocks * bs, dtype=torch.bool, device=DEVICE)
        written[sl[live]] = True
        stray = changed & ~written
        if stray.any():
            raise Mismatch(f"{name}: {int(stray.sum())} slots written that slot_mapping does not name")
    outcome.checked_rows = m


KINDS = ("paged", "paged", "paged", "varlen", "kv_write")
SPECIALS = ("batch1024", "max_block_big_cache", "long_context", "kv_max_block_big_cache")


def run_case(seed: int, lim: Limits, special: str | None = None) -> Outcome:
    rng = random.Random(seed)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    kind = special or rng.choice(KINDS)
    outcome = Outcome(seed=seed, kind=kind, desc={})
    t0 = time.perf_counter()
    try:
        if kind == "kv_write":
            run_kv_write(seed, rng, gen, lim, outcome)
        elif kind == "kv_max_block_big_cache":
            run_kv_write(seed, rng, gen, lim, outcome, special="max_block_big_cache")
        elif kind == "varlen":
            run_varlen(seed, rng, gen, lim, outcome)
        else:
            run_paged(seed, rng, gen, lim, outcome, special=None if kind == "paged" else kind)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    except Mismatch as exc:
        outcome.status, outcome.detail = "mismatch", str(exc)
    except torch.OutOfMemoryError as exc:
        outcome.status, outcome.detail = "oom", str(exc).splitlines()[0]
    except (ValueError, TypeError) as exc:
        # A refusal raised by the package's own argument checks (a draw the API documents it
        # cannot run) is allowed; the same exception types from anywhere else (a bad call
        # inside the package, Triton, torch) are crashes.
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        ours = "triton_attn_kernels" in Path(frame.filename).parts and (frame.line or "").startswith("raise ")
        outcome.status = "refused" if ours else "error"
        outcome.detail = f"{type(exc).__name__}: {exc}" + ("" if ours else f"\n{traceback.format_exc(limit=4)}")
    except Exception as exc:  # a crash (e.g. an illegal memory access): the worst outcome
        outcome.status = "error"
        outcome.detail = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
    outcome.seconds = round(time.perf_counter() - t0, 3)
    if DEVICE == "cuda" and outcome.status != "error":
        torch.cuda.empty_cache()
    return outcome
