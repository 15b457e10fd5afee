"""The configuration policy: which launches a batch gets and with which configurations.

Two entry points, used by everyone who launches the kernels:

- :func:`plan_launch`: one call on its own (``paged_attention(config=None)``, scripts,
  other frameworks): the table's choice for the exact problem, else the heuristic.
- :class:`ServingPolicy`: a server's view (the vLLM plugin, and attn-bench measuring what
  the plugin runs). Configurations depend on the batch size and on model-wide limits only,
  so the set of compiled kernel variants is small and known at start, and under CUDA graphs
  a decode launch recorded for a batch size is valid for any sequence lengths.

Both return a :class:`LaunchPlan`: the configurations (``None`` for a launch that does not
run), the decode query length and the split-KV workspace size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .configs import AttentionConfig, DecodeConfig, PrefillConfig
from .heuristics import (
    GLUON_DECODE_ONE_TOKEN_MAX_SEQS,
    AttentionProblem,
    decode_heuristic,
    gluon_decode_config,
    gluon_prefill_config,
    prefill_heuristic,
)

__all__ = [
    "MAX_DECODE_QUERY_LEN",
    "LaunchPlan",
    "ServingLimits",
    "ServingPolicy",
    "decode_workspace_numel",
    "decodes_first",
    "model_geometry",
    "plan_launch",
    "preferred_block_size",
    "resolve_decode_query_len",
]

# The most new tokens per sequence the decode launch packs into one tile (with the GQA group:
# up to 16 x 8 = 128 rows); longer sequences are prefill work.
MAX_DECODE_QUERY_LEN = 16


def decode_workspace_numel(
    num_seqs: int, num_q_heads: int, head_dim: int, num_splits: int, *, query_len: int = 1
) -> int:
    """fp32 elements the split-KV decode needs as ``workspace`` (0 when ``num_splits == 1``);
    ``head_dim`` is the output's (V's) head size, ``query_len`` the ``decode_query_len`` of
    the launches that will use it."""
    if num_splits <= 1:
        return 0
    return num_seqs * max(query_len, 1) * num_q_heads * num_splits * (head_dim + 1)


def resolve_decode_query_len(value: int | None, max_seqlen_q: int) -> int:
    """``decode_query_len`` as the launchers read it: ``None`` means the whole batch runs as
    decodes when no sequence has more than :data:`MAX_DECODE_QUERY_LEN` new tokens
    (decodes, speculative verification), else only single-token sequences do."""
    if value is None:
        return max(max_seqlen_q, 1) if max_seqlen_q <= MAX_DECODE_QUERY_LEN else 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"decode_query_len must be an int or None, got {type(value).__name__}")
    if not 0 <= value <= MAX_DECODE_QUERY_LEN:
        raise ValueError(f"decode_query_len must be in [0, {MAX_DECODE_QUERY_LEN}], got {value}")
    return value


@dataclass(frozen=True)
class LaunchPlan:
    """What one ``paged_attention`` / ``varlen_attention`` call launches.

    config.decode: the split-KV decode launch (sequences with 1..decode_query_len new
    tokens), ``None`` if it does not run; config.prefill likewise for the longer ones.
    workspace_numel: fp32 elements the decode launch needs as ``workspace``.
    """

    config: AttentionConfig
    decode_query_len: int
    workspace_numel: int


def decodes_first(q_lens: Any, decode_query_len: int) -> int | None:
    """How many requests lead a batch whose requests of 1..decode_query_len new tokens all
    come before its longer ones (requests of no new token may sit anywhere), given the host
    list or tensor of every request's new-token count; ``None`` for any other batch or one
    without both kinds. Such a batch can run as two calls, the decode launch over the leading
    requests and the prefill launch over the others alone (a server in vLLM's decode-first
    order does; attn-bench measures the same), so no prefill program exists for a decode."""
    lens = [int(n) for n in q_lens]
    first = next((i for i, n in enumerate(lens) if n > decode_query_len), None)
    if first is None or not any(n >= 1 for n in lens[:first]):
        return None
    if any(1 <= n <= decode_query_len for n in lens[first:]):
        return None
    return first


def _launches(decode_query_len: int, max_seqlen_q: int) -> tuple[bool, bool]:
    decode_runs = decode_query_len >= 1
    return decode_runs, max_seqlen_q > decode_query_len or not decode_runs


def plan_launch(
    problem: AttentionProblem,
    *,
    decode_query_len: int | None = None,
    config: AttentionConfig | None = None,
    device: Any = None,
    hopper_decode: bool = False,
) -> LaunchPlan:
    """The plan of one call: each launch's configuration from ``config`` where given, else
    from the tuning table for ``problem`` (on ``device``), else the heuristic; for the decode
    launch, where ``hopper_decode`` (the call's layer is one the Gluon Hopper decode serves:
    causal, no window, softcap, ALiBi or sinks) and ``device`` runs Gluon, the configuration
    of :func:`~.heuristics.gluon_decode_config` first."""
    from . import select_decode_config, select_prefill_config

    config = config or AttentionConfig()
    dq = resolve_decode_query_len(decode_query_len, problem.max_seqlen_q)
    decode_runs, prefill_runs = _launches(dq, problem.max_seqlen_q)
    decode = None
    if decode_runs and config.decode is None and hopper_decode:
        decode = _gluon_decode(problem, dq, device)
    if decode_runs and decode is None:
        decode = select_decode_config(problem, config.decode, device=device)
    prefill = select_prefill_config(problem, config.prefill, device=device) if prefill_runs else None
    return _plan(problem, decode, prefill, dq)


def _plan(problem: AttentionProblem, decode: DecodeConfig | None, prefill: PrefillConfig | None, dq: int) -> LaunchPlan:
    need = 0
    if decode is not None:
        need = decode_workspace_numel(
            problem.num_seqs, problem.num_q_heads, problem.v_head_dim, decode.num_splits, query_len=dq
        )
    return LaunchPlan(AttentionConfig(decode=decode, prefill=prefill), dq, need)


@dataclass(frozen=True)
class ServingLimits:
    """What a server fixes at start.

    max_num_seqs: the most sequences in one batch.
    max_model_len: the longest context.
    max_num_batched_tokens: the most new tokens in one batch (the chunked-prefill budget).
    cuda_graphs: decode launches are recorded once per batch size and replayed for any
    lengths (vLLM's full CUDA graphs).
    decode_query_len: new tokens per sequence in a decode step: 1, or 1 +
    num_speculative_tokens with speculative decoding.
    block_size: tokens per page of the paged cache, ``None`` where unknown (no choice then
    depends on it).
    plain_attention: no layer has ALiBi or sinks, the features the Hopper prefill lacks
    (softcaps and the sliding windows of causal layers it serves).
    hopper_decode: no layer has a sliding window, softcap, ALiBi or sinks, so verification
    steps may take the Gluon Hopper decode (``tuning.gluon_decode_config``; one-token steps
    at batches of up to 16 sequences, as ``TRITON_ATTN_HOPPER_DECODE`` says) where it serves
    the model; ``False`` keeps
    every decode on the generic kernel and its tables (attn-bench's ``ours-paged-generic``).
    """

    max_num_seqs: int
    max_model_len: int
    max_num_batched_tokens: int
    cuda_graphs: bool = False
    decode_query_len: int = 1
    block_size: int | None = None
    plain_attention: bool = False
    hopper_decode: bool = False

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_model_len", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        resolve_decode_query_len(self.decode_query_len, 1)
        bs = self.block_size
        if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
            raise ValueError(f"block_size must be an int >= 1 or None, got {bs!r}")
        for name in ("plain_attention", "hopper_decode"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")


def model_geometry(
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: Any,
    kv_dtype: Any,
    device: Any,
    head_dim_v: int | None = None,
) -> AttentionProblem:
    """A model's attention geometry on ``device`` as the policy reads it (batch fields 1):
    head counts and sizes, the dtype names of the queries and of the cache (torch dtypes or
    names), the device's SM count and whether Triton's interpreter runs."""
    import torch

    from .._device import interpreting, num_sms

    return AttentionProblem(
        num_seqs=1,
        num_q_heads=num_q_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        max_seqlen_q=1,
        max_seqlen_k=1,
        dtype=str(dtype).removeprefix("torch."),
        kv_dtype=str(kv_dtype).removeprefix("torch."),
        num_sms=num_sms(torch.device(device)),
        interpreter=interpreting(),
        head_dim_v=head_dim_v,
    )


def _gluon_decode(problem: AttentionProblem, decode_query_len: int, device: Any) -> DecodeConfig | None:
    """The Gluon decode's configuration where ``TRITON_ATTN_HOPPER_DECODE`` and ``device``
    let it serve this launch."""
    from .envs import hopper_decode_mode

    mode = hopper_decode_mode()
    if mode is None or not _runs_gluon(device):
        return None
    if mode == "verify":
        return gluon_decode_config(problem, decode_query_len=decode_query_len, min_query_len=2)
    bound = GLUON_DECODE_ONE_TOKEN_MAX_SEQS if mode == "auto" else None
    return gluon_decode_config(problem, decode_query_len=decode_query_len, one_token_max_seqs=bound)


def _runs_gluon(device: Any) -> bool:
    if device is None:
        return False
    import torch

    from .. import _gluon

    device = torch.device(device)
    return _gluon.available() and device.type == "cuda" and _gluon._sm90(device)


def _hopper_prefill(geometry: AttentionProblem, limits: ServingLimits, device: Any) -> PrefillConfig | None:
    if limits.block_size is None or not limits.plain_attention or not _runs_gluon(device):
        return None
    return gluon_prefill_config(geometry, block_size=limits.block_size)


def preferred_block_size(geometry: AttentionProblem, *, plain_attention: bool, device: Any) -> int | None:
    """Tokens per cache page at which ``geometry``'s prefill runs fastest on ``device``: the
    Gluon Hopper prefill's key tile where that kernel reads the model's cache itself (sm_90,
    Triton 3.6.0, fp16/bf16 or fp8 cache, head size 64/128/256, ``plain_attention``: no ALiBi or sinks), else ``None`` (the generic
    kernels read any page size alike: keep the server's default). Pages this large cost
    prefix-cache hits on each request's last partial page (docs/plugin.md)."""
    if not plain_attention or geometry.head_dim not in _MEASURED_HOPPER_HEAD_DIMS or not _runs_gluon(device):
        return None
    if geometry.kv_dtype != geometry.dtype:
        # An fp8 cache reaches the prefill staged, in pages of the prefill's key tile, from any
        # page size; its decode and the staging copy read whole tiles per page lookup at the
        # prefill's page size as a bf16 cache's do.
        geometry = dataclasses.replace(geometry, kv_dtype=geometry.dtype)
    config = gluon_prefill_config(geometry)
    return config.tile_n if config is not None else None


# Head sizes whose Gluon prefill was measured against the generic kernel and FA3 on a GPU (H200,
# docs/results/h200/): a page size is only worth asking a server for on evidence.
_MEASURED_HOPPER_HEAD_DIMS = (128,)


class ServingPolicy:
    """Configurations for one model geometry under :class:`ServingLimits`.

    ``geometry``: an :class:`AttentionProblem` whose head counts, head size, dtypes, SM
    count and interpreter flag are the model's (its batch fields are ignored).

    - decode on Hopper (speculative verification; one-token steps at batches of up to 16
      sequences, as ``TRITON_ATTN_HOPPER_DECODE`` says): the Gluon decode's
      configuration (:func:`~.heuristics.gluon_decode_config`; its split count depends on
      the batch size only) where it serves the model at ``limits.block_size`` and
      ``limits.hopper_decode``. Elsewhere:
    - decode: with ``cuda_graphs``, pinned per batch size and chosen for ``max_model_len``
      (table, else heuristic), so a recorded launch stays valid for any context; without,
      the heuristic for the batch's longest context (a table entry for a new shape could
      compile a new variant in the middle of serving). Pinned split counts are served as
      the table or the heuristic gives them, which is what the tuner timed (a count that
      fills whole waves, 33 for 8 KV heads on 132 SMs, where rounding it up to 64 made
      batch 1 x 8k-32k 0.94-0.97x FA3 on an H200); eager ones are rounded up to a power
      of two. Split counts are plain kernel arguments, so configs that differ only in them
      share one compiled variant (two with the single-split one), and so does the merge
      for every count.
    - prefill: one configuration per model, for the chunked-prefill budget, for the same
      reason: the Gluon Hopper prefill where it serves the model at ``limits.block_size``
      (see :func:`preferred_block_size`), else the heuristic.
    """

    def __init__(self, geometry: AttentionProblem, limits: ServingLimits, *, device: Any = None) -> None:
        if not isinstance(limits, ServingLimits):
            raise TypeError(f"limits must be a ServingLimits, got {type(limits).__name__}")
        self.geometry = geometry
        self.limits = limits
        self.device = device
        self.prefill = _hopper_prefill(geometry, limits, device) or prefill_heuristic(
            self._problem(limits.max_num_seqs, limits.max_num_batched_tokens, limits.max_model_len)
        )
        self._pinned_by_batch: dict[int, DecodeConfig] = {}
        self._plans: dict[tuple[int, int, bool, bool], LaunchPlan] = {}

    @classmethod
    def for_model(
        cls,
        *,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: Any,
        kv_dtype: Any,
        limits: ServingLimits,
        device: Any,
        head_dim_v: int | None = None,
    ) -> ServingPolicy:
        """The policy for a model's attention layers on ``device`` (a ``torch.device``; its SM
        count and whether Triton's interpreter runs are the launcher's facts). ``dtype`` /
        ``kv_dtype``: torch dtypes or their names, of the queries and of the cache;
        ``head_dim_v``: V's head size where it differs from ``head_dim``."""
        geometry = model_geometry(
            num_q_heads=num_q_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            dtype=dtype,
            kv_dtype=kv_dtype,
            device=device,
            head_dim_v=head_dim_v,
        )
        return cls(geometry, limits, device=device)

    def _problem(self, num_seqs: int, max_seqlen_q: int, max_seqlen_k: int) -> AttentionProblem:
        return dataclasses.replace(
            self.geometry,
            num_seqs=num_seqs,
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max(max_seqlen_k, 1),
            block_size=self.limits.block_size,
        )

    def decode(self, num_seqs: int, max_seqlen_k: int) -> DecodeConfig:
        """The decode configuration for a batch of ``num_seqs`` sequences."""
        hopper = self._hopper_decode(num_seqs)
        if hopper is not None:
            return hopper
        if self.limits.cuda_graphs:
            return self._pinned(num_seqs)
        # Eager: the heuristic for this batch's context, its split count rounded up to a
        # power of two so that the counts a server meets stay few (tuner precompile
        # enumerates them by context length).
        config = decode_heuristic(self._problem(num_seqs, 1, max_seqlen_k))
        return dataclasses.replace(config, num_splits=1 << (config.num_splits - 1).bit_length())

    def _hopper_decode(self, num_seqs: int) -> DecodeConfig | None:
        lim = self.limits
        if not (lim.hopper_decode and lim.block_size):
            return None
        return _gluon_decode(self._problem(num_seqs, 1, 1), lim.decode_query_len, self.device)

    def _pinned(self, num_seqs: int) -> DecodeConfig:
        from . import select_decode_config

        config = self._pinned_by_batch.get(num_seqs)
        if config is None:
            problem = self._problem(num_seqs, 1, self.limits.max_model_len)
            config = self._pinned_by_batch[num_seqs] = select_decode_config(problem, device=self.device)
        return config

    def plan(self, num_seqs: int, max_seqlen_q: int, max_seqlen_k: int, *, has_decodes: bool = True) -> LaunchPlan:
        """The plan for one batch (host values only: no tensor is read). ``has_decodes=False``
        (no sequence has 1..decode_query_len new tokens) plans one prefill launch; if it is
        wrong the prefill launch serves the short sequences too, correctly."""
        dq = self.limits.decode_query_len if has_decodes else 0
        decode_runs, prefill_runs = _launches(dq, max_seqlen_q)
        # Under CUDA graphs nothing in a plan depends on the lengths (the decode config is
        # pinned per batch size), so a server's steps reuse a few plans instead of building one
        # each (a step's host time is on its path where vLLM cannot overlap it).
        key = (num_seqs, dq, decode_runs, prefill_runs)
        plan = self._plans.get(key) if self.limits.cuda_graphs else None
        if plan is None:
            decode = self.decode(num_seqs, max_seqlen_k) if decode_runs else None
            prefill = self.prefill if prefill_runs else None
            plan = _plan(self._problem(num_seqs, max_seqlen_q, max_seqlen_k), decode, prefill, dq)
            if self.limits.cuda_graphs:
                self._plans[key] = plan
        return plan

    def max_workspace_numel(self) -> int:
        """The workspace every batch up to ``max_num_seqs`` fits in (allocate it once)."""
        g, lim = self.geometry, self.limits
        return max(
            decode_workspace_numel(
                n,
                g.num_q_heads,
                g.v_head_dim,
                self.decode(n, lim.max_model_len).num_splits,
                query_len=lim.decode_query_len,
            )
            for n in range(1, lim.max_num_seqs + 1)
        )
