"""attn-bench with more providers, ours-paged-TAG: ours-paged with the Gluon prefill and decode
kernels of other commits (files beside this script, *_TAG.py), swapped in around every call,
so all run in one process on the same tensors beside vllm-fa3.
`python ab.py <attn-bench run arguments>`."""
import importlib.util
import sys
from pathlib import Path

import triton_attn_kernels._kernels.decode_gluon as dg
import triton_attn_kernels._kernels.prefill_gluon as pg
from attn_bench import cli, registry
from attn_bench.providers.common import ATTENTION_OPS, supports
from attn_bench.providers.ours import ours_paged
from attn_bench.registry import Timed, provider


def _load(stem):
    name = f"triton_attn_kernels._kernels.{stem}"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{stem}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


NEW = (pg.prefill_gluon_kernel, dg.decode_gluon_kernel)
registry._load()


def _other(tag, doc):
    old = (_load(f"prefill_gluon_{tag}").prefill_gluon_kernel, _load(f"decode_gluon_{tag}").decode_gluon_kernel)

    def put(kernels):
        pg.prefill_gluon_kernel, dg.decode_gluon_kernel = kernels

    def make(x):
        def swapped(f):
            def g():
                put(old)
                try:
                    return f()
                finally:
                    put(NEW)
            return g
        put(old)
        try:
            t = ours_paged(x)
        finally:
            put(NEW)
        return Timed(fn=swapped(t.fn), read=t.read, graph=t.graph)

    make.__doc__ = doc
    provider(f"ours-paged-{tag}", ops=ATTENTION_OPS, requires=("triton_attn_kernels",),
             supports=supports(fp8=True, variants=("window", "softcap", "alibi", "sinks")))(make)


_other("before", "ours-paged on the Gluon prefill and decode kernels of 2e13dd3 (PV wait before the softmax).")
_other("dup", "ours-paged on the Gluon kernels of 7d6bd88 (the softmax step written on both sides of the mask branch).")


if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
