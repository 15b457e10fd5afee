"""attn-bench: microbenchmarks and end-to-end vLLM throughput of triton-attn-kernels against
its peers (PyTorch SDPA and FlexAttention, vLLM's Triton and FlashAttention kernels,
flash-attn, FlashInfer), with CSV results, Markdown summaries, plots and a roofline.

Layout::

    problems.py     Problem dataclass; suites in suites/*.toml
    inputs.py       device tensors for a problem (paged cache, block table, ...)
    registry.py     @provider registry; providers/ holds one module per peer
    check.py        every provider's output against triton_attn_kernels.reference
    timing.py       the one timing function and the device ceilings
    metrics.py      flops and bytes as pure functions of a problem
    results.py      the CSV row dataclass, CSV I/O, Markdown summary, compare
    plot.py         PNG plots and roofline, from the CSV only
    runner.py       runs a suite: build, check, time, write
    e2e.py          vLLM offline throughput per attention backend (one subprocess each)
    weights.py      sharper random weights for e2e runs (greedy tokens comparable across backends)
    cli.py          the `attn-bench` command
"""

__version__ = "0.1.0"
