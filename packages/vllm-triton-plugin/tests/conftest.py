"""Shared fixtures. Without a GPU the kernels run through Triton's interpreter, which must be
switched on before triton_attn_kernels is imported (nox sets it; this covers a bare pytest)."""

from __future__ import annotations

import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
