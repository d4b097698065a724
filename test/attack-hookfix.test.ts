/**
 * Attacks on what the hook-trust work (atk-hooktrust) left: the retry of a hook value's store telling
 * its own value from a version someone else stored, and storing outside a claim it lost; and the
 * #! line of an interpreter another user controls read before that interpreter was judged.
 * Real SQLite files, real hook processes, real `lessor` CLI runs.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import { VaultError } from "../src/base/errors.js";
import { runCli } from "./cli-harness.js";
import { makeHome } from "./daemon-harness.js";
import { createKeyFile, fileKeySource } from "../src/crypto/keys/file.js";
import { commandRotationHooks } from "../src/hooks/run-hook.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { Vault } from "../src/vault/vault.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";
import { q, reachableBase, seedDb, whileWriteLocked } from "./rotate-harness.js";

const CANARY = {
  old: `CANARY-old-${randomBytes(8).toString("hex")}`,
  new: `CANARY-new-${randomBytes(8).toString("hex")}`,
  manual: `CANARY-manual-${randomBytes(8).toString("hex")}`,
};
const DB = { scope: "global", name: "db" } as const;
const IS_ROOT = process.getuid?.() === 0;

const base = reachableBase("lessor-atk-hookfix-");

function dirOf(prefix: string): string {
  const d = mkdtempSync(join(base, prefix));
  chmodSync(d, 0o755);
  return d;
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 2400 && !cond(); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(cond(), `${what} never happened`);
}

const noCanary = (text: string, what: string): void => {
  for (const c of [CANARY.old, CANARY.new, CANARY.manual]) assert.ok(!text.includes(c), `a value in ${what}: ${text}`);
};

/**
 * A home whose db's hook marks its start in `started/` (one file per run, by pid), waits for `go`,
 * and prints the new value (suffixed with its pid when `perRun`).
 */
async function hookHome(perRun: boolean): Promise<{ home: string; started: string; go: string }> {
  const dir = dirOf("hook-");
  const started = join(dir, "started");
  const go = join(dir, "go");
  const hook = join(dir, "rotate-db");
  writeFileSync(
    hook,
    `#!/bin/sh\nmkdir -p ${q(started)}\ntouch ${q(started)}/$$\nwhile [ ! -e ${q(go)} ]; do sleep 0.1; done\necho ${CANARY.new}${perRun ? "-$$" : ""}\n`,
    { mode: 0o755 },
  );
  const home = await makeHome({ config: `[[rotate]]\nsecret = "db"\ncommand = ${JSON.stringify([hook])}\n` });
  await seedDb(home, CANARY.old);
  return { home, started, go };
}

/** Two vaults on `home`'s store; b stands for another daemon whose clock runs ten minutes ahead: to it, a's claim has lapsed. */
async function twoClocks(home: string): Promise<{ a: OpenVault; b: OpenVault }> {
  const env = { LESSOR_HOME: home };
  const a = await openVault({ home, env });
  const b = await openVault({ home, env, now: () => Date.now() + 600_000 });
  return { a, b };
}
type OpenVault = Awaited<ReturnType<typeof openVault>>;

/** How `p` ends, as a value (it never rejects). */
const outcomeOf = <T>(p: Promise<T>): Promise<{ ok: true; r: T } | { ok: false; e: unknown }> =>
  p.then(
    (r) => ({ ok: true as const, r }),
    (e: unknown) => ({ ok: false as const, e }),
  );

/** `b`'s hook run of db finds another run's claim lapsed, audits and clears it, and is refused once. */
const refusedClearingLapsedClaim = (b: { admin(): { rotateSecretByHook(s: typeof DB): Promise<unknown> } }): Promise<void> =>
  assert.rejects(b.admin().rotateSecretByHook(DB), (e: unknown) => e instanceof VaultError && /cut off/.test(e.message));

const runsStarted = (started: string): number => (existsSync(started) ? readdirSync(started).length : 0);

/**
 * A hookHome(perRun) on which a's hook run of db has started (its outcome: `first`) and b, whose clock
 * is ten minutes ahead, found a's claim lapsed and cleared it; runs `body`, then closes both vaults.
 */
async function withLapsedClaim(
  perRun: boolean,
  body: (x: { home: string; started: string; go: string; a: OpenVault; b: OpenVault; first: ReturnType<typeof outcomeOf<{ version: number }>> }) => Promise<void>,
): Promise<void> {
  const { home, started, go } = await hookHome(perRun);
  // Another daemon on the same store whose clock runs ten minutes ahead: to it, a's claim has lapsed.
  const { a, b } = await twoClocks(home);
  try {
    const first = outcomeOf(a.admin().rotateSecretByHook(DB));
    await until(() => runsStarted(started) === 1, "the first hook's start");
    // b's hook run finds a's claim lapsed, audits and clears it (and is refused once).
    await refusedClearingLapsedClaim(b);
    await body({ home, started, go, a, b, first });
  } finally {
    await b.close();
    await a.close();
  }
}

describe("rotation hooks: a hook's value stored after its claim was lost", () => {
  test(
    "the claim lapses (another daemon's clock is ahead) and the secret is rotated by hand meanwhile; the first store of the hook's value meets a locked database: the retry does not take the manual version for the hook's own and report success; it says loudly the issuer may hold a credential the vault does not, and the next hook run reports it",
    { timeout: 180_000 },
    () =>
      withLapsedClaim(false, async ({ home, go, a, b, first: outcome }) => {
        // The owner stores the credential's value by hand: version 2.
        await b.admin().rotateSecret(DB, CANARY.manual);
        // Another process holds the write lock past one attempt's busy wait (5 s): a's first store fails.
        await whileWriteLocked(join(home, "lessor.db"), go, () => new Promise((r) => setTimeout(r, 8000)));
        const got = await outcome;
        assert.equal(got.ok, false, `rotate by hook reported success (version ${got.ok ? got.r.version : ""}): the hook's value was dropped while the issuer holds it`);
        const e = (got as { e: unknown }).e;
        assert.ok(e instanceof VaultError && e.code === "unavailable", String(e));
        assert.match(e.message, /issuer may now hold a credential the vault does not have/);
        noCanary(e.message, "the error");
        const meta = await a.admin().getSecretMetadata(DB);
        assert.equal(meta.currentVersion, 2, "something was stored outside the claim");
        assert.equal((await a.admin().revealSecret(DB)).value.expose().toString(), CANARY.manual);
        // The next hook run of db reports the lost value rather than running over it.
        await assert.rejects(a.admin().rotateSecretByHook(DB), (x: unknown) => x instanceof VaultError && /cut off/.test(x.message));
        const rows = await a.admin().auditQuery({ limit: 1000 });
        noCanary(JSON.stringify(rows), "the audit trail");
      }),
  );

  test(
    "the claim lapses and another run of the hook claims the secret: the first run's value is not stored outside the claim while the second runs (two issuer changes, two versions); it is refused loudly and audited",
    { timeout: 180_000 },
    () =>
      withLapsedClaim(true, async ({ started, go, a, b, first }) => {
        const second = b.admin().rotateSecretByHook(DB);
        await until(() => runsStarted(started) === 2, "the second hook's start");
        writeFileSync(go, "");
        const got = await first;
        const b2 = await second;
        assert.equal(got.ok, false, `the first run stored its value outside its claim (version ${got.ok ? got.r.version : ""}) while another run held it`);
        const e = (got as { e: unknown }).e;
        assert.ok(e instanceof VaultError && e.code === "unavailable" && /issuer may now hold a credential the vault does not have/.test(e.message), String(e));
        noCanary(e.message, "the error");
        assert.equal(b2.version, 2);
        const history = await a.admin().secretHistory(DB);
        assert.equal(history.length, 2, "two versions stored by hook runs at once");
        const rows = (await a.admin().auditQuery({ limit: 1000 })).filter((x) => x.secret === "global/db" && x.reason === "hook_discarded: claim_lost");
        assert.equal(rows.length, 1, "the lost value is not in the audit trail");
      }),
  );
});

test(
  "postgres, two instances (one's clock ahead): a run whose claim lapsed and was taken by another run is not stored outside it; the other run's value is stored once, and a run that keeps its claim stores its value",
  { skip: PG_SKIP, timeout: 180_000 },
  async () => {
    const dir = dirOf("pg-");
    const keyFile = join(dir, "keys", "master.key");
    createKeyFile(keyFile);
    const started = join(dir, "started");
    const go = join(dir, "go");
    const hook = join(dir, "rotate-db");
    writeFileSync(hook, `#!/bin/sh\nmkdir -p ${q(started)}\ntouch ${q(started)}/$$\nwhile [ ! -e ${q(go)} ]; do sleep 0.1; done\necho ${CANARY.new}-$$\n`, { mode: 0o755 });
    const hooks = commandRotationHooks([{ secret: DB, command: [hook], timeoutMs: 30_000, revoke: "all", stdin: "none", everyMs: null }], { cwd: dir, env: { PATH: "/usr/bin:/bin" } });
    const pg = await testSchema();
    const open = async (skew: number) =>
      Vault.open({ store: await openPostgresStore({ url: PG_URL!, schema: pg.schema }), keys: fileKeySource(keyFile), rotationHooks: hooks, now: () => Date.now() + skew });
    const a = await open(0);
    const b = await open(600_000);
    try {
      await a.admin().storeSecret({ name: "db", value: CANARY.old });
      const first = outcomeOf(a.admin().rotateSecretByHook(DB));
      await until(() => runsStarted(started) === 1, "the first hook's start");
      await refusedClearingLapsedClaim(b);
      const second = b.admin().rotateSecretByHook(DB);
      await until(() => runsStarted(started) === 2, "the second hook's start");
      writeFileSync(go, "");
      const got = await first;
      assert.equal(got.ok, false, `the first run stored its value outside its claim (version ${got.ok ? got.r.version : ""})`);
      const e = (got as { e: unknown }).e;
      assert.ok(e instanceof VaultError && e.code === "unavailable" && /issuer may now hold a credential the vault does not have/.test(e.message), String(e));
      noCanary(e.message, "the error");
      assert.equal((await second).version, 2);
      assert.equal((await a.admin().secretHistory(DB)).length, 2);
      // A run that keeps its claim stores its value (version 3).
      const third = await b.admin().rotateSecretByHook(DB);
      assert.equal(third.version, 3);
      noCanary(JSON.stringify(await a.admin().auditQuery({ limit: 1000 })), "the audit trail");
    } finally {
      await a.close();
      await b.close();
      await pg.drop();
    }
  },
);

describe("rotation hooks: the #! line of an interpreter another user controls", () => {
  test(
    "a hook script whose #! interpreter belongs to another uid is refused naming that interpreter, and the interpreter's file is never read (its access time stays as it was): a file of theirs on a FUSE mount could block the daemon's read",
    { skip: IS_ROOT ? false : "needs root (a file of another uid)", timeout: 120_000 },
    async () => {
      const dir = dirOf("interp-");
      const interp = join(dir, "their-interp");
      writeFileSync(interp, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
      chownSync(interp, 65534, 65534);
      const script = join(dir, "rotate-db");
      writeFileSync(script, `#!${interp}\necho ${CANARY.new}\n`, { mode: 0o755 });
      const home = await makeHome({ config: `[[rotate]]\nsecret = "db"\ncommand = ${JSON.stringify([script])}\n` });
      await seedDb(home, CANARY.old);
      // An access time older than the file's change: any read updates it (relatime).
      const old = new Date("2020-01-01T00:00:00Z");
      utimesSync(interp, old, statSync(interp).mtime);
      const r = await runCli(["secret", "rotate", "db", "--hook"], { home, timeoutMs: 60_000 });
      assert.notEqual(r.code, 0, r.stdout);
      assert.ok(r.stderr.includes(interp) && /belongs to uid 65534/.test(r.stderr), r.stderr);
      noCanary(r.stdout + r.stderr, "the output");
      assert.equal(statSync(interp).atimeMs, old.getTime(), "the untrusted interpreter's #! line was read before it was judged");
    },
  );
});
