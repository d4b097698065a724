/**
 * Output masking for `lessor run`: a Transform that replaces every occurrence of each secret value
 * (and of its common encodings) with `[redacted:LABEL]`, also when a value is split across chunks.
 *
 * It holds back the end of what it has seen only where that end could still grow into a secret
 * (at most `maxLen - 1` bytes that are a proper prefix of one); everything before is passed on at
 * once, so plain output is not delayed. It never emits a whole secret, nor a prefix of one that a
 * later chunk completes. On end it flushes what it held (after masking).
 */
import { Transform, type TransformCallback } from "node:stream";
import { base64CoresOf } from "../../base/base64-cores.js";
import { textFormsOf } from "../../base/text-forms.js";

/** One byte string to hide, and what to print instead. */
export interface MaskPattern {
  bytes: Buffer;
  replacement: Buffer;
}

/**
 * The byte strings to hide for one value: the raw bytes, and for values of 6 bytes or more also
 * their base64 (standard with and without padding, and URL-safe; also the part that encodes the value
 * alone inside a longer base64 string, at each alignment), lower- and upper-case hex, and the text
 * forms the proxy's scrubber masks too (percent-encoders, JSON and HTML escapers: src/base/text-forms.ts)
 * when they differ from the raw bytes.
 */
export function encodingsOf(value: Buffer): Buffer[] {
  if (value.length === 0) return [];
  const out: Buffer[] = [Buffer.from(value)];
  if (value.length >= 6) {
    const b64 = value.toString("base64");
    out.push(Buffer.from(b64), Buffer.from(b64.replace(/=+$/, "")), Buffer.from(value.toString("base64url")));
    // Inside a longer encoded string (`base64("user:" + value)`, what curl -v prints for -u), at each alignment.
    for (const core of base64CoresOf(value)) out.push(Buffer.from(core));
    const hex = value.toString("hex");
    out.push(Buffer.from(hex), Buffer.from(hex.toUpperCase()));
    const text = value.toString("utf8");
    if (Buffer.from(text, "utf8").equals(value)) for (const f of textFormsOf(text)) out.push(Buffer.from(f));
  }
  const seen = new Set<string>();
  return out.filter((b) => {
    const k = b.toString("latin1");
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** String members shorter than this are not masked on their own (a `"type"`, a user name). */
const MIN_MEMBER_BYTES = 8;
/** Most string members of one JSON value masked on their own, and how deep they are looked for. */
const MAX_MEMBERS = 64;
const MAX_DEPTH = 32;
/**
 * Members of the common JSON credentials (a GCP service account key, a database's connection
 * document) that name where and who, never a secret: masked, they rewrote a project id, every
 * `googleapis.com` URL and `service_account` in a command's stdout, which the next program of a
 * pipeline reads. Any other member is masked (an unknown key may hold a secret).
 */
const PUBLIC_MEMBERS = new Set([
  "type", "project_id", "client_email", "client_id", "auth_uri", "token_uri", "auth_provider_x509_cert_url",
  "client_x509_cert_url", "universe_domain", "host", "hostname", "port", "database", "dbname", "region",
]);

/**
 * The string members (of {@link MIN_MEMBER_BYTES} or more) of a value that is a JSON object or array:
 * a program handed such a credential whole (a service account key, `{"user":…,"password":…}`) prints
 * its fields alone, or the document re-serialised, never the value's own bytes.
 */
export function jsonMembersOf(value: Buffer): Buffer[] {
  const text = value.toString("utf8");
  const first = text.trimStart()[0];
  if (first !== "{" && first !== "[") return [];
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return [];
  }
  const out: Buffer[] = [];
  const walk = (v: unknown, depth: number): void => {
    if (out.length >= MAX_MEMBERS || depth > MAX_DEPTH) return;
    if (typeof v === "string") {
      if (Buffer.byteLength(v, "utf8") >= MIN_MEMBER_BYTES) out.push(Buffer.from(v, "utf8"));
    } else if (Array.isArray(v)) {
      for (const m of v) walk(m, depth + 1);
    } else if (typeof v === "object" && v !== null) {
      for (const [k, m] of Object.entries(v)) if (typeof m !== "string" || !PUBLIC_MEMBERS.has(k.toLowerCase())) walk(m, depth + 1);
    }
  };
  walk(doc, 0);
  return out;
}

/**
 * Builds patterns for `values` (label → value bytes), each value's string members too when it is a
 * JSON document ({@link jsonMembersOf}); longer patterns win where two start at one place.
 */
export function maskPatterns(values: { label: string; value: Buffer }[]): MaskPattern[] {
  const out: MaskPattern[] = [];
  const seen = new Set<string>();
  for (const { label, value } of values) {
    const replacement = Buffer.from(`[redacted:${label}]`);
    const members = jsonMembersOf(value);
    const all = [...encodingsOf(value), ...members.flatMap((m) => encodingsOf(m))];
    for (const m of members) m.fill(0);
    for (const bytes of all) {
      const k = bytes.toString("latin1");
      if (seen.has(k)) {
        bytes.fill(0);
        continue;
      }
      seen.add(k);
      out.push({ bytes, replacement });
    }
  }
  return out.sort((a, b) => b.bytes.length - a.bytes.length);
}

/** A Transform that masks `patterns` in the bytes flowing through it. */
export class MaskStream extends Transform {
  readonly #patterns: MaskPattern[];
  readonly #maxLen: number;
  #tail: Buffer = Buffer.alloc(0);

  constructor(patterns: MaskPattern[]) {
    super();
    this.#patterns = patterns;
    this.#maxLen = patterns.reduce((m, p) => Math.max(m, p.bytes.length), 0);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const buf = this.#tail.length === 0 ? chunk : Buffer.concat([this.#tail, chunk]);
    this.#wipeTail();
    const { out, rest } = this.#scan(buf, false);
    this.#tail = Buffer.from(rest);
    if (buf !== chunk) buf.fill(0);
    if (out.length > 0) this.push(out);
    cb();
  }

  override _flush(cb: TransformCallback): void {
    const { out } = this.#scan(this.#tail, true);
    this.#wipeTail();
    if (out.length > 0) this.push(out);
    cb();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    this.#wipeTail();
    cb(err);
  }

  #wipeTail(): void {
    this.#tail.fill(0);
    this.#tail = Buffer.alloc(0);
  }

  /**
   * Masks `buf`. Unless `final`, the bytes from the first place where the rest of `buf` could still
   * grow into a secret (it is a proper prefix of one) are held back as `rest`: everything before
   * that is decided, so plain output is passed on at once and only a possible secret start waits.
   */
  #scan(buf: Buffer, final: boolean): { out: Buffer; rest: Buffer } {
    if (this.#maxLen === 0) return { out: Buffer.from(buf), rest: Buffer.alloc(0) };
    const parts: Buffer[] = [];
    const next = this.#patterns.map((p) => buf.indexOf(p.bytes));
    let i = 0;
    let hold = final ? buf.length : this.#partialFrom(buf, 0);
    for (;;) {
      let best = -1;
      let at = Infinity;
      for (let k = 0; k < this.#patterns.length; k++) {
        let idx = next[k]!;
        if (idx >= 0 && idx < i) next[k] = idx = buf.indexOf(this.#patterns[k]!.bytes, i);
        // patterns are sorted longest first, so `<` keeps the longest at a tie
        if (idx >= 0 && idx < at) {
          at = idx;
          best = k;
        }
      }
      if (best < 0 || at >= hold) break;
      if (at > i) parts.push(buf.subarray(i, at));
      parts.push(this.#patterns[best]!.replacement);
      i = at + this.#patterns[best]!.bytes.length;
      if (hold < i) hold = this.#partialFrom(buf, i);
    }
    if (hold > i) parts.push(buf.subarray(i, hold));
    return { out: Buffer.concat(parts), rest: buf.subarray(Math.max(i, hold)) };
  }

  /** The first position at or after `from` where the rest of `buf` is a proper prefix of a pattern (else buf.length). */
  #partialFrom(buf: Buffer, from: number): number {
    for (let p = Math.max(from, buf.length - this.#maxLen + 1); p < buf.length; p++) {
      const n = buf.length - p;
      for (const pat of this.#patterns) {
        if (pat.bytes.length > n && pat.bytes[0] === buf[p] && buf.compare(pat.bytes, 0, n, p) === 0) return p;
      }
    }
    return buf.length;
  }
}
