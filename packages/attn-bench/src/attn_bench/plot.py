"""PNG plots from a results CSV (and nothing else): for each suite and op, throughput
against context with one subplot per batch size and one line per provider (one figure per
geometry: heads, head_dim, dtypes, prefill kind); and one roofline per suite.

matplotlib is optional: without it, ``plot_csv`` says so and returns, and the plots can be
made later anywhere with ``attn-bench plot results.csv``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .metrics import flops, intensity
from .problems import OPS
from .results import BANDWIDTH_OPS, Row, read_csv

__all__ = ["plot_csv"]

_RATE = {op: "gbps" if op in BANDWIDTH_OPS else "tflops" for op in OPS}
_UNIT = {"gbps": "GB/s (K+V or latent bytes once)", "tflops": "TFLOP/s"}


def _variant(r: Row) -> str:
    parts = [
        f"h{r.num_q_heads}-{r.num_kv_heads}",
        f"d{r.head_dim}" + (f"-{r.head_dim_v}" if r.head_dim_v else ""),
        r.dtype,
    ]
    if r.kv_dtype != r.dtype:
        parts.append(f"kv-{r.kv_dtype}")
    if r.op == "mla_decode" and r.q_len > 1:
        parts.append(f"q{r.q_len}")
    if r.op in ("prefill", "mla_prefill"):
        parts.append("fresh" if r.q_len == r.context else f"chunk{r.q_len}")
    if r.op == "kv_write":
        parts.append("decode-step" if r.q_len == 1 else "prompt")
    if r.op == "mixed":
        parts.append(f"plus{r.chunks}x{r.chunk_len}-of-{r.chunk_context}")
    if r.variant:
        parts.append(r.variant.replace("=", ""))
    return "_".join(parts)


def _providers(rows: list[Row]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.provider for r in rows))
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _note(cpu: bool) -> str:
    return "  [CPU: NOT performance numbers]" if cpu else ""


def _title(suite: str, what: str) -> str:
    """``what`` alone when the suite is named after it (no "decode: decode ...")."""
    return what if what.split(" ", 1)[0] == suite else f"{suite} suite: {what}"


def _throughput(rows: list[Row], path: Path, title: str, colors: dict[str, Any], cpu: bool) -> None:
    import matplotlib.pyplot as plt

    metric = _RATE[rows[0].op]
    batches = sorted({r.batch for r in rows})
    n = len(batches)
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    # At least 6.4 inches wide, so that one panel still has room for its title and legend.
    width = max(6.4, 4.2 * cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(width, 3.4 * nrows + 1.0), squeeze=False, layout="constrained")
    for ax, b in zip(axes.flat, batches, strict=False):
        sub = [r for r in rows if r.batch == b]
        for prov in dict.fromkeys(r.provider for r in sub):
            pts = sorted((r.context, getattr(r, metric)) for r in sub if r.provider == prov)
            ax.plot([c for c, _ in pts], [v for _, v in pts], "o-", label=prov, color=colors[prov], ms=4)
        ceiling = sub[0].ceiling_gbps if metric == "gbps" else sub[0].ceiling_tflops
        if not math.isnan(ceiling):
            ax.axhline(ceiling, ls="--", color="grey", lw=1, label="measured ceiling")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.set_title(f"batch {b}", fontsize=9)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(_UNIT[metric])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    labels: dict[str, Any] = {}
    for ax in axes.flat:  # every provider of any panel, once
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            labels.setdefault(lab, h)
    ncol = max(1, min(len(labels), int(width // 1.6)))
    fig.legend(list(labels.values()), list(labels), loc="outside lower center", ncol=ncol, fontsize=8)
    fig.suptitle(f"{title}\n{rows[0].device}{_note(cpu)}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _roofline(rows: list[Row], path: Path, title: str, colors: dict[str, Any], cpu: bool) -> None:
    import matplotlib.pyplot as plt

    pts = [(r, intensity(r.problem())) for r in rows if flops(r.problem()) > 0]
    if not pts:
        return
    bw, peak = rows[0].ceiling_gbps, rows[0].ceiling_tflops
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    lo = min(i for _, i in pts) / 2
    hi = max(i for _, i in pts) * 2
    xs = [lo * (hi / lo) ** (k / 100) for k in range(101)]
    ax.plot(xs, [min(peak, bw * x / 1e3) for x in xs], "k-", lw=1.2, label="measured roofline")
    markers = {"decode": "o", "prefill": "s", "mixed": "^"}
    seen = set()
    for r, i in pts:
        lab = r.provider if r.provider not in seen else None
        seen.add(r.provider)
        ax.scatter(i, r.tflops, color=colors[r.provider], marker=markers.get(r.op, "o"), s=18, label=lab, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (flop / byte of K+V)")
    ax.set_ylabel("TFLOP/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, title="o decode  s prefill  ^ mixed", title_fontsize=7)
    ax.set_title(f"{title}\n{rows[0].device}{_note(cpu)}", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_csv(csv_path: Path | str, out_dir: Path | str | None = None) -> list[str]:
    """Write PNGs for ``csv_path`` into ``out_dir`` (default: the CSV's folder / plots).
    Returns one message per file written (or why nothing was)."""
    try:
        import matplotlib
    except ImportError:
        return ["matplotlib is not installed: no plots (run `attn-bench plot results.csv` where it is)"]
    matplotlib.use("Agg")
    csv_path = Path(csv_path)
    out = Path(out_dir) if out_dir is not None else csv_path.parent
    out = out / "plots"
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_csv(csv_path) if r.status == "ok"]
    if not rows:
        return [f"no ok rows in {csv_path}: no plots"]
    colors = _providers(rows)
    cpu = any(r.method.startswith("cpu") for r in rows)
    made = []
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.suite, r.op, _variant(r))].append(r)
    for (suite, op, variant), rs in groups.items():
        path = out / f"{suite}-{op}-{variant}.png"
        _throughput(rs, path, _title(suite, f"{op} ({variant.replace('_', ', ')})"), colors, cpu)
        made.append(f"wrote {path}")
    for suite in dict.fromkeys(r.suite for r in rows):
        path = out / f"{suite}-roofline.png"
        _roofline([r for r in rows if r.suite == suite], path, f"{suite} suite: roofline", colors, cpu)
        if path.exists():
            made.append(f"wrote {path}")
    return made
