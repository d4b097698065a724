/**
 * "Who am I?": the caller's identity as the vault sees it, and for a token identity the token's
 * name, id and expiry. Any role may ask; it reads nothing but the caller's own token record, and
 * never a token's secret part or hash.
 */
import type { VaultContext } from "./context.js";
import type { Identity } from "../base/types.js";

/** The token behind a token identity, as {@link whoami} reports it (never its secret or hash). */
export interface WhoamiToken {
  id: string;
  name: string;
  /** Expiry (ms since the epoch), or null for a token that does not expire. */
  expiresAt: number | null;
}

/** What {@link whoami} returns. */
export interface Whoami {
  identity: Identity;
  /** The token the caller authenticated with, or null when the identity did not come from a token. */
  token: WhoamiToken | null;
}

/** The caller's identity and, for a token identity, the token's name, id and expiry. */
export async function whoami(ctx: VaultContext, who: Identity): Promise<Whoami> {
  // The token the transport authenticated (Identity.token), never a parse of the id, which an
  // embedding program may choose freely.
  const id = who.token?.id;
  if (id === undefined) return { identity: who, token: null };
  const rec = await ctx.store.getToken(id);
  // Named as its identity is: a session token's own name holds the stamp of the run's process, which
  // its sandboxed agent has no need of (src/vault/tokens.ts tokenIdentityId).
  const name = who.id.replace(/^token:/, "").replace(/\/[0-9a-f]{16}$/, "");
  // A token revoked or removed since the hello: say which it was, without an expiry to trust.
  return { identity: who, token: rec ? { id: rec.id, name: who.session === true ? name : rec.name, expiresAt: rec.expiresAt } : { id, name, expiresAt: null } };
}
