"""One vLLM pooling-engine run for test_engine.py's encoder test, in its own process.

    python encoder_run.py MODEL_DIR OUT_JSON

Embeds three prompts (shorter than, about twice and about five times the local-attention
window) and writes the embeddings and the attention backends the workers used to OUT_JSON.
"""

from __future__ import annotations

import json
import sys

PROMPTS = [[1, *((7 * i + 3) % 250 + 5 for i in range(n)), 2] for n in (5, 40, 90)]


def attention_backends(model) -> list[str]:
    return sorted(
        {f"{type(m.impl).__module__}.{type(m.impl).__qualname__}" for m in model.modules() if hasattr(m, "impl")}
    )


def main(model_dir: str, out_path: str) -> None:
    from vllm import LLM

    llm = LLM(
        model=model_dir,
        runner="pooling",
        dtype="float32",
        enforce_eager=True,
        max_model_len=128,
        max_num_seqs=4,
        gpu_memory_utilization=0.05,
        kv_cache_memory_bytes=32 << 20,
        seed=0,
    )
    outs = llm.embed([{"prompt_token_ids": p} for p in PROMPTS], use_tqdm=False)
    result = {
        "embeddings": [list(o.outputs.embedding) for o in outs],
        "backends": sorted({b for worker in llm.apply_model(attention_backends) for b in worker}),
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
