/**
 * What the proxy tests share: a resolver that answers from a fixed table (no test ever does a real
 * lookup), and the instrumented connect step that fails the test if the proxy ever tries to reach
 * anything but loopback (so a refused target is proven never to be connected to).
 */
import assert from "node:assert/strict";
import { createConnection, type Socket } from "node:net";
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
