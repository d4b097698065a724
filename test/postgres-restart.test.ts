/**
 * The PostgreSQL restart fault (issue 15): two real `lessor serve` processes on a private PostgreSQL
 * cluster (test/pg-cluster.ts; the machine's shared server is never stopped) under a load of clients
 * granting and using leases and storing secret versions. The server is stopped — once cleanly
 * (`pg_ctl stop -m fast`), once as a crash (`-m immediate`) — and started again. While it is down,
 * every request fails fast with `unavailable` and a message naming the server, never a stack trace or
 * the URL's password, and neither daemon exits; after the start both daemons serve again by
 * themselves, the change feed's LISTEN is back (a policy reload on A reaches B by notification within a
 * second, with polling set to a minute), every write a client got an ok for is there with the value it
 * was acknowledged with, and the audit chain verifies. And one instance cut off from the (shared)
 * server by a proxy applies what the others committed meanwhile before it serves again. Measured
 * figures are printed.
 */
import assert from "node:assert/strict";
import { copyFileSync, writeFileSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { isVaultError } from "../src/base/errors.js";
import { openVault } from "../src/config/open-vault.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import type { StoreChange } from "../src/vault/ports.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, within } from "./helpers.js";
import { PG_CLUSTER_SKIP, startCluster, type PgCluster } from "./pg-cluster.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const POLICY = grant("claude-github", ["claude"], ["github-token"], ["api.github.com"]);
const GH = { secret: "github-token", domains: ["api.github.com"] };
/** How long one request may take while the server is down. */
const FAIL_FAST_MS = 5000;
/** How long after the server is back until each daemon must serve again. */
const RECOVER_MS = 5000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One request of the load: when it ran, and how it ended. */
interface Outcome {
  daemon: "A" | "B";
  op: "lease" | "store";
  start: number;
  end: number;
  ok: boolean;
  code?: string;
  message?: string;
}

/** A write a client got an ok for. */
type Ack = { kind: "secret"; name: string; value: string; version: number } | { kind: "lease"; id: string };

const pct = (xs: number[], p: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

describe("PostgreSQL stopped and restarted under load (a private cluster)", { skip: PG_CLUSTER_SKIP }, () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  let cluster: PgCluster | undefined;
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
    cluster?.destroy();
  });

  test("requests fail fast with 'unavailable' while it is down; both daemons recover by themselves; no acknowledged write is lost; the chain verifies", { timeout: 60_000 }, async () => {
    const pg = await startCluster();
    cluster = pg;
    /** The database password rides in the URL: it must never reach a client or a log. */
    const PASSWORD = pg.password;
    const config = [
      "[vault]",
      'store = "postgres"',
      `database_url = ${JSON.stringify(pg.url)}`,
      "poll_ms = 60000", // what reaches B after the restart can only come by LISTEN/NOTIFY
      "keep_versions = 1000",
      "max_live_leases_per_agent = 1000000",
      "[server]",
      'tcp = "127.0.0.1:0"',
      "",
    ].join("\n");
    const homeA = await makeHome({ config, policy: POLICY });
    const homeB = await makeHome({ config, policy: POLICY });
    copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
    const v = await openVault({ home: homeA, env: { LESSOR_HOME: homeA } });
    await v.admin().storeSecret({ name: "github-token", value: "gh-value" });
    await v.close();
    const [a, b] = await Promise.all([startServe(homeA), startServe(homeB)]);
    cleanups.push(() => a.stop(), () => b.stop());
    const daemons: Record<"A" | "B", RunningDaemon> = { A: a, B: b };

    /** An admin (Unix socket) and an agent (TCP, token) client per daemon; neither reconnects, so a daemon exit shows. */
    const clients = async (d: RunningDaemon) => {
      const adm = await LessorClient.connect({ socketPath: d.socket }, { reconnect: false });
      cleanups.push(() => adm.close());
      const t = await adm.createToken({ name: `claude-${Math.random().toString(36).slice(2, 8)}`, role: "agent", agent: "claude" });
      const agentClient = await LessorClient.connect(d.tcp!, { token: t.token, reconnect: false });
      cleanups.push(() => agentClient.close());
      return { adm, agent: agentClient };
    };
    const on = { A: await clients(a), B: await clients(b) };

    // ---- the load: per daemon, workers alternating lease+access and a secret version ----
    const outcomes: Outcome[] = [];
    const acks: Ack[] = [];
    let running = true;
    const worker = async (d: "A" | "B", w: number): Promise<void> => {
      const name = `load-${d}-${w}`;
      for (let i = 0; running; i++) {
        const op = i % 2 === 0 ? "lease" : "store";
        const start = performance.now();
        try {
          if (op === "lease") {
            const r = await on[d].agent.leaseAndAccess(GH, { domain: "api.github.com" });
            const text = r.value.unsafeText();
            r.value.wipe();
            assert.equal(text, "gh-value");
            acks.push({ kind: "lease", id: r.lease.id });
          } else {
            const value = `${name}-${i}`;
            const r = await on[d].adm.storeSecret({ name, value });
            acks.push({ kind: "secret", name, value, version: r.currentVersion });
          }
          outcomes.push({ daemon: d, op, start, end: performance.now(), ok: true });
        } catch (e) {
          const err = e as Error & { code?: string };
          outcomes.push({ daemon: d, op, start, end: performance.now(), ok: false, code: err.code ?? "(none)", message: err.message });
          await sleep(50);
        }
      }
    };
    const load = [0, 1, 2].flatMap((w) => [worker("A", w), worker("B", w)]);

    const cycles: { mode: "fast" | "immediate"; stopped: number; started: number; stopMs: number; startMs: number }[] = [];
    await sleep(700);
    for (const mode of ["fast", "immediate"] as const) {
      const t0 = performance.now();
      pg.stop(mode);
      const stopped = performance.now();
      await sleep(1000);
      const t1 = performance.now();
      pg.start();
      const started = performance.now();
      cycles.push({ mode, stopped, started, stopMs: stopped - t0, startMs: started - t1 });
      await sleep(1500);
    }
    running = false;
    await Promise.all(load);

    // ---- while down: every request failed, fast, with 'unavailable' and a plain message ----
    const failures = outcomes.filter((o) => !o.ok);
    for (const f of failures) {
      assert.equal(f.code, "unavailable", `a ${f.op} on ${f.daemon} failed with ${f.code}: ${f.message}`);
      assert.match(f.message!, /PostgreSQL/, `the message names the database: ${f.message}`);
      assert.doesNotMatch(f.message!, /\n\s+at |node_modules|\.ts:\d+/, `no stack trace reaches the client: ${f.message}`);
      assert.ok(!f.message!.includes(PASSWORD), "the database password never reaches a client");
    }
    const report: string[] = [];
    for (const c of cycles) {
      const down = outcomes.filter((o) => o.start >= c.stopped && o.end <= c.started);
      assert.ok(down.length >= 6, `requests were made while the server was down (${c.mode}): ${down.length}`);
      for (const o of down) assert.equal(o.ok, false, `a ${o.op} on ${o.daemon} succeeded while PostgreSQL was stopped`);
      const ms = down.map((o) => o.end - o.start);
      assert.ok(Math.max(...ms) < FAIL_FAST_MS, `a request took ${Math.max(...ms).toFixed(0)} ms to fail while the server was down (${c.mode})`);
      // Recovery: from the start returning to each daemon's first success.
      const rec: string[] = [];
      for (const d of ["A", "B"] as const) {
        const first = outcomes.find((o) => o.daemon === d && o.ok && o.start >= c.started);
        assert.ok(first !== undefined, `${d} served again after the ${c.mode} restart`);
        const recMs = first.end - c.started;
        assert.ok(recMs < RECOVER_MS, `${d} served again ${recMs.toFixed(0)} ms after the ${c.mode} restart (bound ${RECOVER_MS} ms)`);
        rec.push(`${d} ${recMs.toFixed(0)} ms`);
      }
      report.push(
        `stop -m ${c.mode} (${c.stopMs.toFixed(0)} ms): ${down.length} requests while down, all 'unavailable', p50 ${pct(ms, 50).toFixed(0)} ms, max ${Math.max(...ms).toFixed(0)} ms; start ${c.startMs.toFixed(0)} ms; first success after it: ${rec.join(", ")}`,
      );
    }
    const unknown = failures.filter((f) => /may or may not have been saved/.test(f.message!)).length;
    console.log(`# ${outcomes.length} requests, ${outcomes.length - failures.length} ok, ${failures.length} 'unavailable' (${unknown} of them "the commit was sent … may or may not have been saved"); e.g. "${failures[0]?.message}"`);
    for (const r of report) console.log(`# ${r}`);

    // ---- the daemons never exited, and never logged the password ----
    for (const d of ["A", "B"] as const) {
      assert.equal(daemons[d].proc.exitCode, null, `${d} is still running`);
      assert.equal(daemons[d].proc.signalCode, null, `${d} is still running`);
      assert.ok(!daemons[d].stderr().includes(PASSWORD), `${d}'s log never carries the database password`);
      assert.ok(on[d].adm.connected && on[d].agent.connected, `${d}'s client connections survived the outage`);
    }

    // ---- the change feed is back: a revocation on A refused on B, a policy reload on A reaching B by NOTIFY ----
    const lease = await on.A.agent.requestLease(GH);
    await on.A.adm.revokeLease(lease.id, "after the restart");
    await assert.rejects(on.B.agent.accessSecret(lease.id, { domain: "api.github.com" }), (e: Error & { code?: string }) => e.code === "lease_revoked");
    const policy2 = `${POLICY}\n# v2\n`;
    writeFileSync(join(homeA, "policy.toml"), policy2, { mode: 0o600 });
    writeFileSync(join(homeB, "policy.toml"), policy2, { mode: 0o600 });
    const marks = b.stderr().length;
    await on.A.adm.reloadPolicy();
    const policyMs = await within(1000, "B reloading its policy on A's notification", () => /policy reloaded because another instance/.test(b.stderr().slice(marks)));
    const t = await on.A.adm.createToken({ name: "cross", role: "agent", agent: "claude" });
    const cross = await LessorClient.connect(b.tcp!, { token: t.token, reconnect: false });
    cleanups.push(() => cross.close());
    assert.equal((await cross.status()).identity.agent, "claude");
    await on.A.adm.revokeToken(t.id);
    const tokenMs = await within(1000, "B closing the connection of a token revoked on A", () => !cross.connected);
    console.log(`# after the restarts: policy reload on A → B reloaded ${policyMs.toFixed(0)} ms (NOTIFY; poll_ms = 60000), token revoked on A → its connection on B closed ${tokenMs.toFixed(0)} ms`);

    // ---- every acknowledged write is there ----
    const secretAcks = acks.filter((x): x is Extract<Ack, { kind: "secret" }> => x.kind === "secret");
    const leaseAcks = acks.filter((x): x is Extract<Ack, { kind: "lease" }> => x.kind === "lease");
    assert.ok(secretAcks.length > 0 && leaseAcks.length > 0);
    for (const [i, x] of secretAcks.entries()) {
      const via = i % 2 === 0 ? on.A.adm : on.B.adm;
      const got = await via.revealSecret({ name: x.name }, x.version);
      assert.equal(got.value.unsafeText(), x.value, `${x.name} v${x.version} holds the acknowledged value`);
      got.value.wipe();
    }
    const leases = new Set((await on.B.adm.listLeases({ limit: 10_000 })).map((l) => l.id));
    for (const x of leaseAcks) assert.ok(leases.has(x.id), `acknowledged lease ${x.id} is present`);

    // ---- the audit chain verifies, through each daemon ----
    for (const d of ["A", "B"] as const) {
      const r = await on[d].adm.auditVerify();
      assert.equal(r.ok, true, `the audit chain verifies through ${d}: ${JSON.stringify(r)}`);
    }
    console.log(`# acknowledged and found afterwards: ${secretAcks.length} secret versions, ${leaseAcks.length} leases; audit chain verifies`);
  });
});

/**
 * A loopback TCP proxy to `to`, for one instance's network faults: `cut` closes every connection and
 * refuses new ones (a partition that resets); `freeze` keeps connections open and drops every byte
 * (a server or network that stops answering); `heal` ends either.
 */
async function faultyProxy(to: { host: string; port: number }): Promise<{ port: number; cut(): void; freeze(): void; heal(): void; close(): Promise<void> }> {
  const socks = new Set<Socket>();
  let open = true;
  let frozen = false;
  const server = createServer((c) => {
    if (!open) return void c.destroy();
    const up = connect(to.port, to.host);
    const drop = (): void => {
      c.destroy();
      up.destroy();
      socks.delete(c);
      socks.delete(up);
    };
    socks.add(c).add(up);
    c.on("error", drop).on("close", drop);
    up.on("error", drop).on("close", drop);
    c.on("data", (d: Buffer) => void (frozen || up.write(d)));
    up.on("data", (d: Buffer) => void (frozen || c.write(d)));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const cut = (): void => {
    open = false;
    for (const s of socks) s.destroy();
    socks.clear();
  };
  return {
    port: (server.address() as { port: number }).port,
    cut,
    freeze: () => void (frozen = true),
    heal: () => {
      open = true;
      frozen = false;
    },
    close: () => {
      cut();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

describe("one instance cut off from PostgreSQL: it fails fast and catches up before it serves again", { skip: PG_SKIP }, () => {
  /** A fresh schema, and a proxy in front of the shared server that a test can cut or freeze (viaProxy: the URL through it). */
  async function behindFaultyProxy(): Promise<{ schema: string; drop: () => Promise<void>; proxy: Awaited<ReturnType<typeof faultyProxy>>; viaProxy: URL }> {
    const { schema, drop } = await testSchema();
    const u = new URL(PG_URL!);
    const proxy = await faultyProxy({ host: u.hostname, port: Number(u.port || 5432) });
    const viaProxy = new URL(PG_URL!);
    viaProxy.hostname = "127.0.0.1";
    viaProxy.port = String(proxy.port);
    return { schema, drop, proxy, viaProxy };
  }

  test("a change committed by A while B could not reach the database is applied on B before B's first transaction; B's LISTEN is back at once", async () => {
    const { schema, drop, proxy, viaProxy } = await behindFaultyProxy();
    // Polling set to a minute: only the LISTEN connection or the catch-up can bring B the change.
    const a = await openPostgresStore({ url: PG_URL!, schema, feed: { pollMs: 60_000 } });
    const b = await openPostgresStore({ url: viaProxy.toString(), schema, feed: { pollMs: 60_000 } });
    try {
      const heard: StoreChange[] = [];
      const heardMeta = (key: string): boolean => heard.some((c) => c.kind === "meta" && c.key === key);
      const unsubscribe = b.changes((c) => heard.push(c));
      await within(3000, "B listening", () => b.feedState().listening);
      await a.transaction(async (tx) => tx.setMeta("probe", "1"));
      await within(1000, "B hearing A by NOTIFY", () => heardMeta("probe"));

      proxy.cut();
      let t0 = performance.now();
      await assert.rejects(b.getMeta("probe"), (e) => isVaultError(e, "unavailable") && /PostgreSQL server at 127\.0\.0\.1:\d+\/\S+ cannot be reached/.test(e.message));
      await assert.rejects(b.transaction(async (tx) => tx.getMeta("probe")), (e) => isVaultError(e, "unavailable"));
      const failMs = performance.now() - t0;
      assert.ok(failMs < 2 * FAIL_FAST_MS, `B's requests failed in ${failMs.toFixed(0)} ms`);
      await sleep(2000); // B's LISTEN reconnects fail meanwhile, and its backoff grows (next try seconds away)
      await a.transaction(async (tx) => tx.setMeta("missed", "1"));
      assert.equal(heardMeta("missed"), false);

      proxy.heal();
      t0 = performance.now();
      let appliedFirst = false;
      await b.transaction(async () => {
        appliedFirst = heardMeta("missed");
      });
      const firstMs = performance.now() - t0;
      assert.equal(appliedFirst, true, "B applied the change it missed before it ran its first transaction");
      const listenMs = await within(1000, "B's LISTEN connection back (not after its backoff)", () => b.feedState().listening);
      await a.transaction(async (tx) => tx.setMeta("after", "1"));
      const notifyMs = await within(1000, "B hearing A by NOTIFY again", () => heardMeta("after"));
      unsubscribe();
      console.log(`# B cut off: requests failed in ${failMs.toFixed(0)} ms (two); healed: first transaction (after the catch-up) ${firstMs.toFixed(0)} ms, LISTEN back ${listenMs.toFixed(0)} ms, NOTIFY ${notifyMs.toFixed(0)} ms`);
    } finally {
      await b.close();
      await a.close();
      await proxy.close();
      await drop();
    }
  });

  test("a server that goes silent mid-transaction, before the client's own timeout: 'unavailable' at the transaction's deadline (not 'internal'), the connection dropped", { timeout: 20_000 }, async () => {
    const { schema, drop, proxy, viaProxy } = await behindFaultyProxy();
    // The transaction's deadline (1 s) comes long before the client would give a statement up (8 s + 2 s).
    const b = await openPostgresStore({ url: viaProxy.toString(), schema, statementTimeoutMs: 8000, txTimeoutMs: 1000, feed: { pollMs: 60_000 } });
    try {
      await b.transaction(async (tx) => tx.setMeta("k", "1"));
      proxy.freeze();
      const t0 = performance.now();
      await assert.rejects(
        b.transaction(async (tx) => tx.getMeta("other")),
        (e) => isVaultError(e, "unavailable") && /did not answer within 1000 ms/.test(e.message) && !/transaction functions/.test(e.message),
      );
      const took = performance.now() - t0;
      assert.ok(took < 1000 + 1500, `failed after ${took.toFixed(0)} ms`);
      proxy.heal();
      // The silent connection was dropped, not reused: the next transaction does not wait behind it.
      const t1 = performance.now();
      await b.transaction(async (tx) => tx.setMeta("k", "2"));
      assert.ok(performance.now() - t1 < 3000, `served again after ${(performance.now() - t1).toFixed(0)} ms`);
      assert.equal(await b.getMeta("k"), "2");
    } finally {
      proxy.heal();
      await b.close();
      await proxy.close();
      await drop();
    }
  });

  test("a server that stops answering without closing the connection: requests fail with 'unavailable' once the client's timeouts pass, not never", { timeout: 20_000 }, async () => {
    const { schema, drop, proxy, viaProxy } = await behindFaultyProxy();
    // statement_timeout 500 ms: the client gives an unanswered statement up 2 s after it; connecting, after 1 s.
    const b = await openPostgresStore({ url: viaProxy.toString(), schema, statementTimeoutMs: 500, connectTimeoutMs: 1000, feed: { pollMs: 60_000 } });
    try {
      await b.transaction(async (tx) => tx.setMeta("k", "1"));
      proxy.freeze();
      let t0 = performance.now();
      await assert.rejects(b.getMeta("k"), (e) => isVaultError(e, "unavailable") && /no answer within/.test(e.message));
      const readMs = performance.now() - t0;
      t0 = performance.now();
      await assert.rejects(b.transaction(async (tx) => tx.setMeta("k", "2")), (e) => isVaultError(e, "unavailable") && /no answer within/.test(e.message));
      const txMs = performance.now() - t0;
      for (const [what, took] of [["read", readMs], ["transaction", txMs]] as const)
        assert.ok(took < 500 + 2000 + 1000 + 1500, `the ${what} failed after ${took.toFixed(0)} ms`);
      proxy.heal();
      await b.transaction(async (tx) => tx.setMeta("k", "3"));
      assert.equal(await b.getMeta("k"), "3");
      console.log(`# server silent: a read failed after ${readMs.toFixed(0)} ms, a transaction after ${txMs.toFixed(0)} ms (statement_timeout 500 ms + 2 s; connect timeout 1 s); served again once it answered`);
    } finally {
      proxy.heal();
      await b.close();
      await proxy.close();
      await drop();
    }
  });
});
