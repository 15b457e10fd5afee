#!/usr/bin/env bash
# Memory safety of the kernels on the GPU (issue 9, item 4): a sample of the kernel tests and
# of the random fuzz cases, each group under `compute-sanitizer --tool memcheck`; prints every
# group's "ERROR SUMMARY" and exits non-zero on any memcheck error, test failure or timeout.
#
# On the H100 (needs only torch + triton + our kernels package; no vLLM), about 5 minutes:
#     bash tools/gpu/reliability/sanitize.sh            # logs under $OUT/sanitize (or /tmp/sanitize)
#     bash tools/gpu/reliability/sanitize.sh --quick    # the first two groups, about 2 minutes
#
# PYTORCH_NO_CUDA_MEMORY_CACHING=1: every tensor is its own cudaMalloc, so memcheck knows each
# allocation's real bounds (with the caching allocator, a read past a tensor usually lands in
# pooled memory and goes unseen).
# --report-api-errors no: torch and Triton probe the driver with calls that fail on purpose
# (e.g. attribute queries); those are not memory errors.
set -uo pipefail

case "${1:-}" in
-h | --help)
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
  ;;
--quick) quick=1 ;;
"") quick=0 ;;
*)
  echo "unknown argument: $1 (see --help)" >&2
  exit 2
  ;;
esac

root=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$root" || exit 2
tests=packages/triton-attn-kernels/tests
logs=${OUT:-/tmp}/sanitize
mkdir -p "$logs"
command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not on PATH" >&2; exit 2; }
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
  { echo "no CUDA device: the sanitizer needs the GPU" >&2; exit 2; }

export PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

# name | seconds allowed | command. Small shapes: the sanitizer slows every launch ~10-100x.
groups=(
  "paged|220|python3 -m pytest -q -p no:cacheprovider $tests/test_paged_attention.py -k 'mixed_batch_dtypes_and_gqa or test_head_dims or block_sizes_and_layouts or fp8_kv or split_kv_any_count or padding_rows_untouched or prefill_tiles or empty_batches'"
  "kv_cache|40|python3 -m pytest -q -p no:cacheprovider $tests/test_kv_cache.py"
  # The random paged batches of test_properties are what fuzz_sample draws (with padding and
  # specials), so only its varlen and KV-write properties run here.
  "properties|120|python3 -m pytest -q -p no:cacheprovider $tests/test_properties.py -k 'varlen or kv_writes'"
  "fuzz_sample|150|python3 tools/gpu/reliability/fuzz_gpu.py --small --cases 30 --seed 2000000 --out $logs/fuzz_sample.json"
)
[ "$quick" = 1 ] && groups=("${groups[@]:0:2}")

status=0
total_errors=0
summary=()
for g in "${groups[@]}"; do
  IFS='|' read -r name limit cmd <<<"$g"
  log=$logs/$name.memcheck.log
  start=$(date +%s)
  # memcheck's report goes to $log; the tests' own output to $logs/$name.out.
  timeout -k 15 "$limit" compute-sanitizer --tool memcheck --target-processes all --report-api-errors no --print-limit 50 \
    --error-exitcode 99 --log-file "$log" bash -c "$cmd" >"$logs/$name.out" 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  line=$(grep -h "ERROR SUMMARY" "$log" 2>/dev/null | tail -1 | sed 's/^=* *//')
  errors=$(grep -h "ERROR SUMMARY" "$log" 2>/dev/null | sed -n 's/.*ERROR SUMMARY: \([0-9]*\) error.*/\1/p' |
    awk '{s += $1} END {print s + 0}')
  total_errors=$((total_errors + errors))
  verdict=ok
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    verdict="TIMEOUT after ${limit}s"
    status=1
  elif [ -z "$line" ]; then
    verdict="NO ERROR SUMMARY (rc=$rc)"
    status=1
  elif [ "$errors" != 0 ] || [ "$rc" = 99 ]; then
    verdict="MEMCHECK ERRORS"
    status=1
  elif [ "$rc" != 0 ]; then
    verdict="TESTS FAILED (rc=$rc)"
    status=1
  fi
  tests_line=$(grep -E '(passed|failed|error).* in [0-9.]+s' "$logs/$name.out" | tail -1)
  [ -n "$tests_line" ] || tests_line=$(grep -E '^  "(cases_run|passed)":' "$logs/$name.out" | tr -d ' \n')
  summary+=("$(printf '%-12s %4ss  %-28s %-18s %s' "$name" "$secs" "${line:-ERROR SUMMARY: missing}" "$verdict" "$tests_line")")
  echo "${summary[-1]}"
  if [ "$verdict" != ok ]; then
    grep -m 20 -E "Invalid|Address|out of bounds|Error" "$log" | sed 's/^/    /'
    tail -5 "$logs/$name.out" | sed 's/^/    /'
  fi
done

echo
echo "compute-sanitizer memcheck: ${#groups[@]} groups, $total_errors errors in all; logs in $logs"
printf '%s\n' "${summary[@]}" >"$logs/summary.txt"
[ "$status" = 0 ] && echo "SANITIZE PASS" || echo "SANITIZE FAIL"
exit "$status"
