/**
 * The base64 text that encodes a byte string alone, wherever it sits in a longer encoded string.
 * Inside `base64(prefix + value + suffix)` the value starts at one of three alignments (the prefix's
 * length mod 3); at each, the characters that depend only on the value are fixed, while the first
 * one or two and the last one or two also depend on the neighbours. Masking these cores catches a
 * value inside a Basic credential (`base64("user:" + value)`), which the value's own base64 misses.
 * Used by `lessor run`'s output mask and the proxy's response scrubber.
 */

/**
 * The core of `value` at each alignment (index = the prefix's length mod 3), in standard base64 and
 * base64url; a core may be empty for a value of a byte or two.
 */
export function base64CorePairs(value: Buffer): { b64: string; url: string }[] {
  return [0, 1, 2].map((shift) => {
    const enc = Buffer.concat([Buffer.alloc(shift), value]).toString("base64");
    // Characters before [0, 2, 3][shift] hold bits of the prefix; from floor(8 * (shift + n) / 6) on, of what follows.
    const b64 = enc.slice([0, 2, 3][shift], Math.floor((8 * (shift + value.length)) / 6));
    return { b64, url: b64.replace(/\+/g, "-").replace(/\//g, "_") };
  });
}

/** The distinct non-empty cores of `value` at the three alignments, base64 and base64url. */
export function base64CoresOf(value: Buffer): string[] {
  const out = new Set<string>();
  for (const { b64, url } of base64CorePairs(value)) if (b64 !== "") out.add(b64).add(url);
  return [...out];
}
