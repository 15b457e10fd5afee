"""The JSON Schema of a tuning table, generated from the kernel specs so that it cannot drift
from the code. ``dejavu_data/schema.json`` is this output (a test checks they are equal);
regenerate it with ``python -m triton_attn_kernels.tuner schema > dejavu_data/schema.json``."""

from __future__ import annotations

from typing import Any

from .configs import FLAG_FIELDS, OPTIONAL_FIELDS
from .keys import KERNELS, KernelSpec

__all__ = ["DTYPES", "KV_DTYPES", "SCHEMA_VERSION", "build_schema"]

SCHEMA_VERSION = 1

DTYPES = ["float16", "bfloat16", "float32"]
KV_DTYPES = [*DTYPES, "float8_e4m3fn", "float8_e5m2"]
_POS_INT = {"type": "integer", "minimum": 1}
_FLAG = {"enum": [0, 1]}


def _key_schema(spec: KernelSpec) -> dict[str, Any]:
    props: dict[str, Any] = {name: _POS_INT for name in spec.key_fields}
    props.update(dtype={"enum": DTYPES}, kv_dtype={"enum": KV_DTYPES})
    return {"type": "object", "required": list(spec.key_fields), "additionalProperties": False, "properties": props}


def _config_schema(spec: KernelSpec) -> dict[str, Any]:
    fields = list(spec.config_fields)
    return {
        "type": "object",
        "required": [f for f in fields if f not in OPTIONAL_FIELDS],
        "additionalProperties": False,
        "properties": {name: _FLAG if name in FLAG_FIELDS else _POS_INT for name in fields},
    }


def _kernel_rule(spec: KernelSpec) -> dict[str, Any]:
    config = {"$ref": f"#/$defs/{spec.name}_config"}
    return {
        "if": {"properties": {"kernel": {"const": spec.name}}},
        "then": {
            "properties": {
                "key_fields": {"const": list(spec.key_fields)},
                "config_space": {"propertyNames": {"enum": list(spec.config_fields)}},
                "entries": {
                    "items": {
                        "properties": {
                            "key": {"$ref": f"#/$defs/{spec.name}_key"},
                            "config": config,
                            "runner_up": {
                                "oneOf": [
                                    {"type": "null"},
                                    {"type": "object", "properties": {"config": config}},
                                ]
                            },
                        }
                    }
                },
            }
        },
    }


def build_schema() -> dict[str, Any]:
    # null where the source recorded no time (tables imported from triton-dejavu without timings).
    time_us = {"type": ["number", "null"], "exclusiveMinimum": 0}
    defs: dict[str, Any] = {}
    for spec in KERNELS.values():
        defs[f"{spec.name}_key"] = _key_schema(spec)
        defs[f"{spec.name}_config"] = _config_schema(spec)
    nullable_str = {"type": ["string", "null"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:triton-attn-kernels:tuning-table:v{SCHEMA_VERSION}",
        "title": "triton-attn-kernels tuning table (one kernel, one device)",
        "type": "object",
        "required": [
            "schema_version",
            "kernel",
            "device",
            "versions",
            "created",
            "tuning",
            "key_fields",
            "config_space",
            "entries",
        ],
        "additionalProperties": False,
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION},
            "kernel": {"enum": list(KERNELS)},
            "device": {
                "type": "object",
                "required": ["name", "capability"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "capability": {
                        "description": "CUDA compute capability [major, minor]; null where unknown",
                        "oneOf": [
                            {"type": "null"},
                            {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                        ],
                    },
                    "num_sms": _POS_INT,
                },
            },
            "versions": {
                "type": "object",
                "required": ["triton", "torch"],
                "properties": {"triton": nullable_str, "torch": nullable_str, "cuda": nullable_str},
                "additionalProperties": nullable_str,
            },
            "created": {"type": "string", "minLength": 1, "description": "ISO 8601 UTC time of the last write"},
            "tuning": {
                "type": "object",
                "required": ["duration_s"],
                "properties": {"duration_s": {"type": "number", "minimum": 0}},
                "description": "how the table was made: seconds spent, timing method, command, source",
            },
            "key_fields": {"type": "array", "items": {"type": "string"}},
            "config_space": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            },
            "entries": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "config", "time_us"],
                    "additionalProperties": False,
                    "properties": {
                        "key": {"type": "object"},
                        "config": {"type": "object"},
                        "time_us": time_us,
                        "runner_up": {
                            "oneOf": [
                                {"type": "null"},
                                {
                                    "type": "object",
                                    "required": ["config", "time_us"],
                                    "additionalProperties": False,
                                    "properties": {"config": {"type": "object"}, "time_us": time_us},
                                },
                            ]
                        },
                        "heuristic_us": time_us,
                        "configs_timed": {"type": "integer", "minimum": 0},
                    },
                },
            },
        },
        "allOf": [_kernel_rule(spec) for spec in KERNELS.values()],
        "$defs": defs,
    }
