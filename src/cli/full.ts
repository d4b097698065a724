/**
 * The full command tree as the built bin loads it (dist/bin/full.cjs, from its code cache: see
 * src/cli/bin.ts and scripts/build-cli.mjs): the commander program, and the backend opener the fast
 * path falls back to when `lessor run` must reach the vault itself.
 */
export { main } from "./program.js";
export { openCliBackend } from "./open-backend.js";
