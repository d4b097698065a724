/**
 * request_lease with `access`: a lease granted and used once in one transaction (one durable commit),
 * in the core, the CLI's embedded API, and over the real daemon's Unix socket and TCP.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { inspect } from "node:util";
import { jsonlSink } from "../src/audit/jsonl-sink.js";
import { logSink } from "../src/audit/sink.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { LessorClient } from "../src/client/index.js";
import type { SqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { leaseState, REFUSED_FIRST_ACCESS } from "../src/vault/leases.js";
import type { AuditRecord } from "../src/base/types.js";
import { makeHome, RawConn, startServe, type RunningDaemon } from "./daemon-harness.js";
import { agent, codeOf, makeVault, orchestrator, tempDir } from "./helpers.js";

const CANARY = "CANARY-lease-and-access-5d0c2b91-do-not-leak";

const POLICY = `
[[rule]]
name = "gh"
effect = "allow"
agents = ["claude", "mallory"]
secrets = ["gh"]
domains = ["api.github.com", "*.githubusercontent.com"]
methods = ["GET"]
paths = ["/repos/"]
# these tests use the value in the agent itself, not through a proxy
reveal = true

[[rule]]
name = "once"
effect = "allow"
agents = ["claude"]
secrets = ["once"]
domains = ["api.example.com"]
max_uses = 1

[[rule]]
name = "wild"
effect = "allow"
agents = ["claude"]
secrets = ["wild"]
domains = ["*.example.org"]

[[rule]]
name = "db"
effect = "allow"
agents = ["claude"]
secrets = ["db"]
any_domain = true

[[rule]]
name = "canary"
effect = "allow"
agents = ["claude"]
secrets = ["canary"]
domains = ["api.example.com"]
`;

/** The audit rows after `seq`, oldest first. */
function rowsAfter(rows: AuditRecord[], seq: number): AuditRecord[] {
  return rows.filter((r) => r.seq > seq).sort((a, b) => a.seq - b.seq);
}

// Opened at the top level: helpers register their clean-up with after(), which must not run inside a before().
const dir = tempDir();
const logs: string[] = [];
const t = await makeVault({ dir, policy: POLICY, sinks: [jsonlSink(join(dir, "audit.jsonl")), logSink((l) => logs.push(l))] });

describe("core: requestLeaseAndAccess", () => {
  const admin = t.vault.admin();
  const claude = t.vault.session(agent("claude"));
  const mallory = t.vault.session(agent("mallory"));
  const commits = () => (t.store as SqliteStore).stats().commits;
  const head = async () => (await admin.status()).auditHead;
  const audit = async () => (await admin.auditQuery({ limit: 10_000 })) as AuditRecord[];

  before(async () => {
    for (const name of ["gh", "once", "wild", "db"]) await admin.storeSecret({ name, value: `value-of-${name}` });
  });

  test("one commit holds the grant, the use and both audit events; uses counts the access", async () => {
    const seq = await head();
    const c0 = commits();
    const got = await claude.requestLeaseAndAccess({ secret: "gh" });
    assert.equal(commits() - c0, 1, "exactly one durable commit");
    assert.equal(got.value.unsafeText(), "value-of-gh");
    assert.equal(got.version, 1);
    assert.equal(got.lease.uses, 1);
    assert.equal(got.lease.agent, "claude");
    const rows = rowsAfter(await audit(), seq);
    assert.deepEqual(rows.map((r) => r.type), ["lease_granted", "secret_accessed"]);
    assert.ok(rows.every((r) => r.leaseId === got.lease.id && r.outcome === "ok"));
    assert.equal(rows[1]!.domain, "api.github.com", "no domain given: the lease's first exact host");
    assert.equal(rows[0]!.time, rows[1]!.time);
    const [stored] = await admin.listLeases({ agent: "claude" });
    assert.equal(stored!.id, got.lease.id);
    assert.equal(stored!.uses, 1);
    assert.equal(leaseState(stored!), "live");
    // The lease stays usable through access_secret.
    assert.equal((await claude.accessSecret(got.lease.id, { domain: "x.githubusercontent.com", method: "get", path: "/repos/a" })).lease.uses, 2);
    assert.deepEqual(await admin.auditVerify(), { ok: true, events: await head(), headSeq: await head(), breaks: [] });
    got.value.wipe();
  });

  test("the default domain is the first exact requested host; an explicit one is used as given", async () => {
    const seq = await head();
    (await claude.requestLeaseAndAccess({ secret: "gh", domains: ["*.githubusercontent.com", "raw.githubusercontent.com"] })).value.wipe();
    (await claude.requestLeaseAndAccess({ secret: "gh" }, { domain: "objects.githubusercontent.com", method: "GET", path: "/repos/x" })).value.wipe();
    const used = rowsAfter(await audit(), seq).filter((r) => r.type === "secret_accessed");
    assert.deepEqual(used.map((r) => r.domain), ["raw.githubusercontent.com", "objects.githubusercontent.com"]);
  });

  test("an any_domain lease is used with no domain", async () => {
    const got = await claude.requestLeaseAndAccess({ secret: "db" });
    assert.equal(got.value.unsafeText(), "value-of-db");
    assert.equal(got.lease.anyDomain, true);
    got.value.wipe();
  });

  test("a policy denial grants nothing and is audited as request_lease's would be", async () => {
    const seq = await head();
    const c0 = commits();
    assert.equal(await codeOf(mallory.requestLeaseAndAccess({ secret: "once" })), "access_denied");
    assert.equal(commits() - c0, 1);
    const rows = rowsAfter(await audit(), seq);
    assert.deepEqual(rows.map((r) => [r.type, r.agent, r.secret, r.leaseId]), [["access_denied", "mallory", "global/once", null]]);
    assert.equal((await admin.listLeases({ agent: "mallory" })).length, 0);
    assert.equal(await codeOf(claude.requestLeaseAndAccess({ secret: "missing" })), "access_denied");
  });

  for (const [what, target, reason] of [
    ["a domain the lease was not granted for", { domain: "api.github.com.evil.com" }, /not one this lease was granted for/],
    ["a method the lease does not allow", { domain: "api.github.com", method: "DELETE" }, /method DELETE/],
    ["a path outside the lease's prefixes", { domain: "api.github.com", path: "/user" }, /path/],
  ] as const) {
    test(`a refused first access (${what}) leaves no usable lease: denial and revocation audited in the same commit`, async () => {
      const seq = await head();
      const c0 = commits();
      const before = (await admin.listLeases({ agent: "claude" })).length;
      assert.equal(await codeOf(claude.requestLeaseAndAccess({ secret: "gh" }, target)), "access_denied");
      assert.equal(commits() - c0, 1, "one commit");
      const rows = rowsAfter(await audit(), seq);
      assert.deepEqual(rows.map((r) => r.type), ["lease_granted", "access_denied", "lease_revoked"]);
      const id = rows[0]!.leaseId!;
      assert.ok(rows.every((r) => r.leaseId === id));
      assert.match(rows[1]!.reason ?? "", reason);
      assert.equal(rows[2]!.reason, REFUSED_FIRST_ACCESS);
      assert.equal(JSON.parse(rows[2]!.detail!).changed, 1, "the revocation changed the new lease");
      const leases = await admin.listLeases({ agent: "claude" });
      assert.equal(leases.length, before + 1);
      const l = leases.find((x) => x.id === id)!;
      assert.equal(leaseState(l), "revoked");
      assert.equal(l.uses, 0);
      assert.equal(await codeOf(claude.accessSecret(id, { domain: "api.github.com" })), "lease_revoked");
      assert.ok(!(await admin.listLeases({ agent: "claude", liveAt: Date.now() })).some((x) => x.id === id));
    });
  }

  test("a lease bound only to wildcard domains needs access.domain: refused, named, and revoked", async () => {
    const seq = await head();
    const e = await claude.requestLeaseAndAccess({ secret: "wild" }).then(
      () => assert.fail("should be refused"),
      (err: unknown) => err as { code: string; message: string },
    );
    assert.equal(e.code, "access_denied");
    assert.match(e.message, /access\.domain/);
    assert.match(e.message, /\*\.example\.org/);
    assert.deepEqual(rowsAfter(await audit(), seq).map((r) => r.type), ["lease_granted", "access_denied", "lease_revoked"]);
    const ok = await claude.requestLeaseAndAccess({ secret: "wild" }, { domain: "a.example.org" });
    assert.equal(ok.value.unsafeText(), "value-of-wild");
    ok.value.wipe();
  });

  test("another agent cannot use the lease, nor take one for the agent", async () => {
    const got = await claude.requestLeaseAndAccess({ secret: "gh" });
    got.value.wipe();
    assert.equal(await codeOf(mallory.accessSecret(got.lease.id, { domain: "api.github.com" })), "access_denied");
    assert.equal(await codeOf(mallory.requestLeaseAndAccess({ agent: "claude", secret: "gh" })), "access_denied");
    assert.equal(await codeOf(mallory.renewLease(got.lease.id)), "access_denied");
    const orch = t.vault.session(orchestrator(["other-*"]));
    assert.equal(await codeOf(orch.requestLeaseAndAccess({ agent: "claude", secret: "gh" })), "access_denied");
    assert.equal(await codeOf(orch.requestLeaseAndAccess({ secret: "gh" })), "invalid_request");
    const denials = (await audit()).filter((r) => r.type === "access_denied" && r.actorId === "test:mallory");
    assert.ok(denials.some((r) => r.leaseId === got.lease.id));
    assert.ok(denials.some((r) => /may not act as agent "claude"/.test(r.reason ?? "")));
  });

  test("a max_uses = 1 lease is used up by the combined call", async () => {
    const got = await claude.requestLeaseAndAccess({ secret: "once" });
    assert.equal(got.lease.uses, 1);
    assert.equal(got.lease.maxUses, 1);
    assert.equal(leaseState(got.lease), "exhausted");
    got.value.wipe();
    assert.equal(await codeOf(claude.accessSecret(got.lease.id, { domain: "api.example.com" })), "lease_exhausted");
    assert.ok(!(await admin.listLeases({ agent: "claude", liveAt: Date.now() })).some((x) => x.id === got.lease.id));
  });

  test("request shape errors are refused before anything is written", async () => {
    const c0 = commits();
    assert.equal(await codeOf(claude.requestLeaseAndAccess({ secret: "gh", ttl: -1 })), "invalid_request");
    assert.equal(await codeOf(claude.requestLeaseAndAccess({ secret: "gh", maxUses: 0 })), "invalid_request");
    assert.equal(commits(), c0);
  });

  test("the embedded CLI API exposes it with the client's result shape", async () => {
    const api = inProcessApi(t.vault);
    const got = await api.leaseAndAccess({ agent: "claude", secret: { name: "gh" } }, { domain: "api.github.com" });
    assert.equal(got.value.unsafeText(), "value-of-gh");
    assert.equal(got.lease.uses, 1);
    assert.equal(got.version, 1);
    got.value.wipe();
    assert.equal(await codeOf(api.leaseAndAccess({ agent: "claude", secret: "gh" }, { domain: "evil.com" })), "access_denied");
  });

  test("a canary value never reaches audit rows, sinks, logs, errors or the files", async () => {
    await admin.storeSecret({ name: "canary", value: CANARY });
    const seen: string[] = [];
    const record = (x: unknown) => seen.push(inspect(x, { depth: 10, showHidden: true }), JSON.stringify(x) ?? "", String(x));
    const got = await claude.requestLeaseAndAccess({ secret: "canary" });
    assert.equal(got.value.unsafeText(), CANARY);
    record(got);
    record(got.value);
    got.value.wipe();
    for (const attempt of [
      () => claude.requestLeaseAndAccess({ secret: "canary" }, { domain: "evil.com" }),
      () => mallory.requestLeaseAndAccess({ secret: "canary" }),
      () => mallory.accessSecret(got.lease.id, { domain: "api.example.com" }),
    ]) {
      try {
        await attempt();
        assert.fail("should be refused");
      } catch (e) {
        record(e);
        seen.push((e as Error).stack ?? "");
      }
    }
    record(await audit());
    for (const s of [...seen, ...logs]) assert.ok(!s.includes(CANARY), `canary leaked in: ${s.slice(0, 200)}`);
    await t.vault.close();
    const needles = [Buffer.from(CANARY), Buffer.from(Buffer.from(CANARY).toString("base64")), Buffer.from(Buffer.from(CANARY).toString("hex"))];
    for (const f of readdirSync(dir)) {
      const bytes = readFileSync(join(dir, f));
      for (const n of needles) assert.ok(!bytes.includes(n), `canary found in ${f}`);
    }
  });
});

describe("daemon: request_lease with access", () => {
  let d: RunningDaemon;
  let admin: LessorClient;
  let claude: LessorClient;
  let mallory: LessorClient;
  const clients: LessorClient[] = [];
  const audit = async () => admin.auditQuery({ limit: 10_000 });
  const head = async () => (await admin.status()).auditHead;

  before(async () => {
    d = await startServe(await makeHome({ config: '[server]\ntcp = "127.0.0.1:0"\n', policy: POLICY }));
    admin = await LessorClient.connect({ socketPath: d.socket });
    for (const name of ["gh", "once", "wild", "db"]) await admin.storeSecret({ name, value: `value-of-${name}` });
    await admin.storeSecret({ name: "canary", value: CANARY });
    const tc = await admin.createToken({ name: "claude", role: "agent", agent: "claude" });
    const tm = await admin.createToken({ name: "mallory", role: "agent", agent: "mallory" });
    claude = await LessorClient.connect(d.tcp!, { token: tc.token });
    mallory = await LessorClient.connect(d.tcp!, { token: tm.token });
    clients.push(admin, claude, mallory);
  });
  after(async () => {
    for (const c of clients) await c.close();
    await d?.stop();
  });

  test("one round trip returns the lease (uses = 1) and the value; both events are chained", async () => {
    const seq = await head();
    const got = await claude.leaseAndAccess({ secret: "gh" });
    assert.equal(got.value.unsafeText(), "value-of-gh");
    assert.equal(got.version, 1);
    assert.equal(got.lease.uses, 1);
    assert.equal(got.lease.agent, "claude");
    assert.equal((got.lease as unknown as Record<string, unknown>).value, undefined, "the lease object holds no value");
    const rows = (await audit()).filter((r) => r.seq > seq).sort((a, b) => a.seq - b.seq);
    const mine = rows.filter((r) => r.leaseId === got.lease.id);
    assert.deepEqual(mine.map((r) => r.type), ["lease_granted", "secret_accessed"]);
    assert.equal(mine[1]!.seq, mine[0]!.seq + 1);
    assert.equal(mine[1]!.domain, "api.github.com");
    got.value.wipe();
    assert.equal((await admin.auditVerify()).ok, true);
  });

  test("on the wire: the lease alone, or with access the value, encoding, version and lease as access_secret sends them", async () => {
    const plain = await admin.call("request_lease", { agent: "claude", secret: "db" });
    assert.ok(!("value" in plain));
    assert.equal(plain.uses, 0);
    const both = await admin.call("request_lease", { agent: "claude", secret: "db", access: {} });
    assert.ok("value" in both);
    assert.deepEqual(Object.keys(both).sort(), ["encoding", "lease", "value", "version"]);
    assert.equal(both.encoding, "base64");
    assert.equal(Buffer.from(both.value, "base64").toString(), "value-of-db");
    assert.equal(both.version, 1);
    assert.equal(both.lease.uses, 1);
    const again = await admin.call("access_secret", { leaseId: both.lease.id });
    assert.deepEqual(Object.keys(again).sort(), Object.keys(both).sort(), "one shape for every value-carrying result");
    assert.equal(await codeOf(admin.call("request_lease", { agent: "claude", secret: "db", access: { host: "x" } as never })), "invalid_request");
    const raw = await RawConn.open(d.socket);
    try {
      await raw.hello();
      raw.send({ id: "01890a5d-ac96-774b-bcce-b302099a8057", method: "request_lease", params: { agent: "claude", secret: "db", access: { domain: 5 } } });
      const [, res] = (await raw.waitFrames(2)) as [unknown, { ok: boolean; error: { code: string; message: string } }];
      assert.equal(res.ok, false);
      assert.equal(res.error.code, "invalid_request");
      assert.match(res.error.message, /access\.domain/);
    } finally {
      raw.sock.destroy();
    }
  });

  test("a refused first access leaves no usable lease; the refusal and the revocation are audited", async () => {
    const seq = await head();
    assert.equal(await codeOf(claude.leaseAndAccess({ secret: "gh" }, { domain: "api.github.com.evil.com" })), "access_denied");
    assert.equal(await codeOf(claude.leaseAndAccess({ secret: "wild" })), "access_denied");
    const rows = (await audit()).filter((r) => r.seq > seq).sort((a, b) => a.seq - b.seq);
    assert.deepEqual(rows.map((r) => r.type), ["lease_granted", "access_denied", "lease_revoked", "lease_granted", "access_denied", "lease_revoked"]);
    for (const id of [rows[0]!.leaseId!, rows[3]!.leaseId!]) {
      assert.equal(await codeOf(claude.accessSecret(id, { domain: "api.github.com" })), "lease_revoked");
    }
    assert.equal((await claude.listLeases({ live: true })).filter((l) => l.id === rows[0]!.leaseId || l.id === rows[3]!.leaseId).length, 0);
  });

  test("policy denial and another agent's identity", async () => {
    assert.equal(await codeOf(mallory.leaseAndAccess({ secret: "once" })), "access_denied");
    assert.equal(await codeOf(mallory.leaseAndAccess({ agent: "claude", secret: "gh" })), "access_denied");
    const got = await claude.leaseAndAccess({ secret: "gh" });
    got.value.wipe();
    assert.equal(await codeOf(mallory.accessSecret(got.lease.id, { domain: "api.github.com" })), "access_denied");
    assert.equal(await codeOf(mallory.revokeLease(got.lease.id)), "access_denied");
    assert.equal((await mallory.listLeases()).length, 0);
  });

  test("a max_uses = 1 lease is exhausted after the combined call", async () => {
    const got = await claude.leaseAndAccess({ secret: "once" });
    assert.equal(got.lease.uses, 1);
    assert.equal(got.lease.maxUses, 1);
    got.value.wipe();
    assert.equal(await codeOf(claude.accessSecret(got.lease.id, { domain: "api.example.com" })), "lease_exhausted");
  });

  test("a canary value never reaches the audit, the daemon's log or the database files", async () => {
    const got = await claude.leaseAndAccess({ secret: "canary" });
    assert.equal(got.value.unsafeText(), CANARY);
    got.value.wipe();
    assert.equal(await codeOf(claude.leaseAndAccess({ secret: "canary" }, { domain: "evil.com" })), "access_denied");
    assert.equal(await codeOf(mallory.leaseAndAccess({ agent: "claude", secret: "canary" })), "access_denied");
    const rows = JSON.stringify(await audit());
    assert.ok(!rows.includes(CANARY));
    await d.stop();
    assert.ok(!d.stderr().includes(CANARY), "canary in the daemon log");
    const needles = [Buffer.from(CANARY), Buffer.from(Buffer.from(CANARY).toString("base64"))];
    for (const f of readdirSync(d.home)) {
      if (!/\.(db|db-wal|jsonl|log)$/.test(f)) continue;
      const bytes = readFileSync(join(d.home, f));
      for (const n of needles) assert.ok(!bytes.includes(n), `canary found in ${f}`);
    }
  });
});
