/**
 * Keeps a lessor process's memory to itself, through the native addon in native/peercred (its
 * `nodump()`): no core file (RLIMIT_CORE 0, soft and hard, so a child cannot raise it again) and not
 * dumpable (prctl PR_SET_DUMPABLE 0). A non-dumpable process's /proc/<pid>/mem, /proc/<pid>/environ
 * and ptrace are closed to every other process of the same uid, and a crash writes no core file:
 * the master key, a passphrase and the values a command holds stay in this process. Root (and
 * anything with CAP_SYS_PTRACE) still reads them; that is outside what a uid can be shielded from.
 *
 * Programs lessor starts are dumpable again (execve resets the flag): an agent, a hook or bwrap is
 * not affected.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { defaultAddonPath } from "./peercred.js";

/** What {@link forbidDumps} did: done, or why not (a sentence for a start-up log line). */
export type NoDumpResult = { done: true } | { done: false; reason: string };

let done = false;

/**
 * Makes this process non-dumpable with no core file (once done, later calls only say so). Never
 * throws. `addonPath` overrides where the addon is looked for (tests).
 */
export function forbidDumps(opts: { addonPath?: string } = {}): NoDumpResult {
  if (done) return { done };
  const r = attempt(opts.addonPath ?? defaultAddonPath());
  done = r.done;
  return r;
}

function attempt(path: string | null): NoDumpResult {
  const unprotected = "so core dumps and same-uid reads of this process's memory (/proc/<pid>/mem, /proc/<pid>/environ, ptrace) are not blocked";
  if (process.platform !== "linux") return { done: false, reason: `lessor makes its processes non-dumpable on Linux only (this is ${process.platform}), ${unprotected}` };
  if (path === null || !existsSync(path)) return { done: false, reason: `the native addon is not built (${path ?? "no package root"}; build it with: node scripts/build-addon.mjs), ${unprotected}` };
  try {
    const addon = createRequire(import.meta.url)(path) as { nodump?: () => void };
    if (typeof addon.nodump !== "function") return { done: false, reason: `the native addon at ${path} is an older build without nodump (rebuild it with: node scripts/build-addon.mjs), ${unprotected}` };
    addon.nodump();
    return { done: true };
  } catch (e) {
    return { done: false, reason: `${e instanceof Error ? e.message.split("\n")[0] : String(e)}, ${unprotected}` };
  }
}
