/**
 * attack (dos): one agent token, 64 connections (its max_connections_per_principal), each pipelining
 * 64 `record_proxy_requests` frames of ~1 MiB (the frame cap; a method every role may call). The
 * per-connection cap counts requests, not bytes, so the daemon parsed and held up to 64 × 64 MiB of
 * params for this one principal: its RSS climbed past 4 GB (the heap limit on a 23 GB host) and the
 * owner's `status` timed out for seconds at a time. Expected: the daemon's memory stays bounded well
 * below that, and the owner is still served.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { encodeFrame } from "../src/protocol/framing.js";
import { makeHome, startServe, DaemonConn } from "./daemon-harness.js";
import { grant } from "./helpers.js";

const rss = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;

test("attack: 64 connections of one agent pipelining 1 MiB requests do not grow the daemon's memory past a bound", { skip: process.platform !== "linux" && "reads /proc" }, async () => {
  const home = await makeHome({ config: `[server]\ntcp = "127.0.0.1:0"\n`, policy: grant("gh", ["claude"], ["github-token"], ["api.github.com"]) });
  const d = await startServe(home);
  const socks: Socket[] = [];
  try {
    const admin = await LessorClient.connect({ socketPath: d.socket });
    const tok = await admin.createToken({ name: "flood", role: "agent", agent: "claude" });
    await admin.close();
    const pid = d.proc.pid!;
    const path = "/" + "a".repeat(8000);
    const reports = Array.from({ length: 125 }, () => ({ agent: "claude", leaseIds: [], method: "GET", host: "api.github.com", path, status: 200, bytesOut: 1, bytesIn: 1, ms: 1, outcome: "ok" }));
    const frame = encodeFrame({ id: randomUUID(), method: "record_proxy_requests", params: { reports } });
    assert.ok(frame.length > 1_000_000 && frame.length <= 4 + 1024 * 1024);
    const owner = (await DaemonConn.hello(d.socket)).c;
    assert.equal((await owner.call("status")).ok, true);
    const base = rss(pid);
    for (let i = 0; i < 64; i++) {
      const s = connect({ host: d.tcp!.host, port: d.tcp!.port });
      s.on("error", () => {});
      s.on("data", () => {}); // reads its answers: this is about requests, not unread answers
      s.write(encodeFrame({ protocol: "lessor", version: 1, token: tok.token }));
      socks.push(s);
    }
    for (const s of socks) for (let j = 0; j < 64; j++) s.write(frame); // 4 GiB in all, one Buffer
    let peak = 0;
    let slowest = 0;
    const end = Date.now() + 40_000;
    while (Date.now() < end && d.proc.exitCode === null) {
      await sleep(250);
      peak = Math.max(peak, rss(pid) - base);
      if (peak > 1.5e9) break; // the bound does not hold: no need to fill the memory to show it
      const t0 = performance.now();
      const st = await Promise.race([owner.call("status"), sleep(10_000).then(() => null)]);
      slowest = Math.max(slowest, performance.now() - t0);
      assert.ok(st?.ok, "the owner's status is answered");
    }
    console.log(`peak growth ${(peak / 1e6).toFixed(0)} MB, slowest status ${slowest.toFixed(0)} ms`);
    assert.equal(d.proc.exitCode, null, "the daemon is still up");
    assert.ok(peak < 1e9, `one agent's pipelined requests grew the daemon by ${(peak / 1e6).toFixed(0)} MB (bound 1000 MB)`);
    assert.ok(slowest < 5000, `the owner's status took ${slowest.toFixed(0)} ms under the flood`);
    owner.close();
  } finally {
    for (const s of socks) s.destroy();
    await d.stop();
  }
});
