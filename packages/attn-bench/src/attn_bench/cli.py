"""The ``attn-bench`` command.

attn-bench run SUITE... [--providers P,...] [--out DIR] [--quick] [--max-cases N] [--budget S]
attn-bench list
attn-bench plot RESULTS.csv [--out DIR]
attn-bench compare OLD.csv NEW.csv [--threshold 0.05] [--fail-on-regression]
attn-bench e2e [--backends ours,FLASH_ATTN,...] [--workload NAME ...] [--out DIR] [--cold-start]
attn-bench merge DIR... --out DIR
attn-bench anchors [RESULTS.csv] [--e2e E2E.csv]
attn-bench check-vllm [--engines triton flash_attn ...] [--kv-cache-dtype fp8] [--serve] ...
attn-bench soak [--duration S] [--concurrency N] [--tiny] ...
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path


def _csv_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _cmd_run(a: argparse.Namespace) -> int:
    from .runner import RunOptions, run

    run(
        RunOptions(
            suites=a.suites,
            providers=a.providers,
            out=a.out,
            quick=a.quick,
            max_cases=a.max_cases,
            budget_s=a.budget,
            runs=a.runs,
            device=a.device,
            plot=not a.no_plot,
            only=a.ops or [],
            append=a.append,
        )
    )
    return 0


def _cmd_list(a: argparse.Namespace) -> int:
    import torch

    from .problems import list_suites, load_suite
    from .registry import all_providers

    print("Suites:")
    for name in list_suites():
        s = load_suite(name)
        print(f"  {name:<10} {len(s.problems):4d} cases ({len(s.quick)} with --quick)")
        print(textwrap.fill(s.description, 100, initial_indent=" " * 4, subsequent_indent=" " * 4))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"\nProviders (on {device.type}):")
    for p in all_providers():
        why = p.unavailable(device)
        state = "available" if why is None else f"SKIPPED: {why}"
        print(f"  {p.name:<22} {','.join(p.ops):<24} {state}\n  {'':<22} {p.description}")
    if a.cases:
        for name in a.cases:
            for prob in load_suite(name).problems:
                print(f"  {name}: {prob.label()}")
    return 0


def _cmd_plot(a: argparse.Namespace) -> int:
    from .plot import plot_csv

    for m in plot_csv(a.csv, a.out):
        print(m)
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from .results import compare, comparison_markdown, read_csv

    cmp = compare(read_csv(a.old), read_csv(a.new), a.threshold)
    print(comparison_markdown(cmp, a.threshold))
    if a.fail_on_regression and any(c.flag == "regression" for c in cmp):
        return 1
    return 0


def _cmd_merge(a: argparse.Namespace) -> int:
    from .e2e import merge_e2e
    from .runner import merge

    micro = [s for s in a.sources if (s / "results.csv").exists() or s.suffix == ".csv"]
    e2e = [s for s in a.sources if (s / "runs.json").exists()]
    if not micro and not e2e:
        raise SystemExit("no results.csv or e2e runs.json in the given folders")
    if micro:
        merge(micro, a.out, plot=not a.no_plot)
    if e2e:
        out = merge_e2e(e2e, a.out / "e2e" if micro else a.out, a.reference)
        print((out / "e2e.md").read_text())
    return 0


def _cmd_anchors(a: argparse.Namespace) -> int:
    from .anchors import anchors_markdown, check_anchors

    if a.csv is None and a.e2e is None:
        raise SystemExit("give a results CSV and/or --e2e E2E.csv")
    print(anchors_markdown(check_anchors(a.csv, a.e2e), a.tolerance))
    return 0


def _cmd_e2e(a: argparse.Namespace) -> int:
    from .e2e import DEFAULT_BACKENDS, MODEL_BACKENDS, E2EOptions, run_e2e

    return run_e2e(
        E2EOptions(
            backends=a.backends or list(MODEL_BACKENDS.get(a.model, DEFAULT_BACKENDS)),
            workloads=a.workload,
            out=a.out,
            model=a.model,
            timeout_s=a.timeout,
            extra=a.engine_arg or [],
            reference=a.reference,
            weights=a.weights,
            cold_start=a.cold_start,
        )
    )


def _cmd_check_vllm(a: argparse.Namespace) -> int:
    from .check_vllm import main as check_vllm

    return check_vllm(a)


def _cmd_soak(a: argparse.Namespace) -> int:
    from .soak import main as soak

    return soak(a)


def build_parser() -> argparse.ArgumentParser:
    from .problems import OPS  # standard library only: cheap

    ap = argparse.ArgumentParser(prog="attn-bench", description="Attention microbenchmarks and vLLM end-to-end runs.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run benchmark suites")
    r.add_argument("suites", nargs="+", help="suite names (see `attn-bench list`)")
    r.add_argument("--providers", type=_csv_list, default=None, help="comma-separated providers (default: all)")
    r.add_argument("--ops", type=_csv_list, default=None, help=f"keep only these ops ({','.join(OPS)})")
    r.add_argument("--out", type=Path, default=None, help="output folder (default results/<gpu>/<timestamp>)")
    r.add_argument("--quick", action="store_true", help="only the sweeps marked quick (the ANCHORS.md points)")
    r.add_argument("--max-cases", type=int, default=None, help="stop after this many cases")
    r.add_argument("--budget", type=float, default=None, help="seconds; later cases are recorded as skipped")
    r.add_argument("--runs", type=int, default=None, help="timed runs per case (default 100 on CUDA, 3 on CPU)")
    r.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    r.add_argument("--no-plot", action="store_true", help="write CSV and Markdown only")
    r.add_argument(
        "--append", action="store_true", help="add to --out's results.csv (a rerun case+provider replaces its row)"
    )
    r.set_defaults(func=_cmd_run)

    ls = sub.add_parser("list", help="list suites and providers (with skip reasons)")
    ls.add_argument("--cases", nargs="*", default=None, help="also print the cases of these suites")
    ls.set_defaults(func=_cmd_list)

    p = sub.add_parser("plot", help="PNG plots from a results CSV")
    p.add_argument("csv", type=Path)
    p.add_argument("--out", type=Path, default=None, help="folder for plots/ (default: next to the CSV)")
    p.set_defaults(func=_cmd_plot)

    c = sub.add_parser("compare", help="per-case ratios of two results CSVs; regressions flagged")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    c.add_argument("--threshold", type=float, default=0.05, help="flag ratios beyond 1 +/- this (default 0.05)")
    c.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a regression is flagged")
    c.set_defaults(func=_cmd_compare)

    m = sub.add_parser("merge", help="combine result folders of several runs (microbench and/or e2e)")
    m.add_argument("sources", nargs="+", type=Path, help="folders holding results.csv and/or e2e runs.json")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--reference", default=None, help="e2e: backend label whose tokens others are compared with")
    m.add_argument("--no-plot", action="store_true")
    m.set_defaults(func=_cmd_merge)

    an = sub.add_parser("anchors", help="a run beside the peer numbers of ANCHORS.md (H100)")
    an.add_argument("csv", type=Path, nargs="?", default=None, help="results.csv of `attn-bench run`")
    an.add_argument("--e2e", type=Path, default=None, help="e2e.csv of `attn-bench e2e`")
    an.add_argument("--tolerance", type=float, default=0.10)
    an.set_defaults(func=_cmd_anchors)

    e = sub.add_parser("e2e", help="vLLM offline throughput per attention backend (one subprocess each)")
    e.add_argument(
        "--backends",
        type=_csv_list,
        default=None,
        help="LABEL or LABEL=BACKEND; 'ours' means our plugin (backend CUSTOM); BACKEND 'auto' sets none "
        "(default: the model's, e2e.MODEL_BACKENDS, else ours,FLASH_ATTN,TRITON_ATTN,FLEX_ATTENTION)",
    )
    e.add_argument(
        "--workload",
        nargs="+",
        default=None,
        help="workload names (default: the model's, e2e.MODEL_WORKLOADS, else all but tiny); see e2e.WORKLOADS",
    )
    e.add_argument("--out", type=Path, default=None, help="output folder (default results/<gpu>/e2e-<timestamp>)")
    e.add_argument(
        "--model",
        default="llama-3.1-8b",
        help="a model config shipped in attn_bench/models (llama-3.1-8b, deepseek-v2-lite), or a folder",
    )
    e.add_argument("--timeout", type=float, default=1800, help="seconds per backend subprocess")
    e.add_argument("--reference", default=None, help="backend label whose tokens others are compared with")
    e.add_argument("--engine-arg", action="append", help="extra LLM(...) keyword as KEY=JSON, repeatable")
    e.add_argument(
        "--weights",
        choices=["sharp", "dummy"],
        default="sharp",
        help="sharp (default): redraw the dummy weights so greedy tokens are comparable (attn_bench.weights)",
    )
    e.add_argument(
        "--cold-start",
        action="store_true",
        help="per backend: start once with fresh compile caches of its own (cold), then run with them kept (warm)",
    )
    e.set_defaults(func=_cmd_e2e)

    from . import check_vllm, soak

    for name, module, func, what in (
        ("check-vllm", check_vllm, _cmd_check_vllm, "greedy tokens of our plugin against stock vLLM (FLASH_ATTN)"),
        ("soak", soak, _cmd_soak, "vLLM's OpenAI server with our plugin under concurrent load"),
    ):
        sp = sub.add_parser(
            name, help=what, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sp)
        sp.set_defaults(func=func)
    return ap


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return int(a.func(a) or 0)
    except ValueError as e:
        if a.cmd not in ("check-vllm", "soak"):
            raise
        parser.error(f"{a.cmd}: {e}")


if __name__ == "__main__":
    sys.exit(main())
