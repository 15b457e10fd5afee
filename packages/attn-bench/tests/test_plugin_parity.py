"""attn-bench measures what the vLLM plugin runs: for the same batch under the same serving
limits, the plugin's metadata builder and attn-bench's ``ours`` providers choose the same
launches, configurations and decode query length (decode, speculative verification,
prefill, mixed; with and without full CUDA graphs). Needs vLLM (the plugin's nox session
runs this file); skipped elsewhere."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")
pytest.importorskip("vllm_triton_plugin")

from vllm.config import CUDAGraphMode
from vllm.v1.kv_cache_interface import FullAttentionSpec

from attn_bench.problems import Problem
from attn_bench.providers.ours import launch_plan, serving_limits
from triton_attn_kernels.tuning import decodes_first
from vllm_triton_plugin.backend import TritonAttentionMetadataBuilder

DEVICE = torch.device("cpu")
GEOMETRY = dict(num_q_heads=8, num_kv_heads=2, head_dim=64, dtype="float16", kv_dtype="float16")

PROBLEMS = [
    *(Problem(op="decode", batch=b, context=c, **GEOMETRY) for b in (1, 4, 16, 64) for c in (64, 2048)),
    *(Problem(op="prefill", batch=b, context=4096, q_len=q, **GEOMETRY) for b in (1, 16) for q in (2, 4, 8, 16)),
    Problem(op="prefill", batch=2, context=512, q_len=512, **GEOMETRY),
    Problem(op="prefill", batch=1, context=4096, q_len=1024, **GEOMETRY),
    Problem(op="mixed", batch=16, context=2048, chunks=1, chunk_len=512, chunk_context=1024, **GEOMETRY),
]


def _builder(limits, mode):
    model = SimpleNamespace(
        get_num_attention_heads=lambda parallel: GEOMETRY["num_q_heads"],
        get_num_kv_heads=lambda parallel: GEOMETRY["num_kv_heads"],
        get_head_size=lambda: GEOMETRY["head_dim"],
        max_model_len=limits.max_model_len,
        dtype=torch.float16,
    )
    spec = SimpleNamespace(num_speculative_tokens=limits.decode_query_len - 1) if limits.decode_query_len > 1 else None
    config = SimpleNamespace(
        model_config=model,
        parallel_config=SimpleNamespace(),
        cache_config=SimpleNamespace(cache_dtype="auto"),
        compilation_config=SimpleNamespace(cudagraph_mode=mode, static_forward_context={}),
        scheduler_config=SimpleNamespace(
            max_num_seqs=limits.max_num_seqs, max_num_batched_tokens=limits.max_num_batched_tokens
        ),
        speculative_config=spec,
    )
    kv_spec = FullAttentionSpec(
        block_size=16, num_kv_heads=GEOMETRY["num_kv_heads"], head_size=GEOMETRY["head_dim"], dtype=torch.float16
    )
    return TritonAttentionMetadataBuilder(kv_spec, ["layer.0"], config, DEVICE)


def _batch(p: Problem):
    seqs = p.seqs()
    cu = torch.tensor([0, *torch.tensor([q for q, _ in seqs]).cumsum(0).tolist()], dtype=torch.int32)
    return SimpleNamespace(
        causal=True,
        num_reqs=len(seqs),
        num_actual_tokens=int(cu[-1]),
        max_query_len=max(q for q, _ in seqs),
        max_seq_len=max(c for _, c in seqs),
        query_start_loc=cu,
        query_start_loc_cpu=cu,
        seq_lens=torch.tensor([c for _, c in seqs], dtype=torch.int32),
        block_table_tensor=torch.zeros(len(seqs), 1, dtype=torch.int32),
        slot_mapping=torch.zeros(int(cu[-1]), dtype=torch.int64),
    )


@pytest.mark.parametrize("graphs", [None, True, False], ids=["vllm-default", "full-graphs", "no-graphs"])
@pytest.mark.parametrize("p", PROBLEMS, ids=lambda p: p.label().replace(" ", "-"))
def test_plugin_and_bench_choose_the_same_plan(p: Problem, graphs: bool | None) -> None:
    limits = serving_limits(p, cuda_graphs=graphs)
    mode = CUDAGraphMode.FULL_AND_PIECEWISE if limits.cuda_graphs else CUDAGraphMode.PIECEWISE
    builder = _builder(limits, mode)
    assert builder.policy.limits == limits
    md = builder.build(0, _batch(p))
    plan = launch_plan(p, DEVICE)
    assert md.config == plan.config
    assert md.decode_query_len == plan.decode_query_len
    # The plan says which launches run: decode and prefill configs exactly where needed, and
    # a batch without decodes is one prefill launch.
    assert (plan.config.decode is not None) == (plan.decode_query_len >= 1)
    assert (plan.config.prefill is not None) == (p.max_seqlen_q > plan.decode_query_len)
    has_decodes = any(1 <= q <= limits.decode_query_len for q, _ in p.seqs())
    assert (plan.config.decode is not None) == has_decodes
    if builder.workspace is not None:
        assert builder.workspace.numel() >= plan.workspace_numel
    # A decode-first mixed batch runs as two calls in both (the decode rows, then the prefill
    # rows alone), split at the same request.
    split = decodes_first([q for q, _ in p.seqs()], plan.decode_query_len) if plan.decode_query_len else None
    assert (md.split.num_decodes if md.split is not None else None) == split
    assert (split is not None) == (p.op == "mixed")
