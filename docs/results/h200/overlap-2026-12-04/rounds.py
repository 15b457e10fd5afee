"""Interleaved A/B: for each case of SUITE (first N), every provider is checked once, then timed
ROUNDS times in rotating order (CUDA-graph replays after an L2 flush, median of RUNS each), so
that slow drifts of the GPU hit all providers alike. `python rounds.py SUITE N ROUNDS OUT.csv`."""
import csv
import runpy
import statistics
import sys
from pathlib import Path

import torch

ab = runpy.run_path(str(Path(__file__).with_name("ab.py")), run_name="ab")
from attn_bench import registry  # noqa: E402
from attn_bench.check import check  # noqa: E402
from attn_bench.inputs import make_inputs  # noqa: E402
from attn_bench.problems import load_suite  # noqa: E402
from triton_attn_kernels.tuner.timing import measure  # noqa: E402

PROVIDERS = ["ours-paged", "ours-paged-before", "ours-paged-dup", "vllm-fa3"]


def main():
    suite, n, rounds, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    names = sys.argv[5].split(",") if len(sys.argv) > 5 else PROVIDERS
    dev = torch.device("cuda")
    rows = []
    for prob in load_suite(suite).problems[:n]:
        x = make_inputs(prob, dev)
        fns = {}
        for name in names:
            t = registry.get(name).make(x)
            res = t.fn()
            torch.cuda.synchronize()
            v = check(x, t.read(res))
            if not v.ok:
                print("WRONG", name, prob, v.detail, flush=True)
                continue
            fns[name] = t
        times = {k: [] for k in fns}
        keys = list(fns)
        for r in range(rounds):
            order = keys[r % len(keys):] + keys[: r % len(keys)]
            for k in order:
                times[k].append(measure(fns[k].fn, dev, runs=50, graph=fns[k].graph).p50_us)
        fa3 = statistics.median(times["vllm-fa3"]) if "vllm-fa3" in times else float("nan")
        label = str(prob)
        for k, ts in times.items():
            med = statistics.median(ts)
            row = dict(case=label, provider=k, median_us=round(med, 1), min_us=round(min(ts), 1),
                       max_us=round(max(ts), 1), rounds=len(ts), fa3_over=round(fa3 / med, 4))
            rows.append(row)
            print(row, flush=True)
        del x, fns
        torch.cuda.empty_cache()
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
