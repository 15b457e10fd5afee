"""MLA decode (absorbed-weight multi-head latent attention over a paged latent cache) against
the fp32 reference: single-token decode and speculative verification, split-KV and its
merge, fp8 latents with a scale, index contents that point outside their tensors, and
argument checks. CPU shapes use kv_lora_rank 64 and rope_dim 16; the `gpu` cases run
DeepSeek's 512 + 64."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from batches import DEVICE, FP8

from triton_attn_kernels import MLADecodeConfig, debug, mla_decode, mla_workspace_numel
from triton_attn_kernels.reference import attention_ref
from triton_attn_kernels.reference_mla import mla_decode_ref
from triton_attn_kernels.testing import tolerance
from triton_attn_kernels.tuning.mla import MLAProblem, mla_decode_heuristic, mla_decode_heuristic_v1


@dataclasses.dataclass
class MLABatch:
    q_nope: torch.Tensor
    q_pe: torch.Tensor
    kv_cache: torch.Tensor
    block_table: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    scale: float

    def args(self) -> tuple:
        return (self.q_nope, self.q_pe, self.kv_cache, self.block_table, self.seq_lens, self.cu_seqlens_q)

    def kw(self) -> dict:
        return dict(max_seqlen_q=self.max_seqlen_q, max_seqlen_k=self.max_seqlen_k, scale=self.scale)


def mla_batch(
    q_lens: list[int],
    seq_lens: list[int],
    *,
    heads: int = 16,
    rank: int = 64,
    rope: int = 16,
    block_size: int = 16,
    dtype: torch.dtype = torch.float16,
    kv_dtype: torch.dtype | None = None,
    k_scale: float = 1.0,
    q_padding: int = 0,
) -> MLABatch:
    """Shuffled pages, garbage in unused block-table entries, padding query rows."""
    blocks = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks) + 3
    latent = torch.randn(num_blocks, block_size, rank + rope, device=DEVICE)
    kv_dtype = kv_dtype or dtype
    kv = (latent / k_scale).to(kv_dtype) if kv_dtype in FP8 else latent.to(kv_dtype)
    perm = torch.randperm(num_blocks, device=DEVICE).to(torch.int32)
    table = torch.randint(0, num_blocks, (len(seq_lens), max([*blocks, 1]) + 2), dtype=torch.int32, device=DEVICE)
    start = 0
    for i, n in enumerate(blocks):
        table[i, :n] = perm[start : start + n]
        start += n
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32, device=DEVICE)
    cu[1:] = torch.tensor(q_lens, device=DEVICE).cumsum(0)
    tokens = int(sum(q_lens)) + q_padding
    return MLABatch(
        q_nope=torch.randn(tokens, heads, rank, device=DEVICE).to(dtype),
        q_pe=torch.randn(tokens, heads, rope, device=DEVICE).to(dtype),
        kv_cache=kv,
        block_table=table,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        cu_seqlens_q=cu,
        max_seqlen_q=max([*q_lens, 0]),
        max_seqlen_k=max([*seq_lens, 0]),
        # The magnitude of (128 + 64) ** -0.5 at this rank: logits of O(1).
        scale=(rank + rope) ** -0.5,
    )


def run(b: MLABatch, **kw):
    out = torch.full_like(b.q_nope, float("nan"))
    res = mla_decode(*b.args(), **{**b.kw(), **kw}, out=out)
    return out, res


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, rows: int | None = None) -> None:
    rows = ref.shape[0] if rows is None else rows
    got = out[:rows].float()
    assert not torch.isnan(got).any(), "NaN in output (poisoned rows left unwritten?)"
    torch.testing.assert_close(got, ref[:rows], **tolerance(dtype).kwargs())


def cfg(splits: int, block_h: int = 16, tile_n: int = 16, prefetch: int = 1) -> MLADecodeConfig:
    return MLADecodeConfig(block_h=block_h, tile_n=tile_n, num_splits=splits, prefetch_pages=prefetch)


# Lengths 1, page - 1, page, page + 1 and odd ones; more splits than tiles for the short ones.
LENS = [1, 15, 16, 17, 54, 97]


@pytest.mark.parametrize("heads", [16, 32])
@pytest.mark.parametrize("splits", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [16, 5])
def test_decode_matches_reference(heads, splits, dtype, block_size):
    # Pages of 5 slots: tiles of 16 keys span several pages, and pages straddle tiles.
    b = mla_batch([1] * len(LENS), LENS, heads=heads, dtype=dtype, block_size=block_size)
    out, res = run(b, config=cfg(splits))
    assert res is out
    check(out, mla_decode_ref(*b.args(), scale=b.scale), dtype)


@pytest.mark.parametrize("q_len", [2, 5, 16])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("prefetch", [1, 0])
def test_verification_is_causal_within_the_new_tokens(q_len, splits, prefetch):
    # Contexts equal to, a page longer than and much longer than the query run.
    b = mla_batch([q_len] * 3, [q_len, q_len + 16, 70], heads=16, block_size=16)
    out, _ = run(b, config=cfg(splits, block_h=4, prefetch=prefetch))
    ref = mla_decode_ref(*b.args(), scale=b.scale)
    check(out, ref, torch.float16)
    # The mask matters on these inputs: without it the last sequence's rows would differ.
    lo = 2 * q_len
    latent = b.kv_cache[b.block_table[2, :5].long()].float().reshape(-1, 80)[:70]
    q = torch.cat([b.q_nope[lo:], b.q_pe[lo:]], -1)
    unmasked = attention_ref(q, latent[:, None], latent[:, None, :64], scale=b.scale, causal=False)
    assert not torch.allclose(ref[lo], unmasked[0], atol=0.05)


@pytest.mark.parametrize("kv_dtype", FP8)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("block_h", [16, 4])
def test_fp8_latent_with_scale(kv_dtype, dtype, as_tensor, block_h):
    # 16 heads x 3 -> 4 tokens: 64 rows a program, where a bf16 query stays bf16; 4 heads:
    # 16 rows, where it goes to fp16 pre-scaled.
    b = mla_batch([1, 3, 1], [33, 20, 70], dtype=dtype, kv_dtype=kv_dtype, k_scale=0.25)
    k_scale = torch.tensor([0.25], device=DEVICE) if as_tensor else 0.25
    out, _ = run(b, k_scale=k_scale, config=cfg(3, block_h=block_h))
    ref = mla_decode_ref(*b.args(), scale=b.scale, k_scale=0.25)
    check(out, ref, dtype)
    # The scale is applied (to logits and values), not assumed.
    assert not torch.allclose(ref, mla_decode_ref(*b.args(), scale=b.scale, k_scale=1.0), atol=0.1)


def test_fp8_cache_requires_k_scale():
    b = mla_batch([1], [20], kv_dtype=FP8[0])
    with pytest.raises(ValueError, match="k_scale is required"):
        mla_decode(*b.args(), **b.kw())


@pytest.mark.parametrize("splits", [1, 4])
def test_return_lse_and_padding_rows(splits):
    # A sequence with no new tokens and two padding rows after every sequence's tokens.
    b = mla_batch([1, 0, 4, 1], [40, 9, 30, 1], heads=32, q_padding=2)
    out, (res, lse) = run(b, config=cfg(splits, block_h=8), return_lse=True)
    assert res is out
    ref, ref_lse = mla_decode_ref(*b.args(), scale=b.scale, return_lse=True)
    check(out, ref, torch.float16, rows=6)
    torch.testing.assert_close(lse[:6], ref_lse[:6], atol=2e-3, rtol=1e-3)
    assert torch.isnan(out[6:]).all() and torch.isneginf(lse[6:]).all(), "padding rows were written"


@pytest.mark.parametrize("splits", [1, 3])
def test_rows_that_see_no_key_are_zero(splits):
    # A context shorter than its query run (its first tokens see nothing) and an empty one.
    b = mla_batch([4, 1, 1], [2, 1, 30])
    b.seq_lens[1] = 0
    out, (_, lse) = run(b, config=cfg(splits, block_h=4), return_lse=True)
    ref, ref_lse = mla_decode_ref(*b.args(), scale=b.scale, return_lse=True)
    check(out, ref, torch.float16)
    assert (out[:2] == 0).all() and (out[4] == 0).all()
    assert torch.isneginf(lse[:2]).all() and torch.isneginf(lse[4]).all() and torch.isfinite(lse[2:4]).all()
    torch.testing.assert_close(lse, ref_lse, atol=2e-3, rtol=1e-3)


def test_understated_max_seqlen_q_still_computes_every_row():
    b = mla_batch([6, 1, 3], [30, 12, 50])
    out, _ = run(b, config=cfg(3, block_h=8), max_seqlen_q=2)
    check(out, mla_decode_ref(*b.args(), scale=b.scale), torch.float16)


@pytest.mark.parametrize("config", [None, cfg(2, block_h=2, tile_n=32)])
def test_heuristic_and_odd_head_tiles(config):
    b = mla_batch([1, 2, 1], [64, 33, 5], heads=16)
    out, _ = run(b, config=config)
    check(out, mla_decode_ref(*b.args(), scale=b.scale), torch.float16)


def test_fp32_queries_and_cache():
    b = mla_batch([1, 3], [40, 21], dtype=torch.float32)
    out, _ = run(b, config=cfg(3))
    ref = mla_decode_ref(*b.args(), scale=b.scale)
    check(out, ref, torch.float32)


def test_preallocated_workspace_and_strided_inputs():
    b = mla_batch([2, 1, 2], [40, 18, 61])
    # q_nope and q_pe as views of one projection output, as a model produces them.
    both = torch.randn(b.q_nope.shape[0], 16, 64 + 16, device=DEVICE).half()
    b.q_nope, b.q_pe = both[..., :64], both[..., 64:]
    # The latent rows padded to 96 values, and the pages taken out of a larger pool.
    padded = torch.randn(2 * b.kv_cache.shape[0], 16, 96, device=DEVICE).half()
    padded[1::2, :, :80] = b.kv_cache
    b.kv_cache = padded[1::2, :, :80]
    config = cfg(5)
    need = mla_workspace_numel(3, 16, 64, 5, query_len=2)
    ws = torch.full((need,), float("nan"), device=DEVICE)
    out, _ = run(b, config=config, workspace=ws)
    check(out, mla_decode_ref(*b.args(), scale=b.scale), torch.float16)
    with pytest.raises(ValueError, match="workspace must have at least"):
        run(b, config=config, workspace=ws[: need - 1])
    assert mla_workspace_numel(3, 16, 64, 1) == 0


def test_index_contents_are_bounded():
    """Page ids outside the cache read a clamped page, a seq_len past its table row is cut
    to the row, rows past num_tokens are not written: the result is what the reference
    gives for those clamped indices, and nothing outside the tensors is touched."""
    b = mla_batch([1, 1, 1], [20, 33, 10])
    num_blocks, width = b.kv_cache.shape[0], b.block_table.shape[1]
    b.block_table[0, 0] = -7
    b.block_table[1, 1] = num_blocks + 5
    b.seq_lens[2] = 10_000
    out, _ = run(b, config=cfg(3))
    clamped = b.block_table.clamp(0, num_blocks - 1)
    lens = b.seq_lens.clamp(max=width * 16)
    check(
        out, mla_decode_ref(b.q_nope, b.q_pe, b.kv_cache, clamped, lens, b.cu_seqlens_q, scale=b.scale), torch.float16
    )
    # The last sequence claims rows past the 3 query rows: those lie in a guard region.
    b.cu_seqlens_q[3] = 50
    buf = torch.full((8, *b.q_nope.shape[1:]), float("nan"), dtype=b.q_nope.dtype, device=DEVICE)
    mla_decode(*b.args(), **b.kw(), config=cfg(3), out=buf[:3])
    assert torch.isnan(buf[3:]).all(), "rows past num_tokens were written"
    assert not torch.isnan(buf[:3]).any()


def test_debug_mode_names_the_bad_entry():
    b = mla_batch([1, 1], [20, 33])
    b.block_table[1, 2] = b.kv_cache.shape[0]
    with debug.checking(), pytest.raises(ValueError, match=r"block_table\[1"):
        mla_decode(*b.args(), **b.kw())
    b = mla_batch([1], [20], kv_dtype=FP8[0])
    with debug.checking(), pytest.raises(ValueError, match="k_scale"):
        mla_decode(*b.args(), **b.kw(), k_scale=torch.tensor([float("nan")], device=DEVICE))


def test_reference_is_mqa_over_the_latent():
    """The MLA reference equals the generic reference with one KV head, key = the whole
    latent row, value = its first kv_lora_rank dims."""
    b = mla_batch([3], [21], heads=4)
    latent = b.kv_cache[b.block_table[0, :2].long()].float().reshape(-1, 80)[:21]
    q = torch.cat([b.q_nope, b.q_pe], -1)
    ref = attention_ref(q, latent[:, None], latent[:, None, :64], scale=b.scale)
    torch.testing.assert_close(mla_decode_ref(*b.args(), scale=b.scale), ref)


def test_heuristic_is_pure_and_bounded():
    def problem(**kw):
        base = dict(num_seqs=4, num_heads=128, kv_lora_rank=512, rope_dim=64, max_seqlen_q=1, max_seqlen_k=8192,
                    dtype="bfloat16", kv_dtype="bfloat16", num_sms=132)  # fmt: skip
        return MLAProblem(**{**base, **kw})

    c = mla_decode_heuristic(problem())
    assert c == mla_decode_heuristic(problem()) and c.num_splits > 1
    # 64 rows a program (wgmma on sm_90): 64 heads, 32 x 2 tokens, 4 x 16, 16 x 4.
    assert (c.block_h, c.tile_n, c.num_warps, c.num_stages) == (64, 32, 8, 3)
    assert mla_decode_heuristic(problem(max_seqlen_q=2)).block_h == 32
    assert mla_decode_heuristic(problem(max_seqlen_q=16)).block_h == 4
    assert mla_decode_heuristic(problem(num_heads=16, max_seqlen_q=3)).block_h == 16
    assert mla_decode_heuristic(problem(num_seqs=512)).num_splits == 1
    assert mla_decode_heuristic(problem(max_seqlen_k=16)).num_splits == 1
    # Fewer rows, fp32 or a wider latent: the mma.sync tiles.
    fp8 = mla_decode_heuristic(problem(num_heads=32, kv_dtype="float8_e4m3fn"))
    assert (fp8.block_h, fp8.tile_n, fp8.num_stages) == (32, 16, 3)
    assert mla_decode_heuristic(problem(num_heads=16, kv_dtype="float8_e4m3fn")).num_stages == 3
    # An fp8 latent at 64 rows takes the wgmma tiles too (with the query kept bf16).
    assert mla_decode_heuristic(problem(kv_dtype="float8_e5m2")).block_h == 64
    assert mla_decode_heuristic(problem(dtype="float32", kv_dtype="float32")).block_h == 32
    assert mla_decode_heuristic(problem(kv_lora_rank=1024)).block_h == 32
    small = mla_decode_heuristic(problem(num_heads=16))
    assert (small.block_h, small.tile_n, small.num_stages) == (16, 32, 4)
    # Splits fill whole waves of num_sms programs: 64 programs take 2 (128 on 132 SMs), 128 one.
    assert mla_decode_heuristic(problem(num_seqs=64, num_heads=16)).num_splits == 2
    assert mla_decode_heuristic(problem(num_seqs=64)).num_splits == 1
    assert mla_decode_heuristic(problem(num_seqs=1, max_seqlen_k=32768)).num_splits > 32
    # The previous heuristic stays reachable, unchanged: at most 32 rows, two programs per SM.
    old = mla_decode_heuristic_v1(problem())
    assert (old.block_h, old.tile_n, old.num_warps, old.num_stages, old.num_splits) == (32, 16, 8, 3, 17)
    assert mla_decode_heuristic_v1(problem(num_heads=16, num_seqs=64)).num_splits == 5


@pytest.mark.parametrize(
    "field,value,exc",
    [("block_h", 3, ValueError), ("tile_n", 8, ValueError), ("num_splits", 0, ValueError),
     ("num_splits", 65, ValueError), ("num_warps", 1.0, TypeError), ("num_stages", True, TypeError),
     ("prefetch_pages", 2, ValueError)],
)  # fmt: skip
def test_config_is_checked(field, value, exc):
    with pytest.raises(exc, match=field):
        MLADecodeConfig(**{field: value})


def _bad_inputs():
    def q(b):
        b.q_nope = b.q_nope.float()

    def pe_dtype(b):
        b.q_pe = b.q_pe.bfloat16()

    def pe_heads(b):
        b.q_pe = b.q_pe[:, :8]

    def rank(b):
        b.q_nope = b.q_nope[..., :48]

    def cache_dim(b):
        b.kv_cache = b.kv_cache[..., :72]

    def cache_dtype(b):
        b.kv_cache = b.kv_cache.bfloat16()

    def cache_ndim(b):
        b.kv_cache = b.kv_cache[:, :, None]

    def table_dtype(b):
        b.block_table = b.block_table.long()

    def table_rows(b):
        b.block_table = b.block_table[:1]

    def cu_len(b):
        b.cu_seqlens_q = b.cu_seqlens_q[:-1]

    def lens_type(b):
        b.seq_lens = b.seq_lens.tolist()

    return [
        (q, "q_pe", TypeError),  # q_pe no longer matches q_nope's dtype
        (pe_dtype, "q_pe", TypeError),
        (pe_heads, "q_pe", ValueError),
        (rank, "kv_lora_rank", ValueError),
        (cache_dim, "kv_cache", ValueError),
        (cache_dtype, "kv_cache", TypeError),
        (cache_ndim, "kv_cache", ValueError),
        (table_dtype, "block_table", TypeError),
        (table_rows, "block_table", ValueError),
        (cu_len, "cu_seqlens_q", ValueError),
        (lens_type, "seq_lens", TypeError),
    ]


@pytest.mark.parametrize("mutate,name,exc", _bad_inputs(), ids=lambda x: getattr(x, "__name__", None))
def test_bad_tensors_are_refused(mutate, name, exc):
    b = mla_batch([1, 1], [20, 9])
    mutate(b)
    with pytest.raises(exc, match=name):
        mla_decode(*b.args(), **b.kw())


@pytest.mark.parametrize(
    "kw,name,exc",
    [(dict(scale=None), "scale", ValueError), (dict(scale=-1.0), "scale", ValueError),
     (dict(scale="0.1"), "scale", TypeError), (dict(max_seqlen_q=17, max_seqlen_k=40), "max_seqlen_q", ValueError),
     (dict(max_seqlen_k=1000), "max_seqlen_k", ValueError), (dict(max_seqlen_q=1.0), "max_seqlen_q", TypeError),
     (dict(return_lse=1), "return_lse", TypeError), (dict(config=dict(num_splits=2)), "config", TypeError),
     (dict(workspace=torch.zeros(4, dtype=torch.float16)), "workspace", TypeError)],
)  # fmt: skip
def test_bad_arguments_are_refused(kw, name, exc):
    b = mla_batch([1, 1], [20, 9])
    with pytest.raises(exc, match=name):
        mla_decode(*b.args(), **{**b.kw(), **kw})


def test_out_is_checked():
    b = mla_batch([1, 1], [20, 9])
    with pytest.raises(ValueError, match="out"):
        mla_decode(*b.args(), **b.kw(), out=torch.empty(2, 16, 80, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="out must not share memory"):
        mla_decode(*b.args(), **b.kw(), out=b.q_nope)


@pytest.mark.parametrize(
    "heads,kv_dtype,q_len,heuristic",
    [(16, torch.bfloat16, 1, mla_decode_heuristic), (128, torch.bfloat16, 1, mla_decode_heuristic),
     (16, torch.float8_e4m3fn, 4, mla_decode_heuristic), (128, torch.float8_e4m3fn, 16, mla_decode_heuristic),
     (16, torch.bfloat16, 3, mla_decode_heuristic), (128, torch.bfloat16, 2, mla_decode_heuristic),
     (128, torch.bfloat16, 1, mla_decode_heuristic_v1)],
    ids=lambda x: getattr(x, "__name__", str(x)),
)  # fmt: skip
def test_deepseek_geometry_with_the_gpu_tiles(heads, kv_dtype, q_len, heuristic):
    """kv_lora_rank 512 + rope 64 with the configuration a heuristic picks on an H100-sized
    GPU (head tiles, key tiles, page prefetch, splits), here under the interpreter."""
    b = mla_batch(
        [q_len] * 3, [q_len, 65, 130], heads=heads, rank=512, rope=64, block_size=64,
        dtype=torch.bfloat16, kv_dtype=kv_dtype, k_scale=0.5,
    )  # fmt: skip
    gpu = MLAProblem(3, heads, 512, 64, q_len, 130, "bfloat16", str(kv_dtype).removeprefix("torch."), num_sms=132)
    config = heuristic(gpu)
    assert config.prefetch_pages == 1 and (config.num_splits > 1 or heads * q_len >= 2048)
    kw = dict(k_scale=0.5) if kv_dtype in FP8 else {}
    out, _ = run(b, config=config, **kw)
    check(out, mla_decode_ref(*b.args(), scale=b.scale, **kw), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [16, 128])
@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("q_len", [1, 4])
def test_deepseek_geometry(heads, kv_dtype, q_len):
    b = mla_batch(
        [q_len] * 6, [q_len, 63, 64, 65, 1000, 4099], heads=heads, rank=512, rope=64, block_size=64,
        dtype=torch.bfloat16, kv_dtype=kv_dtype, k_scale=0.5,
    )  # fmt: skip
    kw = dict(k_scale=0.5) if kv_dtype in FP8 else {}
    out, _ = run(b, **kw)
    check(out, mla_decode_ref(*b.args(), scale=b.scale, **kw), torch.bfloat16)


def graph_replay_follows_new_lengths(config: MLADecodeConfig, heads: int) -> None:
    """Captured once with a pinned config and workspace, replayed after the lengths and the
    tokens change: the launch reads nothing on the host."""
    b = mla_batch([1] * 8, [100] * 8, heads=heads, rank=512, rope=64, block_size=64, dtype=torch.bfloat16)
    ws = torch.empty(mla_workspace_numel(8, heads, 512, config.num_splits), device=DEVICE)
    out = torch.empty_like(b.q_nope)
    kw = dict(max_seqlen_q=1, max_seqlen_k=b.block_table.shape[1] * 64, scale=b.scale, config=config)
    mla_decode(*b.args(), **kw, out=out, workspace=ws)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mla_decode(*b.args(), **kw, out=out, workspace=ws)
    b.seq_lens.copy_(torch.tensor([1, 7, 64, 65, 99, 100, 30, 2], dtype=torch.int32, device=DEVICE))
    b.q_nope.normal_()
    graph.replay()
    torch.cuda.synchronize()
    check(out, mla_decode_ref(*b.args(), scale=b.scale), torch.bfloat16)


@pytest.mark.gpu
def test_cuda_graph_replay_follows_new_lengths():
    graph_replay_follows_new_lengths(
        MLADecodeConfig(block_h=16, tile_n=32, num_splits=8, num_warps=8, num_stages=3), 16
    )
