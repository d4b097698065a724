/**
 * The client SDK's surface over an in-process vault, for the CLI's embedded mode. The caller is the
 * local user, so the session is admin (as the daemon treats its own uid), audited with transport "cli".
 */
import type { Results } from "../protocol/methods.js";
import { wireAudit, wireExplanation, wireIdentity } from "../server/wire.js";
import { parseRefString } from "../base/names.js";
import type { Identity, SecretRef } from "../base/types.js";
import type { Vault } from "../vault/vault.js";
import { VERSION } from "../version.js";
import type { CliApi } from "./backend.js";

type Spec = string | { scope?: string; name: string };

function ref(s: Spec): SecretRef {
  return typeof s === "string" ? parseRefString(s) : { scope: s.scope ?? "global", name: s.name };
}

/** Wraps an open vault as a {@link CliApi}. */
export function embeddedApi(vault: Vault): CliApi {
  const who: Identity = { id: `uid:${process.getuid?.() ?? 0}`, role: "admin", transport: "cli" };
  const s = vault.session(who);
  const started = Date.now();
  return {
    status: async (): Promise<Results["status"]> => ({
      ...(await s.status()),
      identity: wireIdentity(who),
      daemon: { version: VERSION, pid: process.pid, uptimeMs: Date.now() - started, connections: 0 },
    }),
    whoami: async (): Promise<Results["whoami"]> => {
      const w = await s.whoami();
      return { identity: wireIdentity(w.identity), token: w.token };
    },
    storeSecret: (p) => s.storeSecret(p),
    rotateSecret: (r, value) => s.rotateSecret(ref(r), value),
    rollbackSecret: (r, version) => s.rollbackSecret(ref(r), version),
    deleteSecret: (r) => s.deleteSecret(ref(r)),
    revealSecret: (r, version) => s.revealSecret(ref(r), version),
    listSecrets: (f = {}) => s.listSecrets(f),
    getSecretMetadata: (r) => s.getSecretMetadata(ref(r)),
    secretHistory: (r) => s.secretHistory(ref(r)),
    requestLease: (req) => s.requestLease({ ...req, secret: typeof req.secret === "string" ? req.secret : ref(req.secret) }),
    accessSecret: (id, target) => s.accessSecret(id, target),
    leaseAndAccess: (req, target) => s.requestLeaseAndAccess({ ...req, secret: typeof req.secret === "string" ? req.secret : ref(req.secret) }, target),
    renewLease: (id, opts) => s.renewLease(id, opts),
    revokeLease: (id, reason) => s.revokeLease(id, reason),
    revokeAllForAgent: (agent, reason) => s.revokeAllForAgent(agent, reason),
    killswitch: (reason) => s.killswitch(reason),
    releaseKillswitch: (reason) => s.releaseKillswitch(reason),
    listLeases: (f = {}) =>
      s.listLeases({
        ...(f.agent !== undefined ? { agent: f.agent } : {}),
        ...(f.secret !== undefined ? { secret: ref(f.secret) } : {}),
        ...(f.live ? { liveAt: Date.now() } : {}),
        ...(f.limit !== undefined ? { limit: f.limit } : {}),
      }),
    auditQuery: async (f = {}) => (await s.auditQuery(f)).map(wireAudit),
    auditVerify: () => s.auditVerify(),
    auditRecover: (reason) => s.auditRecover({ reason }),
    reloadPolicy: () => s.reloadPolicy(),
    explain: async (agent, secret, domain) => wireExplanation(await s.explain(agent, ref(secret), domain)),
    rotateMasterKey: () => s.rotateMasterKey(),
    createToken: (p) => s.createToken(p),
    listTokens: () => s.listTokens(),
    revokeToken: (id) => s.revokeToken(id),
  };
}
