/**
 * The one-time loopback page on which a person approves or denies an agent's lease request, for MCP
 * clients that support URL-mode elicitation (./approval-flow.ts asks the client to open it).
 *
 * One small node:http server on 127.0.0.1 (an ephemeral port), started on first use. Each page:
 * - lives at `/approval/<256-bit random token>`: the URL is the capability, given only to the MCP
 *   client; it is removed once decided and when the approval lapses;
 * - shows who asks for what, for which hosts, for how long and why, with Approve and Deny buttons;
 * - is shown and decided only for a client whose socket belongs to the user running lessor mcp (or
 *   root), read from /proc/net/tcp (./loopback-peer.ts): a leaked URL does not serve another user;
 * - takes the decision only as a POST carrying the page's own CSRF token (a second random value, in
 *   the form), with `Host` exactly 127.0.0.1:PORT (DNS rebinding) and `Origin`, when sent, exactly
 *   this server's origin; framing is forbidden (clickjacking) and nothing is cached.
 * The decision is made through the session's backend (approval_decide: it needs the owner's or an
 * admin's identity, which is why the page is offered only then) and audited by the vault.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import * as http from "node:http";
import type { AddressInfo, Socket } from "node:net";
import type { WireApproval } from "../protocol/registry.js";
import { approvalValueText } from "../protocol/approval-value.js";
import { blankUnsafe } from "../base/text.js";
import { capConnections } from "./connection-cap.js";
import { isOwnersUid, loopbackPeerUid } from "./loopback-peer.js";

/** What the page shows; all of it is escaped. */
export type ApprovalView = Pick<WireApproval, "id" | "agent" | "secret" | "hosts" | "anyDomain" | "ttlMs" | "maxUses" | "rule" | "reason" | "expiresAt" | "requestedBy" | "reveal" | "methods" | "paths">;

/** How the page decides (the backend's approval_decide). */
export type Decide = (approve: boolean, reason: string | undefined) => Promise<void>;

interface Page {
  view: ApprovalView;
  csrf: string;
  decide: Decide;
  settle(outcome: "approved" | "denied"): void;
  timer: NodeJS.Timeout;
}

/** Most pages open at once: an agent calling request_access in a loop cannot pile them up. */
export const MAX_PAGES = 32;

/**
 * Most connections open at once to the page server from anyone, and past them as many again from the
 * user running lessor mcp (or root) (any local user can connect: its port is in /proc/net/tcp; others
 * are refused the page): more are closed at once, so a flood cannot use up the descriptors of the process,
 * which serves the MCP endpoint too (as src/mcp/http.ts bounds that one's), nor another user's keep
 * the owner from the page.
 */
export const MAX_PAGE_CONNECTIONS = 64;

/** Largest form body taken, bytes. */
const MAX_FORM = 4096;

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function sameSecret(a: string, b: string): boolean {
  const h = (s: string): Buffer => createHash("sha256").update(s).digest();
  return timingSafeEqual(h(a), h(b)) && a.length === b.length;
}

const HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
  "x-frame-options": "DENY",
  "referrer-policy": "no-referrer",
  "x-content-type-options": "nosniff",
};

function pageHtml(p: Page): string {
  const v = p.view;
  const hosts = v.anyDomain && v.hosts.length === 0 ? "any host" : v.hosts.map(esc).join(", ");
  const ttl = (v.ttlMs === null ? `the rule's lease time` : `${Math.round(v.ttlMs / 1000)} seconds`) + (v.maxUses === null ? "" : `, at most ${v.maxUses} uses`);
  // What the approval gives away besides the hosts (it is bound to it): who holds the value, and what
  // the proxy may send with it (escaped where it is shown).
  const value = approvalValueText(v);
  return `<!doctype html><html><head><meta charset="utf-8"><title>lessor: approve a credential request?</title>
<style>body{font:16px system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em}dt{font-weight:600;margin-top:.6em}button{font-size:1em;padding:.4em 1.2em;margin-right:1em}</style></head><body>
<h1>Approve a credential request?</h1>
<p>An AI agent asks lessor for a lease on a secret. lessor mcp gives the agent no tool that shows the value: it adds it only to the agent's requests to the hosts below.</p>
<dl>
<dt>Agent</dt><dd>${esc(v.agent)}</dd>
<dt>Secret</dt><dd>${esc(v.secret)} (policy rule ${esc(v.rule)})</dd>
<dt>Hosts it would be sent to</dt><dd>${hosts}</dd>
<dt>The value</dt><dd>${esc(value)}</dd>
<dt>For</dt><dd>${esc(ttl)}, this one lease</dd>
<dt>Why (the agent's words)</dt><dd>${v.reason === null ? "<em>no reason given</em>" : esc(v.reason)}</dd>
<dt>Request</dt><dd>${esc(v.id)}; lapses at ${esc(new Date(v.expiresAt).toISOString())}</dd>
</dl>
<form method="post">
<input type="hidden" name="csrf" value="${esc(p.csrf)}">
<p><label>Note for the audit trail (optional): <input name="reason" maxlength="200"></label></p>
<button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form></body></html>`;
}

function done(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, HEADERS);
  res.end(`<!doctype html><html><head><meta charset="utf-8"><title>lessor</title></head><body><p>${esc(text)}</p></body></html>`);
}

/** The pages of one MCP session; {@link close} stops the server. */
export class ApprovalPages {
  readonly #pages = new Map<string, Page>();
  #server: http.Server | null = null;
  #starting: Promise<number> | null = null;
  #port = 0;

  /**
   * `log`: one line per event worth telling the operator. `peerUid`: who owns the client's socket, or
   * null when that cannot be told (default: the kernel's /proc tables, ./loopback-peer.ts).
   */
  constructor(
    private readonly log: (line: string) => void,
    private readonly peerUid: (socket: Socket) => number | null = loopbackPeerUid,
  ) {}

  /**
   * Opens a page for `view`; resolves to its URL and a promise of the decision made on it (which stays
   * pending if nobody decides before the approval lapses). Null when {@link MAX_PAGES} are open.
   */
  async open(view: ApprovalView, decide: Decide, now = Date.now()): Promise<{ url: string; decided: Promise<"approved" | "denied"> } | null> {
    if (this.#pages.size >= MAX_PAGES) return null;
    const port = await this.#start();
    const token = randomBytes(32).toString("base64url");
    let settle!: (o: "approved" | "denied") => void;
    const decided = new Promise<"approved" | "denied">((r) => (settle = r));
    const ms = Math.max(0, Math.min(view.expiresAt - now, 2 ** 31 - 1));
    const timer = setTimeout(() => this.#pages.delete(token), ms);
    timer.unref();
    this.#pages.set(token, { view, csrf: randomBytes(32).toString("base64url"), decide, settle, timer });
    return { url: `http://127.0.0.1:${port}/approval/${token}`, decided };
  }

  #start(): Promise<number> {
    return (this.#starting ??= new Promise<number>((resolve, reject) => {
      const srv = http.createServer({ maxHeaderSize: 8 * 1024 }, (req, res) => {
        this.#handle(req, res).catch(() => {
          if (!res.headersSent) done(res, 500, "lessor could not record the decision; use lessor approve or lessor deny in a terminal");
          else res.destroy();
        });
      });
      // Other users' connections (refused the page by #handle, with a 403 that says why) are counted
      // apart, or any local user could hold the cap and keep the owner from the page.
      capConnections(srv, MAX_PAGE_CONNECTIONS, "to the approval page", (l) => this.log(l), (socket) => this.#ownersPeer(socket));
      srv.headersTimeout = 10_000;
      srv.requestTimeout = 30_000;
      srv.once("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        this.#server = srv;
        this.#port = (srv.address() as AddressInfo).port;
        resolve(this.#port);
      });
    }));
  }

  /** Who owns the client's socket, null when that cannot be told. */
  #peer(socket: Socket): number | null {
    return typeof process.getuid === "function" ? this.peerUid(socket) : null;
  }

  /**
   * True for a connection of the user running lessor mcp (or root's); false for another user's, and
   * for one whose user cannot be told (which #handle refuses on Linux; elsewhere every connection is
   * such, and they share one count).
   */
  #ownersPeer(socket: Socket): boolean {
    return isOwnersUid(this.#peer(socket));
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const self = `127.0.0.1:${this.#port}`;
    if (req.headers.host !== self) return done(res, 403, "forbidden");
    // The URL is the capability, but a URL handed to a browser sits in its argv, which every local
    // user may read: a page is shown and decided only for a client of this user's (or root's).
    // Fail closed where the owner can be told (Linux): a peer not found in /proc/net/tcp{,6} is not
    // shown the page. Elsewhere (no /proc) the URL alone guards it, as docs/mcp.md says.
    const uid = this.#peer(req.socket);
    if (uid === null && process.platform === "linux")
      return done(res, 403, "forbidden: could not tell which user is connecting; open the page as the user running lessor mcp, from 127.0.0.1");
    if (uid !== null && uid !== 0 && uid !== process.getuid!()) return done(res, 403, "forbidden: this page is for the user running lessor mcp");
    const m = /^\/approval\/([A-Za-z0-9_-]{43})$/.exec(req.url ?? "");
    const page = m ? this.#pages.get(m[1]!) : undefined;
    if (!m || !page || Date.now() >= page.view.expiresAt) return done(res, 404, "This approval page does not exist, was used, or lapsed.");
    if (req.method === "GET") {
      res.writeHead(200, HEADERS);
      return void res.end(pageHtml(page));
    }
    if (req.method !== "POST") return done(res, 405, "method not allowed");
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${self}`) return done(res, 403, "forbidden: the decision must come from this page");
    if (!/^application\/x-www-form-urlencoded\b/i.test(String(req.headers["content-type"] ?? ""))) return done(res, 415, "send the page's form");
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req as AsyncIterable<Buffer>) {
      size += c.length;
      if (size > MAX_FORM) return done(res, 413, "too large");
      chunks.push(c);
    }
    const form = new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
    if (!sameSecret(form.get("csrf") ?? "", page.csrf)) return done(res, 403, "forbidden: the form's token is missing or wrong; reload the page");
    const decision = form.get("decision");
    if (decision !== "approve" && decision !== "deny") return done(res, 400, "choose Approve or Deny");
    // One decision per page, even if two posts race.
    this.#pages.delete(m[1]!);
    clearTimeout(page.timer);
    // The vault takes a decision's reason as one line of plain text (no control, format, separator
    // character or lone surrogate): blank them all, or a pasted U+2028 lost the person's decision.
    const note = blankUnsafe((form.get("reason") ?? "").slice(0, 200)).trim();
    const approve = decision === "approve";
    try {
      await page.decide(approve, note === "" ? (approve ? "approved on the lessor mcp page" : "denied on the lessor mcp page") : note);
    } catch (e) {
      this.log(`lessor mcp: the decision on approval ${page.view.id} could not be recorded (${e instanceof Error ? e.name : "error"})`);
      return done(res, 409, "lessor could not record the decision (it may have lapsed or been decided elsewhere); see lessor approvals");
    }
    page.settle(approve ? "approved" : "denied");
    done(res, 200, approve ? "Approved. The agent may now take this one lease. You can close this page." : "Denied. The agent is refused. You can close this page.");
  }

  /** Stops the server and forgets every page. */
  async close(): Promise<void> {
    for (const p of this.#pages.values()) clearTimeout(p.timer);
    this.#pages.clear();
    const srv = this.#server;
    this.#server = null;
    if (srv) {
      srv.closeAllConnections();
      await new Promise<void>((r) => srv.close(() => r()));
    }
  }
}
