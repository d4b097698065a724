/**
 * The wall clock stepped back (an NTP correction of a clock that ran fast, a time set by hand) must not
 * bring an expired lease back to life, nor lengthen a lease's max_ttl by the step (src/vault/clock.ts).
 * The vault here runs on its real default clock over a real SQLite file; the step is Date.now moved
 * back in this process (the monotonic clock, performance.now, goes on as it does).
 */
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";
import { inProcessCaller } from "../src/backend/in-process.js";
import { FLOOR_MAX_AHEAD_MS, steadyClock } from "../src/vault/clock.js";
import { agent, codeOf, grant, makeVault } from "./helpers.js";

const MIN = 60_000;
const POLICY = grant("g", ["claude"], ["tok"], ["api.example.com"], 'ttl = "5m"\nmax_ttl = "10m"\nrenewable = true');
const realNow = Date.now.bind(Date);
/** How far this process's wall clock is moved from the real one. */
let offset = 0;
Date.now = () => realNow() + offset;
afterEach(() => void (offset = 0));

describe("a vault on its default clock", () => {
  test("a lease that expired stays expired when the clock steps back an hour", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    await vault.admin().storeSecret({ name: "tok", value: "v" });
    const claude = vault.session(agent("claude"));
    const lease = await claude.requestLease({ secret: "tok" });
    offset = 6 * MIN; // past its ttl
    assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.example.com" })), "lease_expired");
    offset = -60 * MIN; // the clock is stepped back
    assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.example.com" })), "lease_expired", "an expired lease gave its value again once the clock stepped back");
    assert.equal(await codeOf(claude.renewLease(lease.id)), "lease_expired");
    assert.ok(vault.now() >= realNow() + 6 * MIN - 1000, "the vault's clock went back");
  });

  test("an expired lease is not listed live (what the proxy's lease watch asks) after the clock steps back", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    await vault.admin().storeSecret({ name: "tok", value: "v" });
    const claude = vault.session(agent("claude"));
    const lease = await claude.requestLease({ secret: "tok" });
    const call = inProcessCaller(claude, { version: "x", startedAt: 0, connections: () => 0 });
    const live = async (): Promise<string[]> => ((await call("list_leases", { agent: "claude", live: true })) as { id: string }[]).map((r) => r.id);
    assert.deepEqual(await live(), [lease.id]);
    offset = 6 * MIN;
    assert.deepEqual(await live(), []);
    offset = -60 * MIN;
    assert.deepEqual(await live(), [], "list_leases live:true lists a lease the vault's clock says expired");
  });

  test("reopened while the clock is behind the trail's last event, the vault's time starts from that event", async () => {
    const tv = await makeVault({ policy: POLICY });
    await tv.vault.admin().storeSecret({ name: "tok", value: "v" });
    const claude = tv.vault.session(agent("claude"));
    offset = 20 * MIN; // the lease is taken at +20 min (a clock that ran fast, say)
    const lease = await claude.requestLease({ secret: "tok", ttl: "5m" });
    offset = -60 * MIN; // stepped back while no lessor runs
    const again = await tv.reopen();
    assert.ok(again.vault.now() >= lease.issuedAt, `the reopened vault's clock (${again.vault.now()}) is before the lease it granted (${lease.issuedAt})`);
    assert.equal(await codeOf(again.vault.session(agent("claude")).accessSecret(lease.id, { domain: "api.example.com" })), "resolved");
  });
});

describe("steadyClock", () => {
  test("follows the wall clock as it is while it goes forward, and a fixed one stays fixed", () => {
    let w = 1000;
    let m = 0;
    const now = steadyClock(() => w, null, () => m);
    assert.equal(now(), 1000);
    w = 5000;
    m = 10;
    assert.equal(now(), 5000, "a step forward is followed at once");
    assert.equal(now(), 5000);
  });

  test("behind what it last said, it goes on from there at the monotonic pace until the wall clock is ahead again", () => {
    let w = 100_000;
    let m = 0;
    const now = steadyClock(() => w, null, () => m);
    assert.equal(now(), 100_000);
    w = 40_000; // stepped back a minute
    m = 5;
    assert.equal(now(), 100_005);
    w = 40_010;
    m = 25;
    assert.equal(now(), 100_025);
    w = 100_030; // past what it last said: followed from here
    m = 40;
    assert.equal(now(), 100_030);
    w = 100_100;
    m = 45;
    assert.equal(now(), 100_100, "the wall clock ahead again is followed");
  });

  test("starts from a floor ahead of the wall clock (the trail's last event), but not one far off", () => {
    assert.equal(steadyClock(() => 1_000, 60_000, () => 0)(), 60_000);
    assert.equal(steadyClock(() => 1_000, 500, () => 0)(), 1_000);
    assert.equal(steadyClock(() => 1_000, 1_000 + FLOOR_MAX_AHEAD_MS + 1, () => 0)(), 1_000, "a trail written by a clock a day or more ahead does not freeze time");
  });
});
