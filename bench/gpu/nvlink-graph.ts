// On one GPU: the MoE NVLink transport's kernels (runtime/cuda/kernels/moe-nvlink-sources.ts) with
// every rank of an expert-axis group in this one process, each rank on a stream of its own and with a
// window of its own (the "peers" are this GPU's own buffers: the same kernels, barriers and epochs as
// over NVLink, without a second GPU). One step = dispatch, combine's push back, the weighted
// redispatch, as in test/codegen/moe-nvlink-kernels.test.ts, which runs them on the CPU emulation.
//   1. eager: three steps in a row; every rank's outputs against the CPU reference's pieces, bit for bit;
//   2. captured: one step of every rank recorded into one CUDA graph (the ranks' streams forked from the
//      capturing one and joined back), replayed five times with the outputs cleared before each: the
//      same bits every time, and every block's epoch counter at 3 x (steps run) after, which is what
//      lets a replay's barriers wait for this replay's flags and not pass on the capture's.
// Also the wall time of an eager step and of a replay (a loopback on one GPU: not a transport figure).
// The ranks' kernels must run at once (they wait for each other): a group takes W x 8 blocks of the
// GPU's SMs; a barrier that never meets traps after 10 s and the case fails.
//   (bundled by npm run gpu:pack; run there: bash bench/gpu/run.sh nvlink-graph)
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { CudaExecutor } from "../../runtime/cuda/executor.ts";
import { native, packArgs, type KernelArg } from "../../runtime/cuda/native.ts";
import { CaptureMode } from "../../runtime/cuda/native-types.ts";
import { moeNvlCombine, moeNvlPush, NVL_BLOCK } from "../../runtime/cuda/kernels/moe-nvlink-sources.ts";
import { nvlGeometry, windowLayout } from "../../runtime/cuda/moe-nvlink-layout.ts";
import { nvlWindowArgs } from "../../runtime/cuda/moe-nvlink.ts";
import { getOp } from "../../compiler/ops/index.ts";
import type { TensorType } from "../../compiler/ir/types.ts";
import { moeCase, S, K, type Routing } from "../../test/helpers/moe-nvlink-case.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const gpu = new CudaExecutor(native());
const a = gpu.addon;
const lines: string[] = [`device ${a.deviceProperties(0).name}; MoE NVLink kernels, every rank of a group on this one GPU (loopback windows)`];
let failed = 0;
const NB = 8, REPLAYS = 5;
// a barrier that never meets traps after 10 s (nvlWindowArgs passes the collective timeout)
process.env.SHARDTS_COLLECTIVE_TIMEOUT_S ??= "10";

const CASES: { axes: Record<string, number>; B: number; E: number; routing: Routing; D: number }[] = [
  { axes: { ep: 2 }, B: 4, E: 8, routing: "random", D: 512 }, // 2 KiB rows: 16-byte words
  { axes: { ep: 4 }, B: 8, E: 12, routing: "skewed", D: 260 }, // 1040-byte rows: 16-byte words, a ragged tail
  { axes: { ep: 2 }, B: 6, E: 6, routing: "empty", D: 5 }, // 20-byte rows: 4-byte words, ranks with nothing
];

const upload = (data: ArrayBufferView): bigint => {
  const p = a.memAlloc(Math.max(data.byteLength, 16));
  if (data.byteLength) a.memcpyHtoD(p, data);
  return p;
};
const f32 = (x: ArrayLike<number>) => Float32Array.from(x), i32 = (x: ArrayLike<number>) => Int32Array.from(x);
const bitsEqual = (x: Float32Array | Int32Array, y: ArrayLike<number>, isInt = false) => {
  const want = isInt ? Int32Array.from(y) : Float32Array.from(y);
  return x.length === want.length && Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(want.buffer));
};

for (const c of CASES) {
  const label = `${JSON.stringify(c.axes)} B=${c.B} E=${c.E} ${c.routing} d=${c.D}`;
  try {
    const m = moeCase(c.axes, c.B, c.E, c.routing, c.D);
    const W = m.plan.world, n = S * K, G = c.E, D = c.D, V = (D * 4) % 16 === 0 ? 16 : 4, words = (D * 4) / V;
    const ranks = [...Array(W).keys()];
    const geos = ranks.map((r) => nvlGeometry(m.plan, m.rowsSlot, m.ins.inputs[1]!, "ep", "rows", ["b"], r));
    const Bdst = geos[0]!.Bdst, Bloc = geos[0]!.dstOf.map((d) => d.length);
    const L = windowLayout(W, NB, Bdst * G, W * Bdst, Bdst * n * D * 4);
    // the weighted redispatch's reference, as each expert rank's piece
    const tx: TensorType = { dims: [{ name: "b", size: c.B }, { name: "s", size: S }, { name: "d", size: D }], dtype: "f32", placements: [] };
    const tp = m.plan.values[m.ins.outputs[1]!]!.type, tw: TensorType = { ...tx, dims: [tx.dims[0]!, tx.dims[1]!, { name: "k", size: K }] };
    const tr = m.plan.values[m.rowsSlot]!.type;
    const [redis] = getOp("moe_redispatch").global!([m.gx, m.gPerm, m.gw], { axis: null, dim: "s", size: S, k: "k", numK: K }, [tx, { ...tp, placements: [] }, tw], [{ ...tr, placements: [] }]);

    const windows = ranks.map(() => a.memAlloc(L.bytes)), epochs = ranks.map(() => a.memAlloc(8 * NB));
    for (const r of ranks) a.memsetD8(windows[r]!, 0, L.bytes), a.memsetD8(epochs[r]!, 0, 8 * NB);
    const peers = upload(BigUint64Array.from(windows));
    const ne = (r: number) => geos[r]!.efirst[r + 1]! - geos[r]!.efirst[r]!;
    const R = ranks.map((r) => ({
      x: upload(f32(m.srcX[r]!.data)), perm: upload(i32(m.res.locals[1]![r]!.data)), cnt: upload(i32(m.srcCounts[r]!.data)), w: upload(f32(m.srcW[r]!.data)),
      geoD: upload(i32([...geos[r]!.efirst, ...geos[r]!.dstOf[r]!])), geoC: upload(i32([...geos[r]!.efirst, ...geos[r]!.srcRank, ...geos[r]!.srcLb])),
      rowsE: upload(f32(m.res.locals[0]![r]!.data)), cntE: upload(i32(m.res.locals[2]![r]!.data)),
      out: a.memAlloc(Bdst * n * D * 4), back: a.memAlloc(Bloc[r]! * n * D * 4 + 16), outC: a.memAlloc(Math.max(Bdst * ne(r) * 4, 16)), outR: a.memAlloc(Bdst * n * D * 4),
      stream: a.streamCreate(1),
    }));
    a.ctxSynchronize(); // (the set-up's fills and copies are done before any rank's stream starts)
    const d = moeNvlPush({ redispatch: false, V }), comb = moeNvlCombine(V), rw = moeNvlPush({ redispatch: true, V: 1, weighted: "f32" });
    const head = (r: number, geo: bigint, counts: boolean): KernelArg[] => nvlWindowArgs({ peersTable: peers, epochs: epochs[r]! }, geo, W, r, L, counts);
    // every kernel loaded before the first launch: a module load waits for the context's running
    // kernels, and a rank's kernel waits for its peers' launches, which the host would then not reach
    const fns = new Map([d, comb, rw].map((k) => [k, gpu.fn(k.name, k.source)] as const));
    const launch = (k: { name: string; source: string }, r: number, args: KernelArg[]) => a.launchKernel(fns.get(k)!, [NB, 1, 1], [NVL_BLOCK, 1, 1], 0, R[r]!.stream, packArgs(...args));
    /** Op k of rank r on its stream: 0 dispatch, 1 combine's push back, 2 the weighted redispatch. */
    const op = (r: number, k: number) => {
      const x = R[r]!;
      if (k === 0)
        return launch(d, r, [...head(r, x.geoD, true),
          ["ptr", x.x], ["ptr", x.perm], ["ptr", x.cnt], ["ptr", 0n], ["i32", Bloc[r]!], ["i32", Bdst], ["i32", G], ["i32", n], ["i32", K], ["i64", S], ["i64", words], ["ptr", x.out], ["ptr", x.outC]]);
      if (k === 1) {
        launch(comb, r, [...head(r, x.geoC, false), ["ptr", x.rowsE], ["ptr", x.cntE], ["i32", Bdst], ["i32", n], ["i64", words]]);
        // (combine's push back leaves this rank's tokens in its window: read there, before the redispatch reuses it)
        return a.memcpyDtoDAsync(x.back, windows[r]! + BigInt(L.rows), Bloc[r]! * n * D * 4, x.stream);
      }
      launch(rw, r, [...head(r, x.geoD, true),
        ["ptr", x.x], ["ptr", x.perm], ["ptr", x.cntE], ["ptr", x.w], ["i32", Bloc[r]!], ["i32", Bdst], ["i32", G], ["i32", n], ["i32", K], ["i64", S], ["i64", D], ["ptr", x.outR], ["ptr", 0n]]);
    };
    /** One step: each op launched for every rank before the next op (no host wait between them). */
    const stepAll = () => {
      for (let k = 0; k < 3; k++) for (const r of ranks) op(r, k);
    };
    const syncAll = () => R.forEach((x) => a.streamSynchronize(x.stream));
    /** Outputs set to NaN bits (on rank 0's stream, waited for), so a step that wrote nothing shows. */
    const clear = () => {
      const s0 = R[0]!.stream;
      for (const [r, x] of R.entries()) {
        a.memsetD8(x.out, 0xff, Bdst * n * D * 4, s0), a.memsetD8(x.outR, 0xff, Bdst * n * D * 4, s0), a.memsetD8(x.outC, 0xff, Bdst * ne(r) * 4, s0);
        a.memsetD8(x.back, 0xff, Bloc[r]! * n * D * 4, s0);
      }
      a.streamSynchronize(s0);
    };
    const down = (p: bigint, count: number, int = false) => {
      const t = int ? new Int32Array(count) : new Float32Array(count);
      if (count) a.memcpyDtoH(t, p, count * 4);
      return t;
    };
    /** What differs from the CPU reference's pieces (empty: every bit equal). */
    const check = (): string[] => {
      const bad: string[] = [];
      for (const r of ranks) {
        const x = R[r]!;
        if (!bitsEqual(down(x.out, Bdst * n * D) as Float32Array, m.res.locals[0]![r]!.data)) bad.push(`dispatch rows on rank ${r}`);
        if (!bitsEqual(down(x.outC, Bdst * ne(r), true) as Int32Array, m.res.locals[2]![r]!.data, true)) bad.push(`dispatch counts on rank ${r}`);
        if (!bitsEqual(down(x.outR, Bdst * n * D) as Float32Array, m.pieceOfRows(redis!, r).data)) bad.push(`redispatch rows on rank ${r}`);
        // combine's push back: every kept row of the token side, in sorted order (the rest is never read)
        const back = down(x.back, Bloc[r]! * n * D) as Float32Array;
        for (let lb = 0; lb < Bloc[r]!; lb++) {
          let kept = 0;
          for (let g = 0; g < G; g++) kept += m.srcCounts[r]!.data[lb * G + g]!;
          const at = lb * n * D;
          if (!bitsEqual(back.subarray(at, at + kept * D), m.srcRows[r]!.data.subarray(at, at + kept * D))) bad.push(`combine push back to rank ${r} entry ${lb}`);
        }
      }
      return bad;
    };
    const epochsRead = () => ranks.flatMap((r) => Array.from(new BigUint64Array(down(epochs[r]!, 2 * NB, true).buffer), Number));

    // 1. eager, three steps
    for (let s = 0; s < 3; s++) {
      clear();
      stepAll();
      syncAll();
      const bad = check();
      if (bad.length) throw new Error(`eager step ${s + 1}: ${bad.join("; ")} differ from the CPU reference`);
    }
    const t0 = performance.now(), reps = 20;
    for (let s = 0; s < reps; s++) stepAll();
    syncAll();
    const eagerMs = (performance.now() - t0) / reps;
    let steps = 3 + reps;

    // 2. captured: the ranks' streams fork from rank 0's (capturing) stream and join back
    const s0 = R[0]!.stream, fork = a.eventCreate(2), joins = ranks.map(() => a.eventCreate(2));
    a.streamBeginCapture(s0, CaptureMode.relaxed);
    a.eventRecord(fork, s0);
    for (const r of ranks.slice(1)) a.streamWaitEvent(R[r]!.stream, fork);
    stepAll();
    for (const r of ranks.slice(1)) a.eventRecord(joins[r]!, R[r]!.stream), a.streamWaitEvent(s0, joins[r]!);
    const graph = a.streamEndCapture(s0), exec = a.graphInstantiate(graph);
    const notes: string[] = [];
    for (let k = 0; k < REPLAYS; k++) {
      syncAll();
      clear();
      a.graphLaunch(exec, s0);
      a.streamSynchronize(s0);
      steps++;
      const bad = check();
      if (bad.length) throw new Error(`replay ${k + 1}: ${bad.join("; ")} differ from the CPU reference`);
    }
    const ep = epochsRead(), want = 3 * steps;
    if (ep.some((e) => e !== want)) throw new Error(`epoch counters after ${steps} steps: ${ep.join(",")}; expected ${want} in every block of every rank`);
    const t1 = performance.now();
    for (let s = 0; s < reps; s++) a.graphLaunch(exec, s0);
    a.streamSynchronize(s0);
    const graphMs = (performance.now() - t1) / reps;
    notes.push(`eager step ${(eagerMs * 1e3).toFixed(0)} us, replay ${(graphMs * 1e3).toFixed(0)} us (wall, loopback on one GPU)`);
    lines.push(`${label} (W=${W}, ${NB} blocks a rank): eager x3 and ${REPLAYS} replays equal the CPU reference bit for bit; epoch counters ${want} = 3 ops x ${steps} steps in all ${W * NB} blocks; ${notes.join("; ")}: ok`);
    a.graphExecDestroy(exec);
    a.graphDestroy(graph);
    a.eventDestroy(fork);
    for (const e of joins) a.eventDestroy(e);
  } catch (e) {
    failed++;
    lines.push(`${label}: FAIL ${(e as Error).stack?.split("\n").slice(0, 3).join(" | ")}`);
    try {
      a.ctxSynchronize();
    } catch {
      // a trapped barrier leaves the context unusable: the later cases fail too, and say so
    }
  }
}

lines.push(failed ? `${failed} FAILED` : "ALL PASS");
writeFileSync(join(outDir, "nvlink-graph.txt"), lines.join("\n") + "\n");
console.log(lines.join("\n"));
process.exit(failed ? 1 : 0);
