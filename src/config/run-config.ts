/**
 * The `[run]` table of lessor.toml: what `lessor run`'s sandbox shows the agent (src/sandbox/,
 * docs/sandbox.md). Paths are kept as written (`~/` is the owner's home; expanded by the caller).
 */
import { fail } from "./fields.js";

/** How the project directory (the current directory, or --project) is shown in the sandbox. */
export const PROJECT_ACCESS = ["read-write", "read-only", "none"] as const;
export type ProjectAccess = (typeof PROJECT_ACCESS)[number];

/**
 * The sandbox's network: "proxy" (the default: only loopback inside, and lessor's injecting proxy
 * reached through a bridge), "none" (only loopback: no way out at all), or "host" (the host's network,
 * unscoped: the agent can reach anything the machine can).
 */
export const RUN_NETWORK = ["proxy", "none", "host"] as const;
export type RunNetwork = (typeof RUN_NETWORK)[number];

/** The `[run]` table, with defaults filled in. */
export interface RunConfig {
  /** More paths never shown to the agent, on top of the built-in credential stores. */
  hide: string[];
  /** Paths shown read-only (an agent's install directory, say `~/.nvm`). */
  read: string[];
  /** Paths shown writable (an agent's own state, say `~/.claude`). */
  write: string[];
  project: ProjectAccess;
  network: RunNetwork;
  /**
   * Give the sandboxed command an agent session at the vault for the run (`vault_session = true`, or
   * `lessor run --vault-session`; src/cli/run/vault-session.ts). Off by default.
   */
  vaultSession: boolean;
}

export const DEFAULT_RUN_CONFIG: RunConfig = { hide: [], read: [], write: [], project: "read-write", network: "proxy", vaultSession: false };

const FIELDS = ["hide", "read", "write", "project", "network", "vault_session"] as const;


function paths(source: string, field: string, v: unknown): string[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === "string" && x.length > 0 && x.length <= 4096 && !x.includes("\0")))
    fail(source, `[run] ${field}`, 'expected a list of paths, such as ["~/.claude"]');
  for (const p of v as string[])
    if (!p.startsWith("/") && !p.startsWith("~/")) fail(source, `[run] ${field}`, `${JSON.stringify(p)} is not an absolute path; write /path or ~/path`);
  return v as string[];
}

/**
 * A `[run] hide` entry's `*` only matches in its last part (src/sandbox/hidden.ts expandStore): one
 * before it would be taken literally and hide nothing, silently, so it is refused.
 */
function checkHideGlobs(source: string, list: string[]): void {
  for (const p of list) {
    const trimmed = p.replace(/\/+$/, "");
    if (trimmed.slice(0, trimmed.lastIndexOf("/") + 1).includes("*"))
      fail(
        source,
        "[run] hide",
        `${JSON.stringify(p)} has a * before its last part, which would hide nothing: a * matches only in the last part (such as "~/.cache/keyring-*"); list each path, such as "~/.config/mytool/token"`,
      );
  }
}

/** Parses the `[run]` table (`raw` is undefined when absent). */
export function parseRunConfig(source: string, raw: unknown): RunConfig {
  const out: RunConfig = structuredClone(DEFAULT_RUN_CONFIG);
  if (raw === undefined) return out;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail(source, "[run]", "expected a table");
  const t = raw as Record<string, unknown>;
  for (const k of Object.keys(t)) if (!(FIELDS as readonly string[]).includes(k)) fail(source, "[run]", `unknown field "${k}" (known: ${FIELDS.join(", ")})`);
  if (t.hide !== undefined) {
    out.hide = paths(source, "hide", t.hide);
    checkHideGlobs(source, out.hide);
  }
  if (t.read !== undefined) out.read = paths(source, "read", t.read);
  if (t.write !== undefined) out.write = paths(source, "write", t.write);
  if (t.project !== undefined) {
    if (!PROJECT_ACCESS.includes(t.project as ProjectAccess)) fail(source, "[run] project", `expected one of ${PROJECT_ACCESS.map((p) => `"${p}"`).join(", ")}, got ${JSON.stringify(t.project)}`);
    out.project = t.project as ProjectAccess;
  }
  if (t.network !== undefined) out.network = parseRunNetwork(t.network, (msg) => fail(source, "[run] network", msg));
  if (t.vault_session !== undefined) {
    if (typeof t.vault_session !== "boolean") fail(source, "[run] vault_session", `expected true or false, got ${JSON.stringify(t.vault_session)}`);
    out.vaultSession = t.vault_session;
  }
  return out;
}

/** Checks a network setting (`[run] network`, `--network`). */
export function parseRunNetwork(v: unknown, onError: (msg: string) => never): RunNetwork {
  if (!RUN_NETWORK.includes(v as RunNetwork)) onError(`expected one of ${RUN_NETWORK.map((n) => `"${n}"`).join(", ")}, got ${JSON.stringify(v)}`);
  return v as RunNetwork;
}
