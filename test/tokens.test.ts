import assert from "node:assert/strict";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { agent, clock, codeOf, makeVault } from "./helpers.js";

describe("bearer tokens", () => {
  test("a token authenticates as its bound identity; only a hash is stored", async () => {
    const { vault, dbPath } = await makeVault();
    const t = await vault.admin().createToken({ name: "claude-laptop", role: "agent", agent: "claude" });
    assert.match(t.token, /^lsr_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    const who = await vault.authenticateToken(t.token, "tcp");
    assert.deepEqual(who, { id: `token:claude-laptop/${t.id}`, role: "agent", agent: "claude", transport: "tcp" });
    const listed = await vault.admin().listTokens();
    assert.equal(listed.length, 1);
    assert.ok(!JSON.stringify(listed).includes(t.token.slice(21)), "listing never shows the secret");
    const db = new Database(dbPath!);
    const raw = Buffer.concat((db.prepare("SELECT * FROM tokens").raw().all() as unknown[][]).flat().map((v) => Buffer.from(String(v))));
    db.close();
    assert.ok(!raw.includes(Buffer.from(t.token.slice(21))), "the secret part is not in the database");
  });

  test("revoked, expired, forged and malformed tokens are refused and audited", async () => {
    const c = clock();
    const { vault } = await makeVault({ now: c.now });
    const admin = vault.admin();
    const a = await admin.createToken({ name: "a", role: "agent", agent: "claude" });
    const b = await admin.createToken({ name: "b", role: "admin", ttl: "1h" });
    assert.equal((await vault.authenticateToken(b.token, "tcp")).role, "admin");
    c.advance(3600_000);
    assert.equal(await codeOf(vault.authenticateToken(b.token, "tcp")), "unauthenticated");
    assert.deepEqual(await admin.revokeToken(a.id), { revoked: true });
    assert.equal(await codeOf(vault.authenticateToken(a.token, "tcp")), "unauthenticated");
    const forged = `${a.token.slice(0, -1)}${a.token.endsWith("A") ? "B" : "A"}`;
    const c2 = await admin.createToken({ name: "c", role: "agent", agent: "x" });
    const wrongSecret = `lsr_${c2.id}_${a.token.slice(21)}`;
    for (const bad of [forged, wrongSecret, "lsr_nothex_x", "", "Bearer x"]) assert.equal(await codeOf(vault.authenticateToken(bad, "tcp")), "unauthenticated", bad);
    const fails = await admin.auditQuery({ types: ["auth_failed"] });
    assert.equal(fails.length, 7);
    assert.deepEqual(fails.map((e) => e.reason), ["token expired", "token revoked", "wrong token secret", "wrong token secret", "malformed token", "malformed token", "malformed token"]);
    for (const e of fails) assert.ok(!JSON.stringify(e).includes(a.token.slice(21)), "no token secret in the audit trail");
  });

  test("only admins manage tokens, and parameters are checked", async () => {
    const { vault } = await makeVault();
    const claude = vault.session(agent("claude"));
    assert.equal(await codeOf(claude.createToken({ name: "x", role: "admin" })), "access_denied");
    assert.equal(await codeOf(claude.listTokens()), "access_denied");
    assert.equal(await codeOf(claude.revokeToken("0123456789abcdef")), "access_denied");
    const admin = vault.admin();
    assert.equal(await codeOf(admin.createToken({ name: "x", role: "agent" })), "invalid_request");
    assert.equal(await codeOf(admin.createToken({ name: "x", role: "orchestrator" })), "invalid_request");
    assert.equal(await codeOf(admin.createToken({ name: "bad name", role: "admin" })), "invalid_request");
    assert.equal(await codeOf(admin.createToken({ name: "x", role: "root" as never })), "invalid_request");
    const o = await admin.createToken({ name: "orch", role: "orchestrator", actFor: ["claude-*"] });
    assert.deepEqual((await vault.authenticateToken(o.token, "tcp")).actFor, ["claude-*"]);
  });
});
