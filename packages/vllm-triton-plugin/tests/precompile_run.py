"""A vLLM engine's kernel launches against ``tuner precompile``'s, for test_precompile_engine.py.

    python precompile_run.py MODEL_DIR OUT_JSON

Engine and worker run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so hooks on the
kernels see every launch. Each launch is reduced to what decides Triton's compiled variant:
the constexpr values, the tensors' dtypes and the class of each specialised integer (1, a
multiple of 16, other). The engine generates engine_run.py's two rounds; then, in the
worker, precompile runs with the metadata builder's own serving policy and the engine's
block size and block count. OUT_JSON gets both sets of variants.
"""

from __future__ import annotations

import inspect
import json
import sys

import torch


def _variant(name: str, fn, args: tuple, kwargs: dict) -> str:
    params = inspect.signature(fn.fn).parameters
    fixed = set(getattr(fn, "kwargs", {}).get("do_not_specialize") or ())
    parts = [name]
    for arg, value in {**dict(zip(fn.arg_names, args, strict=False)), **kwargs}.items():
        if arg not in params:
            continue
        if "constexpr" in str(params[arg].annotation):
            parts.append(f"{arg}={value}")
        elif isinstance(value, torch.Tensor):
            parts.append(f"{arg}:{str(value.dtype).removeprefix('torch.')}")
        elif isinstance(value, int) and not isinstance(value, bool) and arg not in fixed:
            parts.append(f"{arg}:{'1' if value == 1 else 'x16' if value % 16 == 0 else 'other'}")
    return " ".join(parts)


def watch() -> set[str]:
    from triton_attn_kernels.compiled import kernels

    seen: set[str] = set()
    for name, fn in kernels().items():
        fn.add_pre_run_hook(lambda *a, _n=name, _f=fn, **k: seen.add(_variant(_n, _f, a, k)))
    return seen


def precompile_in_worker(worker) -> dict:
    from triton_attn_kernels.tuner.warmup import precompile

    (builder,) = {
        id(g.get_metadata_builder()): g.get_metadata_builder() for gs in worker.model_runner.attn_groups for g in gs
    }.values()
    num_blocks = worker.model_runner.vllm_config.cache_config.num_gpu_blocks
    report = precompile(builder.policy, block_size=builder.kv_cache_spec.block_size, num_blocks=num_blocks)
    return {"num_blocks": num_blocks, "calls": report.calls}


def main(model_dir: str, out_path: str) -> None:
    from engine_run import MAX_TOKENS, ROUND1, ROUND2
    from vllm import LLM, SamplingParams

    seen = watch()
    llm = LLM(
        model=model_dir,
        skip_tokenizer_init=True,
        dtype="float32",
        enforce_eager=True,
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
    for batch in (ROUND1, ROUND2):
        llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
    engine = sorted(seen)
    seen.clear()
    (info,) = llm.collective_rpc(precompile_in_worker)
    with open(out_path, "w") as f:
        json.dump({"engine": engine, "precompile": sorted(seen), **info}, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
