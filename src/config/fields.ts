/**
 * What every parser of lessor.toml shares: the error that names the file, the table and the field
 * (config_invalid), a short rendering of a bad value for it, and the role fields that [[identity]],
 * [[vm]] and [[vsock]] entries have in common.
 */
import { isVaultError, VaultError } from "../base/errors.js";
import { isAgentId } from "../base/names.js";
import { compileAgentPattern } from "../vault/pattern.js";

/** Throws config_invalid: `<source>: <where>: <msg>`. */
export function fail(source: string, where: string, msg: string): never {
  throw new VaultError("config_invalid", `${source}: ${where}: ${msg}`);
}

/** A value as an error message shows it: JSON, cut at 60 characters. */
export function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 60)}…` : s;
}

/**
 * `agent` (role agent only, required) and `act_for` (role orchestrator only, required) of an entry
 * whose role is already checked; `noun` names the entry in messages ("identity", "guest").
 */
export function roleFields(source: string, where: string, t: Record<string, unknown>, role: string, noun: string): { agent?: string; actFor?: string[] } {
  const id: { agent?: string; actFor?: string[] } = {};
  if (role === "agent") {
    if (typeof t.agent !== "string" || !isAgentId(t.agent)) fail(source, `${where}: agent`, `an agent ${noun} needs agent = "<agent id>", got ${show(t.agent)}`);
    id.agent = t.agent;
  } else if (t.agent !== undefined) fail(source, `${where}: agent`, "only role agent takes an agent id");
  if (role === "orchestrator") {
    if (!Array.isArray(t.act_for) || t.act_for.length === 0 || !t.act_for.every((x) => typeof x === "string" && x.length > 0))
      fail(source, `${where}: act_for`, 'an orchestrator needs act_for = ["<agent pattern>", …]');
    for (const [i, p] of (t.act_for as string[]).entries()) {
      try {
        compileAgentPattern(p);
      } catch (e) {
        if (!isVaultError(e)) throw e;
        fail(source, `${where}: act_for`, `item ${i + 1}: ${e.message}`);
      }
    }
    id.actFor = t.act_for as string[];
  } else if (t.act_for !== undefined) fail(source, `${where}: act_for`, "only role orchestrator takes act_for");
  return id;
}
