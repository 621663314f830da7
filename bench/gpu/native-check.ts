// The native addon's GPU checks as a plain Node script (no vitest), so that it runs bundled on a GPU
// machine that has no node_modules: `npm run gpu:pack` bundles it to .gpu/native-check.mjs and
// bench/gpu/run.sh runs it there. From the source tree: npx tsx bench/gpu/native-check.ts [--out DIR]
//
// Writes native-check.txt and native-check.json to --out (default $OUT, else the current folder):
// date, device, libraries, commit, the exact command, and each check's result. Exit code 1 when CUDA
// is unavailable or a check failed.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { cudaAvailable, libraryStatus, loadNative } from "../../runtime/cuda/native.ts";
import { runNativeChecks } from "./lib/native-checks.ts";

function commitInfo(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const info = join(here, "build-info.json"); // written by bin/gpu-pack.mjs next to the bundle
  if (existsSync(info)) {
    const b = JSON.parse(readFileSync(info, "utf8")) as { commit?: string; dirty?: boolean; packed?: string };
    return `${b.commit ?? "unknown"}${b.dirty ? " (+ uncommitted changes)" : ""}, packed ${b.packed ?? "?"}`;
  }
  try {
    const head = execFileSync("git", ["rev-parse", "HEAD"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim() !== "";
    return `${head}${dirty ? " (+ uncommitted changes)" : ""}`;
  } catch {
    return "unknown (no git, no build-info.json)";
  }
}

const argv = process.argv.slice(2);
const outIdx = argv.indexOf("--out");
const outDir = outIdx >= 0 ? argv[outIdx + 1]! : (process.env.OUT ?? ".");
const lines: string[] = [];
const say = (line: string) => {
  lines.push(line);
  console.log(line);
};

const started = new Date();
say(`shardts native addon GPU checks`);
say(`date     ${started.toISOString()}`);
say(`command  ${[process.execPath, ...process.argv.slice(1)].join(" ")}`);
say(`node     ${process.version}`);
say(`commit   ${commitInfo()}`);

const gpu = cudaAvailable();
let results: ReturnType<typeof runNativeChecks> = [];
let device = "none";
if (!gpu.ok) {
  say(`CUDA unavailable: ${gpu.reason}`);
} else {
  device = `${gpu.device.name} (${gpu.device.arch}, ${gpu.device.smCount} SMs)`;
  say(`device   ${device}, driver CUDA ${Math.floor(gpu.driverVersion / 1000)}.${(gpu.driverVersion % 1000) / 10}`);
  say(`addon    ${loadNative().path}`);
  for (const [name, s] of Object.entries(libraryStatus())) {
    say(`lib      ${name.padEnd(8)} ${s.ok ? `${"version" in s ? s.version : ""} ${"path" in s ? s.path : ""}` : `NOT LOADED: ${s.reason}`}`);
  }
  say("");
  results = runNativeChecks(loadNative().addon, say);
}
const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed;
say("");
say(`${passed} passed, ${failed} failed`);

mkdirSync(outDir, { recursive: true });
writeFileSync(join(outDir, "native-check.txt"), lines.join("\n") + "\n");
writeFileSync(
  join(outDir, "native-check.json"),
  JSON.stringify(
    { date: started.toISOString(), command: process.argv.join(" "), node: process.version, commit: commitInfo(), device, cuda: gpu, libraries: gpu.ok ? libraryStatus() : undefined, results, passed, failed },
    null,
    2,
  ) + "\n",
);
process.exitCode = gpu.ok && failed === 0 ? 0 : 1;
