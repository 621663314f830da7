// A scheduling-hint rewrite of the FP8 GEMM's promotion FFMAs in a compiled sm_90a cubin, after
// DeepGEMM's observation that flipping the yield hint on part of the FFMA runs lets the warp
// scheduler interleave the other consumer warpgroup's wgmma issue with this one's promotion.
//
// sm_90 instructions are 16 bytes (two little-endian 64-bit words). What is read here, checked on
// nvcc 13.0 output of these kernels (test/codegen/fp8-gemm-sass-patch.test.ts): the low word's bits
// 0-11 are the opcode, 0x223 for FFMA with three register operands (Rd bits 16-23, Ra 24-31, Rb
// 32-39, Rc the high word's bits 0-7); the high word's bit 45 is the yield hint and bit 59 the
// operand-reuse flag of Rb (in the promotion, Rb is the block's scale). ptxas marks every other FFMA
// of a promotion run reuse + yield. Two rewrites, each over runs of at least 16 consecutive FFMAs:
// - "yield": clear both bits on the marked FFMAs in the first 9/16 of the run (DeepGEMM's shape):
//   more points where the scheduler may switch warps. Clearing a reuse flag only makes the next
//   instruction read the register file: results cannot change.
// - "reuse": set both bits on every FFMA whose successor is an FFMA reading the same Rb (and that
//   does not write it): the scale comes from the operand cache every time, so no FFMA reads three
//   registers from the file (two banks: three reads always collide). The cached value is the one the
//   next instruction would read, so results cannot change either.
// Nothing but those two bits of FFMA instructions is touched; anything unexpected in the ELF is an
// error, not a silent no-op.
import { CompileError } from "../../../errors.ts";

const FFMA_RRR = 0x223n;
const YIELD = 1n << 45n;
const REUSE_B = 1n << 59n;
const MIN_RUN = 16;

export interface FfmaPatch {
  cubin: Uint8Array;
  /** FFMA (register form) instructions in the kernel's code. */
  ffma: number;
  /** Runs of at least MIN_RUN consecutive FFMAs. */
  runs: number;
  /** Instructions whose reuse and yield bits were cleared. */
  changed: number;
}

interface Section {
  name: string;
  offset: number;
  size: number;
}

function sections(b: Uint8Array): Section[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (b.length < 64 || v.getUint32(0, false) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1)
    throw new CompileError("FFMA patch: the cubin is not a little-endian 64-bit ELF");
  const shoff = Number(v.getBigUint64(0x28, true)), shentsize = v.getUint16(0x3a, true), shnum = v.getUint16(0x3c, true), shstrndx = v.getUint16(0x3e, true);
  if (shentsize !== 64 || shoff + shnum * 64 > b.length || shstrndx >= shnum) throw new CompileError("FFMA patch: the cubin's section header table is malformed");
  const hdr = (i: number) => ({ name: v.getUint32(shoff + i * 64, true), offset: Number(v.getBigUint64(shoff + i * 64 + 24, true)), size: Number(v.getBigUint64(shoff + i * 64 + 32, true)) });
  const strtab = hdr(shstrndx);
  const nameAt = (o: number) => {
    let e = strtab.offset + o;
    while (e < b.length && b[e] !== 0) e++;
    return new TextDecoder().decode(b.subarray(strtab.offset + o, e));
  };
  return Array.from({ length: shnum }, (_, i) => hdr(i)).map((h) => ({ name: nameAt(h.name), offset: h.offset, size: h.size }));
}

export type FfmaPatchMode = "yield" | "reuse";

/** The rewrite on kernel `kernel`'s code section; the input is not modified. */
export function patchFfma(cubin: Uint8Array, kernel: string, mode: FfmaPatchMode): FfmaPatch {
  const text = sections(cubin).find((s) => s.name === `.text.${kernel}`);
  if (!text) throw new CompileError(`FFMA patch: the cubin has no code section for kernel ${kernel}`);
  if (text.size % 16 !== 0 || text.offset + text.size > cubin.length) throw new CompileError(`FFMA patch: the code section of ${kernel} is not whole 16-byte instructions`);
  const out = new Uint8Array(cubin);
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const n = text.size / 16;
  const isFfma = (i: number) => (v.getBigUint64(text.offset + 16 * i, true) & 0xfffn) === FFMA_RRR;
  let ffma = 0, runs = 0, changed = 0;
  for (let i = 0; i < n; ) {
    if (!isFfma(i)) {
      i++;
      continue;
    }
    let j = i;
    while (j < n && isFfma(j)) j++;
    const len = j - i;
    ffma += len;
    if (len >= MIN_RUN) {
      runs++;
      const lo = (k: number) => v.getBigUint64(text.offset + 16 * k, true);
      const rb = (k: number) => (lo(k) >> 32n) & 0xffn, rd = (k: number) => (lo(k) >> 16n) & 0xffn;
      const upto = mode === "yield" ? i + Math.floor((len * 9) / 16) : j - 1;
      for (let k = i; k < upto; k++) {
        const at = text.offset + 16 * k + 8, hi = v.getBigUint64(at, true);
        const marked = (hi & REUSE_B) !== 0n && (hi & YIELD) !== 0n;
        if (mode === "yield" && marked) {
          v.setBigUint64(at, hi & ~(REUSE_B | YIELD), true);
          changed++;
        } else if (mode === "reuse" && !marked && rb(k) === rb(k + 1) && rd(k) !== rb(k)) {
          v.setBigUint64(at, hi | REUSE_B | YIELD, true);
          changed++;
        }
      }
    }
    i = j;
  }
  return { cubin: out, ffma, runs, changed };
}
