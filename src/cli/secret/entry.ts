/** One secret as it travels through `secret export` and `secret import`. */
import { isUtf8 } from "node:buffer";
import type { SecretKind } from "../../base/types.js";

/** A secret with its value, as written to or read from an export file. */
export interface SecretEntry {
  scope: string;
  name: string;
  value: Buffer;
  kind?: SecretKind;
  description?: string;
  tags?: string[];
  /** Where it is in the file being imported (1-based). */
  line?: number;
}

/** True when `b` is valid UTF-8, so it can be written as text and read back to the same bytes. */
export function isText(b: Uint8Array): boolean {
  return isUtf8(b);
}

const STANDARD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Decodes canonical standard base64 (with padding), or returns null when `s` is not exactly that. */
export function decodeBase64Strict(s: string): Buffer | null {
  if (!STANDARD_BASE64.test(s)) return null;
  const b = Buffer.from(s, "base64");
  return b.toString("base64") === s ? b : null;
}

