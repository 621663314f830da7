// On a GPU machine: the data movements around the grouped GEMMs at the EP MoE layer's sizes, the
// word-wise kernels (runtime/cuda/kernels/move-sources.ts, picked by runtime/cuda/copy-plan.ts)
// against the per-element kernels they replace (kernels/sources.ts) and PyTorch in the same run
// (bench/peers/moves.py), as GB/s (bytes read + written) against this run's device copy:
// - the expert weights' transpose [32][2048][1408] bf16 -> [32][1408][2048] (wgmma segment_dot's B);
// - a row gather of 49152 x 2048 bf16 rows (the padded layout's A) through a permutation with -1s.
// Each output is checked against the host's copy of the same bytes on sampled rows.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh moves)
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native, packArgs } from "../../runtime/cuda/native.ts";
import { download, empty, upload } from "../../runtime/cuda/memory.ts";
import * as K from "../../runtime/cuda/kernels/sources.ts";
import { launchRowGather } from "../../runtime/cuda/row-gather.ts";
import { copyBandwidth } from "./lib/copy-bandwidth.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const E = 32, KD = 2048, N = 1408, R = 49152, D = 2048, REPS = 20;
const gpu = new CudaExecutor(native());
const a = gpu.addon, device = a.deviceProperties(0).name;
const lines: string[] = [];
const log = (s: string) => (console.log(s), lines.push(s));
const copy = copyBandwidth(gpu, REPS);
log(`device ${device}; copy ${copy.GBps.toFixed(0)} GB/s (1 GiB cuMemcpyDtoD, read + write)`);
const rows: { case: string; impl: string; ms: number; GBps: number }[] = [];
const record = (c: string, impl: string, ms: number, bytes: number) => {
  rows.push({ case: c, impl, ms, GBps: bytes / ms / 1e6 });
  log(`  ${c.padEnd(34)} ${impl.padEnd(44)} ${ms.toFixed(4)} ms ${(bytes / ms / 1e6).toFixed(0).padStart(6)} GB/s ${((100 * bytes) / ms / 1e6 / copy.GBps).toFixed(0).padStart(4)}% of copy`);
};
let failures = 0;
const check = (what: string, ok: boolean) => {
  if (!ok) failures++;
  log(`  ${ok ? "ok  " : "FAIL"} ${what}`);
};

// bf16 bit patterns as i32 pairs: the moves do not look at values
const bits = (n: number, seed: number) => {
  const v = new Int32Array(n / 2);
  for (let i = 0; i < v.length; i++) v[i] = (seed = (Math.imul(seed, 1664525) + 1013904223) | 0);
  return v;
};

{ // transpose
  const name = `transpose [${E}][${KD}][${N}] bf16`, n = E * KD * N, bytes = 2 * n * 2;
  const w = upload(a, gpu.mem, { dtype: "i32", shape: [n / 2], data: bits(n, 3) }, gpu.stream);
  const src = { ...w, dtype: "bf16" as const, shape: [E, KD, N] };
  const out = empty(gpu.mem, "bf16", [E, N, KD]);
  const ist = [KD * N, 1, N], ost = [N * KD, KD, 1], shape = [E, N, KD];
  record(name, "shardts copy-plan (tiled transpose)", gpu.timeLaunch(() => gpu.copyStrided("bf16", out.ptr, src.ptr, shape, ist, ost), REPS), bytes);
  const host = new Uint16Array(new Int32Array((download(a, w, gpu.stream).data as Int32Array)).buffer);
  const got = new Uint16Array((download(a, { ...out, dtype: "i32", shape: [n / 2] }, gpu.stream).data as Int32Array).buffer);
  let ok = true;
  for (let s = 0; s < 4096 && ok; s++) {
    const e = (s * 7) % E, j = (s * 131) % N, k = (s * 977) % KD;
    ok = got[(e * N + j) * KD + k] === host[(e * KD + k) * N + j];
  }
  check(`${name}: 4096 sampled elements equal the host's transpose`, ok);
  const k = K.stridedCopy("bf16");
  const geo = new Uint8Array(16 + 4 * K.MAX_DIMS + 16 * K.MAX_DIMS), v = new DataView(geo.buffer);
  v.setInt32(0, 3, true);
  v.setBigInt64(8, BigInt(n), true);
  shape.forEach((s, i) => {
    v.setInt32(16 + 4 * i, s, true);
    v.setBigInt64(16 + 4 * K.MAX_DIMS + 8 * i, BigInt(ist[i]!), true);
    v.setBigInt64(16 + 4 * K.MAX_DIMS + 8 * K.MAX_DIMS + 8 * i, BigInt(ost[i]!), true);
  });
  const args = packArgs(["ptr", out.ptr], ["ptr", src.ptr], ["bytes", geo, 8]), fn = gpu.fn(k.name, k.source);
  record(name, "shardts per-element kernel (before)", gpu.timeLaunch(() => a.launchKernel(fn, [Math.min(Math.ceil(n / 256), gpu.smCount * 8), 1, 1], [256, 1, 1], 0, gpu.stream, args), REPS), bytes);
  gpu.release(w);
  gpu.release(out);
}

{ // row gather
  const name = `gather ${R} rows x ${D} bf16`, bytes = 2 * R * D * 2;
  const x = upload(a, gpu.mem, { dtype: "i32", shape: [(R * D) / 2], data: bits(R * D, 5) }, gpu.stream);
  const perm = Int32Array.from({ length: R }, (_, i) => (i % 97 === 0 ? -1 : (i * 40503) % R));
  const idx = upload(a, gpu.mem, { dtype: "i32", shape: [R], data: perm }, gpu.stream);
  const out = empty(gpu.mem, "i32", [R, D / 2]), bad = gpu.badFlag();
  const g = { out, x, idx, dtype: "i32" as const, B: 1, J: R, R: D / 2, rows: R, off: 0, global: R, bad };
  record(name, "shardts row gather (a warp per row, 16-byte words)", gpu.timeLaunch(() => launchRowGather(gpu, g), REPS), bytes);
  const host = download(a, x, gpu.stream).data as Int32Array, got = download(a, out, gpu.stream).data as Int32Array;
  let ok = true;
  for (let s = 0; s < 2048 && ok; s++) {
    const r = (s * 389) % R, c = (s * 53) % (D / 2);
    ok = got[r * (D / 2) + c] === (perm[r] === -1 ? 0 : host[perm[r]! * (D / 2) + c]);
  }
  check(`${name}: 2048 sampled words equal the host's gather`, ok);
  const k = K.gather("i32"), fn = gpu.fn(k.name, k.source);
  const args = packArgs(["ptr", out.ptr], ["ptr", x.ptr], ["ptr", idx.ptr], ["i64", 1], ["i64", R], ["i64", D / 2], ["i64", R], ["i64", 0], ["i64", R], ["ptr", bad.ptr]);
  record(name, "shardts per-element kernel (before)", gpu.timeLaunch(() => a.launchKernel(fn, [Math.min(Math.ceil((R * D) / 2 / 256), gpu.smCount * 8), 1, 1], [256, 1, 1], 0, gpu.stream, args), REPS), bytes);
}

const peer = spawnSync("python3", [join("bench", "peers", "moves.py"), String(E), String(KD), String(N), String(R), String(D)], { encoding: "utf8" });
for (const l of (peer.stdout ?? "").split("\n").filter((l) => l.startsWith("{"))) {
  const p = JSON.parse(l) as { case: string; impl: string; ms: number; GBps: number };
  record(p.case, p.impl, p.ms, (p.GBps * p.ms * 1e6));
}
if (peer.status !== 0) log(`torch peer failed: exit ${peer.status}: ${(peer.stderr ?? "").trim().split("\n").slice(-3).join(" | ")}`);
log("\nsummary: shardts word-wise kernel against the per-element one and torch (same run)");
for (const c of [...new Set(rows.map((r) => r.case))]) {
  const mine = rows.find((r) => r.case === c && r.impl.startsWith("shardts") && !r.impl.includes("before"));
  const before = rows.find((r) => r.case === c && r.impl.includes("before")), torch = rows.find((r) => r.case === c && r.impl.startsWith("torch"));
  log(`  ${c.padEnd(34)} ${mine?.ms.toFixed(4)} ms; x before ${before && mine ? (before.ms / mine.ms).toFixed(1) : "-"}; x torch ${torch && mine ? (torch.ms / mine.ms).toFixed(2) : "-"}`);
}
writeFileSync(join(outDir, "moves.txt"), lines.join("\n") + "\n");
writeFileSync(join(outDir, "moves.json"), JSON.stringify({ device, copy, rows }, null, 1));
process.exit(failures ? 1 : 0);
