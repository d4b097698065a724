/**
 * Chooses the master key source. The first one that is configured wins:
 * 1. `LESSOR_MASTER_KEY` in the environment;
 * 2. the passphrase key store, if `passphraseFile` exists;
 * 3. the key file, if `keyFile` exists;
 * 4. the OS keychain, if the keychain marker file `keychainFile` exists (anything at that path, even a
 *    symlink, which the keychain source then refuses);
 * 5. `keyCommand`, if given and non-empty.
 * Otherwise it throws {@link NoKeySource} (VaultError "key_unavailable") saying how to set one up.
 *
 * A home with the keychain marker beside a key file or passphrase key store is refused (unless
 * LESSOR_MASTER_KEY is set): which of them holds the vault's key cannot be told, and the one not
 * chosen would be a forgotten copy of a master key, or the only one.
 */
import { existsSync } from "node:fs";
import { VaultError } from "../../base/errors.js";
import type { KeySource } from "../../vault/ports.js";
import { commandKeySource } from "./command.js";
import { envKeySource } from "./env.js";
import { fileKeySource } from "./file.js";
import { keychainKeySource, keychainMarkerPresent } from "./keychain.js";
import { passphraseKeySource, type PassphraseProvider } from "./passphrase.js";

/** Where {@link selectKeySource} may look. Paths are absolute (resolved by the config loader). */
export interface KeySourceOptions {
  /** Defaults to `process.env`. */
  env?: NodeJS.ProcessEnv;
  keyFile?: string;
  passphraseFile?: string;
  /**
   * Supplies the passphrase when the key store is passphrase-sealed; it alone decides where from
   * (the CLI: LESSOR_PASSPHRASE, else a no-echo prompt on a terminal). Without it, LESSOR_PASSPHRASE
   * is used. It is called only when the vault opens a passphrase key store.
   */
  getPassphrase?: PassphraseProvider;
  keyCommand?: readonly string[];
  keyCommandTimeoutMs?: number;
  /** Where the key command runs (the lessor home); "/" when not given. */
  keyCommandCwd?: string;
  /** The keychain marker file (`[keys] keychain_file`). */
  keychainFile?: string;
  /** Time limit for one keychain call (`[keys] keychain_timeout`). */
  keychainTimeoutMs?: number;
}

/** Returns the first configured key source (see the module comment for the order). */
export function selectKeySource(opts: KeySourceOptions): KeySource {
  const env = opts.env ?? process.env;

  const fromEnv = envKeySource(env);
  if (fromEnv !== null) return fromEnv;

  const keychain = opts.keychainFile !== undefined && keychainMarkerPresent(opts.keychainFile) ? opts.keychainFile : null;
  if (keychain !== null) {
    const beside = [opts.passphraseFile, opts.keyFile].filter((p): p is string => p !== undefined && existsSync(p));
    if (beside.length > 0) {
      throw new VaultError(
        "key_unavailable",
        `this home has both the keychain marker ${keychain} and ${beside.join(" and ")}, so which holds the master key cannot be told; move aside the one this vault was not created with (keep a backup of it), then try again`,
      );
    }
  }

  if (opts.passphraseFile !== undefined && existsSync(opts.passphraseFile)) {
    let ask = opts.getPassphrase;
    if (ask === undefined) {
      const fromVar = env["LESSOR_PASSPHRASE"];
      if (fromVar === undefined || fromVar === "") {
        throw new VaultError(
          "key_unavailable",
          `the master key is sealed with a passphrase (${opts.passphraseFile}); set LESSOR_PASSPHRASE or run the command interactively`,
        );
      }
      ask = async () => fromVar;
    }
    return passphraseKeySource(opts.passphraseFile, ask);
  }

  if (opts.keyFile !== undefined && existsSync(opts.keyFile)) return fileKeySource(opts.keyFile);

  if (keychain !== null) return keychainKeySource(keychain, opts.keychainTimeoutMs === undefined ? {} : { timeoutMs: opts.keychainTimeoutMs });

  if (opts.keyCommand !== undefined && opts.keyCommand.length > 0) {
    return commandKeySource(opts.keyCommand, {
      env,
      ...(opts.keyCommandTimeoutMs === undefined ? {} : { timeoutMs: opts.keyCommandTimeoutMs }),
      ...(opts.keyCommandCwd === undefined ? {} : { cwd: opts.keyCommandCwd }),
    });
  }

  throw new NoKeySource();
}

/**
 * The refusal of {@link selectKeySource} when no key source is configured at all. A home that still
 * holds its vault (its key lost) is told instead to put the key back: src/config/open-vault.ts.
 */
export class NoKeySource extends VaultError {
  /** VaultError's own check answers true for every VaultError (any copy of the module); this one only for this refusal. */
  static override [Symbol.hasInstance](x: unknown): boolean {
    return x instanceof VaultError && (x as { noKeySource?: unknown }).noKeySource === true;
  }

  readonly noKeySource = true;

  constructor() {
    super("key_unavailable", "no master key is configured: run `lessor init` (or `lessor init --key-source keychain`), or set LESSOR_MASTER_KEY to 64 hex characters");
  }
}
