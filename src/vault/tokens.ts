/**
 * Bearer tokens for transports that cannot tell who the peer is (loopback TCP). A token is
 * `lsr_<id>_<secret>`: the id is public and used for lookup; only SHA-256 of the 256-bit random secret
 * is stored, and it is compared in constant time. Each token is bound to one identity and role, and
 * may expire. Created, listed and revoked by admins; every creation, revocation and failed use is audited.
 * Each row carries a MAC under the master key (src/vault/token-mac.ts): a row without a valid one
 * (written into the database without the key, or made before lessor MACed tokens) is no token.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { roleError } from "./access.js";
import { denied } from "./denied.js";
import { recordAuthFailure } from "./auth-failures.js";
import { commit, type VaultContext } from "./context.js";
import { parseDuration } from "./duration.js";
import { VaultError } from "../base/errors.js";
import { objectParam } from "../base/shape.js";
import { checkAgentId } from "../base/names.js";
import { compileAgentPattern } from "./pattern.js";
import { hashTokenSecret, NONCE_BYTES, serverProof, TOKEN_ID_RE, TOKEN_RE } from "../crypto/token-proof.js";
import { markRevoked, sawLiveToken, tokenGateIn } from "./token-state.js";
import { tokenMac, tokenMacKey } from "./token-mac.js";
import { retiredKeys } from "../audit/retired.js";
import type { Identity, Role, TokenInfo, TokenRecord } from "../base/types.js";
import type { TokenFilter } from "./ports.js";

const NAME_RE = /^[A-Za-z0-9_.:@-]{1,64}$/;
const ROLES: readonly Role[] = ["admin", "orchestrator", "agent"];
const INVALID = "the token is not valid (unknown, revoked, expired or mistyped); ask an admin for a new one";
/** The audit reason for a row whose MAC is missing or wrong; the client hears {@link INVALID}, as for an unknown id. */
/** The audit reason for a row MACed under a master key a rotation retired (which re-MACed every row it knew). */
const RETIRED_MAC = "token record MACed under a retired master key (written after the rotation that retired it, by someone holding that key): make the token again";
const UNMACED = "token record without a valid MAC (made before lessor MACed tokens, or written into the database without the key): make the token again";

/** What {@link createToken} takes. */
export interface TokenParams {
  name: string;
  role: Role;
  /** Required for role agent: the agent id the token acts as. */
  agent?: string;
  /** For role orchestrator: agent id patterns it may act for. */
  actFor?: string[];
  /**
   * Lifetime (ms or a duration such as "30d"); default: no expiry. A caller authenticated by a token
   * that expires may not outlive it: the default is then the rest of its lifetime, and a longer ttl is refused.
   */
  ttl?: number | string;
  /**
   * A run's session token (`lessor run --vault-session`; role agent only): its identity is a session
   * (Identity.session: it sees and uses only the leases issued to it), and its name is
   * `session:<process>`, where `process` is the stamp of the process that asked for it
   * (`<pid>.<start time>.<boot id>.<pid namespace>`, src/server/process-stamp.ts), put here by the daemon from the
   * Unix-socket peer, never taken from the wire; the daemon revokes the token once that process is
   * gone. Without a stamp (a caller the daemon cannot see the process of): `session:unbound`, which
   * ends with the run or its ttl.
   */
  session?: true;
  process?: string;
}

/** The name prefix of session tokens: reserved, a token asked for by another name may not take it. */
export const SESSION_TOKEN_PREFIX = "session:";

/**
 * A process stamp: pid, start time (clock ticks since boot), the first 12 hex digits of the boot id,
 * the pid namespace the pid is in (its inode number: containers on one kernel share the boot id,
 * not their pids) and, where the machine has an id, 12 hex digits naming the machine
 * (src/server/process-stamp.ts).
 */
export const PROCESS_STAMP_RE = /^(\d{1,10})\.(\d{1,20})\.([0-9a-f]{12})\.(\d{1,20})(?:\.([0-9a-f]{12}))?$/;

const hashSecret = hashTokenSecret;

function info(t: TokenRecord): TokenInfo {
  const { hash: _hash, mac: _mac, ...rest } = t;
  return rest;
}

function checkParams(p: TokenParams): void {
  objectParam(p, "the token's parameters");
  if (typeof p.name !== "string" || !NAME_RE.test(p.name))
    throw new VaultError("invalid_request", 'a token name is 1-64 letters, digits or "_ . : @ -"');
  if (!ROLES.includes(p.role)) throw new VaultError("invalid_request", `role must be one of ${ROLES.join(", ")}`);
  if (p.role === "agent") checkAgentId(p.agent);
  else if (p.agent !== undefined) throw new VaultError("invalid_request", "only agent tokens name an agent");
  if (p.role === "orchestrator") {
    if (!Array.isArray(p.actFor) || p.actFor.length === 0)
      throw new VaultError("invalid_request", 'an orchestrator token needs actFor: the agent id patterns it may act for, such as ["claude-*"]');
    for (const a of p.actFor) {
      try {
        compileAgentPattern(a);
      } catch {
        throw new VaultError("invalid_request", `actFor pattern ${JSON.stringify(String(a).slice(0, 80))} is not a valid agent pattern`);
      }
    }
  } else if (p.actFor !== undefined) throw new VaultError("invalid_request", "only orchestrator tokens take actFor");
  if (p.session !== undefined && p.session !== true) throw new VaultError("invalid_request", "session is true or left out");
  if (p.session === true && p.role !== "agent") throw new VaultError("invalid_request", "only agent tokens may be session tokens (a run's vault session is an agent's)");
  if (p.process !== undefined && (p.session !== true || typeof p.process !== "string" || !PROCESS_STAMP_RE.test(p.process)))
    throw new VaultError("invalid_request", "a process stamp is given only for a session token, as <pid>.<start>.<boot id>.<pid namespace>[.<machine>]");
  if (p.session !== true && p.name.startsWith(SESSION_TOKEN_PREFIX))
    throw new VaultError("invalid_request", `token names starting with "${SESSION_TOKEN_PREFIX}" are kept for the session tokens of lessor run --vault-session; pick another name`);
}

/**
 * The identity id of token `rec`: `token:<name>/<id>`, but `token:session:run/<id>` for a session token,
 * whose name holds the stamp of the run's process (its pid, start time, boot id and pid namespace):
 * that is the daemon's to judge, and the sandboxed agent, which sees its own identity id (the welcome,
 * whoami, its leases' issuedBy), learns nothing of the host from it.
 */
export function tokenIdentityId(rec: { id: string; name: string; role: string }): string {
  return isSessionToken(rec) ? `token:${SESSION_TOKEN_PREFIX}run/${rec.id}` : `token:${rec.name}/${rec.id}`;
}

/**
 * Every identity id token `rec`'s leases and approvals may be stored under: {@link tokenIdentityId},
 * and for a session token also `token:<name>/<id>`, its identity in earlier releases (a daemon of
 * one still running, serving a newer `lessor run`; a vault whose daemon was upgraded while a run went on).
 */
export function tokenIdentityIds(rec: { id: string; name: string; role: string }): string[] {
  const now = tokenIdentityId(rec);
  const former = `token:${rec.name}/${rec.id}`;
  return now === former ? [now] : [now, former];
}

/** Whether `rec` is a session token (an agent token named `session:…`). */
export function isSessionToken(rec: { name: string; role: string }): boolean {
  return rec.role === "agent" && rec.name.startsWith(SESSION_TOKEN_PREFIX);
}

/** A session token's name: the stamp of the process it lives with, or `unbound`. */
function sessionName(p: TokenParams): string {
  return `${SESSION_TOKEN_PREFIX}${p.process ?? "unbound"}`;
}

/** The longest ttl a token may be given: 100 years. */
export const MAX_TOKEN_TTL_MS = 36_600 * 24 * 3600_000;

/** Creates a token; the returned `token` string is shown once and never stored. Admin only. */
export async function createToken(ctx: VaultContext, who: Identity, p: TokenParams): Promise<TokenInfo & { token: string }> {
  checkParams(p);
  const ttl = p.ttl === undefined ? null : typeof p.ttl === "string" ? parseDuration(p.ttl) : p.ttl;
  if (ttl !== null && (!Number.isSafeInteger(ttl) || ttl <= 0)) throw new VaultError("invalid_request", "ttl must be positive");
  // An expiry past what a date can hold would break every listing of tokens (and whoami) after it.
  if (ttl !== null && ttl > MAX_TOKEN_TTL_MS) throw new VaultError("invalid_request", "ttl must be at most 100 years (36600d); leave it out for a token that does not expire");
  const id = randomBytes(8).toString("hex");
  const secret = randomBytes(32).toString("base64url");
  return commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], "create tokens");
    if (err) return denied(audit, who, err);
    // A token made with a token that expires expires with it at the latest: a one-hour admin token
    // handed to a job must not mint a permanent one. Left out, the ttl is the rest of the maker's.
    const cap = who.token?.expiresAt ?? null;
    const expiresAt = ttl === null ? cap : now + ttl;
    if (cap !== null && expiresAt !== null && expiresAt > cap)
      return denied(
        audit,
        who,
        new VaultError(
          "invalid_request",
          `this token expires at ${new Date(cap).toISOString()} and may not make one that outlives it: give a --ttl of at most ${Math.max(1, Math.floor((cap - now) / 1000))}s or leave it out`,
        ),
      );
    const fields = {
      id,
      name: p.session === true ? sessionName(p) : p.name,
      role: p.role,
      agent: p.agent ?? null,
      actFor: p.actFor ? [...p.actFor] : null,
      createdAt: now,
      expiresAt,
      createdBy: who.id,
      hash: hashSecret(secret),
    };
    const rec: TokenRecord = { ...fields, revokedAt: null, mac: tokenMac(ctx.keyring.current, fields, ctx.vaultId) };
    await tx.insertToken(rec);
    await audit({ type: "token_created", actor: who, agent: rec.agent, outcome: "ok", detail: { token_id: id, name: rec.name, role: rec.role, expires_at: rec.expiresAt } });
    return { ...info(rec), token: `lsr_${id}_${secret}` };
  });
}

/**
 * Every token (no secrets), or those `filter` selects; rows without a valid MAC, or MACed under a
 * retired key, are marked `unverified`. Admin only.
 */
export async function listTokens(ctx: VaultContext, who: Identity, filter?: TokenFilter): Promise<TokenInfo[]> {
  const err = roleError(who, ["admin"], "list tokens");
  if (err) await commit(ctx, async (_tx, audit) => denied(audit, who, err));
  const rows = await ctx.store.listTokens(filter);
  const keys = rows.map((t) => tokenMacKey(ctx.keyring, t, ctx.vaultId));
  const retired = keys.some((k) => k !== null && k !== ctx.keyring.current.id) ? await retiredKeys(ctx.store, ctx.auditKeys) : null;
  return rows.map((t, i) => (keys[i] === null || (retired !== null && retired.has(keys[i]!)) ? { ...info(t), unverified: true } : info(t)));
}

/**
 * Revokes a token at once. Admin only. After the commit, the vault raises the `token_revoked` signal
 * (a server closes the token's open connections) and this process refuses the token's next request.
 */
export async function revokeToken(ctx: VaultContext, who: Identity, id: string): Promise<{ revoked: boolean }> {
  const result = await commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], "revoke tokens");
    if (err) return denied(audit, who, err);
    if (typeof id !== "string" || !TOKEN_ID_RE.test(id)) return new VaultError("invalid_request", "a token id is 16 hex characters; list tokens to see them");
    // Its own token read before the revocation: a token that revokes itself reads revoked after it.
    const dead = await tokenGateIn(ctx, tx, who, now);
    if (dead !== null) return dead;
    const revoked = await tx.revokeToken(id, now);
    await audit({ type: "token_revoked", actor: who, outcome: revoked ? "ok" : "error", reason: revoked ? null : "no live token has that id", detail: { token_id: id } });
    return { revoked };
  });
  if (result.revoked) markRevoked(ctx, id);
  return result;
}

/**
 * The identity a token stands for, or VaultError("unauthenticated") (audited as auth_failed, with the
 * token's public id when it could be read and never its secret part). The identity carries `token`
 * (its id and expiry), so a server can close the connection when the token is revoked or expires.
 */
export async function authenticateToken(ctx: VaultContext, token: string, transport: string, remote?: string | null): Promise<Identity> {
  const m = typeof token === "string" ? TOKEN_RE.exec(token) : null;
  const rec = m ? await ctx.store.getToken(m[1]!) : null;
  const now = ctx.now();
  // The same work for a well-formed token whatever its id (docs/daemon.md: timing does not tell a
  // wrong secret for a real id from an unknown id): an unknown id's MAC is checked on a stand-in row
  // (which none verifies), and the secret is always hashed and compared (with a stand-in hash).
  const macKey = m ? tokenMacKey(ctx.keyring, rec ?? standInRecord(m[1]!), ctx.vaultId) : null;
  const secretOk = m ? timingSafeEqual(hashSecret(m[2]!), rec && rec.hash.length === STAND_IN_HASH.length ? Buffer.from(rec.hash) : STAND_IN_HASH) : false;
  let why: string | null = null;
  if (!m) why = "malformed token";
  else if (!rec) why = "unknown token id";
  else if (macKey === null) why = UNMACED;
  // MACed under an older key still loaded (LESSOR_MASTER_KEY_PREVIOUS): good during a rotation, but
  // once a rotation retired that key (re-MACing every row under the new one), a row under it was
  // written by whoever holds the retired, perhaps exposed, key.
  else if (macKey !== ctx.keyring.current.id && (await retiredKeys(ctx.store, ctx.auditKeys)).has(macKey)) why = RETIRED_MAC;
  else if (!secretOk) why = "wrong token secret";
  else if (rec.revokedAt !== null) why = "token revoked";
  else if (rec.expiresAt !== null && rec.expiresAt <= now) why = "token expired";
  if (why !== null || !rec) {
    // In aggregate: a flood of bad tokens is one row per window, not one commit each.
    // The peer's address (a loopback TCP client's) when the transport knows it: not secret, and it
    // tells whose failures these are (the tally is then per address, as for the other refusals).
    const detail = { ...(m ? { token_id: m[1]! } : {}), ...(typeof remote === "string" ? { remote } : {}) };
    await recordAuthFailure(ctx, transport, why ?? "unknown token id", Object.keys(detail).length > 0 ? detail : null);
    throw new VaultError("unauthenticated", INVALID);
  }
  sawLiveToken(ctx, rec.id, rec.expiresAt);
  const issuer = await tokenIssuer(ctx, rec);
  return {
    id: tokenIdentityId(rec),
    role: rec.role,
    ...(rec.agent !== null ? { agent: rec.agent } : {}),
    ...(rec.actFor !== null ? { actFor: rec.actFor } : {}),
    transport,
    token: { id: rec.id, expiresAt: rec.expiresAt, issuer },
    // MACed with the row: nobody without the key makes a token a session, or a session token not one.
    ...(isSessionToken(rec) ? { session: true as const } : {}),
  };
}

/** How far {@link tokenIssuer} follows a chain of tokens made with tokens. */
const MAX_ISSUER_DEPTH = 32;

/** A token's `createdBy` when a token made it (`token:<name>/<id>`; names hold no `/`): the maker's id. */
const MADE_BY_TOKEN = /^token:[^/]*\/([0-9a-f]{16})$/;

/**
 * Who made `rec`, at the root of its chain: each token made with a token (an admin token making agent
 * tokens, and those making more) counts for whoever made the first token of the chain, so that making
 * tokens does not multiply a principal's share of the daemon's connections. A maker no longer stored
 * (or a chain past {@link MAX_ISSUER_DEPTH}) ends the chain at the last maker read.
 */
async function tokenIssuer(ctx: VaultContext, rec: TokenRecord): Promise<string> {
  let by = rec.createdBy;
  for (let i = 0; i < MAX_ISSUER_DEPTH; i++) {
    const m = MADE_BY_TOKEN.exec(by);
    if (m === null) return by;
    const maker = await ctx.store.getToken(m[1]!);
    if (maker === null) return by;
    by = maker.createdBy;
  }
  return by;
}

/** What an unknown id's secret is compared with: the length of a stored hash (SHA-256), matching none. */
const STAND_IN_HASH = Buffer.alloc(32);

/** A record no MAC verifies for (an empty MAC), checked for an unknown id so that it costs what a known one does. */
function standInRecord(id: string): TokenRecord {
  return { id, name: "", role: "agent", agent: null, actFor: null, createdAt: 0, expiresAt: null, revokedAt: null, createdBy: "", hash: Buffer.alloc(32), mac: Buffer.alloc(32) };
}

/** A per-vault random key from which the stand-in proof keys of unknown token ids are derived. */
const standInKeys = new WeakMap<VaultContext, Buffer>();

/**
 * The daemon's answer to a client that names a token and sends a nonce, before the client shows the
 * token (docs/protocol.md, "Token handshake"): a fresh server nonce and the proof, made with the
 * token's stored hash. For an unknown token id the proof is made the same way with a stand-in key the
 * client cannot match, so before the token is shown a known id and an unknown one get the same kind of
 * answer after the same work (one store read, one HMAC). Nothing is audited here (an audit write only
 * for unknown ids would show in the timing); the connection audits a handshake that fails later.
 */
export async function tokenChallenge(ctx: VaultContext, tokenId: string, clientNonce: Uint8Array, binding: string): Promise<{ nonce: Buffer; proof: Buffer }> {
  if (typeof tokenId !== "string" || !TOKEN_ID_RE.test(tokenId)) throw new VaultError("invalid_request", "tokenId must be the 16 hex characters after lsr_ in the token");
  if (!(clientNonce instanceof Uint8Array) || clientNonce.length !== NONCE_BYTES) throw new VaultError("invalid_request", `nonce must be ${NONCE_BYTES} random bytes`);
  if (ctx.closed) throw new VaultError("unavailable", "the vault is closed; open it again");
  const found = await ctx.store.getToken(tokenId);
  // A row without a valid MAC is answered as an unknown id: the daemon proves nothing for it. An
  // unknown id costs the same MAC computation, so that the two take the same work.
  const rec = tokenMacKey(ctx.keyring, found ?? standInRecord(tokenId), ctx.vaultId) !== null ? found : null;
  let base = standInKeys.get(ctx);
  if (base === undefined) standInKeys.set(ctx, (base = randomBytes(32)));
  const standIn = createHmac("sha256", base).update(tokenId, "utf8").digest();
  const key = rec !== null ? Buffer.from(rec.hash) : standIn;
  try {
    const nonce = randomBytes(NONCE_BYTES);
    return { nonce, proof: serverProof(key, clientNonce, nonce, tokenId, binding) };
  } finally {
    // The stored hash is enough to forge the daemon's proof: no copy outlives the answer.
    key.fill(0);
    standIn.fill(0);
  }
}
