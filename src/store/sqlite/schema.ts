/**
 * The SQLite schema as an ordered list of migrations. `PRAGMA user_version` holds how many have been
 * applied; opening a database applies the missing ones in one transaction. Never edit a released
 * step: append a new one.
 */
import type BetterSqlite3 from "better-sqlite3";
import { VaultError } from "../../base/errors.js";

/** Migration steps; step i (0-based) brings the schema from version i to version i + 1. */
export const MIGRATIONS: readonly string[] = [
  // 1: the initial schema.
  `
  CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
  ) WITHOUT ROWID;

  CREATE TABLE secrets (
    id              INTEGER PRIMARY KEY,
    scope           TEXT NOT NULL,
    name            TEXT NOT NULL,
    kind            TEXT NOT NULL,
    description     TEXT NOT NULL,
    tags            TEXT NOT NULL,          -- JSON array of strings
    current_version INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (scope, name)
  );

  CREATE TABLE secret_versions (
    secret      INTEGER NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    alg         TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    wrapped_dek BLOB NOT NULL,
    ciphertext  BLOB NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (secret, version)
  );
  CREATE INDEX secret_versions_key ON secret_versions(key_id);

  CREATE TABLE leases (
    id             TEXT PRIMARY KEY NOT NULL,
    agent          TEXT NOT NULL,
    scope          TEXT NOT NULL,
    name           TEXT NOT NULL,
    domains        TEXT NOT NULL,           -- JSON array
    any_domain     INTEGER NOT NULL,
    methods        TEXT,                    -- JSON array or NULL
    paths          TEXT,                    -- JSON array or NULL
    rule           TEXT NOT NULL,
    issued_at      INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    max_expires_at INTEGER NOT NULL,
    uses           INTEGER NOT NULL,
    max_uses       INTEGER,
    renewals       INTEGER NOT NULL,
    max_renewals   INTEGER,
    renewable      INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoke_reason  TEXT,
    issued_by      TEXT NOT NULL,
    done           INTEGER NOT NULL DEFAULT 0 -- 1 once revoked or used up
  ) WITHOUT ROWID;
  CREATE INDEX leases_live_agent ON leases(agent, expires_at) WHERE done = 0;
  CREATE INDEX leases_live_secret ON leases(scope, name, expires_at) WHERE done = 0;
  CREATE INDEX leases_expiry ON leases(expires_at);
  CREATE INDEX leases_agent ON leases(agent, issued_at);
  CREATE INDEX leases_secret ON leases(scope, name, issued_at);
  CREATE INDEX leases_issued ON leases(issued_at);

  CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    time       INTEGER NOT NULL,
    type       TEXT NOT NULL,
    actor_id   TEXT NOT NULL,
    actor_role TEXT NOT NULL,
    transport  TEXT NOT NULL,
    agent      TEXT,
    secret     TEXT,
    lease_id   TEXT,
    domain     TEXT,
    outcome    TEXT NOT NULL,
    reason     TEXT,
    detail     TEXT,
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
  );
  CREATE INDEX audit_time ON audit(time);
  CREATE INDEX audit_agent ON audit(agent, seq) WHERE agent IS NOT NULL;
  CREATE INDEX audit_secret ON audit(secret, seq) WHERE secret IS NOT NULL;
  CREATE INDEX audit_type ON audit(type, seq);
  CREATE INDEX audit_lease ON audit(lease_id) WHERE lease_id IS NOT NULL;

  CREATE TABLE audit_checkpoint (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    seq    INTEGER NOT NULL,
    hash   BLOB NOT NULL,
    key_id TEXT NOT NULL,
    mac    BLOB NOT NULL
  );
  `,
  // 2: bearer tokens for the TCP transport (only a hash of the secret part is stored).
  `
  CREATE TABLE tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    agent      TEXT,
    act_for    TEXT,                    -- JSON array or NULL
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    created_by TEXT NOT NULL,
    hash       BLOB NOT NULL
  ) WITHOUT ROWID;
  `,
  // 3: fewer b-trees written per lease. Each index costs every commit a page per distinct key it
  // touches, and the per-agent history index touched one page per active agent. Lease ids are
  // UUIDv7 made at issue, so the primary key already orders leases newest first; history listings
  // walk it, and live listings, counts and revocations keep their partial indexes.
  `
  DROP INDEX leases_issued;
  DROP INDEX leases_agent;
  DROP INDEX leases_secret;
  `,
  // 4: the audit's agent and secret indexes lead with the seq's run of 1,024 rows (seq >> 10). Keyed
  // by agent alone, a commit wrote one index page per agent in it; within a run, the rows a commit
  // appends share a few pages. A query by agent or secret seeks once per run (queries.ts).
  `
  DROP INDEX audit_agent;
  DROP INDEX audit_secret;
  CREATE INDEX audit_agent_run ON audit(seq >> 10, agent) WHERE agent IS NOT NULL;
  CREATE INDEX audit_secret_run ON audit(seq >> 10, secret) WHERE secret IS NOT NULL;
  `,
  // 5: the keyed audit chain. Each event records the id of the audit key whose MAC its hash is; rows
  // written before (format 1, plain SHA-256) keep NULL and are verified under the old rules.
  `
  ALTER TABLE audit ADD COLUMN key_id TEXT;
  `,
  // 6: each token row carries a MAC under a key derived from the master key (src/vault/token-mac.ts),
  // so that a row written into the database without the key is no token. Rows made before stay
  // NULL and authenticate no one: such tokens are made again (docs/storage.md).
  `
  ALTER TABLE tokens ADD COLUMN mac BLOB;
  `,
  // 7: a lease a person approved is bound to the identity that asked for it (LeaseRecord.bound), on
  // its row: the binding no longer depends on which rule bears the lease's rule name later. Leases
  // granted before read 0 (their rule as in force still binds them).
  `
  ALTER TABLE leases ADD COLUMN bound INTEGER NOT NULL DEFAULT 0;
  `,
  // 8: step 7 left every lease granted before it unbound, so a reload that renamed an approval rule
  // (and gave its old name to a rule without approval) let another identity of the agent use a lease
  // a person approved before the upgrade. Every lease whose lease_granted event names an approval
  // (every grant through one has since approvals began) is bound now. Matched as text, so that a
  // damaged detail cannot stop the upgrade; a false match only binds a lease to the one who asked.
  // The trigger does the same for a lease an older build still running on this file (opened before
  // the upgrade) grants through an approval: it writes no bound, but its lease_granted event names
  // the approval, and is appended after the lease row in the same transaction. Revoked and used-up
  // leases too: a copy (lessor migrate) inserts leases, then audit rows, and the target's trigger
  // binds the leases they name, so the source must already read the same.
  `
  UPDATE leases SET bound = 1
   WHERE bound = 0
     AND id IN (SELECT lease_id FROM audit
                 WHERE type = 'lease_granted' AND lease_id IS NOT NULL AND detail LIKE '%"approval":%');
  CREATE TRIGGER audit_binds_approved AFTER INSERT ON audit
    WHEN NEW.type = 'lease_granted' AND NEW.lease_id IS NOT NULL AND NEW.detail LIKE '%"approval":%'
  BEGIN
    UPDATE leases SET bound = 1 WHERE id = NEW.lease_id AND bound = 0;
  END;
  `,
  // 9: a lease granted under a rule that did not reveal the value is proxy-only on its row
  // (LeaseRecord.proxyOnly): a later reload that makes the rule reveal does not hand its value out.
  // Leases granted before read 0 (their rule as in force decides, as before).
  `
  ALTER TABLE leases ADD COLUMN proxy_only INTEGER NOT NULL DEFAULT 0;
  `,
];

/** The schema version this build writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Brings `db` up to {@link SCHEMA_VERSION} in one IMMEDIATE transaction (so two processes opening a
 * new file at once do not both migrate). Throws VaultError("unavailable") for a newer schema.
 */
export function migrate(db: BetterSqlite3.Database): void {
  const current = userVersion(db);
  checkNotNewer(current);
  if (current === SCHEMA_VERSION) return;
  db.exec("BEGIN IMMEDIATE");
  try {
    const v = userVersion(db); // another process may have migrated while we waited for the lock
    checkNotNewer(v);
    for (let i = v; i < SCHEMA_VERSION; i++) db.exec(MIGRATIONS[i]!);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
    db.exec("COMMIT");
  } catch (e) {
    if (db.inTransaction) db.exec("ROLLBACK");
    throw e;
  }
}

function userVersion(db: BetterSqlite3.Database): number {
  return db.pragma("user_version", { simple: true }) as number;
}

function checkNotNewer(v: number): void {
  if (v > SCHEMA_VERSION)
    throw new VaultError(
      "unavailable",
      `this vault database was written by a newer lessor (schema ${v}, this build knows ${SCHEMA_VERSION}); upgrade lessor`,
    );
}
