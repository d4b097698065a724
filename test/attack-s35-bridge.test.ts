/**
 * Round s35 ("bridge"): the tripwire over HTTP/2 request trailers, compared with the request head's
 * check (docs/proxy.md "Tripwire", "Tripwire in bodies"). A real vault and LeaseEgress, a real
 * ForwardProxy, an HTTP/2 upstream on 127.0.0.1 that records the trailers it gets; names resolve
 * through a table and the connect step fails the test for any address but loopback.
 */
import { test, after } from "node:test";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import type * as tls from "node:tls";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { closeUpstreams, loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes as rnd } from "node:crypto";
import { BIN, runProcess } from "./cli-harness.js";
import { ATTACKERS_POLICY, HAVE_BWRAP, makeOwner } from "./run-harness.js";

const H2HOST = "h2.s35bridge.example"; // covered by tok
const OTHER = "other.s35bridge.example"; // covered by oth only
const TOK = "ghp_" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa12";
const OTH = "sk-oth-" + "CANARYotherHost0123456789abcd";
const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const upCa = LocalCa.create({ permitted: [H2HOST, OTHER] });
const h2Trailers: IncomingHttpHeaders[] = [];
const h2Heads: IncomingHttpHeaders[] = [];
const up2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
up2.on("stream", (stream, h) => {
  stream.on("error", () => {});
  h2Heads.push(h);
  stream.on("data", () => {});
  stream.on("trailers", (t: IncomingHttpHeaders) => h2Trailers.push(t));
  stream.on("end", () => {
    if (stream.destroyed || stream.closed) return;
    stream.respond({ ":status": 200 });
    stream.end("ok");
  });
});
await new Promise<void>((r) => up2.listen(0, "127.0.0.1", r));
const port2 = (up2.address() as AddressInfo).port;
after(async () => {
  await closeUpstreams({ closeAllConnections: () => {}, close: (cb: () => void) => cb() }, up2);
});

const POLICY = grant("api", ["bot"], ["tok"], [H2HOST]) + grant("other", ["bot"], ["oth"], [OTHER]);

interface Rig {
  port: number;
  ph: (name: "tok" | "oth") => string;
  revoked(name: "tok" | "oth"): Promise<boolean>;
  close(): Promise<void>;
}

async function rig(): Promise<Rig> {
  const { vault } = await makeVault({ policy: POLICY });
  const admin = vault.admin();
  const creds: ProxyCredential[] = [];
  const add = async (name: string, value: string, domains: string[]): Promise<void> => {
    await admin.storeSecret({ name, value });
    const lease = await admin.requestLease({ agent: "bot", secret: name, domains });
    creds.push({ lease, secret: `global/${name}`, placeholder: makePlaceholder(value), value, rule: { mode: "placeholder" } });
  };
  await add("tok", TOK, [H2HOST]);
  await add("oth", OTH, [OTHER]);
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [port2], allow: ["127.0.0.0/8"], resolve: tableResolver({ [H2HOST]: "127.0.0.1", [OTHER]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [H2HOST, OTHER] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  return {
    port,
    ph: (name) => creds.find((c) => c.secret === `global/${name}`)!.placeholder,
    revoked: async (name) => {
      const id = creds.find((c) => c.secret === `global/${name}`)!.lease.id;
      return !(await admin.listLeases({ agent: "bot" })).some((l) => l.id === id && l.revokedAt === null);
    },
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

/** One POST over h2 through a fresh tunnel to H2HOST with `headers`, a clean body, and `trailers`. */
async function h2Send(r: Rig, headers: http2.OutgoingHttpHeaders, trailers?: http2.OutgoingHttpHeaders): Promise<number> {
  const s: tls.TLSSocket = await openTunnel(r.port, H2HOST, port2, { alpn: "h2" });
  const session = http2.connect(`https://${H2HOST}`, { createConnection: () => s });
  session.on("error", () => {});
  try {
    return await new Promise<number>((resolve) => {
      const req = session.request({ ":method": "POST", ":path": "/t", ...headers }, trailers ? { waitForTrailers: true } : {});
      let st = 0;
      req.on("response", (h) => (st = Number(h[":status"])));
      req.on("data", () => {});
      req.on("end", () => resolve(st));
      req.on("close", () => resolve(st));
      req.on("error", () => resolve(st));
      if (trailers) req.on("wantTrailers", () => req.sendTrailers(trailers));
      req.end("clean body");
    });
  } finally {
    session.destroy();
  }
}

const everyByte = (m: string): string => [...Buffer.from(m)].map((b) => "%" + b.toString(16).padStart(2, "0")).join("");
/** The forms of a mark `m` the request head's check catches; each a (headers or trailers) field set. */
const forms: [string, (m: string) => http2.OutgoingHttpHeaders][] = [
  ["lower-cased in a field name", (m) => ({ [`x-${m.toLowerCase()}`]: "1" })],
  ["every byte percent-encoded, then percent-encoded again", (m) => ({ "x-a": encodeURIComponent(everyByte(m)) })],
  ["every byte percent-encoded, then twice again", (m) => ({ "x-a": encodeURIComponent(encodeURIComponent(everyByte(m))) })],
];

for (const [secret, label] of [["oth", "another credential's placeholder"], ["value", "the real value"]] as const) {
  test(`HTTP/2 request trailers carrying ${label} are refused as the request head is, in the forms the head's check catches`, { timeout: 25_000 }, async () => {
    const failures: string[] = [];
    for (const [name, form] of forms) {
      // The head's check catches it (the baseline this compares with).
      const r0 = await rig();
      try {
        const m = secret === "oth" ? r0.ph("oth") : OTH;
        const st = await h2Send(r0, form(m));
        if (st !== 403) failures.push(`head, ${name}: status ${st} (the baseline does not hold)`);
      } finally {
        await r0.close();
      }
      const r = await rig();
      try {
        const m = secret === "oth" ? r.ph("oth") : OTH;
        const before = h2Trailers.length;
        const st = await h2Send(r, { te: "trailers" }, form(m));
        await delay(50);
        const got = h2Trailers.slice(before);
        if (st !== 403) failures.push(`trailers, ${name}: status ${st}; ${got.length} trailer set(s) reached the upstream; lease revoked: ${await r.revoked("oth")}`);
      } finally {
        await r.close();
      }
    }
    assert.deepEqual(failures, [], failures.join("\n"));
  });
}

test("HTTP/2 request trailers spanning HEADERS and CONTINUATION frames, the placeholder at the end, do not reach the upstream", { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const ph = r.ph("oth");
    const before = h2Trailers.length;
    const st = await h2Send(r, { te: "trailers" }, { "x-pad": "a".repeat(15_000), "x-pad2": "b".repeat(15_000), "x-a": ph });
    await delay(50);
    const got = JSON.stringify(h2Trailers.slice(before));
    assert.ok(!got.includes(ph), `status ${st}: the mark reached the upstream`);
    assert.notEqual(st, 200);
  } finally {
    await r.close();
  }
});

// --- the bridge at 127.0.0.1:3128 inside lessor run's sandbox ------------------------------------------

const PROBE = `import net from "node:net";
const out = {};
const ask = (bytes, ms = 3000, half = false) => new Promise((resolve) => {
  const s = net.connect({ host: "127.0.0.1", port: 3128 });
  let got = "";
  const t = setTimeout(() => { s.destroy(); resolve(got ? got.split("\\r\\n")[0] : "timeout"); }, ms);
  s.on("connect", () => { s.write(bytes); if (half) s.end(); });
  s.on("data", (d) => (got += d.toString("latin1")));
  s.on("error", (e) => { clearTimeout(t); resolve(got ? got.split("\\r\\n")[0] : "error " + e.code); });
  s.on("close", () => { clearTimeout(t); resolve(got ? got.split("\\r\\n")[0] : "closed"); });
});
const probes = {
  "connect-bridge": "CONNECT 127.0.0.1:3128 HTTP/1.1\\r\\nHost: 127.0.0.1:3128\\r\\n\\r\\n",
  "connect-localhost-bridge": "CONNECT localhost:3128 HTTP/1.1\\r\\nHost: localhost:3128\\r\\n\\r\\n",
  "connect-v6-bridge": "CONNECT [::1]:3128 HTTP/1.1\\r\\nHost: [::1]:3128\\r\\n\\r\\n",
  "connect-v4mapped": "CONNECT [::ffff:127.0.0.1]:3128 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
  "connect-zero": "CONNECT 0.0.0.0:3128 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
  "connect-sock": "CONNECT /run/lessor/proxy.sock HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
  "connect-unix-url": "CONNECT unix:/run/lessor/proxy.sock:443 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
  "get-localhost": "GET http://localhost:3128/ HTTP/1.1\\r\\nHost: localhost:3128\\r\\n\\r\\n",
  "get-loopback": "GET http://127.0.0.1:3128/ HTTP/1.1\\r\\nHost: 127.0.0.1:3128\\r\\n\\r\\n",
  "get-origin-form": "GET / HTTP/1.1\\r\\nHost: 127.0.0.1:3128\\r\\n\\r\\n",
  "get-unix": "GET http://unix:/run/lessor/proxy.sock:/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
  "socks5": "\\x05\\x01\\x00",
  "tls-hello": "\\x16\\x03\\x01\\x00\\x05\\x01\\x00\\x00\\x01\\x00",
  "h2-preface": "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\\x00\\x00\\x00\\x04\\x00\\x00\\x00\\x00\\x00",
  "half-open-connect": ["CONNECT 127.0.0.1:22 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n", true],
};
for (const [k, v] of Object.entries(probes)) out[k] = Array.isArray(v) ? await ask(v[0], 3000, v[1]) : await ask(v);
// The flood: N connections, each with a refused plain request answered and kept alive.
const N = Number(process.argv[2] ?? 0);
const held = [];
let answered = 0, failed = 0;
await Promise.all(Array.from({ length: N }, () => new Promise((resolve) => {
  const s = net.connect({ host: "127.0.0.1", port: 3128 });
  held.push(s);
  const t = setTimeout(() => resolve(), 8000);
  s.on("connect", () => s.write("GET http://refused.invalid/ HTTP/1.1\\r\\nHost: refused.invalid\\r\\n\\r\\n"));
  s.on("data", () => { answered++; clearTimeout(t); resolve(); });
  s.on("error", () => { failed++; clearTimeout(t); resolve(); });
  s.on("close", () => { clearTimeout(t); resolve(); });
})));
out["flood"] = \`opened=\${held.length} answered=\${answered} failed=\${failed} open=\${held.filter((s) => !s.destroyed).length}\`;
out["during-flood"] = await ask("GET http://refused.invalid/ HTTP/1.1\\r\\nHost: refused.invalid\\r\\n\\r\\n", 3000);
for (const s of held) s.destroy();
await new Promise((r) => setTimeout(r, 1000));
out["after-flood"] = await ask("GET http://refused.invalid/ HTTP/1.1\\r\\nHost: refused.invalid\\r\\n\\r\\n", 5000);
console.log("PROBES=" + JSON.stringify(out));
`;

const sbxRoot = mkdtempSync(join(tmpdir(), "lessor-s35-bridge-"));
after(() => rmSync(sbxRoot, { recursive: true, force: true }));

test("the bridge abused from inside the sandbox: CONNECT to itself or the proxy's socket, absolute-form to localhost:3128, non-HTTP bytes, half-open, and a flood of kept-alive connections past the run's open-file limit: nothing is let through, and the run serves again after the flood", { skip: !HAVE_BWRAP && "no bwrap", timeout: 60_000 }, async (t) => {
  const o = await makeOwner({ root: sbxRoot, name: "flood", masterKey: rnd(32).toString("hex"), policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: "v-" + rnd(12).toString("hex") }] });
  writeFileSync(join(o.project, "probe.mjs"), PROBE);
  // A low open-file limit (the owner's ulimit; lessor run and the sandbox inherit it) makes the flood cheap.
  const r = await runProcess("prlimit", ["--nofile=256:256", process.execPath, BIN, "run", "--agent", "attacker-flood", "--", process.execPath, "probe.mjs", "400"], { env: o.env, cwd: o.project, timeoutMs: 55_000 });
  const m = /^PROBES=(.*)$/m.exec(r.stdout);
  assert.ok(m, `no probes: code ${r.code}; ${r.stderr.slice(-2000)}`);
  const p = JSON.parse(m[1]!) as Record<string, string>;
  t.diagnostic(JSON.stringify(p));
  const through = Object.entries(p).filter(([k, v]) => !k.includes("flood") && /^HTTP\/1\.[01] 2\d\d/.test(v));
  assert.deepEqual(through, [], JSON.stringify(p));
  assert.match(p["after-flood"]!, /^HTTP\/1\.1 403/, JSON.stringify(p));
  assert.equal(r.code, 0, `${JSON.stringify(p)}\n${r.stderr.slice(-2000)}`);
});
