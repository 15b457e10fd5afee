"""One vLLM engine run for test_engine.py, in its own process (vLLM spawns workers, and each
engine must see its own environment: the plugin on or off).

    python engine_run.py MODEL_DIR OUT_JSON [KV_CACHE_DTYPE]

Generates greedily in two rounds and writes the token ids, the attention backends the
workers used and the prefix-cache hit count to OUT_JSON.
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


def main(model_dir: str, out_path: str, kv_cache_dtype: str = "auto") -> None:
    from vllm import LLM, SamplingParams

    llm = LLM(
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
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    tokens = []
    for batch in (ROUND1, ROUND2):
        outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        tokens += [list(o.outputs[0].token_ids) for o in outs]
    hits = sum(getattr(m, "value", 0) for m in llm.get_metrics() if m.name == "vllm:prefix_cache_hits")
    result = {
        "tokens": tokens,
        "backends": sorted({b for worker in llm.apply_model(attention_backends) for b in worker}),
        "prefix_cache_hits": hits,
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
