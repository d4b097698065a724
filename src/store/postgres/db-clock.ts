/**
 * The database server's clock, as a PostgreSQL store tells the vault the time. Several daemons that
 * share one database must agree on when a lease or token expires, on a lease's issue time and on the
 * killswitch's "every live lease": by each one's own clock, a daemon ten minutes behind would serve a
 * lease the others call expired, and one ahead would stamp leases that outlive their ttl everywhere.
 *
 * The clock is read as `clock_timestamp()` and kept as an offset from this process's monotonic clock
 * (`performance.now()`): a jump of the local wall clock changes nothing, and no round trip is paid per
 * read. Opening costs one reading (one round trip); the quickest of three follows in the background at
 * once, and again every {@link REFRESH_MS} to follow the server's clock (NTP slews it); a read that
 * fails keeps the last offset. Readings are taken at the middle of their round trip, so the error is
 * at most half of one round trip.
 */
import type { Pool } from "pg";

/** How often the offset is read again. */
export const REFRESH_MS = 30_000;

/**
 * By pg_catalog's names: unqualified, `extract(…) * 1000` (numeric times an integer, cast) would run an
 * operator `*(numeric, integer)` of any schema on the search_path instead (./catalog.ts).
 */
const CLOCK_SQL = "SELECT (extract(epoch FROM pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000)::pg_catalog.float8 AS ms";

interface Reading {
  /** The database's time, epoch ms. */
  ms: number;
  /** performance.now() at the middle of the round trip. */
  at: number;
  rtt: number;
}

async function readOnce(pool: Pick<Pool, "query">): Promise<Reading> {
  const t0 = performance.now();
  const r = await pool.query<{ ms: number }>(CLOCK_SQL);
  const t1 = performance.now();
  const ms = Number(r.rows[0]?.ms);
  if (!Number.isFinite(ms)) throw new Error("clock_timestamp() gave no time");
  return { ms, at: (t0 + t1) / 2, rtt: t1 - t0 };
}

/** The quickest of `n` readings. */
async function bestOf(pool: Pick<Pool, "query">, n: number): Promise<Reading> {
  let best: Reading | undefined;
  for (let i = 0; i < n; i++) {
    const r = await readOnce(pool);
    if (best === undefined || r.rtt < best.rtt) best = r;
  }
  return best!;
}

/** The database's clock (see the module comment). */
export class DbClock {
  #base: Reading;
  #last = 0;
  #lastMono = performance.now();
  #timer: NodeJS.Timeout | null = null;

  private constructor(private readonly pool: Pick<Pool, "query">, first: Reading) {
    this.#base = first;
  }

  /** Reads the server's clock once (throws what the query throws) and starts following it. */
  static async open(pool: Pick<Pool, "query">): Promise<DbClock> {
    const c = new DbClock(pool, await readOnce(pool));
    const refresh = (): void => void c.refresh().catch(() => undefined);
    refresh();
    c.#timer = setInterval(refresh, REFRESH_MS);
    c.#timer.unref();
    return c;
  }

  /** Reads the server's clock again now (the quickest of three readings). */
  async refresh(): Promise<void> {
    this.#base = await bestOf(this.pool, 3);
  }

  /** The database's time now, in epoch ms; never less than a time it returned before. */
  now(): number {
    // Behind what it last said (the server's clock stepped back): on from there at the monotonic
    // pace, never standing still (a clock that stands still expires nothing).
    const m = performance.now();
    const t = this.#base.ms + (m - this.#base.at);
    this.#last = t >= this.#last ? t : this.#last + Math.max(0, m - this.#lastMono);
    this.#lastMono = m;
    return Math.round(this.#last);
  }

  /** How far this process's wall clock is ahead of the database's (negative: behind), in ms. */
  skewMs(): number {
    return Date.now() - this.now();
  }

  /** Stops following the server's clock. */
  close(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }
}
