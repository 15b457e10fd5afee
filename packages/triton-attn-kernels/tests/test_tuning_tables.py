"""Every table file: valid against dejavu_data/schema.json, placed where the reader looks,
and every configuration it stores runs correctly (interpreter on CPU, small shapes), so a
table can never ship a wrong kernel. Covers the shipped tables and the test examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from triton_attn_kernels import AttentionConfig, paged_attention, write_kv_cache
from triton_attn_kernels.reference import paged_attention_ref, write_kv_cache_ref
from triton_attn_kernels.testing import tolerance
from triton_attn_kernels.tuning.keys import config_to_dict
from triton_attn_kernels.tuning.schema import build_schema
from triton_attn_kernels.tuning.tables import device_file_name, read_table, shipped_root

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "dejavu_data"
EXAMPLES = Path(__file__).parent / "test_tuning_data"
TABLES = sorted(p for root in (SHIPPED, EXAMPLES) for p in root.glob("*/*.json"))


def _id(p: Path) -> str:
    return f"{p.parent.parent.name}/{p.parent.name}/{p.name}"


def test_schema_file_is_generated_from_the_code() -> None:
    assert json.loads((SHIPPED / "schema.json").read_text()) == build_schema()


def test_checkout_data_is_found() -> None:
    root = shipped_root()
    assert root is not None and root.joinpath("schema.json").is_file()


def test_example_tables_exist() -> None:
    assert {p.parent.name for p in TABLES if EXAMPLES in p.parents} == {"decode", "prefill", "kv_write"}


@pytest.mark.parametrize("path", TABLES, ids=_id)
def test_table_valid(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(path.read_text())
    jsonschema.Draft202012Validator(json.loads((SHIPPED / "schema.json").read_text())).validate(doc)
    table = read_table(path)  # the runtime reader agrees
    assert path.parent.name == table.spec.name
    assert path.name == device_file_name(table.device_name)
    assert table.entries


def test_schema_and_reader_reject_the_same_damage() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from triton_attn_kernels.tuning.tables import TableError, parse_table

    validator = jsonschema.Draft202012Validator(build_schema())
    good = json.loads((EXAMPLES / "decode" / "NVIDIA_H100_80GB_HBM3.json").read_text())
    damages = [
        ("schema_version", 2),
        ("kernel", "attention"),
        ("key_fields", ["head_dim"]),
        ("device", {"name": "", "capability": None}),
        ("entries", [{"key": good["entries"][0]["key"], "config": {"tile_n": 64}, "time_us": 1.0}]),
        ("entries", [{**good["entries"][0], "time_us": -1.0}]),
        ("entries", [{**good["entries"][0], "key": {**good["entries"][0]["key"], "dtype": "int8"}}]),
    ]
    for field, value in damages:
        doc = {**good, field: value}
        assert list(validator.iter_errors(doc)), field
        with pytest.raises(TableError):
            parse_table(doc)


def _configs(kernel: str) -> list[tuple[dict, object]]:
    """(key as a dict, config) for every stored config of ``kernel`` (winners and runners-up),
    once per distinct (compile-time key fields, config)."""
    out: dict[tuple, tuple] = {}
    for path in TABLES:
        if path.parent.name != kernel:
            continue
        table = read_table(path)
        n = len(table.spec.categorical)
        for key, entry in table.entries.items():
            for cfg in (entry.config, entry.runner_up[0] if entry.runner_up else None):
                if cfg is not None:
                    out.setdefault((*key[:n], cfg), (table.spec.key_to_dict(key), cfg))
    return list(out.values())


def _case_id(case: tuple) -> str:
    key, cfg = case[-2], case[-1]
    fields = [key["head_dim"], key.get("group", key.get("num_kv_heads")), key["dtype"], key["kv_dtype"]]
    return "-".join(str(v) for v in (*fields, *config_to_dict(cfg).values()))  # type: ignore[arg-type]


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


_ATTENTION_CASES = [(k, key, cfg) for k in ("decode", "prefill") for key, cfg in _configs(k)]


@pytest.mark.parametrize("kernel,key,config", _ATTENTION_CASES, ids=[f"{c[0]}-{_case_id(c)}" for c in _ATTENTION_CASES])
def test_stored_attention_config_matches_reference(kernel: str, key: dict, config: object) -> None:
    head_dim, group, dtype, kv_dtype = key["head_dim"], key["group"], _dtype(key["dtype"]), _dtype(key["kv_dtype"])
    num_kv_heads, block_size = 1, 16
    # Odd lengths across page and tile boundaries; a prefill batch also gets a decode.
    seq_lens = [97, 33] if kernel == "decode" else [54, 23, 40]
    q_lens = [1, 1] if kernel == "decode" else [54, 1, 17]
    blocks = -(-max(seq_lens) // block_size)
    k_cache = torch.randn(len(seq_lens) * blocks, block_size, num_kv_heads, head_dim, device=DEVICE).to(kv_dtype)
    v_cache = torch.randn_like(k_cache, dtype=torch.float32).to(kv_dtype)
    block_table = torch.randperm(len(seq_lens) * blocks, device=DEVICE).to(torch.int32).view(len(seq_lens), blocks)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    q = torch.randn(sum(q_lens), group * num_kv_heads, head_dim, device=DEVICE).to(dtype)
    sl = torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE)
    cfg = AttentionConfig(decode=config) if kernel == "decode" else AttentionConfig(prefill=config)
    out = torch.full_like(q, float("nan"))
    scales = dict(k_scale=0.7, v_scale=1.3) if kv_dtype.itemsize == 1 else {}
    paged_attention(
        q,
        k_cache,
        v_cache,
        block_table,
        sl,
        cu,
        max_seqlen_q=max(q_lens),
        max_seqlen_k=max(seq_lens),
        out=out,
        config=cfg,
        **scales,
    )
    ref = paged_attention_ref(q, k_cache, v_cache, block_table, sl, cu, **scales)
    torch.testing.assert_close(out.float(), ref, **tolerance(dtype).kwargs())


_KV_CASES = _configs("kv_write")


@pytest.mark.parametrize("key,config", _KV_CASES, ids=[_case_id(c) for c in _KV_CASES])
def test_stored_kv_write_config_matches_reference(key: dict, config: object) -> None:
    head_dim, num_kv_heads, dtype, kv_dtype = key["head_dim"], key["num_kv_heads"], key["dtype"], key["kv_dtype"]
    dtype, kv_dtype = _dtype(dtype), _dtype(kv_dtype)
    tokens, block_size = 21, 16
    key_t = torch.randn(tokens, num_kv_heads, head_dim, device=DEVICE).to(dtype)
    value_t = torch.randn_like(key_t)
    k_cache = torch.zeros(3, block_size, num_kv_heads, head_dim, device=DEVICE).to(kv_dtype)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(3 * block_size, device=DEVICE)[:tokens]
    slots[5] = -1  # a padding token
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    scales = dict(k_scale=0.5, v_scale=2.0) if kv_dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else {}
    write_kv_cache(key_t, value_t, k_cache, v_cache, slots, config=config, **scales)
    write_kv_cache_ref(key_t, value_t, k_ref, v_ref, slots, **scales)
    assert torch.equal(k_cache.float(), k_ref.float()) and torch.equal(v_cache.float(), v_ref.float())


def test_configs_without_later_fields_get_their_defaults() -> None:
    """Tables written before prefetch_pages existed stay valid (the field defaults to 0, what
    every launch did then); a value other than 0 or 1 is refused by the reader and the schema."""
    import jsonschema

    from triton_attn_kernels.tuning.keys import KERNELS, config_from_dict

    old = {"block_m": 128, "tile_n": 64, "num_warps": 4, "num_stages": 3}
    assert config_from_dict(KERNELS["prefill"], old).prefetch_pages == 0
    assert config_from_dict(KERNELS["prefill"], {**old, "prefetch_pages": 1}).prefetch_pages == 1
    with pytest.raises(ValueError, match="prefetch_pages must be 0 or 1"):
        config_from_dict(KERNELS["prefill"], {**old, "prefetch_pages": 2})
    with pytest.raises(ValueError, match="missing"):
        config_from_dict(KERNELS["prefill"], {"block_m": 128, "tile_n": 64, "num_warps": 4})
    schema = build_schema()["$defs"]["prefill_config"]
    jsonschema.validate(old, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**old, "prefetch_pages": 2}, schema)
