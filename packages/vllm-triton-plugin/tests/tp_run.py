"""One tensor-parallel vLLM engine run for test_tensor_parallel.py, in its own process.

    python tp_run.py MODEL_DIR OUT_JSON TENSOR_PARALLEL_SIZE

Generates greedily (engine_run.py's first round: decodes and prefill chunks mixed) with one
worker process per rank, and writes the token ids and, from every worker, its rank, the
attention implementations with their per-rank head counts, and the geometry its metadata
builders planned for. The functions sent to the workers live in this module, which the
workers import (the test puts this folder on PYTHONPATH).
"""

from __future__ import annotations

import json
import sys


def worker_attention(worker) -> dict:
    """Runs in a worker: what its attention layers and metadata builders hold."""
    import torch.distributed as dist
    from vllm.model_executor.layers.attention import Attention

    model = worker.model_runner.get_model()
    impls = sorted(
        {
            (f"{type(m.impl).__module__}.{type(m.impl).__qualname__}", m.impl.num_heads, m.impl.num_kv_heads)
            for m in model.modules()
            if isinstance(m, Attention)
        }
    )
    builders = []
    for groups in worker.model_runner.attn_groups:
        for group in groups:
            policy = getattr(group.get_metadata_builder(), "policy", None)
            if policy is not None:
                g = policy.geometry
                builders.append([g.num_q_heads, g.num_kv_heads, g.head_dim])
    return {"rank": dist.get_rank(), "impls": impls, "builders": builders}


def main(model_dir: str, out_path: str, tensor_parallel_size: str) -> None:
    from engine_run import MAX_TOKENS, ROUND1
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model_dir,
        skip_tokenizer_init=True,
        dtype="float32",
        enforce_eager=True,
        tensor_parallel_size=int(tensor_parallel_size),
        # One process per rank, as on GPUs (vLLM's CPU platform talks over gloo and shared memory).
        distributed_executor_backend="mp",
        block_size=32,
        max_model_len=128,
        max_num_batched_tokens=32,
        max_num_seqs=4,
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
        kv_cache_memory_bytes=32 << 20,
        seed=0,
    )
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in ROUND1], params, use_tqdm=False)
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "workers": llm.collective_rpc(worker_attention),
    }
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
