/**
 * What every open of a PostgreSQL store checks before it runs a statement of the vault's: that no
 * role but lessor's own (and superusers, who can do anything anyway) can have put objects on the
 * session's search_path. Another role's function or operator there runs inside lessor's statements,
 * as lessor's role, whenever it matches the arguments' types better than pg_catalog's built-in (an
 * `md5(name)` that un-revokes leases in the killswitch's own commit, a `*(numeric, integer)` that
 * turns the clock back); a table it made before lessor's first start, with a `lessor_migrations`
 * row, would be the vault's, owned (and so read and changed) by it.
 *
 * So each schema on the path must belong to a trusted role (lessor's, a superuser, or
 * pg_database_owner on a database a trusted role owns), grant CREATE to no other role (nor PUBLIC),
 * and hold no function, aggregate or operator of another role's; and every table, index or function
 * named as one of the vault's in the vault's schema (the first on the path) must be lessor's role's
 * own. `lessor migrate` checks the same, and more, before it creates a vault (./fresh-schema.ts).
 * Another role's own table beside the vault's (a shared `public`) is no concern of the vault's.
 */
import { VaultError } from "../../base/errors.js";
import { catalogRows, ME, type Queryable } from "./catalog.js";

/** Roles whose objects on the path are trusted: lessor's own, superusers, and pg_database_owner when one of those owns the database. */
const TRUSTED = `(SELECT oid FROM pg_roles WHERE oid = ${ME} OR rolsuper
  UNION SELECT r.oid FROM pg_roles r, pg_database d WHERE r.rolname = 'pg_database_owner' AND d.datname = current_database()
    AND d.datdba IN (SELECT oid FROM pg_roles WHERE oid = ${ME} OR rolsuper))`;

/** Runs under search_path = pg_catalog (./catalog.ts); $1 the session's path, $2 the vault's own object names. */
const TRUST_SQL = `
SELECT p.ord, n.nspname AS schema, current_user::text AS me, quote_ident(pg_get_userbyid(n.nspowner)::text) AS owner,
  (n.nspowner IN ${TRUSTED}) AS owned,
  array(SELECT DISTINCT CASE WHEN a.grantee = 0::oid THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)::text) END
    FROM aclexplode(coalesce(n.nspacl, acldefault('n'::"char", n.nspowner))) a
    WHERE a.privilege_type = 'CREATE' AND a.grantee NOT IN ${TRUSTED} ORDER BY 1) AS creators,
  array(SELECT f.what FROM (
      SELECT format('function %s (owner %I)', pr.oid::regprocedure, pg_get_userbyid(pr.proowner)::text) AS what
        FROM pg_proc pr WHERE pr.pronamespace = n.oid AND pr.proowner NOT IN ${TRUSTED}
      UNION ALL SELECT format('operator %s (owner %I)', o.oid::regoperator, pg_get_userbyid(o.oprowner)::text)
        FROM pg_operator o WHERE o.oprnamespace = n.oid AND o.oprowner NOT IN ${TRUSTED}
      UNION ALL SELECT format('%s %s (owner %I)', CASE c.relkind WHEN 'i'::"char" THEN 'index' ELSE 'table' END, c.oid::regclass, pg_get_userbyid(c.relowner)::text)
        FROM pg_class c WHERE p.ord = 1 AND c.relnamespace = n.oid AND c.relname::text = ANY($2::text[]) AND c.relowner <> ${ME}
    ) f ORDER BY 1 LIMIT 10) AS foreign_objects
FROM unnest($1::text[]) WITH ORDINALITY p(name, ord) JOIN pg_namespace n ON n.nspname = p.name::name
ORDER BY p.ord`;

interface TrustRow {
  ord: number;
  schema: string;
  me: string;
  owner: string;
  owned: boolean;
  creators: string[];
  foreign_objects: string[];
}

/**
 * Throws VaultError("insecure_permissions") naming the schema, the other role and the statement to
 * run when a schema on `client`'s search_path fails the checks above. `vaultNames`: the tables,
 * indexes and functions the vault's migrations create. `where`: the server, for messages. A path with
 * no schema that exists passes (creating the tables then fails, saying so).
 */
export async function assertSchemaTrusted(client: Queryable, vaultNames: readonly string[], where: string): Promise<void> {
  const rows = await catalogRows<TrustRow>(client, TRUST_SQL, [vaultNames]);
  for (const r of rows) {
    const which = r.ord === 1 ? `the vault's schema ${r.schema}` : `schema ${r.schema} (on the connection's search_path after the vault's)`;
    const why = `its functions and operators run inside lessor's statements, as ${r.me}, in place of the built-ins`;
    if (!r.owned)
      throw new VaultError(
        "insecure_permissions",
        `${which} at ${where} belongs to role ${r.owner}, who may create objects in it: ${why}; give it to lessor's role (ALTER SCHEMA ${r.schema} OWNER TO ${r.me}) or use a schema of lessor's own (docs/team.md, step 1)`,
      );
    if (r.creators.length > 0)
      throw new VaultError(
        "insecure_permissions",
        `other roles may create objects in ${which} at ${where} (CREATE is granted to ${r.creators.join(", ")}): ${why}; REVOKE CREATE ON SCHEMA ${r.schema} FROM ${r.creators.join(", ")}`,
      );
    if (r.foreign_objects.length > 0)
      throw new VaultError(
        "insecure_permissions",
        `${which} at ${where} holds objects of roles other than ${r.me}: ${r.foreign_objects.join(", ")}: ${why}, and a table of the vault's another role owns it can read and change; drop them (or, if they are lessor's, ALTER … OWNER TO ${r.me})`,
      );
  }
}
