"""Packs the repository's top-level ``dejavu_data/`` into the wheel as
``triton_attn_kernels/dejavu_data``, from a checkout (``../../dejavu_data``) or from an sdist
(which carries it at its root), so that sdist -> wheel builds work too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class DejavuDataHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return  # an editable install reads the checkout's folder directly
        root = Path(self.root)
        for candidate in (root / "dejavu_data", root.parent.parent / "dejavu_data"):
            if (candidate / "schema.json").is_file():
                build_data["force_include"][str(candidate)] = "triton_attn_kernels/dejavu_data"
                return
        raise FileNotFoundError(f"dejavu_data/ with schema.json not found in {root} or {root.parent.parent}")
