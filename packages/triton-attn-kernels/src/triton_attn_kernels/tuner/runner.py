"""The tuning loop: for each shape of the grid not yet in the table, check every candidate
config against the reference, time it, and merge the winner into the table file at once
(so an interrupted run loses at most the shape in progress and resumes where it stopped)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import triton

from .. import __version__
from .._device import INTERPRETER_SMS, interpreting
from ..tuning.heuristics import AttentionProblem, decode_heuristic, kv_write_heuristic, prefill_heuristic
from ..tuning.keys import KERNELS, config_to_dict, decode_key, kv_write_key, prefill_key
from ..tuning.tables import TableError
from . import store
from .bench import AttentionCase, KVWriteCase, time_launch
from .precompile import Precompiler
from .space import GEOMETRIES, GRIDS, Shape, space_for

__all__ = ["RunOptions", "run"]

# Stage-1 configs slower than this many times the best so far skip the full measurement.
PRUNE_FACTOR = 1.3
# Split-KV exists to fill idle SMs; past this many programs per SM it only adds merge work.
WAVES = 16
# The heuristic keeps its key unless a tuned config beats it by more than this: a table
# entry must not make a kernel slower through timing noise.
KEEP_HEURISTIC = 1.01


@dataclass
class RunOptions:
    kernel: str
    geometries: list[str]
    grid: str = "default"
    budget_s: float = 480.0
    out: Path = Path("dejavu_data")
    dtype: torch.dtype = torch.bfloat16
    kv_dtype: torch.dtype | None = None  # None: the query dtype
    block_size: int = 16
    reps: int = 20
    fresh: bool = False  # measure keys already in the table again (their entries are replaced)
    device_name: str | None = None  # default: torch.cuda.get_device_name()
    echo: Callable[[str], None] = print
    command: str = ""
    jobs: int | None = None  # compile workers; None: min(8, cores / 2) on CUDA, 0 in the interpreter


def _versions() -> dict[str, str | None]:
    return {
        "triton": triton.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton_attn_kernels": __version__,
    }


def run(opts: RunOptions) -> dict[str, Any]:
    """Tune ``opts.kernel`` over the grid of each geometry; returns a summary dict."""
    t_start = time.monotonic()
    deadline = t_start + opts.budget_s
    interp = interpreting()
    cuda = torch.cuda.is_available() and not interp
    if not cuda and not interp:
        raise SystemExit("tune run needs a CUDA GPU (or TRITON_INTERPRET=1 for a smoke test)")
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if cuda:
        name = opts.device_name or torch.cuda.get_device_name(device)
        cap: tuple[int, int] | None = tuple(torch.cuda.get_device_capability(device))  # type: ignore[assignment]
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        name, cap, num_sms = opts.device_name or "interpreter", None, INTERPRETER_SMS
    kv_dtype = opts.kv_dtype or opts.dtype
    path = store.table_path(opts.out, opts.kernel, name)
    done: set[tuple] = set()
    if not opts.fresh:
        try:
            doc = store.load_doc(path)
        except TableError as e:
            opts.echo(f"warning: {e}; it will be moved aside")
            doc = None
        if doc is not None:
            spec = KERNELS[opts.kernel]
            done = {spec.key_from_dict(e["key"]) for e in doc["entries"]}

    todo: list[tuple[str, Shape, tuple, Any]] = []
    skipped = 0
    for geom_name in opts.geometries:
        geom = GEOMETRIES[geom_name]
        if geom.head_dim_v is not None:
            # Its entries would serve (and overwrite) the equal-size geometry's keys.
            raise ValueError(f"geometry {geom_name}: tuning tables have no V head size in their keys, got {geom}")
        for shape in GRIDS[opts.grid][opts.kernel]:
            if opts.kernel == "kv_write":
                key = kv_write_key(geom.num_kv_heads, geom.head_dim, shape.num_tokens, opts.dtype, kv_dtype)
                heuristic: Any = kv_write_heuristic(geom.num_kv_heads, geom.head_dim)
            else:
                key, heuristic = _attention_key(
                    opts.kernel, geom, shape, opts.dtype, kv_dtype, num_sms, interp, opts.block_size
                )
            if key in done or any(key == t[2] for t in todo):
                skipped += 1
            else:
                todo.append((geom_name, shape, key, heuristic))
    jobs = opts.jobs if opts.jobs is not None else (min(8, (os.cpu_count() or 2) // 2) if cuda else 0)
    opts.echo(
        f"tune {opts.kernel} on {name}: {len(todo)} shapes to do over {', '.join(opts.geometries)} "
        f"({skipped} already in {path}); budget {opts.budget_s:.0f} s; {jobs} compile workers"
    )
    written = 0
    pre = Precompiler(0, opts.kernel, "", opts.dtype, kv_dtype, opts.block_size)  # replaced per geometry
    pre_geometry = None
    try:
        for i, (geom_name, shape, key, heuristic) in enumerate(todo, 1):
            geom = GEOMETRIES[geom_name]
            space = space_for(opts.kernel, geom.widest_head_dim, interp, block_size=opts.block_size)
            what = f"{shape.num_tokens} tokens" if opts.kernel == "kv_write" else str(shape)
            tag = f"[{i:>3}/{len(todo)}] {geom_name} {what}"
            if time.monotonic() > deadline and written:
                opts.echo(f"{tag}: budget of {opts.budget_s:.0f} s spent; rerun the same command to resume")
                break
            if pre_geometry != geom_name:
                pre.close()
                pre = Precompiler(jobs, opts.kernel, geom_name, opts.dtype, kv_dtype, opts.block_size)
                pre_geometry = geom_name
                # Stage 1 is the same for every shape: compile it, and each shape's heuristic
                # config, ahead of the timing loop, in the order the shapes come.
                heuristics = [t[3] for t in todo[i - 1 :] if t[0] == geom_name]
                pre.submit([*heuristics[:1], *space.stage1(), *heuristics[1:]])
            t0 = time.monotonic()
            if opts.kernel == "kv_write":
                case: Any = KVWriteCase(geom, shape, opts.dtype, kv_dtype, opts.block_size, device)
            else:
                case = AttentionCase(opts.kernel, geom, shape, opts.dtype, kv_dtype, opts.block_size, device)
            # The first shape of a run always completes, so that every run makes progress.
            stop = deadline if written else float("inf")
            entry, note = _tune_case(case, space, heuristic, opts.reps, cuda, stop, opts.echo, tag, pre, num_sms)
            del case
            if cuda:
                torch.cuda.empty_cache()
            if entry is None:
                opts.echo(f"{tag}: {note}")
                if time.monotonic() > deadline:
                    opts.echo(f"budget of {opts.budget_s:.0f} s spent; rerun the same command to resume")
                    break
                continue
            entry["key"] = KERNELS[opts.kernel].key_to_dict(key)
            base = store.new_doc(
                opts.kernel,
                name,
                cap,
                num_sms=num_sms,
                versions=_versions(),
                config_space=space.declared(),
                tuning={
                    "timing": "median of CUDA-graph replays after an L2 flush"
                    if cuda
                    else "median wall time (interpreter)",
                    "reps": opts.reps,
                    "block_size": opts.block_size,
                    "command": opts.command,
                },
            )
            store.merge_entries(path, base, [entry], duration_s=time.monotonic() - t0)
            written += 1
            gain = f", {entry['heuristic_us'] / entry['time_us']:.2f}x the heuristic" if entry["heuristic_us"] else ""
            opts.echo(
                f"{tag}: {_fmt(entry['config'])} {entry['time_us']:.1f} us{gain} "
                f"({entry['configs_timed']} configs, {time.monotonic() - t0:.1f} s; "
                f"elapsed {time.monotonic() - t_start:.0f}/{opts.budget_s:.0f} s)"
            )
    finally:
        pre.close()
    left = len(todo) - written
    opts.echo(
        f"done: {written} keys written, {skipped} already present, {left} left"
        f"{' (rerun to resume)' if left else ''}; table {path}"
    )
    return {"path": str(path), "written": written, "skipped": skipped, "left": left}


def _attention_key(
    kernel: str,
    geom: Any,
    shape: Shape,
    dtype: torch.dtype,
    kv_dtype: torch.dtype,
    num_sms: int,
    interp: bool,
    block_size: int,
) -> tuple[tuple, Any]:
    problem = AttentionProblem(
        num_seqs=shape.num_seqs,
        num_q_heads=geom.num_q_heads,
        num_kv_heads=geom.num_kv_heads,
        head_dim=geom.head_dim,
        max_seqlen_q=shape.q_len,
        max_seqlen_k=shape.context,
        dtype=str(dtype).removeprefix("torch."),
        kv_dtype=str(kv_dtype).removeprefix("torch."),
        num_sms=num_sms,
        interpreter=interp,
        head_dim_v=geom.head_dim_v,
        block_size=block_size,
    )
    if kernel == "decode":
        return decode_key(problem), decode_heuristic(problem)
    return prefill_key(problem), prefill_heuristic(problem)


def _fmt(config: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def _tune_case(
    case: Any,
    space: Any,
    heuristic: Any,
    reps: int,
    cuda: bool,
    deadline: float,
    echo: Callable[[str], None],
    tag: str,
    pre: Precompiler,
    num_sms: int,
) -> tuple[dict[str, Any] | None, str]:
    timed: dict[Any, float] = {}
    failed: dict[Any, str] = {}

    def measure(configs: list[Any]) -> bool:
        for config in configs:
            if config in timed or config in failed:
                continue
            if time.monotonic() > deadline:
                return False
            if config != heuristic and _pointless(case, config, num_sms):
                continue
            pre.wait([config])  # compiled by a worker meanwhile: loads from Triton's cache
            try:
                problem = case.check(config)
                if problem is not None:
                    failed[config] = f"wrong output: {problem}"
                    echo(f"{tag}: {config} rejected, {problem}")
                    continue
                best = min(timed.values(), default=None)
                prune = best * PRUNE_FACTOR if best is not None and config != heuristic else None
                t, _ = time_launch(case.launcher(config), reps, cuda=cuda, prune_above_us=prune)
                timed[config] = t
            except Exception as e:  # out of shared memory or registers: not a candidate here
                failed[config] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return True

    first = [heuristic, *space.stage1()]
    if not measure(first):
        return None, "budget spent during stage 1; not written"
    if not timed:
        return None, f"no config ran correctly: {next(iter(failed.values()), 'empty space')}"
    ranked = sorted(timed, key=timed.__getitem__)
    second = space.stage2(ranked[: space.keep]) if space.keep else []
    pre.submit(second)
    if second and not measure(second):
        return None, "budget spent during stage 2; not written"
    ranked = sorted(timed, key=timed.__getitem__)
    best = ranked[0]
    h_us = timed.get(heuristic)
    if h_us is not None and h_us <= timed[best] * KEEP_HEURISTIC:
        best = heuristic
    runner = next((c for c in ranked if c != best), None)
    entry = {
        "key": None,
        "config": config_to_dict(best),
        "time_us": round(timed[best], 3),
        "runner_up": {"config": config_to_dict(runner), "time_us": round(timed[runner], 3)} if runner else None,
        "heuristic_us": round(h_us, 3) if h_us is not None else None,
        "configs_timed": len(timed),
    }
    return entry, ""


def _pointless(case: Any, config: Any, num_sms: int) -> bool:
    """Decode configs not worth timing: more splits than key tiles (idle splits), or splits
    on a batch that already has more than WAVES programs per SM without them."""
    splits = getattr(config, "num_splits", 1)
    if splits == 1:
        return False
    if splits > -(-case.shape.context // config.tile_n):
        return True
    programs = case.shape.num_seqs * case.geometry.num_kv_heads * splits
    return programs > WAVES * num_sms
