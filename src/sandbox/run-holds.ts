/**
 * The placeholders of sandboxed runs that share a home: the empty files and directories bwrap makes
 * for the git paths a run seals that did not exist (a missing `.git/config.worktree` or include, a
 * missing `.git/worktrees`; src/sandbox/git-guard.ts).
 *
 * A second run started meanwhile finds such a placeholder there and mounts it read-only like any
 * existing path. Removing it then (the first run ending) makes the kernel detach every mount on it in
 * other mount namespaces (Linux 3.18 on): the second run's agent could create the file and fill it
 * with a `core.fsmonitor` that the owner's git runs. So a run that ends removes placeholders only
 * when no other sandboxed run of the home is alive; otherwise it leaves them, listed in `pending`,
 * and the last run to end removes them (still empty ones only).
 *
 * In `<home>/run-holds/` (the lessor home, which no sandbox shows):
 *   `<pid>.<start>.<n>`  one per sandboxed run, taken before its layout is planned (src/fs/process-identity.ts:
 *                    one whose process is gone, a run killed with SIGKILL, counts for nothing and is removed);
 *   `pending`        one placeholder a line (JSON: `{"kind":"f"|"d","path":…}`), left by runs that ended beside others;
 *   `lock`           held (src/fs/lock-file.ts) while one of these is read or changed, and
 *                    while placeholders are removed: a run registers either before another's end looks
 *                    (and is seen) or after its removal (and finds the path missing, to seal it itself).
 * A run killed with SIGKILL leaves its own placeholders behind, as empty files (git reads an empty
 * config as none); the next run treats them as existing empty ones.
 */
import { appendFileSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync, type Stats } from "node:fs";
import { join } from "node:path";
import { VaultError } from "../base/errors.js";
import { isRunning, startTime } from "../fs/process-identity.js";
import { tryLockFile } from "../fs/lock-file.js";

/** A sandboxed run's place among the runs of its home: {@link RunHold.end} once its sandbox is gone. */
export interface RunHold {
  /**
   * Gives up the hold. `files` and `dirs` are the run's placeholders (empty files and directories
   * bwrap made): removed now, with those left by runs before, if no other run is alive, else left for
   * the last one. Safe to call twice. Returns a line for lessor to print when it could not (the
   * placeholders are then left, empty, as a run killed leaves them).
   */
  end(files: readonly string[], dirs: readonly string[]): string[];
}

const HOLDER_RE = /^([1-9][0-9]{0,9})\.([0-9]+|unknown)\.[0-9]{1,15}$/;
/** Counts this process's holds: two runs in one process (tests call runChild so) hold apart. */
let holds = 0;
/** How long a run waits for another to finish its few file operations under the lock. */
const LOCK_WAIT_MS = 10_000;

/** Registers this process as a sandboxed run of `home`, before its sandbox's paths are looked at. */
export function holdRun(home: string): RunHold {
  const dir = join(home, "run-holds");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const me = `${process.pid}.${startTime(process.pid) ?? "unknown"}.${++holds}`;
  locked(dir, () => {
    writeFileSync(join(dir, me), "", { mode: 0o600 });
    // No one else alive: what ended runs left pending is no one's mount point now.
    if (othersAlive(dir, me)) return;
    removePlaceholders(readPending(dir));
    rmSync(join(dir, "pending"), { force: true });
  });
  let ended = false;
  return {
    end(files, dirs): string[] {
      if (ended) return [];
      ended = true;
      const mine: Placeholder[] = [...files.map((p) => ({ kind: "f" as const, path: p })), ...dirs.map((p) => ({ kind: "d" as const, path: p }))];
      try {
        locked(dir, () => {
          rmSync(join(dir, me), { force: true });
          if (othersAlive(dir, me)) {
            // Another sandbox may have these mounted read-only: the last run to end removes them.
            if (mine.length > 0) appendFileSync(join(dir, "pending"), mine.map((p) => `${JSON.stringify(p)}\n`).join(""), { mode: 0o600 });
            return;
          }
          removePlaceholders([...mine, ...readPending(dir)]);
          rmSync(join(dir, "pending"), { force: true });
        });
      } catch (e) {
        return [`lessor: could not end this run's hold in ${dir} (${e instanceof VaultError ? e.message : ((e as NodeJS.ErrnoException).code ?? "error")}); the empty files it sealed git paths with are left`];
      }
      return [];
    },
  };
}

interface Placeholder {
  kind: "f" | "d";
  path: string;
}

/** Runs `fn` holding `<dir>/lock`, waiting (a few ms at a time) while another run holds it. */
function locked(dir: string, fn: () => void): void {
  const until = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    const got = tryLockFile(dir, "lock");
    if (!("heldBy" in got)) {
      try {
        return fn();
      } finally {
        got.release();
      }
    }
    if (Date.now() > until)
      throw new VaultError("unavailable", `lessor run (pid ${got.heldBy.pid}) has held ${join(dir, "lock")} for more than ${LOCK_WAIT_MS / 1000} s; if it hangs, stop it, then run again`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
  }
}

/** Whether a run other than `me` is registered and alive; the registrations of dead ones are removed. */
function othersAlive(dir: string, me: string): boolean {
  let alive = false;
  for (const name of readdirSync(dir)) {
    const m = HOLDER_RE.exec(name);
    if (m === null || name === me) continue;
    if (isRunning({ pid: Number(m[1]), start: m[2] === "unknown" ? null : m[2]! })) alive = true;
    else rmSync(join(dir, name), { force: true }); // killed with SIGKILL: its sandbox died with it (--die-with-parent)
  }
  return alive;
}

function readPending(dir: string): Placeholder[] {
  let text: string;
  try {
    text = readFileSync(join(dir, "pending"), "utf8");
  } catch {
    return [];
  }
  const out: Placeholder[] = [];
  for (const line of text.split("\n")) {
    try {
      const p = JSON.parse(line) as Partial<Placeholder>;
      if ((p.kind === "f" || p.kind === "d") && typeof p.path === "string" && p.path !== "") out.push({ kind: p.kind, path: p.path });
    } catch {
      // an empty last line, or one cut short by a run killed while writing it: nothing to remove
    }
  }
  return out;
}

/** Removes each placeholder that is still one: an empty regular file, an empty directory (never through a link). */
function removePlaceholders(list: readonly Placeholder[]): void {
  for (const p of list) {
    let st: Stats | undefined;
    try {
      st = lstatSync(p.path, { throwIfNoEntry: false });
    } catch {
      continue; // a directory on the way is gone or unreadable: nothing to remove
    }
    if (st === undefined) continue;
    try {
      if (p.kind === "f" && st.isFile() && st.size === 0) rmSync(p.path, { force: true });
      if (p.kind === "d" && st.isDirectory()) rmdirSync(p.path); // fails when not empty: left as it is
    } catch {
      // not empty (the owner made something there meanwhile) or gone: left as it is
    }
  }
}
