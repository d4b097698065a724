/**
 * Attack pass on `lessor run --vault-session` and what a run's session holds (src/cli/run/vault-session.ts,
 * src/vault/leases.ts sessionError, src/server/session-sweep.ts): a run's session is bound to the leases
 * it was granted (another run of the same agent, at the same time, cannot list, use, renew, revoke or
 * trip the wire on them), and its token lives no longer than the run's process (kill -9 included).
 * Real `node dist/bin/lessor.cjs run` children in the real bwrap sandbox, against a real daemon
 * (SQLite home); the embedded session on a real vault.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { BIN } from "./cli-harness.js";
import { RawConn, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";
import { agentRule, answersIn, leaksOf, NO_BWRAP, OkConn, projectDir, REPO, sessionProbe, sessionSuite } from "./session-probe.js";
import { tempDirUntilExit } from "./helpers.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const AGENT = "runner-s";
/** The canary as it would appear in an answer: plain, or as access_secret's base64 value. */
const leaks = leaksOf(CANARY);

/** The sandboxed probe (session-probe.ts), giving up after 120 s. */
const PROBE = sessionProbe(120_000);

/**
 * Runs outside any sandbox, as the daemon's owner: makes a session token on the daemon's socket
 * (argv[2]) for agent argv[3], writes it to argv[4], then stays until killed.
 */
const MINT = String.raw`
import { writeFileSync } from "node:fs";
import { connect } from "node:net";
const [sock, agent, out] = process.argv.slice(2);
const frame = (o) => { const j = Buffer.from(JSON.stringify(o)); const h = Buffer.alloc(4); h.writeUInt32BE(j.length); return Buffer.concat([h, j]); };
const s = connect({ path: sock });
let buf = Buffer.alloc(0); let n = 0;
s.on("data", (c) => { buf = Buffer.concat([buf, c]); while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) { const m = JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString()); buf = buf.subarray(4 + buf.readUInt32BE(0)); n++;
  if (n === 1) s.write(frame({ id: "00000000-0000-4000-8000-000000000001", method: "token_create", params: { name: "minted", role: "agent", agent, ttl: "1h", session: true } }));
  else writeFileSync(out, JSON.stringify(m)); } });
s.on("connect", () => s.write(frame({ protocol: "lessor", version: 1 })));
setInterval(() => {}, 1000);
`;

const rule = agentRule(AGENT);
const POLICY = rule("open", ["open"], `domains = ["api.example.com"]\nrenewable = true\nreveal = true`);

function startRun(home: string, proj: string, reqs: unknown[], name: string): { pid: number; err: () => string; done: Promise<number | null>; kill: () => void } {
  const child = spawn(process.execPath, ["--", BIN, "run", "--agent", AGENT, "--vault-session", "--network", "none", "--ttl", "10m", "--", process.execPath, join(proj, "probe.mjs"), proj, JSON.stringify(reqs), name], {
    cwd: proj,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, LESSOR_HOME: home, NO_COLOR: "1" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let e = "";
  child.stderr!.on("data", (b: Buffer) => (e += b.toString()));
  const t = setTimeout(() => child.kill("SIGKILL"), 150_000);
  const done = new Promise<number | null>((r) => child.on("close", (code) => (clearTimeout(t), r(code))));
  return { pid: child.pid!, err: () => e, done, kill: () => child.kill("SIGKILL") };
}

async function until(what: string, f: () => boolean | Promise<boolean>, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe("lessor run --vault-session: each run's session is bound to its own leases, and ends with its process", { skip: NO_BWRAP }, () => {
  let d: RunningDaemon;
  let admin: OkConn;
  const root = tempDirUntilExit("lessor-rsatk-");

  sessionSuite(
    POLICY,
    (x) => ({ d, admin } = x),
    async (a) => void (await a.ok("store_secret", { name: "open", value: CANARY })),
  );

  const project = (name: string): string => projectDir(root, name, { "probe.mjs": PROBE });
  const answers = answersIn;
  const leaseById = async (id: string): Promise<Msg> => ((await admin.ok("list_leases", { id })) as Msg[])[0];

  test("another run of the same agent, at the same time, cannot list, use, renew, revoke or trip the wire on a lease granted to this run's session; its own leases work", async () => {
    const proj = project("two-runs");
    const r1 = startRun(d.home, proj, [{ method: "request_lease", params: { secret: "open", domains: ["api.example.com"], ttl: "7m" } }, { waitFor: "go" }], "first");
    try {
      await until("run 1's lease", () => existsSync(join(proj, "first.waiting")) || /exited|error/i.test(r1.err()));
      const first = answers(proj, "first");
      assert.equal(first[1]?.ok, true, `${JSON.stringify(first)} ${r1.err()}`);
      const l1 = first[1].result.id as string;
      const report = (leaseId: string) => ({
        method: "record_proxy_requests",
        params: { reports: [{ agent: AGENT, leaseIds: [leaseId], method: "GET", host: "evil.example", path: "/", status: 0, bytesOut: 0, bytesIn: 0, ms: 1, outcome: "tripwire", reason: "made up" }] },
      });
      const r2 = startRun(
        d.home,
        proj,
        [
          { method: "list_leases", params: { live: true } },
          { method: "access_secret", params: { leaseId: l1, domain: "api.example.com" } },
          { method: "renew_lease", params: { leaseId: l1, ttl: "9m" } },
          { method: "revoke_lease", params: { leaseId: l1, reason: "run 2 says so" } },
          report(l1),
          { method: "revoke_all_for_agent", params: { agent: AGENT, reason: "run 2 says so" } },
          // Its own lease: granted, listed, used.
          { method: "request_lease", params: { secret: "open", domains: ["api.example.com"], ttl: "3m" } },
          { method: "access_secret", params: { leaseId: "$LAST", domain: "api.example.com" } },
          { method: "list_leases", params: { live: true } },
        ],
        "second",
      );
      assert.equal(await r2.done, 0, r2.err());
      const second = answers(proj, "second");
      assert.equal(second.length, 10, JSON.stringify(second));
      const [, listed, access, renew, revoke, tripwire, revokeAll, own, ownUse, listedAfter] = second;
      assert.equal(listed.ok, true, JSON.stringify(listed));
      assert.ok(!listed.result.some((l: Msg) => l.id === l1), `run 2's session listed run 1's lease: ${JSON.stringify(listed.result)}`);
      assert.ok(!leaks(access), "run 2's session got the value through run 1's lease");
      assert.equal(access.error?.code, "access_denied", JSON.stringify(access));
      assert.equal(renew.error?.code, "access_denied", JSON.stringify(renew));
      assert.equal(revoke.error?.code, "access_denied", JSON.stringify(revoke));
      assert.equal(tripwire.error?.code, "access_denied", JSON.stringify(tripwire));
      assert.equal(revokeAll.ok, true, JSON.stringify(revokeAll));
      assert.equal(revokeAll.result.revoked, 0, "revoke_all_for_agent from run 2's session revoked leases not its own");
      assert.equal(own.ok, true, JSON.stringify(own));
      assert.equal(ownUse.ok, true, `run 2's own lease: ${JSON.stringify(ownUse)}`);
      assert.ok(leaks(ownUse), "run 2's own lease gives the value");
      assert.deepEqual(listedAfter.result.map((l: Msg) => l.id), [own.result.id]);
      // Run 1's lease is as it was granted: live, never used, never renewed.
      const after1 = await leaseById(l1);
      assert.equal(after1.revokedAt, null, `run 2's session revoked run 1's lease: ${JSON.stringify(after1)}`);
      assert.equal(after1.uses, 0);
      assert.equal(after1.renewals, 0);
      // The agent's own (non-run) identity is not a session: it still sees the run's lease.
      const tok = await admin.ok("token_create", { name: "plain-agent", role: "agent", agent: AGENT, ttl: "10m" });
      const plain = await OkConn.open(d.socket);
      try {
        plain.send({ protocol: "lessor", version: 1, token: tok.token });
        assert.equal((await plain.next()).ok, true);
        const seen = await plain.call("list_leases", { live: true });
        assert.ok(seen.result.some((l: Msg) => l.id === l1), JSON.stringify(seen));
      } finally {
        plain.close();
        await admin.ok("token_revoke", { id: tok.id });
      }
    } finally {
      writeFileSync(join(proj, "go"), "1");
      await r1.done;
    }
  });

  test("kill -9 of lessor run: the daemon revokes the run's session token, and the lease its session took, within seconds, not at the token's ttl", async () => {
    const proj = project("killed");
    const r = startRun(d.home, proj, [{ method: "request_lease", params: { secret: "open", domains: ["api.example.com"], ttl: "8m" } }, { waitFor: "never" }], "killed");
    let killed = false;
    try {
      await until("the run's lease", () => existsSync(join(proj, "killed.waiting")) || /exited|error/i.test(r.err()));
      const got = answers(proj, "killed");
      assert.equal(got[1]?.ok, true, `${JSON.stringify(got)} ${r.err()}`);
      const leaseId = got[1].result.id as string;
      const tokenId = String(got[0].identity.id).split("/")[1]!;
      const tokens = (await admin.ok("token_list")) as Msg[];
      const mine = tokens.find((t) => t.id === tokenId);
      assert.ok(mine, JSON.stringify(tokens));
      assert.equal(mine.revokedAt, null);
      assert.match(mine.name, new RegExp(`^session:${r.pid}\\.\\d+\\.[0-9a-f]{12}\\.\\d+(\\.[0-9a-f]{12})?$`), "the session token names the run's process");
      // A few sweeps pass while the run lives: its token stays.
      await sleep(2500);
      assert.equal(((await admin.ok("token_list")) as Msg[]).find((t) => t.id === tokenId)?.revokedAt, null, "the session token of a live run was revoked");
      r.kill();
      killed = true;
      await r.done;
      await until("the session token's revocation", async () => ((await admin.ok("token_list")) as Msg[]).find((t) => t.id === tokenId)?.revokedAt !== null, 30_000);
      await until("the session lease's revocation", async () => (await leaseById(leaseId)).revokedAt !== null, 30_000);
      const ev = ((await admin.ok("audit_query", { types: ["token_revoked"], limit: 20, order: "desc" })) as Msg[]).find((e) => e.detail?.token_id === tokenId);
      assert.equal(ev?.actor?.id ?? ev?.actorId, "daemon:session-sweep", JSON.stringify(ev));
    } finally {
      if (!killed) r.kill();
      await r.done;
    }
  });

  test("a session token copied out of the process that made it stops working once that process is killed (-9); its open connections are closed", async () => {
    const dir = join(root, "mint");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "mint.mjs"), MINT);
    const out = join(dir, "token.json");
    const minter = spawn(process.execPath, [join(dir, "mint.mjs"), d.socket, AGENT, out], { stdio: "ignore" });
    const gone = new Promise((r) => minter.on("close", r));
    try {
      await until("the minted token", () => existsSync(out));
      const made = JSON.parse(readFileSync(out, "utf8"));
      assert.equal(made.ok, true, JSON.stringify(made));
      assert.match(made.result.name, new RegExp(`^session:${minter.pid}\\.`));
      const token = made.result.token as string;
      const held = await RawConn.open(d.socket);
      const w = (await held.hello(token)) as Msg;
      assert.equal(w?.ok, true, JSON.stringify(w));
      assert.equal(w.identity.role, "agent");
      minter.kill("SIGKILL");
      await gone;
      assert.ok(await held.waitClosed(30_000), "a connection made with the token stayed open after its process was killed");
      await until(
        "the token's refusal",
        async () => {
          const c = await RawConn.open(d.socket);
          try {
            const again = (await c.hello(token)) as Msg;
            return again?.ok === false && again.error?.code === "unauthenticated";
          } finally {
            c.sock.destroy();
          }
        },
        30_000,
      );
    } finally {
      minter.kill("SIGKILL");
    }
  });

  test("session tokens are agent tokens only, and their name is the daemon's to give: a token asked for by another name cannot pass for one", async () => {
    const forged = await admin.call("token_create", { name: "session:1.2.abcdefabcdef", role: "agent", agent: AGENT });
    assert.equal(forged.error?.code, "invalid_request", JSON.stringify(forged));
    const asAdmin = await admin.call("token_create", { name: "x", role: "admin", session: true });
    assert.equal(asAdmin.error?.code, "invalid_request", JSON.stringify(asAdmin));
  });
});

describe("the embedded session is bound to its own leases", () => {
  test("two embedded sessions of one agent on one vault: the second neither lists nor uses the first's lease", async () => {
    const { makeVault } = await import("./helpers.js");
    const { inProcessApi } = await import("../src/backend/in-process.js");
    const { startVaultSession } = await import("../src/cli/run/vault-session.js");
    const t = await makeVault({ store: "memory", policy: POLICY });
    await t.vault.admin().storeSecret({ name: "open", value: CANARY });
    const backend = { mode: "embedded" as const, home: "/nonexistent", endpoint: null, api: inProcessApi(t.vault), vault: t.vault, close: async () => {} };
    const opts = { backend, agent: AGENT, daemon: { endpoint: { socketPath: "/nonexistent" }, expectedUid: undefined } };
    const s1 = await startVaultSession({ ...opts });
    const s2 = await startVaultSession({ ...opts });
    const c1 = await OkConn.open(s1.socket);
    const c2 = await OkConn.open(s2.socket);
    try {
      for (const c of [c1, c2]) {
        c.send({ protocol: "lessor", version: 1 });
        assert.equal((await c.next()).ok, true);
      }
      const l1 = await c1.ok("request_lease", { secret: "open", domains: ["api.example.com"] });
      const listed = await c2.ok("list_leases", {});
      assert.ok(!listed.some((l: Msg) => l.id === l1.id), JSON.stringify(listed));
      const used = await c2.call("access_secret", { leaseId: l1.id, domain: "api.example.com" });
      assert.ok(!leaks(used));
      assert.equal(used.error?.code, "access_denied", JSON.stringify(used));
      assert.equal((await c2.call("revoke_lease", { leaseId: l1.id, reason: "x" })).error?.code, "access_denied");
      // The first session's own use works.
      assert.ok(leaks(await c1.ok("access_secret", { leaseId: l1.id, domain: "api.example.com" })));
    } finally {
      c1.close();
      c2.close();
      await s1.close(async () => backend.api, async () => {});
      await s2.close(async () => backend.api, async () => {});
      await t.vault.close();
    }
  });
});

describe("a lease a person approved stays bound to the identity that asked, whatever the policy in force says later", () => {
  // The binding was keyed on the rule in force under the lease's rule name: a reload that moved the
  // approval rule to a new name and gave the old name to a rule without approval (for another
  // secret) let another identity of the agent read the value a person approved for the first one.
  test("after a reload renames the approval rule and reuses its old name, another identity of the agent cannot use the approved lease", async () => {
    const { Vault } = await import("../src/vault/vault.js");
    const { parsePolicy } = await import("../src/vault/policy.js");
    const { openSqliteStore } = await import("../src/store/sqlite/sqlite-store.js");
    const { envKeySource } = await import("../src/crypto/keys/env.js");
    const { hexKey, tempDir } = await import("./helpers.js");
    const guarded = (name: string, extra = ""): string =>
      `[[rule]]\nname = ${JSON.stringify(name)}\neffect = "allow"\nagents = ["a1"]\nsecrets = ["guarded"]\ndomains = ["api.example.com"]\napproval = "required"\n${extra}`;
    let text = guarded("guarded");
    const dir = tempDir("lessor-rsatk-bound-");
    const vault = await Vault.open({ store: openSqliteStore(join(dir, "lessor.db")), keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!, policy: async () => parsePolicy(text, "p.toml") });
    try {
      await vault.admin().storeSecret({ name: "guarded", value: CANARY });
      await vault.admin().storeSecret({ name: "other", value: "other-value" });
      const x = vault.session({ id: "token:x/00000000000000a1", role: "agent", agent: "a1", transport: "tcp" });
      const y = vault.session({ id: "token:y/00000000000000b2", role: "agent", agent: "a1", transport: "tcp" });
      const asked = await x.requestApproval({ secret: "guarded", domains: ["api.example.com"] });
      assert.equal(asked.required, true);
      if (asked.required) await vault.admin().decideApproval(asked.approval.id, true);
      const lease = await x.requestLease({ secret: "guarded", domains: ["api.example.com"] });
      await assert.rejects(y.accessSecret(lease.id, { domain: "api.example.com" }), (e: Error & { code?: string }) => e.code === "access_denied");
      // The admin renames the rule (still with approval) and gives the old name to a rule for another secret, without approval.
      text = guarded("guarded-v2") + `\n[[rule]]\nname = "guarded"\neffect = "allow"\nagents = ["a1"]\nsecrets = ["other"]\ndomains = ["api.example.com"]\n`;
      await vault.admin().reloadPolicy();
      let got: unknown = null;
      await assert.rejects(
        (async () => {
          const r = await y.accessSecret(lease.id, { domain: "api.example.com" });
          got = r.value.expose().toString();
          r.value.wipe();
        })(),
        (e: Error & { code?: string }) => e.code === "access_denied" && !leaks(e.message),
        `another identity of the agent read the value a person approved for the first: ${String(got)}`,
      );
      assert.equal(got, null);
      // The identity that asked still uses it (the rule in force for its secret still needs approval, and it was approved for it).
      const own = await x.accessSecret(lease.id, { domain: "api.example.com" });
      assert.equal(own.value.expose().toString(), CANARY);
      own.value.wipe();
      // And the binding survives a reopen (it is on the lease's row, not in memory).
      assert.equal((await vault.admin().listLeases({ id: lease.id }))[0]?.bound, true);
    } finally {
      await vault.close();
    }
  });
});

describe("the lease's bound column: PostgreSQL upgrade", { skip: (await import("./pg-helpers.js")).PG_SKIP }, () => {
  test("a schema-6 PostgreSQL vault migrates: its leases read unbound, and a new lease keeps bound = true", async () => {
    const { admin: pgAdmin, PG_URL, testSchema } = await import("./pg-helpers.js");
    const { MIGRATIONS, SCHEMA_VERSION } = await import("../src/store/postgres/schema.js");
    assert.ok(SCHEMA_VERSION >= 7);
    const { openPostgresStore } = await import("../src/store/postgres/postgres-store.js");
    const { leaseRec, T0 } = await import("./store-conformance.js");
    const { schema, drop } = await testSchema();
    try {
      // The schema as lessor left it at version 6 (before bound), with a lease written then.
      await pgAdmin(`SET search_path = ${schema}; CREATE TABLE lessor_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); ${MIGRATIONS.slice(0, 6).join("\n")}; INSERT INTO lessor_migrations (version) SELECT generate_series(1, 6);`);
      const l = leaseRec("0190a000-0000-7000-8000-0000000000a1", { issuedAt: T0 + 1 });
      await pgAdmin(
        `INSERT INTO ${schema}.leases (id, agent, scope, name, domains, any_domain, methods, paths, rule, issued_at, expires_at, max_expires_at, uses, max_uses, renewals, max_renewals, renewable, revoked_at, revoke_reason, issued_by, done) VALUES ($1, $2, $3, $4, $5, false, NULL, NULL, $6, $7, $8, $9, 0, NULL, 0, NULL, true, NULL, NULL, $10, false)`,
        [l.id, l.agent, l.scope, l.name, JSON.stringify(l.domains), l.rule, l.issuedAt, l.expiresAt, l.maxExpiresAt, l.issuedBy],
      );
      const store = await openPostgresStore({ url: PG_URL!, schema });
      try {
        assert.equal((await pgAdmin(`SELECT max(version) AS v FROM ${schema}.lessor_migrations`)).rows[0].v, SCHEMA_VERSION);
        assert.equal((await store.getLease(l.id))?.bound, false);
        const b = leaseRec("0190a000-0000-7000-8000-0000000000a2", { issuedAt: T0 + 2, bound: true });
        await store.transaction(async (tx) => tx.insertLease(b));
        assert.equal((await store.getLease(b.id))?.bound, true);
      } finally {
        await store.close();
      }
    } finally {
      await drop();
    }
  });
});

describe("the session sweep judges only the stamps of its own pid namespace", () => {
  const NO_UNSHARE =
    process.platform !== "linux" || process.getuid?.() !== 0
      ? "needs root on Linux (unshare -pf makes another pid namespace)"
      : spawnSync("unshare", ["-pf", "--mount-proc", "true"]).status !== 0
        ? "unshare -pf --mount-proc does not work here"
        : false;
  test("a daemon in another pid namespace on this kernel (a container sharing the store) leaves a live run's session token alone; one in this namespace revokes it once its process is gone", { skip: NO_UNSHARE }, async () => {
    const { processStamp, stampState } = await import("../src/server/process-stamp.js");
    const { envKeySource } = await import("../src/crypto/keys/env.js");
    const { openSqliteStore } = await import("../src/store/sqlite/sqlite-store.js");
    const { parsePolicy } = await import("../src/vault/policy.js");
    const { Vault } = await import("../src/vault/vault.js");
    const { sweepSessions } = await import("../src/server/session-sweep.js");
    const dir = mkdtempSync(join(tmpdir(), "lessor-sweep-ns-"));
    after(() => rmSync(dir, { recursive: true, force: true }));
    const db = join(dir, "lessor.db");
    const key = randomBytes(32).toString("hex");
    const open = () => Vault.open({ store: openSqliteStore(db), keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy("", "policy.toml") });
    // A process of this namespace that lives through the other namespace's sweep, then ends.
    const run = spawn("sleep", ["600"], { stdio: "ignore" });
    after(() => run.kill("SIGKILL"));
    const stamp = processStamp(run.pid)!;
    assert.equal(stampState(stamp), "alive");
    let v = await open();
    const admin = () => v.session({ id: "uid:0", role: "admin", transport: "uds" });
    const t = await admin().createToken({ name: "ignored", role: "agent", agent: AGENT, session: true, process: stamp });
    assert.equal(t.name, `session:${stamp}`);
    await v.close();
    // Another pid namespace on this kernel: the same boot id, pids of its own (our `sleep` is not
    // there, and its pid may name another process or none).
    const inner = spawnSync("unshare", ["-pf", "--mount-proc", process.execPath, "--import", "tsx", join(REPO, "test/fixtures/sweep-sessions.ts"), db], {
      cwd: REPO,
      env: { ...process.env, LESSOR_MASTER_KEY: key },
      encoding: "utf8",
      timeout: 120_000,
    });
    assert.equal(inner.status, 0, inner.stderr);
    assert.equal(inner.stdout.trim(), "0", "the sweep in another pid namespace revoked nothing");
    v = await open();
    try {
      assert.equal((await admin().listTokens()).find((x) => x.id === t.id)?.revokedAt, null, "the live run's session token is not revoked from another namespace");
      // Here, its process gone: swept.
      run.kill("SIGKILL");
      await new Promise<void>((r) => (run.exitCode !== null || run.signalCode !== null ? r() : run.once("exit", () => r())));
      assert.equal(stampState(stamp), "gone");
      assert.equal(await sweepSessions(v), 1);
      assert.notEqual((await admin().listTokens()).find((x) => x.id === t.id)?.revokedAt, null);
    } finally {
      await v.close();
    }
  });
});
