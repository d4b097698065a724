/**
 * The injecting proxy attacked on paths earlier rounds left alone:
 * - a hostile agent splitting a covered upstream's echo of the credential across several responses
 *   with a standard `Range` header, so that no single response holds the whole value the scrubber
 *   looks for (an object store answering byte ranges of what was written through a `body = true`
 *   placeholder rule): the proxy removes Range and If-Range toward covered hosts and refuses a 206;
 * - injection rules against an agent that sends its own `Authorization` / rule header (twice, in two
 *   cases), names them in `Connection:` to have them stripped, or sends `Proxy-Authorization` inside
 *   the tunnel (HTTP/1.1 and HTTP/2 clients);
 * - response paths that may skip the streaming scrubber: HTTP/1.1 chunked trailers (`x-echo`,
 *   `grpc-message`) to an HTTP/1.1 client and, translated, to an HTTP/2 client; an HTTP/2 upstream
 *   trying PUSH_PROMISE with the credential.
 *
 * In process: ForwardProxy + LeaseEgress over a real vault on a SQLite file, a table resolver and the
 * instrumented `loopbackOnly` connect step. Every upstream is a loopback server this file creates.
 */
import { randomBytes } from "node:crypto";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import type { TLSSocket } from "node:tls";
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { inTime, loopbackOnly, openTunnel, readAll, tableResolver } from "./proxy-harness.js";

const H1HOST = "h1.pa4.example"; // HTTPS upstream, HTTP/1.1 only
const H2HOST = "h2.pa4.example"; // HTTPS upstream, HTTP/2 only
// Lower-case hex after a known prefix, as many API keys are.
const CANARY = "sk-" + randomBytes(20).toString("hex");
const KEYVAL = "xk-" + randomBytes(20).toString("hex");
const AGENT_OWN = "agent-own-" + randomBytes(8).toString("hex");

// --- upstreams on 127.0.0.1 --------------------------------------------------------------------------

const upCa = LocalCa.create({ permitted: [H1HOST, H2HOST] });

/** What each upstream request looked like: protocol, path, and its raw header pairs. */
interface Seen {
  proto: "h1" | "h2";
  method: string;
  path: string;
  raw: [string, string][];
}
const seen: Seen[] = [];
/** A tiny object store (both upstreams share it): PUT stores the body, GET answers it, with byte ranges. */
const objects = new Map<string, Buffer>();
/** What happened when the h2 upstream tried to push. */
const pushes: string[] = [];

const pairs = (raw: string[]): [string, string][] => {
  const out: [string, string][] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) out.push([raw[i]!, raw[i + 1]!]);
  return out;
};

/** `Range: bytes=a-b` (one range, `b` optional) on `len` bytes, as RFC 9110 §14: [start, end] inclusive, or null. */
function oneRange(h: string | undefined, len: number): [number, number] | null {
  const m = /^bytes=(\d+)-(\d*)$/.exec(h ?? "");
  if (!m) return null;
  const a = Number(m[1]);
  const b = m[2] === "" ? len - 1 : Math.min(Number(m[2]), len - 1);
  return a <= b ? [a, b] : null;
}

type Req = { method?: string; url?: string; headers: IncomingHttpHeaders; rawHeaders: string[]; on: (e: string, f: (d?: Buffer) => void) => unknown };
type Res = {
  setHeader(n: string, v: string | number): unknown;
  writeHead(s: number, h?: Record<string, string | number>): unknown;
  end(b?: string | Buffer): unknown;
  write(b: string | Buffer): unknown;
  addTrailers(t: Record<string, string>): void;
};

/** The shared answer of both upstreams (node's HTTP/1.1 API and the HTTP/2 compatibility API). */
function answer(proto: "h1" | "h2", req: Req, res: Res): void {
  const path = req.url ?? "/";
  seen.push({ proto, method: req.method ?? "", path, raw: pairs(req.rawHeaders).filter(([k]) => !k.startsWith(":")) });
  const chunks: Buffer[] = [];
  req.on("data", (d) => chunks.push(d!));
  req.on("end", () => {
    const auth = String(req.headers.authorization ?? "").replace(/^Bearer /, "");
    if (path.startsWith("/ok/obj/")) {
      if (req.method === "PUT") {
        objects.set(path, Buffer.concat(chunks));
        res.writeHead(201, { "content-length": 0 });
        res.end();
        return;
      }
      const body = objects.get(path);
      if (body === undefined) {
        res.writeHead(404, { "content-length": 0 });
        res.end();
        return;
      }
      // `x-partial-anyway: a-b`: a 206 of that span whatever the request asked (an upstream that
      // answers partially unasked).
      const anyway = req.headers["x-partial-anyway"] as string | undefined;
      const r = oneRange(anyway !== undefined ? `bytes=${anyway}` : (req.headers.range as string | undefined), body.length);
      if (r === null) {
        res.writeHead(200, { "content-type": "text/plain", "accept-ranges": "bytes", "content-length": body.length });
        res.end(body);
        return;
      }
      const part = body.subarray(r[0], r[1] + 1);
      res.writeHead(206, { "content-type": "text/plain", "content-range": `bytes ${r[0]}-${r[1]}/${body.length}`, "content-length": part.length });
      res.end(part);
      return;
    }
    if (path === "/ok/trailers") {
      // A gRPC-over-HTTP/1.1-ish answer: chunked, with the credential in the trailers.
      res.setHeader("content-type", "application/grpc");
      res.setHeader("trailer", "grpc-status, grpc-message, x-echo");
      res.write("data");
      res.addTrailers({ "grpc-status": "16", "grpc-message": `bad token ${auth}`, "x-echo": auth });
      res.end();
      return;
    }
    res.writeHead(200, { "content-type": "text/plain", "content-length": 2 });
    res.end("ok");
  });
}

const upH1 = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => answer("h1", req, res as unknown as Res));
upH1.on("tlsClientError", () => {});
const upH2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
upH2.on("request", (req, res) => {
  if (req.url === "/ok/push") {
    const auth = String(req.headers.authorization ?? "").replace(/^Bearer /, "");
    // A hostile (or merely chatty) upstream pushes a resource that carries the credential.
    try {
      res.createPushResponse({ ":path": `/pushed?k=${auth}`, "x-echo": auth }, (err, pushed) => {
        if (err) {
          pushes.push(`refused: ${(err as { code?: string }).code ?? err.message}`);
          return;
        }
        pushes.push("sent");
        pushed.setHeader("x-echo", auth);
        pushed.end(`pushed ${auth}`);
      });
    } catch (e) {
      pushes.push(`threw: ${(e as { code?: string }).code ?? String(e)}`);
    }
  }
  answer("h2", req as unknown as Req, res as unknown as Res);
});
upH2.on("sessionError", () => {});

await new Promise<void>((r) => upH1.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => upH2.listen(0, "127.0.0.1", r));
const h1Port = (upH1.address() as AddressInfo).port;
const h2Port = (upH2.address() as AddressInfo).port;
const portOf = (host: string): number => (host === H1HOST ? h1Port : h2Port);

after(async () => {
  upH1.closeAllConnections?.();
  await new Promise<void>((r) => upH1.close(() => r()));
  await new Promise<void>((r) => upH2.close(() => r()));
});

// --- the proxy ---------------------------------------------------------------------------------------

interface Rig {
  port: number;
  /** Placeholders by secret name. */
  ph: Record<string, string>;
  connects: ConnectTo[];
  warns: string[];
  close(): Promise<void>;
}

/** A proxy lending `secrets` (name → [value, rule]) for both hosts, paths under /ok/ only. */
async function rig(secrets: Record<string, [string, InjectionRule]>): Promise<Rig> {
  const names = Object.keys(secrets);
  const { vault } = await makeVault({ policy: grant("api", ["bot"], names, [H1HOST, H2HOST], 'paths = ["/ok/"]') });
  const admin = vault.admin();
  const creds: ProxyCredential[] = [];
  const ph: Record<string, string> = {};
  for (const [name, [value, rule]] of Object.entries(secrets)) {
    await admin.storeSecret({ name, value });
    const lease = await admin.requestLease({ agent: "bot", secret: name, domains: [H1HOST, H2HOST] });
    ph[name] = makePlaceholder(value);
    creds.push({ lease, secret: `global/${name}`, placeholder: ph[name]!, value, rule });
  }
  const warns: string[] = [];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: (l) => warns.push(l) });
  const guard = new SsrfGuard({ ports: [h1Port, h2Port], allow: ["127.0.0.0/8"], resolve: tableResolver({ [H1HOST]: "127.0.0.1", [H2HOST]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [H1HOST, H2HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  return {
    port,
    ph,
    connects,
    warns,
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

// --- the agent's clients -----------------------------------------------------------------------------

/** A CONNECT tunnel to `host` through the proxy (its answer must be 200), TLS inside it offering `alpn` (the agent trusts anything). */
function tunnel(r: Rig, host: string, alpn: string): Promise<TLSSocket> {
  return openTunnel(r.port, host, portOf(host), { alpn });
}

/** One raw HTTP/1.1 exchange (the request text as given) in a fresh tunnel to H1HOST; the answer as latin1. */
async function h1(r: Rig, request: string, ms = 3000): Promise<string> {
  const s = await tunnel(r, H1HOST, "http/1.1");
  s.write(request);
  return readAll(s, ms);
}

/** The body of a raw HTTP/1.1 answer with a Content-Length. */
function bodyOf(raw: string): string {
  const i = raw.indexOf("\r\n\r\n");
  return i < 0 ? "" : raw.slice(i + 4);
}

/** An HTTP/2 session in a fresh tunnel to `host`; pushed streams are recorded in `pushed`. */
async function h2session(r: Rig, host: string, pushed: string[] = []): Promise<http2.ClientHttp2Session> {
  const s = await tunnel(r, host, "h2");
  const session = http2.connect(`https://${host}`, { createConnection: () => s });
  session.on("error", () => {});
  session.on("stream", (st, h) => {
    pushed.push(JSON.stringify(h));
    st.on("data", (d: Buffer) => pushed.push(d.toString("latin1")));
    st.on("error", () => {});
  });
  return session;
}

/** One HTTP/2 request: its status, everything the agent got (headers, informational heads, trailers, data) as JSON, and the body. */
function h2req(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: string): Promise<{ status: number; all: string; body: string }> {
  return new Promise((resolve, reject) => {
    const got: unknown[] = [];
    let status = 0;
    let data = "";
    const st = session.request({ ":method": "GET", ...headers });
    st.on("headers", (h) => got.push(h));
    st.on("response", (h) => {
      status = Number(h[":status"]);
      got.push(h);
    });
    st.on("trailers", (t) => got.push(t));
    st.on("data", (d: Buffer) => {
      data += d.toString("latin1");
      got.push(d.toString("latin1"));
    });
    st.on("end", () => resolve({ status, all: JSON.stringify(got), body: data }));
    st.on("error", reject);
    st.end(body);
  });
}

// =====================================================================================================

describe("scrubbing per response: an echo split across responses", () => {
  test(
    "a hostile agent cannot read the injected credential back in pieces with Range requests: Range and If-Range are removed toward covered hosts, each answer comes whole and masked (HTTP/1.1 and HTTP/2)",
    { timeout: 30_000 },
    async () => {
      // A placeholder rule with body = true (docs/proxy.md): the agent may put the placeholder in a
      // request body to a covered host, and the proxy swaps in the value. The covered host is an object
      // store (S3, GCS, WebDAV, a paste or notes API...): what the agent writes it can read back, and
      // the docs promise the echo comes back as the placeholder. Two ranged reads, each holding half
      // the value, would slip past a scrubber that reads one answer at a time.
      const r = await rig({ key: [CANARY, { mode: "placeholder", body: true }] });
      const ph = r.ph["key"]!;
      try {
        const note = `note=${ph};`;
        const cut = 5 + Math.floor(CANARY.length / 2);
        // HTTP/1.1: PUT the note (the proxy puts the value in it), then GET it whole, then in two ranges.
        const put = await h1(r, `PUT /ok/obj/a HTTP/1.1\r\nHost: ${H1HOST}\r\nContent-Type: text/plain\r\nContent-Length: ${note.length}\r\nConnection: close\r\n\r\n${note}`);
        assert.match(put, /^HTTP\/1\.1 201 /, put.slice(0, 200));
        assert.equal(objects.get("/ok/obj/a")?.toString(), `note=${CANARY};`, "the proxy injected the value into the stored body (as the rule says)");
        const get = (range?: string): Promise<string> =>
          h1(r, `GET /ok/obj/a HTTP/1.1\r\nHost: ${H1HOST}\r\n${range ? `Range: ${range}\r\nIf-Range: "x"\r\n` : ""}Connection: close\r\n\r\n`);
        assert.equal(bodyOf(await get()), note, "read whole, the echo is masked");
        seen.length = 0;
        for (const range of [`bytes=0-${cut - 1}`, `bytes=${cut}-`, "bytes=0-9,10-"]) {
          const part = await get(range);
          assert.match(part, /^HTTP\/1\.1 200 /, `${range}: ${part.slice(0, 200)}`);
          assert.equal(bodyOf(part), note, `${range}: the whole answer, masked`);
        }

        // HTTP/2 (client and upstream): the same with ranged streams on one session.
        const session = await h2session(r, H2HOST);
        try {
          const put2 = await h2req(session, { ":method": "PUT", ":path": "/ok/obj/b", "content-type": "text/plain", "content-length": note.length }, note);
          assert.equal(put2.status, 201, put2.all);
          assert.equal((await h2req(session, { ":path": "/ok/obj/b" })).body, note, "read whole over h2, the echo is masked");
          for (const range of [`bytes=0-${cut - 1}`, `bytes=${cut}-`]) {
            const q = await h2req(session, { ":path": "/ok/obj/b", range, "if-range": '"x"' });
            assert.equal(q.status, 200, q.all);
            assert.equal(q.body, note, `h2 ${range}: the whole answer, masked`);
            assert.ok(!q.all.includes(CANARY));
          }
        } finally {
          session.destroy();
        }
        const ranged = seen.filter((x) => x.raw.some(([k]) => /^(range|if-range)$/i.test(k)));
        assert.deepEqual(ranged, [], "no Range or If-Range reached the upstream");
        assert.ok(!r.warns.join("\n").includes(CANARY), "no warning names the value");
        assert.ok(r.connects.every((c) => c.host === "127.0.0.1"));
      } finally {
        await r.close();
      }
    },
  );

  test("a partial answer (206) a covered upstream sends unasked is refused with 502, none of it relayed (HTTP/1.1 and HTTP/2)", { timeout: 30_000 }, async () => {
    const r = await rig({ key: [CANARY, { mode: "placeholder", body: true }] });
    try {
      objects.set("/ok/obj/always-partial", Buffer.from(`note=${CANARY};`));
      const got = await h1(r, `GET /ok/obj/always-partial HTTP/1.1\r\nHost: ${H1HOST}\r\nX-Partial-Anyway: 0-9\r\nConnection: close\r\n\r\n`);
      assert.match(got, /^HTTP\/1\.1 502 /, got.slice(0, 200));
      assert.match(got, /part of a resource \(206\)/);
      assert.ok(!got.includes("note="), "none of the partial body is relayed");
      const session = await h2session(r, H2HOST);
      try {
        const q = await h2req(session, { ":path": "/ok/obj/always-partial", "x-partial-anyway": "0-9" });
        assert.equal(q.status, 502, q.all);
        assert.ok(!q.body.includes("note="), "none of the partial body is relayed over h2");
      } finally {
        session.destroy();
      }
    } finally {
      await r.close();
    }
  });
});

describe("injection rules against the agent's own headers", () => {
  test("held: an agent's own Authorization and rule header (twice, two cases), Connection naming them, or Proxy-Authorization inside the tunnel: the upstream gets exactly one of each, the injected value (HTTP/1.1 and HTTP/2)", { timeout: 30_000 }, async () => {
    const r = await rig({ bear: [CANARY, { mode: "bearer" }], hk: [KEYVAL, { mode: "header", header: "x-api-key" }] });
    try {
      /** Checks the upstream's view of one request (found by path): one authorization, one x-api-key, both injected; no proxy-authorization, no agent value. */
      const check = (path: string, what: string): void => {
        const s = seen.filter((x) => x.path === path);
        assert.equal(s.length, 1, `${what}: one request upstream (got ${s.length})`);
        const raw = s[0]!.raw;
        const all = (n: string): string[] => raw.filter(([k]) => k.toLowerCase() === n).map(([, v]) => v);
        assert.deepEqual(all("authorization"), [`Bearer ${CANARY}`], `${what}: exactly the injected Authorization`);
        assert.deepEqual(all("x-api-key"), [KEYVAL], `${what}: exactly the injected x-api-key`);
        assert.deepEqual(all("proxy-authorization"), [], `${what}: no Proxy-Authorization upstream`);
        assert.ok(!JSON.stringify(raw).includes(AGENT_OWN), `${what}: none of the agent's own values upstream`);
      };
      const go = async (path: string, extra: string): Promise<void> => {
        const a = await h1(r, `GET ${path} HTTP/1.1\r\nHost: ${H1HOST}\r\n${extra}Connection: close\r\n\r\n`);
        assert.match(a, /^HTTP\/1\.1 200 /, `${path}: ${a.slice(0, 200)}`);
      };
      await go("/ok/dup", `Authorization: Bearer ${AGENT_OWN}\r\nauthorization: Basic ${Buffer.from(`u:${AGENT_OWN}`).toString("base64")}\r\nX-Api-Key: ${AGENT_OWN}\r\nx-api-key: ${AGENT_OWN}2\r\nX-API-KEY: ${AGENT_OWN}3\r\n`);
      check("/ok/dup", "HTTP/1.1 duplicates");
      // Connection: authorization, x-api-key — the agent asks the proxy to strip what it injects.
      const ka = await h1(r, `GET /ok/conn HTTP/1.1\r\nHost: ${H1HOST}\r\nAuthorization: Bearer ${AGENT_OWN}\r\nConnection: authorization, x-api-key, close\r\n\r\n`);
      assert.match(ka, /^HTTP\/1\.1 200 /, ka.slice(0, 200));
      check("/ok/conn", "HTTP/1.1 Connection: authorization");
      await go("/ok/pa", `Proxy-Authorization: Basic ${Buffer.from(`lessor:${AGENT_OWN}`).toString("base64")}\r\nProxy-Connection: keep-alive\r\n`);
      check("/ok/pa", "HTTP/1.1 Proxy-Authorization inside the tunnel");

      for (const host of [H2HOST, H1HOST]) {
        const session = await h2session(r, host);
        try {
          const path = `/ok/h2-${host === H2HOST ? "h2" : "h1"}`;
          const a = await h2req(session, {
            ":path": path,
            authorization: `Bearer ${AGENT_OWN}`,
            "x-api-key": [AGENT_OWN, `${AGENT_OWN}2`],
            "proxy-authorization": `Basic ${Buffer.from(`lessor:${AGENT_OWN}`).toString("base64")}`,
          });
          assert.equal(a.status, 200, a.all);
          check(path, `HTTP/2 client to ${host === H2HOST ? "an h2" : "an HTTP/1.1"} upstream`);
        } finally {
          session.destroy();
        }
      }
    } finally {
      await r.close();
    }
  });
});

describe("response paths beside the body scrubber", () => {
  test("held: HTTP/1.1 chunked trailers carrying the credential (grpc-message, x-echo) never reach the agent unmasked: dropped for an HTTP/1.1 client, masked for an HTTP/2 one", { timeout: 30_000 }, async () => {
    const r = await rig({ bear: [CANARY, { mode: "bearer" }] });
    try {
      const a = await h1(r, `GET /ok/trailers HTTP/1.1\r\nHost: ${H1HOST}\r\nTE: trailers\r\nConnection: close\r\n\r\n`);
      assert.match(a, /^HTTP\/1\.1 200 /, a.slice(0, 200));
      assert.ok(seen.some((s) => s.path === "/ok/trailers" && s.raw.some(([k, v]) => k.toLowerCase() === "authorization" && v === `Bearer ${CANARY}`)), "the upstream got the credential");
      assert.ok(!a.includes(CANARY), `the credential in an HTTP/1.1 answer: ${a.slice(0, 400)}`);
      const session = await h2session(r, H1HOST);
      try {
        const b = await h2req(session, { ":path": "/ok/trailers", te: "trailers" });
        assert.equal(b.status, 200, b.all);
        assert.match(b.all, /grpc-message/, `the trailers were relayed to the h2 client: ${b.all}`);
        assert.ok(!b.all.includes(CANARY), `the credential in an h2 trailer: ${b.all}`);
        assert.ok(b.all.includes(r.ph["bear"]!), "the trailer carries the placeholder instead");
      } finally {
        session.destroy();
      }
    } finally {
      await r.close();
    }
  });

  test("held: an HTTP/2 upstream cannot PUSH_PROMISE a resource carrying the credential: push is off on the proxy's upstream session, and nothing is pushed to the agent", { timeout: 30_000 }, async () => {
    const r = await rig({ bear: [CANARY, { mode: "bearer" }] });
    const pushed: string[] = [];
    const session = await h2session(r, H2HOST, pushed);
    try {
      pushes.length = 0;
      const a = await inTime(h2req(session, { ":path": "/ok/push" }), 10_000, "the pushing stream");
      assert.equal(a.status, 200, a.all);
      assert.ok(!a.all.includes(CANARY), a.all);
      await new Promise((res) => setTimeout(res, 200));
      assert.equal(pushes.length, 1, "the upstream tried to push");
      assert.match(pushes[0]!, /refused|threw/, `the upstream's push went through: ${pushes[0]}`);
      assert.deepEqual(pushed, [], "the agent got no pushed stream");
    } finally {
      session.destroy();
      await r.close();
    }
  });
});
