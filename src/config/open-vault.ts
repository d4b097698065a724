/**
 * The composition root for the embedded default: a vault in a home directory with the configured
 * store (SQLite unless `[vault] store` says otherwise; see store-factory.ts), the configured key
 * source, the policy file and the configured audit sinks.
 */
import { existsSync, statSync } from "node:fs";
import { storeHoldings } from "../store/copy.js";
import { createKeyFile } from "../crypto/keys/file.js";
import { createKeychainKey, keychainMarkerPresent, type KeychainEntry } from "../crypto/keys/keychain.js";
import { createPassphraseKeyStore, tuneArgon2, type Argon2Params, type PassphraseProvider } from "../crypto/keys/passphrase.js";
import { NoKeySource, selectKeySource } from "../crypto/keys/select.js";
import { jsonlSink } from "../audit/jsonl-sink.js";
import type { AuditSink, KeySource } from "../vault/ports.js";
import { VaultError } from "../base/errors.js";
import { Vault, type VaultOptions } from "../vault/vault.js";
import { writeFileExclusive } from "../fs/atomic-file.js";
import { writeError } from "../fs/write-error.js";
import { localProcesses } from "./local-processes.js";
import { STARTER_CONFIG, type Config } from "./config.js";
import { loadConfig } from "./load.js";
import { readTrustedText } from "../fs/trusted-file.js";
import { brokenPolicy, parsePolicy, type Policy } from "../vault/policy.js";
import { HOME_FILES, inHome, resolveHome } from "./home.js";
import { assertPrivateDir, assertSafeLocation, ensurePrivateDir } from "../fs/perms.js";
import { STARTER_POLICY } from "./starter-policy.js";
import { openStore } from "./store-factory.js";
import { commandRotationHooks } from "../hooks/run-hook.js";

/** How to open a home. */
export interface OpenVaultOptions {
  /** Default: LESSOR_HOME or ~/.lessor. */
  home?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Supplies the passphrase when the key store is passphrase-sealed (else LESSOR_PASSPHRASE is
   * used). Called only then, told the store's path; the CLI's prompts on a terminal (src/cli/passphrase.ts).
   */
  getPassphrase?: PassphraseProvider;
  /** Sinks in addition to the configured ones. */
  sinks?: AuditSink[];
  /** Passed through to Vault.open (tests). */
  now?: VaultOptions["now"];
  /**
   * @internal initHome: the SQLite database may be made (see StoreSettings.create), and a store that
   * names no master key yet is bound to the one loaded (see VaultOptions.bindKey).
   */
  create?: boolean;
  /** Passed through to Vault.open: a daemon starting puts its [vault] limits in force on a shared store. */
  claimLimits?: VaultOptions["claimLimits"];
}

function readPolicyText(path: string): string {
  try {
    // Owned by you, writable by no one else, a regular file: else another user could grant themselves leases.
    return readTrustedText(path, "the policy file", "policy_invalid");
  } catch (e) {
    if (e instanceof VaultError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new VaultError(
      "policy_invalid",
      code === "ENOENT" ? `the policy file ${path} does not exist; create it (see docs/policy.md) or run lessor init` : `cannot read the policy file ${path} (${code ?? "error"})`,
    );
  }
}

/** Reads and parses a policy file; throws VaultError("policy_invalid") naming the file, rule and field. */
export function loadPolicyFile(path: string): Policy {
  return parsePolicy(readPolicyText(path), path);
}

/**
 * Reads and parses a policy file, never throwing: a file that cannot be read or parsed gives a broken
 * policy (no rules; every grant is denied with the error and what to do), so that the vault still
 * opens and revoke, killswitch, audit, status and key rotation keep working. See docs/policy.md.
 */
export function readPolicyFile(path: string): Policy {
  let text: string | undefined;
  try {
    text = readPolicyText(path);
    return parsePolicy(text, path);
  } catch (e) {
    return brokenPolicy(path, e instanceof VaultError ? e.message : `${path}: could not be parsed (an unexpected ${e instanceof Error ? e.name : "error"})`, text);
  }
}

/** The master key's source for a home, as its lessor.toml (`[keys]`) and the environment say. */
export function homeKeySource(home: string, cfg: Config, env: NodeJS.ProcessEnv, getPassphrase?: PassphraseProvider): KeySource {
  return selectKeySource({
    env,
    keyFile: inHome(home, cfg.keys.file),
    passphraseFile: inHome(home, cfg.keys.passphraseFile),
    ...(getPassphrase ? { getPassphrase } : {}),
    ...(cfg.keys.command ? { keyCommand: cfg.keys.command } : {}),
    keyCommandTimeoutMs: cfg.keys.commandTimeoutMs,
    keyCommandCwd: home,
    keychainFile: inHome(home, cfg.keys.keychainFile),
    keychainTimeoutMs: cfg.keys.keychainTimeoutMs,
  });
}

/**
 * What the home's store holds of a vault, in words (src/store/copy.ts storeHoldings), with where it
 * is; null when it holds nothing (a memory store, a SQLite file missing or empty or holding no data).
 */
async function vaultHoldings(home: string, cfg: Config, env: NodeJS.ProcessEnv): Promise<{ where: string; found: string[] } | null> {
  if (cfg.store === "memory") return null;
  const path = inHome(home, HOME_FILES.database);
  if (cfg.store === "sqlite") {
    try {
      if (statSync(path).size === 0) return null;
    } catch {
      return null;
    }
  }
  const store = await openStore(cfg.store, home, { databaseUrl: cfg.databaseUrl, env });
  try {
    const found = await storeHoldings(store);
    return found.length === 0 ? null : { where: cfg.store === "sqlite" ? path : "the PostgreSQL database lessor.toml names", found };
  } finally {
    await store.close();
  }
}

/** What to do when the home holds a vault but not its key: put the key back, never make a new one. */
function putKeyBack(home: string, cfg: Config): string {
  return `put the key the vault was made with back from your backup (a key file goes to ${inHome(home, cfg.keys.file)}, mode 0600; a passphrase key store to ${inHome(home, cfg.keys.passphraseFile)}), or set LESSOR_MASTER_KEY to it (64 hex characters)`;
}

/**
 * {@link homeKeySource}; but when no key source is there while the home's store holds a vault (the
 * key file deleted, or left out of a restored backup), the refusal says to put the vault's key back,
 * not to run lessor init, whose new key could never open it.
 */
async function homeKeySourceFor(home: string, cfg: Config, env: NodeJS.ProcessEnv, getPassphrase?: PassphraseProvider): Promise<KeySource> {
  try {
    return homeKeySource(home, cfg, env, getPassphrase);
  } catch (e) {
    if (!(e instanceof NoKeySource)) throw e;
    const held = await vaultHoldings(home, cfg, env).catch(() => null);
    if (held === null) throw e;
    throw new VaultError("key_unavailable", `this home holds a vault (${held.where}: ${held.found.join(", ")}) but not its master key: ${putKeyBack(home, cfg)}. A new key from lessor init could never open this vault`);
  }
}

/** Opens the vault in a home made by {@link initHome}. */
export async function openVault(opts: OpenVaultOptions = {}): Promise<Vault> {
  const env = opts.env ?? process.env;
  const home = resolveHome(opts.home, env);
  if (!existsSync(home) || !statSync(home).isDirectory())
    throw new VaultError("key_unavailable", `there is no lessor home at ${home}; run lessor init (or set LESSOR_HOME)`);
  assertPrivateDir(home, "the lessor home");
  // As at init: a home that another user could have swapped since (a parent made writable, a symlink of theirs on the way) is not opened.
  assertSafeLocation(home, "the lessor home");
  const cfg = loadConfig(home);
  const keys = await homeKeySourceFor(home, cfg, env, opts.getPassphrase);
  const policyPath = inHome(home, cfg.policyFile);
  const store = await openStore(cfg.store, home, { databaseUrl: cfg.databaseUrl, changeFeed: cfg.changeFeed, env, ...(opts.create ? { create: true } : {}) });
  const sinks: AuditSink[] = [];
  try {
    if (cfg.auditJsonl) sinks.push(jsonlSink(inHome(home, cfg.auditJsonl)));
  } catch (e) {
    await store.close();
    throw e;
  }
  sinks.push(...(opts.sinks ?? []));
  try {
    return await Vault.open({
      store,
      keys,
      policy: async () => readPolicyFile(policyPath),
      sinks,
      cipher: cfg.cipher,
      limits: cfg.limits,
      ...(opts.now ? { now: opts.now } : {}),
      ...(opts.claimLimits ? { claimLimits: opts.claimLimits } : {}),
      ...(opts.create ? { bindKey: true } : {}),
      processes: localProcesses(),
      // [[rotate]] commands run in the home, with a minimal environment taken from this one.
      ...(cfg.rotate.length > 0 ? { rotationHooks: commandRotationHooks(cfg.rotate, { cwd: home, env }) } : {}),
    });
  } catch (e) {
    await store.close();
    for (const s of sinks) await s.close?.();
    throw e;
  }
}

/** How to initialise a home. */
export interface InitOptions {
  home?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * "file" (default): a 0600 key file; "passphrase": a key store sealed by `passphrase`; "keychain":
   * the OS keychain (a new entry, named by a marker file in the home); "env": LESSOR_MASTER_KEY.
   */
  keySource?: InitKeySource;
  passphrase?: string;
  /** Argon2id parameters; default: tuned to about 0.4 s on this machine. */
  argon2?: Argon2Params;
}

/** The key sources `lessor init` can set up. */
export type InitKeySource = "file" | "passphrase" | "keychain" | "env" | "command";

/** What {@link initHome} did. */
export interface InitResult {
  home: string;
  created: string[];
  keySource: InitKeySource;
  /** The keychain entry made for the master key (keySource "keychain", when one was made). */
  keychain?: KeychainEntry;
}

/**
 * Throws VaultError("key_unavailable") when the home's store already holds a vault (its key source
 * lost: deleted, or left out of a restored backup): a new key made beside it could never open it, and
 * would sit where the vault's own key must be put back. Says what it found and what to do.
 */
async function refuseOverVault(home: string, cfg: Config, env: NodeJS.ProcessEnv, what: string): Promise<void> {
  const held = await vaultHoldings(home, cfg, env);
  if (held === null) return;
  throw new VaultError(
    "key_unavailable",
    `this home already holds a vault (${held.where}: ${held.found.join(", ")}) but not the master key it was made with, so lessor init makes no new ${what}: a new key could never open it. Instead, ${putKeyBack(home, cfg)}. To start over with an empty vault, move ${held.where} aside first. Nothing was changed`,
  );
}

/** Writes a starter file of init's (0600, never over one that exists); a full or read-only disk is VaultError("unavailable") naming it. */
function writeStarter(path: string, text: string, what: string): void {
  try {
    writeFileExclusive(path, text, 0o600);
  } catch (e) {
    throw writeError(e, path, what);
  }
}

/** True when the home already has a key source of its own (a key file, a passphrase key store, a keychain marker). */
function hasOwnKey(home: string, cfg: Config): boolean {
  return existsSync(inHome(home, cfg.keys.file)) || existsSync(inHome(home, cfg.keys.passphraseFile)) || keychainMarkerPresent(inHome(home, cfg.keys.keychainFile));
}

/** True when `lessor init` would make no key source in the home (it has its own already): it needs no new passphrase. */
export function homeHasKey(homeIn: string | undefined, env: NodeJS.ProcessEnv): boolean {
  const home = resolveHome(homeIn, env);
  return existsSync(home) && hasOwnKey(home, loadConfig(home));
}

/**
 * Creates the home (0700), a commented lessor.toml, a starter policy, the key source and the database.
 * Files that exist are kept; an existing key file, key store or keychain marker is never overwritten,
 * and no second key source is made beside one that exists, nor a first one beside a vault that holds
 * anything (its key was lost: see refuseOverVault).
 */
export async function initHome(opts: InitOptions = {}): Promise<InitResult> {
  const env = opts.env ?? process.env;
  const home = resolveHome(opts.home, env);
  // Before anything is made: no other user may be able to swap the home (or a directory above it) for theirs.
  assertSafeLocation(home, "the lessor home");
  ensurePrivateDir(home, "the lessor home");
  const created: string[] = [];
  const configPath = inHome(home, HOME_FILES.config);
  // The defaults when lessor.toml is absent, which are what the starter file written below says: the
  // refusals come before anything is written.
  const cfg = loadConfig(home);
  const hasCommand = (cfg.keys.command?.length ?? 0) > 0;
  // A home whose lessor.toml names a key command uses it, unless another source is asked for.
  const keySource = opts.keySource ?? (hasCommand ? "command" : "file");
  const keyFile = inHome(home, cfg.keys.file);
  const storeFile = inHome(home, cfg.keys.passphraseFile);
  const markerFile = inHome(home, cfg.keys.keychainFile);
  // A home has one key source of its own: none is added beside another (see select.ts).
  const anyKey = hasOwnKey(home, cfg);
  const making = (keySource === "file" || keySource === "passphrase" || keySource === "keychain") && !anyKey;
  const what = keySource === "file" ? "key file" : keySource === "passphrase" ? "passphrase key store" : "keychain entry";
  // A source made here that the selection order (select.ts: env, passphrase, key file, keychain,
  // command) would never use, or that would silently replace the configured command, is not made.
  if (making && env["LESSOR_MASTER_KEY"])
    throw new VaultError(
      "invalid_request",
      `LESSOR_MASTER_KEY is set, so lessor would seal this vault under it and never use the ${what} init would make; unset LESSOR_MASTER_KEY, or run lessor init --key-source env to keep the key in the environment`,
    );
  if (making && hasCommand)
    throw new VaultError(
      "invalid_request",
      `lessor.toml names a key command ([keys] command), which a ${what} would silently replace; run lessor init without --key-source to use the command, or remove [keys] command`,
    );
  if (keySource === "command" && !hasCommand) throw new VaultError("invalid_request", "keySource command needs [keys] command in lessor.toml");
  if (keySource === "env" && !env["LESSOR_MASTER_KEY"]) throw new VaultError("key_unavailable", "keySource env needs LESSOR_MASTER_KEY set to 64 hex characters");
  if (keySource === "passphrase" && !anyKey && !opts.passphrase) throw new VaultError("invalid_request", "a passphrase is needed to create a passphrase key store");
  if (making) await refuseOverVault(home, cfg, env, what);
  if (!existsSync(configPath)) {
    writeStarter(configPath, STARTER_CONFIG, "the configuration file");
    created.push(configPath);
  }
  const policyPath = inHome(home, cfg.policyFile);
  if (!existsSync(policyPath)) {
    writeStarter(policyPath, STARTER_POLICY, "the policy file");
    created.push(policyPath);
  }
  let keychain: KeychainEntry | undefined;
  if (keySource === "file" && !anyKey) {
    createKeyFile(keyFile);
    created.push(keyFile);
  } else if (keySource === "passphrase" && !anyKey) {
    await createPassphraseKeyStore(storeFile, opts.passphrase!, opts.argon2 ?? (await tuneArgon2()));
    created.push(storeFile);
  } else if (keySource === "keychain" && !anyKey) {
    keychain = await createKeychainKey(markerFile, { timeoutMs: cfg.keys.keychainTimeoutMs });
    created.push(markerFile);
  }
  const dbPath = inHome(home, HOME_FILES.database);
  const existed = existsSync(dbPath);
  const vault = await openVault({ home, env, create: true, ...(opts.passphrase ? { getPassphrase: async () => opts.passphrase! } : {}) });
  await vault.close();
  if (!existed && existsSync(dbPath)) created.push(dbPath); // a memory store makes no file
  return { home, created, keySource, ...(keychain ? { keychain } : {}) };
}

export { loadConfig };
