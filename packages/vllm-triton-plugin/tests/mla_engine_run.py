"""One vLLM engine run of a tiny MLA model for test_mla_engine.py, in its own process.

    python mla_engine_run.py MODEL_DIR OUT_JSON [ATTENTION_BACKEND [PREFIX_CACHING [KV_CACHE_DTYPE]]]

Generates greedily in two rounds and writes the token ids, the MLA impl class of every
attention layer and the prefix-cache hit count to OUT_JSON. ATTENTION_BACKEND (e.g.
``CPU_MLA``) is passed to vLLM as ``attention_backend``; ``auto`` leaves the choice to the
platform. PREFIX_CACHING ``on`` asks for prefix caching (vLLM's CPU platform turns it off
for its own CPU MLA backend, and for every MLA backend on CPUs without AMX).
"""

from __future__ import annotations

import json
import sys

# Round 1: three prompts of different lengths in one batch (decodes and prefills mix).
# Round 2: two prompts that share the first 32 tokens (two 16-token blocks) of the long one,
# so that with prefix caching their prefill attends to a cached prefix.
LONG = [(7 * i + 3) % 251 + 1 for i in range(45)]
ROUND1 = [[11, 12, 13, 14, 15], [(5 * i + 1) % 251 + 1 for i in range(19)], LONG]
ROUND2 = [[*LONG[:32], 9, 8, 7], [*LONG[:32], 100, 101, 102, 103, 104, 105]]
MAX_TOKENS = 5


def mla_impls(model) -> list[str]:
    from vllm.model_executor.layers.attention.mla_attention import MLAAttention

    return [
        f"{type(m.impl).__module__}.{type(m.impl).__qualname__}" for m in model.modules() if isinstance(m, MLAAttention)
    ]


def metric(llm, name: str) -> int:
    return int(sum(getattr(m, "value", 0) for m in llm.get_metrics() if m.name == name))


def main(
    model_dir: str, out_path: str, attention_backend: str = "auto", prefix_caching: str = "off", kv_cache_dtype="auto"
) -> None:
    from vllm import LLM, SamplingParams

    backend = {} if attention_backend == "auto" else {"attention_backend": attention_backend}
    llm = LLM(
        **backend,
        model=model_dir,
        skip_tokenizer_init=True,
        dtype="float32",
        kv_cache_dtype=kv_cache_dtype,
        enforce_eager=True,
        block_size=16,
        max_model_len=128,
        max_num_seqs=4,
        enable_prefix_caching=prefix_caching == "on",
        gpu_memory_utilization=0.05,
        kv_cache_memory_bytes=16 << 20,
        disable_log_stats=False,
        seed=0,
    )
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    tokens = []
    for batch in (ROUND1, ROUND2):
        outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        tokens += [list(o.outputs[0].token_ids) for o in outs]
    result = {
        "tokens": tokens,
        "impls": [impl for worker in llm.apply_model(mla_impls) for impl in worker],
        "prefix_cache_hits": metric(llm, "vllm:prefix_cache_hits"),
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
