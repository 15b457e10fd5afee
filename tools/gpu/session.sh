#!/usr/bin/env bash
# Steps of one H100 session with vLLM 0.26 staged (see DEVELOPERS guide): run as
#   bash tools/gpu/session.sh STEP      (carry .gpu/bin and .whl)
set -uo pipefail
source .gpu/bin/env.sh
export PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=0
unset TRITON_INTERPRET
step=$1
case $step in
setup)
  bash .gpu/bin/install.sh 2>&1 | tail -3
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  python3 -c "import vllm, triton_attn_kernels, vllm_triton_plugin, attn_bench; print('ok', vllm.__version__)"
  ;;
tests)
  timeout 230 python3 -m pytest -q -m gpu packages/triton-attn-kernels/tests -p no:cacheprovider 2>&1 | tail -5
  ;;
bench)
  timeout 330 attn-bench run decode prefill mixed --quick --providers ours-paged,vllm-triton,vllm-fa3,torch-sdpa \
    --budget 270 --out $OUT/quick 2>&1 | tail -25
  ;;
plugin)
  cd packages/vllm-triton-plugin/gpu
  timeout 300 python3 check_vllm.py --workdir /tmp/cv32 2>&1 | tail -12
  timeout 130 python3 check_vllm.py --kv-cache-dtype fp8 --num-layers 8 --workdir /tmp/cvfp8 2>&1 | tail -6
  timeout 130 python3 check_vllm.py --enforce-eager --num-layers 8 --workdir /tmp/cveager 2>&1 | tail -6
  mkdir -p $OUT/plugin && cp /tmp/cv*/*.json $OUT/plugin/ 2>/dev/null; ls $OUT/plugin
  ;;
e2e)
  for be in FLASH_ATTN ours TRITON_ATTN; do
    timeout ${E2E_TIMEOUT:-200} attn-bench e2e --backends $be --workload 256x1024-256 64x8192-512 --timeout 190 \
      --out $OUT/e2e-$be 2>&1 | tail -6
  done
  ;;
esac
