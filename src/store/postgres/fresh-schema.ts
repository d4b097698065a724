/**
 * For `lessor migrate` (src/config/migrate.ts): the schema a PostgreSQL URL leads to, checked before a
 * vault is created in it. It must exist, belong to the connecting role itself (or, for a database that
 * role owns, to pg_database_owner, as `public` does since PostgreSQL 15; a superuser or a member of
 * the owning role does not count), let no other role create objects in it, hold nothing (no table,
 * view, sequence or function; an extension's own objects aside), and not be one where the role's
 * default privileges would grant the tables it creates to another role (./grants.ts). A schema
 * another role prepared could keep tables it owns (and so reads) or triggers that copy or alter
 * every row written, and the copy's
 * verification reads through the same tables; so lessor creates its tables only where nothing else is.
 * Also says where the URL really leads (the server's own address, port, database and schema), since
 * `?host=`, `?port=` and a search_path of several schemas make the URL's text misleading.
 */
import pg from "pg";
import { VaultError } from "../../base/errors.js";
import { catalogRows, DB_OWNER_ROLE, ME } from "./catalog.js";
import { describeTarget, poolConfig } from "./connection.js";
import { pgError } from "./errors.js";
import { defaultGrantsError, defaultGrantsSql } from "./grants.js";

/** Where a URL leads, as the server says. */
export interface SchemaPlace {
  schema: string;
  /** `host:port/database`: the server's address (or the URL's host over a Unix socket), its port and database. */
  where: string;
}

/** Objects an extension installed (public often holds some) are not "something in the schema". */
const NOT_EXTENSION = (catalog: string, alias: string) =>
  `NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '${catalog}'::regclass AND d.objid = ${alias}.oid AND d.deptype = 'e')`;

/**
 * Run by catalogRows, with search_path = pg_catalog alone: no function or operator in the schema being
 * checked takes part in checking it (./catalog.ts). $1: the target's search path.
 */
const PLACE_SQL = `
SELECT n.nspname::text AS schema, current_database() AS db, inet_server_addr()::text AS addr, current_setting('port') AS port,
  (n.nspowner = ${ME} OR n.nspowner = ${DB_OWNER_ROLE}) AS owned,
  (SELECT count(*) FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
     WHERE a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner AND a.grantee <> ${ME})::int AS others_create,
  (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid AND ${NOT_EXTENSION("pg_class", "c")})::int AS relations,
  (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = n.oid AND ${NOT_EXTENSION("pg_proc", "p")})::int AS functions,
  ${defaultGrantsSql("n")} AS default_grants
FROM pg_namespace n WHERE n.nspname = ($1::text[])[1]`;

/**
 * Connects once to `url` and checks its schema as above. Throws VaultError("invalid_request") naming
 * the schema and what is wrong, or the store's connection errors ("unavailable").
 */
export async function assertFreshSchema(url: string): Promise<SchemaPlace> {
  const cfg = poolConfig({ url });
  const client = new pg.Client({ connectionString: cfg.connectionString, options: cfg.options, connectionTimeoutMillis: cfg.connectionTimeoutMillis, application_name: "lessor-migrate" });
  let row: { schema: string; db: string; addr: string | null; port: string; owned: boolean | null; others_create: number; relations: number; functions: number; default_grants: string[] } | undefined;
  try {
    await client.connect();
    row = (await catalogRows<NonNullable<typeof row>>(client, PLACE_SQL))[0];
  } catch (e) {
    throw pgError(e, "check the migration target's schema", describeTarget(url));
  } finally {
    await client.end().catch(() => {});
  }
  if (row === undefined)
    throw new VaultError("invalid_request", `no schema named in the target's search_path exists at ${describeTarget(url)}; create the schema (owned by the role lessor connects as) first`);
  const addr = (row.addr ?? "").replace(/\/\d+$/, "");
  const host = addr === "" ? describeTarget(url).split(":")[0] : addr.includes(":") ? `[${addr}]` : addr;
  const where = `${host}:${row.port}/${row.db}`;
  if (row.owned !== true)
    throw new VaultError(
      "invalid_request",
      `the target schema ${row.schema} at ${where} belongs to another role (being a superuser or a member of its owner does not count): its owner could read the vault's rows or change them as they are written; create a schema owned by the role lessor connects as (CREATE SCHEMA name AUTHORIZATION that_role) and name it in the URL`,
    );
  if (row.others_create > 0)
    throw new VaultError(
      "invalid_request",
      `other roles may create objects in the target schema ${row.schema} at ${where} (CREATE is granted to ${row.others_create} other role(s) or to PUBLIC): one could plant a trigger on lessor's tables; REVOKE CREATE ON SCHEMA ${row.schema} FROM those roles, or use a schema of your own`,
    );
  if (row.relations > 0 || row.functions > 0)
    throw new VaultError(
      "invalid_request",
      `the target schema ${row.schema} at ${where} is not empty (it holds ${row.relations} table(s), view(s), index(es) or sequence(s) and ${row.functions} function(s)); lessor migrate creates its tables only in an empty schema: use a new one, or drop this one's contents if it is a failed earlier migration`,
    );
  if (row.default_grants.length > 0) throw defaultGrantsError(row.schema, where, row.default_grants);
  return { schema: row.schema, where };
}
