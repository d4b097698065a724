/**
 * Secret operations: store (a new version on every write), rotate, roll back, delete, read, list and
 * history. Values are sealed with a fresh DEK per version; the version number is decided inside the
 * transaction because it is bound into the ciphertext's AAD.
 */
import { openValue, sealValue } from "../crypto/envelope.js";
import { SecretBytes } from "../crypto/secret-bytes.js";
import type { StoreTx } from "./ports.js";
import { roleError } from "./access.js";
import { commit, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { withdrawForSecret } from "./approvals.js";
import { requireKeyIn } from "./key-reload.js";
import { retiredVersionError } from "./value-key.js";
import { noteStoredVersion, rolledBackError } from "./version-floor.js";
import { VaultError } from "../base/errors.js";
import { optionalObjectParam } from "../base/shape.js";
import { checkPlainText, checkTextValue } from "../base/text.js";
import { checkRef, checkScope, refString } from "../base/names.js";
import { SECRET_KINDS, type Identity, type SecretFilter, type SecretKind, type SecretRecord, type SecretRef, type VersionRecord } from "../base/types.js";

/** What {@link storeSecret} takes. */
export interface StoreSecretParams {
  scope?: string;
  name: string;
  /** Bytes or UTF-8 text. The caller's buffer is not kept; a SecretBytes is not wiped. */
  value: Uint8Array | string | SecretBytes;
  kind?: SecretKind;
  description?: string;
  tags?: string[];
  /** "upsert" (default): create, or add a version. "create": fail with secret_exists if it exists. */
  mode?: "upsert" | "create";
}

/** Secret metadata plus its version list, as callers see it (never a value). */
export interface SecretMeta extends SecretRecord {
  versions: VersionMeta[];
}

/** One version's metadata. */
export interface VersionMeta {
  version: number;
  size: number;
  alg: string;
  keyId: string;
  createdAt: number;
  createdBy: string;
}

const MAX_DESCRIPTION = 1024;
const MAX_TAGS = 32;
const TAG_RE = /^[A-Za-z0-9_.:=-]{1,64}$/;

function versionMeta(v: VersionRecord): VersionMeta {
  return { version: v.version, size: v.size, alg: v.alg, keyId: v.keyId, createdAt: v.createdAt, createdBy: v.createdBy };
}

function checkKind(kind: unknown): SecretKind {
  if (!(SECRET_KINDS as readonly unknown[]).includes(kind))
    throw new VaultError("invalid_request", `kind ${JSON.stringify(kind)} is not known: use one of ${SECRET_KINDS.join(", ")}`);
  return kind as SecretKind;
}

/** A secret's tags, checked: at most MAX_TAGS words of letters, digits and _ . : = - (duplicates dropped). */
export function checkTags(tags: unknown): string[] {
  if (!Array.isArray(tags) || tags.length > MAX_TAGS || !tags.every((t) => typeof t === "string" && TAG_RE.test(t)))
    throw new VaultError("invalid_request", `tags must be a list of at most ${MAX_TAGS} words of letters, digits and _ . : = -`);
  return [...new Set(tags as string[])];
}

/** One line of plain text (src/base/text.ts), at most MAX_DESCRIPTION characters. */
export function checkDescription(d: unknown): string {
  return checkPlainText(d, "a description", MAX_DESCRIPTION);
}

function toBytes(value: StoreSecretParams["value"]): { bytes: Buffer; owned: boolean } {
  if (value instanceof SecretBytes) return { bytes: value.expose(), owned: false };
  if (typeof value === "string") {
    checkTextValue(value);
    return { bytes: SecretBytes.from(value).expose(), owned: true };
  }
  if (value instanceof Uint8Array) return { bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength), owned: false };
  throw new VaultError("invalid_request", "a secret value must be bytes or text");
}

/** Seals and inserts version `current + 1` of `rec` (inside a transaction), then prunes old versions. */
export async function addVersion(ctx: VaultContext, tx: StoreTx, rec: SecretRecord, bytes: Uint8Array, by: string, now: number): Promise<number> {
  const version = rec.currentVersion + 1;
  const sealed = sealValue({ scope: rec.scope, name: rec.name, version }, bytes, ctx.keyring.current, ctx.cipher, ctx.vaultId);
  await tx.putSecret({ ...rec, currentVersion: version, updatedAt: now });
  noteStoredVersion(ctx, rec, version);
  await tx.insertVersion({
    scope: rec.scope,
    name: rec.name,
    version,
    alg: sealed.alg,
    keyId: sealed.keyId,
    wrappedDek: sealed.wrappedDek,
    ciphertext: sealed.ciphertext,
    size: bytes.byteLength,
    createdAt: now,
    createdBy: by,
  });
  const keepFrom = version - ctx.limits.keepVersions + 1;
  if (keepFrom > 1) await tx.deleteVersionsBelow(rec, keepFrom);
  return version;
}

/** Throws value_too_large when `size` is over the vault's cap. */
export function checkSize(ctx: VaultContext, size: number): void {
  const err = sizeError(ctx, size);
  if (err) throw err;
}

/** The `value_too_large` error for a value of `size` bytes, or null when it fits. */
export function sizeError(ctx: VaultContext, size: number): VaultError | null {
  if (size <= ctx.limits.maxSecretBytes) return null;
  return new VaultError(
    "value_too_large",
    `the secret value is ${size} bytes; the limit is ${ctx.limits.maxSecretBytes} (raise max_secret_bytes in lessor.toml if you must)`,
  );
}

/** Stores a value as a new version (creating the secret if needed). Admin only. */
export async function storeSecret(ctx: VaultContext, who: Identity, p: StoreSecretParams): Promise<SecretMeta> {
  const ref = checkRef(p);
  const kind = p.kind === undefined ? undefined : checkKind(p.kind);
  const description = p.description === undefined ? undefined : checkDescription(p.description);
  const tags = p.tags === undefined ? undefined : checkTags(p.tags);
  const { bytes, owned } = toBytes(p.value);
  try {
    checkSize(ctx, bytes.byteLength);
    const version = await commit(ctx, async (tx, audit, now) => {
      const err = roleError(who, ["admin"], "store secrets");
      if (err) return denied(audit, who, err, { agent: who.agent ?? null, secret: refString(ref) });
      const existing = await tx.getSecret(ref);
      if (existing && p.mode === "create")
        return new VaultError("secret_exists", `secret ${refString(ref)} already exists; use rotate to add a version`);
      const rec: SecretRecord = existing
        ? { ...existing, kind: kind ?? existing.kind, description: description ?? existing.description, tags: tags ?? existing.tags }
        : { ...ref, kind: kind ?? "opaque", description: description ?? "", tags: tags ?? [], currentVersion: 0, createdAt: now, updatedAt: now };
      const v = await addVersion(ctx, tx, rec, bytes, who.id, now);
      await audit({ type: "secret_stored", actor: who, secret: refString(ref), outcome: "ok", detail: { version: v, size: bytes.byteLength, kind: rec.kind } });
      return v;
    });
    return await metadataOf(ctx, ref);
  } finally {
    if (owned) bytes.fill(0);
  }
}

/** Adds a new version to an existing secret. Admin only. */
export async function rotateSecret(ctx: VaultContext, who: Identity, refIn: SecretRef, value: StoreSecretParams["value"]): Promise<SecretMeta> {
  const ref = checkRef(refIn);
  const { bytes, owned } = toBytes(value);
  try {
    checkSize(ctx, bytes.byteLength);
    const version = await commit(ctx, async (tx, audit, now) => {
      const err = roleError(who, ["admin"], "rotate secrets");
      if (err) return denied(audit, who, err, { agent: who.agent ?? null, secret: refString(ref) });
      const existing = await tx.getSecret(ref);
      if (!existing) return notFound(ref);
      const v = await addVersion(ctx, tx, existing, bytes, who.id, now);
      await audit({ type: "secret_rotated", actor: who, secret: refString(ref), outcome: "ok", detail: { version: v, size: bytes.byteLength } });
      return v;
    });
    return await metadataOf(ctx, ref);
  } finally {
    if (owned) bytes.fill(0);
  }
}

/** Makes a new version whose value is that of an older `version`. Admin only. */
export async function rollbackSecret(ctx: VaultContext, who: Identity, refIn: SecretRef, version: number): Promise<SecretMeta> {
  const ref = checkRef(refIn);
  if (!Number.isSafeInteger(version) || version < 1) throw new VaultError("invalid_request", "version must be a whole number from 1");
  const newVersion = await commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], "roll back secrets");
    if (err) return denied(audit, who, err, { agent: who.agent ?? null, secret: refString(ref) });
    const existing = await tx.getSecret(ref);
    if (!existing) return notFound(ref);
    const old = await tx.getVersion(ref, version);
    if (!old) return new VaultError("secret_not_found", `secret ${refString(ref)} has no version ${version} (it may have been pruned); see its history`);
    requireKeyIn(ctx, old.keyId); // wrapped under a key another instance rotated to: load it first
    // Under a key a rotation retired: not this vault's value, and a rollback would seal it under the current key.
    const gone = await retiredVersionError(ctx, tx, { ...ref, version, keyId: old.keyId });
    if (gone) return denied(audit, who, gone, { agent: who.agent ?? null, secret: refString(ref) });
    const value = openValue({ ...ref, version }, old, ctx.keyring, ctx.vaultId);
    try {
      const v = await addVersion(ctx, tx, existing, value.expose(), who.id, now);
      await audit({ type: "secret_rolled_back", actor: who, secret: refString(ref), outcome: "ok", detail: { from: version, version: v } });
      return v;
    } finally {
      value.wipe();
    }
  });
  return metadataOf(ctx, ref);
}

/** Deletes a secret, all its versions, revokes its live leases and withdraws its open approvals. Admin only. */
export async function deleteSecret(ctx: VaultContext, who: Identity, refIn: SecretRef): Promise<{ revokedLeases: number }> {
  const ref = checkRef(refIn);
  return commit(ctx, async (tx, audit, now) => {
    const err = roleError(who, ["admin"], "delete secrets");
    if (err) return denied(audit, who, err, { agent: who.agent ?? null, secret: refString(ref) });
    const revoked = await tx.revokeLeases({ secret: ref }, now, "secret deleted");
    if (!(await tx.deleteSecret(ref))) return notFound(ref);
    await withdrawForSecret(tx, audit, now, who, refString(ref));
    await audit({ type: "secret_deleted", actor: who, secret: refString(ref), outcome: "ok", detail: { revoked_leases: revoked } });
    return { revokedLeases: revoked };
  });
}

/** Reads a secret's value directly (no lease), audited as a reveal. Admin only. */
export async function revealSecret(ctx: VaultContext, who: Identity, refIn: SecretRef, version?: number): Promise<{ value: SecretBytes; version: number }> {
  const ref = checkRef(refIn);
  if (version !== undefined && (!Number.isSafeInteger(version) || version < 1))
    throw new VaultError("invalid_request", "version must be a whole number from 1");
  const row = await commit(ctx, async (tx, audit) => {
    const err = roleError(who, ["admin"], "read secret values directly (agents use leases)");
    if (err) return denied(audit, who, err, { agent: who.agent ?? null, secret: refString(ref) });
    const rec = await tx.getSecret(ref);
    if (!rec) return notFound(ref);
    const v = await tx.getVersion(ref, version ?? rec.currentVersion);
    if (!v)
      return version !== undefined
        ? new VaultError("secret_not_found", `secret ${refString(ref)} has no version ${version}; see its history`)
        : new VaultError(
            "unavailable",
            `secret ${refString(ref)} names version ${rec.currentVersion} as current but the database holds no such version: the database is damaged or was edited; run lessor audit verify, and restore it from a backup`,
          );
    requireKeyIn(ctx, v.keyId); // wrapped under a key another instance rotated to: load it before the reveal is audited
    const gone = await retiredVersionError(ctx, tx, v); // written under a retired key after its retirement
    if (gone) return denied(audit, who, gone, { agent: who.agent ?? null, secret: refString(ref) });
    // The current version put back by a database edit (an older one named: the admin's choice).
    const back = version === undefined ? await rolledBackError(ctx, tx, v) : null;
    if (back) return denied(audit, who, back, { agent: who.agent ?? null, secret: refString(ref) });
    await audit({ type: "secret_revealed", actor: who, secret: refString(ref), outcome: "ok", detail: { version: v.version } });
    return v;
  });
  return { value: openValue(row, row, ctx.keyring, ctx.vaultId), version: row.version };
}

/** The secret_not_found error for `ref`. */
export function notFound(ref: SecretRef): VaultError {
  return new VaultError("secret_not_found", `secret ${refString(ref)} does not exist; list secrets to see what is stored`);
}

/** A secret's metadata and versions, read outside any transaction. */
export async function metadataOf(ctx: VaultContext, ref: SecretRef): Promise<SecretMeta> {
  const rec = await ctx.store.getSecret(ref);
  if (!rec) throw notFound(ref);
  const versions = await ctx.store.listVersions(ref);
  return { ...rec, versions: versions.map(versionMeta) };
}

/** Throws (after auditing the denial) unless `who` may read secret metadata. */
async function readRole(ctx: VaultContext, who: Identity, secret: string | null): Promise<void> {
  const err = roleError(who, ["admin", "orchestrator"], "read secret metadata");
  if (err) await commit(ctx, async (_tx, audit) => denied(audit, who, err, { agent: who.agent ?? null, secret }));
}

/** Metadata of one secret with its versions. Admin or orchestrator. */
export async function getSecretMetadata(ctx: VaultContext, who: Identity, refIn: SecretRef): Promise<SecretMeta> {
  const ref = checkRef(refIn);
  await readRole(ctx, who, refString(ref));
  return metadataOf(ctx, ref);
}

/**
 * Metadata of every matching secret (no values, no versions), sorted by scope then name. Admin or
 * orchestrator. A scope or tag no secret can have is refused (invalid_request) rather than answered with
 * an empty list. `limit` and `after` (the last secret of the previous page) page through a long list.
 */
export async function listSecrets(ctx: VaultContext, who: Identity, filter: SecretFilter = {}): Promise<SecretRecord[]> {
  optionalObjectParam(filter, "the secret filter");
  if (filter.scope !== undefined) checkScope(filter.scope);
  if (filter.tag !== undefined && (typeof filter.tag !== "string" || !TAG_RE.test(filter.tag)))
    throw new VaultError("invalid_request", "a tag is a word of 1-64 letters, digits and _ . : = -");
  const after = filter.after === undefined ? undefined : checkRef(filter.after);
  if (filter.limit !== undefined && (!Number.isInteger(filter.limit) || filter.limit < 1 || filter.limit > MAX_LIST_LIMIT))
    throw new VaultError("invalid_request", `a limit is a whole number from 1 to ${MAX_LIST_LIMIT}`);
  await readRole(ctx, who, null);
  return ctx.store.listSecrets({ ...filter, ...(after !== undefined ? { after } : {}) });
}

/** The largest page of list_secrets. */
export const MAX_LIST_LIMIT = 10_000;

/** Every kept version's metadata, oldest first. Admin or orchestrator. */
export async function secretHistory(ctx: VaultContext, who: Identity, refIn: SecretRef): Promise<VersionMeta[]> {
  return (await getSecretMetadata(ctx, who, refIn)).versions;
}
