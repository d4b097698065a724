/**
 * What the proxy tests share: a resolver that answers from a fixed table (no test ever does a real
 * lookup), and the instrumented connect step that fails the test if the proxy ever tries to reach
 * anything but loopback (so a refused target is proven never to be connected to), a reader of
 * raw answers, CONNECT tunnels with TLS inside, a raw HTTP/1.1 request through one, and an HTTP/1.1
 * upstream over TLS that hands the test each request head.
 */
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import { createConnection, type Socket } from "node:net";
import * as tls from "node:tls";
import type { TLSSocket } from "node:tls";
import type { ConnectTo, Resolver } from "../src/proxy/guard.js";

/** Resolves names from `table` (IPv4 addresses); anything else fails as ENOTFOUND. */
export function tableResolver(table: Readonly<Record<string, string>>): Resolver {
  return async (host) => {
    const a = table[host];
    if (a === undefined) throw Object.assign(new Error("not in the test's table"), { code: "ENOTFOUND" });
    return [{ address: a, family: 4 }];
  };
}

/** A connect step that records each target in `log` and fails the test for anything but 127.0.0.1. */
export function loopbackOnly(log: ConnectTo[] = []): (to: ConnectTo) => Socket {
  return (to) => {
    log.push(to);
    if (to.host !== "127.0.0.1") assert.fail(`the proxy tried to connect to ${to.host}`);
    return createConnection({ host: to.host, port: to.port, family: to.family });
  };
}

/** Everything `s` delivers until it closes, ends or errors, or `ms` pass (then it is destroyed), as latin1 text. */
export function readAll(s: Socket | TLSSocket, ms: number): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const done = (): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(Buffer.concat(chunks).toString("latin1"));
    };
    const timer = setTimeout(done, ms);
    s.on("data", (d: Buffer) => chunks.push(d));
    s.on("error", done);
    s.on("close", done);
    s.on("end", done);
  });
}

/** Resolves as `p` does, or fails the test after `ms`: a hang is a failure, not a stuck run. */
export function inTime<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

/** Where a test's proxy listens: a port on 127.0.0.1, or a Unix socket. */
export type ProxyAt = number | { port: number } | { path: string };

/**
 * Writes `CONNECT authority` (with a Proxy-Authorization of `proxyAuth` if given) to the proxy at
 * `proxy`; resolves with the socket (paused), the proxy's answer head and any bytes after it, or with
 * what came before the socket closed. Whatever the proxy answers: the caller checks the head.
 */
export function connectRaw(proxy: ProxyAt, authority: string, proxyAuth?: string): Promise<{ raw: Socket; head: string; rest: Buffer }> {
  const raw = typeof proxy === "number" ? createConnection(proxy, "127.0.0.1") : "path" in proxy ? createConnection({ path: proxy.path }) : createConnection({ port: proxy.port, host: "127.0.0.1" });
  raw.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${proxyAuth ? `Proxy-Authorization: ${proxyAuth}\r\n` : ""}\r\n`);
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      raw.off("data", onData);
      raw.pause();
      resolve({ raw, head: buf.subarray(0, end).toString("latin1"), rest: buf.subarray(end + 4) });
    };
    raw.on("data", onData);
    raw.once("error", reject);
    raw.once("close", () => resolve({ raw, head: buf.toString("latin1"), rest: Buffer.alloc(0) }));
  });
}

/**
 * connectRaw to `host:upPort`; the test fails unless the proxy answers 200. The socket, resumed, past
 * the answer; its errors after that are the caller's to see (or not): they are swallowed here.
 */
export async function connectTunnel(proxy: ProxyAt, host: string, upPort: number, proxyAuth?: string): Promise<Socket> {
  const { raw, head } = await connectRaw(proxy, `${host}:${upPort}`, proxyAuth);
  raw.on("error", () => {});
  assert.match(head, /^HTTP\/1\.1 200 /, `CONNECT ${host}: ${head}`);
  raw.resume();
  return raw;
}

/**
 * TLS inside a tunnel, naming `servername` and offering `alpn`. With `ca` (the proxy's session CA) the
 * proxy's certificate must verify against it; without, the agent is the attacker and trusts any
 * certificate (the client's trust in the session CA is tested elsewhere, test/proxy-ca.test.ts).
 */
export async function tlsIn(raw: Socket, servername: string, alpn = "http/1.1", ca?: string): Promise<TLSSocket> {
  const s = tls.connect({ socket: raw, servername, ALPNProtocols: [alpn], ...(ca === undefined ? { rejectUnauthorized: false } : { ca }) });
  s.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    s.once("secureConnect", resolve);
    s.once("error", reject);
    s.once("close", () => reject(new Error("tunnel closed during the handshake")));
  });
  return s;
}

/** connectTunnel, then TLS inside it (tlsIn, naming `sni`: `host` unless given): a TLS socket to `host` through the proxy. */
export async function openTunnel(proxy: ProxyAt, host: string, upPort: number, opts: { proxyAuth?: string; alpn?: string; sni?: string; ca?: string } = {}): Promise<TLSSocket> {
  return tlsIn(await connectTunnel(proxy, host, upPort, opts.proxyAuth), opts.sni ?? host, opts.alpn, opts.ca);
}

/**
 * Opens a TLS tunnel to `host:upPort` through the proxy on 127.0.0.1:`proxyPort` (openTunnel: its
 * answer must be 200, the session CA is not checked: the tests read what the proxy sends), sends
 * `GET path` with `Authorization: Bearer <bearer>` and `Connection: close`, and returns the raw answer.
 */
export async function getThroughTunnel(proxyPort: number, host: string, upPort: number, path: string, bearer: string): Promise<string> {
  const s = await openTunnel(proxyPort, host, upPort);
  s.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${bearer}\r\nConnection: close\r\n\r\n`);
  return readAll(s, 3000);
}

/**
 * One HTTP/2 GET of `path` on `host` over `s` (TLS, h2 negotiated), with `headers` added: what came
 * back, in order, as JSON: the response head and the body's chunks as latin1 text, and with
 * `allHeads` informational heads and trailers too. After `ms`, if given, it resolves with what came so
 * far, marked `(no answer in ms ms)`. The session is destroyed after.
 */
export async function h2Get(s: TLSSocket, host: string, path: string, headers: http2.OutgoingHttpHeaders, opts: { ms?: number; allHeads?: boolean } = {}): Promise<string> {
  const session = http2.connect(`https://${host}`, { createConnection: () => s });
  session.on("error", () => {});
  try {
    return await new Promise<string>((resolve, reject) => {
      const got: unknown[] = [];
      const req = session.request({ ":method": "GET", ":path": path, ...headers });
      if (opts.ms !== undefined) setTimeout(() => resolve(`(no answer in ${opts.ms} ms) ${JSON.stringify(got)}`), opts.ms);
      if (opts.allHeads) req.on("headers", (h) => got.push(h));
      req.on("response", (h) => got.push(h));
      if (opts.allHeads) req.on("trailers", (t) => got.push(t));
      req.on("data", (d: Buffer) => got.push(d.toString("latin1")));
      req.on("end", () => resolve(JSON.stringify(got)));
      req.on("error", reject);
      req.end();
    });
  } finally {
    session.destroy();
  }
}

/**
 * An HTTP/1.1 upstream over TLS (SNI certificates from `ca`, ALPN http/1.1), not yet listening:
 * `onHead` gets each request head (to the blank line, latin1) and the socket to answer on; what
 * follows a head is kept for the next.
 */
export function headsServer(ca: { sniCallback: tls.TlsOptions["SNICallback"] }, onHead: (head: string, s: TLSSocket) => void): tls.Server {
  return tls.createServer({ SNICallback: ca.sniCallback, ALPNProtocols: ["http/1.1"] }, (s) => {
    s.on("error", () => {});
    let buf = "";
    s.on("data", (d: Buffer) => {
      buf += d.toString("latin1");
      for (let end = buf.indexOf("\r\n\r\n"); end >= 0; end = buf.indexOf("\r\n\r\n")) {
        const head = buf.slice(0, end);
        buf = buf.slice(end + 4);
        onHead(head, s);
      }
    });
  });
}

/** Closes test upstreams: an HTTP/1.1 one (its keep-alive connections first), then the others. */
export async function closeUpstreams(h1: { closeAllConnections(): void; close(cb: () => void): unknown }, ...others: { close(cb: () => void): unknown }[]): Promise<void> {
  h1.closeAllConnections();
  for (const s of [h1, ...others]) await new Promise<void>((r) => s.close(() => r()));
}
