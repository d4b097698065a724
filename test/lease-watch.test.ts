/**
 * The injecting proxy's lease watch (src/proxy/lease-egress.ts), driven directly with an in-process
 * vault: which open tunnels it closes, and when. A tunnel here is a handle that records its closing;
 * a WebSocket handshake through `prepare` is what ties it to the lease.
 * - a used-up lease keeps the streams that took its uses, until it is revoked (the killswitch, an
 *   explicit revoke) or expires;
 * - the vault unreachable, or not answering: the streams close once the lease has gone unconfirmed
 *   for UNCONFIRMED_MS; requests meanwhile are refused; once it answers, requests go again.
 */
import assert from "node:assert/strict";
import { test, type TestContext } from "node:test";
import { VaultError } from "../src/base/errors.js";
import { inProcessApi } from "../src/backend/in-process.js";
import type { ProxiedRequest, TunnelHandle } from "../src/proxy/egress.js";
import { LeaseEgress, UNCONFIRMED_MS, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault, within } from "./helpers.js";

const HOST = "api.watch.example";
const VALUE = "ghp_watchWATCHwatch0123456789";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Tunnel extends TunnelHandle {
  closed: boolean;
}
const tunnel = (): Tunnel => {
  const t = { closed: false, close: () => void (t.closed = true) };
  return t;
};

/** A vault lending `tok` to `bot` for HOST (`extra`: more lines of the rule), and a watching egress over it; `down` makes the vault's answers fail (or hang). */
async function rig(t: TestContext, extra = "", lease: (l: ProxyCredential["lease"]) => ProxyCredential["lease"] = (l) => l) {
  const { vault } = await makeVault({ policy: grant("g", ["bot"], ["tok"], [HOST], extra) });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: VALUE });
  const got = await admin.requestLease({ agent: "bot", secret: "tok", domains: [HOST] });
  const api = inProcessApi(vault);
  const state = { down: "no" as "no" | "fail" | "hang" };
  const failing =
    <A extends unknown[], R>(f: (...a: A) => Promise<R>) =>
    (...a: A): Promise<R> =>
      state.down === "fail" ? Promise.reject(new VaultError("unavailable", "the vault cannot be reached")) : state.down === "hang" ? new Promise<R>(() => {}) : f(...a);
  api.listLeases = failing(api.listLeases.bind(api));
  api.accessSecret = failing(api.accessSecret.bind(api));
  const placeholder = makePlaceholder(VALUE);
  const warns: string[] = [];
  const egress = new LeaseEgress({
    api,
    agent: "bot",
    credentials: [{ lease: lease(got), secret: "global/tok", placeholder, value: VALUE, rule: { mode: "placeholder", websocket: true } }],
    egress: "strict",
    warn: (l) => warns.push(l),
  });
  egress.start();
  t.after(() => egress.close());
  /** A WebSocket handshake carrying the placeholder, on a fresh tunnel: what the proxy decided, and the tunnel. */
  const websocket = async () => {
    const d = await egress.decide(HOST, 443);
    assert.equal(d.kind, "intercept");
    const req: ProxiedRequest = { method: "GET", host: HOST, port: 443, target: "/ws", headers: { authorization: `Bearer ${placeholder}` }, protocol: "h1", upgrade: "websocket", hasBody: false };
    const tn = tunnel();
    const p = await (d as Extract<typeof d, { kind: "intercept" }>).prepare(req, tn);
    return { prepared: p, tunnel: tn };
  };
  return { admin, lease: got, state, websocket, warns };
}

test("a WebSocket that took its lease's last use stays open while the lease is only used up, and closes when the killswitch revokes it", async (t) => {
  const r = await rig(t, "max_uses = 1");
  const ws = await r.websocket();
  assert.equal(ws.prepared.kind, "forward");
  await sleep(300);
  assert.equal(ws.tunnel.closed, false, "a used-up lease keeps the stream that took its last use");
  assert.equal((await r.websocket()).prepared.kind, "refuse", "no further use");
  const { revoked } = await r.admin.killswitch("incident");
  assert.equal(revoked, 1, "the killswitch revokes the used-up lease");
  await within(1000, "the stream closed after the killswitch", () => ws.tunnel.closed, 5);
});

test("a WebSocket that took its lease's last use closes when the lease is revoked by id", async (t) => {
  const r = await rig(t, "max_uses = 1");
  const ws = await r.websocket();
  assert.equal(ws.prepared.kind, "forward");
  await sleep(200);
  assert.equal(ws.tunnel.closed, false);
  assert.deepEqual(await r.admin.revokeLease(r.lease.id, "incident"), { revoked: true });
  await within(1000, "the stream closed after the revocation", () => ws.tunnel.closed, 5);
});

test("a WebSocket that took its lease's last use closes when the lease expires", async (t) => {
  // The run's copy of the lease says when it expires (the vault's row is the same lease: its clock is this one).
  const r = await rig(t, "max_uses = 1", (l) => ({ ...l, expiresAt: Date.now() + 600 }));
  const ws = await r.websocket();
  assert.equal(ws.prepared.kind, "forward");
  await sleep(200);
  assert.equal(ws.tunnel.closed, false);
  await within(2000, "the stream closed at expiry", () => ws.tunnel.closed, 5);
});

for (const down of ["fail", "hang"] as const) {
  test(`the vault ${down === "fail" ? "unreachable" : "not answering"}: an open WebSocket closes once its lease has gone unconfirmed for ${UNCONFIRMED_MS} ms; requests are refused meanwhile and go again once it answers`, async (t) => {
    const r = await rig(t);
    const ws = await r.websocket();
    assert.equal(ws.prepared.kind, "forward");
    await sleep(200);
    assert.equal(ws.tunnel.closed, false, "the watch confirms the lease");
    const t0 = performance.now();
    r.state.down = down;
    await sleep(200);
    assert.equal(ws.tunnel.closed, false, "a short silence is tolerated");
    await within(UNCONFIRMED_MS + 1000, "the stream closed with the vault silent", () => ws.tunnel.closed, 5);
    const took = performance.now() - t0;
    assert.ok(took >= UNCONFIRMED_MS - 50, `closed after ${took} ms`);
    assert.ok(r.warns.some((w) => /has not confirmed the lease for global\/tok/.test(w)), r.warns.join("\n"));
    if (down === "fail") {
      const refused = await r.websocket();
      assert.equal(refused.prepared.kind, "refuse");
      assert.equal((refused.prepared as { status: number }).status, 503);
    }
    r.state.down = "no";
    await sleep(100);
    const again = await r.websocket();
    assert.equal(again.prepared.kind, "forward", "the lease was never ended: once the vault answers, requests go");
    await sleep(UNCONFIRMED_MS + 500);
    assert.equal(again.tunnel.closed, false, "the watch confirms the lease again");
  });
}
