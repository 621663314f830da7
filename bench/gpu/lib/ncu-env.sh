# Sourced (from the repository root, with the caller's arguments) by the Nsight Compute scripts
# (bench/gpu/gemm-profile.sh, quant-profile.sh) after they set USAGE: gpu-env.sh, then ncu on the PATH
# and at least one name to profile, else exit 2 saying which is missing.
source bench/gpu/lib/gpu-env.sh
command -v ncu >/dev/null || { echo "$(basename "$0" .sh): ncu (Nsight Compute) is not on this machine's PATH" >&2; exit 2; }
[ $# -gt 0 ] || { echo "usage: $USAGE" >&2; exit 2; }
