/**
 * The private directory of a proxy that takes no token: `lessor run`'s (its proxy's socket, whose only
 * client is the sandbox's bridge, the session CA files and the vault session's socket, shown in the
 * run's own sandbox at /run/lessor and nowhere else) and an MCP session's (src/mcp/session-proxy.ts,
 * whose only client is that process's http_request).
 *
 * It is made under `/tmp`, never under `$TMPDIR`. Every sandbox lessor makes has a fresh, empty `/tmp`
 * (src/sandbox/layout.ts: it is scratch, and a bind of `/tmp` itself is refused), so no other run's
 * agent can see a directory there. `$TMPDIR` can be anywhere, among them a place a sandbox shows: the
 * project (`TMPDIR=$PWD/.tmp`), a `[run] read` path, `/opt`. A Unix socket works across network
 * namespaces and on a read-only mount, and every run's agent has the owner's uid, so the 0700 mode
 * stops nobody: a second agent working in the same project would find the first run's directory
 * there and have the first agent's credentials added to its own requests (and, with
 * `--vault-session`, talk to the vault as the first agent); an agent in a run's sandbox likewise
 * with the credentials of a `lessor mcp` session on the same machine.
 *
 * Where `/tmp` cannot be used (not there, not writable), the directory goes to `$XDG_RUNTIME_DIR`
 * (hidden from every sandbox: src/cli/run/sandbox.ts) or, last, `$TMPDIR`; the sandbox then refuses
 * to start if its own layout would show it (src/cli/run/sandbox.ts), which is what a layout showing
 * `$TMPDIR` would show other runs too.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { isAbsolute, join } from "node:path";

/** Makes a fresh 0700 directory `PREFIX…` where no sandbox of a run can see it; see the module comment. */
export function makePrivateDir(prefix: string, env: NodeJS.ProcessEnv = process.env): string {
  const runtime = env["XDG_RUNTIME_DIR"];
  const bases = ["/tmp", ...(runtime !== undefined && isAbsolute(runtime) ? [runtime] : [])];
  for (const base of bases) {
    try {
      return mkdtempSync(join(base, prefix)); // mode 0700
    } catch {
      // not there or not writable: the next
    }
  }
  return mkdtempSync(join(tmpdir(), prefix));
}
