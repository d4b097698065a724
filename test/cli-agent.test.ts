/**
 * The CLI as a restricted caller (issue 12, item 10): LESSOR_SOCKET, or LESSOR_ADDR with a token from
 * LESSOR_TOKEN_FILE, sends every command to that daemon as the identity it gives the caller — a real
 * daemon, the built CLI run as another local user (nobody, via setpriv) — and never falls back to a
 * vault opened in-process. Also: the "no vault" message for agents, and `lessor init` refusing to make
 * a second vault when a daemon is named.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, copyFileSync, existsSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { LessorClient } from "../src/client/client.js";
import { openVault } from "../src/config/open-vault.js";
import { BIN, cliHome, runCli } from "./cli-harness.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { grant, tempDirUntilExit } from "./helpers.js";
import { FakeServer } from "./fixtures/fake-server.js";
import { VERSION } from "../src/version.js";

const NOBODY = 65534;
const VALUE = `agent-canary-${randomBytes(12).toString("hex")}`;
const POLICY = grant("github", ["claude", "bot"], ["github-token"], ["api.github.com"], 'ttl = "1h"');
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}/;

const hasSetpriv = spawnSync("setpriv", ["--version"]).error === undefined;
const isRoot = process.getuid?.() === 0;
const skip = !isRoot ? "needs root, to run the CLI as user nobody" : !hasSetpriv ? "setpriv (util-linux) is not installed" : false;

/** A temp dir owned by nobody, 0700 (its HOME: anything the CLI made there would show). */
function nobodyDir(): string {
  const d = tempDirUntilExit("lessor-nobody-");
  chownSync(d, NOBODY, NOBODY);
  return d;
}

/** Runs the built CLI as user nobody with only `env` (plus PATH, HOME and NO_COLOR). */
function asNobody(args: string[], env: Record<string, string>, opts: { home: string; bin?: string; input?: string }): SpawnSyncReturns<string> {
  return spawnSync("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", process.execPath, "--", opts.bin ?? BIN, ...args], {
    env: { PATH: process.env.PATH ?? "", HOME: opts.home, NO_COLOR: "1", ...env },
    cwd: opts.home,
    encoding: "utf8",
    timeout: 30_000,
    input: opts.input ?? "",
  });
}

describe("the CLI as a restricted agent (a real daemon, the CLI as user nobody)", { skip }, () => {
  let d: RunningDaemon;
  let admin: LessorClient;
  let socket: string;
  let tokenSecret: string;
  let tokenId: string;
  let tokenExpires: number;

  before(async () => {
    if (skip) return;
    const sockDir = tempDirUntilExit("lessor-agent-sock-");
    chmodSync(sockDir, 0o755);
    socket = join(sockDir, "lessor.sock");
    const home = await makeHome({
      policy: POLICY,
      config: `[server]\nsocket = "${socket}"\nsocket_mode = "0666"\ntcp = "127.0.0.1:0"\n[[identity]]\nuid = ${NOBODY}\nrole = "agent"\nagent = "claude"\n`,
    });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "github-token", value: VALUE, kind: "pat" });
    await v.close();
    d = await startServe(home);
    admin = await LessorClient.connect({ socketPath: d.socket });
    const t = await admin.createToken({ name: "ci-bot", role: "agent", agent: "bot", ttl: "1d" });
    tokenSecret = t.token;
    tokenId = t.id;
    tokenExpires = t.expiresAt!;
  });
  after(async () => {
    await admin?.close();
    await d?.stop();
  });

  /** The daemon's audit rows by this actor since `afterSeq`. */
  async function auditBy(actorId: string, afterSeq: number) {
    return (await admin.auditQuery({ actorId, afterSeq, limit: 1000 })).filter((e) => e.seq > afterSeq);
  }

  test("LESSOR_SOCKET: whoami, lease and secret list go to the daemon as agent claude; admin commands are refused by role; no vault appears", async () => {
    const home = nobodyDir();
    const env = { LESSOR_SOCKET: socket };
    const head = (await admin.status()).auditHead;

    const who = asNobody(["whoami", "--json"], env, { home });
    assert.equal(who.status, 0, who.stderr);
    const w = JSON.parse(who.stdout);
    assert.deepEqual(
      { id: w.id, role: w.role, agent: w.agent, actFor: w.actFor, transport: w.transport, token: w.token, mode: w.mode, home: w.home },
      { id: `uid:${NOBODY}`, role: "agent", agent: "claude", actFor: null, transport: "uds", token: null, mode: "daemon", home: null },
    );
    assert.equal(w.endpoint, `$LESSOR_SOCKET (${socket})`);
    const plain = asNobody(["whoami"], env, { home });
    assert.equal(plain.status, 0, plain.stderr);
    assert.match(plain.stdout, new RegExp(`^identity: +uid:${NOBODY}\\nrole: +agent\\nagent: +claude\\ntransport: +uds\\nanswered by: +the daemon at \\$LESSOR_SOCKET`));

    // No --agent: the daemon binds the lease to the caller's own agent id.
    const lease = asNobody(["lease", "github-token", "--domain", "api.github.com"], env, { home });
    assert.equal(lease.status, 0, lease.stderr);
    assert.equal(lease.stdout, VALUE);
    const id = UUID.exec(lease.stderr)?.[0];
    assert.ok(id, `the lease id is on stderr: ${lease.stderr}`);
    assert.ok(!lease.stderr.includes(VALUE));
    const granted = (await admin.auditQuery({ leaseId: id! })).map((e) => [e.type, e.actorId, e.agent]);
    assert.deepEqual(granted[0], ["lease_granted", `uid:${NOBODY}`, "claude"]);

    // Acting as another agent is refused by the daemon.
    const other = asNobody(["lease", "github-token", "--agent", "bot", "--domain", "api.github.com"], env, { home });
    assert.equal(other.status, 3, other.stderr);
    assert.match(other.stderr, /agent "claude" may not act as agent "bot"/);

    // Listing secrets and every admin command: refused by role, by the daemon (audited there).
    const refused: [string[], string?][] = [
      [["secret", "list"]],
      [["secret", "get", "github-token", "--reveal"]],
      [["secret", "set", "planted"], "x"],
      [["token", "create", "mine", "--role", "admin"]],
      [["killswitch", "--yes"]],
      [["audit", "tail"]],
      [["revoke", "--agent", "bot"]],
    ];
    for (const [args, input] of refused) {
      const r = asNobody(args, env, { home, ...(input !== undefined ? { input } : {}) });
      assert.equal(r.status, 3, `${args.join(" ")}: exit ${r.status}: ${r.stderr}`);
      assert.match(r.stderr, /^lessor: /);
      assert.doesNotMatch(r.stderr, /lessor init|no lessor home|no vault/, args.join(" "));
      assert.ok(!r.stdout.includes(VALUE) && !r.stderr.includes(VALUE));
    }
    const denials = (await auditBy(`uid:${NOBODY}`, head)).filter((e) => e.type === "access_denied");
    assert.ok(denials.length >= refused.length - 1, `the daemon saw and refused them: ${denials.length}`); // `secret get` reads metadata first
    assert.equal((await admin.listTokens()).some((t) => t.name === "mine"), false);
    assert.deepEqual(readdirSync(home), [], "nothing (no ~/.lessor) was created in the agent's HOME");
  });

  test("the fast path (lease with nothing but the fast-path bundle) honours LESSOR_SOCKET too", async () => {
    const home = nobodyDir();
    const lone = tempDirUntilExit("lessor-lone-");
    chmodSync(lone, 0o755);
    for (const f of ["lessor.cjs", "main.cjs", "main.cache"]) copyFileSync(join(dirname(BIN), f), join(lone, f));
    const r = asNobody(["lease", "github-token", "--domain", "api.github.com"], { LESSOR_SOCKET: socket }, { home, bin: join(lone, "lessor.cjs") });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, VALUE);
    assert.match(r.stderr, /^lessor: lease [0-9a-f-]{36} expires in (5m|4m5\ds); used up by this print\n$/);
  });

  test("LESSOR_ADDR with LESSOR_TOKEN_FILE (0600, the user's own) works as the token's identity; a wider or foreign file is refused", async () => {
    assert.ok(d.tcp, "the daemon listens on TCP");
    const home = nobodyDir();
    const file = join(home, "token");
    writeFileSync(file, `${tokenSecret}\n`, { mode: 0o600 });
    chownSync(file, NOBODY, NOBODY);
    const env = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: file };
    const seen: string[] = [];

    const who = asNobody(["whoami", "--json"], env, { home });
    seen.push(who.stdout, who.stderr);
    assert.equal(who.status, 0, who.stderr);
    const w = JSON.parse(who.stdout);
    assert.equal(w.id, `token:ci-bot/${tokenId}`);
    assert.equal(w.role, "agent");
    assert.equal(w.agent, "bot");
    assert.equal(w.transport, "tcp");
    assert.deepEqual(w.token, { id: tokenId, name: "ci-bot", expiresAt: new Date(tokenExpires).toISOString() });
    assert.equal(w.endpoint, `$LESSOR_ADDR (127.0.0.1:${d.tcp!.port})`);
    const plain = asNobody(["whoami"], env, { home });
    seen.push(plain.stdout, plain.stderr);
    assert.match(plain.stdout, new RegExp(`token: +ci-bot \\(id ${tokenId}\\), expires .* \\(in 23h59m`));

    const lease = asNobody(["lease", "github-token", "--domain", "api.github.com"], env, { home });
    seen.push(lease.stderr);
    assert.equal(lease.status, 0, lease.stderr);
    assert.equal(lease.stdout, VALUE);
    const list = asNobody(["secret", "list"], env, { home });
    seen.push(list.stdout, list.stderr);
    assert.equal(list.status, 3, list.stderr);

    // The same token from LESSOR_TOKEN works too.
    const inline = asNobody(["whoami", "--json"], { LESSOR_ADDR: env.LESSOR_ADDR, LESSOR_TOKEN: tokenSecret }, { home });
    seen.push(inline.stdout, inline.stderr);
    assert.equal(inline.status, 0, inline.stderr);
    assert.equal(JSON.parse(inline.stdout).agent, "bot");

    // A token file others may read: refused before anything is sent.
    chmodSync(file, 0o644);
    const wide = asNobody(["whoami"], env, { home });
    seen.push(wide.stdout, wide.stderr);
    assert.equal(wide.status, 1, wide.stderr);
    assert.match(wide.stderr, /^lessor: LESSOR_TOKEN_FILE \(.*\) has mode 0644, so other users may read or change your token; run chmod 600 /);
    // One that belongs to another user (here root), even 0600 and readable: refused.
    const foreign = join(home, "root-token");
    writeFileSync(foreign, `${tokenSecret}\n`, { mode: 0o604 });
    chmodSync(foreign, 0o604);
    const notMine = asNobody(["whoami"], { ...env, LESSOR_TOKEN_FILE: foreign }, { home });
    seen.push(notMine.stdout, notMine.stderr);
    assert.equal(notMine.status, 1, notMine.stderr);
    assert.match(notMine.stderr, /belongs to uid 0, not to you \(uid 65534\)/);

    // Mistakes in the settings say what to change, and nothing falls back to a vault.
    const cases: [Record<string, string>, RegExp][] = [
      [{ LESSOR_ADDR: env.LESSOR_ADDR }, /LESSOR_ADDR needs a token: set LESSOR_TOKEN_FILE/],
      [{ LESSOR_ADDR: "10.1.2.3:7391", LESSOR_TOKEN: tokenSecret }, /not a loopback address/],
      [{ LESSOR_ADDR: "localhost", LESSOR_TOKEN: tokenSecret }, /LESSOR_ADDR must be host:port/],
      [{ LESSOR_TOKEN: tokenSecret }, /no daemon to send it to; set LESSOR_ADDR=host:port/],
      [{ LESSOR_SOCKET: socket, LESSOR_ADDR: env.LESSOR_ADDR }, /both set; set only the one/],
      [{ LESSOR_ADDR: env.LESSOR_ADDR, LESSOR_TOKEN: tokenSecret, LESSOR_TOKEN_FILE: file }, /LESSOR_TOKEN and LESSOR_TOKEN_FILE are both set/],
    ];
    for (const [e, message] of cases) {
      const r = asNobody(["whoami"], e, { home });
      seen.push(r.stdout, r.stderr);
      assert.equal(r.status, 2, `${JSON.stringify(e)}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
    for (const s of seen) assert.ok(!s.includes(tokenSecret.slice(21)), "the token's secret part is never printed");
  });

  test("lessor run with a token: the leases are the token's, and the child inherits neither LESSOR_TOKEN nor LESSOR_TOKEN_FILE", () => {
    const home = nobodyDir();
    const file = join(home, "token");
    writeFileSync(file, `${tokenSecret}\n`, { mode: 0o600 });
    chownSync(file, NOBODY, NOBODY);
    const show = "console.log(JSON.stringify({ token: process.env.LESSOR_TOKEN ?? null, file: process.env.LESSOR_TOKEN_FILE ?? null, addr: process.env.LESSOR_ADDR ?? null, gh: (process.env.GH ?? '').length }))";
    const tokenVars: Record<string, string>[] = [{ LESSOR_TOKEN: tokenSecret }, { LESSOR_TOKEN_FILE: file }];
    for (const tokenVar of tokenVars) {
      const env: Record<string, string> = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, GH: "lessor://global/github-token", ...tokenVar };
      // --no-sandbox: this is about what lessor passes on; the sandbox would also drop LESSOR_ADDR (test/sandbox.test.ts).
      const r = asNobody(["run", "--agent", "bot", "--domain", "api.github.com", "--no-sandbox", "--", process.execPath, "-e", show], env, { home });
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { token: null, file: null, addr: env.LESSOR_ADDR, gh: VALUE.length });
      assert.ok(!r.stdout.includes(tokenSecret.slice(21)) && !r.stderr.includes(tokenSecret.slice(21)));
    }
  });

  test("there is no --token option: a token on the command line is refused with guidance", () => {
    const home = nobodyDir();
    const r = asNobody(["--token", tokenSecret, "whoami"], { LESSOR_SOCKET: socket }, { home });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /no token on the command line.*LESSOR_TOKEN_FILE/);
    assert.ok(!r.stderr.includes(tokenSecret.slice(21)));
  });
});

describe("LESSOR_DAEMON_UID: a daemon run by another user", { skip }, () => {
  let proc: ChildProcess | undefined;
  after(async () => {
    if (proc && proc.exitCode === null) {
      proc.kill("SIGTERM");
      await new Promise((r) => proc!.once("exit", r));
    }
  });

  test("the CLI refuses a socket served by an unexpected uid, and names LESSOR_DAEMON_UID; with it set, it connects", async () => {
    // The daemon runs as nobody (its home and socket directory are nobody's); the CLI runs as root,
    // mapped to agent claude by the daemon's [[identity]].
    const sockDir = nobodyDir();
    chmodSync(sockDir, 0o755);
    const socket = join(sockDir, "lessor.sock");
    const home = await makeHome({ policy: POLICY, config: `[server]\nsocket = "${socket}"\nsocket_mode = "0666"\n[[identity]]\nuid = 0\nrole = "agent"\nagent = "claude"\n` });
    spawnSync("chown", ["-R", `${NOBODY}:${NOBODY}`, dirname(home)]);
    chmodSync(dirname(home), 0o755);
    proc = spawn("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", process.execPath, "--", BIN, "--home", home, "serve"], {
      env: { PATH: process.env.PATH ?? "", HOME: sockDir },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: proc!.stderr! }).on("line", (l) => {
        log += `${l}\n`;
        if (l.includes("lessor daemon ready")) resolve();
      });
      proc!.once("exit", (c) => reject(new Error(`serve exited ${c}: ${log}`)));
    });
    const refused = await runCli(["whoami"], { env: { LESSOR_SOCKET: socket } });
    assert.equal(refused.code, 3, refused.stderr);
    assert.match(refused.stderr, new RegExp(`runs as .*${NOBODY}.*set LESSOR_DAEMON_UID to that user's uid`));
    const ok = await runCli(["whoami", "--json"], { env: { LESSOR_SOCKET: socket, LESSOR_DAEMON_UID: String(NOBODY) } });
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual([JSON.parse(ok.stdout).id, JSON.parse(ok.stdout).agent], ["uid:0", "claude"]);
    const wrongUid = await runCli(["whoami"], { env: { LESSOR_SOCKET: socket, LESSOR_DAEMON_UID: "12345" } });
    assert.equal(wrongUid.code, 3, wrongUid.stderr);
    const bad = await runCli(["whoami"], { env: { LESSOR_SOCKET: socket, LESSOR_DAEMON_UID: "nobody" } });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /LESSOR_DAEMON_UID must be the daemon's numeric uid/);
  });
});

describe("no fallback to a vault in this process", () => {
  test("LESSOR_SOCKET pointing nowhere fails with the right message and opens no vault, even with a usable home", async () => {
    const home = await cliHome();
    const v0 = await openVault({ home, env: { LESSOR_HOME: home } });
    const head0 = (await v0.admin().status()).auditHead;
    await v0.close();
    const nowhere = join(tempDirUntilExit("lessor-nowhere-"), "lessor.sock");
    for (const args of [["secret", "list"], ["lease", "x", "--agent", "a"], ["whoami"], ["status"]]) {
      const r = await runCli(args, { home, env: { LESSOR_SOCKET: nowhere } });
      assert.equal(r.code, 5, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(
        r.stderr,
        `lessor: no lessor daemon answers at $LESSOR_SOCKET (${nowhere}); is it running? LESSOR_SOCKET is set, so lessor does not open a vault in this process: ask the operator to start the daemon, or unset LESSOR_SOCKET to use a vault of your own\n`,
      );
      assert.equal(r.stdout, "");
    }
    const v1 = await openVault({ home, env: { LESSOR_HOME: home } });
    assert.equal((await v1.admin().status()).auditHead, head0, "the home's vault was not opened (no audit event)");
    await v1.close();
    assert.deepEqual(readdirSync(dirname(nowhere)), [], "nothing was created beside the missing socket");
  });

  test("a daemon older than the CLI: a call it does not know is reported as the daemon's age, with what to do", async () => {
    // A daemon from before `describe` existed answers it the way every daemon answers an unknown name.
    const old = await FakeServer.unix(tempDirUntilExit("lessor-old-daemon-"), {
      intercept: (req, conn) => {
        if (req.method !== "describe") return false;
        conn.send({ id: req.id, ok: false, error: { code: "invalid_request", message: "unknown method describe; see docs/protocol.md" } });
        return true;
      },
    });
    try {
      const socket = (old.endpoint as { socketPath: string }).socketPath;
      const r = await runCli(["status"], { env: { LESSOR_SOCKET: socket } });
      assert.equal(r.code, 5, r.stderr);
      assert.equal(
        r.stderr,
        `lessor: the lessor daemon does not know the describe call this CLI (lessor ${VERSION}) made: it runs an older lessor; restart it with this version (stop it, then lessor serve), or use the CLI of the daemon's version\n`,
      );
    } finally {
      await old.close();
    }
  });

  test("whoami without a daemon: the embedded vault takes the local user for admin", async () => {
    const home = await cliHome();
    const r = await runCli(["whoami", "--json"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), {
      id: `uid:${process.getuid?.() ?? 0}`,
      role: "admin",
      agent: null,
      actFor: null,
      transport: "cli",
      token: null,
      mode: "embedded",
      home,
      endpoint: null,
    });
    const plain = await runCli(["whoami"], { home });
    assert.match(plain.stdout, new RegExp(`answered by: +the vault at ${home.replace(/[/.]/g, "\\$&")}, opened in this process \\(no daemon is running\\)\n$`));
  });

  test("--home together with LESSOR_SOCKET is refused rather than guessed", async () => {
    const home = await cliHome();
    const r = await runCli(["--home", home, "secret", "list"], { env: { LESSOR_SOCKET: "/nonexistent/lessor.sock" } });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--home and LESSOR_SOCKET are both given/);
  });

  test("with no daemon and no vault, the message tells an agent to ask the operator, and only a person to run lessor init", async () => {
    const missing = join(tempDirUntilExit("lessor-none-"), "home");
    for (const args of [["secret", "list"], ["lease", "github-token", "--agent", "claude"], ["whoami"]]) {
      const r = await runCli(args, { home: missing });
      assert.equal(r.code, 1, r.stderr);
      const m = r.stderr;
      assert.match(m, new RegExp(`^lessor: no lessor daemon is running and there is no vault at ${missing.replace(/[/.]/g, "\\$&")}\\. `));
      assert.match(m, /If you are an agent, do not create one: ask the operator for LESSOR_SOCKET \(or LESSOR_ADDR and LESSOR_TOKEN_FILE\)\./);
      const agentPart = m.slice(0, m.indexOf("To create a vault of your own"));
      assert.ok(agentPart.length > 0 && !agentPart.includes("lessor init"), `the agent's sentence does not say to init: ${m}`);
      assert.match(m, /To create a vault of your own, run lessor init/);
      assert.ok(!existsSync(missing));
    }
  });

  test("lessor init refuses to make a second vault when a daemon is named", async () => {
    const home = join(tempDirUntilExit("lessor-init-"), "home");
    const r = await runCli(["init"], { home, env: { LESSOR_SOCKET: "/run/lessor/lessor.sock" } });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /LESSOR_SOCKET is set: this environment uses the lessor daemon at \$LESSOR_SOCKET \(\/run\/lessor\/lessor\.sock\).*unset LESSOR_SOCKET to create a vault of your own/);
    assert.ok(!existsSync(home));
  });
});

describe("lessor lease: short by default, its id on stderr, casual use does not fill the per-agent cap", () => {
  let home: string;
  before(async () => {
    home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), "[vault]\nmax_live_leases_per_agent = 10\n", { mode: 0o600 });
    writeFileSync(
      join(home, "policy.toml"),
      POLICY + grant("short", ["quick"], ["github-token"], ["api.github.com"], 'ttl = "2m"'),
      { mode: 0o600 },
    );
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "github-token", value: VALUE });
    await v.close();
  });

  const GH = ["github-token", "--domain", "api.github.com"];

  test("the default lifetime is 5m under a 1h rule, --ttl is still capped by the rule, a shorter rule wins; the id is on stderr", async () => {
    const j = await runCli(["lease", ...GH, "--agent", "claude", "--json"], { home });
    assert.equal(j.code, 0, j.stderr);
    const g = JSON.parse(j.stdout);
    assert.equal(Date.parse(g.expiresAt) - Date.parse(g.issuedAt), 5 * 60_000);
    assert.equal(g.maxUses, null, "--json keeps the rule's uses for a program");
    assert.match(j.stderr, new RegExp(`^lessor: lease ${g.id} expires in (5m|4m5\\ds)\n$`));
    const long = JSON.parse((await runCli(["lease", ...GH, "--agent", "claude", "--ttl", "3h", "--json"], { home })).stdout);
    assert.equal(Date.parse(long.expiresAt) - Date.parse(long.issuedAt), 60 * 60_000, "the policy's ttl caps --ttl");
    const short = JSON.parse((await runCli(["lease", ...GH, "--agent", "quick", "--json"], { home })).stdout);
    assert.equal(Date.parse(short.expiresAt) - Date.parse(short.issuedAt), 2 * 60_000, "the policy's ttl caps the default");
    const printed = await runCli(["lease", ...GH, "--agent", "claude"], { home });
    assert.equal(printed.code, 0, printed.stderr);
    assert.equal(printed.stdout, VALUE);
    assert.match(printed.stderr, /^lessor: lease [0-9a-f-]{36} expires in (5m|4m5\ds); used up by this print\n$/);
  });

  test("20 casual $(lessor lease …) in a row succeed with a cap of 10 live leases per agent", async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const r = await runCli(["lease", ...GH, "--agent", "bot"], { home });
      assert.equal(r.code, 0, `lease ${i + 1}: ${r.stderr}`);
      assert.equal(r.stdout, VALUE);
      ids.add(UUID.exec(r.stderr)![0]);
    }
    assert.equal(ids.size, 20);
    const live = JSON.parse((await runCli(["leases", "--live", "--agent", "bot", "--json"], { home })).stdout) as unknown[];
    assert.equal(live.length, 0, "a printed lease is used up by the print, so it does not count against the cap");
    const kept = await runCli(["lease", ...GH, "--agent", "bot", "--max-uses", "3"], { home });
    assert.equal(kept.code, 0, kept.stderr);
    assert.match(kept.stderr, /expires in (5m|4m5\ds); 2 uses left\n$/);
  });
});

test("a daemon target named by the environment never shows its token when logged, inspected or JSON-encoded", async () => {
  const { daemonTarget } = await import("../src/backend/daemon-target.js");
  const { inspect } = await import("node:util");
  const canary = "lsr_0123456789abcdef_CANARYcanaryCANARYcanaryCANARYcanaryCANARY0";
  const t = daemonTarget({ LESSOR_ADDR: "127.0.0.1:7391", LESSOR_TOKEN: canary });
  assert.ok(t !== null);
  assert.equal(t.token, canary, "the client still gets it");
  for (const shown of [inspect(t, { showHidden: false }), JSON.stringify(t), String(Object.entries(t))]) assert.ok(!shown.includes("CANARY"), shown);
});
