/**
 * Attacks on lessor's injecting proxy when several agents are served at once: two `lessor run`s (or
 * `lessor proxy`s) for different agents live on one machine, under one owner. Each proxy serves one
 * agent; what they share is the owner's machine (temporary directories, loopback), the vault and the
 * audit trail. The question each test asks: can agent B get agent A's credential injected, trip A's
 * lease, or be audited as A (or make A's requests be audited as B)?
 *
 * Real parts: real `lessor run` in a bubblewrap sandbox, real `lessor proxy`, real TLS to a loopback
 * HTTPS upstream that records what it receives (the guard allows 127.0.0.1 through [proxy] allow and
 * maps the test names with [proxy] hosts, as test/run-proxy.test.ts does).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { IncomingHttpHeaders } from "node:http";
import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { LocalCa } from "../src/proxy/ca.js";
import { openVault } from "../src/config/open-vault.js";
import type { AuditRecord } from "../src/base/types.js";
import { BIN } from "./cli-harness.js";
import { HAVE_BWRAP, makeOwner, type Owner } from "./run-harness.js";

const skip = !HAVE_BWRAP ? "bubblewrap cannot make a sandbox here (apt-get install bubblewrap)" : false;

const ALICE_CANARY = "ghp_" + randomBytes(18).toString("hex");
const BOB_CANARY = "sk-bob-" + randomBytes(16).toString("hex");

interface Seen {
  host: string;
  url: string;
  headers: IncomingHttpHeaders;
}

const root = mkdtempSync(join(tmpdir(), "lessor-atk-multiproxy-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

let upstream: https.Server;
let port = 0;
const seen: Seen[] = [];

const POLICY = `
[[rule]]
name = "alice"
effect = "allow"
agents = ["alice"]
secrets = ["alice-token"]
domains = ["api.test.example"]

[[rule]]
name = "bob"
effect = "allow"
agents = ["bob"]
secrets = ["bob-token"]
domains = ["other.test.example"]
`;

function config(extra = ""): string {
  return `
[proxy]
ports = [${port}]
allow = ["127.0.0.1"]
hosts = { "api.test.example" = "127.0.0.1", "other.test.example" = "127.0.0.1" }
upstream_ca = "${join(root, "upstream-ca.pem")}"

[[proxy.inject]]
secret = "alice-token"
mode = "bearer"
${extra}`;
}

/** A child `lessor …` started as the owner would; resolves at its exit with what it wrote. */
function lessor(owner: Owner, args: string[], env: Record<string, string>, cwd = owner.project): { child: ChildProcess; done: Promise<{ code: number | null; stdout: string; stderr: string }> } {
  const child = spawn(process.execPath, ["--", BIN, ...args], { cwd, env: { ...owner.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on("data", (d: Buffer) => out.push(d));
  child.stderr!.on("data", (d: Buffer) => err.push(d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    }),
  );
  return { child, done };
}

async function waitFor(what: string, ok: () => boolean, ms = 30_000): Promise<void> {
  const until = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function auditOf(owner: Owner): Promise<AuditRecord[]> {
  const vault = await openVault({ home: owner.lessorHome, env: owner.env });
  try {
    return await vault.admin().auditQuery({ limit: 10_000 });
  } finally {
    await vault.close();
  }
}

/**
 * A Node script the hostile agent runs inside its sandbox: for every directory under the ones it is
 * given (another run's private directory, if it is there), it connects to the proxy socket there, CONNECTs to
 * api.test.example, trusts that run's CA and sends a GET with no credential of its own. It prints
 * one line per socket.
 */
const PROBE = `
const fs = require("node:fs"), net = require("node:net"), tls = require("node:tls"), path = require("node:path");
const port = process.argv[2], dirs = process.argv.slice(3);
const names = [];
for (const d of dirs) { try { for (const n of fs.readdirSync(d)) names.push(path.join(d, n)); } catch (e) { console.log("LIST " + d + " " + e.code); } }
(async () => {
  for (const n of names) {
    const sock = path.join(n, "proxy.sock");
    if (!fs.existsSync(sock)) continue;
    let ca = "";
    try { ca = fs.readFileSync(path.join(n, "ca.pem"), "utf8"); } catch {}
    const line = await new Promise((resolve) => {
      const raw = net.connect(sock);
      raw.on("error", (e) => resolve("SOCK " + n + " " + e.code));
      raw.once("connect", () => raw.write("CONNECT api.test.example:" + port + " HTTP/1.1\\r\\nHost: api.test.example:" + port + "\\r\\n\\r\\n"));
      raw.once("data", (d) => {
        const head = d.toString("latin1").split("\\r\\n")[0];
        if (!head.includes(" 200")) return resolve("CONNECT " + n + " " + head);
        const s = tls.connect({ socket: raw, servername: "api.test.example", ca: ca || undefined });
        s.on("error", (e) => resolve("TLS " + n + " " + e.code));
        s.once("secureConnect", () => s.write("GET /who HTTP/1.1\\r\\nHost: api.test.example:" + port + "\\r\\nConnection: close\\r\\n\\r\\n"));
        let got = "";
        s.on("data", (x) => (got += x.toString("latin1")));
        s.on("end", () => resolve("GOT " + n + " " + got.split("\\r\\n")[0]));
      });
      setTimeout(() => resolve("TIMEOUT " + n), 15000);
    });
    console.log(line);
  }
  console.log("DONE " + names.length);
})();
`;

describe("two lessor runs for different agents at once", { skip }, () => {
  let owner: Owner;

  before(async () => {
    const ca = LocalCa.create({ permitted: ["api.test.example", "other.test.example"] });
    writeFileSync(join(root, "upstream-ca.pem"), ca.certPem);
    upstream = https.createServer({ SNICallback: ca.sniCallback, secureContext: ca.secureContextFor("api.test.example") }, (req, res) => {
      seen.push({ host: String(req.headers.host ?? ""), url: req.url ?? "", headers: req.headers });
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("hello\n");
    });
    await new Promise<void>((r) => upstream.listen(0, "127.0.0.1", r));
    port = (upstream.address() as AddressInfo).port;
    owner = await makeOwner({
      root,
      name: "owner",
      masterKey: randomBytes(32).toString("hex"),
      policy: POLICY,
      secrets: [
        { name: "alice-token", value: ALICE_CANARY, kind: "pat" },
        { name: "bob-token", value: BOB_CANARY },
      ],
    });
    writeFileSync(join(owner.lessorHome, "lessor.toml"), readFileSync(join(owner.lessorHome, "lessor.toml"), "utf8") + config(), { mode: 0o600 });
  });

  after(async () => {
    upstream?.closeAllConnections();
    await new Promise<void>((r) => upstream?.close(() => r()));
  });

  test("agent B cannot reach agent A's run proxy through a temporary directory both sandboxes show (TMPDIR in the shared project): A's bearer credential is never injected into B's requests", async () => {
    // The owner keeps temporary files in the project (TMPDIR=$PWD/.tmp, as direnv layouts do), and
    // runs two agents on it. Each run makes its private directory (the proxy's socket, its CA) under
    // TMPDIR; the sandbox shows the project, so both sandboxes could see both directories.
    const tmp = join(owner.project, ".tmp");
    mkdirSync(tmp, { recursive: true });
    writeFileSync(join(owner.project, "probe.cjs"), PROBE);
    const before = new Set(existsSync(tmp) ? readdirSync(tmp) : []);
    const alice = lessor(owner, ["run", "--agent", "alice", "--", "/bin/sh", "-c", "echo ready; sleep 60"], { TMPDIR: tmp, ALICE_TOKEN: "$S:alice-token" });
    let aliceOut = "";
    alice.child.stdout!.on("data", (d: Buffer) => (aliceOut += d.toString("utf8")));
    try {
      await waitFor("alice's run to start", () => aliceOut.includes("ready"), 60_000);
      const made = readdirSync(tmp).filter((n) => !before.has(n));
      const bob = lessor(owner, ["run", "--agent", "bob", "--", process.execPath, join(owner.project, "probe.cjs"), String(port), tmp, "/tmp", "/run/user"], { TMPDIR: tmp, BOB_TOKEN: "$S:bob-token" });
      const r = await bob.done;
      // What the probe saw (the directories are alice's and its own, if they are where it looks).
      const saw = r.stdout;
      assert.equal(r.code, 0, `bob's run: ${r.stderr}`);
      assert.match(saw, /^DONE /m, `the probe ran in bob's sandbox: ${saw}`);
      assert.ok(!saw.includes(ALICE_CANARY), "alice's credential reached bob");
      const carrying = seen.filter((s) => JSON.stringify(s.headers).includes(ALICE_CANARY));
      assert.equal(carrying.length, 0, `the upstream got alice's credential on a request bob made: ${saw} (alice's run made ${made.join(", ")}; bob's stderr: ${r.stderr})`);
      assert.ok(!/^GOT /m.test(saw), `bob's sandbox reached another run's proxy socket: ${saw}`);
    } finally {
      alice.child.kill("SIGTERM");
      await alice.done;
    }
  });
});
