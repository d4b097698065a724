/**
 * A promise audit of docs/daemon.md, docs/protocol.md, docs/audit.md, docs/client.md, docs/cli/admin.md
 * and docs/mcp.md: the promises no other test attacks, attacked here with real parts (a real
 * `lessor serve` child process, its Unix socket and loopback TCP port, the SQLite file edited by a
 * second connection, the built CLI, `lessor mcp` over stdio). Two tests found breaks when written
 * (2026-12-04; a second SIGTERM, a stop signal during request_access), fixed that day.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { openVault } from "../src/config/open-vault.js";
import { checkServerProof, hashTokenSecret, newNonce, splitToken } from "../src/crypto/token-proof.js";
import { encodeFrame } from "../src/protocol/framing.js";
import { BIN, cliHome, runCli, seedHome } from "./cli-harness.js";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { RawClient, type Msg } from "./raw-client.js";

const CANARY = `CANARY_${randomBytes(12).toString("hex")}`;
const DOMAIN = "api.example.com";

const POLICY = `[[rule]]
name = "claude-tok"
effect = "allow"
agents = ["claude"]
secrets = ["tok"]
domains = ["${DOMAIN}"]

[[rule]]
name = "bob-tok"
effect = "allow"
agents = ["bob"]
secrets = ["tok", "bobs"]
domains = ["${DOMAIN}"]

[[rule]]
name = "guarded"
effect = "allow"
agents = ["claude", "bob"]
secrets = ["guarded"]
domains = ["${DOMAIN}"]
approval = "required"
`;

/** A raw protocol client that can do the token handshake. */
class Conn extends DaemonConn {
  /** Sends the token hello and checks the daemon's proof; resolves with the connection, before the token frame. */
  static async challenged(path: string, token: string): Promise<Conn> {
    const c = await Conn.open(path);
    const { id, secret } = splitToken(token)!;
    const nonce = newNonce();
    c.send({ protocol: "lessor", version: 1, tokenId: id, nonce: nonce.toString("base64url") });
    const ch = (await c.next()).challenge as { nonce: string; proof: string };
    assert.ok(checkServerProof(hashTokenSecret(secret), nonce, Buffer.from(ch.nonce, "base64url"), id, "uds", Buffer.from(ch.proof, "base64url")), "the daemon's proof");
    return c;
  }

  static async token(path: string, token: string): Promise<Conn> {
    const c = await Conn.challenged(path, token);
    c.send({ token });
    const w = await c.next();
    assert.equal(w.ok, true, JSON.stringify(w));
    return c;
  }

  async ok(method: string, params?: unknown): Promise<Msg> {
    const r = await this.call(method, params);
    assert.equal(r.ok, true, `${method}: ${JSON.stringify(r.error ?? r).slice(0, 400)}`);
    return r.result;
  }

  async refused(method: string, params: unknown, code: string): Promise<string> {
    const r = await this.call(method, params);
    assert.equal(r.ok, false, `${method} ${JSON.stringify(params).slice(0, 200)} should have been refused, got ${JSON.stringify(r).slice(0, 300)}`);
    assert.equal(r.error.code, code, `${method}: ${r.error.message}`);
    return r.error.message as string;
  }
}

/** Waits for `c` to close; true if it did within `ms`. */
async function closedWithin(c: RawClient, ms: number): Promise<boolean> {
  return Promise.race([c.closed.then(() => true), sleep(ms).then(() => false)]);
}

// ---------------------------------------------------------------------------------------------
describe("identities, tokens and what an agent may write (lessor serve)", () => {
  let d: RunningDaemon;
  let admin: Conn;
  const tokens: Record<string, { id: string; token: string }> = {};
  const conns: RawClient[] = [];

  before(async () => {
    const home = await makeHome({ policy: POLICY, config: `[vault]\nmax_live_leases_per_agent = 1000\n` });
    d = await startServe(home);
    admin = await Conn.admin(d);
    await admin.ok("store_secret", { name: "tok", value: CANARY });
    await admin.ok("store_secret", { name: "bobs", value: "bob-value" });
    await admin.ok("store_secret", { name: "guarded", value: "guarded-value" });
    for (const [name, role, extra] of [
      ["claude", "agent", { agent: "claude" }],
      ["bob", "agent", { agent: "bob" }],
      ["orch", "orchestrator", { actFor: ["claude"] }],
      ["root2", "admin", {}],
    ] as const) {
      const t = await admin.ok("token_create", { name, role, ...extra });
      tokens[name] = { id: t.id, token: t.token };
    }
  });
  after(async () => {
    for (const c of conns) c.close();
    admin?.close();
    await d?.stop();
  });

  // docs/protocol.md, "Token handshake": "The token frame must be exactly {"token":"…"} and the token must
  // be the one the hello named"; "A client that closes the connection after the challenge, sends something
  // else, or runs out the handshake deadline is audited as auth_failed with the token id";
  // "A client may pipeline requests only after it has sent the token frame."
  test("token handshake: another token than the hello named, or a request in place of the token frame, is refused, runs nothing and is audited with the token id", async () => {
    const before = (await admin.ok("token_list")).length;
    // The hello names claude's (agent) token; the token frame shows the admin token.
    const c1 = await Conn.challenged(d.socket, tokens.claude!.token);
    conns.push(c1);
    c1.send({ token: tokens.root2!.token });
    c1.send({ id: randomUUID(), method: "token_create", params: { name: "escalated", role: "admin" } });
    const w1 = await c1.next();
    assert.equal(w1.ok, false, `the swapped token was accepted: ${JSON.stringify(w1)}`);
    assert.equal(w1.error.code, "unauthenticated");
    assert.ok(await closedWithin(c1, 3000), "the connection is closed");

    // A request frame in place of the token frame (the admin token's hello): it never runs.
    const c2 = await Conn.challenged(d.socket, tokens.root2!.token);
    conns.push(c2);
    c2.send({ id: randomUUID(), method: "token_create", params: { name: "escalated2", role: "admin" } });
    const w2 = await c2.next();
    assert.equal(w2.ok, false, JSON.stringify(w2));
    assert.ok(await closedWithin(c2, 3000), "the connection is closed");

    const list = await admin.ok("token_list");
    assert.equal(list.length, before, "no token was created by a request behind an unfinished handshake");
    assert.ok(!list.some((t: Msg) => /escalated/.test(t.name)));
    // Audited with the token id named in the hello.
    let rows: Msg[] = [];
    for (let i = 0; i < 40; i++) {
      rows = (await admin.ok("audit_query", { types: ["auth_failed"], limit: 1000 })) as Msg[];
      if (rows.some((r) => r.detail?.token_id === tokens.root2!.id)) break;
      await sleep(100);
    }
    assert.ok(
      rows.some((r) => r.detail?.token_id === tokens.root2!.id || (r.detail?.token_ids ?? []).includes(tokens.root2!.id)),
      `an auth_failed row names the token whose handshake was abandoned: ${JSON.stringify(rows.map((r) => [r.reason, r.detail]))}`,
    );
    for (const r of rows) assert.ok(!JSON.stringify(r).includes(splitToken(tokens.root2!.token)!.secret), "no token secret in the trail");
  });

  // docs/protocol.md, Leases: "A lease works only for its own agent (or an orchestrator acting for that
  // agent, or an admin)"; approval_list: "pending (or all) approvals the caller may see"; docs/security.md
  // "An orchestrator acts for an agent outside its act-for list ... nothing of the other agent's is reached".
  test("an orchestrator listing leases and approvals without naming an agent sees only the agents it acts for", async () => {
    const bobLease = await admin.ok("request_lease", { agent: "bob", secret: "bobs" });
    const claudeLease = await admin.ok("request_lease", { agent: "claude", secret: "tok" });
    const bob = await Conn.token(d.socket, tokens.bob!.token);
    conns.push(bob);
    const pending = await bob.ok("approval_request", { secret: "guarded", reason: "bob wants it" });
    assert.equal(pending.required, true);
    assert.equal(pending.approval.state, "pending");
    const orch = await Conn.token(d.socket, tokens.orch!.token);
    conns.push(orch);

    const listed = await orch.call("list_leases", {});
    if (listed.ok) {
      const foreign = (listed.result as Msg[]).filter((l) => l.agent !== "claude");
      assert.deepEqual(foreign.map((l) => [l.agent, l.id]), [], "list_leases without agent shows an orchestrator other agents' leases");
      assert.ok((listed.result as Msg[]).some((l) => l.id === claudeLease.id), "its own agent's lease is listed");
    } else assert.equal(listed.error.code, "invalid_request", JSON.stringify(listed.error));
    const bySecret = await orch.call("list_leases", { secret: "bobs" });
    if (bySecret.ok) assert.ok(!(bySecret.result as Msg[]).some((l) => l.id === bobLease.id), "a secret filter reaches bob's lease");

    for (const params of [{}, { all: true }]) {
      const a = await orch.ok("approval_list", params);
      assert.deepEqual((a as Msg[]).filter((x) => x.agent !== "claude").map((x) => x.agent), [], `approval_list ${JSON.stringify(params)} shows other agents' approvals`);
    }
    // The agent itself may not list approvals at all (roles A O).
    await bob.refused("approval_list", {}, "access_denied");
  });

  // docs/protocol.md: record_tool_call "tool (1 to 64 of letters, digits, _, ., -, starting with a letter),
  // outcome: ok|refused|error, code? (required unless ok: an error code of docs/errors.md, or unknown_tool)
  // ... An agent only for itself; another agent's name is refused and audited"; record_proxy_requests
  // "reports: (1 to 256)"; docs/mcp.md "it can only ever write rows for itself ... a code from the closed list".
  test("an agent writing its own tool_call and proxy_request rows is held to the documented bounds", async () => {
    const claude = await Conn.token(d.socket, tokens.claude!.token);
    conns.push(claude);
    const seqBefore = (await admin.ok("status")).auditHead as number;
    const bad: [string, Record<string, unknown>][] = [
      ["65-char tool", { tool: `a${"b".repeat(64)}`, outcome: "ok", ms: 1 }],
      ["empty tool", { tool: "", outcome: "ok", ms: 1 }],
      ["tool starting with a digit", { tool: "1tool", outcome: "ok", ms: 1 }],
      ["tool starting with _", { tool: "_tool", outcome: "ok", ms: 1 }],
      ["tool with a space", { tool: "read secret", outcome: "ok", ms: 1 }],
      ["tool with ESC", { tool: "t\u001b[2J", outcome: "ok", ms: 1 }],
      ["tool with a slash", { tool: "a/b", outcome: "ok", ms: 1 }],
      ["error without code", { tool: "t", outcome: "error", ms: 1 }],
      ["refused without code", { tool: "t", outcome: "refused", ms: 1 }],
      ["made-up code", { tool: "t", outcome: "error", code: "totally_fine", ms: 1 }],
      ["core-only code with spaces", { tool: "t", outcome: "error", code: "access denied", ms: 1 }],
      ["unknown outcome", { tool: "t", outcome: "denied", code: "access_denied", ms: 1 }],
      ["extra field", { tool: "t", outcome: "ok", ms: 1, actor: "uid:0" }],
    ];
    for (const [what, p] of bad) await claude.refused("record_tool_call", p, "invalid_request").catch((e: Error) => assert.fail(`${what}: ${e.message}`));
    await claude.refused("record_tool_call", { agent: "bob", tool: "t", outcome: "ok", ms: 1 }, "access_denied");
    const good = await claude.ok("record_tool_call", { tool: "list_secrets", outcome: "ok", ms: 1 });
    assert.deepEqual(good, { recorded: true });

    const report = { agent: "claude", leaseIds: [], method: "GET", host: DOMAIN, path: "/", status: 200, bytesOut: 0, bytesIn: 0, ms: 1, outcome: "ok" };
    await claude.refused("record_proxy_requests", { reports: [] }, "invalid_request");
    await claude.refused("record_proxy_requests", { reports: Array.from({ length: 257 }, () => report) }, "invalid_request");
    await claude.refused("record_proxy_requests", { reports: [{ ...report, agent: "bob" }] }, "access_denied");
    const rows = (await admin.ok("audit_query", { afterSeq: seqBefore, limit: 10_000 })) as Msg[];
    const written = rows.filter((r) => (r.type === "tool_call" || r.type === "proxy_request") && r.outcome === "ok");
    assert.deepEqual(written.map((r) => [r.type, r.agent, r.detail?.tool]), [["tool_call", "claude", "list_secrets"]], "only the one valid row was written");
    // The refusals naming bob are audited as access_denied (documented); nothing else names him.
    for (const r of rows) if (r.agent === "bob") assert.equal(r.type, "access_denied", `a row was written for bob: ${JSON.stringify(r)}`);
  });

  // docs/protocol.md, Audit: audit_recover "reason (1–200 characters, one line)".
  test("audit_recover's reason must be one line of 1 to 200 characters", async () => {
    for (const reason of ["", "x".repeat(201), "line one\nline two", "tab\there", "bidi \u202e here"]) await admin.refused("audit_recover", { reason }, "invalid_request");
    await admin.refused("audit_recover", {}, "invalid_request");
    const r = await admin.ok("audit_recover", { reason: "x".repeat(200) });
    assert.equal(r.recovered, false, "an intact trail is not recovered");
  });

  // docs/audit.md, "When the trail is broken": "Still work: reads (audit query|tail|verify, status,
  // listings, metadata, policy explain), and the brakes: revoking a lease ..."; "(except audit_recover
  // itself, which says access_denied to a non-admin)"; "Denials are audited events too, so a refused
  // caller gets audit_broken rather than access_denied".
  test("a broken trail: an agent's reads and its revoke still work, its grants and audit_recover are refused as documented; recovery appends the revoke", async () => {
    const claude = await Conn.token(d.socket, tokens.claude!.token);
    conns.push(claude);
    const lease = await claude.ok("request_lease", { secret: "tok" });
    const db = new Database(join(d.home, "lessor.db"));
    db.pragma("busy_timeout = 5000");
    const head = (db.prepare("SELECT max(seq) AS s FROM audit").get() as { s: number }).s;
    db.prepare("DELETE FROM audit WHERE seq = ?").run(head);
    db.close();
    // An audited write finds the cut.
    const w = await admin.call("store_secret", { name: "after-cut", value: "x" });
    assert.equal(w.ok, false);
    assert.equal(w.error.code, "unavailable");
    assert.match(w.error.message, /the audit trail is broken/);

    await claude.ok("whoami");
    await claude.ok("status");
    await claude.ok("describe");
    await claude.ok("list_granted", {});
    const ex = await claude.ok("explain", { agent: "claude", secret: "tok", domain: DOMAIN });
    assert.equal(ex.allow, true);
    const mine = (await claude.ok("list_leases", {})) as Msg[];
    assert.ok(mine.some((l) => l.id === lease.id));
    const grant = await claude.call("request_lease", { secret: "tok" });
    assert.equal(grant.ok, false);
    assert.equal(grant.error.code, "unavailable", "a grant is refused while the trail is broken");
    assert.match(grant.error.message, /audit trail is broken/);
    const denied = await claude.call("request_lease", { secret: "bobs" });
    assert.equal(denied.error?.code, "unavailable", `a refusal is answered audit_broken (as unavailable), not access_denied: ${JSON.stringify(denied)}`);
    await claude.refused("audit_recover", { reason: "the agent wants its trail back" }, "access_denied");
    assert.deepEqual(await claude.ok("revoke_lease", { leaseId: lease.id, reason: "brake" }), { revoked: true });
    // The revoke took effect at once.
    const acc = await claude.call("access_secret", { leaseId: lease.id, domain: DOMAIN });
    assert.equal(acc.ok, false);
    assert.notEqual(JSON.stringify(acc).includes(Buffer.from(CANARY).toString("base64")), true);

    const r = await admin.ok("audit_recover", { reason: "promise audit: cut on purpose" });
    assert.equal(r.recovered, true);
    assert.ok(r.deferred >= 1, `the revoke was deferred: ${JSON.stringify(r)}`);
    const after = (await admin.ok("audit_query", { afterSeq: r.breakSeq - 1, limit: 100 })) as Msg[];
    assert.equal(after[0].type, "audit_break");
    assert.ok(after.some((e) => e.type === "lease_revoked" && e.leaseId === lease.id && e.actorId === `token:claude/${tokens.claude!.id}`), JSON.stringify(after.map((e) => [e.type, e.actorId, e.leaseId])));
    assert.equal((await admin.ok("audit_verify")).ok, true);
    // No canary anywhere the daemon wrote.
    assert.ok(!d.stderr().includes(CANARY), "the canary is in the daemon's log");
  });
});

// ---------------------------------------------------------------------------------------------
const HOOK_CONFIG = (sleepS: number, extra = "") => `[vault]
max_secret_bytes = 524288
[server]
idle_timeout = "2s"
${extra}
[[rotate]]
secret = "hooked"
command = ["/bin/sh", "-c", "sleep ${sleepS}; echo rotated-value-0123456789"]
timeout = "30s"
`;

async function hookDaemon(sleepS: number, extra = ""): Promise<{ d: RunningDaemon; exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> }> {
  const home = await makeHome({ policy: POLICY, config: HOOK_CONFIG(sleepS, extra) });
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    await v.admin().storeSecret({ name: "hooked", value: "old-value" });
    await v.admin().storeSecret({ name: "big", value: randomBytes(400 * 1024) });
  } finally {
    await v.close();
  }
  const d = await startServe(home);
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => d.proc.on("exit", (code, signal) => r({ code, signal })));
  return { d, exit };
}

describe("deadlines and backpressure (lessor serve, idle_timeout = 2s)", () => {
  let d: RunningDaemon;
  before(async () => {
    ({ d } = await hookDaemon(3));
  });
  after(async () => {
    await d?.stop();
  });

  // docs/protocol.md Limits: "idle connection (no request, nothing in flight) | 5 min | close"; daemon.md
  // idle_timeout in [server].
  test("idle_timeout: an idle authenticated connection is closed; one whose request runs past it is not", async () => {
    const idle = await Conn.admin(d);
    const busy = await Conn.admin(d);
    const t0 = Date.now();
    const rotated = busy.call("rotate_secret_hook", { name: "hooked" });
    assert.ok(await closedWithin(idle, 5000), "an idle connection was not closed within idle_timeout + 3 s");
    assert.ok(Date.now() - t0 >= 1500, "closed before idle_timeout");
    const r = await Promise.race([rotated, sleep(8000).then(() => null)]);
    assert.ok(r !== null, "the request running past idle_timeout got no answer");
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.result.version, 2);
    busy.close();
  });

  // docs/daemon.md, Backpressure: "A connection blocked this way for idle_timeout is closed. Other clients
  // are served meanwhile."
  test("a client that pipelines requests for large answers and never reads is closed after idle_timeout; others are served", async () => {
    const hog = await Conn.admin(d);
    hog.socket.pause();
    const N = 30;
    hog.socket.write(Buffer.concat(Array.from({ length: N }, () => encodeFrame({ id: randomUUID(), method: "reveal_secret", params: { name: "big" } }))));
    await sleep(1000);
    const other = await Conn.admin(d);
    assert.equal((await other.ok("status")).killswitch, false, "another client is served meanwhile");
    other.close();
    await sleep(4000); // past idle_timeout (2 s) blocked, plus the sweep
    let got = 0;
    hog.socket.resume();
    const closed = await closedWithin(hog, 6000);
    // Count the answers that did arrive (the RawClient queues frames no call claimed).
    for (;;) {
      const f = await hog.next(50).catch(() => null);
      if (f === null) break;
      got++;
    }
    assert.ok(closed, "the connection blocked on unread answers was not closed");
    assert.ok(got < N, `all ${N} answers arrived: the blocked connection was not closed at idle_timeout`);
  });
});

// ---------------------------------------------------------------------------------------------
describe("shutdown (lessor serve)", () => {
  // docs/daemon.md, "Durability and shutdown": "On SIGTERM or SIGINT the daemon stops accepting, lets
  // in-flight requests finish (up to shutdown_grace), closes the store and removes its socket and lock";
  // docs/protocol.md Limits: "shutdown grace | 10 s | in-flight requests are given this long to finish;
  // new requests get unavailable".
  test("SIGTERM while a request runs: it is answered, a new request gets unavailable, the socket and lessor.pid are removed, exit 0", async () => {
    const { d, exit } = await hookDaemon(2);
    const c = await Conn.admin(d);
    const rotated = c.call("rotate_secret_hook", { name: "hooked" });
    await sleep(300);
    d.proc.kill("SIGTERM");
    await sleep(300);
    const late = await Promise.race([c.call("status"), sleep(5000).then(() => "no answer")]);
    if (late !== "no answer" && !c.isClosed) {
      assert.equal((late as Msg).ok, false, `a request during shutdown was served: ${JSON.stringify(late)}`);
      assert.equal((late as Msg).error.code, "unavailable");
    }
    const r = await Promise.race([rotated, sleep(8000).then(() => null)]);
    assert.ok(r !== null, "the in-flight request got no answer");
    assert.equal(r.ok, true, JSON.stringify(r));
    const e = await exit;
    assert.deepEqual(e, { code: 0, signal: null }, d.stderr());
    assert.ok(!existsSync(d.socket), "the socket was left behind");
    assert.ok(!existsSync(join(d.home, "lessor.pid")), "lessor.pid was left behind");
    const v = await openVault({ home: d.home, env: { LESSOR_HOME: d.home } });
    try {
      assert.equal((await v.admin().auditVerify()).ok, true);
      assert.equal((await v.admin().getSecretMetadata({ scope: "global", name: "hooked" })).currentVersion, 2);
    } finally {
      await v.close();
    }
  });

  // docs/daemon.md: "On SIGTERM or SIGINT the daemon stops accepting, lets in-flight requests finish (up
  // to shutdown_grace), closes the store and removes its socket and lock." A supervisor (or an impatient
  // operator) that sends SIGTERM twice is still sending SIGTERM.
  test("a second SIGTERM during the shutdown grace does not cut it short: the in-flight answer arrives, and the socket and lessor.pid are removed", async () => {
    const { d, exit } = await hookDaemon(2);
    const c = await Conn.admin(d);
    const rotated = c.call("rotate_secret_hook", { name: "hooked" });
    await sleep(300);
    d.proc.kill("SIGTERM");
    await sleep(300);
    d.proc.kill("SIGTERM");
    const r = await Promise.race([rotated, c.closed.then(() => null), sleep(8000).then(() => null)]);
    const e = await exit;
    const leftSocket = existsSync(d.socket);
    const leftPid = existsSync(join(d.home, "lessor.pid"));
    assert.ok(r !== null && r.ok === true, `the in-flight request was dropped (exit ${JSON.stringify(e)})`);
    assert.deepEqual(e, { code: 0, signal: null });
    assert.ok(!leftSocket, "the socket was left behind");
    assert.ok(!leftPid, "lessor.pid was left behind");
  });
});

// ---------------------------------------------------------------------------------------------
describe("audit verify against a trail edited in the SQLite file (the built CLI)", () => {
  async function homeWithTrail(): Promise<string> {
    const home = await cliHome();
    await seedHome(home, POLICY, [
      { name: "tok", value: CANARY },
      { name: "a", value: "1" },
      { name: "b", value: "2" },
      { name: "c", value: "3" },
      { name: "d", value: "4" },
      { name: "e", value: "5" },
    ]);
    return home;
  }

  // docs/audit.md: "an edited, inserted, reordered or renumbered event ... fails its MAC or its link, and
  // verify names it"; docs/cli/admin.md: "exit 1 when it does not, printing the problem, the first bad
  // event's seq and id, and that event as stored".
  test("two events swapped in place, or one renumbered, make audit verify exit 1 naming the first bad event", async () => {
    const cols = "id, time, type, actor_id, actor_role, transport, agent, secret, lease_id, domain, outcome, reason, detail, prev_hash, hash, key_id";
    // Swapped: rows 3 and 4 exchange every column but seq.
    const h1 = await homeWithTrail();
    {
      const db = new Database(join(h1, "lessor.db"));
      const r3 = db.prepare(`SELECT ${cols} FROM audit WHERE seq = 3`).get() as Record<string, unknown>;
      const r4 = db.prepare(`SELECT ${cols} FROM audit WHERE seq = 4`).get() as Record<string, unknown>;
      const set = db.prepare(`UPDATE audit SET ${cols.split(", ").map((c) => `${c} = @${c}`).join(", ")} WHERE seq = @seq`);
      db.transaction(() => {
        set.run({ ...r3, id: `tmp-${randomUUID()}`, seq: 4 });
        set.run({ ...r4, seq: 3 });
        set.run({ ...r3, seq: 4 });
      })();
      db.close();
    }
    const v1 = await runCli(["audit", "verify"], { home: h1 });
    assert.equal(v1.code, 1, v1.stdout + v1.stderr);
    assert.match(v1.stdout, /does NOT verify/);
    assert.match(v1.stdout, /first bad event: 3/);
    assert.ok(!v1.stdout.includes(CANARY) && !v1.stderr.includes(CANARY));

    // Renumbered: event 4 moved to seq 40 (after the head), so the trail reads 1,2,3,5,6,7,40.
    const h2 = await homeWithTrail();
    {
      const db = new Database(join(h2, "lessor.db"));
      db.prepare("UPDATE audit SET seq = 40 WHERE seq = 4").run();
      db.close();
    }
    const v2 = await runCli(["audit", "verify", "--json"], { home: h2 });
    assert.equal(v2.code, 1, v2.stdout + v2.stderr);
    const j = JSON.parse(v2.stdout) as { ok: boolean; firstBad: { seq: number } };
    assert.equal(j.ok, false);
    assert.equal(j.firstBad.seq, 4);
  });

  // docs/audit.md, "Text in the trail is safe to print": "lessor escapes them in everything it prints to
  // a terminal — audit tail|query|verify"; docs/cli/admin.md: verify prints "that event as stored".
  test("audit verify prints a forged row's id, type, actor and reason escaped: no raw ESC, BEL, C1 or bidi reaches the terminal", async () => {
    const home = await homeWithTrail();
    const db = new Database(join(home, "lessor.db"));
    db.prepare("UPDATE audit SET id = ?, type = ?, actor_id = ?, reason = ?, agent = ? WHERE seq = 3").run(
      "\u001b]52;c;aGFja2Vk\u0007",
      "secret_stored\u001b[2J",
      "uid:0\u202e",
      "ok\u009b31m\u001b[1A",
      "claude\u2066x",
    );
    db.close();
    for (const args of [["audit", "verify"], ["audit", "verify", "--json"], ["audit", "tail", "-n", "50"], ["audit", "query", "--limit", "50"]]) {
      const r = await runCli(args, { home });
      const all = r.stdout + r.stderr;
      assert.ok(!/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/.test(all), `${args.join(" ")} printed a raw control or bidi character: ${JSON.stringify(all.slice(0, 600))}`);
      if (args[1] === "verify") assert.equal(r.code, 1, `${args.join(" ")}: ${all}`);
    }
  });

  // docs/cli/admin.md, exit codes: "2 | usage: ... bad --type/--since/--limit"; "4 | token revoke of an
  // unknown or already revoked token"; audit query "at most 100 events unless --limit (up to 10000)".
  test("CLI exit codes: bad --limit and -n are usage errors (2); token revoke of an unknown or revoked token is 4", async () => {
    const home = await homeWithTrail();
    for (const args of [
      ["audit", "query", "--limit", "10001"],
      ["audit", "query", "--limit", "0"],
      ["audit", "query", "--limit", "-5"],
      ["audit", "query", "--limit", "1e3"],
      ["audit", "query", "--limit", "12abc"],
      ["audit", "tail", "-n", "nope"],
      ["audit", "tail", "-n", "0"],
      ["audit", "query", "--since", "yesterday-ish"],
      ["audit", "query", "--until", "2025-13-45"],
    ]) {
      const r = await runCli(args, { home });
      assert.equal(r.code, 2, `${args.join(" ")} exited ${r.code}: ${r.stdout}${r.stderr}`);
    }
    const created = await runCli(["token", "create", "t1", "--role", "agent", "--agent", "claude", "--json"], { home });
    assert.equal(created.code, 0, created.stderr);
    const id = (JSON.parse(created.stdout) as { id: string }).id;
    assert.equal((await runCli(["token", "revoke", id], { home })).code, 0);
    const again = await runCli(["token", "revoke", id], { home });
    assert.equal(again.code, 4, `already revoked: ${again.stdout}${again.stderr}`);
    const unknown = await runCli(["token", "revoke", "0123456789abcdef"], { home });
    assert.equal(unknown.code, 4, `unknown: ${unknown.stdout}${unknown.stderr}`);
    // audit recover on an intact trail: exit 0 and nothing written.
    const rec = await runCli(["audit", "recover", "--reason", "nothing to do"], { home });
    assert.equal(rec.code, 0, rec.stderr);
    assert.match(rec.stdout, /the audit trail is not broken; nothing to recover/);
  });
});

// ---------------------------------------------------------------------------------------------
describe("lessor mcp over stdio: the session's leases end with it", () => {
  /** Starts `lessor mcp --agent claude` on `home`; returns a line-based JSON-RPC client. */
  function startMcp(home: string) {
    const child = spawn(process.execPath, ["--", BIN, "mcp", "--agent", "claude"], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home, NO_COLOR: "1" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let buf = "";
    let err = "";
    const answers = new Map<number, (m: Msg) => void>();
    child.stdout!.on("data", (d: Buffer) => {
      buf += d.toString("utf8");
      for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (!line.trim()) continue;
        const m = JSON.parse(line) as Msg;
        if (typeof m.id === "number") answers.get(m.id)?.(m);
      }
    });
    child.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.on("exit", (code, signal) => r({ code, signal })));
    let next = 1;
    const rpc = (method: string, params: unknown): Promise<Msg> => {
      const id = next++;
      const p = new Promise<Msg>((r) => answers.set(id, r));
      child.stdin!.write(`${JSON.stringify({ jsonrpc: "2.0", id, method, params })}\n`);
      return p;
    };
    const init = async () => {
      const r = await rpc("initialize", { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "audit", version: "1" } });
      assert.ok(r.result, JSON.stringify(r));
      child.stdin!.write(`${JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" })}\n`);
    };
    return { child, rpc, init, exited, stderr: () => err };
  }

  async function leasesOf(home: string): Promise<{ id: string; revokedAt: number | null; revokeReason: string | null }[]> {
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      return (await v.admin().listLeases({ agent: "claude", limit: 1000 })).map((l) => ({ id: l.id, revokedAt: l.revokedAt, revokeReason: l.revokeReason }));
    } finally {
      await v.close();
    }
  }

  // docs/mcp.md, "When the session ends": "When the client closes stdin (or on SIGINT, SIGTERM, SIGHUP) the
  // proxy stops, the values are dropped and every lease the session took is revoked (lease_revoked, reason
  // "lessor mcp session ended")".
  test("SIGHUP ends the session and revokes its leases", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ name: "tok", value: CANARY }]);
    const m = startMcp(home);
    try {
      await m.init();
      const r = await m.rpc("tools/call", { name: "request_access", arguments: { secret: "tok" } });
      assert.ok(!r.result?.isError, JSON.stringify(r));
      m.child.kill("SIGHUP");
      const e = await Promise.race([m.exited, sleep(15_000).then(() => null)]);
      assert.ok(e !== null, "lessor mcp did not stop on SIGHUP");
      const leases = await leasesOf(home);
      assert.equal(leases.length, 1);
      assert.ok(leases.every((l) => l.revokedAt !== null && l.revokeReason === "lessor mcp session ended"), JSON.stringify(leases));
      assert.ok(!m.stderr().includes(CANARY));
    } finally {
      m.child.kill("SIGKILL");
    }
  });

  // docs/mcp.md, "When the session ends": "(or on SIGINT, SIGTERM, SIGHUP) ... every lease the
  // session took is revoked (lease_revoked, reason "lessor mcp session ended")". Here the signal arrives
  // while request_access is still granting (its commit waits on the database, held by another writer for
  // half a second): the session's close() collected the lease ids before the grant landed, so the lease it
  // took stayed live until its ttl (fixed: SessionCredentials.end waits for grants on their way).
  test("a stop signal while request_access is granting: the lease it took is revoked with the session, none is left live", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ name: "tok", value: CANARY }]);
    const m = startMcp(home);
    try {
      await m.init();
      const db = new Database(join(home, "lessor.db"));
      db.pragma("busy_timeout = 5000");
      db.prepare("BEGIN IMMEDIATE").run();
      const pending = m.rpc("tools/call", { name: "request_access", arguments: { secret: "tok" } });
      await sleep(500);
      m.child.kill("SIGTERM");
      await sleep(500);
      db.prepare("COMMIT").run();
      db.close();
      void pending;
      const e = await Promise.race([m.exited, sleep(15_000).then(() => null)]);
      assert.ok(e !== null, "lessor mcp did not stop on SIGTERM");
      const live = (await leasesOf(home)).filter((l) => l.revokedAt === null);
      assert.deepEqual(live, [], "a lease granted by the session is still live after it ended");
    } finally {
      m.child.kill("SIGKILL");
    }
  });
});
