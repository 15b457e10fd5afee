"""What the KV-cache page size costs besides kernel speed.

Two costs grow with the page (vLLM's ``block_size``):

- memory: a sequence holds ``ceil(n / page)`` pages, so on average half a page per sequence
  sits allocated and empty (:func:`held_fraction`);
- prefix caching: vLLM reuses cached prefixes in whole pages and never the page holding a
  prompt's last token, so a shared prefix of ``p`` tokens saves ``floor(p / page)`` pages and
  the rest is computed again by every request (:func:`reused_tokens`).

``python -m attn_bench.pages`` measures the second in a real engine: groups of prompts that
share a prefix of a length that is no multiple of any page size tried, the first prompt of each
group run alone, then the others together, and vLLM's prefix-cache counters read after the
second round; the predicted counts are printed beside. The engine uses whatever attention
backend its platform picks: the KV-cache manager, not the kernel, decides what is reused.
Runs on any machine vLLM runs on (a tiny random Llama unless ``--model``).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["PrefixWorkload", "held_fraction", "predicted_hits", "reused_tokens"]


def held_fraction(lengths: Sequence[int], page: int) -> float:
    """Allocated but empty KV slots over used ones, for sequences of ``lengths`` tokens."""
    if page < 1:
        raise ValueError(f"page must be >= 1, got {page}")
    used = sum(lengths)
    held = sum(-(-n // page) * page for n in lengths)
    return (held - used) / used if used else 0.0


def reused_tokens(shared: int, prompt_len: int, page: int) -> int:
    """Tokens of a ``prompt_len``-token prompt read from the prefix cache when its first
    ``shared`` tokens are cached: whole pages only, and not the page of the last token (the
    engine computes at least that one to produce logits)."""
    if page < 1:
        raise ValueError(f"page must be >= 1, got {page}")
    return min(shared, prompt_len - 1) // page * page


@dataclass(frozen=True)
class PrefixWorkload:
    """``groups`` prefixes of ``prefix_lens`` tokens, each followed by ``per_group`` unique
    suffixes of ``suffix_len`` tokens."""

    prefix_lens: tuple[int, ...] = (333, 517, 701, 919)
    per_group: int = 4
    suffix_len: int = 45
    seed: int = 0

    def prompts(self, vocab: int) -> tuple[list[list[int]], list[list[int]]]:
        """(round 1: one prompt per group, round 2: the rest) as token ids."""
        rng = random.Random(self.seed)
        first, rest = [], []
        for p in self.prefix_lens:
            prefix = [rng.randrange(1, vocab) for _ in range(p)]
            group = [prefix + [rng.randrange(1, vocab) for _ in range(self.suffix_len)] for _ in range(self.per_group)]
            first.append(group[0])
            rest += group[1:]
        return first, rest


def predicted_hits(w: PrefixWorkload, page: int) -> int:
    """Prefix-cache hit tokens of round 2 (its prompts find their group's prefix cached, and
    nothing of each other's: every suffix is unique)."""
    return sum(reused_tokens(p, p + w.suffix_len, page) * (w.per_group - 1) for p in w.prefix_lens)


def _tiny_llama(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def _metric(llm, name: str) -> int:
    return int(sum(getattr(m, "value", 0) for m in llm.get_metrics() if m.name == name))


def _worker(model: str, page: int, out: str) -> None:
    from vllm import LLM, SamplingParams

    w = PrefixWorkload()
    vocab = json.loads((Path(model) / "config.json").read_text())["vocab_size"]
    llm = LLM(
        model=model,
        skip_tokenizer_init=True,
        block_size=page,
        max_model_len=2048,
        enable_prefix_caching=True,
        enforce_eager=True,
        disable_log_stats=False,
        kv_cache_memory_bytes=256 << 20,
        seed=0,
    )
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    first, rest = w.prompts(vocab)
    llm.generate([{"prompt_token_ids": p} for p in first], params, use_tqdm=False)
    queries0, hits0 = _metric(llm, "vllm:prefix_cache_queries"), _metric(llm, "vllm:prefix_cache_hits")
    llm.generate([{"prompt_token_ids": p} for p in rest], params, use_tqdm=False)
    row = {
        "page": page,
        "round2_prompt_tokens": sum(map(len, rest)),
        "round2_queries": _metric(llm, "vllm:prefix_cache_queries") - queries0,
        "round2_hits": _metric(llm, "vllm:prefix_cache_hits") - hits0,
        "predicted_hits": predicted_hits(w, page),
        "shared_tokens": sum(p * (w.per_group - 1) for p in w.prefix_lens),
        "workload": asdict(w),
    }
    Path(out).write_text(json.dumps(row))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m attn_bench.pages", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model folder (default: a tiny random Llama)")
    ap.add_argument("--block-sizes", default="16,64,128", help="comma-separated page sizes")
    ap.add_argument("--out", type=Path, help="write the rows here as JSON")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "PAGE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        _worker(a.worker[0], int(a.worker[1]), a.worker[2])
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or str(_tiny_llama(Path(tmp) / "tiny-llama"))
        for page in (int(s) for s in a.block_sizes.split(",")):
            out = Path(tmp) / f"page-{page}.json"
            # One engine per process: vLLM keeps global state between engines.
            subprocess.run(
                [sys.executable, "-m", "attn_bench.pages", "--worker", model, str(page), str(out)], check=True
            )
            rows.append(json.loads(out.read_text()))
    print("| page | shared prefix tokens | prefix-cache hits | predicted | recomputed of the shared |")
    print("|---|---|---|---|---|")
    for r in rows:
        lost = 1 - r["round2_hits"] / r["shared_tokens"]
        print(f"| {r['page']} | {r['shared_tokens']} | {r['round2_hits']} | {r['predicted_hits']} | {lost:.1%} |")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["round2_hits"] == r["predicted_hits"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
