/**
 * `docker-credential-lessor` (= `lessor docker-credential ACTION`): docker's credential helper
 * protocol (github.com/docker/docker-credential-helpers). docker runs `docker-credential-lessor get`
 * with the registry's server URL on stdin and reads `{"ServerURL","Username","Secret"}` on stdout;
 * `list` prints a JSON object of server URL → user name; errors go to stdout with exit code 1, and
 * the exact text {@link NOT_FOUND} means "no credential here" (docker then goes on without one).
 *
 * Which secret goes to which registry is the `[docker]` table of lessor.toml (src/config/docker-config.ts).
 * `get` takes a lease with `domains = [registry host]` (so policy decides), reads the value in the
 * same commit (one use, a short ttl) and leaves no live lease behind. A registry that is not
 * configured, or that the policy does not let the agent have the secret for, is not found.
 *
 * `store` is refused: `docker login` would otherwise say "Login Succeeded" while the password it
 * was given is dropped; the secret belongs in lessor (`lessor secret set`). `erase` (`docker
 * logout`) does nothing and succeeds: lessor is the store, and logging out must not fail.
 */
import { internalErrorLine } from "../internal-error.js";
import type { Cli } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { VaultError } from "../../base/errors.js";
import { refString } from "../../base/names.js";
import { registryKey, type DockerRegistry } from "../../config/docker-config.js";
import { VERSION } from "../../version.js";
import { readRequest } from "./stdin.js";

/** What docker-credential-helpers print for "no credential" (docker matches this text exactly). */
export const NOT_FOUND = "credentials not found in native keychain";

/** One request's lease: long enough for the round trip, and used up by its one read. */
export const DOCKER_LEASE_TTL = "60s";

/** Docker Hub's server URL, which docker uses rather than a host name. */
const DOCKER_HUB_URL = "https://index.docker.io/v1/";

const NO_ANSWER = new Set(["access_denied", "secret_not_found", "lease_expired", "lease_revoked", "lease_exhausted", "rate_limited"]);

/** A reply to print on stdout with an exit code (errors, too, go to stdout: docker reads them there). */
class Reply extends Error {
  constructor(
    readonly text: string,
    readonly code: number,
  ) {
    super(text);
  }
}

/** Runs `lessor docker-credential ACTION` (docker-credential-lessor ACTION). */
export function dockerCredentialAction(cli: Cli, action: string): Promise<void> {
  return cli.run(async () => {
    try {
      return await act(cli, action);
    } catch (e) {
      const r =
        e instanceof Reply ? e : new Reply(e instanceof VaultError ? `lessor: ${e.message}` : `lessor: ${internalErrorLine(e)}`, EXIT.error);
      cli.out(r.text);
      return r.code;
    }
  });
}

async function registries(cli: Cli): Promise<DockerRegistry[]> {
  const [{ loadConfig }, { resolveHome }] = await Promise.all([import("../../config/load.js"), import("../../config/home.js")]);
  return loadConfig(resolveHome(cli.home)).docker;
}

async function act(cli: Cli, action: string): Promise<number> {
  switch (action) {
    case "version":
      cli.out(`docker-credential-lessor (lessor) ${VERSION}`);
      return EXIT.ok;
    case "list": {
      const out: Record<string, string> = {};
      for (const r of await registries(cli)) out[r.registry === "index.docker.io" ? DOCKER_HUB_URL : r.registry] = r.username;
      cli.json(out);
      return EXIT.ok;
    }
    case "store":
      // Read and dropped unlooked-at: it holds the password `docker login` was given.
      (await readRequest(process.stdin, false)).fill(0);
      throw new Reply(
        "lessor does not store docker credentials: lessor is the store. Put the token in lessor (lessor secret set NAME) and map the registry to it in the [docker] table of lessor.toml; see docs/cli/credential-helpers.md",
        EXIT.error,
      );
    case "erase":
      // `docker logout`: nothing is kept here to forget (the secret stays in lessor; remove the
      // [docker] entry or the secret to stop lending it), and logging out must not fail.
      await readRequest(process.stdin, false);
      return EXIT.ok;
    case "get":
      return get(cli, (await readRequest(process.stdin, false)).toString("utf8").trim());
    default:
      throw new Reply(`lessor: docker-credential takes get, store, erase, list or version, got ${JSON.stringify(action.slice(0, 40))}`, EXIT.usage);
  }
}

/** A URL's user name and password (`scheme://user:pw@`), which a message must not repeat. */
const USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i;

async function get(cli: Cli, serverUrl: string): Promise<number> {
  const skip = (why: string): never => {
    cli.err(`docker-credential-lessor: no credential for ${JSON.stringify(serverUrl.slice(0, 200).replace(USERINFO, "$1…@"))}: ${why}`);
    throw new Reply(NOT_FOUND, EXIT.error);
  };
  if (serverUrl === "") throw new Reply("no credentials server URL", EXIT.error);
  if (USERINFO.test(serverUrl)) return skip("it holds a user name or password; lessor answers for a registry's address alone");
  let key: string;
  try {
    key = registryKey(serverUrl).key;
  } catch (e) {
    return skip(e instanceof Error ? e.message : String(e));
  }
  const reg = (await registries(cli)).find((r) => r.registry === key) ?? skip(`no [docker] entry for ${key} in lessor.toml`);
  const { api } = await cli.backend();
  let got: Awaited<ReturnType<typeof api.leaseAndAccess>>;
  try {
    got = await api.leaseAndAccess(
      { ...(reg.agent !== null ? { agent: reg.agent } : {}), secret: reg.secret, domains: [reg.host], ttl: DOCKER_LEASE_TTL, maxUses: 1 },
      { domain: reg.host },
    );
  } catch (e) {
    if (e instanceof VaultError && NO_ANSWER.has(e.code)) return skip(`secret ${refString(reg.secret)}: ${e.message}`);
    // The owner (not an agent) must say whose lease this is; the place to say it is the entry's
    // `agent` field, not the protocol's param the core names.
    if (reg.agent === null && e instanceof VaultError && e.code === "invalid_request" && /must name the agent/.test(e.message))
      throw new Reply(
        `lessor: the [docker] entry ${JSON.stringify(reg.registry)} in lessor.toml has no agent: add agent = "<agent id>" to it (only a helper connected as an agent, through LESSOR_SOCKET, may leave it out); see docs/cli/credential-helpers.md`,
        EXIT.error,
      );
    throw e;
  }
  try {
    const bytes = got.value.expose();
    // JSON needs the value as text; it must be UTF-8 (a token is), else JSON would change it.
    const secret = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    const text = JSON.stringify({ ServerURL: serverUrl, Username: reg.username, Secret: secret });
    await new Promise<void>((resolve, reject) => process.stdout.write(`${text}\n`, (e) => (e ? reject(e) : resolve())));
  } catch (e) {
    if (e instanceof TypeError) throw new VaultError("invalid_request", `the value of secret ${refString(reg.secret)} is not UTF-8 text, which docker's protocol cannot carry`);
    throw e;
  } finally {
    got.value.wipe();
    const l = got.lease;
    // One use was asked for, so the lease is used up already; should policy ever grant more, it is
    // revoked here so none is left live.
    if (l.maxUses === null || l.uses < l.maxUses) await api.revokeLease(l.id, "docker-credential: the value was handed to docker").catch(() => undefined);
  }
  return EXIT.ok;
}
