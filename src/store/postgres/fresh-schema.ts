/**
 * For `lessor migrate` (src/config/migrate.ts): the schema a PostgreSQL URL leads to, checked before a
 * vault is created in it. It must exist, belong to the connecting role (or a role it is a member of),
 * and hold nothing: no table, view, sequence or function. A schema another role prepared could keep
 * tables it owns (and so reads) or triggers that copy or alter every row written, and the copy's
 * verification reads through the same tables; so lessor creates its tables only where nothing else is.
 * Also says where the URL really leads (the server's own address, port, database and schema), since
 * `?host=`, `?port=` and a search_path of several schemas make the URL's text misleading.
 */
import pg from "pg";
import { VaultError } from "../../base/errors.js";
import { describeTarget, poolConfig } from "./connection.js";
import { pgError } from "./errors.js";

/** Where a URL leads, as the server says. */
export interface SchemaPlace {
  schema: string;
  /** `host:port/database`: the server's address (or the URL's host over a Unix socket), its port and database. */
  where: string;
}

const PLACE_SQL = `
SELECT current_schema() AS schema, current_database() AS db, inet_server_addr()::text AS addr, current_setting('port') AS port,
  (SELECT pg_has_role(current_user, n.nspowner, 'MEMBER') FROM pg_namespace n WHERE n.nspname = current_schema()) AS owned,
  (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema())::int AS relations,
  (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = current_schema())::int AS functions`;

/**
 * Connects once to `url` and checks its schema as above. Throws VaultError("invalid_request") naming
 * the schema and what is wrong, or the store's connection errors ("unavailable").
 */
export async function assertFreshSchema(url: string): Promise<SchemaPlace> {
  const cfg = poolConfig({ url });
  const client = new pg.Client({ connectionString: cfg.connectionString, options: cfg.options, connectionTimeoutMillis: cfg.connectionTimeoutMillis, application_name: "lessor-migrate" });
  let row: { schema: string | null; db: string; addr: string | null; port: string; owned: boolean | null; relations: number; functions: number };
  try {
    await client.connect();
    row = (await client.query(PLACE_SQL)).rows[0];
  } catch (e) {
    throw pgError(e, "check the migration target's schema", describeTarget(url));
  } finally {
    await client.end().catch(() => {});
  }
  if (row.schema === null)
    throw new VaultError("invalid_request", `no schema named in the target's search_path exists at ${describeTarget(url)}; create the schema (owned by the role lessor connects as) first`);
  const addr = (row.addr ?? "").replace(/\/\d+$/, "");
  const host = addr === "" ? describeTarget(url).split(":")[0] : addr.includes(":") ? `[${addr}]` : addr;
  const where = `${host}:${row.port}/${row.db}`;
  if (row.owned !== true)
    throw new VaultError(
      "invalid_request",
      `the target schema ${row.schema} at ${where} belongs to another role: its owner could read the vault's rows or change them as they are written; create a schema owned by the role lessor connects as (CREATE SCHEMA name AUTHORIZATION that_role) and name it in the URL`,
    );
  if (row.relations > 0 || row.functions > 0)
    throw new VaultError(
      "invalid_request",
      `the target schema ${row.schema} at ${where} is not empty (it holds ${row.relations} table(s), view(s), index(es) or sequence(s) and ${row.functions} function(s)); lessor migrate creates its tables only in an empty schema: use a new one, or drop this one's contents if it is a failed earlier migration`,
    );
  return { schema: row.schema, where };
}
