/**
 * Promise audit of docs/proxy.md, docs/cli/proxy.md, docs/sandbox.md and docs/cli/run.md: each test
 * attacks one promise those documents make that no other test file attacks (or attacks only weakly),
 * as a hostile agent inside `lessor run`, a hostile (or merely careless) covered upstream, or a
 * newcomer following the docs literally.
 *
 * Real parts: a real ForwardProxy + LeaseEgress over a real vault (SQLite, audit), real TLS on both
 * sides, a raw loopback upstream that writes exactly the bytes a test wants; the built CLI, a real
 * `lessor serve` and a real bubblewrap sandbox for the `lessor run` tests. Traffic goes to loopback
 * only: names resolve through an injected table and the connect step fails the test for anything
 * but 127.0.0.1.
 *
 * A comment that names a cause in src/ describes a break its test found when it was written
 * (2026-12-04): three did (Transfer-Encoding, twice; a relative LESSOR_TOKEN_FILE), fixed that day.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { gunzipSync, gzipSync } from "node:zlib";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { BIN } from "./cli-harness.js";
import { makeHome, startServe } from "./daemon-harness.js";
import { grant, makeVault } from "./helpers.js";
import { inTime, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const HOST = "api.audit.example"; // covered by tok's lease
const OTHER = "other.audit.example"; // covered by oth's lease only

const TOK = "ghp_" + "AuDiT9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcB";
const OTH = "sk-oth-" + "AUDITotherHost0123456789abcdef";

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- a raw upstream: every answer is exactly the bytes the test wants ---------------------------------

interface Seen {
  head: string;
  path: string;
  headers: Record<string, string>;
}
const seen: Seen[] = [];

const upCa = LocalCa.create({ permitted: [HOST, OTHER] });

/** Frames (RFC 6455) the upstream sends: unmasked, as a server does. */
function serverFrame(fin: boolean, opcode: number, payload: Buffer): Buffer {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([(fin ? 0x80 : 0) | opcode, len]) : Buffer.from([(fin ? 0x80 : 0) | opcode, 126, len >> 8, len & 0xff]);
  return Buffer.concat([head, payload]);
}

function chunked(body: Buffer, pieces: number): string {
  let out = "";
  const step = Math.ceil(body.length / pieces);
  for (let i = 0; i < body.length; i += step) {
    const part = body.subarray(i, i + step);
    out += part.length.toString(16) + "\r\n" + part.toString("latin1") + "\r\n";
  }
  return out + "0\r\n\r\n";
}

/** Open upstream WebSocket connections (the revocation test checks they are cut). */
const wsSockets = new Set<tls.TLSSocket>();

function serveRaw(alpn: string[]): tls.Server {
  return tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: alpn }, (s) => {
    s.on("error", () => {});
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      s.off("data", onData);
      const head = buf.subarray(0, end).toString("latin1");
      const lines = head.split("\r\n");
      const path = lines[0]!.split(" ")[1] ?? "";
      const headers: Record<string, string> = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(":");
        headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      seen.push({ head, path, headers });
      const auth = headers["authorization"] ?? "";
      if (path.startsWith("/te-gzip")) {
        // A coding the agent can undo itself, carried as a transfer-coding instead of a content-coding.
        const body = gzipSync(Buffer.from(JSON.stringify({ youSent: auth })));
        s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n` + chunked(body, 3), "latin1");
        return;
      }
      if (path.startsWith("/ce-gzip")) {
        // The same answer labelled as the docs expect: decoded and scrubbed (the control).
        const body = gzipSync(Buffer.from(JSON.stringify({ youSent: auth })));
        s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` + chunked(body, 3), "latin1");
        return;
      }
      if (path.startsWith("/ws") && /websocket/i.test(headers["upgrade"] ?? "")) {
        const accept = createHash("sha1")
          .update((headers["sec-websocket-key"] ?? "") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
          .digest("base64");
        s.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`, "latin1");
        // The bearer value echoed in one text message split across two fragments, with a ping (also
        // carrying it) between them, each frame written on its own.
        const value = auth.replace(/^Bearer /, "");
        wsSockets.add(s);
        s.once("close", () => wsSockets.delete(s));
        void (async () => {
          s.write(serverFrame(false, 0x1, Buffer.from("echo:" + value.slice(0, 11))));
          await delay(20);
          s.write(serverFrame(true, 0x9, Buffer.from("ping:" + value)));
          await delay(20);
          s.write(serverFrame(true, 0x0, Buffer.from(value.slice(11) + ":end")));
        })();
        s.on("data", () => {}); // the client's frames: read and dropped
        return;
      }
      s.end(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok`, "latin1");
    };
    s.on("data", onData);
  });
}

const up = serveRaw(["http/1.1"]);
await new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
const upPort = (up.address() as AddressInfo).port;
after(async () => {
  for (const s of wsSockets) s.destroy();
  await new Promise<void>((r) => up.close(() => r()));
});

// --- the rig: a real vault, its leases, LeaseEgress (watching), the proxy ----------------------------

const POLICY = grant("api", ["bot"], ["tok"], [HOST]) + grant("other", ["bot"], ["oth"], [OTHER]);

interface Rig {
  port: number;
  ph(name: "tok" | "oth"): string;
  lease(name: "tok" | "oth"): string;
  warns: string[];
  connects: ConnectTo[];
  audit(): Promise<string>;
  alarmed(): Promise<boolean>;
  live(): Promise<Set<string>>;
  revoke(name: "tok" | "oth"): Promise<void>;
  close(): Promise<void>;
}

async function rig(): Promise<Rig> {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  const creds: ProxyCredential[] = [];
  for (const [name, value, domains] of [
    ["tok", TOK, [HOST]],
    ["oth", OTH, [OTHER]],
  ] as const) {
    await admin.storeSecret({ name, value });
    const lease = await admin.requestLease({ agent: "bot", secret: name, domains: [...domains] });
    creds.push({ lease, secret: `global/${name}`, placeholder: makePlaceholder(value), value, rule: { mode: "placeholder" } });
  }
  const warns: string[] = [];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: (l) => warns.push(l) });
  egress.start();
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [OTHER]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST, OTHER] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  const cred = (name: string): ProxyCredential => creds.find((c) => c.secret === `global/${name}`)!;
  return {
    port,
    ph: (name) => cred(name).placeholder,
    lease: (name) => cred(name).lease.id,
    warns,
    connects,
    audit: async () => JSON.stringify(await admin.auditQuery({ limit: 10_000 })),
    alarmed: async () => (await admin.auditQuery({ types: ["proxy_request"], limit: 10_000 })).some((e) => JSON.parse(e.detail ?? "{}").alarm === true),
    live: async () => new Set((await admin.listLeases({ agent: "bot" })).filter((l) => l.revokedAt === null).map((l) => l.id)),
    revoke: async (name) => void (await admin.revokeLease(cred(name).lease.id, "revoked by the test")),
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

/** A CONNECT tunnel to `host` through the proxy, TLS inside (the agent is the attacker: it trusts anything). */
const tunnel = (r: Rig, host: string, alpn = "http/1.1"): Promise<tls.TLSSocket> => openTunnel(r.port, host, upPort, { alpn });

/** The body of a raw HTTP/1.1 answer, de-chunked (the agent's own reading of it). */
function bodyOf(answer: string): Buffer {
  const end = answer.indexOf("\r\n\r\n");
  const head = answer.slice(0, end);
  let rest = Buffer.from(answer.slice(end + 4), "latin1");
  if (!/transfer-encoding:\s*chunked/i.test(head)) return rest;
  const parts: Buffer[] = [];
  for (;;) {
    const nl = rest.indexOf("\r\n");
    if (nl < 0) break;
    const n = parseInt(rest.subarray(0, nl).toString("latin1"), 16);
    if (!(n > 0)) break;
    parts.push(rest.subarray(nl + 2, nl + 2 + n));
    rest = rest.subarray(nl + 2 + n + 2);
  }
  return Buffer.concat(parts);
}

/** Everything the agent can make of `body`: as is, and gunzipped once or twice if it is gzip. */
function agentReadings(body: Buffer): string {
  const out = [body.toString("latin1")];
  let b = body;
  for (let i = 0; i < 2; i++) {
    try {
      b = gunzipSync(b);
      out.push(b.toString("latin1"));
    } catch {
      break;
    }
  }
  return out.join("\n");
}

// --- responses -----------------------------------------------------------------------------------------

describe("response scrubbing: codings the upstream applies", () => {
  // docs/proxy.md, "Responses": "an echoed credential is replaced by its placeholder as it streams (…)
  // in gzip, deflate or br bodies (decoded on the way; any other or stacked coding is refused with 502)".
  // A gzip carried as a transfer-coding (`Transfer-Encoding: gzip, chunked`, RFC 9112 §6.1) is such a
  // coding: the proxy de-chunks it, drops the hop-by-hop header and hands the agent raw gzip bytes it
  // can gunzip itself. Cause: src/proxy/intercept.ts relayResponse (and src/proxy/h2.ts relay, for an
  // h2 client behind an HTTP/1.1 upstream) pick the decoder from Content-Encoding only.
  test("an upstream answering with Transfer-Encoding: gzip, chunked gets 502, never the echoed credential to the agent (HTTP/1.1 client)", async () => {
    const r = await rig();
    try {
      // The control: the same answer labelled with Content-Encoding is decoded and scrubbed.
      const c = await tunnel(r, HOST);
      c.write(`GET /ce-gzip HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph("tok")}\r\nConnection: close\r\n\r\n`);
      const control = await readAll(c, 3000);
      assert.match(control, /^HTTP\/1\.1 200 /, control.slice(0, 200));
      assert.equal(seen.at(-1)!.headers["authorization"], `Bearer ${TOK}`, "the upstream got the credential");
      assert.ok(agentReadings(bodyOf(control)).includes(r.ph("tok")), "the control echo comes back as the placeholder");
      assert.ok(!agentReadings(bodyOf(control)).includes(TOK), "the control echo is scrubbed");

      const s = await tunnel(r, HOST);
      s.write(`GET /te-gzip HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph("tok")}\r\nConnection: close\r\n\r\n`);
      const answer = await readAll(s, 3000);
      assert.equal(seen.at(-1)!.path, "/te-gzip");
      const readings = agentReadings(bodyOf(answer));
      assert.ok(!readings.includes(TOK), `the agent can read the credential: ${answer.split("\r\n")[0]} (${readings.length} bytes of readings)`);
    } finally {
      await r.close();
    }
  });

  test("an HTTP/1.1 upstream answering with Transfer-Encoding: gzip, chunked gets 502 for an HTTP/2 client, never the echoed credential", async () => {
    const r = await rig();
    try {
      const s = await tunnel(r, HOST, "h2");
      const session = http2.connect(`https://${HOST}`, { createConnection: () => s });
      try {
        const body = await inTime(
          new Promise<Buffer>((resolve, reject) => {
            const req = session.request({ ":method": "GET", ":path": "/te-gzip", authorization: `Bearer ${r.ph("tok")}` });
            const chunks: Buffer[] = [];
            req.on("data", (d: Buffer) => chunks.push(d));
            req.on("end", () => resolve(Buffer.concat(chunks)));
            req.on("error", reject);
          }),
          5000,
          "the h2 answer",
        );
        assert.equal(seen.at(-1)!.path, "/te-gzip");
        assert.equal(seen.at(-1)!.headers["authorization"], `Bearer ${TOK}`, "the upstream got the credential");
        assert.ok(!agentReadings(body).includes(TOK), "the agent can read the credential");
      } finally {
        session.destroy();
      }
    } finally {
      await r.close();
    }
  });
});

// --- WebSocket through LeaseEgress: server fragments, and revocation ---------------------------------

/** Reads unmasked server frames from `s` (after the 101 head) and calls `onFrame` for each. */
function readFrames(s: tls.TLSSocket, first: Buffer, onFrame: (fin: boolean, opcode: number, payload: Buffer) => void): void {
  let buf = first;
  const pump = (): void => {
    for (;;) {
      if (buf.length < 2) return;
      const len7 = buf[1]! & 0x7f;
      const ext = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
      if (buf.length < 2 + ext) return;
      const len = ext === 2 ? buf.readUInt16BE(2) : ext === 8 ? Number(buf.readBigUInt64BE(2)) : len7;
      if (buf.length < 2 + ext + len) return;
      onFrame((buf[0]! & 0x80) !== 0, buf[0]! & 0x0f, buf.subarray(2 + ext, 2 + ext + len));
      buf = buf.subarray(2 + ext + len);
    }
  };
  s.on("data", (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    pump();
  });
  pump();
}

describe("WebSocket through lessor run's egress policy", () => {
  // docs/proxy.md (forward proxy, step 6): "on 101 … each direction through a FrameRewriter …: the
  // server's scrubbed"; "Revocation. A lease revoked anywhere … stops injection at the next request, and
  // the tunnels that used it are closed: the run watches its leases every 50 ms". proxy-websocket tests
  // the scrubbing of a server close frame and closing by a fixed policy; here the server's echo is split
  // across fragments with a ping between them, and the revocation is a real one, through LeaseEgress.
  test("the server's echo split across a message's fragments (a ping between) comes back as the placeholder; revoking the lease in the vault cuts the open WebSocket on both sides within ~250 ms", async () => {
    const r = await rig();
    try {
      const s = await tunnel(r, HOST);
      const key = randomBytes(16).toString("base64");
      s.write(
        `GET /ws HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
          `Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nAuthorization: Bearer ${r.ph("tok")}\r\n\r\n`,
      );
      const frames: { fin: boolean; opcode: number; payload: string }[] = [];
      const head = await inTime(
        new Promise<{ head: string; rest: Buffer }>((resolve) => {
          let got = Buffer.alloc(0);
          const onData = (d: Buffer): void => {
            got = Buffer.concat([got, d]);
            const end = got.indexOf("\r\n\r\n");
            if (end < 0) return;
            s.off("data", onData);
            resolve({ head: got.subarray(0, end).toString("latin1"), rest: got.subarray(end + 4) });
          };
          s.on("data", onData);
        }),
        5000,
        "the 101",
      );
      assert.match(head.head, /^HTTP\/1\.1 101 /, head.head);
      const upstreamSaw = seen.at(-1)!;
      assert.equal(upstreamSaw.headers["authorization"], `Bearer ${TOK}`, "the handshake carried the credential");
      assert.equal(upstreamSaw.headers["sec-websocket-extensions"], undefined, "no extension offered upstream when frames are scrubbed");
      const closed = new Promise<number>((resolve) => s.once("close", () => resolve(performance.now())));
      readFrames(s, head.rest, (fin, opcode, payload) => frames.push({ fin, opcode, payload: payload.toString("latin1") }));
      // The three frames (fragment, ping, last fragment).
      for (let i = 0; i < 100 && frames.filter((f) => f.opcode !== 0x8).length < 3; i++) await delay(20);
      const text = frames.filter((f) => f.opcode === 0x1 || f.opcode === 0x0).map((f) => f.payload).join("");
      const ping = frames.find((f) => f.opcode === 0x9)?.payload ?? "";
      assert.equal(text, `echo:${r.ph("tok")}:end`, "the message's echo is the placeholder, whole");
      assert.equal(ping, `ping:${r.ph("tok")}`, "the ping's echo is the placeholder");
      assert.ok(!JSON.stringify(frames).includes(TOK));

      // The owner revokes the lease (lessor revoke): the open WebSocket must be cut.
      const upSockets = [...wsSockets];
      assert.equal(upSockets.length, 1, "one upstream WebSocket is open");
      const upClosed = new Promise<void>((resolve) => upSockets[0]!.once("close", () => resolve()));
      const t0 = performance.now();
      await r.revoke("tok");
      const t1 = await inTime(closed, 3000, "the client side closes after the revocation");
      await inTime(upClosed, 3000, "the upstream side closes after the revocation");
      assert.ok(t1 - t0 < 250, `cut ${Math.round(t1 - t0)} ms after the revocation`);

      // And the next handshake (a new tunnel) is refused, nothing upstream.
      const before = seen.length;
      const s2 = await tunnel(r, HOST);
      s2.write(`GET /ws HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer ${r.ph("tok")}\r\n\r\n`);
      const again = await readAll(s2, 3000);
      assert.match(again, /^HTTP\/1\.1 403 /, again.slice(0, 200));
      assert.equal(seen.length, before, "nothing reached the upstream after the revocation");
    } finally {
      await r.close();
    }
  });
});

// --- the tripwire and the audit ------------------------------------------------------------------------

describe("the header tripwire's promised forms, and what the audit keeps", () => {
  const pct = (s: string): string => [...Buffer.from(s)].map((b) => "%" + b.toString(16).toUpperCase().padStart(2, "0")).join("");
  // docs/proxy.md, "Tripwire": "(in the target or a header; as it is, percent-encoded up to three
  // times, in base64 or base64url at any alignment, in a header name, or split across headers)";
  // proxy-attacks covers once and twice; here three times, and the split between the target and the
  // first header (the one split the "Not yet" list does not exclude).
  test("another host's placeholder percent-encoded three times (target and header), or split between the target and the first header, trips the wire", async () => {
    const variants: [string, (ph: string) => string][] = [
      ["three times in the query", (ph) => `GET /t?x=${pct(pct(pct(ph)))} HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`],
      ["three times in a header", (ph) => `GET /t HTTP/1.1\r\nX-Data: ${pct(pct(pct(ph)))}\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`],
      ["split between the target and the first header", (ph) => `GET /t?x=${ph.slice(0, 15)} HTTP/1.1\r\nX-Data: ${ph.slice(15)}\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`],
    ];
    const missed: string[] = [];
    for (const [name, request] of variants) {
      const r = await rig();
      try {
        const before = seen.length;
        const s = await tunnel(r, HOST);
        s.write(request(r.ph("oth")));
        const answer = await readAll(s, 3000);
        if (!/^HTTP\/1\.1 403 /.test(answer) || !answer.includes('"reason":"tripwire"')) {
          missed.push(`${name}: ${answer.split("\r\n")[0]}`);
          continue;
        }
        assert.equal(seen.length, before, `${name}: nothing reached the upstream`);
        assert.ok(!(await r.live()).has(r.lease("oth")), `${name}: the lease is revoked`);
        assert.ok(await r.alarmed(), `${name}: an alarm is audited`);
      } finally {
        await r.close();
      }
    }
    assert.deepEqual(missed, [], "variants that did not trip the wire");
  });

  // docs/proxy.md, "Audit": "normalised path (no query: it may hold a credential) … Never a header, a
  // body or a credential"; the use "(secret_accessed, with host, method and path)".
  test("the audit of a proxied request keeps no query, no header and no credential: neither proxy_request nor secret_accessed", async () => {
    const r = await rig();
    try {
      const qmark = `QUERYCANARY${randomBytes(6).toString("hex")}`;
      const hmark = `HEADERCANARY${randomBytes(6).toString("hex")}`;
      const s = await tunnel(r, HOST);
      s.write(`GET /plain/path?token=${qmark} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${r.ph("tok")}\r\nX-Note: ${hmark}\r\nConnection: close\r\n\r\n`);
      const answer = await readAll(s, 3000);
      assert.match(answer, /^HTTP\/1\.1 200 /, answer.slice(0, 200));
      assert.equal(seen.at(-1)!.headers["authorization"], `Bearer ${TOK}`);
      let audit = "";
      for (let i = 0; i < 50 && !audit.includes("proxy_request"); i++) {
        await delay(20);
        audit = await r.audit();
      }
      await r.close(); // flushes the reports
      audit = await r.audit();
      assert.match(audit, /proxy_request/);
      assert.match(audit, /secret_accessed/);
      assert.match(audit, /\/plain\/path/, "the path is audited");
      assert.ok(!audit.includes(qmark), "the query is in the audit");
      assert.ok(!audit.includes(hmark), "a header is in the audit");
      assert.ok(!audit.includes(TOK), "the credential is in the audit");
    } finally {
      await r.close().catch(() => {});
    }
  });
});

// --- lessor run's sandbox ------------------------------------------------------------------------------

const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status === 0;
const skipSandbox = HAVE_BWRAP ? false : "bwrap is not installed or user namespaces are off";
const IS_ROOT = typeof process.getuid === "function" && process.getuid() === 0;

const runRoot = mkdtempSync(join(tmpdir(), "lessor-pa-"));
process.on("exit", () => rmSync(runRoot, { recursive: true, force: true }));

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `node -- BIN run --agent bot EXTRA -- CMD…` from `cwd` with exactly `env`. */
function lessorRun(cwd: string, env: Record<string, string>, extra: string[], cmd: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--", BIN, "run", "--agent", "bot", ...extra, "--", ...cmd], { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs the built CLI with exactly `env` (for the owner's own commands: token create). */
function cli(args: string[], env: Record<string, string>): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--", BIN, ...args], { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

const RUN_POLICY = grant("bot-granted", ["bot"], ["granted"], ["api.audit.example"]);
const GRANTED = `granted-${randomBytes(12).toString("hex")}`;

describe("lessor run's sandbox: what is never shown", { skip: skipSandbox }, () => {
  // docs/sandbox.md, "Never shown": "the daemon's socket … `$LESSOR_TOKEN_FILE` …"; docs/cli/run.md:
  // LESSOR_TOKEN_FILE "would hand it the caller's own identity at the daemon, which may be an
  // orchestrator's or an admin's". The client reads a relative LESSOR_TOKEN_FILE from the current
  // directory (src/backend/token-file.ts), and the current directory is the project, bound writable in
  // the sandbox; but protectedPaths (src/cli/run/sandbox.ts) adds the token file only when
  // isAbsolute(tokenFile), so a relative one is neither covered nor refused. A newcomer who keeps the
  // token next to the project (`LESSOR_TOKEN_FILE=.lessor-token`, as one keeps a .env) hands the agent
  // an orchestrator's (or an admin's) daemon token.
  test("a relative LESSOR_TOKEN_FILE in the project is hidden from the agent, as an absolute one is", { timeout: 90_000 }, async () => {
    const home = await makeHome({ config: `[server]\ntcp = "127.0.0.1:0"\n`, policy: RUN_POLICY });
    const { openVault } = await import("../src/config/open-vault.js");
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      await v.admin().storeSecret({ name: "granted", value: GRANTED });
    } finally {
      await v.close();
    }
    const d = await startServe(home);
    try {
      const ownerHome = join(runRoot, "tok-owner");
      const project = join(runRoot, "tok-project");
      mkdirSync(ownerHome, { recursive: true });
      mkdirSync(project, { recursive: true });
      const base = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: ownerHome, LESSOR_HOME: home, NO_COLOR: "1" };
      const made = await cli(["token", "create", "runner", "--role", "orchestrator", "--act-for", "bot"], { ...base, LESSOR_SOCKET: d.socket });
      assert.equal(made.code, 0, made.stderr);
      const token = made.stdout.trim().split("\n").pop()!.trim();
      assert.match(token, /^lsr_/, "lessor token create printed a token");
      writeFileSync(join(project, ".lessor-token"), token + "\n", { mode: 0o600 });
      const env = { ...base, LESSOR_ADDR: `${d.tcp!.host}:${d.tcp!.port}`, GRANTED: "$S:granted" };
      const probe = ["/bin/sh", "-c", 'printf "ref=%s\\n" "$GRANTED"; printf "token=[%s]\\n" "$(cat .lessor-token 2>&1)"'];

      // An absolute path: covered (the promise holds).
      const abs = await lessorRun(project, { ...env, LESSOR_TOKEN_FILE: join(project, ".lessor-token") }, [], probe);
      assert.equal(abs.code, 0, abs.stderr);
      assert.match(abs.stdout, /ref=ghp_|ref=\S+/, "the run worked through the daemon");
      assert.ok(!abs.stdout.includes(token), "an absolute LESSOR_TOKEN_FILE is covered");

      // The same file named relatively, as the daemon accepts it.
      const rel = await lessorRun(project, { ...env, LESSOR_TOKEN_FILE: ".lessor-token" }, [], probe);
      assert.equal(rel.code, 0, rel.stderr);
      assert.ok(!rel.stdout.includes(token), "the agent read the caller's daemon token through a relative LESSOR_TOKEN_FILE");
    } finally {
      await d.stop();
    }
  });

  // docs/sandbox.md, "the system": "In `/etc`, the files that hold secrets are covered: `shadow`,
  // `gshadow`, `sudoers(.d)`, `ssl/private`, …"; "the environment": "`PWD` is the sandbox's working
  // directory; a `TMPDIR` the sandbox does not show becomes `/tmp`". sandbox.test.ts checks the
  // environment as a unit and the home's stores from inside; /etc's secrets are read from inside here.
  // As root (uid 0 inside is the host's uid 0), an uncovered /etc/shadow would be readable.
  test("/etc's secret files read empty inside (unconfined, root reads them); PWD is the project and an unshown TMPDIR becomes /tmp", { timeout: 60_000 }, async () => {
    const lessorHome = join(runRoot, "etc-home", ".lessor");
    const ownerHome = join(runRoot, "etc-home");
    const project = join(runRoot, "etc-project");
    mkdirSync(project, { recursive: true });
    const { initHome } = await import("../src/config/open-vault.js");
    await initHome({ home: lessorHome, env: { LESSOR_HOME: lessorHome } });
    writeFileSync(join(lessorHome, "policy.toml"), RUN_POLICY, { mode: 0o600 });
    const hiddenTmp = join(ownerHome, "tmp");
    mkdirSync(hiddenTmp, { recursive: true });
    const files = ["/etc/shadow", "/etc/gshadow", "/etc/sudoers", ...readdirSync("/etc/ssh").filter((f) => /^ssh_host_.*_key$/.test(f)).map((f) => `/etc/ssh/${f}`)];
    const script = files.map((f) => `printf "%s=%s\\n" "${f}" "$(cat ${f} 2>/dev/null | wc -c)"`).join("; ") + '; printf "PWD=%s\\nTMPDIR=%s\\n" "$PWD" "$TMPDIR"';
    const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: ownerHome, LESSOR_HOME: lessorHome, NO_COLOR: "1", TMPDIR: hiddenTmp };
    const inside = await lessorRun(project, env, [], ["/bin/sh", "-c", script]);
    assert.equal(inside.code, 0, inside.stderr);
    const outside = await lessorRun(project, env, ["--no-sandbox"], ["/bin/sh", "-c", script]);
    assert.equal(outside.code, 0, outside.stderr);
    const sizes = (out: string): Record<string, number> => Object.fromEntries(out.split("\n").filter((l) => l.startsWith("/etc/")).map((l) => [l.split("=")[0]!, Number(l.split("=")[1])]));
    const inSizes = sizes(inside.stdout);
    const outSizes = sizes(outside.stdout);
    // The probe works: unconfined, root reads /etc/shadow.
    if (IS_ROOT) assert.ok((outSizes["/etc/shadow"] ?? 0) > 0, `unconfined, root reads /etc/shadow: ${outside.stdout}`);
    for (const f of files) assert.equal(inSizes[f], 0, `${f} is readable inside the sandbox (${inSizes[f]} bytes)`);
    assert.match(inside.stdout, new RegExp(`PWD=${project}\\n`), "PWD is the project");
    assert.match(inside.stdout, /TMPDIR=\/tmp\n/, "a TMPDIR the sandbox does not show becomes /tmp");
  });
});

describe("lessor run's output masking (values in the child's environment)", { skip: skipSandbox }, () => {
  // docs/cli/run.md, "Output masking": "replaces every occurrence of each value … It also masks, for
  // values of 6 bytes or more, their base64 (with and without padding, and URL-safe), hex (lower and
  // upper case), percent-encoded and JSON-escaped forms." cli-run.test.ts checks the value and its
  // padded base64; here every other promised form, from inside the sandbox with --network none (which
  // hands the child the value).
  test("with --network none, the value's unpadded and URL-safe base64, lower and upper hex, percent-encoded and JSON-escaped forms are all masked on a pipe", { timeout: 60_000 }, async () => {
    const lessorHome = join(runRoot, "mask-home", ".lessor");
    const ownerHome = join(runRoot, "mask-home");
    const project = join(runRoot, "mask-project");
    mkdirSync(project, { recursive: true });
    const { initHome, openVault } = await import("../src/config/open-vault.js");
    await initHome({ home: lessorHome, env: { LESSOR_HOME: lessorHome } });
    writeFileSync(join(lessorHome, "policy.toml"), RUN_POLICY, { mode: 0o600 });
    // Characters that make every form differ from the value: + / for base64, " \ for JSON, ? & = space for percent.
    const value = `pw+/"\\?&= ~${randomBytes(5).toString("hex")}>>`;
    const v = await openVault({ home: lessorHome, env: { LESSOR_HOME: lessorHome } });
    try {
      await v.admin().storeSecret({ name: "granted", value });
    } finally {
      await v.close();
    }
    const forms: Record<string, string> = {
      b64: Buffer.from(value).toString("base64"),
      b64nopad: Buffer.from(value).toString("base64").replace(/=+$/, ""),
      b64url: Buffer.from(value).toString("base64url"),
      hex: Buffer.from(value).toString("hex"),
      HEX: Buffer.from(value).toString("hex").toUpperCase(),
      pct: encodeURIComponent(value),
      json: JSON.stringify(value).slice(1, -1),
    };
    for (const [k, f] of Object.entries(forms)) assert.notEqual(f, value, `${k} differs from the value`);
    const script = `const v = process.env.GRANTED; const b = Buffer.from(v);
      const forms = { raw: v, b64: b.toString("base64"), b64nopad: b.toString("base64").replace(/=+$/, ""), b64url: b.toString("base64url"),
        hex: b.toString("hex"), HEX: b.toString("hex").toUpperCase(), pct: encodeURIComponent(v), json: JSON.stringify(v).slice(1, -1) };
      for (const [k, f] of Object.entries(forms)) process.stdout.write(k + "=<" + f + ">\\n");`;
    const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: ownerHome, LESSOR_HOME: lessorHome, NO_COLOR: "1", GRANTED: "$S:granted" };
    const r = await lessorRun(project, env, ["--network", "none"], ["/usr/bin/node", "-e", script]);
    assert.equal(r.code, 0, r.stderr);
    const lines = Object.fromEntries(r.stdout.split("\n").filter((l) => l.includes("=<")).map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
    assert.equal(lines["raw"], "<[redacted:granted]>", "the value itself is masked (the probe works)");
    const leaked = Object.entries(forms).filter(([k, f]) => (lines[k] ?? "").includes(f) || !(lines[k] ?? "").includes("[redacted:"));
    assert.deepEqual(leaked.map(([k]) => `${k}: ${lines[k]}`), [], "forms the filter let through");
  });
});

describe("lessor proxy: the printed environment", () => {
  // docs/cli/proxy.md, step 2: "A variable holding a control character or surrounding white space cannot
  // be one line of such a file and is refused." Otherwise a value's line break would add a line of the
  // owner's choosing to what `docker run --env-file` reads (an HTTPS_PROXY of someone else's, say).
  test("a referring variable with a line break, or with surrounding white space, is refused before it serves; no env line is injected, no lease left live", { timeout: 60_000 }, async () => {
    const lessorHome = join(runRoot, "px-home", ".lessor");
    const ownerHome = join(runRoot, "px-home");
    const { initHome, openVault } = await import("../src/config/open-vault.js");
    await initHome({ home: lessorHome, env: { LESSOR_HOME: lessorHome } });
    writeFileSync(join(lessorHome, "policy.toml"), RUN_POLICY, { mode: 0o600 });
    let v = await openVault({ home: lessorHome, env: { LESSOR_HOME: lessorHome } });
    try {
      await v.admin().storeSecret({ name: "granted", value: GRANTED });
    } finally {
      await v.close();
    }
    const base = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: ownerHome, LESSOR_HOME: lessorHome, NO_COLOR: "1" };
    for (const [what, value] of [
      ["a line break", "$S:granted\nHTTPS_PROXY=http://127.0.0.9:1"],
      ["a carriage return", "$S:granted\rX=1"],
      ["leading white space", " $S:granted"],
      ["trailing white space", "$S:granted "],
    ] as const) {
      const r = await new Promise<RunResult>((resolve, reject) => {
        const child = spawn(process.execPath, ["--", BIN, "proxy", "--agent", "bot", "--domain", "api.audit.example"], { env: { ...base, GRANTED: value }, stdio: ["ignore", "pipe", "pipe"] });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
        child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        // A proxy that serves stays up: stop it once it printed its environment (or after 10 s).
        const timer = setInterval(() => {
          if (/HTTPS_PROXY=/.test(stdout)) child.kill("SIGTERM");
        }, 50);
        const hard = setTimeout(() => child.kill("SIGTERM"), 10_000);
        child.on("error", reject);
        child.on("close", (code) => {
          clearInterval(timer);
          clearTimeout(hard);
          resolve({ code, stdout, stderr });
        });
      });
      assert.ok(!/HTTPS_PROXY=http:\/\/127\.0\.0\.9/.test(r.stdout), `${what}: a line was injected into the printed environment`);
      assert.equal(r.stdout, "", `${what}: nothing printed (it did not serve): ${JSON.stringify(r.stdout.slice(0, 200))}`);
      assert.notEqual(r.code, 0, `${what}: refused`);
      assert.ok(!r.stderr.includes(GRANTED) && !r.stdout.includes(GRANTED), `${what}: the value is in the output`);
    }
    v = await openVault({ home: lessorHome, env: { LESSOR_HOME: lessorHome } });
    try {
      const live = (await v.admin().listLeases({ agent: "bot" })).filter((l) => l.revokedAt === null && l.expiresAt > Date.now());
      assert.deepEqual(live.map((l) => l.id), [], "no lease is left live");
    } finally {
      await v.close();
    }
  });
});
