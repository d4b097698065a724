/**
 * Freeing a socket path before binding: nothing there is fine; a socket of the daemon's own uid that
 * nobody answers on is stale (left by a daemon that was killed) and removed; anything else — a live
 * socket, a file, a directory, a symlink, or a socket of another uid — is refused and left alone.
 * The path's directory has been checked by assertSafeSocketDir, so no other user can swap what was
 * inspected for something else before it is removed.
 */
import { lstatSync, unlinkSync } from "node:fs";
import { connect } from "node:net";
import { VaultError } from "../../base/errors.js";

/** How long to wait for an existing socket to answer before judging it live. */
const PROBE_TIMEOUT_MS = 1000;

/** Makes `path` free for a new socket of a daemon running as `uid` (see the module comment). */
export async function clearStaleSocket(path: string, uid: number | null): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new VaultError("unavailable", `cannot inspect the socket path ${path} (${(e as NodeJS.ErrnoException).code}); check its directory.`);
  }
  if (!st.isSocket()) {
    const kind = st.isSymbolicLink() ? "a symbolic link" : st.isDirectory() ? "a directory" : "a file";
    throw new VaultError("unavailable", `${path} exists and is not a socket (it is ${kind}); lessor leaves it alone: move it away or choose another socket path.`);
  }
  if (uid !== null && st.uid !== uid) {
    throw new VaultError(
      "unavailable",
      `${path} is a socket of uid ${st.uid}, not of the daemon's uid ${uid}; lessor only replaces its own stale sockets: remove it if it is not needed, or choose another socket path.`,
    );
  }
  const { state, code } = await probe(path);
  if (state === "live") {
    throw new VaultError("unavailable", `another lessor daemon is listening on ${path}; stop it first.`);
  }
  if (state === "unknown") {
    throw new VaultError("unavailable", `the socket ${path} exists but could not be probed (${code}); if no lessor daemon is running, remove it.`);
  }
  if (state === "stale") {
    try {
      unlinkSync(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new VaultError("unavailable", `cannot remove the stale socket ${path} (${(e as NodeJS.ErrnoException).code}); remove it by hand.`);
      }
    }
  }
}

interface ProbeResult {
  state: "live" | "stale" | "gone" | "unknown";
  code?: string;
}

/**
 * Connects to an existing socket file: "stale" if refused, "gone" if it vanished, "live" if it answers
 * (or is too busy to: EAGAIN, or no answer in time), "unknown" for anything else (e.g. EACCES).
 */
function probe(path: string): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (r: ProbeResult): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ state: "live" }), PROBE_TIMEOUT_MS);
    s.once("connect", () => done({ state: "live" }));
    s.once("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ECONNREFUSED") done({ state: "stale" });
      else if (e.code === "ENOENT") done({ state: "gone" });
      else if (e.code === "EAGAIN") done({ state: "live" });
      else done({ state: "unknown", code: e.code ?? e.message });
    });
  });
}
