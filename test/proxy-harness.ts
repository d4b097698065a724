/**
 * What the proxy tests share: a resolver that answers from a fixed table (no test ever does a real
 * lookup), and the instrumented connect step that fails the test if the proxy ever tries to reach
 * anything but loopback (so a refused target is proven never to be connected to), a reader of
 * raw answers, and a raw HTTP/1.1 request through a CONNECT tunnel.
 */
import assert from "node:assert/strict";
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

/**
 * Opens a CONNECT tunnel to `host:upPort` through the proxy on 127.0.0.1:`proxyPort` (its answer must be
 * 200), TLS inside it (the session CA is not checked: the tests read what the proxy sends), sends
 * `GET path` with `Authorization: Bearer <bearer>` and `Connection: close`, and returns the raw answer.
 */
export async function getThroughTunnel(proxyPort: number, host: string, upPort: number, path: string, bearer: string): Promise<string> {
  const raw = createConnection(proxyPort, "127.0.0.1");
  raw.write(`CONNECT ${host}:${upPort} HTTP/1.1\r\nHost: ${host}:${upPort}\r\n\r\n`);
  await new Promise<void>((resolve, reject) => {
    let got = "";
    const onData = (d: Buffer): void => {
      got += d.toString("latin1");
      if (!got.includes("\r\n\r\n")) return;
      raw.off("data", onData);
      raw.pause();
      if (!/^HTTP\/1\.1 200 /.test(got)) reject(new Error(`the proxy refused the tunnel: ${got.split("\r\n")[0]}`));
      else resolve();
    };
    raw.on("data", onData);
    raw.once("error", reject);
  });
  raw.resume();
  const s = tls.connect({ socket: raw, servername: host, ALPNProtocols: ["http/1.1"], rejectUnauthorized: false });
  await new Promise<void>((resolve, reject) => {
    s.once("secureConnect", resolve);
    s.once("error", reject);
  });
  s.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${bearer}\r\nConnection: close\r\n\r\n`);
  return readAll(s, 3000);
}
