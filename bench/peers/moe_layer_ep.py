"""PyTorch peer of shardts' EP MoE layer benchmark (bench/gpu/lib/dist-moe-layer.ts, multi-gpu.sh
stage 10): one DeepSeek-V2-Lite-sized MoE layer per GPU, forward and backward, expert-parallel over
all N ranks, bf16: 8192 tokens per GPU, d 2048, 64 experts of ffn 1408 (64/N per rank), top-6 over
softmax scores (router GEMM in bf16, softmax in f32), gates renormalised over the picks, 2 shared
SwiGLU experts of ffn 1408 as dense matmuls.

EP the usual way: sort the (token, k) slots by expert, exchange per-expert counts with
all_to_all_single, move the rows with all_to_all_single (uneven splits, read to the host), regroup
the received rows by local expert, run the experts with torch._grouped_mm, undo the regrouping, the
return all_to_all_single, and the gate-weighted sum of each token's k rows (a [1,k]x[k,d] bmm).
The loss is sum(y * dy) over every rank's tokens: y.backward(dy), then the replicated weights'
gradients (router, shared experts) are all-reduced, as shardts' plan does.

Self-check first (small size, f32 reference): on every rank the EP forward, input gradient, router
and shared gradients, and this rank's expert-weight gradients equal a dense single-process
computation with every expert (weights all-gathered, tokens of all ranks). Then the timing: CUDA
events around a whole step (forward, backward, the all-reduces) after warm-up, median of --reps,
two input sets alternated. Rank 0 prints one JSON line per result and writes them to --json FILE.
    python3 -m torch.distributed.run --nproc-per-node N bench/peers/moe_layer_ep.py --json out.jsonl
"""
import argparse, json, os, statistics

import torch
import torch.distributed as dist
import torch.nn.functional as F


class AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits; the gradient goes back the transposed way."""
    @staticmethod
    def forward(ctx, x, out_splits, in_splits):
        ctx.splits = (out_splits, in_splits)
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits)
        return out

    @staticmethod
    def backward(ctx, g):
        out_splits, in_splits = ctx.splits
        gi = g.new_empty((sum(in_splits),) + tuple(g.shape[1:]))
        dist.all_to_all_single(gi, g.contiguous(), in_splits, out_splits)
        return gi, None, None


def route(x, router, K):
    logits = x @ router
    if logits.dtype != torch.bfloat16:  # the f32 reference: the bf16 GEMM's rounding, so top-k picks the same experts
        logits = logits + (logits.to(torch.bfloat16).float() - logits).detach()
    scores = torch.softmax(logits.float(), dim=-1)
    idx = torch.topk(scores.detach(), K, dim=-1).indices
    picked = scores.gather(1, idx)
    return idx, (picked / picked.sum(-1, keepdim=True)).to(x.dtype)


def shared_out(x, shared):
    return sum((F.silu(x @ s1) * (x @ s3)) @ s2 for s1, s3, s2 in shared)


def moe_ep(x, router, w1, w3, w2, shared, E, K, W):
    """x [T, d] this rank's tokens; w1/w3/w2 this rank's E/W experts."""
    T, El = x.shape[0], E // W
    idx, gate = route(x, router, K)
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)  # slots sorted by expert, so by destination rank
    counts = torch.bincount(flat, minlength=E)
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts)  # [source rank, local expert]
    send, recv = torch.stack([counts.view(W, El).sum(1), recv_counts.view(W, El).sum(1)]).tolist()
    got = AllToAll.apply(x[order // K], recv, send)  # grouped by source rank, then local expert
    rc = recv_counts.view(W, El)
    expert_of = torch.repeat_interleave(torch.arange(El, device=x.device).repeat(W), rc.reshape(-1), output_size=sum(recv))
    by_expert = torch.argsort(expert_of, stable=True)
    rows = got[by_expert]
    offs = torch.cumsum(rc.sum(0), 0).to(torch.int32)
    h = F.silu(torch._grouped_mm(rows, w1, offs=offs)) * torch._grouped_mm(rows, w3, offs=offs)
    out = torch.empty_like(rows).index_copy(0, by_expert, torch._grouped_mm(h, w2, offs=offs))  # arrival order
    back = AllToAll.apply(out, send, recv)
    slots = torch.empty_like(back).index_copy(0, order, back).view(T, K, -1)  # slot order: token-major
    return torch.bmm(gate.unsqueeze(1), slots).squeeze(1) + shared_out(x, shared)


def dense(x, router, w1, w3, w2, shared, K):
    """Every expert on one process, f32 weights, per-token experts by bmm."""
    idx, gate = route(x, router, K)
    y = 0
    for k in range(K):
        e = idx[:, k]
        h = F.silu(torch.bmm(x.unsqueeze(1), w1[e])) * torch.bmm(x.unsqueeze(1), w3[e])
        y = y + gate[:, k:k + 1] * torch.bmm(h, w2[e]).squeeze(1)
    return y + shared_out(x, shared)


def normal(gen, *shape):
    """bf16 weights of std 1/sqrt(their contracted dim, the one before the last)."""
    return (torch.randn(*shape, generator=gen, device=gen.device) * shape[-2] ** -0.5).to(torch.bfloat16)


def weights(D, FF, E, El, n_shared, g_rep, g_exp):
    """Router (over E experts) and shared experts from g_rep; El routed experts from g_exp."""
    router = normal(g_rep, D, E)
    shared = [(normal(g_rep, D, FF), normal(g_rep, D, FF), normal(g_rep, FF, D)) for _ in range(n_shared)]
    return router, normal(g_exp, El, D, FF), normal(g_exp, El, D, FF), normal(g_exp, El, FF, D), shared


def step(x, dy, router, w1, w3, w2, shared, E, K, W):
    params = [router, w1, w3, w2] + [w for s in shared for w in s]
    for p in params + [x]: p.grad = None
    moe_ep(x, router, w1, w3, w2, shared, E, K, W).backward(dy)
    for p in [router] + [w for s in shared for w in s]: dist.all_reduce(p.grad)
    return params


def check(rank, W, dev):
    T, D, FF, E, K = 64, 256, 128, 4 * W, 3
    gen = torch.Generator(device=dev).manual_seed(7)  # every rank: all weights and all ranks' tokens
    router, w1, w3, w2, shared = weights(D, FF, E, E, 2, gen, gen)
    xs = [torch.randn(T, D, generator=gen, device=dev).to(torch.bfloat16) for _ in range(W)]
    dys = [torch.randn(T, D, generator=gen, device=dev).to(torch.bfloat16) for _ in range(W)]
    sl = slice(rank * (E // W), (rank + 1) * (E // W))
    leaf = lambda t: t.detach().clone().requires_grad_(True)
    ep = [leaf(router), leaf(w1[sl]), leaf(w3[sl]), leaf(w2[sl]), [tuple(leaf(w) for w in s) for s in shared]]
    x = leaf(xs[rank])
    step(x, dys[rank], *ep, E, K, W)
    with torch.no_grad(): y = moe_ep(x, *ep, E, K, W)
    f = lambda t: t.detach().float().clone().requires_grad_(True)
    ref = [f(router), f(w1), f(w3), f(w2), [tuple(f(w) for w in s) for s in shared]]
    rx = [f(t) for t in xs]
    ys = [dense(xi, *ref, K) for xi in rx]
    sum((yi * d.float()).sum() for yi, d in zip(ys, dys)).backward()
    rel = lambda a, b: ((a.float() - b).abs().max() / b.abs().max()).item()
    errs = {"y": rel(y, ys[rank].detach()), "dx": rel(x.grad, rx[rank].grad), "drouter": rel(ep[0].grad, ref[0].grad)}
    for n, a, b in zip(("dw1", "dw3", "dw2"), ep[1:4], ref[1:4]): errs[n] = rel(a.grad, b.grad[sl])
    for i, (a, b) in enumerate(zip(ep[4], ref[4])):
        for n, p, q in zip(("w1", "w3", "w2"), a, b): errs[f"ds{i}.{n}"] = rel(p.grad, q.grad)
    worst = torch.tensor(list(errs.values()), device=dev)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # rank 0 reports the worst rank
    errs = dict(zip(errs, worst.tolist()))
    return {"kind": "check", "impl": "torch", "world": W, "ok": all(e < 2e-2 for e in errs.values()), "errors": errs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    rank, W, dev = dist.get_rank(), dist.get_world_size(), torch.device("cuda")
    results = [check(rank, W, dev)]
    T, D, FF, E, K, S = a.tokens, 2048, 1408, 64, 6, 2
    try:
        # replicated weights the same on every rank; this rank's E/W experts and its tokens its own
        gen = torch.Generator(device=dev).manual_seed(1000 + rank)
        router, w1, w3, w2, shared = weights(D, FF, E, E // W, S, torch.Generator(device=dev).manual_seed(1), gen)
        ps = [p.requires_grad_(True) for p in (router, w1, w3, w2)] + [[tuple(w.requires_grad_(True) for w in s) for s in shared]]
        inputs = [(torch.randn(T, D, generator=gen, device=dev).to(torch.bfloat16).requires_grad_(True), torch.randn(T, D, generator=gen, device=dev).to(torch.bfloat16)) for _ in range(2)]
        run = lambda i: step(*inputs[i % 2], *ps, E, K, W)
        for i in range(3): run(i)
        torch.cuda.synchronize()
        ts = []
        for i in range(a.reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); run(i); e.record(); e.synchronize()
            ts.append(s.elapsed_time(e))
        ms = statistics.median(ts)
        flops = 3 * (2 * T * (K + S) * 3 * D * FF + 2 * T * D * E)
        results.append({"kind": "time", "impl": "torch", "fmt": "bf16", "world": W, "tokens": T, "d": D, "ffn": FF, "experts": E, "k": K, "shared": S,
                        "ms": round(ms, 3), "minMs": round(min(ts), 3), "tflops": round(flops / ms / 1e9, 1), "peakGiB": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)})
    except Exception as ex:  # report it; the check's line still counts
        results.append({"kind": "time", "impl": "torch", "fmt": "bf16", "world": W, "tokens": T, "error": str(ex)[:500]})
    if rank == 0:
        for r in results: print(json.dumps(r), flush=True)
        if a.json:
            with open(a.json, "w") as f: f.write("".join(json.dumps(r) + "\n" for r in results))
    ok = results[0]["ok"] and "error" not in results[-1]
    dist.destroy_process_group()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
