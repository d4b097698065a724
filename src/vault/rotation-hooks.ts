/**
 * Secret rotation by a hook: a command configured for a secret (`[[rotate]]` in lessor.toml) that makes
 * the credential's new value at its issuer (a database password, an API key) and prints it. The vault
 * stores what it printed as a new version, revokes the live leases of the secret when the hook says so,
 * and audits it (`secret_rotated` with `hook: true`), all in one commit. Not to be confused with
 * master-key rotation (./rotation.ts), which re-wraps data keys and leaves values alone.
 *
 * The core does not run processes: it is handed a {@link RotationHooks} port (src/hooks/ runs the
 * command without a shell, with a time limit, a minimal environment and capped output). A hook that
 * fails (non-zero exit, signal, time limit, no output, too much output) is audited as `secret_rotated`
 * with outcome "error", and the current version stays as it was: nothing is stored, nothing revoked.
 *
 * What the command printed is never put in an error, an audit row or a log; only its program name
 * (argv[0]) and how it failed. One hook runs at a time per secret, across every process sharing the
 * store (./hook-claims.ts): a second call for the same secret while one runs is refused rather than
 * queued, since its value would be stale.
 */
import { openValue } from "../crypto/envelope.js";
import type { SecretBytes } from "../crypto/secret-bytes.js";
import { roleError } from "./access.js";
import { commit, type VaultContext } from "./context.js";
import { denied } from "./denied.js";
import { ensureKey } from "./key-reload.js";
import { retiredVersionError } from "./value-key.js";
import { rolledBackError } from "./version-floor.js";
import { CLAIM_SLACK_MS, claimHookRun, holdsHookRunIn, hookStoredIn, keepLostHookRunIn, noteHookProcess, noteHookStoredIn, releaseHookRun, releaseHookRunIn } from "./hook-claims.js";
import { addVersion, sizeError, metadataOf, notFound, type SecretMeta } from "./secrets.js";
import { VaultError } from "../base/errors.js";
import { checkRef, refString } from "../base/names.js";
import type { Identity, SecretRecord, SecretRef, VersionRecord } from "../base/types.js";
import type { StoreReader, StoreTx } from "./ports.js";

/** Which leases a successful hook revokes: "all" live leases of the secret, or "none". */
export const HOOK_REVOKE = ["all", "none"] as const;
export type HookRevoke = (typeof HOOK_REVOKE)[number];

/** What the hook's command reads on stdin: nothing (default), or the current value. */
export const HOOK_STDIN = ["none", "current"] as const;
export type HookStdin = (typeof HOOK_STDIN)[number];

/** One configured rotation hook. */
export interface RotationHook {
  readonly secret: SecretRef;
  /** The program and its arguments, run without a shell. */
  readonly command: readonly string[];
  readonly timeoutMs: number;
  readonly revoke: HookRevoke;
  readonly stdin: HookStdin;
  /** How often the daemon rotates the secret by this hook, or null for only on demand. */
  readonly everyMs: number | null;
}

/** How a hook's command failed; never holds anything it printed. */
export type HookFailure =
  | { kind: "exit"; exitCode: number }
  | { kind: "signal"; signal: string }
  | { kind: "timeout"; timeoutMs: number }
  | { kind: "not_found" }
  /** Not run: another user could change the program (its file, a directory or link on the way); `problem` names it, never output. */
  | { kind: "untrusted"; problem: string }
  | { kind: "spawn"; code: string }
  | { kind: "too_large"; maxBytes: number }
  | { kind: "empty" };

/** What running a hook gave: the new value (owned by the caller, who wipes it) or a failure. */
export type HookRunResult = { ok: true; value: Buffer } | { ok: false; failure: HookFailure };

/** The port through which the vault finds and runs rotation hooks (src/hooks/ implements it). */
export interface RotationHooks {
  /** The hook configured for `ref`, or null. */
  find(ref: SecretRef): RotationHook | null;
  /** Every configured hook (the daemon schedules those with `everyMs`). */
  list(): readonly RotationHook[];
  /**
   * Runs the hook's command. `stdin` is the current value when the hook asks for it (the runner does
   * not keep it). At most `maxBytes` of output (after one trailing newline is removed) are accepted.
   * Resolves with a failure rather than throwing for anything the command did. `onStart` is told the
   * pid of the command's process once it has started.
   */
  run(hook: RotationHook, stdin: Uint8Array | null, maxBytes: number, onStart?: (pid: number) => void): Promise<HookRunResult>;
}

/** What a hook rotation did. */
export interface HookRotationResult {
  secret: SecretMeta;
  /** The version made by the hook. */
  version: number;
  /** Live leases of the secret revoked (0 with revoke = "none"). */
  revokedLeases: number;
}

/**
 * The waits between attempts to store what a hook made when the store cannot write (`unavailable`):
 * about a quarter of a minute in all, on top of each attempt's own wait for a lock (SQLite's 5 s), and cut short at
 * {@link STORE_RETRY_BUDGET_MS}, so that the last attempt ends within the claim's minute of slack past the hook's time limit.
 */
const STORE_RETRY_DELAYS_MS = [250, 500, 1000, 2000, 4000, 8000];

/**
 * No attempt to store a hook's value starts later than this after the first: half the claim's slack,
 * leaving the other half for that attempt's own wait for the write lock.
 */
const STORE_RETRY_BUDGET_MS = CLAIM_SLACK_MS / 2;

/** The command's program name as written (arguments may hold tokens or references, so never those). */
export function hookName(hook: RotationHook): string {
  return hook.command[0] ?? "";
}

/** A sentence saying how the hook failed, and audit detail fields for it. */
function describeFailure(f: HookFailure, timeoutMs: number): { text: string; detail: Record<string, string | number> } {
  switch (f.kind) {
    case "exit":
      return { text: `failed with exit code ${f.exitCode}`, detail: { failure: "exit", exit_code: f.exitCode } };
    case "signal":
      return { text: `was stopped by signal ${f.signal}`, detail: { failure: "signal", signal: f.signal } };
    case "timeout":
      return { text: `did not finish within ${timeoutMs} ms (raise timeout in its [[rotate]] entry if it needs longer)`, detail: { failure: "timeout", timeout_ms: timeoutMs } };
    case "not_found":
      return { text: "was not found (check command in its [[rotate]] entry)", detail: { failure: "not_found" } };
    case "untrusted":
      return { text: `was not run: ${f.problem}`, detail: { failure: "untrusted" } };
    case "spawn":
      return { text: `could not be started (${f.code})`, detail: { failure: "spawn", code: f.code } };
    case "too_large":
      return { text: `printed more than ${f.maxBytes} bytes (the vault's max_secret_bytes)`, detail: { failure: "too_large", max_bytes: f.maxBytes } };
    case "empty":
      return { text: "printed nothing: it must print the new value on stdout", detail: { failure: "empty" } };
  }
}

/** Whether the hook's command started and ran (so it may have acted at the issuer), for a failure. */
function commandRan(f: HookFailure): boolean {
  return f.kind !== "not_found" && f.kind !== "untrusted" && f.kind !== "spawn";
}

/**
 * Rotates `ref` by its configured hook (admin only): runs the command, stores what it printed as a new
 * version, revokes live leases per the hook's `revoke`, and audits it. On any failure of the command
 * the attempt is audited as an error, nothing changes, and VaultError("unavailable") is thrown.
 */
export async function rotateSecretByHook(ctx: VaultContext, who: Identity, refIn: SecretRef): Promise<HookRotationResult> {
  return (await rotateByHook(ctx, who, refIn, null))!;
}

/**
 * {@link rotateSecretByHook} for a schedule: only while the secret's current version is at least
 * `everyMs` old, judged in the transaction that claims the run, so that of several daemons sharing a
 * store that each found it due, one runs the hook and the others find the new version and run
 * nothing (the issuer is asked once per period). Returns null when it was not due.
 */
export async function rotateSecretByHookIfDue(ctx: VaultContext, who: Identity, refIn: SecretRef, everyMs: number): Promise<HookRotationResult | null> {
  return rotateByHook(ctx, who, refIn, async (tx, now) => {
    const rec = await tx.getSecret(refIn);
    if (rec === null) return true; // said below, by the run's own read
    const row = await tx.getVersion(refIn, rec.currentVersion);
    return (row?.createdAt ?? rec.updatedAt) + everyMs <= now;
  });
}

/**
 * The hook rotations running on each open vault, and the vaults that are closing. A hook changes the
 * credential at its issuer, so the vault must not close under one (a daemon stopped, its in-flight
 * answers dropped after its shutdown grace): {@link settleHookRuns} is awaited by Vault.close()
 * before the store closes, and a vault that is closing starts no new hook.
 */
const hookRuns = new WeakMap<VaultContext, Set<Promise<unknown>>>();
const closingVaults = new WeakSet<VaultContext>();

/** Starts no more hook runs on `ctx`, and resolves once those running have ended (stored, audited or failed). */
export async function settleHookRuns(ctx: VaultContext): Promise<void> {
  closingVaults.add(ctx);
  const runs = hookRuns.get(ctx);
  while (runs !== undefined && runs.size > 0) await Promise.allSettled([...runs]);
}

function rotateByHook(
  ctx: VaultContext,
  who: Identity,
  refIn: SecretRef,
  due: ((tx: StoreTx, now: number) => Promise<boolean>) | null,
): Promise<HookRotationResult | null> {
  if (closingVaults.has(ctx) || ctx.closed) return Promise.reject(new VaultError("unavailable", "the vault is closing; run the rotation again once it is open"));
  let runs = hookRuns.get(ctx);
  if (runs === undefined) hookRuns.set(ctx, (runs = new Set()));
  const run = rotateByHookNow(ctx, who, refIn, due);
  const tracked = run.then(
    () => undefined,
    () => undefined,
  );
  runs.add(tracked);
  void tracked.then(() => runs.delete(tracked));
  return run;
}

async function rotateByHookNow(
  ctx: VaultContext,
  who: Identity,
  refIn: SecretRef,
  due: ((tx: StoreTx, now: number) => Promise<boolean>) | null,
): Promise<HookRotationResult | null> {
  const ref = checkRef(refIn);
  const secret = refString(ref);
  const roleErr = roleError(who, ["admin"], "rotate secrets");
  if (roleErr) await commit(ctx, async (_tx, audit) => denied(audit, who, roleErr, { agent: who.agent ?? null, secret }));
  // Only an admin, who may see every secret, gets here: a missing secret is said first (a misspelt
  // name is not told to get a [[rotate]] entry), and whether a hook exists is told to no one else.
  if (!(await ctx.store.getSecret(ref))) throw notFound(ref);
  const hook = ctx.rotationHooks?.find(ref) ?? null;
  if (hook === null)
    throw new VaultError("invalid_request", `secret ${secret} has no rotation hook; add a [[rotate]] entry for it to lessor.toml, or give the new value`);
  const owner = await claimHookRun(ctx, secret, hook.timeoutMs, due ?? undefined, { who, command: hookName(hook) });
  if (owner === null) return null;
  const claim = { secret, owner, released: false };
  try {
    return await runAndStore(ctx, who, ref, hook, claim);
  } finally {
    if (!claim.released) await releaseHookRun(ctx, secret, claim.owner);
  }
}

/** A claimed hook run; `released` once a commit ended the claim with its outcome. */
interface Claim {
  readonly secret: string;
  readonly owner: string;
  released: boolean;
}

async function runAndStore(ctx: VaultContext, who: Identity, ref: SecretRef, hook: RotationHook, claim: Claim): Promise<HookRotationResult> {
  const secret = refString(ref);
  const command = hookName(hook);
  const rec = await ctx.store.getSecret(ref);
  if (!rec) throw notFound(ref);
  const fromVersion = rec.currentVersion;
  // Read always, not only for stdin: with `rec` it is what the commit checks the secret by (sameSecret).
  const row = await ctx.store.getVersion(ref, fromVersion);
  if (!row) throw new VaultError("secret_not_found", `secret ${secret} has no version ${fromVersion}; see its history`);
  let current: SecretBytes | null = null;
  if (hook.stdin === "current") {
    await ensureKey(ctx, row.keyId); // wrapped under a key another instance rotated to: load it first
    const gone = await retiredVersionError(ctx, ctx.store, row); // never handed to a hook: not this vault's value
    if (gone) throw gone;
    const back = await rolledBackError(ctx, ctx.store, row); // an older value put back by a database edit
    if (back) throw back;
    current = openValue({ ...ref, version: fromVersion }, row, ctx.keyring, ctx.vaultId);
  }
  let result: HookRunResult;
  // The hook's process goes into the claim: if this process is killed, the claim holds while the hook runs on.
  let noted: Promise<void> = Promise.resolve();
  try {
    result = await ctx.rotationHooks!.run(hook, current === null ? null : current.expose(), ctx.limits.maxSecretBytes, (pid) => {
      noted = noteHookProcess(ctx, claim.secret, claim.owner, pid);
    });
  } finally {
    current?.wipe();
    await noted;
  }
  const base = { hook: true, command, stdin: hook.stdin, from: fromVersion };
  if (!result.ok) {
    const { text, detail } = describeFailure(result.failure, hook.timeoutMs);
    await commit(ctx, async (tx, audit, now) => {
      await audit({ type: "secret_rotated", actor: who, secret, outcome: "error", reason: `hook_failed: ${result.failure.kind}`, detail: { ...base, ...detail, command_ran: commandRan(result.failure) } });
      await releaseHookRunIn(tx, claim.secret, claim.owner, now);
    });
    claim.released = true;
    // A command that ran may have changed the credential at its issuer before it failed (a time limit
    // hit after the issuer's API answered, a crash while printing): say so, rather than let "timeout"
    // read as "nothing happened" while the vault's copy may no longer work.
    const ran = commandRan(result.failure);
    const stale = ran
      ? `; if the command changed the credential at its issuer before it stopped, the vault's copy is stale: check the issuer, and store the working value with lessor secret set`
      : "";
    throw new VaultError("unavailable", `the rotation hook of ${secret} (command ${JSON.stringify(command)}) ${text}; version ${fromVersion} stays current${stale}`);
  }
  const value = result.value;
  type Stored = { version: number; revokedLeases: number };
  /** Null: the claim was lost before this run's value was stored (and it never was); nothing stored now. */
  const storeHookValue = (): Promise<Stored | null> =>
    commit(ctx, async (tx, audit, now) => {
      if (!(await holdsHookRunIn(tx, claim.secret, claim.owner))) {
        // An earlier attempt of this run committed (it released the claim with the value) and only its
        // answer was lost: the commit that stored it said so under this run's own claim id. Any other
        // version newer than `fromVersion` (a manual rotate, another hook run) is not this run's value.
        const mine = await hookStoredIn(tx, claim.secret, claim.owner);
        if (mine !== null) return mine;
        // The claim lapsed and another process's claim cleared it: another run of this hook may hold it
        // now, and the owner may have been told to act. Nothing is stored outside the claim; the run is
        // kept as a cut-off record (the next hook claim reports it), or audited when another run holds it.
        if (!(await keepLostHookRunIn(tx, claim.secret, claim.owner, { who, command }, now)))
          await audit({ type: "secret_rotated", actor: who, secret, outcome: "error", reason: "hook_discarded: claim_lost", detail: { ...base, failure: "claim_lost" } });
        return null;
      }
      await releaseHookRunIn(tx, claim.secret, claim.owner, now);
      const err = roleError(who, ["admin"], "rotate secrets");
      if (err) return denied(audit, who, err, { agent: who.agent ?? null, secret });
      // What the hook made is discarded (the issuer has it; the vault does not): say so in the trail.
      const discarded = async (why: string, e: VaultError): Promise<VaultError> => {
        await audit({ type: "secret_rotated", actor: who, secret, outcome: "error", reason: `hook_discarded: ${why}`, detail: { ...base, failure: why } });
        return e;
      };
      const tooBig = sizeError(ctx, value.byteLength);
      if (tooBig) return discarded("too_large", tooBig);
      const existing = await tx.getSecret(ref);
      if (!existing) return discarded("secret_deleted", notFound(ref));
      if (!(await sameSecret(tx, existing, rec, row)))
        return discarded(
          "secret_deleted",
          new VaultError("secret_not_found", `secret ${secret} was deleted while its rotation hook ran (and stored again since); what the hook made was not stored`),
        );
      const version = await addVersion(ctx, tx, existing, value, who.id, now);
      const revokedLeases = hook.revoke === "all" ? await tx.revokeLeases({ secret: ref }, now, `secret rotated to version ${version}`) : 0;
      await noteHookStoredIn(tx, claim.secret, claim.owner, version, revokedLeases, now);
      await audit({
        type: "secret_rotated",
        actor: who,
        secret,
        outcome: "ok",
        detail: { ...base, version, size: value.byteLength, revoke: hook.revoke, revoked_leases: revokedLeases },
      });
      return { version, revokedLeases };
    });
  /** The loud error of a value made at the issuer and not stored; the run's claim stays as its record. */
  const notStored = (why: string, attempts: number, cause?: unknown): VaultError => {
    claim.released = true;
    return new VaultError(
      "unavailable",
      `the rotation hook of ${secret} (command ${JSON.stringify(command)}) made a new value, but the vault could not store it (${why}), tried ${attempts} times: the issuer may now hold a credential the vault does not have, and what the hook printed is gone (lessor writes it nowhere else). Check the credential at its issuer; once the vault can write again, store its value with lessor secret rotate ${secret} (the value on stdin). Version ${fromVersion} stays current; the next hook run of ${secret} reports this one`,
      cause === undefined ? undefined : { cause },
    );
  };
  try {
    // The issuer holds the value now: a store that cannot write at once (locked by another process,
    // a PostgreSQL serialization failure, a disk briefly full) is tried again for a while rather than
    // losing it, but no new attempt starts past STORE_RETRY_BUDGET_MS, so that the last one ends
    // within the claim's slack whatever each attempt's own wait (SQLite's 5 s, PostgreSQL's
    // lock_timeout). Every attempt checks in its transaction that the run still holds its claim.
    const firstAttempt = ctx.now();
    let done: Stored | null | undefined;
    for (let attempt = 0; done === undefined; attempt++) {
      try {
        done = await storeHookValue();
      } catch (e) {
        const delay = STORE_RETRY_DELAYS_MS[attempt];
        const retry = e instanceof VaultError && e.code === "unavailable" && !ctx.closed && delay !== undefined && ctx.now() + delay - firstAttempt < STORE_RETRY_BUDGET_MS;
        if (!retry) {
          // Not stored, and not likely to be soon: the claim is left in the store as the record of
          // it, so the next hook run of the secret reports it (hook_interrupted) and is refused once.
          if (e instanceof VaultError && (e.code === "unavailable" || e.code === "internal" || e.code === "audit_broken")) throw notStored(e.message, attempt + 1, e);
          throw e;
        }
        await new Promise((r) => setTimeout(r, delay));
      }
      if (done === null)
        throw notStored(
          `its claim on the secret lapsed before it could, and another lessor process cleared it; it was not stored outside the claim, where another run of the hook may be under way`,
          attempt + 1,
        );
    }
    claim.released = true;
    return { secret: await metadataOf(ctx, ref), ...(done as Stored) };
  } finally {
    value.fill(0);
  }
}

/**
 * Whether `now` (the secret under the name at commit) is the secret `then` was when its hook started,
 * whose version `from` was current then; not one deleted and stored again under the name meanwhile.
 * Names are reused and the store keeps no id, so it is told by what a new secret cannot share: its
 * creation time, versions that never count down for one secret, and the ciphertext of `from` (sealed
 * under a fresh data key and nonce, untouched by master-key rotation), when no later rotation trimmed it.
 */
async function sameSecret(tx: Pick<StoreReader, "getVersion">, now: SecretRecord, then: SecretRecord, from: VersionRecord): Promise<boolean> {
  if (now.createdAt !== then.createdAt || now.currentVersion < then.currentVersion) return false;
  const row = await tx.getVersion(now, from.version);
  return row === null || Buffer.compare(row.ciphertext, from.ciphertext) === 0;
}
