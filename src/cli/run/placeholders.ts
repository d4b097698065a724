/**
 * What the child holds when lessor run's proxy adds the credentials: for each referenced secret (or
 * JSON field of one), a placeholder shaped like the value (src/proxy/placeholder.ts), unique to this
 * lease and agent, and the credential the proxy swaps it for on the way out.
 */
import { VaultError } from "../../base/errors.js";
import type { InjectRule } from "../../config/proxy-config.js";
import { PlaceholderRegistry } from "../../proxy/placeholder-registry.js";
import { injectionRuleFor, type ProxyCredential } from "../../proxy/lease-egress.js";
import type { SecretFieldRef } from "../refs/grammar.js";
import { refString } from "../../base/names.js";
import type { LeaseBook } from "./leases.js";
import type { RenderPiece } from "./child-env.js";

/** Collects the run's credentials while the environment is rendered with placeholders. */
export class RunCredentials {
  readonly #registry = new PlaceholderRegistry();
  readonly #byLabel = new Map<string, ProxyCredential>();

  constructor(
    readonly agent: string,
    readonly book: LeaseBook,
    readonly rules: readonly InjectRule[],
  ) {}

  /** The credentials collected so far. */
  get credentials(): ProxyCredential[] {
    return [...this.#byLabel.values()];
  }

  /** The render function for resolveEnv: each piece becomes its placeholder. */
  readonly render: RenderPiece = (text: string, ref: SecretFieldRef, label: string): string => {
    const had = this.#byLabel.get(label);
    if (had) return had.placeholder;
    const lease = this.book.leaseOf(ref);
    if (!lease) throw new VaultError("internal", `no lease was taken for ${label}`);
    const secret = refString(ref);
    // One placeholder per (lease, field): the registry keys it by lease and "agent#field".
    const placeholder = this.#registry.issue(lease.id, ref.field === undefined ? this.agent : `${this.agent}#${ref.field}`, text);
    const field = ref.field;
    this.#byLabel.set(label, {
      lease,
      secret: label,
      placeholder,
      value: text,
      rule: injectionRuleFor(this.rules, secret),
      // Each request reads the secret again: the proxy injects this field of it, never the whole JSON.
      ...(field === undefined ? {} : { field }),
    });
    return placeholder;
  };

  /** Forgets the values (the run is over). */
  wipe(): void {
    for (const c of this.#byLabel.values()) (c as { value: string }).value = "";
    this.#byLabel.clear();
  }
}
