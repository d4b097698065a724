/**
 * A hostile local user and a hostile agent against a real `lessor serve` (its own process, a real
 * SQLite file, a Unix socket in a temp home and a loopback TCP port). Each test performs one family of
 * attacks and fails if the guarantee it checks breaks:
 * - role escalation: every admin- and orchestrator-only method of the registry called by an agent
 *   token (one by one, all pipelined in one write, smuggled through a duplicate `method` key), by an
 *   orchestrator token, with `act_for`-style fields in the envelope, the params or the hello;
 * - another agent's lease: use, renew, revoke, list, report, revoke-all, explain, guessed ids;
 * - a lease after its secret was deleted and stored again, after the policy stopped granting it,
 *   after the killswitch (and its release);
 * - a `max_uses = 1` lease raced by 60 concurrent accesses over 6 connections;
 * - tokens: revoked mid-connection with requests pipelined, expired, brute-forced, never logged;
 * - protocol abuse: zero-length, invalid UTF-8, `__proto__`/`constructor` keys, duplicate keys, deep
 *   nesting, huge numbers, wrong types, prototype method names, lying length prefixes, truncated and
 *   oversize frames, half-closed connections, requests pipelined behind a refused hello, thousands
 *   of requests in flight, a client that never reads;
 * - information leaks: a canary value in any frame, log line, audit row or database file; what an
 *   agent learns from status/describe/explain/list_granted and from refusals;
 * - TCP: a non-loopback bind is refused.
 */
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { checkServerProof, endpointBinding, hashTokenSecret, newNonce, splitToken } from "../src/crypto/token-proof.js";
import { encodeFrame } from "../src/protocol/framing.js";
import { REGISTRY, type MethodName } from "../src/protocol/registry.js";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const GH_VALUE = `ghp_${randomBytes(16).toString("hex")}`;
const TEMP_OLD = `temp-old-${randomBytes(8).toString("hex")}`;
const TEMP_NEW = `temp-new-${randomBytes(8).toString("hex")}`;
const BOB_ONLY = "bob-only-secret-name";
const DOMAIN = "api.github.com";

const CLAUDE_RULE = `[[rule]]
name = "claude-gh"
effect = "allow"
agents = ["claude"]
secrets = ["github-token", "canary", "temp", "racy"]
domains = ["${DOMAIN}"]
methods = ["GET"]
reveal = true
`;
const BOB_RULE = `[[rule]]
name = "bob-private-rule"
effect = "allow"
agents = ["bob"]
secrets = ["github-token", "${BOB_ONLY}"]
domains = ["${DOMAIN}"]
`;
const GUARDED_RULE = `[[rule]]
name = "guarded"
effect = "allow"
agents = ["claude", "bob"]
secrets = ["guarded"]
domains = ["${DOMAIN}"]
approval = "required"
`;
const POLICY = CLAUDE_RULE + BOB_RULE + GUARDED_RULE;

/** Every base64 form a value can take in a frame (whatever its offset in a longer base64 run). */
function forms(v: string): string[] {
  const b = Buffer.from(v);
  return [v, ...[0, 1, 2].map((i) => b.subarray(i).toString("base64").slice(0, -4))];
}

function assertNoCanary(text: string, where: string): void {
  for (const f of forms(CANARY)) assert.ok(!text.includes(f), `the canary (${f === CANARY ? "plain" : "base64"}) appears in ${where}`);
}

// ---------- clients ----------

/** A raw client that can do the token handshake and send bytes as they are. */
/** Conn.admin: the Unix socket as its owner (root here). */
class Conn extends DaemonConn {
  /** The token handshake, checking the daemon's proof as lessor's client does; resolves once welcomed. */
  static async token(to: string | { host: string; port: number }, token: string): Promise<Conn> {
    const c = await Conn.open(to);
    const { id, secret } = splitToken(token)!;
    const nonce = newNonce();
    c.send({ protocol: "lessor", version: 1, tokenId: id, nonce: nonce.toString("base64url") });
    const ch = (await c.next()).challenge as { nonce: string; proof: string };
    const binding = typeof to === "string" ? "uds" : endpointBinding("tcp", c.socket.remoteAddress, c.socket.remotePort);
    assert.ok(checkServerProof(hashTokenSecret(secret), nonce, Buffer.from(ch.nonce, "base64url"), id, binding, Buffer.from(ch.proof, "base64url")), "the daemon's proof");
    c.send({ token });
    const w = await c.next();
    assert.equal(w.ok, true, JSON.stringify(w));
    return c;
  }

  /** Writes raw bytes: a 4-byte length then `body` (or `len` as the prefix, when it lies). */
  raw(body: Buffer | string, len?: number): void {
    const b = typeof body === "string" ? Buffer.from(body, "utf8") : body;
    const head = Buffer.alloc(4);
    head.writeUInt32BE(len ?? b.length);
    this.socket.write(Buffer.concat([head, b]));
  }

  /** Sends `calls` in one write; resolves with their answers in the order sent. */
  async pipeline(calls: [string, unknown][]): Promise<Msg[]> {
    const ids = calls.map(() => randomUUID());
    this.socket.write(Buffer.concat(calls.map(([method, params], i) => encodeFrame({ id: ids[i], method, params }))));
    const got = new Map<string, Msg>();
    while (got.size < ids.length) {
      const m = await this.next();
      got.set(m.id, m);
    }
    return ids.map((id) => got.get(id));
  }

  /** Asserts the call was refused with `code`; returns the message. */
  async refused(method: string, params: unknown, code: string): Promise<string> {
    const r = await this.call(method, params);
    assert.equal(r.ok, false, `${method} ${JSON.stringify(params)} should have been refused, got ${JSON.stringify(r).slice(0, 300)}`);
    assert.equal(r.error.code, code, `${method}: ${r.error.message}`);
    return r.error.message as string;
  }

  async ok(method: string, params?: unknown): Promise<Msg> {
    const r = await this.call(method, params);
    assert.equal(r.ok, true, `${method}: ${JSON.stringify(r.error ?? r)}`);
    return r.result;
  }
}

/** Every frame every test's clients received, checked for the canary at the end. */
const everyFrame: string[] = [];
/** Frames that legitimately carry the canary (the one access that returns it) are not recorded. */
function record(m: Msg): Msg {
  everyFrame.push(JSON.stringify(m));
  return m;
}

const tokenSecretsSeen: string[] = [];

interface Rig {
  d: RunningDaemon;
  tcp: { host: string; port: number };
  admin: Conn;
  tokens: Record<"claude" | "bob" | "orch", { id: string; token: string; name: string }>;
  audit(filter?: Record<string, unknown>): Promise<Msg[]>;
  claudeId: string;
  bobId: string;
}

async function startRig(): Promise<Rig> {
  const config = `[vault]\nmax_live_leases_per_agent = 100000\n[server]\ntcp = "127.0.0.1:0"\nread_timeout = "1s"\n`;
  const home = await makeHome({ config, policy: POLICY });
  const d = await startServe(home);
  assert.ok(d.tcp, "the daemon listens on TCP");
  const admin = await Conn.admin(d);
  await admin.ok("store_secret", { name: "github-token", value: GH_VALUE });
  await admin.ok("store_secret", { name: "canary", value: CANARY });
  await admin.ok("store_secret", { name: "temp", value: TEMP_OLD });
  await admin.ok("store_secret", { name: "racy", value: "racy-value" });
  await admin.ok("store_secret", { name: BOB_ONLY, value: "bob-value" });
  await admin.ok("store_secret", { name: "guarded", value: "guarded-value" });
  const mk = async (name: string, role: string, extra: Record<string, unknown>) => {
    const t = await admin.ok("token_create", { name, role, ...extra });
    tokenSecretsSeen.push(splitToken(t.token)!.secret);
    return { id: t.id as string, token: t.token as string, name };
  };
  const tokens = {
    claude: await mk("claude-laptop", "agent", { agent: "claude" }),
    bob: await mk("bob-box", "agent", { agent: "bob" }),
    orch: await mk("orch", "orchestrator", { actFor: ["claude"] }),
  };
  return {
    d,
    tcp: d.tcp!,
    admin,
    tokens,
    audit: async (filter = {}) => admin.ok("audit_query", { limit: 10_000, ...filter }),
    claudeId: `token:claude-laptop/${tokens.claude.id}`,
    bobId: `token:bob-box/${tokens.bob.id}`,
  };
}

/** Params that pass each non-agent method's schema, so that only the role check can refuse it. */
const VALID: Partial<Record<MethodName, Record<string, unknown>>> = {
  store_secret: { name: "github-token", value: "evil" },
  rotate_secret: { name: "github-token", value: "evil" },
  rotate_secret_hook: { name: "github-token" },
  rollback_secret: { name: "github-token", version: 1 },
  delete_secret: { name: "github-token" },
  reveal_secret: { name: "github-token" },
  list_secrets: {},
  get_secret_metadata: { name: "github-token" },
  secret_history: { name: "github-token" },
  approval_list: {},
  approval_decide: { id: randomUUID(), approve: true },
  approval_withdraw: { requestedBy: "token:claude-laptop/x", agent: "claude", reason: "evil" },
  killswitch: {},
  killswitch_release: {},
  heartbeat: { reason: "keep me alive" },
  audit_query: {},
  audit_verify: {},
  audit_recover: { reason: "evil" },
  reload_policy: {},
  rotate_master_key: {},
  token_create: { name: "evil", role: "admin" },
  token_list: {},
  token_revoke: { id: "0123456789abcdef" },
};

describe("a hostile agent against lessor serve", () => {
  let r: Rig;
  before(async () => {
    r = await startRig();
  });
  after(async () => {
    r?.admin.close();
    await r?.d.stop();
  });

  test("role escalation: every admin/orchestrator method of the registry, one by one, pipelined in one write, and smuggled by a duplicate key, is access_denied and audited; nothing changes", async () => {
    const agentOnly = (Object.keys(REGISTRY) as MethodName[]).filter((m) => !(REGISTRY[m].roles as readonly string[]).includes("agent"));
    const adminOnly = agentOnly.filter((m) => !(REGISTRY[m].roles as readonly string[]).includes("orchestrator"));
    for (const m of agentOnly) assert.ok(VALID[m], `add valid params for ${m} to this test`);
    // Refusals the access_denied rows stand for: one each, or detail.count for a window's summary
    // (past an identity's burst, refusals are counted and written once per window: src/vault/refusals.ts).
    const refusals = async (): Promise<number> =>
      (await r.audit({ types: ["access_denied"] })).reduce((n: number, e: Msg) => n + ((e.detail as { count?: number } | null)?.count ?? 1), 0);
    const before = await refusals();
    const tokensBefore = (await r.admin.ok("token_list")).length;

    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    for (const m of agentOnly) record(await claude.refused(m, VALID[m], "access_denied"));
    // The same, pipelined in a single write.
    const piped = await claude.pipeline(agentOnly.map((m) => [m, VALID[m]!]));
    for (const m of piped) assert.equal(record(m).error?.code, "access_denied", JSON.stringify(m));
    // A duplicate "method" key: JSON.parse keeps the last; the role check sees what runs.
    const id = randomUUID();
    claude.raw(`{"id":"${id}","method":"status","params":{"name":"github-token"},"method":"reveal_secret"}`);
    const dup = record(await claude.next());
    assert.equal(dup.id, id);
    assert.equal(dup.ok, false);
    assert.equal(dup.error.code, "access_denied");

    // An orchestrator reaches no admin-only method either.
    const orch = await Conn.token(r.tcp, r.tokens.orch.token);
    for (const m of adminOnly) record(await orch.refused(m, VALID[m], "access_denied"));

    // Nothing changed: the value, the tokens, the killswitch.
    const v = await r.admin.ok("reveal_secret", { name: "github-token" });
    assert.equal(Buffer.from(v.value, "base64").toString(), GH_VALUE);
    assert.equal((await r.admin.ok("token_list")).length, tokensBefore);
    assert.equal((await r.admin.ok("status")).killswitch, false);
    // Every refusal is audited: claude's past its burst in the summary row its window ends with.
    const need = agentOnly.length * 2 + 1 + adminOnly.length;
    const end = Date.now() + 15_000;
    while ((await refusals()) - before < need && Date.now() < end) await sleep(250);
    const denials = (await refusals()) - before;
    assert.ok(denials >= need, `audited refusals: ${denials} of ${need}`);
    claude.close();
    orch.close();
  });

  test("role escalation through fields: act_for/role/identity/agent in the hello, the envelope or the params never change who the connection is", async () => {
    // In the hello (the old one-step form and the token handshake): unknown fields are refused.
    for (const extra of [{ role: "admin" }, { act_for: ["*"] }, { identity: { role: "admin" } }, { agent: "bob" }]) {
      const c = await Conn.open(r.tcp);
      c.send({ protocol: "lessor", version: 1, token: r.tokens.claude.token, ...extra });
      const w = record(await c.next());
      assert.equal(w.ok, false, JSON.stringify(extra));
      assert.equal(w.error.code, "invalid_request");
      await c.closed;
    }
    // __proto__ in the hello, and a hello or a token frame that is not UTF-8.
    const proto = await Conn.open(r.tcp);
    proto.raw(`{"protocol":"lessor","version":1,"__proto__":{"token":${JSON.stringify(r.tokens.claude.token)}}}`);
    assert.equal(record(await proto.next()).error.code, "invalid_request");
    const badHello = await Conn.open(r.tcp);
    badHello.raw(Buffer.concat([Buffer.from(`{"protocol":"lessor","version":1,"token":"${r.tokens.claude.token}`), Buffer.from([0xff]), Buffer.from('"}')]));
    const bh = record(await badHello.next());
    assert.equal(bh.error.code, "invalid_request");
    assert.match(bh.error.message, /UTF-8/);
    const badProof = await Conn.open(r.tcp);
    badProof.send({ protocol: "lessor", version: 1, tokenId: r.tokens.claude.id, nonce: newNonce().toString("base64url") });
    assert.ok((await badProof.next()).challenge);
    badProof.raw(Buffer.concat([Buffer.from(`{"token":"${r.tokens.claude.token}`), Buffer.from([0xc0, 0x80]), Buffer.from('"}')]));
    assert.equal(record(await badProof.next()).ok, false, "a token frame that is not UTF-8 is refused");
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    // In the envelope.
    for (const extra of [{ act_for: "bob" }, { actFor: ["*"] }, { identity: { role: "admin" } }, { role: "admin" }, { token: r.tokens.orch.token }]) {
      const id = randomUUID();
      claude.send({ id, method: "list_secrets", params: {}, ...extra });
      const m = record(await claude.next());
      assert.equal(m.id, id);
      assert.equal(m.error?.code, "invalid_request", JSON.stringify(extra));
      assert.ok(!m.error.message.includes(splitToken(r.tokens.orch.token)!.secret), "an error never quotes a token");
    }
    // In the params.
    for (const extra of [{ act_for: "bob" }, { actFor: ["bob"] }, { as: "bob" }, { identity: "bob" }])
      record(await claude.refused("request_lease", { secret: "github-token", ...extra }, "invalid_request"));
    // Naming another agent where a method takes one.
    record(await claude.refused("request_lease", { agent: "bob", secret: BOB_ONLY }, "access_denied"));
    record(await claude.refused("request_lease", { agent: "bob", secret: "github-token", access: {} }, "access_denied"));
    record(await claude.refused("approval_request", { agent: "bob", secret: BOB_ONLY }, "access_denied"));
    record(await claude.refused("record_tool_call", { agent: "bob", tool: "x", outcome: "ok", ms: 1 }, "access_denied"));
    record(await claude.refused("list_granted", { agent: "bob" }, "access_denied"));
    record(await claude.refused("explain", { agent: "bob", secret: BOB_ONLY }, "access_denied"));
    record(await claude.refused("list_leases", { agent: "bob" }, "access_denied"));
    record(await claude.refused("revoke_all_for_agent", { agent: "bob" }, "access_denied"));
    // An orchestrator for claude cannot act for bob.
    const orch = await Conn.token(r.tcp, r.tokens.orch.token);
    record(await orch.refused("request_lease", { agent: "bob", secret: "github-token" }, "access_denied"));
    record(await orch.refused("revoke_all_for_agent", { agent: "bob" }, "access_denied"));
    record(await orch.refused("list_granted", { agent: "bob" }, "access_denied"));
    // whoami still says claude, and names no token secret.
    const who = record(await claude.ok("whoami"));
    assert.deepEqual([who.identity.role, who.identity.agent], ["agent", "claude"]);
    assert.ok(!JSON.stringify(who).includes(splitToken(r.tokens.claude.token)!.secret));
    claude.close();
    orch.close();
  });

  test("another agent's lease: bob cannot use, renew, revoke, list, report or revoke-all claude's lease; guessed ids are not found; claude's lease is untouched", async () => {
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    const bob = await Conn.token(r.d.socket, r.tokens.bob.token); // a token over the Unix socket
    const lease = record(await claude.ok("request_lease", { secret: "canary", maxUses: 3 }));
    const attempts: [string, Record<string, unknown>, string][] = [
      ["access_secret", { leaseId: lease.id, domain: DOMAIN }, "access_denied"],
      ["access_secret", { leaseId: lease.id, domain: DOMAIN, method: "GET", path: "/" }, "access_denied"],
      ["renew_lease", { leaseId: lease.id }, "access_denied"],
      ["revoke_lease", { leaseId: lease.id, reason: "mine now" }, "access_denied"],
      ["revoke_all_for_agent", { agent: "claude" }, "access_denied"],
      ["list_leases", { agent: "claude" }, "access_denied"],
      ["record_proxy_requests", { reports: [{ agent: "bob", leaseIds: [lease.id], method: "GET", host: "evil.example", path: "/", status: 0, bytesOut: 0, bytesIn: 0, ms: 0, outcome: "tripwire" }] }, "access_denied"],
      ["record_proxy_requests", { reports: [{ agent: "claude", leaseIds: [lease.id], method: "GET", host: "evil.example", path: "/", status: 0, bytesOut: 0, bytesIn: 0, ms: 0, outcome: "tripwire" }] }, "access_denied"],
    ];
    // One by one, then the same pipelined in one write.
    for (const [m, p, code] of attempts) {
      const msg = await bob.refused(m, p, code);
      record(msg);
      assert.ok(!msg.includes("canary") || m === "list_leases" || m === "revoke_all_for_agent", `${m}: the refusal names the lease's secret: ${msg}`);
    }
    const all = await bob.pipeline(attempts.map(([m, p]) => [m, p]));
    for (const [i, a] of all.entries()) assert.equal(record(a).error?.code, attempts[i]![2], `${attempts[i]![0]} pipelined`);
    // bob's own listing never shows it.
    assert.ok(!(await bob.ok("list_leases", {})).some((l: Msg) => l.id === lease.id));
    // Guessed ids: a random UUID and ids next to the real one (a UUIDv7 is time, a counter, random bits).
    const near = [lease.id.replace(/.$/, (c: string) => (c === "0" ? "1" : "0")), lease.id.slice(0, 14) + "7fff" + lease.id.slice(18), randomUUID()];
    for (const id of near) record(await bob.refused("access_secret", { leaseId: id, domain: DOMAIN }, "lease_not_found"));
    // claude's lease is live, with no use counted, and works.
    const got = await claude.ok("access_secret", { leaseId: lease.id, domain: DOMAIN, method: "GET" });
    assert.equal(Buffer.from(got.value, "base64").toString(), CANARY);
    assert.equal(got.lease.uses, 1);
    assert.equal(got.lease.revokedAt, null);
    // The orchestrator for claude may use it; for bob's lease it may not.
    const orch = await Conn.token(r.tcp, r.tokens.orch.token);
    const bobLease = record(await bob.ok("request_lease", { secret: BOB_ONLY }));
    record(await orch.refused("access_secret", { leaseId: bobLease.id, domain: DOMAIN }, "access_denied"));
    record(await orch.refused("revoke_lease", { leaseId: bobLease.id }, "access_denied"));
    record(await claude.refused("access_secret", { leaseId: bobLease.id, domain: DOMAIN }, "access_denied"));
    // The orchestrator's listings never show bob's leases, whatever it filters by; naming bob is refused.
    for (const f of [{}, { secret: BOB_ONLY }])
      assert.ok(!record(await orch.ok("list_leases", f)).some((l: Msg) => l.agent !== "claude"), `orchestrator list_leases ${JSON.stringify(f)}`);
    record(await orch.refused("list_leases", { agent: "bob" }, "access_denied"));
    // Each refusal is audited under the caller's identity.
    const rows = await r.audit({ types: ["access_denied"], actorId: r.bobId });
    assert.ok(rows.filter((e: Msg) => e.leaseId === lease.id).length >= 6, "bob's attempts on claude's lease are audited");
    for (const c of [claude, bob, orch]) c.close();
  });

  test("use-count race: 60 concurrent accesses of a max_uses = 1 lease over 6 connections (agent and orchestrator) get the value exactly once", async () => {
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    const lease = record(await claude.ok("request_lease", { secret: "racy", maxUses: 1 }));
    assert.equal(lease.maxUses, 1);
    const conns = [
      ...(await Promise.all([0, 1, 2].map(() => Conn.token(r.tcp, r.tokens.claude.token)))),
      ...(await Promise.all([0, 1].map(() => Conn.token(r.d.socket, r.tokens.claude.token)))),
      await Conn.token(r.tcp, r.tokens.orch.token),
    ];
    const calls = conns.flatMap((c) => Array.from({ length: 10 }, () => c.call("access_secret", { leaseId: lease.id, domain: DOMAIN })));
    const answers = await Promise.all(calls);
    const ok = answers.filter((a) => a.ok);
    assert.equal(ok.length, 1, `successful uses: ${ok.length}`);
    assert.equal(Buffer.from(ok[0].result.value, "base64").toString(), "racy-value");
    for (const a of answers.filter((x) => !x.ok)) assert.equal(a.error.code, "lease_exhausted");
    const used = (await r.audit({ types: ["secret_accessed"], leaseId: lease.id })).length;
    assert.equal(used, 1, "one secret_accessed event");
    for (const c of [claude, ...conns]) c.close();
  });

  test("approvals: claude's approved request is used once under 30 concurrent grants, bob cannot use claude's approval, and no agent can decide one", async () => {
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    const bob = await Conn.token(r.tcp, r.tokens.bob.token);
    const ask = record(await claude.ok("approval_request", { secret: "guarded", reason: "need it" }));
    assert.equal(ask.required, true);
    const id = ask.approval.id as string;
    record(await claude.refused("approval_decide", { id, approve: true }, "access_denied"));
    record(await bob.refused("approval_decide", { id, approve: true }, "access_denied"));
    record(await claude.refused("approval_list", {}, "access_denied"));
    record(await claude.refused("request_lease", { secret: "guarded", approval: id }, "access_denied")); // still pending
    await r.admin.ok("approval_decide", { id, approve: true });
    // bob presents claude's approval id: refused, and the approval is not used up.
    record(await bob.refused("request_lease", { secret: "guarded", approval: id }, "access_denied"));
    record(await bob.refused("request_lease", { secret: "guarded", approval: id, access: {} }, "access_denied"));
    const conns = [claude, ...(await Promise.all([0, 1].map(() => Conn.token(r.tcp, r.tokens.claude.token))))];
    const answers = await Promise.all(conns.flatMap((c) => Array.from({ length: 10 }, (_, i) => c.call("request_lease", i % 2 ? { secret: "guarded", approval: id } : { secret: "guarded", approval: id, access: {} }))));
    const ok = answers.filter((a) => a.ok);
    assert.equal(ok.length, 1, `grants on one approval: ${ok.length}`);
    for (const a of answers.filter((x) => !x.ok)) assert.equal(record(a).error.code, "access_denied");
    for (const c of [bob, ...conns]) c.close();
  });

  test("a lease after its secret was deleted and stored again, or after the policy stopped granting it, gives nothing", async () => {
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    // Deleted and re-stored under the same name: the old lease stays revoked, never the new value.
    const lease = record(await claude.ok("request_lease", { secret: "temp" }));
    const first = await claude.ok("access_secret", { leaseId: lease.id, domain: DOMAIN });
    assert.equal(Buffer.from(first.value, "base64").toString(), TEMP_OLD);
    await r.admin.ok("delete_secret", { name: "temp" });
    await r.admin.ok("store_secret", { name: "temp", value: TEMP_NEW });
    record(await claude.refused("access_secret", { leaseId: lease.id, domain: DOMAIN }, "lease_revoked"));
    record(await claude.refused("renew_lease", { leaseId: lease.id }, "lease_revoked"));
    // Rotated (by design a lease follows its secret): the next use gives the new version, never an older one.
    const rot = record(await claude.ok("request_lease", { secret: "temp" }));
    await r.admin.ok("rotate_secret", { name: "temp", value: `${TEMP_NEW}-2` });
    const afterRotation = await claude.ok("access_secret", { leaseId: rot.id, domain: DOMAIN });
    assert.equal(Buffer.from(afterRotation.value, "base64").toString(), `${TEMP_NEW}-2`);
    record(await claude.refused("access_secret", { leaseId: rot.id, domain: DOMAIN, version: 1 }, "invalid_request"));
    // The policy stops granting it: a live lease is refused at once, and cannot be renewed.
    const live = record(await claude.ok("request_lease", { secret: "github-token" }));
    writeFileSync(join(r.d.home, "policy.toml"), BOB_RULE + GUARDED_RULE, { mode: 0o600 });
    try {
      await r.admin.ok("reload_policy");
      record(await claude.refused("access_secret", { leaseId: live.id, domain: DOMAIN }, "access_denied"));
      record(await claude.refused("renew_lease", { leaseId: live.id }, "access_denied"));
      record(await claude.refused("request_lease", { secret: "github-token", access: {} }, "access_denied"));
    } finally {
      writeFileSync(join(r.d.home, "policy.toml"), POLICY, { mode: 0o600 });
      await r.admin.ok("reload_policy");
    }
    // Wrong domain, method and path spoofs on a good lease.
    const spoofs: [Record<string, string>, string][] = [
      [{ domain: "api.github.com.evil.com" }, "access_denied"],
      [{ domain: "evil.com" }, "access_denied"],
      [{ domain: "API.GITHUB.COM.", method: "POST" }, "access_denied"],
      [{ domain: DOMAIN, method: "POST" }, "access_denied"],
      [{}, "access_denied"],
      [{ domain: `${DOMAIN}\u0000` }, "invalid_request"],
      [{ domain: `${DOMAIN}\u202e` }, "invalid_request"],
    ];
    for (const [t, code] of spoofs) record(await claude.refused("access_secret", { leaseId: live.id, ...t }, code));
    claude.close();
  });

  test("protocol abuse from an authenticated agent: every malformed frame gets invalid_request (or a close), the connection or the daemon stays up, nothing runs", async () => {
    const c = await Conn.token(r.tcp, r.tokens.claude.token);
    const expectInvalid = async (what: string, send: () => void) => {
      send();
      const m = record(await c.next());
      assert.equal(m.ok, false, what);
      assert.equal(m.error.code, "invalid_request", `${what}: ${m.error.message}`);
      return m;
    };
    await expectInvalid("a zero-length frame", () => c.raw(Buffer.alloc(0)));
    await expectInvalid("invalid UTF-8 (a lone continuation byte)", () => c.raw(Buffer.from([0x7b, 0x80, 0x7d])));
    await expectInvalid("invalid UTF-8 inside a string param", () =>
      c.raw(Buffer.concat([Buffer.from(`{"id":"${randomUUID()}","method":"request_lease","params":{"secret":"github-`), Buffer.from([0xff, 0xfe]), Buffer.from('token"}}')])),
    );
    await expectInvalid("an overlong UTF-8 encoding of '/'", () =>
      c.raw(Buffer.concat([Buffer.from(`{"id":"${randomUUID()}","method":"list_leases","params":{"secret":"a`), Buffer.from([0xc0, 0xaf]), Buffer.from('b"}}')])),
    );
    await expectInvalid("a UTF-16 surrogate encoded in UTF-8", () =>
      c.raw(Buffer.concat([Buffer.from(`{"id":"${randomUUID()}","method":"list_leases","params":{"secret":"a`), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('b"}}')])),
    );
    // Where the text would otherwise be accepted, repaired with U+FFFD: a revocation reason, and (below, as admin) a secret value.
    const mine = await c.ok("request_lease", { secret: "github-token" });
    await expectInvalid("invalid UTF-8 in a revocation reason", () =>
      c.raw(Buffer.concat([Buffer.from(`{"id":"${randomUUID()}","method":"revoke_lease","params":{"leaseId":"${mine.id}","reason":"a`), Buffer.from([0xff]), Buffer.from('b"}}')])),
    );
    assert.equal((await c.ok("list_leases", {})).find((l: Msg) => l.id === mine.id).revokedAt, null, "the lease was not revoked by a frame that is not UTF-8");
    await c.ok("revoke_lease", { leaseId: mine.id });
    const storeId = randomUUID();
    r.admin.raw(Buffer.concat([Buffer.from(`{"id":"${storeId}","method":"store_secret","params":{"name":"utf8-probe","value":"ab`), Buffer.from([0xc3]), Buffer.from('"}}')]));
    const stored = record(await r.admin.next());
    assert.equal(stored.ok, false, "a secret value that is not UTF-8 is not stored altered (with U+FFFD in place of its bytes)");
    assert.equal(stored.error.code, "invalid_request");
    await expectInvalid("not JSON", () => c.raw("{nope"));
    await expectInvalid("a JSON array", () => c.raw("[1,2]"));
    await expectInvalid("a JSON string", () => c.raw('"status"'));
    await expectInvalid("__proto__ in the envelope", () => c.raw(`{"id":"${randomUUID()}","method":"status","__proto__":{"role":"admin"}}`));
    await expectInvalid("constructor in the envelope", () => c.raw(`{"id":"${randomUUID()}","method":"status","constructor":{"prototype":{"role":"admin"}}}`));
    await expectInvalid("__proto__ in params", () => c.raw(`{"id":"${randomUUID()}","method":"request_lease","params":{"secret":"github-token","__proto__":{"agent":"bob"}}}`));
    await expectInvalid("__proto__ in a nested param", () =>
      c.raw(`{"id":"${randomUUID()}","method":"request_lease","params":{"secret":"github-token","access":{"__proto__":{"domain":"${DOMAIN}"}}}}`),
    );
    await expectInvalid("constructor.prototype in params", () => c.raw(`{"id":"${randomUUID()}","method":"list_leases","params":{"constructor":{"prototype":{"x":1}}}}`));
    for (const m of ["__proto__", "constructor", "toString", "hasOwnProperty", "valueOf", "__defineGetter__", "STATUS", "status ", "reveal_secret\u0000"])
      await expectInvalid(`method ${JSON.stringify(m)}`, () => c.send({ id: randomUUID(), method: m }));
    const deep = "[".repeat(200_000) + "]".repeat(200_000);
    await expectInvalid("200,000 levels of nesting in params", () => c.raw(`{"id":"${randomUUID()}","method":"request_lease","params":{"secret":"github-token","domains":${deep}}}`));
    await expectInvalid("200,000 levels of nesting in the envelope", () => c.raw(`{"id":"${randomUUID()}","method":"status","params":${"{\"a\":".repeat(100_000)}1${"}".repeat(100_000)}}`));
    for (const [k, v] of [
      ["maxUses", "1e400"],
      ["maxUses", "9007199254740993"],
      ["maxUses", "0"],
      ["maxUses", "-1"],
      ["maxUses", "1.5"],
      ["ttl", "1e400"],
      ["ttl", "-5"],
      ["ttl", '"99999999999d"'],
      ["ttl", '"1e9h"'],
      ["domains", '"api.github.com"'],
      ["domains", "[1]"],
      ["secret", "123"],
      ["secret", "null"],
      ["secret", '{"scope":"global","name":"github-token"}'],
    ])
      await expectInvalid(`request_lease ${k}: ${v}`, () => c.raw(`{"id":"${randomUUID()}","method":"request_lease","params":{"secret":"github-token","${k}":${v}}}`.replace(`"secret":"github-token","secret"`, '"secret"')));
    await expectInvalid("a numeric id", () => c.raw('{"id":1,"method":"status"}'));
    await expectInvalid("an uppercase id", () => c.send({ id: randomUUID().toUpperCase(), method: "status" }));
    await expectInvalid("a method that is not a string", () => c.send({ id: randomUUID(), method: ["status"] }));
    await expectInvalid("params that are an array", () => c.send({ id: randomUUID(), method: "status", params: [] }));
    await expectInvalid("params that are a string", () => c.send({ id: randomUUID(), method: "status", params: "x" }));
    await expectInvalid("list_leases limit 1e20", () => c.send({ id: randomUUID(), method: "list_leases", params: { limit: 1e20 } }));
    // The connection is still served, and nothing was granted by any of it.
    const s = await c.ok("status");
    assert.equal(s.identity.agent, "claude");
    // The same id twice in flight: both answered with it; the daemon does not mix them up with another's.
    const same = randomUUID();
    c.send({ id: same, method: "whoami" });
    c.send({ id: same, method: "status" });
    const a = [record(await c.next()), record(await c.next())];
    assert.deepEqual(a.map((m) => [m.id, m.ok]), [
      [same, true],
      [same, true],
    ]);
    c.close();
  });

  test("framing attacks: a lying length prefix is cut at read_timeout, an oversize prefix gets an error and a close, a truncated frame or a half-close is handled; others keep being served", async () => {
    const probe = await Conn.token(r.tcp, r.tokens.bob.token);
    // Announces 100 bytes, sends 10, stalls: closed after read_timeout (1 s here), nothing answered.
    const liar = await Conn.token(r.tcp, r.tokens.claude.token);
    liar.raw(Buffer.from('{"id":"x",'), 100);
    const t0 = Date.now();
    await Promise.race([liar.closed, sleep(5000)]);
    assert.ok(liar.isClosed, "a stalled frame is cut off");
    assert.ok(Date.now() - t0 < 4000);
    // 0xFFFFFFFF: over the cap before a byte of body is buffered.
    const huge = await Conn.token(r.tcp, r.tokens.claude.token);
    huge.raw(Buffer.alloc(0), 0xffffffff);
    const m = record(await huge.next());
    assert.equal(m.error.code, "invalid_request");
    assert.match(m.error.message, /over the 1048576-byte limit/);
    await huge.closed;
    // A frame of exactly the cap + 1.
    const over = await Conn.token(r.tcp, r.tokens.claude.token);
    over.raw(Buffer.alloc(16), 1024 * 1024 + 1);
    assert.equal(record(await over.next()).error.code, "invalid_request");
    await over.closed;
    // Truncated then FIN: the daemon closes its side.
    const trunc = await Conn.token(r.tcp, r.tokens.claude.token);
    trunc.raw(Buffer.from('{"id":"'), 50);
    trunc.socket.end();
    await Promise.race([trunc.closed, sleep(5000)]);
    assert.ok(trunc.isClosed);
    // Half-close after a request: the answer still comes, then the close.
    const half = await Conn.token(r.tcp, r.tokens.claude.token);
    const id = randomUUID();
    half.send({ id, method: "whoami" });
    half.socket.end();
    const ans = record(await half.next());
    assert.equal(ans.id, id);
    assert.equal(ans.ok, true);
    await half.closed;
    // Meanwhile the probe is served.
    assert.equal((await probe.ok("whoami")).identity.agent, "bob");
    probe.close();
  });

  test("requests pipelined behind a refused hello never run: a bad token with request_lease+access and token_create behind it", async () => {
    const before = (await r.audit({ types: ["lease_granted"] })).length;
    // The old one-step form with a wrong secret, then requests in the same write.
    const c = await Conn.open(r.tcp);
    const bad = `lsr_${r.tokens.claude.id}_${randomBytes(32).toString("base64url")}`;
    c.socket.write(
      Buffer.concat([
        encodeFrame({ protocol: "lessor", version: 1, token: bad }),
        encodeFrame({ id: randomUUID(), method: "request_lease", params: { secret: "canary", access: {} } }),
        encodeFrame({ id: randomUUID(), method: "token_create", params: { name: "x", role: "admin" } }),
      ]),
    );
    const w = record(await c.next());
    assert.equal(w.error.code, "unauthenticated");
    await c.closed;
    // The token handshake with requests instead of the token frame: the first is taken as the (bad) token frame.
    const h = await Conn.open(r.tcp);
    h.send({ protocol: "lessor", version: 1, tokenId: r.tokens.claude.id, nonce: newNonce().toString("base64url") });
    h.send({ id: randomUUID(), method: "request_lease", params: { secret: "canary", access: {} } });
    h.send({ id: randomUUID(), method: "request_lease", params: { secret: "canary", access: {} } });
    assert.ok(record(await h.next()).challenge, "the challenge");
    const refusal = record(await h.next());
    assert.equal(refusal.ok, false);
    await h.closed;
    // A Unix-socket hello as an unmapped identity is not possible as root; a TCP hello without a token:
    const n = await Conn.open(r.tcp);
    n.socket.write(Buffer.concat([encodeFrame({ protocol: "lessor", version: 1 }), encodeFrame({ id: randomUUID(), method: "request_lease", params: { secret: "canary", access: {} } })]));
    assert.equal(record(await n.next()).error.code, "unauthenticated");
    await n.closed;
    await sleep(200);
    assert.equal((await r.audit({ types: ["lease_granted"] })).length, before, "no lease was granted");
    assert.equal((await r.admin.ok("token_list")).filter((t: Msg) => t.name === "x").length, 0);
  });

  test("thousands of requests in flight and a client that never reads: every request answered once it reads, the daemon's memory stays bounded, others are served", async () => {
    const rss = (): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${r.d.proc.pid}/status`, "utf8"))![1]) * 1024;
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    // Make list_leases answers big: 150 leases, some 60 KB per answer.
    await Promise.all(Array.from({ length: 150 }, () => claude.ok("request_lease", { secret: "github-token" })));
    const one = await claude.call("list_leases", { limit: 150 });
    const answerBytes = JSON.stringify(one).length;
    assert.ok(answerBytes > 40_000, `an answer is ${answerBytes} bytes`);
    const rss0 = rss();
    const hog = await Conn.token(r.tcp, r.tokens.claude.token);
    hog.socket.pause();
    const N = 4000; // 4,000 × ~60 KB = 240 MB of answers if the daemon buffered them all
    hog.socket.write(Buffer.concat(Array.from({ length: N }, () => encodeFrame({ id: randomUUID(), method: "list_leases", params: { limit: 150 } }))));
    let most = 0;
    for (let i = 0; i < 30; i++) {
      await sleep(100);
      most = Math.max(most, rss() - rss0);
    }
    assert.ok(most < 120 * 1024 * 1024, `the daemon grew by ${(most / 1e6).toFixed(0)} MB for a client that never reads`);
    // Another principal is served meanwhile.
    const bob = await Conn.token(r.tcp, r.tokens.bob.token);
    const t0 = performance.now();
    await bob.ok("whoami");
    assert.ok(performance.now() - t0 < 2000);
    // Once it reads, every request is answered.
    let answered = 0;
    hog.socket.removeAllListeners("data");
    const { FrameDecoder } = await import("../src/protocol/framing.js");
    const dec = new FrameDecoder(16 * 1024 * 1024);
    hog.socket.on("data", (ch: Buffer) => (answered += dec.push(ch).length));
    hog.socket.resume();
    const end = Date.now() + 90_000;
    while (answered < N && Date.now() < end) await sleep(50);
    assert.equal(answered, N);
    await claude.call("revoke_all_for_agent", { agent: "claude" });
    for (const c of [claude, hog, bob]) c.close();
  });

  test("information: an agent learns no other agent's names, rules or secrets, and no path of the owner's, from status, describe, explain, list_granted and refusals", async () => {
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    const seen: string[] = [];
    const look = (m: Msg) => (seen.push(JSON.stringify(record(m))), m);
    look(await claude.ok("status"));
    const ds = look(await claude.ok("describe"));
    assert.equal(ds.keySource, null);
    assert.equal(ds.policy.source, null);
    assert.equal(ds.policy.error, null);
    look(await claude.ok("whoami"));
    const granted = look(await claude.ok("list_granted", {}));
    assert.deepEqual(granted.map((g: Msg) => g.name).sort(), ["canary", "github-token", "guarded", "racy", "temp"]);
    const ex = look(await claude.ok("explain", { agent: "claude", secret: BOB_ONLY }));
    assert.equal(ex.allow, false);
    assert.ok(ex.steps.every((s: Msg) => s.rule !== "bob-private-rule"));
    // Refusals for a secret it is not granted: the same whether the secret exists or not.
    const exists = look({ m: await claude.refused("request_lease", { secret: BOB_ONLY }, "access_denied") }).m as string;
    const missing = look({ m: await claude.refused("request_lease", { secret: "no-such-secret-name" }, "access_denied") }).m as string;
    assert.equal(exists.replace(BOB_ONLY, "X"), missing.replace("no-such-secret-name", "X"), "no existence oracle for secrets outside the agent's grants");
    look({ m: await claude.refused("get_secret_metadata", { name: BOB_ONLY }, "access_denied") });
    look({ m: await claude.refused("list_secrets", {}, "access_denied") });
    const all = seen.join("\n");
    for (const bad of ["bob-private-rule", `"bob"`, r.d.home, "policy.toml", "master.key", "lessor.db", splitToken(r.tokens.bob.token)!.id, splitToken(r.tokens.orch.token)!.id])
      assert.ok(!all.includes(bad), `an agent was told ${JSON.stringify(bad)}: ${all.slice(0, 2000)}`);
    claude.close();
  });

  test("tokens: revoked with requests pipelined, expired mid-connection, 200 wrong secrets; no request runs on a dead token and no token secret reaches the log or the audit", async () => {
    const mk = async (name: string, extra: Record<string, unknown> = {}) => {
      const t = await r.admin.ok("token_create", { name, role: "agent", agent: "claude", ...extra });
      tokenSecretsSeen.push(splitToken(t.token)!.secret);
      return t as { id: string; token: string };
    };
    // Revoked while the connection is open, with requests pipelined right behind the revocation.
    const doomed = await mk("doomed");
    const c = await Conn.token(r.tcp, doomed.token);
    const lease = record(await c.ok("request_lease", { secret: "canary" }));
    await r.admin.ok("token_revoke", { id: doomed.id });
    const after = Array.from({ length: 20 }, () => encodeFrame({ id: randomUUID(), method: "access_secret", params: { leaseId: lease.id, domain: DOMAIN } }));
    c.socket.write(Buffer.concat(after));
    const frames: Msg[] = [];
    for (;;) {
      const f = await c.next(3000).catch(() => null);
      if (f === null) break;
      frames.push(record(f));
    }
    await Promise.race([c.closed, sleep(2000)]);
    assert.ok(c.isClosed, "the connection of a revoked token is closed");
    assert.ok(frames.every((f) => f.ok === false && f.error.code === "unauthenticated"), JSON.stringify(frames).slice(0, 500));
    assert.equal((await r.audit({ types: ["secret_accessed"], leaseId: lease.id })).length, 0, "no access ran on the revoked token");
    const again = await Conn.open(r.tcp);
    again.send({ protocol: "lessor", version: 1, token: doomed.token });
    assert.equal(record(await again.next()).error.code, "unauthenticated");
    // Expired: the open connection is cut within a second of expiry; a new one is refused.
    const brief = await mk("brief", { ttl: 1500 });
    const e = await Conn.token(r.tcp, brief.token);
    const l2 = record(await e.ok("request_lease", { secret: "canary" }));
    await sleep(1600);
    e.send({ id: randomUUID(), method: "access_secret", params: { leaseId: l2.id, domain: DOMAIN } });
    const last = record(await e.next(3000));
    assert.equal(last.ok, false);
    assert.equal(last.error.code, "unauthenticated");
    await Promise.race([e.closed, sleep(2000)]);
    assert.ok(e.isClosed);
    const e2 = await Conn.open(r.tcp);
    e2.send({ protocol: "lessor", version: 1, token: brief.token });
    assert.equal(record(await e2.next()).error.code, "unauthenticated");
    // 200 wrong secrets for a real id: all refused, and the real token still works (no lockout a guesser could use against it).
    const tried: string[] = [];
    // 8 at a time: the handshake budget per TCP source (64) is a separate guarantee (test/dos.test.ts).
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let i = 0; i < 25; i++) {
          const s = randomBytes(32).toString("base64url");
          tried.push(s);
          const g = await Conn.open(r.tcp);
          g.send({ protocol: "lessor", version: 1, token: `lsr_${r.tokens.claude.id}_${s}` });
          const w = await g.next();
          assert.equal(w.error?.code, "unauthenticated");
          g.close();
        }
      }),
    );
    const ok = await Conn.token(r.tcp, r.tokens.claude.token);
    assert.equal((await ok.ok("whoami")).identity.agent, "claude");
    ok.close();
    await sleep(300);
    const log = r.d.stderr();
    const audit = JSON.stringify(await r.audit());
    for (const s of [...tried, ...tokenSecretsSeen]) {
      assert.ok(!log.includes(s), "a token secret in the daemon's log");
      assert.ok(!audit.includes(s), "a token secret in the audit trail");
    }
  });

  test("killswitch: agents' connections close, old leases stay revoked after the release, no grant meanwhile", async () => {
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    const lease = record(await claude.ok("request_lease", { secret: "github-token" }));
    await r.admin.ok("killswitch", { reason: "attack drill" });
    await Promise.race([claude.closed, sleep(2000)]);
    assert.ok(claude.isClosed, "the agent's connection is closed");
    const c2 = await Conn.token(r.tcp, r.tokens.claude.token);
    record(await c2.refused("access_secret", { leaseId: lease.id, domain: DOMAIN }, "lease_revoked"));
    record(await c2.refused("request_lease", { secret: "github-token", access: {} }, "access_denied"));
    record(await c2.refused("renew_lease", { leaseId: lease.id }, "lease_revoked"));
    record(await c2.refused("killswitch_release", {}, "access_denied"));
    await r.admin.ok("killswitch_release", { reason: "drill over" });
    const c3 = await Conn.token(r.tcp, r.tokens.claude.token);
    record(await c3.refused("access_secret", { leaseId: lease.id, domain: DOMAIN }, "lease_revoked"));
    record(await c3.ok("request_lease", { secret: "github-token" }));
    c3.close();
  });

  test("the canary never appears in a frame an agent was refused with, the daemon's log, the audit trail or the database files", async () => {
    // More refusal paths that involve the canary's lease.
    const claude = await Conn.token(r.tcp, r.tokens.claude.token);
    const lease = record(await claude.ok("request_lease", { secret: "canary", maxUses: 1 }));
    record(await claude.refused("access_secret", { leaseId: lease.id, domain: "evil.example" }, "access_denied"));
    record(await claude.refused("access_secret", { leaseId: lease.id, domain: DOMAIN, method: "DELETE" }, "access_denied"));
    const got = await claude.ok("access_secret", { leaseId: lease.id, domain: DOMAIN });
    assert.equal(Buffer.from(got.value, "base64").toString(), CANARY, "the canary really is the value");
    record(await claude.refused("access_secret", { leaseId: lease.id, domain: DOMAIN }, "lease_exhausted"));
    record(await claude.refused("request_lease", { secret: "canary", access: { domain: "evil.example" } }, "access_denied"));
    record(await claude.ok("list_leases", {}));
    claude.close();
    for (const [i, f] of everyFrame.entries()) assertNoCanary(f, `frame ${i}`);
    assertNoCanary(r.d.stderr(), "the daemon's log");
    assertNoCanary(JSON.stringify(await r.audit()), "the audit trail");
    for (const f of readdirSync(r.d.home)) {
      const p = join(r.d.home, f);
      let bytes: Buffer;
      try {
        bytes = readFileSync(p);
      } catch {
        continue; // a socket or a directory
      }
      assert.ok(!bytes.includes(Buffer.from(CANARY)), `the canary in ${f}`);
    }
  });
});

describe("TCP transport", () => {
  test("a daemon told to listen on a non-loopback address refuses to start, and binds nothing", async () => {
    for (const tcp of ["0.0.0.0:0", "[::]:0"]) {
      const home = await makeHome({ config: `[server]\ntcp = ${JSON.stringify(tcp)}\n`, policy: POLICY });
      await assert.rejects(startServe(home), (e: { stderr?: string }) => /loopback/i.test(e.stderr ?? "") && /config_invalid|not a loopback|loopback only/i.test(e.stderr ?? ""), tcp);
    }
  });
});

