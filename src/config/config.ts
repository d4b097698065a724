/**
 * `lessor.toml`: the vault's configuration file in its home. Parsed strictly: an unknown key or a
 * wrong type is an error naming the file, the table and the field.
 */
import { parse, TomlError } from "smol-toml";
import { ALGS, type Alg } from "../crypto/aead.js";
import { DEFAULT_LIMITS, type Limits } from "../vault/context.js";
import { parseDuration } from "../vault/duration.js";
import { VaultError } from "../vault/errors.js";

/** The parsed configuration, with defaults filled in. Paths are as written (relative to the home). */
export interface Config {
  cipher: Alg;
  limits: Limits;
  keys: {
    file: string;
    passphraseFile: string;
    command: string[] | null;
    commandTimeoutMs: number;
  };
  policyFile: string;
  auditJsonl: string | null;
}

export const DEFAULT_CONFIG: Config = {
  cipher: "aes-256-gcm",
  limits: DEFAULT_LIMITS,
  keys: { file: "master.key", passphraseFile: "keystore.json", command: null, commandTimeoutMs: 10_000 },
  policyFile: "policy.toml",
  auditJsonl: null,
};

type Table = Record<string, unknown>;

function fail(source: string, where: string, msg: string): never {
  throw new VaultError("config_invalid", `${source}: ${where}: ${msg}`);
}

function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 60)}…` : s;
}

function table(source: string, root: Table, name: string, allowed: readonly string[]): Table {
  const t = root[name];
  if (t === undefined) return {};
  if (typeof t !== "object" || t === null || Array.isArray(t)) fail(source, `[${name}]`, "expected a table");
  for (const k of Object.keys(t)) if (!allowed.includes(k)) fail(source, `[${name}]`, `unknown field "${k}" (known: ${allowed.join(", ")})`);
  return t as Table;
}

function int(source: string, where: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max)
    fail(source, where, `expected a whole number from ${min} to ${max}, got ${show(v)}`);
  return v;
}

function str(source: string, where: string, v: unknown): string {
  if (typeof v !== "string" || v.length === 0 || v.length > 4096) fail(source, where, `expected a non-empty string, got ${show(v)}`);
  return v;
}

function duration(source: string, where: string, v: unknown): number {
  if (typeof v !== "string") fail(source, where, `expected a duration such as "10s" or "7d", got ${show(v)}`);
  try {
    return parseDuration(v);
  } catch {
    return fail(source, where, `expected a duration such as "10s" or "7d", got ${show(v)}`);
  }
}

/** Parses the text of a lessor.toml; `source` names it in errors. */
export function parseConfig(text: string, source: string): Config {
  let root: Table;
  try {
    root = parse(text) as Table;
  } catch (e) {
    const where = e instanceof TomlError ? `line ${e.line}, column ${e.column}` : "syntax";
    return fail(source, where, `not valid TOML (${(e as Error).message.split("\n")[0]})`);
  }
  for (const k of Object.keys(root))
    if (!["vault", "keys", "policy", "audit"].includes(k)) fail(source, "top level", `unknown table or field "${k}" (known: [vault], [keys], [policy], [audit])`);
  const v = table(source, root, "vault", ["cipher", "max_secret_bytes", "keep_versions", "max_live_leases_per_agent", "lease_retention"]);
  const k = table(source, root, "keys", ["file", "passphrase_file", "command", "command_timeout"]);
  const p = table(source, root, "policy", ["file"]);
  const a = table(source, root, "audit", ["jsonl"]);
  const cfg: Config = structuredClone(DEFAULT_CONFIG);
  if (v.cipher !== undefined) {
    if (!ALGS.includes(v.cipher as Alg)) fail(source, "[vault] cipher", `expected one of ${ALGS.join(", ")}, got ${show(v.cipher)}`);
    cfg.cipher = v.cipher as Alg;
  }
  if (v.max_secret_bytes !== undefined) cfg.limits.maxSecretBytes = int(source, "[vault] max_secret_bytes", v.max_secret_bytes, 1, 512 * 1024);
  if (v.keep_versions !== undefined) cfg.limits.keepVersions = int(source, "[vault] keep_versions", v.keep_versions, 1, 1000);
  if (v.max_live_leases_per_agent !== undefined)
    cfg.limits.maxLiveLeasesPerAgent = int(source, "[vault] max_live_leases_per_agent", v.max_live_leases_per_agent, 1, 1_000_000);
  if (v.lease_retention !== undefined) cfg.limits.leaseRetentionMs = duration(source, "[vault] lease_retention", v.lease_retention);
  if (k.file !== undefined) cfg.keys.file = str(source, "[keys] file", k.file);
  if (k.passphrase_file !== undefined) cfg.keys.passphraseFile = str(source, "[keys] passphrase_file", k.passphrase_file);
  if (k.command !== undefined) {
    if (!Array.isArray(k.command) || k.command.length === 0 || !k.command.every((x) => typeof x === "string" && x.length > 0))
      fail(source, "[keys] command", 'expected a list of strings, program first, such as ["op", "read", "op://vault/item/key"] (it runs without a shell)');
    cfg.keys.command = k.command as string[];
  }
  if (k.command_timeout !== undefined) cfg.keys.commandTimeoutMs = duration(source, "[keys] command_timeout", k.command_timeout);
  if (p.file !== undefined) cfg.policyFile = str(source, "[policy] file", p.file);
  if (a.jsonl !== undefined) cfg.auditJsonl = str(source, "[audit] jsonl", a.jsonl);
  return cfg;
}

/** The commented starter file `lessor init` writes. */
export const STARTER_CONFIG = `# lessor configuration. Paths are relative to this directory (the lessor home).

[vault]
# cipher = "aes-256-gcm"            # or "xchacha20-poly1305"; applies to newly written values
# max_secret_bytes = 65536          # largest secret value
# keep_versions = 10                # older versions are pruned on write
# max_live_leases_per_agent = 100
# lease_retention = "7d"            # expired leases are deleted after this

[keys]
# The master key comes from the first source that is configured:
#   1. the LESSOR_MASTER_KEY environment variable (64 hex characters; for CI),
#   2. the passphrase key store (passphrase_file), if it exists,
#   3. the key file (file), if it exists,
#   4. a command (run without a shell; prints the key as 64 hex characters).
# file = "master.key"
# passphrase_file = "keystore.json"
# command = ["op", "read", "op://Private/lessor/master-key"]
# command_timeout = "10s"

[policy]
# file = "policy.toml"

[audit]
# jsonl = "audit.jsonl"             # also append every audit event to this file
`;
