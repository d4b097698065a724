/**
 * Whether a secret's value can go where an injecting proxy is about to put it (src/proxy/lease-egress.ts),
 * decided on the value's bytes. Shared by the proxy (which checks the text it injects) and the vault,
 * which an access may ask (`fit`, src/vault/leases.ts) to refuse, before the use is counted, a value
 * that cannot go there: a use counted must mean a request went upstream with the credential, not one
 * refused for the value's bytes after the vault handed them out.
 *
 * - "header": as it is, in a header value: one line of printable ASCII. A control character or line
 *   break (C0, DEL, C1 such as NEL U+0085) would end the header, or the request, where the value chose;
 *   a character above U+00FF cannot be written as one byte (Node's HTTP/1.1 client throws on it; its
 *   HTTP/2 client sends only the low byte, so U+010A went upstream as a bare LF); and one from U+00A0 to
 *   U+00FF goes as a single Latin-1 byte, which an upstream echoing the header back returns as bytes
 *   that are not UTF-8, a form the proxy's masking of answers (UTF-8 and its encodings) does not look
 *   for: the agent would read the value back.
 * - "base64": as the base64 of its UTF-8 inside a header (a Basic pair): printable ASCII.
 * - "text": as text (a body, a query parameter): ASCII, line breaks and other controls allowed.
 * - "utf8": any UTF-8 text (the whole secret a credential that is one of its JSON fields comes from;
 *   the field itself then goes as one of the above).
 * Every injected value is ASCII: a character outside it (`ü`) echoed back by an honest upstream in
 * another encoding than the UTF-8 the proxy's masking models (an ISO-8859-1 error page, Basic decoded
 * as ISO-8859-1 and echoed as UTF-8, the raw bytes of a header) would reach the agent unmasked.
 * Neither character nor position is ever named: both are the value's.
 */
import { VaultError } from "./errors.js";

/** Where a value is about to go. */
export type ValueFit = "header" | "base64" | "text" | "utf8";

/** The forms, strictest first. */
export const VALUE_FITS: readonly ValueFit[] = ["header", "base64", "text", "utf8"];

/** `bytes` as text, or null when they are not UTF-8. */
export function utf8OrNull(bytes: Uint8Array): string | null {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

/** Why the text `value` of `secret` cannot go as `fit` says, or null when it can. */
export function textFitError(value: string, secret: string, fit: ValueFit): VaultError | null {
  if (fit === "utf8") return null;
  if (fit !== "text" && /[\x00-\x1f\x7f-\x9f]/.test(value))
    return new VaultError("invalid_request", `the value of ${secret} holds a control character or line break, so it cannot be sent in a header`);
  if (/[^\x00-\x7f]/.test(value))
    return new VaultError(
      "invalid_request",
      `the value of ${secret} holds a character outside ASCII, which lessor does not inject (an answer echoing it back in another encoding, an ISO-8859-1 page or the bytes of a header, could not be masked); store the credential as ASCII text`,
    );
  return null;
}

/** Why the bytes `value` of `secret` cannot go as `fit` says (not UTF-8 text, or {@link textFitError}), or null. */
export function bytesFitError(value: Uint8Array, secret: string, fit: ValueFit): VaultError | null {
  const text = utf8OrNull(value);
  if (text === null) return new VaultError("invalid_request", `the value of ${secret} is not UTF-8 text, so the proxy cannot add it to a request`);
  return textFitError(text, secret, fit);
}
