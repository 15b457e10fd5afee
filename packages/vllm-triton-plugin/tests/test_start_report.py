"""The start report: one log line per process with the kernel variants engine start
compiled or loaded, written at the first build outside CUDA-graph capture and written again
only if another capture follows and the count has changed."""

from __future__ import annotations

import logging

import pytest
import torch
from test_backend import BLOCK, DEVICE, HEAD, vllm_config
from vllm.config import CUDAGraphMode
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.kv_cache_interface import FullAttentionSpec

from vllm_triton_plugin import backend


def _batch() -> CommonAttentionMetadata:
    loc = torch.tensor([0, 1, 2], dtype=torch.int32, device=DEVICE)
    return CommonAttentionMetadata(
        query_start_loc=loc,
        query_start_loc_cpu=loc.cpu(),
        seq_lens=torch.tensor([5, 9], dtype=torch.int32, device=DEVICE),
        num_reqs=2,
        num_actual_tokens=2,
        max_query_len=1,
        max_seq_len=9,
        block_table_tensor=torch.zeros(2, 4, dtype=torch.int32, device=DEVICE),
        slot_mapping=torch.zeros(2, dtype=torch.int64, device=DEVICE),
    )


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(backend, "_start_reported", False)
    monkeypatch.setattr(backend, "_reported_count", None)
    monkeypatch.setattr(backend.StartHostTime, "seconds", 0.0)
    monkeypatch.setattr(backend.StartHostTime, "calls", 0)
    monkeypatch.setattr(backend, "compiled_variants", lambda: {"attention": 5, "merge": 2, "write_kv": 1})
    handler = _Lines()
    backend.logger.addHandler(handler)
    old_level = backend.logger.level
    backend.logger.setLevel(logging.INFO)
    yield handler.lines
    backend.logger.removeHandler(handler)
    backend.logger.setLevel(old_level)


def test_reported_once_after_the_last_capture(lines: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=HEAD, dtype=torch.float32)
    config = vllm_config(4, 1, torch.float32, mode=CUDAGraphMode.FULL)
    builders = [backend.TritonAttentionMetadataBuilder(spec, [f"layer.{i}"], config, DEVICE) for i in range(2)]
    builders[0].build_for_cudagraph_capture(_batch())
    builders[1].build_for_cudagraph_capture(_batch())
    assert lines == []
    for b in (*builders, *builders):  # real batches, every KV-cache group's builder
        b.build(0, _batch())
    assert len(lines) == 1
    assert lines[0].startswith("Triton attention: 8 kernel variants compiled or loaded during engine start")
    assert "attention 5, merge 2, write_kv 1" in lines[0]
    # A build outside capture before another capture (V1's warm-up run before each capture)
    # reports early; after the next capture it reports again only with a new count.
    for _ in range(3):
        builders[0].build_for_cudagraph_capture(_batch())
        builders[1].build(0, _batch())
    assert len(lines) == 1
    monkeypatch.setattr(backend, "compiled_variants", lambda: {"attention": 6, "merge": 2, "write_kv": 1})
    builders[0].build_for_cudagraph_capture(_batch())
    builders[1].build(0, _batch())
    builders[0].build(0, _batch())
    assert len(lines) == 2 and lines[1].startswith("Triton attention: 9 kernel variants")


def test_the_mla_backend_reports_too(lines: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The MLA builder's builds follow the same rule (vLLM's own MLA builder underneath is
    stood in for: its __init__ needs a whole engine; test_mla_engine.py runs that)."""
    from types import SimpleNamespace

    from vllm_triton_plugin import mla_backend

    parent = mla_backend.MLACommonMetadataBuilder
    monkeypatch.setattr(parent, "build", lambda self, *a, **kw: SimpleNamespace())
    monkeypatch.setattr(mla_backend.TritonMLAMetadataBuilder, "_plan", lambda self, cm, md: None)
    builder = object.__new__(mla_backend.TritonMLAMetadataBuilder)
    builder.reorder_batch_threshold = 1
    builder.build_for_cudagraph_capture(_batch())
    assert lines == []
    builder.build(0, _batch())
    builder.build(0, _batch())
    assert len(lines) == 1 and lines[0].startswith("Triton attention: 8 kernel variants compiled or loaded")
    monkeypatch.setattr(backend, "compiled_variants", lambda: {"mla_decode": 9})
    builder.build_for_cudagraph_capture(_batch())
    builder.build(0, _batch())
    assert len(lines) == 2


def test_the_report_counts_the_plugins_host_time_until_it(lines: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=HEAD, dtype=torch.float32)
    builder = backend.TritonAttentionMetadataBuilder(spec, ["layer.0"], vllm_config(4, 1, torch.float32), DEVICE)
    slow = backend.start_timed(lambda: __import__("time").sleep(0.05))
    builder._capturing = True  # builds during capture count, and do not report
    for _ in range(3):
        builder.build(0, _batch())
    slow()
    backend.StartHostTime.paused = True  # the warm-up's calls do not count
    try:
        slow()
        builder.build(0, _batch())
    finally:
        backend.StartHostTime.paused = False
    assert backend.StartHostTime.calls == 4 and 0.05 <= backend.StartHostTime.seconds < 1.0
    seconds = backend.StartHostTime.seconds
    builder._capturing = False
    builder.build(0, _batch())  # the first real batch: the report, then no more counting
    assert len(lines) == 1 and f"took {seconds:.1f} s on the host over 4 calls" in lines[0]
    calls = backend.StartHostTime.calls
    slow()
    assert backend.StartHostTime.calls == calls
