/**
 * A throwaway PostgreSQL cluster of the test's own (initdb in a temp dir, a free port on 127.0.0.1, a
 * Unix socket in the same dir; TCP logins need a random password), for fault tests that stop and restart the server: the machine's shared
 * server at LESSOR_TEST_PG_URL is used by other test files at the same time and must never be stopped.
 * Uses the PostgreSQL 15 binaries in /usr/lib/postgresql/15/bin; as root (initdb refuses root) they
 * run as the `postgres` system user. {@link PG_CLUSTER_SKIP} says why the tests skip when they cannot
 * run: like every PostgreSQL test, they skip without LESSOR_TEST_PG_URL, and run wherever it is set.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PG_SKIP } from "./pg-helpers.js";

/** Where the server binaries are. */
export const PG_BIN = "/usr/lib/postgresql/15/bin";

const IS_ROOT = typeof process.getuid === "function" && process.getuid() === 0;

function postgresUser(): { uid: number; gid: number } | null {
  const r = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" });
  const g = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" });
  if (r.status !== 0 || g.status !== 0) return null;
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

function skipReason(): false | string {
  if (PG_SKIP !== false) return PG_SKIP;
  for (const b of ["initdb", "pg_ctl", "postgres"])
    if (!existsSync(join(PG_BIN, b))) return `${join(PG_BIN, b)} is missing: the PostgreSQL restart test needs the server binaries to run a cluster of its own`;
  if (IS_ROOT && postgresUser() === null) return "running as root and there is no `postgres` system user to run initdb as: PostgreSQL restart test skipped";
  return false;
}

/** The `skip` option for node:test: false when a private cluster can be made, else the reason. */
export const PG_CLUSTER_SKIP: false | string = skipReason();

/** A running private cluster. */
export interface PgCluster {
  /** `postgres://postgres:<password>@127.0.0.1:<port>/postgres` (loopback only). */
  url: string;
  /** The superuser's random password: TCP logins need it (scram-sha-256), so other local users cannot log in. */
  password: string;
  port: number;
  /** Stops the server: "fast" (clients disconnected, clean shutdown) or "immediate" (a crash: recovery at the next start). */
  stop(mode: "fast" | "immediate"): void;
  /** Starts it again on the same port and data directory; returns when it accepts connections. */
  start(): void;
  /** Stops it (immediately) if it runs and removes its directory. Never throws. */
  destroy(): void;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a !== null ? resolve(a.port) : reject(new Error("no port"))));
    });
  });
}

/** Runs a server binary, as `postgres` when this process is root; throws with its output on failure. */
function run(bin: string, args: string[]): void {
  const [cmd, argv] = IS_ROOT ? ["runuser", ["-u", "postgres", "--", join(PG_BIN, bin), ...args]] : [join(PG_BIN, bin), args];
  execFileSync(cmd as string, argv as string[], { stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C" }, timeout: 60_000 });
}

/** Creates and starts a private cluster. Call {@link PgCluster.destroy} when done (also on failure). */
export async function startCluster(): Promise<PgCluster> {
  const dir = mkdtempSync(join(tmpdir(), "lessor-pg-"));
  const data = join(dir, "data");
  const log = join(dir, "server.log");
  chmodSync(dir, 0o700);
  let port = 0;
  let running = false;
  const password = randomBytes(18).toString("hex");
  const pwfile = join(dir, "pwfile");
  writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  const cluster: PgCluster = {
    url: "",
    password,
    port: 0,
    stop(mode) {
      run("pg_ctl", ["stop", "-D", data, "-m", mode, "-w", "-t", "30"]);
      running = false;
    },
    start() {
      // Loopback only, and the Unix socket in the test's own dir (not /var/run/postgresql).
      // pg_ctl hands these to a shell: the dir is quoted (mkdtemp names have no quotes of their own).
      const opts = `-c listen_addresses=127.0.0.1 -p ${port} -k '${dir}' -c max_connections=60`;
      running = true; // before: a start that timed out may still have left a server running
      run("pg_ctl", ["start", "-D", data, "-l", log, "-w", "-t", "30", "-o", opts]);
    },
    destroy() {
      try {
        if (running) run("pg_ctl", ["stop", "-D", data, "-m", "immediate", "-w", "-t", "30"]);
      } catch {
        // already stopped
      }
      running = false;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  // Also when the test process ends early: never leave a server running.
  process.once("exit", () => cluster.destroy());
  try {
    if (IS_ROOT) {
      const u = postgresUser()!;
      chownSync(dir, u.uid, u.gid);
      chownSync(pwfile, u.uid, u.gid);
    }
    // Password logins over TCP; over the Unix socket only the OS user that runs the server.
    run("initdb", ["-D", data, "-U", "postgres", `--pwfile=${pwfile}`, "--auth-host=scram-sha-256", "--auth-local=peer", "--no-locale", "-E", "UTF8", "--no-sync"]);
    rmSync(pwfile, { force: true });
    port = await freePort();
    cluster.start();
  } catch (e) {
    cluster.destroy();
    throw e;
  }
  cluster.port = port;
  cluster.url = `postgres://postgres:${password}@127.0.0.1:${port}/postgres`;
  return cluster;
}
