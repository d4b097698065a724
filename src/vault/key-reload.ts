/**
 * Master keys rotated by another process sharing the store (another `lessor serve` on the same
 * PostgreSQL database; the CLI on the same SQLite file). The rotating process makes the new key
 * current in its key source, then records its id in the store ({@link CURRENT_KEY_META}) in the same
 * commit as the first audit event MACed under it, before any value is wrapped under it. This process
 * learns of it in three ways:
 * - the change feed's notice of that metadata write ({@link followKeyRotation}, from
 *   src/vault/remote-changes.ts);
 * - a commit whose store names a current key, or an audit checkpoint key, that its keyring lacks
 *   ({@link checkKeysIn});
 * - a stored value wrapped under a key its keyring lacks ({@link requireKeyIn}, {@link ensureKey}).
 *
 * Each time, it reads its own key source again ({@link KeySource.reload}, else `load`: the key file
 * re-read, the key command run again, a passphrase store re-opened with the key derived at start, never
 * asking for the passphrase again) and installs the new keyring if it holds the key needed. Otherwise
 * it keeps the keyring it has and refuses what needs the key with `key_unavailable` (on the wire,
 * `unavailable`), saying how to give this instance the key. It never writes under a key older than the
 * one the store names, and it opens a value only under the key its row names: a stale instance fails
 * closed, it never serves with a wrong key. A source that failed is asked again at most once a
 * second per key ({@link KEY_RETRY_MS}).
 */
import { isVaultError, VaultError } from "../base/errors.js";
import { AuditKeys } from "../audit/keys.js";
import { retiredKeys, retiredWhere } from "../audit/retired.js";
import { withCurrent } from "../crypto/keyring.js";
import type { Keyring } from "../crypto/keyring.js";
import { markBehind } from "./behind.js";
import type { StoreTx } from "./ports.js";
import type { VaultContext } from "./context.js";

/** The meta key naming the vault's current master key id (set when a rotation starts). */
export const CURRENT_KEY_META = "master_key_id";

/** After a failed reload for a key, how long requests needing it are refused without asking the source again. */
export const KEY_RETRY_MS = 1000;

/** How long a replaced keyring (and its audit keys) is kept for requests still using it, before it is wiped. */
const WIPE_AFTER_MS = 30_000;

interface ReloadState {
  running: Promise<unknown> | null;
  /** The last failure per key id needed, and when. */
  failed: Map<string, { at: number; error: VaultError }>;
}

const states = new WeakMap<VaultContext, ReloadState>();

function state(ctx: VaultContext): ReloadState {
  let s = states.get(ctx);
  if (s === undefined) states.set(ctx, (s = { running: null, failed: new Map() }));
  return s;
}

/** How a new key reaches each kind of key source (src/crypto/keys/). */
const HOW: Record<string, string> = {
  file:
    "point [keys] file in lessor.toml at the key file the rotating instance uses, or copy that file over this instance's (mode 0600); it is read again at the next request, no restart needed",
  passphrase:
    "copy the passphrase key store of the rotating instance over this instance's (sealed under the same passphrase); it is read again at the next request, no restart needed",
  command: "make the key command print the new key first and the older ones after it; it is run again at the next request, no restart needed",
  env: "restart this instance with the new key in LESSOR_MASTER_KEY and the old one in LESSOR_MASTER_KEY_PREVIOUS (a running process cannot see a changed environment)",
};

/**
 * The refusal when `keyId` cannot be loaded: the source read holds only `held`, or `cause` is why it
 * could not be read.
 */
function unreachable(ctx: VaultContext, keyId: string, cause: unknown, held: readonly string[] = []): VaultError {
  const why =
    cause === null
      ? `${ctx.keys.describe} does not hold it (it holds ${held.join(", ")})`
      : `reading ${ctx.keys.describe} again failed: ${isVaultError(cause) ? cause.message : `an unexpected ${cause instanceof Error ? cause.name : "error"}`}`;
  const how = HOW[ctx.keys.kind] ?? "give this instance's key source the new key (current) and the older ones";
  return new VaultError(
    "key_unavailable",
    `master key ${keyId} is in use in this vault (another lessor instance sharing its store rotated the master key) but this instance cannot load it: ${why}. What needs it is refused here until it can; to fix, ${how}`,
  );
}

/**
 * Puts `next` in force. The keyring replaced is wiped a little later, not now: a request in flight
 * may still be opening a value or checking a MAC with it.
 */
function install(ctx: VaultContext, next: Keyring): void {
  const oldRing = ctx.keyring;
  const oldAudit = ctx.auditKeys;
  ctx.keyring = next;
  ctx.auditKeys = new AuditKeys(next, ctx.vaultId);
  setTimeout(() => {
    oldAudit.wipe();
    oldRing.wipe();
  }, WIPE_AFTER_MS).unref();
}

/**
 * Reads the key source again and installs what it holds, if it holds `need` and every key a stored
 * value is wrapped under.
 * With `force`, reads it even when `need` is loaded already (the notice of a rotation: keys the
 * rotation retired are dropped here too). One reload at a time; returns null, or why `need` cannot
 * be loaded (also remembered for {@link KEY_RETRY_MS}).
 */
async function reload(ctx: VaultContext, need: string | null, force: boolean): Promise<VaultError | null> {
  const s = state(ctx);
  while (s.running !== null) await s.running.catch(() => {});
  if (ctx.closed) return new VaultError("unavailable", "the vault is closed; open it again");
  if (need !== null && !force && ctx.keyring.get(need)) return null;
  const last = need === null ? undefined : s.failed.get(need);
  if (last !== undefined && performance.now() - last.at < KEY_RETRY_MS) return last.error;
  const before = ctx.keyring.ids().join(",");
  const run = (async (): Promise<VaultError | null> => {
    let next: Keyring;
    try {
      next = ctx.keys.reload ? await ctx.keys.reload(ctx.keyring) : await ctx.keys.load();
    } catch (e) {
      if (need === null) return isVaultError(e) ? e : new VaultError("key_unavailable", `reading ${ctx.keys.describe} again failed unexpectedly`);
      return unreachable(ctx, need, e);
    }
    if (ctx.closed) {
      next.wipe();
      return new VaultError("unavailable", "the vault is closed; open it again");
    }
    // Never a keyring that cannot open what is stored (a key file replaced by another vault's, say).
    let missing: string | undefined;
    try {
      missing = [...(need === null ? [] : [need]), ...(await ctx.store.keyIdsInUse())].find((id) => !next.get(id));
    } catch (e) {
      next.wipe();
      throw e;
    }
    if (missing !== undefined) {
      const err = unreachable(ctx, missing, null, next.ids());
      next.wipe();
      return err;
    }
    install(ctx, next);
    return null;
  })();
  s.running = run;
  let err: VaultError | null;
  try {
    err = await run;
  } finally {
    s.running = null;
  }
  if (err !== null) {
    const said = need === null ? undefined : s.failed.get(need)?.error.message;
    if (need !== null) s.failed.set(need, { at: performance.now(), error: err });
    if (said !== err.message) ctx.signals.emit({ type: "keys_reloaded", ok: false, keyIds: ctx.keyring.ids(), error: err.message });
    return err;
  }
  if (need !== null) s.failed.delete(need);
  if (ctx.keyring.ids().join(",") !== before) ctx.signals.emit({ type: "keys_reloaded", ok: true, keyIds: ctx.keyring.ids() });
  return null;
}

/**
 * Inside a transaction, at its first audit event (before anything is MACed or chained): throws an
 * error marked "behind" (src/vault/behind.ts) when the store names a current master key this keyring
 * lacks (nothing may be written under an older key once the store names a newer one), or when the
 * audit checkpoint was made under a key neither this keyring nor the archive holds and no reload for
 * it failed in the last second (after that, the audit guard judges the checkpoint as it is).
 */
export async function checkKeysIn(ctx: VaultContext, tx: StoreTx, opts: { rotating?: boolean; brake?: boolean } = {}): Promise<void> {
  let [current, cp] = await Promise.all([tx.getMeta(CURRENT_KEY_META), tx.getCheckpoint()]);
  // The record names a key other than the one written under: never one a rotation retired (the row
  // is not authenticated; someone who can write the database could point it back at a leaked key).
  // A rotation records a fresh current key, and a brake (a revocation, the killswitch) must not be
  // stopped by a meta row: both go on under the source's current key, as if nothing were recorded.
  if (current !== null && current !== ctx.keyring.current.id) {
    const gone = (await retiredKeys(tx, ctx.auditKeys)).get(current);
    if (gone !== undefined) {
      if (!opts.rotating && !opts.brake) throw retiredCurrent(current, gone, "the store records it as the current master key (meta master_key_id): someone who can write the database set it back");
      current = null;
    }
  }
  if (current !== null && !ctx.keyring.get(current))
    throw markBehind(
      new VaultError("key_unavailable", `the master key was rotated to ${current} by another lessor process sharing this vault's store; this instance is loading it, retry`),
      { kind: "key", keyId: current, hard: true },
    );
  // The source gives first a key other than the one the store records as current (a rotation
  // retired it: an old LESSOR_MASTER_KEY, a key command printing the old key first, a key file put
  // back; or a key planted there; or another process's rotation not recorded yet): nothing is sealed
  // or MACed under it. The recorded key, which this ring holds, is made current, and the call runs
  // again (what it sealed so far used the other key).
  if (current !== null && ctx.keyring.current.id !== current && ctx.keyring.get(current)) {
    const first = ctx.keyring.current.id;
    install(ctx, withCurrent(ctx.keyring, current));
    throw markBehind(new VaultError("key_unavailable", `${ctx.keys.describe} gives master key ${first} first, but the store records ${current} as current; writing under ${current}, retry`), {
      kind: "key",
      keyId: current,
      hard: true,
    });
  }
  // The key written under was never retired either (a source giving a retired key first, with the
  // record pointing at it too): checked once per keyring.
  if (!opts.rotating && !checkedCurrent.has(ctx.auditKeys)) {
    const id = ctx.keyring.current.id;
    const gone = (await retiredKeys(tx, ctx.auditKeys)).get(id);
    if (gone !== undefined) throw retiredCurrent(id, gone, `${ctx.keys.describe} gives it first${current === id ? " and the store records it as current (meta master_key_id)" : ""}`);
    checkedCurrent.add(ctx.auditKeys);
  }
  if (cp !== null && !ctx.keyring.get(cp.keyId)) {
    const last = state(ctx).failed.get(cp.keyId);
    if (last !== undefined && performance.now() - last.at < KEY_RETRY_MS) return;
    if ((await ctx.auditKeys.get(cp.keyId, tx)) !== null) return;
    throw markBehind(
      new VaultError("key_unavailable", `the audit checkpoint was made under master key ${cp.keyId}, which this instance has not loaded; retry`),
      { kind: "key", keyId: cp.keyId, hard: false },
    );
  }
}

/** Audit keys whose keyring's current key was found not retired. */
const checkedCurrent = new WeakSet<AuditKeys>();

/** The refusal to write under master key `id`, which a rotation retired (at event `seq`; 0: the archive shows it). */
function retiredCurrent(id: string, seq: number, why: string): VaultError {
  return new VaultError(
    "key_unavailable",
    `master key ${id} was retired by ${retiredWhere(seq)}, but ${why}. Nothing is sealed or MACed under a retired key: check the trail with lessor audit verify, then run lessor key rotate (with the key source giving a key that was never retired first) to record a current key again`,
  );
}

/** Inside a transaction, before a value wrapped under `keyId` is opened: throws "behind" when the keyring lacks it. */
export function requireKeyIn(ctx: VaultContext, keyId: string): void {
  if (!ctx.keyring.get(keyId))
    throw markBehind(new VaultError("key_unavailable", `the master key ${keyId} that wraps this secret is not loaded in this instance; retry`), {
      kind: "key",
      keyId,
      hard: true,
    });
}

/**
 * After a transaction was refused by {@link checkKeysIn} or {@link requireKeyIn}: reloads the key
 * source. For a `hard` need that is still not loaded, throws the refusal saying how to fix it.
 */
export async function catchUpKey(ctx: VaultContext, keyId: string, hard: boolean): Promise<void> {
  const err = await reload(ctx, keyId, false);
  if (err !== null && hard) throw err;
}

/** Outside a transaction, before a value wrapped under `keyId` is opened: reloads if needed, else throws the refusal. */
export async function ensureKey(ctx: VaultContext, keyId: string): Promise<void> {
  if (ctx.keyring.get(keyId)) return;
  const err = await reload(ctx, keyId, false);
  if (err !== null) throw err;
}

/**
 * Reads the committed current key id and checkpoint key id and reloads the key source when this
 * keyring lacks one of them. Never throws: used where a stale keyring is only a risk (the feed's
 * resync, before `audit verify`); the request that needs the key is refused by itself.
 */
export async function catchUpKeys(ctx: VaultContext): Promise<void> {
  try {
    const [current, cp] = await Promise.all([ctx.store.getMeta(CURRENT_KEY_META), ctx.store.getCheckpoint()]);
    if (current !== null && !ctx.keyring.get(current)) await reload(ctx, current, false);
    if (cp !== null && !ctx.keyring.get(cp.keyId) && (await ctx.auditKeys.get(cp.keyId, ctx.store)) === null) await reload(ctx, cp.keyId, false);
  } catch {
    // the store could not be read: the next request that needs a key checks again
  }
}

/**
 * The change feed's notice that another instance wrote {@link CURRENT_KEY_META} (a rotation started,
 * or finished and retired the old keys): reads the key source again, so that the new key is loaded
 * before the first request needs it and retired keys are dropped here too. Never throws; a failure is
 * raised as the `keys_reloaded` signal (not ok) and every request that needs the key is refused.
 */
export async function followKeyRotation(ctx: VaultContext): Promise<void> {
  try {
    const current = await ctx.store.getMeta(CURRENT_KEY_META);
    if (current === null || ctx.closed) return;
    await reload(ctx, current, true);
  } catch {
    // the store could not be read: the next commit checks the key itself
  }
}

/**
 * Reads the key source again before this process rotates (src/vault/rotation.ts), so that the
 * rotation starts from what the source holds now, not from keys another instance has since retired
 * or rotated. Throws why the source could not be read.
 */
export async function reloadBeforeRotation(ctx: VaultContext): Promise<void> {
  let current = await ctx.store.getMeta(CURRENT_KEY_META);
  // A record pointing at a retired key is not followed (the rotation records a fresh key).
  if (current !== null && (await retiredKeys(ctx.store, ctx.auditKeys)).has(current)) current = null;
  const err = await reload(ctx, current, true);
  if (err !== null) throw err;
}
