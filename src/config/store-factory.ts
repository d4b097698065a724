/**
 * The store factory: opens the store `[vault] store` in lessor.toml names. openVault and the daemon
 * do not change with the adapter.
 */
import { statSync } from "node:fs";
import { VaultError } from "../base/errors.js";
import type { Store } from "../vault/ports.js";
import { createMemoryStore } from "../store/memory.js";
import { openSqliteStore } from "../store/sqlite/sqlite-store.js";
import type { StoreKind } from "./config.js";
import { HOME_FILES, inHome } from "./home.js";

/** The environment variable that names the PostgreSQL URL; it wins over `[vault] database_url`. */
export const DATABASE_URL_ENV = "LESSOR_DATABASE_URL";

/** What {@link openStore} needs besides the kind and the home. */
export interface StoreSettings {
  /**
   * "sqlite" only: make the database file when it is missing or empty. Only `lessor init` does: for
   * anything else a missing or emptied lessor.db is a lost vault, refused (naming the file and what to
   * do), never opened as a new empty one (which would answer "no secrets" and verify an empty trail).
   */
  create?: boolean;
  /** `[vault] database_url` from lessor.toml, if any. */
  databaseUrl?: string | null;
  /** Where LESSOR_DATABASE_URL is read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** `[vault] listen` and `[vault] poll_ms`: the PostgreSQL change feed (docs/team.md). */
  changeFeed?: { listen: boolean; pollMs: number };
}

/**
 * Opens the store of kind `kind` for the home `home`: "sqlite" is the database file in the home,
 * "memory" a store that lives as long as the process, "postgres" the database at LESSOR_DATABASE_URL
 * or `[vault] database_url` (never taken from the command line, where other users could read it).
 * Throws VaultError("config_invalid") when "postgres" has no URL, VaultError("unavailable") when the
 * database cannot be reached (the message never shows the password).
 */
export async function openStore(kind: StoreKind, home: string, settings: StoreSettings = {}): Promise<Store> {
  switch (kind) {
    case "sqlite": {
      const path = inHome(home, HOME_FILES.database);
      if (!settings.create) {
        let size: number | null = null;
        try {
          size = statSync(path).size;
        } catch {
          // missing: refused below
        }
        if (size === null || size === 0)
          throw new VaultError(
            "unavailable",
            `the vault database ${path} is ${size === null ? "missing" : "empty"}, though the home was made by lessor init: its secrets and audit trail are gone from here; restore the file from a backup (lessor init would make a new, empty vault only once you move the home's key and files aside)`,
          );
      }
      return openSqliteStore(path);
    }
    case "memory":
      return createMemoryStore();
    case "postgres": {
      const env = settings.env ?? process.env;
      const url = env[DATABASE_URL_ENV] || settings.databaseUrl || null;
      if (url === null)
        throw new VaultError(
          "config_invalid",
          `[vault] store = "postgres" needs the database's URL: set ${DATABASE_URL_ENV} or [vault] database_url in lessor.toml (postgres://user@host:5432/database)`,
        );
      // Loaded here, not at the top: pg and what it pulls in (Node's fetch among them) cost every
      // command of a SQLite vault ~35 ms at start-up.
      const { openPostgresStore } = await import("../store/postgres/postgres-store.js");
      return openPostgresStore({ url, ...(settings.changeFeed ? { feed: settings.changeFeed } : {}) });
    }
  }
}
