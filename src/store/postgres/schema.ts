/**
 * The PostgreSQL schema as an ordered list of migrations, recorded one row per step in
 * `lessor_migrations`. Opening a store whose schema is current reads that and takes no lock. Otherwise
 * it applies the missing steps in one transaction under a transaction-scoped advisory lock keyed by
 * the schema, so several instances starting at once apply each step once: the others wait for the
 * lock, then find nothing left to do. (An advisory lock can be taken by any role that may connect to
 * the database, and its keys can be worked out: docs/team.md, step 1, gives the database to lessor's
 * role alone. Only creating and upgrading the schema depends on it.) Creating the tables new is
 * refused, and rolled back, when another role could reach them through the role's default privileges
 * (./grants.ts). Never edit a released step: append a new one.
 *
 * Text keys that are sorted (scope, name, lease and token ids) use the "C" collation, so that the
 * order is by code point, as the other stores sort, whatever the database's locale.
 */
import type { PoolClient } from "pg";
import { VaultError } from "../../base/errors.js";
import { AUDIT_GAP_STATE } from "./errors.js";
import { assertTablesPrivate } from "./grants.js";

/**
 * Advisory lock class ids (the first key of the two-key form); the second key is the schema's hash.
 * `write` is what builds before the row lock on `lessor_commits` took (postgres-store.ts, LOCK_SQL);
 * this build takes only `migrate`, and only to create or upgrade the schema.
 */
export const LOCK_CLASS = { migrate: 0x4c53_0001, write: 0x4c53_0002 } as const;

/**
 * The second advisory-lock key: this session's schema, so vaults in different schemas do not contend.
 * Built-ins are called by their pg_catalog names, here and in every statement of the store: an
 * unqualified `hashtext(current_schema())` (name, cast to text) would run a `hashtext(name)` of any
 * schema on the search_path instead (./catalog.ts).
 */
export const SCHEMA_KEY = "pg_catalog.hashtext(pg_catalog.current_schema()::pg_catalog.text)";

/** Migration steps; step i (0-based) brings the schema from version i to version i + 1. */
export const MIGRATIONS: readonly string[] = [
  // 1: the schema of SQLite step 5, the commit counter and the audit chain's gap check.
  `
  CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
  );

  CREATE TABLE secrets (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope           TEXT COLLATE "C" NOT NULL,
    name            TEXT COLLATE "C" NOT NULL,
    kind            TEXT NOT NULL,
    description     TEXT NOT NULL,
    tags            JSONB NOT NULL,
    current_version INTEGER NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (scope, name)
  );

  CREATE TABLE secret_versions (
    secret      BIGINT NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    alg         TEXT NOT NULL,
    key_id      TEXT COLLATE "C" NOT NULL,
    wrapped_dek BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    size        INTEGER NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (secret, version)
  );
  CREATE INDEX secret_versions_key ON secret_versions(key_id);

  CREATE TABLE leases (
    id             TEXT COLLATE "C" PRIMARY KEY,
    agent          TEXT COLLATE "C" NOT NULL,
    scope          TEXT COLLATE "C" NOT NULL,
    name           TEXT COLLATE "C" NOT NULL,
    domains        TEXT NOT NULL,
    any_domain     BOOLEAN NOT NULL,
    methods        TEXT,
    paths          TEXT,
    rule           TEXT NOT NULL,
    issued_at      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    max_expires_at BIGINT NOT NULL,
    uses           INTEGER NOT NULL,
    max_uses       INTEGER,
    renewals       INTEGER NOT NULL,
    max_renewals   INTEGER,
    renewable      BOOLEAN NOT NULL,
    revoked_at     BIGINT,
    revoke_reason  TEXT,
    issued_by      TEXT NOT NULL,
    done           BOOLEAN NOT NULL DEFAULT false -- true once revoked or used up
  );
  CREATE INDEX leases_live_agent ON leases(agent, expires_at) WHERE NOT done;
  CREATE INDEX leases_live_secret ON leases(scope, name, expires_at) WHERE NOT done;
  CREATE INDEX leases_expiry ON leases(expires_at);

  CREATE TABLE audit (
    seq        BIGINT PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    time       BIGINT NOT NULL,
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
    prev_hash  BYTEA NOT NULL,
    hash       BYTEA NOT NULL,
    key_id     TEXT
  );
  CREATE INDEX audit_time ON audit(time);
  CREATE INDEX audit_agent ON audit(agent, seq) WHERE agent IS NOT NULL;
  CREATE INDEX audit_secret ON audit(secret, seq) WHERE secret IS NOT NULL;
  CREATE INDEX audit_type ON audit(type, seq);
  CREATE INDEX audit_lease ON audit(lease_id) WHERE lease_id IS NOT NULL;

  -- Every row must follow the head: checked by the database, so no writer (this store batching
  -- statements, another instance, a hand-written INSERT) can leave a gap or fork the chain.
  CREATE FUNCTION lessor_audit_follows() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
  DECLARE last BIGINT;
  BEGIN
    SELECT seq INTO last FROM audit ORDER BY seq DESC LIMIT 1;
    IF NEW.seq IS DISTINCT FROM coalesce(last, 0) + 1 THEN
      RAISE EXCEPTION 'audit row % does not follow the trail''s last row %', NEW.seq, coalesce(last, 0)
        USING ERRCODE = '${AUDIT_GAP_STATE}';
    END IF;
    RETURN NEW;
  END $$;
  CREATE TRIGGER audit_follows BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION lessor_audit_follows();

  CREATE TABLE audit_checkpoint (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    seq    BIGINT NOT NULL,
    hash   BYTEA NOT NULL,
    key_id TEXT NOT NULL,
    mac    BYTEA NOT NULL
  );

  CREATE TABLE tokens (
    id         TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    agent      TEXT,
    act_for    TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    created_by TEXT NOT NULL,
    hash       BYTEA NOT NULL
  );

  -- Bumped by every transaction that writes (under the write lock): an instance whose last commit
  -- left n knows, on seeing n again, that no other instance has written since (postgres-store.ts).
  CREATE TABLE lessor_commits (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
  );
  INSERT INTO lessor_commits (id, n) VALUES (1, 0);
  `,
  // 2: the change log behind the change feed (src/store/postgres/change-feed.ts). A commit that
  // revoked leases or a token, or wrote metadata, takes the next seq from lessor_change_seq (a row
  // lock held to its commit, so seqs are gap-free and in commit order), appends one row here and
  // sends the same row with NOTIFY; instances that missed the notification read the row instead.
  `
  CREATE TABLE lessor_change_seq (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
  );
  INSERT INTO lessor_change_seq (id, n) VALUES (1, 0);

  CREATE TABLE lessor_changes (
    seq     BIGINT PRIMARY KEY,
    at      BIGINT NOT NULL,
    origin  TEXT NOT NULL,
    changes JSONB NOT NULL
  );
  `,
  // 3: the commit counter by kind, so that an instance drops from its cache only what another
  // instance's commits changed: cfg counts commits that changed secrets, versions or metadata, live
  // those that inserted a lease that may be live (postgres-store.ts, sync).
  `
  ALTER TABLE lessor_commits
    ADD COLUMN cfg  BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN live BIGINT NOT NULL DEFAULT 0;
  `,
  // 4: plain counts commits whose only writes were new leases and audit rows (and the checkpoint):
  // a batch that ran before taking the write lock is valid if every commit since this instance's
  // last was plain (postgres-store.ts, "The late lock"). An instance of an older build never bumps
  // it, so its commits count as not plain.
  `
  ALTER TABLE lessor_commits ADD COLUMN plain BIGINT NOT NULL DEFAULT 0;
  `,
  // 5: the audit trail's indexed text columns compare bytes (COLLATE "C"), as the other tables' keys
  // do: the rows are appended under the vault's write lock, and a database whose default collation is
  // a locale's (en_US.UTF-8, even C.UTF-8) made every index insertion call strcoll. Lookups are by
  // equality only, which no collation changes. Rebuilds the five indexes once.
  `
  ALTER TABLE audit
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN type TYPE TEXT COLLATE "C",
    ALTER COLUMN agent TYPE TEXT COLLATE "C",
    ALTER COLUMN secret TYPE TEXT COLLATE "C",
    ALTER COLUMN lease_id TYPE TEXT COLLATE "C";
  `,
  // 6: each token row carries a MAC under a key derived from the master key (src/vault/token-mac.ts),
  // so that a row written by a role without the key is no token. Rows made before stay NULL and
  // authenticate no one: such tokens are made again (docs/storage.md).
  `
  ALTER TABLE tokens ADD COLUMN mac BYTEA;
  `,
  // 7: a lease a person approved is bound to the identity that asked for it (LeaseRecord.bound), on
  // its row: the binding no longer depends on which rule bears the lease's rule name later. Leases
  // granted before read false (their rule as in force still binds them).
  `
  ALTER TABLE leases ADD COLUMN bound BOOLEAN NOT NULL DEFAULT false;
  `,
  // 8: as SQLite step 8: a lease granted before step 7 through an approval (its lease_granted
  // event names one) is bound, so that no later reload unbinds what a person approved before the
  // upgrade. Matched as text, so that a damaged detail cannot stop the upgrade. The trigger binds a
  // lease that an instance of an older build, still running on this schema during a rolling upgrade,
  // grants through an approval (it writes no bound; its lease_granted event, appended after the lease
  // row in the same transaction, names the approval).
  `
  UPDATE leases SET bound = true
   WHERE NOT bound
     AND id IN (SELECT lease_id FROM audit
                 WHERE type = 'lease_granted' AND lease_id IS NOT NULL AND detail LIKE '%"approval":%');
  CREATE FUNCTION lessor_bind_approved() RETURNS trigger LANGUAGE plpgsql
  SET search_path FROM CURRENT AS $$
  BEGIN
    UPDATE leases SET bound = true WHERE id = NEW.lease_id AND NOT bound;
    RETURN NULL;
  END $$;
  CREATE TRIGGER audit_binds_approved AFTER INSERT ON audit FOR EACH ROW
    WHEN (NEW.type = 'lease_granted' AND NEW.lease_id IS NOT NULL AND NEW.detail LIKE '%"approval":%')
    EXECUTE FUNCTION lessor_bind_approved();
  `,
  // 9: as SQLite step 9: a lease granted under a rule that did not reveal the value is proxy-only on
  // its row (LeaseRecord.proxyOnly). Leases granted before read false (their rule as in force decides).
  `
  ALTER TABLE leases ADD COLUMN proxy_only BOOLEAN NOT NULL DEFAULT false;
  `,
];

/** The table that records the steps applied, made by the first open. */
const MIGRATIONS_TABLE = `CREATE TABLE IF NOT EXISTS lessor_migrations (
  version    INTEGER PRIMARY KEY,
  applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`;

/**
 * Every table, index and function name the migrations create in the vault's schema: each open checks
 * that those there are lessor's role's own (./schema-trust.ts), so that no other role can have made
 * the vault's tables (with a `lessor_migrations` row) before its first start.
 */
export const VAULT_NAMES: readonly string[] = [
  ...new Set([...[...MIGRATIONS, MIGRATIONS_TABLE].join("\n").matchAll(/CREATE (?:TABLE|INDEX|FUNCTION) (?:IF NOT EXISTS )?(\w+)/g)].map((m) => m[1]!)),
];

/** The schema version this build writes. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Brings the schema of `client`'s search_path up to {@link SCHEMA_VERSION}, in one transaction under
 * the migration advisory lock. Throws VaultError("unavailable") for a schema written by a newer
 * lessor. Returns how many steps this call applied (0 when another instance had already).
 */
export async function migrate(client: PoolClient): Promise<number> {
  // A current schema (the usual open): a committed version row says so, and no lock is needed.
  const found = await client.query<{ t: string | null }>("SELECT pg_catalog.to_regclass(pg_catalog.format('%I.lessor_migrations', pg_catalog.current_schema()))::pg_catalog.text AS t");
  if (found.rows[0]?.t != null) {
    const r = await client.query<{ v: number | null }>("SELECT max(version) AS v FROM lessor_migrations");
    if ((r.rows[0]?.v ?? 0) === SCHEMA_VERSION) return 0;
  }
  await client.query("BEGIN");
  try {
    try {
      await client.query(`SELECT pg_advisory_xact_lock(${LOCK_CLASS.migrate}, ${SCHEMA_KEY})`);
    } catch (e) {
      if ((e as { code?: unknown }).code !== "55P03") throw e;
      throw new VaultError(
        "unavailable",
        "could not create or upgrade the vault's tables: a session of the database held lessor's migration lock for longer than lock_timeout (another lessor instance migrating, or any role that may connect to the database: see docs/team.md, step 1); try again",
        { cause: e },
      );
    }
    await client.query(MIGRATIONS_TABLE);
    const r = await client.query<{ v: number | null }>("SELECT max(version) AS v FROM lessor_migrations");
    const current = r.rows[0]?.v ?? 0;
    if (current > SCHEMA_VERSION)
      throw new VaultError(
        "unavailable",
        `this vault database was written by a newer lessor (schema ${current}, this build knows ${SCHEMA_VERSION}); upgrade lessor`,
      );
    for (let i = current; i < SCHEMA_VERSION; i++) {
      await client.query(MIGRATIONS[i]!);
      await client.query("INSERT INTO lessor_migrations (version) VALUES ($1)", [i + 1]);
    }
    // A schema's tables made new: none may be reachable by another role (its default privileges),
    // or they are not made at all. (An upgrade leaves the grants of a running vault as they are.)
    if (current === 0) await assertTablesPrivate(client, true);
    await client.query("COMMIT");
    return SCHEMA_VERSION - current;
  } catch (e) {
    await client.query("ROLLBACK").catch(() => {});
    throw e;
  }
}
