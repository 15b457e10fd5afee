"""Check what `nox -s build` wrote to dist/: a wheel and an sdist per package, the tuning
tables inside the kernels wheel, the plugin's vLLM entry points in its metadata, and the
plugin pinning the kernels at exactly the version built beside it.

    python tools/check_wheels.py dist            # contents only (seconds)
    python tools/check_wheels.py dist --smoke    # also install them into a fresh venv and import

--smoke builds a throwaway virtualenv, installs the wheels (torch from --torch, the plugin
with --no-deps: it declares `vllm`, which a CPU machine does not have), imports every
package, lists the installed entry points, runs one tiny attention call through Triton's
interpreter, and deletes the virtualenv (it holds torch and Triton, ~2 GB).
"""

from __future__ import annotations

import argparse
import configparser
import email.message
import email.parser
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

PACKAGES = {
    "triton_attn_kernels": "triton-attn-kernels",
    "vllm_triton_plugin": "vllm-triton-plugin",
    "attn_bench": "attn-bench",
}
PLUGIN_ENTRY_POINTS = {
    "vllm.general_plugins": {"triton_attn_backend"},
    "vllm.platform_plugins": {"triton_attn_platform"},
}

# Runs inside the fresh virtualenv.
SMOKE = r"""
import importlib.metadata as md
import importlib.resources
import os

import attn_bench
import torch
import triton_attn_kernels
import vllm_triton_plugin
from triton_attn_kernels import paged_attention
from triton_attn_kernels.reference import paged_attention_ref

for dist in ("triton-attn-kernels", "vllm-triton-plugin", "attn-bench"):
    print(f"{dist} {md.version(dist)}")
tables = importlib.resources.files("triton_attn_kernels") / "dejavu_data"
print(f"dejavu_data: {sum(1 for _ in tables.iterdir())} entries in the installed kernels package")
for group in ("vllm.general_plugins", "vllm.platform_plugins", "console_scripts"):
    for ep in md.entry_points(group=group):
        if ep.dist is not None and ep.dist.name in ("vllm-triton-plugin", "attn-bench"):
            print(f"entry point [{group}] {ep.name} = {ep.value}")
            ep.load()  # the target exists; calling it would need vLLM

assert os.environ.get("TRITON_INTERPRET") == "1"
torch.manual_seed(0)
q = torch.randn(3, 4, 32, dtype=torch.float16)
k = torch.randn(2, 16, 2, 32, dtype=torch.float16)
v = torch.randn_like(k)
args = (q, k, v, torch.tensor([[1, 0]], dtype=torch.int32), torch.tensor([20], dtype=torch.int32),
        torch.tensor([0, 3], dtype=torch.int32))
out = paged_attention(*args, max_seqlen_q=3, max_seqlen_k=20)
err = (out.float() - paged_attention_ref(*args)).abs().max().item()
print(f"paged_attention through the interpreter: max |out - reference| = {err:.1e}")
if not err < 1e-2:
    raise SystemExit("the installed kernels disagree with the reference")
"""


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def check_contents(dist: Path) -> list[Path]:
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    for kind, files in (("wheels", wheels), ("sdists", sdists)):
        names = {f.name.split("-")[0].replace("-", "_") for f in files}
        if names != set(PACKAGES):
            sys.exit(f"expected {kind} of {sorted(PACKAGES)}, got {sorted(f.name for f in files)}")
    kernels = next(w for w in wheels if w.name.startswith("triton_attn_kernels"))
    with zipfile.ZipFile(kernels) as z:
        data = [n for n in z.namelist() if "/dejavu_data/" in n]
    if not data:
        sys.exit(f"{kernels.name} does not contain dejavu_data/")
    plugin = next(w for w in wheels if w.name.startswith("vllm_triton_plugin"))
    with zipfile.ZipFile(plugin) as z:
        name = next((n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
        if name is None:
            sys.exit(f"{plugin.name} has no entry_points.txt")
        eps = configparser.ConfigParser()
        eps.read_string(z.read(name).decode())
    for group, wanted in PLUGIN_ENTRY_POINTS.items():
        have = set(eps[group]) if eps.has_section(group) else set()
        if not wanted <= have:
            sys.exit(f"{plugin.name}: entry points {sorted(wanted - have)} missing from [{group}]")
        for ep in sorted(have):
            print(f"{plugin.name}: [{group}] {ep} = {eps[group][ep]}")
    version = metadata(kernels)["Version"]
    pins = [r for r in metadata(plugin).get_all("Requires-Dist", []) if "triton-attn-kernels" in r]
    if pins != [f"triton-attn-kernels=={version}"]:
        sys.exit(f"vllm-triton-plugin requires {pins}, but the kernels wheel is version {version}")
    print(
        f"ok: {len(wheels)} wheels, {len(sdists)} sdists; {kernels.name} holds {len(data)} dejavu_data files; "
        f"the plugin pins {pins[0]}"
    )
    return wheels


def smoke(wheels: list[Path], torch_spec: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="wheel-smoke-"))
    try:
        venv.create(root, with_pip=True)
        py = str(root / "bin" / "python")
        pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        by_name = {w.name.split("-")[0]: str(w) for w in wheels}
        subprocess.run([*pip, *torch_spec], check=True)
        subprocess.run([*pip, f"{by_name['triton_attn_kernels']}[interpreter]", by_name["attn_bench"]], check=True)
        subprocess.run([*pip, "--no-deps", by_name["vllm_triton_plugin"]], check=True)
        # Run from the virtualenv's folder, so that nothing of a checkout shadows the wheels.
        env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ""}
        subprocess.run([py, "-c", SMOKE], check=True, cwd=root, env=env)
        subprocess.run([str(root / "bin" / "attn-bench"), "--help"], check=True, cwd=root, stdout=subprocess.DEVNULL)
        print("ok: the wheels install into a fresh virtualenv, import, and compute the reference's result")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dist", type=Path)
    ap.add_argument("--smoke", action="store_true", help="install into a fresh virtualenv and import")
    ap.add_argument(
        "--torch",
        default="torch==2.13.0",
        help="pip arguments that install torch first, one string (default: torch==2.13.0; a CPU-only "
        "machine without a local CPU wheel: 'torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu')",
    )
    a = ap.parse_args(argv)
    wheels = check_contents(a.dist)
    if a.smoke:
        smoke(wheels, shlex.split(a.torch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
