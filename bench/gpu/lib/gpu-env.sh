# Sourced (from the repository root) by the scripts that run on a GPU machine (bench/gpu/*.sh): the
# packed bundle's folder (GPU_DIR, default .gpu), the results folder (OUT, default $GPU_DIR/out, made
# here), Node unpacked from $GPU_DIR/node.xz (NODE, default /tmp/node), and NVLink multicast off in
# NCCL, PyTorch and NVSHMEM (the device notes say why). bench/gpu/run.sh does the same and more.
GPU_DIR=${GPU_DIR:-.gpu}
OUT=${OUT:-$GPU_DIR/out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
NODE=${NODE:-/tmp/node}
if [ ! -x "$NODE" ]; then
  xz -dc "$GPU_DIR/node.xz" > "$NODE" && chmod +x "$NODE" || { echo "$(basename "$0"): cannot unpack $GPU_DIR/node.xz: run npm run gpu:pack here and carry .gpu" >&2; exit 2; }
fi
