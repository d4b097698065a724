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
import { defaultAddonPath, requireAddon } from "./peercred.js";

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
  const loaded = requireAddon(path);
  if ("reason" in loaded) return { done: false, reason: `${loaded.reason}, ${unprotected}` };
  const nodump = loaded.addon["nodump"];
  if (typeof nodump !== "function") return { done: false, reason: `the native addon at ${path} is an older build without nodump (rebuild it with: node scripts/build-addon.mjs), ${unprotected}` };
  try {
    nodump();
    return { done: true };
  } catch (e) {
    return { done: false, reason: `${e instanceof Error ? e.message.split("\n")[0] : String(e)}, ${unprotected}` };
  }
}
