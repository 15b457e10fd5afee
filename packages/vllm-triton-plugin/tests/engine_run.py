"""One vLLM engine run for test_engine.py, in its own process (vLLM spawns workers, and each
engine must see its own environment: the plugin on or off).

    python engine_run.py MODEL_DIR OUT_JSON [KV_CACHE_DTYPE [SPECULATIVE]]

Generates greedily in two rounds and writes the token ids, the attention backends the
workers used, the prefix-cache hit count and the speculative-decoding counters to OUT_JSON.
SPECULATIVE ``ngram`` proposes 3 tokens per step by n-gram lookup in the prompt, so every
decode step verifies 4 tokens per request; ``eagle:DRAFT_DIR`` (``eagle3:DRAFT_DIR``)
proposes 3 tokens per step with the EAGLE (EAGLE-3) draft model in DRAFT_DIR (its own
attention layer and KV cache, run through the same attention backend as the target), and
OUT_JSON also holds every proposal and the draft's attention backends.
"""

from __future__ import annotations

import json
import sys

# Round 1: four prompts of different lengths in one batch (decodes and prefill chunks mix);
# the 75-token prompt exceeds max_num_batched_tokens=32, so chunked prefill splits it.
# Round 2: two prompts that share the first 64 tokens (two 32-token blocks) of the long
# prompt, so both start from cached blocks.
LONG = [(7 * i + 3) % 251 + 1 for i in range(75)]
ROUND1 = [
    [11, 12, 13, 14, 15],
    [(5 * i + 1) % 251 + 1 for i in range(19)],
    LONG,
    [(3 * i + 2) % 251 + 1 for i in range(40)],
]
ROUND2 = [[*LONG[:64], 9, 8, 7], [*LONG[:64], 100, 101, 102, 103, 104, 105]]
MAX_TOKENS = 6


def attention_backends(model) -> list[str]:
    from vllm.model_executor.layers.attention import Attention

    impls = {type(m.impl) for m in model.modules() if isinstance(m, Attention)}
    return sorted(f"{c.__module__}.{c.__qualname__}" for c in impls)


def _runner(worker):
    # collective_rpc hands a callable the worker's wrapper on some releases.
    return getattr(worker, "worker", worker).model_runner


def record_draft_proposals(worker) -> None:
    """Keep every draft proposal ([requests, k] token ids) the worker's drafter returns: the
    drafts are what the draft model's attention decides."""
    drafter = _runner(worker).drafter
    propose, proposals = drafter.propose, []

    def recording(*args, **kwargs):
        drafts = propose(*args, **kwargs)
        proposals.append(drafts.tolist())
        return drafts

    drafter.propose = recording
    drafter.recorded_proposals = proposals


def draft_details(worker) -> tuple[list[str], list]:
    drafter = _runner(worker).drafter
    return attention_backends(drafter.model), drafter.recorded_proposals


def metric(llm, name: str) -> int:
    return int(sum(getattr(m, "value", 0) for m in llm.get_metrics() if m.name == name))


def main(model_dir: str, out_path: str, kv_cache_dtype: str = "auto", speculative: str = "none") -> None:
    from vllm import LLM, SamplingParams

    spec = {}
    if speculative == "ngram":
        spec = dict(
            speculative_config={
                "method": "ngram",
                "num_speculative_tokens": 3,
                "prompt_lookup_max": 3,
                "prompt_lookup_min": 1,
            }
        )
    elif speculative.startswith(("eagle:", "eagle3:")):
        method, draft_dir = speculative.split(":", 1)
        spec = dict(speculative_config={"method": method, "model": draft_dir, "num_speculative_tokens": 3})
    llm = LLM(
        **spec,
        model=model_dir,
        skip_tokenizer_init=True,
        dtype="float32",
        kv_cache_dtype=kv_cache_dtype,
        enforce_eager=True,
        block_size=32,
        max_model_len=128,
        max_num_batched_tokens=32,
        max_num_seqs=4,
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
        gpu_memory_utilization=0.05,
        kv_cache_memory_bytes=32 << 20,
        disable_log_stats=False,
        seed=0,
    )
    if speculative.startswith(("eagle:", "eagle3:")):
        llm.collective_rpc(record_draft_proposals)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    tokens = []
    # EAGLE: round 1 only (mixed decodes, verification and chunked prefill); the interpreter
    # runs three attention layers per target step and two more draft passes.
    rounds = (ROUND1,) if speculative.startswith(("eagle:", "eagle3:")) else (ROUND1, ROUND2)
    for batch in rounds:
        outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        tokens += [list(o.outputs[0].token_ids) for o in outs]
    result = {
        "tokens": tokens,
        "backends": sorted({b for worker in llm.apply_model(attention_backends) for b in worker}),
        "prefix_cache_hits": metric(llm, "vllm:prefix_cache_hits"),
        "spec_drafts": metric(llm, "vllm:spec_decode_num_drafts"),
        "spec_draft_tokens": metric(llm, "vllm:spec_decode_num_draft_tokens"),
        "spec_accepted_tokens": metric(llm, "vllm:spec_decode_num_accepted_tokens"),
    }
    if speculative.startswith(("eagle:", "eagle3:")):
        (draft_backends, proposals), *_ = llm.collective_rpc(draft_details)
        result.update(draft_backends=draft_backends, draft_proposals=proposals)
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
