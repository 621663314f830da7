// `shardts check`: type-check user files and print sharding mistakes as shardts messages.
//
// Engine: we spawn TypeScript 7's native `tsc --noEmit --pretty false` on a generated tsconfig that
// extends the project's and lists just the files, then parse its text. The alternative, ts-morph's
// bundled TypeScript 6 API (`new Project({ tsConfigFilePath })` + getPreEmitDiagnostics), gave the
// same flattened message chains but was ~5x slower on /tmp/proto (one 17-line file, warm disk):
// ts-morph 1.9 s wall (0.22 s to load + 1.55 s to check) vs tsc 7 0.36 s wall. It would also check
// with a different compiler than `npm run typecheck` (tsc 7), whose type printing can differ.
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { UsageError } from "../../compiler/errors.ts";
import { formatDiagnostic, parseTscOutput, type Diagnostic } from "./diagnostics.ts";

export type { Diagnostic } from "./diagnostics.ts";

/** The shardts package's own tsconfig: used when a file has none above it. */
export const PACKAGE_TSCONFIG = fileURLToPath(new URL("../../tsconfig.json", import.meta.url));

export interface CheckOptions {
  /** tsconfig.json (or a folder holding one) whose compiler options the check uses. */
  project?: string;
  /** Where relative paths are resolved and printed from; defaults to process.cwd(). */
  cwd?: string;
}

export interface CheckResult {
  files: string[];
  tsconfig: string;
  diagnostics: Diagnostic[];
  errorCount: number;
  shardingCount: number;
  output: string;
}

/** Type-check `files` (default: the .ts files under `<cwd>/examples`). Throws UsageError naming a
 * missing file or project; type errors are returned, not thrown. */
export async function check(files: string[], opts: CheckOptions = {}): Promise<CheckResult> {
  const cwd = resolve(opts.cwd ?? process.cwd());
  const abs = files.length > 0 ? files.map((f) => resolve(cwd, f)) : exampleFiles(cwd);
  for (const f of abs) if (!isFile(f)) throw new UsageError(`shardts check: no such file: ${f}`);
  const tsconfig = resolveTsconfig(abs[0]!, opts.project, cwd);
  const { diagnostics } = await runTsc(abs, tsconfig);

  const errors = diagnostics.filter((d) => d.category === "error");
  const shardingCount = errors.filter((d) => d.shardts !== undefined).length;
  const sources = new Map<string, string[]>();
  const lines = errors.map((d) =>
    formatDiagnostic({ ...d, file: d.file && relative(cwd, d.file), sourceLine: sourceLine(sources, d.file, d.line) }),
  );
  lines.push(`shardts check: ${abs.length} files, ${errors.length} errors (${shardingCount} sharding)`);
  return { files: abs, tsconfig, diagnostics, errorCount: errors.length, shardingCount, output: lines.join("\n") };
}

/** `project` if given, else the nearest tsconfig.json above `firstFile`, else the package's own. */
export function resolveTsconfig(firstFile: string, project: string | undefined, cwd: string): string {
  if (project !== undefined) {
    let p = resolve(cwd, project);
    if (existsSync(p) && statSync(p).isDirectory()) p = join(p, "tsconfig.json");
    if (!isFile(p)) throw new UsageError(`shardts check: no such tsconfig: ${p}`);
    return p;
  }
  for (let d = dirname(firstFile); ; d = dirname(d)) {
    const p = join(d, "tsconfig.json");
    if (isFile(p)) return p;
    if (dirname(d) === d) return PACKAGE_TSCONFIG;
  }
}

/** Run tsc 7 over exactly `files` with `tsconfig`'s options; diagnostics of every program file. */
export async function runTsc(files: string[], tsconfig: string): Promise<{ diagnostics: Diagnostic[]; ms: number }> {
  const baseDir = dirname(tsconfig);
  const cfg = tempConfigPath(baseDir);
  writeFileSync(cfg, JSON.stringify({
    extends: tsconfig,
    // noErrorTruncation: long DT<...> types would otherwise be cut with "..." and could hide the message.
    compilerOptions: { noEmit: true, noErrorTruncation: true, incremental: false, composite: false },
    files,
    include: [], // an extending config inherits `include` unless it sets its own
  }));
  const t0 = performance.now();
  try {
    const { code, stdout, stderr } = await run(process.execPath, [TSC, "-p", cfg, "--pretty", "false"], baseDir);
    const diagnostics = parseTscOutput(stdout, baseDir);
    // 0: clean; 1/2: diagnostics reported. Anything else, or a failure with nothing parsed, is tsc itself failing.
    if (code === null || code > 2 || (code !== 0 && diagnostics.length === 0)) {
      throw new Error(`tsc failed (exit ${code}):\n${stdout}${stderr}`);
    }
    return { diagnostics, ms: performance.now() - t0 };
  } finally {
    rmSync(cfg, { force: true });
  }
}

const TSC = join(dirname(createRequire(import.meta.url).resolve("typescript/package.json")), "bin", "tsc");

// The generated config must sit under the project's folder, not in os.tmpdir(): tsc looks for
// `types` (e.g. "node") in node_modules/@types above the *config's* folder. node_modules/.cache is
// ignored by nearly every project; a folder without node_modules gets a hidden file instead.
function tempConfigPath(baseDir: string): string {
  const name = `tsconfig.check-${process.pid}-${randomUUID().slice(0, 8)}.json`;
  if (!existsSync(join(baseDir, "node_modules"))) return join(baseDir, `.${name}`);
  const dir = join(baseDir, "node_modules", ".cache", "shardts");
  mkdirSync(dir, { recursive: true });
  return join(dir, name);
}

function run(cmd: string, args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const p = spawn(cmd, args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    p.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    p.on("error", fail);
    p.on("close", (code) => done({ code, stdout, stderr }));
  });
}

function exampleFiles(cwd: string): string[] {
  const dir = join(cwd, "examples");
  const found = existsSync(dir) ? walkTs(dir) : [];
  if (found.length === 0) throw new UsageError(`shardts check: no files given and no .ts files under ${dir}`);
  return found;
}

function walkTs(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const p = join(dir, e.name);
    if (e.isDirectory() && e.name !== "node_modules") out.push(...walkTs(p));
    else if (e.isFile() && e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) out.push(p);
  }
  return out;
}

function isFile(p: string): boolean {
  return existsSync(p) && statSync(p).isFile();
}

function sourceLine(cache: Map<string, string[]>, file: string | undefined, line: number | undefined): string | undefined {
  if (file === undefined || line === undefined || !isFile(file)) return undefined;
  if (!cache.has(file)) cache.set(file, readFileSync(file, "utf8").split("\n"));
  return cache.get(file)![line - 1];
}
