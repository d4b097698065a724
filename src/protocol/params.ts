/**
 * The building blocks of the methods' params schemas (src/protocol/registry.ts). Params are strict:
 * unknown fields are refused. Values travel as UTF-8 text or base64 (`encoding`).
 */
import { z } from "zod";
import { UUID_RE } from "../base/ids.js";
import { hasUnsafeText } from "../base/text.js";

/**
 * Text params refuse control characters and invisible or bidirectional formatting characters
 * (src/base/text.ts), so that nothing an agent sends can drive a terminal that later shows it.
 * Secret values are the one exception: they are bytes, never shown.
 */
export const plain = (s: z.ZodString) =>
  s.refine((v) => !hasUnsafeText(v), {
    message: "must not contain control characters (such as ESC or a line break) or invisible or bidirectional formatting characters (such as U+202E)",
  });
/** Plain text of 1 to `max` characters. */
export const str = (max = 256) => plain(z.string().min(1).max(max));
export const scope = str(160).optional();
/** A secret named by `scope` (default global) and `name`. */
export const secretName = { scope, name: str(128) };
export const ttl = z.union([z.number().int().positive().max(366 * 24 * 3600_000), str(32)]);
export const reason = plain(z.string().max(200)).optional();
export const leaseId = z.string().regex(UUID_RE, "expected a lease id (a UUID)");
export const version = z.number().int().positive();

/** A secret value in a request: always the `value` param (clients wipe such frames once written). */
export const value = {
  /** The value: UTF-8 text, or base64 when `encoding` is "base64". */
  value: z.string().max(2 * 1024 * 1024),
  encoding: z.enum(["utf8", "base64"]).optional(),
};

/** Where a leased value is about to be used (access_secret, and request_lease's `access`). */
export const target = {
  domain: plain(z.string().max(300)).optional(),
  method: str(16).optional(),
  path: plain(z.string().max(8192)).optional(),
  /** "proxy": an injecting proxy uses the value (honoured for the owner and orchestrators only). */
  via: z.literal("proxy").optional(),
  /** Where the value is about to go: one that cannot go there is refused before the use counts (src/base/value-fit.ts). */
  fit: z.enum(["header", "base64", "text", "utf8"]).optional(),
  /** The field of a JSON secret that is about to go (`secret#field`): checked like `fit`, before the use counts (src/vault/json-field.ts; at most its MAX_FIELD_PATH characters). */
  field: plain(z.string().min(1).max(256)).optional(),
};
