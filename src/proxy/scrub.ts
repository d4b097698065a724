/**
 * Streaming scrubber: replaces every occurrence of a secret value in a byte stream with its placeholder,
 * without buffering whole bodies.
 *
 * The secrets are compiled once into an Aho–Corasick automaton ({@link ScrubPatterns}, immutable and
 * shared by every stream); each stream keeps its own small state ({@link Scrubber}). Every input byte
 * costs one table step, whatever the number of secrets, so time is linear and nothing is built from
 * secret text that could backtrack (no regular expression).
 *
 * What a stream holds back between chunks is exactly the bytes that could still be the start of a
 * secret: the longest suffix of what it has seen that is a prefix of some secret (at most the longest
 * secret's length minus one). Everything before that is passed on at once, so a secret split across
 * chunks at any point is caught, and a Server-Sent Event that is complete (it ends in a blank line,
 * which is no secret's prefix) is never delayed. There is no separate "SSE mode": holding back only a
 * possible secret prefix is the only mode.
 *
 * Patterns marked `wrapped` (a value's base64 forms) are also matched with line breaks inside them, by
 * a second stage the first one's output goes through (./scrub-wrapped.ts): base64 wrapped in lines
 * (PEM, MIME, a JSON string from GitHub's blob API) may break a form anywhere, and listing it once per
 * break position would multiply the automaton by the value's length.
 *
 * When occurrences overlap, the leftmost wins, and of those starting at the same byte, the longest (a
 * secret that is a prefix of another is not replaced inside the longer one). Output order is input
 * order. With placeholders of the same length as their values (./placeholder.ts makes them so), the
 * output has the input's length, so a Content-Length stays true.
 */
import { Transform, type TransformCallback, type TransformOptions } from "node:stream";
import { Buffer } from "node:buffer";
import { VaultError } from "../base/errors.js";
import { WrapScrubber } from "./scrub-wrapped.js";

/** One secret and what replaces it. Strings are taken as UTF-8. */
export interface SecretPattern {
  value: Uint8Array | string;
  placeholder: Uint8Array | string;
  /**
   * A base64 form: also matched wrapped in lines, a line break between any two of its characters
   * (./scrub-wrapped.ts). Taken only for a value of base64 characters with a placeholder of its length.
   */
  wrapped?: boolean;
}

/** Most distinct needles the root-state jump searches for ({@link ScrubPatterns.needles}); with more, every byte is stepped. */
const MAX_NEEDLES = 16;

/** The automaton's table is capped (entries: states × byte classes), so a huge set cannot eat memory. */
const MAX_TABLE_ENTRIES = 16 * 1024 * 1024;

const toBytes = (v: Uint8Array | string): Buffer => (typeof v === "string" ? Buffer.from(v, "utf8") : Buffer.from(v.buffer, v.byteOffset, v.byteLength));

/**
 * A compiled set of secrets. Build it once per set (e.g. per agent's live leases) and share it: it is
 * immutable. Memory is about 4 bytes × (total secret bytes) × (distinct bytes in the secrets + 1).
 */
export class ScrubPatterns {
  /** Length of the longest secret, in bytes: a stream holds back at most one byte less. */
  readonly longest: number;
  /** Length of the shortest secret, in bytes: shorter text cannot hold one. */
  readonly shortest: number;
  /** Number of distinct secret values. */
  readonly count: number;
  /**
   * True when every placeholder has its value's byte length, so a scrubbed stream keeps its length
   * (a Content-Length or a WebSocket frame length stays true).
   */
  readonly lengthPreserving: boolean;

  /** Byte → class (0 for bytes no secret contains), so the table has one column per class, not 256. */
  /** @internal */ readonly cls: Uint8Array;
  /** @internal */ readonly classes: number;
  /**
   * Full transition table, by row offset (state × classes): `delta[row + cls[byte]]` is the next
   * state's row offset, bit-inverted (negative) when a secret ends in that state, so the hot loop
   * needs one lookup per byte. @internal
   */
  readonly delta: Int32Array;
  /** Per state: depth (length of the prefix it stands for). @internal */
  readonly depth: Int32Array;
  /** Per state: the secret ending exactly here, or -1. @internal */
  readonly terminal: Int32Array;
  /** Per state: the next state on its failure chain that is a terminal, or -1. @internal */
  readonly dict: Int32Array;
  /** Per state: 1 if a secret ends here or on its failure chain. @internal */
  readonly hasOut: Uint8Array;
  /** Per state: 1 if a longer secret extends this state's prefix. @internal */
  readonly hasDeeper: Uint8Array;
  /**
   * The distinct first {@link needleLength} bytes of the secrets when there are at most
   * {@link MAX_NEEDLES} of them, else null. At the root state the scrubber jumps to the next place one
   * of them starts, with `Buffer.indexOf` (native), instead of stepping byte by byte: a secret's
   * encoded forms (src/proxy/lease-egress.ts) start with letters that plain text is full of, so a
   * first byte alone would stop the jump every few bytes, where four rarely match. @internal
   */
  readonly needles: readonly Buffer[] | null;
  /** Length of each needle: the shortest secret's length, at most 4. @internal */
  readonly needleLength: number;
  /** @internal */ readonly placeholders: readonly Buffer[];
  /** The `wrapped` patterns, for the second stage (./scrub-wrapped.ts), or null when there are none. @internal */
  readonly wrapped: ScrubPatterns | null;

  /**
   * Compiles `patterns`. Throws `invalid_request` for an empty value; a value given twice keeps its
   * first placeholder.
   */
  readonly #values: readonly Buffer[];
  #lower: ScrubPatterns | undefined;

  /**
   * The same patterns in lower case (values and placeholders, ASCII letters only), for text that
   * arrives lower-cased whatever was sent: header names. Built once, on first use.
   */
  lowerCased(): ScrubPatterns {
    return (this.#lower ??= new ScrubPatterns(this.#values.map((v, i) => ({ value: lowerAscii(v), placeholder: lowerAscii(this.placeholders[i]!) }))));
  }

  constructor(patterns: Iterable<SecretPattern>) {
    const values: Buffer[] = [];
    const placeholders: Buffer[] = [];
    const seen = new Set<string>();
    const wrapped: SecretPattern[] = [];
    for (const p of patterns) {
      const v = toBytes(p.value);
      if (v.length === 0) throw new VaultError("invalid_request", "a secret to scrub is empty");
      const key = v.toString("latin1");
      if (seen.has(key)) continue;
      seen.add(key);
      // Copies: the caller may reuse or wipe its buffers.
      values.push(Buffer.from(v));
      placeholders.push(Buffer.from(toBytes(p.placeholder)));
      if (p.wrapped === true && /^[A-Za-z0-9+/]+$/.test(key) && placeholders[placeholders.length - 1]!.length === v.length)
        wrapped.push({ value: values[values.length - 1]!, placeholder: placeholders[placeholders.length - 1]! });
    }
    this.wrapped = wrapped.length > 0 ? new ScrubPatterns(wrapped) : null;
    this.count = values.length;
    this.placeholders = placeholders;
    this.#values = values;
    this.lengthPreserving = values.every((v, i) => v.length === placeholders[i]!.length);
    this.longest = values.reduce((m, v) => Math.max(m, v.length), 0);
    this.shortest = values.reduce((m, v) => Math.min(m, v.length), Infinity);

    const cls = new Uint8Array(256);
    let classes = 1;
    for (const v of values) for (const b of v) if (cls[b] === 0) cls[b] = classes++;
    this.cls = cls;
    this.classes = classes;

    const maxStates = values.reduce((n, v) => n + v.length, 1);
    if (maxStates * classes > MAX_TABLE_ENTRIES)
      throw new VaultError(
        "value_too_large",
        `too many secrets to scrub at once (${values.length} values and encoded forms, ${maxStates - 1} bytes, of many distinct characters): the answers could not be masked of them; use fewer credentials at once, or shorter values`,
      );
    const delta = new Int32Array(maxStates * classes).fill(-1);
    const depth = new Int32Array(maxStates);
    const terminal = new Int32Array(maxStates).fill(-1);
    const parent = new Int32Array(maxStates);

    // The trie: delta holds the goto edges (-1 for none) until the breadth-first pass completes it.
    let states = 1;
    values.forEach((v, id) => {
      let s = 0;
      for (const b of v) {
        const at = s * classes + cls[b]!;
        if (delta[at] === -1) {
          depth[states] = depth[s]! + 1;
          parent[states] = s;
          delta[at] = states++;
        }
        s = delta[at]!;
      }
      if (terminal[s] === -1) terminal[s] = id;
    });

    const fail = new Int32Array(states);
    const dict = new Int32Array(states).fill(-1);
    const order: number[] = [0];
    for (let x = 0; x < classes; x++) {
      const c = delta[x]!;
      if (c === -1) delta[x] = 0;
      else {
        fail[c] = 0;
        order.push(c);
      }
    }
    for (let q = 1; q < order.length; q++) {
      const u = order[q]!;
      const f = fail[u]!;
      dict[u] = terminal[f] !== -1 ? f : dict[f]!;
      for (let x = 0; x < classes; x++) {
        const at = u * classes + x;
        const v = delta[at]!;
        const via = delta[f * classes + x]!;
        if (v === -1) delta[at] = via;
        else {
          fail[v] = via;
          order.push(v);
        }
      }
    }

    const hasOut = new Uint8Array(states);
    for (let u = 0; u < states; u++) hasOut[u] = terminal[u] !== -1 || dict[u] !== -1 ? 1 : 0;
    // Children come after their parent in breadth-first order, so walking it backwards sees them first.
    const hasDeeper = new Uint8Array(states);
    for (let q = order.length - 1; q > 0; q--) {
      const v = order[q]!;
      if (terminal[v] !== -1 || hasDeeper[v] === 1) hasDeeper[parent[v]!] = 1;
    }

    const rows = delta.subarray(0, states * classes);
    for (let at = 0; at < rows.length; at++) {
      const v = rows[at]!;
      rows[at] = hasOut[v] === 1 ? ~(v * classes) : v * classes;
    }
    this.delta = rows;
    this.depth = depth.subarray(0, states);
    this.terminal = terminal.subarray(0, states);
    this.dict = dict;
    this.hasOut = hasOut;
    this.hasDeeper = hasDeeper;
    const len = Math.min(4, ...values.map((v) => v.length));
    const needles: Buffer[] = [];
    for (const v of values) {
      const prefix = v.subarray(0, len);
      if (!needles.some((nd) => nd.equals(prefix))) needles.push(Buffer.from(prefix)); // a copy: the caller may wipe its value
      if (needles.length > MAX_NEEDLES) break;
    }
    this.needleLength = len;
    this.needles = needles.length > 0 && needles.length <= MAX_NEEDLES ? needles : null;
  }
}

/**
 * The state of one scrubbed stream. `push` each chunk and pass on what it returns, then `end`. The
 * buffers returned may be views of the input chunk (no copy): do not reuse an input buffer while its
 * output is still in use.
 *
 * Occurrences found but not yet replaced wait in a ring indexed by start offset (one slot per start,
 * the longest occurrence found there); a scan pointer walks the starts once, replacing an occurrence
 * as soon as no occurrence still in progress could start at or before it. Each byte is stepped once
 * through the automaton and scanned once, so the work is linear in the input plus the occurrences.
 */
export class Scrubber {
  private readonly p: ScrubPatterns;
  /** The automaton's state, as its row offset in the table. */
  private row = 0;
  /** Bytes consumed so far (absolute offsets are numbers: exact up to 2^53 bytes). */
  private pos = 0;
  /** Bytes before this offset have been passed on (as themselves or as a placeholder). */
  private emitted = 0;
  /** The next start offset to look at for a pending occurrence; never below `emitted`. */
  private scan = 0;
  /** The bytes [emitted, pos) of earlier chunks: seen, not yet passed on. */
  private tail: Buffer = Buffer.alloc(0);
  /** Pending occurrences by start offset (& mask): end offset (-1: none) and secret id. */
  private readonly ringEnd: Float64Array;
  private readonly ringId: Int32Array;
  private readonly mask: number;
  private pending = 0;
  private ended = false;
  private count = 0;
  /** The second stage, for base64 wrapped in lines, when the patterns have `wrapped` ones. */
  private readonly wrap: WrapScrubber | null;

  constructor(patterns: ScrubPatterns | Iterable<SecretPattern>) {
    this.p = patterns instanceof ScrubPatterns ? patterns : new ScrubPatterns(patterns);
    // Pending starts lie within the last `longest + 1` offsets.
    let size = 1;
    while (size < this.p.longest + 2) size *= 2;
    this.ringEnd = new Float64Array(size).fill(-1);
    this.ringId = new Int32Array(size);
    this.mask = size - 1;
    this.wrap = this.p.wrapped ? new WrapScrubber(this.p.wrapped) : null;
  }

  /**
   * Bytes held back right now: never more than `longest - 1`, plus, with `wrapped` patterns, an
   * occurrence of one in progress with its line breaks (`WrapScrubber.lookback` at most).
   */
  get held(): number {
    return this.pos - this.emitted + (this.wrap?.held ?? 0);
  }

  /** Occurrences replaced so far. */
  get replaced(): number {
    return this.count + (this.wrap?.replaced ?? 0);
  }

  /** Scrubs the next chunk; returns the output it makes safe to pass on now (possibly nothing). */
  push(chunk: Uint8Array): Buffer[] {
    if (this.ended) throw new VaultError("internal", "scrubber used after end");
    const out = this.first(chunk);
    return this.wrap ? this.wrap.push(out) : out;
  }

  /** The first stage of {@link push}: the patterns as they are. */
  private first(chunk: Uint8Array): Buffer[] {
    const out: Buffer[] = [];
    const { delta, cls, classes, terminal, dict, depth, hasDeeper } = this.p;
    const { ringEnd, ringId, mask } = this;
    const input = chunk instanceof Buffer ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const n = input.length;
    const start = this.pos;
    const tail = this.tail;
    const tailStart = this.emitted;
    let row = this.row;
    let state = (row / classes) | 0;

    const emitPlain = (a: number, b: number): void => {
      if (a >= b) return;
      if (a < start) out.push(tail.subarray(a - tailStart, Math.min(b, start) - tailStart));
      if (b > start) out.push(input.subarray(Math.max(a, start) - start, b - start));
    };

    // At the root state with nothing pending, jump to the next place a secret's first bytes start. No
    // secret starts before it (each starts with one of the needles), so the automaton would be back at
    // the root there anyway. A needle cut by the chunk's end is not found: the last needleLength - 1
    // bytes are always stepped, so that the state carried to the next chunk is exact.
    const needles = this.p.needles;
    const stepFrom = n - this.p.needleLength + 1;
    const nextAt = needles ? needles.map(() => -1) : [];
    const nextFirst = (from: number): number => {
      let j = n;
      for (let k = 0; k < nextAt.length; k++) {
        if (nextAt[k]! < from) {
          const f = input.indexOf(needles![k]!, from);
          nextAt[k] = f < 0 ? n : f;
        }
        if (nextAt[k]! < j) j = nextAt[k]!;
      }
      return j === n ? Math.max(from, stepFrom) : j;
    };
    const skip = needles !== null;

    // A local copy of `pending === 0`, refreshed after every change (a field read costs in the hot loop).
    let idle = this.pending === 0;
    for (let i = skip && row === 0 && idle ? nextFirst(0) : 0; i < n; i++) {
      const next = delta[row + cls[input[i]!]!]!;
      // The hot path: no secret ends here and nothing is pending.
      if (next >= 0 && idle) {
        row = next;
        if (row === 0 && skip) i = nextFirst(i + 1) - 1;
        continue;
      }
      const ends = next < 0;
      row = ends ? ~next : next;
      state = (row / classes) | 0;
      const pos = start + i + 1;
      // With nothing pending, no occurrence can start before the frontier: skip the scan there, so
      // that pending starts always lie within the ring's window.
      if (this.pending === 0 && this.scan < pos - depth[state]!) this.scan = pos - depth[state]!;
      if (ends)
        for (let m = terminal[state] !== -1 ? state : dict[state]!; m !== -1; m = dict[m]!) {
          const s = pos - depth[m]!;
          if (s < this.scan) continue; // overlaps what was already replaced
          const slot = s & mask;
          if (ringEnd[slot]! < 0) this.pending++;
          // Found later means longer: the slot keeps the longest occurrence starting at s.
          ringEnd[slot] = pos;
          ringId[slot] = terminal[m]!;
        }
      if (this.pending > 0) this.advance(pos - depth[state]!, hasDeeper[state] === 1, emitPlain, out);
      idle = this.pending === 0;
    }

    this.row = row;
    state = (row / classes) | 0;
    this.pos = start + n;
    // Pass on everything before the first byte that could still belong to a secret.
    const frontier = this.pos - depth[state]!;
    if (frontier > this.emitted) {
      emitPlain(this.emitted, frontier);
      this.emitted = frontier;
      if (this.scan < frontier) this.scan = frontier;
    }
    // Keep a copy of the held bytes: the input chunk is not ours to keep.
    const keepFrom = this.emitted;
    if (keepFrom >= start) this.tail = Buffer.from(input.subarray(keepFrom - start));
    else this.tail = Buffer.concat([tail.subarray(keepFrom - tailStart), input]);
    return out;
  }

  /** Ends the stream: replaces what is pending and returns the rest. */
  end(): Buffer[] {
    if (this.ended) return [];
    const out = this.last();
    return this.wrap ? [...this.wrap.push(out), ...this.wrap.end()] : out;
  }

  /** The first stage of {@link end}. */
  private last(): Buffer[] {
    this.ended = true;
    const out: Buffer[] = [];
    const tail = this.tail;
    const tailStart = this.emitted;
    const emitPlain = (a: number, b: number): void => {
      if (a < b) out.push(tail.subarray(a - tailStart, b - tailStart));
    };
    // No byte follows: every pending occurrence is final.
    this.advance(Number.POSITIVE_INFINITY, false, emitPlain, out);
    emitPlain(this.emitted, this.pos);
    this.emitted = this.pos;
    this.tail = Buffer.alloc(0);
    return out;
  }

  /**
   * Walks the scan pointer over start offsets, replacing the occurrence pending at each, while no
   * occurrence still in progress could start at or before it. `frontier` is where the longest
   * possible occurrence in progress starts; one starting exactly there is final only if no longer
   * secret extends it (`deeper` false).
   */
  private advance(frontier: number, deeper: boolean, emitPlain: (a: number, b: number) => void, out: Buffer[]): void {
    const { ringEnd, ringId, mask } = this;
    while (this.pending > 0 && (this.scan < frontier || (this.scan === frontier && !deeper))) {
      const s = this.scan;
      const e = ringEnd[s & mask]!;
      if (e < 0) {
        this.scan++;
        continue;
      }
      emitPlain(this.emitted, s);
      out.push(this.p.placeholders[ringId[s & mask]!]!);
      this.count++;
      // Occurrences starting inside the replaced one are dropped.
      for (let x = s; x < e; x++)
        if (ringEnd[x & mask]! >= 0) {
          ringEnd[x & mask] = -1;
          this.pending--;
        }
      this.emitted = e;
      this.scan = e;
    }
  }
}

/** Scrubs a whole buffer at once (the same core as the stream). */
export function scrub(data: Uint8Array | string, patterns: ScrubPatterns | Iterable<SecretPattern>): Buffer {
  const s = new Scrubber(patterns);
  return Buffer.concat([...s.push(toBytes(data)), ...s.end()]);
}

/**
 * A Transform that scrubs a byte stream. Output for a chunk is pushed before the chunk's callback, so
 * nothing waits for the next chunk except a possible secret prefix.
 */
export class ScrubStream extends Transform {
  readonly scrubber: Scrubber;

  constructor(patterns: ScrubPatterns | Iterable<SecretPattern>, options?: Omit<TransformOptions, "objectMode" | "readableObjectMode" | "writableObjectMode">) {
    super(options);
    this.scrubber = new Scrubber(patterns);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      for (const b of this.scrubber.push(chunk)) this.push(b);
      callback();
    } catch (e) {
      callback(e as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    for (const b of this.scrubber.end()) this.push(b);
    callback();
  }
}

/** `b` with ASCII letters in lower case (a copy). */
function lowerAscii(b: Buffer): Buffer {
  const out = Buffer.from(b);
  for (let i = 0; i < out.length; i++) if (out[i]! >= 0x41 && out[i]! <= 0x5a) out[i] = out[i]! + 0x20;
  return out;
}
