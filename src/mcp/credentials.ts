/**
 * The leases an MCP session took for its agent (`request_access`), each with the placeholder the
 * agent holds and the value the injecting proxy swaps it for. The values stay in this process: the
 * proxy needs them to scrub responses and to fire its tripwire (as `lessor run` keeps them,
 * src/cli/run/placeholders.ts). Nothing here ever goes into a tool result but the placeholder.
 */
import { VaultError } from "../base/errors.js";
import type { LeaseRecord } from "../base/types.js";
import type { InjectRule } from "../config/proxy-config.js";
import { PlaceholderRegistry } from "../proxy/placeholder-registry.js";
import { maskPatterns } from "../proxy/encoded-forms.js";
import { injectionRuleFor, type ProxyCredential } from "../proxy/lease-egress.js";
import { ScrubPatterns, scrub } from "../proxy/scrub.js";

/** The session's credentials, by lease id. */
export class SessionCredentials {
  readonly #registry = new PlaceholderRegistry();
  readonly #byLease = new Map<string, ProxyCredential>();
  /** Values a credential had before a rotation under the session (the last few), still masked. */
  readonly #earlier = new Map<string, string[]>();
  /** Tool calls under way (see {@link busy}). */
  #busy = 0;
  /** Values removed while tool calls were under way, still masked until the last of those has ended. */
  #lingering: { value: string; placeholder: string }[] = [];
  /** Bumped whenever the set changes, so the proxy built for an older set is replaced. */
  #generation = 0;
  /** Set by {@link end}: the session has ended. */
  #ended = false;
  /** Grants on their way (see {@link granting}). */
  readonly #granting = new Set<Promise<unknown>>();
  /** Leases granted but not held here whose revocation failed (see {@link unheld}). */
  readonly #unheld = new Set<string>();
  /**
   * The scrub patterns of the values held, built once per change of the set (see {@link scrubBytes}):
   * null when nothing is held, undefined when they must be built again.
   */
  #patterns: ScrubPatterns | null | undefined = undefined;

  constructor(
    readonly agent: string,
    readonly rules: readonly InjectRule[],
  ) {}

  /** Which set of credentials this is (changes on every add and remove). */
  get generation(): number {
    return this.#generation;
  }

  /** The credentials held now, for the proxy. */
  get credentials(): ProxyCredential[] {
    return [...this.#byLease.values()];
  }

  /** The credential of `leaseId`, when this session took it. */
  get(leaseId: string): ProxyCredential | undefined {
    return this.#byLease.get(leaseId);
  }

  /**
   * Adds a lease with its value (as text: it goes in headers), and returns the placeholder shaped
   * like it. A value that is not UTF-8 text cannot be put in a header and is refused.
   */
  add(lease: LeaseRecord, value: Uint8Array): ProxyCredential {
    // A grant that was still on its way when the session ended (a stop signal during request_access):
    // its caller revokes it, as the session's end did the others.
    if (this.#ended) throw new VaultError("unavailable", "this lessor mcp session has ended; the lease it was granted was revoked");
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(value);
    } catch {
      throw new VaultError("invalid_request", `the value of ${lease.scope}/${lease.name} is not UTF-8 text, so lessor mcp cannot put it in an HTTP request; the lease was revoked`);
    }
    const secret = `${lease.scope}/${lease.name}`;
    const placeholder = this.#registry.issue(lease.id, this.agent, text);
    // Leases of one secret carry one value: held once, not a copy per lease (a value may be 64 KiB, and
    // an agent may take lease after lease of it, each ending by its use cap or expiry).
    for (const other of this.#byLease.values())
      if (other.value === text) {
        text = other.value;
        break;
      }
    const c: ProxyCredential = { lease, secret, placeholder, value: text, rule: injectionRuleFor(this.rules, secret) };
    this.#byLease.set(lease.id, c);
    this.#generation++;
    this.#patterns = undefined;
    // Built now, not at the next text scrubbed: values the scrubber cannot hold at once (its table has
    // a cap) would otherwise fail every later tool call of the session, list_secrets included, while
    // this lease lasts; refused here, the caller revokes it and the session goes on as before.
    try {
      this.#patterns = this.#buildPatterns();
    } catch (e) {
      // Never handed to a request (it could not be masked): forgotten at once, not kept masked meanwhile.
      this.remove(lease.id, false);
      if (e instanceof VaultError && e.code === "value_too_large")
        throw new VaultError(
          "value_too_large",
          `lessor mcp cannot mask ${secret} in responses together with the ${this.#byLease.size} other lease(s) this session holds (${e.message}); the lease was revoked. Revoke leases you no longer need (the revoke tool) and ask again, or ask the owner for a smaller secret`,
        );
      throw e;
    }
    return c;
  }

  /**
   * A tool call starts: until the returned function is called (after its result was scrubbed), a value
   * removed meanwhile (the agent's `revoke` of a lease a request in flight injected) stays masked. The
   * old proxy may still answer that request before the lease watch closes its tunnel, with the value
   * echoed somewhere the proxy does not scrub: the last guard must still know it.
   */
  busy(): () => void {
    this.#busy++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.#busy > 0 || this.#lingering.length === 0) return;
      for (const l of this.#lingering) l.value = "";
      this.#lingering = [];
      this.#patterns = undefined;
    };
  }

  /**
   * Forgets a lease (revoked or ended); true when it was held. While a tool call is under way its value
   * stays masked until that call has ended (see {@link busy}), unless `linger` is false.
   */
  remove(leaseId: string, linger = true): boolean {
    const c = this.#byLease.get(leaseId);
    if (!c) return false;
    if (linger && this.#busy > 0 && !this.#ended)
      for (const value of [c.value, ...(this.#earlier.get(leaseId) ?? [])]) this.#lingering.push({ value, placeholder: c.placeholder });
    this.#byLease.delete(leaseId);
    this.#earlier.delete(leaseId);
    this.#registry.release(leaseId);
    (c as { value: string }).value = "";
    this.#generation++;
    this.#patterns = undefined;
    return true;
  }

  /**
   * The proxy injected `value` for `leaseId`, not the value held (the secret was rotated): it is held
   * from now on, and the old one stays masked too.
   */
  rotated(leaseId: string, value: string): void {
    const c = this.#byLease.get(leaseId);
    if (!c || c.value === value || value.length === 0) return;
    this.#earlier.set(leaseId, [...(this.#earlier.get(leaseId) ?? []), c.value].slice(-4));
    (c as { value: string }).value = value;
    this.#patterns = undefined;
  }

  /**
   * `text` with every held value replaced by its placeholder: the last guard before anything goes back
   * to the agent (the proxy already scrubs response bodies; headers and error texts pass here too).
   */
  scrub(text: string): string {
    return text.length === 0 ? text : this.scrubBytes(Buffer.from(text, "utf8")).toString("utf8");
  }

  /** {@link scrub} for bytes. */
  scrubBytes(bytes: Buffer): Buffer {
    if (bytes.length === 0) return bytes;
    const patterns = (this.#patterns ??= this.#buildPatterns());
    return patterns === null ? bytes : scrub(bytes, patterns);
  }

  /**
   * The patterns of every held value (and any it had before a rotation), as it is and in the forms an
   * upstream echoes it in; null when there are none. Built once per change of the set, not per text
   * scrubbed (a tool result's every header is scrubbed apart), and each distinct value once however
   * many leases carry it: the patterns of a 64 KiB value are a table of many megabytes that takes a
   * second to build, and an agent taking lease after lease of it made every tool call slower, by
   * seconds, and the process larger, by the lease.
   */
  #buildPatterns(): ScrubPatterns | null {
    return maskPatterns([
      ...this.credentials.flatMap((c) => [c.value, ...(this.#earlier.get(c.lease.id) ?? [])].map((value) => ({ value, placeholder: c.placeholder }))),
      ...this.#lingering,
    ]);
  }

  /** The lease ids held. */
  leaseIds(): string[] {
    return [...this.#byLease.keys()];
  }

  /**
   * Notes a lease the session was granted but does not hold (its value could not be added, or it was
   * of no use) and could not revoke just now (the daemon was unreachable): the session's end revokes
   * it with the held ones, through the path that retries and names what is left.
   */
  unheld(leaseId: string): void {
    this.#unheld.add(leaseId);
  }

  /** Every lease the session's end must revoke: those held and those noted by {@link unheld}. */
  leaseIdsToRevoke(): string[] {
    return [...new Set([...this.#byLease.keys(), ...this.#unheld])];
  }

  /**
   * Runs `grant` (a lease request whose value is then added here, or whose lease is revoked when it
   * cannot be) as one step the session's end waits for: see {@link end}.
   */
  async granting<T>(grant: () => Promise<T>): Promise<T> {
    const p = grant();
    this.#granting.add(p);
    try {
      return await p;
    } finally {
      this.#granting.delete(p);
    }
  }

  /**
   * The session is over: {@link add} refuses from now on (a grant still on its way revokes its own
   * lease), and this resolves once every grant on its way has settled, or after `waitMs`.
   */
  async end(waitMs: number): Promise<void> {
    this.#ended = true;
    if (this.#granting.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled([...this.#granting]), new Promise((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
  }

  /** Forgets every value (the session is over; call {@link end} first). */
  wipe(): void {
    this.#ended = true;
    for (const id of this.leaseIds()) this.remove(id);
    for (const l of this.#lingering) l.value = "";
    this.#lingering = [];
    this.#patterns = undefined;
  }
}
