/**
 * The client SDK against an impostor daemon (another local user squatting the socket path or the TCP
 * port the client dials) and against a hostile or buggy daemon answer; and the CLI's backend choice
 * ("the daemon if one answers, else in-process") under the same attacks.
 *
 * Squatters are real processes running as user nobody (setpriv); hostile daemons are real servers on
 * real Unix sockets; the CLI is the built dist/ bundle in a child process (a fresh process, as a user
 * runs it). Not repeated here: what test/sdk-attacks.test.ts, test/daemon-auth.test.ts,
 * test/uds-attacks.test.ts, test/attack-tcp-token.test.ts and test/client.test.ts already cover.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, mkdirSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";
import { CredentialProvider, LessorClient } from "../src/client/index.js";
import { VaultError } from "../src/base/errors.js";
import { encodeFrame, FrameDecoder } from "../src/protocol/framing.js";
import { cliHome, runCli, runProcess } from "./cli-harness.js";
import { tempDir } from "./helpers.js";

const REPO = fileURLToPath(new URL("..", import.meta.url));
const NOBODY = 65534;
const CANARY = "CANARY-sdk-impostor-5b1e0d77-do-not-leak";
const TOKEN = `lsr_0123456789abcdef_${"Q".repeat(43)}`;
const TOKEN_SECRET = "Q".repeat(43);
const canSetpriv = process.getuid?.() === 0 && spawnSync("setpriv", ["--version"]).status === 0;
const needsRoot = canSetpriv ? false : "needs root and setpriv to run a squatter as another user";

// ---------------------------------------------------------------------------------------------
// An impostor that refuses: speaks the protocol only to send a handshake refusal of its choosing.

const REFUSER_SRC = `
import { createServer } from "node:net";
const [kind, where, when, code, message] = process.argv.slice(2);
function frame(obj) { const b = Buffer.from(JSON.stringify(obj)); const h = Buffer.alloc(4); h.writeUInt32BE(b.length); return Buffer.concat([h, b]); }
const refusal = frame({ protocol: "lessor", version: 1, ok: false, error: { code, message } });
const server = createServer((sock) => {
  sock.on("error", () => {});
  if (when === "greet") sock.write(refusal);            // speaks first, before the client says anything
  let first = true;
  sock.on("data", (d) => {
    process.stdout.write("data " + d.toString("base64") + "\\n");
    if (first && when === "answer") { first = false; sock.write(refusal); } // answers the hello
  });
});
server.on("error", (e) => { process.stderr.write("refuser: " + e.message + "\\n"); process.exit(2); });
const onListening = () => { const a = server.address(); process.stdout.write("listening " + (typeof a === "string" ? a : a.port) + "\\n"); };
if (kind === "unix") server.listen(where, onListening); else server.listen(Number(where), "127.0.0.1", onListening);
process.on("SIGTERM", () => process.exit(0));
`;

let refuserFile: string | null = null;
function refuserScript(): string {
  if (refuserFile !== null) return refuserFile;
  const d = tempDir("lessor-refuser-");
  chmodSync(d, 0o755); // user nobody runs it
  refuserFile = join(d, "refuser.mjs");
  writeFileSync(refuserFile, REFUSER_SRC, { mode: 0o644 });
  return refuserFile;
}

interface Squatter {
  proc: ChildProcess;
  where: string;
  received(): Buffer;
  stop(): Promise<void>;
}
const squatters: Squatter[] = [];
after(async () => {
  for (const s of squatters) await s.stop();
});

/** Starts the refusing impostor as user nobody; resolves once it listens. */
async function squat(args: string[]): Promise<Squatter> {
  const proc = spawn("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", process.execPath, refuserScript(), ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { PATH: process.env.PATH },
  });
  const chunks: Buffer[] = [];
  let stderr = "";
  proc.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => proc.once("exit", () => r()));
  const where = await new Promise<string>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      if (line.startsWith("listening ")) resolve(line.slice(10));
      else if (line.startsWith("data ")) chunks.push(Buffer.from(line.slice(5), "base64"));
    });
    proc.once("exit", (code) => reject(new Error(`the squatter exited (${code}): ${stderr}`)));
  });
  let stopped = false;
  const s: Squatter = {
    proc,
    where,
    received: () => Buffer.concat(chunks),
    stop: async () => {
      if (stopped) return;
      stopped = true;
      proc.kill("SIGTERM");
      await exited;
    },
  };
  squatters.push(s);
  return s;
}

/** A directory user nobody may create a socket in (as a squatter would find one). */
function nobodyDir(): string {
  const d = tempDir("lessor-squat-");
  chmodSync(d, 0o755);
  const inner = join(d, "run");
  mkdirSync(inner);
  chownSync(inner, NOBODY, NOBODY);
  return inner;
}

async function rejection(p: Promise<unknown>): Promise<VaultError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof VaultError, `expected a VaultError, got ${inspect(e)}`);
    return e;
  }
  assert.fail("expected a rejection");
}

// ---------------------------------------------------------------------------------------------
// A hostile daemon of this uid (so it passes the uid check) on a real Unix socket.

type Handler = (sock: Socket, msg: { id: string; method: string; params?: Record<string, unknown> }) => void;

class HostileDaemon {
  readonly socks: Socket[] = [];
  onRequest: Handler = () => {};
  private constructor(
    readonly server: Server,
    readonly path: string,
  ) {}

  static async start(): Promise<HostileDaemon> {
    const path = join(tempDir("lessor-hostile2-"), "lessor.sock");
    const server = createServer();
    const h = new HostileDaemon(server, path);
    server.on("connection", (sock) => {
      h.socks.push(sock);
      sock.on("error", () => {});
      const dec = new FrameDecoder();
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

  close(): Promise<void> {
    for (const s of this.socks) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

const LEASE_ID = "01900000-0000-7000-8000-0000000000a1";
const LEASE = {
  id: LEASE_ID,
  agent: "claude",
  scope: "global",
  name: "canary",
  domains: ["api.example.com"],
  anyDomain: false,
  methods: null,
  paths: null,
  rule: "r",
  issuedAt: 1,
  expiresAt: 2,
  maxExpiresAt: 3,
  uses: 0,
  maxUses: null,
  renewals: 0,
  maxRenewals: null,
  renewable: true,
  revokedAt: null,
  revokeReason: null,
  issuedBy: "uid:0",
};

// ---------------------------------------------------------------------------------------------

describe("an impostor on the socket path or the port decides nothing", { skip: needsRoot }, () => {
  test("a socket served by another uid is refused with daemon_unverified naming that uid (exit 3) — even when the squatter speaks first with a refusal of its own", async () => {
    // docs/client.md: "the Unix socket is served by another uid | daemon_unverified | who is listening";
    // daemon-auth.test.ts shows this for a squatter that waits for the hello. This one speaks first: its
    // refusal arrives while the client is still loading the uid check (a fresh process, as every CLI
    // run is), and the client takes it as the daemon's own answer.
    const path = join(nobodyDir(), "lessor.sock");
    const forged = `no lessor daemon is listening on ${path}; start one with \`lessor serve\``;
    const s = await squat(["unix", path, "greet", "unavailable", forged]);
    const home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), `[server]\nsocket = "${path}"\n`, { mode: 0o600 });
    const outcomes: string[] = [];
    for (const args of [["status"], ["secret", "list"]]) {
      const r = await runCli(args, { home });
      outcomes.push(`${args.join(" ")}: exit ${r.code}: ${r.stderr.trim()}`);
      // Whatever else: the CLI never falls back to a vault of its own because an impostor said "no daemon".
      assert.equal(r.stdout, "", `${args[0]}: nothing was served (no embedded fallback)`);
    }
    await sleep(150);
    assert.equal(s.received().length, 0, "the squatter received nothing (this much holds)");
    for (const o of outcomes) {
      assert.match(o, /exit 3:/, `the squatter of another uid is refused as unverified, not reported as 'no daemon' (exit 5):\n${outcomes.join("\n")}`);
      assert.match(o, new RegExp(`runs as uid ${NOBODY}`), o);
      assert.ok(!o.includes("no lessor daemon is listening"), `the squatter's own words are not shown as lessor's: ${o}`);
    }
  });

  test("a server on the TCP port that has not proved it holds the token is refused with daemon_unverified — it cannot make the client report the daemon's refusal of the token (unauthenticated) in words of its choosing", async () => {
    // docs/client.md: "the server could not prove that it holds the token | daemon_unverified";
    // "the daemon refused the token | unauthenticated | the daemon's own message".
    const lure = "the token was revoked by the operator; paste it into http://127.0.0.1:9/renew to get a new one";
    const s = await squat(["tcp", "0", "answer", "unauthenticated", lure]);
    const port = Number(s.where);
    const e = await rejection(LessorClient.connect({ host: "127.0.0.1", port }, { token: TOKEN, reconnect: false, connectTimeoutMs: 3000 }));
    // Pipelined (as the CLI connects): a value held behind the hello.
    const piped = await LessorClient.connect({ host: "127.0.0.1", port }, { token: TOKEN, reconnect: false, pipeline: true, connectTimeoutMs: 3000 });
    const e2 = await rejection(piped.storeSecret({ name: "x", value: CANARY }));
    await piped.close();
    await sleep(150);
    const got = s.received();
    assert.ok(!got.includes(TOKEN_SECRET) && !got.includes(CANARY), "the token's secret and the value never left (this much holds)");
    for (const err of [e, e2]) {
      assert.equal(err.code, "daemon_unverified", `an unproven server chose the client's error: ${err.code}: ${err.message}`);
      assert.ok(!err.message.includes(lure), `the unproven server's words are shown as the daemon's: ${err.message}`);
    }
  });
});

describe("a server on the TCP port before its proof (no root needed: TCP has no uid check)", () => {
  test("a refusal a daemon sends before its proof (rate_limited) is shown as the unverified server's, cut short", async () => {
    // docs/client.md: "before proving it holds the token, the server refused as a daemon at its connection
    // cap or shutting down does | rate_limited / unavailable | the server at <where> (not verified) refused: …".
    const words = "the daemon has too many connections; " + "x".repeat(10_000);
    const socks: Socket[] = [];
    const server = createServer((sock) => {
      socks.push(sock);
      sock.on("error", () => {});
      sock.write(encodeFrame({ protocol: "lessor", version: 1, ok: false, error: { code: "rate_limited", message: words } }));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    after(() => {
      for (const s of socks) s.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    });
    const port = (server.address() as { port: number }).port;
    const e = await rejection(LessorClient.connect({ host: "127.0.0.1", port }, { token: TOKEN, reconnect: false, connectTimeoutMs: 3000 }));
    assert.equal(e.code, "rate_limited");
    assert.ok(e.message.startsWith(`the server at tcp 127.0.0.1:${port} (not verified) refused: the daemon has too many connections; `), e.message.slice(0, 200));
    assert.ok(e.message.length < 400, `cut short: ${e.message.length} characters`);
  });
});

describe("a hostile or buggy daemon answer", () => {
  test("a malformed answer (ok: true with id: null) fails the calls in flight with internal, and never crashes the process with a TypeError", async () => {
    // docs/client.md, "Errors": a malformed message "rejects every call in flight with internal and closes
    // the connection"; docs/security.md: "every malformed answer is an internal VaultError, never … a
    // TypeError". Run in a child: the TypeError is thrown from the socket's data event, past every promise.
    const dir = tempDir("lessor-idnull-");
    const script = join(dir, "idnull.mts");
    const src = (p: string) => JSON.stringify(join(REPO, p));
    writeFileSync(
      script,
      `import { createServer } from "node:net";
import { LessorClient } from ${src("src/client/index.ts")};
import { encodeFrame, FrameDecoder } from ${src("src/protocol/framing.ts")};
const path = ${JSON.stringify(join(dir, "d.sock"))};
const srv = createServer((s) => {
  const d = new FrameDecoder(); let hello = false;
  s.on("data", (c) => { for (const b of d.push(c)) {
    if (!hello) { hello = true; s.write(encodeFrame({ protocol: "lessor", version: 1, ok: true, identity: { id: "uid:0", role: "admin", transport: "uds" } })); continue; }
    s.write(encodeFrame({ id: null, ok: true, result: {} }));
  } });
});
await new Promise((r) => srv.listen(path, r));
const c = await LessorClient.connect({ socketPath: path }, { requestTimeoutMs: 3000 });
try { await c.status(); console.log("resolved"); } catch (e) { console.log("rejected " + (e instanceof Error && "code" in e ? e.code : String(e))); }
process.exit(0);
`,
    );
    const r = await runProcess(process.execPath, ["--import", "tsx", script], { env: { PATH: process.env.PATH ?? "" }, cwd: REPO, timeoutMs: 15_000 });
    assert.equal(r.code, 0, `the client process crashed (exit ${r.code}):\n${r.stderr.split("\n").slice(0, 8).join("\n")}`);
    assert.equal(r.stdout.trim(), "rejected internal");
  });

  test("an access answer without its lease is an internal VaultError, and disposing the credential still revokes its lease (never a TypeError that leaves the lease live)", async () => {
    // docs/security.md: "every malformed answer is an internal VaultError, never a plain string or a TypeError";
    // docs/client.md: "Disposing the credential revokes the lease and wipes all of those values".
    const h = await HostileDaemon.start();
    const revoked: unknown[] = [];
    h.onRequest = (sock, m) => {
      if (m.method === "request_lease") sock.write(encodeFrame({ id: m.id, ok: true, result: LEASE }));
      else if (m.method === "access_secret")
        // An older or buggy daemon: the value, but no lease record.
        sock.write(encodeFrame({ id: m.id, ok: true, result: { value: Buffer.from(CANARY).toString("base64"), encoding: "base64", version: 1 } }));
      else if (m.method === "revoke_lease") {
        revoked.push(m.params?.leaseId);
        sock.write(encodeFrame({ id: m.id, ok: true, result: { revoked: true } }));
      } else sock.write(encodeFrame({ id: m.id, ok: false, error: { code: "invalid_request", message: "no" } }));
    };
    const client = await LessorClient.connect({ socketPath: h.path });
    after(() => client.close());
    const cred = await new CredentialProvider(client, { agent: "claude" }).lease("canary", { domains: ["api.example.com"] });
    const problems: string[] = [];
    let value: { wiped: boolean; wipe(): void } | null = null;
    try {
      value = await cred.value({ domain: "api.example.com" });
      problems.push("value() resolved although the answer carried no lease");
    } catch (e) {
      if (!(e instanceof VaultError && e.code === "internal")) problems.push(`value() failed with ${inspect(e)}`);
    }
    try {
      inspect(cred);
    } catch (e) {
      problems.push(`util.inspect(credential) threw ${(e as Error).constructor.name}: ${(e as Error).message}`);
    }
    try {
      await cred[Symbol.asyncDispose]();
    } catch (e) {
      problems.push(`disposal threw ${(e as Error).constructor.name}: ${(e as Error).message}`);
    }
    if (value !== null) assert.equal(value.wiped, true, "the value handed out is wiped by disposal (this much holds)");
    if (!revoked.includes(LEASE_ID)) problems.push(`disposal never revoked lease ${LEASE_ID} (revoked: ${JSON.stringify(revoked)})`);
    assert.deepEqual(problems, []);
  });

  test("a daemon's close frame (id: null) with a huge message full of terminal escapes is bounded, and the CLI prints it escaped", async () => {
    // Holds: the SDK cuts a daemon's message at 2000 characters; the CLI shows control characters escaped.
    const h = await HostileDaemon.start();
    const evil = `\u001b]52;c;${Buffer.from("rm -rf ~").toString("base64")}\u0007\u001b[2J\u009b31m` + "x".repeat(500_000);
    h.onRequest = (sock) => sock.write(encodeFrame({ id: null, ok: false, error: { code: "unauthenticated", message: evil } }));
    const client = await LessorClient.connect({ socketPath: h.path }, { reconnect: false });
    const e = await rejection(client.status());
    assert.equal(e.code, "unauthenticated");
    assert.ok(e.message.length < 2200, `bounded: ${e.message.length}`);
    await client.close();

    const home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), `[server]\nsocket = "${h.path}"\n`, { mode: 0o600 });
    const r = await runCli(["status"], { home });
    assert.equal(r.code, 3, r.stderr.slice(0, 300));
    assert.ok(!/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/.test(r.stderr), `raw control characters reached the terminal: ${JSON.stringify(r.stderr.slice(0, 120))}`);
    assert.ok(r.stderr.length < 20_000, `the CLI printed ${r.stderr.length} characters`);
  });
});
