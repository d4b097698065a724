/**
 * An attack pass on the embedded API by a hostile caller in the same process holding only an agent
 * session (`vault.session({ role: "agent", … })`): what it can do with the session object itself and
 * with params objects that answer one thing when checked and another when used.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { agent, codeOf, grant, makeVault } from "./helpers.js";
import type { Identity } from "../src/base/types.js";

const ADMIN: Identity = { id: "embedded", role: "admin", transport: "embedded" };
const other = { scope: "global", name: "other" };

describe("an agent session held by hostile code in the embedding process", () => {
  test("rewriting the session's identity (assignment or defineProperty) gives no admin powers: no value of an ungranted secret, no secret stored", async () => {
    const t = await makeVault({ policy: grant("g", ["claude"], ["tok"], ["api.example.com"]) });
    const admin = t.vault.admin();
    await admin.storeSecret({ name: "tok", value: "v1" });
    await admin.storeSecret({ name: "other", value: "OTHER-VALUE" });
    const s = t.vault.session(agent("claude"));
    // The session's identity is what every method acts as: it must not be rewritable by its holder.
    try {
      (s as { identity: Identity }).identity = ADMIN;
    } catch {
      /* refused: good */
    }
    assert.equal(s.identity.role, "agent", "the agent session's identity was rewritten to admin");
    assert.equal(await codeOf(s.revealSecret(other)), "access_denied");
    const s2 = t.vault.session(agent("claude"));
    let reads = 0;
    try {
      Object.defineProperty(s2, "identity", { get: () => (reads++ === 0 ? agent("claude") : ADMIN) });
    } catch {
      /* refused: good */
    }
    assert.equal(await codeOf(s2.storeSecret({ name: "planted", value: "x" })), "access_denied");
    assert.equal(await codeOf(s2.revealSecret(other)), "access_denied");
  });

  test("a lease request whose domains list answers the allowed host when checked and another when the lease is written is granted for the checked host only (or refused)", async () => {
    const t = await makeVault({ policy: grant("g", ["claude"], ["tok"], ["api.example.com"]) });
    await t.vault.admin().storeSecret({ name: "tok", value: "v1" });
    const s = t.vault.session(agent("claude"));
    // An array whose element 0 is a getter: the allowed host for every read but the one that
    // writes the lease's domains (src/vault/policy/decide.ts leaseDomains).
    const domains: string[] = [];
    Object.defineProperty(domains, 0, {
      enumerable: true,
      get: () => (new Error().stack!.includes("leaseDomains") ? "evil.test" : "api.example.com"),
    });
    for (const ask of [() => s.requestLease({ secret: "tok", domains }), () => s.requestLeaseAndAccess({ secret: "tok", domains }, { domain: "api.example.com" })]) {
      let got: string[] | null = null;
      try {
        const r = await ask();
        got = "value" in r ? (r.value.wipe(), r.lease.domains) : r.domains;
      } catch {
        /* refused: fine */
      }
      if (got !== null) assert.deepEqual(got, ["api.example.com"], `a lease granted by rule g (api.example.com only) holds domains ${JSON.stringify(got)}`);
    }
    const admin = t.vault.admin();
    for (const l of await admin.listLeases({})) assert.deepEqual(l.domains, ["api.example.com"], `a stored lease holds ${JSON.stringify(l.domains)}`);
    const granted = (await admin.auditQuery({ agent: "claude" })).filter((e) => e.type === "lease_granted");
    assert.ok(granted.length > 0);
    for (const e of granted) assert.equal((JSON.parse(e.detail ?? "{}") as { domains?: string }).domains, "api.example.com", e.detail ?? "");
  });

  test("an access target whose domain answers a clean host when checked and escape sequences when used puts no control character in the audit trail", async () => {
    const t = await makeVault({ policy: grant("g", ["claude"], ["tok"], ["api.example.com"]) });
    const admin = t.vault.admin();
    await admin.storeSecret({ name: "tok", value: "v1" });
    const s = t.vault.session(agent("claude"));
    const l = await s.requestLease({ secret: "tok", domains: ["api.example.com"] });
    let reads = 0;
    const target = { get domain() { return reads++ === 0 ? "api.example.com" : "\x1b]52;c;aGk=\x07evil.test"; } };
    const code = await codeOf(s.accessSecret(l.id, target));
    assert.ok(code === "ok" || code === "access_denied" || code === "invalid_request" || code === "resolved", code);
    for (const e of await admin.auditQuery({ agent: "claude" }))
      assert.ok(!/[\x00-\x1f\x7f]/.test(`${e.domain ?? ""}${e.reason ?? ""}`), `an audit row holds a control character: ${JSON.stringify([e.type, e.domain, e.reason])}`);
  });
});
