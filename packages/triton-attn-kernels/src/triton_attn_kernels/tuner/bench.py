"""One tuning case: inputs for a shape, a reference check of a config's output, and its time.

Configs are timed by :func:`.timing.measure`, the function attn-bench times with: on CUDA
the median of ``reps`` CUDA-graph replays, each after an L2 flush; in the interpreter (tests)
the median wall time of a few direct calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..attention import decode_workspace_numel, paged_attention
from ..kv_cache import write_kv_cache
from ..testing import compare, paged_rows_ref, tolerance
from ..tuning.configs import AttentionConfig, DecodeConfig, KVWriteConfig, PrefillConfig
from ..tuning.heuristics import AttentionProblem
from .space import Geometry, Shape
from .timing import measure

__all__ = ["AttentionCase", "KVWriteCase", "time_launch"]

# Rows checked per end of a sequence: the reference on whole 32k prompts would need 128 GB.
CHECK_ROWS = 32
# Most splits any decode config may use here (the heuristic caps at 64, and so does the space).
MAX_SPLITS = 64


def _rand(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return torch.randn(shape, dtype=torch.bfloat16, device=device, generator=gen).to(dtype)
    return torch.randn(shape, dtype=dtype, device=device, generator=gen)


@dataclass
class AttentionCase:
    """A paged batch of ``shape.num_seqs`` sequences of ``shape.context`` tokens, the last
    ``shape.q_len`` of them new (decode: 1)."""

    kernel: str
    geometry: Geometry
    shape: Shape
    dtype: torch.dtype
    kv_dtype: torch.dtype
    block_size: int
    device: torch.device
    seed: int = 0

    def __post_init__(self) -> None:
        g = self.geometry
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        b, n, bs = self.shape.num_seqs, self.shape.context, self.block_size
        self.q_len = self.shape.q_len
        blocks = -(-n // bs)
        self.k_cache = _rand((b * blocks, bs, g.num_kv_heads, g.head_dim), self.kv_dtype, self.device, gen)
        self.v_cache = _rand((b * blocks, bs, g.num_kv_heads, g.v_head_dim), self.kv_dtype, self.device, gen)
        # Shuffled pages, as a cache looks after a while of serving.
        perm = torch.randperm(b * blocks, generator=gen, device=self.device)
        self.block_table = perm.to(torch.int32).view(b, blocks)
        self.seq_lens = torch.full((b,), n, dtype=torch.int32, device=self.device)
        self.cu_seqlens_q = torch.arange(0, (b + 1) * self.q_len, self.q_len, dtype=torch.int32, device=self.device)
        self.q = _rand((b * self.q_len, g.num_q_heads, g.head_dim), self.dtype, self.device, gen)
        self.out = torch.empty(*self.q.shape[:2], g.v_head_dim, dtype=self.dtype, device=self.device)
        # fp8 caches: scales as device tensors, so that a launch allocates nothing (CUDA graphs).
        fp8 = self.kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
        self.kv_scale = torch.ones(1, dtype=torch.float32, device=self.device) if fp8 else None
        self.workspace = torch.empty(
            decode_workspace_numel(b, g.num_q_heads, g.v_head_dim, MAX_SPLITS), dtype=torch.float32, device=self.device
        )
        self._checks = self._reference_rows()

    def problem(self, num_sms: int, interpreter: bool) -> AttentionProblem:
        g = self.geometry
        return AttentionProblem(
            num_seqs=self.shape.num_seqs,
            num_q_heads=g.num_q_heads,
            num_kv_heads=g.num_kv_heads,
            head_dim=g.head_dim,
            max_seqlen_q=self.q_len,
            max_seqlen_k=self.shape.context,
            dtype=str(self.dtype).removeprefix("torch."),
            kv_dtype=str(self.kv_dtype).removeprefix("torch."),
            num_sms=num_sms,
            interpreter=interpreter,
            head_dim_v=g.head_dim_v,
        )

    def launcher(self, config: DecodeConfig | PrefillConfig) -> Callable[[], object]:
        if isinstance(config, DecodeConfig):
            cfg, decode_query_len = AttentionConfig(decode=config), None
        else:
            # No decode launch: every sequence, however short, runs the prefill config timed.
            cfg, decode_query_len = AttentionConfig(prefill=config), 0

        def launch() -> object:
            return paged_attention(
                self.q,
                self.k_cache,
                self.v_cache,
                self.block_table,
                self.seq_lens,
                self.cu_seqlens_q,
                max_seqlen_q=self.q_len,
                max_seqlen_k=self.shape.context,
                k_scale=self.kv_scale,
                v_scale=self.kv_scale,
                out=self.out,
                config=cfg,
                decode_query_len=decode_query_len,
                workspace=self.workspace,
            )

        return launch

    def _reference_rows(self) -> list[tuple[slice, torch.Tensor]]:
        """(output rows, fp32 reference) for the first and last CHECK_ROWS query rows of the
        first and last sequence: cheap at any size, and they cover both ends of the mask."""
        b, q_len = self.shape.num_seqs, self.q_len
        batch = (self.q, self.k_cache, self.v_cache, self.block_table, self.seq_lens, self.cu_seqlens_q)
        scales = {"scale": self.geometry.head_dim**-0.5, "k_scale": self.kv_scale, "v_scale": self.kv_scale}
        checks = []
        for s in sorted({0, b - 1}):
            for lo, hi in sorted({(max(q_len - CHECK_ROWS, 0), q_len), (0, min(CHECK_ROWS, q_len))}):
                ref = paged_rows_ref(*batch, seq=s, rows=(lo, hi), **scales)
                checks.append((slice(s * q_len + lo, s * q_len + hi), ref))
        return checks

    def check(self, config: DecodeConfig | PrefillConfig) -> str | None:
        """None if ``config``'s output matches the reference, else what is wrong."""
        self.out.fill_(float("nan"))  # rows the kernel forgets to write cannot pass
        self.launcher(config)()
        tol = tolerance(self.dtype)
        for rows, ref in self._checks:
            result = compare(self.out[rows], ref, tol)
            if not result.ok:
                return f"rows {rows.start}:{rows.stop}: {result.failure}"
        return None


@dataclass
class KVWriteCase:
    geometry: Geometry
    shape: Shape  # writes shape.num_tokens new tokens
    dtype: torch.dtype
    kv_dtype: torch.dtype
    block_size: int
    device: torch.device
    seed: int = 0

    def __post_init__(self) -> None:
        g = self.geometry
        if g.head_dim_v is not None:
            raise ValueError(f"geometry: write_kv_cache takes K and V of one head size, got {g}")
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        t = self.shape.num_tokens
        blocks = -(-t // self.block_size) + 1
        self.key = _rand((t, g.num_kv_heads, g.head_dim), self.dtype, self.device, gen)
        self.value = _rand((t, g.num_kv_heads, g.head_dim), self.dtype, self.device, gen)
        cache_shape = (blocks, self.block_size, g.num_kv_heads, g.head_dim)
        self.k_cache = torch.zeros(cache_shape, dtype=self.kv_dtype, device=self.device)
        self.v_cache = torch.zeros(cache_shape, dtype=self.kv_dtype, device=self.device)
        slots = torch.randperm(blocks * self.block_size, generator=gen, device=self.device)[:t]
        self.slot_mapping = slots.to(torch.int64)
        fp8 = self.kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
        self.kv_scale = torch.ones(1, dtype=torch.float32, device=self.device) if fp8 else None

    def launcher(self, config: KVWriteConfig) -> Callable[[], object]:
        def launch() -> None:
            write_kv_cache(
                self.key,
                self.value,
                self.k_cache,
                self.v_cache,
                self.slot_mapping,
                k_scale=self.kv_scale,
                v_scale=self.kv_scale,
                config=config,
            )

        return launch

    def check(self, config: KVWriteConfig) -> str | None:
        self.k_cache.zero_()
        self.v_cache.zero_()
        self.launcher(config)()
        h, d = self.geometry.num_kv_heads, self.geometry.head_dim
        for name, src, cache in (("key", self.key, self.k_cache), ("value", self.value, self.v_cache)):
            want = src.float().clamp(-torch.finfo(cache.dtype).max, torch.finfo(cache.dtype).max).to(cache.dtype)
            got = cache.view(-1, h, d)[self.slot_mapping]
            if not torch.equal(got.view(torch.uint8), want.view(torch.uint8)):
                return f"{name} cache differs from a plain copy into the slots"
        return None


def time_launch(
    launch: Callable[[], object], reps: int, *, cuda: bool, prune_above_us: float | None = None
) -> tuple[float, bool]:
    """(median microseconds, pruned), timed as attn-bench times (:func:`.timing.measure`).
    ``pruned``: three replays already took longer than ``prune_above_us`` (clearly not a
    winner), so the full measurement was skipped. In the interpreter: at most three calls."""
    device = torch.device("cuda" if cuda else "cpu")
    runs, warmup_ms = (reps, 25.0) if cuda else (max(1, min(reps, 3)), 0.0)
    t = measure(launch, device, runs=runs, warmup_ms=warmup_ms, prune_above_us=prune_above_us)
    return t.p50_us, t.pruned
