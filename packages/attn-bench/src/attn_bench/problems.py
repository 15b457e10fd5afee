"""Problems: one benchmark case as a frozen dataclass, and named suites read from TOML.

A problem describes a batch of sequences by shape only. ``batch`` sequences each hold
``context`` tokens of which the last ``q_len`` are new (decode: ``q_len == 1``; fresh
prefill: ``q_len == context``; prefill on a cached prefix: ``q_len < context``). A ``mixed``
batch adds ``chunks`` prefill-chunk sequences of ``chunk_len`` new tokens on a context of
``chunk_context`` tokens, placed after the decodes (vLLM's order). ``kv_write`` writes the
``batch * q_len`` new tokens' K and V into the paged cache.

Multi-head latent attention (DeepSeek-V2/V3) has two ops. ``mla_decode`` (absorbed weights,
``q_len`` 1 to 16 for speculative verification) reads one latent row per cached token, shared
by every query head: ``num_kv_heads`` is 1, ``head_dim`` the latent row (kv_lora_rank + rope
dims, 512 + 64) and ``head_dim_v`` the latent's first kv_lora_rank dims, the value part.
``mla_prefill`` is causal attention with q/k heads of ``head_dim`` (128 + 64 rope) and v heads
of ``head_dim_v`` (128), one K/V head per query head.

Suites live in ``attn_bench/suites/<name>.toml``; see ``default.toml`` for the format.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import Any

import tomllib

__all__ = ["MLA_OPS", "OPS", "PROBLEM_FIELDS", "Problem", "Suite", "list_suites", "load_suite"]

OPS = ("decode", "prefill", "mixed", "kv_write", "mla_decode", "mla_prefill")
MLA_OPS = ("mla_decode", "mla_prefill")
MAX_MLA_DECODE_Q_LEN = 16  # speculative verification runs on the decode kernel up to here
DTYPES = ("float16", "bfloat16", "float32")
KV_DTYPES = ("float16", "bfloat16", "float32", "float8_e4m3fn", "float8_e5m2")
VARIANTS = ("window", "softcap", "alibi", "sinks")  # attention features, one at a time


@dataclass(frozen=True)
class Problem:
    op: str
    batch: int
    context: int
    q_len: int = 1
    chunks: int = 0
    chunk_len: int = 0
    chunk_context: int = 0
    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    head_dim_v: int = 0  # MLA ops only: the value head size (0: head_dim)
    block_size: int = 16
    dtype: str = "bfloat16"
    kv_dtype: str = "bfloat16"
    variant: str = ""  # "" | "window=W" | "softcap=C" | "alibi" | "sinks"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {self.kv_dtype!r}")
        for name in ("batch", "context", "q_len", "num_q_heads", "num_kv_heads", "head_dim", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.q_len > self.context:
            raise ValueError(f"q_len ({self.q_len}) must not exceed context ({self.context})")
        if self.op == "decode" and self.q_len != 1:
            raise ValueError(f"a decode problem has q_len 1, got {self.q_len}")
        if self.op in MLA_OPS:
            self._check_mla()
        elif self.head_dim_v:
            raise ValueError(f"head_dim_v is for MLA problems {MLA_OPS}, not {self.op!r}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads ({self.num_q_heads}) must be a multiple of num_kv_heads")
        if self.variant:
            name, value = self.variant_arg()
            if name not in VARIANTS or (name in ("window", "softcap") and not value > 0):
                raise ValueError(
                    f"variant must be '', 'window=W', 'softcap=C', 'alibi' or 'sinks', got {self.variant!r}"
                )
            if self.op == "kv_write":
                raise ValueError("kv_write problems have no attention variant")
        if self.op == "mixed":
            if self.chunks < 1 or not 1 <= self.chunk_len <= self.chunk_context:
                raise ValueError("a mixed problem needs chunks >= 1 and 1 <= chunk_len <= chunk_context")
        elif self.chunks or self.chunk_len or self.chunk_context:
            raise ValueError(f"chunks/chunk_len/chunk_context are for mixed problems, not {self.op!r}")

    def _check_mla(self) -> None:
        if not 1 <= self.head_dim_v < self.head_dim:
            raise ValueError(
                f"an MLA problem needs 1 <= head_dim_v < head_dim ({self.head_dim}), got {self.head_dim_v}"
            )
        if self.variant:
            raise ValueError("MLA problems have no attention variant")
        if self.op == "mla_decode":
            if self.num_kv_heads != 1:
                raise ValueError(f"an MLA decode reads one latent head (num_kv_heads 1), got {self.num_kv_heads}")
            if self.q_len > MAX_MLA_DECODE_Q_LEN:
                raise ValueError(f"an MLA decode has q_len 1..{MAX_MLA_DECODE_Q_LEN}, got {self.q_len}")
        elif self.kv_dtype != self.dtype:
            # Prefill K/V are up-projected from the latents per step, never a stored cache.
            raise ValueError(f"an MLA prefill has K/V in the query dtype {self.dtype}, got kv_dtype {self.kv_dtype}")

    def variant_arg(self) -> tuple[str, float]:
        """(name, value) of the variant: ("window", 1024.0), ("alibi", 0.0), ("", 0.0)."""
        name, _, value = self.variant.partition("=")
        try:
            return name, float(value) if value else 0.0
        except ValueError as exc:
            raise ValueError(f"variant {self.variant!r}: {value!r} is not a number") from exc

    # -- derived shapes ---------------------------------------------------------------
    def seqs(self) -> list[tuple[int, int]]:
        """(new tokens, context) of every sequence, decodes first."""
        out = [(self.q_len, self.context)] * self.batch
        if self.op == "mixed":
            out += [(self.chunk_len, self.chunk_context)] * self.chunks
        return out

    @property
    def num_seqs(self) -> int:
        return len(self.seqs())

    @property
    def num_tokens(self) -> int:
        return sum(q for q, _ in self.seqs())

    @property
    def kv_tokens(self) -> int:
        return sum(k for _, k in self.seqs())

    @property
    def max_seqlen_q(self) -> int:
        return max(q for q, _ in self.seqs())

    @property
    def max_seqlen_k(self) -> int:
        return max(k for _, k in self.seqs())

    @property
    def v_head_dim(self) -> int:
        """The value (and output) head size."""
        return self.head_dim_v or self.head_dim

    @property
    def fp8(self) -> bool:
        return self.kv_dtype.startswith("float8")

    def label(self) -> str:
        """Short human name, e.g. ``decode b16 ctx8192 h32:8 d128 bf16``."""
        dt = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
        parts = [self.op, f"b{self.batch}", f"ctx{self.context}"]
        if self.op in ("prefill", "kv_write", "mla_prefill") or (self.op == "mla_decode" and self.q_len > 1):
            parts.append(f"q{self.q_len}")
        if self.op == "mixed":
            parts.append(f"+{self.chunks}x{self.chunk_len}/{self.chunk_context}")
        parts += [
            f"h{self.num_q_heads}:{self.num_kv_heads}",
            f"d{self.head_dim}" + (f"/{self.head_dim_v}" if self.head_dim_v else ""),
            dt.get(self.dtype, self.dtype),
        ]
        if self.kv_dtype != self.dtype:
            parts.append(f"kv:{self.kv_dtype}")
        if self.variant:
            parts.append(self.variant)
        if self.block_size != 16:
            parts.append(f"page{self.block_size}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROBLEM_FIELDS = tuple(f.name for f in fields(Problem))


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    baseline: tuple[str, ...]  # providers in order of preference; the first present is the baseline
    problems: tuple[Problem, ...]
    quick: tuple[Problem, ...]  # the subset `--quick` keeps


def _suite_path(name: str) -> Any:
    return resources.files("attn_bench").joinpath("suites").joinpath(f"{name}.toml")


def list_suites() -> list[str]:
    folder = resources.files("attn_bench").joinpath("suites")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def _expand(sweep: dict[str, Any], defaults: dict[str, Any]) -> list[Problem]:
    """A sweep maps problem fields to a value or a list of values (cartesian product).
    ``points = [{...}, ...]`` lists single cases instead. ``q_len = "context"`` means a fresh
    prefill; ``prefix`` (instead of ``q_len``) gives the cached-prefix length; ``max_kv_tokens``
    drops combinations with more cached tokens."""
    sweep = dict(sweep)
    sweep.pop("quick", None)
    limit = sweep.pop("max_kv_tokens", None)
    points = sweep.pop("points", None)
    if points is not None:  # a list of tables, each one case (lists in a point still expand)
        return [p for point in points for p in _expand({**sweep, **point, "max_kv_tokens": limit}, defaults)]
    merged = {**defaults, **sweep}
    keys = list(merged)
    values = [v if isinstance(v, list) else [v] for v in merged.values()]
    out = []
    for combo in itertools.product(*values):
        d = dict(zip(keys, combo, strict=True))
        prefix = d.pop("prefix", None)
        if d.get("q_len") == "context":
            d["q_len"] = d["context"]
        if prefix is not None:
            if prefix >= d["context"]:
                continue
            d["q_len"] = d["context"] - prefix
        unknown = set(d) - set(PROBLEM_FIELDS)
        if unknown:
            raise ValueError(f"unknown problem fields in suite: {sorted(unknown)}")
        p = Problem(**d)
        if limit is not None and p.kv_tokens > int(limit):
            continue
        out.append(p)
    return out


def _dedupe(problems: list[Problem]) -> tuple[Problem, ...]:
    return tuple(dict.fromkeys(problems))


def load_suite(name: str) -> Suite:
    """Read ``suites/<name>.toml``. ``include = [...]`` pulls in other suites' sweeps."""
    path = _suite_path(name)
    if not path.is_file():
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(list_suites())}")
    data = tomllib.loads(path.read_text())
    problems: list[Problem] = []
    quick: list[Problem] = []
    for inc in data.get("include", []):
        sub = load_suite(inc)
        problems += sub.problems
        quick += sub.quick
    defaults = data.get("defaults", {})
    for sweep in data.get("sweep", []):
        expanded = _expand(sweep, defaults)
        problems += expanded
        if sweep.get("quick", False):
            quick += expanded
    return Suite(
        name=name,
        description=data.get("description", ""),
        baseline=tuple(data.get("baseline", [])),
        problems=_dedupe(problems),
        quick=_dedupe(quick),
    )
