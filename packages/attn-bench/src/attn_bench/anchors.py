"""Set a run beside the peer numbers of ANCHORS.md (``anchors.toml``): for each anchor point
the measured value, the anchor, their ratio, and a flag where they differ by more than the
tolerance (10% by default, the issue's bar for vLLM's kernels)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from .results import read_csv

__all__ = ["AnchorCheck", "anchors_markdown", "check_anchors", "load_anchors"]


@dataclass(frozen=True)
class AnchorCheck:
    what: str
    provider: str
    unit: str
    anchor: float
    measured: float | None

    def ratio(self) -> float | None:
        return None if self.measured is None else self.measured / self.anchor


def load_anchors() -> dict[str, Any]:
    return tomllib.loads(resources.files("attn_bench").joinpath("anchors.toml").read_text())


def _geometry_ok(r: Any) -> bool:
    return (r.num_q_heads, r.num_kv_heads, r.head_dim, r.block_size, r.dtype, r.kv_dtype) == (
        32,
        8,
        128,
        16,
        "bfloat16",
        "bfloat16",
    )


def check_anchors(results_csv: Path | None, e2e_csv: Path | None) -> list[AnchorCheck]:
    data = load_anchors()
    out: list[AnchorCheck] = []
    rows = [r for r in read_csv(results_csv) if r.status == "ok" and _geometry_ok(r)] if results_csv else []
    if results_csv:
        for a in data["decode"]:
            for prov, us in a["us"].items():
                hit = [
                    r
                    for r in rows
                    if r.op == "decode" and (r.batch, r.context, r.provider) == (a["batch"], a["context"], prov)
                ]
                out.append(
                    AnchorCheck(
                        f"decode b{a['batch']} ctx{a['context']}", prov, "us", us, hit[0].p50_us if hit else None
                    )
                )
        for a in data["prefill"]:
            for prov, tf in a["tflops"].items():
                hit = [
                    r
                    for r in rows
                    if r.op == "prefill"
                    and r.q_len == r.context
                    and (r.batch, r.context, r.provider) == (a["batch"], a["context"], prov)
                ]
                out.append(
                    AnchorCheck(
                        f"prefill b{a['batch']} L{a['context']}", prov, "TFLOP/s", tf, hit[0].tflops if hit else None
                    )
                )
    if e2e_csv:
        with open(e2e_csv, newline="") as f:
            e2e_rows = [d for d in csv.DictReader(f) if d["status"] == "ok"]
        for a in data["e2e"]:
            for backend, v in a["value"].items():
                runs = [d for d in e2e_rows if d["workload"] == a["workload"] and d["label"] == backend]
                out.append(
                    AnchorCheck(
                        f"e2e {a['workload']}", backend, a["metric"], v, float(runs[-1][a["metric"]]) if runs else None
                    )
                )
    return out


def anchors_markdown(checks: list[AnchorCheck], tolerance: float) -> str:
    lines = [
        f"Measured against {load_anchors()['source']}; flagged beyond +/-{tolerance:.0%}.",
        "",
        "| point | provider | unit | anchor | measured | measured / anchor | |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        ratio = c.ratio()
        if ratio is None:
            lines.append(f"| {c.what} | {c.provider} | {c.unit} | {c.anchor:,.1f} | not in run | | |")
            continue
        flag = "**differs**" if abs(ratio - 1) > tolerance else "ok"
        lines.append(
            f"| {c.what} | {c.provider} | {c.unit} | {c.anchor:,.1f} | {c.measured:,.1f} | {ratio:.2f} | {flag} |"
        )
    return "\n".join(lines)
