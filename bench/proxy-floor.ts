/**
 * The floor for bench/proxy.ts: the least a Node.js intercepting proxy can do for the same job, so
 * that each run shows how much of the proxied cost is Node's own (TLS both ways, an HTTP server, an
 * HTTP client) and how much is lessor's. It answers CONNECT, terminates the client's TLS with a leaf
 * from the same kind of session CA, serves the requests inside with node:http, adds the credential
 * (`Authorization: Bearer …`) and forwards each over one keep-alive TLS connection per tunnel with
 * `http.request`, piping the answer back. HTTP/1.1 only.
 *
 * It has none of what makes lessor's proxy safe, and must never be used as a proxy: no egress policy,
 * no SSRF guard (it connects to the bench upstream on 127.0.0.1 only), no scrubbing, no header or
 * time limits, no per-request checks, no audit. It is a measuring stick only.
 *
 * Input and output as bench/proxy-server.ts: LESSOR_BENCH_UPSTREAM, LESSOR_BENCH_SECRET; one JSON line
 * when ready: { mode: "floor", port, caPem, scrub: false }.
 */
import { Agent, createServer as httpServer, request, type IncomingMessage } from "node:http";
import { createServer as netServer, createConnection, type AddressInfo, type Socket } from "node:net";
import { TLSSocket, connect as tlsConnect, createSecureContext } from "node:tls";
import { LocalCa } from "../src/proxy/ca.js";

const up = JSON.parse(process.env.LESSOR_BENCH_UPSTREAM ?? "null") as { host: string; port: number; caPem: string } | null;
if (!up) throw new Error("LESSOR_BENCH_UPSTREAM is not set: start this from bench/proxy.ts");
const SECRET = process.env.LESSOR_BENCH_SECRET ?? "";
const ca = LocalCa.create({ permitted: [up.host] });
const agents = new WeakMap<Socket, Agent>();
/** One context for every upstream connection (one made per connection from the PEM would cost more than the rest). */
const upstreamTrust = createSecureContext({ ca: up.caPem });

const inner = httpServer((req, res) => {
  const agent = agents.get(req.socket);
  if (!agent) return void res.destroy();
  const headers = { ...req.headers, authorization: `Bearer ${SECRET}` };
  const u = request({ agent, host: "127.0.0.1", port: up.port, method: req.method, path: req.url, headers, setHost: false }, (ur: IncomingMessage) => {
    res.writeHead(ur.statusCode ?? 502, ur.headers);
    ur.pipe(res);
  });
  u.on("error", () => res.destroy());
  req.pipe(u);
});

const outer = netServer((sock) => {
  let buf = Buffer.alloc(0);
  const onData = (d: Buffer): void => {
    buf = Buffer.concat([buf, d]);
    const i = buf.indexOf("\r\n\r\n");
    if (i < 0) return;
    sock.off("data", onData);
    sock.pause();
    const rest = buf.subarray(i + 4);
    sock.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (rest.length > 0) sock.unshift(rest);
    const tls = new TLSSocket(sock, { ...ca.tlsSocketOptions(up.host), ALPNProtocols: ["http/1.1"] });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    (agent as unknown as { createConnection: () => Socket }).createConnection = () =>
      tlsConnect({ socket: createConnection({ host: "127.0.0.1", port: up.port }), servername: up.host, secureContext: upstreamTrust, ALPNProtocols: ["http/1.1"] });
    agents.set(tls, agent);
    tls.once("secure", () => inner.emit("connection", tls));
    tls.on("error", () => tls.destroy());
    tls.once("close", () => agent.destroy());
  };
  sock.on("data", onData);
  sock.on("error", () => sock.destroy());
});

outer.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ mode: "floor", port: (outer.address() as AddressInfo).port, caPem: ca.certPem, scrub: false })}\n`);
});
process.on("SIGTERM", () => process.exit(0));
