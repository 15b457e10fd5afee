"""Kernel specialisations compiled for Hopper (sm_90) by the real Triton compiler, down to a
cubin (Triton bundles ptxas), on a machine without a GPU: catches what only the compiler
rejects (the interpreter runs plain Python). Not part of the public API: the tests
(test_compile_hopper.py), ``nox -s sm90`` (with the Triton version of the GPU image) and
tools/sm90_report.py use it.

``python -m triton_attn_kernels._sm90`` prints one line per variant, ``ok NAME`` or
``FAIL NAME: error``, and exits non-zero if any failed. Where ptxas crashes on an attention
variant, the tiles the launcher would fall back to (:mod:`triton_attn_kernels._fallback`) are
compiled instead, as on the GPU, and the line says so."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.errors import PTXASError

from triton_attn_kernels._fallback import alternatives
from triton_attn_kernels._kernels.attention import attention_kernel, merge_kernel, merge_states_kernel
from triton_attn_kernels._kernels.kv_cache import write_kv_kernel
from triton_attn_kernels._kernels.kv_stage import stage_kv_kernel
from triton_attn_kernels._kernels.mla import mla_decode_kernel
from triton_attn_kernels._kernels.mla_cache import write_latent_kernel
from triton_attn_kernels._kernels.prefill_tma import prefill_tma_kernel
from triton_attn_kernels._tma import warp_specialize
from triton_attn_kernels.tuning.mla import (
    WGMMA_ROWS,
    MLADecodeConfig,
    MLAProblem,
    mla_decode_heuristic,
    mla_decode_heuristic_v1,
)

TARGET = GPUTarget("cuda", 90, 32)


def _gluon_verified() -> bool:
    from triton_attn_kernels._gluon import available

    return available()


FLOAT_ARGS = {"scale", "softcap"}


def signature(fn, constexprs: dict, pointers: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_desc"):  # host-side tensor descriptors: type and block shape
            sig[name] = pointers[name]
        elif name.endswith("_ptr"):
            sig[name] = pointers.get(name, "*fp32")
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


def aligned(fn, name: str) -> bool:
    """Whether Triton's launcher specialises pointer ``name`` on 16-byte alignment (the
    kernel's ``do_not_specialize_on_alignment`` lists those it does not)."""
    exempt = getattr(fn, "do_not_specialize_on_alignment", None) or []
    return name not in exempt and fn.arg_names.index(name) not in exempt


def compile_one(fn, constexprs: dict, pointers: dict, warps: int = 4, stages: int = 2):
    """Specialised as Triton's launcher would for contiguous tensors from PyTorch: innermost
    strides equal to 1 become constants, pointers (but those the kernel exempts from the
    alignment specialisation) and other strides are multiples of 16 (so loads vectorise and
    the pipeliner issues cp.async, as on the GPU)."""
    constexprs = {**{n: 1 for n in fn.arg_names if n.startswith("stride") and n.endswith("_d")}, **constexprs}
    sig = signature(fn, constexprs, pointers)
    # A stride the kernel lists in do_not_specialize gets no divisibility on the GPU either.
    plain = {p.name for p in fn.params if p.do_not_specialize}
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if (sig[n].startswith("*") and aligned(fn, n))
        or (n.startswith("stride") and n not in constexprs and n not in plain)
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


def attention(hd=128, group=4, paged=True, causal=True, feats=FEATURES, dtype="bf16", kv=None, hdv=None, **launch):
    """``hdv``: V's head size where it differs from ``hd`` (Q and K's)."""
    hdv = hd if hdv is None else hdv
    cx = dict(
        HEAD_DIM=hd,
        BLOCK_D=triton.next_power_of_2(hd),
        HEAD_DIM_V=hdv,
        BLOCK_DV=triton.next_power_of_2(hdv),
        GROUP=group,
        BLOCK_SIZE=16,
        PAGED=paged,
        CAUSAL=causal,
        DOT_F32=dtype == "fp32",
        DOT_PRECISION="ieee" if dtype == "fp32" else "tf32",
        **{**feats, "KV_SCALED": kv is not None and kv.startswith("fp8")},
        FP8_VIA_F16=dtype == "bf16" and kv is not None and kv.startswith("fp8"),
        PREFETCH_PAGES=False,
        RETURN_LSE=False,
    )
    cx.update({k: v for k, v in launch.items() if k.isupper()})
    opts = {k: v for k, v in launch.items() if not k.isupper()}
    return compile_one(attention_kernel, cx, attention_ptrs(dtype, kv or dtype), **opts)


def decode(**kw):
    group = kw.get("group", 4)
    launch = dict(BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_Q=1, TILE_N=128, SPLIT_KV=True, IS_DECODE=True)
    return attention(**{**launch, **kw})


def prefill(**kw):
    group = kw.get("group", 4)
    launch = dict(BLOCK_M=128, BLOCK_Q=128 // group, TILE_N=64, SPLIT_KV=False, IS_DECODE=False, stages=3)
    if "BLOCK_M" in kw:
        launch["BLOCK_Q"] = kw["BLOCK_M"] // group
    return attention(**{**launch, **kw})


def prefill_tma(hd=128, group=4, causal=True, dtype="bf16", kv=None, tile_n=128, block_size=128, **opts):
    """The Hopper prefill (``_kernels/prefill_tma.py``): 128 tokens of one head, key tiles of
    128-slot pages, 4 warps (Triton 3.6 warp-specialises the loop only at 4), 2 stages."""
    fp8 = kv is not None and kv.startswith("fp8")
    cx = dict(
        HEAD_DIM=hd,
        GROUP=group,
        BLOCK_M=128,
        TILE_N=tile_n,
        BLOCK_SIZE=block_size,
        CAUSAL=causal,
        KV_SCALED=fp8,
        FP8_VIA_F16=fp8 and dtype == "bf16",
        RETURN_LSE=False,
        WARP_SPECIALIZE=warp_specialize(),
        DOT_F32=False,
    )
    kv = kv or dtype
    ptrs = {
        "q_desc": f"tensordesc<{dtype}[128, {hd}]>",
        "k_desc": f"tensordesc<{kv}[{tile_n}, {hd}]>",
        "v_desc": f"tensordesc<{kv}[{tile_n}, {hd}]>",
        "out_ptr": f"*{dtype}",
        **{n: "*i32" for n in ("block_table_ptr", "seq_lens_ptr", "cu_seqlens_q_ptr")},
    }
    return compile_one(prefill_tma_kernel, cx, ptrs, **{"warps": 4, "stages": 2, **opts})


def prefill_gluon(
    hd=128,
    group=4,
    causal=True,
    dtype="bf16",
    tile_n=128,
    stages=2,
    paged=True,
    pingpong=True,
    lse=False,
    persistent=False,
    window=False,
    softcap=False,
    thread_arrives=False,
):
    """The Gluon Hopper prefill (``_kernels/prefill_gluon.py``) as ``_gluon.launch``
    specialises it: 64-row Q halves, tile_n-key K/V tiles, 4 warps plus the partitions'."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from triton_attn_kernels import _gluon
    from triton_attn_kernels._kernels.prefill_gluon import prefill_gluon_kernel as fn

    def desc(rows: int) -> str:
        layout = gl.NVMMASharedLayout.get_default_for([rows, hd], {"bf16": gl.bfloat16, "fp16": gl.float16}[dtype])
        return f"tensordesc<{dtype}[{rows}, {hd}],{layout!r}>"

    cx = dict(
        HEAD_DIM=hd,
        GROUP=group,
        TILE_N=tile_n,
        BLOCK_SIZE=128 if paged else tile_n,
        STAGES=stages,
        PAGED=paged,
        CAUSAL=causal,
        WINDOW=window,
        SOFTCAP=softcap,
        PINGPONG=pingpong,
        RETURN_LSE=lse,
        LOADER_REGS=_gluon.LOADER_REGS,
        CONSUMER_REGS=_gluon.CONSUMER_REGS,
        PERSISTENT=persistent,
        THREAD_ARRIVES=thread_arrives,
    )
    ptrs = {"q_desc": desc(_gluon.BLOCK_M // 2), "k_desc": desc(tile_n), "v_desc": desc(tile_n), "out_ptr": f"*{dtype}"}
    if lse:
        ptrs["lse_ptr"] = "*fp32"
    sig = signature(fn, cx, {**{n: "*i32" for n in fn.arg_names if n.endswith("_ptr")}, **ptrs})
    attrs = {
        (i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n].startswith("*") and aligned(fn, n)
    }
    constexprs = {(fn.arg_names.index(k),): v for k, v in cx.items()}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": 4})


def _mla_tile() -> int:
    from triton_attn_kernels import _mla_gluon

    return _mla_gluon.TILE_N


def _mla_stages() -> int:
    from triton_attn_kernels import _mla_gluon

    return _mla_gluon.STAGES


def mla_gluon(dtype="bf16", splits=1, lse=False, block_size=64, tile_n=None, stages=None):
    """The Gluon Hopper MLA decode (``_kernels/mla_gluon.py``) as ``_mla_gluon.launch``
    specialises it: 64 query rows, latent tiles of 576 columns (64 keys in 2 stages unless
    ``tile_n`` / ``stages`` say otherwise)."""
    tile_n = tile_n or _mla_tile()
    stages = stages or _mla_stages()
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from triton_attn_kernels import _gluon, _mla_gluon
    from triton_attn_kernels._kernels.mla_gluon import mla_gluon_kernel as fn

    def desc(rows: int, cols: int) -> str:
        layout = gl.NVMMASharedLayout.get_default_for([rows, cols], {"bf16": gl.bfloat16, "fp16": gl.float16}[dtype])
        return f"tensordesc<{dtype}[{rows}, {cols}],{layout!r}>"

    cx = dict(
        KV_RANK=_mla_gluon.KV_RANK,
        TILE_N=tile_n,
        BLOCK_SIZE=block_size,
        STAGES=stages,
        DECODE_Q=1,
        SPLIT_KV=splits > 1,
        RETURN_LSE=lse,
        LOADER_REGS=_gluon.LOADER_REGS,
        CONSUMER_REGS=_gluon.CONSUMER_REGS,
    )
    ptrs = {
        "q_desc": desc(_mla_gluon.ROWS, 256),
        "qpe_desc": desc(_mla_gluon.ROWS, _mla_gluon.ROPE_DIM),
        "c_desc": desc(tile_n, 256),
        "kpe_desc": desc(tile_n, _mla_gluon.ROPE_DIM),
        "out_ptr": f"*{dtype}",
        "lse_ptr": "*fp32",
        "part_out_ptr": "*fp32",
        "part_lse_ptr": "*fp32",
    }
    sig = signature(fn, cx, {**{n: "*i32" for n in fn.arg_names if n.endswith("_ptr")}, **ptrs})
    sig["qk_scale"] = "fp32"
    attrs = {
        (i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n].startswith("*") and aligned(fn, n)
    }
    constexprs = {(fn.arg_names.index(k),): v for k, v in cx.items()}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": 4})


def decode_gluon(dtype="bf16", hd=128, group=4, decode_q=8, splits=8, lse=False, block_size=128, tile_n=None,
                 stages=None):  # fmt: skip
    """The Gluon Hopper decode for verification rows (``_kernels/decode_gluon.py``) as
    ``_decode_gluon.launch`` specialises it (the policy's tile and ring unless given)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from triton_attn_kernels import _decode_gluon, _gluon
    from triton_attn_kernels._kernels.decode_gluon import decode_gluon_kernel as fn
    from triton_attn_kernels.tuning import DecodeConfig

    default = DecodeConfig(gluon=1, num_stages=3)
    tile_n = tile_n or default.tile_n
    stages = stages or default.num_stages
    layout = gl.NVMMASharedLayout.get_default_for([tile_n, hd], {"bf16": gl.bfloat16, "fp16": gl.float16}[dtype])
    desc = f"tensordesc<{dtype}[{tile_n}, {hd}],{layout!r}>"
    cx = dict(
        HEAD_DIM=hd,
        GROUP=group,
        DECODE_Q=decode_q,
        N_RB=-(-decode_q // (_decode_gluon.ROWS // group)),
        TILE_N=tile_n,
        BLOCK_SIZE=block_size,
        STAGES=stages,
        SPLIT_KV=splits > 1,
        RETURN_LSE=lse,
        LOADER_REGS=_gluon.LOADER_REGS,
    )
    ptrs = {
        **{n: "*i32" for n in fn.arg_names if n.endswith("_ptr")},
        "q_ptr": f"*{dtype}",
        "out_ptr": f"*{dtype}",
        "lse_ptr": "*fp32",
        "part_out_ptr": "*fp32",
        "part_lse_ptr": "*fp32",
        "k_desc": desc,
        "v_desc": desc,
    }
    sig = signature(fn, cx, ptrs)
    sig["qk_scale"] = "fp32"
    plain = {p.name for p in fn.params if p.do_not_specialize}
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if (sig[n].startswith("*") and aligned(fn, n)) or (n.startswith("stride") and n not in plain)
    }
    constexprs = {(fn.arg_names.index(k),): v for k, v in cx.items()}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=TARGET, options={"num_warps": 4})
    # One warpgroup over ROWS query rows x tile_n keys: its softmax runs beside its own PV.
    _check_overlap(kernel, _decode_gluon.ROWS * tile_n // 128, "the Gluon decode")
    return kernel


def gluon_facts(kernel) -> dict[str, Any]:
    """What the Gluon prefill's PTX must show: wgmma, TMA copies, mbarrier waits, register
    budgets moved by setmaxnreg, and three warpgroups (two consumers and the loader's)."""
    ptx = kernel.asm["ptx"]
    return {
        "warps": kernel.metadata.num_warps,
        "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
        "tma_loads": len(re.findall(r"cp\.async\.bulk\.tensor\.2d\.shared::cluster\.global", ptx)),
        "mbarrier_waits": len(re.findall(r"mbarrier\.try_wait", ptx)),
        "setmaxnreg": sorted({int(n) for n in re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx)}),
    }


def sass_text(kernel) -> str:
    """``kernel``'s SASS, disassembled by the nvdisasm that Triton bundles."""
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        return subprocess.run([str(nvdisasm), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout


def exps_beside_pv(kernel) -> int:
    """The most exp2s (MUFU.EX2) that one warpgroup issues between waiting for its QK^T
    (``wgmma.wait_group 1``: the PV is still in flight) and waiting for that PV (``0``): the
    softmax that overlaps its own PV. 0 where ptxas put the PV's wait before the softmax."""
    best = count = 0
    open_window = False
    for line in sass_text(kernel).splitlines():
        if "WARPGROUP.DEPBAR.LE" in line:
            if open_window:
                best = max(best, count)
            open_window, count = "0x1" in line, 0
        elif open_window and "MUFU.EX2" in line:
            count += 1
    return best


def _check_overlap(kernel, exps: int, what: str) -> None:
    seen = exps_beside_pv(kernel)
    if seen < exps:
        raise RuntimeError(f"{what}: {seen} exp2s run beside the PV wgmma, expected a tile's {exps} per thread")


def prefill_gluon_checked(**kw: Any) -> Any:
    """A Gluon prefill variant whose code has the schedule's pieces (``gluon_facts``)."""
    from triton_attn_kernels import _gluon

    kernel = prefill_gluon(**kw)
    facts = gluon_facts(kernel)
    budgets = {_gluon.LOADER_REGS, _gluon.CONSUMER_REGS}
    if facts["warps"] != 12 or not (facts["wgmma"] and facts["tma_loads"] and facts["mbarrier_waits"]):
        raise RuntimeError(f"the Gluon prefill lacks a piece of its schedule: {facts}")
    if not budgets <= set(facts["setmaxnreg"]):
        raise RuntimeError(f"register budgets {sorted(budgets)} not set by setmaxnreg: {facts}")
    return kernel


# Only where the kernel's Gluon API is verified (``_gluon.VERIFIED_TRITON``): elsewhere the
# launcher never runs it either.
GLUON: dict[str, Callable[[], Any]] = {
    "prefill Gluon bf16 d128 causal, 128-key tiles of 128-slot pages, 2 stages": lambda: prefill_gluon_checked(),
    "prefill Gluon bf16 d128 not causal": lambda: prefill_gluon_checked(causal=False),
    "prefill Gluon bf16 d128 causal, no ping-pong": lambda: prefill_gluon_checked(pingpong=False),
    "prefill Gluon fp16 d64, 8 heads per KV head, 3 stages": lambda: prefill_gluon_checked(
        hd=64, group=8, dtype="fp16", stages=3
    ),
    "prefill Gluon bf16 d128 varlen causal": lambda: prefill_gluon_checked(paged=False),
    "prefill Gluon fp16 d128 causal with lse": lambda: prefill_gluon_checked(dtype="fp16", lse=True),
    "prefill Gluon bf16 d128 causal, 64-key tiles, 3 stages": lambda: prefill_gluon_checked(tile_n=64, stages=3),
    "prefill Gluon bf16 d256 causal, 32-key tiles, 3 stages": lambda: prefill_gluon_checked(
        hd=256, tile_n=32, stages=3
    ),
    "prefill Gluon bf16 d256 causal, 64-key tiles, 2 stages": lambda: prefill_gluon_checked(
        hd=256, tile_n=64, stages=2
    ),
    "prefill Gluon bf16 d128 causal, per-thread releases": lambda: prefill_gluon_checked(thread_arrives=True),
    "prefill Gluon bf16 d128 sliding window": lambda: prefill_gluon_checked(window=True),
    "prefill Gluon bf16 d128 softcap": lambda: prefill_gluon_checked(softcap=True),
    "prefill Gluon bf16 d256 window and softcap, 32-key tiles, 3 stages": lambda: prefill_gluon_checked(
        hd=256, tile_n=32, stages=3, window=True, softcap=True
    ),
    # Persistent (one program per SM walking work tiles): the same shapes.
    "prefill Gluon persistent bf16 d128 causal, 128-key tiles, 2 stages": lambda: prefill_gluon_checked(
        persistent=True
    ),
    "prefill Gluon persistent bf16 d128 not causal": lambda: prefill_gluon_checked(causal=False, persistent=True),
    "prefill Gluon persistent bf16 d128 causal, no ping-pong": lambda: prefill_gluon_checked(
        pingpong=False, persistent=True
    ),
    "prefill Gluon persistent fp16 d64, 8 heads per KV head, 3 stages": lambda: prefill_gluon_checked(
        hd=64, group=8, dtype="fp16", stages=3, persistent=True
    ),
    "prefill Gluon persistent bf16 d128 varlen causal": lambda: prefill_gluon_checked(paged=False, persistent=True),
    "prefill Gluon persistent fp16 d128 causal with lse": lambda: prefill_gluon_checked(
        dtype="fp16", lse=True, persistent=True
    ),
    "prefill Gluon persistent bf16 d128 causal, 64-key tiles, 3 stages": lambda: prefill_gluon_checked(
        tile_n=64, stages=3, persistent=True
    ),
    "prefill Gluon persistent bf16 d256 causal, 32-key tiles, 3 stages": lambda: prefill_gluon_checked(
        hd=256, tile_n=32, stages=3, persistent=True
    ),
    "prefill Gluon persistent bf16 d128 window and softcap": lambda: prefill_gluon_checked(
        window=True, softcap=True, persistent=True
    ),
    "prefill Gluon persistent bf16 d128 causal, per-thread releases": lambda: prefill_gluon_checked(
        thread_arrives=True, persistent=True
    ),
    "verify Gluon bf16 8 tokens x GQA 4, 8 splits": lambda: decode_gluon(),
    "verify Gluon bf16 16 tokens x GQA 4, one split, with lse": lambda: decode_gluon(decode_q=16, splits=1, lse=True),
    "verify Gluon fp16 d64 4 tokens x GQA 8, 8 splits, 64-token pages": lambda: decode_gluon(
        dtype="fp16", hd=64, group=8, decode_q=4, block_size=64
    ),
    "verify Gluon bf16 8 tokens x GQA 16 (two row blocks)": lambda: decode_gluon(group=16),
    "verify Gluon bf16, 128-key tiles, 2 stages": lambda: decode_gluon(tile_n=128, stages=2),
    "mla decode Gluon bf16, one split": lambda: mla_gluon(),
    "mla decode Gluon bf16, 8 splits": lambda: mla_gluon(splits=8),
    "mla decode Gluon fp16 with lse, 128-token pages": lambda: mla_gluon(dtype="fp16", lse=True, block_size=128),
    "mla decode Gluon bf16, 32-key tiles, 3 stages, 8 splits": lambda: mla_gluon(splits=8, tile_n=32, stages=3),
    "mla decode Gluon bf16, 32-key tiles, 4 stages, 8 splits": lambda: mla_gluon(splits=8, tile_n=32, stages=4),
}


def warp_specialised(kernel) -> bool:
    """Whether Triton partitioned a loop into producer and consumer warps (their register
    budgets are set with setmaxnreg)."""
    return "setmaxnreg" in kernel.asm["ptx"]


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


def kv_stage(cache: str, dtype: str = "bf16", block_size: int = 16):
    """The fp8 cache's staging copy for the Gluon prefill: 128-key pages, head size 128."""
    cx = dict(NUM_KV_HEADS=8, HEAD_DIM=128, BLOCK_D=128, BLOCK_SIZE=block_size, PAGE=128)
    ptrs = {"k_cache_ptr": f"*{cache}", "v_cache_ptr": f"*{cache}", "k_out_ptr": f"*{dtype}", "v_out_ptr": f"*{dtype}"}
    ptrs |= {"block_table_ptr": "*i32", "seq_lens_ptr": "*i32", "cu_seqlens_q_ptr": "*i32"}
    return compile_one(stage_kv_kernel, cx, ptrs, warps=8)


def merge(head_dim: int = 128, decode_q: int = 1, lse: bool = False, warps: int = 4):
    """The split-KV merge as ``merge_partials`` launches it: any split count, MERGE_CHUNK at a time."""
    from triton_attn_kernels._workspace import MERGE_CHUNK

    cx = dict(HEAD_DIM=head_dim, BLOCK_D=head_dim, SPLITS_CHUNK=MERGE_CHUNK, DECODE_Q=decode_q, RETURN_LSE=lse)
    return compile_one(merge_kernel, cx, {"cu_seqlens_q_ptr": "*i32", "out_ptr": "*bf16"}, warps=warps)


# Attention variants take tile overrides (TILE_N, warps, stages) so that a ptxas crash can be
# retried with the launcher's fallback tiles; DECODE_TILES / PREFILL_TILES are their defaults.
DECODE_TILES = (128, 4, 2)
PREFILL_TILES = (64, 4, 3)
ATTENTION: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "decode bf16 split-KV": (decode, {}),
    "decode bf16 one split": (decode, dict(SPLIT_KV=False)),
    "decode every feature": (decode, dict(feats=ALL_FEATURES)),
    "decode fp8 e4m3 KV": (decode, dict(kv="fp8e4nv")),
    "decode fp8 e5m2 KV, fp16": (decode, dict(dtype="fp16", kv="fp8e5")),
    "decode head_dim 64, 8 heads per KV head": (decode, dict(hd=64, group=8)),
    "decode head_dim 256": (decode, dict(hd=256, TILE_N=64)),
    "decode fp32": (decode, dict(dtype="fp32", TILE_N=32)),
    "prefill bf16 paged causal": (prefill, {}),
    "prefill every feature": (prefill, dict(feats=ALL_FEATURES)),
    "prefill softcap": (prefill, dict(feats={**FEATURES, "USE_SOFTCAP": True})),
    "prefill sliding window": (prefill, dict(feats={**FEATURES, "USE_WINDOW": True})),
    "prefill varlen, not causal": (prefill, dict(paged=False, causal=False)),
    "prefill fp8 e4m3 KV": (prefill, dict(kv="fp8e4nv")),
    # ptxas of Triton 3.6 crashed on this one: the fallback path gets compiled too.
    "prefill head_dim 64, fp16, sinks": (
        prefill,
        dict(hd=64, group=8, dtype="fp16", feats={**FEATURES, "USE_SINKS": True}),
    ),
    "decode split-KV, one stage (the many-split configs' in the H100 table)": (decode, dict(stages=1)),
    "decode, page numbers prefetched": (decode, dict(PREFETCH_PAGES=True)),
    "decode fp8 e4m3 KV, page numbers prefetched": (decode, dict(kv="fp8e4nv", PREFETCH_PAGES=True)),
    "prefill, page numbers prefetched": (prefill, dict(PREFETCH_PAGES=True)),
    "prefill every feature, page numbers prefetched": (prefill, dict(feats=ALL_FEATURES, PREFETCH_PAGES=True)),
    "decode with lse": (decode, dict(RETURN_LSE=True)),
    # Speculative-decoding verification on the decode launch: q_len x GQA rows in one tile.
    "verify 4 tokens x GQA 4, split-KV": (decode, dict(BLOCK_M=16, BLOCK_Q=4)),
    "verify 8 tokens x GQA 4, split-KV": (decode, dict(BLOCK_M=32, BLOCK_Q=8)),
    "verify 16 tokens x GQA 8, split-KV": (
        decode,
        dict(group=8, BLOCK_M=128, BLOCK_Q=16, warps=8),
    ),
    "verify 8 tokens, fp8 e4m3 KV": (decode, dict(kv="fp8e4nv", BLOCK_M=32, BLOCK_Q=8)),
    "prefill alone, two-sided window, lse": (
        prefill,
        dict(causal=False, feats={**FEATURES, "USE_WINDOW": True}, RETURN_LSE=True),
    ),
    # MLA prefill (DeepSeek-V2/V3): q/k 128 nope + 64 rope, v 128, one KV head per query head,
    # with the tiles prefill_heuristic picks for a head size above 128.
    "prefill MLA q/k 192, v 128, varlen": (
        prefill,
        dict(hd=192, hdv=128, group=1, paged=False, BLOCK_M=64, TILE_N=32, stages=2),
    ),
    "prefill MLA q/k 192, v 128, chunk on a paged prefix": (
        prefill,
        dict(hd=192, hdv=128, group=1, BLOCK_M=64, TILE_N=32, stages=2),
    ),
    "decode MLA q/k 192, v 128, split-KV": (decode, dict(hd=192, hdv=128, group=1, TILE_N=64)),
}


def merge_states():
    return compile_one(
        merge_states_kernel,
        dict(HEAD_DIM=128, BLOCK_D=128),
        {"out_a_ptr": "*bf16", "out_b_ptr": "*bf16", "out_ptr": "*bf16"},
    )


def prefill_tma_checked(**kw: Any) -> Any:
    """A TMA prefill variant that must come out warp-specialised where the launcher asks for
    it (Triton 3.6; see ``_tma.warp_specialize``)."""
    kernel = prefill_tma(**kw)
    if warp_specialize() and not warp_specialised(kernel):
        raise RuntimeError("the key loop was not warp-specialised")
    return kernel


def mla(
    heads: int = 16,
    dtype: str = "bf16",
    kv: str | None = None,
    query_len: int = 1,
    seqs: int = 64,
    heuristic: Callable[[MLAProblem], MLADecodeConfig] = mla_decode_heuristic,
):
    """The MLA decode at DeepSeek's geometry (kv_lora_rank 512, rope 64, 64-slot pages) with
    the tiles ``heuristic`` picks for an H100-sized GPU (132 SMs) and 8k contexts."""
    kv = kv or dtype
    fp8 = kv.startswith("fp8")
    torch_names = {"bf16": "bfloat16", "fp16": "float16", "fp8e4nv": "float8_e4m3fn", "fp8e5": "float8_e5m2"}
    cfg = heuristic(MLAProblem(seqs, heads, 512, 64, query_len, 8192, torch_names[dtype], torch_names[kv], num_sms=132))
    block_h = min(cfg.block_h, triton.next_power_of_2(heads))
    block_m = max(16, triton.next_power_of_2(query_len * block_h))
    cx = dict(
        KV_RANK=512,
        ROPE_DIM=64,
        BLOCK_H=block_h,
        BLOCK_Q=query_len,
        BLOCK_M=block_m,
        TILE_N=cfg.tile_n,
        BLOCK_SIZE=64,
        KV_SCALED=fp8,
        # As the launcher: at 64 rows the query stays as loaded (see mla.py).
        FP8_VIA_F16=fp8 and dtype == "bf16" and block_m < WGMMA_ROWS,
        RETURN_LSE=False,
        SPLIT_KV=cfg.num_splits > 1,
        DOT_F32=False,
        DOT_PRECISION="tf32",
        PREFETCH_PAGES=bool(cfg.prefetch_pages),
    )
    ptrs = {
        "q_nope_ptr": f"*{dtype}",
        "q_pe_ptr": f"*{dtype}",
        "kv_ptr": f"*{kv}",
        "out_ptr": f"*{dtype}",
        **{n: "*i32" for n in ("block_table_ptr", "seq_lens_ptr", "cu_seqlens_q_ptr")},
    }
    kernel = compile_one(mla_decode_kernel, cx, ptrs, warps=cfg.num_warps, stages=cfg.num_stages)
    # The latent loads must stay in flight across iterations: a loop that waits for all its
    # copies (only cp.async.wait_group 0) reads at a fraction of the bandwidth.
    if not re.search(r"cp\.async\.wait_group\s+[1-9]", kernel.asm["ptx"]):
        raise RuntimeError("the latent loads were not pipelined (cp.async.wait_group 0 only)")
    # Triton lowers the dots of a 64-row program to wgmma (and of fewer rows to mma.sync):
    # the heuristic's 64-row configurations exist for it.
    if cx["BLOCK_M"] % 64 == 0 and "wgmma.mma_async" not in kernel.asm["ptx"]:
        raise RuntimeError(f"{cx['BLOCK_M']} rows a program, but the dots were not lowered to wgmma")
    return kernel


def latent_write(cache: str):
    fp8 = cache.startswith("fp8")
    cx = dict(
        KV_RANK=512,
        ROPE_DIM=64,
        BLOCK_SIZE=64,
        QUANTIZE=fp8,
        FP8_MAX={"fp8e4nv": 448.0, "fp8e5": 57344.0}.get(cache, 0.0),
        FP8_MANT={"fp8e4nv": 3, "fp8e5": 2}.get(cache, 0),
        FP8_EMIN={"fp8e4nv": -6, "fp8e5": -14}.get(cache, 0),
    )
    ptrs = {"kv_c_ptr": "*bf16", "k_pe_ptr": "*bf16", "cache_ptr": f"*{cache}", "slot_ptr": "*i64"}
    return compile_one(write_latent_kernel, cx, ptrs)


def mla_merge():
    return merge(head_dim=512, lse=True, warps=8)


OTHERS: dict[str, Callable[[], Any]] = {
    "prefill TMA bf16 d128, 64-key tiles of 128-slot pages (warp-specialised on Triton 3.6)": lambda: (
        prefill_tma_checked(tile_n=64)
    ),
    "prefill TMA not causal": lambda: prefill_tma_checked(tile_n=64, causal=False),
    "prefill TMA fp8 e4m3 KV": lambda: prefill_tma_checked(tile_n=64, kv="fp8e4nv"),
    "prefill TMA fp16 d64, 8 heads per KV head, 64-slot pages": lambda: prefill_tma_checked(
        dtype="fp16", hd=64, group=8, tile_n=64, block_size=64
    ),
    "merge": merge,
    "merge of 8 verification tokens with lse": lambda: merge(decode_q=8, lse=True),
    "merge_attention_states": merge_states,
    "kv write bf16": lambda: kv_write("bf16"),
    "kv write fp8 e4m3": lambda: kv_write("fp8e4nv"),
    "kv write fp8 e5m2": lambda: kv_write("fp8e5"),
    "fp8 e4m3 cache staged as bf16 for the Gluon prefill, 16-token pages": lambda: kv_stage("fp8e4nv"),
    "fp8 e5m2 cache staged as fp16, 128-token pages": lambda: kv_stage("fp8e5", "fp16", 128),
    "mla decode bf16, 16 heads": lambda: mla(16),
    "mla decode bf16, 128 heads": lambda: mla(128),
    "mla decode fp8 e4m3 latent, 16 heads": lambda: mla(16, kv="fp8e4nv"),
    "mla decode fp8 e4m3 latent, 128 heads": lambda: mla(128, kv="fp8e4nv"),
    "mla verify 4 tokens, 16 heads": lambda: mla(16, query_len=4),
    "mla verify 16 tokens, 128 heads, fp8 e4m3 latent": lambda: mla(128, kv="fp8e4nv", query_len=16),
    "mla verify 2 tokens, 128 heads": lambda: mla(128, query_len=2),
    "mla verify 3 tokens, 16 heads": lambda: mla(16, query_len=3),
    "mla verify 16 tokens, 128 heads": lambda: mla(128, query_len=16),
    "mla decode fp16, 64 heads": lambda: mla(64, dtype="fp16"),
    # The previous heuristic's tiles (attn-bench's ours-mla-v1 baseline).
    "mla v1 decode bf16, 16 heads": lambda: mla(16, heuristic=mla_decode_heuristic_v1),
    "mla v1 decode bf16, 128 heads": lambda: mla(128, heuristic=mla_decode_heuristic_v1),
    "mla v1 verify 2 tokens, 128 heads": lambda: mla(128, query_len=2, heuristic=mla_decode_heuristic_v1),
    "mla merge, 512 dims": mla_merge,
    "mla latent write bf16": lambda: latent_write("bf16"),
    "mla latent write fp8 e4m3": lambda: latent_write("fp8e4nv"),
    **(GLUON if _gluon_verified() else {}),
}


def tiles_of(build, kw: dict) -> tuple[int, int, int]:
    default = DECODE_TILES if build is decode else PREFILL_TILES
    return (kw.get("TILE_N", default[0]), kw.get("warps", default[1]), kw.get("stages", default[2]))


def compile_attention(build, kw: dict):
    """(kernel, note): the variant as given; after a ptxas crash, the first fallback that
    compiles (decode keeps its tile width, as the launcher's ``narrower=False``)."""
    first = tiles_of(build, kw)
    try:
        return build(**kw), ""
    except PTXASError:
        pass
    for alt in alternatives(*first):
        if build is decode and alt[0] != first[0]:
            continue
        try:
            kernel = build(**{**kw, "TILE_N": alt[0], "warps": alt[1], "stages": alt[2]})
        except PTXASError:
            continue
        return kernel, f" (ptxas crashed on (tile_n, warps, stages)={first}; the launcher's fallback {alt} compiles)"
    raise RuntimeError(f"ptxas crashed on {first} and on every fallback")


def _variant(build: Callable[..., Any], kw: dict[str, Any]) -> Callable[[], Any]:
    return lambda: compile_attention(build, kw)[0]


VARIANTS: dict[str, Callable[[], Any]] = {
    **{name: _variant(build, kw) for name, (build, kw) in ATTENTION.items()},
    **OTHERS,
}


def main() -> int:
    failed = 0
    for name, (build, kw) in ATTENTION.items():
        try:
            _, note = compile_attention(build, kw)
            print(f"ok {name}{note}", flush=True)
        except Exception as err:  # report every variant, then fail
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {str(err)[:2000]}", flush=True)
    for name, other in OTHERS.items():
        try:
            other()
            print(f"ok {name}", flush=True)
        except Exception as err:  # report every variant, then fail
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {str(err)[:2000]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
