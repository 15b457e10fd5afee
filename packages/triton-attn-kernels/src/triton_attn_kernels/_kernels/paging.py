"""Page numbers through a block table, written once for every paged kernel.

Index contents are never trusted with an address: a page number read from the table is
clamped into [0, num_blocks), so a block id outside the cache reads some page of this
cache, never memory beyond it (two integer ops per key; debug mode reports the entry).
"""

import triton
import triton.language as tl


@triton.jit
def pages_of(bt_row, keys, ok, num_blocks, BLOCK_SIZE: tl.constexpr):
    """Page numbers (int32) of key positions ``keys`` (a scalar or a tile's vector) from the
    sequence's block-table row ``bt_row``; where ``ok`` is false no entry is read (page 0)."""
    page = tl.load(bt_row + keys // BLOCK_SIZE, mask=ok, other=0)
    return tl.minimum(tl.maximum(page, 0), num_blocks - 1)
