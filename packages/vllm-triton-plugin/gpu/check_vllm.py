#!/usr/bin/env python3
"""End-to-end check of vllm-triton-plugin on a GPU: the Llama-3.1-8B architecture with dummy
weights, generated greedily through our Triton-only platform and through stock vLLM with
FLASH_ATTN, each engine in its own process; compares the first N tokens of every prompt.

Nothing is downloaded: the model's config.json is written here (architecture only).

    python3 check_vllm.py                         # CUDA graphs on (vLLM defaults), kv auto
    python3 check_vllm.py --enforce-eager
    python3 check_vllm.py --kv-cache-dtype fp8
    python3 check_vllm.py --matrix                # all four of the above combinations
    python3 check_vllm.py --num-layers 4          # faster, same per-layer shapes
    python3 check_vllm.py --serve                 # `vllm serve` + one /v1/completions request
    python3 check_vllm.py --weight-std 0          # keep vLLM's dummy weights (near-uniform logits)

Needs vLLM (0.26 - 0.33) with CUDA, triton-attn-kernels and vllm-triton-plugin installed.
Exit status 0 when every run passes (at least --min-match prompts identical).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Llama-3.1-8B's config.json (architecture fields only; meta-llama/Llama-3.1-8B).
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

ENGINES = {
    # name: (environment changes, LLM keyword arguments)
    "triton": ({"VLLM_PLUGINS": None}, {}),  # the plugin's platform, our backend by default
    "flash_attn": ({"VLLM_PLUGINS": ""}, {"attention_backend": "FLASH_ATTN"}),  # stock vLLM
    # stock vLLM's own Triton backend: the noise floor of a kernel-for-kernel comparison
    "triton_attn": ({"VLLM_PLUGINS": ""}, {"attention_backend": "TRITON_ATTN"}),
    # stock CUDA platform, our backend chosen by name through the general plugin
    "custom": ({"VLLM_PLUGINS": "triton_attn_backend"}, {"attention_backend": "CUSTOM"}),
}


def write_model(root: Path, num_layers: int) -> Path:
    config = dict(LLAMA_31_8B, num_hidden_layers=num_layers)
    path = root / f"llama-3.1-8b-arch-{num_layers}l"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": 128001}))
    return path


def make_prompts(n: int, seed: int, vocab_size: int) -> list[list[int]]:
    """Lengths from 1 to ~1500 tokens; a few share a 256-token prefix (prefix caching) and
    the long ones exceed max_num_batched_tokens (chunked prefill, mixed batches). Token ids
    avoid the ends of the vocabulary (special tokens)."""
    rng = random.Random(seed)
    low = min(1000, vocab_size // 10)

    def token() -> int:
        return rng.randrange(low, vocab_size - low)

    shared = [token() for _ in range(256)]
    lengths = [1, 2, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 200, 255, 257, 300, 511, 513, 700, 900, 1023, 1500]
    prompts = []
    for i in range(n):
        if i % 8 == 7:
            prompts.append(shared + [token() for _ in range(rng.randrange(1, 64))])
        else:
            length = lengths[i % len(lengths)]
            prompts.append([token() for _ in range(length)])
    return prompts


def _impl_names(model) -> list[str]:
    names = set()
    for module in model.modules():
        impl = getattr(module, "impl", None)
        if impl is not None and hasattr(impl, "forward"):
            names.add(f"{type(impl).__module__}.{type(impl).__qualname__}")
    return sorted(names)


def _randomise(std: float, seed: int, num_layers: int):
    """Redraw every matrix from N(0, std), the same values in every run, and set norm weights
    to 1. Dummy weights (uniform in +-1e-3, norms included) make nearly uniform logits, where
    greedy choices hinge on rounding and any two backends disagree. The projections that
    write into the residual stream (o_proj, down_proj) get std / sqrt(2 * layers), as in
    GPT-2's initialisation, so that 32 random layers do not amplify rounding differences
    chaotically."""

    def apply(model) -> int:
        import torch

        gen = None
        count = 0
        with torch.no_grad():
            for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
                if not param.dtype.is_floating_point:
                    continue
                if param.dim() < 2:
                    if "norm" in name:
                        param.fill_(1.0)
                    continue
                if gen is None:
                    gen = torch.Generator(device=param.device).manual_seed(seed)
                scaled = "o_proj" in name or "down_proj" in name
                param.normal_(0.0, std / (2 * num_layers) ** 0.5 if scaled else std, generator=gen)
                count += 1
        return count

    return apply


def child(args: argparse.Namespace) -> None:
    """One engine: generate and write tokens + the attention impls used to --out."""
    from vllm import LLM, SamplingParams

    _, llm_kwargs = ENGINES[args.engine]
    llm = LLM(
        model=str(args.model),
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype="bfloat16",
        kv_cache_dtype=args.kv_cache_dtype,
        enforce_eager=args.enforce_eager,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=True,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=0,
        **llm_kwargs,
    )
    randomised = 0
    if args.weight_std > 0:
        randomised = sum(llm.apply_model(_randomise(args.weight_std, 1234, args.num_layers)))
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    vocab_size = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    prompts = make_prompts(args.prompts, seed=0, vocab_size=vocab_size)
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    result = {
        "engine": args.engine,
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "impls": sorted({n for worker in llm.apply_model(_impl_names) for n in worker}),
        "randomised_matrices": randomised,
        "generate_s": round(seconds, 2),
    }
    Path(args.out).write_text(json.dumps(result))


def run_engine(engine: str, args: argparse.Namespace, model: Path, workdir: Path) -> dict:
    env_changes, _ = ENGINES[engine]
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    # Engine in this process: apply_model then needs no pickling of functions across processes.
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    out = workdir / f"{engine}-{args.kv_cache_dtype}-{'eager' if args.enforce_eager else 'graphs'}.json"
    log = out.with_suffix(".log")
    cmd = [
        sys.executable,
        __file__,
        "--child",
        engine,
        "--model",
        str(model),
        "--out",
        str(out),
        "--kv-cache-dtype",
        args.kv_cache_dtype,
        "--prompts",
        str(args.prompts),
        "--tokens",
        str(args.tokens),
        "--max-model-len",
        str(args.max_model_len),
        "--max-num-batched-tokens",
        str(args.max_num_batched_tokens),
        "--gpu-memory-utilization",
        str(args.gpu_memory_utilization),
        "--weight-std",
        str(args.weight_std),
        "--num-layers",
        str(args.num_layers),
    ]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if rc != 0:
        tail = log.read_text()[-4000:]
        print(f"[{engine}] FAILED (rc={rc}, {wall:.0f}s); log {log}:\n{tail}", flush=True)
        return {"engine": engine, "error": f"rc={rc}", "log": str(log)}
    result = json.loads(out.read_text())
    result["wall_s"] = round(wall, 1)
    print(
        f"[{engine}] ok in {wall:.0f}s, generate {result['generate_s']}s, impls {result['impls']}, "
        f"randomised matrices {result['randomised_matrices']}",
        flush=True,
    )
    return result


def compare(args: argparse.Namespace, model: Path, workdir: Path) -> bool:
    runs = {name: run_engine(name, args, model, workdir) for name in args.engines}
    ref = runs.get("flash_attn")
    label = f"kv={args.kv_cache_dtype} {'eager' if args.enforce_eager else 'cudagraphs'}"
    ok = True
    for name, run in runs.items():
        if "error" in run:
            print(f"  {label:24s} {name:10s} ERROR {run['error']} ({run['log']})")
            ok = False
            continue
        if name == "flash_attn":
            if not any("flash_attn" in i for i in run["impls"]):
                print(f"  {label:24s} flash_attn reference did not run FlashAttention: {run['impls']}")
                ok = False
            continue
        if ref is None or "error" in ref:
            continue
        same = sum(a == b for a, b in zip(run["tokens"], ref["tokens"], strict=True))
        first_diff = [
            next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
            for a, b in zip(run["tokens"], ref["tokens"], strict=True)
        ]
        diverged = sorted(d for d in first_diff if d is not None)
        expected_impl = all("vllm_triton_plugin" in i for i in run["impls"]) and run["impls"]
        passed = same >= args.min_match and bool(expected_impl)
        ok &= passed
        print(
            f"  {label:24s} {name:10s} vs flash_attn: {same}/{len(ref['tokens'])} prompts identical "
            f"(first divergence at token {diverged[:8]}), impl ok={bool(expected_impl)} -> "
            f"{'PASS' if passed else 'FAIL'}"
        )
    return ok


def serve_check(args: argparse.Namespace, model: Path, workdir: Path) -> bool:
    """`vllm serve` with the plugin answers a /v1/completions request (token-id prompt)."""
    import urllib.request

    port = args.port
    log = workdir / "serve.log"
    cmd = [
        "vllm",
        "serve",
        str(model),
        "--load-format",
        "dummy",
        "--skip-tokenizer-init",
        "--max-model-len",
        str(args.max_model_len),
        "--gpu-memory-utilization",
        str(args.gpu_memory_utilization),
        "--port",
        str(port),
    ]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    env = dict(os.environ)
    env.pop("VLLM_PLUGINS", None)
    with open(log, "w") as f:
        server = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            if server.poll() is not None:
                print(f"[serve] server exited rc={server.returncode}; log {log}:\n{log.read_text()[-4000:]}")
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(5)
        else:
            print(f"[serve] not healthy after 900 s; log {log}")
            return False
        body = json.dumps(
            {
                "model": str(model),
                "prompt": list(range(1000, 1032)),
                "max_tokens": 8,
                "temperature": 0.0,
                "return_token_ids": True,
            }
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as r:
            status, answer = r.status, json.loads(r.read())
        # Logged by the platform when it picks our backend (the plugin list mentions the
        # package whether or not it is used).
        used = "Using the Triton attention backend" in log.read_text()
        print(f"[serve] /v1/completions -> HTTP {status}: {json.dumps(answer)[:600]}")
        print(f"[serve] server log mentions the Triton backend: {used}")
        return status == 200 and bool(answer.get("choices")) and used
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-layers", type=int, default=32, help="decoder layers (Llama-3.1-8B: 32)")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (default: vLLM's graphs)")
    parser.add_argument("--matrix", action="store_true", help="kv auto/fp8 x CUDA graphs/eager")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16, help="greedy tokens compared per prompt")
    parser.add_argument("--min-match", type=int, default=29, help="prompts that must be identical")
    parser.add_argument("--weight-std", type=float, default=0.02, help="redraw matrices from N(0, std); 0: keep")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-batched-tokens", type=int, default=512, help="small: chunked prefill")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["triton", "flash_attn"],
        choices=sorted(ENGINES),
        help="engines to run (flash_attn is the reference); add 'custom' for CUSTOM on stock vLLM",
    )
    parser.add_argument("--serve", action="store_true", help="also check `vllm serve` + /v1/completions")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workdir", type=Path, default=None, help="model dir, logs and results (default: tmp)")
    parser.add_argument("--child", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        args.engine = args.child
        child(args)
        return 0

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="check_vllm_"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = write_model(workdir, args.num_layers)
    print(f"model {model} ({args.num_layers} layers), results and logs in {workdir}", flush=True)
    combos = [(args.kv_cache_dtype, args.enforce_eager)]
    if args.matrix:
        combos = [(kv, eager) for kv in ("auto", "fp8") for eager in (False, True)]
    ok = True
    summary = []
    for kv, eager in combos:
        args.kv_cache_dtype, args.enforce_eager = kv, eager
        passed = compare(args, model, workdir)
        summary.append((kv, eager, passed))
        ok &= passed
    if args.serve:
        served = serve_check(args, model, workdir)
        summary.append(("serve", args.enforce_eager, served))
        ok &= served
    print("\nsummary:")
    for kv, eager, passed in summary:
        print(f"  {kv:8s} {'eager' if eager else 'cudagraphs':10s} {'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
