/**
 * The scrubber's second stage: base64 values wrapped in lines. A base64 encoder that wraps (PEM every
 * 64 characters, MIME every 76, GitHub's blob API every 60, often inside a JSON string where the break
 * is the two characters `\n`) may put a break anywhere inside a value's base64 form, and every decoder
 * skips it. Listing each form once per break position would make the automaton quadratic in the
 * value's length; this stage instead matches the `wrapped` patterns (./scrub.ts) against the text with
 * its line breaks left out, and masks the characters of an occurrence where they are, keeping the breaks.
 *
 * A line break here is `\n`, `\r\n`, `\\n` or `\\r\\n` (the last two as JSON writes them) that follows at
 * least {@link MIN_LINE} base64 characters and is followed by one: only a line of a wrapped blob ends so.
 * Text is stepped through the automaton only around such a break (the bytes a value spanning it could
 * occupy) and at the end of each chunk (what to hold back); other text is sampled (see {@link STRIDE}) and
 * passed over. Each byte is looked at a bounded number of times, so time stays linear.
 *
 * What it holds back between chunks is exactly an occurrence in progress: a prefix of a pattern, with
 * any line breaks inside it, at the end of what it has seen (at most {@link WrapScrubber.lookback} bytes).
 */
import { Buffer } from "node:buffer";
import type { ScrubPatterns } from "./scrub.js";

/** Base64 characters a wrapped line has before its break (the shortest line in use is 60; 40 leaves room). */
export const MIN_LINE = 40;

/** 1 for the base64 alphabet (A-Z, a-z, 0-9, `+`, `/`). */
const B64 = new Uint8Array(256);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") B64[c.charCodeAt(0)] = 1;

const LF = 0x0a;
const CR = 0x0d;
const BACKSLASH = 0x5c;
const EMPTY = Buffer.alloc(0);

/**
 * Breaks are found by sampling bytes at most STRIDE apart: the {@link MIN_LINE} base64 characters before
 * a line break hold a sample and the byte STRIDE after it, so a sample that is not base64, or whose byte
 * STRIDE on is not, is passed over (plain text mostly is); a run through both is walked to its end, and
 * sampling goes on after it.
 */
const STRIDE = MIN_LINE / 2;

/**
 * The length of the line break starting at `buf[i]` (0: none; -1: the buffer ends inside what may be
 * one, so the next chunk decides).
 */
function breakAt(buf: Buffer, i: number): number {
  const n = buf.length;
  const c = buf[i];
  if (c === LF) return 1;
  if (c === CR) return i + 1 >= n ? -1 : buf[i + 1] === LF ? 2 : 0;
  if (c !== BACKSLASH) return 0;
  if (i + 1 >= n) return -1;
  if (buf[i + 1] === 0x6e) return 2; // \n
  if (buf[i + 1] !== 0x72) return 0; // not \r
  if (i + 2 >= n || (buf[i + 2] === BACKSLASH && i + 3 >= n)) return -1;
  return buf[i + 2] === BACKSLASH && buf[i + 3] === 0x6e ? 4 : 0; // \r\n
}

/** One stream's second stage (see the module comment). Used by ./scrub.ts's Scrubber. */
export class WrapScrubber {
  private readonly p: ScrubPatterns;
  /** Bytes seen, not yet passed on: an occurrence in progress. */
  private tail: Buffer = EMPTY;
  /** Base64 characters just before the tail (at most {@link MIN_LINE} counted). */
  private line = 0;
  private count = 0;
  /** Raw offset of each of the last filtered characters, by filtered index (& mask). */
  private readonly at: Int32Array;
  private readonly mask: number;
  /** Most bytes an occurrence in progress may span (its characters and the breaks between them). */
  readonly lookback: number;

  constructor(patterns: ScrubPatterns) {
    this.p = patterns;
    let size = 1;
    while (size < patterns.longest + 1) size *= 2;
    this.at = new Int32Array(size);
    this.mask = size - 1;
    // The first break may come after one character; each further one after a whole line; 4 bytes each.
    this.lookback = patterns.longest + 4 * (2 + Math.ceil(patterns.longest / MIN_LINE));
  }

  /** Bytes held back right now. */
  get held(): number {
    return this.tail.length;
  }

  /** Occurrences replaced so far. */
  get replaced(): number {
    return this.count;
  }

  /** Scrubs the next bytes (the first stage's output for one chunk); returns what is safe to pass on. */
  push(chunks: Buffer[]): Buffer[] {
    if (chunks.length === 1) return this.pushOne(chunks[0]!);
    const out: Buffer[] = [];
    for (const c of chunks) for (const b of this.pushOne(c)) out.push(b);
    return out;
  }

  /** {@link push} for one buffer (the first stage's output comes in a few: its held bytes, the chunk, placeholders). */
  private pushOne(chunk: Buffer): Buffer[] {
    if (chunk.length === 0) return [];
    const buf = this.tail.length > 0 ? Buffer.concat([this.tail, chunk]) : chunk;
    const n = buf.length;
    const st = { buf, out: null as Buffer | null, row: 0, chars: 0 };
    // Step around each line break that ends a line of base64 (see {@link STRIDE}).
    let cursor = 0;
    for (let p = 0; p < n; ) {
      if (B64[buf[p]!] !== 1 || (p > 0 && p + STRIDE < n && B64[buf[p + STRIDE]!] !== 1)) {
        p += STRIDE;
        continue;
      }
      let q = p + 1;
      while (q < n && B64[buf[q]!] === 1) q++;
      if (q < n && breakAt(buf, q) > 0 && q - p + this.lineBefore(buf, p) >= MIN_LINE) cursor = this.step(st, Math.max(cursor, q - this.lookback), q);
      // Past a short run, the next sample is STRIDE on; past a long one, after its end.
      p = Math.max(p + STRIDE, q + 1, cursor);
    }
    // The end: the state there says what to hold back.
    if (cursor < n) this.step(st, Math.max(cursor, n - this.lookback), -1);
    const out = st.out ?? buf;
    let hold = n;
    if (st.row !== 0) {
      const depth = this.p.depth[(st.row / this.p.classes) | 0]!;
      hold = this.at[(st.chars - depth) & this.mask]!;
    }
    this.line = this.lineBefore(buf, hold);
    this.tail = hold < n ? Buffer.from(out.subarray(hold)) : EMPTY;
    return hold > 0 ? [out.subarray(0, hold)] : [];
  }

  /** Ends the stream: what is held can no longer complete an occurrence. */
  end(): Buffer[] {
    const rest = this.tail;
    this.tail = EMPTY;
    return rest.length > 0 ? [rest] : [];
  }

  /** Base64 characters just before `buf[at]` (at most {@link MIN_LINE} counted; the tail's carry before the buffer). */
  private lineBefore(buf: Buffer, at: number): number {
    let k = 0;
    while (k < MIN_LINE && at - k > 0 && B64[buf[at - k - 1]!] === 1) k++;
    return at - k === 0 ? k + this.line : k;
  }

  /**
   * Steps the automaton over `st.buf` from `from` (at the root there), skipping line breaks that end a
   * line of base64, and masks each occurrence found (in a copy, `st.out`). With `past` >= 0, stops at the
   * first reset after `past` (the end of the wrapped text around that break); with -1, at the end.
   * Returns where it stopped.
   */
  private step(st: { buf: Buffer; out: Buffer | null; row: number; chars: number }, from: number, past: number): number {
    const { delta, cls, classes, terminal, dict, depth, placeholders } = this.p;
    const at = this.at;
    const mask = this.mask;
    const buf = st.buf;
    const n = buf.length;
    let row = 0;
    let chars = st.chars;
    let line = this.lineBefore(buf, from);
    let i = from;
    while (i < n) {
      const c = buf[i]!;
      if (B64[c] === 1) {
        const next = delta[row + cls[c]!]!;
        at[chars & mask] = i;
        chars++;
        line++;
        i++;
        if (next >= 0) {
          row = next;
          continue;
        }
        row = ~next;
        const state = (row / classes) | 0;
        for (let m = terminal[state] !== -1 ? state : dict[state]!; m !== -1; m = dict[m]!) {
          const ph = placeholders[terminal[m]!]!;
          const first = chars - depth[m]!;
          const out = (st.out ??= Buffer.from(buf));
          for (let k = 0; k < ph.length; k++) out[at[(first + k) & mask]!] = ph[k]!;
          this.count++;
        }
        continue;
      }
      const len = breakAt(buf, i);
      if (len !== 0) {
        const end = len < 0 ? n : i + len;
        // A break that ends a line of base64 and is followed by base64 (or by what comes next) is skipped.
        const kept = line >= MIN_LINE && (end >= n || B64[buf[end]!] === 1);
        line = 0;
        i = end;
        if (kept) continue;
      } else {
        line = 0;
        i++;
      }
      row = 0;
      if (past >= 0 && i > past) break;
    }
    st.row = row;
    st.chars = chars;
    return i;
  }
}
