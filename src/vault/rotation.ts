/**
 * Master-key rotation. Only DEKs are re-wrapped; values are untouched. Crash-safe at every point:
 * 1. promote: the new key is made current in the key source and is durable before any row points
 *    at it (the old keys stay readable);
 * 2. re-wrap: DEKs still under an old key are re-wrapped in small transactions, each conditional on
 *    the row still pointing at the old key;
 * 3. a key_rotated event is appended (its checkpoint is MACed under the new key), and in the same
 *    commit the audit keys of the old master keys are archived, sealed under the new key, so that
 *    the events written under them keep verifying once those keys are gone (src/audit/keys.ts), and
 *    every token row whose MAC verifies under an older key of the keyring is MACed again under the
 *    new one (src/vault/token-mac.ts; a row no key verifies stays as it is, refused);
 * 4. retire: old keys are dropped from the key source, and the key id is written again so that the
 *    other instances sharing the store read their key source again (src/vault/key-reload.ts).
 * Before it starts, the keyring is read again from the key source (another instance may have rotated).
 * Killed anywhere, the key source holds every key some row points at. Running it again resumes: a
 * keyring that still holds old keys is finished rather than given yet another key.
 * One rotation at a time among every process sharing the store: it is claimed there before the key
 * source is read and held to the end (./rotation-claim.ts); a second is refused, changing nothing. Just
 * before each write to the key source, the claim is renewed and the source is checked to keep every
 * key the store still uses.
 */
import { randomBytes } from "node:crypto";
import { archiveKeys, AUDIT_KEYS_META, parseArchive } from "../audit/keys.js";
import { retiredKeys, retiredWhere } from "../audit/retired.js";
import { rewrapDek } from "../crypto/envelope.js";
import { KEY_BYTES } from "../crypto/keyring.js";
import { roleError } from "./access.js";
import { denied } from "./denied.js";
import { brokenError, inspectChain, noteAuditState } from "./audit-guard.js";
import { commit, CURRENT_KEY_META, setKeyring, type VaultContext } from "./context.js";
import { checkKeysIn, reloadBeforeRotation } from "./key-reload.js";
import { claimRotationIn, holdRotationIn, newRotationClaim, releaseRotation, releaseRotationIn, rotationRunningIn, type RotationClaim } from "./rotation-claim.js";
import { tokenMac, tokenMacKey } from "./token-mac.js";
import { isVaultError, VaultError } from "../base/errors.js";
import { refString } from "../base/names.js";
import type { Identity, VersionRecord } from "../base/types.js";

/** What a rotation did. */
export interface RotationResult {
  from: string[];
  to: string;
  rewrapped: number;
  /** True when an interrupted rotation was finished instead of a new key being made. */
  resumed: boolean;
  /** False for read-only key sources (env, command): drop the old key there yourself. */
  retired: boolean;
}

const BATCH = 200;

/** A version the re-wrap cannot move to the new key, and why (no part of its value or ciphertext). */
interface Stuck {
  r: VersionRecord;
  why: string;
}

/** Re-wraps one version's DEK under the current key, or says why it cannot (a damaged record: only decrypt_failed is caught). */
function rewrapOne(ctx: VaultContext, r: VersionRecord): Buffer | string {
  try {
    return rewrapDek(r, r, ctx.keyring, ctx.keyring.current, ctx.vaultId);
  } catch (e) {
    if (isVaultError(e, "decrypt_failed")) return `the master key it names, ${r.keyId}, does not open it (the record is damaged or was edited)`;
    if (isVaultError(e, "key_unavailable")) throw new VaultError("key_unavailable", `version ${r.version} of secret ${refString(r)}: ${e.message}`);
    throw e;
  }
}

/** The refusal naming the versions a rotation could not re-wrap (scope/name and version are not secret), and what to do. */
function stuckError(stuck: Stuck[], to: string): VaultError {
  const SHOWN = 3;
  const named = stuck.slice(0, SHOWN).map(({ r, why }) => `version ${r.version} of secret ${refString(r)}: ${why}`);
  const more = stuck.length > SHOWN ? `; and ${stuck.length - SHOWN} more` : "";
  const refs = [...new Set(stuck.map(({ r }) => refString(r)))];
  const one = refs.length === 1;
  return new VaultError(
    "decrypt_failed",
    `lessor key rotate cannot re-wrap ${stuck.length === 1 ? "" : "these versions: "}${named.join("; ")}${more}. The old master key is not retired, and the versions re-wrapped so far stay under ${to}. Check the trail (lessor audit verify); then remove ${one ? "that secret" : "those secrets"} (lessor secret rm ${refs.slice(0, SHOWN).join(", lessor secret rm ")}) and store ${one ? "it" : "them"} again, or restore lessor.db from a backup; then run lessor key rotate again to finish this rotation`,
  );
}

/** Refuses to rotate to a key an earlier rotation retired (a read-only source giving an old key first). */
async function refuseRetired(ctx: VaultContext): Promise<void> {
  const to = ctx.keyring.current.id;
  const gone = (await retiredKeys(ctx.store, ctx.auditKeys)).get(to);
  if (gone !== undefined)
    throw new VaultError(
      "key_unavailable",
      `${ctx.keys.describe} gives master key ${to} first, which ${retiredWhere(gone)} retired; a retired key is never made current again. Make a new key (openssl rand -hex 32) the first one there, the older ones after it, and run lessor key rotate again`,
    );
}

/**
 * Inside the rotation's claim, just before the key source is written: renews the claim, and refuses
 * unless the key source will then hold every master key the store still uses (a value's wrapped data
 * key, or the key recorded as current). Otherwise the store moved on without this rotation (a rotation
 * elsewhere that did not take the claim, or a key source shared with another vault), and writing
 * would lose a key: nothing is written.
 */
async function checkBeforeKeyWrite(ctx: VaultContext, claim: RotationClaim, willHold: readonly string[], what: string): Promise<void> {
  await ctx.store.transaction(async (tx) => {
    await holdRotationIn(ctx, tx, claim, ctx.now());
    const [inUse, recorded] = await Promise.all([tx.keyIdsInUse(), tx.getMeta(CURRENT_KEY_META)]);
    const needed = new Set(inUse);
    // A record naming a retired key is not followed (checkKeysIn): the rotation records a fresh one.
    if (recorded !== null && recorded !== "" && !(await retiredKeys(tx, ctx.auditKeys)).has(recorded)) needed.add(recorded);
    const missing = [...needed].filter((id) => !willHold.includes(id));
    if (missing.length > 0)
      throw new VaultError(
        "unavailable",
        `lessor key rotate stopped before it would ${what}: the vault uses master key ${missing.join(", ")}, which ${ctx.keys.describe} would then no longer hold (it would hold ${willHold.join(", ")}). Another master-key rotation ran or is running on this vault (or another vault writes this key source); writing now would lose that key, so nothing was written. Wait for the other rotation to finish, then run lessor key rotate again`,
      );
  });
}

/** Rotates the master key (admin only). `onBatch` is called after each committed batch (tests). */
export async function rotateMasterKey(ctx: VaultContext, who: Identity, onBatch?: (done: number) => void): Promise<RotationResult> {
  // One rotation at a time among every process sharing the store (./rotation-claim.ts): claimed
  // before the key source is read, held to the end, ended however the rotation ends.
  const claim = newRotationClaim();
  let claimed = false;
  try {
    await commit(ctx, async (tx, audit, now) => {
      const err = roleError(who, ["admin"], "rotate the master key");
      if (!err) {
        // First: while another rotation runs, what it is changing (the current key, the checkpoint)
        // must not be judged here as a key set back or a broken trail.
        const running = await rotationRunningIn(ctx, tx, claim, now);
        if (running !== null) return running;
        // Another instance may have rotated already: load its key first (src/vault/key-reload.ts), so
        // that this rotation neither judges the trail by an old keyring nor rotates back to an old key.
        // A record of the current key pointing at a retired key is not followed: this rotation records a fresh one.
        await checkKeysIn(ctx, tx, { rotating: true });
        // Refused before a new key is made: a broken audit trail would refuse the rotation's events.
        const chain = await inspectChain(ctx, tx);
        noteAuditState(ctx, chain.problem); // the alarm, as any refused write raises it
        if (chain.problem !== null) return brokenError(chain.problem);
        const refused = await claimRotationIn(ctx, tx, claim, who, now);
        claimed ||= refused === null;
        return refused ?? undefined;
      }
      return denied(audit, who, err);
    });
    return await rotateClaimed(ctx, who, claim, onBatch);
  } finally {
    if (claimed) await releaseRotation(ctx, claim);
  }
}

/** The rotation itself, once `claim` is held. */
async function rotateClaimed(ctx: VaultContext, who: Identity, claim: RotationClaim, onBatch?: (done: number) => void): Promise<RotationResult> {
  // Start from what the key source holds now, not from keys another instance has since retired.
  if (ctx.keys.writable) await reloadBeforeRotation(ctx);
  const before = ctx.keyring.ids();
  let resumed = true;
  // Resumed only onto the key an earlier rotation recorded in the store as current: a key that
  // appeared first in the source otherwise (planted there by whoever could write to it, such as an
  // agent that reached the OS keychain) is never adopted; a fresh key is made and every key but it
  // retired at the end, the planted one included.
  const recorded = await ctx.store.getMeta(CURRENT_KEY_META);
  const resumable = before.length > 1 && recorded === ctx.keyring.current.id;
  if (ctx.keys.writable && !resumable) {
    if (!ctx.keys.promote) throw new VaultError("internal", "the key source says it is writable but cannot store keys");
    resumed = false;
    // The key source keeps every key it holds now: refused unless those are all the store uses.
    await checkBeforeKeyWrite(ctx, claim, ctx.keyring.ids(), "add a new master key");
    const fresh = randomBytes(KEY_BYTES);
    setKeyring(ctx, await ctx.keys.promote(ctx.keyring, fresh));
  } else if (!ctx.keys.writable) {
    setKeyring(ctx, await ctx.keys.load());
    await refuseRetired(ctx);
    // A read-only source (env, command) rotates only to a key the operator put first there.
    resumed = recorded === ctx.keyring.current.id;
    // One key, and the one already in force (or the first, never rotated from): nothing to rotate,
    // and nothing is recorded as rotated.
    if (ctx.keyring.ids().length === 1 && (recorded === null || resumed)) return { from: [], to: ctx.keyring.current.id, rewrapped: 0, resumed: false, retired: false };
  }
  if (resumable) await refuseRetired(ctx);
  const to = ctx.keyring.current.id;
  await commit(ctx, async (tx, audit, now) => {
    await holdRotationIn(ctx, tx, claim, now);
    await tx.setMeta(CURRENT_KEY_META, to);
    await audit({ type: "key_rotation_started", actor: who, outcome: "ok", detail: { to, from: before.filter((k) => k !== to).join(","), resumed } });
  });
  let rewrapped = 0;
  // A version under a key an earlier rotation retired was written after it by whoever holds that key:
  // re-wrapped, it would pass for this vault's own under the new key.
  const retiredBefore = await retiredKeys(ctx.store, ctx.auditKeys);
  for (;;) {
    const rows = await ctx.store.versionsNotUnderKey(to, BATCH);
    if (rows.length === 0) break;
    const updates: { r: VersionRecord; wrapped: Buffer }[] = [];
    const stuck: Stuck[] = [];
    for (const r of rows) {
      const gone = retiredBefore.get(r.keyId);
      if (gone !== undefined) stuck.push({ r, why: `it is wrapped under master key ${r.keyId}, which ${retiredWhere(gone)} retired, so someone holding that key wrote it after that` });
      else {
        const w = rewrapOne(ctx, r);
        if (Buffer.isBuffer(w)) updates.push({ r, wrapped: w });
        else stuck.push({ r, why: w });
      }
    }
    const n = await ctx.store.transaction(async (tx) => {
      await holdRotationIn(ctx, tx, claim, ctx.now());
      let changed = 0;
      for (const { r, wrapped } of updates) if (await tx.rewrapVersion(r, r.version, r.keyId, to, wrapped)) changed++;
      return changed;
    });
    rewrapped += n;
    onBatch?.(rewrapped);
    // The versions re-wrapped so far stay so; the old keys stay too, until a run finds none stuck.
    if (stuck.length > 0) throw stuckError(stuck, to);
  }
  const from = before.filter((k) => k !== to);
  await commit(ctx, async (tx, audit, now) => {
    await holdRotationIn(ctx, tx, claim, now);
    const archive = archiveKeys(ctx.keyring, parseArchive(await tx.getMeta(AUDIT_KEYS_META)), ctx.vaultId);
    await tx.setMeta(AUDIT_KEYS_META, JSON.stringify(archive));
    // In the commit that records the rotation: a token made before it is MACed again here.
    let tokensRemaced = 0;
    for (const t of await tx.listTokens()) {
      const under = tokenMacKey(ctx.keyring, t, ctx.vaultId);
      if (under === null || under === to) continue;
      await tx.setTokenMac(t.id, tokenMac(ctx.keyring.current, t, ctx.vaultId));
      tokensRemaced++;
    }
    await audit({ type: "key_rotated", actor: who, outcome: "ok", detail: { to, from: from.join(","), rewrapped, resumed, audit_keys_archived: Object.keys(archive).length, tokens_remaced: tokensRemaced } });
  });
  let retired = false;
  if (ctx.keys.writable && ctx.keys.retire && ctx.keyring.ids().length > 1) {
    const inUse = await ctx.store.keyIdsInUse();
    const keep = [to, ...inUse.filter((k) => k !== to)];
    await checkBeforeKeyWrite(ctx, claim, keep, "retire the old master keys");
    setKeyring(ctx, await ctx.keys.retire(ctx.keyring, keep));
    retired = true;
    // Written again so that the other instances sharing the store hear of it (a change-feed notice)
    // and read their key source again, dropping the retired keys too.
    await ctx.store.transaction(async (tx) => {
      await tx.setMeta(CURRENT_KEY_META, to);
      await releaseRotationIn(ctx, tx, claim, ctx.now());
    });
  }
  return { from, to, rewrapped, resumed, retired };
}
