/**
 * relayBody (src/proxy/relay.ts), the proxy's copy loop from an upstream answer to the agent: it
 * scrubs across chunk boundaries, holds back under backpressure instead of buffering, and on a failure
 * of either side ends both and says so once. The last tests use a real HTTP server and client, as the
 * proxy does: an upstream that dies mid-body and an agent that leaves mid-body.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, get, type IncomingMessage, type Server } from "node:http";
import { connect as h2Connect, createServer as createH2Server } from "node:http2";
import type { AddressInfo } from "node:net";
import { PassThrough, Readable, Writable } from "node:stream";
import { relayBody } from "../src/proxy/relay.js";
import { Scrubber, ScrubPatterns } from "../src/proxy/scrub.js";

const SECRET = "ghp_relaytestcanary0123456789abcdefABCD";
const PLACEHOLDER = "ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";
const patterns = new ScrubPatterns([{ value: SECRET, placeholder: PLACEHOLDER }]);

/** A writable that keeps what it got. */
function sink(opts: { highWaterMark?: number; slow?: boolean } = {}): Writable & { got: Buffer[] } {
  const got: Buffer[] = [];
  const w = new Writable({
    highWaterMark: opts.highWaterMark ?? 16 * 1024,
    write(chunk: Buffer, _e, cb) {
      got.push(chunk);
      if (opts.slow) setTimeout(cb, 1);
      else cb();
    },
  });
  return Object.assign(w, { got });
}

function relayed(from: Readable, to: Writable, scrub: boolean, onBytes?: (n: number) => void): Promise<Error | undefined> {
  return new Promise((resolve) => relayBody(from, to, { ...(scrub ? { scrubber: new Scrubber(patterns) } : {}), ...(onBytes ? { onBytes } : {}) }, resolve));
}

test("a secret split across chunks at every point reaches the destination as its placeholder; bytes counted before scrubbing", async () => {
  const text = `{"echo":"${SECRET}","again":"${SECRET}"}`;
  for (let cut = 1; cut < text.length; cut++) {
    const to = sink();
    let counted = 0;
    const err = await relayed(Readable.from([Buffer.from(text.slice(0, cut)), Buffer.from(text.slice(cut))]), to, true, (n) => (counted += n));
    assert.equal(err, undefined);
    const out = Buffer.concat(to.got).toString();
    assert.equal(out, text.replaceAll(SECRET, PLACEHOLDER), `cut at ${cut}`);
    assert.ok(!out.includes(SECRET));
    assert.equal(counted, Buffer.byteLength(text));
  }
});

test("without a scrubber the bytes pass unchanged", async () => {
  const to = sink();
  const err = await relayed(Readable.from([Buffer.from(SECRET)]), to, false);
  assert.equal(err, undefined);
  assert.equal(Buffer.concat(to.got).toString(), SECRET);
});

test("backpressure: a slow destination pauses the source (nothing piles up in between)", async () => {
  let pushed = 0;
  let maxAhead = 0;
  const to = sink({ highWaterMark: 1024, slow: true });
  const from = new Readable({
    highWaterMark: 1024,
    read() {
      if (pushed >= 400) return void this.push(null);
      pushed++;
      this.push(Buffer.alloc(512, 0x61));
      maxAhead = Math.max(maxAhead, pushed - to.got.length);
    },
  });
  const err = await relayed(from, to, true);
  assert.equal(err, undefined);
  assert.equal(Buffer.concat(to.got).length, 400 * 512);
  // Without the pause the source would run the whole 400 chunks ahead of the 1 ms writes.
  assert.ok(maxAhead < 20, `the source ran ${maxAhead} chunks ahead of a paused destination`);
});

test("a source that fails mid-body: done(error) once, the destination destroyed, no 'error' left unheard", async () => {
  const from = new PassThrough();
  const to = sink();
  let calls = 0;
  const done = new Promise<Error | undefined>((resolve) =>
    relayBody(from, to, { scrubber: new Scrubber(patterns) }, (e) => {
      calls++;
      resolve(e);
    }),
  );
  from.write("part of an answer ");
  from.destroy(new Error("upstream reset"));
  const err = await done;
  assert.equal(err?.message, "upstream reset");
  assert.ok(to.destroyed);
  await new Promise((r) => setImmediate(r));
  assert.equal(calls, 1);
});

test("a source closed before its end is a failure, not a finished answer", async () => {
  const from = new PassThrough();
  const to = sink();
  const done = relayed(from, to, false);
  from.write("half");
  from.destroy();
  const err = await done;
  assert.match(err?.message ?? "", /closed before its end/);
  assert.ok(to.destroyed);
  assert.equal(to.writableFinished, false);
});

test("a destination that leaves mid-body destroys the source", async () => {
  const from = new PassThrough();
  const to = sink();
  const done = relayed(from, to, true);
  from.write("some");
  to.destroy();
  const err = await done;
  assert.ok(err);
  assert.ok(from.destroyed);
});

test("a scrubber that throws ends both sides with its error", async () => {
  const from = new PassThrough();
  const to = sink();
  const scrubber = new Scrubber(patterns);
  scrubber.end(); // used after end: push throws
  const done = new Promise<Error | undefined>((resolve) => relayBody(from, to, { scrubber }, resolve));
  from.write("x");
  const err = await done;
  assert.match(err?.message ?? "", /after end/);
  assert.ok(from.destroyed && to.destroyed);
});

async function serve(handler: Parameters<typeof createServer>[1]): Promise<{ server: Server; port: number }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, port: (server.address() as AddressInfo).port };
}

function closeAll(...servers: Server[]): void {
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
}

function answer(port: number): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => get({ host: "127.0.0.1", port, path: "/" }, resolve).on("error", reject));
}

test("real HTTP: an upstream that dies mid-body fails the relay and cuts the agent's answer (no short answer passed off as whole)", async () => {
  const up = await serve((_req, res) => {
    res.writeHead(200, { "content-length": "100000" });
    res.write(`begin ${SECRET} `);
    setTimeout(() => res.socket?.destroy(), 20);
  });
  const relayDone: { err?: Error | undefined; called: boolean } = { called: false };
  const front = await serve((_req, res) => {
    void answer(up.port).then((ur) => {
      res.writeHead(200, { "content-length": "100000" });
      relayBody(ur, res, { scrubber: new Scrubber(patterns) }, (e) => Object.assign(relayDone, { err: e, called: true }));
    });
  });
  try {
    const got: Buffer[] = [];
    const agent = await answer(front.port);
    const outcome = await new Promise<string>((resolve) => {
      agent.on("data", (c: Buffer) => got.push(c));
      agent.on("end", () => resolve("end"));
      agent.on("error", () => resolve("error"));
      agent.on("close", () => resolve(agent.complete ? "end" : "cut"));
    });
    assert.notEqual(outcome, "end", "the agent must see a cut answer, not a complete one");
    assert.ok(!Buffer.concat(got).toString().includes(SECRET));
    assert.ok(relayDone.called && relayDone.err !== undefined);
  } finally {
    closeAll(up.server, front.server);
  }
});

test("real HTTP: an agent that leaves mid-body ends the upstream answer too", async () => {
  let upstreamClosed!: () => void;
  const closed = new Promise<void>((r) => (upstreamClosed = r));
  const up = await serve((_req, res) => {
    res.writeHead(200);
    const t = setInterval(() => res.write(Buffer.alloc(16 * 1024, 0x62)), 5);
    res.on("close", () => {
      clearInterval(t);
      upstreamClosed();
    });
  });
  let relayErr: Error | undefined;
  const front = await serve((_req, res) => {
    void answer(up.port).then((ur) => {
      res.writeHead(200);
      relayBody(ur, res, {}, (e) => (relayErr = e));
    });
  });
  try {
    const agent = await answer(front.port);
    await new Promise((r) => agent.once("data", r));
    agent.destroy();
    await closed; // the test times out if the upstream answer keeps going
    assert.ok(relayErr !== undefined);
  } finally {
    closeAll(up.server, front.server);
  }
});

test("real HTTP/2: a relay into a server stream that sends trailers ends without an error, trailers and body intact", async () => {
  const server = createH2Server();
  let relayed: { err: Error | undefined } | undefined;
  server.on("stream", (cs) => {
    cs.respond({ ":status": 200 }, { waitForTrailers: true });
    cs.once("wantTrailers", () => cs.sendTrailers({ "grpc-status": "0" }));
    relayBody(Readable.from([Buffer.from(`a ${SECRET.slice(0, 10)}`), Buffer.from(`${SECRET.slice(10)} b`)]), cs, { scrubber: new Scrubber(patterns) }, (err) => (relayed = { err }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const session = h2Connect(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  try {
    const req = session.request({ ":path": "/" });
    const chunks: Buffer[] = [];
    let trailers: Record<string, unknown> | undefined;
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("trailers", (t) => (trailers = t));
    await new Promise((r) => req.on("close", r));
    assert.equal(Buffer.concat(chunks).toString(), `a ${PLACEHOLDER} b`);
    assert.equal(trailers?.["grpc-status"], "0");
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(relayed, { err: undefined });
  } finally {
    session.destroy();
    server.close();
  }
});
