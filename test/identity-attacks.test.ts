/**
 * Attack pass on identities against real `lessor serve` daemons, the built CLI and a real bubblewrap
 * sandbox: orchestrators acting beyond their act-for list with look-alike agent names through every
 * method that takes an agent; token ttl edge cases; token files (fifo, symlink, hard link, directory,
 * device, content never echoed); approvals (approve vs deny races, replays, an approval outliving the
 * rule it was given under); and the agent session `lessor run --vault-session` gives its child (a
 * grandchild outliving the child, a SIGKILLed run, the session's leases after the run).
 * A canary secret is stored and must never appear in any frame, output, log or audit row.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { chownSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { checkServerProof, endpointBinding, hashTokenSecret, newNonce, splitToken } from "../src/crypto/token-proof.js";
import { BIN, runCli } from "./cli-harness.js";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";
import { projectDir } from "./session-probe.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const GH = `ghp_${randomBytes(16).toString("hex")}`;
const OTHER = `other_${randomBytes(16).toString("hex")}`;
const GUARDED = `guarded_${randomBytes(16).toString("hex")}`;
const DOMAIN = "api.github.com";

/** Every frame, output and log line seen, checked for the canary and token secrets at the end. */
const seen: string[] = [];
const tokenSecrets: string[] = [];
function forms(v: string): string[] {
  const b = Buffer.from(v);
  return [v, ...[0, 1, 2].map((i) => b.subarray(i).toString("base64").slice(0, -4))];
}

class Conn extends DaemonConn {
  /** The token handshake over TCP; resolves with the welcome (ok or not). */
  static async tokenRaw(d: RunningDaemon, token: string): Promise<{ c: Conn; welcome: Msg }> {
    const c = await Conn.open(d.tcp!);
    const { id, secret } = splitToken(token)!;
    const nonce = newNonce();
    c.send({ protocol: "lessor", version: 1, tokenId: id, nonce: nonce.toString("base64url") });
    const ch = await c.next();
    if (!ch.challenge) return { c, welcome: ch };
    const binding = endpointBinding("tcp", c.socket.remoteAddress, c.socket.remotePort);
    assert.ok(checkServerProof(hashTokenSecret(secret), nonce, Buffer.from(ch.challenge.nonce, "base64url"), id, binding, Buffer.from(ch.challenge.proof, "base64url")));
    c.send({ token });
    const welcome = await c.next();
    seen.push(JSON.stringify(welcome));
    return { c, welcome };
  }
  static async token(d: RunningDaemon, token: string): Promise<Conn> {
    const { c, welcome } = await Conn.tokenRaw(d, token);
    assert.equal(welcome.ok, true, JSON.stringify(welcome));
    return c;
  }
  override async call(method: string, params?: unknown): Promise<Msg> {
    const r = await super.call(method, params);
    // token_create's answer is the one frame that carries a token secret by design.
    if (method !== "token_create") seen.push(JSON.stringify(r));
    return r;
  }
  async ok(method: string, params?: unknown): Promise<Msg> {
    const r = await this.call(method, params);
    assert.equal(r.ok, true, `${method} ${JSON.stringify(params)}: ${JSON.stringify(r.error ?? r)}`);
    return r.result;
  }
}

async function token(admin: Conn, name: string, role: string, extra: Record<string, unknown> = {}): Promise<{ id: string; token: string }> {
  const t = await admin.ok("token_create", { name, role, ...extra });
  tokenSecrets.push(splitToken(t.token)!.secret);
  return { id: t.id, token: t.token };
}

const rule = (name: string, agents: string[], secrets: string[], extra = ""): string =>
  `[[rule]]\nname = ${JSON.stringify(name)}\neffect = "allow"\nagents = ${JSON.stringify(agents)}\nsecrets = ${JSON.stringify(secrets)}\n${extra}\n`;

const LOOKALIKE_AGENTS = ["bob", "Claude", "CLAUDE", "claude.", "claude_", "claude-", "claude:", "claude@x", "xclaude", "ci", "CI-1", "ci_1", "ci.1"];
const POLICY =
  rule("claude-gh", ["claude"], ["gh", "canary"], `domains = ["${DOMAIN}"]`) +
  rule("lookalikes", LOOKALIKE_AGENTS, ["other", "canary"], `domains = ["${DOMAIN}"]`) +
  rule("ci", ["ci-*"], ["gh"], `domains = ["${DOMAIN}"]`) +
  rule("guarded", ["claude", "bob", "Claude"], ["guarded"], `domains = ["${DOMAIN}"]\napproval = "required"`);
const CONFIG = `[vault]\nmax_live_leases_per_agent = 100000\n[server]\ntcp = "127.0.0.1:0"\n`;

async function seed(admin: Conn): Promise<void> {
  await admin.ok("store_secret", { name: "gh", value: GH });
  await admin.ok("store_secret", { name: "canary", value: CANARY });
  await admin.ok("store_secret", { name: "other", value: OTHER });
  await admin.ok("store_secret", { name: "guarded", value: GUARDED });
}

// ---------------------------------------------------------------------------------------------------
describe("an orchestrator never acts beyond its act-for list", () => {
  let d: RunningDaemon;
  let admin: Conn;
  let orch: Conn;
  let orchId: string;
  const victims: Record<string, { conn: Conn; lease: string; approval: string | null }> = {};

  before(async () => {
    d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
    admin = await Conn.admin(d);
    await seed(admin);
    for (const a of ["bob", "Claude", "claude.", "claude-", "ci"]) {
      const t = await token(admin, `v-${a.replace(/[^A-Za-z0-9]/g, "_")}-${randomBytes(2).toString("hex")}`, "agent", { agent: a });
      const conn = await Conn.token(d, t.token);
      const lease = (await conn.ok("request_lease", { secret: "other", ttl: "1h" })).id as string;
      let approval: string | null = null;
      if (["bob", "Claude"].includes(a)) {
        const r = await conn.ok("approval_request", { secret: "guarded", reason: "victim" });
        approval = r.approval.id;
      }
      victims[a] = { conn, lease, approval };
    }
    const o = await token(admin, "orch", "orchestrator", { actFor: ["claude", "ci-*"] });
    orch = await Conn.token(d, o.token);
    orchId = `token:orch/${o.id}`;
  });
  after(async () => {
    admin?.close();
    orch?.close();
    for (const v of Object.values(victims)) v.conn.close();
    seen.push(d?.stderr() ?? "");
    await d?.stop();
  });

  const LOOKALIKES = [
    ...LOOKALIKE_AGENTS,
    "claude ",
    " claude",
    "claude\u0000",
    "claude\n",
    "claude\u200b",
    "\uff43laude", // fullwidth c
    "\u0441laude", // Cyrillic es
    "cl*",
    "claude*",
    "*",
    "?laude",
    "c?aude",
    "ci-1/../bob",
    "claude/",
    "CI-*",
    "",
  ];

  test("look-alike agent names (case, trailing dot/space/underscore, NUL, zero-width, confusables, globs) are refused by every method that takes an agent; no lease, approval or report is made for them", async () => {
    const bobLease = victims.bob!.lease;
    for (const L of LOOKALIKES) {
      const calls: [string, Record<string, unknown>][] = [
        ["request_lease", { agent: L, secret: "other" }],
        ["request_lease", { agent: L, secret: "canary", access: {} }],
        ["request_lease", { agent: L, secret: "guarded" }],
        ["approval_request", { agent: L, secret: "guarded", reason: "x" }],
        ["list_granted", { agent: L }],
        ["revoke_all_for_agent", { agent: L, reason: "attack" }],
        ["record_tool_call", { agent: L, tool: "t", outcome: "ok", ms: 1 }],
        ["record_proxy_requests", { reports: [{ agent: L, leaseIds: [bobLease], method: "GET", host: DOMAIN, path: "/", status: 200, bytesOut: 0, bytesIn: 0, ms: 1, outcome: "tripwire" }] }],
      ];
      for (const [m, p] of calls) {
        const r = await orch.call(m, p);
        assert.equal(r.ok, false, `${m} for ${JSON.stringify(L)} was allowed: ${String(JSON.stringify(r.result)).slice(0, 300)}`);
        assert.ok(["access_denied", "invalid_request"].includes(r.error.code), `${m} ${JSON.stringify(L)}: ${r.error.code} ${r.error.message}`);
      }
      const listed = await orch.call("list_leases", { agent: L });
      if (listed.ok) assert.deepEqual(listed.result.filter((l: Msg) => l.agent !== "claude" && !/^ci-/.test(l.agent)), [], `list_leases ${JSON.stringify(L)}`);
    }
    // The victims' leases are untouched (no revoke-all, no tripwire revoked them) and none was used.
    const all = await admin.ok("list_leases", { limit: 10_000 });
    for (const [a, v] of Object.entries(victims)) {
      const l = all.find((x: Msg) => x.id === v.lease);
      assert.ok(l, a);
      assert.deepEqual([l.revokedAt, l.uses], [null, 0], `${a}'s lease was touched by the orchestrator`);
    }
    // Every lease the orchestrator got is for an agent it acts for.
    for (const l of all.filter((x: Msg) => x.issuedBy === orchId)) assert.ok(l.agent === "claude" || /^ci-/.test(l.agent), `the orchestrator got a lease for ${l.agent}`);
    // No approval was opened on behalf of a look-alike, and the orchestrator sees none of theirs.
    const approvals = await admin.ok("approval_list", { all: true });
    for (const a of approvals) assert.ok(["bob", "Claude"].includes(a.agent) || a.agent === "claude", `an approval for ${a.agent}`);
    const mine = await orch.ok("approval_list", { all: true });
    assert.deepEqual(mine.filter((a: Msg) => a.agent !== "claude"), [], "the orchestrator lists only its agents' approvals");
    const tools = await admin.ok("audit_query", { types: ["tool_call", "proxy_request"], limit: 10_000 });
    assert.deepEqual(tools.filter((e: Msg) => e.actorId === orchId && e.outcome === "ok"), [], "no tool_call or proxy_request row written for a look-alike");
  });

  test("another agent's lease and approval ids (a look-alike's) cannot be used, renewed, revoked or presented by the orchestrator", async () => {
    for (const [a, v] of Object.entries(victims)) {
      for (const [m, p] of [
        ["access_secret", { leaseId: v.lease, domain: DOMAIN }],
        ["renew_lease", { leaseId: v.lease, ttl: "2h" }],
        ["revoke_lease", { leaseId: v.lease, reason: "attack" }],
      ] as const) {
        const r = await orch.call(m, p);
        assert.equal(r.ok, false, `${m} of ${a}'s lease`);
        assert.equal(r.error.code, "access_denied", `${m} of ${a}'s lease: ${r.error.message}`);
      }
      if (v.approval) {
        const r = await orch.call("request_lease", { agent: "claude", secret: "guarded", approval: v.approval });
        assert.equal(r.ok, false);
      }
    }
    // The one an orchestrator does act for still works: the refusals above are about identity, not a broken session.
    const ok = await orch.ok("request_lease", { agent: "ci-7", secret: "gh", access: { domain: DOMAIN } });
    assert.equal(Buffer.from(ok.value, "base64").toString(), GH);
    const w = await orch.ok("whoami");
    assert.deepEqual(w.identity.actFor, ["claude", "ci-*"]);
  });

  test("an agent token names only itself: look-alikes of its own name are refused everywhere an agent can be named", async () => {
    const t = await token(admin, "claude-agent", "agent", { agent: "claude" });
    const c = await Conn.token(d, t.token);
    try {
      for (const L of LOOKALIKES.filter((x) => x !== "")) {
        for (const [m, p] of [
          ["request_lease", { agent: L, secret: "other" }],
          ["approval_request", { agent: L, secret: "guarded" }],
          ["list_granted", { agent: L }],
          ["explain", { agent: L, secret: "other" }],
          ["revoke_all_for_agent", { agent: L }],
          ["list_leases", { agent: L }],
          ["record_tool_call", { agent: L, tool: "t", outcome: "ok", ms: 1 }],
        ] as const) {
          const r = await c.call(m, p);
          assert.equal(r.ok, false, `${m} ${JSON.stringify(L)} allowed for agent claude`);
        }
      }
    } finally {
      c.close();
    }
    const all = await admin.ok("list_leases", { limit: 10_000 });
    for (const [a, v] of Object.entries(victims)) assert.equal(all.find((x: Msg) => x.id === v.lease).revokedAt, null, a);
  });
});

// ---------------------------------------------------------------------------------------------------
describe("tokens: ttl edge cases and dead tokens", () => {
  let d: RunningDaemon;
  let admin: Conn;
  before(async () => {
    d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
    admin = await Conn.admin(d);
    await seed(admin);
  });
  after(async () => {
    admin?.close();
    seen.push(d?.stderr() ?? "");
    await d?.stop();
  });

  test("a token ttl that is zero, negative, fractional, malformed or unbounded is refused; nothing is created", async () => {
    const before = (await admin.ok("token_list")).length;
    for (const ttl of [0, -1, 0.5, -3_600_000, "0s", "-5m", "1e3", "", " 1h", "1h ", "NaN", "Infinity", 1e300, "1h\u0000"]) {
      const r = await admin.call("token_create", { name: "edge", role: "agent", agent: "claude", ttl });
      assert.equal(r.ok, false, `ttl ${JSON.stringify(ttl)} was accepted: ${JSON.stringify(r.result?.expiresAt)}`);
      assert.equal(r.error.code, "invalid_request", `ttl ${JSON.stringify(ttl)}`);
    }
    assert.equal((await admin.ok("token_list")).length, before);
  });

  test("a token whose expiry would fall past the end of the calendar is refused, or else listing and whoami keep working", async () => {
    // 100,000,000 days is a safe integer of ms, but now + it is past Date's range (8.64e15 ms).
    const r = await admin.call("token_create", { name: "far", role: "agent", agent: "claude", ttl: "100000000d" });
    if (!r.ok) {
      assert.equal(r.error.code, "invalid_request");
      return;
    }
    tokenSecrets.push(splitToken(r.result.token)!.secret);
    try {
      const list = await admin.call("token_list");
      assert.equal(list.ok, true, `token_list broke after a far-future token: ${JSON.stringify(list.error)}`);
      const cli = await runCli(["token", "list", "--json"], { home: d.home });
      assert.equal(cli.code, 0, `lessor token list broke: ${cli.stderr}`);
      const w = await (await Conn.token(d, r.result.token)).call("whoami");
      assert.equal(w.ok, true, `whoami with the far token: ${JSON.stringify(w.error)}`);
    } finally {
      await admin.call("token_revoke", { id: r.result.id });
    }
  });

  test("a revoked or expired token is refused at the hello, in the handshake and in the legacy token hello, with no request behind it run", async () => {
    const rev = await token(admin, "to-revoke", "orchestrator", { actFor: ["claude"] });
    const exp = await token(admin, "to-expire", "agent", { agent: "claude", ttl: 300 });
    await admin.ok("token_revoke", { id: rev.id });
    await sleep(500);
    for (const t of [rev, exp]) {
      const { c, welcome } = await Conn.tokenRaw(d, t.token);
      assert.equal(welcome.ok, false, JSON.stringify(welcome));
      assert.equal(welcome.error?.code, "unauthenticated");
      c.close();
      const legacy = await Conn.open(d.tcp!);
      legacy.send({ protocol: "lessor", version: 1, token: t.token });
      legacy.send({ id: randomUUID(), method: "request_lease", params: { agent: "claude", secret: "canary", access: {} } });
      const w = await legacy.next();
      seen.push(JSON.stringify(w));
      assert.equal(w.ok, false, JSON.stringify(w));
      await legacy.closed;
      legacy.close();
    }
    const granted = await admin.ok("audit_query", { types: ["lease_granted", "secret_accessed"], limit: 10_000 });
    assert.deepEqual(granted.filter((e: Msg) => e.actorId.includes(rev.id) || e.actorId.includes(exp.id)), []);
    assert.deepEqual(await admin.ok("token_revoke", { id: rev.id }), { revoked: false }, "revoking twice is not a second revocation");
  });
});

// ---------------------------------------------------------------------------------------------------
describe("token files (LESSOR_TOKEN_FILE) and tokens given to the CLI", () => {
  let d: RunningDaemon;
  let admin: Conn;
  let agentToken: { id: string; token: string };
  let dir: string;
  before(async () => {
    d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
    admin = await Conn.admin(d);
    await seed(admin);
    agentToken = await token(admin, "file-agent", "agent", { agent: "claude" });
    dir = mkdtempSync(join(tmpdir(), "lessor-idfile-"));
  });
  after(async () => {
    admin?.close();
    seen.push(d?.stderr() ?? "");
    await d?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const cli = (env: Record<string, string>, args = ["whoami", "--json"]) =>
    runCli(args, { env: { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, HOME: dir, ...env }, timeoutMs: 15_000 }).then((r) => (seen.push(r.stdout, r.stderr), r));

  test("a token file that is a fifo, a directory, a device, a symlink or hard link to another user's file, group-readable or holding two lines is refused at once, never read as a token", async () => {
    const own = join(dir, "own");
    writeFileSync(own, `${agentToken.token}\n`, { mode: 0o600 });
    const good = await cli({ LESSOR_TOKEN_FILE: own });
    assert.equal(good.code, 0, good.stderr);
    assert.equal(JSON.parse(good.stdout).agent, "claude");

    const fifo = join(dir, "fifo");
    assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
    // A writer that would feed the token if the CLI read the fifo.
    const feeder = spawn("sh", ["-c", `printf '%s\\n' '${agentToken.token}' > ${fifo}`], { stdio: "ignore" });
    const foreign = join(dir, "foreign");
    writeFileSync(foreign, `${agentToken.token}\n`, { mode: 0o600 });
    chownSync(foreign, 65534, 65534);
    const sym = join(dir, "sym");
    symlinkSync(foreign, sym);
    const hard = join(dir, "hard");
    linkSync(foreign, hard);
    const wide = join(dir, "wide");
    writeFileSync(wide, `${agentToken.token}\n`, { mode: 0o640 });
    const two = join(dir, "two");
    writeFileSync(two, `${agentToken.token}\n${agentToken.token}\n`, { mode: 0o600 });
    const sub = join(dir, "adir");
    mkdirSync(sub, { mode: 0o700 });
    const cases: [string, RegExp][] = [
      [fifo, /not a regular file/],
      [sub, /not a regular file|cannot be opened/],
      ["/dev/null", /not a regular file/],
      ["/proc/self/fd/0", /not a regular file|cannot be opened|does not exist/],
      [sym, /belongs to uid 65534/],
      [hard, /belongs to uid 65534/],
      [wide, /has mode 0640/],
      [two, /one token on one line/],
    ];
    try {
      for (const [path, why] of cases) {
        const t0 = Date.now();
        const r = await cli({ LESSOR_TOKEN_FILE: path });
        assert.ok(Date.now() - t0 < 10_000, `${path}: took ${Date.now() - t0} ms`);
        assert.notEqual(r.code, 0, `${path} was accepted: ${r.stdout}`);
        assert.equal(r.signal, null, `${path}: the CLI hung and was killed`);
        assert.match(r.stderr, why, path);
        assert.ok(!r.stdout.includes("claude"), path);
      }
    } finally {
      feeder.kill();
    }
    const used = await admin.ok("audit_query", { types: ["auth_failed"], limit: 10_000 });
    assert.deepEqual(used.filter((e: Msg) => JSON.stringify(e).includes(agentToken.id)), [], "no refused file reached the daemon");
  });

  test("a wrong token (in a file or LESSOR_TOKEN) is never echoed: not its secret part, not a canary in its place", async () => {
    const fakeSecret = `X${CANARY}`.slice(0, 43).replace(/[^A-Za-z0-9_-]/g, "A");
    const fake = `lsr_${agentToken.id}_${fakeSecret}`;
    const junk = `not-a-token-${CANARY}`;
    const f1 = join(dir, "fake");
    writeFileSync(f1, fake, { mode: 0o600 });
    const f2 = join(dir, "junk");
    writeFileSync(f2, junk, { mode: 0o600 });
    const envs: Record<string, string>[] = [{ LESSOR_TOKEN_FILE: f1 }, { LESSOR_TOKEN_FILE: f2 }, { LESSOR_TOKEN: fake }, { LESSOR_TOKEN: junk }];
    for (const env of envs) {
      for (const args of [["whoami"], ["lease", "gh", "--domain", DOMAIN], ["secret", "list", "--json"]]) {
        const r = await cli(env, args);
        assert.notEqual(r.code, 0, `${JSON.stringify(env)} ${args.join(" ")}`);
        for (const s of [fakeSecret, junk, CANARY.slice(8)]) assert.ok(!(r.stdout + r.stderr).includes(s), `${args.join(" ")} echoed the token: ${r.stderr}`);
      }
    }
    const rows = JSON.stringify(await admin.ok("audit_query", { limit: 10_000 }));
    for (const s of [fakeSecret, junk, CANARY.slice(8)]) assert.ok(!rows.includes(s), "a tried token in the audit trail");
  });
});

// ---------------------------------------------------------------------------------------------------
describe("approvals", () => {
  let d: RunningDaemon;
  let admin: Conn;
  let admin2: Conn;
  let claude: Conn;
  let bob: Conn;
  before(async () => {
    d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
    admin = await Conn.admin(d);
    admin2 = await Conn.admin(d);
    await seed(admin);
    claude = await Conn.token(d, (await token(admin, "ap-claude", "agent", { agent: "claude" })).token);
    bob = await Conn.token(d, (await token(admin, "ap-bob", "agent", { agent: "bob" })).token);
  });
  after(async () => {
    for (const c of [admin, admin2, claude, bob]) c?.close();
    seen.push(d?.stderr() ?? "");
    await d?.stop();
  });

  test("approve raced against deny on two admin connections: exactly one decision stands per approval, and the audit says the same", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) ids.push((await claude.ok("approval_request", { secret: "guarded", ttl: `${10 + i}m` })).approval.id);
    const results = await Promise.all(ids.flatMap((id, i) => (i % 2 ? [admin.call("approval_decide", { id, approve: true }), admin2.call("approval_decide", { id, approve: false })] : [admin2.call("approval_decide", { id, approve: false }), admin.call("approval_decide", { id, approve: true })])));
    const all = await admin.ok("approval_list", { all: true });
    const rows = await admin.ok("audit_query", { types: ["approval_granted", "approval_denied"], limit: 10_000 });
    for (const [i, id] of ids.entries()) {
      const pair = results.slice(2 * i, 2 * i + 2);
      assert.equal(pair.filter((r) => r.ok).length, 1, `approval ${id}: ${JSON.stringify(pair.map((r) => r.ok))}`);
      const winner = pair.find((r) => r.ok)!.result.state;
      assert.equal(all.find((a: Msg) => a.id === id).state, winner);
      const mine = rows.filter((e: Msg) => e.detail?.approval === id);
      assert.equal(mine.length, 1, `audit rows for ${id}`);
      assert.equal(mine[0].type, winner === "approved" ? "approval_granted" : "approval_denied");
    }
  });

  test("an approval lets one lease through: approving twice, replaying its id after use, or bob presenting it gets nothing more", async () => {
    const id = (await claude.ok("approval_request", { secret: "guarded", maxUses: 3 })).approval.id;
    await admin.ok("approval_decide", { id, approve: true });
    const again = await admin.call("approval_decide", { id, approve: true });
    assert.equal(again.ok, false);
    const flip = await admin.call("approval_decide", { id, approve: false });
    assert.equal(flip.ok, false, "an approved approval cannot be turned into a denial after the fact (nor the reverse)");
    const b = await bob.call("request_lease", { secret: "guarded", maxUses: 3, approval: id });
    assert.equal(b.ok, false);
    const first = await claude.ok("request_lease", { secret: "guarded", maxUses: 3, approval: id });
    assert.equal(first.renewable, false);
    for (const p of [{ secret: "guarded", maxUses: 3, approval: id }, { secret: "guarded", maxUses: 3 }, { secret: "guarded", maxUses: 3, approval: id, access: {} }]) {
      const r = await claude.call("request_lease", p);
      assert.equal(r.ok, false, `replay ${JSON.stringify(p)} got a lease`);
      assert.equal(r.error.code, "access_denied");
    }
    const r = await claude.call("renew_lease", { leaseId: first.id, ttl: "1h" });
    assert.equal(r.ok, false, "a lease granted by approval is not renewable");
    const leases = (await admin.ok("list_leases", { agent: "claude", secret: "guarded", limit: 1000 })).filter((l: Msg) => l.maxUses === 3);
    assert.equal(leases.length, 1);
  });

  test("an approval is spent only on what the person was shown: after the rule (same name) is widened to any domain, the approved request gets no lease for other hosts", async () => {
    const { approval } = await claude.ok("approval_request", { secret: "guarded", ttl: "7m", reason: "deploy" });
    assert.deepEqual(approval.hosts, [DOMAIN], "the person is shown the rule's host");
    await admin.ok("approval_decide", { id: approval.id, approve: true });
    // The owner later widens the rule that needed the approval (same name), and reloads.
    const widened = POLICY.replace(`secrets = ["guarded"]\ndomains = ["${DOMAIN}"]`, `secrets = ["guarded"]\nany_domain = true`);
    assert.notEqual(widened, POLICY);
    writeFileSync(join(d.home, "policy.toml"), widened, { mode: 0o600 });
    try {
      await admin.ok("reload_policy");
      const r = await claude.call("request_lease", { secret: "guarded", ttl: "7m", approval: approval.id, access: { domain: "exfil.example.net" } });
      seen.push(JSON.stringify(r));
      const got = r.ok ? Buffer.from(r.result.value, "base64").toString() : null;
      assert.notEqual(got, GUARDED, "the approved request sent the secret to a host the person never saw (exfil.example.net)");
      assert.equal(r.ok, false);
      const leases = await admin.ok("list_leases", { agent: "claude", secret: "guarded", limit: 1000 });
      for (const l of leases) assert.ok(!l.anyDomain && l.domains.every((x: string) => x === DOMAIN), `a lease for ${JSON.stringify(l.domains)} anyDomain=${l.anyDomain}`);
    } finally {
      writeFileSync(join(d.home, "policy.toml"), POLICY, { mode: 0o600 });
      await admin.ok("reload_policy");
    }
  });

  test("an orchestrator cannot decide, and an agent cannot approve its own request (neither through approval_decide nor by presenting a pending id)", async () => {
    const o = await Conn.token(d, (await token(admin, "ap-orch", "orchestrator", { actFor: ["*"] })).token);
    try {
      const { approval } = await claude.ok("approval_request", { secret: "guarded", ttl: "9m" });
      for (const c of [o, claude]) {
        const r = await c.call("approval_decide", { id: approval.id, approve: true });
        assert.equal(r.ok, false);
        assert.equal(r.error.code, "access_denied");
      }
      const p = await claude.call("request_lease", { secret: "guarded", ttl: "9m", approval: approval.id });
      assert.equal(p.ok, false);
      const q = await o.call("request_lease", { agent: "claude", secret: "guarded", ttl: "9m", approval: approval.id });
      assert.equal(q.ok, false);
      const st = (await admin.ok("approval_list", { all: true })).find((a: Msg) => a.id === approval.id);
      assert.equal(st.state, "pending");
    } finally {
      o.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------------
const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;
const REPO = resolve(fileURLToPath(new URL("..", import.meta.url)));

/**
 * Runs in the sandbox: takes a lease through the session (raw protocol, ttl 1h, no access) and
 * writes its id; starts a detached grandchild that keeps calling whoami on the session socket and
 * appends each outcome to beat.log; then exits (or, with "stay", sleeps).
 */
const PROBE = String.raw`
import { spawn } from "node:child_process";
import { appendFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { randomUUID } from "node:crypto";
const [mode, out] = process.argv.slice(2);
const frame = (o) => { const j = Buffer.from(JSON.stringify(o)); const h = Buffer.alloc(4); h.writeUInt32BE(j.length); return Buffer.concat([h, j]); };
const talk = (reqs) => new Promise((done) => {
  const s = connect({ path: "/run/lessor/vault.sock" });
  let buf = Buffer.alloc(0); const frames = [];
  const fin = () => { s.destroy(); done(frames); };
  s.on("data", (c) => { buf = Buffer.concat([buf, c]); for (;;) { if (buf.length < 4) break; const n = buf.readUInt32BE(0); if (buf.length < 4 + n) break; frames.push(JSON.parse(buf.subarray(4, 4 + n).toString())); buf = buf.subarray(4 + n); } if (frames.length >= reqs.length + 1) fin(); });
  s.on("error", fin); s.on("close", fin);
  s.on("connect", () => s.write(Buffer.concat([frame({ protocol: "lessor", version: 1 }), ...reqs.map((r) => frame({ id: randomUUID(), ...r }))])));
  setTimeout(fin, 4000);
});
if (mode === "beat") {
  for (;;) {
    const f = await talk([{ method: "whoami" }]);
    appendFileSync(out + "/beat.log", JSON.stringify({ t: Date.now(), ok: f[1]?.ok === true }) + "\n");
    await new Promise((r) => setTimeout(r, 150));
  }
} else if (mode === "many") {
  // 100 leases of 64 domains of ~200 characters each: listed at once, more than a 1 MiB frame holds.
  const domains = (i) => Array.from({ length: 64 }, (_, j) => ["a", "b", "c"].map((c) => c.repeat(60)).join(".") + ".d" + i + "-" + j + ".example.com");
  let ok = 0;
  for (let b = 0; b < 10; b++) {
    const f = await talk(Array.from({ length: 10 }, (_, k) => ({ method: "request_lease", params: { secret: "granted", ttl: "1h", domains: domains(b * 10 + k) } })));
    ok += f.slice(1).filter((x) => x.ok === true).length;
  }
  writeFileSync(out + "/many.json", JSON.stringify({ ok }));
} else {
  const f = await talk([{ method: "request_lease", params: { secret: "granted", ttl: "1h" } }]);
  writeFileSync(out + "/lease.json", JSON.stringify(f[1] ?? null));
  const g = spawn(process.execPath, [process.argv[1], "beat", out], { detached: true, stdio: "ignore" });
  g.unref();
  for (let i = 0; i < 100; i++) { await new Promise((r) => setTimeout(r, 50)); try { if ((await import("node:fs")).readFileSync(out + "/beat.log", "utf8").includes('"ok":true')) break; } catch {} }
  console.log("PROBE-READY");
  if (mode === "stay") await new Promise((r) => setTimeout(r, 60_000));
}
`;

describe("lessor run --vault-session: the child's session ends with the run", { skip: HAVE_BWRAP ? false : "bwrap is not installed or user namespaces are off" }, () => {
  const AGENT = "runner-a";
  const GRANTED = `granted-${randomBytes(12).toString("hex")}`;
  const root = mkdtempSync(join(tmpdir(), "lessor-idrun-"));
  const HOME = join(root, "home");
  const RUN_TMP = join(root, "run-tmp");
  let d: RunningDaemon;
  let admin: Conn;
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));

  const policy = rule("a", [AGENT], ["granted"], "any_domain = true");
  before(async () => {
    mkdirSync(RUN_TMP, { recursive: true });
    mkdirSync(HOME, { recursive: true });
    const home = await makeHome({ policy, config: `[vault]\nmax_live_leases_per_agent = 1000\n[run]\nread = [${JSON.stringify(REPO)}]\n` });
    d = await startServe(home);
    admin = await Conn.admin(d);
    await admin.ok("store_secret", { name: "granted", value: GRANTED });
  });
  after(async () => {
    admin?.close();
    seen.push(d?.stderr() ?? "");
    await d?.stop();
  });

  const project = (name: string): string => projectDir(HOME, name, { "probe.mjs": PROBE });

  function startRun(proj: string, mode: string): { child: ReturnType<typeof spawn>; out: () => string; err: () => string; done: Promise<number | null> } {
    const child = spawn(process.execPath, ["--", BIN, "run", "--agent", AGENT, "--vault-session", "--ttl", "10m", "--", process.execPath, join(proj, "probe.mjs"), mode, proj], {
      cwd: proj,
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME, LESSOR_HOME: d.home, TMPDIR: RUN_TMP, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let o = "";
    let e = "";
    child.stdout!.on("data", (b: Buffer) => (o += b.toString()));
    child.stderr!.on("data", (b: Buffer) => (e += b.toString()));
    const t = setTimeout(() => child.kill("SIGKILL"), 90_000);
    const done = new Promise<number | null>((r) => child.on("close", (code) => (clearTimeout(t), r(code))));
    return { child, out: () => o, err: () => e, done };
  }

  const beats = (proj: string): { t: number; ok: boolean }[] =>
    existsSync(join(proj, "beat.log")) ? readFileSync(join(proj, "beat.log"), "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];

  async function runTokens(): Promise<Msg[]> {
    return (await admin.ok("token_list")).filter((t: Msg) => /^session:/.test(t.name));
  }

  test("after the child exits, a detached grandchild is gone with the sandbox, the run's token is revoked, and the session socket answers nobody", async () => {
    const proj = project("exit");
    const r = startRun(proj, "exit");
    const code = await r.done;
    seen.push(r.out(), r.err());
    assert.equal(code, 0, r.err());
    assert.match(r.out(), /PROBE-READY/);
    const atExit = Date.now();
    assert.ok(beats(proj).some((b) => b.ok), "the grandchild reached the session while the run lived");
    await sleep(1500);
    const late = beats(proj).filter((b) => b.t > atExit + 300);
    assert.deepEqual(late, [], `the grandchild kept running after the run ended: ${JSON.stringify(late.slice(0, 3))}`);
    const toks = await runTokens();
    assert.ok(toks.length >= 1);
    assert.ok(toks.every((t: Msg) => t.revokedAt !== null), "every run token is revoked");
  });

  test("the session is for this run only: a lease the sandboxed command took through it does not outlive the run", async () => {
    const proj = project("lease");
    const r = startRun(proj, "exit");
    assert.equal(await r.done, 0, r.err());
    const lease = JSON.parse(readFileSync(join(proj, "lease.json"), "utf8"));
    assert.equal(lease?.ok, true, JSON.stringify(lease));
    const id = lease.result.id as string;
    await sleep(300);
    const l = (await admin.ok("list_leases", { agent: AGENT, limit: 1000 })).find((x: Msg) => x.id === id);
    assert.ok(l, "the lease is listed");
    assert.notEqual(l.revokedAt, null, `lease ${id} taken inside the run's session is still live after the run ended (expires ${new Date(l.expiresAt).toISOString()}); any later holder of agent ${AGENT} can access it by id`);
  });

  test("the run's end revokes every lease its session took, even more than one answer of list_leases can hold", async () => {
    const proj = project("many");
    const r = startRun(proj, "many");
    assert.equal(await r.done, 0, r.err());
    assert.deepEqual(JSON.parse(readFileSync(join(proj, "many.json"), "utf8")), { ok: 100 });
    // All at once they are past the frame limit (what the run's end once asked, and failed on)...
    const once = await admin.call("list_leases", { agent: AGENT, limit: 10_000 });
    assert.equal(once.ok, false);
    assert.match(once.error.message, /over the \d+-byte frame limit/);
    // ...page by page, every one of them is revoked.
    const all: Msg[] = [];
    for (;;) {
      const page: Msg[] = await admin.ok("list_leases", { agent: AGENT, limit: 50, ...(all.length > 0 ? { before: all.at(-1)!.id } : {}) });
      all.push(...page);
      if (page.length < 50) break;
    }
    const taken = all.filter((l) => l.domains.length === 64);
    assert.equal(taken.length, 100);
    const live = taken.filter((l) => l.revokedAt === null);
    assert.equal(live.length, 0, `${live.length} of the run session's 100 leases are still live after the run ended`);
  });

  test("a SIGKILLed run: the sandboxed child and its grandchild die with it, and its token ends no later than --ttl", async () => {
    const proj = project("kill");
    const r = startRun(proj, "stay");
    for (let i = 0; i < 600 && !/PROBE-READY/.test(r.out()); i++) await sleep(50);
    assert.match(r.out(), /PROBE-READY/, r.err());
    const before = new Set((await runTokens()).map((t: Msg) => t.id));
    r.child.kill("SIGKILL");
    await r.done;
    const killedAt = Date.now();
    await sleep(2000);
    const late = beats(proj).filter((b) => b.t > killedAt + 1000);
    assert.deepEqual(late.filter((b) => b.ok), [], "the grandchild still reached the vault after lessor run was killed");
    assert.deepEqual(late, [], "the grandchild kept running after lessor run was killed");
    const live = (await runTokens()).filter((t: Msg) => t.revokedAt === null && before.has(t.id));
    const ms = (v: unknown): number => (typeof v === "number" ? v : Date.parse(String(v)));
    for (const t of live) assert.ok(ms(t.expiresAt) - ms(t.createdAt) <= 10 * 60_000 + 1000, `the orphaned token lives at most --ttl: ${JSON.stringify(t)}`);
  });
});

// ---------------------------------------------------------------------------------------------------
test("the canary and every token secret never appear in a frame, an output, the daemons' logs or an audit row", () => {
  const text = seen.join("\n");
  for (const f of forms(CANARY)) assert.ok(!text.includes(f), "the canary leaked");
  for (const s of tokenSecrets) assert.ok(!text.includes(s), "a token secret leaked");
});
