// Pure text functions over tsc diagnostics: find the human sharding message that the type-level
// checks smuggle into a diagnostic, print diagnostics in shardts' own format, and parse
// `tsc --pretty false` output. No I/O here so the CLI, the type-case harness and tests share one
// reading of tsc's text.
import { resolve } from "node:path";

/** One tsc diagnostic. `text` is the flattened message chain: first line, then continuation lines
 * indented two spaces per level (the shape of both `tsc --pretty false` and ts.flattenDiagnosticMessageText). */
export interface Diagnostic {
  file?: string;
  line?: number;
  col?: number;
  code: number;
  category: "error" | "warning" | "message";
  text: string;
  /** The extracted sharding message, when the diagnostic carries a shardts marker. */
  shardts?: string;
}

// Marker 1: the intersection trick `B & { readonly "shardts error": Msg }` puts the message in a
// property type, which tsc prints inside the expected type of most call/assign diagnostics.
const PROPERTY_MARKER = /"shardts error"\??:\s*/;
// Marker 2: property-position checks type the property itself as the literal "⛔ <message>".
const LITERAL_MARKER = '"\u26D4 ';

/** The human message inside a flattened diagnostic chain, or undefined when it is a plain TS error. */
export function extractShardtsMessage(text: string): string | undefined {
  const m = PROPERTY_MARKER.exec(text);
  if (m) {
    const type = readType(text, m.index + m[0].length);
    const msg = typeToMessage(type);
    if (msg) return msg;
  }
  const at = text.indexOf(LITERAL_MARKER);
  if (at >= 0) return readStringLiteral(text, at).value.slice(2); // drop "⛔ "
  return undefined;
}

/** What the message property's type says: a literal (or a union of them: one per line), a template
 * literal left generic, or, when tsc printed an alias such as `AxisMsg<...>`, that text as is. */
function typeToMessage(type: string): string | undefined {
  const t = type.trim();
  if (t.startsWith("`") && t.endsWith("`")) return t.slice(1, -1);
  const parts: string[] = [];
  let i = 0;
  while (i < t.length && t[i] === '"') {
    const lit = readStringLiteral(t, i);
    parts.push(lit.value);
    i = lit.end;
    const sep = /^\s*\|\s*/.exec(t.slice(i));
    if (!sep) break;
    i += sep[0].length;
  }
  if (parts.length > 0 && i >= t.length) return parts.join("\n");
  return t || undefined;
}

/** The type text starting at `i`: up to the `;`, closing bracket or closing `'` that ends it at
 * nesting depth 0, skipping over string and template literals (whose contents may hold any of those). */
function readType(text: string, i: number): string {
  let depth = 0;
  let j = i;
  while (j < text.length) {
    const c = text[j]!;
    if (c === '"' || c === "`") {
      j = readStringLiteral(text, j).end;
      continue;
    }
    if (c === "{" || c === "(" || c === "[" || c === "<") depth++;
    else if (c === "}" || c === ")" || c === "]" || (c === ">" && text[j - 1] !== "=")) {
      if (depth === 0) break;
      depth--;
    } else if ((c === ";" || c === "'" || c === "\n") && depth === 0) break;
    j++;
  }
  return text.slice(i, j);
}

/** Decode the JS-style quoted literal whose opening quote is at `start` (tsc escapes `"`, `\`,
 * control characters). An unterminated literal (truncated output) yields what there is. */
function readStringLiteral(text: string, start: number): { value: string; end: number } {
  const quote = text[start];
  let out = "";
  let j = start + 1;
  while (j < text.length && text[j] !== quote) {
    if (text[j] !== "\\") {
      out += text[j++];
      continue;
    }
    const e = text[j + 1];
    j += 2;
    switch (e) {
      case "n": out += "\n"; break;
      case "t": out += "\t"; break;
      case "r": out += "\r"; break;
      case "b": out += "\b"; break;
      case "f": out += "\f"; break;
      case "v": out += "\v"; break;
      case "0": out += "\0"; break;
      case "x": out += String.fromCharCode(parseInt(text.slice(j, j + 2), 16)); j += 2; break;
      case "u": {
        const braced = text[j] === "{" ? /^\{([0-9a-fA-F]+)\}/.exec(text.slice(j)) : null;
        if (braced) { out += String.fromCodePoint(parseInt(braced[1]!, 16)); j += braced[0].length; }
        else { out += String.fromCharCode(parseInt(text.slice(j, j + 4), 16)); j += 4; }
        break;
      }
      case undefined: break;
      default: out += e; // \" \\ \' \` and anything else stand for themselves
    }
  }
  return { value: out, end: Math.min(j + 1, text.length) };
}

export interface FormatInput {
  file?: string;
  line?: number;
  col?: number;
  code: number;
  text: string;
  /** The source line the diagnostic points at; printed with a caret under `col` when given. */
  sourceLine?: string;
}

/** `file:line:col - shardts: <message>` for sharding diagnostics (continuation lines of a
 * multi-message union indented), `file:line:col - error TS<code>: <first line>` otherwise. */
export function formatDiagnostic(d: FormatInput): string {
  const loc = [d.file, d.line, d.col].filter((x) => x !== undefined).join(":");
  const prefix = loc ? `${loc} - ` : "";
  const msg = extractShardtsMessage(d.text);
  const head = msg !== undefined
    ? `${prefix}shardts: ${msg.split("\n").join("\n    ")}`
    : `${prefix}error TS${d.code}: ${d.text.split("\n")[0]}`;
  if (d.sourceLine === undefined) return head;
  const src = d.sourceLine.replace(/\r$/, "");
  // Keep tabs so the caret lines up under tab-indented code.
  const pad = src.slice(0, Math.max(0, (d.col ?? 1) - 1)).replace(/[^\t]/g, " ");
  return `${head}\n    ${src}\n    ${pad}^`;
}

const HEAD = /^(.+)\((\d+),(\d+)\): (error|warning|message) TS(\d+): (.*)$/;
const GLOBAL_HEAD = /^(error|warning|message) TS(\d+): (.*)$/;

/** Parse `tsc --pretty false` output. Paths are resolved against `cwd` (tsc prints them relative
 * to its working directory); indented lines continue the diagnostic above them. */
export function parseTscOutput(output: string, cwd: string): Diagnostic[] {
  const out: Diagnostic[] = [];
  let cur: Diagnostic | undefined;
  const finish = () => {
    if (!cur) return;
    const s = extractShardtsMessage(cur.text);
    if (s !== undefined) cur.shardts = s;
    out.push(cur);
    cur = undefined;
  };
  for (const raw of output.split("\n")) {
    const line = raw.replace(/\r$/, "");
    let m = HEAD.exec(line);
    if (m) {
      finish();
      cur = { file: resolve(cwd, m[1]!), line: +m[2]!, col: +m[3]!, category: m[4] as Diagnostic["category"], code: +m[5]!, text: m[6]! };
      continue;
    }
    m = GLOBAL_HEAD.exec(line);
    if (m) {
      finish();
      cur = { category: m[1] as Diagnostic["category"], code: +m[2]!, text: m[3]! };
      continue;
    }
    if (cur && /^\s/.test(line) && line.trim()) cur.text += "\n" + line;
    else if (line.trim()) finish(); // e.g. a "Found N errors" summary: not part of any diagnostic
  }
  finish();
  return out;
}
