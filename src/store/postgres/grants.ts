/**
 * Who else may reach the tables lessor creates in a PostgreSQL schema. A role's default privileges
 * (`pg_default_acl`: `ALTER DEFAULT PRIVILEGES FOR ROLE lessor [IN SCHEMA s] GRANT … ON TABLES TO
 * other`) are applied to every table and sequence that role creates: the other role could then read
 * the vault's rows (sealed values, token hashes, the audit trail) or change them (un-revoke a lease),
 * with no privilege on the schema beyond USAGE. Checked before `lessor migrate` creates its tables
 * (./fresh-schema.ts), and after a schema's tables are first created, inside the transaction that
 * created them (./schema.ts), so that a refusal leaves nothing behind.
 */
import { VaultError } from "../../base/errors.js";
import { catalogRows, ME, type Queryable } from "./catalog.js";

const GRANTEE = (oid: string) => `CASE WHEN ${oid} = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(${oid})) END`;

/**
 * An SQL expression (text[]): for each default privilege the connecting role holds on tables or
 * sequences it creates, in schema `ns` (a pg_namespace row's alias) or in every schema, granting
 * another role (or PUBLIC) anything, the statement that removes it. Empty when there is none. For a
 * query run by {@link catalogRows} (search_path = pg_catalog).
 */
export function defaultGrantsSql(ns: string): string {
  return `array(SELECT DISTINCT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I%s REVOKE ALL ON %s FROM %s', current_user,
      CASE WHEN d.defaclnamespace = 0 THEN '' ELSE ' IN SCHEMA ' || quote_ident(${ns}.nspname) END,
      CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' ELSE 'SEQUENCES' END, ${GRANTEE("a.grantee")})
    FROM pg_default_acl d, aclexplode(d.defaclacl) a
    WHERE d.defaclrole = ${ME} AND d.defaclnamespace IN (${ns}.oid, 0) AND d.defaclobjtype IN ('r', 'S') AND a.grantee <> ${ME}
    ORDER BY 1)`;
}

/** The refusal for default privileges that hand the vault's tables to other roles, with the statements that remove them. */
export function defaultGrantsError(schema: string, where: string, fixes: readonly string[]): VaultError {
  const who = [...new Set(fixes.map((f) => f.slice(f.lastIndexOf(" FROM ") + 6)))];
  return new VaultError(
    "invalid_request",
    `the default privileges of the role lessor connects as grant the tables it creates in schema ${schema} at ${where} to ${who.join(", ")}, who could read the vault's rows or change them; remove them (${fixes.map((f) => `${f};`).join(" ")}) or use a role without them`,
  );
}

const TABLES_SQL = `
SELECT n.nspname AS schema,
  array(SELECT DISTINCT ${GRANTEE("a.grantee")} FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.relnamespace = n.oid AND c.relowner = ${ME} AND a.grantee <> c.relowner ORDER BY 1) AS grantees,
  ${defaultGrantsSql("n")} AS fixes
FROM pg_namespace n WHERE n.nspname = ($1::text[])[1]`;

/**
 * Throws VaultError("insecure_permissions") when a table, view or sequence of the connecting role's in
 * the session's schema (the vault's, just made; another role's objects in a shared `public` are not
 * the vault's business) grants anything to a role other than its owner (or to PUBLIC), naming the grantees and, when the
 * role's default privileges are why, the statements that remove them. Run it inside the transaction
 * that created the tables (`inTransaction`), so that the refusal rolls them back.
 */
export async function assertTablesPrivate(client: Queryable, inTransaction: boolean): Promise<void> {
  const row = (await catalogRows<{ schema: string; grantees: string[]; fixes: string[] }>(client, TABLES_SQL, [], inTransaction))[0];
  if (row === undefined || row.grantees.length === 0) return;
  const fix =
    row.fixes.length > 0
      ? `they come from the default privileges of the role lessor connects as; remove them (${row.fixes.map((f) => `${f};`).join(" ")}) and start again`
      : "REVOKE those privileges, or use a schema and role of lessor's own";
  throw new VaultError(
    "insecure_permissions",
    `the vault's tables in schema ${row.schema} would be reachable by ${row.grantees.join(", ")} (privileges granted to roles other than their owner), who could read the vault's rows or change them, so they were not created; ${fix}`,
  );
}
