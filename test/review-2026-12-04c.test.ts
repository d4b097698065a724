/**
 * Review of 9e68c4a (the fixes to the 2026-12-04b review): the Transfer-Encoding rule, linkOnTheWay,
 * the narrowed list of run directories, realPlace's dangling links. Each test found a problem in the
 * code as reviewed, fixed the same day (2026-12-04); the names say what now holds.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { describe, test } from "node:test";
import { planLayout, type LayoutRequest } from "../src/sandbox/layout.js";
import { assertSafeLocation } from "../src/fs/perms.js";
import { responseCoding } from "../src/proxy/response-coding.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { grant, makeVault } from "./helpers.js";
import { getThroughTunnel, loopbackOnly, tableResolver } from "./proxy-harness.js";

const ROOT = realpathSync(mkdtempSync(join(tmpdir(), "lessor-review-c-")));
process.on("exit", () => rmSync(ROOT, { recursive: true, force: true }));
const IS_ROOT = process.getuid?.() === 0;

function baseReq(name: string): Omit<LayoutRequest, "project"> {
  const home = join(ROOT, name, "ownerhome");
  mkdirSync(home, { recursive: true });
  return { home, projectWritable: true, read: [], write: [], protect: [] };
}

describe("linkOnTheWay: a protected path named through a link the agent can change", () => {
  test("the project opened through a symlinked path (/home -> /data/home, ~/proj -> /data/proj): a lessor home named through a link inside the project is refused", () => {
    // linkOnTheWay returns at the FIRST symlink on the way; here that is the project's own link (outside
    // the binds), so the link inside the project, which the agent can repoint, is never looked at.
    const base = join(ROOT, "via-project-link");
    const real = join(base, "data", "proj");
    mkdirSync(real, { recursive: true });
    mkdirSync(join(base, "realhome"));
    symlinkSync(real, join(base, "proj")); // the path the owner works by ($PWD, --project)
    symlinkSync(join(base, "realhome"), join(real, "vault-link")); // inside the writable project
    const req = { ...baseReq("via-project-link"), protect: [{ path: join(base, "proj", "vault-link"), what: "the lessor home" }] };
    // Control: named by the project's real path, it is refused.
    assert.throws(() => planLayout({ ...req, project: real, protect: [{ path: join(real, "vault-link"), what: "the lessor home" }] }), /is named through/);
    assert.throws(() => planLayout({ ...req, project: join(base, "proj") }), /is named through/, "the same link, reached through the project's symlinked path, passes");
  });

  test("a lessor home named by a link outside the project that points at a link inside it is refused", () => {
    const base = join(ROOT, "chain");
    const project = join(base, "proj");
    mkdirSync(project, { recursive: true });
    mkdirSync(join(base, "realhome"));
    symlinkSync(join(base, "realhome"), join(project, "h")); // the agent can repoint this one
    symlinkSync(join(project, "h"), join(base, "lessor-home")); // the owner's, outside
    const req = { ...baseReq("chain"), project, protect: [{ path: join(base, "lessor-home"), what: "the lessor home" }] };
    assert.throws(() => planLayout(req), /is named through/, "the chain goes through a link inside the writable project");
  });

  test("a link inside a read-only [run] read path nested in the writable project is accepted: the agent cannot change it", () => {
    const base = join(ROOT, "ro-nested");
    const project = join(base, "proj");
    mkdirSync(join(project, "conf"), { recursive: true });
    mkdirSync(join(base, "realhome"));
    symlinkSync(join(base, "realhome"), join(project, "conf", "h"));
    const req = { ...baseReq("ro-nested"), project, read: [join(project, "conf")], protect: [{ path: join(project, "conf", "h"), what: "the lessor home" }] };
    assert.doesNotThrow(() => planLayout(req), "conf is bound read-only over the project (a mount point): the link cannot be changed or the directory renamed");
  });
});

describe("writable paths the machine runs", () => {
  test("a writable /usr/local (which holds /usr/local/bin, /usr/local/lib, /usr/local/etc) is refused", () => {
    const req = { ...baseReq("usr-local"), project: null, write: ["/usr/local"] };
    assert.throws(() => planLayout(req), /which the machine runs or reads/, "only paths inside a run directory are refused, not paths holding one");
  });

  test("for root, a writable /var/lib (which holds /var/lib/dpkg, and cloud-init's per-boot scripts) is refused", { skip: IS_ROOT ? false : "needs root" }, () => {
    const req = { ...baseReq("var-lib"), project: null, write: ["/var/lib"] };
    assert.throws(() => planLayout(req), /which the machine runs or reads/);
  });
});

describe("assertSafeLocation: a dangling link with a relative target", () => {
  test("a dangling link whose relative target climbs (..) out of a symlinked directory is resolved from its real directory, so the world-writable directory it points into is checked", () => {
    const base = mkdtempSync(join(ROOT, "place-"));
    const open = join(base, "shared");
    mkdirSync(open);
    chmodSync(open, 0o777); // others can write, not sticky
    mkdirSync(join(open, "deep"), { mode: 0o700 });
    const mine = join(base, "mine");
    mkdirSync(mine, { mode: 0o700 });
    symlinkSync(join(open, "deep"), join(mine, "v"));
    symlinkSync("../later", join(open, "deep", "lessor")); // really <shared>/later; lexically <mine>/later
    const target = join(mine, "v", "lessor");
    let dangling: unknown = null;
    try {
      assertSafeLocation(target, "the lessor home");
    } catch (e) {
      dangling = e;
    }
    mkdirSync(join(open, "later")); // another user, after the check
    assert.throws(() => assertSafeLocation(target, "the lessor home"), /can be written by other users/, "control: refused once the target exists");
    assert.ok(dangling !== null, "through the dangling link, the same place was accepted");
  });
});

describe("response coding: Transfer-Encoding forms Node does not de-chunk", () => {
  // `chunked` followed by a tab is also read to the close by Node 20's parser, but Node reports the value
  // as plain `chunked` (rawHeaders too), so no check of the header can see it: a known limit, in
  // docs/proxy.md ("Not yet"), like any encoding a hostile upstream chooses to hand the agent the value.
  test("`chunked` followed by a no-break space or a trailing comma (which Node reads to the close, framing and all) gets 502, never the echoed credential", async () => {
    const HOST = "api.review-c.example";
    const TOK = "ghp_" + "ReViEwC9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDc";
    const FORMS: Record<string, string> = { "/plain": "chunked", "/tab": "chunked\t", "/nbsp": "chunked\xa0", "/comma": "chunked," };
    const upCa = LocalCa.create({ permitted: [HOST] });
    const up = tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (s) => {
      s.on("error", () => {});
      let buf = "";
      const onData = (d: Buffer): void => {
        buf += d.toString("latin1");
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        s.off("data", onData);
        const path = buf.split(" ")[1] ?? "/plain";
        const auth = /\r\nauthorization:\s*Bearer ([^\r\n]*)/i.exec(buf.slice(0, end))?.[1] ?? "";
        const body = Buffer.from(JSON.stringify({ youSent: auth }), "latin1");
        let framed = "";
        for (let i = 0; i < body.length; i += 7) {
          const part = body.subarray(i, i + 7);
          framed += part.length.toString(16) + "\r\n" + part.toString("latin1") + "\r\n";
        }
        s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: ${FORMS[path] ?? "chunked"}\r\nConnection: close\r\n\r\n${framed}0\r\n\r\n`, "latin1");
      };
      s.on("data", onData);
    });
    await new Promise<void>((r) => up.listen(0, "127.0.0.1", r));
    const upPort = (up.address() as AddressInfo).port;
    const { vault } = await makeVault({ policy: grant("api", ["bot"], ["tok"], [HOST]) });
    const adm = vault.admin();
    await adm.storeSecret({ name: "tok", value: TOK });
    const lease = await adm.requestLease({ agent: "bot", secret: "tok", domains: [HOST] });
    const cred: ProxyCredential = { lease, secret: "global/tok", placeholder: makePlaceholder(TOK), value: TOK, rule: { mode: "placeholder" } };
    const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: [cred], egress: "strict", warn: () => {} });
    egress.start();
    const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1" }) });
    const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly([]) });
    const port = await proxy.listen();
    const ask = (path: string): Promise<string> => getThroughTunnel(port, HOST, upPort, path, cred.placeholder);
    /** The body as the agent can read it: de-chunked as often as it looks chunked, each reading kept. */
    const readings = (answer: string): string => {
      let text = answer.slice(answer.indexOf("\r\n\r\n") + 4);
      const out = [text];
      for (let round = 0; round < 2; round++) {
        const parts: string[] = [];
        let rest = text;
        for (;;) {
          const nl = rest.indexOf("\r\n");
          if (nl < 0) break;
          const n = parseInt(rest.slice(0, nl), 16);
          if (!(n > 0)) break;
          parts.push(rest.slice(nl + 2, nl + 2 + n));
          rest = rest.slice(nl + 2 + n + 2);
        }
        text = parts.join("");
        out.push(text);
      }
      return out.join("\n");
    };
    try {
      const control = await ask("/plain");
      assert.match(control, /^HTTP\/1\.1 200 /);
      assert.ok(readings(control).includes(cred.placeholder), "control: the echo comes back as the placeholder");
      assert.ok(!readings(control).includes(TOK), "control: scrubbed");
      const leaked: string[] = [];
      for (const path of ["/nbsp", "/comma"]) {
        const answer = await ask(path);
        if (readings(answer).includes(TOK)) leaked.push(`${path} (${JSON.stringify(FORMS[path])})`);
        assert.match(answer, /^HTTP\/1\.1 502 /, path);
      }
      assert.deepEqual(leaked, [], `the agent reads the credential through Transfer-Encoding ${leaked.join(", ")}`);
    } finally {
      await proxy.close();
      await egress.close();
      await new Promise<void>((r) => up.close(() => r()));
    }
  });

  test("a repeated `Transfer-Encoding: chunked` (`chunked, chunked`, which RFC 9112 forbids a sender to send) gets 502: refused rather than guessed at", () => {
    // Node's parser would remove the chunking once; the proxy does not pass on what HTTP forbids.
    assert.ok("problem" in responseCoding(200, { "transfer-encoding": "chunked, chunked" }));
    assert.ok(!("problem" in responseCoding(200, { "transfer-encoding": "chunked" })));
    assert.ok(!("problem" in responseCoding(200, { "transfer-encoding": "identity, chunked" })));
  });
});
