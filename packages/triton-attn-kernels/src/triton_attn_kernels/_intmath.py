"""Integer helpers for host code. ``triton.cdiv`` and ``triton.next_power_of_2`` are
constexpr functions (about 2 us per host call in Triton 3.6-3.9); these are plain Python
(about 0.06 us), and a launch calls them several times."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
