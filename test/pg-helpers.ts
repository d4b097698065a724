/**
 * PostgreSQL test helpers: the server comes from LESSOR_TEST_PG_URL (e.g.
 * postgres://postgres@127.0.0.1:5432/test); without it the PostgreSQL tests skip, saying why. Each
 * test gets a schema of its own (lessor_test_<random>), dropped after, so test files running in
 * parallel never share tables or advisory locks.
 */
import crypto from "node:crypto";
import pg from "pg";

/** The test server's URL, or undefined when PostgreSQL tests are to be skipped. */
export const PG_URL: string | undefined = process.env.LESSOR_TEST_PG_URL || undefined;

/** The `skip` option for node:test: false when a server is configured, else the reason. */
export const PG_SKIP: false | string =
  PG_URL === undefined ? "LESSOR_TEST_PG_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test): PostgreSQL store tests skipped" : false;

/**
 * A fresh empty schema on the test server, the server's URL with that schema in search_path (what a
 * lessor.toml's database_url says: the store has no schema setting of its own there), and how to
 * drop it.
 */
export async function testSchema(): Promise<{ schema: string; url: string; drop: () => Promise<void> }> {
  if (PG_URL === undefined) throw new Error(String(PG_SKIP));
  const schema = `lessor_test_${crypto.randomBytes(6).toString("hex")}`;
  await admin(`CREATE SCHEMA ${schema}`);
  const u = new URL(PG_URL);
  u.searchParams.set("options", `-c search_path=${schema}`);
  return { schema, url: u.toString(), drop: async () => void (await admin(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)) };
}

/** Runs one statement on the test server outside any store. */
export async function admin(sql: string, values: unknown[] = []): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    return await c.query(sql, values);
  } finally {
    await c.end();
  }
}

/** The test server's URL as login role `user` (trust auth), with `path` as its search_path when given. */
export function urlAs(user: string, path?: string): string {
  const u = new URL(PG_URL!);
  u.username = user;
  if (path !== undefined) u.searchParams.set("options", `-c search_path=${path}`);
  return u.toString();
}

/** Runs `sql` on the test server as `user` (trust auth). */
export async function asRole(user: string, sql: string): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: urlAs(user) });
  await c.connect();
  try {
    return await c.query(sql);
  } finally {
    await c.end();
  }
}
