/**
 * One principal cannot deny service to the others (issue 12, item 6). Each test performs the attack
 * against real parts — `lessor serve` in its own process (or the server on a real Unix socket with a
 * real SQLite vault, where the test must see the daemon's socket buffers), attackers in their own
 * processes, as user nobody where a second uid matters — and checks that another principal is still
 * served:
 * - a uid, and a token, over its connection cap is refused while another principal connects;
 * - 1,000 connections that never say hello (from one uid, or spread over loopback addresses) do not
 *   keep an authenticated client out;
 * - 500 bad-token hellos are a handful of audit rows with counts, not 500 commits;
 * - a client that pipelines requests and never reads its answers does not grow the daemon's buffered
 *   bytes past the bound;
 * - and a real client opening many connections at once is not caught by these limits;
 * - one principal flooding (8 connections × 64 pipelined lease requests) leaves another's status
 *   round trip within a modest multiple of its quiet median.
 */
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { createServer, connect, type Socket } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { parseConfig } from "../src/config/config.js";
import { openVault } from "../src/config/open-vault.js";
import { encodeFrame, FrameDecoder } from "../src/protocol/framing.js";
import type { Hello } from "../src/protocol/messages.js";
import { Scheduler } from "../src/server/scheduler.js";
import { DEFAULT_SERVER_LIMITS, LessorServer, type PeerInfo } from "../src/server/server.js";
import { VaultError } from "../src/base/errors.js";
import type { AuditRecord, Identity } from "../src/base/types.js";
import { DaemonConn, startServe, type RunningDaemon } from "./daemon-harness.js";
import { AS_NOBODY, attacker, NOBODY, sharedHome as sharedHomeWith } from "./dos-harness.js";
import { grant, makeVault, tempDir } from "./helpers.js";

const POLICY = grant("gh", ["claude", "bob"], ["github-token"], ["api.github.com"]);

// ---------- a raw protocol client ----------

/** The shared daemon connection: room for big frames, and a patient next() (10 s). */
class Raw extends DaemonConn {}

// ---------- homes for user nobody to reach ----------

/** A home for user nobody to reach (dos-harness.ts) with POLICY. */
const sharedHome = (server: string, vault = "") => sharedHomeWith(POLICY, server, vault);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

// ---------- connection caps and the handshake budget ----------

describe("connection caps and the handshake budget (lessor serve)", { skip: AS_NOBODY }, () => {
  let d: RunningDaemon;
  let socket: string;
  let admin: LessorClient;
  let tokens: { a: { id: string; token: string }; b: { id: string; token: string } };
  before(async () => {
    const h = await sharedHome("max_connections = 1000\nmax_connections_per_principal = 8\nhandshake_timeout = \"20s\"\n");
    socket = h.socket;
    d = await startServe(h.home);
    admin = await LessorClient.connect({ socketPath: socket });
    tokens = {
      a: await admin.createToken({ name: "flood-a", role: "agent", agent: "claude" }),
      b: await admin.createToken({ name: "quiet-b", role: "agent", agent: "bob" }),
    };
  });
  after(async () => {
    await admin?.close();
    await d?.stop();
  });

  test("a uid over its connection cap is refused with rate_limited while another principal still connects", async () => {
    const nobody = attacker(["hello", `unix:${socket}`, "9"], true);
    const got = (await nobody.line(0)) as { ok: boolean; id?: string; code?: string; message?: string }[];
    assert.deepEqual(got.slice(0, 8).map((r) => r.id), Array(8).fill(`uid:${NOBODY}`), JSON.stringify(got));
    assert.equal(got[8]!.ok, false);
    assert.equal(got[8]!.code, "rate_limited");
    assert.match(got[8]!.message!, new RegExp(`uid ${NOBODY} already has 8 connections open .*max_connections_per_principal`));
    // Another principal, while nobody holds its eight: the owner's uid, and a token.
    assert.equal((await admin.status()).daemon.connections >= 9, true);
    const owner = await LessorClient.connect({ socketPath: socket });
    assert.equal(owner.identity.role, "admin");
    await owner.close();
    const { c, welcome } = await Raw.hello(d.tcp!, tokens.b.token);
    assert.equal(welcome.ok, true, JSON.stringify(welcome));
    c.close();
    await nobody.stop();
    // Its connections closed: nobody may connect again.
    const again = attacker(["hello", `unix:${socket}`, "1"], true);
    assert.equal(((await again.line(0)) as { ok: boolean }[])[0]!.ok, true);
    await again.stop();
  });

  test("a token over its connection cap is refused with rate_limited while another token still connects", async () => {
    const flood = attacker(["hello", `tcp:${d.tcp!.host}:${d.tcp!.port}`, "9", tokens.a.token], false);
    const got = (await flood.line(0)) as { ok: boolean; code?: string; message?: string }[];
    assert.deepEqual(got.slice(0, 8).map((r) => r.ok), Array(8).fill(true), JSON.stringify(got));
    assert.equal(got[8]!.code, "rate_limited");
    assert.match(got[8]!.message!, new RegExp(`token ${tokens.a.id} already has 8 connections open`));
    const { c, welcome } = await Raw.hello(d.tcp!, tokens.b.token);
    assert.equal(welcome.ok, true, JSON.stringify(welcome));
    assert.equal(welcome.identity.agent, "bob");
    c.close();
    await flood.stop();
  });

  test("1,000 connections from one uid that never say hello do not stop an authenticated client from connecting", async () => {
    // max_connections is 1000: without a handshake budget these would take every connection.
    const idle = attacker(["idle", `unix:${socket}`, "1000"], true);
    const r = (await idle.line(0)) as { refused: number; stillOpen: number; codes: Record<string, number> };
    const { c, welcome } = await Raw.hello(d.tcp!, tokens.b.token);
    assert.equal(welcome.ok, true, `a token client is welcomed during the flood: ${JSON.stringify(welcome)}`);
    c.close();
    const owner = await LessorClient.connect({ socketPath: socket });
    assert.equal(owner.identity.role, "admin");
    assert.ok((await owner.status()).daemon.connections <= 8 + 3, "the idle flood holds no more than its handshake budget");
    await owner.close();
    assert.ok(r.stillOpen <= 8, `at most 8 of nobody's connections (its connection cap here) stay open; ${JSON.stringify(r)}`);
    assert.equal(r.codes.rate_limited, r.refused);
    await idle.stop();
  });

  test("1,000 idle TCP connections spread over 125 loopback addresses do not keep a token client from its handshake", async () => {
    const idle = attacker(["idle", `tcp:${d.tcp!.host}:${d.tcp!.port}`, "1000", "125"], false);
    const r = (await idle.line(0)) as { refused: number; stillOpen: number; connectErrors: number };
    assert.equal(r.connectErrors, 0, JSON.stringify(r));
    // The budget is full of connections waiting on their client: a real client takes the oldest's place.
    for (let i = 0; i < 3; i++) {
      const { c, welcome } = await Raw.hello(d.tcp!, tokens.b.token);
      assert.equal(welcome.ok, true, `a token client is welcomed during the flood: ${JSON.stringify(welcome)}`);
      assert.equal((await c.call("status")).ok, true);
      c.close();
    }
    assert.ok(r.stillOpen <= 128, `at most max_handshakes (128) TCP connections wait for a hello; ${JSON.stringify(r)}`);
    const owner = await LessorClient.connect({ socketPath: socket });
    assert.equal(owner.identity.role, "admin", "Unix-socket clients have a budget of their own");
    await owner.close();
    await idle.stop();
  });
});

describe("refused connections left half-open (lessor serve, default limits)", () => {
  test("a stream of refused hellos whose clients never close does not hold the handshake budget or the cap: token clients still get in", async () => {
    const h = await sharedHome("");
    const d = await startServe(h.home);
    after(() => d.stop());
    const admin = await LessorClient.connect({ socketPath: h.socket });
    const { token } = await admin.createToken({ name: "b", role: "agent", agent: "bob" });
    await admin.close();
    // 600 a second over 64 source addresses: each refused connection lingers up to a second on the
    // daemon's side, so without the fix they fill the 128-slot TCP handshake budget and are not evictable.
    const flood = attacker(["refused", `tcp:${d.tcp!.host}:${d.tcp!.port}`, "600", "64"], false);
    await flood.line(0);
    const outcomes: string[] = [];
    for (let i = 0; i < 20; i++) {
      const { c, welcome } = await Raw.hello(d.tcp!, token);
      outcomes.push(welcome.ok === true ? "ok" : String((welcome.error as { code?: string } | undefined)?.code));
      c.close();
      await sleep(50);
    }
    await flood.stop();
    assert.deepEqual(outcomes, Array(20).fill("ok"), `every token client is welcomed during the flood: ${outcomes.join(",")}`);
  });
});

describe("the limits in lessor.toml", () => {
  test("[server] reads every limit of this page, and refuses a bad one naming it", () => {
    const cfg = parseConfig(
      `[server]
max_connections_per_principal = 10
max_handshakes = 20
max_handshakes_per_peer = 5
max_in_flight_per_principal = 16
max_in_flight_per_principal_shared = 2
max_in_flight_total = 100
max_buffered_bytes = 65536
`,
      "lessor.toml",
    );
    const s = cfg.server;
    assert.deepEqual(
      [s.maxConnectionsPerPrincipal, s.maxHandshakes, s.maxHandshakesPerPeer, s.maxInFlightPerPrincipal, s.maxInFlightPerPrincipalShared, s.maxInFlightTotal, s.maxBufferedBytes],
      [10, 20, 5, 16, 2, 100, 65536],
    );
    const d = parseConfig("", "lessor.toml").server;
    for (const k of Object.keys(DEFAULT_SERVER_LIMITS) as (keyof typeof DEFAULT_SERVER_LIMITS)[])
      assert.equal(d[k], DEFAULT_SERVER_LIMITS[k], `the configuration's default ${k} is the server's`);
    assert.throws(
      () => parseConfig("[server]\nmax_connections_per_principal = 0\n", "lessor.toml"),
      (e: unknown) => e instanceof VaultError && e.code === "config_invalid" && /max_connections_per_principal/.test(e.message),
    );
  });
});

describe("the limits leave real clients alone (default limits)", () => {
  test("a client opening 48 connections at once gets every one (the handshake budget refuses no real burst)", async () => {
    const { vault } = await makeVault();
    const server = new LessorServer({ vault, authenticate, version: "test" });
    const path = join(tempDir("lessor-burst-"), "s.sock");
    const srv = createServer((sock) => server.handle(sock, { transport: "uds", uid: 1000 }));
    await new Promise<void>((r) => srv.listen({ path, backlog: 512 }, r));
    after(async () => {
      srv.close();
      await server.close();
    });
    const got = await Promise.all(Array.from({ length: 48 }, () => Raw.hello(path, "admin-token")));
    assert.deepEqual(got.map((g) => g.welcome.ok), Array(48).fill(true), JSON.stringify(got.find((g) => !g.welcome.ok)?.welcome));
    for (const g of got) g.c.close();
  });
});

// ---------- failed hellos are audited in aggregate ----------

describe("failed hellos audited in aggregate (lessor serve)", () => {
  test("500 bad-token hellos are a handful of audit rows with counts, not 500", async () => {
    const h = await sharedHome("");
    const d = await startServe(h.home);
    let stopped = false;
    after(async () => {
      if (!stopped) await d.stop();
    });
    const admin = await LessorClient.connect({ socketPath: h.socket });
    const real = await admin.createToken({ name: "real", role: "agent", agent: "claude" });
    await admin.close();
    const realSecret = real.token.slice(`lsr_${real.id}_`.length);
    const tried: string[] = [];
    const started = performance.now();
    for (let i = 0; i < 500; i++) {
      const secret = randomBytes(32).toString("base64url");
      tried.push(secret);
      // Wrong secrets for the real id, unknown ids, and malformed tokens.
      const token = i % 3 === 0 ? `lsr_${real.id}_${secret}` : i % 3 === 1 ? `lsr_${randomBytes(8).toString("hex")}_${secret}` : `not-a-token-${secret}`;
      const { c, welcome } = await Raw.hello(d.tcp!, token);
      assert.equal(welcome.ok, false);
      assert.equal(welcome.error.code, "unauthenticated");
      c.close();
    }
    const ms = performance.now() - started;
    assert.equal(await d.stop(), 0);
    stopped = true;
    // What is counted is written at shutdown; read the trail from the home.
    const vault = await openVault({ home: h.home, env: {} });
    after(() => vault.close());
    const rows = (await vault.admin().auditQuery({ types: ["auth_failed"], limit: 10_000 })) as AuditRecord[];
    const details = rows.map((r) => (r.detail === null ? {} : (JSON.parse(r.detail) as Record<string, unknown>)));
    const total = details.reduce((n, dt) => n + (typeof dt.count === "number" ? dt.count : 1), 0);
    assert.equal(total, 500, `every failure is counted: ${JSON.stringify(rows.map((r) => [r.reason, r.detail]))}`);
    assert.ok(rows.length <= 12, `${rows.length} rows for 500 failures`);
    const summary = details.find((dt) => typeof dt.count === "number")!;
    assert.ok(summary, "a summary row with a count");
    assert.match(String(summary.reasons), /wrong token secret ×\d+/);
    assert.match(String(summary.reasons), /unknown token id ×\d+/);
    assert.match(String(summary.reasons), /malformed token ×\d+/);
    const trail = JSON.stringify(rows);
    assert.ok(!trail.includes(realSecret), "never the real token's secret");
    for (const s of tried) assert.ok(!trail.includes(s), "never a secret a client tried");
    assert.ok(ms < 30_000, `500 refusals took ${ms.toFixed(0)} ms`);
  });

  test("a source's failures past its burst are counted into one row per window, and a quiet source starts afresh", async () => {
    const { vault } = await makeVault({ limits: { authFailureWindowMs: 3_600_000 } }); // windows closed by hand here
    const admin = vault.admin();
    const rows = async () =>
      (await admin.auditQuery({ types: ["auth_failed"], limit: 1000 })).map((r) => (r.detail === null ? {} : (JSON.parse(r.detail) as Record<string, unknown>)));
    for (let i = 0; i < 50; i++) await vault.recordAuthFailure("uds", "unknown uid", { uid: 4242, pid: 1000 + i });
    await vault.recordAuthFailure("uds", "unknown uid", { uid: 4343, pid: 7 });
    let got = await rows();
    assert.equal(got.length, 9, "uid 4242's burst of eight rows, and uid 4343's row: one source's flood does not hold back another");
    assert.deepEqual(got.slice(0, 8).map((d) => d.pid), [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007]);
    await vault.flushAuthFailures(); // the window closes
    got = await rows();
    assert.equal(got.length, 10);
    assert.deepEqual({ count: got[9]!.count, uid: got[9]!.uid, reasons: got[9]!.reasons }, { count: 42, uid: 4242, reasons: "unknown uid ×42" });
    // Still failing in the next window: counted, not written at once (no new burst while a flood goes on).
    await vault.recordAuthFailure("uds", "unknown uid", { uid: 4242, pid: 1 });
    assert.equal((await rows()).length, 10);
    await vault.flushAuthFailures();
    got = await rows();
    assert.equal(got.length, 11);
    assert.equal(got[10]!.count, 1);
    // A window without a failure: the source is forgotten, and its next failure is written at once.
    await vault.flushAuthFailures();
    await vault.recordAuthFailure("uds", "unknown uid", { uid: 4242, pid: 2 });
    got = await rows();
    assert.equal(got.length, 12);
    assert.deepEqual(got[11], { uid: 4242, pid: 2 });
  });

  test("the window closes by itself: counted failures are written within a window, and at close", async () => {
    const { vault } = await makeVault({ limits: { authFailureWindowMs: 100 } });
    for (let i = 0; i < 20; i++) await vault.recordAuthFailure("tcp", "no token", { remote: "127.0.0.1" });
    const total = async () =>
      (await vault.admin().auditQuery({ types: ["auth_failed"], limit: 1000 })).reduce((n, r) => n + ((JSON.parse(r.detail ?? "{}") as { count?: number }).count ?? 1), 0);
    const end = Date.now() + 5000;
    while ((await total()) < 20 && Date.now() < end) await sleep(50);
    assert.equal(await total(), 20);
    // And what is counted when the vault closes is written by close().
    const dir = tempDir();
    const v2 = await makeVault({ dir, limits: { authFailureWindowMs: 3_600_000 } });
    for (let i = 0; i < 30; i++) await v2.vault.recordAuthFailure("tcp", "no token", { remote: "127.0.0.1" });
    const reopened = await v2.reopen();
    const rows = await reopened.vault.admin().auditQuery({ types: ["auth_failed"], limit: 1000 });
    assert.equal(rows.reduce((n, r) => n + ((JSON.parse(r.detail ?? "{}") as { count?: number }).count ?? 1), 0), 30);
    assert.equal(rows.length, 9);
  });
});

// ---------- backpressure ----------

const IDENTITIES: Record<string, Omit<Identity, "transport">> = {
  "admin-token": { id: "test:admin", role: "admin" },
  "other-token": { id: "test:other", role: "admin" },
};

async function authenticate(peer: PeerInfo, hello: Hello): Promise<Identity> {
  const who = hello.token === undefined ? undefined : IDENTITIES[hello.token];
  if (!who) throw new VaultError("unauthenticated", "the token is not valid");
  return { ...who, transport: peer.transport };
}

describe("backpressure", () => {
  test("a client that pipelines requests for large answers and never reads does not grow the daemon's buffered bytes past the bound", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    const admin = vault.admin();
    // 300 audit rows: an audit_query for all of them is an answer of some 150 KB.
    await Promise.all(Array.from({ length: 300 }, (_, i) => admin.storeSecret({ name: `s-${i}`, value: "x", kind: "opaque", description: "d".repeat(200) })));
    const limits = { maxInFlight: 8, maxBufferedBytes: 1024 * 1024 };
    const server = new LessorServer({ vault, authenticate, limits, version: "test" });
    const sockets: Socket[] = [];
    const srv = createServer((s) => {
      sockets.push(s);
      server.handle(s, { transport: "uds", uid: 0 });
    });
    const path = join(tempDir("lessor-bp-"), "s.sock");
    await new Promise<void>((r) => srv.listen(path, r));
    after(async () => {
      srv.close();
      await server.close();
    });
    const probe = (await Raw.hello(path, "admin-token")).c;
    const one = await probe.call("audit_query", { limit: 300 });
    assert.equal(one.ok, true);
    const answerBytes = Buffer.byteLength(JSON.stringify(one)) + 4;
    assert.ok(answerBytes > 100_000, `an answer is ${answerBytes} bytes`);

    const { c: hog, welcome } = await Raw.hello(path, "admin-token");
    assert.equal(welcome.ok, true);
    hog.socket.pause(); // never reads again
    const hogServerSide = sockets.at(-1)!;
    const N = 600;
    const frames = Buffer.concat(Array.from({ length: N }, () => encodeFrame({ id: randomUUID(), method: "audit_query", params: { limit: 300 } })));
    hog.socket.write(frames);
    // Let the daemon do all it will do for the hog, watching its buffered bytes meanwhile.
    const bound = limits.maxBufferedBytes + limits.maxInFlight * answerBytes;
    let most = 0;
    let still = 0;
    for (let last = -1; still < 5; await sleep(50)) {
      const now = hogServerSide.writableLength;
      most = Math.max(most, now);
      if (most > 4 * bound) break; // the bound does not hold: no need to fill the memory to show it
      still = now === last && server.requests.running === 0 ? still + 1 : 0;
      last = now;
    }
    assert.ok(most <= bound, `the daemon buffered ${(most / 1e6).toFixed(1)} MB for a client that does not read (bound ${(bound / 1e6).toFixed(1)} MB)`);
    // Others are served meanwhile.
    const other = (await Raw.hello(path, "other-token")).c;
    const t0 = performance.now();
    assert.equal((await other.call("status")).ok, true);
    assert.ok(performance.now() - t0 < 2000);
    // Once the hog reads, it gets every answer.
    let answered = 0;
    const dec = new FrameDecoder(16 * 1024 * 1024);
    hog.socket.removeAllListeners("data");
    hog.socket.on("data", (chunk: Buffer) => (answered += dec.push(chunk).length));
    hog.socket.resume();
    const end = Date.now() + 60_000;
    while (answered < N && Date.now() < end) await sleep(50);
    assert.equal(answered, N, "every pipelined request is answered once the client reads");
    for (const c of [probe, hog, other]) c.close();
  });
});

// ---------- fair scheduling ----------

describe("the scheduler", () => {
  test("a quiet principal's request starts at the next free slot, not after a flooding principal's queue", async () => {
    const s = new Scheduler({ perPrincipal: 32, perPrincipalShared: 2, total: 4 });
    const started: string[] = [];
    const finish: (() => void)[] = [];
    const job = (name: string) => () => new Promise<void>((r) => (started.push(name), finish.push(r)));
    const turn = () => new Promise((r) => setImmediate(r));
    for (let i = 0; i < 100; i++) s.submit("flood", job(`f${i}`));
    assert.equal(s.running, 4, "alone, the flood may use every slot");
    s.submit("quiet", job("q1"));
    s.submit("quiet", job("q2"));
    assert.equal(s.running, 4);
    finish.shift()!();
    await turn();
    assert.equal(started.at(-1), "q1", "the quiet principal takes the first slot that frees");
    // While both are active, the flood runs at most perPrincipalShared (2): slots go to the quiet one.
    finish.shift()!();
    await turn();
    assert.equal(started.at(-1), "q2");
    assert.equal(s.runningFor("flood"), 2);
    for (let i = 0; i < 4; i++) {
      finish.shift()!();
      await turn();
    }
    assert.ok(s.runningFor("flood") <= 2);
    while (finish.length > 0) {
      finish.shift()!();
      await turn();
    }
    assert.equal(started.length, 102, "every request runs, once");
    assert.equal(new Set(started).size, 102);
  });
});

describe("fair scheduling (lessor serve, default limits)", () => {
  test("with one principal flooding (8 connections × 64 pipelined lease requests), another's status round trip stays within a modest multiple of its quiet median", async (t) => {
    const h = await sharedHome("");
    const d = await startServe(h.home);
    after(() => d.stop());
    const admin = await LessorClient.connect({ socketPath: h.socket });
    await admin.storeSecret({ name: "github-token", value: "ghp_" + randomBytes(20).toString("hex"), kind: "pat" });
    const flooder = await admin.createToken({ name: "flooder", role: "agent", agent: "claude" });
    const quiet = (await Raw.hello(h.socket)).c; // the owner's uid: another principal
    const rtts = async (n: number, maxMs = 15_000): Promise<number[]> => {
      const out: number[] = [];
      const end = performance.now() + maxMs;
      for (let i = 0; i < n && performance.now() < end; i++) {
        const t0 = performance.now();
        const r = await quiet.call("status");
        out.push(performance.now() - t0);
        assert.equal(r.ok, true);
      }
      return out;
    };
    await rtts(50); // warm up
    const calm = median(await rtts(200));
    const flood = attacker(["flood", `tcp:${d.tcp!.host}:${d.tcp!.port}`, "8", "64", flooder.token, "60000"], false);
    const started = (await flood.line(0)) as { flooding?: number };
    assert.equal(started.flooding, 512, JSON.stringify(started));
    await sleep(500); // the flood is in full swing
    const busy = await rtts(200);
    flood.proc.kill();
    const ratio = median(busy) / calm;
    t.diagnostic(`status median: ${calm.toFixed(3)} ms quiet, ${median(busy).toFixed(3)} ms during the flood (${ratio.toFixed(1)}x, ${busy.length} samples)`);
    await admin.close();
    quiet.close();
    // The bound: a flood must not multiply another principal's latency by 100. Measured here
    // 7-9x (30x once, when the quiet median was an unusually fast 0.05 ms); without the scheduler, ~1,000x.
    assert.ok(
      ratio < 100,
      `the quiet principal's status median went from ${calm.toFixed(2)} ms to ${median(busy).toFixed(2)} ms (${ratio.toFixed(1)}x) during the flood`,
    );
  });
});
