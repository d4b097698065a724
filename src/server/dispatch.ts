/**
 * Method dispatch: one handler per protocol v1 method, each taking the connection's session and the
 * params as validated by METHODS, and returning the wire result (Results[method]). Role checks and
 * audit happen inside the core; the identity is the session's, never a request param.
 */
import type { z } from "zod";
import type { MethodName, METHODS, Results } from "../protocol/methods.js";
import { parseRefString } from "../base/names.js";
import type { VaultSession } from "../vault/vault.js";
import { decodeValue, takeBase64, wireAudit, wireExplanation, wireIdentity } from "./wire.js";

/** What a handler may need beyond the session: daemon facts for `status`. */
export interface DispatchContext {
  version: string;
  startedAt: number;
  connections(): number;
}

type Handler<M extends MethodName> = (s: VaultSession, p: z.output<(typeof METHODS)[M]>, c: DispatchContext) => Promise<Results[M]>;

/** Methods whose result carries secret material: the server wipes their response frame after writing it. */
export const SECRET_RESULTS: ReadonlySet<string> = new Set<MethodName>(["access_secret", "reveal_secret", "token_create"]);

/** True when the result of `method` called with (validated) `params` carries secret material. */
export function carriesSecret(method: MethodName, params: unknown): boolean {
  if (SECRET_RESULTS.has(method)) return true;
  return method === "request_lease" && (params as { access?: unknown }).access !== undefined;
}

/** The handler of every method. */
export const HANDLERS: { [M in MethodName]: Handler<M> } = {
  async status(s, _p, c) {
    const st = await s.status();
    return {
      ...st,
      identity: wireIdentity(s.identity),
      daemon: { version: c.version, pid: process.pid, uptimeMs: Date.now() - c.startedAt, connections: c.connections() },
    };
  },

  async whoami(s) {
    const w = await s.whoami();
    return { identity: wireIdentity(w.identity), token: w.token };
  },

  async store_secret(s, p) {
    const bytes = decodeValue(p.value, p.encoding);
    try {
      const { value: _v, encoding: _e, ...rest } = p;
      return await s.storeSecret({ ...rest, value: bytes });
    } finally {
      bytes.fill(0);
    }
  },
  async rotate_secret(s, p) {
    const bytes = decodeValue(p.value, p.encoding);
    try {
      return await s.rotateSecret({ scope: p.scope ?? "global", name: p.name }, bytes);
    } finally {
      bytes.fill(0);
    }
  },
  rollback_secret: (s, p) => s.rollbackSecret({ scope: p.scope ?? "global", name: p.name }, p.version),
  delete_secret: (s, p) => s.deleteSecret({ scope: p.scope ?? "global", name: p.name }),
  async reveal_secret(s, p) {
    const got = await s.revealSecret({ scope: p.scope ?? "global", name: p.name }, p.version);
    return { value: takeBase64(got.value), encoding: "base64", version: got.version };
  },
  list_secrets: (s, p) => s.listSecrets(p),
  get_secret_metadata: (s, p) => s.getSecretMetadata({ scope: p.scope ?? "global", name: p.name }),
  secret_history: (s, p) => s.secretHistory({ scope: p.scope ?? "global", name: p.name }),

  async request_lease(s, p) {
    const { access, ...req } = p;
    if (access === undefined) return s.requestLease(req);
    const got = await s.requestLeaseAndAccess(req, access);
    return { ...got.lease, value: takeBase64(got.value), encoding: "base64", version: got.version };
  },
  async access_secret(s, p) {
    const { leaseId, ...target } = p;
    const got = await s.accessSecret(leaseId, target);
    return { value: takeBase64(got.value), encoding: "base64", version: got.version, lease: got.lease };
  },
  renew_lease: (s, p) => s.renewLease(p.leaseId, p.ttl === undefined ? {} : { ttl: p.ttl }),
  revoke_lease: (s, p) => s.revokeLease(p.leaseId, p.reason),
  revoke_all_for_agent: (s, p) => s.revokeAllForAgent(p.agent, p.reason),
  list_leases: (s, p) =>
    s.listLeases({
      ...(p.agent !== undefined ? { agent: p.agent } : {}),
      ...(p.secret !== undefined ? { secret: parseRefString(p.secret) } : {}),
      ...(p.live ? { liveAt: Date.now() } : {}),
      ...(p.limit !== undefined ? { limit: p.limit } : {}),
    }),
  killswitch: (s, p) => s.killswitch(p.reason),
  killswitch_release: (s, p) => s.releaseKillswitch(p.reason),

  async audit_query(s, p) {
    return (await s.auditQuery(p)).map(wireAudit);
  },
  audit_verify: (s) => s.auditVerify(),
  audit_recover: (s, p) => s.auditRecover({ reason: p.reason }),
  reload_policy: (s) => s.reloadPolicy(),
  async explain(s, p) {
    return wireExplanation(await s.explain(p.agent, parseRefString(p.secret), p.domain));
  },
  rotate_master_key: (s) => s.rotateMasterKey(),

  token_create: (s, p) => s.createToken(p),
  token_list: (s) => s.listTokens(),
  token_revoke: (s, p) => s.revokeToken(p.id),
};
