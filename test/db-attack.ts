/** What the tamper tests share: a second connection editing a vault's SQLite file, and its audit row's shape. */
import Database from "better-sqlite3";
import type BetterSqlite3 from "better-sqlite3";

/** Runs `f` in one transaction on a second connection to the SQLite file `dbPath` (the attacker's). */
export function attack<T>(dbPath: string, f: (db: BetterSqlite3.Database) => T): T {
  const db = new Database(dbPath);
  db.pragma("busy_timeout = 5000");
  try {
    return db.transaction(() => f(db))();
  } finally {
    db.close();
  }
}

/** A row of the `audit` table as SQLite returns it. */
export interface Row {
  seq: number;
  id: string;
  time: number;
  type: string;
  actor_id: string;
  actor_role: string;
  transport: string;
  agent: string | null;
  secret: string | null;
  lease_id: string | null;
  domain: string | null;
  outcome: string;
  reason: string | null;
  detail: string | null;
  prev_hash: Buffer;
  hash: Buffer;
  key_id: string | null;
}
