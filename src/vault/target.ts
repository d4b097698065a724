/**
 * The shape of an access target (where a leased value is about to be used: domain, method, path, and
 * whether an injecting proxy uses it),
 * checked before the access runs. Whether the lease allows the target is decided later, in the
 * transaction, and audited; this only refuses what is not text at all or holds a character that
 * could drive a terminal (src/base/text.ts), so that no audit row or message ever carries one.
 */
import { VaultError } from "../base/errors.js";
import { MAX_PATH_LENGTH } from "./http-path.js";
import { checkNoUnsafe } from "../base/text.js";
import { VALUE_FITS } from "../base/value-fit.js";

/** Throws VaultError("invalid_request") unless each field of `target` that is set is clean text. */
export function checkTarget(target: { domain?: unknown; method?: unknown; path?: unknown; via?: unknown; fit?: unknown }): void {
  if (target === null || typeof target !== "object") throw new VaultError("invalid_request", "the access target must be an object {domain?, method?, path?, via?, fit?}");
  const { domain, method, path, via, fit } = target;
  if (via !== undefined && via !== "proxy")
    throw new VaultError("invalid_request", 'via must be "proxy" (the value goes into an injecting proxy\'s request), or left out');
  if (fit !== undefined && !(VALUE_FITS as readonly unknown[]).includes(fit))
    throw new VaultError("invalid_request", 'fit must be "header", "base64", "text" or "utf8" (where the value is about to go), or left out');
  if (domain !== undefined) {
    if (typeof domain !== "string" || domain.length > 1024) throw new VaultError("invalid_request", "domain must be a host name such as \"api.example.com\"");
    checkNoUnsafe(domain, "the domain");
  }
  if (method !== undefined) {
    if (typeof method !== "string" || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$/.test(method))
      throw new VaultError("invalid_request", 'method must be an HTTP method such as "GET" (1-32 letters, digits or !#$%&\'*+.^_`|~-)');
  }
  if (path !== undefined) {
    if (typeof path !== "string" || path.length > MAX_PATH_LENGTH)
      throw new VaultError("invalid_request", `path must be the request's path, such as "/repos/acme/app", of at most ${MAX_PATH_LENGTH} characters`);
    checkNoUnsafe(path, "the path");
  }
}

/** Throws VaultError("invalid_request") when a requested domain is not text or holds an unsafe character. */
export function checkDomainsText(domains: readonly unknown[]): void {
  for (const d of domains) if (typeof d === "string") checkNoUnsafe(d, "a requested domain");
}
