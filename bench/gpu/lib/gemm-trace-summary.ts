// Sums a traced FP8 GEMM kernel's timeline (compiler/codegen/cuda/gemm/trace.ts has the layout) into where
// each CTA's time went: per tile and consumer, the start (tile top to its first stage landed), the K loop,
// the epilogue and the gap to the next tile; per CTA the setup before its first tile and the drain after
// its last; all in SM cycles, and the clock that converts them (cycles over %globaltimer per CTA).
import { TRACE, TRACE_CTA, TRACE_SLOTS } from "../../../compiler/codegen/cuda/gemm/trace.ts";

export interface Stat {
  n: number;
  mean: number;
  median: number;
  p90: number;
}
export interface TraceSummary {
  ctas: number;
  tiles: number;
  /** SM clock over the CTAs (GHz): cycles / globaltimer ns. */
  ghz: Stat;
  /** Per tile and consumer (cycles). */
  start: Stat;
  loop: Stat;
  loopPerBlock: Stat;
  stageWaits: Stat;
  epilogue: Stat;
  gap: Stat;
  /** Consumer 1's tile top less consumer 0's. */
  skew: Stat;
  /** Per tile: the producer's wait for its first free stage, and all its waits (cycles). */
  producerFirstFree: Stat;
  producerWaits: Stat;
  /** A tile's first stage: from the producer's free stage (its loads issued) to the consumers' stamp of it landed, and to their tile top. */
  firstIssueToLanded: Stat;
  firstIssueToTop: Stat;
  /** Per CTA: start to first tile top, last epilogue to end, and its whole time (cycles). */
  setup: Stat;
  drain: Stat;
  ctaCycles: Stat;
  /** The kernel from the first CTA's start to the last one's end by %globaltimer (µs). */
  kernelUs: number;
  /** Fractions of the CTAs' summed cycles: in K loops (mean of the consumers), in everything else. */
  inLoop: number;
}

export function stat(xs: number[]): Stat {
  if (xs.length === 0) return { n: 0, mean: NaN, median: NaN, p90: NaN };
  const s = [...xs].sort((a, b) => a - b);
  return { n: s.length, mean: s.reduce((a, b) => a + b, 0) / s.length, median: s[Math.floor(s.length / 2)]!, p90: s[Math.min(s.length - 1, Math.floor(s.length * 0.9))]! };
}

/** Tiles CTA b of `grid` walks (tile = b, b + grid, ... < tiles). */
export const tilesOf = (b: number, grid: number, tiles: number): number => (b < tiles ? Math.floor((tiles - 1 - b) / grid) + 1 : 0);

/**
 * The summary of a trace of `grid` CTAs over `tiles` tiles of `kBlocks` K blocks each, with `consumers`
 * consumer warpgroups. Throws where a stamp is missing or out of order (a kernel that did not run traced).
 */
export function summarizeTrace(words: BigUint64Array, grid: number, tiles: number, kBlocks: number, consumers = 2): TraceSummary {
  const maxT = Math.ceil(tiles / grid), rowOf = (b: number, i: number) => (b * (maxT + 1) + i) * TRACE_SLOTS;
  if (words.length < grid * (maxT + 1) * TRACE_SLOTS) throw new RangeError(`trace: ${words.length} words, a grid of ${grid} over ${tiles} tiles needs ${grid * (maxT + 1) * TRACE_SLOTS}`);
  const v = (b: number, i: number, slot: number) => Number(words[rowOf(b, i) + slot]!);
  const acc = { ghz: [] as number[], start: [] as number[], loop: [] as number[], perBlock: [] as number[], waits: [] as number[], epi: [] as number[], gap: [] as number[], skew: [] as number[], pFirst: [] as number[], pWaits: [] as number[], issueLanded: [] as number[], issueTop: [] as number[], setup: [] as number[], drain: [] as number[], cta: [] as number[] };
  let t0 = Infinity, t1 = -Infinity, loopCycles = 0, ctaCycles = 0, counted = 0;
  for (let b = 0; b < grid; b++) {
    const n = tilesOf(b, grid, tiles);
    if (n === 0) continue;
    const c0 = v(b, maxT, TRACE_CTA.clockStart), c1 = v(b, maxT, TRACE_CTA.clockEnd);
    const g0 = v(b, maxT, TRACE_CTA.timerStart), g1 = v(b, maxT, TRACE_CTA.timerEnd);
    if (!(c1 > c0) || !(g1 > g0)) throw new Error(`trace: CTA ${b} has no start/end stamps (clock ${c0}..${c1}, timer ${g0}..${g1}): was the kernel traced?`);
    acc.ghz.push((c1 - c0) / (g1 - g0));
    t0 = Math.min(t0, g0);
    t1 = Math.max(t1, g1);
    acc.cta.push(c1 - c0);
    ctaCycles += c1 - c0;
    for (let i = 0; i < n; i++) {
      if (v(b, i, TRACE.tile) !== b + i * grid) throw new Error(`trace: CTA ${b}'s row ${i} names tile ${v(b, i, TRACE.tile)}, expected ${b + i * grid}`);
      for (let w = 0; w < consumers; w++) {
        const at = (s: number) => v(b, i, w * TRACE.consumerStride + s);
        const top = at(TRACE.top), first = at(TRACE.firstStage), end = at(TRACE.loopEnd), epi = at(TRACE.epilogueEnd);
        if (!(top <= first && first <= end && end <= epi)) throw new Error(`trace: CTA ${b} tile row ${i} consumer ${w}: stamps out of order (${top}, ${first}, ${end}, ${epi})`);
        acc.start.push(first - top);
        acc.loop.push(end - first);
        acc.perBlock.push((end - first) / kBlocks); // the loop runs every block's chunks and all but the first block's stage waits
        acc.waits.push(at(TRACE.stageWaits));
        acc.epi.push(epi - end);
        loopCycles += (end - first) / consumers;
        if (i + 1 < n) acc.gap.push(v(b, i + 1, w * TRACE.consumerStride + TRACE.top) - epi);
        if (i === 0 && w === 0) acc.setup.push(top - c0);
        if (i === n - 1) acc.drain.push(c1 - epi);
      }
      if (consumers === 2) acc.skew.push(v(b, i, TRACE.consumerStride + TRACE.top) - v(b, i, TRACE.top));
      acc.pFirst.push(v(b, i, TRACE.producerFirstFree) - v(b, i, TRACE.producerTop));
      acc.pWaits.push(v(b, i, TRACE.freeWaits));
      const issued = v(b, i, TRACE.producerFirstFree);
      for (let w = 0; w < consumers; w++) {
        acc.issueLanded.push(v(b, i, w * TRACE.consumerStride + TRACE.firstStage) - issued);
        acc.issueTop.push(v(b, i, w * TRACE.consumerStride + TRACE.top) - issued);
      }
      counted++;
    }
  }
  return {
    ctas: acc.cta.length,
    tiles: counted,
    ghz: stat(acc.ghz),
    start: stat(acc.start),
    loop: stat(acc.loop),
    loopPerBlock: stat(acc.perBlock),
    stageWaits: stat(acc.waits),
    epilogue: stat(acc.epi),
    gap: stat(acc.gap),
    skew: stat(acc.skew),
    producerFirstFree: stat(acc.pFirst),
    producerWaits: stat(acc.pWaits),
    firstIssueToLanded: stat(acc.issueLanded),
    firstIssueToTop: stat(acc.issueTop),
    setup: stat(acc.setup),
    drain: stat(acc.drain),
    ctaCycles: stat(acc.cta),
    kernelUs: (t1 - t0) / 1000,
    inLoop: loopCycles / ctaCycles,
  };
}

/** The summary as lines of text (cycles, and µs at the measured clock). */
export function formatTrace(s: TraceSummary): string[] {
  const ghz = s.ghz.median, us = (c: number) => (c / ghz / 1000).toFixed(2);
  const row = (name: string, x: Stat) => `  ${name.padEnd(34)} mean ${x.mean.toFixed(0).padStart(7)}  median ${x.median.toFixed(0).padStart(7)}  p90 ${x.p90.toFixed(0).padStart(7)} cycles  (mean ${us(x.mean)} µs, n ${x.n})`;
  return [
    `  ${s.ctas} CTAs, ${s.tiles} tiles; SM clock ${s.ghz.median.toFixed(3)} GHz (${s.ghz.mean.toFixed(3)} mean); kernel ${s.kernelUs.toFixed(1)} µs by globaltimer; consumers in K loops ${(100 * s.inLoop).toFixed(1)}% of CTA time`,
    row("tile start (top to first stage)", s.start),
    row("K loop (first stage to last promote)", s.loop),
    row("  per K block", s.loopPerBlock),
    row("  waiting for stages (whole tile)", s.stageWaits),
    row("epilogue (staging + TMA store)", s.epilogue),
    row("gap to the next tile's top", s.gap),
    row("consumer 1 top - consumer 0 top", s.skew),
    row("producer: wait for first free stage", s.producerFirstFree),
    row("producer: all free-stage waits", s.producerWaits),
    row("first stage: issued to landed", s.firstIssueToLanded),
    row("first stage: issued to consumer top", s.firstIssueToTop),
    row("CTA setup (start to first top)", s.setup),
    row("CTA drain (last epilogue to end)", s.drain),
    row("CTA total", s.ctaCycles),
  ];
}
