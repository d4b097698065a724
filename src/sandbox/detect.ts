/**
 * Can this machine make lessor's sandbox? It needs bubblewrap (`bwrap`, Debian package
 * `bubblewrap`) and unprivileged user namespaces. Both are checked before an agent is started: the
 * first by looking on PATH, the second by running a trivial sandbox (`bwrap --unshare-all
 * --unshare-user … true`), which fails the same way the real one would.
 */
import { spawn } from "node:child_process";
import { accessSync, constants, readFileSync, statSync } from "node:fs";
import { delimiter, isAbsolute, join } from "node:path";
import { VaultError } from "../base/errors.js";

/** The Debian/Ubuntu/Fedora/Arch package that provides `bwrap`. */
export const BWRAP_PACKAGE = "bubblewrap";

const NO_SANDBOX_HINT = "or run with --no-sandbox to start the agent unconfined (it can then read your files and the vault's key)";

/** The first executable `bwrap` on `pathEnv` (a PATH value), or null. */
export function findBwrap(pathEnv: string | undefined): string | null {
  for (const dir of (pathEnv ?? "").split(delimiter)) {
    if (!isAbsolute(dir)) continue; // a relative PATH entry would run whatever the current directory holds
    const file = join(dir, "bwrap");
    try {
      if (!statSync(file).isFile()) continue;
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return null;
}

/** The error for "bwrap is not installed". */
export function bwrapMissingError(): VaultError {
  return new VaultError(
    "unavailable",
    `lessor run confines the agent with bubblewrap, and bwrap is not installed (or not on PATH): install the ${BWRAP_PACKAGE} package (apt-get install ${BWRAP_PACKAGE}; dnf install ${BWRAP_PACKAGE}; pacman -S ${BWRAP_PACKAGE}), ${NO_SANDBOX_HINT}`,
  );
}

/** A kernel setting that turns unprivileged user namespaces off, when it is set so. */
function userNamespaceSetting(): string | null {
  const read = (p: string): string | null => {
    try {
      return readFileSync(p, "utf8").trim();
    } catch {
      return null;
    }
  };
  if (read("/proc/sys/kernel/unprivileged_userns_clone") === "0") return "kernel.unprivileged_userns_clone is 0 (set it to 1: sysctl -w kernel.unprivileged_userns_clone=1)";
  if (read("/proc/sys/user/max_user_namespaces") === "0") return "user.max_user_namespaces is 0 (set it to 15000 or more: sysctl -w user.max_user_namespaces=15000)";
  if (read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") === "1")
    return "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1; Ubuntu 24.04 ships an AppArmor profile for bwrap in the apparmor package, or set it to 0)";
  return null;
}

/** The error for "bwrap is here but cannot make a sandbox"; `detail` is bwrap's own first line. */
export function userNamespacesError(detail: string): VaultError {
  const setting = userNamespaceSetting();
  return new VaultError(
    "unavailable",
    `lessor run confines the agent with bubblewrap, and bwrap cannot create its namespaces here (${detail || "it failed without a message"}): unprivileged user namespaces must be allowed${setting ? `; ${setting}` : " (sysctl kernel.unprivileged_userns_clone=1 on Debian, user.max_user_namespaces > 0; inside a container, allow them in its seccomp profile)"}; ${NO_SANDBOX_HINT}`,
  );
}

/** What the working bwrap supports. */
export interface BwrapFeatures {
  /** `--disable-userns` (bwrap 0.8 and later). */
  disableUserns: boolean;
}

/** Runs bwrap with `args`; resolves with its exit code and the first line it printed on stderr. */
function runBwrap(bwrap: string, args: string[]): Promise<{ ok: boolean; message: string; missing: boolean }> {
  return new Promise((resolve) => {
    // The probe sees nothing of the caller's environment (it needs none).
    const child = spawn(bwrap, args, { env: { PATH: "/usr/bin:/bin" }, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => {
      if (err.length < 4096) err += d.toString("utf8");
    });
    child.once("error", (e: NodeJS.ErrnoException) => resolve({ ok: false, message: `${bwrap}: ${e.code ?? e.message}`, missing: e.code === "ENOENT" }));
    child.once("close", (code, signal) => {
      const first = err.split("\n").find((l) => l.trim() !== "") ?? (signal ? `killed by ${signal}` : `exit code ${code}`);
      resolve({ ok: code === 0, message: first.trim().slice(0, 300), missing: false });
    });
  });
}

/**
 * Runs a trivial sandbox with `bwrap` (own user, PID, IPC, UTS and network namespaces, the root
 * read-only, `true`). Resolves with what it supports when it works; rejects with
 * {@link userNamespacesError} (or {@link bwrapMissingError}) when it does not.
 */
export async function probeSandbox(bwrap: string): Promise<BwrapFeatures> {
  // --clearenv: the newest option the sandbox needs besides --disable-userns (bwrap 0.5).
  const base = ["--unshare-all", "--unshare-user", "--die-with-parent", "--clearenv", "--ro-bind", "/", "/"];
  let r = await runBwrap(bwrap, [...base, "--disable-userns", "--", "true"]);
  if (r.ok) return { disableUserns: true };
  if (/unknown option.*--disable-userns/i.test(r.message)) {
    // bwrap before 0.8: no --disable-userns (the agent could make nested namespaces, still without our mounts' contents)
    r = await runBwrap(bwrap, [...base, "--", "true"]);
    if (r.ok) return { disableUserns: false };
  }
  if (r.missing) throw bwrapMissingError();
  if (/unknown option/i.test(r.message))
    throw new VaultError("unavailable", `${bwrap} is too old for lessor run's sandbox (${r.message}): install bubblewrap 0.5 or later (Debian 12, Ubuntu 22.04 and later have it), ${NO_SANDBOX_HINT}`);
  throw userNamespacesError(r.message);
}
