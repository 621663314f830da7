#!/usr/bin/env bash
# Hardware counters of FP8 GEMM kernels on a Hopper machine with Nsight Compute (after
# `npm run gpu:pack`; carry .gpu). For each implementation named (a generated kernel's name, or
# "cublaslt"), ncu profiles one launch of the 4096x7168x2048 case (the bench's fourth launch: the three
# correctness-only edge cases come first) and writes the Speed-of-Light, memory and compute sections to
# $OUT/profile-<impl>.txt, so tensor-pipe utilisation and L2 / shared-memory throughput of our kernels
# can be set beside cuBLASLt's. Clocks are left alone (--clock-control none, as the device notes ask).
#   bash bench/gpu/gemm-profile.sh sh_fp8_gemm_dense_m128n192_s5_p cublaslt
# PROFILE_CASE=NAME (e.g. 8192x8192x8192) profiles that case's first launch instead (the bench runs just it;
# our spin kernel, which holds the stream before a timed loop, is never counted).
# PROFILE_FULL=1: every section (--set full, with PC sampling) into $OUT/prof-<impl>.ncu-rep, and its
# per-instruction SASS table (stall samples and executed counts per instruction) into
# $OUT/sass-<impl>.csv and the stall-reason breakdown into $OUT/raw-<impl>.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
USAGE="gemm-profile.sh IMPL... (kernel names from the fp8-gemm bench, or cublaslt)"
source bench/gpu/lib/ncu-env.sh
status=0
for impl in "$@"; do
  if [ "$impl" = cublaslt ]; then only='^cublaslt$'; filter='regex:^(?!sh_spin)'; else only="^${impl}\$"; filter="regex:^${impl}\$"; fi
  if [ -n "${PROFILE_CASE:-}" ]; then skip=0; pick=(--case "$PROFILE_CASE"); else skip=3; pick=(); fi
  echo "== $impl"
  if [ "${PROFILE_FULL:-0}" = 1 ]; then sections=(--set full -o "$OUT/prof-$impl" -f); else
    sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy --section WarpStateStats --section SchedulerStats); fi
  timeout "${PROFILE_TIMEOUT_S:-300}" ncu --clock-control none --target-processes all -k "$filter" --launch-skip "$skip" --launch-count 1 \
    "${sections[@]}" "$NODE" "$GPU_DIR/fp8-gemm.mjs" --out "$OUT/profile-run" --shapes large "${pick[@]}" --no-peer --only "$only" > "$OUT/profile-$impl.txt" 2>&1
  rc=$?
  if [ "${PROFILE_FULL:-0}" = 1 ] && [ -s "$OUT/prof-$impl.ncu-rep" ]; then
    ncu -i "$OUT/prof-$impl.ncu-rep" --page source --print-source sass --csv > "$OUT/sass-$impl.csv" 2>&1
    ncu -i "$OUT/prof-$impl.ncu-rep" --page raw --csv > "$OUT/raw-$impl.csv" 2>&1
    ncu -i "$OUT/prof-$impl.ncu-rep" --page details > "$OUT/details-$impl.txt" 2>&1
    python3 "$(dirname "$0")/sass-stalls.py" "$OUT/sass-$impl.csv" > "$OUT/stalls-$impl.txt" 2>&1 && head -16 "$OUT/stalls-$impl.txt"
  fi
  [ "$rc" -ne 0 ] && status=$rc
  grep -E '^  [a-zA-Z_0-9]+.*\(|Throughput|Duration|Stall|Warp Cycles|Issued Warp|No Eligible|Active Warps' "$OUT/profile-$impl.txt" | head -40
done
exit $status
