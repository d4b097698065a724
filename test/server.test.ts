/**
 * The protocol v1 server over real sockets (loopback TCP and a Unix socket) and a real vault on a
 * temp SQLite file. The only stand-in is a store wrapper that can hold chosen calls at a gate, so
 * tests can keep a request in flight for as long as they need.
 */
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { createServer, connect, type AddressInfo, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { inspect } from "node:util";
import { after, describe, test } from "node:test";
import { envKeySource } from "../src/crypto/keys/env.js";
import { checkServerProof, endpointBinding, hashTokenSecret, newNonce, splitToken } from "../src/crypto/token-proof.js";
import { encodeFrame } from "../src/protocol/framing.js";
import type { Hello } from "../src/protocol/messages.js";
import { LessorServer, type PeerInfo, type ServerLimits } from "../src/server/server.js";
import type { Logger } from "../src/server/logger.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import type { Store } from "../src/vault/ports.js";
import { VaultError } from "../src/base/errors.js";
import { parsePolicy } from "../src/vault/policy.js";
import type { Identity } from "../src/base/types.js";
import { Vault } from "../src/vault/vault.js";
import { hexKey, tempDir } from "./helpers.js";
import { duplexPair, RawClient as SharedRawClient, type Msg } from "./raw-client.js";

const CANARY = "ghp_CANARY_" + randomBytes(12).toString("hex");
const POLICY = `
[[rule]]
name = "claude-github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token", "env:prod/bin"]
domains = ["api.github.com"]
`;

// ---------- a vault whose store can hold chosen calls ----------

interface Hold {
  waiting(): number;
  release(): void;
}

function gatedStore(inner: Store): { store: Store; hold(methods: string[]): Hold } {
  let gate: { methods: Set<string>; waiting: number; open: Promise<void>; release: () => void } | null = null;
  const store = new Proxy(inner, {
    get(t, p) {
      const v = Reflect.get(t, p, t) as unknown;
      if (typeof v !== "function") return v;
      const fn = (v as (...a: unknown[]) => unknown).bind(t);
      return async (...a: unknown[]) => {
        const g = gate;
        if (g && g.methods.has(String(p))) {
          g.waiting++;
          await g.open;
        }
        return fn(...a);
      };
    },
  });
  return {
    store,
    hold(methods) {
      let release!: () => void;
      const open = new Promise<void>((r) => (release = r));
      const g = { methods: new Set(methods), waiting: 0, open, release };
      gate = g;
      return {
        waiting: () => g.waiting,
        release: () => {
          if (gate === g) gate = null;
          g.release();
        },
      };
    },
  };
}

async function openVault(): Promise<{ vault: Vault; hold(methods: string[]): Hold }> {
  const dir = tempDir();
  const g = gatedStore(openSqliteStore(join(dir, "lessor.db")));
  const vault = await Vault.open({ store: g.store, keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!, policy: async () => parsePolicy(POLICY, "test-policy.toml") });
  after(() => vault.close());
  return { vault, hold: g.hold };
}

// ---------- identities by token ----------

const TOKENS: Record<string, Omit<Identity, "transport">> = {
  "admin-token": { id: "test:admin", role: "admin" },
  "claude-token": { id: "test:claude", role: "agent", agent: "claude" },
  "bob-token": { id: "test:bob", role: "agent", agent: "bob" },
  "orch-token": { id: "test:orch", role: "orchestrator", actFor: ["claude"] },
};

async function authenticate(peer: PeerInfo, hello: Hello): Promise<Identity> {
  const who = hello.token === undefined ? undefined : TOKENS[hello.token];
  if (!who) throw new VaultError("unauthenticated", "the token is not valid; ask an admin for a new one");
  return { ...who, transport: peer.transport };
}

// ---------- a logger that keeps every line ----------

function captureLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const put = (level: string) => (obj: Record<string, unknown>, msg: string) => void lines.push(`${level} ${msg} ${inspect(obj, { depth: 6 })}`);
  return { lines, info: put("info"), warn: put("warn"), error: put("error") };
}

// ---------- a server on both transports ----------

interface Rig {
  server: LessorServer;
  tcp: { port: number };
  uds: { path: string };
  log: Logger & { lines: string[] };
  vault: Vault;
  hold(methods: string[]): Hold;
}

async function listen(srv: Server, where: number | string): Promise<void> {
  await new Promise<void>((resolve) => (typeof where === "number" ? srv.listen({ host: "127.0.0.1", port: where, backlog: 2048 }, resolve) : srv.listen(where, resolve)));
}

async function rig(limits: Partial<ServerLimits> = {}): Promise<Rig> {
  const { vault, hold } = await openVault();
  const log = captureLogger();
  const server = new LessorServer({ vault, authenticate, limits, log, version: "test-1" });
  // A listener's job, as transports/tcp.ts does it: no Nagle delay, and the peer's and our own address.
  const tcpSrv = createServer({ noDelay: true }, (s) => server.handle(s, { transport: "tcp", remoteAddress: s.remoteAddress!, localAddress: s.localAddress!, localPort: s.localPort! }));
  await listen(tcpSrv, 0);
  const path = join(tempDir("lessor-sock-"), "s.sock");
  const udsSrv = createServer((s) => server.handle(s, { transport: "uds", uid: process.getuid!() }));
  await listen(udsSrv, path);
  after(async () => {
    tcpSrv.close();
    udsSrv.close();
    await server.close();
  });
  return { server, tcp: { port: (tcpSrv.address() as AddressInfo).port }, uds: { path }, log, vault, hold };
}

// ---------- a raw protocol client ----------

class RawClient extends SharedRawClient {
  static async open(to: { port: number } | { path: string }): Promise<RawClient> {
    const s = "port" in to ? connect({ host: "127.0.0.1", port: to.port }) : connect(to.path);
    return SharedRawClient.connected(new RawClient(s));
  }

  /** Connects and says hello with `token`; returns the client (welcome checked ok). */
  static async as(to: { port: number } | { path: string }, token: string): Promise<RawClient & { welcome: Msg }> {
    const c = await RawClient.open(to);
    c.send({ protocol: "lessor", version: 1, token });
    const welcome = await c.next();
    assert.equal(welcome.ok, true, JSON.stringify(welcome));
    return Object.assign(c, { welcome });
  }

  /** A successful call's result. */
  async ok(method: string, params?: unknown): Promise<Msg> {
    const r = await this.call(method, params);
    assert.equal(r.ok, true, `${method}: ${JSON.stringify(r.error)}`);
    return r.result;
  }

  /** A failed call's error code and message. */
  async err(method: string, params?: unknown): Promise<{ code: string; message: string }> {
    const r = await this.call(method, params);
    assert.equal(r.ok, false, `${method} should fail`);
    return r.error;
  }
}

const b64 = (s: string | Buffer): string => Buffer.from(s).toString("base64");

describe("server: methods round-trip", () => {
  test("every method, as admin, orchestrator and agent, over TCP and a Unix socket", async () => {
    const r = await rig();
    const admin = await RawClient.as(r.tcp, "admin-token");
    const claude = await RawClient.as(r.uds, "claude-token");
    const orch = await RawClient.as(r.tcp, "orch-token");
    after(() => [admin, claude, orch].forEach((c) => c.close()));
    assert.deepEqual(admin.welcome, { protocol: "lessor", version: 1, ok: true, identity: { id: "test:admin", role: "admin", transport: "tcp" } });
    assert.deepEqual(claude.welcome.identity, { id: "test:claude", role: "agent", agent: "claude", transport: "uds" });
    assert.deepEqual(orch.welcome.identity.actFor, ["claude"]);

    const st = await admin.ok("describe");
    assert.equal(st.store, "sqlite");
    assert.equal(st.identity.role, "admin");
    assert.equal(st.daemon.version, "test-1");
    assert.equal(st.daemon.pid, process.pid);
    assert.equal(st.daemon.connections, 3);
    assert.ok(st.daemon.uptimeMs >= 0);
    assert.equal((await claude.ok("status")).identity.agent, "claude");
    const brief = await admin.ok("status");
    assert.deepEqual([brief.auditHead, brief.killswitch, brief.policy, brief.daemon.version], [st.auditHead, false, "ok", "test-1"]);

    // secrets
    const stored = await admin.ok("store_secret", { name: "github-token", value: CANARY, kind: "pat", tags: ["ci"] });
    assert.equal(stored.currentVersion, 1);
    assert.equal(stored.kind, "pat");
    const bin = randomBytes(64);
    await admin.ok("store_secret", { scope: "env:prod", name: "bin", value: bin.toString("base64"), encoding: "base64" });
    const revealedBin = await admin.ok("reveal_secret", { scope: "env:prod", name: "bin" });
    assert.deepEqual(revealedBin, { value: bin.toString("base64"), encoding: "base64", version: 1 });
    assert.equal((await admin.err("store_secret", { name: "github-token", value: "x", mode: "create" })).code, "secret_exists");
    assert.equal((await admin.ok("rotate_secret", { name: "github-token", value: "v2-" + CANARY })).currentVersion, 2);
    assert.equal((await admin.ok("reveal_secret", { name: "github-token", version: 1 })).value, b64(CANARY));
    assert.equal((await admin.ok("rollback_secret", { name: "github-token", version: 1 })).currentVersion, 3);
    const meta = await admin.ok("get_secret_metadata", { name: "github-token" });
    assert.equal(meta.versions.length, 3);
    assert.equal((await admin.ok("secret_history", { scope: "global", name: "github-token" })).length, 3);
    const listed = await orch.ok("list_secrets", { scope: "global" });
    assert.deepEqual(listed.map((s: Msg) => s.name), ["github-token"]);
    assert.ok(!JSON.stringify(listed).includes(CANARY));

    // policy
    const ex = await admin.ok("explain", { agent: "claude", secret: "github-token", domain: "api.github.com" });
    assert.equal(ex.allow, true);
    assert.equal(ex.rule, "claude-github");
    assert.equal((await admin.ok("reload_policy")).rules, 1);

    // leases
    const lease = await claude.ok("request_lease", { secret: "github-token", domains: ["api.github.com"], maxUses: 5, ttl: "1m" });
    assert.equal(lease.agent, "claude");
    assert.equal(lease.rule, "claude-github");
    const got = await claude.ok("access_secret", { leaseId: lease.id, domain: "api.github.com" });
    assert.equal(got.encoding, "base64");
    assert.equal(Buffer.from(got.value, "base64").toString("utf8"), CANARY);
    assert.equal(got.version, 3);
    assert.equal(got.lease.uses, 1);
    assert.equal((await claude.ok("renew_lease", { leaseId: lease.id, ttl: "5m" })).renewals, 1);
    const live = await claude.ok("list_leases", { live: true });
    assert.deepEqual(live.map((l: Msg) => l.id), [lease.id]);
    assert.equal((await admin.ok("list_leases", { agent: "claude", secret: "global/github-token" })).length, 1);
    assert.deepEqual(await claude.ok("revoke_lease", { leaseId: lease.id, reason: "done" }), { revoked: true });
    assert.equal((await claude.err("access_secret", { leaseId: lease.id, domain: "api.github.com" })).code, "lease_revoked");
    assert.equal((await claude.ok("list_leases", { live: true })).length, 0);
    const byOrch = await orch.ok("request_lease", { agent: "claude", secret: "github-token" });
    assert.equal(byOrch.issuedBy, "test:orch");
    assert.deepEqual(await orch.ok("revoke_all_for_agent", { agent: "claude" }), { revoked: 1 });
    await admin.ok("request_lease", { agent: "claude", secret: "global/github-token" });
    assert.deepEqual(await admin.ok("killswitch", { reason: "test" }), { revoked: 1 });
    // The killswitch closes agents' and orchestrators' connections; the admin keeps its own.
    await Promise.all([claude.closed, orch.closed]);
    const locked = await admin.err("request_lease", { agent: "claude", secret: "github-token" });
    assert.equal(locked.code, "access_denied");
    assert.match(locked.message, /killswitch is engaged .*lessor killswitch --release/);
    assert.deepEqual(await admin.ok("killswitch_release", { reason: "drill over" }), { released: true });
    assert.equal((await admin.ok("status")).killswitch, false);

    // audit
    const events = await admin.ok("audit_query", { types: ["secret_accessed", "lease_granted"], order: "desc", limit: 10 });
    assert.ok(events.length >= 2);
    for (const e of events) {
      assert.match(e.hash, /^[0-9a-f]{64}$/);
      assert.match(e.prevHash, /^[0-9a-f]{64}$/);
      assert.ok(e.detail === null || typeof e.detail === "object");
      assert.equal(typeof e.time, "number");
    }
    assert.ok(events[0].seq > events[1].seq, "desc order");
    assert.equal(events.find((e: Msg) => e.type === "secret_accessed").leaseId, lease.id);
    const verified = await admin.ok("audit_verify");
    assert.equal(verified.ok, true);
    assert.ok(verified.events > 10);

    // keys and tokens
    const rot = await admin.ok("rotate_master_key");
    assert.equal(typeof rot.to, "string");
    const tok = await admin.ok("token_create", { name: "ci", role: "agent", agent: "claude", ttl: "1d" });
    assert.match(tok.token, /^lsr_/);
    assert.equal(tok.role, "agent");
    const toks = await admin.ok("token_list");
    assert.deepEqual(toks.map((t: Msg) => t.id), [tok.id]);
    assert.ok(!JSON.stringify(toks).includes(tok.token), "listing never shows a token");
    assert.deepEqual(await admin.ok("token_revoke", { id: tok.id }), { revoked: true });

    assert.deepEqual(await admin.ok("delete_secret", { name: "github-token" }), { revokedLeases: 0 });
    assert.equal((await admin.err("get_secret_metadata", { name: "github-token" })).code, "secret_not_found");
    assert.equal((await admin.ok("audit_verify")).ok, true);
  });

  test("agents and orchestrators are held to their identity: admin methods, other agents and their leases are denied and audited", async () => {
    const r = await rig();
    const admin = await RawClient.as(r.tcp, "admin-token");
    const claude = await RawClient.as(r.tcp, "claude-token");
    const bob = await RawClient.as(r.uds, "bob-token");
    const orch = await RawClient.as(r.uds, "orch-token");
    after(() => [admin, claude, bob, orch].forEach((c) => c.close()));
    await admin.ok("store_secret", { name: "github-token", value: CANARY });
    for (const [m, p] of [
      ["store_secret", { name: "github-token", value: "evil" }],
      ["reveal_secret", { name: "github-token" }],
      ["killswitch", {}],
      ["killswitch_release", {}],
      ["audit_query", {}],
      ["token_create", { name: "mine", role: "admin" }],
      ["rotate_master_key", {}],
    ] as const) {
      const e = await bob.err(m, p);
      assert.equal(e.code, "access_denied", m);
    }
    assert.equal((await orch.err("store_secret", { name: "x", value: "y" })).code, "access_denied");
    // naming another agent
    assert.equal((await bob.err("request_lease", { agent: "claude", secret: "github-token" })).code, "access_denied");
    assert.equal((await orch.err("request_lease", { agent: "bob", secret: "github-token" })).code, "access_denied");
    // another agent's lease
    const lease = await claude.ok("request_lease", { secret: "github-token", domains: ["api.github.com"] });
    const stolen = await bob.err("access_secret", { leaseId: lease.id, domain: "api.github.com" });
    assert.equal(stolen.code, "access_denied");
    assert.ok(!stolen.message.includes(CANARY));
    assert.equal((await bob.err("revoke_lease", { leaseId: lease.id })).code, "access_denied");
    assert.equal((await bob.err("list_leases", { agent: "claude" })).code, "access_denied");

    const denials = await admin.ok("audit_query", { types: ["access_denied"], limit: 1000 });
    const byBob = denials.filter((e: Msg) => e.actorId === "test:bob");
    assert.ok(byBob.length >= 7, `bob's denials audited: ${byBob.length}`);
    assert.ok(byBob.every((e: Msg) => e.transport === "uds" && e.outcome === "denied"));
    assert.ok(byBob.some((e: Msg) => e.leaseId === lease.id), "the lease theft is audited with its lease id");
    assert.ok(denials.some((e: Msg) => e.actorId === "test:orch"));
    // the lease still works for its owner
    const got = await claude.ok("access_secret", { leaseId: lease.id, domain: "api.github.com" });
    assert.equal(Buffer.from(got.value, "base64").toString(), CANARY);
  });
});

describe("server: malformed input", () => {
  test("bad JSON, bad envelopes, unknown methods and bad params get invalid_request and the connection stays usable", async () => {
    const r = await rig();
    const c = await RawClient.as(r.tcp, "admin-token");
    after(() => c.close());
    c.socket.write(Buffer.concat([Buffer.from([0, 0, 0, 5]), Buffer.from("{nope")]));
    const bad = await c.next();
    assert.deepEqual(bad.id, null);
    assert.equal(bad.ok, false);
    assert.equal(bad.error.code, "invalid_request");
    assert.match(bad.error.message, /not valid JSON/);
    assert.equal((await c.ok("status")).identity.role, "admin", "the connection still works");

    c.send([1, 2]);
    assert.match((await c.next()).error.message, /JSON object/);
    c.send({ method: "status" });
    const noId = await c.next();
    assert.equal(noId.id, null);
    assert.match(noId.error.message, /no id/);
    const id = randomUUID();
    c.send({ id, method: "status", extra: 1 });
    const extra = await c.next();
    assert.equal(extra.id, id, "the id is echoed when it could be read");
    assert.match(extra.error.message, /unknown field "extra"/);
    c.send({ id, method: "status", params: [1] });
    assert.match((await c.next()).error.message, /params must be a JSON object/);

    const unknown = await c.err("frobnicate", {});
    assert.equal(unknown.code, "invalid_request");
    assert.equal(unknown.message, 'unknown method "frobnicate"; see docs/protocol.md');
    assert.doesNotMatch((await c.err("x".repeat(60) + " " + CANARY)).message, /CANARY/);

    const wrongType = await c.err("store_secret", { name: 5, value: "v" });
    assert.equal(wrongType.code, "invalid_request");
    assert.match(wrongType.message, /^invalid params for store_secret: name: expected string, received number/);
    assert.equal((await c.err("status", { bogus: 1 })).message, 'invalid params for status: params: unknown field "bogus" (status takes no params); see docs/protocol.md');
    assert.match((await c.err("renew_lease", { leaseId: randomUUID(), ttl: "1h", tll: "1h" })).message, /unknown field "tll" \(renew_lease takes leaseId, ttl\)/);
    assert.match((await c.err("request_lease", {})).message, /secret is required/);
    assert.match((await c.err("access_secret", { leaseId: "nope" })).message, /leaseId: expected a lease id/);
    assert.match((await c.err("request_lease", { secret: "s", domains: ["x".repeat(300)] })).message, /domains\.0: Too big/);
    assert.match((await c.err("store_secret", { name: "s", value: "not base64!", encoding: "base64" })).message, /value is not valid base64/);
    assert.match((await c.err("store_secret", { name: "s", value: "YQ", encoding: "base64" })).message, /value is not valid base64/, "unpadded base64 is refused");
    assert.equal((await c.err("list_leases", { secret: "a/b/c" })).code, "invalid_request");
    assert.equal((await c.ok("status")).identity.role, "admin");
  });

  test("a canary secret value never appears in an error message or a log line", async () => {
    const r = await rig();
    const c = await RawClient.as(r.tcp, "admin-token");
    const bob = await RawClient.as(r.tcp, "bob-token");
    after(() => [c, bob].forEach((x) => x.close()));
    const messages: string[] = [];
    const collect = async (p: Promise<{ message: string }>) => messages.push((await p).message);
    await c.ok("store_secret", { name: "github-token", value: CANARY });
    await collect(c.err("store_secret", { name: "github-token", value: CANARY, encoding: "base64" }));
    await collect(c.err("store_secret", { name: "github-token", value: CANARY, mode: "create" }));
    await collect(c.err("store_secret", { name: CANARY.repeat(20), value: CANARY }));
    await collect(c.err("store_secret", { name: "github-token", value: CANARY, [CANARY]: 1 }));
    await collect(c.err("store_secret", { name: "github-token", value: { nested: CANARY } }));
    await collect(c.err("store_secret", { name: "github-token", value: CANARY, encoding: CANARY }));
    await collect(c.err("rotate_secret", { name: "nope", value: CANARY }));
    await collect(c.err(CANARY, { value: CANARY }));
    await collect(bob.err("store_secret", { name: "github-token", value: CANARY }));
    await collect(bob.err("access_secret", { leaseId: randomUUID(), domain: CANARY }));
    c.send({ id: randomUUID(), method: "store_secret", params: { value: CANARY }, [CANARY]: true });
    messages.push(JSON.stringify(await c.next()));
    c.socket.write(encodeFrame(CANARY).subarray(0, -1)); // "ghp_…" without its closing quote: bad JSON
    c.socket.write(Buffer.from("}"));
    messages.push(JSON.stringify(await c.next()));
    const h = await RawClient.open(r.tcp);
    h.send({ protocol: "lessor", version: 1, token: CANARY });
    messages.push(JSON.stringify(await h.next()));
    assert.equal(messages.length, 13);
    for (const m of messages) assert.ok(!m.includes(CANARY) && !m.includes(b64(CANARY)), `leaked: ${m}`);
    assert.ok(r.log.lines.length > 0, "the refused hello was logged");
    for (const l of r.log.lines) assert.ok(!l.includes(CANARY), `log leaked: ${l}`);
    const audit = await c.ok("audit_query", { limit: 1000 });
    assert.ok(!JSON.stringify(audit).includes(CANARY));
  });
});

describe("server: handshake", () => {
  test("wrong version, wrong protocol, a bad token and a non-hello are refused with a reason, then closed", async () => {
    const r = await rig();
    const cases: [unknown, string, RegExp][] = [
      [{ protocol: "lessor", version: 2 }, "invalid_request", /speaks lessor protocol version 1 and the hello asked for version 2/],
      [{ protocol: "http", version: 1 }, "invalid_request", /first frame must be a hello/],
      [{ id: randomUUID(), method: "status" }, "invalid_request", /first frame must be a hello/],
      [{ protocol: "lessor", version: 1, token: 7 }, "invalid_request", /invalid params for hello: token/],
      [{ protocol: "lessor", version: 1, token: "wrong" }, "unauthenticated", /token is not valid/],
      [{ protocol: "lessor", version: 1 }, "unauthenticated", /token is not valid/],
    ];
    for (const [hello, code, re] of cases) {
      const c = await RawClient.open(r.uds);
      c.send(hello);
      const w = await c.next();
      assert.equal(w.protocol, "lessor");
      assert.equal(w.version, 1);
      assert.equal(w.ok, false);
      assert.equal(w.error.code, code, JSON.stringify(hello));
      assert.match(w.error.message, re);
      await c.closed;
    }
    // an unauthenticated peer cannot make the daemon buffer a large frame
    const big = await RawClient.open(r.tcp);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(500_000, 0);
    big.socket.write(Buffer.concat([head, Buffer.alloc(9000, 0x20)]));
    const w = await big.next();
    assert.equal(w.error.code, "invalid_request");
    assert.match(w.error.message, /the hello is over 8192 bytes/);
    await big.closed;
  });

  test("no hello within handshakeTimeoutMs: refused and closed; requests sent right after the hello are served", async () => {
    const r = await rig({ handshakeTimeoutMs: 200 });
    const t0 = Date.now();
    const silent = await RawClient.open(r.tcp);
    const w = await silent.next();
    assert.equal(w.ok, false);
    assert.equal(w.error.code, "invalid_request");
    assert.match(w.error.message, /no hello within 200 ms/);
    await silent.closed;
    const took = Date.now() - t0;
    assert.ok(took >= 190 && took < 2000, `closed after ${took} ms`);

    // hello and a request in one write, without waiting for the welcome
    const eager = await RawClient.open(r.tcp);
    after(() => eager.close());
    const id = randomUUID();
    eager.socket.write(Buffer.concat([encodeFrame({ protocol: "lessor", version: 1, token: "claude-token" }), encodeFrame({ id, method: "status" })]));
    assert.equal((await eager.next()).ok, true);
    const st = await eager.next();
    assert.equal(st.id, id);
    assert.equal(st.result.identity.agent, "claude");
  });
});

describe("server: transports", () => {
  test("a connection over a plain duplex stream (no socket, as a vsock listener would hand over) is served like any other", async () => {
    const r = await rig();
    const [client, served] = duplexPair();
    r.server.handle(served, { transport: "vsock", cid: 42 });
    const c = new RawClient(client as unknown as Socket);
    c.send({ protocol: "lessor", version: 1, token: "admin-token" });
    const welcome = await c.next();
    assert.deepEqual(welcome.identity, { id: "test:admin", role: "admin", transport: "vsock" });
    assert.equal((await c.ok("status")).identity.role, "admin");
    assert.equal(r.server.connectionCount, 1);
    client.end(); // the client hangs up: the server finishes and lets the stream go
    await c.closed;
    for (let i = 0; i < 100 && r.server.connectionCount > 0; i++) await sleep(10);
    assert.equal(r.server.connectionCount, 0);
  });

  test("the token handshake's proof is bound to the endpoint the listener reported, not read off a socket", async () => {
    const r = await rig();
    const t = await r.vault.admin().createToken({ name: "duplex", role: "agent", agent: "claude" });
    const { id, secret } = splitToken(t.token)!;
    const [client, served] = duplexPair();
    r.server.handle(served, { transport: "tcp", remoteAddress: "127.0.0.1", localAddress: "::ffff:127.0.0.1", localPort: 7391 });
    const c = new RawClient(client as unknown as Socket);
    after(() => c.close());
    const nonce = newNonce();
    c.send({ protocol: "lessor", version: 1, tokenId: id, nonce: nonce.toString("base64url") });
    const ch = (await c.next()).challenge as { nonce: string; proof: string };
    const check = (binding: string) => checkServerProof(hashTokenSecret(secret), nonce, Buffer.from(ch.nonce, "base64url"), id, binding, Buffer.from(ch.proof, "base64url"));
    assert.equal(endpointBinding("tcp", "127.0.0.1", 7391), "tcp 127.0.0.1:7391");
    assert.ok(check("tcp 127.0.0.1:7391"), "the proof binds the address and port in the peer info");
    assert.ok(!check(endpointBinding("tcp")), "not an endpoint the stream does not have");
  });
});

describe("server: limits", () => {
  test("an oversize frame gets an error and a close, while another client keeps working", async () => {
    const r = await rig({ maxFrameBytes: 4096 });
    const bad = await RawClient.as(r.tcp, "admin-token");
    const good = await RawClient.as(r.uds, "claude-token");
    after(() => good.close());
    const head = Buffer.alloc(4);
    head.writeUInt32BE(4097, 0);
    bad.socket.write(Buffer.concat([head, Buffer.alloc(100, 0x20)]));
    const e = await bad.next();
    assert.deepEqual(e, { id: null, ok: false, error: { code: "invalid_request", message: "frame of 4097 bytes is over the 4096-byte limit" } });
    await bad.closed;
    assert.equal((await good.ok("status")).identity.agent, "claude");
    assert.ok(r.log.lines.some((l) => l.includes("oversize frame")));
  });

  test("half a frame then a stall: cut off after readTimeoutMs; an idle connection is closed after idleTimeoutMs", async () => {
    const r = await rig({ readTimeoutMs: 200, idleTimeoutMs: 600 });
    const c = await RawClient.as(r.tcp, "admin-token");
    const id = randomUUID();
    const frame = encodeFrame({ id, method: "status" });
    const t0 = Date.now();
    c.socket.write(frame.subarray(0, 10));
    await c.closed;
    const took = Date.now() - t0;
    assert.ok(took >= 190 && took < 1500, `cut off after ${took} ms`);
    assert.ok(r.log.lines.some((l) => l.includes("left a frame unfinished")));

    // a slow but steady client is fine: the frame completes within the deadline
    const slow = await RawClient.as(r.tcp, "admin-token");
    const p = slow.call("status");
    await sleep(50); // (call() already wrote the frame; this checks a live connection answers)
    assert.equal((await p).ok, true);

    // idle: no request and nothing in flight
    const t1 = Date.now();
    await slow.closed;
    const idle = Date.now() - t1;
    assert.ok(idle >= 450 && idle < 2500, `idle close after ${idle} ms`);
    assert.ok(r.log.lines.some((l) => l.includes("idle connection")));
  });

  test("over maxConnections, new connections get rate_limited at once and existing clients keep being served", async () => {
    // The handshake budget (test/dos.test.ts) is opened wide here: this is about the global cap.
    const r = await rig({ maxConnections: 900, handshakeTimeoutMs: 30_000, maxHandshakes: 2000, maxHandshakesPerPeer: 2000 });
    const existing = await RawClient.as(r.tcp, "admin-token");
    after(() => existing.close());
    const clients: RawClient[] = [];
    after(() => clients.forEach((c) => c.close()));
    let limited = 0;
    const firsts: Promise<void>[] = [];
    const opening = (async () => {
      const opened = await Promise.all(Array.from({ length: 1000 }, () => RawClient.open(r.tcp)));
      for (const c of opened) {
        clients.push(c);
        firsts.push(
          c.next(10_000).then((m: Msg) => {
            assert.equal(m.ok, false);
            assert.equal(m.error.code, "rate_limited");
            assert.equal(m.error.message, "the daemon has too many connections (900); try again");
            limited++;
          }, () => {}),
        );
      }
    })();
    // the existing client is answered while the flood is on
    const during = await existing.call("status");
    assert.equal(during.ok, true);
    await opening;
    const deadline = Date.now() + 10_000;
    while ((limited < 101 || r.server.connectionCount < 900) && Date.now() < deadline) await sleep(20);
    assert.equal(limited, 101, "1000 + 1 connections against a cap of 900");
    assert.equal(r.server.connectionCount, 900);
    assert.ok(r.log.lines.filter((l) => l.includes("connection cap")).length <= 2, "refusals are logged at most once a second");
    assert.equal((await existing.ok("status")).daemon.connections, 900);
    const refusedClosed = clients.filter((c) => c.isClosed).length;
    assert.ok(refusedClosed <= 101);
    for (const c of clients) c.close();
    const until = Date.now() + 5000;
    while (r.server.connectionCount > 1 && Date.now() < until) await sleep(20);
    assert.equal(r.server.connectionCount, 1);
    // room again: a new client gets in
    const late = await RawClient.as(r.tcp, "claude-token");
    late.close();
  });
});

describe("server: concurrency", () => {
  test("pipelined requests run concurrently and answer out of order", async () => {
    const r = await rig();
    const c = await RawClient.as(r.tcp, "admin-token");
    after(() => c.close());
    const order: string[] = [];
    const hold = r.hold(["queryAudit"]);
    const slow = c.call("audit_query", { limit: 1 }).then((m: Msg) => (order.push("audit_query"), m));
    while (hold.waiting() === 0) await sleep(5);
    const fast = c.call("status").then((m: Msg) => (order.push("status"), m));
    assert.equal((await fast).ok, true);
    hold.release();
    assert.equal((await slow).ok, true);
    assert.deepEqual(order, ["status", "audit_query"]);
  });

  test("the in-flight cap pauses reading instead of failing: 20 pipelined requests at maxInFlight 2 are all answered", async () => {
    const r = await rig({ maxInFlight: 2 });
    const c = await RawClient.as(r.uds, "admin-token");
    after(() => c.close());
    const hold = r.hold(["queryAudit"]);
    const calls = Array.from({ length: 20 }, () => c.call("audit_query", { limit: 1 }));
    while (hold.waiting() < 2) await sleep(5);
    await sleep(100);
    assert.equal(hold.waiting(), 2, "only maxInFlight requests reach the vault");
    hold.release();
    const res = await Promise.all(calls);
    assert.ok(res.every((m: Msg) => m.ok === true));
    assert.equal(new Set(res.map((m: Msg) => m.id)).size, 20);
  });

  test("a client that leaves with a request in flight: the request still completes in the vault, and the server stays up", async () => {
    const r = await rig();
    const admin = await RawClient.as(r.tcp, "admin-token");
    after(() => admin.close());
    await admin.ok("store_secret", { name: "github-token", value: CANARY });
    const claude = await RawClient.as(r.tcp, "claude-token");
    const hold = r.hold(["transaction"]);
    void claude.call("request_lease", { secret: "github-token" });
    while (hold.waiting() === 0) await sleep(5);
    claude.close();
    await claude.closed;
    await sleep(50);
    hold.release();
    const deadline = Date.now() + 3000;
    let leases: Msg[] = [];
    while (leases.length === 0 && Date.now() < deadline) {
      leases = await admin.ok("list_leases", { agent: "claude" });
      if (leases.length === 0) await sleep(20);
    }
    assert.equal(leases.length, 1, "the lease was granted even though nobody read the answer");
    assert.ok(!r.log.lines.some((l) => l.startsWith("error")), r.log.lines.join("\n"));
    assert.equal((await admin.ok("status")).daemon.connections, 1);
  });

  test("close() lets in-flight requests finish, refuses new work with unavailable, then closes every connection", async () => {
    const r = await rig();
    const c = await RawClient.as(r.tcp, "admin-token");
    const idle = await RawClient.as(r.uds, "claude-token");
    const hold = r.hold(["queryAudit"]);
    const inflight = c.call("audit_query", { limit: 1 });
    while (hold.waiting() === 0) await sleep(5);
    let closed = false;
    const closing = r.server.close().then(() => (closed = true));
    await sleep(100);
    assert.equal(closed, false, "close() waits for the request in flight");
    const refused = await c.err("status");
    assert.deepEqual(refused, { code: "unavailable", message: "the daemon is shutting down; retry once it is back" });
    const late = await RawClient.open(r.tcp);
    const w = await late.next();
    assert.equal(w.ok, false);
    assert.equal(w.error.code, "unavailable");
    hold.release();
    const res = await inflight;
    assert.equal(res.ok, true, "the in-flight request was answered");
    await closing;
    await Promise.all([c.closed, idle.closed, late.closed]);
    assert.equal(r.server.connectionCount, 0);
  });

  test("close() gives up on requests still running after shutdownGraceMs", async () => {
    const r = await rig({ shutdownGraceMs: 200 });
    const c = await RawClient.as(r.tcp, "admin-token");
    const hold = r.hold(["queryAudit"]);
    void c.call("audit_query", { limit: 1 });
    while (hold.waiting() === 0) await sleep(5);
    const t0 = Date.now();
    await r.server.close();
    const took = Date.now() - t0;
    assert.ok(took >= 190 && took < 2500, `closed after ${took} ms`);
    await c.closed;
    hold.release();
    assert.ok(r.log.lines.some((l) => l.includes("grace period over")));
  });
});
