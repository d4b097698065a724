/**
 * The in-memory store, for tests and embedding without a file. Same semantics as the SQLite store:
 * transactions run one at a time, write straight into the tables and keep an undo log; committed
 * reads look through the undo log, so they never see a running transaction's writes; a failed
 * transaction is undone from the log.
 */
import { VaultError } from "../base/errors.js";
import { isRevocable } from "../base/lease-state.js";
import type {
  AuditCheckpoint,
  AuditFilter,
  AuditHead,
  AuditRecord,
  LeaseFilter,
  LeaseRecord,
  RevokeSelector,
  SecretFilter,
  SecretRecord,
  SecretRef,
  TokenRecord,
  VersionRecord,
} from "../base/types.js";
import { auditGap, auditLimit, isLeaseLive, nestedBeforeCommit, txFinished } from "./semantics.js";
import { withTxTimeout } from "./tx-timeout.js";
import { summaryMatches, wantsSummaries } from "./audit-summaries.js";
import type { Store, StoreReader, StoreTx, TokenFilter } from "../vault/ports.js";

type Versions = Map<number, VersionRecord>;

/** The tables. Stored records are never mutated in place: a write replaces the object. */
interface Tables {
  secrets: Map<string, SecretRecord>;
  versions: Map<string, Versions>;
  leases: Map<string, LeaseRecord>;
  /** Lease ids by agent and by secret key; may hold ids of deleted or uncommitted leases. */
  byAgent: Map<string, Set<string>>;
  bySecret: Map<string, Set<string>>;
  audit: AuditRecord[];
  auditIds: Set<string>;
  checkpoint: AuditCheckpoint | null;
  meta: Map<string, string>;
  tokens: Map<string, TokenRecord>;
}

/** What the running transaction overwrote: the committed value (undefined for "absent"). */
interface Undo {
  secrets: Map<string, SecretRecord | undefined>;
  versions: Map<string, Versions | undefined>;
  leases: Map<string, LeaseRecord | undefined>;
  auditLength: number;
  checkpoint: { value: AuditCheckpoint | null } | null;
  meta: Map<string, string | undefined>;
  tokens: Map<string, TokenRecord | undefined>;
}

const key = (scope: string, name: string): string => `${scope}\u0000${name}`;
const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** A store that keeps everything in memory; contents are lost when the process ends. */
export function createMemoryStore(opts: { txTimeoutMs?: number } = {}): Store {
  return new MemoryStore(opts.txTimeoutMs ?? 10_000);
}

/** Reads over the tables, either as they are now (inside a tx) or as last committed. */
class Reads implements StoreReader {
  constructor(
    protected readonly t: Tables,
    /** The undo log to look through for committed reads, or null to read the tables as they are. */
    private readonly undo: () => Undo | null,
  ) {}

  protected check(): void {}

  // ---- the view ----

  protected secret(k: string): SecretRecord | undefined {
    const u = this.undo();
    return u !== null && u.secrets.has(k) ? u.secrets.get(k) : this.t.secrets.get(k);
  }
  private *allSecrets(): Iterable<SecretRecord> {
    const u = this.undo();
    for (const [k, s] of this.t.secrets) if (u === null || !u.secrets.has(k)) yield s;
    if (u !== null) for (const s of u.secrets.values()) if (s !== undefined) yield s;
  }
  protected versionsOf(k: string): Versions | undefined {
    const u = this.undo();
    return u !== null && u.versions.has(k) ? u.versions.get(k) : this.t.versions.get(k);
  }
  private *allVersions(): Iterable<VersionRecord> {
    const u = this.undo();
    for (const [k, vs] of this.t.versions) if (u === null || !u.versions.has(k)) yield* vs.values();
    if (u !== null) for (const vs of u.versions.values()) if (vs !== undefined) yield* vs.values();
  }
  protected lease(id: string): LeaseRecord | undefined {
    const u = this.undo();
    return u !== null && u.leases.has(id) ? u.leases.get(id) : this.t.leases.get(id);
  }
  protected *leasesIn(ids: Set<string> | undefined): Iterable<LeaseRecord> {
    if (ids === undefined) return;
    for (const id of ids) {
      const l = this.lease(id);
      if (l !== undefined) yield l;
    }
  }
  protected *allLeases(): Iterable<LeaseRecord> {
    const u = this.undo();
    for (const [id, l] of this.t.leases) if (u === null || !u.leases.has(id)) yield l;
    if (u !== null) for (const l of u.leases.values()) if (l !== undefined) yield l;
  }
  protected auditLength(): number {
    return this.undo()?.auditLength ?? this.t.audit.length;
  }

  // ---- StoreReader ----

  async getSecret(ref: SecretRef): Promise<SecretRecord | null> {
    this.check();
    const s = this.secret(key(ref.scope, ref.name));
    return s === undefined ? null : copySecret(s);
  }

  async listSecrets(filter: SecretFilter): Promise<SecretRecord[]> {
    this.check();
    const out: SecretRecord[] = [];
    for (const s of this.allSecrets()) {
      if (filter.scope !== undefined && s.scope !== filter.scope) continue;
      if (filter.namePrefix !== undefined && !s.name.startsWith(filter.namePrefix)) continue;
      if (filter.tag !== undefined && !s.tags.includes(filter.tag)) continue;
      if (filter.after !== undefined && (cmp(s.scope, filter.after.scope) || cmp(s.name, filter.after.name)) <= 0) continue;
      out.push(copySecret(s));
    }
    out.sort((a, b) => cmp(a.scope, b.scope) || cmp(a.name, b.name));
    return filter.limit !== undefined ? out.slice(0, filter.limit) : out;
  }

  async getVersion(ref: SecretRef, version: number): Promise<VersionRecord | null> {
    this.check();
    const v = this.versionsOf(key(ref.scope, ref.name))?.get(version);
    return v === undefined ? null : copyVersion(v);
  }

  async getCurrentVersion(ref: SecretRef): Promise<VersionRecord | null> {
    this.check();
    const k = key(ref.scope, ref.name);
    const s = this.secret(k);
    const v = s === undefined ? undefined : this.versionsOf(k)?.get(s.currentVersion);
    return v === undefined ? null : copyVersion(v);
  }

  async listVersions(ref: SecretRef): Promise<VersionRecord[]> {
    this.check();
    const vs = this.versionsOf(key(ref.scope, ref.name));
    if (vs === undefined) return [];
    return [...vs.values()].sort((a, b) => a.version - b.version).map(copyVersion);
  }

  async versionsNotUnderKey(keyId: string, limit: number): Promise<VersionRecord[]> {
    this.check();
    const out: VersionRecord[] = [];
    if (limit <= 0) return out;
    for (const v of this.allVersions()) {
      if (v.keyId === keyId) continue;
      out.push(copyVersion(v));
      if (out.length >= limit) break;
    }
    return out;
  }

  async keyIdsInUse(): Promise<string[]> {
    this.check();
    const ids = new Set<string>();
    for (const v of this.allVersions()) ids.add(v.keyId);
    return [...ids].sort(cmp);
  }

  async getLease(id: string): Promise<LeaseRecord | null> {
    this.check();
    const l = this.lease(id);
    return l === undefined ? null : copyLease(l);
  }

  async listLeases(filter: LeaseFilter): Promise<LeaseRecord[]> {
    this.check();
    const source =
      filter.agent !== undefined
        ? this.leasesIn(this.t.byAgent.get(filter.agent))
        : filter.secret !== undefined
          ? this.leasesIn(this.t.bySecret.get(key(filter.secret.scope, filter.secret.name)))
          : this.allLeases();
    const out: LeaseRecord[] = [];
    for (const l of source) {
      if (filter.id !== undefined && l.id !== filter.id) continue;
      if (filter.agent !== undefined && l.agent !== filter.agent) continue;
      if (filter.secret !== undefined && (l.scope !== filter.secret.scope || l.name !== filter.secret.name)) continue;
      if (filter.liveAt !== undefined && !isLeaseLive(l, filter.liveAt)) continue;
      if (filter.beforeId !== undefined && cmp(l.id, filter.beforeId) >= 0) continue;
      out.push(l);
    }
    out.sort((a, b) => cmp(b.id, a.id));
    const limit = filter.limit === undefined ? out.length : Math.max(0, Math.floor(filter.limit));
    return out.slice(0, limit).map(copyLease);
  }

  async countLiveLeases(agent: string, now: number): Promise<number> {
    this.check();
    let n = 0;
    for (const l of this.leasesIn(this.t.byAgent.get(agent))) if (l.agent === agent && isLeaseLive(l, now)) n++;
    return n;
  }

  async queryAudit(filter: AuditFilter): Promise<AuditRecord[]> {
    this.check();
    const limit = auditLimit(filter.limit);
    const types = filter.types !== undefined && filter.types.length > 0 ? new Set(filter.types) : null;
    // An agent or secret filter also finds the summaries of counted refusals that list it (./audit-summaries.ts).
    const summaries = wantsSummaries(filter);
    const match = (a: AuditRecord): boolean =>
      (((filter.agent === undefined || a.agent === filter.agent) && (filter.secret === undefined || a.secret === filter.secret)) ||
        (summaries && summaryMatches(a, filter))) &&
      (filter.leaseId === undefined || a.leaseId === filter.leaseId) &&
      (filter.actorId === undefined || a.actorId === filter.actorId) &&
      (types === null || types.has(a.type)) &&
      (filter.since === undefined || a.time >= filter.since) &&
      (filter.until === undefined || a.time < filter.until) &&
      (filter.afterSeq === undefined || a.seq > filter.afterSeq);
    const out: AuditRecord[] = [];
    const n = this.auditLength();
    const audit = this.t.audit;
    if (filter.order === "desc") {
      for (let i = n - 1; i >= 0 && out.length < limit; i--) if (match(audit[i]!)) out.push(copyAudit(audit[i]!));
    } else {
      // seq is index + 1, so afterSeq lets us skip straight to the first candidate.
      const start = filter.afterSeq === undefined ? 0 : Math.max(0, Math.floor(filter.afterSeq));
      for (let i = start; i < n && out.length < limit; i++) if (match(audit[i]!)) out.push(copyAudit(audit[i]!));
    }
    return out;
  }

  async auditHead(): Promise<AuditHead | null> {
    this.check();
    const n = this.auditLength();
    const last = n > 0 ? this.t.audit[n - 1]! : undefined;
    return last === undefined ? null : { seq: last.seq, hash: Buffer.from(last.hash), keyId: last.keyId ?? null };
  }

  async getCheckpoint(): Promise<AuditCheckpoint | null> {
    this.check();
    const u = this.undo();
    const cp = u?.checkpoint != null ? u.checkpoint.value : this.t.checkpoint;
    return cp === null ? null : copyCheckpoint(cp);
  }

  async getMeta(k: string): Promise<string | null> {
    this.check();
    const u = this.undo();
    return (u !== null && u.meta.has(k) ? u.meta.get(k) : this.t.meta.get(k)) ?? null;
  }

  /** Every metadata entry in this view, sorted by key (Store.listMeta). */
  async listMeta(): Promise<{ key: string; value: string }[]> {
    this.check();
    const u = this.undo();
    const keys = [...new Set([...this.t.meta.keys(), ...(u?.meta.keys() ?? [])])];
    const out: { key: string; value: string }[] = [];
    for (const key of keys) {
      const value = u !== null && u.meta.has(key) ? u.meta.get(key) : this.t.meta.get(key);
      if (value !== undefined) out.push({ key, value });
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async getToken(id: string): Promise<TokenRecord | null> {
    this.check();
    const u = this.undo();
    const t = u !== null && u.tokens.has(id) ? u.tokens.get(id) : this.t.tokens.get(id);
    return t === undefined ? null : copyToken(t);
  }

  async listTokens(f: TokenFilter = {}): Promise<TokenRecord[]> {
    this.check();
    const u = this.undo();
    const ids = new Set([...this.t.tokens.keys(), ...(u?.tokens.keys() ?? [])]);
    const out: TokenRecord[] = [];
    for (const id of ids) {
      const t = u !== null && u.tokens.has(id) ? u.tokens.get(id) : this.t.tokens.get(id);
      if (t === undefined) continue;
      if (f.liveAt !== undefined && (t.revokedAt !== null || (t.expiresAt !== null && t.expiresAt <= f.liveAt))) continue;
      if (f.namePrefix !== undefined && !t.name.startsWith(f.namePrefix)) continue;
      out.push(copyToken(t));
    }
    return out.sort((a, b) => a.createdAt - b.createdAt || cmp(a.id, b.id));
  }
}

function copyToken(t: TokenRecord): TokenRecord {
  return { ...t, actFor: t.actFor === null ? null : [...t.actFor], hash: Buffer.from(t.hash), mac: t.mac === null ? null : Buffer.from(t.mac) };
}

/** The tx of one transaction function: reads and writes the tables directly, logging undo entries. */
class MemoryTx extends Reads implements StoreTx {
  active = true;
  /** What this transaction function registered to run before the commit (see StoreTx.beforeCommit). */
  readonly finishers = new Set<(tx: StoreTx) => Promise<void>>();

  constructor(
    t: Tables,
    private readonly log: Undo,
    /** A tx handed to a beforeCommit function: it may not register more. */
    private readonly finishing = false,
  ) {
    super(t, () => null);
  }

  beforeCommit(f: (tx: StoreTx) => Promise<void>): void {
    this.check();
    if (this.finishing) throw nestedBeforeCommit();
    this.finishers.delete(f); // registered again: it moves after those registered since
    this.finishers.add(f);
  }

  protected override check(): void {
    if (!this.active) throw txFinished();
  }

  private saveSecret(k: string): void {
    if (!this.log.secrets.has(k)) this.log.secrets.set(k, this.t.secrets.get(k));
  }
  private saveVersions(k: string): void {
    if (!this.log.versions.has(k)) {
      const vs = this.t.versions.get(k);
      this.log.versions.set(k, vs === undefined ? undefined : new Map(vs));
    }
  }
  private saveLease(id: string): void {
    if (!this.log.leases.has(id)) this.log.leases.set(id, this.t.leases.get(id));
  }

  async putSecret(rec: SecretRecord): Promise<void> {
    this.check();
    const k = key(rec.scope, rec.name);
    this.saveSecret(k);
    this.t.secrets.set(k, copySecret(rec));
  }

  async insertVersion(rec: VersionRecord): Promise<void> {
    this.check();
    const k = key(rec.scope, rec.name);
    if (!this.t.secrets.has(k))
      throw new VaultError("internal", "cannot store a version of a secret that has no metadata row; write the secret first");
    if (this.t.versions.get(k)?.has(rec.version))
      throw new VaultError("internal", `version ${rec.version} of this secret already exists; version numbers are never reused`);
    this.saveVersions(k);
    let vs = this.t.versions.get(k);
    if (vs === undefined) this.t.versions.set(k, (vs = new Map()));
    vs.set(rec.version, copyVersion(rec));
  }

  async deleteVersionsBelow(ref: SecretRef, version: number): Promise<number> {
    this.check();
    const k = key(ref.scope, ref.name);
    const vs = this.t.versions.get(k);
    if (vs === undefined) return 0;
    this.saveVersions(k);
    let n = 0;
    for (const v of [...vs.keys()])
      if (v < version) {
        vs.delete(v);
        n++;
      }
    return n;
  }

  async deleteSecret(ref: SecretRef): Promise<boolean> {
    this.check();
    const k = key(ref.scope, ref.name);
    if (!this.t.secrets.has(k)) return false;
    this.saveSecret(k);
    this.saveVersions(k);
    this.t.secrets.delete(k);
    this.t.versions.delete(k);
    return true;
  }

  async rewrapVersion(ref: SecretRef, version: number, fromKeyId: string, toKeyId: string, wrappedDek: Uint8Array): Promise<boolean> {
    this.check();
    const k = key(ref.scope, ref.name);
    const v = this.t.versions.get(k)?.get(version);
    if (v === undefined || v.keyId !== fromKeyId) return false;
    this.saveVersions(k);
    this.t.versions.get(k)!.set(version, { ...v, keyId: toKeyId, wrappedDek: Buffer.from(wrappedDek) });
    return true;
  }

  async insertLease(rec: LeaseRecord): Promise<void> {
    this.check();
    if (this.t.leases.has(rec.id)) throw new VaultError("internal", "a lease with this id already exists; lease ids are never reused");
    this.saveLease(rec.id);
    this.t.leases.set(rec.id, copyLease(rec));
    addTo(this.t.byAgent, rec.agent, rec.id);
    addTo(this.t.bySecret, key(rec.scope, rec.name), rec.id);
  }

  async useLease(id: string, now: number, cap: number | null = null): Promise<number | null> {
    this.check();
    const l = this.t.leases.get(id);
    if (l === undefined || !isLeaseLive(l, now) || (cap !== null && l.uses >= cap)) return null;
    this.saveLease(id);
    const next = { ...l, uses: l.uses + 1 };
    this.t.leases.set(id, next);
    return next.uses;
  }

  async renewLease(id: string, expiresAt: number, renewals: number): Promise<void> {
    this.check();
    const l = this.t.leases.get(id);
    if (l === undefined) return;
    this.saveLease(id);
    this.t.leases.set(id, { ...l, expiresAt, renewals });
  }

  async revokeLeases(sel: RevokeSelector, now: number, reason: string): Promise<number> {
    this.check();
    let candidates: Iterable<LeaseRecord>;
    if ("id" in sel) {
      const l = this.t.leases.get(sel.id);
      candidates = l === undefined ? [] : [l];
    } else if ("agent" in sel) candidates = [...this.leasesIn(this.t.byAgent.get(sel.agent))].filter((l) => l.agent === sel.agent);
    else if ("secret" in sel) {
      const { scope, name } = sel.secret;
      candidates = [...this.leasesIn(this.t.bySecret.get(key(scope, name)))].filter((l) => l.scope === scope && l.name === name);
    } else if (sel.all === true) candidates = [...this.t.leases.values()];
    else throw new VaultError("invalid_request", "unknown revoke selector; use {id}, {agent}, {secret} or {all: true}");
    let n = 0;
    for (const l of candidates) {
      if (!isRevocable(l, now)) continue;
      this.saveLease(l.id);
      this.t.leases.set(l.id, { ...l, revokedAt: now, revokeReason: reason });
      n++;
    }
    return n;
  }

  async deleteExpiredLeases(before: number, limit: number): Promise<number> {
    this.check();
    const doomed: string[] = [];
    if (limit > 0)
      for (const l of this.t.leases.values()) {
        if (l.expiresAt < before) doomed.push(l.id);
        if (doomed.length >= limit) break;
      }
    for (const id of doomed) {
      this.saveLease(id);
      this.t.leases.delete(id); // the id indexes are cleaned up at commit
    }
    return doomed.length;
  }

  async insertAudit(rec: AuditRecord): Promise<void> {
    this.check();
    const head = this.t.audit.length > 0 ? this.t.audit[this.t.audit.length - 1]!.seq : 0;
    if (rec.seq !== head + 1) throw auditGap(rec.seq, head);
    if (this.t.auditIds.has(rec.id))
      throw new VaultError("internal", "an audit row with this id already exists; audit ids are never reused");
    this.t.audit.push(copyAudit(rec));
    this.t.auditIds.add(rec.id);
  }

  async putCheckpoint(cp: AuditCheckpoint): Promise<void> {
    this.check();
    if (this.log.checkpoint === null) this.log.checkpoint = { value: this.t.checkpoint };
    this.t.checkpoint = copyCheckpoint(cp);
  }

  async setMeta(k: string, value: string): Promise<void> {
    this.check();
    if (!this.log.meta.has(k)) this.log.meta.set(k, this.t.meta.get(k));
    this.t.meta.set(k, value);
  }

  async insertToken(rec: TokenRecord): Promise<void> {
    this.check();
    if (this.t.tokens.has(rec.id)) throw new VaultError("internal", "a token with that id already exists");
    if (!this.log.tokens.has(rec.id)) this.log.tokens.set(rec.id, undefined);
    this.t.tokens.set(rec.id, copyToken(rec));
  }

  async revokeToken(id: string, now: number): Promise<boolean> {
    this.check();
    const t = this.t.tokens.get(id);
    if (t === undefined || t.revokedAt !== null) return false;
    if (!this.log.tokens.has(id)) this.log.tokens.set(id, t);
    this.t.tokens.set(id, { ...t, revokedAt: now });
    return true;
  }

  async setTokenMac(id: string, mac: Uint8Array): Promise<boolean> {
    this.check();
    const t = this.t.tokens.get(id);
    if (t === undefined) return false;
    if (!this.log.tokens.has(id)) this.log.tokens.set(id, t);
    this.t.tokens.set(id, { ...t, mac: Buffer.from(mac) });
    return true;
  }
}

class MemoryStore extends Reads implements Store {
  readonly kind = "memory";
  private current: Undo | null = null;
  private tail: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(private readonly txTimeoutMs: number) {
    const t: Tables = {
      secrets: new Map(),
      versions: new Map(),
      leases: new Map(),
      byAgent: new Map(),
      bySecret: new Map(),
      audit: [],
      auditIds: new Set(),
      checkpoint: null,
      meta: new Map(),
      tokens: new Map(),
    };
    let self: MemoryStore | undefined;
    super(t, () => self!.current);
    self = this;
  }

  protected override check(): void {
    if (this.closed) throw new VaultError("unavailable", "the vault store is closed; open it again to continue");
  }

  transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new VaultError("unavailable", "the vault store is closed; open it again to continue"));
    const run = this.tail.then(() => this.runOne(fn));
    this.tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.tail;
  }

  private async runOne<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    const log: Undo = {
      secrets: new Map(),
      versions: new Map(),
      leases: new Map(),
      auditLength: this.t.audit.length,
      checkpoint: null,
      meta: new Map(),
      tokens: new Map(),
    };
    const tx = new MemoryTx(this.t, log);
    this.current = log;
    try {
      const value = await withTxTimeout(fn(tx), this.txTimeoutMs);
      tx.active = false;
      for (const f of tx.finishers) {
        const ftx = new MemoryTx(this.t, log, true);
        try {
          await withTxTimeout(f(ftx), this.txTimeoutMs);
        } finally {
          ftx.active = false;
        }
      }
      this.commit(log);
      return value;
    } catch (e) {
      tx.active = false;
      this.rollback(log);
      throw e;
    } finally {
      this.current = null;
    }
  }

  private commit(log: Undo): void {
    for (const [id, before] of log.leases)
      if (before !== undefined && !this.t.leases.has(id)) {
        removeFrom(this.t.byAgent, before.agent, id);
        removeFrom(this.t.bySecret, key(before.scope, before.name), id);
      }
  }

  private rollback(log: Undo): void {
    const t = this.t;
    for (const [k, s] of log.secrets) if (s === undefined) t.secrets.delete(k);
    else t.secrets.set(k, s);
    for (const [k, vs] of log.versions) if (vs === undefined) t.versions.delete(k);
    else t.versions.set(k, vs);
    for (const [id, l] of log.leases) {
      const now = t.leases.get(id);
      if (l !== undefined) t.leases.set(id, l);
      else if (now !== undefined) {
        t.leases.delete(id);
        removeFrom(t.byAgent, now.agent, id);
        removeFrom(t.bySecret, key(now.scope, now.name), id);
      }
    }
    for (let i = log.auditLength; i < t.audit.length; i++) t.auditIds.delete(t.audit[i]!.id);
    t.audit.length = log.auditLength;
    if (log.checkpoint !== null) t.checkpoint = log.checkpoint.value;
    for (const [k, v] of log.meta) if (v === undefined) t.meta.delete(k);
    else t.meta.set(k, v);
    for (const [k, v] of log.tokens) if (v === undefined) t.tokens.delete(k);
    else t.tokens.set(k, v);
  }
}

function addTo(index: Map<string, Set<string>>, k: string, id: string): void {
  let s = index.get(k);
  if (s === undefined) index.set(k, (s = new Set()));
  s.add(id);
}

function removeFrom(index: Map<string, Set<string>>, k: string, id: string): void {
  const s = index.get(k);
  if (s === undefined) return;
  s.delete(id);
  if (s.size === 0) index.delete(k);
}

function copySecret(s: SecretRecord): SecretRecord {
  return { ...s, tags: [...s.tags] };
}

function copyVersion(v: VersionRecord): VersionRecord {
  return { ...v, wrappedDek: Buffer.from(v.wrappedDek), ciphertext: Buffer.from(v.ciphertext) };
}

function copyLease(l: LeaseRecord): LeaseRecord {
  return {
    ...l,
    domains: [...l.domains],
    methods: l.methods === null ? null : [...l.methods],
    paths: l.paths === null ? null : [...l.paths],
  };
}

function copyAudit(a: AuditRecord): AuditRecord {
  return { ...a, prevHash: Buffer.from(a.prevHash), hash: Buffer.from(a.hash), keyId: a.keyId ?? null };
}

function copyCheckpoint(c: AuditCheckpoint): AuditCheckpoint {
  return { ...c, hash: Buffer.from(c.hash), mac: Buffer.from(c.mac) };
}
