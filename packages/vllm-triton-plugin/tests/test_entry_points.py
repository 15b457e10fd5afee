"""The two entry points: declared, cheap, idempotent, free of side effects; the platform's
backend choice (ours by default, MLA included, the user's choice honoured, sparse MLA to the parent);
VLLM_PLUGINS switching either off."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest
import torch
from vllm.v1.attention.backends.registry import AttentionBackendEnum

from vllm_triton_plugin import BACKEND_PATH, platform_plugin, register_backend
from vllm_triton_plugin.platform import MLA_BACKEND_PATH, TritonOnlyPlatformMixin


def _python(code: str, **env: str | None) -> str:
    full = dict(os.environ)
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.strip().splitlines()[-1]


def test_entry_points_declared():
    general = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    platform = {ep.name: ep for ep in entry_points(group="vllm.platform_plugins")}
    assert general["triton_attn_backend"].load() is register_backend
    assert platform["triton_attn_platform"].load() is platform_plugin


def test_import_has_no_side_effects():
    # Importing the package imports neither vLLM nor the kernels, and changes no environment.
    code = (
        "import os, sys; before = dict(os.environ); import vllm_triton_plugin; "
        "print(sorted(m for m in ('vllm', 'triton', 'triton_attn_kernels', 'torch') if m in sys.modules), "
        "dict(os.environ) == before)"
    )
    assert _python(code) == "[] True"


def test_entry_points_are_cheap():
    # Called in every vLLM process: neither our backend module nor the kernels get imported.
    code = (
        "import sys, vllm_triton_plugin as p; p.register_backend(); p.platform_plugin(); "
        "print(sorted(m for m in ('vllm_triton_plugin.backend', 'triton_attn_kernels') if m in sys.modules))"
    )
    assert _python(code) == "[]"


def test_register_backend_is_idempotent():
    register_backend()
    register_backend()
    assert AttentionBackendEnum.CUSTOM.get_path() == BACKEND_PATH
    if hasattr(AttentionBackendEnum, "register"):  # vLLM 0.32+: also under its own name
        assert AttentionBackendEnum["TRITON_ONLY"].get_path() == BACKEND_PATH
    from vllm_triton_plugin.backend import TritonAttentionBackend

    name = TritonAttentionBackend.get_name()
    assert AttentionBackendEnum[name].get_class() is TritonAttentionBackend


def test_platform_plugin_is_idempotent_and_pure(monkeypatch):
    before = dict(os.environ)
    first, second = platform_plugin(), platform_plugin()
    assert first == second
    assert dict(os.environ) == before
    if first is not None and "Cpu" in first:
        # Without a GPU the platform needs the interpreter, and nothing else.
        monkeypatch.delenv("TRITON_INTERPRET")
        assert platform_plugin() is None


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the CPU platform needs TRITON_INTERPRET=1")
@pytest.mark.parametrize(
    ("plugins", "expected"),
    [(None, "TritonCpuPlatform"), ("triton_attn_backend", "CpuPlatform"), ("", "CpuPlatform")],
)
def test_vllm_plugins_turns_the_platform_off(plugins, expected):
    code = "from vllm.platforms import current_platform; print(type(current_platform).__name__)"
    assert _python(code, VLLM_PLUGINS=plugins, TRITON_INTERPRET="1") == expected


class _Parent:
    """Stands in for vLLM's platform: records what it was asked."""

    @classmethod
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):
        return f"parent:{getattr(selected_backend, 'name', None)}"

    @classmethod
    def get_device_capability(cls, device_id: int = 0):
        return None


_Platform = type("_Platform", (TritonOnlyPlatformMixin, _Parent), {})


def _selector(**overrides):
    fields = dict(
        head_size=64,
        dtype=torch.float16,
        kv_cache_dtype="auto",
        block_size=None,
        use_mla=False,
        has_sink=False,
        use_sparse=False,
        use_mm_prefix=False,
        use_per_head_quant_scales=False,
        attn_type="decoder",
        has_sliding_window=False,
    )
    fields.update(overrides)
    return SimpleNamespace(**fields, _asdict=lambda: dict(fields))


def test_platform_backend_choice():
    assert _Platform.get_attn_backend_cls(None, _selector()) == BACKEND_PATH
    assert _Platform.get_attn_backend_cls(AttentionBackendEnum.CUSTOM, _selector()) == BACKEND_PATH
    # An explicit choice of another backend goes to the parent platform untouched.
    assert _Platform.get_attn_backend_cls(AttentionBackendEnum.FLASH_ATTN, _selector()) == "parent:FLASH_ATTN"
    # MLA (a 512 + 64 latent row): our MLA backend, by default and when chosen by name.
    mla = _selector(use_mla=True, head_size=576)
    assert _Platform.get_attn_backend_cls(None, mla) == MLA_BACKEND_PATH
    assert _Platform.get_attn_backend_cls(AttentionBackendEnum.CUSTOM, mla) == MLA_BACKEND_PATH
    assert _Platform.get_attn_backend_cls(AttentionBackendEnum.FLASH_ATTN, mla) == "parent:FLASH_ATTN"
    # Sparse MLA (top-k attention and its indexer, not in the kernels): the parent's own choice.
    assert (
        _Platform.get_attn_backend_cls(None, _selector(use_mla=True, use_sparse=True, head_size=576)) == "parent:None"
    )
    assert _Platform.get_attn_backend_cls(None, _selector(use_sparse=True)) == "parent:None"


def test_platform_reports_unsupported_mla_configuration():
    with pytest.raises(ValueError, match="Triton MLA backend") as err:
        _Platform.get_attn_backend_cls(None, _selector(use_mla=True, head_size=192))
    assert "VLLM_PLUGINS" in str(err.value)


def test_platform_reports_unsupported_configuration():
    with pytest.raises(ValueError, match="head_size 48") as err:
        _Platform.get_attn_backend_cls(None, _selector(head_size=48))
    assert "VLLM_PLUGINS" in str(err.value) and "--attention-backend" in str(err.value)
