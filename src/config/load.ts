/**
 * Reading the home's files: lessor.toml and the policy file. Kept apart from open-vault.ts so that
 * callers that only need the configuration (the CLI finding the daemon's socket) do not load the
 * store and the crypto.
 */
import { existsSync, readFileSync } from "node:fs";
import { VaultError } from "../vault/errors.js";
import { parsePolicy, type Policy } from "../vault/policy.js";
import { DEFAULT_CONFIG, parseConfig, type Config } from "./config.js";
import { HOME_FILES, inHome } from "./home.js";

/** Reads `lessor.toml` in `home` (defaults when it is absent). */
export function loadConfig(home: string): Config {
  const path = inHome(home, HOME_FILES.config);
  if (!existsSync(path)) return structuredClone(DEFAULT_CONFIG);
  return parseConfig(readFileSync(path, "utf8"), path);
}

/** Reads and parses a policy file. */
export function loadPolicyFile(path: string): Policy {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new VaultError(
      "policy_invalid",
      code === "ENOENT" ? `the policy file ${path} does not exist; create it (see docs/policy.md) or run lessor init` : `cannot read the policy file ${path} (${code ?? "error"})`,
    );
  }
  return parsePolicy(text, path);
}

