"""Run suites: for each case build inputs once, then for each provider set up, check
against the reference, time, and record one row (ok, wrong, error or skipped)."""

from __future__ import annotations

import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import metrics
from .check import check
from .inputs import make_inputs
from .problems import Problem, load_suite
from .registry import Provider, Skip, providers_for
from .results import COMMIT_ENV, Row, fill_baselines, git_sha, markdown_summary, read_csv, run_note, write_csv
from .timing import Ceilings, measure, measure_ceilings

__all__ = ["RunOptions", "environment", "run"]


@dataclass
class RunOptions:
    suites: list[str]
    providers: list[str] | None = None
    out: Path | None = None
    quick: bool = False
    max_cases: int | None = None
    budget_s: float | None = None  # stop starting new cases after this many seconds
    runs: int | None = None  # default: 100 on CUDA, 3 on CPU
    device: str | None = None
    plot: bool = True
    only: list[str] = field(default_factory=list)  # ops to keep
    append: bool = False  # keep the rows of an existing out/results.csv (same case+provider: replaced)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _git_sha() -> str:
    return git_sha()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, Triton interpreter)" if _interpreting() else f"cpu ({cpu})"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def environment(device: torch.device) -> dict[str, str]:
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "vllm": _version("vllm"),
        "git_sha": _git_sha(),
        "python": platform.python_version(),
    }


def _cases(opts: RunOptions) -> Iterator[tuple[str, Problem]]:
    seen = set()
    count = 0
    for name in opts.suites:
        suite = load_suite(name)
        for p in suite.quick if opts.quick else suite.problems:
            if opts.only and p.op not in opts.only:
                continue
            if (name, p) in seen:
                continue
            seen.add((name, p))
            count += 1
            if opts.max_cases is not None and count > opts.max_cases:
                return
            yield name, p


class _Progress:
    """tqdm on a terminal (when installed), else one line per case with elapsed time and ETA
    (readable in a log file)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.bar: Any = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="case", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pass

    def step(self, what: str, outcome: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what[:60], refresh=False)
            self.bar.update(1)
            return
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done)
        line = f"[{self.done}/{self.total}] {el:5.0f}s, ETA {eta:4.0f}s  {what}"
        print(line + (f"  | {outcome}" if outcome else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one(prov: Provider, x: Any, device: torch.device, runs: int, base: dict[str, Any]) -> dict[str, Any]:
    """Set up, check and time one provider on one case; returns Row fields."""
    p = x.problem
    if p.op == "kv_write":  # poison: every checked slot must be written by this provider
        x.k_cache.zero_()
        x.v_cache.zero_()
    timed = prov.make(x)
    result = timed.fn()
    _sync(device)
    verdict = check(x, timed.read(result))
    del result
    if not verdict.ok:
        return {"status": "wrong", "detail": verdict.detail, "max_err": verdict.max_err}
    t = measure(timed.fn, device, runs=runs, graph=timed.graph)
    secs = t.p50_us * 1e-6
    rate_b, rate_f = metrics.bytes_moved(p) / secs, metrics.flops(p) / secs
    floor = metrics.roofline_seconds(p, base["ceiling_gbps"], base["ceiling_tflops"])
    return {
        "status": "ok",
        "detail": "",
        "max_err": verdict.max_err,
        "p20_us": t.p20_us,
        "p50_us": t.p50_us,
        "p80_us": t.p80_us,
        "runs": t.runs,
        "method": t.method,
        "gbps": rate_b / 1e9,
        "tflops": rate_f / 1e12,
        "pct_roofline": 100.0 * floor / secs,
    }


def run(opts: RunOptions) -> Path:
    """Run the suites; write results.csv, summary.md, env.json (and plots); return the folder."""
    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = environment(device)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = opts.out or Path("results") / slug(env["device"].split(" (")[0]) / stamp
    out.mkdir(parents=True, exist_ok=True)
    cpu = device.type != "cuda"
    runs = opts.runs or (3 if cpu else 100)
    if cpu:
        print(f"attn-bench: no CUDA device. {run_note([], cpu=True, interpreter=_interpreting())}.", file=sys.stderr)
    if env["git_sha"] == "unknown":
        print(f"attn-bench: no git history here: set {COMMIT_ENV}=<commit> to record the commit", file=sys.stderr)
    print(f"attn-bench: measuring ceilings on {env['device']} ...", file=sys.stderr)
    ceil: Ceilings = measure_ceilings(device)
    print(
        f"attn-bench: copy {ceil.copy_gbps:,.0f} GB/s, matmul {ceil.matmul_tflops:.4g} TFLOP/s ({ceil.method})",
        file=sys.stderr,
    )
    base = {
        "ceiling_gbps": ceil.copy_gbps,
        "ceiling_tflops": ceil.matmul_tflops,
        **{k: env[k] for k in ("device", "torch", "triton", "vllm", "git_sha")},
        "timestamp": stamp,
    }
    provs = providers_for(opts.providers)
    cases = list(_cases(opts))
    rows: list[Row] = []
    prior: list[Row] = []
    if opts.append and (out / "results.csv").exists():
        prior = read_csv(out / "results.csv")
        print(f"attn-bench: appending to {len(prior)} rows in {out / 'results.csv'}", file=sys.stderr)
    log = out / "errors.log"
    t0 = time.perf_counter()
    bar = _Progress(len(cases))
    broken = ""  # set when the device is left in an error state: the rest cannot run
    for suite, p in cases:
        first_row = len(rows)
        over = opts.budget_s is not None and time.perf_counter() - t0 > opts.budget_s
        stop = "time budget spent" if over else broken
        x = None
        setup_error = ""
        if not stop:
            try:
                x = make_inputs(p, device)
            except Exception as exc:  # e.g. out of memory for the largest cases
                setup_error = f"inputs: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        for prov in provs:
            if p.op not in prov.ops:  # not a peer for this op: no row at all
                continue
            reason = prov.unavailable(device) or prov.unsupported(p)
            if reason is not None:
                rows.append(Row.for_problem(suite, prov.name, p, "skipped", reason, **base))
                continue
            if stop:
                rows.append(Row.for_problem(suite, prov.name, p, "skipped", stop, **base))
                continue
            if broken:
                rows.append(Row.for_problem(suite, prov.name, p, "skipped", broken, **base))
                continue
            if x is None:
                rows.append(Row.for_problem(suite, prov.name, p, "error", setup_error, **base))
                continue
            try:
                fields_ = _one(prov, x, device, runs, base)
            except Skip as exc:
                fields_ = {"status": "skipped", "detail": str(exc)}
            except Exception as exc:
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:240]
                fields_ = {"status": "error", "detail": msg}
                with open(log, "a") as f:
                    f.write(f"== {suite} | {prov.name} | {p.label()}\n{traceback.format_exc()}\n")
                try:
                    _sync(device)
                except Exception as sticky:  # e.g. an illegal memory access poisons the context
                    broken = f"device in error state after {prov.name} failed on {p.label()}: {type(sticky).__name__}"
                    print(f"attn-bench: {broken}; the remaining cases are skipped", file=sys.stderr)
            rows.append(Row.for_problem(suite, prov.name, p, **{**base, **fields_}))
            gc.collect()
        del x
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        bar.step(p.label(), _outcome(rows[first_row:]))
        _write(_merge(prior, rows), opts, out, env, ceil, cpu)  # after every case: a killed run keeps its rows
    bar.close()
    _write(_merge(prior, rows), opts, out, env, ceil, cpu)
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "wrong", "error", "skipped")}
    print(f"attn-bench: {counts} in {time.perf_counter() - t0:.0f}s -> {out}", file=sys.stderr)
    if opts.plot:
        from .plot import plot_csv

        made = plot_csv(out / "results.csv", out)
        for m in made:
            print(f"attn-bench: {m}", file=sys.stderr)
    return out


def _outcome(rows: list[Row]) -> str:
    """One case's results in a few words: medians of timed providers, other statuses."""
    parts = []
    for r in rows:
        if r.status == "ok":
            parts.append(f"{r.provider} {r.p50_us:,.1f}us")
        elif r.status != "skipped":
            parts.append(f"{r.provider} {r.status.upper()}")
    return ", ".join(parts)


def _merge(prior: list[Row], rows: list[Row]) -> list[Row]:
    new = {(r.suite, r.provider, r.case_key()) for r in rows}
    return [r for r in prior if (r.suite, r.provider, r.case_key()) not in new] + rows


def _write(rows: list[Row], opts: RunOptions, out: Path, env: dict[str, str], ceil: Ceilings, cpu: bool) -> None:
    pref = {}
    for name in dict.fromkeys([*opts.suites, *(r.suite for r in rows)]):
        try:
            pref[name] = load_suite(name).baseline
        except ValueError:  # a suite of an older run that no longer exists
            pref[name] = ()
    fill_baselines(rows, pref)
    write_csv(rows, out / "results.csv")
    header = {
        **env,
        "copy ceiling": f"{ceil.copy_gbps:,.0f} GB/s",
        "bf16 matmul ceiling": f"{ceil.matmul_tflops:.4g} TFLOP/s",
        "ceilings measured": ceil.method,
        "suites": ", ".join(dict.fromkeys(r.suite for r in rows)) + (" (--quick)" if opts.quick else ""),
    }
    note = run_note(rows, cpu=cpu, interpreter=_interpreting())
    if note:
        header["WARNING"] = note
    (out / "summary.md").write_text(markdown_summary(rows, header))
    (out / "env.json").write_text(json.dumps({**header, "argv": sys.argv}, indent=2))


def merge(sources: list[Path], out: Path, plot: bool = True) -> Path:
    """Combine the results.csv of several run folders (e.g. one per short GPU command) into
    ``out``: a later folder's row for the same suite, case and provider replaces an earlier
    one; baselines, summary and plots are redone over the union."""
    rows: list[Row] = []
    for src in sources:
        path = src / "results.csv" if src.is_dir() else src
        if path.exists():
            rows = _merge(rows, read_csv(path))
    if not rows:
        raise SystemExit(f"no results.csv in {', '.join(map(str, sources))}")
    out.mkdir(parents=True, exist_ok=True)
    pref = {}
    for name in dict.fromkeys(r.suite for r in rows):
        try:
            pref[name] = load_suite(name).baseline
        except ValueError:
            pref[name] = ()
    fill_baselines(rows, pref)
    write_csv(rows, out / "results.csv")
    first = rows[0]
    header = {
        "device": ", ".join(dict.fromkeys(r.device for r in rows)),
        "torch": first.torch,
        "triton": first.triton,
        "vllm": first.vllm,
        "git_sha": ", ".join(dict.fromkeys(r.git_sha for r in rows)),
        "copy ceiling": ", ".join(dict.fromkeys(f"{r.ceiling_gbps:,.0f} GB/s" for r in rows)),
        "bf16 matmul ceiling": ", ".join(dict.fromkeys(f"{r.ceiling_tflops:.4g} TFLOP/s" for r in rows)),
        "merged from": ", ".join(map(str, sources)),
    }
    cpu = any(r.method.startswith("cpu") or r.device.startswith("cpu") for r in rows)
    note = run_note(rows, cpu=cpu, interpreter=any("interpreter" in r.device for r in rows))
    if note:
        header["WARNING"] = note
    (out / "summary.md").write_text(markdown_summary(rows, header))
    print(f"attn-bench: {len(rows)} rows -> {out}", file=sys.stderr)
    if plot:
        from .plot import plot_csv

        for m in plot_csv(out / "results.csv", out):
            print(f"attn-bench: {m}", file=sys.stderr)
    return out
