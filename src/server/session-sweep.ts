/**
 * The daemon ends the vault sessions of runs that are gone. A session token (token_create with
 * session: true, made by `lessor run --vault-session`) is named `session:<stamp>`, the stamp of the
 * run's process (src/server/process-stamp.ts). A run that ends revokes its token itself; one killed
 * outright (kill -9, the OOM killer) cannot, and its sandboxed command (reparented, still running) or
 * anything that copied the token would keep the session for the token's ttl. Once a second the daemon
 * looks at the live session tokens whose stamp is of this machine's boot, and for each whose process
 * is gone revokes the token (closing its connections), the live leases it was issued, and the
 * approvals it asked for that were not used (as the run's own end does, src/cli/run/vault-session.ts).
 * At start too: a token left by a run that died while the daemon was down is swept at once.
 */
import { isVaultError } from "../base/errors.js";
import type { Identity } from "../base/types.js";
import type { Vault } from "../vault/vault.js";
import { PROCESS_STAMP_RE, SESSION_TOKEN_PREFIX, tokenIdentityIds } from "../vault/tokens.js";
import type { Logger } from "./logger.js";
import { pidPlace, stampState } from "./process-stamp.js";

/** The identity the sweep acts as (audited as such). */
export const SESSION_SWEEP_IDENTITY: Identity = Object.freeze({ id: "daemon:session-sweep", role: "admin", transport: "serve" } as const);

/** How often the sweep looks (ms). */
export const SESSION_SWEEP_MS = 1000;

/** One pass: revokes what the sessions of gone processes hold. Resolves to how many tokens it revoked. */
export async function sweepSessions(vault: Vault, log?: Pick<Logger, "info" | "warn">): Promise<number> {
  // Where pids cannot be judged (not Linux, no /proc) no stamp is made and none is swept.
  if (pidPlace() === null) return 0;
  const admin = vault.session(SESSION_SWEEP_IDENTITY);
  const now = vault.now();
  let n = 0;
  // The store selects the live session tokens: the sweep's cost follows the runs going on, not every
  // token ever made (revoked ones are never deleted).
  for (const t of await admin.listTokens({ liveAt: now, namePrefix: SESSION_TOKEN_PREFIX })) {
    if (t.revokedAt !== null || (t.expiresAt !== null && t.expiresAt <= now) || t.unverified === true || t.role !== "agent" || t.agent === null) continue;
    if (!t.name.startsWith(SESSION_TOKEN_PREFIX)) continue;
    const stamp = t.name.slice(SESSION_TOKEN_PREFIX.length);
    if (!PROCESS_STAMP_RE.test(stamp) || stampState(stamp) !== "gone") continue;
    // Another daemon sharing the store (on this machine) may have swept it first: it cleans up then.
    if (!(await admin.revokeToken(t.id)).revoked) continue;
    n++;
    // Under its identity now, and under the one an earlier daemon gave it (leases taken before an upgrade).
    const issuers = tokenIdentityIds(t);
    let leases = 0;
    for (const l of await admin.listLeases({ agent: t.agent, liveAt: vault.now(), limit: 10_000 }))
      if (issuers.includes(l.issuedBy) && (await admin.revokeLease(l.id, "the lessor run that held its vault session is gone")).revoked) leases++;
    for (const issuer of issuers) await admin.withdrawApprovals(issuer, t.agent, "the lessor run that asked for it is gone").catch(() => {});
    log?.info({ token: t.id, agent: t.agent, leases }, "revoked the vault session of a lessor run that is gone (killed before it could end its session)");
  }
  return n;
}

/** Starts the sweep (one pass now, then every {@link SESSION_SWEEP_MS}); returns its stop. */
export function startSessionSweep(vault: Vault, log: Pick<Logger, "info" | "warn" | "error">): () => Promise<void> {
  let running: Promise<void> | null = null;
  let lastError: string | null = null;
  const tick = (): void => {
    if (running !== null) return;
    running = sweepSessions(vault, log)
      .then(
        () => void (lastError = null),
        (e: unknown) => {
          // A store that cannot be reached (cut off, a file replaced under the daemon) is the daemon's
          // to report, once (its killswitch read, every second): the sweep tries again on the next tick.
          if (isVaultError(e, "unavailable")) return;
          const err = (e as Error).message;
          if (err !== lastError) log.error({ err }, "could not sweep the vault sessions of lessor runs that are gone");
          lastError = err;
        },
      )
      .finally(() => (running = null));
  };
  tick();
  const timer = setInterval(tick, SESSION_SWEEP_MS);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await running;
  };
}
