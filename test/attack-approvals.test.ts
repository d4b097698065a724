/**
 * Attack pass on the human-approval flow of a running `lessor serve` (a real child process, a real
 * SQLite file, its Unix socket and a loopback TCP port), through the protocol and the built CLI
 * (`lessor approvals`, `lessor approve ID`, `lessor deny ID`):
 * - one orchestrator (the docs' `--act-for "ci-*"`) filling the vault-wide approval table so that no
 *   other agent can ask a person for anything;
 * - an approval a person gave before the killswitch, taken up after the release;
 * - another local uid (nobody, through setpriv) on a shared socket: mapped to the requesting agent, or
 *   not mapped at all, running `lessor approvals` / `approve` / `deny`;
 * - an agent's hostile text (ESC, C1, bidi) in what `lessor approvals` shows the person, and the
 *   decision's audit row naming who decided.
 * A canary secret is stored and must never appear in any frame, output or log line.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { BIN, runProcess } from "./cli-harness.js";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const DOMAIN = "api.example.com";
const seen: string[] = [];

class Conn extends DaemonConn {
  override async call(method: string, params?: unknown): Promise<Msg> {
    const r = await super.call(method, params);
    if (method !== "token_create" && method !== "reveal_secret") seen.push(JSON.stringify(r));
    return r;
  }
}

const rule = (name: string, agents: string[], extra = ""): string =>
  `[[rule]]\nname = ${JSON.stringify(name)}\neffect = "allow"\nagents = ${JSON.stringify(agents)}\nsecrets = ["deploy"]\ndomains = ["${DOMAIN}"]\napproval = "required"\n${extra}\n`;
const POLICY = rule("gated", ["claude", "bob"]) + rule("ci-gated", ["ci-*"]) + rule("any-gated", ["claude"], "").replace(`domains = ["${DOMAIN}"]`, "any_domain = true").replace('secrets = ["deploy"]', 'secrets = ["anyhost"]');
const CONFIG = `[vault]\nmax_live_leases_per_agent = 100000\n[server]\ntcp = "127.0.0.1:0"\n`;

interface Rig {
  d: RunningDaemon;
  admin: Conn;
  tok(name: string, role: string, extra?: Record<string, unknown>): Promise<Conn>;
  close(): Promise<void>;
}

async function rig(opts: { config?: string; socketDir?: string } = {}): Promise<Rig> {
  const config = opts.config ?? CONFIG;
  const d = await startServe(await makeHome({ config, policy: POLICY }));
  const admin = await Conn.admin(d);
  await admin.okResult("store_secret", { name: "deploy", value: CANARY });
  await admin.okResult("store_secret", { name: "anyhost", value: `${CANARY}-any` });
  const conns: Conn[] = [admin];
  return {
    d,
    admin,
    async tok(name, role, extra = {}) {
      const t = await admin.okResult("token_create", { name, role, ...extra });
      const c = await Conn.provedToken(d, t.token);
      conns.push(c);
      return c;
    },
    async close() {
      for (const c of conns) c.close();
      seen.push(d.stderr());
      await d.stop();
    },
  };
}

after(() => {
  for (const s of seen) assert.ok(!s.includes(CANARY), "the canary appears in a frame or log line");
});

// ---------------------------------------------------------------------------------------------------
describe("pending-request floods", () => {
  // docs/security.md, threat model: "one principal denying service to the others (… request floods …)".
  // src/vault/approvals.ts caps pending approvals per *agent* (16) and all approvals at 256 vault-wide,
  // but nothing per *requester*: an orchestrator acting for a pattern (docs/cli/admin.md's example is
  // `--act-for "ci-*"`) asks for 16 made-up agents and holds every slot, and from then on no other
  // agent can put a request before a person (rate_limited) until the flood lapses (10 minutes, and it
  // can be renewed as it lapses).
  test("one orchestrator acting for ci-* cannot fill the vault-wide approval table: it is capped at 16 pending, and claude can still ask a person", async () => {
    const r = await rig();
    try {
      const ci = await r.tok("ci", "orchestrator", { actFor: ["ci-*"] });
      const claude = await r.tok("claude", "agent", { agent: "claude" });
      let opened = 0;
      let refused = "";
      for (let a = 0; a < 16 && !refused; a++)
        for (let i = 0; i < 16; i++) {
          const res = await ci.call("approval_request", { agent: `ci-${a}`, secret: "deploy", maxUses: i + 1, reason: "flood" });
          if (!res.ok) {
            // Its share for one agent (4) is spent: on to the next made-up agent.
            if (/for agent "ci-\d+"/.test(res.error.message)) break;
            refused = `${res.error.code}: ${res.error.message}`;
            break;
          }
          opened++;
        }
      const pending = await r.admin.okResult("approval_list", {});
      const res = await claude.call("approval_request", { secret: "deploy", reason: "the real job" });
      assert.equal(
        res.ok,
        true,
        `after one orchestrator opened ${opened} approvals (${pending.length} pending, ${pending.filter((a: Msg) => a.requestedBy.startsWith("token:ci/")).length} of them its own${refused ? `; it was stopped only by: ${refused}` : ""}), claude cannot ask a person: ${res.error?.code}: ${res.error?.message}`,
      );
      assert.equal(res.result.required, true);
      assert.equal(opened, 16, "the orchestrator is stopped at its own cap");
      assert.match(refused, /^rate_limited: .*already have 16 requests waiting/);
    } finally {
      await r.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------------
describe("approvals and the killswitch", () => {
  // docs/cli/leases.md: the killswitch "revokes every lease not yet revoked or expired now … and engages
  // a lockout"; docs/security.md: a lease from before the killswitch stays revoked after the release
  // ("the release does not revive it"). An approval a person gave before the incident and that nobody
  // had taken up yet is a lease in waiting: the killswitch leaves it approved (src/vault/approvals.ts is
  // touched by no killswitch code), so right after the release the agent takes a brand-new lease on the
  // strength of a decision made before the emergency, and no person is asked again.
  test("an approval given before the killswitch is withdrawn by it: after the release it yields no lease, and a person is asked again", async () => {
    const r = await rig();
    try {
      const claude = await r.tok("claude", "agent", { agent: "claude" });
      const ask = { secret: "deploy", domains: [DOMAIN], ttl: "5m" };
      const { approval } = await claude.okResult("approval_request", { ...ask, reason: "deploy before the freeze" });
      await r.admin.okResult("approval_decide", { id: approval.id, approve: true });
      assert.deepEqual(await r.admin.okResult("killswitch", { reason: "token leaked in a log" }), { revoked: 0 });
      // The agent's connections were closed by the killswitch; it reconnects after the release.
      await r.admin.okResult("killswitch_release", { reason: "investigated" });
      const again = await r.tok("claude-2", "agent", { agent: "claude" });
      const got = await again.call("request_lease", { ...ask, approval: approval.id });
      const leases = await r.admin.okResult("list_leases", { agent: "claude", limit: 100 });
      assert.equal(
        got.ok,
        false,
        `after the killswitch and its release, the pre-incident approval ${approval.id} granted lease ${got.result?.id} (${leases.length} lease(s) for claude) without a person being asked again`,
      );
      assert.equal(got.error.code, "access_denied");
      assert.match(got.error.message, /is not one for this request|lapsed/);
      // Withdrawn, and audited as such; the same request opens a new approval a person must decide.
      assert.equal((await r.admin.okResult("approval_list", { all: true })).filter((a: Msg) => a.id === approval.id).length, 0);
      const rows = await r.admin.okResult("audit_query", { types: ["approval_denied"], limit: 100 });
      assert.ok(rows.some((e: Msg) => e.detail?.approval === approval.id && e.reason === "withdrawn: the killswitch was pulled"), JSON.stringify(rows));
      const fresh = await again.call("request_lease", ask);
      assert.equal(fresh.ok, false);
      assert.match(fresh.error.message, /was opened/);
      assert.equal((await r.admin.okResult("list_leases", { agent: "claude", limit: 100 })).length, 0);
    } finally {
      await r.close();
    }
  });

  test("during the killswitch no approval is opened or decided, and nothing is granted", async () => {
    const r = await rig();
    try {
      const claude = await r.tok("claude", "agent", { agent: "claude" });
      const before = await claude.okResult("approval_request", { secret: "deploy", domains: [DOMAIN] });
      await r.admin.okResult("killswitch", { reason: "incident" });
      // The request waiting from before the killswitch was withdrawn with it: nothing to decide.
      // Approving anything is refused while the lockout holds; denying the withdrawn one finds nothing.
      const stale = await r.admin.call("approval_decide", { id: before.approval.id, approve: true });
      assert.equal(stale.ok, false);
      assert.equal(stale.error.code, "access_denied");
      assert.match(stale.error.message, /killswitch is engaged/);
      const gone = await r.admin.call("approval_decide", { id: before.approval.id, approve: false });
      assert.equal(gone.ok, false);
      assert.equal(gone.error.code, "invalid_request");
      // One asked for during the lockout is refused (test/attack-lockout.test.ts): nothing is queued
      // for the person to face after the release, and no grant follows.
      const c2 = await r.tok("claude-ks", "agent", { agent: "claude" });
      const asked = await c2.call("approval_request", { secret: "deploy", domains: [DOMAIN] });
      assert.equal(asked.ok, false);
      assert.equal(asked.error.code, "access_denied");
      assert.match(asked.error.message, /killswitch/);
      for (const p of [{ secret: "deploy", domains: [DOMAIN] }, { secret: "deploy", domains: [DOMAIN], access: { domain: DOMAIN } }]) {
        const got = await c2.call("request_lease", p);
        assert.equal(got.ok, false);
        assert.equal(got.error.code, "access_denied");
        assert.match(got.error.message, /killswitch/);
      }
      assert.equal((await r.admin.okResult("list_leases", { agent: "claude", limit: 100 })).length, 0);
      assert.deepEqual(await r.admin.okResult("approval_list", { all: true }), []);
    } finally {
      await r.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------------
const AS_ROOT = process.getuid?.() === 0 && spawnSync("setpriv", ["--version"]).status === 0;

describe("another local uid and the agent's own uid against lessor approvals/approve/deny (built CLI)", () => {
  // docs/policy.md: "lessor approvals, lessor approve ID, lessor deny ID [--reason …] (admin …)".
  test("on a shared 0666 socket, nobody mapped to agent claude (and an unmapped uid) can neither list, approve nor deny claude's request with the CLI; it stays pending", { skip: AS_ROOT ? false : "needs root and setpriv to act as another uid" }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-apr-"));
    chmodSync(dir, 0o755);
    const socket = join(dir, "agents.sock");
    const r = await rig({ config: `${CONFIG}socket = ${JSON.stringify(socket)}\nsocket_mode = "0666"\n\n[[identity]]\nuid = 65534\nrole = "agent"\nagent = "claude"\n` });
    try {
      const cli = (uid: number, args: string[]) =>
        runProcess("setpriv", [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", process.execPath, BIN, ...args], { env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: "/nonexistent", LESSOR_SOCKET: socket }, cwd: "/" });
      // The agent (as nobody) opens its own approval through the CLI it is given.
      const whoami = await cli(65534, ["whoami", "--json"]);
      seen.push(whoami.stdout, whoami.stderr);
      assert.equal(whoami.code, 0, whoami.stderr);
      assert.equal(JSON.parse(whoami.stdout).role, "agent");
      const lease = await cli(65534, ["lease", "deploy", "--domain", DOMAIN, "--json"]);
      seen.push(lease.stdout, lease.stderr);
      assert.notEqual(lease.code, 0, "no lease without a person");
      const pending = await r.admin.okResult("approval_list", {});
      assert.equal(pending.length, 1, JSON.stringify(pending));
      const id = pending[0].id as string;
      assert.equal(pending[0].agent, "claude");
      assert.equal(pending[0].requestedBy, "uid:65534");
      for (const uid of [65534, 4243]) {
        for (const args of [["approvals"], ["approvals", "--all", "--json"], ["approve", id], ["approve", id, "--json"], ["deny", id, "--reason", "mine"]]) {
          const res = await cli(uid, args);
          seen.push(res.stdout, res.stderr);
          assert.notEqual(res.code, 0, `uid ${uid}: lessor ${args.join(" ")} succeeded: ${res.stdout}`);
          assert.ok(!res.stdout.includes(id), `uid ${uid}: lessor ${args.join(" ")} printed the approval`);
          assert.equal(res.code, 3, `uid ${uid}: lessor ${args.join(" ")}: ${res.stderr}`);
        }
      }
      const st = (await r.admin.okResult("approval_list", { all: true })).find((a: Msg) => a.id === id);
      assert.equal(st.state, "pending");
      assert.equal(st.decidedBy, null);
      // The agent presenting its own pending id gets no lease either.
      const take = await cli(65534, ["lease", "deploy", "--domain", DOMAIN, "--json"]);
      seen.push(take.stdout, take.stderr);
      assert.notEqual(take.code, 0);
      assert.equal((await r.admin.okResult("list_leases", { agent: "claude", limit: 100 })).length, 0);
      const refusals = await r.admin.okResult("audit_query", { types: ["access_denied"], limit: 1000 });
      assert.ok(refusals.some((e: Msg) => e.actorId === "uid:65534" && /approve a request|deny a request/.test(e.reason ?? "")), "the agent's attempt to decide is audited under its uid");
    } finally {
      await r.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------------------------------
describe("what the person is shown, and the trail of the decision", () => {
  test("an agent's ESC, C1, bidi and line-separator text never reaches lessor approvals; the listing shows the exact request, and the decision's audit row names who decided", async () => {
    const r = await rig();
    try {
      const claude = await r.tok("claude", "agent", { agent: "claude" });
      const hostile = ["\u001b]52;c;cm0gLXJmIH4=\u0007", "\u009b2J", "ok \u202eevil", "a\u2028b", "x\r\n  agent \"bob\" asks", "\u200bzero"];
      for (const h of hostile) {
        for (const p of [{ secret: "deploy", reason: h }, { secret: "deploy", domains: [`${h}.example.com`] }, { secret: "anyhost", domains: [`api.example.com${h}`] }]) {
          const res = await claude.call("approval_request", p);
          assert.equal(res.ok, false, `accepted ${JSON.stringify(p)}`);
          assert.equal(res.error.code, "invalid_request");
        }
      }
      assert.deepEqual(await r.admin.okResult("approval_list", { all: true }), [], "nothing hostile was opened");
      // A legitimate one, under a grant for any host, naming two hosts, a ttl and a use cap.
      const { approval } = await claude.okResult("approval_request", { secret: "anyhost", domains: ["b.example.org", "A.Example.com"], ttl: "2m", maxUses: 3, reason: "sync two mirrors" });
      const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: "/nonexistent", LESSOR_SOCKET: r.d.socket };
      const list = await runProcess(process.execPath, [BIN, "approvals"], { env });
      seen.push(list.stdout, list.stderr);
      assert.equal(list.code, 0, list.stderr);
      assert.ok(!/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u200b-\u200f\u202a-\u202e]/.test(list.stdout), "no control text");
      assert.match(list.stdout, new RegExp(`${approval.id}  pending`));
      assert.match(list.stdout, /agent "claude" asks for global\/anyhost \(rule "any-gated"\)/);
      assert.match(list.stdout, /to send it to: b\.example\.org, a\.example\.com\n/, "the hosts the lease will hold (normalised), not 'any host'");
      assert.match(list.stdout, /lease: ttl 120s, at most 3 uses/);
      // A look-alike host (Cyrillic a) is shown to the person as the punycode it is, never as api.example.com.
      const look = await claude.okResult("approval_request", { secret: "anyhost", domains: ["\u0430pi.example.com"], reason: "same api" });
      const list2 = await runProcess(process.execPath, [BIN, "approvals"], { env });
      assert.equal(list2.code, 0, list2.stderr);
      assert.match(list2.stdout, new RegExp(`${look.approval.id}  pending\\n[^\\n]*\\n  to send it to: xn--pi-6kc\\.example\\.com\\n`));
      const ok = await runProcess(process.execPath, [BIN, "approve", approval.id], { env });
      assert.equal(ok.code, 0, ok.stderr);
      const lease = await claude.okResult("request_lease", { secret: "anyhost", domains: ["a.example.com", "b.example.org"], ttl: "2m", maxUses: 3 });
      assert.equal(lease.anyDomain, false);
      assert.deepEqual([...lease.domains].sort(), ["a.example.com", "b.example.org"]);
      assert.ok(lease.maxUses <= 3 && lease.expiresAt - lease.issuedAt <= 120_000, JSON.stringify(lease));
      const rows = await r.admin.okResult("audit_query", { types: ["approval_granted"], limit: 100 });
      const mine = rows.filter((e: Msg) => e.detail?.approval === approval.id);
      assert.equal(mine.length, 1);
      assert.equal(mine[0].actorRole, "admin");
      assert.equal(mine[0].actorId, `uid:${process.getuid?.() ?? 0}`);
      assert.ok(String(mine[0].detail.requested_by).startsWith("token:claude/"), JSON.stringify(mine[0].detail));
      // Replaying the decision from the CLI: exit 2, nothing changes.
      const replay = await runProcess(process.execPath, [BIN, "approve", approval.id], { env });
      assert.equal(replay.code, 2, replay.stderr);
      assert.equal((await r.admin.okResult("list_leases", { agent: "claude", secret: "anyhost", limit: 100 })).length, 1);
    } finally {
      await r.close();
    }
  });
});
