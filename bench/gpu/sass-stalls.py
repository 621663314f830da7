# Sums an Nsight Compute per-instruction SASS table (ncu -i REP --page source --print-source sass --csv)
# by opcode: warp-stall samples, instructions executed and the top stall reasons of each, most
# sampled first. Used by bench/gpu/gemm-profile.sh (PROFILE_FULL=1).  python3 sass-stalls.py SASS.csv
import csv, sys, collections, re
rows = list(csv.reader(open(sys.argv[1])))
hdr = rows[1]; data = [r for r in rows[2:] if len(r) >= len(hdr)]
ix = {h: i for i, h in enumerate(hdr)}
stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
tot = sum(int(r[ix["Warp Stall Sampling (All Samples)"]] or 0) for r in data)
by = collections.defaultdict(lambda: [0, 0, collections.Counter()])
for r in data:
    src = r[ix["Source"]].strip()
    op = re.sub(r"^@!?U?P\w+\s+", "", src).split()[0] if src else "?"
    op = op.split(".")[0]
    n = int(r[ix["Warp Stall Sampling (All Samples)"]] or 0)
    b = by[op]; b[0] += n; b[1] += int(r[ix["Instructions Executed"]] or 0)
    for s in stalls: b[2][s[6:]] += int(r[ix[s]] or 0)
print("samples", tot, "instructions executed", sum(v[1] for v in by.values()))
for op, (n, ex, c) in sorted(by.items(), key=lambda kv: -kv[1][0])[:22]:
    print(f"{op:10} {n:6} {n/tot:6.1%}  exec {ex:9}  " + ", ".join(f"{k} {v}" for k, v in c.most_common(3)))
