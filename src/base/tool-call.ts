/**
 * The shape of a tool call as the audit trail records it (`tool_call` events, src/vault/tool-calls.ts):
 * shared by the core, which checks it, and the method registry, whose params schema says it.
 */
import { ERROR_CODES, type ErrorCode } from "./errors.js";

/** How a tool call ended: done, refused by the vault (policy, role, a lease that ended), or failed. */
export const TOOL_OUTCOMES = ["ok", "refused", "error"] as const;
export type ToolOutcome = (typeof TOOL_OUTCOMES)[number];

/** A tool's name: an MCP tool name's characters (letters, digits, `_`, `.`, `-`), starting with a letter; at most 64. */
export const TOOL_NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;

/**
 * The codes a failed tool call may be recorded with: lessor's error codes (docs/errors.md), and
 * `unknown_tool` for a call naming no tool of the server. A closed list, so that nothing else (a value,
 * an argument) can be written there.
 */
export const TOOL_CODES = [...(Object.keys(ERROR_CODES) as ErrorCode[]), "unknown_tool"] as const;
export type ToolCode = (typeof TOOL_CODES)[number];

/** The longest duration a tool call report may carry, ms (a week). */
export const MAX_TOOL_CALL_MS = 7 * 24 * 3600_000;
