/**
 * Attack pass: an agent deceiving the owner through what lessor shows them. A real `lessor serve`
 * child (SQLite file, Unix socket, loopback TCP), an agent's token over TCP, and the built `lessor`
 * CLI as the person's terminal (`lessor approvals`, `lessor approve ID`, `--json`):
 * - the approval a person is shown must say everything the decision gives away: not only the hosts,
 *   ttl and use cap, but whether the requester will hold the value itself (a rule that reveals it,
 *   the default) or only an injecting proxy will use it, and for which methods and paths;
 * - an agent's hostile text (ESC, OSC 8/52, C1 CSI, CR, bidi isolates, zero-width) in every field it
 *   controls is refused before anything is opened, and what is shown holds no raw control.
 * A canary secret is stored and must never appear in any frame, output or log line.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as http from "node:http";
import { after, describe, test } from "node:test";
import { hasLoneSurrogate } from "../src/base/text.js";
import { ApprovalPages } from "../src/mcp/approval-page.js";
import { valueLine } from "../src/cli/commands/approval.js";
import { BIN, runProcess } from "./cli-harness.js";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const DOMAIN = "api.example.com";
const seen: string[] = [];

class Conn extends DaemonConn {
  override async call(method: string, params?: unknown): Promise<Msg> {
    const r = await super.call(method, params);
    if (method !== "token_create") seen.push(JSON.stringify(r));
    return r;
  }
}

const POLICY = `
[[rule]]
name = "gated"
effect = "allow"
agents = ["claude"]
secrets = ["deploy"]
domains = ["${DOMAIN}"]
approval = "required"

[[rule]]
name = "gated-proxy"
effect = "allow"
agents = ["claude"]
secrets = ["proxied"]
domains = ["${DOMAIN}"]
methods = ["GET"]
paths = ["/repos/"]
approval = "required"
`;
const CONFIG = `[server]\ntcp = "127.0.0.1:0"\n`;

/** Bytes a terminal obeys rather than shows (C0 but LF, DEL, C1, bidi, zero-width, separators). */
const RAW_UNSAFE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u00ad\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\u2028\u2029\ufeff]/u;

after(() => {
  for (const s of seen) assert.ok(!s.includes(CANARY), "the canary appears in a frame, output or log line");
});

describe("what the person approves is what they are shown", () => {
  // The approval binds the rule's reveal, methods and paths (src/vault/approvals.ts bindingOf: "the
  // person approved those", docs/policy.md "Approval"), but `lessor approvals` showed only "to send it
  // to: HOSTS": an agent asking under a rule that reveals the value (the default) was shown to the
  // person exactly as one whose value only an injecting proxy may use. The person approved "send it
  // to api.example.com", and the agent read the value itself (request_lease with access), free to
  // send it anywhere.
  test("lessor approvals says whether the requester will hold the value itself, and the methods and paths of a proxy-only rule", async () => {
    const d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
    const admin = await Conn.admin(d);
    const conns: Conn[] = [admin];
    try {
      await admin.okResult("store_secret", { name: "deploy", value: CANARY });
      await admin.okResult("store_secret", { name: "proxied", value: `${CANARY}-p` });
      const t = await admin.okResult("token_create", { name: "claude", role: "agent", agent: "claude" });
      const claude = await Conn.provedToken(d, t.token);
      conns.push(claude);
      const reveal = (await claude.okResult("approval_request", { secret: "deploy", domains: [DOMAIN], reason: "open a pull request" })).approval;
      const proxy = (await claude.okResult("approval_request", { secret: "proxied", domains: [DOMAIN], reason: "open a pull request" })).approval;
      const env = { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: "/nonexistent", LESSOR_SOCKET: d.socket };

      const list = await runProcess(process.execPath, [BIN, "approvals"], { env });
      seen.push(list.stdout, list.stderr);
      assert.equal(list.code, 0, list.stderr);
      assert.equal(RAW_UNSAFE.exec(list.stdout), null);
      const block = (id: string): string => {
        const i = list.stdout.indexOf(`${id}  pending`);
        assert.ok(i >= 0, list.stdout);
        const j = list.stdout.indexOf("\n\n", i);
        return list.stdout.slice(i, j < 0 ? undefined : j).trimEnd();
      };
      const shownReveal = block(reveal.id);
      const shownProxy = block(proxy.id);
      // Two requests that differ in what they give away must not read the same to the person.
      const body = (s: string): string => s.split("\n").filter((l) => !/^\S|asks for|asked by/.test(l)).join("\n");
      assert.notEqual(body(shownReveal), body(shownProxy), `the two requests read alike:\n${shownReveal}\n---\n${shownProxy}`);
      assert.match(shownReveal, /value: .*(read|hold)s? the value itself/i, shownReveal);
      assert.match(shownProxy, /value: .*proxy only/i, shownProxy);
      assert.match(shownProxy, /methods: GET/, shownProxy);
      assert.match(shownProxy, /paths: \/repos\//, shownProxy);

      // --json says it too, for a program deciding on the person's behalf (a chat bot, a dashboard).
      const json = await runProcess(process.execPath, [BIN, "approvals", "--json"], { env });
      assert.equal(json.code, 0, json.stderr);
      const rows = JSON.parse(json.stdout) as Msg[];
      const jr = rows.find((a) => a.id === reveal.id)!;
      const jp = rows.find((a) => a.id === proxy.id)!;
      assert.equal(jr.reveal, true, JSON.stringify(jr));
      assert.equal(jp.reveal, false, JSON.stringify(jp));
      assert.deepEqual(jp.methods, ["GET"]);
      assert.deepEqual(jp.paths, ["/repos/"]);

      // The page lessor mcp offers (a real loopback server) says it as well.
      const pages = new ApprovalPages(() => {});
      try {
        const html: string[] = [];
        for (const a of [reveal, proxy]) {
          const page = await pages.open(a, async () => {});
          assert.ok(page !== null);
          const res = await fetch(page.url);
          assert.equal(res.status, 200);
          html.push(await res.text());
        }
        assert.match(html[0]!, /The value<\/dt><dd>[^<]*may read the value itself/, html[0]);
        assert.match(html[1]!, /The value<\/dt><dd>proxy only[^<]*methods: GET; paths: \/repos\//, html[1]);
      } finally {
        await pages.close();
      }

      // And it is true: approved, the revealing request's agent reads the value; the proxy-only one cannot.
      for (const a of [reveal, proxy]) {
        const ok = await runProcess(process.execPath, [BIN, "approve", a.id], { env });
        seen.push(ok.stdout, ok.stderr);
        assert.equal(ok.code, 0, ok.stderr);
        assert.match(ok.stdout, /value: /, "the decision repeats what was given away");
      }
      const got = await claude.call("request_lease", { secret: "deploy", domains: [DOMAIN], access: { domain: DOMAIN } });
      assert.equal(got.ok, true, JSON.stringify(got.error));
      assert.equal(Buffer.from(got.result.value, "base64").toString() === CANARY || got.result.value === CANARY, true, "the agent holds the value");
      seen.pop(); // that frame carries the value by design
      const refused = await claude.call("request_lease", { secret: "proxied", domains: [DOMAIN], access: { domain: DOMAIN, method: "GET", path: "/repos/x" } });
      assert.equal(refused.ok, false, "a proxy-only rule gives the agent no value");
      assert.equal(refused.error.code, "access_denied");
    } finally {
      for (const c of conns) c.close();
      seen.push(d.stderr());
      await d.stop();
    }
  });
});

describe("the person's own words on the lessor mcp page", () => {
  // The page blanked C0, C1 and format characters in the person's note but not U+2028/U+2029, and it
  // clipped the note after blanking, which can cut a surrogate pair in two: the vault then refused the
  // reason (invalid_request), after the page had been used up, so the person's Deny (or Approve) was lost
  // and the page answered 409.
  test("a note with a pasted line separator, or an emoji cut at the 200th character, still records the decision", async () => {
    const d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
    const admin = await Conn.admin(d);
    const conns: Conn[] = [admin];
    const pages = new ApprovalPages(() => {});
    try {
      await admin.okResult("store_secret", { name: "deploy", value: CANARY });
      const t = await admin.okResult("token_create", { name: "claude", role: "agent", agent: "claude" });
      const claude = await Conn.provedToken(d, t.token);
      conns.push(claude);
      const notes = ["not during the freeze\u2028(see #ops)", `${"x".repeat(199)}\u{1f600} tail`, "tab\there\u2029and\u0085there"];
      for (const [i, note] of notes.entries()) {
        const { approval } = await claude.okResult("approval_request", { secret: "deploy", domains: [DOMAIN], ttl: `${60 + i}s`, reason: "open a pull request" });
        const page = await pages.open(approval, async (approve, reason) => {
          await admin.okResult("approval_decide", { id: approval.id, approve, ...(reason !== undefined ? { reason } : {}) });
        });
        assert.ok(page !== null);
        const html = await (await fetch(page.url)).text();
        const csrf = /name="csrf" value="([^"]+)"/.exec(html)![1]!;
        const res = await fetch(page.url, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: new URLSearchParams({ csrf, decision: "deny", reason: note }).toString(),
          redirect: "manual",
        });
        const text = await res.text();
        assert.equal(res.status, 200, `note ${JSON.stringify(note)}: ${text}`);
        const [row] = (await admin.okResult("approval_list", { all: true })).filter((a: Msg) => a.id === approval.id);
        assert.equal(row.state, "denied");
        assert.ok(typeof row.decisionReason === "string" && !RAW_UNSAFE.test(row.decisionReason) && !hasLoneSurrogate(row.decisionReason), JSON.stringify(row.decisionReason));
      }
    } finally {
      await pages.close();
      for (const c of conns) c.close();
      seen.push(d.stderr());
      await d.stop();
    }
  });
});

describe("the approval page against a hostile agent's text and a hostile page (held)", () => {
  test("HTML in the agent's reason is shown as text; rebinding, cross-origin and GET decisions decide nothing", async () => {
    const d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
    const admin = await Conn.admin(d);
    const conns: Conn[] = [admin];
    const pages = new ApprovalPages(() => {});
    try {
      await admin.okResult("store_secret", { name: "deploy", value: CANARY });
      const t = await admin.okResult("token_create", { name: "claude", role: "agent", agent: "claude" });
      const claude = await Conn.provedToken(d, t.token);
      conns.push(claude);
      const reason = `"><script>fetch('/x')</script><img src=x onerror=alert(1)><form method=post><button name=decision value=approve>Deny</button></form><!--`;
      const { approval } = await claude.okResult("approval_request", { secret: "deploy", domains: [DOMAIN], reason });
      let decided = 0;
      const page = await pages.open(approval, async () => void decided++);
      assert.ok(page !== null);
      const res = await fetch(page.url);
      const html = await res.text();
      assert.equal(res.headers.get("x-frame-options"), "DENY");
      assert.equal(res.headers.get("referrer-policy"), "no-referrer");
      assert.match(res.headers.get("content-security-policy") ?? "", /default-src 'none'.*frame-ancestors 'none'/);
      assert.ok(!html.includes("<script"), "no script tag from the agent");
      assert.ok(!html.includes("<img"), "no img tag from the agent");
      assert.equal((html.match(/<form/g) ?? []).length, 1, "only the page's own form");
      assert.equal((html.match(/<button/g) ?? []).length, 2, "only the page's own buttons");
      assert.ok(html.includes("&#60;script&#62;"), "the reason is shown as text");
      const csrf = /name="csrf" value="([^"]+)"/.exec(html)![1]!;
      const u = new URL(page.url);
      const post = (headers: Record<string, string>, body: string, path = u.pathname, method = "POST"): Promise<number> =>
        new Promise((resolve, reject) => {
          const req = http.request({ host: "127.0.0.1", port: Number(u.port), path, method, headers: { "content-type": "application/x-www-form-urlencoded", ...headers } }, (r) => {
            r.resume();
            r.on("end", () => resolve(r.statusCode ?? 0));
          });
          req.on("error", reject);
          req.end(body);
        });
      const form = new URLSearchParams({ csrf, decision: "approve" }).toString();
      assert.equal(await post({ host: `evil.example:${u.port}` }, form), 403, "DNS rebinding: a foreign Host");
      assert.equal(await post({ host: u.host, origin: "http://evil.example" }, form), 403, "a cross-origin POST");
      assert.equal(await post({ host: u.host, origin: "null" }, form), 403, "an opaque origin");
      assert.equal(await post({ host: u.host }, new URLSearchParams({ decision: "approve" }).toString()), 403, "no CSRF token");
      assert.equal(await post({ host: u.host }, "", `${u.pathname}?${form}`, "GET"), 404, "a GET carrying the form decides nothing (and the query is not the page)");
      assert.equal(decided, 0, "nothing was decided");
      const [row] = (await admin.okResult("approval_list", {})).filter((a: Msg) => a.id === approval.id);
      assert.equal(row.state, "pending");
    } finally {
      await pages.close();
      for (const c of conns) c.close();
      seen.push(d.stderr());
      await d.stop();
    }
  });
});

test("an approval from an older daemon (no reveal, methods or paths on the wire) is shown as not known, not a crash or a claim (review)", () => {
  // The protocol is still v1: a newer lessor approvals against an older daemon got approvals without
  // these fields, and the value line threw "Cannot read properties of undefined (reading 'join')".
  const old = { requestedBy: "token:abc" } as Parameters<typeof valueLine>[0];
  const line = valueLine(old);
  assert.match(line, /^value: not known \(this daemon is older and does not say\)/);
  assert.doesNotMatch(line, /proxy only|reveals it/, "nothing is claimed either way");
  assert.match(valueLine({ requestedBy: "token:abc", reveal: false, methods: ["GET"] }), /proxy only.*methods: GET; paths: any/);
  assert.match(valueLine({ requestedBy: "token:abc", reveal: true, methods: null, paths: null }), /may read the value itself/);
});
