/**
 * The first frame a sandboxed child sends on `lessor run --vault-session`'s relay (src/cli/run/vault-session.ts):
 * cut out of the byte stream and checked to be a protocol v1 hello (src/protocol/framing.ts,
 * src/protocol/messages.ts). Nothing in it is forwarded: whatever token, token id or nonce the child
 * put there is dropped, and the relay sends the daemon a hello of its own naming the run's token.
 * A first frame over {@link MAX_CHILD_HELLO_BYTES}, or one that is not a valid hello, closes the
 * connection before anything reaches the daemon.
 */
import { helloSchema, PROTOCOL, VERSION } from "../../protocol/messages.js";

/** The largest first frame the relay reads from the child (a hello is well under 1 KiB). */
export const MAX_CHILD_HELLO_BYTES = 64 * 1024;

/** What {@link cutFirstFrame} found in the bytes received so far. */
export type FirstFrame =
  /** Not all of the first frame is here yet. */
  | { kind: "more" }
  /** The first frame announces more than the cap: refuse without reading it. */
  | { kind: "too-large" }
  /** The first frame's body, and the bytes after it (calls pipelined behind the hello). */
  | { kind: "frame"; body: Buffer; rest: Buffer };

/** Cuts the first frame out of `buf` (everything received so far), checking its length prefix against `max`. */
export function cutFirstFrame(buf: Buffer, max: number = MAX_CHILD_HELLO_BYTES): FirstFrame {
  if (buf.length < 4) return { kind: "more" };
  const len = buf.readUInt32BE(0);
  if (len > max) return { kind: "too-large" };
  if (buf.length < 4 + len) return { kind: "more" };
  return { kind: "frame", body: buf.subarray(4, 4 + len), rest: buf.subarray(4 + len) };
}

/**
 * True when `body` is a protocol v1 hello as the daemon would accept it (strict JSON, the hello's
 * schema, version 1). Its token fields are allowed (a client may send them) but never used.
 */
export function isChildHello(body: Buffer): boolean {
  let msg: unknown;
  try {
    msg = JSON.parse(body.toString("utf8"));
  } catch {
    return false;
  }
  const parsed = helloSchema.safeParse(msg);
  return parsed.success && parsed.data.protocol === PROTOCOL && parsed.data.version === VERSION;
}

/** The hello the relay sends the daemon in the child's place: the token handshake for the run's token (docs/protocol.md). */
export function relayHello(tokenId: string, nonce: Buffer): { protocol: typeof PROTOCOL; version: typeof VERSION; tokenId: string; nonce: string } {
  return { protocol: PROTOCOL, version: VERSION, tokenId, nonce: nonce.toString("base64url") };
}
