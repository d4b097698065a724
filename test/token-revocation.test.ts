/**
 * Tokens are checked for the whole life of a connection, not only at the hello: a revoked or expired
 * token's open connections are closed within a second (revoked here, revoked by another process
 * sharing the database, or expired), with an auth_failed audit event; and no connection, however
 * busy, outlives maxConnectionLifetimeMs. A real vault on SQLite, the real server and authenticator,
 * real sockets, and a real second process.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { parseConfig } from "../src/config/config.js";
import { VaultError } from "../src/base/errors.js";
import { authRig, RawConn } from "./auth-rig.js";

const clients: LessorClient[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function connect(...a: Parameters<typeof LessorClient.connect>): Promise<LessorClient> {
  const c = await LessorClient.connect(...a);
  clients.push(c);
  return c;
}

/** Resolves with the time the client noticed its connection was gone, or fails after `ms`. */
async function disconnected(c: LessorClient, ms: number): Promise<number> {
  const end = Date.now() + ms;
  while (c.connected) {
    if (Date.now() > end) assert.fail(`the connection was still open after ${ms} ms`);
    await sleep(5);
  }
  return Date.now();
}

async function rejection(p: Promise<unknown>): Promise<VaultError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof VaultError, String(e));
    return e;
  }
  assert.fail("expected a rejection");
}

test.after(async () => {
  for (const c of clients) await c.close();
});

test("revoking a token closes its open connections within 1 s on both transports, the next request fails, and each cut is audited", async () => {
  const r = await authRig();
  const admin = r.vault.admin();
  const t = await admin.createToken({ name: "claude", role: "agent", agent: "claude" });
  const keep = await admin.createToken({ name: "bystander", role: "agent", agent: "claude" });
  const overTcp = await connect(r.tcp, { token: t.token, reconnect: false });
  const overUds = await connect({ socketPath: r.socketPath }, { token: t.token }); // reconnect on
  const raw = await RawConn.withToken(r.tcp, t.token);
  const bystander = await connect(r.tcp, { token: keep.token });
  assert.equal((await overTcp.status()).identity.agent, "claude");
  assert.equal((await overUds.status()).identity.transport, "uds");
  raw.request("status");
  assert.equal((await raw.next()).ok, true);

  const t0 = Date.now();
  assert.deepEqual(await admin.revokeToken(t.id), { revoked: true });
  const gone = [await disconnected(overTcp, 1000), await disconnected(overUds, 1000), await raw.closed(1000)];
  for (const at of gone) assert.ok(at - t0 < 1000, `closed ${at - t0} ms after the revocation`);
  // The daemon says why before it closes.
  const last = await raw.next();
  assert.equal(last.id, null);
  assert.equal(last.ok, false);
  assert.equal(last.error.code, "unauthenticated");
  assert.match(last.error.message, /token this connection authenticated with was revoked/);

  // The next request fails: without reconnect, locally; with it, the new handshake is refused.
  assert.equal((await rejection(overTcp.status())).code, "unavailable");
  const e = await rejection(overUds.status());
  assert.equal(e.code, "unauthenticated");
  assert.match(e.message, /token is not valid/);
  // Another token's connection is untouched.
  assert.equal((await bystander.status()).identity.agent, "claude");
  assert.ok(bystander.connected);

  await sleep(50); // the cut's audit writes are asynchronous to the close
  const cuts = (await admin.auditQuery({ types: ["auth_failed"] })).filter((a) => a.reason === "token revoked" && a.actorId === `token:claude/${t.id}`);
  assert.equal(cuts.length, 3, "one auth_failed event per connection cut");
  for (const c of cuts) assert.equal((JSON.parse(c.detail!) as { token_id: string }).token_id, t.id);
  assert.ok(r.log.lines.some((l) => l.includes("closing a connection whose token no longer holds")));
});

test("a token revoked by another process sharing the database: its connection is closed within a second", async () => {
  const r = await authRig();
  const t = await r.vault.admin().createToken({ name: "ci", role: "agent", agent: "claude" });
  const c = await connect(r.tcp, { token: t.token, reconnect: false });
  assert.equal((await c.status()).identity.agent, "claude");
  const child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("./fixtures/revoke-token.ts", import.meta.url)), r.test.dbPath!, t.id], {
    env: { PATH: process.env.PATH, LESSOR_MASTER_KEY: r.test.key },
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  const exited = new Promise((res) => child.once("close", res));
  const closedAt = await disconnected(c, 30_000);
  await exited;
  const m = /^revoked true (\d+)/.exec(out);
  assert.ok(m, `the other process revoked the token: ${out}`);
  const after = closedAt - Number(m[1]);
  assert.ok(after < 1000, `closed ${after} ms after the other process committed the revocation`);
  const e = await rejection(LessorClient.connect(r.tcp, { token: t.token }));
  assert.equal(e.code, "unauthenticated");
});

test("an expiring token's open connection is closed within 1 s of expiry, and the cut is audited", async () => {
  const r = await authRig();
  const t = await r.vault.admin().createToken({ name: "short", role: "agent", agent: "claude", ttl: 1500 });
  const expiresAt = t.expiresAt!;
  const raw = await RawConn.withToken(r.tcp, t.token);
  const c = await connect({ socketPath: r.socketPath }, { token: t.token, reconnect: false });
  raw.request("status");
  assert.equal((await raw.next()).ok, true);
  assert.equal((await c.status()).identity.agent, "claude");
  const closedAt = await raw.closed(2500);
  assert.ok(closedAt >= expiresAt && closedAt - expiresAt < 1000, `closed ${closedAt - expiresAt} ms after expiry`);
  const last = await raw.next();
  assert.equal(last.id, null);
  assert.equal(last.error.code, "unauthenticated");
  assert.match(last.error.message, /has expired/);
  assert.ok((await disconnected(c, 1000)) - expiresAt < 1000);
  await sleep(50);
  const cuts = (await r.vault.admin().auditQuery({ types: ["auth_failed"] })).filter((a) => a.reason === "token expired" && a.actorId === `token:short/${t.id}`);
  assert.equal(cuts.length, 2);
});

test("every request re-checks the token from the vault's memory: once the token has expired in the vault's clock the next request is refused, before any sweep", async () => {
  // The vault's clock runs a day ahead of the real one, so the server's sweep (real time) never sees
  // this token expire: only the per-request check can refuse.
  let offset = 86_400_000;
  const r = await authRig({ now: () => Date.now() + offset });
  const t = await r.vault.admin().createToken({ name: "hour", role: "agent", agent: "claude", ttl: "1h" });
  const c = await connect(r.tcp, { token: t.token, reconnect: false });
  assert.equal((await c.status()).identity.agent, "claude");
  offset += 2 * 3_600_000;
  const e = await rejection(c.status());
  assert.equal(e.code, "unauthenticated");
  assert.match(e.message, /has expired/);
  await disconnected(c, 1000);
});

test("a stream of requests does not keep a connection past maxConnectionLifetimeMs; a reconnecting client carries on", async () => {
  const r = await authRig({ limits: { maxConnectionLifetimeMs: 1000, idleTimeoutMs: 60_000 } });
  const c = await connect({ socketPath: r.socketPath }, { reconnect: false });
  const t0 = Date.now();
  let e: VaultError | null = null;
  while (Date.now() - t0 < 4000) {
    try {
      await c.status();
    } catch (x) {
      e = x as VaultError;
      break;
    }
    await sleep(40);
  }
  const took = Date.now() - t0;
  assert.ok(e !== null, "the busy connection was never closed");
  assert.ok(took >= 950 && took < 1700, `closed after ${took} ms`);
  assert.ok(r.log.lines.some((l) => l.includes("reached its maximum lifetime")));
  // A client with reconnect on opens a new connection at its next call.
  const again = await connect({ socketPath: r.socketPath });
  assert.equal((await again.status()).identity.role, "admin");
  await disconnected(again, 2000);
  assert.equal((await again.status()).identity.role, "admin", "the next call reconnected");
});

test("max_connection_lifetime is read from lessor.toml's [server] table, 24 h by default", () => {
  assert.equal(parseConfig("", "lessor.toml").server.maxConnectionLifetimeMs, 86_400_000);
  assert.equal(parseConfig('[server]\nmax_connection_lifetime = "2h"\n', "lessor.toml").server.maxConnectionLifetimeMs, 7_200_000);
  assert.throws(() => parseConfig("[server]\nmax_connection_lifetime = 5\n", "lessor.toml"), /max_connection_lifetime.*expected a duration/);
});
