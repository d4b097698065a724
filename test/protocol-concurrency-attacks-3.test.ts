/**
 * Third attack pass on the daemon's protocol and on the store under concurrency, against a real
 * `lessor serve` (its own process, a real SQLite file, a Unix socket and a loopback TCP port), an
 * embedded vault in another process on the same home, and the built CLI:
 * - an orchestrator reaching past its `act_for` through `explain` (another agent's rules, and a broken
 *   policy's load error with the owner's path and other agents' rule text), and an orchestrator's
 *   `list_leases` crowded out by another agent's leases;
 * - every field of every method of the registry sent with values of the wrong type or shape;
 * - a `max_uses = N` lease (N > 1) used at once over daemon connections and by an embedded vault in
 *   another process; a revocation pipelined between accesses; the killswitch pulled while grants are
 *   in flight; `lessor audit verify` after each storm.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { newNonce, splitToken } from "../src/crypto/token-proof.js";
import { encodeFrame } from "../src/protocol/framing.js";
import { REGISTRY, type MethodName } from "../src/protocol/registry.js";
import { runCli } from "./cli-harness.js";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";

const DOMAIN = "api.github.com";
const BOB_DOMAIN = "internal.bob.example";
const VALUE = `ghp_${randomBytes(16).toString("hex")}`;
const POLICY = `[[rule]]
name = "claude-gh"
effect = "allow"
agents = ["claude"]
secrets = ["gh"]
domains = ["${DOMAIN}"]

[[rule]]
name = "bob-private-rule"
effect = "allow"
agents = ["bob"]
secrets = ["bob-only-secret"]
domains = ["${BOB_DOMAIN}"]
`;
/** The same policy with a third rule of bob's that does not load: its load error quotes it. */
const BROKEN = `${POLICY}
[[rule]]
name = "bob-hidden-rule"
effect = "allow"
agents = ["bob"]
secrets = ["bob-hidden-secret"]
domains = ["hidden.bob.example", 5]
`;

/** A raw client that does the token handshake; calls resolve with a closed marker if the daemon closes. */
class Conn extends DaemonConn {
  static async token(to: string | { host: string; port: number }, token: string): Promise<Conn> {
    const c = await Conn.open(to);
    c.send({ protocol: "lessor", version: 1, tokenId: splitToken(token)!.id, nonce: newNonce().toString("base64url") });
    assert.ok((await c.next()).challenge, "the daemon's challenge");
    c.send({ token });
    const w = await c.next();
    assert.equal(w.ok, true, JSON.stringify(w));
    return c;
  }

  /** A call that settles with `{ok:false, error:{code:"closed"}}` if the connection closes first. */
  try(method: string, params?: unknown): Promise<Msg> {
    return Promise.race([this.call(method, params), this.closed.then(() => ({ ok: false, error: { code: "closed", message: "" } }))]);
  }

  async ok(method: string, params?: unknown): Promise<Msg> {
    const r = await this.call(method, params);
    assert.equal(r.ok, true, `${method}: ${JSON.stringify(r.error ?? r)}`);
    return r.result;
  }
}

interface Rig {
  d: RunningDaemon;
  admin: Conn;
  tokens: { claude: string; bob: string; orch: string };
}

async function startRig(): Promise<Rig> {
  const config = `[vault]\nmax_live_leases_per_agent = 100000\n[server]\ntcp = "127.0.0.1:0"\n`;
  const home = await makeHome({ config, policy: POLICY });
  const d = await startServe(home);
  assert.ok(d.tcp, "the daemon listens on TCP");
  const admin = await Conn.admin(d);
  await admin.ok("store_secret", { name: "gh", value: VALUE });
  await admin.ok("store_secret", { name: "bob-only-secret", value: "bob-value" });
  const mk = async (name: string, role: string, extra: Record<string, unknown>) => (await admin.ok("token_create", { name, role, ...extra })).token as string;
  return {
    d,
    admin,
    tokens: {
      claude: await mk("claude-laptop", "agent", { agent: "claude" }),
      bob: await mk("bob-box", "agent", { agent: "bob" }),
      orch: await mk("claude-orch", "orchestrator", { actFor: ["claude"] }),
    },
  };
}

/** `lessor audit verify` through the built CLI (it goes to the running daemon as its owner). */
async function cliVerify(d: RunningDaemon): Promise<void> {
  const r = await runCli(["audit", "verify", "--json"], { home: d.home });
  assert.equal(r.code, 0, `lessor audit verify: ${r.stdout}${r.stderr}`);
  assert.equal(JSON.parse(r.stdout).ok, true, r.stdout);
}

describe("an orchestrator reaching past its act_for", () => {
  let r: Rig;
  before(async () => {
    r = await startRig();
  });
  after(async () => {
    r?.admin.close();
    await r?.d.stop();
  });

  test("an orchestrator for claude asking explain for bob is refused and audited, as list_granted refuses it", async () => {
    const orch = await Conn.token(r.d.tcp!, r.tokens.orch);
    // The control: the same question through list_granted is refused.
    const granted = await orch.call("list_granted", { agent: "bob" });
    assert.equal(granted.error?.code, "access_denied", JSON.stringify(granted));
    // docs/protocol.md: an orchestrator acts "for agents matching its actFor"; a call outside its
    // roles gets access_denied and is audited.
    const ex = await orch.call("explain", { agent: "bob", secret: "bob-only-secret", domain: BOB_DOMAIN });
    const leaked = JSON.stringify(ex);
    assert.equal(ex.ok, false, `an orchestrator for claude was told bob's policy: ${leaked.slice(0, 400)}`);
    assert.equal(ex.error.code, "access_denied");
    assert.ok(!leaked.includes("bob-private-rule"), "the refusal names bob's rule");
    orch.close();
  });

  test("on a broken policy an orchestrator's explain says it is broken, without the load error (the owner's home path, another agent's rule text)", async () => {
    const orch = await Conn.token(r.d.tcp!, r.tokens.orch);
    writeFileSync(join(r.d.home, "policy.toml"), BROKEN, { mode: 0o600 });
    try {
      const reload = await r.admin.call("reload_policy");
      assert.equal(reload.error?.code, "invalid_request", "the broken file does not load");
      // Controls: describe and a refused grant tell the orchestrator nothing of the error.
      const desc = await orch.ok("describe");
      assert.equal(desc.policy.error, null);
      assert.equal(desc.policy.source, null);
      const grant = await orch.call("request_lease", { agent: "claude", secret: "gh" });
      assert.ok(!grant.error.message.includes("bob-hidden"), grant.error.message);
      // explain, for the agent it does act for: docs/security.md, the load error goes to admins only
      // (it may quote any rule), and no answer names a path in the home.
      const ex = await orch.ok("explain", { agent: "claude", secret: "gh", domain: DOMAIN });
      const text = JSON.stringify(ex);
      assert.ok(!text.includes(r.d.home), `explain names the owner's home to an orchestrator: ${ex.reason}`);
      assert.ok(!text.includes("bob-hidden"), `explain quotes another agent's rule to an orchestrator: ${ex.reason}`);
      assert.ok(!text.includes("hidden.bob.example"), "explain quotes another agent's domains");
    } finally {
      writeFileSync(join(r.d.home, "policy.toml"), POLICY, { mode: 0o600 });
      await r.admin.ok("reload_policy");
      orch.close();
    }
  });

  test("bob's thousand expired leases do not crowd claude's out of its orchestrator's list_leases", async () => {
    const claude = await Conn.token(r.d.tcp!, r.tokens.claude);
    const bob = await Conn.token(r.d.socket, r.tokens.bob);
    const orch = await Conn.token(r.d.tcp!, r.tokens.orch);
    const mine = await claude.ok("request_lease", { secret: "gh" });
    // bob takes 1,050 one-millisecond leases after it: expired at once, but kept (and listed) until GC.
    const got = await Promise.all(Array.from({ length: 1050 }, () => bob.call("request_lease", { secret: "bob-only-secret", ttl: 1 })));
    assert.ok(got.every((g) => g.ok));
    assert.ok((await claude.ok("list_leases", {})).some((l: Msg) => l.id === mine.id), "claude sees its lease");
    assert.ok((await orch.ok("list_leases", { agent: "claude" })).some((l: Msg) => l.id === mine.id), "named, the orchestrator sees it");
    // Unnamed, the listing of "the leases the caller may see" (default limit 1000) must still hold it.
    const listed = await orch.ok("list_leases", {});
    assert.ok(
      listed.some((l: Msg) => l.id === mine.id),
      `the orchestrator's list_leases shows ${listed.length} leases and not claude's live one: the limit was applied before the act_for filter`,
    );
    const small = await orch.ok("list_leases", { limit: 5 });
    assert.ok(small.length >= 1, "list_leases with limit 5 returns none of the orchestrator's leases");
    for (const c of [claude, bob, orch]) c.close();
  });
});

describe("params of the wrong type, and use counts, revocations and the killswitch under concurrency", () => {
  let r: Rig;
  const dirs: string[] = [];
  before(async () => {
    r = await startRig();
  });
  after(async () => {
    r?.admin.close();
    await r?.d.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test("every field of every registry method, sent with a value of the wrong type or shape, is invalid_request or a typed refusal; never internal; the connection, the daemon and the audit chain hold", async () => {
    const BAD: unknown[] = [-1, 0, 1.5, 1e308, 9007199254740993, "", "x".repeat(70_000), "a\ud800b", "\u001b[31m", "\u202e", true, null, [], [1], {}, { a: 1 }];
    // Each value is sent only where the field's own schema refuses it (a wrong type, shape or range),
    // as the admin and as an agent token (the role check's path); what the daemon does with it must
    // be a typed refusal naming the field, never internal, and never a value quoted back.
    const claude = await Conn.token(r.d.tcp!, r.tokens.claude);
    const codes = new Set(["invalid_request", "access_denied"]);
    let sent = 0;
    for (const m of Object.keys(REGISTRY) as MethodName[]) {
      const shape = (REGISTRY[m].params as unknown as { shape: Record<string, { safeParse(v: unknown): { success: boolean } }> }).shape;
      for (const k of Object.keys(shape))
        for (const v of BAD) {
          if (shape[k]!.safeParse(v).success) continue;
          for (const c of [r.admin, claude]) {
            const a = await c.call(m, { [k]: v });
            sent++;
            const what = `${m}.${k} = ${JSON.stringify(v)?.slice(0, 40)}`;
            assert.equal(a.ok, false, `${what} was accepted`);
            assert.ok(codes.has(a.error.code), `${what}: ${a.error.code} ${a.error.message}`);
            if (a.error.code === "invalid_request") assert.ok(a.error.message.includes(k) || a.error.message.includes("params"), `${what}: the message names no field: ${a.error.message}`);
            assert.ok(!a.error.message.includes("x".repeat(100)), "an error quotes the value it was sent");
          }
        }
    }
    assert.ok(sent > 1000, `${sent} calls`);
    assert.equal((await claude.ok("whoami")).identity.agent, "claude");
    assert.equal((await r.admin.ok("status")).killswitch, false);
    const v = await r.admin.ok("reveal_secret", { name: "gh" });
    assert.equal(Buffer.from(v.value, "base64").toString(), VALUE, "the value is unchanged");
    assert.ok(!/"level":50|a request failed unexpectedly/.test(r.d.stderr()), "no unexpected failure in the daemon's log");
    await cliVerify(r.d);
    claude.close();
  });

  test("a max_uses = 30 lease used at once by 120 calls over daemon connections and 40 from an embedded vault in another process: exactly 30 values, 30 use events, uses = 30", async () => {
    const claude = await Conn.token(r.d.tcp!, r.tokens.claude);
    const N = 30;
    const lease = await claude.ok("request_lease", { secret: "gh", maxUses: N });
    assert.equal(lease.maxUses, N);
    const dir = mkdtempSync(join(tmpdir(), "lessor-emb-"));
    dirs.push(dir);
    const script = join(dir, "embedded.mts");
    const openVaultUrl = new URL("../src/config/open-vault.ts", import.meta.url).href;
    writeFileSync(
      script,
      `import { openVault } from ${JSON.stringify(openVaultUrl)};
const home = ${JSON.stringify(r.d.home)};
const v = await openVault({ home, env: { LESSOR_HOME: home } });
const s = v.session({ id: "uid:4242", role: "agent", agent: "claude", transport: "embedded" });
process.stdout.write("ready\\n");
await new Promise((go) => process.stdin.once("data", go));
const out = await Promise.all(Array.from({ length: 40 }, async (_, i) => {
  await new Promise((t) => setTimeout(t, i));
  try { const a = await s.accessSecret(${JSON.stringify(lease.id)}, { domain: ${JSON.stringify(DOMAIN)} }); const t = a.value.expose().toString(); a.value.wipe(); return t === ${JSON.stringify(VALUE)} ? "ok" : "wrong"; }
  catch (e) { return e.code ?? String(e); }
}));
await v.close();
process.stdout.write(JSON.stringify(out) + "\\n");
process.exit(0);
`,
    );
    const child = spawn(process.execPath, ["--import", "tsx", script], { cwd: fileURLToPath(new URL("..", import.meta.url)), stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((res) => child.on("exit", res));
    const t0 = Date.now();
    while (!out.includes("ready\n") && Date.now() - t0 < 15_000 && child.exitCode === null) await new Promise((res) => setTimeout(res, 20));
    assert.ok(out.includes("ready\n"), `the embedded vault did not open: ${err}`);
    const conns = [
      ...(await Promise.all([0, 1].map(() => Conn.token(r.d.tcp!, r.tokens.claude)))),
      ...(await Promise.all([0, 1].map(() => Conn.token(r.d.socket, r.tokens.claude)))),
      ...(await Promise.all([0, 1].map(() => Conn.token(r.d.tcp!, r.tokens.orch)))),
    ];
    child.stdin.write("go\n");
    const answers = await Promise.all(
      conns.flatMap((c) => Array.from({ length: 20 }, (_, i) => new Promise((res) => setTimeout(res, i)).then(() => c.call("access_secret", { leaseId: lease.id, domain: DOMAIN })))),
    );
    assert.equal(await exited, 0, err);
    const embedded = JSON.parse(out.trim().split("\n").pop()!) as string[];
    const okDaemon = answers.filter((a) => a.ok);
    for (const a of okDaemon) assert.equal(Buffer.from(a.result.value, "base64").toString(), VALUE);
    for (const a of answers.filter((x) => !x.ok)) assert.equal(a.error.code, "lease_exhausted", a.error.message);
    for (const e of embedded) assert.ok(e === "ok" || e === "lease_exhausted", `embedded: ${e}`);
    const okEmbedded = embedded.filter((e) => e === "ok").length;
    assert.equal(okDaemon.length + okEmbedded, N, `values handed out: ${okDaemon.length} by the daemon + ${okEmbedded} embedded`);
    const used = await r.admin.ok("audit_query", { leaseId: lease.id, types: ["secret_accessed"], limit: 1000 });
    assert.equal(used.length, N, "secret_accessed events");
    const row = (await r.admin.ok("list_leases", { agent: "claude", limit: 10_000 })).find((l: Msg) => l.id === lease.id);
    assert.equal(row.uses, N);
    await cliVerify(r.d);
    for (const c of [claude, ...conns]) c.close();
  });

  test("a revocation pipelined between 30 accesses (and raced by 60 more on another connection): no value is handed out after the revocation commits", async () => {
    const claude = await Conn.token(r.d.tcp!, r.tokens.claude);
    const other = await Conn.token(r.d.socket, r.tokens.claude);
    const lease = await claude.ok("request_lease", { secret: "gh" });
    const ids = Array.from({ length: 30 }, () => randomUUID());
    const revId = randomUUID();
    const frame = (id: string) => encodeFrame({ id, method: "access_secret", params: { leaseId: lease.id, domain: DOMAIN } });
    const racing = Promise.all(Array.from({ length: 60 }, () => other.call("access_secret", { leaseId: lease.id, domain: DOMAIN })));
    claude.socket.write(Buffer.concat([...ids.slice(0, 15).map(frame), encodeFrame({ id: revId, method: "revoke_lease", params: { leaseId: lease.id } }), ...ids.slice(15).map(frame)]));
    const answers = new Map<string, Msg>();
    while (answers.size < 31) {
      const m = await claude.next();
      answers.set(m.id, m);
    }
    await racing;
    assert.equal(answers.get(revId)!.result?.revoked, true);
    const trail = await r.admin.ok("audit_query", { leaseId: lease.id, limit: 1000, order: "asc" });
    const revokedAt = trail.find((e: Msg) => e.type === "lease_revoked").seq;
    const late = trail.filter((e: Msg) => e.type === "secret_accessed" && e.seq > revokedAt);
    assert.equal(late.length, 0, "uses after the revocation");
    const okCount = [...answers.values()].filter((a) => a.ok && a.result.value !== undefined).length + (await racing).filter((a) => a.ok).length;
    assert.equal(okCount, trail.filter((e: Msg) => e.type === "secret_accessed").length, "every value handed out has its event");
    // Accesses behind the revocation on the same connection never succeed.
    for (const id of ids.slice(15)) assert.equal(answers.get(id)!.ok, false, "an access pipelined after the revocation");
    await cliVerify(r.d);
    claude.close();
    other.close();
  });

  test("the killswitch pulled while 200 grants (half with access) are in flight over four connections: no grant commits after it, nothing is left live", async () => {
    const conns = [
      ...(await Promise.all([0, 1].map(() => Conn.token(r.d.tcp!, r.tokens.claude)))),
      await Conn.token(r.d.socket, r.tokens.claude),
      await Conn.token(r.d.tcp!, r.tokens.orch),
    ];
    const params = (c: Conn, i: number) => {
      const base = c === conns[3] ? { agent: "claude", secret: "gh" } : { secret: "gh" };
      return i % 2 ? base : { ...base, access: {} };
    };
    const grants = conns.map((c) => Promise.all(Array.from({ length: 50 }, (_, i) => c.try("request_lease", params(c, i)))));
    await new Promise((res) => setImmediate(res));
    const ks = await r.admin.ok("killswitch", { reason: "storm" });
    assert.equal(typeof ks.revoked, "number");
    const answers = (await Promise.all(grants)).flat();
    for (const a of answers) if (!a.ok) assert.ok(["access_denied", "closed"].includes(a.error.code), JSON.stringify(a.error));
    try {
      assert.equal((await r.admin.ok("list_leases", { live: true, limit: 10_000 })).length, 0, "live leases after the killswitch");
      const trail = await r.admin.ok("audit_query", { types: ["killswitch", "lease_granted"], limit: 10_000, order: "asc" });
      const at = trail.find((e: Msg) => e.type === "killswitch" && e.detail?.engaged === true).seq;
      assert.equal(trail.filter((e: Msg) => e.type === "lease_granted" && e.seq > at).length, 0, "grants after the killswitch");
      // A new connection gets nothing while it is engaged.
      const late = await Conn.token(r.d.tcp!, r.tokens.claude);
      assert.equal((await late.call("request_lease", { secret: "gh", access: {} })).error?.code, "access_denied");
      late.close();
    } finally {
      await r.admin.ok("killswitch_release", { reason: "storm over" });
    }
    await cliVerify(r.d);
    for (const c of conns) c.close();
  });
});
