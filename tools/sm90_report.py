"""Registers, spills and shared memory of kernel configurations on the H100 (sm_90), from a
machine without a GPU: Triton compiles the kernel (as ``triton_attn_kernels._sm90`` does) and
the ptxas bundled with Triton reports its resources. A first look before spending GPU time.

    python tools/sm90_report.py prefill     # the prefill tuning space, Llama-3.1-8B geometry
    python tools/sm90_report.py decode
    python tools/sm90_report.py ptx         # a fingerprint of each test variant's PTX
    python tools/sm90_report.py sass "decode bf16 split-KV" "decode fp8 e4m3 KV"   # SASS op counts
    python tools/sm90_report.py loops "mla decode bf16, 128 heads"   # MMA kinds and spills per loop
    python tools/sm90_report.py crashes     # ptxas over many launch specialisations
    python tools/sm90_report.py crashes --prefetch-pages    # the same with prefetch_pages=1

`crashes` compiles the specialisations a launch can produce (head sizes, GQA groups, dtypes,
fp8 KV, feature mixes, the heuristics' and the H100 tables' tiles) and lists every one that
ptxas rejects or crashes on, with the fallback tiles that compile (``_fallback``). Run it
with the GPU image's Triton (``nox -s sm90 -- crashes``); it takes minutes.

`loops` lists the SASS loops that hold MMAs (HGMMA: wgmma, HMMA: mma.sync, by shape) and the
local-memory instructions inside each: ptxas's spill total also counts code outside them.

`ptx` shows whether a source change alters the generated code: fingerprints equal before
and after a refactor mean the GPU runs exactly what it ran before (source line numbers and
debug sections are left out of the fingerprint).

`sass` disassembles the named variants of ``triton_attn_kernels._sm90.VARIANTS`` (nvdisasm,
bundled with Triton) and counts their instructions by opcode: where a kernel spends its
issue slots (address arithmetic, shared-memory loads, conversions, MMAs), before a GPU says
whether that is what bounds it.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Before Triton is imported: the real compiler, with the GPU's default FMA contraction.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton

from triton_attn_kernels._sm90 import ALL_FEATURES, FEATURES, VARIANTS, compile_attention, decode, prefill, sass_text


def ptxas() -> str:
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    # The newest bundled ptxas: Triton's PTX may use an ISA version the older one rejects.
    for name in ("ptxas-blackwell", "ptxas"):
        if (bin_dir / name).exists():
            return str(bin_dir / name)
    raise SystemExit("no ptxas bundled with this Triton")


def report(kernel) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    log = subprocess.run([ptxas(), "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull], capture_output=True, text=True)
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", log.stderr)
    spills = re.search(r"(\d+) bytes spill stores", log.stderr)
    return (
        f"regs {regs.group(1) if regs else '?':>3}  spill stores {spills.group(1) if spills else '?':>4} B  "
        f"shared {kernel.metadata.shared:>6} B"
    )


def fingerprint(ptx: str) -> str:
    """PTX without source locations, debug labels and debug sections, hashed."""
    code = ptx.split("\n\t.section\t.debug", 1)[0]
    lines = [
        ln
        for ln in code.splitlines()
        if not ln.lstrip().startswith((".loc", ".file", "$L__func_end", "//")) and not re.fullmatch(r"\$L__tmp\d+:", ln)
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


HEAD_DIMS = (64, 80, 96, 128, 192, 256)
FEATURE_MIXES = {
    "plain": FEATURES,
    "sinks": {**FEATURES, "USE_SINKS": True},
    "softcap+window": {**FEATURES, "USE_SOFTCAP": True, "USE_WINDOW": True},
    "alibi": {**FEATURES, "USE_ALIBI": True},
    "all": ALL_FEATURES,
}
# (tile_n, warps, stages): the heuristics' choices and every distinct H100 table entry.
PREFILL_TILES = {"small-d": [(128, 64, 4, 3)], "large-d": [(64, 32, 4, 2)], "tables": [(64, 32, 4, 2), (64, 64, 4, 2)]}
DECODE_TILES = [(128, 2, 16), (64, 1, 1), (64, 1, 16), (32, 1, 64), (128, 3, 2), (32, 2, 64)]


def _cases(prefetch: bool = False):
    for hd, group, dtype, kv in itertools.product(HEAD_DIMS, (1, 4, 8), ("bf16", "fp16"), (None, "fp8e4nv")):
        for mix, feats in FEATURE_MIXES.items():
            base = dict(hd=hd, group=group, dtype=dtype, kv=kv, feats=feats, PREFETCH_PAGES=prefetch)
            mix = f"{mix}, page numbers prefetched" if prefetch else mix
            tiles = PREFILL_TILES["small-d" if hd <= 128 else "large-d"]
            if hd == 128:
                tiles = tiles + PREFILL_TILES["tables"]
            for bm, tn, w, st in tiles:
                yield (
                    f"prefill d{hd} g{group} {dtype} kv={kv or dtype} {mix} {bm}x{tn} w{w} s{st}",
                    "prefill",
                    {**base, "BLOCK_M": bm, "TILE_N": tn, "warps": w, "stages": st},
                )
            if mix.split(",")[0] in ("plain", "all"):
                for tn, st, splits in DECODE_TILES:
                    if hd > 128 and tn > 64:
                        continue
                    yield (
                        f"decode d{hd} g{group} {dtype} kv={kv or dtype} {mix} tile {tn} s{st} splits {splits}",
                        "decode",
                        {**base, "TILE_N": tn, "stages": st, "NUM_SPLITS": splits},
                    )


def _try(case):
    import contextlib
    import io

    name, kind, kw = case
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            _, note = compile_attention(decode if kind == "decode" else prefill, kw)
        except Exception as err:
            return f"FAIL {name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return f"fallback {name}{note}" if note else ""


def crashes(prefetch: bool = False) -> None:
    import multiprocessing

    cases = list(_cases(prefetch))
    print(f"{len(cases)} specialisations, {os.cpu_count()} processes", flush=True)
    bad = 0
    with multiprocessing.Pool(os.cpu_count()) as pool:
        for line in pool.imap_unordered(_try, cases, chunksize=4):
            if line:
                bad += 1
                print(line, flush=True)
    print(f"{len(cases)} compiled, {bad} needed a fallback or failed", flush=True)


# "/*0130*/  @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;": the address, then the opcode after an optional predicate.
SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\S*)")


def sass_ops(kernel) -> collections.Counter[str]:
    """Instructions of ``kernel``'s SASS by opcode (without modifiers: ``LDG.E.128`` counts as ``LDG``)."""
    ops: collections.Counter[str] = collections.Counter()
    for line in sass_text(kernel).splitlines():
        m = SASS_LINE.search(line)
        if m:
            ops[m.group(2)] += 1
    return ops


def sass_loops(kernel) -> list[dict[str, object]]:
    """The loops of ``kernel``'s SASS (a branch back to a label above it) that hold MMAs,
    outermost first, each with its address range, the MMA instructions by shape (``HGMMA``
    is wgmma, ``HMMA`` mma.sync) and its local-memory instructions (``LDL``/``STL``: spill
    traffic inside the loop, paid on every iteration)."""
    labels: dict[str, int] = {}
    insts: list[tuple[int, str, str, str]] = []  # address, opcode, modifiers, line
    for line in sass_text(kernel).splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = insts[-1][0] + 16 if insts else 0
            continue
        m = SASS_LINE.search(line)
        if m:
            insts.append((int(m.group(1), 16), m.group(2), m.group(3), line))
    loops = []
    for addr, op, _, line in insts:
        target = re.search(r"`\((\.L_x_\d+)\)", line)
        if op != "BRA" or not target or labels.get(target.group(1), addr + 1) > addr:
            continue
        lo = labels[target.group(1)]
        body = [(o, mod) for a, o, mod, _ in insts if lo <= a <= addr]
        mmas = collections.Counter(o + mod.split(".F32")[0] for o, mod in body if o in ("HGMMA", "HMMA"))
        if mmas:
            spill = sum(1 for o, _ in body if o in ("LDL", "STL"))
            loops.append({"range": f"{lo:#x}-{addr:#x}", "mma": dict(mmas), "local": spill})
    return loops


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "prefill"
    if which == "crashes":
        crashes(prefetch="--prefetch-pages" in sys.argv[2:])
    elif which == "ptx":
        for name, build in VARIANTS.items():
            print(f"{fingerprint(build().asm['ptx'])}  {name}", flush=True)
    elif which == "sass":
        for name in sys.argv[2:] or ["decode bf16 split-KV"]:
            ops = sass_ops(VARIANTS[name]())
            top = ", ".join(f"{op} {n}" for op, n in ops.most_common(16))
            print(f"{name}: {sum(ops.values())} instructions; {top}", flush=True)
    elif which == "loops":
        for name in sys.argv[2:] or ["decode bf16 split-KV"]:
            kernel = VARIANTS[name]()
            print(f"{name}: {report(kernel)}", flush=True)
            for loop in sass_loops(kernel):
                print(f"  loop {loop['range']}: {loop['mma']}, local loads/stores {loop['local']}", flush=True)
    elif which == "prefill":
        for bm, tn, w, st in itertools.product((64, 128), (32, 64, 128), (4, 8), (1, 2, 3)):
            k = prefill(BLOCK_M=bm, TILE_N=tn, warps=w, stages=st)
            print(f"prefill block_m {bm:3d} tile_n {tn:3d} warps {w} stages {st}: {report(k)}", flush=True)
    else:
        for tn, w, st in itertools.product((32, 64, 128), (4, 8), (1, 2, 3)):
            k = decode(TILE_N=tn, warps=w, stages=st)
            print(f"decode tile_n {tn:3d} warps {w} stages {st}: {report(k)}", flush=True)


if __name__ == "__main__":
    main()
