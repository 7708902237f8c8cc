#!/usr/bin/env bash
# gpu_hang_hunt.sh: the sm90 forward hang hunt (bench/NOTES.md v3), bounded in time, plus (optionally) the
# full benchmark. Expects build/ (`deno task build --selftest`); an optional build-hard/ holds a variant
# built with experiment flags (MAGI_FFA_NVCC_FLAGS, or `deno task build --experiments --out-dir build-hard`) to
# compare. Logs go to $OUT (or ./hang-hunt).
# The hang it found is fixed; this stays as the regression loop for pipeline hangs.
# Usage: scripts/gpu_hang_hunt.sh [--full-bench]
set -u
out="${OUT:-hang-hunt}"
mkdir -p "$out"
log="$out/hang.log"
st=build/magi_ffa_selftest
hard=build-hard/magi_ffa_selftest
step() { echo "== $*" | tee -a "$log"; }
{
  nvidia-smi --query-gpu=name,driver_version --format=csv
  nvidia-smi --query-compute-apps=pid,name --format=csv
} >>"$log" 2>&1
export MAGI_FFA_FWD_KERNEL=sm90
step "1. short docs, default variant, 20000 launches"
timeout 60 "$st" --fwd-hammer 20000 --filter short_docs >>"$log" 2>&1; echo "rc=$?" >>"$log"
step "2. every bench shape, 300 launches each"
timeout 90 "$st" --fwd-hammer 300 >>"$log" 2>&1; echo "rc=$?" >>"$log"
step "3. short docs, ping-pong off"
MAGI_FFA_SM90_PINGPONG=0 timeout 60 "$st" --fwd-hammer 20000 --filter short_docs >>"$log" 2>&1; echo "rc=$?" >>"$log"
step "4. short docs, 8 CTAs"
MAGI_FFA_SM90_CTAS=8 timeout 60 "$st" --fwd-hammer 2000 --filter short_docs >>"$log" 2>&1; echo "rc=$?" >>"$log"
step "5. short docs, the build-hard/ variant (if any)"
[[ -x "$hard" ]] && { timeout 60 "$hard" --fwd-hammer 20000 --filter short_docs >>"$log" 2>&1; echo "rc=$?" >>"$log"; }
step "6. timings, default variant"
timeout 60 "$st" --fwd-time >>"$log" 2>&1
unset MAGI_FFA_FWD_KERNEL
if [[ "${1:-}" == "--full-bench" ]]; then
  step "7. full benchmark (default kernels)"
  timeout 330 deno task bench --out-dir "$out/bench" >"$out/bench.log" 2>&1; echo "rc=$?" >>"$log"
fi
step "8. deno bench --quick --skip-peers with the sm90 forward (the sequence that trapped once)"
MAGI_FFA_FWD_KERNEL=sm90 timeout 120 deno task bench --quick --skip-peers --out-dir "$out/quick90" >"$out/quick90.log" 2>&1
echo "rc=$?" >>"$log"
step "9. synccheck on the small sm90 cases"
MAGI_FFA_SM90_CTAS=3 timeout 90 compute-sanitizer --tool synccheck "$st" --fwd-kernel sm90 --bwd-mode fast --quick >"$out/synccheck.log" 2>&1
echo "rc=$?" >>"$log"
tail -3 "$out/synccheck.log" >>"$log"
step "done"
