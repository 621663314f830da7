"""PyTorch peer for shardts' FP8 quantize kernels: DeepGEMM-style 1x128 per-token and 128x128
per-block e4m3 quantization of a bf16 [R, C] tensor, and SwiGLU (also returning the bf16 value, or
not) / RMSNorm of x + residual (returning the sum) followed by a separate 1x128 quantize, in eager mode and under torch.compile. Prints one JSON line per measurement.

Run on the GPU machine:  python3 bench/peers/fp8_quant.py [--rows R] [--cols C]
Timing: CUDA events after warm-up, median of 30 repeats, two input buffers rotated, queued ahead
behind a spin kernel (timing.py queue_ahead) so that Python's launches are not timed, as the
executor's kernels are timed back to back.
"""
import argparse
import json

import torch

from timing import median_ms  # bench/peers/timing.py (python puts the script's folder on sys.path)




def quant_1x128(x):
    r, c = x.shape
    v = x.view(r, c // 128, 128).float()
    amax = v.abs().amax(dim=2, keepdim=True)
    inv = torch.where(amax == 0, torch.ones_like(amax), 448.0 / amax)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / 448.0)
    return (v * inv).to(torch.float8_e4m3fn).view(r, c), scale.view(r, c // 128)


def quant_128x128(x):
    r, c = x.shape
    v = x.view(r // 128, 128, c // 128, 128).float()
    amax = v.abs().amax(dim=(1, 3), keepdim=True)
    inv = torch.where(amax == 0, torch.ones_like(amax), 448.0 / amax)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / 448.0)
    return (v * inv).to(torch.float8_e4m3fn).view(r, c), scale.view(r // 128, c // 128)


def swiglu_quant(g, u):
    return quant_1x128(torch.nn.functional.silu(g) * u)


def swiglu_quant_h(g, u):
    h = torch.nn.functional.silu(g) * u
    return quant_1x128(h) + (h,)


def rmsnorm_residual_quant(x, res, w):
    h = x + res
    hf = h.float()
    y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()).to(torch.bfloat16)
    return quant_1x128(y) + (h,)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32768)
    ap.add_argument("--cols", type=int, default=4096)
    a = ap.parse_args()
    R, C = a.rows, a.cols
    dev = torch.cuda.get_device_name()
    mk = lambda: torch.randn(R, C, device="cuda", dtype=torch.bfloat16) * 2
    xs = [(mk(),), (mk(),)]
    pairs = [(mk(), mk()), (mk(), mk())]
    w = torch.rand(C, device="cuda", dtype=torch.bfloat16) + 0.5
    norm_in = [(x, r, w) for ((x,), (r, _)) in zip(xs, pairs)]
    n = 2 ** 30
    src, dst = torch.empty(n, dtype=torch.uint8, device="cuda"), torch.empty(n, dtype=torch.uint8, device="cuda")
    copy_ms = median_ms(lambda s, d: d.copy_(s), [(src, dst)], queue_ahead=True)
    print(json.dumps({"device": dev, "kernel": "copy", "impl": "torch", "ms": copy_ms, "bytes": 2 * n, "GBps": 2 * n / copy_ms / 1e6}), flush=True)
    # bytes each workload must move: bf16 in, e4m3 out, f32 scales
    q_bytes = R * C * 2 + R * C + (R * C // 128) * 4
    cases = {
        "quantize_1x128": (quant_1x128, xs, q_bytes),
        "quantize_128x128": (quant_128x128, xs, R * C * 2 + R * C + (R * C // 16384) * 4),
        "swiglu_quantize": (swiglu_quant, pairs, q_bytes + R * C * 2),
        "swiglu_quantize+h": (swiglu_quant_h, pairs, q_bytes + R * C * 4),
        "rmsnorm_residual_quantize": (rmsnorm_residual_quant, norm_in, q_bytes + R * C * 4 + C * 2),
    }
    for name, (fn, ins, nbytes) in cases.items():
        for impl, f in (("torch eager", fn), ("torch.compile", torch.compile(fn))):
            ms = median_ms(f, ins, queue_ahead=True)
            print(json.dumps({"device": dev, "kernel": name, "impl": impl, "ms": ms, "bytes": nbytes, "GBps": nbytes / ms / 1e6}), flush=True)


if __name__ == "__main__":
    main()
