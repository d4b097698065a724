/**
 * Queries of PostgreSQL's system catalogs that no object in the vault's schema can take part in.
 *
 * PostgreSQL resolves an unqualified function or operator among every schema on the search_path, and
 * prefers an exact match of the argument types in any of them over pg_catalog's built-in that needs an
 * implicit cast (`md5(name)` over `md5(text)`): an object another role put in a schema on the path runs
 * inside the statement, as the role that runs it. So a catalog query runs with search_path set to
 * pg_catalog alone (SET LOCAL, in a transaction or savepoint of its own, undone after), and is given
 * the session's own path as its first parameter. The store's other statements call built-ins by their
 * pg_catalog name or with arguments of exactly their types, and every open first checks that no other
 * role can have put anything on the path (./schema-trust.ts).
 */

/** Anything that runs a query: a pg Client or PoolClient. */
export interface Queryable {
  query<R extends object>(text: string, values?: unknown[]): Promise<{ rows: R[] }>;
}

/** The connecting role's oid (for a query run by {@link catalogRows}). */
export const ME = "(SELECT oid FROM pg_roles WHERE rolname = current_user)";

/** pg_database_owner's oid (PostgreSQL 14+; null before) when the connecting role owns the database. */
export const DB_OWNER_ROLE = `(SELECT r.oid FROM pg_roles r, pg_database d WHERE r.rolname = 'pg_database_owner' AND d.datname = current_database() AND d.datdba = ${ME})`;

/**
 * The rows of `text`, run with search_path = pg_catalog alone. `$1` in it is the session's search path
 * as it was (the schemas that exist, in order, as `current_schemas(false)` names them; text[]): the
 * vault's schema is `($1::text[])[1]`; `values` are `$2` on. Outside a transaction it runs in a
 * read-only one of its own; `inTransaction`, in a savepoint rolled back after (the caller's
 * transaction goes on with its own search_path).
 */
export async function catalogRows<R extends object>(client: Queryable, text: string, values: unknown[] = [], inTransaction = false): Promise<R[]> {
  await client.query(inTransaction ? "SAVEPOINT lessor_catalog" : "BEGIN READ ONLY");
  try {
    const path = (await client.query<{ path: string[] }>("SELECT pg_catalog.current_schemas(false)::pg_catalog.text[] AS path")).rows[0]?.path ?? [];
    await client.query("SET LOCAL search_path = pg_catalog");
    const rows = (await client.query<R>(text, [path, ...values])).rows;
    await client.query(inTransaction ? "ROLLBACK TO SAVEPOINT lessor_catalog" : "COMMIT");
    if (inTransaction) await client.query("RELEASE SAVEPOINT lessor_catalog");
    return rows;
  } catch (e) {
    await client.query(inTransaction ? "ROLLBACK TO SAVEPOINT lessor_catalog" : "ROLLBACK").catch(() => {});
    throw e;
  }
}
