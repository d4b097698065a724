/** Random secret values for `--random`: each character drawn uniformly from a charset. */
import { randomBytes } from "node:crypto";

/** The charsets `--charset` accepts. */
export const CHARSETS = {
  hex: "0123456789abcdef",
  base64url: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
  alnum: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
} as const;
export type Charset = keyof typeof CHARSETS;

/** True when `s` names a charset. */
export function isCharset(s: string): s is Charset {
  return Object.prototype.hasOwnProperty.call(CHARSETS, s);
}

/** `length` characters (= bytes, all ASCII) from `charset`, by rejection sampling so none is favoured. */
export function randomValue(length: number, charset: Charset = "base64url"): Buffer {
  const chars = CHARSETS[charset];
  const n = chars.length;
  const limit = 256 - (256 % n); // bytes at or above this would bias the draw
  const out = Buffer.alloc(length);
  let filled = 0;
  while (filled < length) {
    const pool = randomBytes(Math.max(16, Math.ceil((length - filled) * 1.3)));
    for (let i = 0; i < pool.length && filled < length; i++) {
      const b = pool[i]!;
      if (b < limit) out[filled++] = chars.charCodeAt(b % n);
    }
    pool.fill(0);
  }
  return out;
}
