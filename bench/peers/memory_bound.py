"""PyTorch peers for shardts' fused memory-bound kernels (issue 4): RMSNorm(+residual), SwiGLU,
softmax and cross-entropy, in eager mode and under torch.compile, plus the device copy bandwidth
they are measured against. Prints one JSON line per measurement and a table at the end.

Run on the GPU machine:  python3 bench/peers/memory_bound.py [--quick] [--out FILE]
Timing: CUDA events around each call after warm-up, median of many repeats, inputs rotated among
several buffers so the 50-60 MB L2 cannot serve repeats; inputs are random, never zeros. Every call is
queued ahead behind a spin kernel (timing.py queue_ahead), so the events time the GPU's kernels and not
Python's launches, as shardts' kernels are timed (launched back to back); before 2026-11-23 (eighth
session) each call was synchronized and its launch counted against torch.
"""
import argparse
import json
import sys

import torch

from timing import median_ms  # bench/peers/timing.py (python puts the script's folder on sys.path)
import torch.nn.functional as F




def rmsnorm_residual(x, res, w, eps=1e-6):
    h = x + res
    hf = h.float()
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    return y.to(x.dtype), h


def swiglu(gate, up):
    return F.silu(gate.float()).mul(up.float()).to(gate.dtype)


def softmax(x):
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


def cross_entropy(logits, targets):
    return F.cross_entropy(logits.float(), targets, reduction="none")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller tensors (a smoke run, not for the report)")
    ap.add_argument("--out", help="also write the JSON lines here")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    rows = 4096 if a.quick else 32768  # 32768 x 4096 bf16 = 256 MiB per tensor
    cols, bf = 4096, torch.bfloat16
    n_sets = 3
    results = []

    def emit(kernel, impl, ms, nbytes):
        r = {"device": name, "kernel": kernel, "impl": impl, "ms": round(ms, 4), "bytes": nbytes, "GBps": round(nbytes / ms / 1e6, 1)}
        results.append(r)
        print(json.dumps(r), flush=True)

    # copy bandwidth: bytes read + bytes written
    big = [torch.randn(rows * cols * 2, device=dev, dtype=bf) for _ in range(n_sets)]
    dst = torch.empty_like(big[0])
    emit("copy", "torch", median_ms(lambda s: dst.copy_(s), [(b,) for b in big], queue_ahead=True), 2 * big[0].numel() * 2)
    del big, dst

    cases = {
        # name: (fn, make inputs, bytes moved at the minimum)
        "rmsnorm_residual": (rmsnorm_residual, lambda: (torch.randn(rows, cols, device=dev, dtype=bf), torch.randn(rows, cols, device=dev, dtype=bf), torch.rand(cols, device=dev, dtype=bf) + 0.5), 4 * rows * cols * 2),
        "swiglu": (swiglu, lambda: (torch.randn(rows, cols, device=dev, dtype=bf), torch.randn(rows, cols, device=dev, dtype=bf)), 3 * rows * cols * 2),
        "softmax": (softmax, lambda: (torch.randn(rows, cols, device=dev, dtype=bf) * 3,), 2 * rows * cols * 2),
        "cross_entropy": (cross_entropy, lambda: (torch.randn(rows, cols, device=dev, dtype=bf) * 3, torch.randint(0, cols, (rows,), device=dev)), rows * cols * 2 + rows * 12),
    }
    for kernel, (fn, make, nbytes) in cases.items():
        inputs = [make() for _ in range(n_sets)]
        emit(kernel, "torch-eager", median_ms(fn, inputs, queue_ahead=True), nbytes)
        compiled = torch.compile(fn)
        emit(kernel, "torch-compile", median_ms(compiled, inputs, queue_ahead=True), nbytes)
        del inputs
        torch.cuda.empty_cache()

    if a.out:
        with open(a.out, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    print(f"\n{'kernel':<18} {'impl':<14} {'ms':>8} {'GB/s':>8}", file=sys.stderr)
    for r in results:
        print(f"{r['kernel']:<18} {r['impl']:<14} {r['ms']:>8.3f} {r['GBps']:>8.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
