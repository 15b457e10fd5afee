"""One module per peer; importing this package registers every provider, in the order
listed here (ours first, then plain PyTorch, then the optional peers).

Optional peers are imported inside their ``make`` functions and ``available`` hooks, so a
missing one costs nothing here and shows up as a skip reason.
"""
# isort: skip_file

from . import ours
from . import ours_mla
from . import torch_ops
from . import flex
from . import vllm
from . import flash_attn
from . import flashinfer
from . import vllm_mla

__all__ = ["flash_attn", "flashinfer", "flex", "ours", "ours_mla", "torch_ops", "vllm", "vllm_mla"]
