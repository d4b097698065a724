/**
 * Placeholders: what an agent holds instead of a credential. The proxy swaps a placeholder for the
 * real value on the way out (./placeholder-registry.ts finds its lease) and the real value back to the
 * placeholder on the way in (./scrub.ts).
 *
 * A placeholder is shaped like the value so that tools that check a format accept it: the same known
 * public prefix (src/base/token-formats.ts) and fixed suffix, the same length in bytes, the same character
 * class, and, for formats that declare separators, the separators in the same places. Everything else is drawn from
 * a CSPRNG, independently of the value: the placeholder depends on the value only through that shape,
 * so it reveals no character of the value beyond its public prefix, and it is useless anywhere but
 * at the proxy that issued it.
 *
 * A shape too small to carry {@link MIN_BITS} bits of randomness (a short value) is lengthened, so that
 * a placeholder cannot be guessed; such a placeholder is longer than its value.
 */
import { randomBytes } from "node:crypto";
import { Buffer } from "node:buffer";
import { VaultError } from "../base/errors.js";
import { knownFormat } from "../base/token-formats.js";

/** The least randomness a placeholder carries. */
export const MIN_BITS = 64;

const DIGITS = "0123456789";
const LOWER = "abcdefghijklmnopqrstuvwxyz";
const UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/**
 * Character classes, smallest first: a segment gets the first class that holds all of its characters.
 * Anything outside the last one (spaces, quotes, non-ASCII, binary) gets base62, which is safe in a
 * header, a URL, JSON and a shell word.
 */
export const CHARACTER_CLASSES: readonly { name: string; chars: string }[] = [
  { name: "digits", chars: DIGITS },
  { name: "hex (lower case)", chars: `${DIGITS}abcdef` },
  { name: "hex (upper case)", chars: `${DIGITS}ABCDEF` },
  { name: "hex", chars: `${DIGITS}abcdefABCDEF` },
  { name: "base36 (lower case)", chars: `${DIGITS}${LOWER}` },
  { name: "base36 (upper case)", chars: `${DIGITS}${UPPER}` },
  { name: "base62", chars: `${DIGITS}${UPPER}${LOWER}` },
  { name: "base64url", chars: `${DIGITS}${UPPER}${LOWER}-_` },
  { name: "base64", chars: `${DIGITS}${UPPER}${LOWER}+/` },
  { name: "token", chars: `${DIGITS}${UPPER}${LOWER}-._~+/` },
];
const BASE62 = CHARACTER_CLASSES.find((c) => c.name === "base62")!;

/** One part of a shape: kept text (prefix, separator, `=` padding) or a run of random characters. */
export type ShapePart = { literal: string } | { class: string; chars: string; length: number };

/** What a placeholder keeps of its value. */
export interface PlaceholderShape {
  /** The known format's name, if the value has a known prefix. */
  format: string | undefined;
  parts: ShapePart[];
  /** Randomness in the placeholder, in bits (at least {@link MIN_BITS}). */
  bits: number;
}

/** Returns `n` random bytes. Injectable for tests; the default is `crypto.randomBytes`. */
export type RandomSource = (n: number) => Uint8Array;

function classOf(segment: string): { name: string; chars: string } {
  return CHARACTER_CLASSES.find((c) => [...segment].every((ch) => c.chars.includes(ch))) ?? BASE62;
}

function runOf(segment: string, length: number): ShapePart {
  const c = classOf(segment);
  return { class: c.name, chars: c.chars, length };
}

/** Splits the part after the prefix into random runs, keeping the format's separators and `=` padding. */
function bodyParts(body: string, separators: string): ShapePart[] {
  const parts: ShapePart[] = [];
  const padding = /^[A-Za-z0-9+/_-]+(={1,2})$/.exec(body)?.[1] ?? "";
  const core = body.slice(0, body.length - padding.length);
  let run = "";
  for (const ch of core) {
    if (separators.includes(ch)) {
      if (run) parts.push(runOf(run, run.length));
      parts.push({ literal: ch });
      run = "";
    } else run += ch;
  }
  if (run) parts.push(runOf(run, run.length));
  if (padding) parts.push({ literal: padding });
  return parts;
}

const bitsOf = (parts: readonly ShapePart[]): number =>
  parts.reduce((b, p) => ("chars" in p ? b + p.length * Math.log2(p.chars.length) : b), 0);

/**
 * The shape of `value`: its known prefix, then random runs by class and length. A value that is not
 * printable ASCII becomes one base62 run as long as its UTF-8 bytes (so a placeholder swapped into a
 * body keeps its length). Throws `invalid_request` for an empty value.
 */
export function placeholderShape(value: string | Uint8Array): PlaceholderShape {
  const bytes = typeof value === "string" ? Buffer.from(value, "utf8") : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (bytes.length === 0) throw new VaultError("invalid_request", "cannot make a placeholder for an empty value");
  const printable = bytes.every((b) => b > 0x20 && b < 0x7f);
  const text = printable ? bytes.toString("latin1") : "";
  const format = printable ? knownFormat(text) : undefined;
  const parts: ShapePart[] = [];
  if (!printable) parts.push({ class: BASE62.name, chars: BASE62.chars, length: bytes.length });
  else if (format && text.length > format.prefix.length) {
    const suffix = format.suffix && text.length > format.prefix.length + format.suffix.length && text.endsWith(format.suffix) ? format.suffix : "";
    parts.push({ literal: format.prefix });
    parts.push(...bodyParts(text.slice(format.prefix.length, text.length - suffix.length), format.separators ?? ""));
    if (suffix) parts.push({ literal: suffix });
  } else parts.push(...bodyParts(text, ""));

  // Too little randomness: lengthen the last random run (or add a base62 one) until there is enough.
  let bits = bitsOf(parts);
  if (bits < MIN_BITS) {
    let at = parts.length - 1;
    while (at >= 0 && !("chars" in parts[at]!)) at--;
    if (at < 0) {
      parts.push({ class: BASE62.name, chars: BASE62.chars, length: 0 });
      at = parts.length - 1;
    }
    const run = parts[at] as { class: string; chars: string; length: number };
    run.length += Math.ceil((MIN_BITS - bits) / Math.log2(run.chars.length));
    bits = bitsOf(parts);
  }
  return { format: format && text.length > format.prefix.length ? format.name : undefined, parts, bits };
}

/** `length` characters drawn uniformly from `chars` (rejection sampling: no modulo bias). */
function randomRun(chars: string, length: number, random: RandomSource): string {
  const limit = 256 - (256 % chars.length);
  let out = "";
  while (out.length < length) {
    for (const b of random(Math.max(16, 2 * (length - out.length)))) {
      if (b >= limit) continue;
      out += chars[b % chars.length];
      if (out.length === length) break;
    }
  }
  return out;
}

/** Fills a shape with random characters. */
export function fillShape(shape: PlaceholderShape, random: RandomSource = randomBytes): string {
  return shape.parts.map((p) => ("literal" in p ? p.literal : randomRun(p.chars, p.length, random))).join("");
}

/**
 * A fresh placeholder for `value`: same shape, random elsewhere, never equal to the value and never
 * containing it (nor contained in it). Throws `invalid_request` for an empty value.
 */
export function makePlaceholder(value: string | Uint8Array, random: RandomSource = randomBytes): string {
  const shape = placeholderShape(value);
  const text = typeof value === "string" ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("latin1");
  for (let tries = 0; tries < 1000; tries++) {
    const p = fillShape(shape, random);
    if (!p.includes(text) && !text.includes(p)) return p;
  }
  // Only reachable with a broken random source: 1000 draws of at least 64 bits all hit the value.
  throw new VaultError("internal", "could not make a placeholder that differs from the value");
}
