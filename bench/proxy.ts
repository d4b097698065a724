/**
 * Proxy benchmark (the injecting forward proxy). Prints one JSON line per figure, each beside its
 * baseline measured in the same run: the same client talking HTTPS straight to the upstream.
 *
 *   npm run bench:proxy            (or: npx tsx bench/proxy.ts [--quick])
 *   npm run build:cli first for the `lessor run` start-up lines (they use dist/bin/lessor.cjs).
 *
 * Processes, as in use: the upstream (bench/proxy-upstream.ts: HTTPS on 127.0.0.1 for
 * api.bench.test, HTTP/1.1 and HTTP/2; it answers 401 unless the request carries the real credential),
 * two proxies (bench/proxy-server.ts: a ForwardProxy that intercepts that host, adds the credential
 * and scrubs every response for it), a floor (below), and the client (this process). The two
 * proxies differ in their egress policy:
 *   fixed   the credential added to every request, no vault: the proxy's own cost;
 *   leased  lessor run's policy (LeaseEgress) over an in-process vault in a temp home (SQLite): the
 *           client sends a placeholder, and per request the proxy uses the lease through the vault
 *           (access_secret: counted and audited), swaps the placeholder for the value, and reports the
 *           request (record_proxy_requests: an audit event, batched). This is what `lessor run` pays.
 * The floor (bench/proxy-floor.ts, HTTP/1.1 only) is the least a Node.js intercepting proxy can do for
 * the same job: node:http inside the terminated TLS, `http.request` upstream, the answer piped back, no
 * policy, guard, scrubbing or limits. Its lines (suffix `_floor`, no goal) show how much of the proxied
 * cost is Node's own on this machine; what lies between it and `fixed` is lessor's.
 * Direct and proxied use the same client code and keep-alive connections; through a proxy each
 * connection is a CONNECT tunnel with TLS to the proxy inside. Direct, fixed, leased and floor rounds
 * alternate so that the VM's drift hits all alike.
 *
 * Before measuring, the bench checks that the leased proxy really adds the credential: a request with
 * the placeholder must get 200 and one without it 401 (so a 200 means the upstream saw the real value;
 * every measured request must be a 200 too). At the end the vault's use count of the lease must equal
 * the requests sent through the leased proxy plus the lease's own first use (a `leased_check` line).
 *
 * Figures, per protocol (h1; h2 when the proxy offers it in ALPN, else a `skipped` line; the upstream
 * speaks both, so the proxy's upstream leg follows the client's protocol), each for the fixed proxy
 * and again with the suffix `_leased` (e.g. h1_p50_leased) for the leased one (a `proxy` field says which):
 *   <p>_p50, <p>_p99        latency of one request at a time, ms        goal: added p50 <= 1 ms
 *   <p>_throughput          requests/s with 8 in flight                 goal: proxied >= 0.5x direct
 *   <p>_stream              one 100 MiB response in 64 KiB writes, MiB/s goal: proxied >= 0.7x direct
 *   <p>_new_connection      one request on a new connection (TCP, TLS; proxied also CONNECT and the
 *                           proxy's own upstream TLS), p50 ms             no goal: what a client that
 *                           does not keep connections alive (curl per call) pays each time
 * and `lessor run --agent bench -- /bin/true` start-up against `node -e 0`, in the sandbox (bwrap; with
 * the default network, that includes starting run's injecting proxy and its bridge) and with
 * --no-sandbox (no goal set; the ratio is the figure). `skipped` lines say why a figure is missing.
 *
 * The proxied lines carry the proxy process's CPU (Linux /proc): per request, or per MiB streamed,
 * and in cores; near 1 core means its one JavaScript thread is the limit. The throughput and stream
 * lines also set the CPU of the whole path beside the direct one (client and upstream, plus the proxy):
 * `proxy_vs_direct_cpu` and `cpu_ceiling`, see cpuSide(). On a machine whose few cores the client, the
 * upstream and the proxy share, the ratio cannot pass cpu_ceiling however the proxy is scheduled.
 *
 * LESSOR_BENCH_PROXY_ARGS: extra node arguments for the proxy processes, split on spaces, e.g.
 * "--cpu-prof --cpu-prof-dir=/tmp/prof" (each profile is written when its proxy exits at the end; the
 * proxies' pids are said on stderr, and a profile's file name holds its pid).
 * LESSOR_BENCH_NO_SCRUB=1: the fixed proxy does not scrub responses, to see what scrubbing costs (the
 * leased one always scrubs, as lessor run does).
 * LESSOR_BENCH_LEASED_TMP: the directory the leased proxy's temp home is made in (default: the system's
 * temp dir); e.g. /dev/shm (tmpfs, where fsync costs next to nothing) to see what the vault's durable
 * commits cost per request.
 * LESSOR_BENCH_ONLY: a comma-separated list of figure groups to run (latency, throughput, stream,
 * connect, startup); default all. With a profile, one group at a time shows what that figure pays for.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomInt } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import * as http2 from "node:http2";
import * as https from "node:https";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import * as tls from "node:tls";
import { fileURLToPath } from "node:url";
import { initHome } from "../src/config/open-vault.js";
import { cpuMs } from "./cpu.js";

const quick = process.argv.includes("--quick");
const ROUNDS = 3; // direct and proxied alternate, ROUNDS times each
const LATENCY_N = quick ? 200 : 800; // requests per latency round
const THROUGHPUT_MS = quick ? 500 : 1500; // length of a throughput round
const CONCURRENCY = 8;
/** A request that takes this long fails the bench instead of hanging it. */
const REQUEST_TIMEOUT_MS = 30_000;
const STREAM_ROUNDS = quick ? 1 : 3;
const STARTUP_RUNS = quick ? 5 : 11;
const CONNECT_N = quick ? 5 : 15; // requests on a fresh connection, per side
const here = (p: string): string => fileURLToPath(new URL(p, import.meta.url));
const proxyArgs = process.env.LESSOR_BENCH_PROXY_ARGS?.split(" ").filter((a) => a !== "") ?? [];
const only = process.env.LESSOR_BENCH_ONLY?.split(",").map((x) => x.trim());
/** LESSOR_BENCH_NO_SCRUB=1: the proxy does not scrub responses (to see what scrubbing costs; lessor run always scrubs). */
const noScrub = process.env.LESSOR_BENCH_NO_SCRUB === "1";
const wants = (group: "latency" | "throughput" | "stream" | "connect" | "startup"): boolean => only === undefined || only.includes(group);

/** The credential: the upstream accepts only this; the direct client sends it, the proxies add it. */
const SECRET = "ghp_" + Array.from({ length: 36 }, () => "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[randomInt(62)]).join("");

function emit(o: Record<string, unknown>): void {
  // The floor is a measuring stick, not lessor: the goals are not its to meet.
  const line = o.proxy === "floor" ? { ...o, goal: null, met: undefined } : o;
  process.stdout.write(`${JSON.stringify({ bench: "proxy", ...line })}\n`);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};
const round = (x: number, digits = 2): number => +x.toFixed(digits);

// --- the processes ------------------------------------------------------------------------------

interface Upstream {
  host: string;
  port: number;
  caPem: string;
  streamBytes: number;
}

/** A helper process: `ready` is the JSON line it prints when ready, `later` the lines after it. */
interface Helper<T> {
  proc: ChildProcess;
  ready: Promise<T>;
  later: unknown[];
}

/** Starts a helper process (see {@link Helper}). */
function start<T>(args: string[], env: NodeJS.ProcessEnv): Helper<T> {
  const proc = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"], env });
  const later: unknown[] = [];
  const ready = new Promise<T>((resolve, reject) => {
    let first = true;
    createInterface({ input: proc.stdout! }).on("line", (l) => {
      // V8 tracing flags in LESSOR_BENCH_PROXY_ARGS (--trace-gc, --trace-deopt) print to stdout too.
      if (!l.startsWith("{")) return void process.stderr.write(`[${proc.pid}] ${l}\n`);
      if (first) resolve(JSON.parse(l) as T);
      else later.push(JSON.parse(l));
      first = false;
    });
    proc.once("exit", (c) => reject(new Error(`${args.at(-1)} exited ${c} before it was ready`)));
  });
  return { proc, ready, later };
}

/** Stops a helper and waits for its exit (and so for the lines it printed on its way out). */
async function stop(h: Helper<unknown> | undefined): Promise<void> {
  const c = h?.proc;
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((r) => c.once("close", r));
  c.kill("SIGTERM");
  await exited;
}

/** CPU ms used so far by this process (the client) and the processes `pids`; NaN when one cannot be read. */
function cpuOfAll(pids: (number | undefined)[]): number {
  const self = process.cpuUsage();
  let ms = (self.user + self.system) / 1000;
  for (const pid of pids) ms += cpuMs(pid) ?? NaN;
  return ms;
}

/**
 * The CPU side of a proxied figure beside its direct one. Direct, the client and the upstream do the
 * work; proxied, the proxy too. `proxy_vs_direct_cpu` (the proxy's CPU per request over the client's
 * and upstream's together, direct) holds on any machine: at 1 or below, a machine with a core for each
 * process would see proxied throughput at 0.5x direct or better. `cpu_ceiling` (direct CPU per unit
 * over proxied CPU per unit, all three processes) is the most the ratio can reach on a machine whose
 * cores all three share, when every process is busy: what this machine allows.
 */
function cpuSide(direct: { cpu: number; n: number }, proxied: { all: number; proxy: number; n: number }, per: number, unit: string): Record<string, number> {
  const d = (direct.cpu * per) / direct.n;
  const x = (proxied.all * per) / proxied.n;
  const p = (proxied.proxy * per) / proxied.n;
  if (![d, x, p].every(Number.isFinite)) return {};
  return { [`direct_cpu_${unit}`]: round(d, 1), [`proxied_cpu_${unit}`]: round(x, 1), proxy_vs_direct_cpu: round(p / d), cpu_ceiling: round(d / x) };
}

/** Runs `fn` and returns its result with the CPU ms `pid` used meanwhile and the wall ms. */
async function withCpu<T>(pid: number | undefined, fn: () => Promise<T>): Promise<{ value: T; cpuMs: number | undefined; wallMs: number }> {
  const c0 = cpuMs(pid);
  const t0 = performance.now();
  const value = await fn();
  const wallMs = performance.now() - t0;
  const c1 = cpuMs(pid);
  return { value, cpuMs: c0 === undefined || c1 === undefined ? undefined : c1 - c0, wallMs };
}

// --- connections --------------------------------------------------------------------------------

/** Opens `CONNECT target` on the proxy; resolves to the raw socket once it answered 200. */
function connectTunnel(proxyPort: number, target: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(proxyPort, "127.0.0.1");
    socket.setNoDelay(true);
    socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const i = buf.indexOf("\r\n\r\n");
      if (i < 0) return;
      socket.off("data", onData);
      socket.pause(); // removing the listener does not stop the flow: the rest would be lost
      const rest = buf.subarray(i + 4);
      if (rest.length > 0) socket.unshift(rest);
      const head = buf.subarray(0, i).toString("latin1");
      if (/^HTTP\/1\.1 200 /.test(head)) resolve(socket);
      else {
        socket.destroy();
        reject(new Error(`CONNECT ${target} answered: ${head.split("\r\n")[0]}`));
      }
    };
    socket.on("data", onData);
    socket.once("error", reject);
  });
}

/** How a client reaches the upstream: straight, or through a CONNECT tunnel and the proxy's TLS. */
interface Route {
  via: "direct" | "fixed" | "leased" | "floor";
  /** A TLS connection to the upstream (or to the proxy standing in for it), ALPN `alpn`. */
  tls(alpn: string[]): Promise<tls.TLSSocket>;
  /** Headers the client sends itself: direct, it holds the credential; fixed, the proxy adds it; leased, a placeholder. */
  headers: Record<string, string>;
  /** Requests answered 200 on this route so far (the leased proxy's use count is checked against it). */
  ok: number;
}

function secureConnect(opts: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect(opts);
    s.once("secureConnect", () => resolve(s));
    s.once("error", reject);
  });
}

function directRoute(up: Upstream): Route {
  return {
    via: "direct",
    tls: (alpn) => secureConnect({ host: "127.0.0.1", port: up.port, servername: up.host, ca: up.caPem, ALPNProtocols: alpn }).then((s) => (s.setNoDelay(true), s)),
    headers: { authorization: `Bearer ${SECRET}` },
    ok: 0,
  };
}

/** What bench/proxy-server.ts (and bench/proxy-floor.ts) prints when ready. */
interface ProxyReady {
  mode: "fixed" | "leased" | "floor";
  port: number;
  caPem: string;
  scrub: boolean;
  /** Leased: what the client sends instead of the credential. */
  placeholder?: string;
}

/** Through a proxy; `withPlaceholder` false (leased) sends no credential at all, for the 401 check. */
function proxiedRoute(up: Upstream, proxy: ProxyReady, withPlaceholder = true): Route {
  return {
    via: proxy.mode,
    tls: async (alpn) => {
      const socket = await connectTunnel(proxy.port, `${up.host}:${up.port}`);
      return secureConnect({ socket, servername: up.host, ca: proxy.caPem, ALPNProtocols: alpn });
    },
    headers: proxy.placeholder !== undefined && withPlaceholder ? { authorization: `Bearer ${proxy.placeholder}` } : {},
    ok: 0,
  };
}

// --- clients, one kind per protocol -------------------------------------------------------------

/** A keep-alive client of one protocol over one route. `get` resolves to the body's length; any status but 200 rejects. */
interface Client {
  get(path: string): Promise<number>;
  /** One request; its status, whatever it is. */
  status(path: string): Promise<number>;
  close(): void;
}

/** HTTP/1.1: an https.Agent with up to `conc` keep-alive connections, each made by the route. */
function h1Client(up: Upstream, route: Route, conc: number): Client {
  const agent = new https.Agent({ keepAlive: true, maxSockets: conc });
  (agent as unknown as { createConnection: unknown }).createConnection = (_o: unknown, done: (err: Error | null, s?: Socket) => void): undefined => {
    route.tls(["http/1.1"]).then((s) => done(null, s), (e: Error) => done(e));
    return undefined;
  };
  const headers = { ...route.headers, host: `${up.host}:${up.port}` };
  const request = (path: string): Promise<{ status: number; n: number }> =>
    new Promise((resolve, reject) => {
      const req = https.request({ host: up.host, port: up.port, path, agent, headers }, (res) => {
        let n = 0;
        res.on("data", (c: Buffer) => (n += c.length));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, n }));
        res.on("error", reject);
      });
      req.on("error", reject);
      req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`${route.via} h1 ${path}: no answer in ${REQUEST_TIMEOUT_MS} ms`)));
      req.end();
    });
  return {
    get: async (path) => {
      const { status, n } = await request(path);
      if (status !== 200) throw new Error(`${route.via} h1 ${path}: status ${status}`);
      route.ok++;
      return n;
    },
    status: async (path) => (await request(path)).status,
    close: () => agent.destroy(),
  };
}

/** HTTP/2: one session (made lazily by the route), requests multiplexed on it as h2 clients do. */
function h2Client(up: Upstream, route: Route): Client {
  let session: Promise<http2.ClientHttp2Session> | undefined;
  const open = async (): Promise<http2.ClientHttp2Session> => {
    const sock = await route.tls(["h2"]);
    if (sock.alpnProtocol !== "h2") throw new Error(`${route.via}: the server did not pick h2 (ALPN ${String(sock.alpnProtocol)})`);
    const s = http2.connect(`https://${up.host}:${up.port}`, { createConnection: () => sock });
    s.on("error", () => {});
    return s;
  };
  const request = async (path: string): Promise<{ status: number; n: number; rst: number | undefined }> => {
    const s = await (session ??= open());
    return new Promise((resolve, reject) => {
      const req = s.request({ ":path": path, ...route.headers });
      let status = 0;
      let n = 0;
      req.on("response", (h) => (status = Number(h[":status"])));
      req.on("data", (c: Buffer) => (n += c.length));
      req.on("end", () => resolve({ status, n, rst: req.rstCode }));
      req.on("error", reject);
      req.setTimeout(REQUEST_TIMEOUT_MS, () => {
        req.close(http2.constants.NGHTTP2_CANCEL);
        reject(new Error(`${route.via} h2 ${path}: no answer in ${REQUEST_TIMEOUT_MS} ms`));
      });
      req.end();
    });
  };
  return {
    get: async (path) => {
      const { status, n, rst } = await request(path);
      if (status !== 200) throw new Error(`${route.via} h2 ${path}: status ${status} (stream reset, code ${rst})`);
      route.ok++;
      return n;
    },
    status: async (path) => (await request(path)).status,
    close: () => void session?.then((s) => s.destroy()),
  };
}

/** Whether the proxy offers h2 to its clients (ALPN on an intercepted tunnel). */
async function proxySpeaksH2(route: Route): Promise<boolean> {
  const s = await route.tls(["h2", "http/1.1"]);
  const h2 = s.alpnProtocol === "h2";
  s.destroy();
  return h2;
}

// --- measurements -------------------------------------------------------------------------------

/** `n` requests one at a time; the latency of each, ms. */
async function latencies(c: Client, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await c.get(`/v1/items?i=${i}`);
    out.push(performance.now() - t0);
  }
  return out;
}

/** `conc` loops of requests for `ms`; requests per second. */
async function throughput(c: Client, conc: number, ms: number): Promise<{ rate: number; n: number }> {
  let n = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  await Promise.all(
    Array.from({ length: conc }, async () => {
      while (performance.now() < end) {
        await c.get("/v1/items");
        n++;
      }
    }),
  );
  return { rate: n / ((performance.now() - t0) / 1000), n };
}

const MiB = 1024 * 1024;

/** One /stream response; MiB/s. */
async function streamed(c: Client, expect: number): Promise<number> {
  const t0 = performance.now();
  const n = await c.get("/stream");
  if (n !== expect) throw new Error(`/stream gave ${n} bytes, not ${expect}`);
  return n / MiB / ((performance.now() - t0) / 1000);
}

/** One proxy under test: how the client reaches the upstream through it, and its process. */
interface Proxied {
  route: Route;
  pid: number | undefined;
  /** Whether it scrubs responses. */
  scrub: boolean;
}

interface Setup {
  up: Upstream;
  /** The upstream process (its CPU is counted in the cpu_ceiling figures). */
  upPid: number | undefined;
  direct: Route;
  /** Fixed, leased, then (HTTP/1.1 only) the floor. */
  proxies: Proxied[];
}

/** A figure's name for a proxy mode: the fixed proxy keeps the plain name, the leased one gets `_leased`. */
const named = (name: string, p: Proxied): string => (p.route.via === "fixed" ? name : `${name}_${p.route.via}`);

/** The figures of one protocol: latency, throughput, stream, direct and each proxy alternating. */
async function protocolFigures(name: "h1" | "h2", s: Setup, make: (r: Route) => Client): Promise<void> {
  const d = make(s.direct);
  const xs = s.proxies.map((p) => make(p.route));
  try {
    // Warm up: connections made, leaf minted, JIT warm.
    for (const c of [d, ...xs]) await throughput(c, CONCURRENCY, quick ? 200 : 500);

    if (wants("latency")) await latencyFigures(name, s, d, xs);
    if (wants("throughput")) await throughputFigure(name, s, d, xs);
    if (wants("stream")) await streamFigure(name, s, d, xs);
    if (wants("connect")) await connectFigure(name, s, make);
  } finally {
    for (const c of [d, ...xs]) c.close();
  }
}

/** One request at a time: p50 and p99 lines per proxy. */
async function latencyFigures(name: string, s: Setup, d: Client, xs: Client[]): Promise<void> {
  const ld: number[] = [];
  const lx: number[][] = xs.map(() => []);
  const lxCpu = xs.map(() => 0);
  for (let r = 0; r < ROUNDS; r++) {
    ld.push(...(await latencies(d, LATENCY_N)));
    for (const [i, x] of xs.entries()) {
      const m = await withCpu(s.proxies[i]!.pid, () => latencies(x, LATENCY_N));
      lx[i]!.push(...m.value);
      lxCpu[i]! += m.cpuMs ?? NaN;
    }
  }
  for (const [i, p] of s.proxies.entries()) {
    const l = lx[i]!;
    const p50 = { direct: quantile(ld, 0.5), proxied: quantile(l, 0.5) };
    const p99 = { direct: quantile(ld, 0.99), proxied: quantile(l, 0.99) };
    const added50 = p50.proxied - p50.direct;
    const cpuPerReq = Number.isNaN(lxCpu[i]) ? {} : { proxy_cpu_us_per_req: round((lxCpu[i]! * 1000) / l.length, 0) };
    emit({ figure: named(`${name}_p50`, p), proxy: p.route.via, unit: "ms", direct: round(p50.direct, 3), proxied: round(p50.proxied, 3), added: round(added50, 3), ratio: round(p50.proxied / p50.direct), goal: "added <= 1 ms", met: added50 <= 1, requests: l.length, ...cpuPerReq });
    emit({ figure: named(`${name}_p99`, p), proxy: p.route.via, unit: "ms", direct: round(p99.direct, 3), proxied: round(p99.proxied, 3), added: round(p99.proxied - p99.direct, 3), ratio: round(p99.proxied / p99.direct), goal: null, requests: l.length });
  }
}

/** CONCURRENCY requests in flight: requests/s, median of the rounds, per proxy. */
async function throughputFigure(name: string, s: Setup, d: Client, xs: Client[]): Promise<void> {
  const td: number[] = [];
  const dc = { cpu: 0, n: 0 };
  const tx = xs.map(() => ({ rates: [] as number[], cpu: 0, wall: 0, n: 0, all: 0 }));
  for (let r = 0; r < ROUNDS; r++) {
    const d0 = cpuOfAll([s.upPid]);
    const dr = await throughput(d, CONCURRENCY, THROUGHPUT_MS);
    td.push(dr.rate);
    dc.cpu += cpuOfAll([s.upPid]) - d0;
    dc.n += dr.n;
    for (const [i, x] of xs.entries()) {
      const a0 = cpuOfAll([s.upPid, s.proxies[i]!.pid]);
      const m = await withCpu(s.proxies[i]!.pid, () => throughput(x, CONCURRENCY, THROUGHPUT_MS));
      const t = tx[i]!;
      t.all += cpuOfAll([s.upPid, s.proxies[i]!.pid]) - a0;
      t.rates.push(m.value.rate);
      t.cpu += m.cpuMs ?? NaN;
      t.wall += m.wallMs;
      t.n += m.value.n;
    }
  }
  const direct = median(td);
  for (const [i, p] of s.proxies.entries()) {
    const t = tx[i]!;
    const proxied = median(t.rates);
    const cpu = Number.isNaN(t.cpu) ? {} : { proxy_cpu_us_per_req: round((t.cpu * 1000) / t.n, 0), proxy_cpu_cores: round(t.cpu / t.wall) };
    const side = cpuSide(dc, { all: t.all, proxy: t.cpu, n: t.n }, 1000, "us_per_req");
    emit({ figure: named(`${name}_throughput`, p), proxy: p.route.via, unit: "req/s", concurrency: CONCURRENCY, direct: Math.round(direct), proxied: Math.round(proxied), ratio: round(proxied / direct), goal: "ratio >= 0.5", met: proxied / direct >= 0.5, ...cpu, ...side });
  }
}

/** One 100 MiB response at a time: MiB/s, median of the rounds, per proxy. */
async function streamFigure(name: string, s: Setup, d: Client, xs: Client[]): Promise<void> {
  const sd: number[] = [];
  const dc = { cpu: 0, n: 0 };
  const sx = xs.map(() => ({ rates: [] as number[], cpu: 0, wall: 0, all: 0 }));
  const mib = s.up.streamBytes / MiB;
  for (let r = 0; r < STREAM_ROUNDS; r++) {
    const d0 = cpuOfAll([s.upPid]);
    sd.push(await streamed(d, s.up.streamBytes));
    dc.cpu += cpuOfAll([s.upPid]) - d0;
    dc.n += mib;
    for (const [i, x] of xs.entries()) {
      const a0 = cpuOfAll([s.upPid, s.proxies[i]!.pid]);
      const m = await withCpu(s.proxies[i]!.pid, () => streamed(x, s.up.streamBytes));
      const t = sx[i]!;
      t.all += cpuOfAll([s.upPid, s.proxies[i]!.pid]) - a0;
      t.rates.push(m.value);
      t.cpu += m.cpuMs ?? NaN;
      t.wall += m.wallMs;
    }
  }
  const direct = median(sd);
  for (const [i, p] of s.proxies.entries()) {
    const t = sx[i]!;
    const proxied = median(t.rates);
    const scpu = Number.isNaN(t.cpu) ? {} : { proxy_cpu_ms_per_mib: round(t.cpu / (STREAM_ROUNDS * mib), 3), proxy_cpu_cores: round(t.cpu / t.wall) };
    const side = cpuSide(dc, { all: t.all, proxy: t.cpu, n: STREAM_ROUNDS * mib }, 1, "ms_per_mib");
    emit({ figure: named(`${name}_stream`, p), proxy: p.route.via, unit: "MiB/s", bytes: s.up.streamBytes, chunk: 64 * 1024, scrub: p.scrub, direct: Math.round(direct), proxied: Math.round(proxied), ratio: round(proxied / direct), goal: "ratio >= 0.7", met: proxied / direct >= 0.7, ...scpu, ...side });
  }
}

/** A request on a fresh connection each time (a client without keep-alive): p50, ms, per proxy. */
async function connectFigure(name: string, s: Setup, make: (r: Route) => Client): Promise<void> {
  const once = async (r: Route): Promise<number> => {
    const c = make(r);
    try {
      const t0 = performance.now();
      await c.get("/v1/items");
      return performance.now() - t0;
    } finally {
      c.close();
    }
  };
  const cd: number[] = [];
  const cx = s.proxies.map(() => ({ ms: [] as number[], cpu: 0 }));
  for (let n = 0; n < CONNECT_N; n++) {
    cd.push(await once(s.direct));
    for (const [i, p] of s.proxies.entries()) {
      const m = await withCpu(p.pid, () => once(p.route));
      cx[i]!.ms.push(m.value);
      cx[i]!.cpu += m.cpuMs ?? NaN;
    }
  }
  const direct = median(cd);
  for (const [i, p] of s.proxies.entries()) {
    const proxied = median(cx[i]!.ms);
    const cpu = Number.isNaN(cx[i]!.cpu) ? {} : { proxy_cpu_ms_per_connection: round(cx[i]!.cpu / CONNECT_N, 1) };
    emit({ figure: named(`${name}_new_connection`, p), proxy: p.route.via, unit: "ms", direct: round(direct, 2), proxied: round(proxied, 2), added: round(proxied - direct, 2), ratio: round(proxied / direct), goal: null, connections: CONNECT_N, ...cpu });
  }
}

/**
 * The bench is worthless if the leased proxy's requests are refusals or go out without the credential:
 * through it, a request with the placeholder must get 200 (the upstream saw the real value: it answers
 * 401 to anything else), and one without must get 401 (the upstream does check).
 */
async function checkLeased(up: Upstream, leased: ProxyReady): Promise<void> {
  const bare = h1Client(up, proxiedRoute(up, leased, false), 1);
  const withPlaceholder = h1Client(up, proxiedRoute(up, leased), 1);
  try {
    const without = await bare.status("/v1/items");
    if (without !== 401) throw new Error(`leased check: a request without the placeholder got ${without}, not the upstream's 401: the upstream does not check the credential`);
    const got = await withPlaceholder.status("/v1/items");
    if (got !== 200) throw new Error(`leased check: a request with the placeholder got ${got}, not 200: the leased proxy did not add the real credential`);
  } finally {
    bare.close();
    withPlaceholder.close();
  }
}

// --- lessor run start-up ------------------------------------------------------------------------

const BIN = here("../dist/bin/lessor.cjs");

function time(cmd: string[], env: NodeJS.ProcessEnv, cwd: string): { ms: number; status: number | null; stderr: string } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd[0]!, cmd.slice(1), { env, cwd, stdio: ["ignore", "pipe", "pipe"] });
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, status: r.status, stderr: r.stderr.toString() };
}

/** `lessor run -- /bin/true` beside `node -e 0`, interleaved, median of STARTUP_RUNS each. */
async function startupFigures(): Promise<void> {
  const rows: { figure: string; extra: string[] }[] = [
    { figure: "run_startup_sandbox", extra: [] },
    { figure: "run_startup_no_sandbox", extra: ["--no-sandbox"] },
  ];
  if (!existsSync(BIN)) {
    for (const r of rows) emit({ figure: r.figure, skipped: "dist/bin/lessor.cjs is missing: npm run build:cli first" });
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "lessor-bench-proxy-"));
  try {
    const home = join(dir, "home");
    // The sandbox refuses /tmp itself as the project directory: give it one of its own.
    const project = join(dir, "project");
    mkdirSync(project);
    const env = { PATH: process.env.PATH, HOME: process.env.HOME, LESSOR_HOME: home };
    await initHome({ home, env });
    const hasBwrap = spawnSync("bwrap", ["--version"], { stdio: "ignore" }).error === undefined;
    for (const r of rows) {
      if (r.extra.length === 0 && !hasBwrap) {
        emit({ figure: r.figure, skipped: "bwrap is not installed: no sandbox to time" });
        continue;
      }
      const cmd = [process.execPath, BIN, "run", "--agent", "bench", ...r.extra, "--", "/bin/true"];
      const first = time(cmd, env, project);
      if (first.status !== 0) {
        emit({ figure: r.figure, skipped: `lessor run exited ${first.status}: ${first.stderr.trim().split("\n").at(-1) ?? ""}` });
        continue;
      }
      const a: number[] = [];
      const b: number[] = [];
      for (let i = 0; i < STARTUP_RUNS; i++) {
        b.push(time([process.execPath, "-e", "0"], env, project).ms);
        a.push(time(cmd, env, project).ms);
      }
      const ms = median(a);
      const base = median(b);
      emit({ figure: r.figure, unit: "ms", baseline: "node -e 0", baseline_ms: round(base, 1), ms: round(ms, 1), ratio: round(ms / base), goal: null, runs: STARTUP_RUNS, command: "lessor run --agent bench " + [...r.extra, "-- /bin/true"].join(" ") });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- main ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const upstream = start<Upstream>(["--import", "tsx", here("./proxy-upstream.ts")], { PATH: process.env.PATH, LESSOR_BENCH_SECRET: SECRET });
  const helpers: Helper<ProxyReady>[] = [];
  let leasedRoute: Route | undefined;
  try {
    const up = await upstream.ready;
    const env = { PATH: process.env.PATH, LESSOR_BENCH_UPSTREAM: JSON.stringify(up), LESSOR_BENCH_SECRET: SECRET, LESSOR_BENCH_NO_SCRUB: noScrub ? "1" : "0", LESSOR_BENCH_LEASED_TMP: process.env.LESSOR_BENCH_LEASED_TMP ?? "" };
    for (const mode of [[], ["--leased"]]) helpers.push(start<ProxyReady>([...proxyArgs, "--import", "tsx", here("./proxy-server.ts"), ...mode], env));
    helpers.push(start<ProxyReady>([...proxyArgs, "--import", "tsx", here("./proxy-floor.ts")], env));
    const ready = await Promise.all(helpers.map((h) => h.ready));
    process.stderr.write(`bench/proxy: proxy pids: ${ready.map((r, i) => `${r.mode} ${helpers[i]!.proc.pid}`).join(", ")}\n`);
    await checkLeased(up, ready[1]!);
    const proxies = ready.map((r, i): Proxied => ({ route: proxiedRoute(up, r), pid: helpers[i]!.proc.pid, scrub: r.scrub }));
    leasedRoute = proxies[1]!.route;
    const s: Setup = { up, upPid: upstream.proc.pid, direct: directRoute(up), proxies };

    await protocolFigures("h1", s, (r) => h1Client(up, r, CONCURRENCY));
    // The floor speaks HTTP/1.1 only.
    const h2s: Setup = { ...s, proxies: proxies.filter((p) => p.route.via !== "floor") };
    if (await proxySpeaksH2(proxies[0]!.route)) await protocolFigures("h2", h2s, (r) => h2Client(up, r));
    else emit({ figure: "h2", skipped: "the proxy does not speak h2 yet" });
  } finally {
    for (const h of [...helpers, upstream]) await stop(h);
  }
  // Every request through the leased proxy took one use of the lease: the 200s counted, the check's
  // request with the placeholder, and the use leaseAndAccess made when the lease was taken.
  const uses = (helpers[1]?.later.find((l) => typeof (l as { leaseUses?: unknown }).leaseUses === "number") as { leaseUses: number } | undefined)?.leaseUses;
  const expected = (leasedRoute?.ok ?? 0) + 2;
  emit({ figure: "leased_check", lease_uses: uses ?? null, expected, met: uses === expected });
  if (uses !== expected) throw new Error(`the vault counted ${uses ?? "no"} uses of the leased proxy's lease, not ${expected}: some requests did not go through the lease`);
  if (wants("startup")) await startupFigures();
}

await main();
