// On a GPU machine: shardts' standalone FP8 quantize kernels (1x128 activations, 128x128 weights,
// 128x1 Wgrad tiling, dequantize) on bf16 [R, C] = 32768 x 4096 (256 MiB), each checked against the
// CPU reference bit for bit (e4m3 bytes and f32 scales; the flat 1x128 kernel also with 1, 2 and 8
// loads in flight a lane), timed with CUDA events (median of 30), as
// GB/s against this run's device copy, and against the PyTorch peer (bench/peers/fp8_quant.py,
// spawned in the same run: eager and torch.compile). Then the quantize epilogues
// (lib/fp8-epilogue-cases.ts): SwiGLU → quantize (with and without the bf16 value also written) and
// RMSNorm(x + residual) → quantize, each fused into one kernel by the fusion pass,
// each checked against the CPU backend at check sizes (incl. odd widths), timed at [R, C], and
// compared by time with PyTorch eager (+ a separate quantize) and torch.compile of the same work; and
// the epilogues in their other emitter forms (tiles a trip and packs a lane in the map kernels, the row
// held in registers in the row kernel), checked and timed.
//   npm run gpu:pack; there: bash bench/gpu/run.sh fp8-quant   (writes <out>/fp8-quant.txt)
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { copyBandwidth } from "./lib/copy-bandwidth.ts";
import { countDiffers, firstDiffer } from "./lib/compare.ts";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native } from "../../runtime/cuda/native.ts";
import { upload, download, empty } from "../../runtime/cuda/memory.ts";
import { quantizeCuda, dequantizeCuda, quantizeFlatLaunch } from "../../runtime/cuda/fp8.ts";
import { quantizeColumnsT } from "../../runtime/cuda/fp8-segment.ts";
import { quantizeValues, dequantizeValues, tilesName } from "../../compiler/ops/quantize.ts";
import { roundArrayToBf16 } from "../../compiler/numeric/index.ts";
import type { TensorType } from "../../compiler/ir/types.ts";
import { EPILOGUES, checkEpilogue, timeEpilogue } from "./lib/fp8-epilogue-cases.ts";
import { tuning, tuningLabel, type EmitTuning } from "../../compiler/codegen/cuda/tuning.ts";

const argv = process.argv;
const outDir = argv.includes("--out") ? argv[argv.indexOf("--out") + 1]! : ".";
const R = argv.includes("--quick") ? 4096 : 32768, C = 4096, REPS = 30;
const lines: string[] = [];
const say = (s: string) => (console.log(s), lines.push(s));
const summary: string[][] = [];

let gpu: CudaExecutor;
try {
  gpu = new CudaExecutor(native());
} catch (e) {
  console.error(`fp8-quant: no usable GPU (${(e as Error).message})`);
  process.exit(2);
}
const a = gpu.addon, device = a.deviceProperties(0).name;
say(`fp8-quant on ${device}: bf16 [${R}, ${C}]`);

const copyGBps = copyBandwidth(gpu, REPS).GBps;
say(`device copy: ${copyGBps.toFixed(0)} GB/s (read + write of 1 GiB)`);

let seed = 7;
const data = new Float32Array(R * C);
for (let i = 0; i < data.length; i++) {
  seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
  data[i] = (seed / 2 ** 32 - 0.5) * 2 ** ((i >> 12) % 12 - 4); // row ranges 2^-5 .. 2^6
}
roundArrayToBf16(data, data);
const X = upload(a, gpu.mem, { dtype: "bf16", shape: [R, C], data }, gpu.stream);
const tx: TensorType = { dims: [{ name: "r", size: R }, { name: "c", size: C }], dtype: "bf16", placements: [] };
const ours: Record<string, number> = {};
const oursMs: Record<string, number> = {};

const cases: { name: string; tiling: "1x128" | "128x1" | "128x128"; dims: string[] }[] = [
  { name: "quantize_1x128", tiling: "1x128", dims: ["c"] },
  { name: "quantize_128x128", tiling: "128x128", dims: ["r", "c"] },
  { name: "quantize_128x1", tiling: "128x1", dims: ["r"] },
];
for (const c of cases) {
  try {
    const [q, s] = quantizeCuda(gpu, X, tx, { tiling: c.tiling, dims: c.dims });
    const gq = download(a, q!, gpu.stream), gs = download(a, s!, gpu.stream);
    const ref = quantizeValues(data, [R, C], [c.dims.includes("r"), c.dims.includes("c")]);
    const badQ = firstDiffer(gq.data, ref.q), badS = firstDiffer(gs.data, ref.scales);
    say(`${c.name}: bytes ${badQ < 0 ? "equal" : `DIFFER first at ${badQ}: gpu ${gq.data[badQ]} cpu ${ref.q[badQ]}`} (${ref.q.length} values); scales ${badS < 0 ? "equal" : `DIFFER first at ${badS}: gpu ${gs.data[badS]} cpu ${ref.scales[badS]}`} (${ref.scales.length})`);
    // dequantize of the GPU's own q and scales against the CPU's
    const ts: TensorType = { dims: tx.dims.map((d) => (c.dims.includes(d.name) ? { name: tilesName(d.name), size: Math.ceil(d.size / 128) } : d)), dtype: "f32", placements: [] };
    const dq = download(a, dequantizeCuda(gpu, q!, s!, { ...tx, dtype: "fp8e4m3" }, ts, "f32"), gpu.stream);
    const dref = dequantizeValues(ref.q, [R, C], [c.dims.includes("r"), c.dims.includes("c")], ref.scales);
    const badD = firstDiffer(dq.data, dref);
    say(`${c.name}: dequantize (f32) ${badD < 0 ? "equal" : `DIFFERS first at ${badD}`}`);
    gpu.release(q);
    gpu.release(s);
    const ms = gpu.timeLaunch(() => {
      const [q2, s2] = quantizeCuda(gpu, X, tx, { tiling: c.tiling, dims: c.dims });
      gpu.release(q2);
      gpu.release(s2);
    }, REPS);
    const bytes = R * C * 3 + ref.scales.length * 4;
    ours[c.name] = bytes / ms / 1e6;
    oursMs[c.name] = ms;
    say(`${c.name}: ${ms.toFixed(3)} ms, ${ours[c.name]!.toFixed(0)} GB/s = ${((100 * ours[c.name]!) / copyGBps).toFixed(0)}% of copy${c.tiling === "128x1" ? " (in place: no transposing copies)" : ""}`);
    summary.push([c.name, badQ < 0 && badS < 0 && badD < 0 ? "exact" : "MISMATCH", `${ours[c.name]!.toFixed(0)} GB/s`, `${((100 * ours[c.name]!) / copyGBps).toFixed(0)}%`]);
    if (c.tiling === "1x128") flatVariants(ref, bytes);
  } catch (e) {
    say(`${c.name}: FAILED ${(e as Error).stack ?? e}`);
    summary.push([c.name, "FAILED", "-", "-"]);
  }
}

// 128x128 with the transposed codes too (a weight its Fprop reads K-major: fp8.ts transposedCodesWanted),
// against the plain kernel followed by the transposing copy it replaces; bytes: x read, codes written twice
{
  const label = "quantize_128x128 + transposed codes";
  try {
    const attrs = { tiling: "128x128", dims: ["r", "c"] };
    const [q, s, qT] = quantizeCuda(gpu, X, tx, attrs, true);
    if (!qT) throw new Error(`no transposed codes made (R ${R} % 16 must be 0)`);
    const gq = download(a, q!, gpu.stream), gt = download(a, qT, gpu.stream);
    let bad = 0;
    for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) if (gt.data[c * R + r] !== gq.data[r * C + c]) bad++;
    for (const t of [q!, s!, qT]) gpu.release(t);
    const ms = gpu.timeLaunch(() => quantizeCuda(gpu, X, tx, attrs, true).forEach((t) => gpu.release(t)), REPS);
    const before = gpu.timeLaunch(() => {
      const [q2, s2] = quantizeCuda(gpu, X, tx, attrs);
      const t2 = gpu.reorder(q2!, ["r", "c"], ["c", "r"]);
      for (const t of [q2!, s2!, t2]) gpu.release(t);
    }, REPS);
    const bytes = R * C * 4 + Math.ceil(R / 128) * Math.ceil(C / 128) * 4, gbs = bytes / ms / 1e6;
    say(`${label}: transposed codes ${bad ? `${bad} DIFFER` : "equal the codes transposed"}; ${ms.toFixed(3)} ms, ${gbs.toFixed(0)} GB/s = ${((100 * gbs) / copyGBps).toFixed(0)}% of copy; the plain kernel + a transposing copy: ${before.toFixed(3)} ms (${(before / ms).toFixed(2)}x this)`);
    summary.push([label, bad ? "MISMATCH" : "exact", `${gbs.toFixed(0)} GB/s`, `${((100 * gbs) / copyGBps).toFixed(0)}%`]);
  } catch (e) {
    say(`${label}: FAILED ${(e as Error).stack ?? e}`);
    summary.push([label, "FAILED", "-", "-"]);
  }
}

/**
 * The flat 1x128 kernel (the executor's where K % 128 == 0) with other numbers of loads in flight a
 * lane (FLAT_UNROLL is the default, timed above as quantize_1x128): each checked bit for bit and timed.
 */
function flatVariants(ref: { q: Float32Array; scales: Float32Array }, bytes: number): void {
  for (const u of [1, 2, 8]) {
    const label = `quantize_1x128 flat unroll ${u}`;
    try {
      const q = empty(gpu.mem, "fp8e4m3", [R, C]), s = empty(gpu.mem, "f32", [R, C / 128]);
      quantizeFlatLaunch(gpu, q, s, X, R * (C / 128), u);
      const gq = download(a, q, gpu.stream), gs = download(a, s, gpu.stream);
      const bad = countDiffers(gq.data, ref.q) + countDiffers(gs.data, ref.scales);
      const ms = gpu.timeLaunch(() => quantizeFlatLaunch(gpu, q, s, X, R * (C / 128), u), REPS);
      say(`${label}: ${bad ? `${bad} values DIFFER` : "exact"}; ${ms.toFixed(3)} ms, ${(bytes / ms / 1e6).toFixed(0)} GB/s = ${((100 * bytes) / ms / 1e6 / copyGBps).toFixed(0)}% of copy`);
      if (bad) summary.push([label, "MISMATCH", "-", "-"]);
      gpu.release(q);
      gpu.release(s);
    } catch (e) {
      say(`${label}: FAILED ${(e as Error).stack ?? e}`);
      summary.push([label, "FAILED", "-", "-"]);
    }
  }
}

// the routed Wgrad's operands (fp8-segment.ts quantizeColumnsT): rows gathered by a row map (here the
// identity over all R rows, so M = R), quantized 128x1 along the rows and written transposed, codes
// [C][R]; from bf16 rows, and from e4m3 codes with their 1x128 scales (dequantized, then quantized
// 128x1: the x side). Bytes: the rows read (and their scales), the codes and scales written.
{
  const rowMap = upload(a, gpu.mem, { dtype: "i32", shape: [R], data: Int32Array.from({ length: R }, (_, i) => i) }, gpu.stream);
  const ref1 = quantizeValues(data, [R, C], [false, true]);
  for (const src of ["bf16", "fp8"] as const) {
    const label = `wgrad columns 128x1 + transposed (${src} rows)`;
    try {
      const [q1, s1] = src === "fp8" ? quantizeCuda(gpu, X, tx, { tiling: "1x128", dims: ["c"] }) : [X, undefined];
      const ref = quantizeValues(src === "fp8" ? dequantizeValues(ref1.q, [R, C], [false, true], ref1.scales) : data, [R, C], [true, false]);
      const { q, s } = quantizeColumnsT(gpu, q1!, s1, R, C, rowMap, R);
      const gq = download(a, q, gpu.stream), gs = download(a, s, gpu.stream);
      let bad = 0;
      for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) if (gq.data[c * R + r] !== ref.q[r * C + c]) bad++;
      bad += countDiffers(gs.data, ref.scales);
      gpu.release(q);
      gpu.release(s);
      const ms = gpu.timeLaunch(() => {
        const o = quantizeColumnsT(gpu, q1!, s1, R, C, rowMap, R);
        gpu.release(o.q);
        gpu.release(o.s);
      }, REPS);
      const bytes = R * C * (src === "fp8" ? 2 : 3) + (R / 128) * C * 4 + (src === "fp8" ? R * (C / 128) * 4 : 0), gbs = bytes / ms / 1e6;
      say(`${label}: ${bad ? `${bad} values DIFFER` : "codes and scales equal the reference"}; ${ms.toFixed(3)} ms, ${gbs.toFixed(0)} GB/s = ${((100 * gbs) / copyGBps).toFixed(0)}% of copy`);
      summary.push([label, bad ? "MISMATCH" : "exact", `${gbs.toFixed(0)} GB/s`, `${((100 * gbs) / copyGBps).toFixed(0)}%`]);
      if (src === "fp8") [q1!, s1!].forEach((t) => gpu.release(t));
    } catch (e) {
      say(`${label}: FAILED ${(e as Error).stack ?? e}`);
      summary.push([label, "FAILED", "-", "-"]);
    }
  }
  gpu.release(rowMap);
}
// --kernels-only: the standalone kernels above and no more (no peer, no epilogues: a profiler's run)
if (argv.includes("--kernels-only")) {
  writeFileSync(join(outDir, "fp8-quant.txt"), lines.join("\n") + "\n");
  process.exit(summary.some((r) => r[1] !== "exact") ? 1 : 0);
}

// the standalone kernels on odd shapes: partial tiles in both dims, K % 8 != 0 (the fallback path), a 3-d tensor,
// 1x128 with K % 128 == 0 on few tiles (the flat kernel, a trip past the end)
const oddShapes: { dims: [string, number][]; tiling: "1x128" | "128x1" | "128x128"; tiled: string[] }[] = [];
for (const dims of [[["r", 200], ["c", 264]], [["r", 130], ["c", 4100]], [["b", 3], ["r", 200], ["c", 264]], [["b", 3], ["r", 7], ["c", 640]]] as [string, number][][])
  for (const [tiling, tiled] of [["1x128", ["c"]], ["128x1", ["r"]], ["128x128", ["r", "c"]]] as const) oddShapes.push({ dims, tiling, tiled: [...tiled] });
for (const o of oddShapes) {
  const label = `${o.tiling} [${o.dims.map(([n, v]) => `${n}:${v}`).join(", ")}]`;
  try {
    const shape = o.dims.map(([, v]) => v), len = shape.reduce((p, v) => p * v, 1);
    const d = new Float32Array(len);
    for (let i = 0; i < len; i++) {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      d[i] = i % 1000 === 17 ? NaN : (seed / 2 ** 32 - 0.5) * 2 ** ((i % 7) - 3);
    }
    roundArrayToBf16(d, d);
    const t: TensorType = { dims: o.dims.map(([name, size]) => ({ name, size })), dtype: "bf16", placements: [] };
    const Xo = upload(a, gpu.mem, { dtype: "bf16", shape, data: d }, gpu.stream);
    const [q, s] = quantizeCuda(gpu, Xo, t, { tiling: o.tiling, dims: o.tiled });
    const gq = download(a, q!, gpu.stream), gs = download(a, s!, gpu.stream);
    const ref = quantizeValues(d, shape, o.dims.map(([n]) => o.tiled.includes(n)));
    const bq = countDiffers(gq.data, ref.q), bs = countDiffers(gs.data, ref.scales);
    say(`odd shape ${label}: e4m3 ${bq}/${ref.q.length} differ, scales ${bs}/${ref.scales.length} differ (scale shape ${s!.shape.join("x")})`);
    if (bq || bs) summary.push([`odd ${label}`, "MISMATCH", "-", "-"]);
    [q!, s!, Xo].forEach((x) => gpu.release(x));
  } catch (e) {
    say(`odd shape ${label}: FAILED ${(e as Error).stack ?? e}`);
    summary.push([`odd ${label}`, "FAILED", "-", "-"]);
  }
}

// the quantize epilogues: checks at small sizes (odd widths: a short last tile; 4004 % 8: the scalar path), then timing
const epi: { name: string; status: string; ok: boolean; kernels: string; ms?: number; bytes?: number }[] = [];
for (const c of EPILOGUES) {
  const row: (typeof epi)[number] = { name: c.name, status: "", ok: true, kernels: "" };
  epi.push(row);
  for (const [r, cols] of [[1024, 4096], [96, 4000], [64, 4004]] as const) {
    try {
      const k = checkEpilogue(gpu, c, r, cols);
      say(`${c.name}: ${k.line}${k.ok ? "" : "  <-- FAILED"}`);
      row.kernels = k.kernels;
      row.ok &&= k.ok;
      if (k.status !== "exact" || !row.status) row.status = k.status === "exact" ? "exact" : `${k.status} @${cols}`;
    } catch (e) {
      say(`${c.name} [${r}x${cols}]: check FAILED ${(e as Error).stack ?? e}`);
      row.ok = false;
      row.status = "FAILED";
    }
  }
  if (c.timed === false) continue;
  try {
    const t = timeEpilogue(gpu, c, R, C, REPS);
    row.ms = t.ms;
    row.bytes = t.bytes;
    // an unfused quantize is the standalone kernel measured above (the profile times fused kernels only)
    if (row.kernels.includes("standalone quantize") && oursMs.quantize_1x128) {
      row.ms += oursMs.quantize_1x128;
      row.bytes += R * C * 3 + (R * C / 128) * 4;
    }
    say(`${c.name} [${R}x${C}]: kernels ${row.kernels}; ${row.ms.toFixed(3)} ms, ${(row.bytes / 2 ** 20).toFixed(0)} MiB moved, ${(row.bytes / row.ms / 1e6).toFixed(0)} GB/s = ${((100 * row.bytes) / row.ms / 1e6 / copyGBps).toFixed(0)}% of copy (${t.detail})`);
  } catch (e) {
    say(`${c.name}: timing FAILED ${(e as Error).stack ?? e}`);
    row.ok = false;
  }
}

// the epilogues' other emitter forms (compiler/codegen/cuda/tuning.ts: tiles a lane group takes per trip
// and packs a lane takes of a tile in the map kernels, the row held in registers or re-read in the row
// kernels), each checked, then timed
const variantLines: string[] = [];
for (const c of EPILOGUES) {
  if (c.timed === false) continue;
  const overs: Partial<EmitTuning>[] = c.name.startsWith("rmsnorm") ? [{ quantRowRegs: true }]
    : [{ quantUnroll: 1 }, { quantUnroll: 4 }, { quantUnroll: 1, quantPacks: 2 }, { quantPacks: 2 }, { quantUnroll: 1, quantPacks: 4 }];
  for (const over of overs) {
    const label = `${c.name} [${tuningLabel(tuning(over))}]`;
    gpu.tuning = tuning(over);
    try {
      const k = checkEpilogue(gpu, c, 1024, 4096);
      const t = timeEpilogue(gpu, c, R, C, REPS);
      const line = `${label}: ${k.ok ? k.status : `FAILED ${k.status}`}; ${t.ms.toFixed(3)} ms, ${(t.bytes / t.ms / 1e6).toFixed(0)} GB/s = ${((100 * t.bytes) / t.ms / 1e6 / copyGBps).toFixed(0)}% of copy`;
      say(line);
      variantLines.push(line);
      if (!k.ok) epi.push({ name: label, status: k.status, ok: false, kernels: k.kernels });
    } catch (e) {
      say(`${label}: FAILED ${(e as Error).stack ?? e}`);
      epi.push({ name: label, status: "FAILED", ok: false, kernels: "" });
    }
  }
}
gpu.tuning = tuning();

// the PyTorch peer, same run
const peer = spawnSync("python3", ["bench/peers/fp8_quant.py", "--rows", String(R), "--cols", String(C)], { encoding: "utf8", timeout: 500_000 });
const peerRows = (peer.stdout ?? "").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { kernel: string; impl: string; GBps: number; ms: number });
if (peer.status !== 0) say(`peer failed (status ${peer.status}): ${(peer.stderr ?? "").slice(-2000)}`);
for (const r of peerRows) say(`peer ${r.kernel} ${r.impl}: ${r.GBps.toFixed(0)} GB/s`);
say("\nsummary, standalone kernels (bytes moved / time; peer ratio = shardts GB/s / peer GB/s)");
say(["kernel", "vs CPU", "shardts", "of copy", "/ eager", "/ compile"].map((h) => h.padEnd(18)).join(""));
for (const row of summary) {
  const p = (impl: string) => peerRows.find((r) => r.kernel === row[0] && r.impl === impl)?.GBps;
  const ratio = (g?: number) => (g && ours[row[0]!] ? `${(ours[row[0]!]! / g).toFixed(2)}x` : "-");
  say([...row, ratio(p("torch eager")), ratio(p("torch.compile"))].map((h) => h.padEnd(18)).join(""));
}
say("\nsummary, quantize epilogues at [R, C] (bytes: what shardts' kernels read and write; peer ratio = peer ms / shardts ms, same work)");
say(["workload", "vs CPU", "shardts", "of copy", "/ eager+quant", "/ compile", "kernels"].map((h) => h.padEnd(18)).join(""));
for (const r of epi) {
  const p = (impl: string) => peerRows.find((x) => x.kernel === r.name && x.impl === impl)?.ms;
  const ratio = (ms?: number) => (ms && r.ms ? `${(ms / r.ms).toFixed(2)}x` : "-");
  const gbps = r.ms && r.bytes ? r.bytes / r.ms / 1e6 : 0;
  say([r.name, r.ok ? r.status : `FAILED: ${r.status}`, gbps ? `${gbps.toFixed(0)} GB/s` : "-", gbps ? `${((100 * gbps) / copyGBps).toFixed(0)}%` : "-", ratio(p("torch eager")), ratio(p("torch.compile")), r.kernels].map((h) => h.padEnd(18)).join(""));
}
if (variantLines.length) say(["", "the epilogues' other emitter forms (the default is in the table above)", ...variantLines].join("\n"));
writeFileSync(join(outDir, "fp8-quant.txt"), lines.join("\n") + "\n");
process.exit(summary.every((r) => r[1] === "exact") && epi.every((r) => r.ok) ? 0 : 1);
