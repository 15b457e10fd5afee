"""A real vLLM engine serves a tiny random DeepSeek-V2 (MLA) model with the plugin's MLA
backend on every attention layer and generates exactly what vLLM's own CPU MLA backend
(``CPU_MLA``) generates: greedy decoding over prefills of 5-45 tokens and mixed decode
steps.

Each engine runs in its own process (mla_engine_run.py): the plugin's platform on
(TRITON_INTERPRET=1) or every plugin off (VLLM_PLUGINS=""). Prefix caching stays off in
both: vLLM's CPU platform turns it off for its CPU MLA backend, and with it on, vLLM-CPU's
rotary embedding gives the new tokens of a prefix-cached prompt other rotated q_pe / k_pe
than the same tokens at the same positions get in a whole-prompt prefill (q_nope and the
latents equal), so the two engines would not see the same inputs. The cached-prefix path
is checked against the fp32 reference in test_mla_backend.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_engine import _result, _spawn, _vllm_cpu

pytestmark = pytest.mark.skipif(not _vllm_cpu(), reason="needs the CPU build of vLLM (vllm-cpu)")

NUM_LAYERS = 2

# DeepSeek-V2's published architecture (DeepseekV2ForCausalLM) at toy size: the latent
# cache row is kv_lora_rank 512 + rope 64 = 576 (vLLM's CPU MLA kernel compiles only that);
# queries without a LoRA (q_lora_rank null, as DeepSeek-V2-Lite); q/k head size 64 + 64 =
# 128 and a smaller v_head_dim 32; every layer dense (first_k_dense_replace = num layers).
CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": NUM_LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "kv_lora_rank": 512,
    "q_lora_rank": None,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 64,
    "v_head_dim": 32,
    "first_k_dense_replace": NUM_LAYERS,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 32,
    "n_shared_experts": 1,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    # A large std, so that greedy choices are far apart and not decided by rounding.
    "initializer_range": 0.5,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@pytest.fixture(scope="module")
def tiny_deepseek(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-deepseek-v2")
    (path / "config.json").write_text(json.dumps(CONFIG, indent=2))
    torch.manual_seed(0)
    DeepseekV2ForCausalLM(DeepseekV2Config.from_pretrained(path)).save_pretrained(path)
    return path


def test_mla_engine_matches_vllm_cpu_mla(tiny_deepseek: Path, tmp_path: Path) -> None:
    ours_out, ref_out = tmp_path / "triton-mla.json", tmp_path / "cpu-mla.json"
    # The two engines are independent: run them side by side.
    ours_proc = _spawn("mla_engine_run.py", str(tiny_deepseek), str(ours_out), "auto", out=ours_out, plugin=True)
    ref_proc = _spawn("mla_engine_run.py", str(tiny_deepseek), str(ref_out), "CPU_MLA", out=ref_out, plugin=False)
    ours, ref = _result(ours_proc, ours_out), _result(ref_proc, ref_out)

    assert ours["impls"] == ["vllm_triton_plugin.mla_backend.TritonMLAImpl"] * NUM_LAYERS
    assert ref["impls"] == ["vllm.v1.attention.backends.mla.cpu_mla.CPUMLAImpl"] * NUM_LAYERS
    log = ours_out.with_suffix(".log").read_text()
    assert "Using the Triton MLA backend (vllm-triton-plugin)." in log
    assert [len(t) for t in ours["tokens"]] == [5] * 5
    assert ours["tokens"] == ref["tokens"]


def test_mla_engine_fp8_kv_cache(tiny_deepseek: Path, tmp_path: Path) -> None:
    """An fp8 latent cache through a real engine: vLLM allocates it as uint8 and hands the
    layer's k_scale over; write_latent_cache quantises, mla_decode and the prefix gather
    dequantise. Prefix caching is asked for (kept where vLLM's CPU platform allows it). No
    token comparison: vLLM's CPU MLA has no fp8 cache; test_mla_backend checks the fp8
    numerics against the reference."""
    out = tmp_path / "triton-mla-fp8.json"
    proc = _spawn("mla_engine_run.py", str(tiny_deepseek), str(out), "auto", "on", "fp8", out=out, plugin=True)
    ours = _result(proc, out)
    assert ours["impls"] == ["vllm_triton_plugin.mla_backend.TritonMLAImpl"] * NUM_LAYERS
    assert [len(t) for t in ours["tokens"]] == [5] * 5
