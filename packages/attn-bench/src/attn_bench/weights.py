"""Sharper random weights for end-to-end runs with ``load_format="dummy"``.

vLLM's dummy weights are uniform in +-1e-3: every logit is nearly the same, greedy argmax is a
near-tie at most positions, and any two correct attention kernels part ways on rounding. The
speed of a run does not depend on the values, so after loading we redraw every matrix in place
(the same values in every process) by rules that keep argmax away from ties (measured in a CPU
emulation of Llama-3.1-8B, teacher-forced, SDPA against fp32-math attention; numbers in
``docs/notes/check-vllm-weights.md``):

- the token embedding carries a residual stream of RMS 1; ``o_proj`` ~ N(0, std / sqrt(2L)) and
  ``down_proj`` ~ N(0, std / 2L) write into it, so the layers stay near the identity and do not
  amplify rounding while attention still moves the hidden state by ~13%;
- ``live_vocab`` rows of ``lm_head`` give logits of std 1 nat (the final norm gives RMS 1), the
  other rows ``dead_scale`` of that (default 1/20): argmax is a contest among a few tokens with
  wide gaps. With ``dead_scale=0`` the other logits are exactly 0 in every kernel, so they tie
  identically everywhere instead of adding near-ties; in a Monte Carlo of the top-1/top-2 gap
  that lowers its density at 0 (where rounding flips argmax) from ~2.2/nat (8 live rows, dead
  1/20) to 1.4/nat (8 live, dead 0) and 1.1/nat (2 live, dead 0);
- norm weights 1, every other matrix N(0, std).

Works on vLLM's fused parameters (``qkv_proj``, ``gate_up_proj``) and on a Hugging Face state
dict alike. MLA layers (DeepSeek-V2) keep a second copy of ``kv_b_proj``, split per head into
the absorbed decode weights ``W_UK_T`` and ``W_UV``, made when vLLM loaded the model: after
the redraw each such layer remakes them from the new ``kv_b_proj`` through its own
``process_weights_after_loading``, which vLLM writes into the existing tensors (captured
CUDA graphs keep reading the right memory). Without that, decode steps would attend with
the load-time dummy weights and prefills with the redrawn ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["check_counts", "draw_weights", "redraw", "refresh_absorbed"]

_KINDS = ("embed_tokens", "lm_head", "o_proj", "down_proj")


def draw_weights(
    named_params: Iterable[tuple[str, Any]],
    *,
    std: float,
    seed: int,
    num_layers: int,
    live_vocab: int,
    vocab_size: int,
    dead_scale: float = 0.05,
) -> dict[str, int]:
    """Redraw ``named_params`` (name, tensor) in place; returns how many matrices of each kind
    (embed_tokens, lm_head, o_proj, down_proj, other) were drawn."""
    import torch

    counts: dict[str, int] = {}
    gen = None
    for name, param in sorted(named_params, key=lambda item: item[0]):
        if not param.dtype.is_floating_point:
            continue
        if param.dim() < 2:
            if "norm" in name:
                param.fill_(1.0)
            continue
        if gen is None:
            gen = torch.Generator(device=param.device).manual_seed(seed)
        kind = next((k for k in _KINDS if k in name), "other")
        sigma = {
            "embed_tokens": 1.0,
            "lm_head": param.shape[1] ** -0.5,
            "o_proj": std / (2 * num_layers) ** 0.5,
            "down_proj": std / (2 * num_layers),
        }.get(kind, std)
        param.normal_(0.0, sigma, generator=gen)
        if kind == "lm_head" and 0 < live_vocab < vocab_size:
            dead = torch.ones(param.shape[0], dtype=torch.bool)
            dead[torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed))[:live_vocab]] = False
            param[dead.to(param.device)] *= dead_scale
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def redraw(
    *, std: float, seed: int, num_layers: int, live_vocab: int, vocab_size: int, dead_scale: float = 0.05
) -> Callable[[Any], dict]:
    """A function for ``vllm.LLM.apply_model``: redraws the model's weights, returns the counts.
    It pickles by reference to this module, so engine processes only need attn-bench installed
    (and ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` to accept a function)."""
    import functools

    return functools.partial(
        _apply,
        std=std,
        seed=seed,
        num_layers=num_layers,
        live_vocab=live_vocab,
        vocab_size=vocab_size,
        dead_scale=dead_scale,
    )


def _apply(model: Any, **kw: Any) -> dict[str, int]:
    import torch

    with torch.no_grad():
        counts = draw_weights(model.named_parameters(), **kw)
        absorbed = refresh_absorbed(model)
    if absorbed:
        counts["mla_absorbed"] = absorbed
    return counts


def refresh_absorbed(model: Any) -> int:
    """Remake every MLA layer's absorbed weights from its (redrawn) ``kv_b_proj``; returns
    how many layers did."""
    done = 0
    for module in model.modules():
        remake = getattr(module, "process_weights_after_loading", None)
        if callable(remake) and hasattr(module, "W_UK_T") and hasattr(module, "kv_b_proj"):
            remake(module.W_UK_T.dtype)
            done += 1
    return done


def check_counts(counts: dict[str, int], num_layers: int, *, mla: bool = False) -> None:
    """Raise when a redraw missed layers (e.g. a model whose parameter names differ); with
    ``mla``, also when an MLA layer's absorbed weights were not remade."""
    if counts.get("o_proj") != num_layers or counts.get("down_proj") != num_layers or not counts.get("lm_head"):
        raise RuntimeError(f"weight redraw missed layers (expected o_proj/down_proj x {num_layers}): {counts}")
    if mla and counts.get("mla_absorbed") != num_layers:
        raise RuntimeError(f"MLA absorbed weights remade in {counts.get('mla_absorbed', 0)} of {num_layers} layers")
