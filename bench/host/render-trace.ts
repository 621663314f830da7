// Renders a Chrome trace written by --trace (runtime/cuda/trace.ts) as an SVG timeline: one lane per
// row of the trace (stream and rank), a box per instruction coloured by kind, a millisecond axis.
// For committing what a trace shows under bench/results/ (Perfetto reads the JSON itself).
//
//   npx tsx bench/host/render-trace.ts TRACE.json [more.json ...] --out FILE.svg [--title T]
//
// Several traces (e.g. each rank's) are stacked, each under its file name.
import { readFileSync, writeFileSync } from "node:fs";
import { basename } from "node:path";

interface Ev { name: string; cat?: string; ph: string; ts: number; dur: number; tid: string | number }

const COLOURS: Record<string, string> = { kernel: "#4e79a7", gemm: "#f28e2b", moe: "#59a14f", comm: "#e15759", op: "#b07aa1" };

export function renderSvg(traces: { label: string; events: Ev[] }[], title: string): string {
  const W = 1400, left = 150, lane = 22, gap = 18;
  const all = traces.flatMap((t) => t.events);
  if (!all.length) throw new Error("render-trace: the traces hold no complete (X) events");
  const t0 = Math.min(...all.map((e) => e.ts)), t1 = Math.max(...all.map((e) => e.ts + e.dur));
  const x = (us: number) => left + ((us - t0) / (t1 - t0)) * (W - left - 20);
  const out: string[] = [];
  let y = 40;
  for (const t of traces) {
    out.push(`<text x="4" y="${y - 4}" font-weight="bold">${esc(t.label)}</text>`);
    const tids = [...new Set(t.events.map((e) => String(e.tid)))].sort();
    for (const tid of tids) {
      out.push(`<text x="4" y="${y + 15}">${esc(tid)}</text><rect x="${left}" y="${y}" width="${W - left - 20}" height="${lane - 2}" fill="#f4f4f4"/>`);
      for (const e of t.events.filter((e) => String(e.tid) === tid)) {
        const w = Math.max(0.5, x(e.ts + e.dur) - x(e.ts));
        out.push(`<rect x="${x(e.ts).toFixed(2)}" y="${y}" width="${w.toFixed(2)}" height="${lane - 2}" fill="${COLOURS[e.cat ?? ""] ?? "#999"}"><title>${esc(e.name)} ${(e.dur / 1e3).toFixed(3)} ms</title></rect>`);
      }
      y += lane;
    }
    y += gap;
  }
  const ms = (t1 - t0) / 1e3, step = niceStep(ms / 10), ticks: string[] = [];
  for (let m = 0; m <= ms + 1e-9; m += step) ticks.push(`<line x1="${x(t0 + m * 1e3)}" y1="${y}" x2="${x(t0 + m * 1e3)}" y2="${y + 5}" stroke="#000"/><text x="${x(t0 + m * 1e3) - 10}" y="${y + 18}">${+m.toFixed(3)}</text>`);
  const legend = Object.entries(COLOURS).map(([k, c], i) => `<rect x="${left + i * 90}" y="${y + 28}" width="12" height="12" fill="${c}"/><text x="${left + i * 90 + 16}" y="${y + 39}">${k}</text>`);
  const H = y + 50;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="#fff"/>` +
    `<text x="4" y="16" font-size="13">${esc(title)} (ms)</text>${out.join("")}${ticks.join("")}${legend.join("")}</svg>\n`;
}

const niceStep = (s: number) => {
  const p = 10 ** Math.floor(Math.log10(s)), m = s / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
};
const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

export function loadTrace(file: string): Ev[] {
  const j = JSON.parse(readFileSync(file, "utf8"));
  const evs = (Array.isArray(j) ? j : j.traceEvents) as Ev[] | undefined;
  if (!Array.isArray(evs)) throw new Error(`render-trace: ${file} is not a Chrome trace (no traceEvents array)`);
  return evs.filter((e) => e.ph === "X" && Number.isFinite(e.ts) && Number.isFinite(e.dur));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2), at = (f: string) => (args.includes(f) ? args[args.indexOf(f) + 1] : undefined);
  const out = at("--out"), title = at("--title") ?? "shardts trace";
  const files = args.filter((a, i) => !a.startsWith("--") && !["--out", "--title"].includes(args[i - 1] ?? ""));
  if (!out || !files.length) {
    console.error("usage: npx tsx bench/host/render-trace.ts TRACE.json [more.json ...] --out FILE.svg [--title T]");
    process.exit(2);
  }
  writeFileSync(out, renderSvg(files.map((f) => ({ label: basename(f), events: loadTrace(f) })), title));
  console.log(`render-trace: wrote ${out}`);
}
