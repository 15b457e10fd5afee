"""Check what `nox -s build` produced: three wheels, and the kernels wheel carries dejavu_data."""

import sys
import zipfile
from pathlib import Path

dist = Path(sys.argv[1])
wheels = sorted(dist.glob("*.whl"))
names = {w.name.split("-")[0] for w in wheels}
expected = {"triton_attn_kernels", "vllm_triton_plugin", "attn_bench"}
if names != expected:
    sys.exit(f"expected wheels {sorted(expected)}, got {sorted(names)}")
kernels = next(w for w in wheels if w.name.startswith("triton_attn_kernels"))
with zipfile.ZipFile(kernels) as z:
    data = [n for n in z.namelist() if "/dejavu_data/" in n]
if not data:
    sys.exit(f"{kernels.name} does not contain dejavu_data/")
print(f"ok: {len(wheels)} wheels; {kernels.name} holds {len(data)} dejavu_data files")
