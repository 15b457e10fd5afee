"""Facts about the device a launch runs on, read once per process."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Stand-in SM count under the interpreter: small, so that heuristics still choose several
# splits on tiny test shapes and the split-KV path is exercised on CPU.
INTERPRETER_SMS = 4


@functools.cache
def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_SMS
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


@functools.cache
def device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "interpreter"
    return str(torch.cuda.get_device_name(device))
