/**
 * `lessor git-credential get|store|erase`: git's credential helper (docs/cli/credential-helpers.md).
 *
 * `get` answers only an https request for a host the policy lets the agent have the secret for: it
 * takes a lease with `domains = [host]` (so policy decides, as for any lease), reads the value in
 * the same commit (one use, a short ttl), prints it to git and leaves no live lease behind. When
 * there is nothing to answer (plain http, a host the policy does not cover, no such secret) it prints
 * nothing and exits 0, with one line on stderr saying why, so git goes on to its next helper or fails
 * as it would with no credential. It also answers nothing when git would hand the answer to another
 * helper's `store` as well (./git-helpers.ts). A refusal made here, before the vault is asked (the
 * URL's protocol or host, the repository's own git config, another helper, or git's config unreadable), is audited through
 * `record_refusal`; the policy's refusals the vault audits itself. `store` and `erase` do nothing:
 * lessor is the store.
 */
import { UsageError, type Cli } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { VaultError } from "../../base/errors.js";
import { parseRefString, refString } from "../../base/names.js";
import type { SecretRef } from "../../base/types.js";
import { formatGitAnswer, gitHost, parseGitRequest } from "./git-protocol.js";
import { foreignHelpers, shownKey } from "./git-helpers.js";
import { credentialConfigHere, repositoryRouting } from "./repo-transport.js";
import { readRequest } from "./stdin.js";

/** The username git sends with the token unless --username or the URL names one (GitHub's and Gitea's convention). */
export const DEFAULT_GIT_USERNAME = "x-access-token";

/** One request's lease: long enough for the round trip, and used up by its one read. */
export const GIT_LEASE_TTL = "60s";

/** `lessor git-credential`'s options. */
export interface GitCredentialOptions {
  agent?: string | undefined;
  secret?: string | undefined;
  username?: string | undefined;
}

/** Errors that mean "no credential for this request" rather than a broken set-up. */
const NO_ANSWER = new Set(["access_denied", "secret_not_found", "lease_expired", "lease_revoked", "lease_exhausted", "rate_limited"]);

/** Runs `lessor git-credential ACTION`. */
export function gitCredentialAction(cli: Cli, action: string, o: GitCredentialOptions): Promise<void> {
  return cli.run(async () => {
    if (action === "store" || action === "erase") {
      // git hands back the credential it got from `get` (store) or one the server refused (erase).
      // lessor is where it lives, so there is nothing to keep or forget here; the request is read and
      // dropped so git's write never meets a closed pipe.
      await readRequest(process.stdin, true);
      return EXIT.ok;
    }
    if (action !== "get") throw new UsageError(`git-credential takes get, store or erase (git appends it), got ${JSON.stringify(action.slice(0, 40))}`);
    if (o.secret === undefined) throw new UsageError("say which secret git's password is with --secret NAME, in the helper's configuration (docs/cli/credential-helpers.md)");
    let ref: SecretRef;
    try {
      ref = parseRefString(o.secret);
    } catch (e) {
      throw new UsageError(`--secret: ${e instanceof Error ? e.message : String(e)}`);
    }
    const req = parseGitRequest(await readRequest(process.stdin, true));
    const skip = (why: string): number => {
      cli.err(`lessor git-credential: no credential: ${why}`);
      return EXIT.ok;
    };
    // A refusal made here, before the vault is asked, is audited too (src/vault/client-refusals.ts):
    // the vault never sees the request otherwise. One that cannot be audited is refused all the same.
    const refuse = async (why: string, audited: string, domain?: string): Promise<number> => {
      skip(why);
      try {
        const { api } = await cli.backend();
        await api.api.record_refusal({ ...(o.agent !== undefined ? { agent: o.agent } : {}), secret: refString(ref), ...(domain !== undefined ? { domain } : {}), by: "git-credential", reason: auditText(audited) });
      } catch (e) {
        cli.err(`lessor git-credential: this refusal could not be audited: ${e instanceof Error ? e.message : String(e)}`);
      }
      return EXIT.ok;
    };
    if (req.protocol === "http") return refuse("the URL is plain http://, which would send the token unencrypted; use https://", "the URL is plain http://");
    if (req.protocol !== "https")
      return refuse(`lessor answers only for https:// URLs, not ${JSON.stringify(req.protocol ?? "(no protocol)")}`, `the protocol is not https: ${JSON.stringify(req.protocol ?? "(none)")}`);
    if (req.host === null || req.host === "") return refuse("git sent no host", "git sent no host");
    let host: string;
    try {
      host = gitHost(req.host).name;
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      return refuse(why, `the host is not a DNS name: ${why}`);
    }
    // One git run: the repository's routing keys and every credential helper for the URL.
    const config = credentialConfigHere();
    if ("failed" in config)
      return refuse(
        `could not read this repository's git config to check where git would send the credential and which credential helpers it would hand the answer to (git config failed: ${config.failed}), so lessor answers nothing; run git config --list --show-scope here to see what git says, and fix what it names (or run git where its config can be read)`,
        `the repository's git config could not be checked (git config failed: ${config.failed})`,
        host,
      );
    // Keys as lessor may repeat them: a URL's user name and password (and anything token-shaped) left out.
    const routing = [...new Set(repositoryRouting(config.out).map(shownKey))];
    if (routing.length > 0)
      return refuse(
        `this repository's own git config sets ${routing.join(", ")}, which decides where git sends the credential or whom it trusts; lessor answers only when such settings are yours (git config --global, or -c), so remove them from the repository's config (git config --local --unset KEY)`,
        `the repository's own git config sets ${routing.join(", ")}, which decides where git sends the credential or whom it trusts`,
        host,
      );
    const helpers = foreignHelpers(config.out, { host: req.host, username: req.username, path: req.path });
    const reset = `git config --global credential.https://${req.host}.helper '' and then git config --global --add credential.https://${req.host}.helper '!lessor git-credential …'`;
    if (helpers.length > 0) {
      const named = helpers.map((h) => `${h.key} = ${h.name} (${h.scope})`).join(", ");
      return refuse(
        `git would also hand the answer to ${named}: git gives an accepted credential to every helper configured for the URL to keep, which would put the token where the policy no longer decides who gets it; make lessor the only helper for this URL by emptying the list before its line: ${reset} (docs/cli/credential-helpers.md)`,
        `git would also hand the answer to another credential helper: ${named}`,
        host,
      );
    }
    const username = o.username ?? (req.username !== null && req.username !== "" ? req.username : DEFAULT_GIT_USERNAME);
    const { api } = await cli.backend();
    let got: Awaited<ReturnType<typeof api.leaseAndAccess>>;
    try {
      // The lease is for this host only, so the policy decides whether the secret may go there; its
      // one read is in the same commit, and a refused read leaves no live lease.
      got = await api.leaseAndAccess(
        { ...(o.agent !== undefined ? { agent: o.agent } : {}), secret: ref, domains: [host], ttl: GIT_LEASE_TTL, maxUses: 1 },
        { domain: host, ...(req.path !== null && req.path !== "" ? { path: requestPath(req.path) } : {}) },
      );
    } catch (e) {
      if (e instanceof VaultError && NO_ANSWER.has(e.code)) return skip(`for ${host}: ${e.message}`);
      if (o.agent === undefined && e instanceof VaultError && e.code === "invalid_request" && /must name the agent/.test(e.message))
        throw new UsageError("say which agent git's credential is for with --agent AGENT in the helper's configuration (only a caller connected as an agent may leave it out)");
      throw e;
    }
    const lease = got.lease;
    let answer: Buffer | null = null;
    try {
      answer = formatGitAnswer(username, got.value.expose());
      await new Promise<void>((resolve, reject) => process.stdout.write(answer!, (e) => (e ? reject(e) : resolve())));
    } finally {
      got.value.wipe();
      answer?.fill(0);
      // The value is git's now; the lease has no more use. One use was asked for, so it is used up
      // already; should policy ever grant more, it is revoked here so none is left live.
      if (lease.maxUses === null || lease.uses < lease.maxUses) await api.revokeLease(lease.id, "git-credential: the value was handed to git").catch(() => undefined);
    }
    return EXIT.ok;
  });
}

/**
 * `s` as an audit reason: one line of printable ASCII (anything else, which git's request or a repository's
 * key names could hold, becomes `?`), at most 300 characters.
 */
function auditText(s: string): string {
  const clean = s.replace(/[^\x20-\x7e]/g, "?");
  return clean.length > 300 ? `${clean.slice(0, 299)}…` : clean;
}

/**
 * git's `path` attribute as a request path for the policy: git sends it percent-decoded, and the
 * policy reads a request target, where `?` starts a query and `#` a fragment. So `%`, `?` and `#` are
 * encoded again: `allowed.git?/../other.git` (git's decoding of `allowed.git%3F/../other.git`, which
 * curl asks for as `/other.git`) is checked as `/other.git`, not as `/allowed.git`.
 */
export function requestPath(path: string): string {
  return `/${path.replace(/%/g, "%25").replace(/\?/g, "%3F").replace(/#/g, "%23")}`;
}
