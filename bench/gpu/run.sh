#!/usr/bin/env bash
# Runs the bundled GPU entry points on a GPU machine (which has no Node): first `npm run gpu:pack`
# where Node is, carry .gpu/ along, then here:
#
#   bash bench/gpu/run.sh                 every .gpu/*.mjs
#   bash bench/gpu/run.sh native-check    just that one
#   GPU_ARGS="--only X --shapes large" bash bench/gpu/run.sh fp8-gemm    extra flags for the entries
#                                         (split on whitespace, passed to each one run)
#
# Results go to $OUT (default .gpu/out): each entry writes its own result files there, its console
# output goes to <name>.log (ending with the SM clock and power summary of lib/clocks.py over the
# samples in <name>-clocks.csv), and run-info.txt records the date, the machine, the libraries found and
# the exact commands. Exit status: 0 when every entry passed.
set -uo pipefail
cd "$(dirname "$0")/../.."
GPU_DIR=$(cd "${GPU_DIR:-.gpu}" 2>/dev/null && pwd || echo "${GPU_DIR:-.gpu}")
requested=("$@")
OUT=${OUT:-$GPU_DIR/out}
mkdir -p "$OUT"
info="$OUT/run-info.txt"

# NVLink multicast stays off on shared machines (see the device notes); harmless elsewhere.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

if [ ! -s "$GPU_DIR/node.xz" ] || [ ! -s "$GPU_DIR/shardts_native.node" ]; then
  echo "run.sh: $GPU_DIR/node.xz or $GPU_DIR/shardts_native.node is missing: run npm run gpu:pack first and carry .gpu" >&2
  exit 2
fi
NODE=${NODE:-/tmp/node}
if [ ! -x "$NODE" ]; then
  xz -dc "$GPU_DIR/node.xz" > "$NODE" && chmod +x "$NODE" || { echo "run.sh: cannot unpack node" >&2; exit 2; }
fi

{
  echo "date      $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host      $(uname -srm)"
  echo "node      $("$NODE" --version)"
  echo "commit    $(grep -o '"commit": *"[^"]*"' "$GPU_DIR/build-info.json" 2>/dev/null | cut -d'"' -f4) (dirty: $(grep -o '"dirty": *[a-z]*' "$GPU_DIR/build-info.json" 2>/dev/null | awk '{print $2}'))"
  echo "gpus      $(nvidia-smi -L 2>/dev/null | tr '\n' ';' || echo 'nvidia-smi not available')"
  echo "driver    $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
} > "$info"

# Each library is looked for by the addon's own search (override, CUDA_HOME, CUDA_PATH,
# /usr/local/cuda, the loader path). Where that finds nothing, look for it on this machine (a Python
# environment's nvidia-* packages often carry NCCL, NVRTC and cuBLASLt) and pass it as the override.
probe() {
  SHARDTS_NATIVE_ADDON="$GPU_DIR/shardts_native.node" "$NODE" -e \
    "const a=require(process.env.SHARDTS_NATIVE_ADDON); const s=a.probe('$1'); console.log(s.ok ? s.version + ' ' + s.path : 'not found'); process.exit(s.ok ? 0 : 1)"
}
while read -r lib var pattern; do
  if found=$(probe "$lib" 2>&1); then
    echo "lib       $lib: $found" >> "$info"
  else
    hit=$(find /usr/local /opt /usr/lib /usr/lib64 -name "$pattern" \( -type f -o -type l \) 2>/dev/null | grep -v /stubs/ | sort -r | head -1)
    if [ -n "$hit" ]; then
      export "$var=$hit"
      echo "lib       $lib: not on the standard search path; using $var=$hit" >> "$info"
    else
      echo "lib       $lib: NOT FOUND on this machine ($found)" >> "$info"
    fi
  fi
done <<'LIBS'
cuda SHARDTS_LIBCUDA libcuda.so.1
nvrtc SHARDTS_NVRTC libnvrtc.so.1[23]
cublasLt SHARDTS_CUBLASLT libcublasLt.so.1[23]
nccl SHARDTS_NCCL libnccl.so.2
LIBS

if [ ${#requested[@]} -gt 0 ]; then names=("${requested[@]}"); else names=(); for f in "$GPU_DIR"/*.mjs; do names+=("$(basename "$f" .mjs)"); done; fi
status=0
for name in "${names[@]}"; do
  read -r -a extra <<< "${GPU_ARGS:-}"
  cmd=("$NODE" "$GPU_DIR/$name.mjs" --out "$OUT" "${extra[@]}")
  echo "command   ${cmd[*]}" >> "$info"
  echo "== $name: ${cmd[*]}"
  # the SM clock, power and what held the clock back, 5 samples a second while the entry runs
  clocks="$OUT/$name-clocks.csv"
  nvidia-smi --query-gpu="$(python3 bench/gpu/lib/clocks.py --fields)" \
    --format=csv,noheader,nounits -lms 200 > "$clocks" 2>/dev/null &
  sampler=$!
  "${cmd[@]}" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  python3 bench/gpu/lib/clocks.py "$clocks" 2>&1 | tee -a "$OUT/$name.log"
  echo "exit      $name: $rc" >> "$info"
  [ "$rc" -ne 0 ] && status=$rc
done
echo
cat "$info"
exit $status
