/**
 * Attacks on the VM guests of lessor (docs/vm.md): Firecracker VMs over their `<uds_path>_<P>` sockets
 * (a real `lessor serve`, a real `lessor mcp`), AF_VSOCK guests through the accept path with a Unix
 * socketpair standing in for the guest's descriptor (nothing here connects over AF_VSOCK, to CID 2 or
 * to any CID), and the decision points (config parsing, which VM a socket is).
 *
 * A canary value stands for a credential that must stay on the host.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, rmdirSync, symlinkSync, writeFileSync } from "node:fs";
import { connect, Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { VaultError } from "../src/base/errors.js";
import { LessorClient } from "../src/client/index.js";
import type { ClientTransport } from "../src/client/transport.js";
import { parseConfig } from "../src/config/config.js";
import { guestSourceOf } from "../src/cli/guest-gate.js";
import { vmOfSocket } from "../src/config/guest-map.js";
import { loadConfig } from "../src/config/load.js";
import { openVault } from "../src/config/open-vault.js";
import { checkServerProof, hashTokenSecret, splitToken } from "../src/crypto/token-proof.js";
import { loadPeerCred } from "../src/native/peercred.js";
import { loadVsock } from "../src/native/vsock.js";
import { makeAuthenticator } from "../src/server/authenticate.js";
import { LessorServer } from "../src/server/server.js";
import { acceptVsock } from "../src/server/transports/vsock.js";
import { captureLogger } from "./auth-rig.js";
import { startCli } from "./cli-harness.js";
import { makeHome, RawConn, startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, makeVault, tempDirUntilExit, type TestVault } from "./helpers.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");
const POLICY =
  grant("vm1-s1", ["claude"], ["s1"], ["api.example.com"]) +
  grant("vm2-s2", ["codex"], ["s2"], ["api.example.com"]) +
  // Proxy-only: methods set, so reveal = false; the value may only be injected by a proxy on the host.
  grant("pat-proxy-only", ["claude-1"], ["pat"], ["api.example.com"], 'methods = ["GET"]');

const PEERCRED = loadPeerCred().available;

async function refused(p: Promise<unknown>, code: string, re?: RegExp): Promise<VaultError> {
  let err: VaultError | undefined;
  await assert.rejects(p, (e: VaultError) => {
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    err = e;
    return true;
  });
  return err!;
}

describe("Firecracker guests of a real lessor serve", () => {
  let d: RunningDaemon;
  let fc: string;
  let home: string;
  let admin: LessorClient;
  const sock = (vm: string): string => join(fc, `${vm}.vsock_7391`);

  before(async () => {
    fc = join(tempDirUntilExit("lessor-atk-fc-"), "fc");
    mkdirSync(fc, { mode: 0o700 });
    const config =
      `[[vm]]\nname = "vm1"\nuds_path = "${fc}/vm1.vsock"\nport = 7391\nagent = "claude"\n` +
      `[[vm]]\nname = "vm2"\nuds_path = "${fc}/vm2.vsock"\nport = 7391\nagent = "codex"\n` +
      `[[vm]]\nname = "orch"\nuds_path = "${fc}/orch.vsock"\nport = 7391\nrole = "orchestrator"\nact_for = ["claude-*"]\n`;
    home = await makeHome({ config, policy: POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "s1", value: "value-one" });
    await v.admin().storeSecret({ name: "s2", value: "value-two" });
    await v.admin().storeSecret({ name: "pat", value: CANARY });
    await v.close();
    d = await startServe(home);
    admin = await LessorClient.connect({ socketPath: d.socket });
  });
  after(async () => {
    admin?.close();
    await d?.stop();
    assert.ok(!d.stderr().includes(CANARY), "the canary is not in the daemon's log");
  });

  test("an agent guest cannot act for another agent, revoke its leases, reveal, list approvals or list every secret", async () => {
    const c = await LessorClient.connect({ socketPath: sock("vm1") });
    try {
      assert.equal((await c.whoami()).identity.id, "vm:vm1");
      await refused(c.leaseAndAccess({ agent: "codex", secret: "s2", domains: ["api.example.com"] } as never, { domain: "api.example.com" }), "access_denied");
      await refused(c.revokeAllForAgent("codex"), "access_denied");
      await refused(c.api.reveal_secret({ name: "s1" } as never), "access_denied");
      await refused(c.api.approval_list({} as never), "access_denied");
      await refused(c.api.list_secrets({} as never), "access_denied");
    } finally {
      c.close();
    }
  });

  test("a reveal = false value never reaches a VM guest (code lessor does not trust): an orchestrator VM's 'via: proxy' is refused", async () => {
    const c = await LessorClient.connect({ socketPath: sock("orch") });
    try {
      const w = await c.whoami();
      assert.deepEqual({ id: w.identity.id, role: w.identity.role, transport: w.identity.transport }, { id: "vm:orch", role: "orchestrator", transport: "vsock" });
      // Without the claim the rule keeps the value from the guest, as it should.
      await refused(c.leaseAndAccess({ agent: "claude-1", secret: "pat", domains: ["api.example.com"] }, { domain: "api.example.com", method: "GET" }), "access_denied", /reveal = false/);
      // With it, the guest process in the VM is handed the raw credential.
      let got: string | null = null;
      try {
        const r = await c.leaseAndAccess({ agent: "claude-1", secret: "pat", domains: ["api.example.com"] }, { domain: "api.example.com", method: "GET", via: "proxy" });
        got = r.value.unsafeText();
        r.value.wipe();
      } catch (e) {
        assert.equal((e as VaultError).code, "access_denied", (e as Error).message);
      }
      assert.notEqual(got, CANARY, "the VM guest received the proxy-only credential itself");
    } finally {
      c.close();
    }
  });

  test("the killswitch closes every guest's vault connection, agent and orchestrator VMs alike, and ends a guest's lease", async () => {
    const agentVm = await RawConn.open(sock("vm1"));
    const orchVm = await RawConn.open(sock("orch"));
    const c = await LessorClient.connect({ socketPath: sock("vm2") });
    try {
      assert.equal(((await agentVm.hello()) as { ok: boolean }).ok, true);
      assert.equal(((await orchVm.hello()) as { ok: boolean }).ok, true);
      const lease = await c.requestLease({ secret: "s2", domains: ["api.example.com"] });
      await admin.killswitch("guest drill");
      assert.ok(await agentVm.waitClosed(), "VM1's connection is closed");
      assert.ok(await orchVm.waitClosed(), "the orchestrator VM's connection is closed");
      const again = await LessorClient.connect({ socketPath: sock("vm2") });
      try {
        await refused(again.accessSecret(lease.id, { domain: "api.example.com" }), "lease_revoked", /guest drill/);
      } finally {
        again.close();
      }
    } finally {
      c.close();
      agentVm.sock.destroy();
      orchVm.sock.destroy();
      await admin.releaseKillswitch("drill over");
    }
  });

  test("a guest's token handshake on vsock is refused before any token lookup and audited naming its VM (auth_failed with remote vm:vm1)", async () => {
    const t = await admin.createToken({ name: "admin-token-for-handshake", role: "admin" });
    const { id, secret } = splitToken(t.token)!;
    const raw = await RawConn.open(sock("vm1"));
    const nonce = randomBytes(32);
    raw.send({ protocol: "lessor", version: 1, tokenId: id, nonce: nonce.toString("base64url") });
    const first = (await raw.waitFrames(1))[0] as { ok: boolean; challenge?: { nonce: string; proof: string } };
    let provedWithTheTokensHash = false;
    if (first?.ok === true && first.challenge) {
      // The daemon looked the admin token up for the guest and proved with its stored hash.
      provedWithTheTokensHash = checkServerProof(hashTokenSecret(secret), nonce, Buffer.from(first.challenge.nonce, "base64url"), id, "vsock", Buffer.from(first.challenge.proof, "base64url"));
    }
    // The guest now has what it wanted from the daemon and hangs up without showing the token.
    raw.sock.destroy();
    let mine: { reason: string | null; transport: string; detail: Record<string, unknown> | null }[] = [];
    for (let i = 0; i < 100 && mine.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      mine = (await admin.auditQuery({ types: ["auth_failed"] })).filter((e) => e.detail?.["token_id"] === id) as typeof mine;
    }
    assert.equal(mine.length, 1, "the abandoned handshake is audited once");
    assert.equal(mine[0]!.transport, "vsock");
    assert.equal(
      mine[0]!.detail?.["remote"],
      "vm:vm1",
      `the auth_failed event of a token handshake on VM1's socket names no VM (${JSON.stringify(mine[0])}); the daemon had answered it with a proof made from the admin token's hash: ${provedWithTheTokensHash}`,
    );
  });

  test(
    "each VM's refused tokens are audited with the VM they came from, however many another VM sends",
    { skip: PEERCRED ? false : "the peer-credential addon is not built (VM peers then carry no uid)" },
    async () => {
      const t = await admin.createToken({ name: "leaked-into-images", role: "admin" });
      // VM1 floods the daemon with the leaked token (8: one source's burst of audit rows per window).
      for (let i = 0; i < 8; i++) {
        const raw = await RawConn.open(sock("vm1"));
        const ans = (await raw.hello(t.token)) as { ok: boolean; error?: { code: string } };
        assert.equal(ans.error?.code, "unauthenticated");
        raw.sock.destroy();
      }
      // Then VM2 tries the same token once.
      const raw = await RawConn.open(sock("vm2"));
      const ans = (await raw.hello(t.token)) as { ok: boolean; error?: { code: string } };
      assert.equal(ans.error?.code, "unauthenticated");
      raw.sock.destroy();
      // Stopping the daemon closes the audit window: every failure counted is written.
      admin.close();
      await d.stop();
      const v = await openVault({ home, env: { LESSOR_HOME: home } });
      try {
        const events = (await v.admin().auditQuery({ types: ["auth_failed"] })).map((e) => ({
          ...e,
          detail: (typeof e.detail === "string" ? JSON.parse(e.detail) : e.detail) as Record<string, unknown> | null,
        }));
        const vsock = events.filter((e) => e.transport === "vsock" && (e.reason === "token on vsock" || String(e.detail?.["reasons"] ?? "").includes("token on vsock")));
        const fromVm1 = vsock.filter((e) => e.detail?.["remote"] === "vm:vm1").length;
        const summaries = vsock.filter((e) => typeof e.detail?.["count"] === "number");
        assert.ok(
          vsock.some((e) => e.detail?.["remote"] === "vm:vm2"),
          `VM2's refused token is in the trail under no VM: ${fromVm1} rows name vm:vm1, and a summary keyed by the daemon's uid stands for the rest: ${JSON.stringify(summaries.map((e) => e.detail))}`,
        );
      } finally {
        await v.close();
      }
    },
  );
});

describe("which VM a host service's socket is (lessor mcp / lessor proxy --socket)", () => {
  const fcRoot = tempDirUntilExit("lessor-atk-fc2-");
  const fc = join(fcRoot, "fc");
  mkdirSync(fc, { mode: 0o700 });
  const cfg = parseConfig(`[[vm]]\nname = "vm1"\nuds_path = "${fc}/vm1.vsock"\nport = 7391\nagent = "claude"\n`, "lessor.toml");

  test("a VM's socket spelled with ./, // and .. is still the VM's, and the daemon's own port is refused", () => {
    for (const p of [`${fc}/./vm1.vsock_5000`, `${fc}//vm1.vsock_5000`, `${fc}/../fc/vm1.vsock_5000`]) {
      const s = guestSourceOf({ socket: p, vsockPort: undefined }, { vms: cfg.vms, vsockGuests: [] }, "/nonexistent");
      assert.equal(s?.kind, "vm", p);
    }
    assert.throws(() => guestSourceOf({ socket: `${fc}/./vm1.vsock_7391` }, { vms: cfg.vms, vsockGuests: [] }, "/nonexistent"), /daemon's own socket/);
  });

  test(
    "a VM's socket is recognised however it is spelled: through a bind mount of its directory it is still VM1's, never a plain socket --agent decides",
    { skip: process.getuid?.() === 0 ? false : "needs root for mount --bind" },
    (t) => {
      const alias = join(fcRoot, "alias");
      mkdirSync(alias, { mode: 0o700 });
      const m = spawnSync("mount", ["--bind", fc, alias]);
      if (m.status !== 0) return void t.skip(`mount --bind failed: ${m.stderr.toString()}`);
      try {
        // The same directory: a socket made through one spelling is the file Firecracker connects to through the other.
        writeFileSync(join(alias, "probe"), "x");
        assert.equal(readFileSync(join(fc, "probe"), "utf8"), "x");
        const path = join(alias, "vm1.vsock_5000");
        const source = guestSourceOf({ socket: path }, { vms: cfg.vms, vsockGuests: [] }, "/nonexistent");
        assert.notEqual(source, null, `${path} is VM1's guest port 5000 (the same directory as ${fc}), but it is taken for a plain socket that --agent decides`);
        assert.equal(vmOfSocket(cfg.vms, "/nonexistent", path)?.vm.name, "vm1");
      } finally {
        spawnSync("umount", [alias]);
        try {
          rmdirSync(alias);
        } catch {
          // left for the temp dir's clean-up
        }
      }
    },
  );
});

describe("two [[vm]] entries naming one socket", () => {
  test("are refused when lessor.toml is read, however the paths are spelled (relative in the home, absolute, through a link)", () => {
    const home = tempDirUntilExit("lessor-atk-dup-");
    mkdirSync(join(home, "fc"), { mode: 0o700 });
    symlinkSync(join(home, "fc"), join(home, "fc-link"));
    const entry = (name: string, path: string): string => `[[vm]]\nname = "${name}"\nuds_path = "${path}"\nport = 7391\nagent = "claude"\n`;
    for (const other of [`${home}/fc/vm1.vsock`, `${home}/fc-link/vm1.vsock`, "fc-link/vm1.vsock"]) {
      writeFileSync(join(home, "lessor.toml"), entry("vm1", "fc/vm1.vsock") + entry("vm2", other), { mode: 0o600 });
      assert.throws(
        () => loadConfig(home),
        (e: VaultError) => e.code === "config_invalid" && /vm 2: uds_path: .*which VM "vm1" uses too; each VM needs its own socket/.test(e.message),
        other,
      );
    }
    // Another port of the same uds_path is another socket.
    writeFileSync(join(home, "lessor.toml"), entry("vm1", "fc/vm1.vsock") + entry("vm2", `${home}/fc/vm1.vsock`).replace("7391", "7392"), { mode: 0o600 });
    assert.deepEqual(loadConfig(home).vms.map((v) => v.name), ["vm1", "vm2"]);
  });
});

describe("lessor mcp --socket when it cannot read lessor.toml", () => {
  let d: RunningDaemon;
  let fc: string;
  let home: string;

  before(async () => {
    fc = join(tempDirUntilExit("lessor-atk-fc3-"), "fc");
    mkdirSync(fc, { mode: 0o700 });
    home = await makeHome({ config: `[[vm]]\nname = "vm1"\nuds_path = "${fc}/vm1.vsock"\nport = 7391\nagent = "claude"\n`, policy: POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "s2", value: CANARY });
    await v.close();
    d = await startServe(home);
  });
  after(async () => {
    await d?.stop();
  });

  test("a VM's socket for another agent is refused before anything is served, also when lessor.toml cannot be read (the daemon named by LESSOR_SOCKET)", async () => {
    const toml = join(home, "lessor.toml");
    const good = readFileSync(toml, "utf8");
    // The owner is editing lessor.toml (half written); the running daemon still has the VM entries.
    writeFileSync(toml, `${good}\n[[vm]]\nname = "vm3"\nuds_pa`, { mode: 0o600 });
    const path = join(fc, "vm1.vsock_5000");
    const m = await startCli(["mcp", "--agent", "codex", "--socket", path], /lessor mcp: serving|rror/, {
      PATH: "/usr/bin:/bin",
      HOME: home,
      LESSOR_HOME: home,
      LESSOR_SOCKET: d.socket,
      NO_COLOR: "1",
    });
    try {
      let served = "";
      if (/lessor mcp: serving/.test(m.stderr())) {
        // Play VM1's guest (Firecracker delivers it to this very path): which agent is it served as?
        const s = connect(path);
        const lines: string[] = [];
        let buf = "";
        s.on("data", (b: Buffer) => {
          buf += b.toString("utf8");
          for (let i = buf.indexOf("\n"); i >= 0; i = buf.indexOf("\n")) {
            lines.push(buf.slice(0, i));
            buf = buf.slice(i + 1);
          }
        });
        s.on("error", () => {});
        const send = (o: unknown): boolean => s.write(`${JSON.stringify(o)}\n`);
        send({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "guest", version: "1" } } });
        for (let i = 0; i < 250 && lines.length < 1; i++) await new Promise((r) => setTimeout(r, 20));
        send({ jsonrpc: "2.0", method: "notifications/initialized" });
        send({ jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "list_secrets", arguments: {} } });
        for (let i = 0; i < 250 && lines.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
        s.destroy();
        served = lines[1] ?? "";
        assert.ok(!served.includes(CANARY));
      }
      assert.doesNotMatch(
        m.stderr(),
        /lessor mcp: serving/,
        `lessor mcp served VM1's socket (VM1 is agent "claude") as agent "codex"; VM1's guest got: ${served.slice(0, 300)}\n${m.stderr()}`,
      );
      // The refusal names the flag and the configuration's problem.
      await m.exited;
      assert.match(m.stderr(), /--socket .*vm1\.vsock_5000: lessor mcp needs the \[\[vm\]\] and \[\[vsock\]\] entries of lessor\.toml .*lessor\.toml: line \d+.*not valid TOML/);
    } finally {
      m.child.kill("SIGTERM");
      await m.exited;
      writeFileSync(toml, good, { mode: 0o600 });
    }
  });
});

const vs = loadVsock();
// Made here, not in a hook: makeVault closes its vault when the enclosing test or hook ends.
const pairVault: Promise<TestVault> = makeVault({ policy: POLICY });

describe("AF_VSOCK guests through the accept path (a socketpair stands in for the guest's descriptor; nothing connects over AF_VSOCK)", { skip: vs.available ? false : `the AF_VSOCK addon is not available (${vs.reason})` }, () => {
  const addon = vs.available ? vs.addon : null;
  let t: TestVault;
  let server: LessorServer;

  before(async () => {
    t = await pairVault;
    await t.vault.admin().storeSecret({ name: "pat", value: CANARY });
    server = new LessorServer({
      vault: t.vault,
      authenticate: makeAuthenticator(t.vault, [], process.getuid!(), {}, {
        vsock: [
          { cid: 5, role: "agent", agent: "claude" },
          { cid: 6, role: "agent", agent: "codex" },
        ],
      }),
      log: captureLogger(),
      version: "test",
    });
  });
  after(async () => {
    await server?.close();
  });

  function guestFrom(cid: number): Socket {
    const [inner, outer] = addon!.socketpair();
    acceptVsock(addon!, { fd: inner!, cid, port: 7391 }, (s, peer) => server.handle(s, peer), () => {});
    const g = new Socket({ fd: outer!, readable: true, writable: true });
    g.on("error", () => {});
    return g;
  }

  function over(guest: Socket): ClientTransport {
    return {
      where: "vsock (test pair)",
      needsToken: false,
      dial: () => ({ stream: guest, connected: Promise.resolve(), binding: () => ({ transport: "vsock" }) }),
      connectError: (e) => new VaultError("unavailable", e.message),
    };
  }

  /** A hello carrying `token` from `cid`; resolves with what the daemon said before closing. */
  async function tokenHello(cid: number, token: string): Promise<string> {
    const g = guestFrom(cid);
    const got: Buffer[] = [];
    g.on("data", (b: Buffer) => got.push(b));
    const body = Buffer.from(JSON.stringify({ protocol: "lessor", version: 1, token }));
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    g.write(Buffer.concat([head, body]));
    await new Promise((r) => g.once("close", r));
    return Buffer.concat(got).toString("utf8");
  }

  test("a CID guest's refused tokens stay attributed to its CID in the trail, however many another CID sends", async () => {
    const { token } = await t.vault.admin().createToken({ name: "leaked", role: "admin" });
    for (let i = 0; i < 10; i++) assert.match(await tokenHello(5, token), /"code":"unauthenticated"/);
    assert.match(await tokenHello(6, token), /"code":"unauthenticated"/);
    await t.vault.flushAuthFailures();
    const events = (await t.vault.admin().auditQuery({ types: ["auth_failed"] })).map((e) => (typeof e.detail === "string" ? JSON.parse(e.detail) : e.detail) as Record<string, unknown>);
    assert.ok(events.some((d) => d?.["remote"] === "cid:6"), JSON.stringify(events));
    assert.ok(events.every((d) => !JSON.stringify(d).includes(token.slice(21))), "no token secret in the trail");
  });

  test("a mapped CID's agent guest cannot claim via proxy to take a proxy-only value, nor lease for another agent", async () => {
    const c = await LessorClient.over(over(guestFrom(5)));
    try {
      assert.equal((await c.whoami()).identity.id, "cid:5");
      await refused(c.leaseAndAccess({ agent: "claude-1", secret: "pat", domains: ["api.example.com"] }, { domain: "api.example.com", method: "GET", via: "proxy" }), "access_denied");
      await refused(c.leaseAndAccess({ secret: "pat", domains: ["api.example.com"] }, { domain: "api.example.com", method: "GET", via: "proxy" }), "access_denied");
    } finally {
      c.close();
    }
  });
});
