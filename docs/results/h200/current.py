"""The README's figure: the latest H200 runs beside vLLM 0.26's FlashAttention-3, drawn from
the attn-bench CSVs themselves (rows and commits in the folders named below).

    python docs/results/h200/current.py        # writes docs/results/h200/current.png

Needs matplotlib. Every bar is a ratio of two times measured in the same process on the
same tensors (FA3's time / ours: above 1 is faster than FA3), except the end-to-end panel,
which is one ``attn-bench e2e`` call (ours' tok/s / FLASH_ATTN's).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MORNING = HERE / "fa3-2026-12-02"  # sources a53c8fc: 16-token pages, FA3 beside
PAGES = HERE / "verify-gluon-2026-12-04"  # sources 78e7a79: decode and verification at 128-token pages
FEATURES = HERE / "prefill-2026-12-04"  # sources 603a39b: prefill and mixed at 128-token pages
OVERLAP = HERE / "overlap-2026-12-04"  # sources 096e939: verification with the softmax beside the PV
E2E = [HERE / "e2e" / f"e2e-2026-12-04b{tag}.csv" for tag in ("", "-fp8")]  # sources 603a39b
OURS, FA3 = "#1f77b4", "#ff7f0e"


def times(path: Path) -> dict[str, dict[str, float]]:
    """label -> provider -> median microseconds, for the rows that passed."""
    out: dict[str, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] == "ok":
                out.setdefault(row["label"], {})[row["provider"]] = float(row["p50_us"])
    return out


def _verify(label: str) -> str:
    # "prefill b16 ctx4096 q8 h32:8 d128 bf16 page128" -> "q8 16 x 4k"
    words = label.split()
    return f"{words[3]} {words[1][1:]} x {int(words[2][3:]) // 1024}k"


def ratios(rows: dict[str, dict[str, float]], ours: str, peer: str, short) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    return [(short(label), t[peer] / t[ours]) for label, t in rows.items() if ours in t and peer in t]


def _short(label: str) -> str:
    # "decode b64 ctx8192 h32:8 d128 bf16 page128" -> "64 x 8k"; other geometries keep their tag.
    words = label.split()
    batch, ctx = words[1][1:], int(words[2][3:])
    q = next((w[1:] for w in words if w.startswith("q") and w[1:].isdigit()), None)
    name = f"{batch} x {ctx // 1024}k"
    if q is not None and q != str(ctx) and int(q) > 16:
        name = f"{batch} x {int(q) // 1024}k on {ctx // 1024}k"
    extra = [w for w in words[3:] if w.startswith(("d64", "d256", "h64")) or w.startswith(("window", "softcap"))]
    return " ".join([name, *extra])


def _mixed(label: str) -> str:
    # "mixed b64 ctx4096 +1x2048/2048 h32:8 d128 bf16 page128" -> "64 x 4k\n+ 2k on 2k"
    words = label.split()
    chunk, prefix = words[3][1:].split("x", 1)[1].split("/")
    return f"{words[1][1:]} x {int(words[2][3:]) // 1024}k\n+ {int(chunk) // 1024}k on {int(prefix) // 1024}k"


def _panel(ax, pts: list[tuple[str, float]], title: str, color: str = OURS) -> None:  # type: ignore[no-untyped-def]
    ax.bar(range(len(pts)), [v for _, v in pts], color=color)
    ax.axhline(1.0, color=FA3, ls="--", lw=1.2)
    ax.set_xticks(range(len(pts)), [n for n, _ in pts], rotation=60, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 1.3)
    ax.grid(alpha=0.3, axis="y")


def plot(png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pages = times(FEATURES / "prefill-page128.csv")
    fa3_16 = times(MORNING / "prefill-p16.csv")
    prefill = {k: v for k, v in pages.items() if k.startswith("prefill")}
    mixed = {k: v for k, v in pages.items() if k.startswith("mixed")}
    gluon = ratios(prefill, "ours-paged", "vllm-fa3", _short)  # the plugin's prefill at its pages
    generic = ratios(fa3_16, "ours-paged", "vllm-fa3", _short)
    dv = times(PAGES / "p128-78e7a79.csv")
    decode = ratios({k: v for k, v in dv.items() if k.startswith("decode")}, "ours-paged", "vllm-fa3", _short)
    dv_new = times(OVERLAP / "p128-096e939.csv")
    verify = ratios({k: v for k, v in dv_new.items() if k.startswith("prefill")}, "ours-paged", "vllm-fa3", _verify)
    mix = [(_mixed(k), t["vllm-fa3"] / t["ours-paged"]) for k, t in mixed.items() if "vllm-fa3" in t]
    e2e = []
    for path in E2E:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
        tok = {(r["workload"], r["label"]): float(r["total_tok_s"]) for r in rows}
        tag = "\nfp8 KV" if path.stem.endswith("-fp8") else ""
        e2e += [
            (w.replace("-", " in,\n") + " out" + tag, tok[(w, "ours")] / tok[(w, "FLASH_ATTN")])
            for w in dict.fromkeys(r["workload"] for r in rows)
            if (w, "ours") in tok and (w, "FLASH_ATTN") in tok
        ]

    fig, axes = plt.subplots(1, 6, figsize=(24, 4.4), gridspec_kw={"width_ratios": [1.6, 1, 2.6, 2.6, 0.5, 0.9]})
    _panel(axes[0], gluon, "prefill at 128-token pages (the plugin's\non Hopper), FA3 at the same")
    _panel(axes[1], generic, "prefill, both at 16-token pages\n(our generic kernel)", color="#7fa7c9")
    _panel(axes[2], decode, "decode at 128-token pages (H200 table)")
    _panel(axes[3], verify, "speculative verification, 2-16 new tokens, 128-token pages (Gluon decode)")
    _panel(axes[4], mix, "mixed: decodes\n+ a 2k chunk")
    _panel(axes[5], e2e, "vLLM e2e, tok/s\nvs FLASH_ATTN")
    axes[0].set_ylabel("speed relative to FA3 (FA3 time / ours)")
    fig.suptitle(
        "One NVIDIA H200, vLLM 0.26's FlashAttention-3 in the same process; bf16, 32 q / 8 KV heads, d128 "
        "(commits a53c8fc, 603a39b, 78e7a79, 096e939: docs/results/h200/fa3-2026-12-02, prefill-2026-12-04, "
        "verify-gluon-2026-12-04, overlap-2026-12-04, e2e 2026-12-04 second run)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str]) -> int:
    png = Path(argv[0]) if argv else HERE / "current.png"
    plot(png)
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
