/**
 * `lessor mcp`'s server: the tools of ./tools.ts over the Model Context Protocol, on stdio.
 *
 * It is built on the SDK's low-level `Server` rather than `McpServer`, so that lessor, not the SDK,
 * checks each call's arguments against the schemas derived from the method registry: a malformed call
 * then gets lessor's message (which names fields and never quotes a value), is logged and audited like
 * any other, and the server keeps serving. Every call, a malformed one or one to an unknown tool too,
 * is written to the audit trail as one `tool_call` event before its answer goes out (./call-audit.ts).
 * Every result's text passes the session's scrubber last, so a value the session holds cannot reach
 * the agent whatever path it took.
 *
 * The session's leases are revoked when the client goes away (stdin closes) or on SIGINT/SIGTERM, as
 * `lessor run` revokes its leases when its command exits (through {@link McpSessionOptions.revoke}).
 */
import { z } from "zod";
import { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { CallToolRequestSchema, ErrorCode as McpErrorCode, ListToolsRequestSchema, McpError } from "@modelcontextprotocol/sdk/types.js";
import { VaultError, type ErrorCode } from "../base/errors.js";
import type { BackendApi } from "../backend/backend.js";
import { PendingLeases } from "../backend/pending-leases.js";
import type { ProxyConfig } from "../config/proxy-config.js";
import { issuesMessage, safeName } from "../protocol/issues.js";
import { VERSION } from "../version.js";
import { CallAudit, UNKNOWN_TOOL, UNKNOWN_TOOL_CODE } from "./call-audit.js";
import { SessionCredentials } from "./credentials.js";
import type { McpIdentity } from "./identity.js";
import { errorDoc, failed, ok, type ToolResult } from "./results.js";
import { SessionProxy } from "./session-proxy.js";
import { PacedStreamTransport } from "./paced-transport.js";
import { ApprovalPages } from "./approval-page.js";
import { TOOLS, type ToolContext, type ToolSpec } from "./tools.js";

/** Options of {@link createMcpSession}. */
export interface McpSessionOptions {
  api: BackendApi;
  identity: McpIdentity;
  /** The home's `[proxy]` settings (ports, allow, hosts, upstream_ca, inject rules). */
  proxyConfig: ProxyConfig;
  /** One line on stderr (the per-call log, alarms); never a credential. */
  log(line: string): void;
  /** Where the proxy's private directory is made (default: the system's temporary directory). */
  tmp?: string;
  /**
   * False: never offer the approval page (URL-mode elicitation); approvals are decided in a terminal
   * only. For clients that may open and submit pages without a person (docs/mcp.md). Default true.
   */
  approvalPage?: boolean;
  /**
   * Revokes the session's leases (`ids`) with `reason` when it ends, and resolves to the ids of those
   * it could not revoke, having said which on stderr. `lessor mcp` passes the CLI's (src/cli/mcp-backend.ts:
   * retried on a new connection, as `lessor run` does, each left one named with `lessor revoke <id>`).
   * Default: once through `api`, the number left logged.
   */
  revoke?(ids: readonly string[], reason: string): Promise<readonly string[]>;
}

/** An MCP server bound to one agent, not yet connected to a transport. */
export interface McpSession {
  /** The server for one transport (stdio, a socket connection, or one streamable HTTP session serves this one). */
  server: Server;
  /**
   * Another server for the same agent and the same leases (the SDK's Server speaks to one transport),
   * sharing this session's credentials and proxy: for several transports on one set of leases.
   */
  newServer(): Server;
  /** Revokes the session's leases, stops its proxy, forgets the values. Idempotent. */
  close(): Promise<void>;
  /** Resolves once no tool call is being served (at once when none is). */
  idle(): Promise<void>;
}

/** The fields of a tools/call request a refusal may name. */
const REQUEST_FIELDS: ReadonlySet<string> = new Set(["params", "params.name", "params.arguments", "params._meta", "params.task"]);

/** A tool's entry in tools/list: its input schema as JSON Schema, from the zod schema. */
function listed(t: ToolSpec): Record<string, unknown> {
  const { $schema: _drop, ...inputSchema } = z.toJSONSchema(t.input, { io: "input", unrepresentable: "any" }) as Record<string, unknown>;
  return { name: t.name, title: t.title, description: t.description, inputSchema, annotations: t.annotations };
}

/** `result` with every value the session holds replaced by its placeholder. */
function scrubbed(result: ToolResult, creds: SessionCredentials): ToolResult {
  const text = result.content.map((c) => c.text).join("\n");
  const clean = creds.scrub(text);
  if (clean === text) return result;
  // A value turned up (it should not: the proxy scrubs, errors carry none): send the scrubbed text only.
  let doc: Record<string, unknown> | undefined;
  try {
    doc = JSON.parse(clean) as Record<string, unknown>;
  } catch {
    doc = undefined;
  }
  return { content: [{ type: "text", text: clean }], ...(doc ? { structuredContent: doc } : {}), ...(result.isError ? { isError: true } : {}) };
}

/** Builds the server for one agent. */
export function createMcpSession(o: McpSessionOptions): McpSession {
  const credentials = new SessionCredentials(o.identity.agent, o.proxyConfig.inject);
  const proxy = new SessionProxy({ api: o.api, agent: o.identity.agent, config: o.proxyConfig, credentials, warn: o.log, ...(o.tmp !== undefined ? { tmp: o.tmp } : {}) });
  const pages = new ApprovalPages(o.log);
  const ctx: ToolContext = { api: o.api, agent: o.identity.agent, role: o.identity.role, credentials, proxy, ...(o.approvalPage !== false ? { pages } : {}), log: o.log };
  const byName = new Map(TOOLS.map((t) => [t.name, t]));
  const agentText = JSON.stringify(o.identity.agent);
  const audit = new CallAudit(o.api, o.identity, o.log);
  let toolList: Record<string, unknown>[] | undefined;

  const makeServer = (): Server => {
    const server = new Server(
      { name: "lessor", version: VERSION },
      {
        capabilities: { tools: {} },
        instructions:
          "lessor lends this agent credentials without showing them: list_secrets and explain_access say what it may use, request_access takes a lease and returns a placeholder, and http_request sends HTTPS requests in which lessor swaps placeholders for the real credentials. Secret values are never returned.",
      },
    );

    // Made once per session: a client asking again and again does not make the server convert the schemas again.
    server.setRequestHandler(ListToolsRequestSchema, () => ({ tools: (toolList ??= TOOLS.map(listed)) }));

    // tools/call is served by the fallback handler, not setRequestHandler: the SDK's Server checks a
    // tools/call request's shape before its handler runs and answers a malformed one itself, so that
    // call would go unaudited. Here every call, well-formed or not, is audited exactly once.
    server.fallbackRequestHandler = async (request, extra) => {
      calls++;
      try {
        return await serveCall(request, extra);
      } finally {
        if (--calls === 0) for (const w of idleWaiters.splice(0)) w();
      }
    };
    const serveCall = async (request: Parameters<NonNullable<Server["fallbackRequestHandler"]>>[0], extra: Parameters<NonNullable<Server["fallbackRequestHandler"]>>[1]) => {
      if (request.method !== "tools/call") throw new McpError(McpErrorCode.MethodNotFound, "Method not found");
      const started = performance.now();
      const req = CallToolRequestSchema.safeParse(request);
      if (!req.success) {
        const named = (request.params as { name?: unknown } | undefined)?.name;
        const spec = typeof named === "string" ? byName.get(named) : undefined;
        o.log(`lessor mcp: agent ${agentText}: a malformed tools/call refused`);
        await audit.record(spec?.name ?? UNKNOWN_TOOL, "invalid_request", started);
        // Known field names only: the parser's own message, or a key the client chose, may quote what was sent.
        const fields = [...new Set(req.error.issues.map((i) => i.path.slice(0, 2).map(String).join(".")))].filter((f) => REQUEST_FIELDS.has(f));
        throw new McpError(McpErrorCode.InvalidParams, `invalid tools/call request${fields.length > 0 ? ` (check ${fields.join(", ")})` : ""}: params must be {name: string, arguments?: object}`);
      }
      const name = req.data.params.name;
      const spec = byName.get(name);
      if (!spec) {
        o.log(`lessor mcp: agent ${agentText}: unknown tool refused`);
        await audit.record(UNKNOWN_TOOL, UNKNOWN_TOOL_CODE, started);
        throw new McpError(McpErrorCode.InvalidParams, `unknown tool ${safeName(name) ?? "(with an unusual name)"}; tools/list gives the tools (${TOOLS.map((t) => t.name).join(", ")})`);
      }
      // From the call's start to its scrubbed result, a value revoked meanwhile stays masked.
      const settled = credentials.busy();
      try {
        return await runTool(spec, extra.requestId, req.data.params.arguments, started);
      } finally {
        settled();
      }
    };
    const runTool = async (spec: ToolSpec, requestId: string | number | undefined, args: unknown, started: number): Promise<ToolResult> => {
      let result: ToolResult;
      let code: ErrorCode | null;
      const parsed = spec.input.safeParse(args ?? {});
      if (!parsed.success) {
        const e = new VaultError("invalid_request", issuesMessage(spec.name, parsed.error.issues, Object.keys(spec.input.shape)).replace("see docs/protocol.md", "tools/list gives the schema"));
        result = failed(errorDoc(e, o.identity.agent));
        code = "invalid_request";
      } else {
        try {
          result = ok(await spec.run({ ...ctx, server, requestId }, parsed.data as Record<string, unknown>));
          code = null;
        } catch (e) {
          const doc = errorDoc(e, o.identity.agent);
          if (!(e instanceof VaultError)) o.log(`lessor mcp: ${spec.name} failed unexpectedly: ${e instanceof Error ? e.name : "error"}`);
          result = failed(doc);
          code = doc.error.code;
        }
      }
      o.log(`lessor mcp: agent ${agentText} ${spec.name}: ${code === null ? "ok" : `error ${code}`} (${Math.round(performance.now() - started)} ms)`);
      const unaudited = await audit.record(spec.name, code, started);
      if (unaudited !== null) result = failed(errorDoc(unaudited, o.identity.agent));
      return scrubbed(result, credentials);
    };
    return server;
  };

  let calls = 0;
  const idleWaiters: (() => void)[] = [];
  const idle = (): Promise<void> => (calls === 0 ? Promise.resolve() : new Promise<void>((r) => idleWaiters.push(r)));
  let closing: Promise<void> | null = null;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      await proxy.close();
      await pages.close();
      // A request_access still granting (its commit waiting on the database, say) adds nothing now:
      // it revokes its own lease, before the vault closes.
      await credentials.end(GRANT_WAIT_MS);
      const ids = credentials.leaseIdsToRevoke();
      credentials.wipe();
      if (ids.length > 0) await (o.revoke ?? revokeOnce)(ids, SESSION_ENDED);
    })());
  const revokeOnce = async (ids: readonly string[], reason: string): Promise<readonly string[]> => {
    const leases = new PendingLeases(ids);
    await leases.revokeAll(reason, o.api);
    const left = leases.unrevoked;
    if (left.length > 0) o.log(`lessor mcp: ${left.length} lease(s) could not be revoked; they end when they expire`);
    return left;
  };
  return { server: makeServer(), newServer: makeServer, close, idle };
}

/** The reason the leases of a session are revoked with when it ends. */
export const SESSION_ENDED = "lessor mcp session ended";

/** How long the session's end waits for a grant on its way (the store's busy wait is 5 s by default). */
const GRANT_WAIT_MS = 15_000;

/** How long calls still being served may take once the client closed stdin. */
const DRAIN_MS = 60_000;

/** Largest message a client may send on stdio, bytes (as on a socket, ./stream.ts, and over HTTP). */
export const MAX_STDIO_MESSAGE = 8 * 1024 * 1024;

/**
 * Serves `session` on stdin/stdout until the client closes stdin (its calls still served are answered
 * first, for up to {@link DRAIN_MS}) or a stop signal arrives; then
 * closes the session. Nothing else may write to stdout meanwhile: it carries the protocol.
 */
export async function serveStdio(session: McpSession, log: (line: string) => void): Promise<void> {
  // Read no faster than the client takes the answers (./paced-transport.ts).
  const transport = new PacedStreamTransport(process.stdin, process.stdout, MAX_STDIO_MESSAGE);
  let stop: () => void = () => {};
  const stopped = new Promise<void>((r) => (stop = r));
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.on(s, stop);
  // The client closed its end (input piped in, say): the calls it sent are still answered first.
  const drained = (): void =>
    void Promise.race([session.idle(), new Promise((r) => setTimeout(r, DRAIN_MS).unref())]).then(() => setImmediate(stop));
  process.stdin.once("end", drained);
  process.stdin.once("close", drained);
  transport.onclose = stop;
  // The error's name only: a parse error's message quotes the input, which may hold anything.
  session.server.onerror = (e) => log(`lessor mcp: a message from the client could not be handled (${e instanceof McpError ? `MCP error ${e.code}` : e.name})`);
  await session.server.connect(transport);
  try {
    await stopped;
  } finally {
    for (const s of signals) process.off(s, stop);
    await session.server.close().catch(() => {});
    await session.close();
  }
}
