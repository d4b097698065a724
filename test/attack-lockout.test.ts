/**
 * Attacks on the brakes (the killswitch lockout and the dead-man switch) and on use counting:
 *
 * - Approval requests during a lockout. The killswitch withdraws every approval not yet used (a
 *   person's decision from before the emergency must not grant after it), and no lease is granted
 *   while it is engaged. But asking for an approval (approval_request: the SDK, lessor mcp's
 *   request_access, an orchestrator acting for an agent) read no lockout: a hostile agent queued its
 *   requests in the middle of the incident, they outlived the release, and the person faced them
 *   right after it (and could approve them during the lockout, for a lease waiting for the release).
 *   The promise now: while the lockout is engaged (by hand, or by the dead-man switch, which a call
 *   past its deadline fires), no approval is opened and none is granted (a denial still goes); each
 *   refusal is access_denied and audited; after the release the request is asked afresh.
 *   Paths: an embedded vault (agent and orchestrator), a real `lessor serve` whose lockout another
 *   process (an embedded openVault on the same SQLite file) engaged.
 * - The injecting proxy's use counting (src/proxy/lease-egress.ts). A value that cannot go into a
 *   header (a control character or line break, a character above U+00FF, bytes that are not UTF-8:
 *   an owner's paste, an import, a rotation hook's output) was refused only after the vault had
 *   counted the use: every request the agent sent spent one, none went upstream, and the lease ended
 *   up used up before a single request was made (and stayed so once the value was fixed). The
 *   promise now: the proxy tells the vault where the value goes (`fit`), the vault refuses such a
 *   value before counting (access_denied row, invalid_request), the agent gets 502 "not sent", and a
 *   use counted is a request sent. ForwardProxy over LeaseEgress over a real vault on a SQLite file,
 *   a loopback TLS upstream this file starts; nothing leaves 127.0.0.1.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { BIN } from "./cli-harness.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { inTime, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";
import { LessorClient } from "../src/client/index.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { agent, clock, grant, hexKey, makeVault, orchestrator, refusalOf } from "./helpers.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";
import { Vault } from "../src/vault/vault.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { parsePolicy } from "../src/vault/policy.js";

const CANARY = `CANARY_lockout_${randomBytes(12).toString("hex")}`;
const DOMAIN = "api.example.com";
const MIN = 60_000;
const GATED = grant("gated", ["claude", "ci-*"], ["deploy"], [DOMAIN], 'approval = "required"');
const seen: string[] = [];

after(() => {
  for (const s of seen) assert.ok(!s.includes(CANARY), "the canary appears in an answer, a log line or the trail");
});

/** A vault with GATED on a controlled clock (`limits` added), the canary stored as deploy, and claude's session. */
async function gatedVault(limits?: NonNullable<Parameters<typeof makeVault>[0]>["limits"]) {
  const c = clock();
  const t = await makeVault({ policy: GATED, now: c.now, ...(limits ? { limits } : {}) });
  const admin = t.vault.admin();
  await admin.storeSecret({ name: "deploy", value: CANARY });
  return { c, t, admin, claude: t.vault.session(agent("claude")) };
}

describe("approval requests while the killswitch is engaged (embedded vault)", () => {
  test("an agent's and an orchestrator's approval requests during the lockout are refused (access_denied, audited), open nothing, and an approval cannot be granted; after the release the request is asked afresh", async () => {
    const { t, admin, claude } = await gatedVault();
    const ci = t.vault.session(orchestrator(["ci-*"]));
    await admin.killswitch("token leaked in a log");

    // The agent (its SDK, or lessor mcp's request_access) and an orchestrator acting for ci-7 ask.
    const asks = [
      () => claude.requestApproval({ secret: "deploy", domains: [DOMAIN], reason: "deploy during the incident" }),
      () => ci.requestApproval({ agent: "ci-7", secret: "deploy", domains: [DOMAIN], reason: "queued job" }),
    ];
    for (const ask of asks)
      for (let i = 0; i < 3; i++) {
        const e = await refusalOf(ask());
        assert.equal(e.code, "access_denied", `an approval request was accepted during the lockout: ${e.code} ${e.message}`);
        assert.match(e.message, /killswitch is engaged.*no approval can be asked for/);
      }
    assert.deepEqual(await admin.listApprovals({ all: true }), [], "nothing was queued for the person during the lockout");
    const refusals = (await admin.auditQuery({ types: ["access_denied"] })).filter((e) => /no approval can be asked for/.test(e.reason ?? ""));
    assert.equal(refusals.length, 6, "each refusal is audited");
    assert.deepEqual([...new Set(refusals.map((e) => e.actorId))].sort(), ["test:claude", "test:orch"]);
    assert.equal((await admin.auditQuery({ types: ["approval_requested"] })).length, 0);

    // After the release, the same request opens a fresh approval a person must decide; granting it works again.
    await admin.releaseKillswitch("investigated");
    const fresh = await claude.requestApproval({ secret: "deploy", domains: [DOMAIN], reason: "deploy" });
    assert.ok(fresh.required && fresh.created && fresh.approval.state === "pending");
    // Engaged again before the person decides: the pending one is withdrawn, and an approval cannot be granted.
    await admin.killswitch("second incident");
    const e = await refusalOf(admin.decideApproval(fresh.approval.id, true));
    assert.notEqual(e.code, "resolved", "an approval was granted during the lockout");
    await admin.releaseKillswitch("ok");
    assert.equal((await refusalOf(claude.requestLease({ secret: "deploy", domains: [DOMAIN] }))).code, "access_denied");
    assert.equal((await admin.listLeases({ agent: "claude" })).length, 0);
    seen.push(JSON.stringify(await admin.auditQuery({})));
  });

  test("a person's approval given past the dead-man deadline (no daemon watching) fires the switch and is refused: nothing granted, the approval withdrawn", async () => {
    // The dead-man switch: a pending approval from before the deadline, the deadline passes with no
    // daemon watching, and the admin approves (not a heartbeat): the switch fires first and the approval is not granted.
    const { c, admin, claude } = await gatedVault({ heartbeatMs: MIN });
    const asked = await claude.requestApproval({ secret: "deploy", domains: [DOMAIN] });
    assert.ok(asked.required);
    c.advance(MIN + 5000);
    const e = await refusalOf(admin.decideApproval(asked.approval.id, true, "looks fine"));
    assert.equal(e.code, "access_denied", `an approval was granted past the dead-man deadline: ${e.code} ${e.message}`);
    assert.match(e.message, /killswitch is engaged.*by dead-man-switch.*no approval is granted/);
    const ks = (await admin.describe()).killswitch;
    assert.deepEqual([ks.engaged, ks.by], [true, "dead-man-switch"], "the approval past the deadline fired the switch");
    assert.equal((await admin.auditQuery({ types: ["approval_granted"] })).length, 0);
    // A request past the deadline, as the agent's: refused the same way.
    const r2 = await refusalOf(claude.requestApproval({ secret: "deploy", domains: [DOMAIN], maxUses: 2 }));
    assert.equal(r2.code, "access_denied");
    assert.match(r2.message, /no approval can be asked for/);
    assert.deepEqual(await admin.listApprovals({ all: true }), []);
  });

  test("the dead-man deadline passed with no daemon watching: the agent's approval request fires the switch and is refused", async () => {
    const { c, admin, claude } = await gatedVault({ heartbeatMs: MIN });
    c.advance(MIN + 5000);
    const e = await refusalOf(claude.requestApproval({ secret: "deploy", domains: [DOMAIN], reason: "unattended" }));
    assert.equal(e.code, "access_denied", `an approval was opened past the dead-man deadline: ${e.code} ${e.message}`);
    assert.deepEqual(await admin.listApprovals({ all: true }), []);
    const ks = (await admin.describe()).killswitch;
    assert.deepEqual([ks.engaged, ks.by], [true, "dead-man-switch"]);
    assert.equal((await admin.auditQuery({ types: ["killswitch"] })).length, 1, "the firing is audited once");
  });
});

describe("a real lessor serve whose lockout another process engaged", () => {
  test("the killswitch pulled by an embedded openVault on the same SQLite file: the daemon's agent cannot queue approvals; after the release nothing from the lockout waits for the person", { timeout: 60_000 }, async () => {
    const config = `[server]\ntcp = "127.0.0.1:0"\n`;
    const home = await makeHome({ policy: GATED, config });
    const d = await startServe(home);
    const clients: LessorClient[] = [];
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const admin = await LessorClient.connect({ socketPath: d.socket });
      clients.push(admin);
      await admin.api.store_secret({ name: "deploy", value: CANARY });
      const mk = async (name: string): Promise<LessorClient> => {
        const tk = await admin.createToken({ name, role: "agent", agent: "claude", ttl: "1h" });
        const cl = await LessorClient.connect({ host: d.tcp!.host, port: d.tcp!.port }, { token: tk.token, reconnect: false });
        clients.push(cl);
        return cl;
      };
      // The killswitch is pulled from another process (the embedded vault), not through the daemon.
      await v.admin().killswitch("pulled from the laptop");
      // The daemon notices within about a second and closes its agents' connections; the agent reconnects.
      const claude = await mk("claude-during");
      const e = await refusalOf(claude.api.approval_request({ secret: "deploy", domains: [DOMAIN], reason: "during the lockout" }));
      seen.push(e.message);
      assert.equal(e.code, "access_denied", `the daemon opened an approval during a lockout another process engaged: ${e.code} ${e.message}`);
      assert.match(e.message, /killswitch is engaged/);
      assert.deepEqual(await admin.api.approval_list({ all: true }), []);
      await v.admin().releaseKillswitch("done");
      assert.deepEqual(await admin.api.approval_list({ all: true }), [], "nothing from the lockout waits for the person after the release");
      const rows = await admin.api.audit_query({ types: ["access_denied"], limit: 100 });
      assert.ok(
        rows.some((r) => String(r.actorId).startsWith("token:claude-during/") && /no approval can be asked for/.test(r.reason ?? "")),
        "the daemon's refusal is audited under the agent's token",
      );
      seen.push(JSON.stringify(rows));
    } finally {
      await v.close();
      for (const c of clients) await c.close().catch(() => undefined);
      await d.stop();
    }
    seen.push(d.stderr());
  });
});

describe("lessor mcp (built CLI, embedded vault) while another process holds the killswitch", () => {
  test("request_access on a rule that needs approval is refused as the lockout (access_denied), and nothing is queued for the person", { timeout: 60_000 }, async () => {
    const root = mkdtempSync(join(tmpdir(), "lessor-lockout-mcp-"));
    const HOME = join(root, "home");
    const LESSOR_HOME = join(HOME, ".lessor");
    mkdirSync(HOME, { recursive: true });
    await initHome({ home: LESSOR_HOME, env: { PATH: process.env.PATH } });
    writeFileSync(join(LESSOR_HOME, "policy.toml"), GATED);
    const v = await openVault({ home: LESSOR_HOME, env: { PATH: process.env.PATH } });
    let client: Client | undefined;
    let stderr = "";
    try {
      await v.admin().storeSecret({ name: "deploy", value: CANARY });
      await v.admin().killswitch("incident");
      const transport = new StdioClientTransport({ command: process.execPath, args: [BIN, "mcp", "--agent", "claude"], env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME }, stderr: "pipe" });
      transport.stderr!.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
      client = new Client({ name: "lessor-test", version: "1.0.0" });
      await client.connect(transport);
      const r = (await client.callTool({ name: "request_access", arguments: { secret: "deploy", domains: [DOMAIN], reason: "during the incident" } })) as { isError?: boolean; content: { text: string }[] };
      const text = r.content.map((c) => c.text).join("\n");
      seen.push(text);
      assert.equal(r.isError, true, `request_access during the lockout: ${text}`);
      assert.match(text, /access_denied/);
      assert.match(text, /killswitch is engaged/);
      assert.deepEqual(await v.admin().listApprovals({ all: true }), [], "nothing was queued for the person");
      assert.equal((await v.admin().auditQuery({ types: ["approval_requested"] })).length, 0);
    } finally {
      await client?.close();
      await v.close();
      seen.push(stderr);
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe("PostgreSQL: two vault instances on one schema, the killswitch on A racing approvals and grants on B", { skip: PG_SKIP }, () => {
  test("requests, approvals and grants by approval on B while A pulls the killswitch: afterwards no approval waits, no lease granted by one is live, and nothing was requested, approved or granted after the killswitch in the trail", { timeout: 120_000 }, async () => {
    const { schema, drop } = await testSchema();
    const vaults: Vault[] = [];
    // The vaults close (they may write at close) before the schema goes.
    after(async () => {
      for (const v of vaults) await v.close().catch(() => {});
      await drop();
    });
    const key = hexKey();
    const open = async (): Promise<Vault> => {
      const v = await Vault.open({ store: await openPostgresStore({ url: PG_URL!, schema }), keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: parsePolicy(GATED, "p.toml") });
      vaults.push(v);
      return v;
    };
    const a = await open();
    await a.admin().storeSecret({ name: "deploy", value: CANARY });
    const b = await open();
    const claude = b.session(agent("claude"));
    const ci = b.session(orchestrator(["ci-*"]));
    const adminB = b.admin();
    let stop = false;
    let killed = false;
    let askedAfter = 0;
    const loops = [
      // The agent asks (distinct requests: its use cap varies), and takes up what was approved.
      (async () => {
        for (let i = 1; !stop; i++) {
          const ask = { secret: "deploy", domains: [DOMAIN], maxUses: (i % 12) + 1 };
          const k = killed;
          const got = await claude.requestApproval(ask).catch(() => null);
          if (k && got) askedAfter++;
          if (got?.required && got.approval.state === "approved") await claude.requestLease(ask).catch(() => null);
        }
      })(),
      // An orchestrator asks for its agents.
      (async () => {
        for (let i = 0; !stop; i++) {
          const k = killed;
          const got = await ci.requestApproval({ agent: `ci-${i % 4}`, secret: "deploy", domains: [DOMAIN], maxUses: (i % 3) + 1 }).catch(() => null);
          if (k && got) askedAfter++;
        }
      })(),
      // A person on B approves whatever is pending.
      (async () => {
        while (!stop) {
          for (const x of await adminB.listApprovals().catch(() => [])) await adminB.decideApproval(x.id, true).catch(() => null);
          await new Promise((r) => setTimeout(r, 5));
        }
      })(),
    ];
    await new Promise((r) => setTimeout(r, 1500));
    await a.admin().killswitch("incident on A");
    killed = true;
    await new Promise((r) => setTimeout(r, 1500));
    stop = true;
    await Promise.all(loops);
    const left = await a.admin().listApprovals({ all: true });
    assert.deepEqual(
      left.filter((x) => x.state !== "used").map((x) => [x.agent, x.state]),
      [],
      `approvals opened or approved during the lockout wait for the person after it (${askedAfter} request(s) answered after the killswitch returned)`,
    );
    const live = (await a.admin().listLeases({ agent: "claude" })).filter((l) => l.revokedAt === null);
    assert.deepEqual(live, [], "a lease granted by approval outlived the killswitch");
    const rows = await a.admin().auditQuery({ limit: 100_000 } as never);
    const ks = rows.find((e) => e.type === "killswitch")!;
    const late = rows.filter((e) => e.seq > ks.seq && e.outcome === "ok" && ["approval_requested", "approval_granted", "lease_granted"].includes(e.type));
    assert.deepEqual(late.map((e) => e.type), [], "requested, approved or granted after the killswitch");
    assert.equal((await a.admin().auditVerify()).ok, true);
    seen.push(JSON.stringify(rows));
  });
});

// =================================================================================================
// The injecting proxy: a use counted is a request sent
// =================================================================================================

const UP = "up.lockout.test.example";
const upCa = LocalCa.create({ permitted: [UP] });
/** The Authorization (or x-api-key) each request the upstream got carried. */
const upSeen: string[] = [];
const upstream = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  upSeen.push(String(req.headers.authorization ?? req.headers["x-api-key"] ?? ""));
  req.resume();
  req.on("end", () => res.end("ok"));
});
await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
const upPort = (upstream.address() as AddressInfo).port;
const closers: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of closers) await c().catch(() => {});
  upstream.closeAllConnections();
  await inTime(new Promise<void>((r) => upstream.close(() => r())), 5000, "closing the upstream").catch(() => {});
});

async function proxyRig(value: string | Buffer, rule: InjectionRule, maxUses: number, field?: string) {
  const t = await makeVault({ policy: grant("g", ["bot"], ["tok"], [UP]) });
  const admin = t.vault.admin();
  await admin.storeSecret({ name: "tok", value });
  const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: [UP], maxUses });
  const text = typeof value === "string" ? value : value.toString("latin1");
  const ph = makePlaceholder(text);
  const egress = new LeaseEgress({ api: inProcessApi(t.vault), agent: "bot", credentials: [{ lease, secret: "global/tok", placeholder: ph, value: text, rule, ...(field ? { field } : {}) }], egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [UP]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [UP] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  egress.start();
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await proxy.close();
    await egress.close();
  };
  closers.push(close);
  const get = async (headers: Record<string, string>, body?: string): Promise<string> => {
    const s = await openTunnel(port, UP, upPort);
    const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
    const framing = body === undefined ? "" : `Content-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`;
    s.write(`${body === undefined ? "GET" : "POST"} /x HTTP/1.1\r\nHost: ${UP}\r\n${lines}${framing}Connection: close\r\n\r\n${body ?? ""}`);
    const out = await readAll(s, 6000);
    seen.push(out);
    return out;
  };
  const uses = async (): Promise<number> => (await admin.listLeases({ agent: "bot" })).find((l) => l.id === lease.id)!.uses;
  return { admin, ph, get, uses, close, leaseId: lease.id };
}

describe("the injecting proxy counts a use only for a request it sends (src/proxy/lease-egress.ts, src/vault/leases.ts fit)", () => {
  const bad: [string, string | Buffer][] = [
    ["CR LF", `${CANARY}\r\nX-Evil: 1`],
    ["a character above U+00FF", `${CANARY}\u010a`],
    ["NEL (a C1 line break)", `${CANARY}\u0085`],
    ["bytes that are not UTF-8", Buffer.concat([Buffer.from(CANARY), Buffer.from([0xff, 0xfe])])],
  ];
  const rules: InjectionRule[] = [{ mode: "bearer" }, { mode: "header", header: "x-api-key" }, { mode: "placeholder" }, { mode: "basic", username: "u" }];

  test("a value no header can carry is refused before its use is counted: three requests on a max_uses = 2 lease spend nothing, none goes upstream, and once the value is fixed the lease still has both uses", { timeout: 120_000 }, async () => {
    const broken: string[] = [];
    for (const [what, value] of bad)
      for (const rule of rules) {
        const label = `${what}, mode ${rule.mode}`;
        const r = await proxyRig(value, rule, 2);
        const headers: Record<string, string> = rule.mode === "placeholder" ? { authorization: `Bearer ${r.ph}` } : {};
        upSeen.length = 0;
        for (let i = 0; i < 3; i++) {
          const a = await r.get(headers);
          assert.match(a, /^HTTP\/1\.1 502 /, `${label}: ${a.slice(0, 200)}`);
          assert.match(a, /"reason":"invalid_request"/, label);
          assert.match(a, /the request was not sent/, label);
          assert.ok(!a.includes(CANARY), `${label}: the answer names no part of the value`);
        }
        assert.deepEqual(upSeen, [], `${label}: nothing went upstream`);
        const spent = await r.uses();
        if (spent !== 0) broken.push(`${label}: ${spent} use(s) counted for requests never sent`);
        // The owner fixes the value: the lease still has its uses, and a request goes.
        await r.admin.storeSecret({ name: "tok", value: `fixed-${CANARY}` });
        const ok = await r.get(headers);
        if (!/^HTTP\/1\.1 200 /.test(ok)) broken.push(`${label}: after the value was fixed the next request got ${ok.slice(0, 60)}`);
        await r.close();
        const rows = await r.admin.auditQuery({});
        seen.push(JSON.stringify(rows));
        const refusedUses = rows.filter((e) => e.type === "access_denied" && e.leaseId === r.leaseId);
        if (spent === 0) assert.equal(refusedUses.length, 3, `${label}: each uncounted refusal is audited by the vault`);
        assert.equal(rows.filter((e) => e.type === "proxy_request" && e.outcome !== "ok").length, 3, `${label}: the proxy audits each refusal`);
      }
    assert.deepEqual(broken, [], "uses were spent on requests the proxy refused for the value's bytes:\n" + broken.join("\n"));
  });

  test("a credential that is one field of a JSON secret, the secret rotated under the run to bytes that are not UTF-8: refused before the use is counted", { timeout: 60_000 }, async () => {
    const r = await proxyRig(JSON.stringify({ token: CANARY }), { mode: "bearer" }, 3, "token");
    upSeen.length = 0;
    assert.match(await r.get({}), /^HTTP\/1\.1 200 /);
    assert.equal(upSeen.at(-1), `Bearer ${CANARY}`, "the field goes, not the whole secret");
    await r.admin.storeSecret({ name: "tok", value: Buffer.concat([Buffer.from(`{"token":"${CANARY}`), Buffer.from([0xff]), Buffer.from('"}')]) });
    for (let i = 0; i < 3; i++) assert.match(await r.get({}), /^HTTP\/1\.1 502 .*/);
    assert.equal(upSeen.length, 1, "nothing more went upstream");
    assert.equal(await r.uses(), 1, "only the request that went counted a use");
    await r.close();
  });

  test("a credential that is one field of a JSON secret: a value without the field, or whose field no header can carry, is refused before the use is counted", { timeout: 60_000 }, async () => {
    const r = await proxyRig(JSON.stringify({ token: CANARY, other: "x" }), { mode: "bearer" }, 2, "token");
    upSeen.length = 0;
    assert.match(await r.get({}), /^HTTP\/1\.1 200 /);
    assert.equal(upSeen.at(-1), `Bearer ${CANARY}`, "the field goes, not the whole secret");
    assert.equal(await r.uses(), 1);
    const broken: [string, string][] = [
      ["a value without the field", JSON.stringify({ renamed: CANARY })],
      ["a value that is not JSON", `${CANARY}`],
      ["a field with a line break", JSON.stringify({ token: `${CANARY}\r\nX-Evil: 1` })],
      ["a field with a character outside ASCII", JSON.stringify({ token: `${CANARY}\u20ac` })],
    ];
    for (const [what, value] of broken) {
      await r.admin.storeSecret({ name: "tok", value });
      for (let i = 0; i < 2; i++) {
        const a = await r.get({});
        assert.match(a, /^HTTP\/1\.1 502 /, `${what}: ${a.slice(0, 200)}`);
        assert.match(a, /the request was not sent/, what);
        assert.ok(!a.includes(CANARY), `${what}: the answer names no part of the value`);
      }
      assert.equal(await r.uses(), 1, `${what}: a use was counted for a request never sent`);
    }
    assert.equal(upSeen.length, 1, "nothing more went upstream");
    const rows = await r.admin.auditQuery({});
    seen.push(JSON.stringify(rows));
    const refused = rows.filter((e) => e.type === "access_denied" && e.leaseId === r.leaseId);
    assert.equal(refused.length, broken.length * 2, "each uncounted refusal is audited by the vault");
    assert.ok(refused.every((e) => /the use was not counted/.test(e.reason ?? "")), JSON.stringify(refused.map((e) => e.reason)));
    assert.ok(refused.some((e) => /field "token" is not in the secret's value/.test(e.reason ?? "")), "the missing field is named");
    // The owner fixes the value: the lease's last use goes.
    await r.admin.storeSecret({ name: "tok", value: JSON.stringify({ token: `fixed-${CANARY}` }) });
    assert.match(await r.get({}), /^HTTP\/1\.1 200 /);
    assert.equal(upSeen.at(-1), `Bearer fixed-${CANARY}`);
    assert.equal(await r.uses(), 2);
    await r.close();
  });

  test("the fit follows where the value goes: a placeholder only in the body may hold a line break (one use, sent); a character outside ASCII goes nowhere, not even inside a Basic pair (refused, uncounted)", { timeout: 60_000 }, async () => {
    const pem = `-----BEGIN KEY-----\n${CANARY}\n-----END KEY-----`;
    const r = await proxyRig(pem, { mode: "placeholder", body: true }, 5);
    upSeen.length = 0;
    const a = await r.get({}, `key=${r.ph}`);
    assert.match(a, /^HTTP\/1\.1 200 /, a.slice(0, 200));
    assert.equal(await r.uses(), 1, "a body-only credential with a line break goes, one use");
    // The same value named in a header is refused, uncounted.
    const b = await r.get({ "x-key": r.ph });
    assert.match(b, /^HTTP\/1\.1 502 /);
    assert.equal(await r.uses(), 1);
    await r.close();
    const wide = `${CANARY}\u20ac`;
    const w = await proxyRig(wide, { mode: "placeholder" }, 5);
    const basic = Buffer.from(`me:${w.ph}`, "utf8").toString("base64");
    upSeen.length = 0;
    assert.match(await w.get({ authorization: `Basic ${basic}` }), /^HTTP\/1\.1 502 /);
    assert.match(await w.get({ authorization: `Bearer ${w.ph}` }), /^HTTP\/1\.1 502 /);
    assert.deepEqual(upSeen, [], "a request went upstream");
    assert.equal(await w.uses(), 0, "a refused request counted a use");
    await w.close();
  });
});
