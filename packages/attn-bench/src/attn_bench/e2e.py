"""End to end: vLLM offline throughput for a list of attention backends.

Each backend runs in its own subprocess (``python -m attn_bench.e2e --worker SPEC``): one
engine per process, so backends cannot leak state into each other. Every backend gets the
same prompts (token ids drawn from a fixed seed), dummy weights (``load_format="dummy"``;
vLLM seeds them, so every process holds the same weights), a model config shipped in
``attn_bench/models`` and no tokenizer. Greedy decoding with ``ignore_eos`` fixes the output
length; throughput is tokens / wall time of one ``generate`` call over all requests, after a
short warm-up with other prompts. Greedy tokens are compared with the reference backend's
(the first one): the share of requests whose first 16 tokens agree, the share of each
request's output before the first divergence, and the share that agree to the end.

Weights: vLLM's dummy weights (uniform in +-1e-3) give nearly flat logits, so two correct
backends part ways on rounding at the first few tokens. Unless ``--weights dummy``, each
engine redraws them after loading by the rules of :mod:`attn_bench.weights` (same values in
every process; speed does not depend on the values), which keep greedy argmax away from ties.
The function reaches vLLM's engine process through ``apply_model``, which needs
``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` (set for the worker only).

Engine start (``--cold-start``): each backend first starts an engine with fresh cache
folders of its own (Triton's, vLLM's torch.compile cache, inductor's, CUDA's PTX cache:
:data:`CACHE_VARIABLES`), which measures a cold start as on a new machine; then the measured
engine starts again with those folders kept, the warm figure. Both runs time ``LLM(...)``
and a first small batch (kernels compiled on first use land there), and the Triton-only
plugin's log line gives the kernel variants the start compiled or loaded. Without the
option every backend uses the caller's caches, so whoever runs first pays for the others.

Results of several invocations with the same ``--out`` accumulate there (run backends one
at a time if each command must stay short).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["WORKLOADS", "E2EOptions", "Workload", "run_e2e"]


@dataclass(frozen=True)
class Workload:
    num_requests: int
    input_len: int
    output_len: int


WORKLOADS = {
    "256x1024-256": Workload(256, 1024, 256),
    "64x8192-512": Workload(64, 8192, 512),
    "1x500-4096": Workload(1, 500, 4096),
    "8x32768-1024": Workload(8, 32768, 1024),  # long context (max_model_len >= 33,792)
    "64x2048-512": Workload(64, 2048, 512),  # the MLA model's (deepseek-v2-lite)
    "32x4096-512": Workload(32, 4096, 512),  # with speculative decoding (--engine-arg speculative_config=...)
    "tiny": Workload(4, 64, 16),  # a few seconds: checks the setup, not a benchmark
}
DEFAULT_WORKLOADS = ("256x1024-256", "64x8192-512", "1x500-4096")
# A shipped model whose default workloads and backends are others. An MLA model runs on
# vLLM's MLA backends; the first is the agreement reference, vLLM's default on Hopper.
MODEL_WORKLOADS = {"deepseek-v2-lite": ("64x2048-512",)}
DEFAULT_BACKENDS = ("ours", "FLASH_ATTN", "TRITON_ATTN", "FLEX_ATTENTION")
MODEL_BACKENDS = {"deepseek-v2-lite": ("FLASH_ATTN_MLA", "ours", "FLASHMLA", "TRITON_MLA")}
# Backend labels and the vLLM attention backend each selects. "ours": our plugin registers
# vLLM's CUSTOM backend; pass ours=auto if it is installed as a platform plugin instead.
BACKENDS = {"ours": "CUSTOM"}
PROMPT_SEED = 1234
TOKEN_RANGE = (1000, 128000)  # ordinary (non-special) Llama-3 token ids; other models: token_range
# Compile caches an engine start reads and fills -> folder name under a backend's cache root.
CACHE_VARIABLES = {
    "TRITON_CACHE_DIR": "triton",
    "VLLM_CACHE_ROOT": "vllm",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "CUDA_CACHE_PATH": "cuda",
}
# The plugin's report at its first batch (vllm_triton_plugin.backend).
_VARIANTS_LINE = re.compile(r"Triton attention: (\d+) kernel variants compiled or loaded during engine start")
# The first batch after start: 4 short requests.
FIRST_BATCH = Workload(4, 256, 8)
# Where an engine start goes, from vLLM's own log lines (0.26 through 0.32) and the plugin's
# warm-up lines: seconds per phase.
_PHASES = {
    "load": re.compile(r"Model loading took [\d.]+ GiB(?: memory)? and ([\d.]+) seconds"),
    "compile": re.compile(
        r"init engine \(profile, create kv cache, warmup model\) took [\d.]+ s(?:econds)? \(compilation: ([\d.]+) s\)"
    ),
    "capture": re.compile(r"Graph capturing finished in ([\d.]+) secs"),
    "warm-up": re.compile(r"warm-up made \d+ launches.*? in ([\d.]+) s(?: on \d+ threads, then run in ([\d.]+) s)?"),
    # The plugin's compiles beside torch.compile (``_prewarm``): not on the start's path.
    "ahead": re.compile(
        r"(?:compiled \d+ kernel variants ahead|kernel variants compiled or loaded ahead) in ([\d.]+) s"
    ),
    "init": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)"),
    # The plugin's own builds, cache writes and forwards on the host (its start report).
    "plugin host": re.compile(r"forwards took ([\d.]+) s on the host"),
}


@dataclass
class E2EOptions:
    backends: list[str]
    workloads: list[str] | None = None
    out: Path | None = None
    model: str = "llama-3.1-8b"
    timeout_s: float = 1800
    extra: list[str] = field(default_factory=list)
    reference: str | None = None
    weights: str = "sharp"  # "sharp": redraw (attn_bench.weights); "dummy": vLLM's as loaded
    cold_start: bool = False  # per backend: a start with fresh caches, then the run with them kept


@dataclass
class E2ERow:
    label: str
    backend: str
    workload: str
    num_requests: int
    input_len: int
    output_len: int
    status: str
    detail: str = ""
    elapsed_s: float = float("nan")
    total_tok_s: float = float("nan")
    output_tok_s: float = float("nan")
    ms_per_step: float = float("nan")  # elapsed / output_len: per-token latency for 1 request
    init_s: float = float("nan")
    first_batch_s: float = float("nan")  # the first small batch after start (--cold-start runs)
    caches: str = "shared"  # "shared": the caller's; "own": fresh for this backend, warmed by its cold start
    init_cold_s: float = float("nan")  # LLM(...) with empty caches
    first_batch_cold_s: float = float("nan")
    phases: str = ""  # this start's phases in seconds (format_phases)
    phases_cold: str = ""  # the cold start's
    variants: int = -1  # kernel variants the plugin reported at start (this run's); -1: none reported
    # Our kernels' variants compiled (or loaded from Triton's cache) while the measured batch
    # ran, in the engine's worker: a compile there is seconds inside the timed call. -1:
    # not counted (the worker could not be asked).
    compiled_in_batch: int = -1
    # Speculative decoding (an engine with a speculative_config): accepted / proposed draft
    # tokens during the measured batch, and tokens accepted per draft; nan without it.
    spec_acceptance: float = float("nan")
    spec_accepted_per_draft: float = float("nan")
    reference: str = ""
    agree_first16: float = float("nan")  # share of requests whose first 16 tokens equal the reference's
    agree_prefix: float = float("nan")  # mean share of each output before the first divergence
    agree_exact: float = float("nan")  # share of requests identical to the reference
    device: str = ""
    vllm: str = ""
    torch: str = ""
    git_sha: str = ""
    timestamp: str = ""


def token_range(cfg: dict[str, Any]) -> tuple[int, int]:
    """Ordinary token ids of a model config: from 1000 up to its first special token. The
    shipped models' tokenizers number their special tokens from ``bos_token_id`` up (Llama 3
    from 128000, DeepSeek-V2 from 100000, below a vocabulary of 102400)."""
    hi = min(TOKEN_RANGE[1], cfg.get("bos_token_id") or TOKEN_RANGE[1], cfg["vocab_size"])
    return TOKEN_RANGE[0], hi


def prompts(w: Workload, seed: int = PROMPT_SEED, *, tokens: tuple[int, int] = TOKEN_RANGE) -> list[list[int]]:
    rng = random.Random(seed * 1_000_003 + w.num_requests * 7919 + w.input_len)
    return [[rng.randrange(*tokens) for _ in range(w.input_len)] for _ in range(w.num_requests)]


def model_dir(model: str) -> str:
    path = Path(model)
    if path.is_dir():
        return str(path.resolve())
    shipped = resources.files("attn_bench").joinpath("models").joinpath(model)
    if not shipped.joinpath("config.json").is_file():
        raise ValueError(f"no model config {model!r}: neither a folder nor one of attn_bench/models")
    return str(Path(str(shipped)).resolve())


def model_config(model: str = "llama-3.1-8b") -> dict[str, Any]:
    """The config.json of a shipped model (or of a folder) as a dict: the one copy that the
    engine checks (`attn-bench check-vllm`, `attn-bench soak`) start from."""
    return json.loads((Path(model_dir(model)) / "config.json").read_text())


def cache_env(root: Path) -> dict[str, str]:
    """The compile-cache variables pointing into ``root`` (one folder per cache)."""
    return {var: str(root / name) for var, name in CACHE_VARIABLES.items()}


def start_variants(log: str) -> int:
    """The kernel variants the plugin reported at start in a worker's log; the largest
    where several processes reported (tensor parallelism); -1 if none did."""
    return max((int(m) for m in _VARIANTS_LINE.findall(log)), default=-1)


def start_phases(log: str) -> dict[str, float]:
    """Seconds per phase of an engine start in a worker's log: weights loaded, torch.compile
    (vLLM's "compilation"), CUDA-graph capture (our warm-up runs inside it), the plugin's
    warm-up (compiling and launching), the engine's whole init, and the host time of the
    plugin's builds, writes and forwards outside its warm-up. Per phase the largest over
    its lines (processes start side by side); a phase without a line is left out."""
    found: dict[str, float] = {}
    for name, pattern in _PHASES.items():
        values = [sum(float(x) for x in ((m,) if isinstance(m, str) else m) if x) for m in pattern.findall(log)]
        if values:
            found[name] = max(values)
    return found


def format_phases(phases: dict[str, float]) -> str:
    """``{"load": 5.1, "capture": 32.0}`` as ``load 5.1, capture 32.0`` (the start table's)."""
    return ", ".join(f"{k} {v:.1f}" for k, v in phases.items())


def _env(backend: str, caches: Path | None = None) -> dict[str, str]:
    """Peers run on stock vLLM: ``VLLM_PLUGINS=""`` keeps our plugin (and its platform) out of
    their process even where it is installed. Ours (CUSTOM, or ``auto``) keeps the plugins.
    A ``VLLM_PLUGINS`` set by the caller is left as it is. ``caches``: every compile cache
    in that folder (:func:`cache_env`), whatever the caller's environment says."""
    # The model is a local config.json: nothing to fetch, and a machine without network
    # should not wait on Hub retries.
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **os.environ, "PYTHONHASHSEED": "0"}
    # apply_model (the weight redraw) sends a function to vLLM's engine process.
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    if backend not in ("CUSTOM", "auto") and "VLLM_PLUGINS" not in os.environ:
        env["VLLM_PLUGINS"] = ""
    if caches is not None:
        env.update(cache_env(caches))
    return env


def _plugin_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "triton_attn_backend" for ep in entry_points(group="vllm.general_plugins"))


def _parse_backend(spec: str) -> tuple[str, str]:
    label, _, backend = spec.partition("=")
    return label, backend or BACKENDS.get(label, label)


# ---------------------------------------------------------------------- worker (subprocess)
def compiled_in_process(model: Any = None) -> list[str] | None:
    """Our kernels' variants compiled or loaded in this process, one ``kernel: key`` line
    each (Triton's cache key: every argument's specialisation and the compile options);
    ``model``: what vLLM's ``apply_model`` passes, unused. None without triton_attn_kernels."""
    try:
        from triton_attn_kernels.compiled import compiled_keys
    except ImportError:
        return None
    return [f"{name}: {key}" for name, keys in compiled_keys().items() for key in keys]


def _worker_variants(llm: Any) -> list[str] | None:
    """compiled_in_process in every engine worker (its own process under vLLM's default
    multiprocessing), each line prefixed with the worker's index; None if one cannot say."""
    try:
        answers = llm.apply_model(compiled_in_process)
    except Exception:
        return None
    if not answers or any(a is None for a in answers):
        return None
    return [f"worker {i} {line}" for i, lines in enumerate(answers) for line in lines]


def _new_variants(before: list[str] | None, after: list[str] | None) -> list[str] | None:
    if before is None or after is None:
        return None
    seen = set(before)
    return [line for line in after if line not in seen]


# vLLM's speculative-decoding counters (v1 metrics; Prometheus may add "_total").
SPEC_COUNTERS = (
    "vllm:spec_decode_num_drafts",
    "vllm:spec_decode_num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens",
)


def spec_counts(llm: Any) -> dict[str, float] | None:
    """vLLM's speculative-decoding counters so far, summed over engines, or None where the
    engine keeps none (no speculative_config, stats off, an older vLLM)."""
    try:
        metrics = llm.get_metrics()
    except Exception:
        return None
    found: dict[str, float] = {}
    for m in metrics:
        name = str(getattr(m, "name", "")).removesuffix("_total")
        if name in SPEC_COUNTERS and isinstance(getattr(m, "value", None), (int, float)):
            found[name] = found.get(name, 0) + m.value
    return found if len(found) == len(SPEC_COUNTERS) else None


def spec_acceptance(before: dict[str, float] | None, after: dict[str, float] | None) -> tuple[float, float]:
    """(accepted / proposed draft tokens, accepted tokens per draft) between two counts."""
    nan = float("nan")
    if before is None or after is None:
        return nan, nan
    drafts, proposed, accepted = (after[k] - before[k] for k in SPEC_COUNTERS)
    return (accepted / proposed if proposed else nan), (accepted / drafts if drafts else nan)


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch
    from vllm import LLM, SamplingParams

    kwargs: dict[str, Any] = {
        "model": spec["model"],
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": "bfloat16",
        "seed": 0,
        "generation_config": "vllm",
    }
    if spec["backend"] != "auto":
        kwargs["attention_config"] = {"backend": spec["backend"]}
    kwargs.update(spec.get("extra", {}))
    if kwargs.get("speculative_config"):  # its acceptance counters need vLLM's stats
        kwargs.setdefault("disable_log_stats", False)
    t0 = time.perf_counter()
    llm = LLM(**kwargs)
    init_s = time.perf_counter() - t0
    cfg = json.loads((Path(spec["model"]) / "config.json").read_text())
    ordinary = token_range(cfg)
    drawn: dict[str, int] = {}
    if spec.get("weights", "sharp") == "sharp":
        from .weights import check_counts, redraw

        layers = cfg["num_hidden_layers"]
        # 2 live lm_head rows, the others exactly 0: half the near-ties of 8 live rows at 1/20
        # (attn_bench.weights); bf16 keeps more rounding noise than check-vllm's fp16.
        fn = redraw(std=0.02, seed=1234, num_layers=layers, live_vocab=2, vocab_size=cfg["vocab_size"], dead_scale=0.0)
        for counts in llm.apply_model(fn):
            for kind, n in counts.items():
                drawn[kind] = drawn.get(kind, 0) + n
        check_counts(drawn, layers, mla="kv_lora_rank" in cfg)
    first_batch_s = float("nan")
    if spec.get("phase"):
        first = [{"prompt_token_ids": p} for p in prompts(FIRST_BATCH, seed=PROMPT_SEED + 2, tokens=ordinary)]
        t = time.perf_counter()
        llm.generate(
            first, SamplingParams(temperature=0.0, max_tokens=FIRST_BATCH.output_len, ignore_eos=True, detokenize=False),
            use_tqdm=False,
        )  # fmt: skip
        first_batch_s = time.perf_counter() - t
    at_start = _worker_variants(llm)
    results = []
    for name in spec["workloads"]:
        w = WORKLOADS[name]
        sp = SamplingParams(
            temperature=0.0, max_tokens=w.output_len, min_tokens=w.output_len, ignore_eos=True, detokenize=False
        )
        warm = [
            {"prompt_token_ids": p[:256]}
            for p in prompts(Workload(4, w.input_len, 8), seed=PROMPT_SEED + 1, tokens=ordinary)
        ]
        llm.generate(
            warm, SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, detokenize=False), use_tqdm=False
        )
        batch = [{"prompt_token_ids": p} for p in prompts(w, tokens=ordinary)]
        before = _worker_variants(llm)
        counts = spec_counts(llm)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        outs = llm.generate(batch, sp, use_tqdm=False)
        el = time.perf_counter() - t
        rate, per_draft = spec_acceptance(counts, spec_counts(llm))
        after = _worker_variants(llm)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        new = _new_variants(before, after)
        results.append(
            {
                "workload": name,
                "elapsed_s": el,
                "tokens": tokens,
                "compiled_in_batch": -1 if new is None else len(new),
                "spec_acceptance": rate,
                "spec_accepted_per_draft": per_draft,
                # Which arguments made each new variant: compare with the start's keys.
                "compiled_in_batch_keys": new or [],
            }
        )
        print(f"[e2e] {spec['label']} {name}: {el:.1f}s", file=sys.stderr, flush=True)
    Path(spec["result"]).write_text(
        json.dumps(
            {
                "init_s": init_s,
                "first_batch_s": first_batch_s,
                "weights": drawn or "dummy",
                "results": results,
                "variants_at_start": at_start or [],
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "torch": torch.__version__,
                "vllm": __import__("vllm").__version__,
            }
        )
    )


# ---------------------------------------------------------------------- parent
def _agreement(ref: list[list[int]], got: list[list[int]]) -> tuple[float, float, float]:
    """(share of requests whose first 16 tokens agree, mean share of each output before the
    first divergence, share of requests identical to the end)."""
    shares, first16, exact = [], 0, 0
    for a, b in zip(ref, got, strict=False):
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        shares.append(n / max(len(a), 1))
        first16 += a[:16] == b[:16]
        exact += a == b
    count = max(len(shares), 1)
    return first16 / count, sum(shares) / count, exact / count


def _write(rows: list[E2ERow], out: Path) -> None:
    import csv

    cols = [f.name for f in fields(E2ERow)]
    with open(out / "e2e.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in asdict(r).values()])
    lines = [
        "# attn-bench e2e: vLLM offline throughput",
        "",
        "load_format=dummy (weights redrawn sharper unless --weights dummy), greedy, ignore_eos;",
        "throughput = tokens / wall time of one generate() call. Greedy agreement with the",
        "reference: requests whose first 16 tokens agree / mean share before the first divergence /",
        "requests identical to the end. Compiled: our kernels' variants compiled or loaded while",
        "the batch ran (in the engine's worker; each is a Triton compile or cache load inside the",
        "timed call), - where not counted.",
        "",
        "| workload | backend | total tok/s | output tok/s | ms/step | vs first | greedy agreement (16 / prefix / exact) "
        "| compiled | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    first: dict[str, float] = {}
    for r in rows:
        if r.status == "ok" and r.workload not in first:
            first[r.workload] = r.total_tok_s
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.workload} | {r.label} | | | | | | | {r.status}: {r.detail[:120]} |")
            continue
        rel = r.total_tok_s / first[r.workload]
        agree = (
            "reference"
            if r.label == r.reference
            else f"{r.agree_first16:.2f} / {r.agree_prefix:.2f} / {r.agree_exact:.2f}"
        )
        lines.append(
            f"| {r.workload} | {r.label} | {r.total_tok_s:,.0f} | {r.output_tok_s:,.1f} | {r.ms_per_step:.2f} "
            f"| {rel:.2f} | {agree} | {r.compiled_in_batch if r.compiled_in_batch >= 0 else '-'} | ok |"
        )
    spec = [r for r in rows if r.spec_acceptance == r.spec_acceptance]
    if spec:
        lines += ["", "Speculative decoding during the measured batch (vLLM's counters): draft tokens accepted", ""]
        lines += [
            f"- {r.workload}, {r.label}: {r.spec_acceptance:.1%} of proposed, {r.spec_accepted_per_draft:.2f} per draft"
            for r in spec
        ]
    lines += _start_table(rows)
    if rows:
        lines += [
            "",
            f"device: {rows[0].device or '?'}; vLLM {rows[0].vllm}; torch {rows[0].torch}; git {rows[0].git_sha}",
        ]
    (out / "e2e.md").write_text("\n".join(lines) + "\n")


def _start_table(rows: list[E2ERow]) -> list[str]:
    """Engine start per backend, from the rows of --cold-start runs (one line per label)."""
    seen: dict[str, E2ERow] = {}
    for r in rows:
        if r.caches == "own" and r.status == "ok":
            seen.setdefault(r.label, r)
    if not seen:
        return []
    first = next(iter(seen.values()))

    def rel(a: float, b: float) -> str:
        return f"{a / b:.2f}" if a == a and b == b and b > 0 else "-"

    lines = [
        "",
        "## Engine start",
        "",
        "`LLM(...)` to ready, each backend with compile caches of its own: cold = empty caches, warm = the same",
        "caches again; first batch = 4 x (256 in, 8 out) right after start. Variants: kernel variants the",
        "Triton-only plugin reported compiled or loaded at start.",
        "",
        "| backend | cold start s | warm start s | cold vs first | warm vs first | first batch cold s | first batch warm s | variants |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in seen.items():
        variants = str(r.variants) if r.variants >= 0 else "-"
        lines.append(
            f"| {label} | {r.init_cold_s:.1f} | {r.init_s:.1f} | {rel(r.init_cold_s, first.init_cold_s)} "
            f"| {rel(r.init_s, first.init_s)} | {r.first_batch_cold_s:.2f} | {r.first_batch_s:.2f} | {variants} |"
        )
    lines += [
        "",
        "Where each start went, in seconds, from the engine's log (vLLM's lines and the plugin's warm-up):",
        "",
    ]
    for label, r in seen.items():
        lines.append(f"- {label}: cold: {r.phases_cold or '-'}; warm: {r.phases or '-'}")
    return lines


def _collect(out: Path, reference: str | None) -> list[E2ERow]:
    """Rows from every run recorded in ``out/runs.json`` (earlier invocations included); a
    later run of the same (backend label, workload) replaces an earlier one."""
    runs = json.loads((out / "runs.json").read_text())["runs"] if (out / "runs.json").exists() else []
    tokens: dict[tuple[str, str], list[list[int]]] = {}
    by_key: dict[tuple[str, str], E2ERow] = {}
    cold: dict[str, dict[str, Any]] = {}  # label -> its latest cold start
    for info in runs:
        label = info["label"]
        res_path = out / info["result"]
        if info.get("phase") == "cold":
            res = json.loads(res_path.read_text()) if info["status"] == "ok" and res_path.exists() else {}
            cold[label] = {
                "init_cold_s": res.get("init_s", float("nan")),
                "first_batch_cold_s": res.get("first_batch_s", float("nan")),
                "phases_cold": format_phases(info.get("phases", {})),
            }
            continue
        common = {
            "git_sha": info.get("git_sha", ""),
            "timestamp": info.get("timestamp", ""),
            "caches": info.get("caches", "shared"),
            "variants": info.get("variants", -1),
            "phases": format_phases(info.get("phases", {})),
            **(cold.get(label, {}) if info.get("phase") == "warm" else {}),
        }
        if info["status"] != "ok" or not res_path.exists():
            for name in info["workloads"]:
                w = WORKLOADS[name]
                by_key[(label, name)] = E2ERow(
                    label, info["backend"], name, w.num_requests, w.input_len, w.output_len,
                    info["status"], info.get("detail", ""), **common,
                )  # fmt: skip
                tokens.pop((label, name), None)
            continue
        res = json.loads(res_path.read_text())
        for r in res["results"]:
            w = WORKLOADS[r["workload"]]
            el = r["elapsed_s"]
            tokens[(label, r["workload"])] = r["tokens"]
            by_key[(label, r["workload"])] = E2ERow(
                label=label,
                backend=info["backend"],
                workload=r["workload"],
                num_requests=w.num_requests,
                input_len=w.input_len,
                output_len=w.output_len,
                status="ok",
                elapsed_s=el,
                total_tok_s=w.num_requests * (w.input_len + w.output_len) / el,
                output_tok_s=w.num_requests * w.output_len / el,
                ms_per_step=1e3 * el / w.output_len,
                init_s=res["init_s"],
                first_batch_s=res.get("first_batch_s", float("nan")),
                compiled_in_batch=r.get("compiled_in_batch", -1),
                spec_acceptance=r.get("spec_acceptance", float("nan")),
                spec_accepted_per_draft=r.get("spec_accepted_per_draft", float("nan")),
                device=res.get("device", ""),
                vllm=res.get("vllm", ""),
                torch=res.get("torch", ""),
                **common,
            )
    labels = list(dict.fromkeys(info["label"] for info in runs))
    rows = sorted(by_key.values(), key=lambda r: (list(WORKLOADS).index(r.workload), labels.index(r.label)))
    for r in rows:
        if r.status != "ok":
            continue
        ref = reference if reference and (reference, r.workload) in tokens else None
        if ref is None:
            ref = next((lb for lb in labels if (lb, r.workload) in tokens), None)
        if ref is None:
            continue
        r.reference = ref
        r.agree_first16, r.agree_prefix, r.agree_exact = _agreement(
            tokens[(ref, r.workload)], tokens[(r.label, r.workload)]
        )
    return rows


def _run_worker(spec: dict[str, Any], spec_path: Path, log: Path, timeout_s: float, caches: Path | None) -> dict:
    """One engine in a subprocess; its status, a detail on failure, and the start's variants."""
    spec_path.write_text(json.dumps(spec, indent=2))
    what = {"cold": ", start with empty caches", "warm": ", start with its caches warm"}.get(spec["phase"], "")
    workloads = ", ".join(spec["workloads"]) or "no workloads"
    print(
        f"[e2e] {spec['label']} (attention backend {spec['backend']}{what}): {workloads}  log: {log}",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    status, detail, rc = "ok", "", None
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                [sys.executable, "-m", "attn_bench.e2e", "--worker", str(spec_path)],
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                env=_env(spec["backend"], caches),
            ).returncode
            if rc != 0 or not Path(spec["result"]).exists():
                status = "error"
        except subprocess.TimeoutExpired:
            status, detail = "error", f"timed out after {timeout_s:.0f}s"
    text = log.read_text(errors="replace")
    if status != "ok":
        tail = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
        print("\n".join(["[e2e] last lines of " + str(log), *tail[-25:]]), file=sys.stderr, flush=True)
        if not detail:
            detail = (tail[-1].strip() if tail else f"exit status {rc}")[-300:]
    print(f"[e2e] {spec['label']}: {status} in {time.perf_counter() - t0:.0f}s {detail}", file=sys.stderr, flush=True)
    return {"status": status, "detail": detail, "variants": start_variants(text), "phases": start_phases(text)}


# What every engine start reads from disk, whatever its backend: the first process on a fresh
# machine reads it cold, the later ones from the OS file cache. A --cold-start run reads it
# once first, so that the first backend's cold start is not also the machine's: the imports,
# and a tiny torch.compile and CUDA graph (Dynamo, Inductor and Triton's compiler load their
# modules lazily), with compile caches of its own that no engine reads.
_PRIME = """
import time
t0 = time.perf_counter()
import torch
if torch.cuda.is_available():
    torch.cuda.init()
    x = torch.ones(64, 64, device="cuda")
    (x @ x).sum().item()
    torch.compile(lambda t: (t * 2).sin() + 1)(x).sum().item()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = x * 3
    g.replay()
    torch.cuda.synchronize()
import triton
import vllm
from vllm import LLM
import vllm.model_executor.models.llama
import vllm.v1.engine.core
try:
    import vllm_triton_plugin.backend
except ImportError:
    pass
print(f"[e2e] file cache primed in {time.perf_counter() - t0:.1f}s (throwaway compile caches)")
"""


def prime_file_cache(caches: Path, timeout_s: float = 300.0) -> None:
    """Run, in a throwaway process, what every engine start loads (the comment above
    ``_PRIME``), with every compile cache pointed into ``caches`` (a folder no engine uses).
    A failure is printed and the run goes on."""
    try:
        subprocess.run([sys.executable, "-c", _PRIME], timeout=timeout_s, check=True, env=_env("auto", caches))
    except (subprocess.SubprocessError, OSError) as e:
        print(f"[e2e] priming the file cache failed ({e}); the first cold start reads it cold", file=sys.stderr)


def _check_lengths(names: list[str], max_model_len: Any, model: str) -> None:
    """Every workload's prompt and output must fit the engine's context length (the
    ``max_model_len`` engine argument, else the config's ``max_position_embeddings``): vLLM
    would otherwise refuse or stall those requests inside the timed call."""
    if max_model_len is None:
        max_model_len = json.loads((Path(model) / "config.json").read_text()).get("max_position_embeddings")
    if not isinstance(max_model_len, int) or isinstance(max_model_len, bool):
        return
    for n in names:
        w = WORKLOADS[n]
        if w.input_len + w.output_len > max_model_len:
            raise SystemExit(
                f"workload {n!r} needs {w.input_len} + {w.output_len} = {w.input_len + w.output_len} tokens of "
                f"context, more than max_model_len={max_model_len}; raise it (--engine-arg max_model_len=N) or "
                "leave the workload out"
            )


def run_e2e(opts: E2EOptions) -> int:
    from .runner import _git_sha

    names = opts.workloads or list(MODEL_WORKLOADS.get(opts.model, DEFAULT_WORKLOADS))
    for n in names:
        if n not in WORKLOADS:
            raise SystemExit(f"unknown workload {n!r}; known: {', '.join(WORKLOADS)}")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = opts.out or Path("results") / "e2e" / stamp
    out.mkdir(parents=True, exist_ok=True)
    model = model_dir(opts.model)
    extra = {}
    for kv in opts.extra:
        k, _, v = kv.partition("=")
        try:
            extra[k] = json.loads(v)
        except json.JSONDecodeError:
            extra[k] = v
    _check_lengths(names, extra.get("max_model_len"), model)
    if any(_parse_backend(b)[1] == "CUSTOM" for b in opts.backends) and not _plugin_installed():
        print(
            "[e2e] WARNING: no vLLM plugin entry point 'triton_attn_backend' is installed, so the CUSTOM "
            "backend will not exist; install vllm-triton-plugin (e.g. pip install --no-deps its wheel).",
            file=sys.stderr,
        )
    meta_path = out / "runs.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    sha = _git_sha()
    ok = True
    if opts.cold_start:
        prime_file_cache((out / "caches" / "prime").resolve())
    for spec_str in opts.backends:
        label, backend = _parse_backend(spec_str)
        caches = None
        phases = [("", names)]
        if opts.cold_start:
            # A folder no earlier run used: the first start fills it, the second reads it.
            caches = (out / "caches" / f"{label}-{len(meta['runs'])}").resolve()
            phases = [("cold", []), ("warm", names)]
        cold_ok = True
        for phase, workloads in phases:
            tag = f"{label}-{len(meta['runs'])}"
            spec = {
                "label": label,
                "backend": backend,
                "model": model,
                "workloads": workloads,
                "extra": extra,
                "result": str((out / f"result-{tag}.json").resolve()),
                "weights": opts.weights,
                "phase": phase,
            }
            if cold_ok:
                run = _run_worker(spec, out / f"spec-{tag}.json", out / f"log-{tag}.txt", opts.timeout_s, caches)
            else:  # a warm figure needs the cold start's caches
                run = {"status": "error", "detail": "not run: the cold start failed", "variants": -1, "phases": {}}
            cold_ok = phase != "cold" or run["status"] == "ok"
            ok &= run["status"] == "ok"
            meta["runs"].append(
                {
                    **run,
                    "label": label,
                    "backend": backend,
                    "workloads": workloads,
                    "phase": phase,
                    "caches": "own" if caches is not None else "shared",
                    "result": f"result-{tag}.json",
                    "git_sha": sha,
                    "timestamp": stamp,
                }
            )
            meta_path.write_text(json.dumps(meta, indent=2))
            _write(_collect(out, opts.reference), out)
    print((out / "e2e.md").read_text())
    return 0 if ok else 1


def merge_e2e(sources: list[Path], out: Path, reference: str | None = None) -> Path:
    """Gather the runs of several e2e folders (e.g. one backend per short GPU command) into
    ``out`` and redo the table, greedy agreement included."""
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "runs.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    for src in sources:
        if src.resolve() == out.resolve() or not (src / "runs.json").exists():
            continue
        for info in json.loads((src / "runs.json").read_text())["runs"]:
            tag = f"{info['label']}-{len(meta['runs'])}"
            result = src / info["result"]
            if result.exists():
                (out / f"result-{tag}.json").write_bytes(result.read_bytes())
            meta["runs"].append({**info, "result": f"result-{tag}.json"})
    meta_path.write_text(json.dumps(meta, indent=2))
    _write(_collect(out, reference), out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="attn-bench e2e worker (one vLLM engine)")
    ap.add_argument("--worker", required=True, help="path of the JSON spec written by run_e2e")
    _worker(ap.parse_args().worker)


if __name__ == "__main__":
    main()
