/**
 * The parts of `[proxy]` in lessor.toml that shape upstream connections, turned into what the proxy
 * takes: `hosts` as a resolver, `upstream_ca` as PEM text. Shared by lessor run, lessor proxy and
 * lessor mcp (each starts a proxy of its own).
 */
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { VaultError } from "../base/errors.js";
import { systemResolver, type Resolver } from "./guard.js";

/** A resolver that answers `[proxy] hosts` names from the table and the rest from the system. */
export function resolverWith(hosts: Readonly<Record<string, string>>): Resolver {
  return async (host) => {
    const fixed = hosts[host];
    if (fixed !== undefined) return [{ address: fixed, family: fixed.includes(":") ? 6 : 4 }];
    return systemResolver(host);
  };
}

/** The PEM text of `[proxy] upstream_ca` (`~/` is the owner's home), read now; a missing file is an error naming it. */
export function readUpstreamCa(path: string | null): string | undefined {
  if (path === null) return undefined;
  let p = path;
  if (p === "~" || p.startsWith("~/")) {
    const home = process.env["HOME"] || homedir();
    if (!home) throw new VaultError("config_invalid", `[proxy] upstream_ca: ${path} starts with ~/ and HOME is not set`);
    p = join(home, p.slice(1));
  }
  const abs = isAbsolute(p) ? p : resolve(p);
  try {
    return readFileSync(abs, "utf8");
  } catch (e) {
    throw new VaultError("config_invalid", `[proxy] upstream_ca: cannot read ${abs} (${(e as NodeJS.ErrnoException).code ?? "error"}); fix the path in lessor.toml`);
  }
}
