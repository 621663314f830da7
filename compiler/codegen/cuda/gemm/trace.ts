// A timeline of a chunked FP8 GEMM kernel's tiles (config `trace`, suffix _tr; a measuring instrument, never an
// autotuner candidate): SM clock stamps at the tile boundaries, written by one thread of each warpgroup to a
// trailing kernel parameter `trace` (u64). Rows of TRACE_SLOTS u64: CTA b's local tile i at row
// b·(maxT + 1) + i, maxT = ceil(tiles / gridDim.x); row b·(maxT + 1) + maxT holds the CTA's start and end
// (clock64 and %globaltimer, so cycles convert to time). bench/gpu/gemm-trace.ts reads and sums them.
//
// Slots per tile row: consumer w (0, 1) at 5w + {0: tile top, 1: its first stage landed, 2: K loop done,
// 3: epilogue issued, 4: cycles spent waiting for stages}; the producer at 10 (tile top), 11 (its first
// free stage), 12 (its last load issued), 13 (cycles waiting for free stages); 14 the SM, 15 the tile.
// Every snippet is empty without `trace`, so other kernels' sources do not change.
import type { Fp8GemmConfig } from "./config.ts";

export const TRACE_SLOTS = 16;
/** Slot numbers of a tile row (consumer slots add TRACE.consumerStride × its warpgroup). */
export const TRACE = {
  top: 0,
  firstStage: 1,
  loopEnd: 2,
  epilogueEnd: 3,
  stageWaits: 4,
  consumerStride: 5,
  producerTop: 10,
  producerFirstFree: 11,
  producerLastLoad: 12,
  freeWaits: 13,
  sm: 14,
  tile: 15,
} as const;
/** Slots of the CTA's last row (index maxT). */
export const TRACE_CTA = { clockStart: 0, timerStart: 1, clockEnd: 2, timerEnd: 3 } as const;

/** Words of u64 the trace buffer needs for a grid of `grid` CTAs over `tiles` tiles. */
export const traceWords = (tiles: number, grid: number): number => grid * (Math.ceil(tiles / grid) + 1) * TRACE_SLOTS;

const on = (c: Fp8GemmConfig) => c.trace === true;

/** The kernel's extra parameter. */
export const traceParam = (c: Fp8GemmConfig): string => (on(c) ? ", unsigned long long* __restrict__ trace" : "");

/** After `tiles` is known: this CTA's rows, and its start stamped by thread 0. */
export const traceSetup = (c: Fp8GemmConfig): string =>
  on(c)
    ? `  // trace: this CTA's rows (one per local tile, then its start and end)
  const int trMaxT = (tiles + gridDim.x - 1) / gridDim.x;
  unsigned long long* const trRows = trace + (long long)blockIdx.x * (trMaxT + 1) * ${TRACE_SLOTS};
  const bool trLead = threadIdx.x % 128 == 0;
  int trI = 0;
  long long trWaits = 0;
  if (threadIdx.x == 0) { trRows[trMaxT * ${TRACE_SLOTS} + ${TRACE_CTA.clockStart}] = clock64(); trRows[trMaxT * ${TRACE_SLOTS} + ${TRACE_CTA.timerStart}] = sh_globaltimer(); }
`
    : "";

/** A stamp of slot `slot` (a C expression) of this tile's row, by the warpgroup's lead thread. */
const stamp = (slot: string, value: string, pad: string) => `${pad}if (trLead) trRows[trI * ${TRACE_SLOTS} + ${slot}] = ${value};\n`;
const consumerSlot = (s: number) => `wg * ${TRACE.consumerStride} + ${s}`;

/** Consumer, at the top of a tile. */
export const traceConsumerTop = (c: Fp8GemmConfig, pad: string): string => (on(c) ? `${stamp(consumerSlot(TRACE.top), "clock64()", pad)}${pad}trWaits = 0;\n` : "");
/** Consumer, after the K loop. */
export const traceLoopEnd = (c: Fp8GemmConfig, pad: string): string => (on(c) ? stamp(consumerSlot(TRACE.loopEnd), "clock64()", pad) : "");
/** Consumer, after the epilogue: its stamp, the waits, the SM and tile (consumer 0); the next row. */
export const traceEpilogueEnd = (c: Fp8GemmConfig, tile: string, pad: string): string =>
  on(c)
    ? `${stamp(consumerSlot(TRACE.epilogueEnd), "clock64()", pad)}${stamp(consumerSlot(TRACE.stageWaits), "trWaits", pad)}${pad}if (trLead && wg == 0) { trRows[trI * ${TRACE_SLOTS} + ${TRACE.sm}] = sh_smid(); trRows[trI * ${TRACE_SLOTS} + ${TRACE.tile}] = ${tile}; }
${pad}++trI;
`
    : "";

/**
 * A barrier wait `wait` timed into trWaits; where `first` holds (K block 0's wait) its end stamped at
 * `firstSlot` (the consumers' stage waits, the producer's free-stage waits).
 */
function traceWait(c: Fp8GemmConfig, wait: string, firstSlot: string, pad: string, first = "kb == 0"): string {
  if (!on(c)) return `${pad}${wait}\n`;
  return `${pad}const long long trT0 = clock64();
${pad}${wait}
${pad}{
${pad}  const long long trT1 = clock64();
${pad}  trWaits += trT1 - trT0;
${pad}  if (${first}) { ${stamp(firstSlot, "trT1", "").trim()} }
${pad}}
`;
}
export const traceConsumerWait = (c: Fp8GemmConfig, wait: string, pad: string, first = "kb == 0"): string => traceWait(c, wait, consumerSlot(TRACE.firstStage), pad, first);
export const traceProducerWait = (c: Fp8GemmConfig, wait: string, pad: string): string => traceWait(c, wait, String(TRACE.producerFirstFree), pad);

/** Producer, at the top of a tile. */
export const traceProducerTop = (c: Fp8GemmConfig, pad: string): string => (on(c) ? `${stamp(String(TRACE.producerTop), "clock64()", pad)}${pad}trWaits = 0;\n` : "");
/** Producer, after a tile's last load: its stamp and waits; the next row. */
export const traceProducerEnd = (c: Fp8GemmConfig, pad: string): string =>
  on(c) ? `${stamp(String(TRACE.producerLastLoad), "clock64()", pad)}${stamp(String(TRACE.freeWaits), "trWaits", pad)}${pad}++trI;\n` : "";

/** Thread 0 at the kernel's end: the CTA's end stamps. */
export const traceEnd = (c: Fp8GemmConfig): string =>
  on(c)
    ? `  if (threadIdx.x == 0) { trRows[trMaxT * ${TRACE_SLOTS} + ${TRACE_CTA.clockEnd}] = clock64(); trRows[trMaxT * ${TRACE_SLOTS} + ${TRACE_CTA.timerEnd}] = sh_globaltimer(); }
`
    : "";

/** PTX reads the trace needs. */
export const TRACE_PTX = `static __device__ __forceinline__ unsigned long long sh_globaltimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
static __device__ __forceinline__ unsigned sh_smid() {
  unsigned r;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(r));
  return r;
}
`;
