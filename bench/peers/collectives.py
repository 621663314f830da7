# torch.distributed (NCCL) peer of bench/gpu/lib/dist-collectives.ts: the same four collectives at
# 8/64/256 MiB of f32 per rank, timed the same way (host wall clock around each call plus a
# synchronize, median), bus bandwidth as nccl-tests computes it. Start with
#   python3 -m torch.distributed.run --nproc-per-node N bench/peers/collectives.py --json FILE
import json, os, sys, time
import torch
import torch.distributed as dist

def main():
    dist.init_process_group("nccl")
    rank, W = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    out = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    rows = []
    for mib in (8, 64, 256):
        n = mib * 2**20 // 4
        x = torch.randn(n, device="cuda")
        cases = {
            "all_gather": (lambda: dist.all_gather_into_tensor(torch.empty(n * W, device="cuda"), x), lambda s: n * 4 * W / s * (W - 1) / W),
            "reduce_scatter": (lambda: dist.reduce_scatter_tensor(torch.empty(n // W, device="cuda"), x), lambda s: n * 4 / s * (W - 1) / W),
            "all_reduce": (lambda: dist.all_reduce(x), lambda s: n * 4 / s * 2 * (W - 1) / W),
            "all_to_all": (lambda: dist.all_to_all_single(torch.empty(n, device="cuda"), x), lambda s: n * 4 / s * (W - 1) / W),
        }
        for name, (fn, bus) in cases.items():
            for _ in range(3): fn()
            torch.cuda.synchronize()
            reps, ts = (10 if mib == 256 else 20), []
            for _ in range(reps):
                t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
            s = sorted(ts)[reps // 2]
            row = {"impl": "torch", "op": name, "mibPerRank": mib, "world": W, "ms": round(s * 1e3, 3), "busGBs": round(bus(s) / 1e9, 1)}
            rows.append(row)
            if rank == 0: print(json.dumps(row), flush=True)
    if rank == 0 and out:
        with open(out, "w") as f: f.write("".join(json.dumps(r) + "\n" for r in rows))
    dist.destroy_process_group()

main()
