/**
 * The store factory: opens the store `[vault] store` in lessor.toml names. A new store adapter (the
 * PostgreSQL store shared by several daemons, issue 15) is one more case here; openVault and the
 * daemon do not change.
 */
import { VaultError } from "../base/errors.js";
import type { Store } from "../vault/ports.js";
import { createMemoryStore } from "../store/memory.js";
import { openSqliteStore } from "../store/sqlite/sqlite-store.js";
import type { StoreKind } from "./config.js";
import { HOME_FILES, inHome } from "./home.js";

/**
 * Opens the store of kind `kind` for the home `home`: "sqlite" is the database file in the home,
 * "memory" a store that lives as long as the process. "postgres" throws VaultError("config_invalid").
 */
export function openStore(kind: StoreKind, home: string): Store {
  switch (kind) {
    case "sqlite":
      return openSqliteStore(inHome(home, HOME_FILES.database));
    case "memory":
      return createMemoryStore();
    case "postgres":
      throw new VaultError("config_invalid", 'the PostgreSQL store is not built yet (issue 15); set [vault] store = "sqlite" in lessor.toml');
  }
}
