import random

import pytest
import torch

from attn_bench.metrics import bytes_moved, flops, keys_read, visible_pairs
from attn_bench.problems import Problem


def _mask_counts(q_len: int, context: int, window: int) -> tuple[int, int]:
    """(visible pairs, keys some query sees) of a causal window, from the explicit mask."""
    q_pos = torch.arange(context - q_len, context)[:, None]
    k_pos = torch.arange(context)[None, :]
    visible = (k_pos <= q_pos) & (k_pos > q_pos - window)
    return int(visible.sum()), int(visible.any(0).sum())


def test_window_counts_match_the_mask():
    rng = random.Random(0)
    cases = [(1, 40, 16), (1, 16, 16), (1, 15, 16), (7, 23, 5), (23, 23, 30), (17, 50, 1), (50, 50, 49)]
    cases += [(q, q + rng.randrange(0, 60), rng.randrange(1, 80)) for q in (rng.randrange(1, 40) for _ in range(40))]
    for q_len, context, window in cases:
        pairs, keys = _mask_counts(q_len, context, window)
        assert keys_read(q_len, context, window) == keys, (q_len, context, window)
        if window < context:  # exact count; a window covering everything keeps the L^2/2 convention
            assert visible_pairs(q_len, context, window) == pairs, (q_len, context, window)
        else:
            assert visible_pairs(q_len, context, window) == visible_pairs(q_len, context)


def test_windowed_decode_counts_the_window_bytes_not_the_context():
    # Llama-3.1-8B geometry, batch 1 x 32k, window 1024: 1,024 keys of K and V are read.
    full = Problem(op="decode", batch=1, context=32768)
    windowed = Problem(op="decode", batch=1, context=32768, variant="window=1024")
    row_bytes = 2 * 8 * 128 * 2  # K and V, 8 KV heads, head_dim 128, bf16
    assert bytes_moved(full) == 32768 * row_bytes
    assert bytes_moved(windowed) == 1024 * row_bytes
    assert flops(windowed) == pytest.approx(flops(full) * 1024 / 32768, rel=1e-3)
    # At the H200's ~4.3 TB/s that is ~1 us: a windowed decode can no longer report 13 TB/s.
    assert bytes_moved(windowed) / 4.3e12 < 1e-6


def test_no_window_is_unchanged():
    p = Problem(op="prefill", batch=2, context=4096, q_len=2048)
    assert bytes_moved(p) == 2 * 2 * 4096 * 8 * 128 * 2
    assert flops(p) == 4.0 * 32 * 128 * 2 * (2048 * 2048 + 2048 * 2048 / 2)
