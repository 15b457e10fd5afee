import os

import pytest
import torch

from attn_bench.problems import Problem
from attn_bench.results import Row

# Kernels run through Triton's interpreter on a machine without a GPU (nox sets this too).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _synthetic(provider, p50, batch=1, context=1024, op="decode", status="ok"):
    """A results row as a GPU run would write it (for tests of CSV, compare and plots)."""
    q_len = 1 if op == "decode" else context
    p = Problem(op=op, batch=batch, context=context, q_len=q_len)
    timed = status == "ok"
    return Row.for_problem(
        "decode" if op == "decode" else "prefill",
        provider,
        p,
        status,
        "" if timed else "not installed",
        p20_us=p50 * 0.9 if timed else float("nan"),
        p50_us=p50 if timed else float("nan"),
        p80_us=p50 * 1.1 if timed else float("nan"),
        runs=100 if timed else 0,
        method="cuda-graph+l2flush" if timed else "",
        gbps=1000.0 / p50 if timed else float("nan"),
        tflops=100.0 / p50 if timed else float("nan"),
        pct_roofline=50.0 if timed else float("nan"),
        ceiling_gbps=3000.0,
        ceiling_tflops=700.0,
        device="Synthetic GPU",
    )


@pytest.fixture
def synthetic():
    return _synthetic
