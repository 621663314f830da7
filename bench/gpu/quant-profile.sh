#!/usr/bin/env bash
# Hardware counters of the standalone FP8 quantize kernels on a Hopper machine with Nsight Compute (after
# `npm run gpu:pack`; carry .gpu). For each kernel name given, ncu profiles its second launch in
# `fp8-quant --kernels-only` (bf16 [32768, 4096]: the same launches the bench times) and writes the
# Speed-of-Light, memory, occupancy, warp-state and scheduler sections to $OUT/qprofile-<kernel>.txt.
# Clocks are left alone (--clock-control none, as the device notes ask).
#   bash bench/gpu/quant-profile.sh shardts_wgrad_cols_bf16 shardts_quant_tiles_block_t_bf16
set -uo pipefail
cd "$(dirname "$0")/../.."
USAGE="quant-profile.sh KERNEL... (names as in the fp8-quant bench's kernels)"
source bench/gpu/lib/ncu-env.sh
status=0
for k in "$@"; do
  echo "== $k"
  timeout "${PROFILE_TIMEOUT_S:-240}" ncu --clock-control none -k "regex:^${k}\$" --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
    "$NODE" "$GPU_DIR/fp8-quant.mjs" --out "$OUT/qprofile-run" --kernels-only > "$OUT/qprofile-$k.txt" 2>&1
  rc=$?
  [ "$rc" -ne 0 ] && status=$rc
  grep -E 'Throughput|Duration|Stall|Warp Cycles|Issued Warp|No Eligible|Active Warps|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Bank|Sectors|L2 Hit|Mem Busy|Max Bandwidth|Mem Pipes' "$OUT/qprofile-$k.txt" | head -45
done
exit $status
