/**
 * Master keys from the environment, for CI and containers: `LESSOR_MASTER_KEY` holds the current key
 * as 64 hex characters; `LESSOR_MASTER_KEY_PREVIOUS` optionally holds older keys (comma-separated) that
 * must stay readable during a rotation. Read-only: to rotate, set the new key as LESSOR_MASTER_KEY and
 * move the old one to LESSOR_MASTER_KEY_PREVIOUS.
 */
import type { Keyring } from "../keyring.js";
import type { KeySource } from "../../vault/ports.js";
import { VaultError } from "../../base/errors.js";
import { hexToKey, isHexKey, ringOf, wipeAll } from "./common.js";

const CURRENT = "LESSOR_MASTER_KEY";
const PREVIOUS = "LESSOR_MASTER_KEY_PREVIOUS";

/** Parses the variables into fresh key buffers, current first. Errors never echo a value. */
function readKeys(env: NodeJS.ProcessEnv): Buffer[] {
  const current = (env[CURRENT] ?? "").trim();
  if (!isHexKey(current)) {
    throw new VaultError(
      "key_unavailable",
      `${CURRENT} must be exactly 64 hex characters (a 256-bit key, e.g. from \`openssl rand -hex 32\`)`,
    );
  }
  const keys = [hexToKey(current)];
  const previous = (env[PREVIOUS] ?? "").split(",").map((s) => s.trim());
  let n = 0;
  for (const p of previous) {
    if (p === "") continue;
    n++;
    if (!isHexKey(p)) {
      wipeAll(keys);
      throw new VaultError(
        "key_unavailable",
        `${PREVIOUS} entry ${n} is not 64 hex characters; it must be a comma-separated list of 64-hex-character keys`,
      );
    }
    keys.push(hexToKey(p));
  }
  return keys;
}

/**
 * The environment key source, or null when LESSOR_MASTER_KEY is unset or empty. Throws
 * VaultError("key_unavailable") at once when a variable is set but malformed.
 */
export function envKeySource(env: NodeJS.ProcessEnv = process.env): KeySource | null {
  if ((env[CURRENT] ?? "").trim() === "") return null;
  wipeAll(readKeys(env)); // validate now, so a bad variable is reported before anything else runs
  return {
    kind: "env",
    describe: `environment variable ${CURRENT}`,
    writable: false,
    load: async (): Promise<Keyring> => ringOf(readKeys(env)),
  };
}
