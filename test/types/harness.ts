// Type-case harness: fixture files state, with `// @expect-error <text>` comments, which lines must
// fail type-checking and with what message; everything else must type-check. One tsc 7 run covers
// every fixture in the folder (fast: tsc 7 is native), through the same runner as `shardts check`.
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { runTsc } from "../../stdlib/cli/check.ts";
import type { Diagnostic } from "../../stdlib/cli/diagnostics.ts";

/** The repo's tsconfig: fixtures are checked with exactly the options the project uses. */
const REPO_TSCONFIG = fileURLToPath(new URL("../../tsconfig.json", import.meta.url));

export interface Expectation {
  /** 1-based line of the code the comment applies to. */
  line: number;
  /** 1-based line of the `// @expect-error` comment itself. */
  commentLine: number;
  text: string;
}

export interface CaseFailure {
  line: number;
  kind: "unmatched" | "unexpected";
  /** For "unmatched": the text the line was expected to produce. */
  expected?: string;
  /** Messages of the diagnostics on that line (shardts message where there is one, else raw text). */
  got: string[];
  /** A readable one-paragraph account, ready to print. */
  message: string;
}

export interface CaseResult {
  file: string;
  expected: number;
  matched: number;
  failures: CaseFailure[];
  ok: boolean;
}

const EXPECT = /^\s*\/\/\s*@expect-error\s+(.*?)\s*$/;

/** The `@expect-error` comments of a fixture, each tied to the next line that is neither a comment
 * nor blank (so a comment may sit between the expectation and the code). */
export function parseExpectations(source: string): Expectation[] {
  const lines = source.split("\n");
  const out: Expectation[] = [];
  let pending: Array<{ commentLine: number; text: string }> = [];
  lines.forEach((raw, i) => {
    const m = EXPECT.exec(raw);
    if (m) pending.push({ commentLine: i + 1, text: m[1]! });
    else if (raw.trim() === "" || raw.trim().startsWith("//")) return;
    else {
      for (const p of pending) out.push({ line: i + 1, ...p });
      pending = [];
    }
  });
  // An expectation with no code after it can never be met: report it against its own line.
  for (const p of pending) out.push({ line: p.commentLine, ...p });
  return out;
}

/** What an expectation is matched against: the extracted sharding message, else the raw chain. */
const messageOf = (d: Diagnostic) => d.shardts ?? d.text;

/** Check every `*.ts` fixture in `dir` (files starting with `_` are shared helpers, not cases).
 * Diagnostics in other files of the program (helpers, stdlib) are reported as extra results, since
 * they make the cases' verdicts meaningless. */
export async function runTypeCases(dir: string, opts: { tsconfig?: string } = {}): Promise<CaseResult[]> {
  const root = resolve(dir);
  const files = readdirSync(root)
    .filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))
    .sort()
    .map((f) => join(root, f));
  const cases = files.filter((f) => !f.slice(root.length + 1).startsWith("_"));
  if (files.length === 0) return [];
  const { diagnostics } = await runTsc(files, opts.tsconfig ?? REPO_TSCONFIG);

  const results = cases.map((file) => judge(file, readFileSync(file, "utf8"), diagnostics.filter((d) => d.file === file)));
  const elsewhere = new Map<string, Diagnostic[]>();
  for (const d of diagnostics) {
    if (d.file !== undefined && cases.includes(d.file)) continue;
    const key = d.file ?? "(tsc)";
    elsewhere.set(key, [...(elsewhere.get(key) ?? []), d]);
  }
  for (const [file, ds] of elsewhere) results.push(judge(file, "", ds));
  return results;
}

/** Match one file's diagnostics against its expectations. */
export function judge(file: string, source: string, diagnostics: Diagnostic[]): CaseResult {
  const expectations = parseExpectations(source);
  const marked = new Set(expectations.map((e) => e.line));
  const onLine = (line: number) => diagnostics.filter((d) => d.line === line).map(messageOf);
  const failures: CaseFailure[] = [];
  let matched = 0;
  for (const e of expectations) {
    const got = onLine(e.line);
    if (got.some((m) => m.includes(e.text))) {
      matched++;
      continue;
    }
    const saw = got.length === 0 ? "no diagnostics" : `these:\n${got.map((g) => `  - ${g.split("\n").join("\n    ")}`).join("\n")}`;
    failures.push({
      line: e.line,
      kind: "unmatched",
      expected: e.text,
      got,
      message: `${file}:${e.line}: expected an error containing ${JSON.stringify(e.text)} (from line ${e.commentLine}) but got ${saw}`,
    });
  }
  for (const d of diagnostics) {
    if (d.line !== undefined && marked.has(d.line)) continue;
    const where = d.line === undefined ? file : `${file}:${d.line}:${d.col}`;
    failures.push({
      line: d.line ?? 0,
      kind: "unexpected",
      got: [messageOf(d)],
      message: `${where}: unexpected error TS${d.code}: ${messageOf(d)}`,
    });
  }
  failures.sort((a, b) => a.line - b.line);
  return { file, expected: expectations.length, matched, failures, ok: failures.length === 0 };
}

/** All failures of a run, for an assertion message. */
export function describeFailures(results: CaseResult[]): string {
  return results.flatMap((r) => r.failures.map((f) => f.message)).join("\n");
}
