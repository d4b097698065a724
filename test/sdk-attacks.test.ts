/**
 * An attack pass on the programmatic surfaces: the client SDK (`lessor/client`: LessorClient over the
 * Unix socket and loopback TCP, CredentialProvider with `await using`, SecretBytes) and the embedded
 * API (`lessor/vault`, openVault as in the README). Each test is named after the promise it checks
 * (docs/client.md, docs/protocol.md, docs/errors.md, README.md) and fails if it breaks; a test whose
 * name starts with "BREAK: " asserts the documented behaviour of a promise that does not hold today.
 *
 * Real parts only: `lessor serve` child processes on temp homes, real SQLite files, real sockets; a
 * hostile daemon is a real server on a real Unix socket in this process (same uid, so it passes the
 * client's uid check, as another process of the user would); squatters are the fixture
 * test/fixtures/squatter.mjs, as user nobody when the test runs as root. Loopback traffic only.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { format, inspect } from "node:util";
import { CredentialProvider, LeasedCredential, LessorClient } from "../src/client/index.js";
import { netTransport } from "../src/client/transport.js";
import { LessorMethods } from "../src/client/facade.js";
import { ERROR_CODES, VaultError } from "../src/base/errors.js";
import { SecretBytes } from "../src/crypto/secret-bytes.js";
import { encodeFrame, FrameDecoder } from "../src/protocol/framing.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { Vault } from "../src/vault/vault.js";
import { parsePolicy } from "../src/vault/policy.js";
import { createMemoryStore } from "../src/store/memory.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { inProcessApi } from "../src/backend/in-process.js";
import type { Identity, LeaseRecord } from "../src/base/types.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { clock, tempDir } from "./helpers.js";

const REPO = fileURLToPath(new URL("..", import.meta.url));
const SQUATTER = fileURLToPath(new URL("./fixtures/squatter.mjs", import.meta.url));
const NOBODY = 65534;
const isRoot = process.getuid?.() === 0 && spawnSync("setpriv", ["--version"]).status === 0;
const needsRoot = isRoot ? false : "needs root and setpriv to run a squatter as another user";

const CANARY = `CANARY_sdk_${randomBytes(12).toString("hex")}`;
const DOMAIN = "api.example.com";

/** The canary as text and in every base64 alignment a longer base64 run could hold it. */
function forms(v: string | Buffer): string[] {
  const b = Buffer.isBuffer(v) ? v : Buffer.from(v);
  return [...(Buffer.isBuffer(v) ? [] : [v]), ...[0, 1, 2].map((i) => b.subarray(i).toString("base64").slice(0, -4))];
}

function assertNoCanary(text: string, where: string): void {
  for (const f of forms(CANARY)) assert.ok(!text.includes(f), `the canary (${f === CANARY ? "as text" : `base64 ${f}`}) appears in ${where}`);
}

/** The VaultError `p` rejects with; fails on a resolution or anything else thrown. */
async function vaultError(p: Promise<unknown> | (() => unknown), what: string): Promise<VaultError> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    assert.ok(e instanceof VaultError, `${what}: expected a VaultError, got ${inspect(e)}`);
    assert.ok(Object.prototype.hasOwnProperty.call(ERROR_CODES, e.code), `${what}: ${e.code} is a documented code`);
    return e;
  }
  assert.fail(`${what}: expected a rejection`);
}

/** "code" for a VaultError, "resolved", or "not a VaultError: …" for anything else (a TypeError, a plain Error). */
async function outcome(f: () => unknown): Promise<string> {
  try {
    const r = await f();
    if (r instanceof SecretBytes) r.wipe();
    return "resolved";
  } catch (e) {
    return e instanceof VaultError ? e.code : `not a VaultError: ${(e as Error)?.constructor?.name} ${(e as Error)?.message ?? String(e)}`;
  }
}

const POLICY = `[[rule]]
name = "claude-rule"
effect = "allow"
agents = ["claude"]
secrets = ["canary", "big", "tok", "sur"]
domains = ["${DOMAIN}"]
max_uses = 50
`;
const CONFIG = `[vault]\nmax_live_leases_per_agent = 100000\n[server]\ntcp = "127.0.0.1:0"\n`;

const clients: LessorClient[] = [];
const daemons: RunningDaemon[] = [];
after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  for (const d of daemons) await d.stop();
});
function keep(c: LessorClient): LessorClient {
  clients.push(c);
  return c;
}

/** A daemon with a claude token over TCP and the owner's admin connection over the Unix socket. */
async function startRig(policy = POLICY): Promise<{ d: RunningDaemon; admin: LessorClient; token: string; tokenId: string; claude: () => Promise<LessorClient> }> {
  const home = await makeHome({ config: CONFIG, policy });
  const d = await startServe(home);
  daemons.push(d);
  const admin = keep(await LessorClient.connect({ socketPath: d.socket }));
  assert.equal(admin.identity.role, "admin");
  const t = await admin.createToken({ name: "claude-box", role: "agent", agent: "claude" });
  return { d, admin, token: t.token, tokenId: t.id, claude: async () => keep(await LessorClient.connect(d.tcp!, { token: t.token })) };
}

// ---------------------------------------------------------------------------------------------
// A hostile daemon: a real server on a real Unix socket that welcomes the client as admin and then
// answers requests however the test says.

class HostileDaemon {
  readonly socks: Socket[] = [];
  onRequest: (sock: Socket, msg: { id: string; method: string; params?: Record<string, unknown> }) => void = () => {};
  private constructor(
    readonly server: Server,
    readonly path: string,
  ) {}

  static async start(): Promise<HostileDaemon> {
    const path = join(tempDir("lessor-hostile-"), "lessor.sock");
    const server = createServer();
    const h = new HostileDaemon(server, path);
    server.on("connection", (sock) => {
      h.socks.push(sock);
      sock.on("error", () => {});
      const dec = new FrameDecoder(16 * 1024 * 1024);
      let hello = false;
      sock.on("data", (chunk: Buffer) => {
        for (const body of dec.push(chunk)) {
          const msg = JSON.parse(body.toString("utf8"));
          if (!hello) {
            hello = true;
            sock.write(encodeFrame({ protocol: "lessor", version: 1, ok: true, identity: { id: "uid:0", role: "admin", transport: "uds" } }));
            continue;
          }
          h.onRequest(sock, msg);
        }
      });
    });
    await new Promise<void>((resolve, reject) => server.once("error", reject).listen(path, () => resolve()));
    after(() => h.close());
    return h;
  }

  static send(sock: Socket, msg: unknown): void {
    sock.write(encodeFrame(msg));
  }

  static sendRaw(sock: Socket, text: string): void {
    const body = Buffer.from(text, "utf8");
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    sock.write(Buffer.concat([head, body]));
  }

  close(): Promise<void> {
    for (const s of this.socks) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

const FAKE_LEASE: LeaseRecord = {
  id: "01900000-0000-7000-8000-000000000001",
  agent: "claude",
  scope: "global",
  name: "canary",
  domains: [DOMAIN],
  anyDomain: false,
  methods: null,
  paths: null,
  rule: "r",
  issuedAt: 1,
  expiresAt: 2,
  maxExpiresAt: 3,
  uses: 1,
  maxUses: null,
  renewals: 0,
  maxRenewals: null,
  renewable: true,
  revokedAt: null,
  revokeReason: null,
  issuedBy: "uid:0",
  bound: false,
  proxyOnly: false,
};
/** An access answer: the value, under the lease `id` (by default FAKE_LEASE's, which is leaseId(1)). */
const valueResult = (text: string, id = FAKE_LEASE.id) => ({ value: Buffer.from(text).toString("base64"), encoding: "base64", version: 1, lease: { ...FAKE_LEASE, id } });
const leaseId = (n: number) => `01900000-0000-7000-8000-${n.toString(16).padStart(12, "0")}`;

// ---------------------------------------------------------------------------------------------

describe("the client SDK against a real lessor serve", () => {
  let rig: Awaited<ReturnType<typeof startRig>>;
  before(async () => {
    rig = await startRig();
    await rig.admin.storeSecret({ name: "canary", value: CANARY });
    await rig.admin.storeSecret({ name: "tok", value: "tok-value" });
  });
  after(async () => {
    await rig?.d.stop();
  });

  test("values never show through JSON.stringify, String(), template literals, util.inspect (any depth, showHidden, customInspect off), util.format, Object.entries, spread or structuredClone of results, leases, credentials, clients and errors", async () => {
    const claude = await rig.claude();
    const got = await claude.leaseAndAccess({ secret: "canary", domains: [DOMAIN] });
    assert.equal(got.value.unsafeText(), CANARY, "the test holds the real value");
    const again = await claude.accessSecret(got.lease.id, { domain: DOMAIN });
    const revealed = await rig.admin.revealSecret("canary");
    const provider = new CredentialProvider(claude, { ttl: "5m" });
    const cred = await provider.lease("canary", { domains: [DOMAIN] });
    const v = await cred.value({ domain: DOMAIN });
    assert.equal(v.unsafeText(), CANARY);
    const refused = await vaultError(claude.accessSecret(got.lease.id, { domain: "evil.example.net" }), "another domain");
    const refused2 = await vaultError(claude.revealSecret("canary"), "reveal as an agent");

    const subjects: Record<string, unknown> = { got, again, revealed, cred, provider, v, claude, admin: rig.admin, refused, refused2 };
    const shown: [string, string][] = [];
    for (const [name, s] of Object.entries(subjects)) {
      shown.push([`JSON.stringify(${name})`, JSON.stringify(s) ?? ""]);
      shown.push([`String(${name})`, String(s)]);
      shown.push([`template ${name}`, `${s as string}`]);
      shown.push([`inspect(${name})`, inspect(s, { depth: Infinity, showHidden: true, getters: true })]);
      shown.push([`inspect(${name}, customInspect off)`, inspect(s, { depth: Infinity, showHidden: true, customInspect: false, getters: true })]);
      shown.push([`format(${name})`, format("%s %o %O %j", s, s, s, s)]);
      if (typeof s === "object" && s !== null) {
        shown.push([`entries(${name})`, inspect(Object.entries(s), { depth: Infinity, showHidden: true })]);
        shown.push([`spread(${name})`, JSON.stringify({ ...s }) + inspect({ ...s }, { depth: Infinity, showHidden: true, customInspect: false })]);
        shown.push([`own props(${name})`, Reflect.ownKeys(s).map((k) => inspect((s as Record<PropertyKey, unknown>)[k], { depth: Infinity, customInspect: false })).join("|")]);
        try {
          const clone = structuredClone(s);
          shown.push([`structuredClone(${name})`, JSON.stringify(clone) + inspect(clone, { depth: Infinity, showHidden: true, customInspect: false })]);
        } catch (e) {
          shown.push([`structuredClone(${name}) error`, String(e) + (e as Error).stack]);
        }
      }
      if (s instanceof Error) shown.push([`${name}.stack/cause/toJSON`, `${s.stack} ${inspect(s.cause)} ${JSON.stringify(s)}`]);
    }
    const tokenSecret = rig.token.split("_").slice(2).join("_");
    for (const [where, text] of shown) {
      assertNoCanary(text, where);
      assert.ok(!text.includes(tokenSecret), `the token's secret appears in ${where}`);
    }
    assert.match(inspect(v), /^SecretBytes\(\d+ bytes\) \[redacted\]$/);
    assert.equal(JSON.stringify(v), '"[redacted]"');
    assert.equal(`${v}`, "[redacted]");
    for (const x of [got.value, again.value, revealed.value]) x.wipe();
    await cred[Symbol.asyncDispose]();
    assert.equal(v.wiped, true);
  });

  test("a program that crashes, or leaves a rejection unhandled, with a value, a credential and a client in scope prints no value and no token", async () => {
    const dir = tempDir("lessor-sdk-crash-");
    const script = join(dir, "crash.mts");
    const client = new URL("../src/client/index.ts", import.meta.url).href;
    writeFileSync(
      script,
      `import { LessorClient, CredentialProvider } from ${JSON.stringify(client)};
const c = await LessorClient.connect({ host: process.env.H, port: Number(process.env.P) }, { token: process.env.T });
const got = await c.leaseAndAccess({ secret: "canary", domains: [${JSON.stringify(DOMAIN)}] });
const cred = await new CredentialProvider(c).lease("canary", { domains: [${JSON.stringify(DOMAIN)}] });
const v = await cred.value({ domain: ${JSON.stringify(DOMAIN)} });
if (v.unsafeText() !== got.value.unsafeText()) process.exit(9);
console.log(got); console.dir({ got, cred, v, c }, { depth: null, showHidden: true }); console.error(cred, c, String(v), JSON.stringify({ got, cred, v, c }));
const mode = process.argv[2];
if (mode === "throw") throw Object.assign(new Error("boom with a value in scope"), { got, v, cred, client: c, cause: got });
if (mode === "reject") Promise.reject(Object.assign(new Error("rejected"), { got, value: v }));
if (mode === "reject-object") Promise.reject(got);
if (mode === "reject-value") Promise.reject(v);
`,
    );
    for (const mode of ["throw", "reject", "reject-object", "reject-value"]) {
      const r = spawnSync(process.execPath, ["--import", "tsx", script, mode], {
        cwd: REPO,
        env: { PATH: process.env.PATH, HOME: process.env.HOME, H: rig.d.tcp!.host, P: String(rig.d.tcp!.port), T: rig.token },
        encoding: "utf8",
        timeout: 30_000,
      });
      const out = `${r.stdout}\n${r.stderr}`;
      assert.notEqual(r.status, 0, `${mode}: the program crashed (${out.slice(0, 2000)})`);
      assert.notEqual(r.status, 9, `${mode}: the program held the value`);
      assert.match(out, /SecretBytes\(\d+ bytes\) \[redacted\]/, `${mode}: the value was in what it printed`);
      assertNoCanary(out, `the output of a program that crashed (${mode})`);
      assert.ok(!out.includes(rig.token.split("_").slice(2).join("_")), `${mode}: the token's secret is printed`);
    }
  });

  test("wipe() leaves no copy of a received value in the socket buffers it arrived in, even when the response spans several reads", async () => {
    // docs/client.md, "Values": "Frame buffers that carried a value (the request you sent, the response you got) are zeroed once used."
    const small = randomBytes(32);
    const big = randomBytes(48 * 1024); // its base64 answer (~64 KiB) arrives in more than one read
    await rig.admin.storeSecret({ name: "small", value: small });
    await rig.admin.storeSecret({ name: "big", value: big });
    const chunks: Buffer[] = [];
    const base = netTransport({ socketPath: rig.d.socket }, { expectedUid: process.getuid?.(), remedy: undefined });
    const spying = {
      ...base,
      dial() {
        const dial = base.dial();
        dial.stream.on("data", (c: Buffer) => chunks.push(c)); // the very buffers the client's engine was handed
        return dial;
      },
    };
    const c = keep(await LessorClient.over(spying));
    const leftover: Record<string, number> = {};
    for (const [name, value] of [["small", small], ["big", big]] as const) {
      chunks.length = 0;
      const r = await c.revealSecret(name);
      assert.ok(r.value.expose().equals(value), `${name}: the value arrived whole`);
      r.value.wipe();
      const b64 = value.toString("base64");
      const probes: string[] = [];
      for (let i = 0; i + 24 <= b64.length; i += 512) probes.push(b64.slice(i, i + 24));
      const text = chunks.map((ch) => ch.toString("latin1")).join("\u0000");
      leftover[`${name} (${chunks.length} read${chunks.length > 1 ? "s" : ""})`] = probes.filter((p) => text.includes(p)).length;
    }
    assert.deepEqual(
      Object.values(leftover),
      [0, 0],
      `pieces of the value's base64 still in the socket's read buffers after wipe(): ${JSON.stringify(leftover)}`,
    );
    // A token's secret (token_create's answer, shown once) is not left in the read buffers either.
    chunks.length = 0;
    const made = await c.createToken({ name: "frame-check", role: "agent", agent: "claude" });
    const secret = made.token.split("_").slice(2).join("_");
    assert.ok(!chunks.map((ch) => ch.toString("latin1")).join("\u0000").includes(secret), "the token's secret is still in the socket's read buffer");
  });

  test("a text value UTF-8 cannot hold (a lone surrogate) is refused, never stored altered, through the client and the daemon", async () => {
    // docs/protocol.md refuses to repair bad text ("a reason, a name or a secret value sent as text would
    // be accepted altered"); the CLI's JSON import refuses an unpaired surrogate for that reason.
    const stored: string[] = [];
    for (const [label, f] of [
      ["storeSecret", () => rig.admin.storeSecret({ name: "sur", value: "pass\ud800word" })],
      ["rotateSecret", () => rig.admin.rotateSecret("sur", "x\udfffy")],
      ["api.store_secret", () => rig.admin.api.store_secret({ name: "sur", value: "lone\udbff" })],
    ] as const) {
      const code = await outcome(f);
      if (code === "resolved") {
        const r = await rig.admin.revealSecret("sur");
        stored.push(`${label} resolved and stored ${r.value.expose().toString("hex")}`);
        r.value.wipe();
      } else stored.push(`${label}: ${code}`);
    }
    assert.deepEqual(stored, ["storeSecret: invalid_request", "rotateSecret: invalid_request", "api.store_secret: invalid_request"]);
  });

  test("a call cut off in flight is never resent: an access and a lease+access through a connection dropped after the daemon answered spend one use and grant one lease, and the next call reconnects", async () => {
    const relayPath = join(tempDir("lessor-relay-"), "relay.sock");
    const seen: string[] = [];
    let cutNext: string | null = null;
    const relayed: Socket[] = [];
    const relay = createServer((down: Socket) => {
      const up = connect(rig.d.socket);
      relayed.push(down, up);
      const fromClient = new FrameDecoder(16 * 1024 * 1024);
      const fromDaemon = new FrameDecoder(16 * 1024 * 1024);
      const cut = new Set<string>();
      down.on("error", () => {});
      up.on("error", () => {});
      down.on("close", () => up.destroy());
      up.on("close", () => down.destroy());
      down.on("data", (c: Buffer) => {
        for (const b of fromClient.push(Buffer.from(c))) {
          const m = JSON.parse(b.toString("utf8"));
          if (typeof m.method === "string") {
            seen.push(m.method);
            if (m.method === cutNext) {
              cut.add(m.id);
              cutNext = null;
            }
          }
        }
        up.write(c);
      });
      up.on("data", (c: Buffer) => {
        for (const b of fromDaemon.push(Buffer.from(c)))
          if (cut.has(JSON.parse(b.toString("utf8")).id)) {
            // The daemon did the work and answered; the client never hears it.
            down.destroy();
            up.destroy();
            return;
          }
        down.write(c);
      });
    });
    await new Promise<void>((r) => relay.listen(relayPath, r));
    after(() => {
      for (const x of relayed) x.destroy();
      return new Promise<void>((r) => relay.close(() => r()));
    });

    const c = keep(await LessorClient.connect({ socketPath: relayPath }));
    const lease = await c.requestLease({ agent: "claude", secret: "tok", domains: [DOMAIN] });
    cutNext = "access_secret";
    const lost = await vaultError(c.accessSecret(lease.id, { domain: DOMAIN }), "the cut access");
    assert.equal(lost.code, "unavailable");
    assert.match(lost.message, /may or may not have taken effect/);
    const after1 = (await c.listLeases({ agent: "claude" })).find((l) => l.id === lease.id)!;
    assert.equal(after1.uses, 1, "the access ran once and was not resent");
    assert.deepEqual(seen.filter((m) => m === "access_secret"), ["access_secret"]);

    const before2 = (await rig.admin.listLeases({ agent: "claude" })).length;
    cutNext = "request_lease";
    assert.equal((await vaultError(c.leaseAndAccess({ agent: "claude", secret: "tok", domains: [DOMAIN] }), "the cut lease+access")).code, "unavailable");
    const leases2 = await rig.admin.listLeases({ agent: "claude" });
    assert.equal(leases2.length, before2 + 1, "one lease was granted, not two");
    assert.equal(seen.filter((m) => m === "request_lease").length, 2, "the lease+access went out once");

    // A credential whose value() was cut still revokes its lease on disposal (over a new connection).
    const cred = await new CredentialProvider(c, { agent: "claude" }).lease("tok", { domains: [DOMAIN] });
    cutNext = "access_secret";
    assert.equal((await vaultError(cred.value({ domain: DOMAIN }), "the cut value()")).code, "unavailable");
    await cred[Symbol.asyncDispose]();
    const l3 = (await rig.admin.listLeases({ agent: "claude" })).find((l) => l.id === cred.lease.id)!;
    assert.ok(l3.revokedAt !== null, "the credential's lease was revoked");
    assert.equal(l3.uses, 1);
    assert.equal(seen.filter((m) => m === "access_secret").length, 2, "each access went out once");
  });

  test("await using: a credential revokes its lease and wipes its values when the body throws, refuses value() afterwards without asking the daemon, and a value() racing the disposal is wiped, never handed out", async () => {
    const claude = await rig.claude();
    const provider = new CredentialProvider(claude);
    let held: SecretBytes | undefined;
    let id = "";
    const thrown = new Error("the body failed");
    await assert.rejects(
      (async () => {
        await using cred = await provider.lease("canary", { domains: [DOMAIN], maxUses: 10 });
        id = cred.lease.id;
        held = await cred.value({ domain: DOMAIN });
        assert.equal(held.unsafeText(), CANARY);
        throw thrown;
      })(),
      (e) => e === thrown,
      "the body's own error propagates",
    );
    assert.equal(held!.wiped, true, "the value was wiped on the way out");
    const rec = (await rig.admin.listLeases({ agent: "claude" })).find((l) => l.id === id)!;
    assert.ok(rec.revokedAt !== null, "the lease was revoked at the daemon");

    // After disposal, value() is refused locally: no access reaches the daemon (nothing audited).
    const cred2 = await provider.lease("canary", { domains: [DOMAIN], maxUses: 10 });
    await cred2[Symbol.asyncDispose]();
    const audited = async () => (await rig.admin.auditQuery({ leaseId: cred2.lease.id, limit: 1000 })).length;
    const n = await audited();
    const e = await vaultError(cred2.value({ domain: DOMAIN }), "value() after disposal");
    assert.equal(e.code, "lease_revoked");
    await sleep(100);
    assert.equal(await audited(), n, "no access was attempted at the daemon");
    await cred2[Symbol.asyncDispose](); // twice is fine

    // value() in flight when the credential is disposed: the value is wiped and not handed out.
    const cred3 = await provider.lease("canary", { domains: [DOMAIN], maxUses: 10 });
    const racing = vaultError(cred3.value({ domain: DOMAIN }), "value() racing disposal"); // handled from the start
    await cred3[Symbol.asyncDispose]();
    assert.equal((await racing).code, "lease_revoked");
    assert.ok((await rig.admin.listLeases({ agent: "claude" })).find((l) => l.id === cred3.lease.id)!.revokedAt !== null);
    assert.match(inspect(cred3), /released/);

    // revoke() on a lease that already expired: whatever the daemon answers, the credential counts as released.
    const cred4 = await provider.lease("canary", { domains: [DOMAIN], maxUses: 10, ttl: "1s" });
    await sleep(1100);
    const revoked = await cred4.revoke().then(
      () => "resolved",
      (e: unknown) => (e instanceof VaultError ? e.code : String(e)),
    );
    assert.ok(["resolved", "lease_expired"].includes(revoked), revoked);
    assert.equal(cred4.released, true);
    // A lease the daemon no longer knows (collected, or never its own): revoke() says so, and the credential counts as released.
    const ghost = new LeasedCredential(claude, { ...cred4.lease, id: "01890a5d-ac96-774b-bcce-b302099a8057" });
    assert.equal((await vaultError(ghost.revoke(), "revoke() of an unknown lease")).code, "lease_not_found");
    assert.equal(ghost.released, true);
    const before = (await rig.admin.auditQuery({ leaseId: cred4.lease.id, limit: 1000 })).length;
    assert.equal((await vaultError(cred4.value({ domain: DOMAIN }), "value() after a failed revoke")).code, "lease_revoked");
    await sleep(100);
    assert.equal((await rig.admin.auditQuery({ leaseId: cred4.lease.id, limit: 1000 })).length, before, "value() did not go to the daemon");
  });

  test("the SDK's convenience methods refuse a missing or misnamed secret with a VaultError (invalid_request), never a TypeError", async () => {
    // docs/client.md, "Errors": "Every failure is a VaultError".
    const c = rig.admin;
    const provider = new CredentialProvider(c, { agent: "claude" });
    const cases: Record<string, () => Promise<unknown>> = {
      "requestLease({ agent, name })": () => c.requestLease({ agent: "claude", name: "tok" } as never),
      "requestLease({ secret: null })": () => c.requestLease({ agent: "claude", secret: null } as never),
      "leaseAndAccess({ agent, name })": () => c.leaseAndAccess({ agent: "claude", name: "tok" } as never),
      "revealSecret(undefined)": () => c.revealSecret(undefined as never),
      "deleteSecret(null)": () => c.deleteSecret(null as never),
      "explain(agent, undefined)": () => c.explain("claude", undefined as never),
      "listLeases(null)": () => c.listLeases(null as never),
      "provider.lease(undefined)": () => provider.lease(undefined as never),
    };
    const got: Record<string, string> = {};
    for (const [k, f] of Object.entries(cases)) got[k] = await outcome(f);
    assert.deepEqual(got, Object.fromEntries(Object.keys(cases).map((k) => [k, "invalid_request"])));
  });
});

// ---------------------------------------------------------------------------------------------

describe("the client SDK against a hostile daemon", () => {
  test("no call gets another call's answer: stray ids, duplicated ids, late answers, __proto__ keys and forged codes are dropped or typed, and a broken stream fails every call in flight with a VaultError", async () => {
    const h = await HostileDaemon.start();
    const c = keep(await LessorClient.connect({ socketPath: h.path }, { requestTimeoutMs: 400 }));

    // Three accesses in flight; the daemon answers out of order, with a stray id, a duplicate and a forged code.
    const held: { sock: Socket; id: string }[] = [];
    h.onRequest = (sock, m) => {
      held.push({ sock, id: m.id });
      if (held.length < 3) return;
      const [a, b, cc] = held as [{ sock: Socket; id: string }, { sock: Socket; id: string }, { sock: Socket; id: string }];
      HostileDaemon.send(sock, { id: `0190ffff-ffff-7fff-8fff-${randomBytes(6).toString("hex")}`, ok: true, result: valueResult("STRAY") });
      HostileDaemon.send(sock, { id: b.id, ok: true, result: valueResult("value-B", leaseId(2)) });
      HostileDaemon.send(sock, { id: b.id, ok: true, result: valueResult("EVIL-second-answer-for-B", leaseId(2)) });
      HostileDaemon.sendRaw(
        sock,
        `{"id":"${a.id}","ok":true,"result":{"__proto__":{"polluted":"yes"},"constructor":{"prototype":{"polluted2":"yes"}},"value":"${Buffer.from("value-A").toString("base64")}","encoding":"base64","version":1,"lease":${JSON.stringify(FAKE_LEASE).replace("{", '{"__proto__":{"isAdmin":true},')}}}`,
      );
      HostileDaemon.send(sock, { id: cc.id, ok: false, error: { code: "daemon_unverified", message: "forged" } });
    };
    const [ra, rb, rc] = await Promise.allSettled([c.accessSecret(leaseId(1)), c.accessSecret(leaseId(2)), c.accessSecret(leaseId(3))]);
    assert.equal(ra.status, "fulfilled");
    assert.equal(rb.status, "fulfilled");
    const A = (ra as PromiseFulfilledResult<Awaited<ReturnType<LessorClient["accessSecret"]>>>).value;
    const B = (rb as PromiseFulfilledResult<Awaited<ReturnType<LessorClient["accessSecret"]>>>).value;
    assert.equal(A.value.unsafeText(), "value-A");
    assert.equal(B.value.unsafeText(), "value-B", "the first answer for B is B's; the duplicate is dropped");
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.equal(({} as Record<string, unknown>).polluted2, undefined);
    assert.equal(({} as Record<string, unknown>).isAdmin, undefined);
    assert.equal(Object.getPrototypeOf(A.lease), Object.prototype);
    assert.equal((A.lease as unknown as Record<string, unknown>).isAdmin, undefined);
    assert.equal(rc.status, "rejected");
    const forged = (rc as PromiseRejectedResult).reason;
    assert.ok(forged instanceof VaultError && forged.code === "internal", `a code the wire cannot carry becomes internal: ${inspect(forged)}`);
    A.value.wipe();
    B.value.wipe();

    // A call the daemon does not answer times out; its late answer (with a value) goes to nobody.
    const late: { first?: { sock: Socket; id: string } } = {};
    h.onRequest = (sock, m) => {
      if (late.first === undefined) late.first = { sock, id: m.id };
      else HostileDaemon.send(sock, { id: m.id, ok: true, result: { auditHead: 1, killswitch: false, policy: "ok", identity: c.identity, daemon: { version: "x", pid: 1, uptimeMs: 1, connections: 1 } } });
    };
    const t0 = Date.now();
    const timedOut = await vaultError(c.accessSecret(leaseId(4)), "an unanswered call");
    assert.equal(timedOut.code, "unavailable");
    assert.ok(Date.now() - t0 < 3000, "the request deadline holds");
    HostileDaemon.send(late.first!.sock, { id: late.first!.id, ok: true, result: valueResult("LATE") });
    const st = await c.status();
    assert.equal(st.auditHead, 1, "the next call gets its own answer");
    assert.equal(c.connected, true, "the connection stayed open");

    // The daemon closes with id:null: every call in flight fails with its code.
    const inflight: { sock: Socket }[] = [];
    h.onRequest = (sock) => {
      inflight.push({ sock });
      if (inflight.length === 2) HostileDaemon.send(sock, { id: null, ok: false, error: { code: "unauthenticated", message: "token revoked" } });
    };
    const closed = await Promise.allSettled([c.accessSecret(leaseId(5)), c.status()]);
    for (const r of closed) assert.ok(r.status === "rejected" && r.reason instanceof VaultError && r.reason.code === "unauthenticated", inspect(r));

    // An oversize frame, garbage, a response without ok: every call in flight fails with internal; the next call reconnects.
    for (const poison of [
      (s: Socket) => s.write(Buffer.from([0x7f, 0xff, 0xff, 0xff])),
      (s: Socket) => HostileDaemon.sendRaw(s, "this is not json"),
      (s: Socket) => HostileDaemon.sendRaw(s, '{"id":null}'),
    ]) {
      const waiting: Socket[] = [];
      h.onRequest = (sock) => {
        waiting.push(sock);
        if (waiting.length === 2) poison(sock);
      };
      const rs = await Promise.allSettled([c.accessSecret(leaseId(6)), c.revealSecret("canary")]);
      for (const r of rs) assert.ok(r.status === "rejected" && r.reason instanceof VaultError && r.reason.code === "internal", inspect(r));
    }
    h.onRequest = (sock, m) => HostileDaemon.send(sock, { id: m.id, ok: true, result: { revoked: true } });
    assert.deepEqual(await c.revokeLease(leaseId(7)), { revoked: true });
  });

  test("whatever a misbehaving daemon answers, accessSecret, revealSecret, leaseAndAccess and requestLease end in a SecretBytes, a lease or a VaultError, never a plain string or a TypeError", async () => {
    // docs/client.md, "Errors": "Every failure is a VaultError"; "Values you receive … are decoded … into a SecretBytes".
    const h = await HostileDaemon.start();
    const c = keep(await LessorClient.connect({ socketPath: h.path }));
    let answer: unknown = null;
    h.onRequest = (sock, m) => HostileDaemon.send(sock, { id: m.id, ok: true, result: answer });
    const results: Record<string, string> = {};
    const check = async (label: string, result: unknown, call: () => Promise<unknown>) => {
      answer = result;
      try {
        const r = (await call()) as { value?: unknown; id?: unknown };
        if (r !== null && typeof r === "object" && "value" in r && r.value instanceof SecretBytes) results[label] = "SecretBytes";
        else if (r !== null && typeof r === "object" && typeof r.id === "string" && !("value" in r)) results[label] = "lease";
        else results[label] = `resolved with ${inspect(r, { depth: 0 })}`;
      } catch (e) {
        results[label] = e instanceof VaultError ? e.code : `${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`;
      }
    };
    const plain = { value: "plain-text-value", encoding: "utf8", version: 1, lease: FAKE_LEASE };
    await check("accessSecret ← a value sent as utf8 text", plain, () => c.accessSecret(leaseId(1)));
    await check("accessSecret ← no value", { version: 1, lease: FAKE_LEASE }, () => c.accessSecret(leaseId(1)));
    await check("accessSecret ← null", null, () => c.accessSecret(leaseId(1)));
    await check("accessSecret ← another lease's record", valueResult("x", leaseId(9)), () => c.accessSecret(leaseId(1)));
    await check("revealSecret ← a value sent as utf8 text", { value: "plain", encoding: "utf8", version: 1 }, () => c.revealSecret("x"));
    await check("leaseAndAccess ← null", null, () => c.leaseAndAccess({ agent: "claude", secret: "x" }));
    await check("requestLease ← null", null, () => c.requestLease({ agent: "claude", secret: "x" }));
    await check("requestLease ← a string", "a string", () => c.requestLease({ agent: "claude", secret: "x" }));
    assert.deepEqual(results, {
      "accessSecret ← a value sent as utf8 text": "internal",
      "accessSecret ← no value": "internal",
      "accessSecret ← null": "internal",
      "accessSecret ← another lease's record": "internal",
      "revealSecret ← a value sent as utf8 text": "internal",
      "leaseAndAccess ← null": "internal",
      "requestLease ← null": "internal",
      "requestLease ← a string": "internal",
    });
  });
});

test("a value sent for a lease requested without access is wiped, and the call refused (internal)", async () => {
  const sent = SecretBytes.from(CANARY);
  const lease = { id: randomUUID(), agent: "claude" };
  const facade = new LessorMethods((async () => ({ value: sent, version: 1, lease })) as never);
  await assert.rejects(facade.requestLease({ agent: "claude", secret: "x" }), (e) => e instanceof VaultError && e.code === "internal");
  assert.equal(sent.wiped, true, "the value the daemon should not have sent was wiped");
});

// ---------------------------------------------------------------------------------------------

/** Starts the squatter fixture (as user nobody when `asNobody`); resolves once it listens. */
async function squat(args: string[], asNobody: boolean): Promise<{ received: () => Buffer; stop: () => Promise<void> }> {
  const argv = [process.execPath, SQUATTER, ...args];
  const proc = asNobody
    ? spawn("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", ...argv], { stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH } })
    : spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH } });
  const chunks: Buffer[] = [];
  let stderr = "";
  proc.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      if (line.startsWith("listening ")) resolve();
      else if (line.startsWith("data ")) chunks.push(Buffer.from(line.slice(5), "base64"));
    });
    proc.once("exit", (code) => reject(new Error(`the squatter exited (${code}): ${stderr}`)));
  });
  const stop = async () => {
    proc.kill("SIGTERM");
    await exited;
  };
  after(stop);
  return { received: () => Buffer.concat(chunks), stop };
}

describe("reconnecting and a daemon that is gone", () => {
  test("reconnecting never skips the daemon's proof: a process that took the TCP port after the daemon stopped gets the token id and a nonce, never the token or a value", async () => {
    const rig = await startRig();
    const c = keep(await LessorClient.connect(rig.d.tcp!, { token: rig.token }));
    assert.equal((await c.whoami()).identity.agent, "claude");
    await rig.d.stop();
    await waitFor(() => !c.connected, "the client saw the daemon go");
    const s = await squat(["tcp", String(rig.d.tcp!.port), "challenge"], isRoot);
    const errs = await Promise.allSettled([c.leaseAndAccess({ secret: "canary", domains: [DOMAIN] }), c.api.store_secret({ name: "x", value: CANARY })]);
    for (const r of errs) assert.ok(r.status === "rejected" && r.reason instanceof VaultError && r.reason.code === "daemon_unverified", inspect(r));
    await sleep(150);
    const got = s.received();
    assert.ok(got.includes(rig.tokenId), "the squatter got the hello (so it was reached)");
    assert.ok(!got.includes(rig.token.split("_").slice(2).join("_")), "the token's secret never left the process");
    assertNoCanary(got.toString("latin1"), "what the squatter received");
    assert.ok(!got.includes("request_lease") && !got.includes("store_secret"), "no call went out");
  });

  test("reconnecting never skips the uid check: a socket of another uid put at the path after the daemon went away receives not one byte", { skip: needsRoot }, async () => {
    const base = tempDir("lessor-sdk-squat-");
    chmodSync(base, 0o755);
    const dir = join(base, "run");
    mkdirSync(dir);
    chownSync(dir, NOBODY, NOBODY); // a directory the other user can write: the weak spot being attacked
    const path = join(dir, "lessor.sock");
    // The first daemon: runs as this uid (a real server on the path, answering as the daemon would).
    const first = createServer((sock) => {
      sock.on("error", () => {});
      const dec = new FrameDecoder();
      let hello = false;
      sock.on("data", (ch: Buffer) => {
        for (const b of dec.push(ch)) {
          const m = JSON.parse(b.toString("utf8"));
          if (!hello) {
            hello = true;
            sock.write(encodeFrame({ protocol: "lessor", version: 1, ok: true, identity: { id: "uid:0", role: "admin", transport: "uds" } }));
          } else sock.write(encodeFrame({ id: m.id, ok: true, result: { revoked: true } }));
        }
      });
    });
    const socks: Socket[] = [];
    first.on("connection", (s) => socks.push(s));
    await new Promise<void>((r) => first.listen(path, r));
    const c = keep(await LessorClient.connect({ socketPath: path }));
    assert.deepEqual(await c.revokeLease(leaseId(1)), { revoked: true });
    for (const s of socks) s.destroy();
    await new Promise<void>((r) => first.close(() => r()));
    assert.equal(existsSync(path), false);
    await waitFor(() => !c.connected, "the client saw the daemon go");
    const s = await squat(["unix", path, "welcome"], true);
    const errs = await Promise.allSettled([c.storeSecret({ name: "x", value: CANARY }), c.status()]);
    for (const r of errs) assert.ok(r.status === "rejected" && r.reason instanceof VaultError && r.reason.code === "daemon_unverified", inspect(r));
    await sleep(150);
    assert.equal(s.received().length, 0, "the squatter received nothing");
  });

  test("disposing a credential when the daemon is gone throws a VaultError (unavailable) and still wipes every value it handed out", async () => {
    const rig = await startRig();
    await rig.admin.storeSecret({ name: "tok", value: CANARY });
    const claude = await rig.claude();
    const cred = await new CredentialProvider(claude).lease("tok", { domains: [DOMAIN] });
    const v1 = await cred.value({ domain: DOMAIN });
    const v2 = await cred.value({ domain: DOMAIN });
    assert.equal(v2.unsafeText(), CANARY);
    const bytes = v1.expose();
    await rig.d.stop();
    await waitFor(() => !claude.connected, "the client saw the daemon go");
    const e = await vaultError(cred[Symbol.asyncDispose](), "disposal with no daemon");
    assert.equal(e.code, "unavailable");
    assertNoCanary(`${e.message} ${e.stack}`, "the disposal error");
    assert.equal(v1.wiped && v2.wiped, true, "the values were wiped before the error propagated");
    assert.ok(bytes.every((b) => b === 0), "the bytes were zeroed");
    assert.equal((await vaultError(cred.value({ domain: DOMAIN }), "value() after a failed disposal")).code, "lease_revoked");
  });
});

async function waitFor(f: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) assert.fail(`timed out: ${what}`);
    await sleep(10);
  }
}

// ---------------------------------------------------------------------------------------------

describe("SecretBytes", () => {
  test("a wiped SecretBytes is zeroed and refuses every read with a VaultError, in the client and in the embedded vault", async () => {
    // src/crypto/secret-bytes.ts: "after that every read throws"; docs/errors.md: "Every error lessor raises on purpose is a VaultError".
    const s = SecretBytes.from(CANARY);
    const buf = s.expose();
    s.wipe();
    assert.ok(buf.every((b) => b === 0), "the bytes were zeroed");
    assert.equal(s.length, Buffer.byteLength(CANARY), "the length is still known");
    assert.equal(inspect(s), "SecretBytes(wiped) [redacted]");
    s.wipe(); // twice is fine

    const home = join(tempDir("lessor-sdk-wiped-"), "home");
    await initHome({ home });
    const vault = await openVault({ home });
    after(() => vault.close());
    const reads: Record<string, () => unknown> = {
      "expose()": () => s.expose(),
      "unsafeText()": () => s.unsafeText(),
      "use(fn)": () => s.use((b) => b.length),
      "equals(bytes)": () => s.equals(Buffer.from(CANARY)),
      "embedded storeSecret({ value: wiped })": () => vault.admin().storeSecret({ name: "w", value: s }),
      "client wireValue (storeSecret)": async () => {
        const { wireValueOf } = await import("../src/client/codecs.js");
        return wireValueOf(s);
      },
    };
    const got: Record<string, string> = {};
    for (const [k, f] of Object.entries(reads)) got[k] = await outcome(f);
    assert.deepEqual(got, Object.fromEntries(Object.keys(reads).map((k) => [k, "invalid_request"])));
  });
});

// ---------------------------------------------------------------------------------------------

describe("the embedded API (openVault, Vault.session)", () => {
  const GRANTS = `[[rule]]
name = "claude-rule"
effect = "allow"
agents = ["claude"]
secrets = ["tok"]
domains = ["${DOMAIN}"]
ttl = "1m"

[[rule]]
name = "bob-rule"
effect = "allow"
agents = ["bob"]
secrets = ["tok", "bobs"]
domains = ["${DOMAIN}"]
`;
  async function home(policy = GRANTS): Promise<string> {
    const h = join(tempDir("lessor-sdk-embedded-"), "home");
    await initHome({ home: h });
    writeFileSync(join(h, "policy.toml"), policy, { mode: 0o600 });
    return h;
  }
  const who = (agent: string, id = `embedded:${agent}`): Identity => ({ id, role: "agent", agent, transport: "embedded" });

  test("Vault.open refuses limits that are not whole numbers from 1 (they would be enforced as nonsense), and a limit given as undefined keeps its default", async () => {
    const keys = () => envKeySource({ LESSOR_MASTER_KEY: randomBytes(32).toString("hex") })!;
    for (const limits of [{ approvalWaitMs: 1500.5 }, { maxLiveLeasesPerAgent: 0 }, { maxSecretBytes: Infinity }, { heartbeatMs: -1 }, { keepVersions: "3" as never }]) {
      const store = createMemoryStore();
      await assert.rejects(Vault.open({ store, keys: keys(), limits }), (e) => e instanceof VaultError && e.code === "invalid_request", JSON.stringify(limits));
      await store.close();
    }
    const vault = await Vault.open({ store: createMemoryStore(), keys: keys(), limits: { maxSecretBytes: undefined, heartbeatMs: null } });
    await vault.admin().storeSecret({ name: "ok", value: "x".repeat(1000) });
    await vault.close();
  });

  test("a closed vault answers nothing: status, describe, explain, whoami and listGranted are refused (unavailable), as every other call", async () => {
    const vault = await openVault({ home: await home() });
    const admin = vault.admin();
    const claude = vault.session(who("claude"));
    await vault.close();
    const calls: Record<string, () => Promise<unknown>> = {
      status: () => admin.status(),
      describe: () => admin.describe(),
      explain: () => admin.explain("claude", { scope: "global", name: "tok" }, DOMAIN),
      whoami: () => claude.whoami(),
      listGranted: () => claude.listGranted(),
      listSecrets: () => admin.listSecrets(),
    };
    const got: Record<string, string> = {};
    for (const [k, f] of Object.entries(calls)) got[k] = await outcome(f);
    assert.deepEqual(got, Object.fromEntries(Object.keys(calls).map((k) => [k, "unavailable"])));
  });

  test("an agent session reads only through its own live leases: another agent's lease, another domain, another agent's name, a secret it is not granted, an exhausted, expired, revoked or unknown lease are each refused with their documented code, never with the value", async () => {
    const clk = clock(Date.now());
    const vault = await openVault({ home: await home(), now: clk.now });
    after(() => vault.close());
    await vault.admin().storeSecret({ name: "tok", value: CANARY });
    await vault.admin().storeSecret({ name: "bobs", value: `${CANARY}-bob` });
    const claude = vault.session(who("claude"));
    const bob = vault.session(who("bob"));
    const lease = await claude.requestLease({ secret: "tok", domains: [DOMAIN], maxUses: 2 });
    const refusals: [string, string, () => Promise<unknown>][] = [
      ["bob uses claude's lease", "access_denied", () => bob.accessSecret(lease.id, { domain: DOMAIN })],
      ["bob renews claude's lease", "access_denied", () => bob.renewLease(lease.id)],
      ["bob revokes claude's lease", "access_denied", () => bob.revokeLease(lease.id)],
      ["claude's lease for another host", "access_denied", () => claude.accessSecret(lease.id, { domain: "evil.example.net" })],
      ["claude's lease with no host", "access_denied", () => claude.accessSecret(lease.id)],
      ["claude asks as bob", "access_denied", () => claude.requestLease({ agent: "bob", secret: "tok" })],
      ["claude asks for bob's secret", "access_denied", () => claude.requestLease({ secret: "bobs" })],
      ["claude asks for a lease-and-access of bob's secret", "access_denied", () => claude.requestLeaseAndAccess({ secret: "bobs" }, { domain: DOMAIN })],
      ["an unknown lease", "lease_not_found", () => claude.accessSecret(randomUUID(), { domain: DOMAIN })],
      ["bob reveals", "access_denied", () => bob.revealSecret({ scope: "global", name: "tok" })],
    ];
    for (const [what, code, p] of refusals) {
      const e = await vaultError(p(), what);
      assert.equal(e.code, code, `${what}: ${e.message}`);
      assertNoCanary(`${e.message} ${inspect(e, { showHidden: true })}`, what);
    }
    // Two uses in parallel with ten more: exactly two succeed.
    const rs = await Promise.allSettled(Array.from({ length: 12 }, () => claude.accessSecret(lease.id, { domain: DOMAIN })));
    const ok = rs.filter((r): r is PromiseFulfilledResult<Awaited<ReturnType<typeof claude.accessSecret>>> => r.status === "fulfilled");
    assert.equal(ok.length, 2);
    for (const r of ok) {
      assert.equal(r.value.value.unsafeText(), CANARY);
      r.value.value.wipe();
    }
    for (const r of rs) if (r.status === "rejected") assert.ok(r.reason instanceof VaultError && r.reason.code === "lease_exhausted", inspect(r.reason));

    const expiring = await claude.requestLease({ secret: "tok", domains: [DOMAIN] });
    const revoked = await claude.requestLease({ secret: "tok", domains: [DOMAIN], ttl: "5m" });
    await claude.revokeLease(revoked.id);
    assert.equal((await vaultError(claude.accessSecret(revoked.id, { domain: DOMAIN }), "a revoked lease")).code, "lease_revoked");
    clk.advance(61_000);
    assert.equal((await vaultError(claude.accessSecret(expiring.id, { domain: DOMAIN }), "an expired lease")).code, "lease_expired");
    assert.equal((await vaultError(claude.renewLease(expiring.id), "renewing an expired lease")).code, "lease_expired");
    assert.deepEqual(await vault.admin().auditVerify().then((v) => v.ok), true);
  });

  test("two Vault instances on one home in one process, beside a running daemon, share use caps, revocations and the killswitch at once, and the audit chain verifies", async () => {
    const h = await home(GRANTS.replace('ttl = "1m"', 'ttl = "1m"\nmax_uses = 7'));
    const A = await openVault({ home: h });
    after(() => A.close());
    await A.admin().storeSecret({ name: "tok", value: CANARY });
    const d = await startServe(h);
    daemons.push(d);
    const B = await openVault({ home: h });
    after(() => B.close());
    const admin = keep(await LessorClient.connect({ socketPath: d.socket }));
    const a = A.session(who("claude", "program:a"));
    const b = B.session(who("claude", "program:b"));
    for (let round = 0; round < 2; round++) {
      const lease = await a.requestLease({ secret: "tok", domains: [DOMAIN] });
      assert.equal(lease.maxUses, 7);
      const calls = Array.from({ length: 42 }, (_, i) =>
        i % 3 === 0 ? a.accessSecret(lease.id, { domain: DOMAIN }) : i % 3 === 1 ? b.accessSecret(lease.id, { domain: DOMAIN }) : admin.accessSecret(lease.id, { domain: DOMAIN }),
      );
      const rs = await Promise.allSettled(calls);
      const ok = rs.filter((r) => r.status === "fulfilled") as PromiseFulfilledResult<{ value: SecretBytes }>[];
      for (const r of ok) r.value.value.wipe();
      const codes = [...new Set(rs.filter((r) => r.status === "rejected").map((r) => ((r as PromiseRejectedResult).reason as VaultError).code))];
      assert.equal(ok.length, 7, `exactly max_uses succeed across the daemon and both vaults (refusals: ${codes})`);
      assert.deepEqual(codes, ["lease_exhausted"]);
      assert.equal((await admin.listLeases({ agent: "claude" })).find((l) => l.id === lease.id)!.uses, 7);
    }
    const l = await a.requestLease({ secret: "tok", domains: [DOMAIN] });
    await b.revokeLease(l.id);
    assert.equal((await vaultError(a.accessSecret(l.id, { domain: DOMAIN }), "revoked in the other vault")).code, "lease_revoked");
    assert.equal((await vaultError(admin.accessSecret(l.id, { domain: DOMAIN }), "revoked in a vault, used at the daemon")).code, "lease_revoked");
    const live = await b.requestLease({ secret: "tok", domains: [DOMAIN] });
    await A.admin().killswitch("attack pass");
    assert.equal((await vaultError(b.requestLease({ secret: "tok", domains: [DOMAIN] }), "a grant in B after A's killswitch")).code, "access_denied");
    assert.equal((await vaultError(admin.requestLease({ agent: "claude", secret: "tok", domains: [DOMAIN] }), "a grant at the daemon after A's killswitch")).code, "access_denied");
    assert.equal((await vaultError(b.accessSecret(live.id, { domain: DOMAIN }), "a lease live before the killswitch")).code, "lease_revoked");
    for (const v of [A, B]) assert.deepEqual(await v.admin().auditVerify().then((r) => [r.ok, r.problem]), [true, undefined]);
    assert.equal((await admin.auditVerify()).ok, true);
  });

  test("what the embedded vault hands a caller is the caller's own: mutating a returned lease or listing widens nothing, two accesses get separate buffers, and values passed in are not wiped", async () => {
    const policy = parsePolicy(GRANTS.replace('ttl = "1m"', 'ttl = "1m"\nmax_uses = 2'), "policy.toml");
    for (const kind of ["memory", "sqlite"] as const) {
      const store = kind === "memory" ? createMemoryStore() : openSqliteStore(join(tempDir("lessor-sdk-mut-"), "lessor.db"));
      const vault = await Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: randomBytes(32).toString("hex") })!, policy });
      after(() => vault.close());
      const mine = Buffer.from(CANARY);
      const sb = SecretBytes.from(`${CANARY}-2`);
      await vault.admin().storeSecret({ name: "tok", value: mine });
      await vault.admin().rotateSecret({ scope: "global", name: "tok" }, sb);
      assert.equal(mine.toString(), CANARY, `${kind}: a Buffer passed in is left as it was`);
      assert.equal(sb.unsafeText(), `${CANARY}-2`, `${kind}: a SecretBytes passed in is not wiped`);
      const claude = vault.session(who("claude"));
      const lease = await claude.requestLease({ secret: "tok", domains: [DOMAIN] });
      // A naive (or hostile) caller edits what it was given.
      const widen = (l: LeaseRecord) => {
        Object.assign(l, { maxUses: null, uses: -100, expiresAt: Number.MAX_SAFE_INTEGER, agent: "bob", revokedAt: null, anyDomain: true });
        l.domains.push("evil.example.net");
      };
      widen(lease);
      for (const l of await claude.listLeases()) widen(l);
      assert.equal((await vaultError(claude.accessSecret(lease.id, { domain: "evil.example.net" }), `${kind}: a host pushed into a returned lease`)).code, "access_denied");
      const [a, b] = await Promise.all([claude.accessSecret(lease.id, { domain: DOMAIN }), claude.accessSecret(lease.id, { domain: DOMAIN })]);
      assert.notEqual(a.value.expose().buffer, b.value.expose().buffer, `${kind}: each access has its own buffer`);
      a.value.wipe();
      assert.equal(b.value.unsafeText(), `${CANARY}-2`, `${kind}: wiping one value leaves the other`);
      b.value.wipe();
      widen(a.lease);
      assert.equal((await vaultError(claude.accessSecret(lease.id, { domain: DOMAIN }), `${kind}: a third use`)).code, "lease_exhausted");
      await vault.close();
    }
  });

  test("Vault.session refuses an identity it cannot audit faithfully (an id or transport that is not text, or missing) with invalid_request, and the audit trail still verifies", async () => {
    // README: "the identity comes from the embedding program"; a numeric id is stored as text but
    // hashed as a number, so the trail later verifies as tampered ("event N was altered").
    const vault = await openVault({ home: await home() });
    after(() => vault.close());
    await vault.admin().storeSecret({ name: "tok", value: "v1" });
    const identities: Record<string, unknown> = {
      "id is a number (a uid)": { id: 1000, role: "admin", transport: "embedded" },
      "transport is a number": { id: "program", role: "admin", transport: 7 },
      "no id": { role: "admin", transport: "embedded" },
      "no transport": { id: "program", role: "admin" },
    };
    const outcomes: Record<string, string> = {};
    for (const [label, ident] of Object.entries(identities))
      outcomes[label] = await outcome(() => vault.session(ident as Identity).rotateSecret({ scope: "global", name: "tok" }, "v2"));
    const verify = await vault.admin().auditVerify();
    assert.deepEqual(
      { outcomes, verify: { ok: verify.ok, problem: verify.problem } },
      { outcomes: Object.fromEntries(Object.keys(identities).map((k) => [k, "invalid_request"])), verify: { ok: true, problem: undefined } },
    );
  });

  test("the embedded API refuses a malformed call with a VaultError (invalid_request), as the daemon does, never a TypeError", async () => {
    // In-process calls "go to the core as they are, and the core's own checks answer a mistake"
    // (src/backend/in-process.ts); "code written against them works with either" (docs/client.md).
    const vault = await openVault({ home: await home() });
    after(() => vault.close());
    await vault.admin().storeSecret({ name: "tok", value: "v1" });
    const admin = vault.admin();
    const claude = vault.session(who("claude"));
    const lease = await claude.requestLease({ secret: "tok", domains: [DOMAIN] });
    const api = inProcessApi(vault).api;
    const cases: Record<string, () => unknown> = {
      "session(null)": () => vault.session(null as never),
      "requestLease({ name }) (secret misnamed)": () => claude.requestLease({ name: "tok" } as never),
      "requestLease({ secret: null })": () => claude.requestLease({ secret: null } as never),
      "requestLeaseAndAccess({ name })": () => claude.requestLeaseAndAccess({ name: "tok" } as never, { domain: DOMAIN }),
      "renewLease(id, null)": () => claude.renewLease(lease.id, null as never),
      "listLeases(null)": () => claude.listLeases(null as never),
      "listSecrets(null)": () => admin.listSecrets(null as never),
      "auditQuery(null)": () => admin.auditQuery(null as never),
      "revealSecret(undefined)": () => admin.revealSecret(undefined as never),
      "createToken(undefined)": () => admin.createToken(undefined as never),
      "requestApproval(null)": () => claude.requestApproval(null as never),
      "auditRecover(null)": () => admin.auditRecover(null as never),
      "listGranted(null)": () => claude.listGranted(null as never),
      "listApprovals(null)": () => admin.listApprovals(null as never),
      "in-process api.request_lease({})": () => api.request_lease({} as never),
      "in-process api.reveal_secret({})": () => api.reveal_secret({} as never),
    };
    const got: Record<string, string> = {};
    for (const [k, f] of Object.entries(cases)) got[k] = await outcome(f);
    assert.deepEqual(got, Object.fromEntries(Object.keys(cases).map((k) => [k, "invalid_request"])));
  });

  test("a text value UTF-8 cannot hold (a lone surrogate) is refused by the embedded vault, never stored altered", async () => {
    const vault = await openVault({ home: await home() });
    after(() => vault.close());
    const admin = vault.admin();
    const code = await outcome(() => admin.storeSecret({ name: "tok", value: "pass\ud800word" }));
    let stored = "";
    if (code === "resolved") {
      const r = await admin.revealSecret({ scope: "global", name: "tok" });
      stored = r.value.expose().toString("hex");
      r.value.wipe();
    }
    assert.equal(code, "invalid_request", `stored as ${stored} (U+FFFD in place of the surrogate)`);
  });
});
