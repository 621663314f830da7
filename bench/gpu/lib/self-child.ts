// A bench entry re-running itself as a child process (this bundle, with extra arguments), so a kernel that
// faults (a sticky CUDA error) or hangs (a wrong mbarrier count or phase) costs that child and not the
// whole call. Used by fp8-gemm.ts (one child per implementation) and gemm-trace.ts (one per run).
import { spawn } from "node:child_process";

export interface ChildOutcome {
  stdout: string;
  /** The last 20 000 characters of stderr. */
  stderr: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Why it was killed, when a limit ran out. */
  killedWhy?: string;
}

/**
 * Runs `entry` (a file of this bundle) with `args` under this process's Node and flags. Killed after
 * `totalS` seconds in all, and (idleS) after that many seconds without a line on stdout.
 */
export async function runSelfChild(entry: string, args: string[], limits: { totalS: number; idleS?: number }): Promise<ChildOutcome> {
  const p = spawn(process.execPath, [...process.execArgv, entry, ...args], { env: process.env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "", stderr = "", killedWhy: string | undefined;
  const kill = (why: string) => {
    if (killedWhy === undefined) (killedWhy = why), p.kill("SIGKILL");
  };
  const idleWhy = `killed after ${limits.idleS} s without a result (a hang: deadlock?)`;
  const total = setTimeout(() => kill(`killed after ${limits.totalS} s in all`), limits.totalS * 1000);
  let idle = limits.idleS !== undefined ? setTimeout(() => kill(idleWhy), limits.idleS * 1000) : undefined;
  p.stdout.setEncoding("utf8").on("data", (d: string) => {
    stdout += d;
    if (idle !== undefined && d.includes("\n")) {
      clearTimeout(idle);
      idle = setTimeout(() => kill(idleWhy), limits.idleS! * 1000);
    }
  });
  p.stderr.setEncoding("utf8").on("data", (d: string) => (stderr = (stderr + d).slice(-20000)));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((res) => p.on("close", (c, s) => res([c, s])));
  clearTimeout(total);
  if (idle !== undefined) clearTimeout(idle);
  return { stdout, stderr, code, signal, killedWhy };
}
