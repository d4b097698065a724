/**
 * Issue 17, the vsock transport.
 *
 * Firecracker form, end to end: a real `lessor serve` with `[[vm]]` entries listens on each VM's
 * `<uds_path>_<port>`; a client on that socket (where Firecracker would deliver the guest's
 * connection) is the VM's identity and nothing more — whatever token its hello carries.
 *
 * AF_VSOCK form, apart from the kernel (this machine is itself a guest: AF_VSOCK loopback does not
 * connect, and its host must never be contacted, so nothing here connects over AF_VSOCK): the addon
 * loads; a socket binds and listens on VMADDR_CID_ANY (binding sends nothing); and the accept path
 * every connection takes (acceptVsock: CID check, relay, identity) is driven with a Unix socketpair
 * standing in for the guest's descriptor, through the daemon's real server and authenticator.
 */
import assert from "node:assert/strict";
import { chmodSync, closeSync, lstatSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { connect, Socket } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { VaultError } from "../src/base/errors.js";
import { LessorClient } from "../src/client/index.js";
import type { ClientTransport } from "../src/client/transport.js";
import { parseConfig } from "../src/config/config.js";
import { openVault } from "../src/config/open-vault.js";
import { hasVsockDevice, loadVsock } from "../src/native/vsock.js";
import { makeAuthenticator } from "../src/server/authenticate.js";
import type { PeerInfo } from "../src/server/connection.js";
import { LessorServer } from "../src/server/server.js";
import { listenerSpecs, openListener } from "../src/server/transports/listeners.js";
import { acceptVsock } from "../src/server/transports/vsock.js";
import { captureLogger } from "./auth-rig.js";
import { makeHome, RawConn, startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, makeVault, tempDir, tempDirUntilExit, type TestVault } from "./helpers.js";

const POLICY =
  grant("vm1-s1", ["claude"], ["s1"], ["api.example.com"]) + grant("vm2-s2", ["codex"], ["s2"], ["api.example.com"]) + grant("big", ["claude"], ["big"], ["api.example.com"]);
/** A value near the largest allowed, so that its answer spans many relay buffers. */
const BIG = Array.from({ length: 60_000 }, (_, i) => String.fromCharCode(33 + ((i * 7919) % 94))).join("");
const S1 = { secret: "s1", domains: ["api.example.com"] };
const S2 = { secret: "s2", domains: ["api.example.com"] };

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

function configError(toml: string, re: RegExp): void {
  assert.throws(
    () => parseConfig(toml, "lessor.toml"),
    (e: VaultError) => {
      assert.equal(e.code, "config_invalid");
      assert.match(e.message, re);
      return true;
    },
  );
}

describe("[[vm]], [[vsock]] and vsock_port in lessor.toml", () => {
  test("a [[vm]] entry parses with defaults (role agent, mode 0600); [[vsock]] maps CIDs", () => {
    const c = parseConfig(
      `[server]\nvsock_port = 7391\n[[vm]]\nname = "vm1"\nuds_path = "/run/fc/vm1.vsock"\nport = 7391\nagent = "claude"\n` +
        `[[vm]]\nname = "orch"\nuds_path = "fc/orch.vsock"\nport = 1024\nrole = "orchestrator"\nact_for = ["claude-*"]\nsocket_mode = "0660"\nuid = 1234\n` +
        `[[vsock]]\ncid = 5\nagent = "claude"\n`,
      "lessor.toml",
    );
    assert.deepEqual(c.vms[0], { name: "vm1", udsPath: "/run/fc/vm1.vsock", port: 7391, socketMode: 0o600, role: "agent", agent: "claude" });
    assert.deepEqual(c.vms[1], { name: "orch", udsPath: "fc/orch.vsock", port: 1024, socketMode: 0o660, role: "orchestrator", actFor: ["claude-*"], uid: 1234 });
    assert.deepEqual(c.vsockGuests, [{ cid: 5, role: "agent", agent: "claude" }]);
    assert.equal(c.server.vsockPort, 7391);
    const specs = listenerSpecs(c.server, "/home/x", c.vms);
    assert.deepEqual(specs.slice(1), [
      { kind: "vsock-uds", path: "/run/fc/vm1.vsock_7391", mode: 0o600, vm: "vm1", port: 7391 },
      { kind: "vsock-uds", path: "/home/x/fc/orch.vsock_1024", mode: 0o660, vm: "orch", port: 1024, uid: 1234 },
      { kind: "vsock", port: 7391 },
    ]);
    assert.deepEqual(parseConfig("", "lessor.toml").vms, []);
  });

  test("bad entries are clear config errors naming the entry and the field", () => {
    const vm = (extra: string): string => `[[vm]]\nname = "vm1"\nuds_path = "/run/fc/vm1.vsock"\nport = 7391\n${extra}`;
    configError(vm('agent = "claude"\nrole = "admin"\n'), /vm 1: role: a VM guest cannot be admin/);
    configError(vm(""), /vm 1: agent: an agent guest needs agent = /);
    configError(vm('agent = "claude"\ntoken = "lsr_x"\n'), /vm 1: unknown field "token"/);
    configError(vm('agent = "claude"\nsocket_mode = "0666"\n'), /vm 1: socket_mode: .*lets every local user connect as VM "vm1"/);
    configError(vm('agent = "claude"\nsocket_mode = "0660"\n'), /vm 1: socket_mode: a group-accessible socket needs uid = /);
    configError(vm('agent = "claude"\n') + vm('agent = "codex"\n'), /vm 2: name: VM "vm1" is listed twice/);
    configError(vm('agent = "claude"\n') + vm('agent = "codex"\n').replace('"vm1"', '"vm2"'), /vm 2: uds_path: \/run\/fc\/vm1\.vsock_7391 is used by another \[\[vm\]\] entry/);
    configError(`[[vm]]\nname = "../x"\nuds_path = "/a"\nport = 1\nagent = "c"\n`, /vm 1: name: expected a name/);
    configError(`[[vm]]\nname = "v"\nuds_path = "/a/"\nport = 1\nagent = "c"\n`, /vm 1: uds_path: expected the path/);
    configError(`[[vm]]\nname = "v"\nuds_path = "/a"\nport = 0\nagent = "c"\n`, /vm 1: port: expected a whole number from 1 to 4294967294/);
    configError(`[[vm]]\nname = "v"\nuds_path = "/a"\nport = 4294967295\nagent = "c"\n`, /vm 1: port: expected a whole number/);
    configError(`[vm]\nname = "v"\n`, /\[\[vm\]\]: expected \[\[vm\]\] tables/);
    configError(`[server]\nvsock_port = 7391\n[[vsock]]\ncid = 2\nagent = "c"\n`, /vsock 1: cid: expected a whole number from 3 to/);
    configError(`[server]\nvsock_port = 7391\n[[vsock]]\ncid = 5\nagent = "c"\n[[vsock]]\ncid = 5\nagent = "d"\n`, /vsock 2: cid: cid 5 is listed twice/);
    // [[vsock]] without vsock_port is valid: lessor proxy/mcp --vsock-port use the entries too.
    assert.deepEqual(parseConfig(`[[vsock]]\ncid = 5\nagent = "c"\n`, "lessor.toml").vsockGuests, [{ cid: 5, role: "agent", agent: "c" }]);
    configError(`[server]\nvsock_port = -1\n`, /\[server\] vsock_port: expected a whole number/);
  });
});

describe("Firecracker VMs over their Unix sockets (a real lessor serve)", () => {
  let d: RunningDaemon;
  let fc: string;
  let admin: LessorClient;
  const sock = (vm: string): string => join(fc, `${vm}.vsock_7391`);

  before(async () => {
    // tempDir's clean-up would run when this hook ends; this one is removed at exit.
    fc = join(tempDirUntilExit("lessor-fc-"), "fc");
    mkdirSync(fc, { mode: 0o700 });
    const config =
      `[[vm]]\nname = "vm1"\nuds_path = "${fc}/vm1.vsock"\nport = 7391\nagent = "claude"\n` +
      `[[vm]]\nname = "vm2"\nuds_path = "${fc}/vm2.vsock"\nport = 7391\nagent = "codex"\n` +
      // Group-accessible sockets restricted to the Firecracker process's uid: someone else's, and ours.
      `[[vm]]\nname = "vm3"\nuds_path = "${fc}/vm3.vsock"\nport = 7391\nagent = "claude"\nsocket_mode = "0660"\nuid = 4242\n` +
      `[[vm]]\nname = "vm4"\nuds_path = "${fc}/vm4.vsock"\nport = 7391\nagent = "claude"\nsocket_mode = "0660"\nuid = ${process.getuid!()}\n`;
    const home = await makeHome({ config, policy: POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "s1", value: "value-one" });
    await v.admin().storeSecret({ name: "s2", value: "value-two" });
    await v.close();
    d = await startServe(home);
    admin = await LessorClient.connect({ socketPath: d.socket });
  });
  after(async () => {
    admin?.close();
    await d?.stop();
  });

  test("each VM's socket is created 0600, owned by the daemon's uid, in a directory only it can write, and named in the start-up log", () => {
    for (const vm of ["vm1", "vm2"]) {
      const st = lstatSync(sock(vm));
      assert.ok(st.isSocket(), vm);
      assert.equal(st.mode & 0o777, 0o600, vm);
      assert.equal(st.uid, process.getuid!(), vm);
    }
    assert.match(d.stderr(), new RegExp(`"vms":\\[\\{"vm":"vm1","socket":"${sock("vm1").replace(/[.]/g, "\\.")}"`));
  });

  test("a connection on VM1's socket is vm:vm1, agent claude, transport vsock; it leases its granted secret, not VM2's, and no admin method", async () => {
    const c = await LessorClient.connect({ socketPath: sock("vm1") });
    try {
      const w = await c.whoami();
      assert.deepEqual({ id: w.identity.id, role: w.identity.role, agent: w.identity.agent, transport: w.identity.transport }, { id: "vm:vm1", role: "agent", agent: "claude", transport: "vsock" });
      const got = await c.leaseAndAccess(S1, { domain: "api.example.com" });
      assert.equal(got.value.unsafeText(), "value-one");
      got.value.wipe();
      await refused(c.leaseAndAccess(S2, { domain: "api.example.com" }), "access_denied");
    } finally {
      c.close();
    }
    const c2 = await LessorClient.connect({ socketPath: sock("vm1") });
    try {
      await refused(c2.createToken({ name: "escalate", role: "admin" }), "access_denied");
      await refused(c2.killswitch("from the guest"), "access_denied");
      await refused(c2.auditQuery({}), "access_denied");
      await refused(c2.storeSecret({ name: "s1", value: "overwrite" } as never), "access_denied");
    } finally {
      c2.close();
    }
  });

  test("two VMs get their own identities and their own secrets", async () => {
    const c = await LessorClient.connect({ socketPath: sock("vm2") });
    try {
      assert.equal((await c.whoami()).identity.id, "vm:vm2");
      assert.equal((await c.whoami()).identity.agent, "codex");
      const got = await c.leaseAndAccess(S2, { domain: "api.example.com" });
      assert.equal(got.value.unsafeText(), "value-two");
      got.value.wipe();
      await refused(c.leaseAndAccess(S1, { domain: "api.example.com" }), "access_denied");
    } finally {
      c.close();
    }
    const audit = await admin.auditQuery({ types: ["lease_granted"] });
    const actors = new Set(audit.map((e) => `${e.actorId}/${e.transport}`));
    assert.ok(actors.has("vm:vm1/vsock") && actors.has("vm:vm2/vsock"), [...actors].join(", "));
  });

  test("an admin's token in the hello on VM1's socket is refused (both hello forms): the guest is never anyone but VM1, and the refusal is audited", async () => {
    const t = await admin.createToken({ name: "an-admin-token", role: "admin" });
    // The one-step form: the token right in the hello.
    const raw = await RawConn.open(sock("vm1"));
    const ans = (await raw.hello(t.token)) as { ok: boolean; error?: { code: string; message: string } };
    assert.equal(ans.ok, false);
    assert.equal(ans.error?.code, "unauthenticated");
    assert.match(ans.error!.message, /never by a token/);
    assert.ok(await raw.waitClosed(), "the connection is closed");
    // The token handshake: the daemon's proof, then the token: still refused.
    const raw2 = await RawConn.open(sock("vm1"));
    const id = t.token.slice(4, 20);
    raw2.send({ protocol: "lessor", version: 1, tokenId: id, nonce: Buffer.alloc(32, 7).toString("base64url") });
    const first = (await raw2.waitFrames(1))[0] as { ok: boolean; challenge?: unknown; error?: { code: string } };
    if (first.ok) {
      raw2.send({ token: t.token });
      const second = (await raw2.waitFrames(2))[1] as { ok: boolean; error?: { code: string; message: string } };
      assert.equal(second.ok, false);
      assert.equal(second.error?.code, "unauthenticated");
      assert.match(second.error!.message, /never by a token/);
    } else assert.equal(first.error?.code, "unauthenticated");
    assert.ok(await raw2.waitClosed());
    const events = await admin.auditQuery({ types: ["auth_failed"] });
    const mine = events.filter((e) => e.reason === "token on vsock");
    assert.ok(mine.length >= 2, JSON.stringify(events.slice(-3)));
    assert.ok(mine.every((e) => e.transport === "vsock" && e.actorId === "unknown" && e.detail?.["remote"] === "vm:vm1"), JSON.stringify(mine));
    // And a plain connection on the same socket afterwards is still just vm1.
    const c = await LessorClient.connect({ socketPath: sock("vm1") });
    assert.equal((await c.whoami()).identity.id, "vm:vm1");
    c.close();
  });

  test("a VM socket restricted to the Firecracker process's uid has the configured mode and refuses any other uid (SO_PEERCRED)", async () => {
    assert.equal(lstatSync(sock("vm3")).mode & 0o777, 0o660);
    await refused(LessorClient.connect({ socketPath: sock("vm3") }), "unauthenticated", /only uid 4242 \(the Firecracker process of VM "vm3"\) may connect to its socket; this connection is from uid \d+/);
    const c = await LessorClient.connect({ socketPath: sock("vm4") });
    assert.equal((await c.whoami()).identity.id, "vm:vm4");
    c.close();
  });

  test("an unmapped VM has no socket: its Firecracker finds nothing to connect to", async () => {
    const err = await new Promise<NodeJS.ErrnoException>((resolve) => {
      const s = connect(join(fc, "vm9.vsock_7391"));
      s.on("connect", () => resolve(Object.assign(new Error("connected"), { code: "CONNECTED" })));
      s.on("error", resolve);
    });
    assert.equal(err.code, "ENOENT");
    // The lessor client says the same in its own words.
    await refused(LessorClient.connect({ socketPath: join(fc, "vm9.vsock_7391") }), "unavailable");
  });
});

describe("a VM socket is created safely or the daemon refuses to start", () => {
  const vmConfig = (dir: string): string => `[[vm]]\nname = "vm1"\nuds_path = "${dir}/vm1.vsock"\nport = 7391\nagent = "claude"\n`;

  test("in a directory other users can write: refused, naming the directory and the fix", async () => {
    const dir = join(tempDir("lessor-fc-"), "open");
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    const home = await makeHome({ config: vmConfig(dir), policy: POLICY });
    await assert.rejects(startServe(home), (e: Error & { stderr: string }) => {
      assert.match(e.stderr, /can be written by other users \(mode 0?777\).*chmod go-w/);
      return true;
    });
    assert.throws(() => lstatSync(join(dir, "vm1.vsock_7391")), /ENOENT/, "no socket was made");
  });

  test("a file already at <uds_path>_<port> is left alone and the start refused", async () => {
    const dir = join(tempDir("lessor-fc-"), "fc");
    mkdirSync(dir, { mode: 0o700 });
    writeFileSync(join(dir, "vm1.vsock_7391"), "not a socket");
    const home = await makeHome({ config: vmConfig(dir), policy: POLICY });
    await assert.rejects(startServe(home), (e: Error & { stderr: string }) => {
      assert.match(e.stderr, /vm1\.vsock_7391 exists and is not a socket/);
      return true;
    });
    assert.ok(lstatSync(join(dir, "vm1.vsock_7391")).isFile());
  });

  test("a bad [[vm]] entry stops lessor serve with a clear config error", async () => {
    const home = await makeHome({ config: `[[vm]]\nname = "vm1"\nuds_path = "/tmp/x.vsock"\nport = 7391\nrole = "admin"\n`, policy: POLICY });
    await assert.rejects(startServe(home), (e: Error & { stderr: string }) => {
      assert.match(e.stderr, /lessor\.toml: vm 1: role: a VM guest cannot be admin/);
      return true;
    });
  });
});

describe("the authenticator for vsock peers", () => {
  test("a VM socket restricted to the Firecracker process's uid refuses any other uid, and an unknown VM or CID is refused, each audited", async () => {
    const t = await makeVault({ policy: POLICY });
    const auth = makeAuthenticator(t.vault, [], process.getuid!(), {}, {
      vms: [{ name: "vm1", udsPath: "/x", port: 1, socketMode: 0o660, uid: 4242, role: "agent", agent: "claude" }],
      vsock: [{ cid: 5, role: "orchestrator", actFor: ["claude-*"] }],
    });
    const hello = { protocol: "lessor", version: 1 } as const;
    const vm1: PeerInfo = { transport: "vsock", vm: "vm1" };
    assert.equal((await auth({ ...vm1, uid: 4242 }, hello)).id, "vm:vm1");
    await refused(auth({ ...vm1, uid: process.getuid!() }, hello), "unauthenticated", /only uid 4242 \(the Firecracker process of VM "vm1"\)/);
    await refused(auth(vm1, hello), "unauthenticated", /uid unknown/);
    await refused(auth({ transport: "vsock", vm: "ghost" }, hello), "unauthenticated", /VM "ghost" is not in lessor\.toml/);
    const orch = await auth({ transport: "vsock", cid: 5 }, hello);
    assert.deepEqual(orch, { id: "cid:5", role: "orchestrator", actFor: ["claude-*"], transport: "vsock" });
    await refused(auth({ transport: "vsock", cid: 6 }, hello), "unauthenticated", /guest CID 6 is not mapped/);
    await refused(auth({ transport: "vsock" }, hello), "unauthenticated", /neither a VM nor a guest CID/);
    // A uid on a vsock peer is never read as a Unix-socket identity (the owner's uid is admin there).
    await refused(auth({ transport: "vsock", uid: process.getuid!() }, hello), "unauthenticated");
    const events = await t.vault.admin().auditQuery({ types: ["auth_failed"] });
    const reasons = events.map((e) => e.reason);
    for (const r of ["wrong uid for vm", "unknown vm", "unknown cid", "unknown guest"]) assert.ok(reasons.includes(r), `${r} in ${reasons.join(", ")}`);
  });
});

const vs = loadVsock();
// Made here, not in a hook: makeVault closes its vault when the enclosing test or hook ends.
const pairVault: Promise<TestVault> = makeVault({ policy: POLICY });
const skipAddon = vs.available ? false : `the AF_VSOCK addon is not available (${vs.reason})`;
const skipKernel = skipAddon || (hasVsockDevice() ? false : "this machine has no /dev/vsock");

describe("AF_VSOCK (apart from the kernel: nothing connects)", () => {
  const addon = vs.available ? vs.addon : null;
  /** A port nobody is likely to use; binding it contacts nobody. */
  const port = 40_000 + Math.floor(Math.random() * 20_000);

  test("the addon loads and exports its functions", { skip: skipAddon }, () => {
    for (const f of ["listen", "watch", "unwatch", "bridge", "socketpair", "close"]) assert.equal(typeof (addon as unknown as Record<string, unknown>)[f], "function", f);
  });

  test("a socket binds and listens on VMADDR_CID_ANY; the port is then taken; closing frees it; Node itself cannot wrap the descriptor (why the relay exists)", { skip: skipKernel }, async () => {
    const errors: Error[] = [];
    const l = await openListener({ kind: "vsock", port }, { onConnection: () => assert.fail("nothing connects"), onError: (e) => errors.push(e), vsock: vs });
    assert.deepEqual(l.bound, { kind: "vsock", port });
    await assert.rejects(
      openListener({ kind: "vsock", port }, { onConnection: () => {}, vsock: vs }),
      (e: VaultError) => e.code === "unavailable" && /cannot listen on AF_VSOCK port \d+ .*another process listens on that vsock port/.test(e.message),
    );
    l.close();
    l.close(); // twice is harmless
    const again = await openListener({ kind: "vsock", port }, { onConnection: () => {}, vsock: vs });
    again.close();
    const fd = addon!.listen(port + 1, 4);
    try {
      assert.throws(() => new Socket({ fd }), (e: NodeJS.ErrnoException) => e.code === "ERR_INVALID_FD_TYPE");
    } finally {
      closeSync(fd);
    }
    assert.deepEqual(errors, []);
  });

  test("without the addon a vsock_port is refused at start with the reason", async () => {
    await assert.rejects(
      openListener({ kind: "vsock", port }, { onConnection: () => {}, vsock: { available: false, reason: "the vsock addon was not built (x is missing)" } }),
      (e: VaultError) => e.code === "config_invalid" && /vsock_port = \d+ needs the AF_VSOCK addon.*not built/.test(e.message),
    );
  });

  describe("the accept path with a socketpair standing in for the guest's descriptor", { skip: skipAddon }, () => {
    let server: LessorServer;
    const log = captureLogger();
    before(async () => {
      const t = await pairVault;
      await t.vault.admin().storeSecret({ name: "s1", value: "value-one" });
      await t.vault.admin().storeSecret({ name: "s2", value: "value-two" });
      await t.vault.admin().storeSecret({ name: "big", value: BIG });
      server = new LessorServer({
        vault: t.vault,
        authenticate: makeAuthenticator(t.vault, [], process.getuid!(), {}, { vsock: [{ cid: 5, role: "agent", agent: "claude" }] }),
        log,
        version: "test",
      });
    });
    after(() => server.close());

    /** Runs acceptVsock on one end of a new pair as if the kernel had accepted it from `cid`; returns the guest's end. */
    function guestFrom(cid: number, errors: Error[] = []): Socket {
      const [inner, outer] = addon!.socketpair();
      acceptVsock(addon!, { fd: inner!, cid, port: 1234 }, (s, peer) => server.handle(s, peer), (e) => errors.push(e));
      const guest = new Socket({ fd: outer!, readable: true, writable: true });
      guest.on("error", () => {});
      return guest;
    }

    function over(guest: Socket): ClientTransport {
      return {
        where: "vsock (test pair)",
        needsToken: false,
        dial: () => ({ stream: guest, connected: Promise.resolve(), binding: () => ({ transport: "vsock" }) }),
        connectError: (e) => new VaultError("unavailable", e.message),
      };
    }

    test("a mapped CID is its identity through the relay: whoami, a granted lease, not another's secret, no admin method", async () => {
      const c = await LessorClient.over(over(guestFrom(5)));
      try {
        const w = await c.whoami();
        assert.deepEqual({ id: w.identity.id, agent: w.identity.agent, transport: w.identity.transport }, { id: "cid:5", agent: "claude", transport: "vsock" });
        const got = await c.leaseAndAccess(S1, { domain: "api.example.com" });
        assert.equal(got.value.unsafeText(), "value-one");
        got.value.wipe();
        await refused(c.leaseAndAccess(S2, { domain: "api.example.com" }), "access_denied");
        await refused(c.createToken({ name: "x", role: "admin" }), "access_denied");
      } finally {
        c.close();
      }
    });

    test("large frames cross the relay intact both ways (backpressure through the socketpair)", async () => {
      const c = await LessorClient.over(over(guestFrom(5)));
      try {
        const calls = Array.from({ length: 40 }, () => c.whoami());
        const all = await Promise.all(calls);
        assert.ok(all.every((w) => w.identity.id === "cid:5"));
        // A 60 kB secret's answer (about 80 kB of base64) arrives intact, several at once.
        const bigs = await Promise.all([1, 2, 3].map(() => c.leaseAndAccess({ secret: "big", domains: ["api.example.com"] }, { domain: "api.example.com" })));
        for (const b of bigs) {
          assert.equal(b.value.unsafeText(), BIG);
          b.value.wipe();
        }
        // A ~512 KiB request: refused by the params schema after crossing the relay whole.
        await refused(c.explain("claude", { name: "s1" } as never, "a".repeat(512 * 1024)), "invalid_request");
        assert.equal((await c.whoami()).identity.id, "cid:5", "the connection still works after it");
      } finally {
        c.close();
      }
    });

    test("an unmapped CID is refused with the fix; a token in the hello is refused too", async () => {
      await refused(LessorClient.over(over(guestFrom(9))), "unauthenticated", /guest CID 9 is not mapped.*\[\[vsock\]\]/);
      const raw = guestFrom(5);
      const frames: Buffer[] = [];
      raw.on("data", (b: Buffer) => frames.push(b));
      const body = Buffer.from(JSON.stringify({ protocol: "lessor", version: 1, token: "lsr_0123456789abcdef_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }));
      const head = Buffer.alloc(4);
      head.writeUInt32BE(body.length);
      raw.write(Buffer.concat([head, body]));
      await new Promise((r) => raw.once("close", r));
      const text = Buffer.concat(frames).toString("utf8");
      assert.match(text, /"code":"unauthenticated".*never by a token/);
    });

    test("a CID that cannot be a guest's (host 2, any) is closed before the server sees it", async () => {
      for (const cid of [0, 1, 2, -1, 2 ** 32 - 1]) {
        const errors: Error[] = [];
        const g = guestFrom(cid, errors);
        await new Promise((r) => g.once("close", r));
        assert.match(errors[0]?.message ?? "", new RegExp(`CID ${cid}: not a guest's CID`));
      }
    });

    test("closes cross the relay both ways: the server closing a refused connection closes the guest's end; the guest hanging up closes the server's", async () => {
      const refusedGuest = guestFrom(5);
      const got: Buffer[] = [];
      refusedGuest.on("data", (b: Buffer) => got.push(b));
      const closed = new Promise((r) => refusedGuest.once("close", r));
      const body = Buffer.from('{"not":"a hello"}');
      const head = Buffer.alloc(4);
      head.writeUInt32BE(body.length);
      refusedGuest.write(Buffer.concat([head, body]));
      await closed;
      assert.match(Buffer.concat(got).toString("utf8"), /"code":"invalid_request".*the first frame must be a hello/);

      const quitter = guestFrom(5);
      const gone = new Promise((r) => quitter.once("close", r));
      quitter.end(); // no hello: the guest hangs up at once
      await gone;
      // The server's end closed too (a refused connection lingers up to a second to say goodbye).
      for (let i = 0; i < 100 && server.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(server.connectionCount, 0, "the server holds no connection after the guests left");
    });

    test("limits are per guest: one CID at its connection cap is refused, another CID still connects", async () => {
      const t = await pairVault;
      const capped = new LessorServer({
        vault: t.vault,
        authenticate: makeAuthenticator(t.vault, [], process.getuid!(), {}, { vsock: [{ cid: 5, role: "agent", agent: "claude" }, { cid: 6, role: "agent", agent: "codex" }] }),
        limits: { maxConnectionsPerPrincipal: 2 },
        log: captureLogger(),
        version: "test",
      });
      const from = (cid: number): ClientTransport => {
        const [inner, outer] = addon!.socketpair();
        acceptVsock(addon!, { fd: inner!, cid, port: 1 }, (s, peer) => capped.handle(s, peer), () => {});
        const g = new Socket({ fd: outer!, readable: true, writable: true });
        g.on("error", () => {});
        return over(g);
      };
      const open = [await LessorClient.over(from(5)), await LessorClient.over(from(5))];
      try {
        await refused(LessorClient.over(from(5)), "rate_limited", /cid:5|cid 5/);
        const other = await LessorClient.over(from(6));
        assert.equal((await other.whoami()).identity.id, "cid:6");
        other.close();
      } finally {
        for (const c of open) c.close();
        await capped.close();
      }
    });

    test("relay threads end with their connections (30 opened and closed leave no thread behind)", async () => {
      const threads = (): number => readdirSync("/proc/self/task").length;
      const base = threads();
      const clients = await Promise.all(Array.from({ length: 30 }, () => LessorClient.over(over(guestFrom(5)))));
      assert.ok(threads() >= base + 30, `one relay thread per connection while open (${base} → ${threads()})`);
      for (const c of clients) c.close();
      for (let i = 0; i < 150 && threads() > base + 3; i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(threads() <= base + 3, `the relay threads ended (${base} before, ${threads()} after)`);
    });
  });
});
