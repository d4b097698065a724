/**
 * This process's in-memory view of the tokens it has let in, so that a server can re-check a token at
 * every request without a database read: a token revoked here is marked at once (after its commit); a
 * token revoked by another process sharing the store is noticed by {@link recheckTokens}, which a
 * server calls about twice a second for the tokens its connections hold. Either way the vault raises
 * the `token_revoked` signal once, so the server closes the token's connections.
 */
import { VaultError } from "../base/errors.js";
import type { AuditDraft, Identity } from "../base/types.js";
import type { VaultContext } from "./context.js";
import type { StoreReader } from "./ports.js";

/** What this process knows of one token. */
interface Standing {
  expiresAt: number | null;
  revoked: boolean;
}

const views = new WeakMap<VaultContext, Map<string, Standing>>();

function view(ctx: VaultContext): Map<string, Standing> {
  let v = views.get(ctx);
  if (v === undefined) {
    v = new Map();
    views.set(ctx, v);
  }
  return v;
}

/** Records a token that has just authenticated (live at that moment). */
export function sawLiveToken(ctx: VaultContext, id: string, expiresAt: number | null): void {
  const v = view(ctx);
  const s = v.get(id);
  if (s === undefined || !s.revoked) v.set(id, { expiresAt, revoked: false });
}

/**
 * Marks a token revoked; the first time, raises the `token_revoked` signal. Call only after the
 * revocation has committed (or been read from the store).
 */
export function markRevoked(ctx: VaultContext, id: string): void {
  const v = view(ctx);
  const s = v.get(id);
  if (s?.revoked) return;
  v.set(id, { expiresAt: s?.expiresAt ?? null, revoked: true });
  ctx.signals.emit({ type: "token_revoked", tokenId: id });
}

/**
 * Why a token may no longer be used ("token revoked", "token expired"), or null while it may, from
 * memory only. A token this process never saw authenticate counts as revoked: nothing may act on it.
 */
export function tokenStanding(ctx: VaultContext, id: string): "token revoked" | "token expired" | null {
  const s = views.get(ctx)?.get(id);
  if (s === undefined || s.revoked) return "token revoked";
  if (s.expiresAt !== null && s.expiresAt <= ctx.now()) return "token expired";
  return null;
}

/**
 * Reads the given tokens from the store and marks those revoked (or gone) since this process last
 * looked, raising `token_revoked` for each. Returns the ids newly found revoked.
 */
export async function recheckTokens(ctx: VaultContext, ids: Iterable<string>): Promise<string[]> {
  const found: string[] = [];
  for (const id of new Set(ids)) {
    if (views.get(ctx)?.get(id)?.revoked) continue;
    const rec = await ctx.store.getToken(id);
    if (rec === null || rec.revokedAt !== null) {
      markRevoked(ctx, id);
      found.push(id);
    }
  }
  return found;
}

/** The ids of the tokens this process has seen authenticate and not yet found revoked. */
export function liveTokenIds(ctx: VaultContext): string[] {
  const out: string[] = [];
  for (const [id, s] of views.get(ctx) ?? []) if (!s.revoked) out.push(id);
  return out;
}

/**
 * Why the token `who` authenticated with may not act now, read from the store in the transaction
 * that is about to act (`tx`), or null while it may (and for an identity that is not a token's). A
 * grant, use or write must not outlive a revocation that another instance sharing the store has
 * committed, whatever this process has heard of it yet: the memory view above closes connections
 * soon after, this closes the window. Expiry is judged by `now`, the vault's (the store's) clock.
 */
export async function tokenGateIn(ctx: VaultContext, tx: Pick<StoreReader, "getToken">, who: Identity, now: number): Promise<VaultError | null> {
  if (who.token === undefined) return null;
  const rec = await tx.getToken(who.token.id);
  if (rec === null || rec.revokedAt !== null) {
    markRevoked(ctx, who.token.id);
    return new VaultError("unauthenticated", "the token this connection authenticated with was revoked; nothing was done; ask an admin for a new token");
  }
  if (rec.expiresAt !== null && rec.expiresAt <= now)
    return new VaultError("unauthenticated", "the token this connection authenticated with has expired; nothing was done; ask an admin for a new token");
  return null;
}

/**
 * True for the event of a token revoking itself: its transaction checked the token before the
 * revocation (src/vault/tokens.ts), and reads it revoked after.
 */
export function revokesItself(draft: AuditDraft): boolean {
  return draft.type === "token_revoked" && draft.actor.token !== undefined && draft.detail?.["token_id"] === draft.actor.token.id;
}
