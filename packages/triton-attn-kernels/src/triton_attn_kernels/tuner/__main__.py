"""``python -m triton_attn_kernels.tuner``: the offline tuner and its table tools.

    run KERNEL [--geometry llama3-8b] [--budget 480] [--out dejavu_data]   tune on this GPU
    validate [PATH ...]       check table files (default: every table found)
    show [PATH ...]           print tables as text (default: list the tables found)
    import-dejavu PATH --kernel KERNEL [--device NAME] [--out DIR]   convert a triton-dejavu cache.json
    schema                    print the JSON Schema (dejavu_data/schema.json)
    precompile --num-q-heads 32 --num-kv-heads 8 --head-dim 128 ...   warm Triton's cache for a server
    precompile --num-q-heads 16 --num-kv-heads 16 --head-dim 192 --head-dim-v 128 --layout varlen ...
                              the same for an MLA model's prefill (the plugin's MLA backend)

See docs/tuning.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch

from ..tuning import envs
from ..tuning.keys import KERNELS
from ..tuning.schema import build_schema
from ..tuning.tables import Resource, Table, TableError, device_file_name, read_table, search_roots
from . import store
from .space import GEOMETRIES, GRIDS
from .warmup import LAYOUTS

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_KV_DTYPES = {**_DTYPES, "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def _all_tables() -> list[Resource]:
    found = []
    for root in search_roots(envs.tuning_dir()):
        for kernel in KERNELS:
            folder = root.joinpath(kernel)
            if folder.is_dir():
                found += sorted((r for r in folder.iterdir() if r.name.endswith(".json")), key=lambda r: r.name)
    return found


def _schema_errors(path: Resource | Path) -> list[str]:
    try:
        import jsonschema
    except ImportError:
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []  # read_table reports it
    validator = jsonschema.Draft202012Validator(build_schema())
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def cmd_validate(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths] if args.paths else _all_tables()
    if not paths:
        print("no tables found")
        return 0
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        print("note: jsonschema is not installed; checking the reader's rules only")
    bad = 0
    for path in paths:
        problems = _schema_errors(path)
        try:
            table = read_table(path)
            folder = Path(str(path)).parent.name
            if folder != table.spec.name:
                problems.append(f"holds kernel {table.spec.name!r} but sits in folder {folder!r}")
            if path.name != device_file_name(table.device_name):
                problems.append(f"device {table.device_name!r} should be in {device_file_name(table.device_name)}")
        except TableError as e:
            problems.append(str(e))
        if problems:
            bad += 1
            print(f"INVALID {path}")
            for p in problems:
                print(f"    {p}")
        else:
            print(f"ok      {path} ({len(table.entries)} entries)")
    return 1 if bad else 0


def _render(table: Table) -> str:
    spec, meta = table.spec, table.meta
    v = meta.get("versions", {})
    lines = [
        f"{table.origin}",
        f"  kernel {spec.name}, device {table.device_name} (capability {table.capability}), "
        f"{len(table.entries)} entries",
        f"  triton {v.get('triton')}, torch {v.get('torch')}, cuda {v.get('cuda')}; written {meta.get('created')}; "
        f"tuning took {meta.get('tuning', {}).get('duration_s', 0):.0f} s",
        f"  config space: {json.dumps(meta.get('config_space', {}))}",
    ]
    head = [*spec.key_fields, *spec.config_fields, "time_us", "heuristic_us", "speedup", "runner-up"]
    rows = []
    for key in sorted(table.entries):
        e = table.entries[key]
        cfg = [getattr(e.config, f) for f in spec.config_fields]
        speedup = f"{e.heuristic_us / e.time_us:.2f}x" if e.heuristic_us and e.time_us else "-"
        runner = "-"
        if e.runner_up is not None:
            rc, rt = e.runner_up
            diff = [f"{f}={getattr(rc, f)}" for f in spec.config_fields if getattr(rc, f) != getattr(e.config, f)]
            runner = f"{' '.join(diff) or 'same'} {rt:.1f}us" if rt else " ".join(diff)
        t = f"{e.time_us:.1f}" if e.time_us else "-"
        h = f"{e.heuristic_us:.1f}" if e.heuristic_us else "-"
        rows.append([*map(str, key), *map(str, cfg), t, h, speedup, runner])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def cmd_show(args: argparse.Namespace) -> int:
    if not args.paths:
        tables = _all_tables()
        print("tables found (TRITON_ATTN_TUNING_DIR first, then the shipped ones):" if tables else "no tables found")
        for path in tables:
            print(f"  {path}")
        return 0
    status = 0
    for p in args.paths:
        try:
            print(_render(read_table(Path(p))))
        except TableError as e:
            print(f"{p}: {e}")
            status = 1
    return status


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import RunOptions, run

    geometries = [g for g in GEOMETRIES if g != "tiny"] if "all" in args.geometry else args.geometry
    opts = RunOptions(
        kernel=args.kernel,
        geometries=geometries,
        grid=args.grid,
        budget_s=args.budget,
        out=Path(args.out),
        dtype=_DTYPES[args.dtype],
        kv_dtype=_KV_DTYPES[args.kv_dtype] if args.kv_dtype else None,
        block_size=args.block_size,
        reps=args.reps,
        fresh=args.fresh,
        device_name=args.device_name,
        jobs=args.jobs,
        echo=lambda s: print(s, flush=True),
        command="python -m triton_attn_kernels.tuner " + " ".join(map(shlex.quote, sys.argv[1:])),
    )
    run(opts)
    return 0


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} wants NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def cmd_import_dejavu(args: argparse.Namespace) -> int:
    from .dejavu import convert

    cap = tuple(int(x) for x in args.capability.split(".")) if args.capability else None
    doc, notes = convert(
        Path(args.path),
        args.kernel,
        device_name=args.device,
        capability=cap,  # type: ignore[arg-type]
        key_names=args.keys.split(",") if args.keys else None,
        mapping=_pairs(args.map, "--map"),
        constants=_pairs(args.set, "--set"),
    )
    for note in notes:
        print(note)
    if not doc["entries"]:
        print("nothing to import")
        return 1
    path = store.table_path(Path(args.out), args.kernel, doc["device"]["name"])
    written = store.merge_entries(path, doc, doc["entries"], duration_s=doc["tuning"]["duration_s"])
    print(f"imported {len(doc['entries'])} entries into {path} (now {len(written['entries'])})")
    return 0


# vLLM's cache dtype names beside torch's; "auto" is the model dtype.
_VLLM_KV = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def cmd_precompile(args: argparse.Namespace) -> int:
    from .._device import interpreting
    from ..tuning import ServingLimits, ServingPolicy
    from .warmup import Features, precompile, serving_variants

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not interpreting():
        raise ValueError("no GPU: precompile compiles for the GPU it runs on (TRITON_INTERPRET=1 only rehearses)")
    if args.head_dim_v is not None and args.head_dim_v < 1:
        raise ValueError(f"--head-dim-v must be >= 1, got {args.head_dim_v}")
    kv_dtype = args.dtype if args.kv_dtype == "auto" else _VLLM_KV.get(args.kv_dtype, args.kv_dtype)
    policy = ServingPolicy.for_model(
        num_q_heads=args.num_q_heads,
        num_kv_heads=args.num_kv_heads,
        head_dim=args.head_dim,
        head_dim_v=args.head_dim_v,
        dtype=args.dtype,
        kv_dtype=kv_dtype,
        limits=ServingLimits(
            max_num_seqs=args.max_num_seqs,
            max_model_len=args.max_model_len,
            max_num_batched_tokens=args.max_num_batched_tokens or args.max_model_len,
            cuda_graphs=not args.no_full_cuda_graphs,
            decode_query_len=args.decode_query_len,
            block_size=args.block_size,
            plain_attention=not (args.alibi or args.sinks),
        ),
        device=device,
    )
    features = Features(sliding_window=args.sliding_window, softcap=args.softcap, alibi=args.alibi, sinks=args.sinks)
    if args.dry_run:
        for v in serving_variants(policy, layout=args.layout):
            print(f"{v.kind:8s} {v.config}")
        return 0
    jobs = args.jobs if args.jobs is not None else (min(8, (os.cpu_count() or 2) // 2) if device.type == "cuda" else 0)
    report = precompile(
        policy,
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        features=features,
        jobs=jobs,
        echo=lambda s: print(s, flush=True),
        layout=args.layout,
    )
    kinds = {k: sum(v.kind == k for v in report.variants) for k in ("decode", "prefill", "kv_write")}
    print(
        f"{len(report.variants)} configurations ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
        f"{report.calls} launches in {report.seconds:.1f} s; compiled variants in this process: "
        f"{sum(report.compiled.values())} {report.compiled}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triton_attn_kernels.tuner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="tune one kernel over a problem grid on this GPU")
    p.add_argument("kernel", choices=list(KERNELS))
    p.add_argument("--geometry", nargs="+", default=["llama3-8b"], choices=[*GEOMETRIES, "all"])
    p.add_argument("--grid", default="default", choices=list(GRIDS))
    p.add_argument(
        "--budget",
        type=float,
        default=480.0,
        help="seconds; when spent the run stops and drops the shape in progress (never a run's first); rerun to resume",
    )
    p.add_argument("--out", default="dejavu_data", help="table root; writes OUT/KERNEL/DEVICE.json")
    p.add_argument("--dtype", default="bfloat16", choices=list(_DTYPES))
    p.add_argument("--kv-dtype", default=None, choices=list(_KV_DTYPES), help="default: --dtype")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=20, help="CUDA-graph replays per timing (median)")
    p.add_argument("--fresh", action="store_true", help="re-measure keys already in the table instead of skipping them")
    p.add_argument("--device-name", default=None, help="file the results under this device name")
    p.add_argument(
        "--jobs", type=int, default=None, help="compile worker processes (default: min(8, cores/2); 0: none)"
    )
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("validate", help="check table files against the schema and the reader")
    p.add_argument("paths", nargs="*")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("show", help="print tables (no PATH: list the tables found)")
    p.add_argument("paths", nargs="*")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("import-dejavu", help="convert a triton-dejavu cache.json")
    p.add_argument("path")
    p.add_argument("--kernel", required=True, choices=list(KERNELS))
    p.add_argument("--device", default=None, help="device name; default: the gpu_<NAME> folder in PATH")
    p.add_argument("--capability", default=None, help="e.g. 9.0; default: known from the device name")
    p.add_argument("--keys", default=None, help="comma-separated key names if the file has no 'keys'")
    p.add_argument("--map", action="append", default=[], help="dejavu NAME=our field (key or config)")
    p.add_argument("--set", action="append", default=[], help="FIELD=VALUE for key fields the file lacks")
    p.add_argument("--out", default="dejavu_data")
    p.set_defaults(fn=cmd_import_dejavu)

    p = sub.add_parser("schema", help="print the JSON Schema of a table")
    p.set_defaults(fn=lambda a: print(json.dumps(build_schema(), indent=2)) or 0)

    p = sub.add_parser(
        "precompile",
        help="compile every kernel variant a server of this model geometry launches (fills TRITON_CACHE_DIR)",
    )
    p.add_argument("--num-q-heads", type=int, required=True, help="per GPU: the model's divided by tensor parallelism")
    p.add_argument("--num-kv-heads", type=int, required=True, help="per GPU, as --num-q-heads")
    p.add_argument("--head-dim", type=int, required=True, help="q/k head size")
    p.add_argument(
        "--head-dim-v",
        type=int,
        default=None,
        help="V's head size where it differs from --head-dim; an MLA model's prefill (DeepSeek-V3: "
        "--head-dim 192 --head-dim-v 128, --num-kv-heads = --num-q-heads); no KV-cache write then",
    )
    p.add_argument("--dtype", default="bfloat16", choices=list(_DTYPES))
    p.add_argument(
        "--kv-dtype", default="auto", choices=["auto", *_KV_DTYPES, *_VLLM_KV], help="cache dtype; auto: --dtype"
    )
    p.add_argument(
        "--block-size",
        type=int,
        default=16,
        help="the cache's page size: the server's (the vLLM plugin asks for 128 on Hopper where the Gluon "
        "prefill serves the model; its log says so), vLLM's default 16 elsewhere",
    )
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-model-len", type=int, required=True)
    p.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: --max-model-len")
    # Under full CUDA graphs the capture sizes need not be given: mixed batches run with any
    # request count, so every batch size up to --max-num-seqs is warmed either way.
    p.add_argument(
        "--no-full-cuda-graphs",
        action="store_true",
        help="the server runs without full CUDA graphs (enforce_eager, or cudagraph_mode PIECEWISE / NONE)",
    )
    p.add_argument("--decode-query-len", type=int, default=1, help="1 + num_speculative_tokens")
    p.add_argument("--num-blocks", type=int, default=None, help="KV-cache blocks if known; else both classes")
    p.add_argument("--sliding-window", type=int, default=None)
    p.add_argument("--softcap", type=float, default=None)
    p.add_argument("--alibi", action="store_true")
    p.add_argument("--sinks", action="store_true")
    p.add_argument(
        "--jobs", type=int, default=None, help="processes compiling side by side (default: min(8, cores/2); 0: none)"
    )
    p.add_argument(
        "--layout",
        default="paged",
        choices=list(LAYOUTS),
        help="paged: paged_attention on the KV cache (and its write); varlen: varlen_attention on contiguous K/V, "
        "as the vLLM plugin's MLA backend runs its prefill (with --head-dim-v)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the configurations only")
    p.set_defaults(fn=cmd_precompile)

    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
