// Training progress on the terminal.
//
// On a TTY: one line redrawn in place with `\r` (and erase-to-end-of-line), at most 10 times a
// second by default:
//
//   [=====>              ] step 120/400  loss 2.314  12.3k tok/s  imbalance 1.42  eta 1m20s
//
// Elsewhere (CI logs, pipes, files): a plain line, no bar and no control characters, every
// `logEvery` steps (default: every 10% of the run), except the last step, whose line is finish()'s:
//
//   step 120/400  loss 2.314  12.3k tok/s  imbalance 1.42  eta 1m20s
//
// `finish()` writes the final line (with the elapsed time instead of the eta) and a newline.

/** The part of a Node stream that Progress uses (process.stderr fits; so does a test fake). */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** Total number of steps. */
  total: number;
  /** Where to write. Default process.stderr. */
  stream?: ProgressStream;
  /** Force TTY (in-place) or plain mode. Default: `stream.isTTY === true`. */
  tty?: boolean;
  /** Plain mode: print a line every this many steps. Default max(1, ceil(total / 10)). */
  logEvery?: number;
  /** TTY mode: minimum milliseconds between redraws. Default 100 (≤ 10 updates/s). */
  minIntervalMs?: number;
  /** Bar width in characters, without the brackets. Default 20. */
  barWidth?: number;
  /** Tokens processed per step, used for tok/s when `update` is not told `tokens`. */
  tokensPerStep?: number;
  /** Clock in milliseconds (injectable for tests). Default performance.now. */
  now?: () => number;
}

/** What a step reports. All optional; missing fields are left out of the line. */
export interface ProgressStats {
  loss?: number;
  /** Tokens processed by this update (added to the running count for tok/s). */
  tokens?: number;
  /** Expert load imbalance (max / mean load). */
  imbalance?: number;
  /** Further `name value` fields, printed in insertion order after the standard ones. */
  extra?: Record<string, string | number>;
}

// ---- pure formatting -------------------------------------------------------------------------------

/** A rate with a k/M/G suffix and 3 significant digits: 950 → "950", 12345 → "12.3k", 2.5e6 → "2.50M". */
export function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return "--";
  if (perSecond < 0) return "-" + formatRate(-perSecond);
  const units = ["", "k", "M", "G", "T"];
  let u = 0;
  let x = perSecond;
  for (;;) {
    const digits = x >= 100 ? 0 : x >= 10 ? 1 : 2;
    const s = x.toFixed(digits);
    if (Number(s) >= 1000 && u < units.length - 1) {
      x /= 1000;
      u++;
      continue;
    }
    // Below 1000 with no suffix, integers print without decimals ("950", "12", not "12.0").
    if (u === 0 && Number.isInteger(x)) return String(x);
    return s + units[u]!;
  }
}

/** Seconds as a compact duration: 5 → "5s", 80 → "1m20s", 3725 → "1h02m", 90000 → "25h00m". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "--";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  const m = Math.floor(s / 60);
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** `[=====>    ]`: `width` characters between the brackets; fraction clamped to [0, 1]. */
export function renderBar(fraction: number, width: number): string {
  const w = Math.max(1, Math.floor(width));
  const f = Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  if (f >= 1) return `[${"=".repeat(w)}]`;
  const filled = Math.floor(f * w);
  return `[${"=".repeat(filled)}>${" ".repeat(w - filled - 1)}]`;
}

/** A loss with 3 decimals ("2.314"), or exponent form when tiny/huge. */
export function formatLoss(loss: number): string {
  if (!Number.isFinite(loss)) return String(loss);
  const a = Math.abs(loss);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? loss.toExponential(2) : loss.toFixed(3);
}

export interface ProgressLineFields {
  step: number;
  total: number;
  loss?: number;
  /** Tokens per second. */
  rate?: number;
  imbalance?: number;
  /** Seconds left; printed as `eta ...`. */
  eta?: number;
  /** Seconds taken; printed as `done in ...` (instead of eta). */
  elapsed?: number;
  extra?: Record<string, string | number>;
}

/** The text after the bar: `step 120/400  loss 2.314  12.3k tok/s  imbalance 1.42  eta 1m20s`. */
export function formatProgressLine(f: ProgressLineFields): string {
  const parts = [`step ${f.step}/${f.total}`];
  if (f.loss !== undefined) parts.push(`loss ${formatLoss(f.loss)}`);
  if (f.rate !== undefined) parts.push(`${formatRate(f.rate)} tok/s`);
  if (f.imbalance !== undefined) parts.push(`imbalance ${f.imbalance.toFixed(2)}`);
  for (const [k, v] of Object.entries(f.extra ?? {})) parts.push(`${k} ${typeof v === "number" ? formatLoss(v) : v}`);
  if (f.elapsed !== undefined) parts.push(`done in ${formatDuration(f.elapsed)}`);
  else if (f.eta !== undefined) parts.push(`eta ${formatDuration(f.eta)}`);
  return parts.join("  ");
}

// ---- the progress line -----------------------------------------------------------------------------

export class Progress {
  readonly total: number;
  readonly tty: boolean;
  readonly logEvery: number;
  private readonly stream: ProgressStream;
  private readonly minIntervalMs: number;
  private readonly barWidth: number;
  private readonly tokensPerStep: number | undefined;
  private readonly now: () => number;
  private readonly start: number;
  private step = 0;
  private tokens = 0;
  private last: ProgressStats = {};
  private lastDraw = -Infinity;
  private drawn = false; // TTY: a bar is on screen
  private lastPrintedStep = -1; // plain: the step of the last line printed
  private finished = false;

  constructor(opts: ProgressOptions) {
    if (!Number.isInteger(opts.total) || opts.total < 0) throw new RangeError(`Progress: total must be a non-negative integer, got ${opts.total}`);
    this.total = opts.total;
    this.stream = opts.stream ?? process.stderr;
    this.tty = opts.tty ?? this.stream.isTTY === true;
    this.logEvery = Math.max(1, Math.floor(opts.logEvery ?? Math.ceil(opts.total / 10)));
    this.minIntervalMs = opts.minIntervalMs ?? 100;
    this.barWidth = opts.barWidth ?? 20;
    this.tokensPerStep = opts.tokensPerStep;
    this.now = opts.now ?? (() => performance.now());
    this.start = this.now();
  }

  /** Report that `step` steps (1-based count) are done. */
  update(step: number, stats: ProgressStats = {}): void {
    if (this.finished) return;
    const prevStep = this.step;
    this.step = step;
    if (stats.tokens !== undefined) this.tokens += stats.tokens;
    else if (this.tokensPerStep !== undefined) this.tokens += this.tokensPerStep * Math.max(0, step - prevStep);
    this.last = { ...this.last, ...stats };
    if (this.tty) {
      const t = this.now();
      if (t - this.lastDraw < this.minIntervalMs) return;
      this.lastDraw = t;
      this.draw(this.line(false));
    } else if (step % this.logEvery === 0 && step !== this.lastPrintedStep && step !== this.total) {
      // (The last step's line is finish()'s, with the elapsed time.)
      this.lastPrintedStep = step;
      this.stream.write(this.line(false) + "\n");
    }
  }

  /** Print a message without breaking the bar (TTY: clear it, print, redraw). */
  log(message: string): void {
    if (this.tty && this.drawn) {
      this.stream.write(`\r\x1b[K${message}\n`);
      this.draw(this.line(false));
    } else {
      this.stream.write(message + "\n");
    }
  }

  /** The final line (elapsed instead of eta) and a newline. Idempotent. */
  finish(stats: ProgressStats = {}): void {
    if (this.finished) return;
    if (stats.tokens !== undefined) this.tokens += stats.tokens;
    this.last = { ...this.last, ...stats };
    this.finished = true;
    const text = this.line(true);
    if (this.tty) this.stream.write(`\r${this.fit(text)}\x1b[K\n`);
    else this.stream.write(text + "\n");
  }

  /** The current line: with the bar on a TTY, plain otherwise. */
  line(final: boolean): string {
    const elapsed = Math.max(0, (this.now() - this.start) / 1000);
    const { loss, imbalance, extra } = this.last;
    const fields: ProgressLineFields = { step: this.step, total: this.total, loss, imbalance, extra };
    if (this.tokens > 0 && elapsed > 0) fields.rate = this.tokens / elapsed;
    if (final) fields.elapsed = elapsed;
    else if (this.step > 0) fields.eta = (elapsed / this.step) * Math.max(0, this.total - this.step);
    const text = formatProgressLine(fields);
    if (!this.tty) return text;
    const frac = this.total > 0 ? this.step / this.total : 1;
    return `${renderBar(frac, this.barWidth)} ${text}`;
  }

  private fit(text: string): string {
    const cols = this.stream.columns;
    return cols && cols > 1 && text.length >= cols ? text.slice(0, cols - 1) : text;
  }

  private draw(text: string): void {
    this.stream.write(`\r${this.fit(text)}\x1b[K`);
    this.drawn = true;
  }
}
