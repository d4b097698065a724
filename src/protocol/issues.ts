/**
 * Readable messages from params validation issues, for the server and the in-process backend alike.
 * Nothing here ever echoes a value a client sent: only names that look like field or method names.
 */

/**
 * A name from client input, quoted, only when it looks like a field or method name: a short identifier
 * with few digits. Anything longer or odder (which could be a value pasted in the wrong place) is
 * never echoed.
 */
export function safeName(s: unknown): string | null {
  if (typeof s !== "string" || s.length > 24 || !/^[A-Za-z][A-Za-z0-9_]*$/.test(s)) return null;
  return (s.match(/[0-9]/g)?.length ?? 0) <= 3 ? JSON.stringify(s) : null;
}

/** The shape of a zod issue this module reads. */
export interface ParamIssue {
  code: string;
  path: PropertyKey[];
  message: string;
  keys?: string[];
}

/**
 * One short sentence from params validation issues: each names the field (`path`) and what is wrong.
 * Built from zod's messages, which state expectations and never the input; unknown keys are named
 * only when they look like identifiers. At most three issues, each capped in length.
 */
export function issuesMessage(method: string, issues: readonly ParamIssue[], allowed?: readonly string[]): string {
  const parts: string[] = [];
  for (const i of issues.slice(0, 3)) {
    const path = i.path.length === 0 ? "params" : i.path.map(String).join(".");
    if (i.code === "unrecognized_keys") {
      const keys = (i.keys ?? []).map((k) => safeName(k) ?? "(a field with an unusual name)");
      const takes = allowed === undefined ? "" : allowed.length === 0 ? ` (${method} takes no params)` : ` (${method} takes ${allowed.join(", ")})`;
      parts.push(`${path}: unknown field${keys.length > 1 ? "s" : ""} ${keys.slice(0, 5).join(", ")}${takes}`);
    } else if (i.code === "invalid_type" && i.message.endsWith("received undefined")) {
      parts.push(`${path} is required`);
    } else {
      let m = i.message.replace(/^Invalid input: /, "");
      if (m.length > 160) m = `${m.slice(0, 157)}...`;
      parts.push(`${path}: ${m}`);
    }
  }
  const more = issues.length > 3 ? ` (and ${issues.length - 3} more)` : "";
  return `invalid params for ${method}: ${parts.join("; ")}${more}; see docs/protocol.md`;
}
