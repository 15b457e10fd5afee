"""Compile kernel specialisations for Hopper (sm_90) with the real Triton compiler, down to a
cubin (Triton bundles ptxas), on a machine without a GPU: catches what only the compiler
rejects (the interpreter runs plain Python). Run by test_compile_hopper.py in a subprocess,
since the tests' process runs Triton's interpreter. Prints one line per variant:
``ok NAME`` or ``FAIL NAME: error``."""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from triton_attn_kernels._kernels.attention import attention_kernel, merge_kernel
from triton_attn_kernels._kernels.kv_cache import write_kv_kernel

TARGET = GPUTarget("cuda", 90, 32)
FLOAT_ARGS = {"scale", "softcap"}


def signature(fn, constexprs: dict, pointers: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = pointers.get(name, "*fp32")
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


def compile_one(fn, constexprs: dict, pointers: dict, warps: int = 4, stages: int = 2):
    """Specialised as Triton's launcher would for contiguous tensors from PyTorch: innermost
    strides equal to 1 become constants, pointers and other strides are multiples of 16 (so
    loads vectorise and the pipeliner issues cp.async, as on the GPU)."""
    constexprs = {**{n: 1 for n in fn.arg_names if n.startswith("stride") and n.endswith("_d")}, **constexprs}
    sig = signature(fn, constexprs, pointers)
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if sig[n].startswith("*") or (n.startswith("stride") and n not in constexprs)
    }
    src = ASTSource(
        fn=fn,
        signature=sig,
        constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()},
        attrs=attrs,
    )
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})


def attention_ptrs(dtype: str, kv: str) -> dict:
    return {
        "q_ptr": f"*{dtype}",
        "k_ptr": f"*{kv}",
        "v_ptr": f"*{kv}",
        "out_ptr": f"*{dtype}",
        "block_table_ptr": "*i32",
        "seq_lens_ptr": "*i32",
        "cu_seqlens_q_ptr": "*i32",
        "cu_seqlens_k_ptr": "*i32",
    }


FEATURES = dict(USE_WINDOW=False, USE_SOFTCAP=False, USE_ALIBI=False, USE_SINKS=False, KV_SCALED=False)
ALL_FEATURES = dict(USE_WINDOW=True, USE_SOFTCAP=True, USE_ALIBI=True, USE_SINKS=True, KV_SCALED=False)


def attention(hd=128, group=4, paged=True, causal=True, feats=FEATURES, dtype="bf16", kv=None, **launch):
    cx = dict(
        HEAD_DIM=hd,
        BLOCK_D=triton.next_power_of_2(hd),
        GROUP=group,
        BLOCK_SIZE=16,
        PAGED=paged,
        CAUSAL=causal,
        DOT_F32=dtype == "fp32",
        DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
        **{**feats, "KV_SCALED": kv is not None and kv.startswith("fp8")},
        FP8_VIA_F16=dtype == "bf16" and kv is not None and kv.startswith("fp8"),
    )
    cx.update({k: v for k, v in launch.items() if k.isupper()})
    opts = {k: v for k, v in launch.items() if not k.isupper()}
    return compile_one(attention_kernel, cx, attention_ptrs(dtype, kv or dtype), **opts)


def decode(**kw):
    group = kw.get("group", 4)
    launch = dict(BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_Q=1, TILE_N=128, NUM_SPLITS=16, IS_DECODE=True)
    return attention(**{**launch, **kw})


def prefill(**kw):
    group = kw.get("group", 4)
    launch = dict(BLOCK_M=128, BLOCK_Q=128 // group, TILE_N=64, NUM_SPLITS=1, IS_DECODE=False, stages=3)
    if "BLOCK_M" in kw:
        launch["BLOCK_Q"] = kw["BLOCK_M"] // group
    return attention(**{**launch, **kw})


def kv_write(cache: str):
    fp8 = cache.startswith("fp8")
    cx = dict(
        NUM_KV_HEADS=8,
        HEAD_DIM=128,
        BLOCK_H=8,
        BLOCK_D=128,
        BLOCK_SIZE=16,
        QUANTIZE=fp8,
        FP8_MAX={"fp8e4nv": 448.0, "fp8e5": 57344.0}.get(cache, 0.0),
        FP8_MANT={"fp8e4nv": 3, "fp8e5": 2}.get(cache, 0),
        FP8_EMIN={"fp8e4nv": -6, "fp8e5": -14}.get(cache, 0),
    )
    ptrs = {"key_ptr": "*bf16", "value_ptr": "*bf16", "k_cache_ptr": f"*{cache}", "v_cache_ptr": f"*{cache}"}
    return compile_one(write_kv_kernel, cx, {**ptrs, "slot_ptr": "*i64"})


def merge(splits: int = 16):
    cx = dict(HEAD_DIM=128, BLOCK_D=128, NUM_SPLITS=splits, SPLITS_POW2=splits)
    return compile_one(merge_kernel, cx, {"cu_seqlens_q_ptr": "*i32", "out_ptr": "*bf16"})


VARIANTS = {
    "decode bf16 split-KV": lambda: decode(),
    "decode bf16 one split": lambda: decode(NUM_SPLITS=1),
    "decode every feature": lambda: decode(feats=ALL_FEATURES),
    "decode fp8 e4m3 KV": lambda: decode(kv="fp8e4nv"),
    "decode fp8 e5m2 KV, fp16": lambda: decode(dtype="fp16", kv="fp8e5"),
    "decode head_dim 64, 8 heads per KV head": lambda: decode(hd=64, group=8),
    "decode head_dim 256": lambda: decode(hd=256, TILE_N=64),
    "decode fp32": lambda: decode(dtype="fp32", TILE_N=32),
    "prefill bf16 paged causal": lambda: prefill(),
    "prefill every feature": lambda: prefill(feats=ALL_FEATURES),
    "prefill varlen, not causal": lambda: prefill(paged=False, causal=False),
    "prefill fp8 e4m3 KV": lambda: prefill(kv="fp8e4nv"),
    "prefill head_dim 64, fp16, sinks (fuzz seed 1000048)": lambda: prefill(
        hd=64, group=8, dtype="fp16", feats={**FEATURES, "USE_SINKS": True}
    ),
    "decode 256 splits (top of the tuner's space)": lambda: decode(NUM_SPLITS=256, stages=1),
    "merge": merge,
    "merge of 256 splits": lambda: merge(256),
    "kv write bf16": lambda: kv_write("bf16"),
    "kv write fp8 e4m3": lambda: kv_write("fp8e4nv"),
    "kv write fp8 e5m2": lambda: kv_write("fp8e5"),
}


if __name__ == "__main__":
    failed = 0
    for name, build in VARIANTS.items():
        try:
            build()
            print(f"ok {name}", flush=True)
        except Exception as err:  # report every variant, then fail
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {str(err)[:2000]}", flush=True)
    sys.exit(1 if failed else 0)
