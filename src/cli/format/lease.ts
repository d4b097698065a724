/** Leases for output: the stable --json shape and the state a lease is in. */
import type { LeaseRecord } from "../../vault/types.js";
import { iso } from "./time.js";

/** Where a lease stands now. */
export type LeaseState = "live" | "expired" | "revoked" | "exhausted";

/** The state of `lease` at `now` (revoked wins over used up, which wins over expired). */
export function leaseState(lease: LeaseRecord, now = Date.now()): LeaseState {
  if (lease.revokedAt !== null) return "revoked";
  if (lease.maxUses !== null && lease.uses >= lease.maxUses) return "exhausted";
  if (lease.expiresAt <= now) return "expired";
  return "live";
}

/** A lease as printed by --json (docs/cli/leases.md): times as ISO text, `secret` as scope/name. */
export interface LeaseJson {
  id: string;
  agent: string;
  secret: string;
  scope: string;
  name: string;
  state: LeaseState;
  domains: string[];
  anyDomain: boolean;
  methods: string[] | null;
  paths: string[] | null;
  rule: string;
  issuedAt: string;
  expiresAt: string;
  maxExpiresAt: string;
  uses: number;
  maxUses: number | null;
  renewals: number;
  maxRenewals: number | null;
  renewable: boolean;
  revokedAt: string | null;
  revokeReason: string | null;
  issuedBy: string;
}

/** The --json shape of a lease. It never holds a value. */
export function leaseJson(l: LeaseRecord, now = Date.now()): LeaseJson {
  return {
    id: l.id,
    agent: l.agent,
    secret: `${l.scope}/${l.name}`,
    scope: l.scope,
    name: l.name,
    state: leaseState(l, now),
    domains: [...l.domains],
    anyDomain: l.anyDomain,
    methods: l.methods,
    paths: l.paths,
    rule: l.rule,
    issuedAt: iso(l.issuedAt)!,
    expiresAt: iso(l.expiresAt)!,
    maxExpiresAt: iso(l.maxExpiresAt)!,
    uses: l.uses,
    maxUses: l.maxUses,
    renewals: l.renewals,
    maxRenewals: l.maxRenewals,
    renewable: l.renewable,
    revokedAt: iso(l.revokedAt),
    revokeReason: l.revokeReason,
    issuedBy: l.issuedBy,
  };
}
