/**
 * How a response body the proxy scrubs is coded, read from both coding headers: the decoder its
 * Content-Encoding needs (gzip, deflate or br, one of them; identity needs none), or why it cannot be
 * scrubbed. A Transfer-Encoding other than `chunked` or `identity` (RFC 9112 §6.1: `gzip, chunked` is valid HTTP/1.1)
 * leaves its coding on the bytes Node's parser hands over once it removed the chunking, so it is
 * refused too: scrubbing compressed bytes finds nothing, and the client would decode the value.
 *
 * The scrubber sees one answer at a time, so a value an upstream echoes must come whole: a request
 * whose answer is scrubbed asks for an identity body and the whole resource ({@link askWhole}), and a
 * partial answer (206) is refused: two ranged reads of a stored echo would each hold half a value,
 * which no pattern matches, and the agent would join them.
 *
 * gRPC compresses messages inside the body (per-message compression, named by `grpc-encoding`), where
 * no Content-Encoding says so: the request asks for none (`grpc-accept-encoding: identity`), and an
 * answer that names a `grpc-encoding` other than identity is refused like an unknown Content-Encoding.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import type { Transform } from "node:stream";
import { createBrotliDecompress, createGunzip, createInflate } from "node:zlib";

/**
 * A coding name as the problem sentence may quote it: the upstream wrote it, and an upstream that
 * reflects a request header (the credential the proxy put there) into a coding header would otherwise
 * have it quoted, unscrubbed, in the proxy's own answer. Only registered names are quoted.
 */
const KNOWN_CODINGS = new Set(["gzip", "x-gzip", "deflate", "br", "zstd", "compress", "x-compress", "identity", "chunked", "snappy", "dcb", "dcz", "aes128gcm", "exi", "pack200-gzip"]);
const shown = (c: string): string => (KNOWN_CODINGS.has(c.trim().toLowerCase()) ? c.trim().toLowerCase() : "(an unknown coding)");

/** The decoder (undefined: none needed), or the problem sentence for a 502. */
export type ResponseCoding = { decode: Transform | undefined } | { problem: string };

/**
 * Makes `headers` (names lower case) ask for what the scrubber can read: an identity body (a
 * compressed one is still decoded if it comes), uncompressed gRPC messages, and the whole resource,
 * never a range of it.
 */
export function askWhole(headers: OutgoingHttpHeaders): void {
  headers["accept-encoding"] = "identity";
  headers["grpc-accept-encoding"] = "identity";
  // (delete only what is there: a delete turns the object into a slow dictionary on the hot path)
  if (headers["range"] !== undefined) delete headers["range"];
  if (headers["if-range"] !== undefined) delete headers["if-range"];
}

/** See the module comment. `status`: the answer's; a partial one (206) cannot be scrubbed. */
export function responseCoding(status: number, headers: IncomingHttpHeaders | Record<string, unknown>): ResponseCoding {
  if (status === 206)
    return { problem: "Bad gateway: the upstream answered with part of a resource (206), which the proxy cannot scrub; it asked for the whole" };
  const te = headers["transfer-encoding"];
  if (te !== undefined) {
    // Split as the HTTP grammar does (spaces and tabs only around commas): a no-break space or an
    // empty item (`chunked,`) is not the `chunked` Node's parser removes, so it is not accepted here.
    const codings = String(te).toLowerCase().split(",").map((c) => c.replace(/^[ \t]+|[ \t]+$/g, ""));
    // `identity` (obsolete, RFC 2616) leaves the bytes as they are: Node reads them to the close. Node
    // removes the chunking only when `chunked` is the last coding (`chunked, identity` reaches here
    // still chunked, and the chunk-size lines would cut a value the scrubber looks for).
    const rest = codings.filter((c) => c !== "identity");
    if (!(rest.length === 0 || (rest.length === 1 && rest[0] === "chunked" && codings[codings.length - 1] === "chunked")))
      return { problem: `Bad gateway: the upstream answered with transfer-encoding ${codings.map(shown).join(", ")}, which the proxy cannot scrub` };
  }
  const grpc = headers["grpc-encoding"];
  if (grpc !== undefined && String(grpc).trim().toLowerCase() !== "identity")
    return { problem: `Bad gateway: the upstream answered with grpc-encoding ${shown(String(grpc))} (compressed gRPC messages), which the proxy cannot scrub; it asked for identity` };
  const enc = String(headers["content-encoding"] ?? "identity").toLowerCase();
  if (enc === "identity") return { decode: undefined };
  if (enc === "gzip" || enc === "x-gzip") return { decode: createGunzip() };
  if (enc === "deflate") return { decode: createInflate() };
  if (enc === "br") return { decode: createBrotliDecompress() };
  return { problem: `Bad gateway: the upstream answered with content-encoding ${enc.split(",").map(shown).join(", ")}, which the proxy cannot scrub` };
}
