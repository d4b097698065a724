/**
 * The bridge between the sandbox's empty network namespace and lessor's proxy. The sandbox has only
 * a loopback interface, so nothing inside can reach the network; the proxy listens on a Unix socket
 * in a private directory that the sandbox shows read-only. Inside, a small Node program (this file's
 * {@link BRIDGE_SOURCE}, run with `node -e`) listens on 127.0.0.1:{@link BRIDGE_PORT}, forwards each
 * connection to that socket, and starts the agent's command as its child: the agent's
 * `HTTPS_PROXY=http://127.0.0.1:3128` then leads to lessor's proxy and nowhere else.
 *
 * The bridge holds nothing secret (the agent could connect to the socket itself): it only moves bytes.
 * It passes signals on to the command and exits with the command's code (128 + N for signal N).
 */

/** The port the bridge listens on inside the sandbox (its own network namespace: always free). */
export const BRIDGE_PORT = 3128;

/** Where the run's proxy directory (socket, CA certificate) appears inside the sandbox. */
export const SANDBOX_PROXY_DIR = "/run/lessor";

/** The proxy's socket file name in that directory. */
export const PROXY_SOCKET_NAME = "proxy.sock";

/**
 * The bridge program: `node -e BRIDGE_SOURCE PORT SOCKET CMD ARGS…`. Kept dependency-free and small;
 * it starts the command only once it listens, so the agent's first request finds it.
 */
export const BRIDGE_SOURCE = `"use strict";
const net = require("node:net"), cp = require("node:child_process"), os = require("node:os");
const [port, sock, cmd, ...args] = process.argv.slice(1);
const server = net.createServer({ allowHalfOpen: true }, (c) => {
  const u = net.connect({ path: sock, allowHalfOpen: true });
  const end = () => { c.destroy(); u.destroy(); };
  c.on("error", end); u.on("error", end); c.on("close", end); u.on("close", end);
  c.pipe(u); u.pipe(c);
});
server.on("error", (e) => { process.stderr.write("lessor: the sandbox's proxy bridge failed: " + e.message + "\\n"); process.exit(126); });
server.listen(Number(port), "127.0.0.1", () => {
  const child = cp.spawn(cmd, args, { stdio: "inherit" });
  child.on("error", (e) => { process.stderr.write("lessor: cannot run " + JSON.stringify(cmd) + ": " + e.code + "\\n"); process.exit(e.code === "ENOENT" ? 127 : 126); });
  for (const s of ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCONT", "SIGTSTP"])
    process.on(s, () => { try { child.kill(s); } catch {} });
  child.on("exit", (code, signal) => process.exit(code === null ? 128 + (os.constants.signals[signal] || 0) : code));
});
`;

/** The command line that runs `cmd args` behind the bridge, with `node` the Node binary shown in the sandbox. */
export function bridgeCommand(node: string, cmd: string, args: string[]): { cmd: string; args: string[] } {
  return { cmd: node, args: ["-e", BRIDGE_SOURCE, String(BRIDGE_PORT), `${SANDBOX_PROXY_DIR}/${PROXY_SOCKET_NAME}`, cmd, ...args] };
}
