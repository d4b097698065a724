/**
 * Record → wire conversions for protocol v1: identities, audit events (hashes in hex, detail parsed),
 * secret values (base64 out, strict base64 or UTF-8 in), explanations, and readable messages from
 * params validation issues. Nothing here ever puts a secret value into a message.
 */
import type { SecretBytes } from "../crypto/secret-bytes.js";
import type { WireIdentity } from "../protocol/messages.js";
import type { WireAuditEvent } from "../protocol/methods.js";
import { VaultError } from "../base/errors.js";
import type { VaultExplanation } from "../vault/vault.js";
import type { AuditRecord, Identity } from "../base/types.js";

/** The identity as told to the client in the welcome and in `status`. */
export function wireIdentity(who: Identity): WireIdentity {
  const out: WireIdentity = { id: who.id, role: who.role, transport: who.transport };
  if (who.agent !== undefined) out.agent = who.agent;
  if (who.actFor !== undefined) out.actFor = [...who.actFor];
  return out;
}

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
    detail: e.detail === null ? null : (JSON.parse(e.detail) as Record<string, unknown>),
    prevHash: Buffer.from(e.prevHash.buffer, e.prevHash.byteOffset, e.prevHash.byteLength).toString("hex"),
    hash: Buffer.from(e.hash.buffer, e.hash.byteOffset, e.hash.byteLength).toString("hex"),
    keyId: e.keyId,
  };
}

/** An explanation with the deciding rule replaced by its name. */
export function wireExplanation(e: VaultExplanation): Omit<VaultExplanation, "rule"> & { rule: string | null } {
  return { allow: e.allow, rule: e.rule === null ? null : e.rule.name, reason: e.reason, steps: e.steps, policy: e.policy };
}

/** Encodes a value as base64 for the wire and wipes the SecretBytes right after. */
export function takeBase64(value: SecretBytes): string {
  try {
    return value.expose().toString("base64");
  } finally {
    value.wipe();
  }
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Decodes a value sent by a client into a fresh Buffer the caller wipes. `base64` is checked strictly
 * (standard alphabet, padded, length a multiple of 4); the error never quotes the value.
 */
export function decodeValue(value: string, encoding: "utf8" | "base64" | undefined): Buffer {
  if (encoding === undefined || encoding === "utf8") return Buffer.from(value, "utf8");
  if (value.length % 4 !== 0 || !BASE64.test(value))
    throw new VaultError("invalid_request", 'value is not valid base64 (standard alphabet, "=" padding, length a multiple of 4); send text with encoding "utf8"');
  return Buffer.from(value, "base64");
}

/**
 * A name from client input, quoted, only when it looks like a field or method name: a short identifier
 * with few digits. Anything longer or odder (which could be a value pasted in the wrong place) is
 * never echoed.
 */
export function safeName(s: unknown): string | null {
  if (typeof s !== "string" || s.length > 24 || !/^[A-Za-z][A-Za-z0-9_]*$/.test(s)) return null;
  return (s.match(/[0-9]/g)?.length ?? 0) <= 3 ? JSON.stringify(s) : null;
}

/** The shape of a zod issue this module reads. */
export interface ParamIssue {
  code: string;
  path: PropertyKey[];
  message: string;
  keys?: string[];
}

/**
 * One short sentence from params validation issues: each names the field (`path`) and what is wrong.
 * Built from zod's messages, which state expectations and never the input; unknown keys are named
 * only when they look like identifiers. At most three issues, each capped in length.
 */
export function issuesMessage(method: string, issues: readonly ParamIssue[], allowed?: readonly string[]): string {
  const parts: string[] = [];
  for (const i of issues.slice(0, 3)) {
    const path = i.path.length === 0 ? "params" : i.path.map(String).join(".");
    if (i.code === "unrecognized_keys") {
      const keys = (i.keys ?? []).map((k) => safeName(k) ?? "(a field with an unusual name)");
      const takes = allowed === undefined ? "" : allowed.length === 0 ? ` (${method} takes no params)` : ` (${method} takes ${allowed.join(", ")})`;
      parts.push(`${path}: unknown field${keys.length > 1 ? "s" : ""} ${keys.slice(0, 5).join(", ")}${takes}`);
    } else if (i.code === "invalid_type" && i.message.endsWith("received undefined")) {
      parts.push(`${path} is required`);
    } else {
      let m = i.message.replace(/^Invalid input: /, "");
      if (m.length > 160) m = `${m.slice(0, 157)}...`;
      parts.push(`${path}: ${m}`);
    }
  }
  const more = issues.length > 3 ? ` (and ${issues.length - 3} more)` : "";
  return `invalid params for ${method}: ${parts.join("; ")}${more}; see docs/protocol.md`;
}
