/** `lessor init`: creates the home (0700), the key source, lessor.toml, a starter policy and the database. */
import { initHome } from "../config/open-vault.js";
import { VaultError } from "../vault/errors.js";

/** Runs init; prints what it created. */
export async function init(opts: { home?: string; keySource?: string }): Promise<number> {
  const keySource = opts.keySource ?? "file";
  if (keySource !== "file" && keySource !== "passphrase" && keySource !== "env")
    throw new VaultError("invalid_request", `--key-source must be file, passphrase or env, not ${JSON.stringify(keySource)}`);
  let passphrase: string | undefined;
  if (keySource === "passphrase") {
    passphrase = process.env["LESSOR_PASSPHRASE"];
    if (!passphrase) throw new VaultError("invalid_request", "set LESSOR_PASSPHRASE to the passphrase to seal the master key with (an interactive prompt comes with the full CLI)");
  }
  const r = await initHome({ ...(opts.home ? { home: opts.home } : {}), keySource, ...(passphrase ? { passphrase } : {}) });
  if (r.created.length === 0) process.stdout.write(`lessor home ${r.home} is already set up; nothing changed\n`);
  for (const f of r.created) process.stdout.write(`created ${f}\n`);
  if (r.created.length > 0) process.stdout.write(`next: edit ${r.home}/policy.toml, then run: lessor serve\n`);
  return 0;
}
