// FFMA yield interleaving in a compiled kernel (DeepGEMM's cubin edit, written anew here): in each
// run of FFMA instructions (the FP8 GEMM's promotion: acc += scale · partial, 64 a chunk), the first
// 9/16 of those that keep operand B in the reuse cache lose the reuse and gain a yield, so the warp
// scheduler may switch to the other consumer's warp between them and issue its wgmmas sooner, instead
// of running the whole promotion first. DeepGEMM measured 10%+ on some fine-grained-scaling shapes.
//
// Volta+ SASS, 128-bit instructions read as two little-endian 64-bit words lo and hi: the opcode is lo's
// low 12 bits (FFMA R, R, R, R: 0x223), the destination register lo bits 16..23; in hi, bit 45 is the
// yield flag (set: do not yield) and bits 58..61 the operand reuse flags (bit 59: operand B). ptxas 13
// already alternates (every other FFMA keeps B's reuse and does not yield); this makes the run's first
// part yield throughout. Checked on a GPU machine against cuobjdump's listing (bench/gpu/sass-yield.ts).
// A pure byte edit: the kernel's length, registers and every other instruction stay as compiled.

/** The file offset and size of section `.text.<kernel>` of an ELF64 cubin, or undefined. */
export function textSection(cubin: Uint8Array, kernel: string): { offset: number; size: number } | undefined {
  const v = new DataView(cubin.buffer, cubin.byteOffset, cubin.byteLength);
  if (cubin.length < 64 || v.getUint32(0, false) !== 0x7f454c46 || cubin[4] !== 2) return undefined; // "\x7fELF", 64-bit
  const shoff = Number(v.getBigUint64(0x28, true)), shentsize = v.getUint16(0x3a, true), shnum = v.getUint16(0x3c, true), shstrndx = v.getUint16(0x3e, true);
  const section = (i: number) => {
    const o = shoff + i * shentsize;
    return { name: v.getUint32(o, true), offset: Number(v.getBigUint64(o + 0x18, true)), size: Number(v.getBigUint64(o + 0x20, true)) };
  };
  const strtab = section(shstrndx).offset;
  const want = `.text.${kernel}`;
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    let end = strtab + s.name;
    while (cubin[end] !== 0 && end < cubin.length) end++;
    if (Buffer.from(cubin.subarray(strtab + s.name, end)).toString("latin1") === want) return { offset: s.offset, size: s.size };
  }
  return undefined;
}

const FFMA_RRRR = 0x223n;
const YIELD = 1n << 45n, REUSE_B = 1n << 59n;
/** Runs shorter than this are left alone (DeepGEMM's threshold). */
const MIN_RUN = 8;

export const isFfma = (lo: bigint): boolean => (lo & 0xfffn) === FFMA_RRRR;

export interface YieldPatch {
  cubin: Uint8Array;
  /** FFMA instructions in the kernel, runs of at least MIN_RUN, and instructions changed. */
  ffma: number;
  runs: number;
  changed: number;
  /** Byte offsets (within the kernel's text) of the changed instructions. */
  at: number[];
}

/**
 * A copy of `cubin` with kernel `kernel`'s FFMA runs edited (the input is not modified): "deepgemm",
 * the first 9/16 of each run yield (above); "none", no FFMA of a run yields (bit 45 set on every one,
 * reuse flags kept), so a promotion is issued whole before the scheduler switches warps.
 */
export function interleaveFfmaYield(cubin: Uint8Array, kernel: string, mode: "deepgemm" | "none" = "deepgemm"): YieldPatch {
  const text = textSection(cubin, kernel);
  if (!text) throw new Error(`interleaveFfmaYield: no section .text.${kernel} in the cubin`);
  const out = new Uint8Array(cubin);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const lo = (i: number) => v.getBigUint64(text.offset + i * 16, true);
  const hiAt = (i: number) => text.offset + i * 16 + 8;
  const n = Math.floor(text.size / 16);
  let ffma = 0, runs = 0;
  const at: number[] = [];
  for (let i = 0; i < n; ) {
    if (!isFfma(lo(i))) {
      i++;
      continue;
    }
    let j = i;
    while (j < n && isFfma(lo(j))) j++;
    ffma += j - i;
    if (j - i >= MIN_RUN && mode === "none") {
      runs++;
      for (let k = i; k < j; k++) {
        const hi = v.getBigUint64(hiAt(k), true);
        if ((hi & YIELD) === 0n) {
          v.setBigUint64(hiAt(k), hi | YIELD, true);
          at.push(k * 16);
        }
      }
    } else if (j - i >= MIN_RUN) {
      runs++;
      // the first 9/16 of the run; an instruction whose B stays in the reuse cache yields instead where
      // its destination is new in the run, or repeats the last one's while that kept its reuse
      const seen = new Set<bigint>();
      let lastReused = false, lastDst = -1n;
      for (let k = i; k < i + Math.floor(((j - i) * 9) / 16); k++) {
        const dst = (lo(k) >> 16n) & 0xffn;
        let hi = v.getBigUint64(hiAt(k), true);
        let reused = (hi & REUSE_B) !== 0n;
        if (reused && (!seen.has(dst) || (lastReused && dst === lastDst))) {
          hi &= ~(REUSE_B | YIELD); // ptxas sets both together on these (a reused B does not yield); DeepGEMM flips the pair
          v.setBigUint64(hiAt(k), hi, true);
          reused = false;
          at.push(k * 16);
        }
        seen.add(dst);
        lastReused = reused;
        lastDst = dst;
      }
    }
    i = j;
  }
  return { cubin: out, ffma, runs, changed: at.length, at };
}
