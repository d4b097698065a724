/**
 * The vault's clock is steady (src/vault/clock.ts), and the proxy's own expiry check uses a steady
 * clock of its process, but that clock starts at the process's wall clock: a `lessor run` started
 * after the host's clock stepped back (the daemon's steady clock stays where it was) judges leases
 * by the stepped-back clock. Its lease watch asks the daemon, which says "not live", and then asks
 * the lease by id and judges it with leaseState(l) — Date.now() — "live": the WebSocket carrying the
 * expired lease is confirmed and kept open for the whole step (an hour here).
 * Real vault (SQLite file, default clock), real LeaseEgress; the step is Date.now moved back in this
 * process, as test/attack-clock-step.test.ts does. Then a lease issued before the step, carried by a
 * proxy built after it: its floor (the issue time) is behind the vault by the lease's age, so a lease the
 * vault leaves out of its live list, neither revoked nor used up, is taken as expired by the vault's clock.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { inProcessApi } from "../src/backend/in-process.js";
import type { ProxiedRequest, TunnelHandle } from "../src/proxy/egress.js";
import { LeaseEgress } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";

const HOST = "api.watch.example";
const VALUE = "ghp_watchWATCHwatch0123456789";
const HOST2 = "api.watch2.example";
const VALUE2 = "ghp_watchTWOwatch0123456789ab";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const realNow = Date.now.bind(Date);
let offset = 0;
Date.now = () => realNow() + offset;

test("attack: lessor run started after the clock stepped back: a WebSocket on a lease the vault says expired is closed", async (t) => {
  const { vault } = await makeVault({ policy: grant("g", ["bot"], ["tok"], [HOST], 'ttl = "5m"') });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: VALUE });
  offset = -60 * 60_000; // NTP steps the host's clock back an hour; the daemon (this vault) stays steady
  t.after(() => void (offset = 0));
  const got = await admin.requestLease({ agent: "bot", secret: "tok", domains: [HOST], ttl: "2s" });
  assert.ok(got.expiresAt > realNow(), "the vault's clock did not go back");
  // `lessor run` starts now: its proxy's steady clock starts at the stepped-back wall clock.
  const placeholder = makePlaceholder(VALUE);
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: [{ lease: got, secret: "global/tok", placeholder, value: VALUE, rule: { mode: "placeholder", websocket: true } }], egress: "strict" });
  egress.start();
  t.after(() => egress.close());
  const d = await egress.decide(HOST, 443);
  assert.equal(d.kind, "intercept");
  const req: ProxiedRequest = { method: "GET", host: HOST, port: 443, target: "/ws", headers: { authorization: `Bearer ${placeholder}` }, protocol: "h1", upgrade: "websocket", hasBody: false };
  const tn = { closed: false as boolean, close: () => void (tn.closed = true) } satisfies TunnelHandle & { closed: boolean };
  const p = await (d as Extract<typeof d, { kind: "intercept" }>).prepare(req, tn);
  assert.equal(p.kind, "forward");
  await sleep(4000); // 2 s past the expiry the vault stamped (and still judges by)
  assert.equal(await admin.accessSecret(got.id, { domain: HOST }).then(() => "ok", (e) => e.code), "lease_expired", "the vault says the lease expired");
  assert.equal(tn.closed, true, "the WebSocket carrying a lease the vault says expired is still open (kept for the length of the clock step)");
});

test("attack: a lease issued before the clock stepped back, carried by a proxy built after it (lessor mcp rebuilds its proxy): closed at the vault's expiry", async (t) => {
  const { vault } = await makeVault({ policy: grant("g", ["bot"], ["tok"], [HOST2], 'ttl = "5m"') });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value: VALUE2 });
  const got = await admin.requestLease({ agent: "bot", secret: "tok", domains: [HOST2], ttl: "10s" });
  await sleep(7000); // the lease is 7 s old
  offset = -60 * 60_000; // NTP steps the host's clock back an hour; the vault's clock stays steady
  t.after(() => void (offset = 0));
  // The proxy is built now (lessor mcp: first http_request after a change of the lease set).
  const placeholder = makePlaceholder(VALUE2);
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: [{ lease: got, secret: "global/tok", placeholder, value: VALUE2, rule: { mode: "placeholder", websocket: true } }], egress: "strict" });
  egress.start();
  t.after(() => egress.close());
  const d = await egress.decide(HOST2, 443);
  assert.equal(d.kind, "intercept");
  const req: ProxiedRequest = { method: "GET", host: HOST2, port: 443, target: "/ws", headers: { authorization: `Bearer ${placeholder}` }, protocol: "h1", upgrade: "websocket", hasBody: false };
  const tn = { closed: false as boolean, close: () => void (tn.closed = true) } satisfies TunnelHandle & { closed: boolean };
  const p = await (d as Extract<typeof d, { kind: "intercept" }>).prepare(req, tn);
  assert.equal(p.kind, "forward");
  await sleep(6000); // the vault's expiry passed 3 s ago
  assert.equal(await admin.accessSecret(got.id, { domain: HOST2 }).then(() => "ok", (e) => e.code), "lease_expired", "the vault says the lease expired");
  assert.equal(tn.closed, true, "the WebSocket carrying a lease the vault says expired is still open (the floor is the issue time, 7 s behind the vault)");
});
