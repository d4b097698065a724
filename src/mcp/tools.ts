/**
 * The tools `lessor mcp` offers an agent. Each works with names, leases and placeholders; none ever
 * returns a secret value. Where a tool maps to a method of the registry (src/protocol/registry.ts), its
 * input schema is that method's params schema narrowed to what an agent may choose: the agent itself is
 * never an argument (it is fixed when the server starts: ./identity.ts), so `agent` is left out.
 *
 * | tool           | registry methods                                      | audited by the vault as          |
 * |----------------|-------------------------------------------------------|----------------------------------|
 * | list_secrets   | list_granted                                          | read-only (not audited)          |
 * | explain_access | explain                                               | read-only (not audited)          |
 * | request_access | approval_request, then request_lease with access      | lease_granted, secret_accessed;  |
 * |                | (one use, to shape it); approval_decide from the page | approval_* (./approval-flow.ts)  |
 * | http_request   | access_secret per request, record_proxy_requests      | secret_accessed, proxy_request   |
 * | revoke         | list_leases (ownership), revoke_lease                 | lease_revoked                    |
 * | list_leases    | list_leases                                           | read-only (not audited)          |
 * | (every call)   | record_tool_call (./call-audit.ts)                    | tool_call                        |
 *
 * Refusals are audited by the core as access_denied. Every call, whatever it did, and including a
 * malformed call or one to an unknown tool, is also audited as one `tool_call` event (agent, tool,
 * outcome, error code, duration; never an argument) by ./server.ts before the agent sees its result.
 * An agent reaching the vault with its own identity may list and explain only its own grants
 * (src/vault/own-access.ts); the owner's server asks the same for the agent it serves.
 */
import { z } from "zod";
import { VaultError } from "../base/errors.js";
import { refusalForAgent } from "../vault/policy.js";
import type { LeaseRecord, Role } from "../base/types.js";
import type { BackendApi } from "../backend/backend.js";
import { plain } from "../protocol/params.js";
import { REGISTRY } from "../protocol/registry.js";
import type { SessionCredentials } from "./credentials.js";
import { fetchThroughProxy } from "./fetch.js";
import { withHint } from "./results.js";
import type { SessionProxy } from "./session-proxy.js";
import type { Server } from "@modelcontextprotocol/sdk/server/index.js";
import { awaitApproval } from "./approval-flow.js";
import type { ApprovalPages } from "./approval-page.js";

/** What every tool call gets. */
export interface ToolContext {
  api: BackendApi;
  /** The agent the server acts for. */
  agent: string;
  /** The role of the backend's identity: an agent's own daemon identity, or the owner acting for `agent`. */
  role: Role;
  credentials: SessionCredentials;
  proxy: SessionProxy;
  /** The MCP server this call came through (request_access asks the client to open an approval page). */
  server?: Server | undefined;
  /** The JSON-RPC id of this tool call. */
  requestId?: string | number | undefined;
  /** The session's approval pages (./approval-page.ts). */
  pages?: ApprovalPages | undefined;
  /** One line on stderr; never a credential. */
  log(line: string): void;
}

/** One tool. */
export interface ToolSpec {
  name: string;
  title: string;
  description: string;
  input: z.ZodObject;
  /** MCP tool annotations (hints for clients). */
  annotations: { readOnlyHint?: boolean; destructiveHint?: boolean; idempotentHint?: boolean; openWorldHint?: boolean };
  run(ctx: ToolContext, args: Record<string, unknown>): Promise<Record<string, unknown>>;
}

/** Bytes of a response body returned to the agent; the rest is cut with a note. */
export const MAX_RESPONSE_BODY = 64 * 1024;
/** Characters of a request body an agent may send. */
export const MAX_REQUEST_BODY = 1024 * 1024;
/** Most headers in one request. */
const MAX_HEADERS = 64;
/** Deadline of one http_request, ms. */
const HTTP_TIMEOUT_MS = 30_000;
/** Most secrets list_secrets returns. */
const MAX_LISTED = 500;

/** An HTTP header name (RFC 9110 token). */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/;
/** Headers lessor sets itself (framing, the tunnel): an agent may not. */
const RESERVED = new Set(["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive", "proxy-authorization", "proxy-connection", "expect"]);
const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const;

const explainParams = REGISTRY.explain.params.shape;
const leaseParams = REGISTRY.request_lease.params.shape;
const listParams = REGISTRY.list_leases.params.shape;

const describe = <T extends z.ZodType>(s: T, d: string): T => s.describe(d) as T;

const SECRET_DOC = "the secret's name: scope/name, or a bare name in scope global (as list_secrets gives it)";

/** ISO time of an epoch-ms instant. */
const iso = (ms: number): string => new Date(ms).toISOString();

/** The terms of a lease as an agent should see them: never a value. */
function terms(l: LeaseRecord): Record<string, unknown> {
  return {
    leaseId: l.id,
    secret: `${l.scope}/${l.name}`,
    domains: l.domains,
    anyDomain: l.anyDomain,
    methods: l.methods,
    paths: l.paths,
    rule: l.rule,
    expiresAt: iso(l.expiresAt),
    uses: l.uses,
    maxUses: l.maxUses,
    revoked: l.revokedAt !== null,
  };
}

/** The leases of the agent (an agent's own identity sees only its own; the owner filters by agent). */
function listOwn(ctx: ToolContext, filter: { id?: string; live?: boolean; secret?: string; limit?: number }): Promise<LeaseRecord[]> {
  return ctx.api.listLeases({ ...(ctx.role === "agent" ? {} : { agent: ctx.agent }), ...filter });
}

const listSecrets: ToolSpec = {
  name: "list_secrets",
  title: "List the secrets you may ask for",
  description:
    "Lists the secrets this agent may request access to: name, kind, description, the rule that grants it and the domains it may be used on (approval: required when a person must approve each lease). Never returns a value. Use a name with explain_access or request_access.",
  input: z.strictObject({}),
  annotations: { readOnlyHint: true, openWorldHint: false },
  async run(ctx) {
    // One call: the vault lists what the agent's grants cover (an agent's own identity: only its own).
    const all = await ctx.api.api.list_granted(ctx.role === "agent" ? {} : { agent: ctx.agent });
    const secrets = all.slice(0, MAX_LISTED).map((s) => ({
      secret: `${s.scope}/${s.name}`,
      kind: s.kind,
      description: s.description,
      rule: s.rule,
      domains: s.domains,
      ...(s.anyDomain ? { anyDomain: true } : {}),
      ...(s.approval === "required" ? { approval: "required" } : {}),
    }));
    return { agent: ctx.agent, secrets, ...(all.length > MAX_LISTED ? { note: `only the first ${MAX_LISTED} of ${all.length} granted secrets are listed` } : {}) };
  },
};

const explainAccess: ToolSpec = {
  name: "explain_access",
  title: "Explain whether access would be granted",
  description: "Says whether this agent would be granted a lease on a secret (for a domain, if given), which policy rule decides, and why. Takes no lease.",
  input: z.strictObject({ secret: describe(explainParams.secret, SECRET_DOC), domain: describe(explainParams.domain, "the host the credential would be sent to, e.g. api.github.com") }),
  annotations: { readOnlyHint: true, openWorldHint: false },
  async run(ctx, a) {
    // As an agent's own identity the vault answers for that agent only; the owner asks for the agent served.
    const e = await ctx.api.explain(ctx.agent, a["secret"] as string, a["domain"] as string | undefined);
    return { agent: ctx.agent, secret: a["secret"], ...(a["domain"] !== undefined ? { domain: a["domain"] } : {}), allow: e.allow, rule: e.rule, reason: refusalForAgent(e.reason) };
  },
};

const requestAccess: ToolSpec = {
  name: "request_access",
  title: "Request access to a secret",
  description:
    "Takes a lease on a secret for this agent (checked against policy) and returns its id, its terms (domains, expiry, uses) and a placeholder. Put the placeholder where the credential goes in http_request (e.g. header Authorization: Bearer <placeholder>); lessor swaps it for the real value on the way to the lease's domains. The value itself is never returned. Taking the lease uses it once. Some grants need a person's approval: then the person is asked (a page your client may open, or a terminal), and until they approve the result has status approval_pending with an approvalId and what to do; call request_access again with the same arguments once they have.",
  input: z.strictObject({
    secret: describe(leaseParams.secret, SECRET_DOC),
    domains: describe(leaseParams.domains, "the hosts you will call with it (each checked against policy); default: the grant's domains"),
    ttl: describe(leaseParams.ttl, "how long the lease should live, in ms or as 5m, 1h (capped by policy)"),
    reason: describe(plain(z.string().min(1).max(300)).optional(), "why you need it, in one line: shown to the person asked to approve (for grants that need approval)"),
    approvalId: describe(plain(z.string().max(64)).optional(), "the approvalId of an earlier approval_pending answer (optional: the same arguments find it too)"),
  }),
  annotations: { readOnlyHint: false, destructiveHint: false, openWorldHint: false },
  async run(ctx, a) {
    const req = {
      ...(ctx.role === "agent" ? {} : { agent: ctx.agent }),
      secret: a["secret"] as string,
      ...(a["domains"] !== undefined ? { domains: a["domains"] as string[] } : {}),
      ...(a["ttl"] !== undefined ? { ttl: a["ttl"] as string | number } : {}),
    };
    // First ask whether the grant needs a person (it opens or finds the approval for this exact request).
    // A grant for any host, asked for no host, would be a lease the proxy adds nowhere: it covers
    // hosts by name. The vault says so (namedHosts) before a person is asked to approve it.
    const ask = await ctx.api.api.approval_request({ ...req, namedHosts: true, ...(a["reason"] !== undefined ? { reason: a["reason"] as string } : {}) });
    let approval: string | undefined;
    if (ask.required && ask.approval.anyDomain && ask.approval.hosts.length === 0) throw namesNoHost(req.secret);
    if (ask.required) {
      if (a["approvalId"] !== undefined && a["approvalId"] !== ask.approval.id && ask.approval.state !== "approved")
        throw withHint(
          new VaultError(
            "access_denied",
            `approval ${String(a["approvalId"]).slice(0, 64)} is not in force for these arguments (it lapsed, or it was given for other arguments); approval ${ask.approval.id} is the one for them now (${ask.approval.state})`,
          ),
          `a person decides approval ${ask.approval.id} (lessor approve ${ask.approval.id}); then call request_access again with the same arguments, or with approvalId ${ask.approval.id}`,
        );
      const flow = await awaitApproval(ctx, ask.approval);
      if ("result" in flow) return flow.result;
      approval = flow.approved;
    }
    // One step the session's end waits for: the lease is held here, or revoked, before the vault closes.
    const { lease, placeholder, mode } = await ctx.credentials.granting(async () => {
      const got = await ctx.api.api.request_lease({ ...req, ...(approval !== undefined ? { approval } : {}), access: { via: "proxy" } });
      if (!("value" in got)) throw new VaultError("internal", "the vault granted the lease but sent no value; use matching versions of lessor");
      if (got.lease.anyDomain && got.lease.domains.length === 0) {
        got.value.wipe();
        await ctx.api.revokeLease(got.lease.id, "lessor mcp: a lease for no named host is of no use to http_request").catch(() => ctx.credentials.unheld(got.lease.id));
        throw namesNoHost(req.secret);
      }
      try {
        const c = ctx.credentials.add(got.lease, got.value.expose());
        return { lease: got.lease, placeholder: c.placeholder, mode: c.rule.mode };
      } catch (e) {
        await ctx.api
          .revokeLease(got.lease.id, e instanceof VaultError && e.code === "unavailable" ? "lessor mcp session ended" : "lessor mcp could not use the value")
          .catch(() => ctx.credentials.unheld(got.lease.id));
        throw e;
      } finally {
        got.value.wipe();
      }
    });
    const where = lease.domains.join(", ");
    const usage =
      mode === "placeholder"
        ? `send the placeholder where the credential goes (a header such as Authorization: Bearer ${placeholder}; not the URL, where it is not replaced) in http_request to ${where}; lessor replaces it with the real value on the way out and masks the value in the response`
        : `lessor adds this credential itself (${mode}) to every http_request to ${where}; you need not send the placeholder`;
    return { ...terms(lease), placeholder, usage };
  },
};

/**
 * The refusal of a request that names no host under a grant for any host: the proxy adds a
 * credential only for hosts its lease names, so such a lease would be of no use.
 */
function namesNoHost(secret: string): VaultError {
  return withHint(
    new VaultError("invalid_request", `the grant of ${secret} allows any host, so the lease must name the hosts you will call: lessor adds the credential only to requests for hosts the lease names`),
    `call request_access again with domains, e.g. domains: ["api.example.com"]`,
  );
}

const httpRequest: ToolSpec = {
  name: "http_request",
  title: "Make an HTTPS request with your leased credentials",
  description: `Sends an HTTPS request through lessor's injecting proxy with this agent's leases: placeholders from request_access in headers are replaced with the real credentials for the hosts their leases cover (not in the URL: a request with one there is refused). Hosts no lease covers, private addresses and cloud metadata endpoints are refused. Returns status, headers and the body (credentials masked), cut at ${MAX_RESPONSE_BODY / 1024} KiB with a note.`,
  input: z.strictObject({
    method: describe(z.enum(METHODS), "the HTTP method"),
    url: describe(plain(z.string().min(1).max(8192)), "an https:// URL on a host one of your leases covers"),
    headers: describe(
      z
        .record(z.string().regex(TOKEN, "header names are HTTP tokens (letters, digits, - and a few symbols)"), plain(z.string().max(8192)))
        .refine((h) => Object.keys(h).length <= MAX_HEADERS, { message: `at most ${MAX_HEADERS} headers` })
        .optional(),
      "request headers; placeholders in values are replaced with the credentials",
    ),
    body: describe(z.string().max(MAX_REQUEST_BODY).optional(), `the request body as text (at most ${MAX_REQUEST_BODY} characters)`),
  }),
  annotations: { readOnlyHint: false, openWorldHint: true },
  async run(ctx, a) {
    const url = parseUrl(a["url"] as string);
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries((a["headers"] as Record<string, string> | undefined) ?? {})) {
      const name = k.toLowerCase();
      if (RESERVED.has(name) || name.startsWith("proxy-")) throw new VaultError("invalid_request", `header ${name} is set by lessor, not by the caller; leave it out`);
      headers[name] = v;
    }
    headers["host"] = url.host;
    const body = a["body"] === undefined ? undefined : Buffer.from(a["body"] as string, "utf8");
    if (body !== undefined) headers["content-length"] = String(body.length);
    await ctx.proxy.checkLiteral(url.hostname.replace(/^\[|\]$/g, ""), url.port === "" ? 443 : Number(url.port));
    const held = await ctx.proxy.acquire();
    try {
      const r = await fetchThroughProxy({
        socket: held.socket,
        caPem: held.caPem,
        method: a["method"] as string,
        url,
        headers,
        ...(body !== undefined ? { body } : {}),
        maxBody: MAX_RESPONSE_BODY,
        timeoutMs: HTTP_TIMEOUT_MS,
      });
      const out: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(r.headers)) if (v !== undefined) out[k] = Array.isArray(v) ? v.map((x) => ctx.credentials.scrub(x)) : ctx.credentials.scrub(v);
      const { text, encoding } = bodyText(ctx.credentials.scrubBytes(r.body), r.truncated);
      return {
        status: r.status,
        headers: out,
        body: text,
        bodyEncoding: encoding,
        truncated: r.truncated,
        ...(r.truncated ? { note: `the body was longer than ${MAX_RESPONSE_BODY} bytes; only the first ${MAX_RESPONSE_BODY} are returned` } : {}),
      };
    } finally {
      held.release();
    }
  },
};

const revoke: ToolSpec = {
  name: "revoke",
  title: "Revoke one of your leases",
  description: "Revokes a lease of this agent at once: its placeholder stops working.",
  input: z.strictObject({ leaseId: describe(REGISTRY.revoke_lease.params.shape.leaseId, "the lease id, as request_access or list_leases gave it") }),
  annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false },
  async run(ctx, a) {
    const id = a["leaseId"] as string;
    // The owner may revoke any lease: so check that this one is the agent's, and say nothing more
    // about a lease that is not (another agent's lease id gets the same answer as an unknown one).
    // Looked up by id: however many leases the agent has had since, an old live one is found.
    const mine = (await listOwn(ctx, { id, limit: 1 })).find((l) => l.id === id && l.agent === ctx.agent);
    if (!mine) throw new VaultError("lease_not_found", `agent "${ctx.agent}" has no lease with that id`);
    const r = await ctx.api.revokeLease(id, "revoked by the agent through lessor mcp");
    ctx.credentials.remove(id);
    return { leaseId: id, revoked: r.revoked, ...(r.revoked ? {} : { note: "the lease had already ended" }) };
  },
};

const listLeases: ToolSpec = {
  name: "list_leases",
  title: "List your leases",
  description: "Lists this agent's leases (live ones by default) with their terms, and the placeholder of each taken in this session.",
  input: z.strictObject({
    secret: describe(listParams.secret, "only leases on this secret (scope/name)"),
    live: describe(listParams.live, "false to include ended leases (default true)"),
  }),
  annotations: { readOnlyHint: true, openWorldHint: false },
  async run(ctx, a) {
    const rows = await listOwn(ctx, { live: a["live"] !== false, ...(a["secret"] !== undefined ? { secret: a["secret"] as string } : {}), limit: 1000 });
    return {
      agent: ctx.agent,
      leases: rows
        .filter((l) => l.agent === ctx.agent)
        .map((l) => {
          const c = ctx.credentials.get(l.id);
          return { ...terms(l), ...(c ? { placeholder: c.placeholder } : {}) };
        }),
    };
  },
};

/** The tools, in the order tools/list gives them. */
export const TOOLS: readonly ToolSpec[] = [listSecrets, explainAccess, requestAccess, httpRequest, revoke, listLeases];

/** An https URL without credentials in it; anything else is refused with what to send instead. */
function parseUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new VaultError("invalid_request", "url is not an absolute URL; send one such as https://api.example.com/path");
  }
  if (url.protocol !== "https:") throw new VaultError("invalid_request", "url must start with https:// (lessor mcp sends credentials over TLS only)");
  if (url.username !== "" || url.password !== "") throw new VaultError("invalid_request", "url must not carry a user name or password; put credentials (placeholders) in headers");
  url.hash = "";
  return url;
}

/** The body as UTF-8 text when it is (a cut may split a character: up to 3 bytes are dropped), else base64. */
function bodyText(body: Buffer, truncated: boolean): { text: string; encoding: "utf8" | "base64" } {
  const dec = new TextDecoder("utf-8", { fatal: true });
  for (let drop = 0; drop <= (truncated ? 3 : 0) && drop <= body.length; drop++) {
    try {
      return { text: dec.decode(body.subarray(0, body.length - drop)), encoding: "utf8" };
    } catch {
      // try one byte shorter
    }
  }
  return { text: body.toString("base64"), encoding: "base64" };
}
