#!/usr/bin/env bash
# Multi-GPU checks on a machine with N >= 2 GPUs (nvidia-h200-x2 today): `npm run gpu:pack` first,
# carry .gpu/, then `bash bench/gpu/multi-gpu.sh`. Writes everything under $OUT and prints a summary.
#   1. collectives: shardts (plan path, NCCL) vs torch.distributed, 8/64/256 MiB per rank, bus GB/s
#   2. the MoE layer example rank-local on N GPUs, checked against the one-device CPU run
#   3. train-moe-lm 20 steps per layout on N GPUs vs the CPU-simulated run of the same mesh and seed
#      (every layout whose mesh fits: dp, fsdp, tp, ep; with 4 GPUs also hsdp, dp-ep, fsdp-tp, fsdp-ep)
#   4. faults: one rank throws mid-step; one rank hangs before a collective (timeout 20 s)
#   5. train-moe-lm (fsdp-ep) tokens/s against the PyTorch FSDP2 + expert-parallel peer, same job
#   6. a traced FSDP step: comm spans against compute spans, prefetch on and off
# Stages 3 (its layout list), 5 and 6 live in bench/gpu/multi-gpu-stages.sh. SKIP="5 6" leaves stages
# out, ONLY="5 6" runs just those.
set -uo pipefail
cd "$(dirname "$0")/../.."
GPU_DIR=${GPU_DIR:-.gpu}
OUT=${OUT:-$GPU_DIR/out}; mkdir -p "$OUT"
N=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
NODE=${NODE:-/tmp/node}
[ -x "$NODE" ] || { xz -dc "$GPU_DIR/node.xz" > "$NODE" && chmod +x "$NODE"; }
CLI=("$NODE" "$GPU_DIR/shardts-cli.mjs")
summary=()
note() { summary+=("$1"); echo "== $1"; }
# SKIP="5 6": leave those stages out; ONLY="5 6": run just those (a GPU call is limited to 10 minutes)
skip() { [[ " ${SKIP:-} " == *" $1 "* ]] || { [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $1 "* ]]; }; }
source bench/gpu/multi-gpu-stages.sh

# 1. collectives
if ! skip 1; then
timeout 110 "${CLI[@]}" launch --nproc-per-node "$N" bench/gpu/lib/dist-collectives.ts --json "$OUT/collectives-shardts.jsonl" > "$OUT/collectives-shardts.log" 2>&1
rc=$?; note "collectives shardts: exit $rc"
timeout 100 python3 -m torch.distributed.run --nproc-per-node "$N" bench/peers/collectives.py --json "$OUT/collectives-torch.jsonl" > "$OUT/collectives-torch.log" 2>&1
rc=$?; note "collectives torch: exit $rc"
python3 - "$OUT" > "$OUT/collectives-ratio.txt" <<'PY'
import json, sys, os
o = sys.argv[1]
def load(f):
    p = os.path.join(o, f)
    return {(r["op"], r["mibPerRank"]): r for r in map(json.loads, open(p))} if os.path.exists(p) else {}
s, t = load("collectives-shardts.jsonl"), load("collectives-torch.jsonl")
# raw: the same NCCL calls without the plan step, on the axis communicator (split from the world) and
# on the world communicator itself; ms ratios against torch's time (>1: slower than torch)
print(f"{'op':16}{'MiB/rank':>9}{'shardts GB/s':>14}{'torch GB/s':>12}{'ratio':>8}{'raw/torch t':>12}{'world/torch t':>14}{'issue us':>9}  check")
nan = float("nan")
for k in sorted(set(s) | set(t)):
    a, b = s.get(k, {}), t.get(k, {})
    r = a.get("busGBs", 0) / b["busGBs"] if a and b and b.get("busGBs") else nan
    tr = lambda f: a[f] / b["ms"] if a.get(f) and b.get("ms") else nan
    print(f"{k[0]:16}{k[1]:>9}{a.get('busGBs', nan):>14}{b.get('busGBs', nan):>12}{r:>8.3f}{tr('rawMs'):>12.3f}{tr('rawWorldMs'):>14.3f}{a.get('issueUs', nan):>9}  {a.get('check', 'missing')}")
PY
cat "$OUT/collectives-ratio.txt"
fi

# 2. the MoE layer, one rank per GPU, checked against one device
if ! skip 2; then
timeout 60 "${CLI[@]}" launch --nproc-per-node "$N" examples/moe-layer.ts --backend cuda --mesh dp=1,ep=$N > "$OUT/moe-layer.log" 2>&1
rc=$?; note "moe-layer ep=$N rank-local vs one-device CPU: exit $rc ($(grep -c ' ok' "$OUT/moe-layer.log") ok lines, $(grep -c FAIL "$OUT/moe-layer.log") FAIL)"
fi

# 3. per-layout training equivalence (20 steps): N GPUs vs the CPU-simulated run of the same mesh and
#    seed. The CPU runs go in the background (one core each) while the GPU runs take their turn.
if ! skip 3; then
# ---- stage 3 layouts (stage_layouts in multi-gpu-stages.sh: every layout whose mesh fits on N) ----
declare -A MESH_OF=()
layouts=()
while read -r name mesh; do layouts+=("$name"); MESH_OF[$name]=$mesh; done < <(stage_layouts)
mesh_of() { echo "${MESH_OF[$1]}"; }
# ---- end stage 3 layouts ----
pids=()
for layout in "${layouts[@]}"; do
  timeout 200 "${CLI[@]}" run examples/train-moe-lm.ts --layout $layout --mesh "$(mesh_of $layout)" --steps 20 --no-eval --backend cpu --losses "$OUT/losses-$layout-cpu.json" > "$OUT/train-$layout-cpu.log" 2>&1 &
  pids+=($!)
done
for layout in "${layouts[@]}"; do
  t0=$(date +%s)
  timeout 80 "${CLI[@]}" launch --nproc-per-node "$N" examples/train-moe-lm.ts --layout $layout --mesh "$(mesh_of $layout)" --steps 20 --no-eval --backend cuda --losses "$OUT/losses-$layout-gpu.json" > "$OUT/train-$layout-gpu.log" 2>&1
  rc=$?; note "train $layout ($(mesh_of $layout)) on $N GPUs: exit $rc in $(( $(date +%s) - t0 )) s"
done
for p in "${pids[@]}"; do wait "$p"; done
python3 - "$OUT" "${layouts[@]}" > "$OUT/train-equivalence.txt" <<'PY'
import json, sys, os
o, layouts = sys.argv[1], sys.argv[2:]
print(f"{'layout':8}{'steps':>6}{'max rel diff (GPU vs CPU sim)':>32}  first loss gpu / cpu")
for l in layouts:
    try:
        g = json.load(open(os.path.join(o, f"losses-{l}-gpu.json"))); c = json.load(open(os.path.join(o, f"losses-{l}-cpu.json")))
        n = min(len(g["losses"]), len(c["losses"]))
        d = max(abs(a - b) / abs(b) for a, b in zip(g["losses"][:n], c["losses"][:n]))
        print(f"{l:8}{n:>6}{d:>32.3e}  {g['losses'][0]:.5f} / {c['losses'][0]:.5f}   ({g['layout']})")
    except Exception as e:
        print(f"{l:8} missing: {e}")
PY
cat "$OUT/train-equivalence.txt"
[ "$N" -ge 4 ] || note "hsdp (replica x shard) needs 4 GPUs for a non-degenerate mesh: not run on $N"
fi

# 4. faults
if ! skip 4; then
t0=$(date +%s)
timeout 60 "${CLI[@]}" launch --nproc-per-node "$N" bench/gpu/lib/dist-fault.ts --throw-rank 1 > "$OUT/fault-throw.log" 2>&1
rc=$?; note "fault throw: exit $rc in $(( $(date +%s) - t0 )) s; $(grep -o 'shardts launch: rank [0-9]* [a-z ]*' "$OUT/fault-throw.log" | head -1); left behind: $(pgrep -fc shardts-cli.mjs || true)"
t0=$(date +%s)
SHARDTS_COLLECTIVE_TIMEOUT_S=20 timeout 90 "${CLI[@]}" launch --nproc-per-node "$N" bench/gpu/lib/dist-fault.ts --hang-rank 1 > "$OUT/fault-hang.log" 2>&1
rc=$?; note "fault hang: exit $rc in $(( $(date +%s) - t0 )) s; $(grep -o 'CollectiveTimeoutError: [^.]*' "$OUT/fault-hang.log" | head -1); left behind: $(pgrep -fc shardts-cli.mjs || true)"
fi

# ---- stage 5: train-moe-lm vs PyTorch FSDP2 + EP (multi-gpu-stages.sh) ----
skip 5 || stage_moe_lm_vs_torch
# ---- stage 6: FSDP prefetch, traced (multi-gpu-stages.sh) ----
skip 6 || stage_fsdp_prefetch

echo; echo "== summary"; printf '%s\n' "${summary[@]}" | tee "$OUT/multi-gpu-summary.txt"
