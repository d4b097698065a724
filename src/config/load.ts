/**
 * Reading lessor.toml. Kept apart from open-vault.ts so that
 * callers that only need the configuration (the CLI finding the daemon's socket) do not load the
 * store and the crypto.
 */
import { VaultError } from "../base/errors.js";
import { readTrustedText } from "../fs/trusted-file.js";
import { DEFAULT_CONFIG, parseConfig, type Config } from "./config.js";
import { checkVmSockets } from "./guest-map.js";
import { HOME_FILES, inHome } from "./home.js";

/**
 * Reads `lessor.toml` in `home` (defaults when it is absent). It names commands lessor runs as you and
 * who is admin, so it must be a regular file of yours that no other user can write (src/fs/trusted-file.ts).
 */
export function loadConfig(home: string): Config {
  const path = inHome(home, HOME_FILES.config);
  let text: string;
  try {
    text = readTrustedText(path, "the configuration file", "config_invalid");
  } catch (e) {
    if (e instanceof VaultError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return structuredClone(DEFAULT_CONFIG);
    throw new VaultError("config_invalid", `cannot read the configuration file ${path} (${code ?? "error"}); check that it is a file you can read`);
  }
  const cfg = parseConfig(text, path);
  // Relative uds_paths are in the home, which parsing does not know.
  checkVmSockets(path, cfg.vms, home);
  return cfg;
}

