/**
 * Review of 9382e1a ("reveal = false") and b286ff4 ("promise audit fixes"), 2026-12-04.
 *
 * Three tests found problems when written (the reveal rule chosen by the access's domain, a
 * Transfer-Encoding: identity refused, the any_domain docs), fixed the same day; the others pin down
 * what the review checked and found sound. Loopback traffic only (names resolve through a
 * table; the connect step refuses anything but 127.0.0.1).
 */
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import * as tls from "node:tls";
import { after, describe, test } from "node:test";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { agent, clock, codeOf, makeVault, refusalOf } from "./helpers.js";
import { getThroughTunnel, loopbackOnly, tableResolver } from "./proxy-harness.js";

const CANARY = "ghp_REVIEWcanary0123456789abcdefABCDEFgh";
const API = "api.github.com";
const UPLOADS = "uploads.github.com";

// ---------------------------------------------------------------------------------------------------
describe("reveal = false: whose rule decides at the access", () => {
  // The raw value of gh goes to claude only with a person's approval (rule 1); without one, claude may
  // use gh only through the injecting proxy, GET only (rule 2: methods set, so reveal = false).
  const POLICY = `[[rule]]
name = "gh-raw-with-approval"
effect = "allow"
agents = ["claude"]
secrets = ["gh"]
domains = ["${API}"]
approval = "required"

[[rule]]
name = "gh-proxy-only"
effect = "allow"
agents = ["claude"]
secrets = ["gh"]
domains = ["${API}", "${UPLOADS}"]
methods = ["GET"]
`;

  test("control: asked for api.github.com alone, the raw value needs the approval; a proxy-only lease's own host is refused", async () => {
    const t = await makeVault({ policy: POLICY });
    await t.vault.admin().storeSecret({ name: "gh", value: CANARY });
    const claude = t.vault.session(agent("claude"));
    const gated = await refusalOf(claude.requestLeaseAndAccess({ secret: "gh", domains: [API] }, { domain: API, method: "GET", path: "/" }));
    assert.equal(gated.code, "access_denied");
    assert.match(gated.message, /approval/);
    const lease = await claude.requestLease({ secret: "gh", domains: [API, UPLOADS] });
    assert.equal(lease.rule, "gh-proxy-only");
    const own = await refusalOf(claude.accessSecret(lease.id, { domain: UPLOADS, method: "GET", path: "/" }));
    assert.equal(own.code, "access_denied");
    assert.match(own.message, /does not hand the value/);
  });

  test("a lease of the proxy-only rule, used for a host an earlier revealing rule covers, does not hand the agent the raw value", async () => {
    // src/vault/leases.ts useIn took `reveal` from decide() for the access's domain, i.e. the first rule
    // covering that host, not from the rule that granted the lease (lease.rule): the agent picked the
    // domain, so it picked the rule. Now both must reveal.
    const t = await makeVault({ policy: POLICY });
    await t.vault.admin().storeSecret({ name: "gh", value: CANARY });
    const claude = t.vault.session(agent("claude"));
    // Both hosts: rule 1 does not cover uploads.github.com, so rule 2 grants it, without approval.
    const lease = await claude.requestLease({ secret: "gh", domains: [API, UPLOADS] });
    assert.equal(lease.rule, "gh-proxy-only");
    const r = await refusalOf(claude.accessSecret(lease.id, { domain: API, method: "GET", path: "/" }));
    assert.equal(r.code, "access_denied", "the agent read the value of a reveal = false lease, and no person approved it");
    // Refused first because api.github.com's own rule needs a person's approval, which this lease
    // (granted by the other rule for both hosts) never had (c1b4c86); it would not hand the value either.
    assert.match(r.message, /decided by rule "gh-raw-with-approval" of the policy in force, which needs a person's approval/);
  });
});

// ---------------------------------------------------------------------------------------------------
describe("any_domain leases requested with domains (b286ff4)", () => {
  const POLICY = `[[rule]]
name = "db"
effect = "allow"
agents = ["claude"]
secrets = ["db"]
any_domain = true
`;

  test("a named exact host: the lease is bound to it, and the value is served for it", async () => {
    const t = await makeVault({ policy: POLICY });
    await t.vault.admin().storeSecret({ name: "db", value: CANARY });
    const claude = t.vault.session(agent("claude"));
    const got = await claude.requestLeaseAndAccess({ secret: "db", domains: ["db.corp.example"] });
    assert.equal(got.lease.anyDomain, false);
    assert.deepEqual(got.lease.domains, ["db.corp.example"]);
    got.value.wipe();
    assert.equal(await codeOf(claude.accessSecret(got.lease.id, { domain: "other.example" })), "access_denied");
  });

  test("an any_domain rule asked with only a *.suffix: the lease is limited to the pattern, so the read needs an exact host, and the refusal says so", async () => {
    // docs/cli/run.md and docs/cli/leases.md: a --domain limits even an any_domain rule's lease to what
    // it names, so --domain '*.x' alone needs an exact host (before b286ff4 such a lease worked for any
    // host, which the request had not asked for).
    const t = await makeVault({ policy: POLICY });
    await t.vault.admin().storeSecret({ name: "db", value: CANARY });
    const claude = t.vault.session(agent("claude"));
    const r = await refusalOf(claude.requestLeaseAndAccess({ secret: "db", domains: ["*.corp.example"] }));
    assert.equal(r.code, "access_denied");
    assert.match(r.message, /bound only to domain patterns \(\*\.corp\.example\); name the exact host/);
    using v = (await claude.requestLeaseAndAccess({ secret: "db", domains: ["*.corp.example"] }, { domain: "db.corp.example" })).value;
    assert.equal(v.unsafeText(), CANARY);
  });
});

// ---------------------------------------------------------------------------------------------------
describe("dead-man switch in a renewal (b286ff4)", () => {
  test("the switch fired by a renewal commits: the lease is revoked and grants are locked out afterwards", async () => {
    const c0 = clock(Date.UTC(2026, 3, 1));
    const t = await makeVault({ policy: `[[rule]]\nname = "g"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\nttl = "10m"\n`, now: c0.now, limits: { heartbeatMs: 5 * 60_000 } });
    await t.vault.admin().storeSecret({ name: "tok", value: CANARY });
    const c = t.vault.session(agent("claude"));
    const l = await c.requestLease({ secret: "tok" });
    c0.advance(5 * 60_000 + 1000);
    assert.notEqual(await codeOf(c.renewLease(l.id)), "resolved");
    const leases = await t.vault.admin().listLeases({ agent: "claude" });
    assert.notEqual(leases.find((x) => x.id === l.id)!.revokedAt, null, "the renewal's switch revoked the lease, durably");
    const ks = await t.vault.admin().auditQuery({ types: ["killswitch"] });
    assert.equal(ks.length, 1, "one killswitch event, by the renewal");
  });
});

// ---------------------------------------------------------------------------------------------------
describe("Transfer-Encoding check on scrubbed responses (b286ff4)", () => {
  const HOST = "api.review.example";
  const TOK = "sk-review-" + "TEcheck0123456789abcdefABCDEF";
  const upCa = LocalCa.create({ permitted: [HOST] });
  const answers: Record<string, string> = {
    "/te-mixed-case": `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding:  ChUnKeD \r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
    "/te-identity": `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\nhello`,
    "/no-body-204": `HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n`,
  };
  const up = tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (s) => {
    s.on("error", () => {});
    let buf = "";
    const onData = (d: Buffer): void => {
      buf += d.toString("latin1");
      if (!buf.includes("\r\n\r\n")) return;
      s.off("data", onData);
      const path = buf.split(" ")[1] ?? "";
      s.end(answers[path] ?? `HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`, "latin1");
    };
    s.on("data", onData);
  });
  const listening = new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
  after(() => new Promise<void>((r) => up.close(() => r())));

  async function rig(): Promise<{ port: number; upPort: number; ph: string; close(): Promise<void> }> {
    await listening;
    const upPort = (up.address() as AddressInfo).port;
    const { vault } = await makeVault({ policy: `[[rule]]\nname = "api"\neffect = "allow"\nagents = ["bot"]\nsecrets = ["tok"]\ndomains = ["${HOST}"]\n` });
    const admin = vault.admin();
    await admin.storeSecret({ name: "tok", value: TOK });
    const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: [HOST] });
    const cred: ProxyCredential = { lease, secret: "global/tok", placeholder: makePlaceholder(TOK), value: TOK, rule: { mode: "placeholder" } };
    const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: [cred], egress: "strict" });
    const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
    const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly([]) });
    const port = await proxy.listen();
    return {
      port,
      upPort,
      ph: cred.placeholder,
      close: async () => {
        await proxy.close();
        await egress.close();
      },
    };
  }

  function ask(r: { port: number; upPort: number; ph: string }, path: string): Promise<string> {
    return getThroughTunnel(r.port, HOST, r.upPort, path, r.ph);
  }

  test("chunked in odd case and with spaces, and a 204 with no body, pass", async () => {
    const r = await rig();
    try {
      const a = await ask(r, "/te-mixed-case");
      assert.match(a, /^HTTP\/1\.1 200 /, a.slice(0, 300));
      assert.match(a, /hello/);
      const b = await ask(r, "/no-body-204");
      assert.match(b, /^HTTP\/1\.1 204 /, b.slice(0, 300));
    } finally {
      await r.close();
    }
  });

  test("Transfer-Encoding: identity (plain bytes; Node reads the body to the close) passes, scrubbed", async () => {
    // src/proxy/response-coding.ts refuses every transfer-coding but chunked. "identity" codes
    // nothing (Node hands over the bytes as sent, read to the connection's close), so the scrubber
    // sees the real bytes and there is nothing to refuse; before b286ff4 such an answer went through.
    const r = await rig();
    try {
      const a = await ask(r, "/te-identity");
      assert.match(a, /^HTTP\/1\.1 200 /, a.slice(0, 300));
    } finally {
      await r.close();
    }
  });
});
