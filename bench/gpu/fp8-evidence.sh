#!/usr/bin/env bash
# FP8 evidence on a Hopper GPU machine (after `npm run gpu:pack`; carry .gpu), writing under $OUT:
#   1. SASS of every FP8 GEMM kernel NVRTC compiled so far (run bench/gpu/fp8-gemm.ts first: its
#      cubins are in the disk cache): QGMMA count, local-memory loads/stores (LDL/STL);
#   2. the training example with the FP8 recipe against the same run without it, one GPU, same seed
#      and data: per-step losses and the final loss difference.
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/lib/gpu-env.sh
CACHE=${SHARDTS_CACHE_DIR:-$HOME/.cache/shardts}
STEPS=${STEPS:-30}

{
  echo "## SASS of the FP8 GEMM kernels in $CACHE (cuobjdump --dump-sass)"
  found=0
  for f in "$CACHE"/*.cubin; do
    [ -e "$f" ] || continue
    sass=$(cuobjdump --dump-sass "$f" 2>/dev/null) || continue
    name=$(grep -o 'Function : sh_fp8_gemm[A-Za-z0-9_]*' <<<"$sass" | head -1 | sed 's/Function : //')
    [ -n "$name" ] || continue
    found=$((found + 1))
    echo "$name: QGMMA $(grep -c QGMMA <<<"$sass"), HGMMA $(grep -c HGMMA <<<"$sass"), LDL $(grep -c 'LDL' <<<"$sass"), STL $(grep -c 'STL' <<<"$sass")"
  done
  [ "$found" -gt 0 ] || echo "no FP8 GEMM cubins in $CACHE (run the fp8-gemm bench first)"
} | tee "$OUT/fp8-sass.txt"

CLI=("$NODE" "$GPU_DIR/shardts-cli.mjs" run examples/train-moe-lm.ts --layout single --steps "$STEPS" --no-eval --backend cuda)
timeout 150 "${CLI[@]}" --fp8 --losses "$OUT/losses-fp8.json" > "$OUT/train-fp8.log" 2>&1; a=$?
timeout 150 "${CLI[@]}" --losses "$OUT/losses-nofp8.json" > "$OUT/train-nofp8.log" 2>&1; b=$?
echo "training: fp8 exit $a, without fp8 exit $b"
python3 - "$OUT" <<'PY' | tee "$OUT/fp8-train-vs-bf16.txt"
import json, sys, os
o = sys.argv[1]
f = json.load(open(os.path.join(o, "losses-fp8.json")))["losses"]; g = json.load(open(os.path.join(o, "losses-nofp8.json")))["losses"]
n = min(len(f), len(g)); tail = lambda x: sum(x[n - 5:n]) / 5
print(f"FP8 recipe vs without, {n} steps, one GPU, same seed and data")
print(f"final loss (mean of the last 5 steps): fp8 {tail(f):.4f}, without {tail(g):.4f}, relative difference {abs(tail(f) - tail(g)) / tail(g):.3%}")
print(f"largest per-step relative difference: {max(abs(a - b) / b for a, b in zip(f[:n], g[:n])):.3%}")
print("fp8    ", " ".join(f"{x:.3f}" for x in f[:n]))
print("without", " ".join(f"{x:.3f}" for x in g[:n]))
PY
