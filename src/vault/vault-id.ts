/**
 * A vault's own id: 32 random hex characters `lessor init` (or the first opening of an empty store)
 * records in the metadata as `vault_id`. It is bound into every wrapped DEK (src/crypto/envelope.ts)
 * and every token MAC (./token-mac.ts), so that two vaults that share a master key (several schemas
 * of one PostgreSQL database, a key file copied between homes) cannot take each other's rows: a
 * version or a token row copied from one into the other does not open or authenticate there.
 *
 * The record is not authenticated (anyone who can write the database can change it), and need not
 * be: a vault whose id is changed or deleted opens none of its own rows and accepts none of its own
 * tokens, which is no more than replacing the whole database (docs/security.md, "Known limits").
 * A vault made before vaults had ids has none and binds nothing (null below): its rows stay as they
 * were written; docs/crypto.md says how to move to a bound vault.
 */
import { randomBytes } from "node:crypto";

/** The metadata key of the vault's id. */
export const VAULT_ID_META = "vault_id";

/** A new vault id. */
export function newVaultId(): string {
  return randomBytes(16).toString("hex");
}
