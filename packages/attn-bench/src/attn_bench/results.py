"""Results: the CSV row dataclass (its fields are the CSV columns, in order), CSV I/O, the
Markdown summary, ``compare``, and what every row records about its run (the commit, an
honest note on what the numbers are)."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import os
import subprocess
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .problems import PROBLEM_FIELDS, Problem

__all__ = [
    "BANDWIDTH_OPS",
    "COLUMNS",
    "COMMIT_ENV",
    "Row",
    "compare",
    "comparison_markdown",
    "fill_baselines",
    "git_sha",
    "markdown_summary",
    "read_csv",
    "run_note",
    "write_csv",
]

# Names the commit where no git history travels (wheels installed on a GPU machine).
COMMIT_ENV = "ATTN_BENCH_COMMIT"


@dataclass
class Row:
    suite: str
    op: str
    provider: str
    status: str  # ok | wrong | error | skipped
    detail: str
    # problem fields: every field of problems.Problem (a test keeps the two in step)
    batch: int
    context: int
    q_len: int
    chunks: int
    chunk_len: int
    chunk_context: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_v: int
    block_size: int
    dtype: str
    kv_dtype: str
    variant: str
    label: str
    # measurement
    max_err: float = math.nan
    p20_us: float = math.nan
    p50_us: float = math.nan
    p80_us: float = math.nan
    runs: int = 0
    method: str = ""
    gbps: float = math.nan  # metrics.bytes_moved / p50
    tflops: float = math.nan  # metrics.flops / p50
    pct_roofline: float = math.nan  # 100 * roofline time (measured ceilings) / p50
    ratio_to_baseline: float = math.nan  # baseline p50 / this p50 (>1: faster than baseline)
    baseline: str = ""
    # context
    ceiling_gbps: float = math.nan
    ceiling_tflops: float = math.nan
    device: str = ""
    torch: str = ""
    triton: str = ""
    vllm: str = ""
    git_sha: str = ""
    timestamp: str = ""

    @classmethod
    def for_problem(cls, suite: str, provider: str, problem: Problem, status: str, detail: str = "", **kw: Any) -> Row:
        pf = {k: v for k, v in problem.as_dict().items()}
        return cls(suite=suite, provider=provider, status=status, detail=detail, label=problem.label(), **pf, **kw)

    def problem(self) -> Problem:
        return Problem(**{k: getattr(self, k) for k in PROBLEM_FIELDS})

    def case_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in PROBLEM_FIELDS)


COLUMNS = tuple(f.name for f in fields(Row))
BANDWIDTH_OPS = ("decode", "kv_write", "mla_decode")  # reported in GB/s; the others in TFLOP/s
_TYPES = {f.name: f.type for f in fields(Row)}


def _git_head(folder: Path) -> str | None:
    """``git rev-parse`` of the checkout holding ``folder`` ("-dirty" with local changes to
    tracked files); ``None`` outside a checkout or without git."""
    if not folder.is_dir():
        return None
    git = {"capture_output": True, "text": True, "timeout": 10, "cwd": folder}
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], **git).stdout.strip()  # type: ignore[call-overload]
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git).stdout  # type: ignore[call-overload]
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty.strip() else "")


def _installed_from() -> dict[str, Any] | None:
    """pip's record of where attn-bench was installed from (PEP 610 ``direct_url.json``)."""
    try:
        text = importlib.metadata.distribution("attn-bench").read_text("direct_url.json")
        return json.loads(text) if text else None
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def git_sha() -> str:
    """The commit recorded in every row: ``$ATTN_BENCH_COMMIT`` where set; else the checkout
    this package runs from (an editable install or ``PYTHONPATH``); else the one pip installed
    it from (a local folder that is a checkout, or a git URL's commit); else ``"unknown"``."""
    if os.environ.get(COMMIT_ENV, "").strip():
        return os.environ[COMMIT_ENV].strip()
    sha = _git_head(Path(__file__).resolve().parent)
    if sha:
        return sha
    origin = _installed_from() or {}
    commit = origin.get("vcs_info", {}).get("commit_id")
    if commit:
        return str(commit)[:12]
    url = urllib.parse.urlparse(origin.get("url", ""))
    if url.scheme == "file":
        sha = _git_head(Path(urllib.request.url2pathname(url.path)))
        if sha:
            return sha
    return "unknown"


def run_note(rows: list[Row], *, cpu: bool, interpreter: bool) -> str | None:
    """What the numbers of a run are, for its summary header; ``None`` for a GPU run in which
    something was timed."""
    notes = []
    if cpu and interpreter:
        notes.append("CPU wall-clock; Triton kernels through the Triton interpreter: NOT performance numbers")
    elif cpu:
        failed = sum(r.status == "error" for r in rows)
        errors = f" ({failed} rows are errors)" if failed else ""
        notes.append(
            "CPU wall-clock of the providers that run on a CPU: NOT performance numbers. TRITON_INTERPRET is "
            f"not set, so the Triton kernels cannot run here{errors}; set TRITON_INTERPRET=1 to run them "
            "through Triton's interpreter"
        )
    if rows and not any(r.status == "ok" for r in rows):
        notes.append("no provider produced a timing: every case errored or was skipped (tables below)")
    return "; ".join(notes) or None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def _parse(name: str, s: str) -> Any:
    t = _TYPES[name]
    if t in ("int", int):
        return int(s) if s else 0
    if t in ("float", float):
        return float(s) if s else math.nan
    return s


def write_csv(rows: Iterable[Row], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_fmt(getattr(r, c)) for c in COLUMNS])


_LATER_COLUMNS = {"head_dim_v": "0"}


def read_csv(path: Path | str) -> list[Row]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        # Columns added later read as their problem default (0: no separate value head size),
        # so that results written before them still compare.
        missing = set(COLUMNS) - set(reader.fieldnames or ()) - set(_LATER_COLUMNS)
        if missing:
            raise ValueError(f"{path} is not an attn-bench CSV: missing columns {sorted(missing)}")
        return [Row(**{c: _parse(c, d.get(c, _LATER_COLUMNS.get(c, ""))) for c in COLUMNS}) for d in reader]


def fill_baselines(rows: list[Row], preference: dict[str, tuple[str, ...]]) -> None:
    """Per case, ratio of the baseline's median to each provider's; the baseline is the first
    provider in the row's suite preference list with an ``ok`` row for that case."""
    ok: dict[tuple[str, tuple[Any, ...]], dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if r.status == "ok":
            ok[(r.suite, r.case_key())][r.provider] = r
    for r in rows:
        r.baseline, r.ratio_to_baseline = "", math.nan
        if r.status != "ok":
            continue
        case = ok[(r.suite, r.case_key())]
        base = next((case[n] for n in preference.get(r.suite, ()) if n in case), None)
        if base is not None:
            r.baseline = base.provider
            r.ratio_to_baseline = base.p50_us / r.p50_us


def _time(us: float) -> str:
    return f"{us / 1e3:,.2f} ms" if us >= 1e4 else f"{us:,.1f} us"


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _cell(r: Row) -> str:
    if r.status != "ok":
        return f"{r.status}"
    rate = f"{_rate(r.gbps)} GB/s" if r.op in BANDWIDTH_OPS else f"{_rate(r.tflops)} TF/s"
    pct = "" if math.isnan(r.pct_roofline) else f" ({r.pct_roofline:.0f}%)"
    ratio = "" if math.isnan(r.ratio_to_baseline) else f" · {r.ratio_to_baseline:.2f}x"
    return f"{_time(r.p50_us)} · {rate}{pct}{ratio}"


def markdown_summary(rows: list[Row], header: dict[str, str]) -> str:
    """One table per (suite, op): cases down, providers across; then every skip and failure."""
    out = ["# attn-bench results", ""]
    out += [f"- **{k}**: {v}" for k, v in header.items()]
    out += [
        "",
        "Cells: median time · GB/s (decode, KV write: K+V bytes once; MLA decode: latent rows once)"
        " or TFLOP/s (prefill, mixed, MLA prefill)"
        " (percent of the measured roofline) · speed relative to the baseline provider"
        " (baseline time / this time).",
        "",
    ]
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.suite, r.op)].append(r)
    for (suite, op), rs in groups.items():
        provs = [
            p for p in dict.fromkeys(r.provider for r in rs) if any(r.provider == p and r.status == "ok" for r in rs)
        ]
        if not provs:
            continue
        base = next((r.baseline for r in rs if r.baseline), "")
        out += [f"## {suite}: {op}" + (f" (baseline: {base})" if base else ""), ""]
        out.append("| case | " + " | ".join(provs) + " |")
        out.append("|---|" + "---|" * len(provs))
        cases: dict[tuple[Any, ...], dict[str, Row]] = defaultdict(dict)
        labels: dict[tuple[Any, ...], str] = {}
        for r in rs:
            cases[r.case_key()][r.provider] = r
            labels[r.case_key()] = r.label
        for key, by in cases.items():
            cells = [_cell(by[p]) if p in by else "" for p in provs]
            out.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
        out.append("")
    failed = [r for r in rows if r.status in ("wrong", "error")]
    if failed:
        out += ["## Failed (not timed)", "", "| suite | provider | case | status | why |", "|---|---|---|---|---|"]
        for r in failed:
            out.append(f"| {r.suite} | {r.provider} | {r.label} | {r.status} | {r.detail.replace('|', '/')} |")
        out.append("")
    skipped: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        if r.status == "skipped":
            skipped[(r.provider, r.detail)].append(r)
    if skipped:
        out += ["## Skipped", "", "| provider | why | cases |", "|---|---|---|"]
        for (prov, why), rs in skipped.items():
            out.append(f"| {prov} | {why.replace('|', '/')} | {len(rs)} |")
        out.append("")
    return "\n".join(out)


@dataclass(frozen=True)
class Comparison:
    label: str
    provider: str
    old_us: float
    new_us: float
    ratio: float  # new / old; > 1 is slower
    flag: str  # "regression" | "improvement" | ""


def compare(old: list[Row], new: list[Row], threshold: float = 0.05) -> list[Comparison]:
    """Per (case, provider) ratio of new to old medians; beyond ``threshold`` it is flagged."""
    before = {(r.op, r.provider, r.case_key()): r for r in old if r.status == "ok"}
    out = []
    for r in new:
        if r.status != "ok":
            continue
        o = before.get((r.op, r.provider, r.case_key()))
        if o is None:
            continue
        ratio = r.p50_us / o.p50_us
        flag = "regression" if ratio > 1 + threshold else "improvement" if ratio < 1 / (1 + threshold) else ""
        out.append(Comparison(r.label, r.provider, o.p50_us, r.p50_us, ratio, flag))
    return out


def comparison_markdown(cmp: list[Comparison], threshold: float) -> str:
    lines = [
        f"| case | provider | old us | new us | new/old | (threshold {threshold:.0%}) |",
        "|---|---|---|---|---|---|",
    ]
    for c in cmp:
        mark = {"regression": "**REGRESSION**", "improvement": "faster"}.get(c.flag, "")
        lines.append(f"| {c.label} | {c.provider} | {c.old_us:,.1f} | {c.new_us:,.1f} | {c.ratio:.3f} | {mark} |")
    n_reg = sum(c.flag == "regression" for c in cmp)
    lines += ["", f"{len(cmp)} matched cases, {n_reg} regressions."]
    return "\n".join(lines)
