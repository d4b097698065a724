/**
 * LessorClient and CredentialProvider against a protocol-level fake daemon on real sockets
 * (a Unix socket in a temp dir, and loopback TCP).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, test } from "node:test";
import { inspect } from "node:util";
import { CredentialProvider, LessorClient } from "../src/client/index.js";
import { SecretBytes } from "../src/crypto/secret-bytes.js";
import { WIRE_ERROR_CODES, type WireIdentity } from "../src/protocol/messages.js";
import type { Request } from "../src/protocol/messages.js";
import { VaultError } from "../src/base/errors.js";
import { isNoDaemon } from "../src/client/no-daemon.js";
import { ADMIN, FakeServer, type FakeOptions } from "./fixtures/fake-server.js";
import { tempDir } from "./helpers.js";

const CANARY = "CANARY-client-4b1e9d77-do-not-leak";
const TOKEN = `lsr_0123456789abcdef_${"s".repeat(43)}`;
const CLAUDE: WireIdentity = { id: "token:claude", role: "agent", agent: "claude", transport: "tcp" };
const dir = tempDir("lessor-client-");

const servers: FakeServer[] = [];
const clients: LessorClient[] = [];
after(async () => {
  for (const c of clients) await c.close();
  for (const s of servers) await s.close().catch(() => {});
});

async function unixServer(opts: FakeOptions = {}): Promise<FakeServer> {
  const s = await FakeServer.unix(dir, opts);
  servers.push(s);
  return s;
}
async function tcpServer(opts: FakeOptions = {}): Promise<FakeServer> {
  const s = await FakeServer.tcp(opts);
  servers.push(s);
  return s;
}
async function connect(s: FakeServer, opts: Parameters<typeof LessorClient.connect>[1] = {}): Promise<LessorClient> {
  const c = await LessorClient.connect(s.endpoint, opts);
  clients.push(c);
  return c;
}

/** Asserts that `p` rejects with a VaultError of `code` whose message matches `re`. */
async function rejectsWith(p: Promise<unknown>, code: string, re?: RegExp): Promise<VaultError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof VaultError, `expected a VaultError, got ${inspect(e)}`);
    assert.equal(e.code, code, `code of: ${e.message}`);
    if (re) assert.match(e.message, re);
    return e;
  }
  assert.fail(`expected a rejection with ${code}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test("unix socket: handshake, identity, a call, and an inspect that names the endpoint", async () => {
  const s = await unixServer();
  const c = await connect(s);
  assert.deepEqual(c.identity, ADMIN);
  assert.deepEqual(s.hellos, [{ protocol: "lessor", version: 1 }], "no token over the unix socket unless given");
  const st = await c.status();
  assert.deepEqual(st.identity, ADMIN);
  assert.equal(inspect(c), `LessorClient(uds ${(s.endpoint as { socketPath: string }).socketPath}, admin uid:1000)`);
});

test("tcp: the hello names the token, the token goes out after the daemon's proof; wrong or missing tokens are refused", async () => {
  const s = await tcpServer({ tokens: { [TOKEN]: CLAUDE } });
  const c = await connect(s, { token: TOKEN });
  assert.deepEqual(c.identity, CLAUDE);
  assert.equal(s.hellos[0]?.token, undefined, "the token is not in the hello");
  assert.equal(s.hellos[0]?.tokenId, "0123456789abcdef");
  assert.match(s.hellos[0]?.nonce ?? "", /^[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(s.tokensShown, [TOKEN]);
  const shown = inspect(c, { showHidden: true, depth: 10 }) + JSON.stringify(c);
  assert.match(shown, /agent claude/);
  assert.ok(!shown.includes(TOKEN), "the token is not shown");

  // Not shaped like a token, or none at all over TCP: refused before connecting.
  await rejectsWith(LessorClient.connect(s.endpoint, { token: "lsr_wrong" }), "unauthenticated", /not a lessor token/);
  await rejectsWith(LessorClient.connect(s.endpoint), "unauthenticated", /needs a token/);
  // A token the daemon does not hold (unknown id, or a known id with another secret): its proof fails, the token stays home.
  const unknown = `lsr_fedcba9876543210_${"s".repeat(43)}`;
  const otherSecret = `lsr_0123456789abcdef_${"t".repeat(43)}`;
  for (const t of [unknown, otherSecret]) await rejectsWith(LessorClient.connect(s.endpoint, { token: t }), "daemon_unverified", /could not prove that it holds this token, so the token was not sent/);
  assert.deepEqual(s.tokensShown, [TOKEN], "only the token the daemon proved it holds was ever sent");
  // A wrong token the fake does not know never reaches unauthenticated: it is stopped by the proof.
  assert.equal(s.hellos.length, 3);
});

test("'no daemon listening' is a mark set by the connect step, not words a server could send", async () => {
  const missing = join(dir, "nobody-at-all.sock");
  const e = await LessorClient.connect({ socketPath: missing }).then(
    () => assert.fail("connected to nothing"),
    (err: unknown) => err,
  );
  assert.ok(isNoDaemon(e), "a connect that found no socket is marked");
  // The same code and words made anywhere else (a reply, a squatter's text) are not the mark: the
  // CLI falls back to an in-process vault on the mark alone.
  assert.equal(isNoDaemon(new VaultError("unavailable", (e as Error).message)), false);
  assert.equal(isNoDaemon({ code: "unavailable", message: (e as Error).message }), false);
});

test("connect errors: no socket file, refused port, silent daemon, not a lessor daemon", async () => {
  const missing = join(dir, "nobody-here.sock");
  await rejectsWith(LessorClient.connect({ socketPath: missing }), "unavailable", new RegExp(`no lessor daemon is listening on ${missing.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}; start one with \`lessor serve\``));

  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  await rejectsWith(LessorClient.connect({ host: "127.0.0.1", port }, { token: TOKEN }), "unavailable", new RegExp(`no lessor daemon is listening on 127\\.0\\.0\\.1:${port}`));

  const silent = await unixServer({ silentHandshake: true });
  const t0 = Date.now();
  await rejectsWith(LessorClient.connect(silent.endpoint, { connectTimeoutMs: 200 }), "unavailable", /did not finish the handshake within 200 ms/);
  assert.ok(Date.now() - t0 < 2000);

  const liarAnswer = (sock: import("node:net").Socket) => sock.once("data", () => sock.write(Buffer.from([0, 0, 0, 5, 0x68, 0x65, 0x6c, 0x6c, 0x6f])));
  const liar = createServer(liarAnswer);
  const liarPath = join(dir, "liar.sock");
  await new Promise<void>((r) => liar.listen(liarPath, () => r()));
  after(() => liar.close());
  await rejectsWith(LessorClient.connect({ socketPath: liarPath }), "internal", /malformed handshake/);
  const tcpLiar = createServer(liarAnswer);
  await new Promise<void>((r) => tcpLiar.listen(0, "127.0.0.1", () => r()));
  after(() => tcpLiar.close());
  await rejectsWith(LessorClient.connect({ host: "127.0.0.1", port: (tcpLiar.address() as { port: number }).port }, { token: TOKEN }), "daemon_unverified", /did not answer the token handshake as a lessor daemon does, so the token was not sent/);

  await rejectsWith(LessorClient.connect({ socketPath: "" }), "invalid_request");
});

test("pipeline option: connect resolves on the socket and the first call goes out before any welcome", async () => {
  const s = await unixServer({ silentHandshake: true, intercept: () => true }); // never welcomes, never answers
  const c = await connect(s, { pipeline: true, connectTimeoutMs: 300 });
  const call = rejectsWith(c.status(), "unavailable", /did not finish the handshake within 300 ms/);
  for (let i = 0; i < 50 && s.requests.length === 0; i++) await sleep(5);
  assert.equal(s.requests[0]?.method, "status", "the request reached the daemon behind the hello, with no welcome yet");
  await call;
  // And without the option, connect itself waits for the welcome.
  await rejectsWith(LessorClient.connect(s.endpoint, { connectTimeoutMs: 200 }), "unavailable", /did not finish the handshake/);
  // A daemon that is not there still fails connect itself (so the CLI can fall back to the vault).
  await rejectsWith(LessorClient.connect({ socketPath: join(dir, "absent.sock") }, { pipeline: true }), "unavailable", /no lessor daemon is listening/);
});

test("pipelining: 100 calls in flight on one connection, answered in reverse order, each gets its own answer", async () => {
  const held: Request[] = [];
  const s = await unixServer({
    intercept(req, conn) {
      if (req.method !== "explain") return false;
      held.push(req);
      if (held.length === 100) for (const r of held.reverse()) conn.reply(r.id, { agent: (r.params as { agent: string }).agent });
      return true;
    },
  });
  const c = await connect(s);
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => c.explain(`agent-${i}`, "global/x")));
  results.forEach((r, i) => assert.equal((r as unknown as { agent: string }).agent, `agent-${i}`));
  assert.equal(s.connections.length, 1, "all on one connection");
  const ids = new Set(s.calls("explain").map((r) => r.id));
  assert.equal(ids.size, 100, "ids are unique");
  for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, "UUIDv7");
});

test("timeout: an unanswered call fails with unavailable, its late answer is ignored, the connection stays usable", async () => {
  const silent: Request[] = [];
  const s = await unixServer({
    intercept(req) {
      if (req.method !== "reload_policy") return false;
      silent.push(req);
      return true;
    },
  });
  const c = await connect(s, { requestTimeoutMs: 150 });
  const t0 = Date.now();
  const a = c.reloadPolicy();
  await sleep(60);
  const b = c.reloadPolicy();
  const ok = c.status();
  await rejectsWith(a, "unavailable", /no answer from the lessor daemon within 150 ms for reload_policy/);
  const ta = Date.now() - t0;
  await rejectsWith(b, "unavailable", /within 150 ms/);
  const tb = Date.now() - t0;
  assert.ok(ta >= 140 && ta < 1000, `first timed out after ${ta} ms`);
  assert.ok(tb >= 200, `second timed out after ${tb} ms, on its own clock`);
  assert.deepEqual((await ok).identity, ADMIN);
  // The late answers are dropped without harm.
  for (const r of silent) s.connections[0]!.reply(r.id, { rules: 1, digest: "late" });
  await sleep(20);
  assert.ok(c.connected);
  assert.deepEqual((await c.status()).identity, ADMIN);
  assert.equal(s.connections.length, 1);
});

test("connection loss: calls in flight reject and are not resent; the next call reconnects with the same token", async () => {
  let drop = true;
  const s = await tcpServer({
    tokens: { [TOKEN]: CLAUDE },
    intercept(req, conn) {
      if (req.method === "reload_policy") return true; // held, then lost with the connection
      if (req.method === "access_secret" && drop) {
        conn.destroy();
        return true;
      }
      return false;
    },
  });
  s.secrets.set("global/k", { value: Buffer.from("v"), version: 1 });
  const c = await connect(s, { token: TOKEN });
  const lease = await c.requestLease({ secret: "k" });
  const held = c.reloadPolicy();
  const access = c.accessSecret(lease.id);
  await rejectsWith(access, "unavailable", /connection to the lessor daemon was lost/);
  await rejectsWith(held, "unavailable", /may or may not have taken effect/);
  assert.equal(c.connected, false);
  await sleep(30);
  assert.equal(s.calls("access_secret").length, 1, "access_secret was not resent");

  drop = false;
  const got = await c.accessSecret(lease.id);
  assert.equal(got.value.unsafeText(), "v");
  got.value.wipe();
  assert.equal(s.connections.length, 2, "one reconnect");
  assert.deepEqual(s.tokensShown, [TOKEN, TOKEN]);
  assert.equal(s.calls("access_secret").length, 2);
});

test("connection loss with reconnect off, and a reconnect that fails, both reject without retrying", async () => {
  const s = await unixServer({ intercept: (req, conn) => (req.method === "killswitch" ? (conn.destroy(), true) : false) });
  const c = await connect(s, { reconnect: false });
  await rejectsWith(c.killswitch(), "unavailable", /lost/);
  await rejectsWith(c.status(), "unavailable", /reconnect is off/);
  assert.equal(s.connections.length, 1);

  const s2 = await unixServer({ intercept: (req, conn) => (req.method === "killswitch" ? (conn.destroy(), true) : false) });
  const c2 = await connect(s2, { connectTimeoutMs: 500 });
  await rejectsWith(c2.killswitch(), "unavailable", /lost/);
  await s2.close();
  await rejectsWith(c2.status(), "unavailable", /no lessor daemon is listening on/);
  assert.equal(s2.hellos.length, 1);
});

test("keepIdentity: a reconnection the daemon gives another identity is refused before any call goes out on it (none pipelined either); back to the first identity, calls go through", async () => {
  const first: WireIdentity = { id: "uid:1000", role: "agent", agent: "claude", transport: "uds" };
  const s = await unixServer({ identity: first, intercept: (req, conn) => (req.method === "killswitch" ? (conn.destroy(), true) : false) });
  const c = await connect(s, { keepIdentity: true, pipeline: true });
  assert.deepEqual((await c.status()).identity, first);
  await rejectsWith(c.killswitch(), "unavailable", /lost/);
  // The daemon came back knowing this uid as another agent (another [[identity]] table, say).
  s.opts.identity = { ...first, agent: "other" };
  const sent = s.requests.length;
  const calls = [c.status(), c.listLeases({}), c.revokeLease("01900000-0000-7000-8000-000000000001")];
  for (const p of calls) await rejectsWith(p, "unauthenticated", /now knows this client as agent "other", not as agent "claude"/);
  await sleep(30);
  assert.equal(s.requests.length, sent, "no call went out on the connection of the other identity");
  assert.deepEqual(c.identity, first);
  s.opts.identity = first;
  assert.deepEqual((await c.status()).identity, first);

  // Without keepIdentity (the default) the reconnection is taken as the daemon gives it.
  const s2 = await unixServer({ identity: first, intercept: (req, conn) => (req.method === "killswitch" ? (conn.destroy(), true) : false) });
  const c2 = await connect(s2);
  await rejectsWith(c2.killswitch(), "unavailable", /lost/);
  s2.opts.identity = { ...first, agent: "other" };
  assert.equal((await c2.status()).identity.agent, "other");
});

test("a frame over the cap, garbage, or a malformed response closes the connection and rejects the calls in flight", async () => {
  const s = await unixServer({
    intercept(req, conn) {
      const agent = (req.params as { agent?: string } | undefined)?.agent;
      if (req.method !== "explain") return false;
      if (agent === "big") {
        const f = Buffer.alloc(4 + 2048, 0x20);
        f.writeUInt32BE(2048, 0);
        conn.sendRaw(f);
      } else if (agent === "huge") conn.sendRaw(Buffer.from([0x00, 0x20, 0x00, 0x00])); // announces 2 MiB
      else if (agent === "garbage") conn.sendRaw(Buffer.concat([Buffer.from([0, 0, 0, 9]), Buffer.from("not json!")]));
      else if (agent === "shape") conn.send({ id: req.id, result: 1 });
      else if (agent === "nullid") conn.fail(null, "invalid_request", "could not read a request id");
      return true;
    },
  });
  const c = await connect(s, { maxFrameBytes: 1024, requestTimeoutMs: 5000 });
  const cases: [string, string, RegExp][] = [
    ["big", "internal", /frame of 2048 bytes, over the 1024-byte limit/],
    ["huge", "internal", /frame of 2097152 bytes/],
    ["garbage", "internal", /malformed message/],
    ["shape", "internal", /malformed/],
    ["nullid", "invalid_request", /could not read a request/],
  ];
  for (const [agent, code, re] of cases) {
    const before = s.connections.length;
    const bystander = c.reloadPolicy(); // answered by the built-in vault only if it is read before the bad frame
    const bad = c.explain(agent, "x");
    await rejectsWith(bad, code, re);
    await bystander.catch((e: VaultError) => assert.equal(e.code, code));
    await s.connections[before - 1]!.closed; // the client closed the connection
    assert.equal(c.connected, false);
    assert.deepEqual((await c.status()).identity, ADMIN, "and the next call reconnects");
    assert.equal(s.connections.length, before + 1);
  }
});

test("values: binary bytes go as base64 and come back into SecretBytes unchanged; text goes as utf8", async () => {
  const s = await unixServer();
  const c = await connect(s);
  const bytes = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(5000), Buffer.alloc(17)]);
  const backing = Buffer.concat([Buffer.from("xxxx"), bytes, Buffer.from("yyyy")]);
  const view = new Uint8Array(backing.buffer, backing.byteOffset + 4, bytes.length); // offset view: only its bytes are sent
  await c.storeSecret({ scope: "env:prod", name: "bin", value: view, kind: "opaque", tags: ["t"] });
  const req = s.calls("store_secret")[0]!.params as { value: string; encoding: string };
  assert.equal(req.encoding, "base64");
  assert.deepEqual(s.secrets.get("env:prod/bin")!.value, bytes);

  const rev = await c.revealSecret("env:prod/bin");
  assert.ok(rev.value instanceof SecretBytes);
  assert.equal(rev.version, 1);
  assert.ok(rev.value.equals(bytes));
  assert.equal(rev.value.length, bytes.length);

  const lease = await c.requestLease({ agent: "claude", secret: { scope: "env:prod", name: "bin" }, domains: ["api.example.com"] });
  const acc = await c.accessSecret(lease.id, { domain: "api.example.com" });
  assert.ok(acc.value.equals(bytes));
  assert.equal(acc.lease.uses, 1);
  acc.value.wipe();
  assert.ok(acc.value.wiped);

  const text = "pässwörd ✓ \u0000 end";
  await c.storeSecret({ name: "txt", value: text });
  assert.deepEqual(s.calls("store_secret")[1]!.params, { name: "txt", value: text, encoding: "utf8" });
  assert.equal((await c.revealSecret({ name: "txt" })).value.unsafeText(), text);

  await c.rotateSecret("txt", SecretBytes.from(bytes));
  assert.deepEqual(s.secrets.get("global/txt"), { value: bytes, version: 2 });
  const wiped = SecretBytes.from("x");
  wiped.wipe();
  await rejectsWith(c.rotateSecret("txt", wiped), "invalid_request", /already wiped/);
  await rejectsWith(c.rotateSecret("a/b/c", "v"), "invalid_request", /more than one/);
});

test("a request over the frame cap is refused locally, without the value in the message", async () => {
  const s = await unixServer();
  const c = await connect(s);
  const big = CANARY.repeat(Math.ceil(900_000 / CANARY.length)); // 1.2 MB once base64-encoded
  const e = await rejectsWith(c.storeSecret({ name: "big", value: Buffer.from(big) }), "invalid_request", /over the 1048576-byte frame limit/);
  assert.ok(!e.message.includes(CANARY));
  assert.equal(s.calls("store_secret").length, 0, "nothing was sent");
  assert.ok(c.connected);
  await c.storeSecret({ name: "small", value: Buffer.from(CANARY) });
  assert.equal(s.calls("store_secret").length, 1);
});

test("error responses become VaultErrors with the wire code and message; unknown codes become internal", async () => {
  const s = await unixServer({
    intercept(req, conn) {
      if (req.method !== "explain") return false;
      const code = (req.params as { agent: string }).agent;
      conn.fail(req.id, code, `server says ${code}; do the thing`);
      return true;
    },
  });
  const c = await connect(s);
  for (const code of WIRE_ERROR_CODES) await rejectsWith(c.explain(code, "x"), code, new RegExp(`^server says ${code}; do the thing$`));
  await rejectsWith(c.explain("bogus_code", "x"), "internal", /unknown error \(bogus_code\): server says bogus_code/);
  // The built-in vault's real errors map the same way, and the connection survives them.
  await rejectsWith(c.accessSecret("0190f1a2-0000-7000-8000-000000000000"), "lease_not_found");
  await rejectsWith(c.revealSecret("nope"), "secret_not_found");
  assert.equal(s.connections.length, 1);
});

test("every convenience method sends its wire method with params the server's schema accepts", async () => {
  const s = await unixServer();
  s.secrets.set("global/s", { value: Buffer.from("v"), version: 1 });
  const c = await connect(s);
  const lease = await c.requestLease({ agent: "claude", secret: "s", domains: ["a.example"], ttl: "5m", maxUses: 3 });
  const id = lease.id;
  await c.status();
  await c.storeSecret({ scope: "global", name: "s2", value: "v", kind: "api_key", description: "d", tags: ["x"], mode: "create" });
  await c.rotateSecret({ name: "s2" }, Buffer.from("w"));
  await c.rollbackSecret("s2", 1);
  await c.listSecrets({ scope: "global", namePrefix: "s", tag: "x" });
  await c.getSecretMetadata("s2");
  await c.secretHistory({ scope: "global", name: "s2" });
  await c.revealSecret("s2", 2);
  (await c.accessSecret(id, { domain: "a.example", method: "GET", path: "/v1" })).value.wipe();
  await c.renewLease(id, { ttl: 1000 });
  await c.revokeLease(id, "done");
  await c.revokeAllForAgent("claude", "why");
  await c.killswitch("stop");
  await c.listLeases({ agent: "claude", secret: { name: "s" }, live: true, limit: 5 });
  await c.auditQuery({ agent: "claude", types: ["lease_granted"], order: "desc", limit: 10 });
  await c.auditVerify();
  await c.reloadPolicy();
  await c.explain("claude", "global/s", "a.example");
  await c.rotateMasterKey();
  await c.createToken({ name: "ci", role: "agent", agent: "claude", ttl: "1d" });
  await c.listTokens();
  await c.revokeToken("abc");
  await c.deleteSecret("s2");
  const methods = new Set(s.requests.map((r) => r.method));
  assert.equal(methods.size, 24, [...methods].join(","));
  assert.deepEqual(s.calls("list_leases")[0]!.params, { agent: "claude", secret: "s", live: true, limit: 5 });
  assert.deepEqual(s.calls("renew_lease")[0]!.params, { leaseId: id, ttl: 1000 });
});

test("await using: the provider's credential revokes its lease at the server and zeroes every value", async () => {
  const s = await tcpServer({ tokens: { [TOKEN]: CLAUDE } });
  s.secrets.set("global/canary", { value: Buffer.from(CANARY), version: 1 });
  const c = await connect(s, { token: TOKEN });
  const provider = new CredentialProvider(c, { ttl: 60_000 });
  let leaseId = "";
  let raw: Buffer[] = [];
  let values: SecretBytes[] = [];
  {
    await using cred = await provider.lease("canary", { domains: ["api.example.com"], maxUses: 5 });
    leaseId = cred.lease.id;
    assert.equal(cred.lease.agent, "claude");
    const v1 = await cred.value({ domain: "api.example.com" });
    const v2 = await cred.value({ domain: "api.example.com" });
    values = [v1, v2];
    raw = [v1.expose(), v2.expose()];
    assert.equal(v1.unsafeText(), CANARY);
    assert.equal(cred.lease.uses, 2, "the lease record follows the uses");
    assert.equal(s.leases.get(leaseId)!.revokedAt, null);
    const shown = [inspect(cred, { showHidden: true, depth: 10 }), JSON.stringify(cred), String(cred), inspect(provider), inspect(v1), JSON.stringify({ v1 })].join("\n");
    assert.ok(!shown.includes(CANARY), shown);
    assert.match(inspect(cred), /LeasedCredential\(lease [0-9a-f-]+ global\/canary for claude, 2 value\(s\) handed out\)/);
    const denied = await rejectsWith(cred.value({ domain: "evil.example" }), "access_denied");
    assert.ok(!denied.message.includes(CANARY));
  }
  const lease = s.leases.get(leaseId)!;
  assert.notEqual(lease.revokedAt, null, "revoked at the server");
  assert.equal(s.calls("revoke_lease").length, 1);
  for (const v of values) assert.ok(v.wiped);
  for (const b of raw) assert.ok(b.every((x) => x === 0), "bytes zeroed");
});

test("disposal tolerates a lease that is already over, surfaces other errors, and wipes either way", async () => {
  const s = await unixServer();
  s.secrets.set("global/k", { value: Buffer.from(CANARY), version: 1 });
  const c = await connect(s, { reconnect: false });
  const provider = new CredentialProvider(c, { agent: "claude" });

  const a = await provider.lease("k");
  const va = await a.value();
  await c.killswitch("incident");
  await rejectsWith(a.value(), "lease_revoked");
  const rawA = va.expose();
  await a[Symbol.asyncDispose](); // revoke_lease answers { revoked: false }: fine
  assert.ok(va.wiped && rawA.every((x) => x === 0));
  await rejectsWith(a.value(), "lease_revoked", /already released/);

  const gone = await provider.lease("k");
  const vg = await gone.value();
  s.leases.delete(gone.lease.id);
  await gone[Symbol.asyncDispose](); // lease_not_found is ignored
  assert.ok(vg.wiped);

  const b = await provider.lease("k");
  const vb = await b.value();
  const rawB = vb.expose();
  await s.close();
  await sleep(20);
  await rejectsWith(b[Symbol.asyncDispose](), "unavailable");
  assert.ok(vb.wiped && rawB.every((x) => x === 0), "wiped even though the revoke failed");
});

test("close and await using on the client: in-flight calls reject, later calls reject, the socket closes", async () => {
  const s = await unixServer({ intercept: (req) => req.method === "reload_policy" });
  let inflight: Promise<unknown>;
  {
    await using c = await LessorClient.connect(s.endpoint);
    inflight = c.reloadPolicy();
    inflight.catch(() => {});
    await sleep(10);
    assert.equal(s.requests.length, 1);
  }
  await rejectsWith(inflight, "unavailable", /closed before the lessor daemon answered/);
  await s.connections[0]!.closed;

  const c2 = await LessorClient.connect(s.endpoint);
  await c2.close();
  await c2.close();
  await rejectsWith(c2.status(), "unavailable", /was closed/);
  assert.match(inspect(c2), /, closed\)$/);
});
