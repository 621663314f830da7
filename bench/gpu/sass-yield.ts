// On a GPU machine (it has cuobjdump): the FFMA yield edit (runtime/cuda/sass-yield.ts) against
// cuobjdump's reading of the same cubins. For each ffmaYield kernel of the bench's list, compiled by
// NVRTC as the executor compiles it: every instruction the edit's opcode test calls FFMA R,R,R,R is an
// FFMA with four register operands in cuobjdump's listing and the other way round; the edited
// image disassembles to the same text except that the changed FFMAs lost operand B's ".reuse"; and
// nothing else differs. Writes sass-yield.txt to --out.
//   npm run gpu:pack; there: bash bench/gpu/run.sh sass-yield
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { configName, experimentalGemmCandidates } from "../../compiler/codegen/cuda/gemm/config.ts";
import { emitFp8Gemm } from "../../compiler/codegen/cuda/gemm/emit.ts";
import { archFor, compileCuda } from "../../runtime/cuda/compile.ts";
import { native } from "../../runtime/cuda/native.ts";
import { interleaveFfmaYield, isFfma, textSection } from "../../runtime/cuda/sass-yield.ts";

const outDir = process.argv.includes("--out") ? process.argv[process.argv.indexOf("--out") + 1]! : ".";
const lines: string[] = [];
const say = (s: string) => (console.log(s), lines.push(s));
const cuobjdump = [process.env.CUDA_HOME && join(process.env.CUDA_HOME, "bin/cuobjdump"), "/usr/local/cuda/bin/cuobjdump"].find((p) => p && existsSync(p)) ?? "cuobjdump";
const a = native(), arch = archFor(...a.deviceProperties(0).computeCapability);
const dir = join(outDir, "sass-yield");
mkdirSync(dir, { recursive: true });

/** cuobjdump -sass of one cubin: instruction offset → its text (address and hex comments removed). */
function listing(file: string): Map<number, string> {
  const out = execFileSync(cuobjdump, ["-sass", file], { encoding: "utf8", maxBuffer: 1 << 28 });
  const m = new Map<number, string>();
  for (const l of out.split("\n")) {
    const hit = /^\s*\/\*([0-9a-f]{4,})\*\/\s+(.*?)\s*\/\*\s*0x[0-9a-f]+\s*\*\/\s*$/.exec(l);
    if (hit) m.set(parseInt(hit[1]!, 16), hit[2]!.replace(/\s+/g, " ").trim());
  }
  return m;
}

let failures = 0;
const kernels = [false, true].flatMap((g) => experimentalGemmCandidates(g).filter((c) => c.ffmaYield));
say(`FFMA yield edit against ${cuobjdump}, ${kernels.length} kernels for ${arch}`);
for (const c of kernels) {
  const k = emitFp8Gemm(c);
  const cubin = compileCuda(a, k.name, k.source, arch).cubin;
  const p = interleaveFfmaYield(cubin, k.name, c.ffmaYield);
  const before = join(dir, `${k.name}.cubin`), after = join(dir, `${k.name}.yield.cubin`);
  writeFileSync(before, cubin);
  writeFileSync(after, p.cubin);
  const l0 = listing(before), l1 = listing(after);
  const text = textSection(cubin, k.name)!;
  const view = new DataView(cubin.buffer, cubin.byteOffset);
  const problems: string[] = [];
  const changed = new Set(p.at);
  for (const [off, ins] of l0) {
    const ours = isFfma(view.getBigUint64(text.offset + off, true));
    const theirs = /^(@!?U?P\w+ )?FFMA(\.\w+)* R(?:\d+|Z), -?\|?R(?:\d+|Z)(\.reuse)?\|?, -?\|?R(?:\d+|Z)(\.reuse)?\|?, -?\|?R(?:\d+|Z)(\.reuse)?\|? ;$/.test(ins);
    if (ours !== theirs) problems.push(`${off.toString(16)}: opcode test ${ours}, cuobjdump "${ins}"`);
    const now = l1.get(off);
    // operands: "FFMA R1", "R2", "R3.reuse", "R1 ;": operand B is the third
    const ops = ins.split(", ");
    // "deepgemm" drops B's reuse (shown as ".reuse"); "none" changes only the yield flag, which the listing does not show
    const drop = changed.has(off) && c.ffmaYield === "deepgemm";
    const want = drop ? [...ops.slice(0, 2), ops[2]!.replace(".reuse", ""), ...ops.slice(3)].join(", ") : ins;
    if (drop && !ops[2]?.includes(".reuse")) problems.push(`${off.toString(16)}: changed, but operand B had no .reuse: "${ins}"`);
    if (changed.has(off) && !theirs) problems.push(`${off.toString(16)}: changed, but not an FFMA R,R,R,R: "${ins}"`);
    if (now !== want) problems.push(`${off.toString(16)}: after the edit "${now}", expected "${want}"`);
  }
  if (l1.size !== l0.size) problems.push(`${l0.size} instructions before, ${l1.size} after`);
  failures += problems.length ? 1 : 0;
  say(`${configName(c)}: ${l0.size} instructions, ${p.ffma} FFMA R,R,R,R in ${p.runs} runs, ${p.changed} changed${problems.length ? `  FAIL:\n  ${problems.slice(0, 12).join("\n  ")}` : "; agrees with cuobjdump  ok"}`);
}
say(failures ? `${failures} kernel(s) FAILED` : "ALL PASS");
writeFileSync(join(outDir, "sass-yield.txt"), lines.join("\n") + "\n");
process.exit(failures ? 1 : 0);
