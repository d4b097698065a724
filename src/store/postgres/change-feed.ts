/**
 * The PostgreSQL change feed: how a revocation, a killswitch or a policy reload committed by one
 * lessor instance reaches every other instance sharing the database within milliseconds.
 *
 * Writing (inside the commit, {@link changeStatement}): a commit that revoked leases or a token, or
 * wrote metadata, takes the next seq from `lessor_change_seq` (a row lock held until its commit, so
 * seqs are gap-free and in commit order even without the vault-wide write lock) and appends one row to
 * `lessor_changes`: nothing is recorded for a commit that rolls back. Once it has committed, its seq is
 * announced with `pg_notify` ({@link notifyStatement}), on its own and best effort: NOTIFY inside the
 * commit would make the commit fail whenever the server's notification queue is full, and any role
 * that may connect can fill it (LISTEN in a transaction left open, then NOTIFY until "too many
 * notifications"), which would have stopped every killswitch and revocation. A notification that
 * fails is caught up by the poll below.
 *
 * Reading ({@link PgChangeFeed}): each instance LISTENs on one dedicated connection (not from the
 * pool: a pooled connection is handed to transactions, and a pooler in transaction mode drops
 * LISTEN). A notification is only a hint to read the table: what is applied is what `lessor_changes`
 * holds, and the last seq applied moves only with rows read. Any role that may connect to the
 * database may NOTIFY on any channel (no privilege is needed, and the channel's name is the md5 of
 * the schema's), so a payload's seq and changes are never trusted; a forged notification can at most
 * cause a read. Notifications that arrive while a read is queued share it (a burst costs one read,
 * one round trip: the counter and the rows after the last seq in one statement). Independently,
 * every `pollMs` the feed reads the same way: the fallback for setups where notifications never
 * arrive (PgBouncer in transaction mode). After the LISTEN connection drops, the feed reconnects with
 * backoff and catches up from the last seq it applied. The store calls {@link PgChangeFeed.catchUpNow} before it serves again after its
 * own connections failed, which also ends a pending backoff. An instance that missed more than the
 * table keeps gets a `resync` change.
 */
import { createHash } from "node:crypto";
import pg from "pg";
import type { Pool, PoolConfig } from "pg";
import type { ChangeListener, StoreChange } from "../../vault/ports.js";
import type { Stmt } from "./queries.js";

/** Rows of `lessor_changes` kept; an instance that fell further behind re-reads everything instead. */
export const CHANGE_LOG_KEEP = 10_000;

/** Most lease ids one change lists; a larger revocation says only how many (`leaseIds: null`). */
export const MAX_LISTED_LEASES = 50;

/** A NOTIFY payload must stay under 8000 bytes; changes larger than this are read from the table. */
const MAX_INLINE_CHANGES = 7000;

/** Rows read per catch-up query. */
const CATCH_UP_PAGE = 500;

/**
 * The channel, per schema so that vaults in different schemas of one database never hear each other.
 * Named by the schema's md5, not the name itself: a channel name is cut at 63 bytes, and pg_notify
 * refuses a longer one, which made every announcing commit fail for a schema name of 49 characters
 * or more. Built-ins by their pg_catalog names, in every statement here: an unqualified
 * `md5(current_schema())` (name, cast to text) would run an `md5(name)` of any schema on the
 * search_path instead, inside the announcing commit (./catalog.ts).
 */
const CHANNEL_SQL = "'lessor_changes.' OPERATOR(pg_catalog.||) pg_catalog.md5(pg_catalog.current_schema()::pg_catalog.text)";

/** The channel of the vault in `schema`, as {@link CHANNEL_SQL} names it (for tools and tests that listen). */
export function channelFor(schema: string): string {
  return `lessor_changes.${createHash("md5").update(schema, "utf8").digest("hex")}`;
}

/** How the feed runs (`[vault] listen` and `[vault] poll_ms` in lessor.toml). */
export interface FeedOptions {
  /** LISTEN for notifications (default true). Off, changes arrive only by polling. */
  listen: boolean;
  /** How often the change counter is read, whether or not notifications arrive (default 1000 ms). */
  pollMs: number;
}

export const DEFAULT_FEED_OPTIONS: Readonly<FeedOptions> = Object.freeze({ listen: true, pollMs: 1000 });

/**
 * The statement that records `changes` for the commit it runs in: the seq (its one row's `seq`), the
 * log row, and pruning of rows older than {@link CHANGE_LOG_KEEP}.
 */
export function changeStatement(origin: string, changes: readonly StoreChange[], now: number): Stmt {
  return {
    what: "record the commit's changes for the other instances",
    text: `WITH s AS (UPDATE lessor_change_seq SET n = n + 1 WHERE id = 1 RETURNING n),
      i AS (INSERT INTO lessor_changes (seq, at, origin, changes) SELECT n, $1, $2, $3::text::jsonb FROM s RETURNING seq),
      d AS (DELETE FROM lessor_changes WHERE seq <= (SELECT n FROM s) - ${CHANGE_LOG_KEEP})
      SELECT seq FROM i`,
    values: [now, origin, JSON.stringify(changes)],
  };
}

/**
 * The notification of change `seq`, recorded by `origin` (run after its commit, see the module
 * comment): a hint that says which seq and whose, the changes too when they are small (readers use
 * only the seq and origin: what is applied is read from the table).
 */
export function notifyStatement(seq: number, origin: string, changes: readonly StoreChange[]): Stmt {
  const json = JSON.stringify(changes);
  const payload = JSON.stringify({ seq, origin, changes: Buffer.byteLength(json) <= MAX_INLINE_CHANGES ? changes : null });
  return { what: "announce the commit's changes to the other instances", text: `SELECT pg_catalog.pg_notify(${CHANNEL_SQL}, $1::text)`, values: [payload] };
}

/** Strictly parses one change as stored or sent; null for anything lessor did not write. */
export function parseChange(v: unknown): StoreChange | null {
  if (typeof v !== "object" || v === null) return null;
  const o = v as Record<string, unknown>;
  switch (o.kind) {
    case "leases_revoked": {
      const ids = o.leaseIds;
      if (!Number.isSafeInteger(o.count) || (o.count as number) < 0) return null;
      if (ids !== null && (!Array.isArray(ids) || ids.length > MAX_LISTED_LEASES || !ids.every((i) => typeof i === "string" && i.length <= 100))) return null;
      return { kind: "leases_revoked", count: o.count as number, leaseIds: ids === null ? null : [...(ids as string[])] };
    }
    case "token_revoked":
      return typeof o.tokenId === "string" && o.tokenId.length > 0 && o.tokenId.length <= 100 ? { kind: "token_revoked", tokenId: o.tokenId } : null;
    case "meta":
      return typeof o.key === "string" && o.key.length > 0 && o.key.length <= 100 ? { kind: "meta", key: o.key } : null;
    default:
      return null;
  }
}

/**
 * What a notification says of itself, for one decision only: whether it may be skipped without a read
 * (this instance's own commit, or a seq already read). Never applied: anyone may send one.
 */
function parseHint(text: string): { seq: number; origin: string } | null {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof o !== "object" || o === null) return null;
  const r = o as Record<string, unknown>;
  if (!Number.isSafeInteger(r.seq) || typeof r.origin !== "string") return null;
  return { seq: r.seq as number, origin: r.origin };
}

/**
 * The counter and, in the same snapshot, the rows after the last seq applied (a page): one round trip.
 * With nothing new, one row whose seq is null.
 */
const CATCH_UP_SQL = `SELECT c.n, l.seq, l.origin, l.changes FROM lessor_change_seq c
  LEFT JOIN LATERAL (SELECT seq, origin, changes FROM lessor_changes WHERE seq > $1 ORDER BY seq LIMIT $2) l ON true
  WHERE c.id = 1`;

function parseChanges(v: unknown): StoreChange[] | null {
  if (!Array.isArray(v)) return null;
  const out: StoreChange[] = [];
  for (const c of v) {
    const p = parseChange(c);
    if (p === null) return null;
    out.push(p);
  }
  return out;
}

/** What {@link PgChangeFeed.state} reports (tests, status). */
export interface FeedState {
  /** The last seq applied, or null before the feed started. */
  last: number | null;
  /** A LISTEN connection is up and has caught up: notifications are trusted. */
  listening: boolean;
  /** Times the LISTEN connection was (re)established. */
  connects: number;
}

/** The reading side: LISTEN plus polling, delivering other instances' changes in commit order. */
export class PgChangeFeed {
  readonly #pool: Pool;
  readonly #clientConfig: PoolConfig;
  readonly #origin: string;
  readonly #opts: FeedOptions;
  readonly #listeners = new Set<ChangeListener>();
  #last: number | null = null;
  #client: pg.Client | null = null;
  #listening = false;
  #connects = 0;
  #backoff = 250;
  #poll: NodeJS.Timeout | null = null;
  #reconnect: NodeJS.Timeout | null = null;
  /** Every read and delivery runs on this chain, one at a time, so seqs are applied in order. */
  #chain: Promise<void> = Promise.resolve();
  #catchUpQueued = false;
  #started = false;
  #closed = false;

  constructor(pool: Pool, clientConfig: PoolConfig, origin: string, opts: FeedOptions) {
    this.#pool = pool;
    this.#clientConfig = clientConfig;
    this.#origin = origin;
    this.#opts = opts;
  }

  /** Subscribes; the feed starts with the first subscriber and stops with the last. */
  subscribe(listener: ChangeListener): () => void {
    this.#listeners.add(listener);
    if (!this.#started && !this.#closed) this.#start();
    return () => {
      this.#listeners.delete(listener);
      if (this.#listeners.size === 0) void this.#stop();
    };
  }

  state(): FeedState {
    return { last: this.#last, listening: this.#listening, connects: this.#connects };
  }

  /** Stops listening and polling; waits for a read in progress. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#stop();
  }

  /**
   * Reads and applies, now, what other instances committed after the last change applied: the store
   * calls it before it serves again after it lost the database, so that nothing committed meanwhile (a
   * revoked token, the killswitch, a policy reload) is missed while the LISTEN connection is still
   * waiting out its backoff. Once the database answers, that connection is also opened again at once.
   * Rejects when the database cannot be read. Resolves at once when the feed is not running.
   */
  catchUpNow(): Promise<void> {
    if (!this.#started || this.#last === null) return Promise.resolve();
    const p = this.#chain.then(async () => {
      await this.#catchUp();
      if (this.#reconnect !== null && this.#started) {
        clearTimeout(this.#reconnect);
        this.#reconnect = null;
        this.#backoff = 250;
        this.#connect();
      }
    });
    this.#chain = p.catch(() => {});
    return p;
  }

  #start(): void {
    this.#started = true;
    // From the counter as it is now: what this process reads from the store from here on is current.
    this.#enqueue(async () => {
      while (this.#last === null && this.#started) {
        try {
          const r = await this.#pool.query<{ n: number }>("SELECT n FROM lessor_change_seq WHERE id = 1");
          this.#last = Number(r.rows[0]?.n ?? 0);
        } catch {
          await new Promise((res) => setTimeout(res, Math.min(this.#opts.pollMs, 1000)).unref());
        }
      }
    });
    if (this.#opts.listen) this.#connect();
    this.#poll = setInterval(() => this.#catchUpSoon(), this.#opts.pollMs);
    this.#poll.unref();
  }

  async #stop(): Promise<void> {
    this.#started = false;
    if (this.#poll !== null) clearInterval(this.#poll);
    if (this.#reconnect !== null) clearTimeout(this.#reconnect);
    this.#poll = this.#reconnect = null;
    this.#listening = false;
    const c = this.#client;
    this.#client = null;
    if (c !== null) await c.end().catch(() => {});
    await this.#chain;
  }

  #enqueue(f: () => Promise<void>): void {
    this.#chain = this.#chain.then(f).catch(() => {
      // A failed read is retried by the next poll or notification; nothing is marked as seen.
    });
  }

  #catchUpSoon(): void {
    if (this.#catchUpQueued || !this.#started) return;
    this.#catchUpQueued = true;
    this.#enqueue(async () => {
      this.#catchUpQueued = false;
      await this.#catchUp();
    });
  }

  /** Tries {@link #connect} again after the backoff, which doubles (up to 5 s). */
  #connectLater(): void {
    this.#reconnect = setTimeout(() => {
      this.#reconnect = null;
      this.#connect();
    }, this.#backoff);
    this.#reconnect.unref();
    this.#backoff = Math.min(this.#backoff * 2, 5000);
  }

  /** Opens the LISTEN connection; on failure or loss, tries again with backoff (up to 5 s). */
  #connect(): void {
    if (!this.#started || this.#closed) return;
    let client: pg.Client;
    try {
      // node-postgres reads the URL's TLS files here: one removed since the store opened throws.
      client = new pg.Client({ ...this.#clientConfig, application_name: "lessor-listen" });
    } catch {
      this.#connectLater(); // as for a lost connection; the poll still runs
      return;
    }
    this.#client = client;
    const lost = (): void => {
      if (this.#client !== client) return;
      this.#client = null;
      this.#listening = false;
      client.end().catch(() => {});
      if (!this.#started) return;
      // Meanwhile the poll still runs; this only restores the fast path.
      this.#connectLater();
    };
    client.on("error", lost);
    client.on("end", lost);
    client.on("notification", (msg) => {
      if (this.#client !== client || msg.payload === undefined) return;
      this.#onNotification(msg.payload);
    });
    void (async () => {
      try {
        await client.connect();
        const r = await client.query<{ c: string }>(`SELECT ${CHANNEL_SQL} AS c`);
        const channel = r.rows[0]!.c;
        await client.query(`LISTEN "${channel.replaceAll('"', '""')}"`);
        if (this.#client !== client) return;
        // Catch up on what committed while there was no LISTEN before trusting notifications again.
        this.#enqueue(async () => {
          await this.#catchUp();
          if (this.#client === client) {
            this.#listening = true;
            this.#connects++;
            this.#backoff = 250;
          }
        });
      } catch {
        lost();
      }
    })();
  }

  /**
   * A notification: a hint that the table may hold something new, never a change in itself. Skipped
   * without a read only when it claims to be this instance's own commit or a seq already read (a
   * forged one can only skip itself); otherwise one read, shared with every notification that arrives
   * before it starts.
   */
  #onNotification(payload: string): void {
    const h = parseHint(payload);
    if (h !== null && this.#last !== null && (h.origin === this.#origin || h.seq <= this.#last)) return;
    this.#catchUpSoon();
  }

  /** Reads the counter and the rows after the last seq applied (one statement per page), and applies them. */
  async #catchUp(): Promise<void> {
    if (this.#last === null || !this.#started) return;
    let last: number = this.#last;
    for (;;) {
      const r: pg.QueryResult<{ n: number; seq: number | null; origin: string | null; changes: unknown }> = await this.#pool.query(CATCH_UP_SQL, [
        last,
        CATCH_UP_PAGE,
      ]);
      if (r.rows.length === 0) return; // no counter row: not a schema lessor made; the poll tries again
      const n = Number(r.rows[0]!.n);
      if (n < last) {
        // The counter went back: the schema was recreated or restored from a backup.
        this.#last = n;
        return this.#deliver([{ kind: "resync", reason: "the change log was reset (the database was restored or recreated)" }]);
      }
      const rows = r.rows.filter((row) => row.seq !== null);
      if (rows.length === 0) {
        if (last >= n) return;
        this.#last = n;
        return this.#deliver([{ kind: "resync", reason: "the change log no longer holds the changes this instance missed" }]);
      }
      for (const row of rows) {
        const seq = Number(row.seq);
        if (seq !== last + 1) this.#deliver([{ kind: "resync", reason: `missed changes ${last + 1}..${seq - 1}: the change log no longer holds them` }]);
        this.#last = last = seq;
        if (row.origin === this.#origin) continue;
        const changes = parseChanges(row.changes);
        this.#deliver(changes ?? [{ kind: "resync", reason: `change ${seq} is not one lessor wrote` }]);
      }
      if (rows.length < CATCH_UP_PAGE) return;
    }
  }

  #deliver(changes: readonly StoreChange[]): void {
    for (const ch of changes)
      for (const l of this.#listeners) {
        try {
          l(ch);
        } catch {
          // A listener's failure must not stop the others or the feed.
        }
      }
  }
}
