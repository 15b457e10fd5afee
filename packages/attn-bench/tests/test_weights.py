"""attn_bench.weights: the sharper random weights of e2e runs and check-vllm."""

import pickle

import pytest
import torch

from attn_bench.weights import check_counts, draw_weights, redraw, refresh_absorbed


def _vllm_llama_params(layers: int, hidden: int, vocab: int) -> list[tuple[str, torch.Tensor]]:
    names = {
        "model.embed_tokens.weight": (vocab, hidden),
        "lm_head.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        names |= {
            p + "self_attn.qkv_proj.weight": (3 * hidden, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_up_proj.weight": (4 * hidden, hidden),
            p + "mlp.down_proj.weight": (hidden, 2 * hidden),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    return [(name, torch.zeros(shape)) for name, shape in names.items()]


def test_weight_draw() -> None:
    layers, hidden, vocab, live, std = 4, 256, 2048, 64, 0.02
    params = _vllm_llama_params(layers, hidden, vocab)
    counts = draw_weights(params, std=std, seed=1234, num_layers=layers, live_vocab=live, vocab_size=vocab)
    assert counts == {"embed_tokens": 1, "lm_head": 1, "o_proj": layers, "down_proj": layers, "other": 2 * layers}
    p = dict(params)
    assert all(bool((t == 1).all()) for n, t in p.items() if "norm" in n)
    assert p["model.embed_tokens.weight"].std().item() == pytest.approx(1.0, rel=0.02)
    assert p["model.layers.0.self_attn.qkv_proj.weight"].std().item() == pytest.approx(std, rel=0.02)
    assert p["model.layers.3.self_attn.o_proj.weight"].std().item() == pytest.approx(
        std / (2 * layers) ** 0.5, rel=0.02
    )
    assert p["model.layers.3.mlp.down_proj.weight"].std().item() == pytest.approx(std / (2 * layers), rel=0.02)
    # lm_head: `live` rows at N(0, 1 / hidden), the rest 1/20 of that.
    row_std = p["lm_head.weight"].std(dim=1) * hidden**0.5
    assert int((row_std > 0.6).sum()) == live
    assert row_std[row_std > 0.6].mean().item() == pytest.approx(1.0, rel=0.05)
    assert row_std[row_std <= 0.6].mean().item() == pytest.approx(0.05, rel=0.05)
    # The same values in every engine's process.
    again = _vllm_llama_params(layers, hidden, vocab)
    draw_weights(again, std=std, seed=1234, num_layers=layers, live_vocab=live, vocab_size=vocab)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(params, again, strict=True))


def test_redraw_through_a_module_and_count_check() -> None:
    layers, hidden, vocab = 2, 64, 512
    module = torch.nn.Module()
    for name, tensor in _vllm_llama_params(layers, hidden, vocab):
        *path, leaf = name.split(".")
        parent = module
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.register_parameter(leaf, torch.nn.Parameter(tensor))
    fn = pickle.loads(pickle.dumps(redraw(std=0.02, seed=7, num_layers=layers, live_vocab=8, vocab_size=vocab)))
    counts = fn(module)
    check_counts(counts, layers)
    assert module.model.embed_tokens.weight.std().item() == pytest.approx(1.0, rel=0.05)
    with pytest.raises(RuntimeError, match="missed layers"):
        check_counts(counts, layers + 1)


class _AbsorbingLayer(torch.nn.Module):
    """vLLM's MLAAttention in small: W_UK_T is kv_b_proj's per-head split, remade in place."""

    def __init__(self) -> None:
        super().__init__()
        self.kv_b_proj = torch.nn.Linear(8, 2 * 12, bias=False)
        self.W_UK_T = torch.nn.Parameter(torch.zeros(2, 12, 8))

    def process_weights_after_loading(self, act_dtype: torch.dtype) -> None:
        self.W_UK_T.data.copy_(self.kv_b_proj.weight.view(2, 12, 8).to(act_dtype))


def test_mla_absorbed_weights_follow_the_redrawn_kv_b_proj() -> None:
    layers = 3
    model = torch.nn.Module()
    model.lm_head = torch.nn.Linear(8, 32, bias=False)
    model.layers = torch.nn.ModuleList()
    for _ in range(layers):
        layer = torch.nn.Module()
        layer.o_proj = torch.nn.Linear(8, 8, bias=False)
        layer.down_proj = torch.nn.Linear(8, 8, bias=False)
        layer.attn = _AbsorbingLayer()
        model.layers.append(layer)
    storage = [layer.attn.W_UK_T.data_ptr() for layer in model.layers]
    counts = redraw(std=0.02, seed=7, num_layers=layers, live_vocab=2, vocab_size=32)(model)
    assert counts["mla_absorbed"] == layers
    check_counts(counts, layers, mla=True)
    for layer, ptr in zip(model.layers, storage, strict=True):
        # The draw gave W_UK_T values of its own; the remake replaced them, in place.
        assert torch.equal(layer.attn.W_UK_T, layer.attn.kv_b_proj.weight.view(2, 12, 8))
        assert layer.attn.W_UK_T.data_ptr() == ptr
    with pytest.raises(RuntimeError, match="absorbed"):
        check_counts({**counts, "mla_absorbed": 1}, layers, mla=True)
    assert refresh_absorbed(torch.nn.Linear(2, 2)) == 0
