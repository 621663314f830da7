// The PyTorch peer of the GEMM benches (bench/peers/fp8_gemm.py: torch.nn.functional.scaled_mm,
// torch._grouped_mm, bf16 matmul), run once in the same job after shardts's kernels: the cases as a
// JSON spec, one JSON line per (case, implementation) back. Shared by fp8-gemm.ts and bf16-gemm.ts.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface PeerRow {
  case: string;
  impl: string;
  ms?: number;
  tflops?: number;
  error?: string;
}

export interface PeerSpec {
  reps: number;
  dense: { name: string; M: number; N: number; K: number; bRows: boolean }[];
  grouped: { name: string; rows: number[]; N: number; K: number }[];
  /** K-grouped (bf16 only: the MoE weight gradient dW[e] = x_eᵀ dy_e, x [rows][M], dy [rows][N]). */
  kgrouped?: { name: string; rows: number[]; M: number; N: number }[];
}

/** Runs the peer on `spec`, logging each row; [] (and says why) where the script or Python is missing. */
export function runGemmPeer(spec: PeerSpec, log: (s: string) => void): PeerRow[] {
  const here = dirname(fileURLToPath(import.meta.url));
  // the repository root (run from it), or next to a bundle in .gpu/, or beside this file
  const script = [join("bench", "peers", "fp8_gemm.py"), join(here, "..", "bench", "peers", "fp8_gemm.py"), join(here, "..", "peers", "fp8_gemm.py"), join(here, "..", "..", "peers", "fp8_gemm.py")].find((p) => existsSync(p));
  if (!script) {
    log("  peer: bench/peers/fp8_gemm.py not found (run from the repository root)");
    return [];
  }
  const r = spawnSync("python3", [script, JSON.stringify(spec)], { encoding: "utf8", timeout: 400_000, killSignal: "SIGKILL", maxBuffer: 64 << 20 });
  const rows = (r.stdout ?? "").split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as PeerRow);
  for (const p of rows) log(`    peer ${p.impl} | ${p.case} | ${p.error ?? `${p.ms!.toFixed(4)} ms, ${p.tflops!.toFixed(0)} TFLOP/s`}`);
  if (r.status !== 0) log(`  peer: python3 ${script} exited ${r.status ?? r.signal}${r.error ? ` (${r.error.message})` : ""}: ${(r.stderr ?? "").trim().split("\n").slice(-4).join(" | ")}`);
  return rows;
}
