/**
 * Record → wire conversions shared by the method bindings (src/protocol/registry.ts): identities,
 * audit events (hashes in hex, detail parsed), explanations, and secret values sent by a client
 * (strict base64 or UTF-8 in). Nothing here ever puts a secret value into a message.
 */
import { VaultError } from "../base/errors.js";
import { checkTextValue } from "../base/text.js";
import type { AuditRecord, Identity } from "../base/types.js";
import type { WireIdentity } from "./messages.js";

/** The identity as told to the client in the welcome and in `status`. */
export function wireIdentity(who: Identity): WireIdentity {
  const out: WireIdentity = { id: who.id, role: who.role, transport: who.transport };
  if (who.agent !== undefined) out.agent = who.agent;
  if (who.actFor !== undefined) out.actFor = [...who.actFor];
  return out;
}

/** An audit event on the wire: the stored record with hashes in hex and `detail` parsed. */
export type WireAuditEvent = Omit<AuditRecord, "detail" | "prevHash" | "hash"> & {
  detail: Record<string, unknown> | null;
  prevHash: string;
  hash: string;
};

/** An audit row as sent on the wire: hashes in hex, `detail` parsed from its JSON text. */
export function wireAudit(e: AuditRecord): WireAuditEvent {
  return {
    seq: e.seq,
    id: e.id,
    time: e.time,
    type: e.type,
    actorId: e.actorId,
    actorRole: e.actorRole,
    transport: e.transport,
    agent: e.agent,
    secret: e.secret,
    leaseId: e.leaseId,
    domain: e.domain,
    outcome: e.outcome,
    reason: e.reason,
    detail: e.detail === null ? null : detailOf(e.detail),
    prevHash: Buffer.from(e.prevHash.buffer, e.prevHash.byteOffset, e.prevHash.byteLength).toString("hex"),
    hash: Buffer.from(e.hash.buffer, e.hash.byteOffset, e.hash.byteLength).toString("hex"),
    keyId: e.keyId,
  };
}

/** An event's detail object; one that is not JSON (a damaged row) is shown as such, never thrown on. */
function detailOf(text: string): Record<string, unknown> {
  try {
    const d = JSON.parse(text) as unknown;
    if (typeof d === "object" && d !== null && !Array.isArray(d)) return d as Record<string, unknown>;
  } catch {
    // falls through
  }
  return { unreadable: "the stored detail is not a JSON object (a damaged row; lessor audit verify says more)" };
}

/** An explanation with the deciding rule replaced by its name. */
export function wireExplanation<E extends { rule: { name: string } | null }>(e: E): Omit<E, "rule"> & { rule: string | null } {
  return { ...e, rule: e.rule === null ? null : e.rule.name };
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Decodes a value sent by a client into a fresh Buffer the caller wipes. `base64` is checked strictly
 * (standard alphabet, padded, length a multiple of 4); the error never quotes the value.
 */
export function decodeValue(value: string, encoding: "utf8" | "base64" | undefined): Buffer {
  if (encoding === undefined || encoding === "utf8") {
    checkTextValue(value);
    return Buffer.from(value, "utf8");
  }
  if (value.length % 4 !== 0 || !BASE64.test(value))
    throw new VaultError("invalid_request", 'value is not valid base64 (standard alphabet, "=" padding, length a multiple of 4); send text with encoding "utf8"');
  return Buffer.from(value, "base64");
}
