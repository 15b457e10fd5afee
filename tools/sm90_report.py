"""Registers, spills and shared memory of kernel configurations on the H100 (sm_90), from a
machine without a GPU: Triton compiles the kernel (as the tests' compile_hopper.py does) and
the ptxas bundled with Triton reports its resources. A first look before spending GPU time.

    python tools/sm90_report.py prefill     # the prefill tuning space, Llama-3.1-8B geometry
    python tools/sm90_report.py decode
    python tools/sm90_report.py ptx         # a fingerprint of each test variant's PTX

`ptx` shows whether a source change alters the generated code: fingerprints equal before
and after a refactor mean the GPU runs exactly what it ran before (source line numbers and
debug sections are left out of the fingerprint).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, str(Path(__file__).parents[1] / "packages" / "triton-attn-kernels" / "tests"))

import triton
from compile_hopper import VARIANTS, decode, prefill


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


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "prefill"
    if which == "ptx":
        for name, build in VARIANTS.items():
            print(f"{fingerprint(build().asm['ptx'])}  {name}", flush=True)
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
