/**
 * Review of 43000bb (the git guard moves aside a git file it found empty at the start and that holds
 * something after the run): the after-run check must act on the file it found, not on whatever the
 * agent makes that path name by the end of the run.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { ATTACKERS_POLICY, HAVE_BWRAP, gitInit, gitOk, makeOwner, runAgent } from "./run-harness.js";
import { after } from "node:test";
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

const root = mkdtempSync(join(tmpdir(), "s35-review2-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const KEY = randomBytes(32).toString("hex");
const owner = (name: string) => makeOwner({ root, name, masterKey: KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: "gv" }] });

describe("git guard after the run: an empty include target's path redirected by the agent", { skip: HAVE_BWRAP ? false : "no bwrap" }, () => {
  test("held: the agent cannot swap the include's directory for a link to an owner directory; lessor does not move the owner's file there", async () => {
    const o = await owner("swap");
    gitInit(o.project);
    mkdirSync(join(o.project, "cfg"));
    writeFileSync(join(o.project, "cfg", "local.gitconfig"), ""); // the owner's, empty at the start
    gitOk(o.project, "config", "include.path", "../cfg/local.gitconfig");
    // An owner's file of the same name outside the project, out of the sandbox's reach.
    const victimDir = join(o.base, "victim");
    mkdirSync(victimDir);
    const victim = join(victimDir, "local.gitconfig");
    writeFileSync(victim, "[user]\n\tname = owner\n");
    const r = await runAgent(o.project, o.env, "attacker-one", [], `mv cfg cfg.moved && ln -s ${victimDir} cfg && echo swapped; ls -la cfg/ 2>&1 | head -3`);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, /swapped/, "the agent swapped a pinned directory");
    assert.ok(existsSync(victim), `lessor moved the owner's ${victim} aside: ${r.stderr}`);
    assert.equal(readFileSync(victim, "utf8"), "[user]\n\tname = owner\n");
  });
});

// --- de5a0be: HTTP/2 request trailers read as the head is; legit gRPC trailers still pass ---------

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


test("legit gRPC-style HTTP/2 request trailers (percent-encoded grpc-message, odd values) pass while another lease is held", { timeout: 20_000 }, async () => {
  const r = await rig();
  try {
    const cases: http2.OutgoingHttpHeaders[] = [
      { "grpc-status": "0", "grpc-message": "" },
      { "grpc-status": "13", "grpc-message": "caf%C3%A9%20failed%3A%20100%25%20%25%25 done %" },
      { "grpc-status": "2", "grpc-message": "%E2%9C%93%2", "x-many": ["a", "b%2541", "%"] },
      { "x-bin-bin": Buffer.from("\u0000\u00ff binary").toString("base64"), "x-empty": "" },
    ];
    const failures: string[] = [];
    for (const tr of cases) {
      const before = h2Trailers.length;
      const st = await h2Send(r, { te: "trailers" }, tr);
      await delay(50);
      if (st !== 200 || h2Trailers.length === before) failures.push(`${JSON.stringify(tr)}: status ${st}, ${h2Trailers.length - before} trailer set(s) upstream`);
    }
    assert.deepEqual(failures, [], failures.join("\n"));
    assert.equal(await r.revoked("oth"), false, "a legit trailer revoked another lease");
    assert.equal(await r.revoked("tok"), false);
  } finally {
    await r.close();
  }
});
