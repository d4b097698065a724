/** Every command group's register function; main.ts calls each. */
export { registerBasics } from "./basics.js";
export { registerSecret } from "./secret.js";
export { registerLease } from "./lease.js";
export { registerAudit } from "./audit.js";
export { registerPolicy } from "./policy.js";
export { registerToken } from "./token.js";
export { registerStatus } from "./status.js";
export { registerWhoami } from "./whoami.js";
export { registerCompletion } from "./completion.js";
export { registerRun } from "./run.js";
export { registerInject } from "./inject.js";
export { registerProxy } from "./proxy.js";
export { registerMcp } from "./mcp.js";
export { registerCredentialHelpers } from "./credential-helpers.js";
export { registerMigrate } from "./migrate.js";
export { registerApproval } from "./approval.js";
export { registerKey } from "./key.js";
