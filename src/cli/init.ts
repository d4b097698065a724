/** `lessor init`: creates the home (0700), the key source, lessor.toml, a starter policy and the database. */
import { homeHasKey, initHome } from "../config/open-vault.js";
import { VaultError } from "../base/errors.js";
import { daemonTarget } from "../backend/daemon-target.js";
import { newPassphrase } from "./passphrase.js";

/** Runs init; prints what it created. `passphrase` is `--passphrase` (the same as `--key-source passphrase`). */
export async function init(opts: { home?: string; keySource?: string; passphrase?: boolean; env?: NodeJS.ProcessEnv }): Promise<number> {
  const env = opts.env ?? process.env;
  // Someone told to use a daemon (an agent, a CI job) must not end up with a second, empty vault.
  const target = daemonTarget(env);
  if (target)
    throw new VaultError(
      "config_invalid",
      `${target.via} is set: this environment uses the lessor daemon at ${target.where}, and a vault made here would be a separate, empty one that no grant refers to; unset ${target.via} to create a vault of your own`,
    );
  if (opts.passphrase && opts.keySource !== undefined && opts.keySource !== "passphrase")
    throw new VaultError("invalid_request", `--passphrase and --key-source ${opts.keySource} contradict each other; give one`);
  // Not given: a key file, or the key command lessor.toml names (initHome decides).
  const keySource = opts.passphrase ? "passphrase" : opts.keySource;
  if (keySource !== undefined && keySource !== "file" && keySource !== "passphrase" && keySource !== "keychain" && keySource !== "env")
    throw new VaultError("invalid_request", `--key-source must be file, passphrase, keychain or env, not ${JSON.stringify(keySource)}`);
  // A home with a key source of its own is left as it is (nothing is created): no new passphrase to ask for
  // or hold to the minimum (a vault made before it opens as it did).
  const passphrase = keySource === "passphrase" && !homeHasKey(opts.home, env) ? await newPassphrase(env) : undefined;
  const r = await initHome({ ...(opts.home ? { home: opts.home } : {}), env, ...(keySource !== undefined ? { keySource } : {}), ...(passphrase ? { passphrase } : {}) });
  if (r.created.length === 0) process.stdout.write(`lessor home ${r.home} is already set up; nothing changed\n`);
  for (const f of r.created) process.stdout.write(`created ${f}\n`);
  if (r.keychain)
    process.stdout.write(
      `the master key is in the OS keychain: service "${r.keychain.service}", account "${r.keychain.account}" (no key file was written); the keychain must be unlocked for lessor to open this vault, and a backup of that entry is a backup of the key\n`,
    );
  // No daemon is needed: the CLI and `lessor run` open the vault themselves (README's first path).
  if (r.created.length > 0)
    process.stdout.write(
      `next: store a secret (echo "$TOKEN" | lessor secret set NAME), grant it to an agent in ${r.home}/policy.toml, then: lessor run --agent AGENT -- COMMAND (a daemon, lessor serve, is optional)\n`,
    );
  return 0;
}
