"""PyTorch peer of shardts' MoE layer benchmark (bench/gpu/moe-layer.ts): the same forward in bf16
(router GEMM, softmax, top-k, gate normalisation, sort by expert, gather rows, per-expert SwiGLU,
gate-weighted scatter back) at DeepSeek-V2-Lite size: 8192 tokens, d=2048, expert ffn 1408,
64 experts, top-6. Two expert implementations: a per-expert loop of matmuls, and torch._grouped_mm
over the contiguous per-expert segments. Prints one JSON line per implementation.

Run on the GPU machine:  python3 bench/peers/moe_layer.py [--backward] [--out FILE]
--backward: the training step instead (bench/gpu/moe-graph.ts): the forward with gradients, then
y.backward(dy), gradients of x, router, w1, w3, w2.
Timing: CUDA events around the whole forward (and backward) after warm-up, median of 20; random inputs.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

T, D, FF, E, K = 8192, 2048, 1408, 64, 6


def route(x, router):
    scores = torch.softmax((x @ router).float(), dim=-1)
    vals, idx = torch.topk(scores, K, dim=-1)
    gate = vals / vals.sum(-1, keepdim=True)
    flat = idx.flatten()
    order = torch.argsort(flat, stable=True)
    token = order // K
    counts = torch.bincount(flat, minlength=E)
    return gate.flatten()[order], token, counts


def combine(out, weight, token):
    y = torch.zeros(T, D, device=out.device, dtype=torch.float32)
    y.index_add_(0, token, (out.float() * weight[:, None]))
    return y.to(torch.bfloat16)


def loop_forward(x, router, w1, w3, w2):
    weight, token, counts = route(x, router)
    rows = x[token]
    outs, start = [], 0
    for e, c in enumerate(counts.tolist()):
        r = rows[start:start + c]
        h = F.silu(r @ w1[e]) * (r @ w3[e])
        outs.append(h @ w2[e])
        start += c
    return combine(torch.cat(outs), weight, token)


def grouped_forward(x, router, w1, w3, w2):
    weight, token, counts = route(x, router)
    rows = x[token]
    offs = torch.cumsum(counts, 0).to(torch.int32)
    h = F.silu(torch._grouped_mm(rows, w1, offs=offs)) * torch._grouped_mm(rows, w3, offs=offs)
    return combine(torch._grouped_mm(h, w2, offs=offs), weight, token)


def median_ms(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--backward", action="store_true", help="forward + backward from a random dy")
    ap.add_argument("--profile", action="store_true", help="with --backward: print the grouped step's largest CUDA kernels")
    a = ap.parse_args()
    torch.manual_seed(0)
    dev, bf = torch.device("cuda"), torch.bfloat16
    x = torch.randn(T, D, device=dev, dtype=bf)
    router = torch.randn(D, E, device=dev, dtype=bf) / D ** 0.5
    w1 = torch.randn(E, D, FF, device=dev, dtype=bf) / D ** 0.5
    w3 = torch.randn(E, D, FF, device=dev, dtype=bf) / D ** 0.5
    w2 = torch.randn(E, FF, D, device=dev, dtype=bf) / FF ** 0.5
    results = []
    if a.backward:
        dy = torch.randn(T, D, device=dev, dtype=bf)
        params = [x, router, w1, w3, w2]
        for p in params:
            p.requires_grad_(True)
        for impl, fn in [("per-expert loop", loop_forward), ("torch._grouped_mm", grouped_forward)]:
            def step():
                for p in params:
                    p.grad = None
                fn(*params).backward(dy)
            try:
                ms = median_ms(step)
                r = {"device": torch.cuda.get_device_name(), "impl": impl, "ms": round(ms, 3), "backward": True}
                if a.profile and impl == "torch._grouped_mm":
                    profile(step)
            except Exception as e:  # report, don't hide the other implementation's number
                r = {"device": torch.cuda.get_device_name(), "impl": impl, "error": str(e)[:500]}
            results.append(r)
            print(json.dumps(r), flush=True)
        write(a.out, results)
        return
    ref = loop_forward(x, router, w1, w3, w2)
    for impl, fn in [("per-expert loop", loop_forward), ("torch._grouped_mm", grouped_forward)]:
        try:
            with torch.no_grad():
                y = fn(x, router, w1, w3, w2)
                err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
                ms = median_ms(lambda: fn(x, router, w1, w3, w2))
            r = {"device": torch.cuda.get_device_name(), "impl": impl, "ms": round(ms, 3), "relErrVsLoop": err}
        except Exception as e:  # report, don't hide the other implementation's number
            r = {"device": torch.cuda.get_device_name(), "impl": impl, "error": str(e)[:500]}
        results.append(r)
        print(json.dumps(r), flush=True)
    write(a.out, results)


def profile(step):
    """The largest CUDA kernels of one step (torch.profiler), printed to stdout."""
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60), flush=True)


def write(out, results):
    if out:
        with open(out, "w") as f:
            for r in results:
                if "ms" in r:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
