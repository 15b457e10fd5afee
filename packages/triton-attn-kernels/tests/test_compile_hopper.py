"""Every kernel family compiles for the H100 (sm_90) with the real Triton compiler and ptxas,
without a GPU: the interpreter that runs the other CPU tests executes plain Python and accepts
code the compiler rejects. Specialisations in triton_attn_kernels._sm90."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest


def _nvidia_backend() -> bool:
    return importlib.util.find_spec("triton.backends.nvidia") is not None


@pytest.mark.skipif(not _nvidia_backend(), reason="this Triton build has no NVIDIA backend")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "triton_attn_kernels._sm90"], capture_output=True, text=True, env=env, timeout=900
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("ok ", "FAIL "))]
    failed = [ln for ln in lines if ln.startswith("FAIL")]
    assert proc.returncode == 0 and not failed, "\n".join(failed) or proc.stderr[-3000:]
    assert len(lines) >= 19, proc.stdout + proc.stderr[-3000:]
