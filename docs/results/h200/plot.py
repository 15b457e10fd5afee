"""The H200 figure of the README and docs/results.md, from ``figures.csv`` beside this file.

    python docs/results/h200/plot.py          # writes docs/results/h200/h200.png

The CSV holds the tables of ``README.md`` (how they were measured: ``docs/results.md``); it
is not an attn-bench CSV (its decode rows are ratios), so this script draws it, not
``attn-bench plot``. Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import csv
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLORS = {"ours": "#1f77b4", "FA3": "#ff7f0e", "FLASH_ATTN": "#ff7f0e", "TRITON_ATTN": "#7f7f7f"}


def read(path: Path) -> dict[str, list[dict[str, str]]]:
    tables: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            tables[row["table"]].append(row)
    return tables


def _bars(ax, rows: list[dict[str, str]], providers: tuple[str, ...], relative_to: str | None, wrap: int) -> None:  # type: ignore[no-untyped-def]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    value = {(r["case"], r["provider"]): float(r["value"]) for r in rows}
    width = 0.8 / len(providers)
    for i, prov in enumerate(providers):
        xs, ys = [], []
        for j, case in enumerate(cases):
            if (case, prov) not in value:
                continue
            v = value[(case, prov)]
            if relative_to is not None:
                base = value[(case, relative_to)]
                # Time per token: less is better, so the ratio is inverted to read as speed.
                v = base / v if _unit(rows, case) == "ms/token" else v / base
            xs.append(j + (i - (len(providers) - 1) / 2) * width)
            ys.append(v)
        ax.bar(xs, ys, width, label=prov, color=COLORS[prov])
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([textwrap.fill(c, wrap) for c in cases], fontsize=7)


def _unit(rows: list[dict[str, str]], case: str) -> str:
    return next(r["unit"] for r in rows if r["case"] == case)


def plot(csv_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = read(csv_path)
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.1, 1, 1.3]})

    # Decode: our time / FA3's time per batch size, against context.
    by_batch: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in t["decode_speedup"]:
        by_batch[int(r["batch"])].append((int(r["context"]), float(r["value"])))
    cmap = plt.get_cmap("viridis")
    for i, (batch, pts) in enumerate(sorted(by_batch.items())):
        pts.sort()
        a.plot(
            [x for x, _ in pts], [y for _, y in pts], "o-", ms=3, color=cmap(i / len(by_batch)), label=f"batch {batch}"
        )
    a.axhline(1.0, color=COLORS["FA3"], ls="--", lw=1.2, label="FA3 (= 1)")
    a.set_xscale("log", base=2)
    a.set_xticks([1024, 4096, 8192, 16384, 32768], ["1k", "4k", "8k", "16k", "32k"])
    a.set_xlabel("context (tokens)")
    a.set_ylabel("speed relative to FA3 (FA3 time / ours)")
    a.set_title("decode, bf16, 32 q / 8 KV heads, d128", fontsize=10)
    a.legend(fontsize=7, ncol=2, loc="upper right")
    a.grid(alpha=0.3)

    # Causal prefill TFLOP/s.
    _bars(b, t["prefill_tflops"], ("ours", "FA3", "TRITON_ATTN"), None, 7)
    b.set_ylabel("TFLOP/s")
    b.set_title("causal prefill (batch x length)", fontsize=10)
    b.set_ylim(0, 720)
    b.legend(fontsize=7, loc="upper center", ncol=3)
    b.grid(alpha=0.3, axis="y")

    # vLLM end to end, relative to FLASH_ATTN.
    _bars(c, t["e2e"], ("ours", "FLASH_ATTN", "TRITON_ATTN"), "FLASH_ATTN", 15)
    c.set_ylim(0, 1.25)
    c.set_ylabel("speed relative to FLASH_ATTN\n(tok/s; batch 1: 1 / ms per token)")
    c.set_title("vLLM 0.26 end to end, Llama-3.1-8B architecture", fontsize=10)
    c.legend(fontsize=7, loc="upper right", ncol=3)
    c.grid(alpha=0.3, axis="y")

    fig.suptitle("One NVIDIA H200, commit 1d1c36c, peer: vLLM 0.26's FlashAttention-3 (docs/results.md)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str]) -> int:
    csv_path = Path(argv[0]) if argv else HERE / "figures.csv"
    png = Path(argv[1]) if len(argv) > 1 else HERE / "h200.png"
    plot(csv_path, png)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
