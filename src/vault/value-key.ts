/**
 * The master key a stored version is wrapped under, judged before the version is opened: never one a
 * completed rotation retired. A rotation re-wraps every version under the new key before its
 * `key_rotated` event, so a version still under a retired key after that was written by whoever holds
 * the retired (perhaps leaked) key, not by this vault: opening it would hand out a value the leak let
 * anyone choose (src/audit/retired.ts; tokens are judged the same way, src/vault/tokens.ts).
 *
 * Cheap where it matters: a version under the keyring's current key needs no look-up (the current key
 * itself is checked against the retirements by src/vault/key-reload.ts). A retirement is for good, so
 * the keys found retired are kept per vault; a key not found retired is looked up again each time
 * (another process sharing the store may have retired it since), which happens only for versions
 * under an older key: during a rotation, or for such a row.
 */
import { retiredKeys, retiredWhere } from "../audit/retired.js";
import type { AuditReader } from "../audit/reader.js";
import { refString } from "../base/names.js";
import { VaultError } from "../base/errors.js";
import type { VaultContext } from "./context.js";

/** Per vault: the master keys found retired, with the seq of the event that retired each (0: the archive only). */
const knownRetired = new WeakMap<VaultContext, Map<string, number>>();

/** The seq of the rotation that retired `keyId` (0: only the archive shows it), or undefined when none did. */
export async function retiredAt(ctx: VaultContext, r: AuditReader, keyId: string): Promise<number | undefined> {
  let known = knownRetired.get(ctx);
  const seen = known?.get(keyId);
  if (seen !== undefined) return seen;
  const found = await retiredKeys(r, ctx.auditKeys);
  if (known === undefined) knownRetired.set(ctx, (known = new Map()));
  for (const [id, seq] of found) if (!known.has(id)) known.set(id, seq);
  return found.get(keyId);
}

/** Where a version lives, and the key that wraps its DEK. */
export interface VersionPlace {
  scope: string;
  name: string;
  version: number;
  keyId: string;
}

/**
 * The refusal to open version `v` when its key was retired by a completed rotation, or null. Names the
 * secret, the version and the key (none of them secret), never the value or its ciphertext.
 */
export async function retiredVersionError(ctx: VaultContext, r: AuditReader, v: VersionPlace): Promise<VaultError | null> {
  if (v.keyId === ctx.keyring.current.id) return null;
  const seq = await retiredAt(ctx, r, v.keyId);
  return seq === undefined ? null : retiredVersion(v, seq);
}

/** The refusal for version `v`, wrapped under a key retired at event `seq` (0: the archive shows it). */
export function retiredVersion(v: VersionPlace, seq: number): VaultError {
  const ref = refString(v);
  return new VaultError(
    "decrypt_failed",
    `version ${v.version} of secret ${ref} is wrapped under master key ${v.keyId}, which ${retiredWhere(seq)} retired: it was written after that by someone holding the retired key, not by this vault, and is not opened. Check the trail (lessor audit verify), then remove the secret (lessor secret rm ${ref}) and store it again, or restore lessor.db from a backup`,
  );
}
