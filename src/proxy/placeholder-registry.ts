/**
 * The proxy's placeholder registry: one placeholder per (lease, agent), looked up in O(1) when a
 * request carries it. It holds placeholders and lease ids, never a secret value: the value is only
 * read to shape the placeholder when it is issued.
 */
import { VaultError } from "../base/errors.js";
import { makePlaceholder, type RandomSource } from "./placeholder.js";

/** What a placeholder stands for. */
export interface PlaceholderEntry {
  readonly placeholder: string;
  readonly leaseId: string;
  readonly agent: string;
}

const key = (leaseId: string, agent: string): string => `${leaseId}\u0000${agent}`;

/** Placeholders of live leases. */
export class PlaceholderRegistry {
  private readonly byPlaceholder = new Map<string, PlaceholderEntry>();
  private readonly byLeaseAgent = new Map<string, PlaceholderEntry>();
  private readonly byLease = new Map<string, Set<PlaceholderEntry>>();
  private readonly random: RandomSource | undefined;

  /** `random` is for tests; the default is `crypto.randomBytes`. */
  constructor(options: { random?: RandomSource } = {}) {
    this.random = options.random;
  }

  /**
   * The placeholder of `leaseId` for `agent`, made from `value`'s shape the first time and the same
   * one after that. Distinct (lease, agent) pairs always get distinct placeholders.
   */
  issue(leaseId: string, agent: string, value: string | Uint8Array): string {
    if (!leaseId || !agent) throw new VaultError("invalid_request", "a placeholder needs a lease id and an agent");
    const existing = this.byLeaseAgent.get(key(leaseId, agent));
    if (existing) return existing.placeholder;
    let placeholder = makePlaceholder(value, this.random);
    // At 64 bits or more a collision is all but impossible; a broken random source must not alias two leases.
    for (let tries = 0; this.byPlaceholder.has(placeholder); tries++) {
      if (tries === 100) throw new VaultError("internal", "could not make a placeholder distinct from the others");
      placeholder = makePlaceholder(value, this.random);
    }
    const entry: PlaceholderEntry = Object.freeze({ placeholder, leaseId, agent });
    this.byPlaceholder.set(placeholder, entry);
    this.byLeaseAgent.set(key(leaseId, agent), entry);
    let set = this.byLease.get(leaseId);
    if (!set) this.byLease.set(leaseId, (set = new Set()));
    set.add(entry);
    return placeholder;
  }

  /** The entry a placeholder stands for, whoever asks (O(1)). */
  lookup(placeholder: string): PlaceholderEntry | undefined {
    return this.byPlaceholder.get(placeholder);
  }

  /**
   * The entry, only if it was issued to `agent`: an agent that presents another agent's placeholder
   * gets nothing (the proxy should treat that as a tripwire).
   */
  lookupFor(placeholder: string, agent: string): PlaceholderEntry | undefined {
    const e = this.byPlaceholder.get(placeholder);
    return e && e.agent === agent ? e : undefined;
  }

  /** Every placeholder issued for a lease (one per agent). */
  forLease(leaseId: string): PlaceholderEntry[] {
    return [...(this.byLease.get(leaseId) ?? [])];
  }

  /** Forgets a lease's placeholders (it was revoked, expired or used up). Returns how many. */
  release(leaseId: string): number {
    const set = this.byLease.get(leaseId);
    if (!set) return 0;
    for (const e of set) {
      this.byPlaceholder.delete(e.placeholder);
      this.byLeaseAgent.delete(key(e.leaseId, e.agent));
    }
    this.byLease.delete(leaseId);
    return set.size;
  }

  /** Number of live placeholders. */
  get size(): number {
    return this.byPlaceholder.size;
  }
}
