/**
 * lessor's embedded API: the core (also `lessor/vault`), the stores, key sources and audit sinks, the
 * home (openVault, initHome) and the client (also `lessor/client`). See README.md and docs/.
 */
export * from "./vault/index.js";
export { envKeySource } from "./crypto/keys/env.js";
export { fileKeySource, createKeyFile } from "./crypto/keys/file.js";
export { passphraseKeySource, createPassphraseKeyStore } from "./crypto/keys/passphrase.js";
export { commandKeySource } from "./crypto/keys/command.js";
export { selectKeySource } from "./crypto/keys/select.js";
export { createMemoryStore } from "./store/memory.js";
export { openSqliteStore } from "./store/sqlite/sqlite-store.js";
export { jsonlSink } from "./audit/jsonl-sink.js";
export { logSink } from "./audit/sink.js";
export { openVault, initHome, type OpenVaultOptions, type InitOptions } from "./config/open-vault.js";
export { VERSION } from "./version.js";
export * from "./client/index.js";
