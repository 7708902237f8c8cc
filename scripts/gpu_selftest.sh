#!/usr/bin/env bash
# gpu_selftest.sh: runs the CUDA FFA self-test on a GPU machine. Builds nothing: it expects build/ (from
# `deno task build --selftest`) next to it. Runs every case, then a few small cases under
# compute-sanitizer memcheck and racecheck (when compute-sanitizer is installed), then the timings.
#
# Usage: scripts/gpu_selftest.sh [BUILD_DIR]   (default: <repo>/build)
# Exit status: non-zero if any step failed.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build_dir="${1:-$here/../build}"
selftest="$build_dir/magi_ffa_selftest"
if [[ ! -x "$selftest" ]]; then
  echo "missing $selftest: run 'deno task build --selftest' first (and carry build/)" >&2
  exit 2
fi

status=0
echo "== full self-test (backward in both modes: fast = fused dQ atomics, deterministic = atomic-free)"
"$selftest" --bwd-mode both || status=1

sanitizer="$(command -v compute-sanitizer || true)"
if [[ -z "$sanitizer" && -x /usr/local/cuda/bin/compute-sanitizer ]]; then
  sanitizer=/usr/local/cuda/bin/compute-sanitizer
fi
if [[ -z "$sanitizer" ]]; then
  echo "== compute-sanitizer not found: skipping memcheck / racecheck"
else
  # Small cases only: the sanitizers slow kernels down by orders of magnitude.
  for tool in memcheck racecheck; do
    for filter in uncovered_rows prefix_tree bi_causal_empty tiny_single causal_300; do
      echo "== compute-sanitizer --tool $tool ($filter)"
      "$sanitizer" --tool "$tool" --error-exitcode 99 "$selftest" --filter "$filter" || status=1
    done
  done
  # The fast backward's fp32 dQ atomics and shared dS^T staging, alone (the loop above runs both modes).
  for tool in memcheck racecheck; do
    for filter in prefix_tree_overlapping uncovered_rows; do
      echo "== compute-sanitizer --tool $tool ($filter, --bwd-mode fast)"
      "$sanitizer" --tool "$tool" --error-exitcode 99 "$selftest" --filter "$filter" --bwd-mode fast || status=1
    done
  done
  echo "== compute-sanitizer --tool memcheck (all --quick cases)"
  "$sanitizer" --tool memcheck --error-exitcode 99 "$selftest" --quick || status=1
fi

echo "== timings (bf16; backward in both modes)"
"$selftest" --bench --bwd-mode both || status=1

if [[ $status -eq 0 ]]; then echo "gpu_selftest: ALL OK"; else echo "gpu_selftest: FAILURES"; fi
exit $status
