/**
 * The bridge between the sandbox's empty network namespace and lessor's proxy. The sandbox has only
 * a loopback interface, so nothing inside can reach the network; the agent's
 * `HTTPS_PROXY=http://127.0.0.1:3128` must lead to lessor's proxy and nowhere else. Two bridges:
 *
 * - **native** (when lessor's addon is built: native/peercred/netbridge.c): the sandbox's first
 *   program listens on 127.0.0.1:{@link BRIDGE_PORT} inside, hands the listening socket to lessor
 *   through a socket pair on descriptor {@link HANDOFF_FD}, and replaces itself with the agent's
 *   command. lessor's proxy accepts the agent's connections on that socket itself: no process relays
 *   them, and no Node starts in the sandbox.
 * - **node** (otherwise): the proxy listens on a Unix socket in a private directory that the sandbox
 *   shows read-only; inside, a small Node program ({@link BRIDGE_SOURCE}, run with `node -e`) listens
 *   on the same port, forwards each connection to that socket, and starts the command as its child.
 *   It passes signals on to the command and exits with the command's code (128 + N for signal N).
 *
 * Neither holds anything secret (the agent could connect to the socket itself): they only lead to it.
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

/** The descriptor on which the native bridge finds its socket to lessor (netbridge.c's HANDOFF_FD). */
export const HANDOFF_FD = 6;

/**
 * How long lessor waits for the native bridge's listening socket. The bridge hands it over as soon as
 * bwrap has made the sandbox; a failed bwrap or bridge ends the wait at once (the pair's other end closes).
 */
export const LISTENER_WAIT_MS = 60_000;

/** The command line that runs `cmd args` (cmd an absolute path) behind the native bridge `helper`. */
export function nativeBridgeCommand(helper: string, cmd: string, args: string[]): { cmd: string; args: string[] } {
  return { cmd: helper, args: [String(BRIDGE_PORT), cmd, ...args] };
}

/** The command line that runs `cmd args` behind the bridge, with `node` the Node binary shown in the sandbox. */
export function bridgeCommand(node: string, cmd: string, args: string[]): { cmd: string; args: string[] } {
  return { cmd: node, args: ["-e", BRIDGE_SOURCE, String(BRIDGE_PORT), `${SANDBOX_PROXY_DIR}/${PROXY_SOCKET_NAME}`, cmd, ...args] };
}
