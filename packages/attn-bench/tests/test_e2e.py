"""attn-bench e2e with a stand-in `vllm` module: subprocess per backend, result files,
agreement with the first backend, accumulation across invocations, failures reported."""

import json
import textwrap

import pytest

from attn_bench import e2e

FAKE_VLLM = textwrap.dedent(
    """
    __version__ = "0.0-fake"

    class SamplingParams:
        def __init__(self, max_tokens, **kw):
            self.max_tokens = max_tokens

    class _Completion:
        def __init__(self, ids):
            self.token_ids = ids

    class _Output:
        def __init__(self, ids):
            self.outputs = [_Completion(ids)]

    class LLM:
        def __init__(self, model, attention_config=None, **kw):
            import json, os
            assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"]
            cfg = json.load(open(os.path.join(model, "config.json")))
            assert cfg["num_key_value_heads"] == (16 if cfg["model_type"] == "deepseek_v2" else 8)
            self.cfg = cfg
            self.backend = (attention_config or {}).get("backend", "auto")
            self.model = model
            # Speculative decoding's counters, kept only with stats on (vLLM's rule).
            self.spec = kw.get("speculative_config") and not kw.get("disable_log_stats", True)
            self.counts = [0, 0, 0]
            if self.backend == "BROKEN":
                raise RuntimeError("backend BROKEN is not registered")
            journal = os.environ.get("FAKE_JOURNAL")
            if journal:
                # What a compile cache would see: empty (cold) or filled by an earlier start.
                dirs = {v: os.environ.get(v, "") for v in ("TRITON_CACHE_DIR", "VLLM_CACHE_ROOT",
                        "TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH")}
                filled = all(os.path.exists(os.path.join(d, "kernel.bin")) for d in dirs.values())
                with open(journal, "a") as f:
                    f.write(json.dumps({"backend": self.backend, "dirs": dirs, "warm": filled}) + "\\n")
                for d in dirs.values():
                    os.makedirs(d, exist_ok=True)
                    open(os.path.join(d, "kernel.bin"), "w").close()
                if self.backend == "CUSTOM":
                    print("INFO Triton attention: 7 kernel variants compiled or loaded during engine start (x)")
                    print("INFO Graph capturing finished in 12 secs, took 0.50 GiB")

        def apply_model(self, fn):
            # vLLM-style parameter names at toy width; the config's layer count. An MLA config
            # adds per layer a toy of vLLM's MLAAttention: absorbed weights made from kv_b_proj
            # in place by process_weights_after_loading.
            import json, os, torch
            assert os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION") == "1"
            cfg = json.load(open(os.path.join(self.model, "config.json")))
            layers, vocab = cfg["num_hidden_layers"], cfg["vocab_size"]

            class ToyMLA(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.kv_b_proj = torch.nn.Linear(4, 6, bias=False)
                    self.W_UK_T = torch.nn.Parameter(torch.zeros(6, 4))

                def process_weights_after_loading(self, dtype):
                    self.W_UK_T.data.copy_(self.kv_b_proj.weight.to(dtype))

            m = torch.nn.Module()
            m.embed = torch.nn.ParameterDict({"embed_tokens": torch.nn.Parameter(torch.zeros(vocab, 8))})
            m.head = torch.nn.ParameterDict({"lm_head": torch.nn.Parameter(torch.zeros(vocab, 8))})
            m.layers = torch.nn.ModuleList()
            for _ in range(layers):
                layer = torch.nn.ParameterDict(
                    {n: torch.nn.Parameter(torch.zeros(8, 8)) for n in ("qkv_proj", "o_proj", "down_proj")}
                )
                m.layers.append(layer)
            if "kv_lora_rank" in cfg:
                m.mla = torch.nn.ModuleList([ToyMLA() for _ in range(layers)])
            counts = fn(m)
            if "kv_lora_rank" in cfg:
                assert all(torch.equal(a.W_UK_T, a.kv_b_proj.weight) for a in m.mla)
            return [counts]

        def generate(self, prompts, sp, use_tqdm=True):
            # Prompts hold ordinary tokens of the model: below its first special token.
            assert max(max(p["prompt_token_ids"]) for p in prompts) < self.cfg["bos_token_id"]
            outs = []
            for p in prompts:
                ids = [(p["prompt_token_ids"][0] + i) % 1000 for i in range(sp.max_tokens)]
                if self.backend == "TRITON_ATTN":
                    ids[len(ids) // 2] = -1  # diverges halfway
                outs.append(_Output(ids))
                # 4 drafts of 3 tokens per request, half of the tokens accepted.
                self.counts = [self.counts[0] + 4, self.counts[1] + 12, self.counts[2] + 6]
            return outs

        def get_metrics(self):
            class Counter:
                def __init__(self, name, value):
                    self.name, self.value = name, value

            names = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens_total",
                     "vllm:spec_decode_num_accepted_tokens")
            return [Counter(n, v) for n, v in zip(names, self.counts)] if self.spec else [Counter("other", 1)]
    """
)


def _use_fake_vllm(tmp_path, monkeypatch):
    """The stand-in `vllm` first on the engine subprocesses' path."""
    fake = tmp_path / "fake"
    (fake / "vllm").mkdir(parents=True)
    (fake / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    monkeypatch.setenv("PYTHONPATH", f"{fake}")


def test_e2e_with_a_fake_vllm(tmp_path, monkeypatch):
    _use_fake_vllm(tmp_path, monkeypatch)
    out = tmp_path / "e2e"
    opts = e2e.E2EOptions(backends=["FLASH_ATTN", "TRITON_ATTN"], workloads=["tiny"], out=out, timeout_s=120)
    assert e2e.run_e2e(opts) == 0
    # A second invocation into the same folder adds a backend; a failing one is reported.
    opts2 = e2e.E2EOptions(backends=["ours", "bad=BROKEN"], workloads=["tiny"], out=out, timeout_s=120)
    assert e2e.run_e2e(opts2) == 1
    rows = {r["label"]: r for r in _read(out / "e2e.csv")}
    assert set(rows) == {"FLASH_ATTN", "TRITON_ATTN", "ours", "bad"}
    assert rows["FLASH_ATTN"]["reference"] == "FLASH_ATTN" and float(rows["FLASH_ATTN"]["agree_exact"]) == 1.0
    assert float(rows["TRITON_ATTN"]["agree_prefix"]) == 0.5 and float(rows["TRITON_ATTN"]["agree_exact"]) == 0.0
    assert rows["ours"]["backend"] == "CUSTOM" and float(rows["ours"]["agree_exact"]) == 1.0
    assert float(rows["ours"]["agree_first16"]) == 1.0 and float(rows["TRITON_ATTN"]["agree_first16"]) == 0.0
    # Every engine redrew its weights (32 layers of the shipped config).
    results = [json.loads(p.read_text()) for p in out.glob("result-*.json")]
    assert len(results) == 3 and all(r["weights"]["o_proj"] == 32 == r["weights"]["down_proj"] for r in results)
    assert rows["bad"]["status"] == "error" and "BROKEN" in rows["bad"]["detail"]
    # The worker was asked for its compiled variants around the batch (none here: the
    # stand-in launches no kernel); a failed run has no count.
    assert {rows[k]["compiled_in_batch"] for k in ("FLASH_ATTN", "TRITON_ATTN", "ours")} == {"0"}
    assert rows["bad"]["compiled_in_batch"] == "-1"
    assert "| compiled |" in (out / "e2e.md").read_text()
    assert float(rows["FLASH_ATTN"]["total_tok_s"]) > 0
    assert "TRITON_ATTN" in (out / "e2e.md").read_text()
    assert len(json.loads((out / "runs.json").read_text())["runs"]) == 4


def test_e2e_folders_merge_with_agreement_across_them(tmp_path, monkeypatch):
    from attn_bench import cli

    _use_fake_vllm(tmp_path, monkeypatch)
    for label in ("FLASH_ATTN", "TRITON_ATTN"):  # one backend per command, as on a busy GPU
        e2e.run_e2e(e2e.E2EOptions(backends=[label], workloads=["tiny"], out=tmp_path / label, timeout_s=120))
    assert (
        cli.main(["merge", str(tmp_path / "FLASH_ATTN"), str(tmp_path / "TRITON_ATTN"), "--out", str(tmp_path / "m")])
        == 0
    )
    rows = {r["label"]: r for r in _read(tmp_path / "m" / "e2e.csv")}
    assert rows["TRITON_ATTN"]["reference"] == "FLASH_ATTN" and float(rows["TRITON_ATTN"]["agree_prefix"]) == 0.5


def test_cold_start_gives_each_backend_fresh_caches_then_keeps_them(tmp_path, monkeypatch):
    _use_fake_vllm(tmp_path, monkeypatch)
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("FAKE_JOURNAL", str(journal))
    # The caller's own cache settings must not leak into the measured starts.
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "user-triton"))
    out = tmp_path / "e2e"
    opts = e2e.E2EOptions(backends=["ours", "FLASH_ATTN"], workloads=["tiny"], out=out, timeout_s=120, cold_start=True)
    assert e2e.run_e2e(opts) == 0
    starts = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(s["backend"], s["warm"]) for s in starts] == [
        ("CUSTOM", False), ("CUSTOM", True), ("FLASH_ATTN", False), ("FLASH_ATTN", True)
    ]  # fmt: skip
    ours, peer = starts[0]["dirs"], starts[2]["dirs"]
    assert starts[1]["dirs"] == ours and starts[3]["dirs"] == peer
    assert not set(ours.values()) & set(peer.values()), "backends must not share a cache"
    assert all(str(out) in d for d in (*ours.values(), *peer.values()))
    rows = {r["label"]: r for r in _read(out / "e2e.csv")}
    assert set(rows) == {"ours", "FLASH_ATTN"} and all(r["caches"] == "own" for r in rows.values())
    for r in rows.values():
        assert float(r["init_cold_s"]) > 0 and float(r["init_s"]) > 0
        assert float(r["first_batch_cold_s"]) > 0 and float(r["first_batch_s"]) > 0
    assert (rows["ours"]["variants"], rows["FLASH_ATTN"]["variants"]) == ("7", "-1")
    assert rows["ours"]["phases"] == rows["ours"]["phases_cold"] == "capture 12.0"
    assert rows["FLASH_ATTN"]["phases"] == ""
    md = (out / "e2e.md").read_text()
    assert "## Engine start" in md and "| ours |" in md.split("## Engine start")[1]
    assert "- ours: cold: capture 12.0; warm: capture 12.0" in md


def test_cold_start_failure_is_reported_and_skips_the_warm_run(tmp_path, monkeypatch):
    _use_fake_vllm(tmp_path, monkeypatch)
    out = tmp_path / "e2e"
    opts = e2e.E2EOptions(backends=["bad=BROKEN"], workloads=["tiny"], out=out, timeout_s=120, cold_start=True)
    assert e2e.run_e2e(opts) == 1
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert [(r["phase"], r["status"]) for r in runs] == [("cold", "error"), ("warm", "error")]
    assert "cold start failed" in runs[1]["detail"] and not (out / "log-bad-1.txt").exists()
    (row,) = _read(out / "e2e.csv")
    assert row["status"] == "error"


def test_cache_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", "/user/triton")
    env = e2e._env("FLASH_ATTN", tmp_path / "c")
    assert {k: env[k] for k in e2e.CACHE_VARIABLES} == {
        "TRITON_CACHE_DIR": str(tmp_path / "c" / "triton"),
        "VLLM_CACHE_ROOT": str(tmp_path / "c" / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "c" / "inductor"),
        "CUDA_CACHE_PATH": str(tmp_path / "c" / "cuda"),
    }
    assert env["VLLM_PLUGINS"] == ""
    assert e2e._env("CUSTOM")["TRITON_CACHE_DIR"] == "/user/triton"  # shared: the caller's caches
    log = "(Worker_TP0) INFO Triton attention: 9 kernel variants compiled or loaded during engine start (a 9)\n"
    log += "(Worker_TP1) INFO Triton attention: 11 kernel variants compiled or loaded during engine start (a 11)\n"
    assert e2e.start_variants(log) == 11 and e2e.start_variants("nothing") == -1


def test_start_phases_from_the_engine_log():
    # vLLM 0.26's lines, a second process's, and both forms of the plugin's warm-up line.
    log = """(EngineCore pid=9) INFO [gpu_model_runner.py:1] Model loading took 15.0 GiB memory and 4.250000 seconds
(EngineCore pid=9) INFO [_prewarm.py:150] Triton attention: 8 kernel variants compiled or loaded ahead in 12.5 s (11 launches on 4 threads, beside the model's compile; pages of 128 tokens).
(EngineCore pid=9) INFO [_warmup.py:89] Triton attention: warm-up made 11 launches, 8 kernel variants compiled or loaded in 6.5 s on 8 threads, then run in 0.5 s.
(EngineCore pid=9) INFO [model_runner.py:747] Graph capturing finished in 32 secs, took 0.53 GiB
(EngineCore pid=9) INFO [core.py:340] init engine (profile, create kv cache, warmup model) took 84.17 s (compilation: 29.51 s)
(Worker_TP1) INFO Graph capturing finished in 30 secs, took 0.53 GiB
(EngineCore pid=9) INFO [backend.py:85] Triton attention: 10 kernel variants compiled or loaded during engine start (attention 3); its builds, cache writes and forwards took 1.3 s on the host over 9000 calls (the warm-up's apart).
"""
    phases = {"load": 4.25, "compile": 29.51, "capture": 32.0, "warm-up": 7.0, "ahead": 12.5, "init": 84.17}
    phases["plugin host"] = 1.3
    assert e2e.start_phases(log) == phases and e2e.start_variants(log) == 10
    old = "INFO Triton MLA: warm-up made 12 launches in 9.4 s, 7 kernel variants compiled or loaded.\n"
    assert e2e.start_phases(old) == {"warm-up": 9.4} and e2e.start_phases("nothing") == {}
    first = "INFO Triton attention: 11 launches compiled 10 kernel variants ahead in 11.9 s on 4 threads, beside\n"
    assert e2e.start_phases(first) == {"ahead": 11.9}  # bbf1603's wording
    assert e2e.format_phases({"load": 4.25, "capture": 32.0}) == "load 4.2, capture 32.0"


def test_prompts_are_deterministic_and_ordinary_tokens():
    w = e2e.WORKLOADS["tiny"]
    a, b = e2e.prompts(w), e2e.prompts(w)
    assert a == b and len(a) == w.num_requests and all(len(p) == w.input_len for p in a)
    assert all(e2e.TOKEN_RANGE[0] <= t < e2e.TOKEN_RANGE[1] for p in a for t in p)


def test_shipped_model_config_is_llama_3_1_8b():
    cfg = json.loads((__import__("pathlib").Path(e2e.model_dir("llama-3.1-8b")) / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (4096, 32, 32)
    assert (cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]) == (8, 14336, 128256)
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_theta"] == 500000.0


def test_deepseek_v2_lite_workload_with_a_fake_vllm(tmp_path, monkeypatch):
    _use_fake_vllm(tmp_path, monkeypatch)
    out = tmp_path / "e2e"
    # No --workload: the model's own, 64 x (2048 in, 512 out).
    opts = e2e.E2EOptions(backends=["FLASH_ATTN_MLA", "ours"], model="deepseek-v2-lite", out=out, timeout_s=120)
    assert e2e.run_e2e(opts) == 0
    rows = {r["label"]: r for r in _read(out / "e2e.csv")}
    assert {r["workload"] for r in rows.values()} == {"64x2048-512"}
    assert (rows["ours"]["num_requests"], rows["ours"]["input_len"], rows["ours"]["output_len"]) == (
        "64",
        "2048",
        "512",
    )
    assert rows["ours"]["reference"] == "FLASH_ATTN_MLA" and float(rows["ours"]["agree_exact"]) == 1.0
    # Every engine redrew its 27 layers and remade their absorbed MLA weights.
    results = [json.loads(p.read_text()) for p in out.glob("result-*.json")]
    assert len(results) == 2 and all(r["weights"]["mla_absorbed"] == 27 == r["weights"]["o_proj"] for r in results)


def test_token_ranges_of_the_shipped_models():
    llama, deepseek = e2e.model_config("llama-3.1-8b"), e2e.model_config("deepseek-v2-lite")
    assert e2e.token_range(llama) == e2e.TOKEN_RANGE  # the Llama prompts are unchanged
    assert e2e.token_range(deepseek) == (1000, 100000)
    w = e2e.WORKLOADS["64x2048-512"]
    assert (w.num_requests, w.input_len, w.output_len) == (64, 2048, 512)
    p = e2e.prompts(e2e.WORKLOADS["tiny"], tokens=e2e.token_range(deepseek))
    assert all(1000 <= t < 100000 for ids in p for t in ids)


def test_shipped_deepseek_v2_lite_config():
    cfg = e2e.model_config("deepseek-v2-lite")
    assert cfg["architectures"] == ["DeepseekV2ForCausalLM"] and cfg["model_type"] == "deepseek_v2"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (2048, 27, 16)
    assert (cfg["kv_lora_rank"], cfg["q_lora_rank"]) == (512, None)
    assert (cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]) == (128, 64, 128)
    assert (cfg["n_routed_experts"], cfg["n_shared_experts"], cfg["num_experts_per_tok"]) == (64, 2, 6)
    assert (cfg["moe_intermediate_size"], cfg["first_k_dense_replace"], cfg["vocab_size"]) == (1408, 1, 102400)
    assert cfg["rope_scaling"] == {
        "beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 4096, "type": "yarn",
    }  # fmt: skip


def test_deepseek_config_parses_as_transformers_deepseek_v2():
    transformers = pytest.importorskip("transformers")
    path = e2e.model_dir("deepseek-v2-lite")
    cfg = transformers.AutoConfig.from_pretrained(path)
    assert type(cfg).__name__ == "DeepseekV2Config"
    assert (cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.num_hidden_layers) == (512, 64, 27)


def test_deepseek_config_is_an_mla_model_to_vllm():
    vllm_config = pytest.importorskip("vllm.config")
    path = e2e.model_dir("deepseek-v2-lite")
    mc = vllm_config.ModelConfig(model=path, skip_tokenizer_init=True, dtype="bfloat16", max_model_len=4096)
    assert mc.use_mla and mc.get_head_size() == 576  # the latent row: 512 + 64
    assert mc.architectures == ["DeepseekV2ForCausalLM"]


def _read(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_defaults_follow_the_model(monkeypatch):
    from attn_bench import cli

    seen = []
    monkeypatch.setattr(e2e, "run_e2e", lambda opts: seen.append(opts) or 0)
    assert cli.main(["e2e", "--model", "deepseek-v2-lite"]) == 0 and cli.main(["e2e"]) == 0
    assert seen[0].backends == ["FLASH_ATTN_MLA", "ours", "FLASHMLA", "TRITON_MLA"] and seen[0].workloads is None
    assert seen[1].backends == ["ours", "FLASH_ATTN", "TRITON_ATTN", "FLEX_ATTENTION"]
    assert cli.main(["e2e", "--model", "deepseek-v2-lite", "--backends", "ours", "--workload", "tiny"]) == 0
    assert (seen[2].backends, seen[2].workloads) == (["ours"], ["tiny"])


def test_compiled_variants_are_listed_from_the_engines_worker(monkeypatch):
    import triton_attn_kernels.compiled as compiled

    monkeypatch.setattr(compiled, "compiled_keys", lambda: {"attention": ["a1", "a2"], "mla_gluon": ["g1"]})
    assert e2e.compiled_in_process() == ["attention: a1", "attention: a2", "mla_gluon: g1"]

    class Engine:
        def __init__(self, answer):
            self.answer = answer

        def apply_model(self, fn):
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    assert e2e._worker_variants(Engine([["x: 1"], ["x: 1", "y: 2"]])) == [
        "worker 0 x: 1",
        "worker 1 x: 1",
        "worker 1 y: 2",
    ]
    assert e2e._worker_variants(Engine([["x: 1"], None])) is None  # a worker without our kernels
    assert e2e._worker_variants(Engine(RuntimeError("no insecure serialization"))) is None
    before = e2e._worker_variants(Engine([["x: 1"]]))
    after = e2e._worker_variants(Engine([["x: 1", "x: 2"]]))
    assert e2e._new_variants(before, after) == ["worker 0 x: 2"]
    assert e2e._new_variants(None, after) is None


def test_a_workload_longer_than_max_model_len_is_refused_before_any_engine(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(e2e, "_run_worker", lambda *a, **k: started.append(a))
    opts = e2e.E2EOptions(
        backends=["ours"], model="deepseek-v2-lite", workloads=["64x2048-512", "1x500-4096"], out=tmp_path,
        extra=["max_model_len=4096"],
    )  # fmt: skip
    with pytest.raises(SystemExit, match=r"'1x500-4096' needs 500 \+ 4096 = 4596 .* max_model_len=4096"):
        e2e.run_e2e(opts)
    assert started == []
    # Without the engine argument the config's max_position_embeddings (163840) bounds it.
    e2e._check_lengths(["8x32768-1024"], None, e2e.model_dir("deepseek-v2-lite"))


def test_cold_start_primes_the_file_cache_once_first(tmp_path, monkeypatch):
    _use_fake_vllm(tmp_path, monkeypatch)
    primed: list[str] = []
    monkeypatch.setattr(e2e, "prime_file_cache", lambda caches: primed.append(str(caches)))
    out = tmp_path / "e2e"
    opts = e2e.E2EOptions(backends=["ours", "FLASH_ATTN"], workloads=["tiny"], out=out, timeout_s=120, cold_start=True)
    assert e2e.run_e2e(opts) == 0
    assert primed == [str((out / "caches" / "prime").resolve())]
    primed.clear()
    opts = e2e.E2EOptions(backends=["ours"], workloads=["tiny"], out=tmp_path / "warm", timeout_s=120)
    assert e2e.run_e2e(opts) == 0 and primed == []
    # The priming script itself runs in a plain interpreter and prints its time.
    proc = __import__("subprocess").run(
        [__import__("sys").executable, "-c", e2e._PRIME.replace("import vllm", "pass  #")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and "file cache primed in" in proc.stdout


def test_speculative_decoding_acceptance_is_reported(tmp_path, monkeypatch):
    _use_fake_vllm(tmp_path, monkeypatch)
    out = tmp_path / "e2e"
    spec = 'speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}'
    opts = e2e.E2EOptions(backends=["FLASH_ATTN"], workloads=["tiny"], out=out, timeout_s=120, extra=[spec])
    assert e2e.run_e2e(opts) == 0
    (row,) = _read(out / "e2e.csv")
    assert float(row["spec_acceptance"]) == 0.5 and float(row["spec_accepted_per_draft"]) == 1.5
    assert "- tiny, FLASH_ATTN: 50.0% of proposed, 1.50 per draft" in (out / "e2e.md").read_text()
    # Without a speculative_config: nothing to report.
    opts = e2e.E2EOptions(backends=["FLASH_ATTN"], workloads=["tiny"], out=tmp_path / "plain", timeout_s=120)
    assert e2e.run_e2e(opts) == 0
    (row,) = _read(tmp_path / "plain" / "e2e.csv")
    assert row["spec_acceptance"] == "nan" and "Speculative decoding" not in (tmp_path / "plain" / "e2e.md").read_text()
    zero = dict.fromkeys(e2e.SPEC_COUNTERS, 0)
    assert all(x != x for x in e2e.spec_acceptance(None, zero))  # not counted: nan
    assert all(x != x for x in e2e.spec_acceptance(zero, zero))  # nothing proposed: nan
    after = dict(zip(e2e.SPEC_COUNTERS, (10, 40, 30), strict=True))
    assert e2e.spec_acceptance(zero, after) == (0.75, 3.0)
