/**
 * The `[docker]` table of lessor.toml: which secret `docker-credential-lessor` lends for which
 * registry (docs/cli/credential-helpers.md). One entry per registry, keyed by its host (with
 * `:port` when it has one):
 *
 *   [docker]
 *   "ghcr.io" = { secret = "ghcr-token", username = "octocat", agent = "builder" }
 *
 * Parsed strictly: an unknown field, a key that is not a host, a bad secret or agent name is an
 * error naming the file and the entry.
 */
import { VaultError } from "../base/errors.js";
import { isAgentId, parseRefString } from "../base/names.js";
import type { SecretRef } from "../base/types.js";
import { normalizeHost } from "../vault/domain.js";
import { fail } from "./fields.js";

/** One registry's entry. */
export interface DockerRegistry {
  /** The registry as configured, canonical: `host` or `host:port`. */
  registry: string;
  /** The host alone: the lease's domain. */
  host: string;
  secret: SecretRef;
  username: string;
  /** The agent the lease is for; absent when the helper connects as an agent itself (LESSOR_SOCKET). */
  agent: string | null;
}

/** The parsed `[docker]` table, in file order (keys are unique once canonical). */
export type DockerConfig = DockerRegistry[];

const FIELDS = ["secret", "username", "agent"] as const;


/**
 * The canonical form of a registry as docker names it (`ghcr.io`, `https://ghcr.io`,
 * `https://index.docker.io/v1/`, `registry.local:5000`): lower-case `host` or `host:port`, without
 * scheme or path. `http://` is refused (a registry credential must not cross the network in plain
 * text). Throws VaultError("invalid_request") for anything that is not a DNS host.
 */
export function registryKey(serverUrl: string): { key: string; host: string } {
  let s = serverUrl.trim();
  if (/^http:\/\//i.test(s)) throw new VaultError("invalid_request", `${JSON.stringify(s.slice(0, 100))} is a plain http:// registry; lessor lends registry credentials only over https`);
  s = s.replace(/^https:\/\//i, "");
  const slash = s.indexOf("/");
  if (slash >= 0) s = s.slice(0, slash);
  const m = /^(.*):(\d{1,5})$/.exec(s);
  if (m) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw new VaultError("invalid_request", `registry ${JSON.stringify(s)} has a port out of range`);
    const host = normalizeHost(m[1]!);
    return { key: `${host}:${port}`, host };
  }
  const host = normalizeHost(s);
  return { key: host, host };
}

/** Parses the `[docker]` table (`raw` is undefined when absent). */
export function parseDockerConfig(source: string, raw: unknown): DockerConfig {
  const out: DockerRegistry[] = [];
  if (raw === undefined) return out;
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail(source, "[docker]", "expected a table of registries, such as \"ghcr.io\" = { secret = \"ghcr-token\", username = \"octocat\" }");
  for (const [name, entry] of Object.entries(raw as Record<string, unknown>)) {
    const where = `[docker] ${JSON.stringify(name)}`;
    if (/^[a-z]+:\/\//i.test(name) || name.includes("/")) fail(source, where, 'write the registry as its host (and :port), such as "ghcr.io" or "registry.local:5000", without a scheme or path');
    let key: { key: string; host: string };
    try {
      key = registryKey(name);
    } catch (e) {
      return fail(source, where, `not a registry host: ${(e as Error).message}`);
    }
    if (out.some((r) => r.registry === key.key)) fail(source, where, `registry ${key.key} is configured twice`);
    if (typeof entry !== "object" || entry === null || Array.isArray(entry))
      fail(source, where, 'expected a table such as { secret = "ghcr-token", username = "octocat", agent = "builder" }');
    const t = entry as Record<string, unknown>;
    for (const k of Object.keys(t)) if (!(FIELDS as readonly string[]).includes(k)) fail(source, where, `unknown field "${k}" (known: ${FIELDS.join(", ")})`);
    if (typeof t.secret !== "string") fail(source, `${where} secret`, 'expected the name of a secret, such as "ghcr-token" or "ci/ghcr-token"');
    let secret: SecretRef;
    try {
      secret = parseRefString(t.secret);
    } catch (e) {
      return fail(source, `${where} secret`, (e as Error).message);
    }
    if (typeof t.username !== "string" || t.username.length === 0 || t.username.length > 256 || /[\p{C}]/u.test(t.username))
      fail(source, `${where} username`, "expected the registry user name (docker sends it with the secret), a non-empty string without control characters");
    if (t.agent !== undefined && !isAgentId(t.agent)) fail(source, `${where} agent`, `expected an agent id, got ${JSON.stringify(t.agent)}`);
    out.push({ registry: key.key, host: key.host, secret, username: t.username, agent: t.agent === undefined ? null : (t.agent as string) });
  }
  return out;
}
