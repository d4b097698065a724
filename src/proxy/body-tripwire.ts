/**
 * The tripwire in request bodies (and, through ./ws-frames.ts, WebSocket client frames): a stream that
 * passes a body on unchanged while it watches for the marks of credentials whose leases do not cover
 * the request's host (their placeholders and values, in the encoded forms src/proxy/lease-egress.ts
 * lists). At the first mark it passes nothing more on, not even the bytes before the mark in the same
 * chunk, and fails with {@link TripwireHit} naming the credentials found: the proxy then ends the
 * upstream request and answers 403 (./intercept.ts, ./h2.ts).
 *
 * It reuses the scrubber's automaton (./scrub.ts), so a mark split across chunks is caught: the
 * scrubber holds back any tail that could begin one, and the held bytes go on only once they cannot.
 */
import { Transform, type TransformCallback } from "node:stream";
import { ScrubPatterns, Scrubber } from "./scrub.js";

/** What a body tripwire looks for: per owner (a credential, say), the texts that give it away. */
export class TripwireMarks<T> {
  /** @internal */ readonly patterns: ScrubPatterns;
  /** @internal */ readonly owners: ReadonlyMap<Buffer, T>;

  /** `marks`: each owner with its texts (empty texts are skipped; a text two owners share counts for the first). */
  constructor(marks: Iterable<readonly [T, readonly string[]]>) {
    const tags: { value: string; placeholder: Buffer }[] = [];
    const byTag = new Map<string, T>();
    let i = 0;
    for (const [owner, texts] of marks) {
      // The "replacement" is a tag naming the owner: it never leaves (the output of a chunk with a hit
      // is dropped), it only tells which owner the scrubber found.
      const tag = Buffer.from(`\0mark:${i++}\0`, "latin1");
      byTag.set(tag.toString("latin1"), owner);
      for (const t of texts) if (t.length > 0) tags.push({ value: t, placeholder: tag });
    }
    this.patterns = new ScrubPatterns(tags);
    const owners = new Map<Buffer, T>();
    // ScrubPatterns copies each replacement: map its copies (compared by identity) back to owners.
    for (const b of this.patterns.placeholders) owners.set(b, byTag.get(b.toString("latin1"))!);
    this.owners = owners;
  }

  /** The owners whose marks appear in any of `texts` (strings read as UTF-8): for trailers, say. */
  find(texts: Iterable<string | Uint8Array>): T[] {
    const found = new Set<T>();
    for (const t of texts) {
      const s = new Scrubber(this.patterns);
      for (const o of this.ownersIn([...s.push(typeof t === "string" ? Buffer.from(t, "utf8") : t), ...s.end()])) found.add(o);
    }
    return [...found];
  }

  /** The owners named in `out`, the output of a Scrubber over {@link patterns} (each once). */
  ownersIn(out: readonly Buffer[]): T[] {
    const found = new Set<T>();
    for (const b of out) {
      const o = this.owners.get(b);
      if (o !== undefined) found.add(o);
    }
    return [...found];
  }
}

/** The error a body tripwire fails with: `owners` are those whose marks it found. */
export class TripwireHit<T> extends Error {
  constructor(readonly owners: readonly T[]) {
    super("a request body carried a credential to a host its lease does not cover");
  }
}

/**
 * Passes a body through unchanged; at the first of `marks` found, fails with a {@link TripwireHit}
 * (after calling `onHit` with it) and passes nothing more on.
 */
export class BodyTripwire<T> extends Transform {
  readonly #marks: TripwireMarks<T>;
  readonly #scrubber: Scrubber;
  readonly #onHit: (hit: TripwireHit<T>) => void;
  #tripped = false;

  constructor(marks: TripwireMarks<T>, onHit: (hit: TripwireHit<T>) => void) {
    super();
    this.#marks = marks;
    this.#scrubber = new Scrubber(marks.patterns);
    this.#onHit = onHit;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.#tripped) return callback();
    this.#pass(this.#scrubber.push(chunk), callback);
  }

  override _flush(callback: TransformCallback): void {
    if (this.#tripped) return callback();
    this.#pass(this.#scrubber.end(), callback);
  }

  #pass(out: Buffer[], callback: TransformCallback): void {
    if (this.#scrubber.replaced === 0) {
      for (const b of out) this.push(b);
      callback();
      return;
    }
    this.#tripped = true;
    const hit = new TripwireHit(this.#marks.ownersIn(out));
    this.#onHit(hit);
    callback(hit);
  }
}
