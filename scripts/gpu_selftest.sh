#!/usr/bin/env bash
# gpu_selftest.sh: runs the CUDA FFA self-test (tests/cuda/selftest.cu) on a GPU machine. Builds nothing: it
# expects build/ (from `deno task build --selftest`) next to it. Runs every case, the kernel choices the
# environment forces (MAGI_FFA_*, see README.md), a few small cases under compute-sanitizer memcheck and
# racecheck of the default kernels (when compute-sanitizer is installed), then the timings.
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
echo "== full self-test (backward in both modes: fast = the sm90 main loop on sm_90, else fused dQ atomics; deterministic = atomic-free)"
"$selftest" --bwd-mode both || status=1
# The mma.sync fast backward (the fast mode off sm_90, or MAGI_FFA_BWD_KERNEL=sm80) picks 128- or 64-key tiles
# per problem (small cases mostly get 64): force each.
for block_n in 64 128; do
  echo "== mma.sync fast backward forced to ${block_n}-key tiles (MAGI_FFA_BWD_KERNEL=sm80 MAGI_FFA_BWD_BLOCK_N=$block_n)"
  MAGI_FFA_BWD_KERNEL=sm80 MAGI_FFA_BWD_BLOCK_N=$block_n "$selftest" --bwd-mode fast || status=1
done
echo "== an invalid MAGI_FFA_* value fails forward / backward with the variable's name (not silently ignored)"
bad_env_out="$(MAGI_FFA_BWD_BLOCK_N=96 "$selftest" --filter tiny_single --bwd-mode fast 2>&1)"
bad_env_rc=$?
if [[ $bad_env_rc -ne 0 ]] && grep -q "MAGI_FFA_BWD_BLOCK_N must be 64, 128 or unset" <<<"$bad_env_out"; then
  echo "ok (exit $bad_env_rc, message names MAGI_FFA_BWD_BLOCK_N)"
else
  echo "FAIL: exit $bad_env_rc"; tail -5 <<<"$bad_env_out"; status=1
fi
echo "== CPU replay of both backward schedules (no GPU needed)"
"$selftest" --cpu-replay --bwd-mode both || status=1
MAGI_FFA_BWD_BLOCK_N=64 "$selftest" --cpu-replay --bwd-mode fast || status=1
MAGI_FFA_BWD_BLOCK_N=128 "$selftest" --cpu-replay --bwd-mode fast || status=1
# The forward kernels explicitly: sm80 (mma.sync) everywhere, sm90 (wgmma + TMA) on sm_90 devices (the
# runs above pick sm90 by themselves there).
echo "== full self-test --fwd-kernel sm80 (backward fast mode)"
"$selftest" --fwd-kernel sm80 --bwd-mode fast || status=1
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')"
if [[ "$cap" == "9.0" ]]; then
  echo "== full self-test --fwd-kernel sm90 (backward fast mode)"
  "$selftest" --fwd-kernel sm90 --bwd-mode fast || status=1
  # The sm90 forward is persistent (one CTA per SM); the cases are small, so force a few CTAs to make each
  # run many (query tile, head) items in a row (ring phases and the Q / O buffers carried across items).
  echo "== forward self-test --fwd-kernel sm90 with MAGI_FFA_SM90_CTAS=3 and =1"
  MAGI_FFA_SM90_CTAS=3 "$selftest" --fwd-kernel sm90 --bwd-mode fast || status=1
  MAGI_FFA_SM90_CTAS=1 "$selftest" --fwd-kernel sm90 --bwd-mode fast --quick || status=1
  echo "== forward self-test --fwd-kernel sm90 without ping-pong (MAGI_FFA_SM90_PINGPONG=0), --quick"
  MAGI_FFA_SM90_PINGPONG=0 "$selftest" --fwd-kernel sm90 --bwd-mode fast --quick || status=1
  # Large shapes (too big for the float64 reference): the sm90 forward against the sm80 one.
  # Intermittent pipeline hangs (the sm90 forward had one, once per ~10^4-10^5 CTA launches): many
  # back-to-back launches of every bench shape, the short-document one most.
  echo "== sm90 forward: 1,000 launches of each bench shape, 60,000 of 64 short documents"
  timeout 120 "$selftest" --fwd-kernel sm90 --fwd-hammer 1000 || status=1
  timeout 120 "$selftest" --fwd-kernel sm90 --fwd-hammer 60000 --filter short_docs || status=1
  echo "== forward cross-check sm90 vs sm80 on large shapes (default grid, then 7 CTAs)"
  "$selftest" --fwd-crosscheck || status=1
  MAGI_FFA_SM90_CTAS=7 "$selftest" --fwd-crosscheck || status=1
  cuobjdump_bin="$(command -v cuobjdump || true)"
  [[ -z "$cuobjdump_bin" && -x /usr/local/cuda/bin/cuobjdump ]] && cuobjdump_bin=/usr/local/cuda/bin/cuobjdump
  if [[ -n "$cuobjdump_bin" ]]; then
    echo "== HGMMA instructions in the library: $("$cuobjdump_bin" --dump-sass "$build_dir/libmagi_ffa.so" | grep -c HGMMA)"
  fi
else
  echo "== compute capability '$cap' is not 9.0: no --fwd-kernel sm90 run"
fi

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
      echo "== compute-sanitizer --tool $tool ($filter, --bwd-mode fast, default and 128-key tiles)"
      "$sanitizer" --tool "$tool" --error-exitcode 99 "$selftest" --filter "$filter" --bwd-mode fast || status=1
      MAGI_FFA_BWD_BLOCK_N=128 "$sanitizer" --tool "$tool" --error-exitcode 99 "$selftest" --filter "$filter" \
        --bwd-mode fast || status=1
    done
  done
  echo "== compute-sanitizer --tool memcheck (all --quick cases)"
  "$sanitizer" --tool memcheck --error-exitcode 99 "$selftest" --quick || status=1
  if [[ "$cap" == "9.0" ]]; then
    # The Hopper forward (TMA, mbarriers, V tail zeroing, TMA store) on two small cases, 2 persistent CTAs
    # (so each runs several items).
    for tool in memcheck racecheck; do
      for filter in sm90_kv_tail_over_nan_padding sm90_many_slices_one_tile; do
        echo "== compute-sanitizer --tool $tool --fwd-kernel sm90 ($filter, CTAS=2)"
        MAGI_FFA_SM90_CTAS=2 timeout 600 "$sanitizer" --tool "$tool" \
          --error-exitcode 99 "$selftest" --fwd-kernel sm90 --bwd-mode fast --filter "$filter" || status=1
      done
    done
  fi
fi

if [[ "$cap" == "9.0" ]]; then
  echo "== forward-only timings (bf16, S=16k, H=16, D=128): sm80, sm90, sm90 without ping-pong"
  "$selftest" --fwd-kernel sm80 --fwd-time || status=1
  "$selftest" --fwd-kernel sm90 --fwd-time || status=1
  MAGI_FFA_SM90_PINGPONG=0 "$selftest" --fwd-kernel sm90 --fwd-time || status=1
fi
echo "== timings (bf16; backward in both modes; the forward once per kernel: sm80, and sm90 on sm_90 devices)"
"$selftest" --bench --bwd-mode both || status=1
for block_n in 64 128; do
  echo "== timings of the fast backward forced to ${block_n}-key tiles (MAGI_FFA_BWD_BLOCK_N=$block_n)"
  MAGI_FFA_BWD_KERNEL=sm80 MAGI_FFA_BWD_BLOCK_N=$block_n "$selftest" --bench --bwd-mode fast || status=1
done

if [[ $status -eq 0 ]]; then echo "gpu_selftest: ALL OK"; else echo "gpu_selftest: FAILURES"; fi
exit $status
