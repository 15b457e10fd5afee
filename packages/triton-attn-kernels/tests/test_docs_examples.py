"""Every ```python block of README.md, docs/*.md and the package READMEs runs.

The blocks of one file run in order in one fresh interpreter (a later block may continue an
earlier one), under Triton's interpreter when there is no GPU; each block is one test. A
block is skipped only when the line right before its fence says why:

    <!-- not-run: needs a GPU -->                       always skipped, with that reason
    <!-- needs: merge_attention_states, paged_attention(return_lse) -->
                                                        skipped while triton_attn_kernels lacks
                                                        the name (or the function the keyword)

A block that prints ``max |... - reference| = X`` must print X < 1e-2, so an example that
runs but computes garbage fails too.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import triton_attn_kernels

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("packages/*/README.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
MARK = re.compile(r"<!--\s*(not-run|needs)\s*:\s*(.*?)\s*-->\s*$")
ERROR = re.compile(r"max \|[^|\n]*reference\| = ([-+0-9.eE]+|nan|inf)")
TOLERANCE = 1e-2


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    mark: tuple[str, str] | None  # ("not-run" | "needs", text)

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text()
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        out.append(Block(path, line, m.group(1), (mark.group(1), mark.group(2)) if mark else None))
    return out


def missing_api(needs: str) -> list[str]:
    """The names of ``needs`` ("f, g(kw)") that triton_attn_kernels does not have (yet)."""
    missing = []
    for item in filter(None, (s.strip() for s in needs.split(","))):
        name, _, kw = item.partition("(")
        obj = getattr(triton_attn_kernels, name, None)
        kw = kw.rstrip(")").strip()
        if obj is None or (kw and kw not in inspect.signature(obj).parameters):
            missing.append(item)
    return missing


def skip_reason(block: Block) -> str | None:
    if block.mark is None:
        return None
    kind, text = block.mark
    if kind == "not-run":
        return text or "marked not-run"
    missing = missing_api(text)
    return f"triton_attn_kernels has no {', '.join(missing)} yet" if missing else None


_DRIVER = """
import contextlib, io, json, sys, traceback
blocks = json.load(open(sys.argv[1]))
results, scope = [], {"__name__": "__main__"}
for b in blocks:
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(b["code"], b["id"], "exec"), scope)
        results.append({"ok": True, "stdout": buf.getvalue()})
    except BaseException:
        results.append({"ok": False, "stdout": buf.getvalue(), "error": traceback.format_exc()})
json.dump(results, open(sys.argv[2], "w"))
"""


@functools.cache
def run_file(path: Path, workdir: Path) -> dict[str, dict[str, object]]:
    """Runs the file's runnable blocks in one subprocess; block id -> outcome."""
    runnable = [b for b in blocks_of(path) if skip_reason(b) is None]
    if not runnable:
        return {}
    tag = re.sub(r"\W", "_", str(path.relative_to(ROOT)))
    src, res = workdir / f"{tag}.json", workdir / f"{tag}.out.json"
    src.write_text(json.dumps([{"id": b.id, "code": b.code} for b in runnable]))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if not _has_cuda():
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(src), str(res)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if not res.exists():
        raise RuntimeError(f"the blocks of {path.name} did not finish: {proc.stderr[-2000:]}")
    return {b.id: r for b, r in zip(runnable, json.loads(res.read_text()), strict=True)}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


ALL = [b for p in DOCS for b in blocks_of(p)]


def test_the_docs_have_runnable_examples():
    readme = [b for b in ALL if b.path.name == "README.md" and b.path.parent == ROOT]
    assert len(readme) >= 2, "README.md's kernel example (and its fp8 form) are python blocks"
    assert all(b.mark is None for b in readme), "README.md's examples must run, unmarked"


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_block_runs(block: Block, docs_workdir: Path) -> None:
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    outcome = run_file(block.path, docs_workdir)[block.id]
    assert outcome["ok"], f"{block.id} raised:\n{outcome['error']}"
    for value in ERROR.findall(str(outcome["stdout"])):
        assert float(value) < TOLERANCE, f"{block.id} printed an error of {value}: {outcome['stdout']}"


@pytest.fixture(scope="session")
def docs_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs")


def test_markers_are_parsed(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "<!-- not-run: needs a GPU -->\n```python\nraise SystemExit\n```\n\n"
        "<!-- needs: paged_attention(no_such_keyword), write_kv_cache -->\n```python\npass\n```\n"
        "```python\nprint(1)\n```\n"
    )
    a, b, c = blocks_of(doc)
    assert skip_reason(a) == "needs a GPU"
    assert skip_reason(b) == "triton_attn_kernels has no paged_attention(no_such_keyword) yet"
    assert skip_reason(c) is None and c.code == "print(1)\n" and c.line == 10
