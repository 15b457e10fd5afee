#!/usr/bin/env bash
# One H100 session on a 4-GPU machine (nvidia-h100-x4): independent lanes, one per GPU, run
# side by side so a call of under 10 minutes does four GPUs' work. vLLM 0.26 staged and our
# wheels installed first (`bash tools/gpu/session.sh setup`). Logs of every lane come back as
# $OUT/WAVE.tgz, their tails as $OUT/WAVE.txt.
#
#   bash tools/gpu/waves.sh check    # GPU tests, check_vllm (graphs, fp8, eager + serve), soak, fuzz, sanitizer
#   bash tools/gpu/waves.sh e2e      # attn-bench e2e: ours / FLASH_ATTN / TRITON_ATTN, fp8 (timings alone on a GPU)
#   bash tools/gpu/waves.sh bench    # attn-bench decode / prefill / mixed against FA3 and TRITON_ATTN
#   bash tools/gpu/waves.sh verify   # fp8 in bf16, vllm serve, kernels + fuzz again, sanitizer, tables vs heuristics
#   bash tools/gpu/waves.sh next     # what is still to run: 5-minute soak, gpu tests, all providers, e2e agreement
# Set ATTN_BENCH_COMMIT=<sha> (no git history travels) so result rows name the commit.
#
# Timings in a lane have their GPU to themselves (the e2e and bench waves put one timed job on
# each GPU); the check wave shares GPU 0 between the soak and the kernel fuzzing (no timings).
set -uo pipefail
source .gpu/bin/env.sh
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset TRITON_INTERPRET
wave=$1
budget=${WAVE_BUDGET:-555}  # seconds until every lane must have stopped
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
logs=/tmp/wave-$wave
rm -rf "$logs" && mkdir -p "$logs"
gpu=packages/vllm-triton-plugin/gpu
cv() { (cd $gpu && timeout "$(left)" python3 check_vllm.py "$@"); }
e2e() { timeout "$(left)" python3 -m attn_bench e2e --timeout "$(left)" "$@"; }
lane() { # lane GPU NAME COMMANDS...
  local dev=$1 name=$2
  shift 2
  # OUT: scripts that write under $OUT write into the lane folder (the tarball) instead.
  (export CUDA_VISIBLE_DEVICES=$dev OUT=$logs VLLM_CACHE_ROOT=/tmp/vllm-cache-$name; echo "== lane $name on GPU $dev"; eval "$@"; echo "== lane $name done rc=$? at $(($(date +%s) - start))s") \
    >"$logs/$name.log" 2>&1 &
}

case $wave in
check)
  lane 0 soak "python3 tools/gpu/reliability/soak.py --num-layers 8 --duration 240 --gpu-memory-utilization 0.5 \
      --workdir /tmp/soak --out $logs/soak.json 2>&1 | tail -40"
  lane 0 kernels-fuzz "sleep 20; timeout 150 bash tools/gpu/reliability/sanitize.sh --quick 2>&1 | tail -15; \
      timeout \$((\$(left) - 10)) python3 tools/gpu/reliability/fuzz_gpu.py --budget 200 --max-kv-gib 12 --out $logs/fuzz.json 2>&1 | tail -25"
  lane 1 tests-eager-serve "timeout 240 python3 -m pytest -q -m gpu packages/triton-attn-kernels/tests -p no:cacheprovider 2>&1 | tail -8; \
      cv --enforce-eager --serve --engines triton flash_attn --workdir $logs/cv-eager 2>&1 | tail -30"
  lane 2 graphs "cv --engines triton flash_attn triton_attn --workdir $logs/cv-graphs 2>&1 | tail -60"
  lane 3 fp8 "cv --kv-cache-dtype fp8 --engines triton flash_attn triton_attn --workdir $logs/cv-fp8 2>&1 | tail -60"
  ;;
e2e)
  # Each lane one GPU; ours and FLASH_ATTN on two GPUs in opposite orders (GPU-to-GPU spread).
  w="256x1024-256 64x8192-512 1x500-4096"
  lane 0 a "e2e --backends ours,FLASH_ATTN --workload $w --out $logs/e2e-a 2>&1 | tail -20"
  lane 1 b "e2e --backends FLASH_ATTN,ours --workload $w --out $logs/e2e-b 2>&1 | tail -20"
  lane 2 c "e2e --backends TRITON_ATTN --workload $w --out $logs/e2e-c 2>&1 | tail -20"
  lane 3 d "e2e --backends FLASH_ATTN,ours --workload 64x8192-512 --engine-arg kv_cache_dtype=fp8 \
      --out $logs/e2e-fp8 2>&1 | tail -20"
  ;;
bench)
  p=ours-paged,vllm-fa3,vllm-triton
  lane 0 decode "timeout \$(left) python3 -m attn_bench run decode --providers $p --budget \$((\$(left) - 30)) --out $logs/decode 2>&1 | tail -30"
  lane 1 prefill "timeout \$(left) python3 -m attn_bench run prefill --providers $p --budget \$((\$(left) - 30)) --out $logs/prefill 2>&1 | tail -30"
  lane 2 mixed "timeout \$(left) python3 -m attn_bench run mixed kv-write --providers $p --budget \$((\$(left) - 30)) --out $logs/mixed 2>&1 | tail -30"
  lane 3 tuning "timeout \$(left) python3 -m attn_bench run decode prefill --quick --providers ours-paged --budget 200 --out $logs/tables 2>&1 | tail -8; \
      TRITON_ATTN_TUNING=0 timeout \$(left) python3 -m attn_bench run decode prefill --quick --providers ours-paged --budget 200 --out $logs/heuristic 2>&1 | tail -8"
  ;;
verify)
  # After the check wave: fp8 in bf16 (FA3's fp8 path needs it), `vllm serve`, the kernels
  # again (fp8 KV write rebuilt), the fp8 write probe, the sanitizer alone on a GPU, the
  # fuzzer, tables against heuristics (issue 5) and an interrupted tuning run resumed.
  lane 0 fp8 "cv --kv-cache-dtype fp8 --live-vocab 2 --dead-scale 0 --engines triton flash_attn triton_attn \
      --workdir $logs/cv-fp8 2>&1 | tail -60; \
      cv --enforce-eager --engines custom flash_attn --workdir $logs/cv-custom 2>&1 | tail -12"
  lane 1 serve-tests-fuzz "cv --serve-only --workdir $logs/cv-serve 2>&1 | tail -8; \
      timeout 240 python3 -m pytest -q -m gpu packages/triton-attn-kernels/tests -p no:cacheprovider 2>&1 | tail -8; \
      timeout 60 python3 tools/gpu/probe_fp8_write.py 2>&1 | tail -30; \
      timeout 90 python3 -c \"import logging, runpy, sys; logging.basicConfig(level=logging.DEBUG); \
sys.argv = ['fuzz_gpu.py', '--replay', '1000048']; runpy.run_path('tools/gpu/reliability/fuzz_gpu.py', run_name='__main__')\" \
      2>&1 | grep -v '^DEBUG:triton_attn_kernels.tuning.*decode' | tail -25; \
      timeout \$((\$(left) - 10)) python3 tools/gpu/reliability/fuzz_gpu.py --budget \$((\$(left) - 60)) --seed 3000000 \
      --out $logs/fuzz.json 2>&1 | tail -40"
  lane 2 sanitize "bash tools/gpu/reliability/sanitize.sh 2>&1 | tail -30"
  lane 3 tuning "q='decode prefill mixed kv-write --quick --providers ours-paged,ours-kv-write --budget 150'; \
      timeout 200 python3 -m attn_bench run \$q --out $logs/tables 2>&1 | tail -4; \
      TRITON_ATTN_TUNING=0 timeout 200 python3 -m attn_bench run \$q --out $logs/heuristic 2>&1 | tail -4; \
      python3 -m attn_bench compare $logs/heuristic/results.csv $logs/tables/results.csv 2>&1 | tail -60; \
      t0=\$(date +%s); timeout -s KILL 30 python3 -m triton_attn_kernels.tune run prefill --geometry llama3-8b \
      --out $logs/tune 2>&1 | tail -3; echo killed after \$((\$(date +%s) - t0))s; \
      timeout \$((\$(left) - 5)) python3 -m triton_attn_kernels.tune run prefill --geometry llama3-8b --out $logs/tune 2>&1 | tail -6; \
      echo tuning total \$((\$(date +%s) - t0))s; python3 -m triton_attn_kernels.tune show $logs/tune/prefill/*.json 2>&1 | head -30"
  ;;
next)
  # What the 2026-11-27 session left for the GPU: the 5-minute soak with sharp weights, the
  # kernel tests with the ptxas-fallback replay, every microbenchmark provider (FlexAttention
  # included) on the quick points, and e2e agreement with the e2e weights of 2 live rows;
  # then whether prefetch_pages pays (prefill tuner, quick grid).
  lane 0 soak "python3 tools/gpu/reliability/soak.py --num-layers 8 --duration 300 --workdir /tmp/soak \
      --out $logs/soak.json 2>&1 | tail -40"
  # prefetch_pages (page numbers one tile ahead, so paged K/V copies pipeline): the tuner
  # times it against the current tiles on the prefill quick grid; `show` prints both.
  lane 1 tests "timeout 300 python3 -m pytest -q -m gpu packages/triton-attn-kernels/tests -p no:cacheprovider 2>&1 | tail -15; \
      timeout 90 python3 tools/gpu/probe_decode.py 2>&1 | tail -60; \
      timeout \$((\$(left) - 15)) python3 -m triton_attn_kernels.tune run prefill --grid quick --fresh \
      --budget \$((\$(left) - 40)) --out $logs/tune 2>&1 | tail -20; \
      python3 -m triton_attn_kernels.tune show $logs/tune/prefill/*.json 2>&1 | tail -30"
  lane 2 bench "timeout \$(left) python3 -m attn_bench run decode prefill mixed kv-write --quick \
      --providers ours-paged,ours-varlen,torch-sdpa,flex-attention,vllm-triton,vllm-fa3,ours-kv-write,vllm-kv-write,torch-kv-write --budget \$((\$(left) - 30)) \
      --out $logs/bench 2>&1 | tail -40"
  lane 3 e2e "e2e --backends ours,FLASH_ATTN --workload 256x1024-256 64x8192-512 1x500-4096 --out $logs/e2e 2>&1 | tail -20"
  ;;
*)
  echo "unknown wave $wave" >&2
  exit 2
  ;;
esac
wait
for f in "$logs"/*.log; do echo "######## $f"; tail -c 6000 "$f"; done >"$OUT/$wave.txt"
tar czf "$OUT/$wave.tgz" -C /tmp "wave-$wave" --exclude='*.safetensors' --exclude='*.bin'
ls -la "$OUT"
