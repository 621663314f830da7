// Checkpoints reshard: a state saved under one mesh and layout loads under any other with every
// tensor bit-identical (the small MoE LM's parameters and BF16 moments after one step, under ten
// layouts; random tensors of every dtype under nested, uneven and 3-D placements); a rank reads only
// the byte ranges that overlap its piece; the rank files follow the safetensors format, checked by
// an independent reader written here from the published format (the Python `safetensors` package
// cannot be installed on this machine: PyPI is unreachable and Debian has no python3-safetensors).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DType, MeshSpec, Placement, TensorType } from "../../compiler/ir/types.ts";
import type { LocalData } from "../../compiler/ir/local.ts";
import { Trainer } from "../../stdlib/train/trainer.ts";
import { Layout, layoutByName } from "../../stdlib/nn/layout.ts";
import { ADAMW_DEFAULTS } from "../../stdlib/optim/adamw.ts";
import type { LmConfig } from "../../stdlib/nn/transformer.ts";
import { assemble, load, loadRank, newReadStats, readMetadata, save, type CheckpointState } from "../../stdlib/checkpoint/index.ts";
import { stateOf } from "./fixtures/checkpoint-state.ts";
import { piecesOf } from "../../stdlib/program.ts";
import { mulberry32 } from "../helpers/prng.ts";

const root = mkdtempSync(join(tmpdir(), "ckpt-reshard-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const bytesOf = (d: LocalData) => Buffer.from(d.buffer, d.byteOffset, d.byteLength);
const meshOf = (l: Layout): MeshSpec => ({ axes: l.axes, sizes: l.axes.map((a) => l.mesh[a]!) });
const tag = (m: MeshSpec) => m.axes.map((a, i) => `${a}=${m.sizes[i]}`).join("x");

/** First index where two arrays' bits differ, or -1. */
function firstDiff(a: LocalData, b: LocalData): number {
  if (a.length !== b.length) return 0;
  const x = bytesOf(a), y = bytesOf(b);
  if (x.equals(y)) return -1;
  for (let i = 0; i < a.length; i++) if (x.readUInt32LE(i * 4) !== y.readUInt32LE(i * 4)) return i;
  return -1;
}

describe("reshard matrix: the small MoE LM's parameters and BF16 moments after one step", () => {
  const model: LmConfig = {
    vocab: 40, model: 16, heads: 2, layers: 2, seq: 8, ffn: 24,
    moe: { experts: 4, topK: 2, ffn: 12, shared: 1, score: "softmax", auxLoss: 0.01, moeFrom: 1 },
  };
  const layouts: Layout[] = [
    layoutByName("single"),
    layoutByName("dp"), // dp=4, data
    layoutByName("fsdp"), // dp=4, fsdp
    layoutByName("hsdp"), // replica=2 x shard=2
    layoutByName("tp"), // tp=2
    layoutByName("ep"), // ep=4
    layoutByName("dp-ep"), // dp=2 x ep=2
    new Layout("fsdp3", { dp: 3 }, { dp: "fsdp" }), // uneven
    layoutByName("fsdp-tp"), // dp=2 fsdp x tp=2: nested splits of one dim
    new Layout("hsdp-ep", { replica: 2, shard: 2, ep: 2 }, { replica: "data", shard: "fsdp", ep: "expert" }),
  ];
  const B = 4;
  const ids = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 7 + 3) % model.vocab);
  const targets = Int32Array.from({ length: B * model.seq }, (_, i) => (i * 11 + 5) % model.vocab);
  const saved: { layout: Layout; trainer: Trainer; dir: string; state: CheckpointState; globals: Record<string, LocalData> }[] = [];
  const report: string[] = [];

  beforeAll(async () => {
    for (const layout of layouts) {
      const trainer = new Trainer({ model, layout, batch: B, opt: ADAMW_DEFAULTS, schedule: { peak: 1e-2, warmup: 1, total: 10, minRatio: 0.1 }, seed: 7, biasRate: 0.01 });
      trainer.run(ids, targets);
      const state = trainer.exportState();
      const globals = Object.fromEntries(Object.entries(state.tensors).map(([n, t]) => [n, assemble(state.mesh, t.type, t.pieces)]));
      const dir = join(root, `lm-${layout.name}`);
      await save(dir, { ...state, extras: { layout: layout.toString() } });
      saved.push({ layout, trainer, dir, state, globals });
    }
  }, 60_000);

  it(`saves under each of ${layouts.length} layouts and loads under each other, bit-identical (${layouts.length * layouts.length} pairs)`, async () => {
    let pairs = 0, tensors = 0;
    for (const from of saved) {
      // the moments are BF16 and really written as 2-byte BF16 (not widened)
      const meta = (await readMetadata(from.dir)).meta;
      expect(meta.tensors["embed.m"]!.dtype).toBe("bf16");
      expect(Object.keys(meta.tensors).length).toBe(Object.keys(from.state.tensors).length);
      for (const to of saved) {
        const mesh = meshOf(to.layout), types = to.trainer.stateTypes();
        const got = await load(from.dir, { mesh, tensors: types });
        expect(got.step).toBe(1);
        for (const [name, type] of Object.entries(types)) {
          const pieces = got.tensors[name]!;
          const g = assemble(mesh, type, pieces.map((p) => p!));
          expect(firstDiff(g, from.globals[name]!), `${from.layout.name} -> ${to.layout.name}: ${name}`).toBe(-1);
          // every rank, replicas included, holds exactly its region of the saved values
          const want = piecesOf(mesh, type, from.globals[name]!);
          pieces.forEach((p, r) => {
            expect(p!.shape, `${name} rank ${r}`).toEqual(want[r]!.shape);
            expect(firstDiff(p!.data, want[r]!.data), `${from.layout.name} -> ${to.layout.name}: ${name} rank ${r}`).toBe(-1);
          });
          tensors++;
        }
        pairs++;
      }
      report.push(`${from.layout.toString().padEnd(56)} saved ${statSync(join(from.dir, "step-1", "rank-0.safetensors")).size} B in rank-0`);
    }
    expect(pairs).toBe(layouts.length ** 2);
    console.log(`reshard matrix (LM): ${pairs} layout pairs, ${tensors} tensors compared bit for bit\n  ${report.join("\n  ")}`);
  }, 60_000);

  it("writes replicated pieces once: a dp=4 data-parallel checkpoint is as big as a single-device one", () => {
    const size = (d: string) => readdirSync(join(d, "step-1")).filter((f) => f.endsWith(".safetensors")).reduce((a, f) => a + statSync(join(d, "step-1", f)).size, 0);
    const single = saved.find((s) => s.layout.name === "single")!, dp = saved.find((s) => s.layout.name === "dp")!;
    const hdr = (d: string) => readdirSync(join(d, "step-1")).filter((f) => f.endsWith(".safetensors")).reduce((a, f) => a + 8 + Number(readFileSync(join(d, "step-1", f)).readBigUInt64LE(0)), 0);
    expect(size(dp.dir) - hdr(dp.dir)).toBe(size(single.dir) - hdr(single.dir));
    // and ranks 1..3 of dp=4 write no tensor data at all
    for (const r of [1, 2, 3]) {
      const f = join(dp.dir, "step-1", `rank-${r}.safetensors`);
      expect(statSync(f).size).toBe(8 + Number(readFileSync(f).readBigUInt64LE(0)));
    }
  });
});

// ---------------------------------------------------------------------------------------------
// random tensors of every dtype, placements drawn per mesh (nested, uneven, empty pieces)

const SHAPES: { name: string; dims: [string, number][]; dtype: DType }[] = [
  { name: "w.f32", dims: [["a", 7], ["b", 5], ["c", 3]], dtype: "f32" },
  { name: "m.bf16", dims: [["rows", 9], ["cols", 4]], dtype: "bf16" },
  { name: "q.e4m3", dims: [["x", 6], ["y", 6]], dtype: "fp8e4m3" },
  { name: "g.e5m2", dims: [["x", 5], ["y", 8]], dtype: "fp8e5m2" },
  { name: "scale.f32", dims: [["tiles", 3], ["k", 2]], dtype: "f32" },
  { name: "ids.i32", dims: [["n", 10]], dtype: "i32" },
  { name: "step.f32", dims: [], dtype: "f32" },
  { name: "tiny.f32", dims: [["t", 2], ["u", 1]], dtype: "f32" }, // split 4 ways: empty pieces
];
const MESHES: MeshSpec[] = [
  { axes: ["d"], sizes: [1] },
  { axes: ["dp"], sizes: [4] },
  { axes: ["dp"], sizes: [3] },
  { axes: ["x", "y"], sizes: [2, 2] },
  { axes: ["x", "y"], sizes: [2, 3] },
  { axes: ["p", "q", "r"], sizes: [2, 2, 2] },
];

function randomTypes(mesh: MeshSpec, seed: number): Record<string, TensorType> {
  const rnd = mulberry32(seed);
  return Object.fromEntries(SHAPES.map((s) => {
    const placements = mesh.axes.map((): Placement => {
      if (s.dims.length === 0 || rnd() < 0.3) return "R";
      // bias towards the first dim so that nested splits of one dim are common
      const d = rnd() < 0.5 ? s.dims[0]! : s.dims[Math.floor(rnd() * s.dims.length)]!;
      return `S(${d[0]})`;
    });
    return [s.name, { dims: s.dims.map(([name, size]) => ({ name, size })), dtype: s.dtype, placements }];
  }));
}

describe("reshard matrix: random tensors of every dtype", () => {
  const cases = MESHES.map((mesh, i) => ({ mesh, types: randomTypes(mesh, 100 + i) }));
  const dirs: string[] = [];
  const globals = stateOf(MESHES[0]!, 1, cases[0]!.types).globals; // the values do not depend on placements

  beforeAll(async () => {
    for (const [i, c] of cases.entries()) {
      const { state } = stateOf(c.mesh, 1, c.types);
      const dir = join(root, `rand-${i}-${tag(c.mesh)}`);
      await save(dir, state, { chunkBytes: 16 });
      dirs.push(dir);
    }
  });

  it(`loads each of ${MESHES.length} meshes' checkpoints on every other (${MESHES.length ** 2} pairs), bit-identical`, async () => {
    const nested = cases.flatMap((c) => Object.values(c.types).filter((t) => new Set(t.placements.filter((p) => p !== "R")).size < t.placements.filter((p) => p !== "R").length)).length;
    expect(nested).toBeGreaterThan(0);
    for (const [i] of cases.entries())
      for (const to of cases) {
        const got = await load(dirs[i]!, { mesh: to.mesh, tensors: to.types });
        for (const [name, type] of Object.entries(to.types)) {
          const g = assemble(to.mesh, type, got.tensors[name]!.map((p) => p!));
          expect(firstDiff(g, globals[name]!), `${tag(cases[i]!.mesh)} -> ${tag(to.mesh)}: ${name} ${type.placements.join(",")}`).toBe(-1);
        }
      }
    console.log(`reshard matrix (random tensors): ${MESHES.length ** 2} mesh pairs x ${SHAPES.length} tensors (f32, bf16, fp8 e4m3/e5m2, i32, 0-d, empty pieces), ${nested} nested placements`);
  });

  it("loadRank assembles one rank alone, like one process of a multi-process job", async () => {
    const to = cases[5]!;
    for (const r of [0, 5, 7]) {
      const alone = await loadRank(dirs[3]!, r, { mesh: to.mesh, tensors: to.types });
      const all = await load(dirs[3]!, { mesh: to.mesh, tensors: to.types }, { ranks: [r] });
      for (const name of Object.keys(to.types)) expect(bytesOf(alone.tensors[name]!.data).equals(bytesOf(all.tensors[name]![r]!.data))).toBe(true);
    }
  });

  it("refuses a template whose global shape or dtype differs from the saved tensor, naming both", async () => {
    const c = cases[1]!;
    const wrongShape = { ...c.types, "w.f32": { ...c.types["w.f32"]!, dims: [{ name: "a", size: 8 }, { name: "b", size: 5 }, { name: "c", size: 3 }] } };
    await expect(load(dirs[1]!, { mesh: c.mesh, tensors: wrongShape })).rejects.toThrow(/metadata\.json, tensor 'w\.f32': saved with dims a:7, b:5, c:3, the template has a:8/);
    const wrongDtype = { ...c.types, "m.bf16": { ...c.types["m.bf16"]!, dtype: "f32" as const } };
    await expect(load(dirs[1]!, { mesh: c.mesh, tensors: wrongDtype })).rejects.toThrow(/tensor 'm\.bf16': saved as bf16, the template wants f32/);
    await expect(load(dirs[1]!, { mesh: c.mesh, tensors: { nope: c.types["ids.i32"]! } })).rejects.toThrow(/tensor 'nope': the checkpoint has no such tensor/);
  });
});

// ---------------------------------------------------------------------------------------------

describe("byte-range reads", () => {
  it("a rank loading its shard reads its overlap, not the whole checkpoint", async () => {
    const fsdp: MeshSpec = { axes: ["dp"], sizes: [4] };
    const types: Record<string, TensorType> = {};
    for (let i = 0; i < 8; i++) types[`p${i}`] = { dims: [{ name: "rows", size: 64 }, { name: "cols", size: 96 }], dtype: i % 2 ? "bf16" : "f32", placements: ["S(rows)"] };
    const { state, globals } = stateOf(fsdp, 3, types);
    const dir = join(root, "ranges-fsdp");
    await save(dir, state);
    const total = readdirSync(join(dir, "step-3")).reduce((a, f) => a + statSync(join(dir, "step-3", f)).size, 0);
    // same layout: rank 2 reads only rank-2's file (plus metadata)
    const same = newReadStats();
    await loadRank(dir, 2, { mesh: fsdp, tensors: types }, { stats: same });
    expect([...same.files]).toEqual(["rank-2.safetensors"]);
    expect(same.bytesRead).toBeLessThan(0.35 * total);
    // dp=8: rank 5 wants rows 40..47, inside saved rank 2's rows 32..47
    const dp8: MeshSpec = { axes: ["dp"], sizes: [8] };
    const eight = newReadStats();
    const got = await loadRank(dir, 5, { mesh: dp8, tensors: types }, { stats: eight });
    expect([...eight.files]).toEqual(["rank-2.safetensors"]);
    for (const [n, g] of Object.entries(globals)) expect(firstDiff(got.tensors[n]!.data, g.slice(40 * 96, 48 * 96))).toBe(-1);
    // one device: everything is read, once
    const one = newReadStats();
    await loadRank(dir, 0, { mesh: { axes: ["d"], sizes: [1] }, tensors: Object.fromEntries(Object.entries(types).map(([n, t]) => [n, { ...t, placements: ["R"] as Placement[] }])) }, { stats: one });
    expect(one.bytesRead).toBe(total);
    console.log(`byte-range reads (fsdp dp=4 checkpoint, ${total} B in all): its own rank ${same.bytesRead} B; a dp=8 rank ${eight.bytesRead} B; one device ${one.bytesRead} B`);
  });

  it("reads only the checksum chunks a sub-piece overlap touches", async () => {
    const dp2: MeshSpec = { axes: ["dp"], sizes: [2] };
    const types: Record<string, TensorType> = { big: { dims: [{ name: "rows", size: 64 }, { name: "cols", size: 1024 }], dtype: "f32", placements: ["S(rows)"] } };
    const { state, globals } = stateOf(dp2, 1, types);
    const dir = join(root, "ranges-chunks");
    await save(dir, state, { chunkBytes: 4096 }); // one row per chunk
    const piece = 32 * 1024 * 4;
    const dp8: MeshSpec = { axes: ["dp"], sizes: [8] };
    const stats = newReadStats();
    const got = await loadRank(dir, 1, { mesh: dp8, tensors: types }, { stats });
    expect(firstDiff(got.tensors.big!.data, globals.big!.slice(8 * 1024, 16 * 1024))).toBe(-1);
    const meta = statSync(join(dir, "step-1", "metadata.json")).size;
    const header = 8 + Number(readFileSync(join(dir, "step-1", "rank-0.safetensors")).readBigUInt64LE(0));
    // 8 rows of 4 KiB, the header and metadata.json; not the 128 KiB piece
    expect(stats.bytesRead).toBe(8 * 4096 + header + meta);
    expect(stats.bytesRead - meta - header).toBeLessThan(piece / 3);
    // a column split: every row of the piece is touched, but only 1/4 of each row is needed
    const cols: MeshSpec = { axes: ["tp"], sizes: [4] };
    const colTypes = { big: { ...types.big!, placements: ["S(cols)"] as Placement[] } };
    const s2 = newReadStats();
    await loadRank(dir, 3, { mesh: cols, tensors: colTypes }, { stats: s2 });
    expect(s2.reads).toBeGreaterThan(0);
  });
});

// ---------------------------------------------------------------------------------------------
// an independent safetensors reader, from the format's description (github.com/huggingface/safetensors):
// 8 bytes little-endian u64 N; N bytes of UTF-8 JSON; a byte buffer. JSON: {name: {dtype, shape,
// data_offsets: [BEGIN, END]}, "__metadata__": {str: str}}; offsets relative to the buffer, no holes,
// tensors in row-major little-endian order.

function decodeE4M3(b: number): number {
  const s = b & 0x80 ? -1 : 1, e = (b >> 3) & 0xf, m = b & 7;
  if (e === 15 && m === 7) return NaN;
  return e === 0 ? s * 2 ** -6 * (m / 8) : s * 2 ** (e - 7) * (1 + m / 8);
}
function decodeE5M2(b: number): number {
  const s = b & 0x80 ? -1 : 1, e = (b >> 2) & 0x1f, m = b & 3;
  if (e === 31) return m ? NaN : s * Infinity;
  return e === 0 ? s * 2 ** -14 * (m / 4) : s * 2 ** (e - 15) * (1 + m / 4);
}

function readSafetensors(file: string): { meta: Record<string, string>; tensors: Map<string, { dtype: string; shape: number[]; values: number[] }> } {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const data = buf.subarray(8 + n);
  const tensors = new Map<string, { dtype: string; shape: number[]; values: number[] }>();
  const spans: [number, number][] = [];
  for (const [key, v] of Object.entries(header)) {
    if (key === "__metadata__") continue;
    const { dtype, shape, data_offsets: [b, e] } = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    spans.push([b, e]);
    const count = shape.reduce((a, x) => a * x, 1), raw = data.subarray(b, e), values: number[] = [];
    const size = { F32: 4, I32: 4, BF16: 2, F8_E4M3: 1, F8_E5M2: 1 }[dtype]!;
    expect(e - b).toBe(count * size);
    for (let i = 0; i < count; i++) {
      if (dtype === "F32") values.push(raw.readFloatLE(4 * i));
      else if (dtype === "I32") values.push(raw.readInt32LE(4 * i));
      else if (dtype === "BF16") values.push(new Float32Array(new Uint32Array([raw.readUInt16LE(2 * i) << 16]).buffer)[0]!);
      else if (dtype === "F8_E4M3") values.push(decodeE4M3(raw[i]!));
      else values.push(decodeE5M2(raw[i]!));
    }
    tensors.set(key, { dtype, shape, values });
  }
  // the buffer is fully covered, without holes or overlaps; the header is padded to 8 bytes
  spans.sort((x, y) => x[0] - y[0]);
  let at = 0;
  for (const [b, e] of spans) (expect(b).toBe(at), (at = e));
  expect(at).toBe(data.length);
  expect(n % 8).toBe(0);
  return { meta: header.__metadata__ ?? {}, tensors };
}

describe("rank files are safetensors", () => {
  it("an independent reader decodes every piece of every rank file to the saved values", async () => {
    const mesh: MeshSpec = { axes: ["x", "y"], sizes: [2, 2] };
    const types = randomTypes(mesh, 103);
    const { state, globals } = stateOf(mesh, 4, types);
    const dir = join(root, "st-compat");
    await save(dir, state);
    const { meta } = await readMetadata(dir);
    let checked = 0;
    for (const f of meta.files) {
      const st = readSafetensors(join(dir, "step-4", f.file));
      expect(st.meta).toEqual({ format: "shardts-checkpoint", version: "1", rank: String(f.rank), step: "4" });
      for (const [name, tm] of Object.entries(meta.tensors))
        for (const p of tm.pieces.filter((q) => q.file === f.file)) {
          const t = st.tensors.get(p.key)!;
          expect(t.shape).toEqual(p.shape);
          // the global values of the piece's region, row-major
          const g = globals[name]!, gs = tm.shape;
          const want: number[] = [];
          const count = p.shape.reduce((a, x) => a * x, 1);
          for (let i = 0; i < count; i++) {
            let rem = i, flat = 0;
            const idx = p.shape.map(() => 0);
            for (let d = p.shape.length - 1; d >= 0; d--) (idx[d] = rem % p.shape[d]!), (rem = Math.floor(rem / p.shape[d]!));
            for (let d = 0; d < gs.length; d++) flat = flat * gs[d]! + p.offset[d]! + idx[d]!;
            want.push(g[flat]!);
          }
          expect(t.values, `${f.file} ${name}`).toEqual(want);
          checked++;
        }
    }
    expect(checked).toBe(Object.values(meta.tensors).reduce((a, t) => a + t.pieces.length, 0));
  });
});
