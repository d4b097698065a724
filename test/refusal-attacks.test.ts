/**
 * Attacks on refused calls audited in aggregate (src/vault/refusals.ts, src/vault/audit-window.ts):
 * can a hostile agent hide what it probed, make counted refusals vanish (shutdown, store failures,
 * window boundaries, concurrency), grow the trail without bound, leak a value, or slow others?
 * In-process SQLite vaults for the exact cases; a real `lessor serve` for the end-to-end ones.
 */
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import Database from "better-sqlite3";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { after, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { isVaultError } from "../src/base/errors.js";
import type { AuditRecord, Identity } from "../src/base/types.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import type { Store } from "../src/vault/ports.js";
import { Vault } from "../src/vault/vault.js";
import type { Limits } from "../src/vault/context.js";
import { BURST, MAX_SECRETS } from "../src/vault/refusals.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { grant, hexKey, makeVault, orchestrator, tempDir } from "./helpers.js";

const POLICY =
  grant("gh", ["claude", "bob"], ["github-token"], ["api.github.com"]) + grant("canary", ["claude"], ["canary"], ["api.github.com"]);
const HOUR = 3_600_000;

const codeOf = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return "ok";
  } catch (e) {
    return isVaultError(e) ? e.code : String(e);
  }
};
const REFUSED = new Set(["lease_not_found", "access_denied", "rate_limited", "secret_not_found"]);

const detailOf = (r: AuditRecord): Record<string, unknown> => (r.detail === null ? {} : (JSON.parse(r.detail) as Record<string, unknown>));
/** Refusals the rows stand for: a row with detail.count stands for that many, any other for one. */
const total = (rows: AuditRecord[]): number => rows.reduce<number>((n, r) => n + (typeof detailOf(r).count === "number" ? (detailOf(r).count as number) : 1), 0);

const mallory: Identity = { id: "token:mallory", role: "agent", agent: "claude", transport: "tcp" };

async function deniedRows(v: Vault): Promise<AuditRecord[]> {
  return (await v.admin().auditQuery({ types: ["access_denied"], limit: 100_000 })) as AuditRecord[];
}

/** Everything the trail says about refusals, as one string (rows, reasons, details). */
function trailText(rows: AuditRecord[]): string {
  return rows.map((r) => JSON.stringify(r, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("hex") : v))).join("\n");
}

/** Spends mallory's burst with refusals naming nothing (guessed lease ids). */
async function spendBurst(s: ReturnType<Vault["session"]>): Promise<void> {
  for (let i = 0; i < BURST; i++) assert.equal(await codeOf(s.accessSecret(randomUUID())), "lease_not_found");
}

/**
 * A vault on a SQLite file whose store can be made to hold or fail its next transaction: `hold()`
 * returns a function that lets the held transaction go on (or fail with `fail`).
 */
async function gatedVault(limits: Partial<Limits>) {
  const dir = tempDir();
  const key = hexKey();
  const dbPath = join(dir, "lessor.db");
  let gate: { reached: () => void; wait: Promise<Error | null> } | null = null;
  const open = async (gated: boolean) => {
    const real = openSqliteStore(dbPath);
    const store = gated
      ? (new Proxy(real, {
          get(t, p) {
            if (p === "transaction")
              return async (fn: Parameters<Store["transaction"]>[0]) => {
                const g = gate;
                if (g !== null) {
                  gate = null;
                  g.reached();
                  const err = await g.wait;
                  if (err !== null) throw err;
                }
                return t.transaction(fn);
              };
            const v = Reflect.get(t, p, t) as unknown;
            return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(t) : v;
          },
        }) as Store)
      : real;
    return Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(POLICY, "p.toml"), limits });
  };
  const vault = await open(true);
  return {
    vault,
    reopen: () => open(false),
    /** Holds the next transaction; resolves `reached` once it is held; `release(err)` lets it go (or fail). */
    hold() {
      let reached!: () => void;
      let release!: (e: Error | null) => void;
      const reachedP = new Promise<void>((r) => (reached = r));
      gate = { reached, wait: new Promise<Error | null>((r) => (release = r)) };
      return { reached: reachedP, release };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// What the attacker probed must stay visible
// ---------------------------------------------------------------------------------------------

test("hide: past the burst, decoy secret names do not push the secret that matters out of the trail; past the list's cap the cut is counted", async () => {
  // Sixteen decoys (the old cap) and then the probe: the probe is named.
  {
    const { vault } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
    const m = vault.session(mallory);
    await spendBurst(m);
    for (let i = 0; i < 16; i++) await codeOf(m.requestLease({ secret: `decoy-${i}`, domains: ["api.github.com"] }));
    // The probe that matters: a secret no grant gives claude.
    assert.equal(await codeOf(m.requestLease({ secret: "prod-db-password", domains: ["api.github.com"] })), "access_denied");
    await vault.flushRefusals();
    const rows = (await deniedRows(vault)).filter((r) => r.actorId === mallory.id);
    assert.equal(total(rows), BURST + 16 + 1, "every refusal is counted");
    const text = trailText(rows);
    assert.ok(
      text.includes("prod-db-password"),
      `the probed secret global/prod-db-password appears nowhere in the trail; the summary names only: ${String(detailOf(rows[rows.length - 1]!).secrets)}`,
    );
    await vault.close();
  }
  // As many decoys as a summary lists, then the probe: the summary says it left one out.
  {
    const { vault } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
    const m = vault.session(mallory);
    await spendBurst(m);
    for (let i = 0; i < MAX_SECRETS; i++) await codeOf(m.requestLease({ secret: `decoy-${i}`, domains: ["api.github.com"] }));
    await codeOf(m.requestLease({ secret: "prod-db-password", domains: ["api.github.com"] }));
    await vault.flushRefusals();
    const rows = (await deniedRows(vault)).filter((r) => r.actorId === mallory.id);
    assert.equal(total(rows), BURST + MAX_SECRETS + 1, "every refusal is counted");
    const d = detailOf(rows[rows.length - 1]!);
    assert.equal(String(d.secrets).split(",").length, MAX_SECRETS);
    assert.equal(d.secrets_omitted, 1, `the cut is not said: ${JSON.stringify(d)}`);
    await vault.close();
  }
});

test("hide: past the burst, the domain an agent tried to send a secret to is still recorded", async () => {
  const { vault } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
  const m = vault.session(mallory);
  await spendBurst(m);
  // Exfiltration probe: a granted secret, to a domain no rule allows.
  assert.equal(await codeOf(m.requestLease({ secret: "github-token", domains: ["exfil.attacker.example"] })), "access_denied");
  await vault.flushRefusals();
  const rows = (await deniedRows(vault)).filter((r) => r.actorId === mallory.id);
  assert.equal(total(rows), BURST + 1);
  assert.ok(trailText(rows).includes("exfil.attacker.example"), `the domain probed is in no row: ${JSON.stringify(rows.at(-1))}`);
});

test("hide: past the burst, an agent's attempt at admin-only calls (create a token, reveal a value) is counted under the step it tried, not as any policy denial", async () => {
  const { vault } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
  const m = vault.session(mallory);
  // Control: within the burst, the row says what was attempted.
  assert.equal(await codeOf(m.createToken({ name: "x", role: "admin" })), "access_denied");
  const first = (await deniedRows(vault)).at(-1)!;
  assert.match(String(first.reason), /may not create tokens/);
  for (let i = 1; i < BURST; i++) await codeOf(m.accessSecret(randomUUID()));
  // Past the burst: privilege escalation attempts.
  assert.equal(await codeOf(m.createToken({ name: "backdoor", role: "admin" })), "access_denied");
  assert.equal(await codeOf(m.revealSecret({ scope: "global", name: "github-token" })), "access_denied");
  await vault.flushRefusals();
  const summary = (await deniedRows(vault)).at(-1)!;
  assert.equal(detailOf(summary).count, 2);
  const text = trailText([summary]);
  assert.ok(
    /create tokens|token_create|reveal|read secret values/.test(text),
    `an agent tried to mint an admin token and to reveal a value; the trail says only: ${summary.reason} ${summary.detail}`,
  );
});

test("hide: past the burst, an orchestrator's refusals keep the agent they were made for", async () => {
  const { vault } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
  const orch = vault.session({ ...orchestrator(["claude", "bob"]), transport: "tcp" });
  for (let i = 0; i < BURST; i++) await codeOf(orch.accessSecret(randomUUID()));
  // For bob, a secret no rule gives bob.
  assert.equal(await codeOf(orch.requestLease({ agent: "bob", secret: "canary", domains: ["api.github.com"] })), "access_denied");
  await vault.flushRefusals();
  const summary = (await deniedRows(vault)).at(-1)!;
  assert.equal(detailOf(summary).count, 1);
  assert.ok(summary.agent === "bob" || trailText([summary]).includes("bob"), `the agent acted for is lost: agent=${summary.agent} detail=${summary.detail}`);
});

// ---------------------------------------------------------------------------------------------
// Accounting: every refusal counted exactly, nothing hidden, no value
// ---------------------------------------------------------------------------------------------

test("count: a successful access between refusals is its own row; refusals add up; the chain verifies", async () => {
  const { vault } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
  const admin = vault.admin();
  await admin.storeSecret({ name: "github-token", value: "ghp_" + "c".repeat(36) });
  const m = vault.session(mallory);
  for (let i = 0; i < 40; i++) await codeOf(m.accessSecret(randomUUID()));
  const lease = await m.requestLease({ secret: "github-token", domains: ["api.github.com"] });
  await m.accessSecret(lease.id, { domain: "api.github.com" });
  for (let i = 0; i < 10; i++) await codeOf(m.accessSecret(randomUUID()));
  await vault.flushRefusals();
  const all = (await admin.auditQuery({ limit: 10_000 })) as AuditRecord[];
  const ok = all.filter((r) => r.actorId === mallory.id && r.outcome === "ok");
  assert.deepEqual(ok.map((r) => r.type), ["lease_granted", "secret_accessed"]);
  assert.equal(total(all.filter((r) => r.type === "access_denied")), 50);
  assert.equal((await admin.auditVerify()).ok, true);
});

test("count: thousands of concurrent refusals from several identities across many short windows add up exactly, and the chain verifies", async () => {
  const { vault, reopen } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: 40 } });
  const ids = [0, 1, 2].map((i) => vault.session({ id: `token:m${i}`, role: "agent", agent: "claude", transport: "tcp" }));
  const refused = new Map<string, number>();
  for (let round = 0; round < 30; round++) {
    const calls: Promise<void>[] = [];
    for (const [i, s] of ids.entries())
      for (let k = 0; k < 30; k++)
        calls.push(
          codeOf(k % 3 === 0 ? s.requestLease({ secret: `n${k}`, domains: ["api.github.com"] }) : s.accessSecret(randomUUID())).then((c) => {
            assert.ok(REFUSED.has(c), c);
            refused.set(`token:m${i}`, (refused.get(`token:m${i}`) ?? 0) + 1);
          }),
        );
    await Promise.all(calls);
    // Land some rounds right on window boundaries.
    await sleep(round % 4 === 0 ? 40 : round % 4 === 1 ? 39 : 3);
  }
  const again = (await reopen()).vault; // close() writes what is still counted
  const rows = await deniedRows(again);
  for (const [id, n] of refused) assert.equal(total(rows.filter((r) => r.actorId === id)), n, `${id}: every refusal counted`);
  assert.equal((await again.admin().auditVerify()).ok, true);
});

test("count: a canary value never appears in any refusal row or summary, nor in the database around them", async () => {
  const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
  const { vault, dbPath } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
  await vault.admin().storeSecret({ name: "canary", value: CANARY });
  await vault.admin().storeSecret({ name: "github-token", value: CANARY + "2" });
  const m = vault.session(mallory);
  const bob = vault.session({ id: "token:bob", role: "agent", agent: "bob", transport: "tcp" });
  const l = await m.requestLease({ secret: "canary", domains: ["api.github.com"] });
  for (let i = 0; i < BURST + 20; i++) {
    await codeOf(bob.accessSecret(l.id, { domain: "api.github.com" })); // another agent's lease
    await codeOf(bob.requestLease({ secret: "canary", domains: ["api.github.com"] }));
    await codeOf(m.accessSecret(l.id, { domain: "evil.example" }));
  }
  await vault.flushRefusals();
  const text = trailText(await deniedRows(vault));
  assert.ok(!text.includes("CANARY"), "a value appears in the refusal rows");
  await vault.close();
  for (const f of readdirSync(join(dbPath!, ".."))) assert.ok(!readFileSync(join(dbPath!, "..", f)).includes(CANARY), `the canary is in ${f} in the clear`);
});

test("growth: one identity refused nonstop through many windows costs its burst plus one row per window", async () => {
  const { vault, reopen } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: 50 } });
  const m = vault.session(mallory);
  const t0 = Date.now();
  let n = 0;
  while (Date.now() - t0 < 1000) {
    await Promise.all(Array.from({ length: 50 }, (_x, k) => codeOf(k % 2 ? m.accessSecret(randomUUID()) : m.requestLease({ secret: `s${n + k}`, domains: ["x.example"] }))));
    n += 50;
  }
  const windows = Math.ceil((Date.now() - t0) / 50) + 2;
  const again = (await reopen()).vault;
  const rows = (await deniedRows(again)).filter((r) => r.actorId === mallory.id);
  assert.equal(total(rows), n, "every refusal counted");
  assert.ok(rows.length <= BURST + windows, `${rows.length} rows for ${n} refusals over about ${windows} windows`);
  for (const r of rows) assert.ok((r.detail ?? "").length < 4096, `a summary row of ${(r.detail ?? "").length} bytes`);
});

// ---------------------------------------------------------------------------------------------
// Store failures and shutdown
// ---------------------------------------------------------------------------------------------

test("store: a summary that fails to commit keeps its counts for the next window", async () => {
  const g = await gatedVault({ authFailureWindowMs: HOUR });
  const m = g.vault.session(mallory);
  for (let i = 0; i < BURST + 25; i++) await codeOf(m.accessSecret(randomUUID()));
  const h = g.hold();
  const f = g.vault.flushRefusals();
  await h.reached;
  h.release(new Error("SQLITE_IOERR: disk I/O error (simulated)"));
  await assert.rejects(f);
  for (let i = 0; i < 5; i++) await codeOf(m.accessSecret(randomUUID()));
  await g.vault.flushRefusals();
  const rows = (await deniedRows(g.vault)).filter((r) => r.actorId === mallory.id);
  assert.equal(total(rows), BURST + 30);
  await g.vault.close();
});

test("shutdown: close() while a window's summary is still being committed (and then fails) still writes the counted refusals", async () => {
  const g = await gatedVault({ authFailureWindowMs: HOUR });
  const m = g.vault.session(mallory);
  for (let i = 0; i < BURST + 25; i++) assert.equal(await codeOf(m.accessSecret(randomUUID())), "lease_not_found");
  // The window closes (the timer's flush); its commit is slow, and fails (a busy or failing disk).
  const h = g.hold();
  const windowFlush = g.vault.flushRefusals().catch((e: unknown) => e);
  await h.reached;
  // SIGTERM meanwhile: the vault closes.
  let closeErr: unknown = null;
  const closing = g.vault.close().catch((e: unknown) => (closeErr = e));
  await sleep(20);
  h.release(new Error("SQLITE_BUSY: database is locked (simulated)"));
  await windowFlush;
  await closing;
  const again = await g.reopen();
  after(() => again.close());
  const rows = (await deniedRows(again)).filter((r) => r.actorId === mallory.id);
  assert.ok(
    total(rows) === BURST + 25 || closeErr !== null,
    `${BURST + 25} refusals, ${total(rows)} in the trail, and close() reported nothing (closeErr=${String(closeErr)})`,
  );
});

test("shutdown: refused calls still in flight when the vault closes are counted in the trail", async () => {
  // close() lands at different points of the calls' group commit (queued, running, committing).
  const lost: string[] = [];
  for (const turns of [0, 1, 2, 3, 5, 8]) {
    const { vault, reopen } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
    const m = vault.session(mallory);
    await spendBurst(m);
    let refused = 0;
    const calls = Array.from({ length: 200 }, () =>
      codeOf(m.accessSecret(randomUUID())).then((c) => {
        if (c === "lease_not_found") refused++;
      }),
    );
    for (let i = 0; i < turns; i++) await new Promise<void>((r) => setImmediate(r));
    const closing = vault.close().catch((e: unknown) => e);
    await Promise.all(calls);
    await closing;
    const again = (await reopen()).vault;
    const rows = (await deniedRows(again)).filter((r) => r.actorId === mallory.id);
    if (total(rows) !== BURST + refused) lost.push(`close after ${turns} turns: ${BURST + refused} answered as refused, ${total(rows)} in the trail`);
    await again.close();
  }
  assert.deepEqual(lost, [], lost.join("; "));
});

test("broken trail: a refusal past the burst is answered audit_broken, as within the burst, since it cannot be audited", async () => {
  const { vault, dbPath } = await makeVault({ policy: POLICY, limits: { authFailureWindowMs: HOUR } });
  const m = vault.session(mallory);
  await spendBurst(m);
  // Someone with write access to the file cuts the head of the trail.
  const db = new Database(dbPath!);
  db.exec("DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)");
  db.close();
  const bob = vault.session({ id: "token:bob", role: "agent", agent: "bob", transport: "tcp" });
  assert.equal(await codeOf(bob.accessSecret(randomUUID())), "audit_broken", "a refusal within the burst fails closed");
  const c = await codeOf(m.accessSecret(randomUUID()));
  assert.equal(c, "audit_broken", "docs/audit.md: a refused caller gets audit_broken rather than access_denied while the trail is broken");
});

// ---------------------------------------------------------------------------------------------
// End to end: a real daemon
// ---------------------------------------------------------------------------------------------

async function agentToken(socket: string, name: string, agentName: string): Promise<{ token: string; id: string }> {
  const admin = await LessorClient.connect({ socketPath: socket });
  const tok = await admin.createToken({ name, role: "agent", agent: agentName });
  await admin.close();
  return { token: tok.token, id: tok.id };
}

test("daemon: a flood over several connections, SIGTERM in the middle of it, a restart and more: every refusal answered is in the trail, and it verifies", async () => {
  const home = await makeHome({ policy: POLICY, config: '[server]\ntcp = "127.0.0.1:0"\n' });
  let d = await startServe(home);
  let running = true;
  after(async () => {
    if (running) await d.stop();
  });
  const tok = await agentToken(d.socket, "mallory", "claude");
  const actor = `token:mallory/${tok.id}`;
  let answered = 0;
  let other = 0;
  const conns = await Promise.all(Array.from({ length: 4 }, () => LessorClient.connect(d.tcp!, { token: tok.token })));
  let stop = false;
  const loops = conns.flatMap((c) =>
    Array.from({ length: 6 }, async () => {
      while (!stop) {
        const code = await codeOf(c.accessSecret(randomUUID()));
        if (code === "lease_not_found") answered++;
        else {
          other++;
          return;
        }
      }
    }),
  );
  await sleep(1500);
  const exit = d.stop();
  await Promise.all(loops);
  stop = true;
  assert.equal(await exit, 0);
  running = false;
  for (const c of conns) await c.close().catch(() => {});
  let v = await openVault({ home, env: {} });
  let rows = (await deniedRows(v)).filter((r) => r.actorId === actor);
  const first = total(rows);
  await v.close();
  assert.ok(answered > BURST, `only ${answered} refusals`);
  assert.ok(first >= answered, `${answered} refusals answered, the trail accounts for ${first}`);
  assert.ok(rows.length <= BURST + 3, `${rows.length} rows for ${first} refusals`);

  d = await startServe(home);
  running = true;
  const c = await LessorClient.connect(d.tcp!, { token: tok.token });
  for (let i = 0; i < 100; i++) assert.equal(await codeOf(c.accessSecret(randomUUID())), "lease_not_found");
  await c.close();
  assert.equal(await d.stop(), 0);
  running = false;
  v = await openVault({ home, env: {} });
  after(() => v.close());
  rows = (await deniedRows(v)).filter((r) => r.actorId === actor);
  assert.equal(total(rows), first + 100, "the refusals after the restart add up");
  assert.equal((await v.admin().auditVerify()).ok, true);
  void other;
});

test("daemon: another agent's allowed calls are neither refused nor held up by a refusal flood", async () => {
  const home = await makeHome({ policy: POLICY, config: '[server]\ntcp = "127.0.0.1:0"\n' });
  const d = await startServe(home);
  after(() => d.stop());
  const admin = await LessorClient.connect({ socketPath: d.socket });
  await admin.storeSecret({ name: "github-token", value: "ghp_" + "b".repeat(36) });
  await admin.close();
  const m = await agentToken(d.socket, "mallory", "claude");
  const b = await agentToken(d.socket, "bob", "bob");
  const bob = await LessorClient.connect(d.tcp!, { token: b.token });
  const timed = async (n: number): Promise<number[]> => {
    const ms: number[] = [];
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      const r = await bob.leaseAndAccess({ secret: "github-token", domains: ["api.github.com"] }, { domain: "api.github.com" });
      ms.push(performance.now() - t0);
      assert.ok(r !== null);
    }
    return ms.sort((x, y) => x - y);
  };
  const base = await timed(30);
  const conns = await Promise.all(Array.from({ length: 8 }, () => LessorClient.connect(d.tcp!, { token: m.token })));
  let stop = false;
  let flood = 0;
  const loops = conns.flatMap((c) =>
    Array.from({ length: 8 }, async () => {
      while (!stop) {
        await codeOf(c.accessSecret(randomUUID()));
        flood++;
      }
    }),
  );
  await sleep(300);
  const during = await timed(30);
  stop = true;
  await Promise.all(loops);
  for (const c of conns) await c.close();
  await bob.close();
  const med = (a: number[]) => a[Math.floor(a.length / 2)]!;
  const limit = Math.max(500, 20 * med(base));
  assert.ok(flood > 500, `the flood made only ${flood} calls`);
  assert.ok(during.at(-1)! < limit, `bob's slowest call took ${during.at(-1)!.toFixed(1)} ms during a flood of ${flood} refusals (median before: ${med(base).toFixed(1)} ms)`);
});

test("daemon: failed hellos from many loopback source addresses are all counted, in a bounded number of rows", async () => {
  const home = await makeHome({ policy: POLICY, config: '[server]\ntcp = "127.0.0.1:0"\n' });
  const d = await startServe(home);
  let running = true;
  after(async () => {
    if (running) await d.stop();
  });
  const SOURCES = 40;
  const PER = 10;
  const hello = (local: string) =>
    new Promise<void>((resolve) => {
      const s = connect({ host: d.tcp!.host, port: d.tcp!.port, localAddress: local }, () => {
        const body = Buffer.from(JSON.stringify({ protocol: "lessor", version: 1 }));
        const head = Buffer.alloc(4);
        head.writeUInt32BE(body.length);
        s.write(Buffer.concat([head, body]));
      });
      s.on("error", () => resolve());
      s.on("close", () => resolve());
      s.resume();
    });
  for (let k = 0; k < PER; k++) await Promise.all(Array.from({ length: SOURCES }, (_x, i) => hello(`127.0.${1 + Math.floor(i / 200)}.${1 + (i % 200)}`)));
  assert.equal(await d.stop(), 0);
  running = false;
  const v = await openVault({ home, env: {} });
  after(() => v.close());
  const rows = (await v.admin().auditQuery({ types: ["auth_failed"], limit: 100_000 })) as AuditRecord[];
  assert.equal(total(rows), SOURCES * PER, "every failed hello is counted");
  assert.ok(rows.length <= 64 + SOURCES + 1, `${rows.length} rows`);
  assert.equal((await v.admin().auditVerify()).ok, true);
});
