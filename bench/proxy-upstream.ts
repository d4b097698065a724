/**
 * The upstream for bench/proxy.ts, in its own process (it stands for a remote API): HTTPS on 127.0.0.1
 * with a certificate for api.bench.test from its own LocalCa, speaking HTTP/1.1 and HTTP/2 (ALPN) with
 * the same handler. Prints one JSON line on stdout when ready: { host, port, caPem, streamBytes }.
 *
 * Like the API it stands for, it answers 401 to a request whose `Authorization` is not
 * `Bearer $LESSOR_BENCH_SECRET`: a figure the client measured (it counts only 200s) is one where the
 * credential really arrived, whichever way it was added (the client, or a proxy's injection).
 *
 *   GET /stream  100 MiB of JSON-lines text in 64 KiB writes (backpressure respected)
 *   GET /*       a small JSON body (about 200 bytes)
 *
 * The streamed body is text, not random bytes: the scrubber's fast path skips to the next place a
 * secret's first bytes (or one of its encoded forms') start, and text has many more near misses than
 * random bytes do.
 */
import { createSecureServer, type Http2ServerRequest, type Http2ServerResponse } from "node:http2";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { LocalCa } from "../src/proxy/ca.js";

const UPSTREAM_HOST = "api.bench.test";
const SECRET = process.env.LESSOR_BENCH_SECRET ?? "";
if (SECRET.length < 20) throw new Error("LESSOR_BENCH_SECRET is not set: start this from bench/proxy.ts");
const EXPECTED = `Bearer ${SECRET}`;
const STREAM_BYTES = 100 * 1024 * 1024;
const CHUNK_BYTES = 64 * 1024;

/** One 64 KiB chunk of JSON lines, the same for every write. */
function textChunk(): Buffer {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < CHUNK_BYTES; i++) {
    const line = `{"id":${i},"name":"item-${i}","tags":["alpha","beta","gamma"],"note":"the quick brown fox jumps over the lazy dog","ok":true}\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join("")).subarray(0, CHUNK_BYTES);
}

const CHUNK = textChunk();

type Req = IncomingMessage | Http2ServerRequest;
type Res = ServerResponse | Http2ServerResponse;

function stream(res: Res): void {
  res.writeHead(200, { "content-type": "application/x-ndjson", "content-length": STREAM_BYTES });
  let left = STREAM_BYTES / CHUNK_BYTES;
  const more = (): void => {
    while (left > 0) {
      left--;
      if (left === 0) {
        res.end(CHUNK);
        return;
      }
      if (!(res as ServerResponse).write(CHUNK)) {
        res.once("drain", more);
        return;
      }
    }
  };
  more();
}

function handle(req: Req, res: Res): void {
  req.resume();
  req.on("end", () => {
    if (req.headers.authorization !== EXPECTED) {
      const body = JSON.stringify({ error: "bad credentials" });
      res.writeHead(401, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    if (req.url === "/stream") {
      stream(res);
      return;
    }
    const body = JSON.stringify({ ok: true, path: req.url, authorized: true, items: [{ id: 1, name: "alpha" }, { id: 2, name: "beta" }], next: null, ts: Date.now() });
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  });
}

const ca = LocalCa.create({ permitted: [UPSTREAM_HOST] });
const server = createSecureServer({ allowHTTP1: true, SNICallback: ca.sniCallback, secureContext: ca.secureContextFor(UPSTREAM_HOST) }, handle);
// A keep-alive client must not lose its connection between rounds.
server.setTimeout(0);
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ host: UPSTREAM_HOST, port: (server.address() as AddressInfo).port, caPem: ca.certPem, streamBytes: STREAM_BYTES })}\n`);
});
process.on("SIGTERM", () => process.exit(0));
