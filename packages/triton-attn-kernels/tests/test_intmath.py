"""The host-side integer helpers agree with Triton's own (which cost ~2 us per host call)."""

import triton

from triton_attn_kernels._intmath import cdiv, next_pow2


def test_next_pow2_and_cdiv_match_triton():
    for n in range(1, 5000):  # (0 never occurs: sizes are >= 1)
        assert next_pow2(n) == triton.next_power_of_2(n), n
    for a in range(0, 300):
        for b in (1, 2, 3, 16, 64, 128):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
