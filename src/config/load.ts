/**
 * Reading lessor.toml. Kept apart from open-vault.ts so that
 * callers that only need the configuration (the CLI finding the daemon's socket) do not load the
 * store and the crypto.
 */
import { existsSync, readFileSync } from "node:fs";
import { DEFAULT_CONFIG, parseConfig, type Config } from "./config.js";
import { HOME_FILES, inHome } from "./home.js";

/** Reads `lessor.toml` in `home` (defaults when it is absent). */
export function loadConfig(home: string): Config {
  const path = inHome(home, HOME_FILES.config);
  if (!existsSync(path)) return structuredClone(DEFAULT_CONFIG);
  return parseConfig(readFileSync(path, "utf8"), path);
}

