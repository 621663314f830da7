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
#   7. MoE dispatch/combine ops: GPUs vs the CPU-simulated mesh (random/skewed/empty routings, forward
#      and gradients; the NVLink transport bit for bit against NCCL), then dispatch/combine GB/s of both
#      transports against torch.distributed (permute + count exchange + all_to_all_single) and plain
#      all_to_all_single at the same bytes
#   8. checkpoints (ckpt_stage): save/load of the trained MoE LM and a bulk state, GB/s, async overhead
#   9. two-micro-batch overlap: train-moe-lm --size overlap (ep=N) step time, micro-batches 1 and 2,
#      against compute-only (ep=1, batch / N, one GPU) and comm-only (the traced comm stream); Chrome traces
#  10. the EP MoE layer (DeepSeek-V2-Lite size, fwd+bwd, ep=N): GPUs vs the CPU-simulated mesh, then ms per
#      step against the PyTorch peer (all_to_all_single + torch._grouped_mm) and the ratio; MOE_LAYER_FP8=1 adds FP8,
#      MOE_LAYER_FP8_ROUTED=1 FP8 routed experts with bf16 shared ones (rows fp8r),
#      MOE_LAYER_TRANSPORT=nvlink MOE_LAYER_GRAPH=1 each rank's step captured as a CUDA graph (checked, then timed),
#      MOE_LAYER_STREAMS=comm,compute the timing once per place of the NVLink kernels (beside compute, in line)
#  11. redundant experts: train-moe-lm --size overlap --no-balance on ep=N, ms/step and expert load with and
#      without --redundant 4
# Stages 3 (its layout list), 5, 6, 9, 10 and 11 live in bench/gpu/multi-gpu-stages.sh. SKIP="5 6" leaves stages
# out, ONLY="5 6" runs just those.
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/lib/gpu-env.sh
N=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
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
import sys
sys.path.insert(0, "bench/gpu/lib")
from results import rows
o = sys.argv[1]
load = lambda f: {(r["op"], r["mibPerRank"]): r for r in rows(o, f)}
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


if ! skip 7; then
# 7. MoE dispatch/combine: checks and GB/s, shardts then torch in the same run
timeout 600 "${CLI[@]}" launch --nproc-per-node "$N" bench/gpu/lib/dist-moe-dispatch.ts --json "$OUT/moe-dispatch-shardts.jsonl" > "$OUT/moe-dispatch-shardts.log" 2>&1
rc=$?; note "moe dispatch shardts: exit $rc ($(grep -c ': ok' "$OUT/moe-dispatch-shardts.log") checks ok, $(grep -c FAIL "$OUT/moe-dispatch-shardts.log") FAIL lines)"
timeout 300 python3 -m torch.distributed.run --nproc-per-node "$N" bench/peers/moe_dispatch.py --json "$OUT/moe-dispatch-torch.jsonl" > "$OUT/moe-dispatch-torch.log" 2>&1
rc=$?; note "moe dispatch torch: exit $rc"
python3 - "$OUT" > "$OUT/moe-dispatch-ratio.txt" <<'PY'
import sys
sys.path.insert(0, "bench/gpu/lib")
from results import rows
o = sys.argv[1]
load = lambda f: {(r["tokens"], r["d"], r["k"], r.get("fmt", "bf16"), r.get("transport", "-")): r for r in rows(o, f, "time")}
s, t = load("moe-dispatch-shardts.jsonl"), load("moe-dispatch-torch.jsonl")
t = {k[:4]: v for k, v in t.items()}
nan = float("nan")
print("GB/s of dispatched payload per GPU (tokens x k x 2d bytes; fp8: d + 4d/128); x = shardts / torch (time ratio torch / shardts); one row per shardts transport")
print(f"{'tokens':>6}{'d':>6}{'k':>3}{'fmt':>5}{'via':>7} | {'dispatch sh':>11}{'torch':>8}{'x':>6} | {'combine sh':>10}{'torch':>8}{'x':>6} | {'round trip ms sh':>16}{'torch':>8}{'x':>6} | {'plain a2a':>9}{'disp/plain':>11}")
for k in sorted(s):
    a, b = s.get(k, {}), t.get(k[:4], {})
    r = lambda x, y: (x / y) if x and y and x == x and y == y else nan
    print(f"{k[0]:>6}{k[1]:>6}{k[2]:>3}{k[3]:>5}{k[4]:>7} | {a.get('dispatchGBs', nan):>11}{b.get('dispatchGBs', nan):>8}{r(b.get('dispatchMs'), a.get('dispatchMs')):>6.2f} | "
          f"{a.get('combineGBs', nan):>10}{b.get('combineGBs', nan):>8}{r(b.get('combineMs'), a.get('combineMs')):>6.2f} | "
          f"{a.get('roundTripMs', nan):>16}{b.get('roundTripMs', nan):>8}{r(b.get('roundTripMs'), a.get('roundTripMs')):>6.2f} | "
          f"{b.get('plainA2aGBs', nan):>9}{r(a.get('dispatchGBs'), b.get('plainA2aGBs')):>11.2f}" + ("" if a and "error" not in a else f"  shardts: {a.get('error', 'missing')}"))
print("target (issue 7): round trip x >= 1.3")
PY
cat "$OUT/moe-dispatch-ratio.txt"
fi

# --- stage: checkpoints (issue 8) --------------------------------------------------------------
# The MoE LM trained rank-local on N GPUs, its state saved (each rank its own pieces, rank 0 commits)
# and loaded back; a 1 GiB-per-rank bulk state saved from GPU memory (device -> pinned -> background
# write) and loaded on the same and on a resharded layout, with GB/s per rank and in total; step time
# with and without a save in flight. Then Python reads rank 0's file of each checkpoint
# (bench/peers/read_safetensors.py: the safetensors package, else torch) against metadata.json.
ckpt_stage() {
  local ck=${CKPT_DIR:-/tmp/shardts-ckpt-bench} t0 rc
  t0=$(date +%s)
  SHARDTS_COLLECTIVE_TIMEOUT_S=60 timeout 420 "${CLI[@]}" launch --nproc-per-node "$N" bench/gpu/lib/dist-checkpoint.ts --backend cuda \
    --results "$OUT/ckpt" --ckpt-dir "$ck" --layout ep --steps 8 --bulk-mib "${CKPT_BULK_MIB:-1024}" > "$OUT/ckpt.log" 2>&1
  rc=$?; note "checkpoints on $N GPUs: exit $rc in $(( $(date +%s) - t0 )) s; $(tail -1 "$OUT/ckpt/summary.txt" 2>/dev/null || echo 'no summary')"
  mkdir -p "$OUT/ckpt"
  for which in train bulk; do
    timeout 120 python3 bench/peers/read_safetensors.py "$ck/$which" --rank 0 --json "$OUT/ckpt/python-$which.json" > "$OUT/ckpt-python-$which.log" 2>&1
    rc=$?; note "checkpoint $which rank-0 file read by Python: exit $rc; $(head -1 "$OUT/ckpt-python-$which.log" | sed 's/.* with //'); $(tail -1 "$OUT/ckpt-python-$which.log")"
  done
  cat "$OUT/ckpt/summary.txt" 2>/dev/null
  rm -rf "$ck"
}
skip 8 || ckpt_stage
# --- end of stage: checkpoints -------------------------------------------------------------------

# 9. two-micro-batch overlap
skip 9 || stage_moe_overlap
# 10. the EP MoE layer against the PyTorch peer
skip 10 || stage_moe_layer_ep
# 11. redundant experts: step time and load with and without replicas
skip 11 || stage_redundant

echo; echo "== summary"; printf '%s\n' "${summary[@]}" | tee "$OUT/multi-gpu-summary.txt"
