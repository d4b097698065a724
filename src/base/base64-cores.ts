/**
 * The base64 text that encodes a byte string alone, wherever it sits in a longer encoded string.
 * Inside `base64(prefix + value + suffix)` the value starts at one of three alignments (the prefix's
 * length mod 3); at each, the characters that depend only on the value are fixed, while the first
 * one or two and the last one or two also depend on the neighbours. Masking these cores catches a
 * value inside a Basic credential (`base64("user:" + value)`), which the value's own base64 misses.
 */

/**
 * The cores of `value` at the three alignments, in standard base64 and base64url (duplicates
 * removed); each holds only characters that the value alone decides.
 */
export function base64CoresOf(value: Buffer): string[] {
  const out = new Set<string>();
  for (const shift of [0, 1, 2]) {
    const enc = Buffer.concat([Buffer.alloc(shift), value]).toString("base64");
    // Characters before [0, 2, 3][shift] hold bits of the prefix; from floor(8 * (shift + n) / 6) on, of what follows.
    const core = enc.slice([0, 2, 3][shift], Math.floor((8 * (shift + value.length)) / 6));
    if (core.length === 0) continue;
    out.add(core);
    out.add(core.replace(/\+/g, "-").replace(/\//g, "_"));
  }
  return [...out];
}
