/**
 * Attack pass on `lessor run --vault-session` (src/cli/run/vault-session.ts): the sandboxed child's
 * agent session is for this run only. Real `node dist/bin/lessor.cjs run` children in the real bwrap
 * sandbox, against a real daemon (SQLite home) and embedded (no daemon).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { initHome } from "../src/config/open-vault.js";
import { BIN, runCli, seedHome } from "./cli-harness.js";
import { DaemonConn, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";
import { agentRule, answersIn, leaksOf, NO_BWRAP, OkConn, projectDir, REPO, sessionProbe, sessionSuite } from "./session-probe.js";
import { tempDirUntilExit } from "./helpers.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const AGENT = "runner-v";
/** The canary as it would appear in an answer: plain, or as access_secret's base64 value. */
const leaks = leaksOf(CANARY);

/** The sandboxed probe (session-probe.ts), giving up after 60 s. */
const PROBE = sessionProbe(60_000);

/** Runs in the sandbox: opens argv[3] session connections, each welcomed, holds them until argv[2]/go exists. */
const HOLD = String.raw`
import { existsSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
const [out, n] = process.argv.slice(2);
const frame = (o) => { const j = Buffer.from(JSON.stringify(o)); const h = Buffer.alloc(4); h.writeUInt32BE(j.length); return Buffer.concat([h, j]); };
const one = () => new Promise((done) => {
  const s = connect({ path: "/run/lessor/vault.sock" });
  let got = Buffer.alloc(0);
  s.on("data", (c) => { got = Buffer.concat([got, c]); if (got.length >= 4 && got.length >= 4 + got.readUInt32BE(0)) done(JSON.parse(got.subarray(4, 4 + got.readUInt32BE(0)).toString()).ok === true); });
  s.on("error", () => done(false)); s.on("close", () => done(false));
  s.on("connect", () => s.write(frame({ protocol: "lessor", version: 1 })));
});
const oks = await Promise.all(Array.from({ length: Number(n) }, one));
writeFileSync(out + "/held.json", JSON.stringify({ welcomed: oks.filter(Boolean).length }));
while (!existsSync(out + "/go")) await new Promise((t) => setTimeout(t, 50));
process.exit(0);
`;

const rule = agentRule(AGENT);
const POLICY = rule("guarded", ["guarded"], `domains = ["api.example.com"]\napproval = "required"`) + rule("open", ["open"], `domains = ["api.example.com"]`);

function startRun(home: string, proj: string, env: Record<string, string>, reqs: unknown[] | null, name: string): { out: () => string; err: () => string; done: Promise<number | null> } {
  const child = spawn(process.execPath, ["--", BIN, "run", "--agent", AGENT, "--vault-session", "--network", "none", "--ttl", "10m", "--", ...(reqs === null ? [process.execPath, join(proj, "hold.mjs"), proj, name] : [process.execPath, join(proj, "probe.mjs"), proj, JSON.stringify(reqs), name])], {
    cwd: proj,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, LESSOR_HOME: home, NO_COLOR: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let o = "";
  let e = "";
  child.stdout!.on("data", (b: Buffer) => (o += b.toString()));
  child.stderr!.on("data", (b: Buffer) => (e += b.toString()));
  const t = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const done = new Promise<number | null>((r) => child.on("close", (code) => (clearTimeout(t), r(code))));
  return { out: () => o, err: () => e, done };
}

describe("lessor run --vault-session, with a daemon", { skip: NO_BWRAP }, () => {
  let d: RunningDaemon;
  let admin: OkConn;
  const root = tempDirUntilExit("lessor-vsatk-");

  sessionSuite(
    POLICY,
    (x) => ({ d, admin } = x),
    async (a) => {
      await a.ok("store_secret", { name: "guarded", value: CANARY });
      await a.ok("store_secret", { name: "open", value: `open-${CANARY}` });
    },
  );

  const project = (name: string): string => projectDir(root, name, { "probe.mjs": PROBE, "hold.mjs": HOLD });
  const answers = answersIn;

  test("an approval the sandboxed command asked for through its session ends with the run: withdrawn (removed, not denied), so no person decides it, and the next run's same request is asked afresh", async () => {
    const proj = project("approval");
    const ask = { method: "request_lease", params: { secret: "guarded", ttl: "5m" } };
    const r1 = startRun(d.home, proj, {}, [ask], "first");
    assert.equal(await r1.done, 0, r1.err());
    const first = answers(proj, "first");
    assert.equal(first[0]?.ok, true, JSON.stringify(first));
    assert.equal(first[1]?.ok, false, JSON.stringify(first));
    assert.match(JSON.stringify(first[1]), /approval \S+ was opened/);
    // The run's end withdrew it: nothing of the ended session's is left for a person to decide (or
    // for anyone to take up), and it is not a denial (a denial stands for the agent, whoever asks).
    const all = (await admin.ok("approval_list", { all: true })) as Msg[];
    assert.deepEqual(all.filter((a) => a.agent === AGENT && a.requestedBy.startsWith("token:")), [], "an approval the ended run's session asked for is still there");
    const withdrawn = ((await admin.ok("audit_query", { types: ["approval_denied"], limit: 50, order: "desc" })) as Msg[]).filter((e) => e.agent === AGENT);
    assert.ok(withdrawn.some((e) => e.detail?.withdrawn_by === "requester_ended" && /lessor run that asked for it ended/.test(e.reason)), JSON.stringify(withdrawn));
    // The next run for the same agent asks the same thing: a fresh approval, not "a person denied".
    const r2 = startRun(d.home, proj, {}, [ask, { method: "access_secret", params: { leaseId: "$LAST", domain: "api.example.com" } }], "second");
    assert.equal(await r2.done, 0, r2.err());
    const second = answers(proj, "second");
    assert.ok(!leaks(second), `the next run's command got the value: ${JSON.stringify(second)}`);
    assert.equal(second[1]?.ok, false, JSON.stringify(second[1]));
    assert.match(JSON.stringify(second[1]), /approval \S+ was opened/, "the next run's request is asked afresh, not refused as denied");
    assert.doesNotMatch(JSON.stringify(second[1]), /a person denied/);
  });

  test("an approval a person gave the run's session while it ran, and it did not take up, serves only that session: the next run's command gets no lease by it", async () => {
    const proj = project("approved-during");
    const ask = { method: "request_lease", params: { secret: "guarded", ttl: "6m" } };
    const r1 = startRun(d.home, proj, {}, [ask, { waitFor: "go" }], "first");
    for (let i = 0; i < 1200 && !existsSync(join(proj, "first.waiting")); i++) await sleep(50);
    assert.ok(existsSync(join(proj, "first.waiting")), r1.err());
    const open = ((await admin.ok("approval_list")) as Msg[]).filter((a) => a.agent === AGENT && a.ttlMs === 360_000);
    assert.equal(open.length, 1, JSON.stringify(open));
    await admin.ok("approval_decide", { id: open[0]!.id, approve: true });
    writeFileSync(join(proj, "go"), "1");
    assert.equal(await r1.done, 0, r1.err());
    const r2 = startRun(d.home, proj, {}, [ask, { method: "access_secret", params: { leaseId: "$LAST", domain: "api.example.com" } }], "second");
    assert.equal(await r2.done, 0, r2.err());
    const second = answers(proj, "second");
    assert.ok(!leaks(second), "the value leaked to the next run");
    assert.notEqual(second[1]?.ok, true, `the next run's command was granted a lease on the approval the person gave the ended run's session: ${JSON.stringify(second[1])}`);
    assert.match(JSON.stringify(second[1]), /approv/i);
  });

  test("a lease a person approved for one run's session is not used by another run's command for the same agent running at the same time", async () => {
    const proj = project("approved-shared");
    const ask = { method: "request_lease", params: { secret: "guarded", ttl: "7m" } };
    const r1 = startRun(d.home, proj, {}, [ask, { waitFor: "approved" }, ask, { waitFor: "go" }], "first");
    try {
      for (let i = 0; i < 1200 && !existsSync(join(proj, "first.waiting")); i++) await sleep(50);
      const open = ((await admin.ok("approval_list")) as Msg[]).filter((a) => a.agent === AGENT && a.ttlMs === 420_000);
      assert.equal(open.length, 1, r1.err());
      await admin.ok("approval_decide", { id: open[0]!.id, approve: true });
      rmSync(join(proj, "first.waiting"));
      writeFileSync(join(proj, "approved"), "1");
      for (let i = 0; i < 1200 && !existsSync(join(proj, "first.waiting")); i++) await sleep(50);
      const first = answers(proj, "first");
      const granted = ((await admin.ok("list_leases", { agent: AGENT, live: true })) as Msg[]).filter((l) => l.name === "guarded");
      assert.equal(granted.length, 1, `run 1's command got its approved lease: ${JSON.stringify(first)} ${r1.err()}`);
      // Run 2's command, for the same agent, finds it and asks for its value.
      // (It does not see it listed: a run's session sees only its own leases, test/attack-runsession.test.ts;
      // it learnt the id some other way.)
      const r2 = startRun(d.home, proj, {}, [{ method: "list_leases", params: { live: true } }, { method: "access_secret", params: { leaseId: granted[0]!.id, domain: "api.example.com" } }], "second");
      assert.equal(await r2.done, 0, r2.err());
      const second = answers(proj, "second");
      assert.ok(Array.isArray(second[1]?.result) && !second[1].result.some((l: Msg) => l.id === granted[0]!.id), JSON.stringify(second[1]));
      assert.ok(!leaks(second), "run 2's command got the value a person approved for run 1's session");
      assert.equal(second[2]?.ok, false, JSON.stringify(second[2]));
      assert.equal(second[2]?.error?.code, "access_denied");
    } finally {
      writeFileSync(join(proj, "go"), "1");
      await r1.done;
    }
  });

  test("the sandboxed command holding as many session connections as the relay takes leaves the owner's own connections to the daemon (the killswitch) working", async () => {
    const proj = project("flood");
    const r = startRun(d.home, proj, {}, null, "100");
    for (let i = 0; i < 1200 && !existsSync(join(proj, "held.json")) && !/exited/.test(r.err()); i++) await sleep(50);
    try {
      assert.ok(existsSync(join(proj, "held.json")), r.err());
      const held = JSON.parse(readFileSync(join(proj, "held.json"), "utf8"));
      assert.ok(held.welcomed >= 1, JSON.stringify(held));
      // The owner, on the daemon's socket as themself: a few connections at once (a CLI, lessor mcp, a proxy).
      const mine: OkConn[] = [];
      try {
        for (let i = 0; i < 4; i++) mine.push(await OkConn.admin(d));
        const st = await mine[0]!.call("status");
        assert.equal(st.ok, true, `the owner's own call was refused while the sandboxed command held ${held.welcomed} session connections: ${JSON.stringify(st)}`);
      } finally {
        for (const c of mine) c.close();
      }
    } finally {
      writeFileSync(join(proj, "go"), "1");
      await r.done;
    }
  });
});

describe("lessor run --vault-session, embedded (no daemon)", { skip: NO_BWRAP }, () => {
  const root = mkdtempSync(join(tmpdir(), "lessor-vsatk-emb-"));
  const home = join(root, "home");
  process.on("exit", () => rmSync(root, { recursive: true, force: true }));
  before(async () => {
    mkdirSync(home, { recursive: true, mode: 0o700 });
    await initHome({ home, env: { LESSOR_HOME: home } });
    await seedHome(home, POLICY, [{ name: "guarded", value: CANARY }]);
    appendFileSync(join(home, "lessor.toml"), `\n[run]\nread = [${JSON.stringify(REPO)}]\n`);
  });

  test("embedded: the session's waiting approval is withdrawn at the run's end (removed, not denied), and the next run's same request is asked afresh", async () => {
    const proj = join(root, "proj");
    mkdirSync(proj, { recursive: true });
    writeFileSync(join(proj, "probe.mjs"), PROBE);
    const ask = { method: "request_lease", params: { secret: "guarded", ttl: "5m" } };
    const r1 = startRun(home, proj, {}, [ask], "first");
    assert.equal(await r1.done, 0, r1.err());
    const first: Msg[] = JSON.parse(readFileSync(join(proj, "first.json"), "utf8"));
    assert.equal(first[1]?.ok, false, JSON.stringify(first));
    assert.match(JSON.stringify(first[1]), /approval \S+ was opened/);
    const listed = await runCli(["approvals", "--all", "--json"], { home });
    assert.equal(listed.code, 0, listed.stderr);
    const mine = (JSON.parse(listed.stdout) as Msg[]).filter((a) => a.agent === AGENT && /^run:\d+\.[0-9a-f]{8}:/.test(a.requestedBy));
    assert.deepEqual(mine, [], "an approval the ended run's session asked for is still there");
    const r2 = startRun(home, proj, {}, [ask, { method: "access_secret", params: { leaseId: "$LAST", domain: "api.example.com" } }], "second");
    assert.equal(await r2.done, 0, r2.err());
    const second: Msg[] = JSON.parse(readFileSync(join(proj, "second.json"), "utf8"));
    assert.ok(!leaks(second), "the value reached the next run");
    assert.equal(second[1]?.ok, false, JSON.stringify(second[1]));
    assert.match(JSON.stringify(second[1]), /approval \S+ was opened/, "the next run's request is asked afresh, not refused as denied");
  });
});


describe("the embedded session's identity", () => {
  // Approvals serve only the identity that asked (src/vault/approvals.ts), and an embedded run's
  // session identity once was `run:<pid>:A`: a later run that got the same pid within the approval
  // window would have been the earlier run's identity, its approvals with it.
  test("two runs that get the same pid are not one identity: the session id carries a random part", async () => {
    const { makeVault } = await import("./helpers.js");
    const { inProcessApi } = await import("../src/backend/in-process.js");
    const { startVaultSession } = await import("../src/cli/run/vault-session.js");
    const t = await makeVault({ store: "memory" });
    const ids: string[] = [];
    try {
      for (let i = 0; i < 2; i++) {
        const backend = { mode: "embedded" as const, home: "/nonexistent", endpoint: null, api: inProcessApi(t.vault), vault: t.vault, close: async () => {} };
        const s = await startVaultSession({ backend, agent: AGENT, daemon: { endpoint: { socketPath: "/nonexistent" }, expectedUid: undefined } });
        try {
          const c = await DaemonConn.open(s.socket);
          c.send({ protocol: "lessor", version: 1 });
          const w = await c.next();
          c.close();
          assert.equal(w.ok, true, JSON.stringify(w));
          assert.equal(w.identity?.role, "agent");
          ids.push(String(w.identity?.id));
        } finally {
          await s.close(async () => backend.api, async () => {});
        }
      }
    } finally {
      await t.vault.close();
    }
    assert.match(ids[0]!, /^run:[0-9a-f]{16}:runner-v$/);
    assert.notEqual(ids[0], ids[1], "a second run must not be the first run's identity");
  });
});
