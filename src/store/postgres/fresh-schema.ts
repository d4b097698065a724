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
 * `?host=`, `?port=` and a search_path of several schemas make the URL's text misleading; and, as
 * {@link storeIdentity}, which server, database and schema it is, however the URL is spelled, so that
 * migrate can tell the home's own store given as the target.
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

/**
 * Which schema of which database on which running server (run under catalogRows, `n` the schema's
 * pg_namespace row): the postmaster's start time (to the microsecond, as a number, so no session
 * setting changes its text) and port, the database's oid and the schema's oid. The same for every URL
 * leading there (another host name or address, a Unix socket, a search_path reaching it), different
 * for any other place. Every role may read each part.
 */
const IDENTITY_SQL = `floor(extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint::text || '/' || current_setting('port')
  || '/' || (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())::text || '/' || n.oid::text`;

/** Objects an extension installed (public often holds some) are not "something in the schema". */
const NOT_EXTENSION = (catalog: string, alias: string) =>
  `NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '${catalog}'::regclass AND d.objid = ${alias}.oid AND d.deptype = 'e')`;

/**
 * Run by catalogRows, with search_path = pg_catalog alone: no function or operator in the schema being
 * checked takes part in checking it (./catalog.ts). $1: the target's search path.
 */
const PLACE_SQL = `
SELECT n.nspname::text AS schema, ${IDENTITY_SQL} AS identity, current_database() AS db, inet_server_addr()::text AS addr, current_setting('port') AS port,
  (n.nspowner = ${ME} OR n.nspowner = ${DB_OWNER_ROLE}) AS owned,
  (SELECT count(*) FROM aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
     WHERE a.privilege_type = 'CREATE' AND a.grantee <> n.nspowner AND a.grantee <> ${ME})::int AS others_create,
  (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid AND ${NOT_EXTENSION("pg_class", "c")})::int AS relations,
  (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = n.oid AND ${NOT_EXTENSION("pg_proc", "p")})::int AS functions,
  ${defaultGrantsSql("n")} AS default_grants
FROM pg_namespace n WHERE n.nspname = ($1::text[])[1]`;

/** Connects once to `url` and returns the rows of `sql` (run by catalogRows); errors as the store's, for `what`. */
async function placeRows<R extends object>(url: string, sql: string, what: string): Promise<R[]> {
  const cfg = poolConfig({ url });
  let client: pg.Client | null = null;
  try {
    // Inside the try: node-postgres reads the URL's TLS files as it builds the client.
    client = new pg.Client({ connectionString: cfg.connectionString, options: cfg.options, connectionTimeoutMillis: cfg.connectionTimeoutMillis, application_name: "lessor-migrate" });
    await client.connect();
    return await catalogRows<R>(client, sql);
  } catch (e) {
    throw pgError(e, what, describeTarget(url));
  } finally {
    await client?.end().catch(() => {});
  }
}

/**
 * Which server, database and schema `url` leads to (the first schema of its search_path that exists),
 * as an opaque string equal for every URL that leads to the same one; null when no schema on its
 * path exists. Throws as {@link assertFreshSchema} does for a connection that fails.
 */
export async function storeIdentity(url: string): Promise<string | null> {
  const rows = await placeRows<{ identity: string }>(url, `SELECT ${IDENTITY_SQL} AS identity FROM pg_namespace n WHERE n.nspname = ($1::text[])[1]`, "find where the vault's database URL leads");
  return rows[0]?.identity ?? null;
}

/** What {@link assertFreshSchema} also refuses. */
export interface FreshSchemaOptions {
  /** {@link storeIdentity} of the store being migrated: a target that is that store is refused as such. */
  notSource?: string | null;
}

/**
 * Connects once to `url` and checks its schema as above. Throws VaultError("invalid_request") naming
 * the schema and what is wrong (first of all, that it is `opts.notSource`'s: the vault being
 * migrated), or the store's connection errors ("unavailable", or "config_invalid" for TLS files the
 * URL names that cannot be read).
 */
export async function assertFreshSchema(url: string, opts: FreshSchemaOptions = {}): Promise<SchemaPlace> {
  type Row = { schema: string; identity: string; db: string; addr: string | null; port: string; owned: boolean | null; others_create: number; relations: number; functions: number; default_grants: string[] };
  const row = (await placeRows<Row>(url, PLACE_SQL, "check the migration target's schema"))[0];
  if (row === undefined)
    throw new VaultError("invalid_request", `no schema named in the target's search_path exists at ${describeTarget(url)}; create the schema (owned by the role lessor connects as) first`);
  const addr = (row.addr ?? "").replace(/\/\d+$/, "");
  const host = addr === "" ? describeTarget(url).split(":")[0] : addr.includes(":") ? `[${addr}]` : addr;
  const where = `${host}:${row.port}/${row.db}`;
  if (opts.notSource != null && row.identity === opts.notSource)
    throw new VaultError(
      "invalid_request",
      `the target schema ${row.schema} at ${where} is the home's own store: the same server, database and schema as the vault being migrated (the target URL is another spelling of the home's database URL); a vault cannot be migrated onto itself: create a new schema or database and name that`,
    );
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
      `the target schema ${row.schema} at ${where} is not empty (it holds ${row.relations} table(s), view(s), index(es) or sequence(s) and ${row.functions} function(s)); lessor migrate creates its tables only in an empty schema: use a new one. Drop nothing before you have made sure it is not a live vault (compare its server, database and schema with the home's store, and with every other lessor home's): only a failed earlier migration's leftovers may go`,
    );
  if (row.default_grants.length > 0) throw defaultGrantsError(row.schema, where, row.default_grants);
  return { schema: row.schema, where };
}
