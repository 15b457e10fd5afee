"""Recovery when the compiler crashes on one kernel specialisation.

Triton 3.6's ptxas dies with SIGSEGV on some specialisations, e.g. the prefill kernel at
head_dim 64, eight query heads per KV head, fp16, sinks, block_m 128, tile_n 64, 3 stages (the
GPU fuzz case ``test_fuzz.py -k 1000048`` draws it), while the same tiles compile for other
feature mixes. A crash at compile time happens before the launch, so nothing
has been written: the launcher retries with fewer pipeline stages, then narrower key tiles,
warns once, and remembers the configuration that compiled for that specialisation (later
calls go straight to it). When nothing compiles, the error says which configuration to pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence

from triton.runtime.errors import PTXASError

__all__ = ["alternatives", "launch"]

Tiles = tuple[int, int, int]  # (tile_n, num_warps, num_stages)

_CHOSEN: dict[Hashable, Tiles] = {}


def alternatives(tile_n: int, num_warps: int, num_stages: int) -> list[Tiles]:
    """Fewer stages first (the pipelining is what grows the code), then 32-key tiles."""
    alts = [(tile_n, num_warps, s) for s in range(num_stages - 1, 0, -1)]
    if tile_n > 32:
        alts += [(32, num_warps, s) for s in (2, 1) if (32, num_warps, s) not in alts]
    return alts


def launch(
    run: Callable[[int, int, int], None], first: Tiles, key: Callable[[], Hashable], *, narrower: bool = True
) -> None:
    """``run(*first)``; if ptxas crashes on it, the first of :func:`alternatives` that compiles
    (with ``narrower=False`` only those that keep ``first``'s tile width). ``key()`` names the
    specialisation; nothing beyond the launch itself runs until a crash has happened."""
    if _CHOSEN:
        first = _CHOSEN.get((key(), first), first)
    try:
        run(*first)
        return
    except PTXASError as err:
        failure = err
    alts: Sequence[Tiles] = [t for t in alternatives(*first) if narrower or t[0] == first[0]]
    for alt in alts:
        try:
            run(*alt)
        except PTXASError:
            continue
        _CHOSEN[(key(), first)] = alt
        warnings.warn(
            f"triton_attn_kernels: ptxas failed on (tile_n, num_warps, num_stages)={first} for this kernel "
            f"specialisation; using {alt} instead (a compiler bug; the result is unaffected)",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    raise RuntimeError(
        f"ptxas failed on (tile_n, num_warps, num_stages)={first} and on every fallback {list(alts)}; "
        "pass config=AttentionConfig(...) with other tiles"
    ) from failure
