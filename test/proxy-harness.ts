/**
 * What the proxy tests share: a resolver that answers from a fixed table (no test ever does a real
 * lookup), and the instrumented connect step that fails the test if the proxy ever tries to reach
 * anything but loopback (so a refused target is proven never to be connected to), and a reader of
 * raw answers.
 */
import assert from "node:assert/strict";
import { createConnection, type Socket } from "node:net";
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
