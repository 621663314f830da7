# torch.distributed (NCCL) peer of bench/gpu/lib/dist-moe-dispatch.ts: MoE dispatch and combine as
# people write them with torch.distributed, at the same sizes (4096 / 8192 tokens per GPU, d 2048 /
# 7168, top-6 / top-8, 256 experts, bf16, uniformly random routing), timed the same way (host wall
# clock around the call plus a synchronize, median of 15 after 3 warm-ups):
#   dispatch:   sort the (token, k) slots by expert (argsort), gather rows; per-expert counts
#               (bincount) exchanged with all_to_all_single; split sizes to the host; the rows with
#               all_to_all_single(output_split_sizes, input_split_sizes)
#   round trip: dispatch, then the rows back with all_to_all_single and the gate-weighted sum into
#               the tokens (index_add_); combine = round trip - dispatch
#   plain:      all_to_all_single of the same bytes (tokens x k x d bf16), even splits
#   fp8:        as shardts's FP8 dispatch: x quantized 1x128 (e4m3 codes, f32 scales) before the sort,
#               codes (as uint8) and scales each with all_to_all_single; the round trip dequantizes the
#               received rows and returns them in bf16
# GB/s = dispatched bytes per GPU (tokens x k x (2d, or d + 4d/128 in fp8)) / time; combine's are bf16. Start with
#   python3 -m torch.distributed.run --nproc-per-node N bench/peers/moe_dispatch.py --json FILE
import json, os, sys, time
import torch
import torch.distributed as dist

E = 256


def main():
    dist.init_process_group("nccl")
    rank, W = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    out = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    per = E // W
    rows = []
    for T in (4096, 8192):
        for D in (2048, 7168):
            for K in (6, 8):
                g = torch.Generator(device="cuda").manual_seed(17 + rank)
                x = torch.randn(T, D, device="cuda", dtype=torch.bfloat16, generator=g)
                w = torch.rand(T, K, device="cuda", dtype=torch.bfloat16, generator=g)
                idx = torch.rand(T, E, device="cuda", generator=g).topk(K, dim=1).indices.to(torch.int32)  # k distinct experts per token

                def quantize():  # 1x128 tiles along d (D is a multiple of 128), as compiler/ops/quantize.ts
                    t = x.float().view(T, D // 128, 128)
                    amax = t.abs().amax(-1, keepdim=True)
                    scale = torch.where(amax == 0, torch.ones_like(amax), amax / 448)
                    return (t / scale).to(torch.float8_e4m3fn).view(T, D).view(torch.uint8), scale.view(T, D // 128)

                def dispatch():
                    payload = quantize() if fp8 else (x,)
                    flat = idx.flatten()
                    order = torch.argsort(flat, stable=True)
                    counts = torch.bincount(flat, minlength=E)
                    recv_counts = torch.empty_like(counts)
                    dist.all_to_all_single(recv_counts, counts)
                    send_splits = counts.view(W, per).sum(1).tolist()
                    recv_splits = recv_counts.view(W, per).sum(1).tolist()
                    recv = []
                    for p in payload:
                        r = torch.empty(sum(recv_splits), p.shape[1], device="cuda", dtype=p.dtype)
                        dist.all_to_all_single(r, p[order // K], recv_splits, send_splits)
                        recv.append(r)
                    return order, recv, send_splits, recv_splits

                def round_trip():
                    order, recv, send_splits, recv_splits = dispatch()
                    if fp8:  # identity experts on the dequantized rows; combine in bf16
                        q, s = recv
                        recv = (q.view(torch.float8_e4m3fn).float().view(-1, D // 128, 128) * s[:, :, None]).view(-1, D).to(x.dtype)
                    else:
                        recv = recv[0]
                    back = torch.empty(T * K, D, device="cuda", dtype=x.dtype)
                    dist.all_to_all_single(back, recv, send_splits, recv_splits)  # identity experts
                    y = torch.zeros(T, D, device="cuda", dtype=torch.float32)
                    y.index_add_(0, order // K, back.float() * w.flatten()[order].float()[:, None])
                    return y.to(x.dtype)

                plain_in = torch.randn(T * K * D, device="cuda", dtype=torch.bfloat16)
                plain_out = torch.empty_like(plain_in)

                def plain():
                    dist.all_to_all_single(plain_out, plain_in)

                def timed(fn):
                    for _ in range(3): fn()
                    torch.cuda.synchronize()
                    ts = []
                    for _ in range(15):
                        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append((time.perf_counter() - t0) * 1e3)
                    return sorted(ts)[7]

                p_ms = timed(plain)
                for fp8 in (False, True):
                    d_ms, rt_ms = timed(dispatch), timed(round_trip)
                    nbytes, cbytes = T * K * ((D + 4 * D // 128) if fp8 else 2 * D), T * K * D * 2
                    row = {"kind": "time", "impl": "torch", "fmt": "fp8" if fp8 else "bf16", "tokens": T, "d": D, "k": K, "experts": E, "world": W,
                           "dispatchMs": round(d_ms, 3), "roundTripMs": round(rt_ms, 3), "combineMs": round(rt_ms - d_ms, 3), "plainA2aMs": round(p_ms, 3),
                           "dispatchGBs": round(nbytes / d_ms / 1e6, 1), "combineGBs": round(cbytes / max(rt_ms - d_ms, 1e-6) / 1e6, 1), "plainA2aGBs": round(cbytes / p_ms / 1e6, 1)}
                    rows.append(row)
                    if rank == 0: print(json.dumps(row), flush=True)
                del x, w, idx, plain_in, plain_out
                torch.cuda.empty_cache()
    if rank == 0 and out:
        with open(out, "w") as f: f.write("".join(json.dumps(r) + "\n" for r in rows))
    dist.destroy_process_group()


main()
