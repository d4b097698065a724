import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { join } from "node:path";
import Database from "better-sqlite3";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openSqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";
import { checkServerProof, endpointBinding, hashTokenSecret, newNonce, splitToken } from "../src/crypto/token-proof.js";
import type { VaultSignal } from "../src/vault/signals.js";
import { agent, clock, codeOf, makeVault, tempDir } from "./helpers.js";

describe("bearer tokens", () => {
  test("a token authenticates as its bound identity; only a hash is stored", async () => {
    const { vault, dbPath } = await makeVault();
    const t = await vault.admin().createToken({ name: "claude-laptop", role: "agent", agent: "claude" });
    assert.match(t.token, /^lsr_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    const who = await vault.authenticateToken(t.token, "tcp");
    assert.deepEqual(who, { id: `token:claude-laptop/${t.id}`, role: "agent", agent: "claude", transport: "tcp", token: { id: t.id, expiresAt: null, issuer: "embedded" } });
    const listed = await vault.admin().listTokens();
    assert.equal(listed.length, 1);
    assert.ok(!JSON.stringify(listed).includes(t.token.slice(21)), "listing never shows the secret");
    const db = new Database(dbPath!);
    const raw = Buffer.concat((db.prepare("SELECT * FROM tokens").raw().all() as unknown[][]).flat().map((v) => Buffer.from(String(v))));
    db.close();
    assert.ok(!raw.includes(Buffer.from(t.token.slice(21))), "the secret part is not in the database");
  });

  test("a session of a token acts only while the store says the token holds: revoked elsewhere, expired, or revoking itself", async () => {
    const c = clock();
    const { vault } = await makeVault({ now: c.now, policy: '[[rule]]\nname = "g"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n' });
    const admin = vault.admin();
    await admin.storeSecret({ name: "tok", value: "v" });
    const a = await admin.createToken({ name: "a", role: "agent", agent: "claude" });
    const b = await admin.createToken({ name: "b", role: "admin", ttl: "1h" });
    const self = await admin.createToken({ name: "self", role: "admin" });
    const asA = vault.session(await vault.authenticateToken(a.token, "tcp"));
    const asB = vault.session(await vault.authenticateToken(b.token, "tcp"));
    const asSelf = vault.session(await vault.authenticateToken(self.token, "tcp"));
    await asA.requestLease({ secret: "tok", domains: ["api.example.com"] });
    // Revoked: the session itself never asks the memory view a server keeps (a daemon sharing the
    // store may not have heard yet), yet nothing it does commits: the token is read in its transaction.
    await admin.revokeToken(a.id);
    const e = await codeOf(asA.requestLease({ secret: "tok", domains: ["api.example.com"] }));
    assert.equal(e, "unauthenticated");
    // Expired by the vault's clock.
    c.advance(3600_000);
    assert.equal(await codeOf(asB.createToken({ name: "minted", role: "admin" })), "unauthenticated");
    assert.ok(!(await admin.listTokens()).some((t) => t.name === "minted"), "nothing minted by an expired token");
    // A token may revoke itself (its check precedes the revocation), and then does nothing more.
    assert.deepEqual(await asSelf.revokeToken(self.id), { revoked: true });
    assert.equal(await codeOf(asSelf.createToken({ name: "after", role: "admin" })), "unauthenticated");
    assert.equal(await codeOf(asSelf.revokeToken(b.id)), "unauthenticated");
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

  test("a token made with an expiring token never outlives it: no ttl takes the rest of the maker's, a longer ttl is refused and audited", async () => {
    const c = clock();
    const { vault } = await makeVault({ now: c.now });
    const short = await vault.admin().createToken({ name: "ci-job", role: "admin", ttl: "1h" });
    const asShort = vault.session(await vault.authenticateToken(short.token, "tcp"));
    // Left out: the new token ends with the maker's, not never.
    const minted = await asShort.createToken({ name: "forever", role: "admin" });
    assert.equal(minted.expiresAt, short.expiresAt);
    // Longer than the maker's rest: refused, nothing made, and the refusal is in the trail.
    const e = await asShort.createToken({ name: "longer", role: "agent", agent: "claude", ttl: "2h" }).then(() => null, (err: unknown) => err as { code: string; message: string });
    assert.equal(e?.code, "invalid_request");
    assert.match(e!.message, /may not make one that outlives it/);
    assert.ok(!(await vault.admin().listTokens()).some((t) => t.name === "longer"));
    const refusals = await vault.admin().auditQuery({ types: ["access_denied"] });
    assert.ok(refusals.some((r) => /outlives it/.test(r.reason ?? "")));
    // Within it: made as asked.
    const inside = await asShort.createToken({ name: "inside", role: "agent", agent: "claude", ttl: "30m" });
    assert.equal(inside.expiresAt, c.now() + 30 * 60_000);
    // After the maker expires, the one it made without a ttl is dead too.
    c.advance(3600_000);
    assert.equal(await codeOf(vault.authenticateToken(minted.token, "tcp")), "unauthenticated");
    // A token that does not expire, and the owner, still make tokens without expiry.
    const forever = await vault.admin().createToken({ name: "root-ci", role: "admin" });
    const asForever = vault.session(await vault.authenticateToken(forever.token, "tcp"));
    assert.equal((await asForever.createToken({ name: "child", role: "admin" })).expiresAt, null);
  });

  test("the handshake proof: a known id's proof checks out only with its token; an unknown id gets the same kind of answer", async () => {
    const { vault } = await makeVault();
    const t = await vault.admin().createToken({ name: "ci", role: "agent", agent: "claude" });
    const parts = splitToken(t.token)!;
    const binding = endpointBinding("tcp", "::ffff:127.0.0.1", 7391);
    assert.equal(binding, "tcp 127.0.0.1:7391");
    const cn = newNonce();
    const known = await vault.tokenChallenge(t.id, cn, binding);
    assert.equal(known.nonce.length, 32);
    assert.equal(known.proof.length, 32);
    assert.ok(checkServerProof(hashTokenSecret(parts.secret), cn, known.nonce, t.id, binding, known.proof), "the holder of the token accepts the proof");
    assert.ok(!checkServerProof(hashTokenSecret(parts.secret), cn, known.nonce, t.id, "tcp 127.0.0.1:7392", known.proof), "bound to the endpoint");
    assert.ok(!checkServerProof(hashTokenSecret(parts.secret), newNonce(), known.nonce, t.id, binding, known.proof), "bound to the client's nonce");
    assert.ok(!checkServerProof(hashTokenSecret("x".repeat(43)), cn, known.nonce, t.id, binding, known.proof), "another secret does not accept it");
    const unknownId = t.id === "0000000000000000" ? "0000000000000001" : "0000000000000000";
    const unknown = await vault.tokenChallenge(unknownId, cn, binding);
    assert.deepEqual([unknown.nonce.length, unknown.proof.length], [32, 32], "an unknown id gets a nonce and a proof of the same shape");
    assert.notDeepEqual(unknown.proof, known.proof);
    for (const [id, n] of [["nothex", cn], [t.id, Buffer.alloc(8)]] as const) assert.equal(await codeOf(vault.tokenChallenge(id, n, binding)), "invalid_request");
    assert.equal((await vault.admin().auditQuery({ types: ["auth_failed"] })).length, 0, "answering a challenge writes nothing (a write only for unknown ids would show in the timing)");
  });

  test("revocation marks the token at once in memory and raises token_revoked once; another process's revocation is found by recheckTokens", async () => {
    const { vault, dbPath, key } = await makeVault();
    const signals: VaultSignal[] = [];
    vault.onSignal((s) => signals.push(s));
    const a = await vault.admin().createToken({ name: "a", role: "agent", agent: "claude" });
    const b = await vault.admin().createToken({ name: "b", role: "agent", agent: "claude" });
    await vault.authenticateToken(a.token, "tcp");
    await vault.authenticateToken(b.token, "tcp");
    assert.equal(vault.tokenStanding(a.id), null);
    await vault.admin().revokeToken(a.id);
    assert.equal(vault.tokenStanding(a.id), "token revoked");
    assert.deepEqual(signals, [{ type: "token_revoked", tokenId: a.id }]);
    assert.deepEqual(await vault.recheckTokens([a.id, b.id]), [], "nothing new");
    // Another vault on the same database file (as another process would be) revokes b.
    const { Vault } = await import("../src/vault/vault.js");
    const { openSqliteStore } = await import("../src/store/sqlite/sqlite-store.js");
    const { envKeySource } = await import("../src/crypto/keys/env.js");
    const other = await Vault.open({ store: openSqliteStore(dbPath!), keys: envKeySource({ LESSOR_MASTER_KEY: key })! });
    await other.admin().revokeToken(b.id);
    await other.close();
    assert.equal(vault.tokenStanding(b.id), null, "not seen yet: memory only");
    assert.deepEqual(await vault.recheckTokens([a.id, b.id]), [b.id]);
    assert.equal(vault.tokenStanding(b.id), "token revoked");
    assert.deepEqual(signals.map((s) => (s.type === "token_revoked" ? s.tokenId : s.type)), [a.id, b.id]);
  });
});

describe("whoami", () => {
  test("names the token the transport authenticated, never one read out of an identity id the embedding program chose", async () => {
    const { vault } = await makeVault();
    const admin = vault.admin();
    const made = await admin.createToken({ name: "ci", role: "agent", agent: "claude" });
    const viaToken = vault.session(await vault.authenticateToken(made.token, "tcp"));
    const w = await viaToken.whoami();
    assert.deepEqual(w.token && { id: w.token.id, name: w.token.name }, { id: made.id, name: "ci" });
    // An identity whose id merely looks like a token's is not one: no token is shown for it.
    const lookalike = vault.session({ id: `token:ci/${made.id}`, role: "agent", agent: "mallory", transport: "embedded" });
    assert.equal((await lookalike.whoami()).token, null);
    await vault.close();
  });
});

describe("token records carry a MAC under the master key", () => {
  test("a token row is MACed under the master key: a row without its MAC, or with a field changed, authenticates no one (listed unverified); rotation MACs live rows again under the new key", async () => {
    const dbPath = join(tempDir(), "lessor.db");
    const oldKey = "55".repeat(32);
    const newKey = "66".repeat(32);
    const open = (env: Record<string, string>) => Vault.open({ store: openSqliteStore(dbPath), keys: envKeySource(env)!, policy: parsePolicy("", "p.toml") });
    const edit = (sql: string, ...args: unknown[]) => {
      const db = new Database(dbPath);
      try {
        db.prepare(sql).run(...args);
      } finally {
        db.close();
      }
    };
    let vault = await open({ LESSOR_MASTER_KEY: oldKey });
    const admin = vault.admin();
    const keep = await admin.createToken({ name: "keep", role: "agent", agent: "claude" });
    const bare = await admin.createToken({ name: "bare", role: "agent", agent: "claude" });
    const promoted = await admin.createToken({ name: "promoted", role: "agent", agent: "claude" });
    edit("UPDATE tokens SET mac = NULL WHERE id = ?", bare.id);
    edit("UPDATE tokens SET role = 'admin', agent = NULL WHERE id = ?", promoted.id);
    assert.equal((await vault.authenticateToken(keep.token, "tcp")).agent, "claude");
    assert.equal(await codeOf(vault.authenticateToken(bare.token, "tcp")), "unauthenticated");
    assert.equal(await codeOf(vault.authenticateToken(promoted.token, "tcp")), "unauthenticated");
    const listed = await admin.listTokens();
    // By name: tokens made in one millisecond list in the order of their random ids.
    assert.deepEqual(listed.map((t) => [t.name, t.unverified ?? false]).sort(), [["bare", true], ["keep", false], ["promoted", true]]);
    const failures = (await admin.auditQuery({ types: ["auth_failed"] })).map((e) => e.reason);
    assert.ok(failures.length > 0 && failures.every((r) => r?.startsWith("token record without a valid MAC")), JSON.stringify(failures));
    await vault.close();

    vault = await open({ LESSOR_MASTER_KEY: newKey, LESSOR_MASTER_KEY_PREVIOUS: oldKey });
    assert.equal((await vault.authenticateToken(keep.token, "tcp")).agent, "claude", "under the old key while it is loaded");
    await vault.admin().rotateMasterKey();
    const rotated = (await vault.admin().auditQuery({ types: ["key_rotated"] }))[0]!;
    assert.equal((JSON.parse(rotated.detail!) as { tokens_remaced: number }).tokens_remaced, 1);
    await vault.close();
    // The old key dropped: the token MACed again under the new key still works; the others still do not.
    vault = await open({ LESSOR_MASTER_KEY: newKey });
    try {
      assert.equal((await vault.authenticateToken(keep.token, "tcp")).agent, "claude");
      assert.equal(await codeOf(vault.authenticateToken(bare.token, "tcp")), "unauthenticated");
      assert.equal(await codeOf(vault.authenticateToken(promoted.token, "tcp")), "unauthenticated");
    } finally {
      await vault.close();
    }
  });
});
