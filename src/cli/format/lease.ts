/** Leases for output: the stable --json shape and the state a lease is in. */
import { leaseState, type LeaseState } from "../../base/lease-state.js";
import type { LeaseRecord } from "../../base/types.js";
import { iso } from "./time.js";

/** The core's rule, so the CLI shows the state an access would report. */
export { leaseState, type LeaseState } from "../../base/lease-state.js";

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
  /** Only `issuedBy` (or an admin) may use it: a person approved it for that identity. */
  bound: boolean;
  /** Its value goes only into an injecting proxy's requests: its rule did not reveal it when it was granted. */
  proxyOnly: boolean;
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
    bound: l.bound,
    proxyOnly: l.proxyOnly,
  };
}
