/**
 * `lessor secret rotate NAME` by the secret's rotation hook (a `[[rotate]]` command in lessor.toml;
 * docs/cli/secret.md). The command runs where the vault is: in the daemon when one answers, else in
 * this process; either way its output goes straight into the vault and is never printed here, and
 * neither is its stderr (it may hold the old or the new value).
 *
 * Which way `rotate` goes:
 * - `--hook`: the hook (an error if NAME has none); no value option may be given with it;
 * - `--from-file`, `--random` or `--value`: that value, as before;
 * - otherwise, when NAME has a hook in the home's lessor.toml: a value piped on stdin still wins (as
 *   before); a terminal or an empty stdin runs the hook instead of prompting or failing;
 * - otherwise, as before: stdin or the prompt.
 *
 * Run in this process, the hook is watched by it (its time limit, what it prints), so SIGINT, SIGTERM
 * or SIGHUP while it runs does not end lessor at once: a hook left running alone would change the
 * issuer and print the new credential to no one. The first such signal is told on stderr and lessor
 * waits for the hook (at most its timeout) so that what it makes is stored or its failure audited; a
 * second one ends lessor, and the hook's process group is killed as lessor exits (src/hooks/run-hook.ts).
 */
import type { Cli } from "../cli.js";
import { UsageError } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { signalExitCode } from "../run/signals.js";
import { refString } from "../../base/names.js";
import type { SecretRef } from "../../base/types.js";
import { loadConfig } from "../../config/load.js";
import { resolveHome } from "../../config/home.js";
import { MAX_VALUE_INPUT, readAll, stripOneNewline, VALUE_TOO_LARGE, type ValueOptions } from "./value-source.js";

/** How `rotate` gets its new value. */
export type RotationChoice = { kind: "hook" } | { kind: "piped"; value: Buffer } | { kind: "ask" };

/** True when the home's lessor.toml has a `[[rotate]]` entry for `r` (false when it cannot be read). */
export function hasHook(cli: Cli, r: SecretRef): boolean {
  try {
    return loadConfig(resolveHome(cli.home, process.env)).rotate.some((h) => h.secret.scope === r.scope && h.secret.name === r.name);
  } catch {
    return false; // a remote daemon's home may not be here; --hook still asks it
  }
}

/** Decides between the hook and a given value (see the module comment). Reads stdin only to see whether a value was piped. */
export async function chooseRotation(cli: Cli, r: SecretRef, o: ValueOptions & { hook?: boolean }): Promise<RotationChoice> {
  const explicit = o.fromFile !== undefined || o.random === true || o.value !== undefined;
  if (o.hook) {
    if (explicit || o.keepNewline || o.allowEmpty)
      throw new UsageError("--hook runs the secret's rotation command, which makes the value itself: drop --from-file, --random, --value, --keep-newline and --allow-empty");
    return { kind: "hook" };
  }
  if (explicit || !hasHook(cli, r)) return { kind: "ask" };
  if (process.stdin.isTTY) return { kind: "hook" };
  const all = await readAll(process.stdin, { bytes: MAX_VALUE_INPUT, what: "the value on stdin", fix: VALUE_TOO_LARGE });
  if (all.length === 0) return { kind: "hook" };
  if (o.keepNewline) return { kind: "piped", value: all };
  const kept = stripOneNewline(all);
  const value = Buffer.alloc(kept.length);
  kept.copy(value);
  all.fill(0);
  if (value.length === 0 && !o.allowEmpty) throw new UsageError("the value from stdin is empty; nothing was stored (pass --allow-empty to store an empty value, or give no input to run the rotation hook)");
  return { kind: "piped", value };
}

/** Runs the hook through the backend and says what it did, never the value. */
export async function rotateByHook(cli: Cli, r: SecretRef, o: { json?: boolean }): Promise<number> {
  const { api, mode } = await cli.backend();
  const call = () => api.api.rotate_secret_hook({ scope: r.scope, name: r.name });
  // Against a daemon the hook runs there, whatever happens to this process.
  const res = mode === "embedded" ? await holdingSignals(cli, refString(r), call) : await call();
  if (o.json) {
    cli.json(res);
    return EXIT.ok;
  }
  const revoked = res.revokedLeases > 0 ? ` and revoked ${res.revokedLeases} lease${res.revokedLeases === 1 ? "" : "s"}` : "";
  cli.out(`rotated ${refString(r)} to version ${res.version} by its rotation hook${revoked}`);
  return EXIT.ok;
}

/** The signals that would end lessor while a hook it runs is still working. */
const HELD_SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** Runs `call` (a hook run in this process) with SIGINT, SIGTERM and SIGHUP held: see the module comment. */
async function holdingSignals<T>(cli: Cli, secret: string, call: () => Promise<T>): Promise<T> {
  let heard = false;
  const handler = (signal: NodeJS.Signals): void => {
    if (heard) {
      cli.err(`lessor: stopped by ${signal}; the rotation hook of ${secret} was killed mid-run: the issuer may hold a credential the vault does not, and its next hook run may have to wait out the hook's timeout plus a minute`);
      process.exit(signalExitCode(signal));
    }
    heard = true;
    cli.err(`lessor: ${signal}: waiting for the rotation hook of ${secret} to finish (at most its timeout) so that the value it makes at the issuer is stored; send it again to stop the hook now`);
  };
  for (const s of HELD_SIGNALS) process.on(s, handler);
  try {
    return await call();
  } finally {
    for (const s of HELD_SIGNALS) process.removeListener(s, handler);
  }
}
