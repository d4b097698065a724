/**
 * Review, as an attacker, of 5092049..9059e2d: header names scrubbed and status lines made relayable
 * (src/proxy/headers.ts, intercept.ts, h2.ts), lessor's own files compared by inode with copies in the
 * writable project (src/cli/run/sandbox.ts sharedWithWritable), `--env-file` reached through a link
 * the agent could change (src/cli/run/run.ts), and MCP HTTP sessions each with their own leases
 * (src/mcp/http.ts).
 *
 * Real parts only: a real vault on SQLite in temporary directories, real TLS and HTTP/2 on loopback,
 * the built CLI as child processes, bubblewrap. Nothing is sent anywhere but 127.0.0.1.
 */
import { randomBytes } from "node:crypto";
import { cpSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tls from "node:tls";
import { fileURLToPath } from "node:url";
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { BIN, runCliWithEnv, type CliResult } from "./cli-harness.js";
import { grant, makeVault } from "./helpers.js";
import { getThroughTunnel, h2Get as h2GetOver, headsServer, loopbackOnly, openTunnel, tableResolver } from "./proxy-harness.js";
import { HAVE_BWRAP, makeOwner as newOwner } from "./run-harness.js";

const REPO = fileURLToPath(new URL("..", import.meta.url));
const noBwrap = HAVE_BWRAP ? false : "bwrap is not installed or user namespaces are off";

const root = mkdtempSync(join(tmpdir(), "lessor-review-1205b-"));
// (cli-harness kills the lessor commands still running at exit, before this removes their files.)
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// =====================================================================================================
// The proxy: a mixed-case credential reflected into a response header's name
// =====================================================================================================

const HOST = "api.r1205b.example"; // HTTP/1.1 upstream (covered)
const H2HOST = "h2.r1205b.example"; // HTTP/2 upstream (covered)
// Mixed case, as most API keys are (GitHub's ghp_…, Stripe's sk_live_…, AWS secret keys).
const MIXED = "sk-Live" + randomBytes(18).toString("base64").replace(/[+/=]/g, "Q") + "XyZ";

const upCa = LocalCa.create({ permitted: [HOST, H2HOST] });

/** HTTP/1.1 upstream: reflects the Authorization it got into a header name, as it got it (case kept). */
const upTls = headsServer(upCa, (head, s) => {
  const auth = /\r\nauthorization: *Bearer ([^\r\n]*)/i.exec(head)?.[1] ?? "";
  // A 101 to an ordinary GET (no Upgrade asked for): a status outside 200-599.
  if (head.startsWith("GET /switch ")) return void s.end("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", "latin1");
  s.end(`HTTP/1.1 200 OK\r\nX-Seen-${auth}: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok`, "latin1");
});

/** HTTP/2 upstream: a debugging echo of the request's headers as response header names (h2 lower-cases names). */
const upH2 = http2.createSecureServer({ SNICallback: upCa.sniCallback, allowHTTP1: false });
upH2.on("stream", (stream, h) => {
  stream.on("error", () => {});
  const auth = String(h.authorization ?? "").replace(/^Bearer /, "");
  stream.resume();
  stream.on("end", () => {
    if (stream.closed) return;
    stream.respond({ ":status": 200, [`x-seen-${auth}`]: "1" });
    stream.end("ok");
  });
});

await new Promise<void>((r) => upTls.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => upH2.listen(0, "127.0.0.1", r));
const tlsPort = (upTls.address() as AddressInfo).port;
const h2Port = (upH2.address() as AddressInfo).port;
after(async () => {
  await new Promise<void>((r) => upTls.close(() => r()));
  await new Promise<void>((r) => upH2.close(() => r()));
});

interface Rig {
  port: number;
  placeholder: string;
  connects: ConnectTo[];
  close(): Promise<void>;
}

async function rig(value: string): Promise<Rig> {
  const { vault } = await makeVault({ policy: grant("api", ["bot"], ["key"], [HOST, H2HOST]) });
  const admin = vault.admin();
  await admin.storeSecret({ name: "key", value });
  const lease = await admin.requestLease({ agent: "bot", secret: "key", domains: [HOST, H2HOST] });
  const creds: ProxyCredential[] = [{ lease, secret: "global/key", placeholder: makePlaceholder(value), value, rule: { mode: "placeholder" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [tlsPort, h2Port], allow: ["127.0.0.0/8"], resolve: tableResolver({ [HOST]: "127.0.0.1", [H2HOST]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [HOST, H2HOST] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  return {
    port,
    placeholder: creds[0]!.placeholder,
    connects,
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

/** The agent, over HTTP/1.1 to HOST: the raw answer. */
const h1Get = (r: Rig, path = "/x"): Promise<string> => getThroughTunnel(r.port, HOST, tlsPort, path, r.placeholder);

/** The agent, over HTTP/2 to `host`: every head it gets, as JSON. */
async function h2Get(r: Rig, host: string, path = "/x", ms = 10_000): Promise<string> {
  const s = await openTunnel(r.port, host, host === HOST ? tlsPort : h2Port, { alpn: "h2" });
  return h2GetOver(s, host, path, { authorization: `Bearer ${r.placeholder}` }, { ms });
}

describe("the proxy: a covered upstream's status line outside 200-599", () => {
  test("a covered upstream answering 101 to an ordinary GET is answered 502, to the HTTP/1.1 client and the HTTP/2 client", { timeout: 20_000 }, async () => {
    const r = await rig(MIXED);
    try {
      const t0 = Date.now();
      const a = await h1Get(r, "/switch");
      const h1Ms = Date.now() - t0;
      const b = await h2Get(r, HOST, "/switch", 4000);
      // The proxy serves on.
      assert.match(await h1Get(r, "/x"), /^HTTP\/1\.1 200 /);
      assert.deepEqual(
        { http1: a.split("\r\n")[0] || `(no answer; ${h1Ms < 2900 ? "connection closed" : "nothing in 3 s"})`, http2: /":status":(\d+)/.exec(b)?.[1] ?? b.slice(0, 80) },
        { http1: "HTTP/1.1 502 Bad Gateway", http2: "502" },
        "a 101 the agent did not ask for must be answered 502 with a problem document, like status 000 or 600 (src/proxy/intercept.ts relayResponse and src/proxy/h2.ts viaH1 never see a response: Node's client takes a 101 for an upgrade)",
      );
    } finally {
      await r.close();
    }
  });
});

describe("the proxy: a mixed-case credential reflected into a response header's name", () => {
  test("a mixed-case credential reflected into a response header's name is masked though Node lower-cases names first: HTTP/1.1, HTTP/2 client behind HTTP/1.1, HTTP/2 upstream", { timeout: 20_000 }, async () => {
    assert.match(MIXED, /[A-Z]/);
    const r = await rig(MIXED);
    try {
      const lower = MIXED.toLowerCase();
      const leaks: string[] = [];
      const a = await h1Get(r);
      assert.match(a, /^HTTP\/1\.1 200 /, a.slice(0, 200));
      if (a.toLowerCase().includes(lower)) leaks.push(`HTTP/1.1: ${/^x-seen-[^:]*/im.exec(a)?.[0]}`);
      const b = await h2Get(r, HOST);
      assert.match(b, /":status":200/, b.slice(0, 200));
      if (b.toLowerCase().includes(lower)) leaks.push(`HTTP/2 client, HTTP/1.1 upstream: ${/x-seen-[^"]*/.exec(b)?.[0]}`);
      const c = await h2Get(r, H2HOST);
      assert.match(c, /":status":200/, c.slice(0, 200));
      if (c.toLowerCase().includes(lower)) leaks.push(`HTTP/2 upstream: ${/x-seen-[^"]*/.exec(c)?.[0]}`);
      assert.ok(r.connects.every((x) => x.host === "127.0.0.1"));
      assert.deepEqual(
        leaks,
        [],
        `the credential ${MIXED} reached the agent lower-cased in a header name (all but its letters' case; the tripwire already knows names arrive lower-cased, src/proxy/lease-egress.ts nameMarks, but the response scrubber, src/proxy/headers.ts scrubHeaders, matches only the exact bytes)`,
      );
    } finally {
      await r.close();
    }
  });
});

// =====================================================================================================
// lessor run: the sandboxed agent, the owner's files, the owner's next lessor command
// =====================================================================================================

const MASTER_KEY = randomBytes(32).toString("hex");

/** `node -- CLI ARGS` from `cwd` with exactly `env`, as the owner would start it. */
const lessor = (cli: string, cwd: string, env: Record<string, string>, args: string[], timeoutMs = 25_000) => runCliWithEnv(args, { bin: cli, cwd, env, timeoutMs });

/** A fake owner: a home, ~/.lessor (env key, the default empty policy) and a project directory. */
const makeOwner = (name: string) => newOwner({ root, name, masterKey: MASTER_KEY });

describe("lessor's code hard-linked into the writable project", { skip: noBwrap }, () => {
  test("lessor installed outside the project by pnpm sharing `bindings` (which better-sqlite3 loads in every lessor command that opens the vault) with the project's pnpm store link: lessor run refuses, naming the shared file", { timeout: 60_000 }, async () => {
    const o = await makeOwner("hardlink-dep");
    // The owner's global install (pnpm add -g lessor): lessor and its dependencies, outside every
    // directory the agent may write. better-sqlite3 and bindings are real directories of that install.
    const global = join(o.base, "pnpm-global", "lessor");
    mkdirSync(join(global, "node_modules"), { recursive: true });
    cpSync(join(REPO, "dist"), join(global, "dist"), { recursive: true });
    cpSync(join(REPO, "package.json"), join(global, "package.json"));
    for (const e of readdirSync(join(REPO, "node_modules")))
      if (e !== "better-sqlite3" && e !== "bindings") symlinkSync(join(REPO, "node_modules", e), join(global, "node_modules", e));
    const bs = join(global, "node_modules", "better-sqlite3");
    cpSync(join(REPO, "node_modules/better-sqlite3/package.json"), join(bs, "package.json"));
    cpSync(join(REPO, "node_modules/better-sqlite3/lib"), join(bs, "lib"), { recursive: true });
    mkdirSync(join(bs, "build", "Release"), { recursive: true });
    cpSync(join(REPO, "node_modules/better-sqlite3/build/Release/better_sqlite3.node"), join(bs, "build/Release/better_sqlite3.node"));
    const bindings = join(global, "node_modules", "bindings");
    cpSync(join(REPO, "node_modules/bindings"), bindings, { recursive: true });
    const cli = join(global, "dist", "bin", "lessor.cjs");
    // The project depends on bindings@1.5.0 too (most native modules do): pnpm links every file of
    // it from the one store, so the project's copy and the global one are the same inodes.
    const local = join(o.project, "node_modules", ".pnpm", "bindings@1.5.0", "node_modules", "bindings");
    mkdirSync(local, { recursive: true });
    for (const f of ["package.json", "bindings.js"]) linkSync(join(bindings, f), join(local, f));
    assert.ok(statSync(join(bindings, "bindings.js")).nlink > 1);
    // The global install works as it is.
    const before = await lessor(cli, o.project, o.env, ["status"]);
    assert.equal(before.code, 0, before.stderr);

    const marker = join(o.base, "stolen-key");
    writeFileSync(join(o.project, "payload.js"), `\n;require("node:fs").writeFileSync(${JSON.stringify(marker)}, String(process.env.LESSOR_MASTER_KEY));\n`);
    const run = await lessor(cli, o.project, o.env, ["run", "--agent", "attacker-dep", "--", "/bin/sh", "-c", "cat payload.js >> node_modules/.pnpm/bindings@1.5.0/node_modules/bindings/bindings.js && echo appended"]);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, /bindings\/package\.json is the same file \(a hard link, as pnpm and bun install\)/);
    // The owner's next command, with the global install.
    await lessor(cli, o.project, o.env, ["status"]);
    const stole = existsSync(marker) && readFileSync(marker, "utf8") === MASTER_KEY;
    assert.ok(
      !existsSync(marker),
      `the agent's code ran in the owner's next lessor command${stole ? " and read LESSOR_MASTER_KEY" : ""}: lessor run (exit ${run.code}, ${run.stdout.trim()}; ${run.stderr.trim().slice(0, 300)}) compared only its own package and the three EXTERNAL_PACKAGES (src/cli/run/sandbox.ts sharedWithWritable), not the packages those load`,
    );
  });
});

describe("--env-file and an agent that runs at the same time", { skip: noBwrap }, () => {
  test("the agent of a concurrent run in the same project flipping the owner's --env-file between a plain file and a symbolic link to another dotenv file of the owner's never gets that file's values into the sandboxed command: what was read is checked against where the path leads", { timeout: 60_000 }, async () => {
    const o = await makeOwner("env-file-race");
    const elsewhere = join(o.home, "other-project");
    mkdirSync(elsewhere);
    const CANARY_ENV = "other-" + randomBytes(12).toString("hex");
    writeFileSync(join(elsewhere, ".env"), `OTHER_DB_PASSWORD=${CANARY_ENV}\n`);
    writeFileSync(join(o.project, ".env.lessor"), "PLAIN_SETTING=1\n");
    // Agent 1 (a long task, in its own lessor run): swaps the file for a link and back, atomically, until told to stop.
    const flip =
      `perl -e 'my $t = shift; until (-e ".stop") { symlink($t, ".l"); open(my $d, ">", ".d"); print $d "x"; close $d; rename(".l", ".env.lessor"); ` +
      `open(my $f, ">", ".f"); print $f "PLAIN_SETTING=1\\n"; close $f; rename(".f", ".env.lessor"); }' ${join(elsewhere, ".env")}`;
    const flipper = lessor(BIN, o.project, o.env, ["run", "--agent", "flipper", "--", "/bin/sh", "-c", flip], 55_000);
    try {
      await delay(1500);
      // The owner starts agent 2 with the usual env file, a few times (each an ordinary run).
      let leaked: CliResult | null = null;
      const refusals: number[] = [];
      const t0 = Date.now();
      for (let i = 0; i < 80 && leaked === null && Date.now() - t0 < 20_000; i++) {
        const r = await lessor(BIN, o.project, o.env, ["run", "--agent", "victim", "--env-file", ".env.lessor", "--", "/bin/sh", "-c", 'echo "got=$OTHER_DB_PASSWORD"'], 15_000);
        if (r.stdout.includes(CANARY_ENV)) leaked = r;
        else refusals.push(r.code ?? -1);
      }
      assert.equal(
        leaked,
        null,
        `the value of ${join(elsewhere, ".env")} (a file the agent cannot read) reached the sandboxed command after ${refusals.length} tries: src/cli/run/run.ts reads --env-file (baseEnv) before refuseAgentLinkedEnvFiles looks at the path, so what was read is not what was checked`,
      );
    } finally {
      writeFileSync(join(o.project, ".stop"), "");
      await flipper;
    }
  });
});
