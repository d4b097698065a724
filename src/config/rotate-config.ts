/**
 * The `[[rotate]]` entries of lessor.toml: a command that makes a secret's new value (a rotation hook,
 * src/vault/rotation-hooks.ts), run by `lessor secret rotate NAME` and, with `every`, by the daemon.
 *
 *   [[rotate]]
 *   secret = "db-password"                                 # scope/name, or a name in scope global
 *   command = ["/usr/local/bin/rotate-db", "--user", "app"] # program and arguments; no shell
 *   timeout = "30s"                                        # default 30s
 *   revoke = "all"                                         # "all" (default): live leases of the secret; "none"
 *   stdin = "none"                                         # "none" (default) or "current": the old value on stdin
 *   every = "24h"                                          # optional: the daemon rotates this often
 *
 * Parsed strictly: an unknown field, a wrong type, a command that is a string rather than a list, or
 * a secret listed twice is an error naming the file and the entry.
 */
import { parseRefString, refString } from "../base/names.js";
import type { SecretRef } from "../base/types.js";
import { parseDuration } from "../vault/duration.js";
import { HOOK_REVOKE, HOOK_STDIN, type HookRevoke, type HookStdin, type RotationHook } from "../vault/rotation-hooks.js";
import { fail } from "./fields.js";

/** Default time limit of a hook's command. */
export const DEFAULT_HOOK_TIMEOUT_MS = 30_000;
/** Longest time limit: a hook holds the secret's rotation while it runs. */
export const MAX_HOOK_TIMEOUT_MS = 10 * 60_000;
/** Shortest `every`: the daemon's schedule is not a busy loop. */
export const MIN_HOOK_EVERY_MS = 1_000;
const MAX_ARGS = 256;

const FIELDS = ["secret", "command", "timeout", "revoke", "stdin", "every"] as const;


function durationField(source: string, where: string, v: unknown, min: number, max: number): number {
  let ms: number;
  try {
    if (typeof v !== "string") throw new Error("not text");
    ms = parseDuration(v);
  } catch {
    return fail(source, where, `expected a duration such as "30s" or "24h", got ${JSON.stringify(v)?.slice(0, 60)}`);
  }
  if (ms < min || ms > max) fail(source, where, `expected a duration from ${min} ms to ${max} ms, got ${JSON.stringify(v)}`);
  return ms;
}

/** Parses the `[[rotate]]` array of tables (`raw` is undefined when absent). */
export function parseRotateHooks(source: string, raw: unknown): RotationHook[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) fail(source, "[[rotate]]", "expected [[rotate]] tables (note the double brackets), one per secret");
  const seen = new Set<string>();
  return raw.map((entry, i) => {
    const where = `[[rotate]] ${i + 1}`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) fail(source, where, "expected a table");
    const t = entry as Record<string, unknown>;
    for (const k of Object.keys(t)) if (!(FIELDS as readonly string[]).includes(k)) fail(source, where, `unknown field "${k}" (known: ${FIELDS.join(", ")})`);
    if (typeof t.secret !== "string") fail(source, `${where} secret`, 'expected the name of a secret, such as "db-password" or "env:prod/db-password"');
    let secret: SecretRef;
    try {
      secret = parseRefString(t.secret);
    } catch (e) {
      return fail(source, `${where} secret`, (e as Error).message);
    }
    const key = refString(secret);
    if (seen.has(key)) fail(source, `${where} secret`, `secret ${key} has two [[rotate]] entries; keep one`);
    seen.add(key);
    const c = t.command;
    if (typeof c === "string") fail(source, `${where} command`, 'expected a list, program first, such as ["/usr/local/bin/rotate-db", "--user", "app"]: a command is never run through a shell');
    // Arguments may be empty strings (as a shell's ""); the program may not.
    if (!Array.isArray(c) || c.length === 0 || c.length > MAX_ARGS || c[0] === "" || !c.every((x) => typeof x === "string" && x.length <= 4096 && !x.includes("\0")))
      fail(source, `${where} command`, `expected a list of 1 to ${MAX_ARGS} strings, a non-empty program first, such as ["/usr/local/bin/rotate-db", "--user", "app"]`);
    const timeoutMs = t.timeout === undefined ? DEFAULT_HOOK_TIMEOUT_MS : durationField(source, `${where} timeout`, t.timeout, 1, MAX_HOOK_TIMEOUT_MS);
    if (t.revoke !== undefined && !(HOOK_REVOKE as readonly unknown[]).includes(t.revoke))
      fail(source, `${where} revoke`, `expected "all" (revoke the secret's live leases) or "none", got ${JSON.stringify(t.revoke)}`);
    if (t.stdin !== undefined && !(HOOK_STDIN as readonly unknown[]).includes(t.stdin))
      fail(source, `${where} stdin`, `expected "none" or "current" (the current value on the command's stdin), got ${JSON.stringify(t.stdin)}`);
    const everyMs = t.every === undefined ? null : durationField(source, `${where} every`, t.every, MIN_HOOK_EVERY_MS, 366 * 86_400_000);
    return {
      secret,
      command: [...(c as string[])],
      timeoutMs,
      revoke: (t.revoke as HookRevoke | undefined) ?? "all",
      stdin: (t.stdin as HookStdin | undefined) ?? "none",
      everyMs,
    };
  });
}
