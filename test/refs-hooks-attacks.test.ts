/**
 * Attacks on secret references (`lessor inject`, `lessor run`), rotation hooks and the killswitch.
 * Real parts: the built CLI (dist/bin/lessor.cjs) as child processes, a real vault on a temp home, a
 * real `lessor serve` for the daemon-mode attacks, real hook processes.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { findReferences } from "../src/cli/refs/text.js";
import { lineCols } from "../src/cli/run/inject.js";
import { BIN, cliHome, runCli, seedHome } from "./cli-harness.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { agent, refusalOf } from "./helpers.js";

const NODE = process.execPath;
const tmp = mkdtempSync(join(tmpdir(), "lessor-refhook-attacks-"));
process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));

/** Values that must never show up anywhere but where they are delivered. */
const CANARY = {
  token: `CANARY-tok-${randomBytes(8).toString("hex")}`,
  forbidden: `CANARY-forbidden-${randomBytes(8).toString("hex")}`,
  json: `CANARY-json-${randomBytes(8).toString("hex")}`,
  old: `CANARY-old-${randomBytes(8).toString("hex")}`,
  new: `CANARY-new-${randomBytes(8).toString("hex")}`,
};

const POLICY = `
[[rule]]
name = "deny-forbidden"
effect = "deny"
agents = ["*"]
secrets = ["forbidden", "env:prod/forbidden"]

[[rule]]
name = "renderers"
effect = "allow"
agents = ["renderer*"]
secrets = ["*", "*/*"]
any_domain = true
`;

let fileNo = 0;
function file(text: string | Buffer, mode = 0o644): string {
  const p = join(tmp, `f${++fileNo}`);
  writeFileSync(p, text, { mode });
  return p;
}

async function seed(home: string): Promise<void> {
  await seedHome(home, POLICY, [
    { name: "api-token", value: CANARY.token },
    { name: "forbidden", value: CANARY.forbidden },
    { scope: "env:prod", name: "forbidden", value: CANARY.forbidden },
    // Values that look like references: they must be delivered as text, never resolved again.
    { name: "outer", value: "lessor://global/forbidden {{ $S:forbidden }} $secret://prod/forbidden $S::prod/forbidden" },
    { name: "half1", value: "lessor://global/" },
    { name: "half2", value: "forbidden" },
    { name: "brokenjson", value: `{"a": "${CANARY.json}` },
    { name: "strjson", value: JSON.stringify(CANARY.json) },
    { name: "nul", value: Buffer.from(`${CANARY.json}\0tail`) },
    { name: "badutf8", value: Buffer.concat([Buffer.from(CANARY.json), Buffer.from([0xff, 0xfe])]) },
  ]);
}

/** Every audit row of the home's vault (opened in-process once the CLI has exited). */
async function auditRows(home: string) {
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    return await v.admin().auditQuery({ limit: 10_000 });
  } finally {
    await v.close();
  }
}

function assertNoCanary(where: string, text: string, ...extra: string[]): void {
  for (const c of [...Object.values(CANARY), ...extra]) assert.ok(!text.includes(c), `${where} holds a canary (${c.slice(0, 18)}…):\n${text.slice(0, 2000)}`);
}

describe("references: crafted templates and env values (embedded vault, built CLI)", () => {
  let home: string;
  before(async () => {
    home = await cliHome();
    await seed(home);
  });

  test("attack: a reference inside a resolved value, or formed by two adjacent values, is never resolved again (inject)", async () => {
    const t = file("a: $S:outer\nb: $S:half1$S:half2\nc: {{ $S:half1 }}{{$S:half2}}\n");
    const r = await runCli(["inject", "-i", t, "--agent", "renderer-nested"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stdout,
      "a: lessor://global/forbidden {{ $S:forbidden }} $secret://prod/forbidden $S::prod/forbidden\nb: lessor://global/forbidden\nc: lessor://global/forbidden\n",
    );
    assertNoCanary("inject's output", r.stdout + r.stderr);
    const rows = await auditRows(home);
    const forb = rows.filter((e) => e.agent === "renderer-nested" && (e.secret ?? "").endsWith("/forbidden"));
    assert.deepEqual(forb, [], "no lease was asked for the forbidden secret");
  });

  test("attack: a reference inside a resolved value is never resolved again (lessor run --no-sandbox env)", async () => {
    // The child writes what it got to a file: its stdout is a pipe, which lessor masks.
    const dump = join(tmp, "run-env.json");
    const show = `require("fs").writeFileSync(${JSON.stringify(dump)}, JSON.stringify({A: process.env.A, B: process.env.B}))`;
    const r = await runCli(["run", "--no-sandbox", "--agent", "renderer-run", "--", NODE, "-e", show], {
      home,
      env: { A: "$S:outer", B: "x$S:half1$S:half2" },
    });
    assert.equal(r.code, 0, r.stderr);
    const got = JSON.parse(readFileSync(dump, "utf8")) as { A: string; B: string };
    assert.equal(got.A, "lessor://global/forbidden {{ $S:forbidden }} $secret://prod/forbidden $S::prod/forbidden");
    assert.equal(got.B, "xlessor://global/forbidden");
    assertNoCanary("run's output", r.stdout + r.stderr);
    const rows = await auditRows(home);
    assert.deepEqual(rows.filter((e) => e.agent === "renderer-run" && (e.secret ?? "").endsWith("/forbidden")), []);
  });

  test("attack: references in env variable names and in the command's arguments are not resolved", async () => {
    const show = "process.stdout.write(JSON.stringify({argv: process.argv.slice(1), keys: Object.keys(process.env).filter((k) => k.includes('S:') || k.includes('lessor'))}))";
    const r = await runCli(["run", "--no-sandbox", "--agent", "renderer-names", "--", NODE, "-e", show, "$S:forbidden", "lessor://global/api-token"], {
      home,
      env: { "$S:forbidden": "plain", "lessor://global/api-token": "plain2" },
    });
    assert.equal(r.code, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { argv: string[] };
    assert.deepEqual(got.argv, ["$S:forbidden", "lessor://global/api-token"]);
    assertNoCanary("run's output", r.stdout + r.stderr);
    const rows = await auditRows(home);
    assert.deepEqual(rows.filter((e) => e.agent === "renderer-names" && e.type === "lease_granted"), [], "no lease at all");
  });

  test("attack: every spelling of a denied secret is denied (exit 3) and nothing is written", async () => {
    const spellings = [
      "$S:forbidden",
      "{{ lessor://global/forbidden }}",
      "{{\tlessor://global/forbidden\t}}",
      "{{lessor://global/forbidden}}",
      "lessor://global/forbidden.",
      "lessor://global/forbidden...",
      "$S:forbidden/a",
      "lessor://global/forbidden#a.b",
      "x:$S:forbidden:y",
      "$S::prod/forbidden",
      "$secret://prod/forbidden",
      "lessor://env:prod/forbidden",
      "postgres://u:$S:forbidden@h/db",
      "$S:forbidden\u200b",
      "-lessor://global/api-token $S:forbidden",
    ];
    for (const s of spellings) {
      const out = join(tmp, `denied-${++fileNo}.out`);
      const r = await runCli(["inject", "-i", file(`k: ${s}\n`), "-o", out, "--agent", "renderer-deny"], { home });
      assert.equal(r.code, 3, `${JSON.stringify(s)}: exit ${r.code}: ${r.stderr}`);
      assert.equal(existsSync(out), false, `${s}: an output was written`);
      assertNoCanary(`${s}: output`, r.stdout + r.stderr);
    }
    const rows = await auditRows(home);
    const granted = rows.filter((e) => e.agent === "renderer-deny" && e.type === "lease_granted" && (e.secret ?? "").endsWith("forbidden"));
    assert.deepEqual(granted, []);
  });

  test("attack: malformed, overlong and look-alike references are refused (exit 2) before any lease", async () => {
    const bad = [
      `lessor://global/${"a".repeat(129)}`,
      `lessor://global/api-token#${"k".repeat(257)}`,
      "lessor://global/a..b",
      "lessor://global/../forbidden",
      "{{ lessor://global/api-token",
      "{{ lessor://global/api-token x }}",
      "$S:",
      "$S:\0forbidden",
      "lessor://global/%66orbidden",
      "lessor://global/\uff46orbidden",
      "lessor://GLOBAL/forbidden",
      `lessor://${"k".repeat(33)}:x/forbidden`,
      `lessor://env:${"i".repeat(129)}/forbidden`,
      "$S:@/forbidden",
      "$secret:///forbidden",
    ];
    for (const s of bad) {
      const out = join(tmp, `bad-${++fileNo}.out`);
      const r = await runCli(["inject", "-i", file(`first: $S:api-token\nk: ${s}\n`), "-o", out, "--agent", "renderer-bad"], { home });
      assert.equal(r.code, 2, `${JSON.stringify(s)}: exit ${r.code}: ${r.stderr}`);
      assert.equal(existsSync(out), false);
      assert.match(r.stderr, /Nothing was written/);
      assertNoCanary(`${s}: output`, r.stdout + r.stderr);
    }
    const rows = await auditRows(home);
    assert.deepEqual(rows.filter((e) => e.agent === "renderer-bad" && e.type === "lease_granted"), [], "a malformed template takes no lease");
  });

  test("attack: a field that names an Object.prototype member picks nothing out of a JSON secret", async () => {
    for (const f of ["__proto__", "constructor", "toString", "hasOwnProperty", "__proto__.polluted"]) {
      const r = await runCli(["inject", "-i", file(`x: lessor://global/strjson#${f} y: {{ lessor://global/outer#${f} }}\n`), "--agent", "renderer-proto"], { home });
      assert.equal(r.code, 2, `${f}: ${r.stderr}`);
      assertNoCanary(`${f}: output`, r.stdout + r.stderr);
    }
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  test("canary: a broken-JSON secret, a string secret, a missing field and a NUL value never show in errors or the audit", async () => {
    const cases: [string, string[], number][] = [
      ["inject", ["-i", file("a: $S:brokenjson/a\n")], 2],
      ["inject", ["-i", file("a: lessor://global/strjson#a\n")], 2],
      ["inject", ["-i", file("a: lessor://global/outer#a\n")], 2],
      ["run", ["--no-sandbox", "--", NODE, "-e", "0"], 2],
    ];
    const u = await runCli(["run", "--no-sandbox", "--agent", "renderer-canary", "--", NODE, "-e", "0"], { home, env: { U: "$S:badutf8" } });
    assert.equal(u.code, 2, u.stderr);
    assertNoCanary("run output (invalid UTF-8)", u.stdout + u.stderr);
    for (const [cmd, args, code] of cases) {
      const r = await runCli([cmd, "--agent", "renderer-canary", ...args], { home, env: { V: "$S:nul", W: "$S:brokenjson" } });
      assert.equal(r.code, code, `${cmd} ${args.join(" ")}: ${r.stderr}`);
      assertNoCanary(`${cmd} output`, r.stdout + r.stderr);
    }
    assertNoCanary("the audit trail", JSON.stringify(await auditRows(home)));
  });

  test("attack: inject's stdout closed early (EPIPE): no value printed, its lease revoked, and no exit 0 for an output never written", async () => {
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const c = spawn(NODE, ["--", BIN, "inject", "-i", file(`t: $S:api-token ${"pad ".repeat(100_000)}\n`), "--agent", "renderer-epipe"], {
        env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home },
        stdio: ["ignore", "pipe", "pipe"],
      });
      c.stdout.destroy();
      let stderr = "";
      c.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      c.on("close", (code) => resolve({ code, stderr }));
    });
    assertNoCanary("inject's stderr after EPIPE", r.stderr);
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const leases = await v.admin().listLeases({ agent: "renderer-epipe" });
      assert.equal(leases.length, 1);
      const live = leases.filter((l) => l.revokedAt === null);
      // What the agent could still do with the lease left behind.
      const reread = live.length > 0 ? (await v.session(agent("renderer-epipe")).accessSecret(live[0]!.id, {})).value.expose().toString() : null;
      assert.deepEqual(
        { exit: r.code, liveLeases: live.length, rereadable: reread === CANARY.token },
        { exit: r.code === 0 ? "non-zero (nothing was written)" : r.code, liveLeases: 0, rereadable: false },
        "inject's output pipe closed early: lessor exited without revoking its lease (docs/cli/run.md: leases are revoked once the output is written), and exit 0 claims the output was written",
      );
    } finally {
      await v.close();
    }
  });

  test("attack: terminal escapes, C1 and bidi characters in a malformed reference or a variable name reach stderr escaped", async () => {
    const raw = ["\u001b", "\u009b", "\u202e", "\u2066"];
    const t = await runCli(["inject", "-i", file("k: lessor://global/\u202e\u009b31m\u001b]52;c;SGVsbG8=\u0007\n"), "--agent", "renderer-term"], { home });
    assert.equal(t.code, 2, t.stderr);
    const key = "X\u001b[2J\u202e";
    const r = await runCli(["run", "--no-sandbox", "--agent", "renderer-term", "--", NODE, "-e", "0"], { home, env: { [key]: "$S:\u009b\u001b[31m" } });
    assert.equal(r.code, 2, r.stderr);
    for (const out of [t.stderr, r.stderr]) for (const c of raw) assert.ok(!out.includes(c), `raw U+${c.codePointAt(0)!.toString(16)} on stderr: ${JSON.stringify(out)}`);
  });

  test("inject -o: a symlink planted at the output path is replaced, never followed; a hard link's other name is untouched", async () => {
    const dir = mkdtempSync(join(tmp, "out-"));
    const victim = join(dir, "victim");
    writeFileSync(victim, "victim content\n", { mode: 0o644 });
    const tmpl = file("token: $S:api-token\n");

    const viaSymlink = join(dir, "config.yml");
    symlinkSync(victim, viaSymlink);
    const r1 = await runCli(["inject", "-i", tmpl, "-o", viaSymlink, "--agent", "renderer-out"], { home });
    assert.equal(r1.code, 0, r1.stderr);
    assert.equal(readFileSync(victim, "utf8"), "victim content\n", "written through the symlink");
    assert.equal(statSync(victim).mode & 0o777, 0o644);
    assert.ok(lstatSync(viaSymlink).isFile(), "the symlink was replaced by a regular file");
    assert.equal(lstatSync(viaSymlink).mode & 0o777, 0o600);
    assert.equal(readFileSync(viaSymlink, "utf8"), `token: ${CANARY.token}\n`);

    // A dangling symlink pointing where the attacker wants a file created.
    const target = join(dir, "created-by-lessor");
    const dangling = join(dir, "dangling.yml");
    symlinkSync(target, dangling);
    const r2 = await runCli(["inject", "-i", tmpl, "-o", dangling, "--agent", "renderer-out"], { home });
    assert.equal(r2.code, 0, r2.stderr);
    assert.equal(existsSync(target), false, "the symlink's target was created");
    assert.equal(lstatSync(dangling).mode & 0o777, 0o600);

    // A hard link: the other name keeps the old content.
    const hard = join(dir, "hard.yml");
    linkSync(victim, hard);
    const r3 = await runCli(["inject", "-i", tmpl, "-o", hard, "--agent", "renderer-out"], { home });
    assert.equal(r3.code, 0, r3.stderr);
    assert.equal(readFileSync(victim, "utf8"), "victim content\n");

    // A symlink to a directory at the output path.
    const sub = join(dir, "sub");
    mkdirSync(sub);
    const toDir = join(dir, "todir.yml");
    symlinkSync(sub, toDir);
    const r4 = await runCli(["inject", "-i", tmpl, "-o", toDir, "--agent", "renderer-out"], { home });
    assert.deepEqual(readdirSync(sub), [], "nothing was written inside the symlinked directory");
    if (r4.code === 0) assert.ok(lstatSync(toDir).isFile());
    assert.deepEqual(readdirSync(dir).filter((n) => n.includes(".tmp-")), [], "no temporary file left behind");
  });

  test("inject -o: under umask 000 the output is 0600; a denied render keeps the old output and leaves no temporary file", async () => {
    const dir = mkdtempSync(join(tmp, "umask-"));
    const out = join(dir, "out.yml");
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const c = spawn("/bin/sh", ["-c", 'umask 000; exec "$0" -- "$@"', NODE, BIN, "inject", "-i", file("t: $S:api-token\n"), "-o", out, "--agent", "renderer-umask"], {
        env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", LESSOR_HOME: home },
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      c.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      c.on("close", (code) => resolve({ code, stderr }));
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(statSync(out).mode & 0o777, 0o600);
    const denied = await runCli(["inject", "-i", file("t: $S:api-token\nu: $S:forbidden\n"), "-o", out, "--agent", "renderer-umask"], { home });
    assert.equal(denied.code, 3);
    assert.equal(readFileSync(out, "utf8"), `t: ${CANARY.token}\n`, "the previous output was kept");
    assert.deepEqual(readdirSync(dir), ["out.yml"], "no temporary file left behind");
  });

  test("very long templates: 20,000 references render correctly through the CLI", async () => {
    const n = 20_000;
    const r = await runCli(["inject", "-i", file("x: $S:api-token\n".repeat(n)), "--agent", "renderer-long"], { home, timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr.slice(0, 500));
    assert.equal(r.stdout, `x: ${CANARY.token}\n`.repeat(n));
  });

  test("very long templates: positions for 50,000 references on separate lines are computed in linear time (inject's lineCols)", () => {
    const n = 50_000;
    const text = "x: $S:api-token\n".repeat(n);
    const refs = findReferences(text);
    assert.equal(refs.length, n);
    const t0 = Date.now();
    const at = lineCols(text, refs.map((r) => r.start));
    const took = Date.now() - t0;
    assert.deepEqual(at[0], { line: 1, col: 4 });
    assert.deepEqual(at[n - 1], { line: n, col: 4 });
    assert.ok(took < 3000, `lessor inject spends ${took} ms only on line/column numbers for a 0.8 MB template (quadratic in its lines)`);
  });

  test("very long malformed input: findReferences answers pathological text at once", () => {
    const cases = ["{{" + " ".repeat(2_000_000), "{{ ".repeat(500_000), "$S:a".repeat(300_000).replaceAll("a$", "a $"), "lessor://global/" + "a.".repeat(60) + "x"];
    for (const c of cases) {
      const t0 = Date.now();
      try {
        findReferences(c);
      } catch {
        // malformed is fine
      }
      assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Rotation hooks
// ---------------------------------------------------------------------------------------------

/** A hook program written for these tests. argv: MODE STATE_DIR [ARG] */
const HOOK = join(tmp, "hook.mjs");
writeFileSync(
  HOOK,
  `import { readFileSync, writeFileSync, appendFileSync, readdirSync, readlinkSync, existsSync } from "node:fs";
import { join } from "node:path";
import { spawn } from "node:child_process";
const [mode, dir, arg = ""] = process.argv.slice(2);
const stdin = () => { try { return readFileSync(0); } catch { return Buffer.alloc(0); } };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
if (mode === "probe") {
  const fds = {};
  for (const fd of readdirSync("/proc/self/fd")) { try { fds[fd] = readlinkSync("/proc/self/fd/" + fd); } catch {} }
  const grab = (p) => { try { return readFileSync(p).toString("latin1"); } catch (e) { return "ERR " + e.code; } };
  const old = stdin().toString();
  writeFileSync(join(dir, "probe.json"), JSON.stringify({
    cmdline: grab("/proc/self/cmdline"), environ: grab("/proc/self/environ"), fds,
    parentCmdline: grab("/proc/" + process.ppid + "/cmdline"), cwd: process.cwd(), stdinLen: old.length,
    stdinMatches: old === process.env.EXPECT_NEVER_SET ? "bad" : "ok",
  }));
  writeFileSync(join(dir, "stdin"), old);
  process.stdout.write(arg + "\\n");
} else if (mode === "slow") {
  const f = join(dir, "count");
  const n = (existsSync(f) ? Number(readFileSync(f, "utf8")) : 0) + 1;
  writeFileSync(f, String(n));
  writeFileSync(join(dir, "started-" + process.pid), "");
  await sleep(Number(arg) || 2000);
  process.stdout.write("slow-" + n + "-" + process.pid + "\\n");
} else if (mode === "orphan") {
  // Prints a value, exits 0, but leaves a grandchild in a session of its own holding stdout.
  const c = spawn(process.execPath, ["-e", "setTimeout(() => {}, 30000)"], { detached: true, stdio: ["ignore", "inherit", "ignore"] });
  appendFileSync(join(dir, "orphan"), c.pid + "\\n");
  c.unref();
  process.stdout.write(arg + "\\n");
} else if (mode === "echo") {
  process.stdout.write(arg + "\\n");
} else { process.exit(2); }
`,
);

const hookState = (): string => mkdtempSync(join(tmp, "hookstate-"));
function rotateEntry(secret: string, mode: string, dir: string, arg: string, extra = ""): string {
  return `[[rotate]]\nsecret = ${JSON.stringify(secret)}\ncommand = ${JSON.stringify([NODE, HOOK, mode, dir, arg])}\n${extra}\n`;
}
const HOOK_POLICY = `
[[rule]]
name = "db"
effect = "allow"
agents = ["claude"]
secrets = ["*"]
any_domain = true
`;

/** Runs the CLI (built) against `home` with an exact, minimal environment. */
function cli(home: string, args: string[], env: Record<string, string> = {}, timeoutMs = 60_000) {
  return runCli(args, { home, env, timeoutMs });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("rotation hooks", () => {
  test("attack: the value reaches the hook only on stdin: not in its argv, environ or inherited descriptors; the daemon's argv and the master key neither (real lessor serve)", async () => {
    const dir = hookState();
    const shellish = `${CANARY.old}$(touch ${join(dir, "pwned")});\`touch ${join(dir, "pwned2")}\``;
    const home = await makeHome({ config: rotateEntry("db.password_x-1", "probe", dir, CANARY.new, 'stdin = "current"'), policy: HOOK_POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "db.password_x-1", value: shellish });
    await v.close();
    const keyFiles = readdirSync(home).map((n) => join(home, n));
    const d = await startServe(home);
    try {
      const r = await cli(home, ["secret", "rotate", "db.password_x-1", "--hook"]);
      assert.equal(r.code, 0, r.stderr);
      assertNoCanary("the CLI's output", r.stdout + r.stderr, shellish);
      const probe = JSON.parse(readFileSync(join(dir, "probe.json"), "utf8")) as { cmdline: string; environ: string; fds: Record<string, string>; parentCmdline: string; cwd: string };
      assert.equal(readFileSync(join(dir, "stdin"), "utf8"), shellish, "the old value reached stdin byte for byte");
      assert.equal(existsSync(join(dir, "pwned")) || existsSync(join(dir, "pwned2")) || existsSync(join(home, "pwned2")), false, "a shell ran the value");
      assert.ok(!probe.cmdline.includes(CANARY.old), "old value in the hook's argv");
      assert.ok(!probe.environ.includes(CANARY.old) && !probe.environ.includes(CANARY.new), "a value in the hook's environment");
      assert.ok(!/LESSOR_/.test(probe.environ), `a LESSOR_ variable reached the hook: ${probe.environ.replaceAll("\0", " ")}`);
      assert.ok(!probe.parentCmdline.includes(CANARY.old) && !probe.parentCmdline.includes(CANARY.new), "a value in the daemon's argv");
      const leaked = Object.entries(probe.fds).filter(([fd, target]) => Number(fd) > 2 && (keyFiles.some((k) => target.startsWith(k)) || target.startsWith(home) || target.startsWith("socket:")));
      // Node's own fd for readdir of /proc/self/fd is fine; the vault's database, key file and sockets are not.
      assert.deepEqual(leaked, [], `the hook inherited the vault's descriptors: ${JSON.stringify(probe.fds)}`);
      const admin = await LessorClient.connect({ socketPath: d.socket });
      try {
        const meta = await admin.getSecretMetadata({ name: "db.password_x-1" });
        assert.equal(meta.currentVersion, 2);
        assertNoCanary("the audit trail", JSON.stringify(await admin.auditQuery({ limit: 1000 })), shellish);
      } finally {
        await admin.close();
      }
    } finally {
      await d.stop();
    }
    assertNoCanary("the daemon's log", d.stderr(), shellish);
  });

  test("attack: two lessor processes rotating one secret at once (embedded, no daemon) run its hook once", async () => {
    const dir = hookState();
    const home = await makeHome({ config: rotateEntry("db", "slow", dir, "2500", 'timeout = "20s"'), policy: HOOK_POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.admin().storeSecret({ name: "db", value: CANARY.old });
    await v.close();
    const [a, b] = await Promise.all([cli(home, ["secret", "rotate", "db", "--hook"]), cli(home, ["secret", "rotate", "db", "--hook"])]);
    const runs = Number(readFileSync(join(dir, "count"), "utf8"));
    const v2 = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const version = (await v2.admin().getSecretMetadata({ scope: "global", name: "db" })).currentVersion;
      assert.equal(runs, 1, `the hook ran ${runs} times at once (exits ${a.code}, ${b.code}; now version ${version}): docs/cli/secret.md promises one run at a time per secret, a second refused with rate_limited`);
      assert.equal([a.code, b.code].filter((c) => c === 0).length, 1);
    } finally {
      await v2.close();
    }
  });

  test("attack: a hook that prints a value, exits 0 and leaves a grandchild holding stdout is cut at its time limit; the old version stays and the vault keeps working", async () => {
    const dir = hookState();
    const home = await makeHome({ config: rotateEntry("db", "orphan", dir, CANARY.new, 'timeout = "1s"'), policy: HOOK_POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home, PATH: process.env.PATH ?? "" } });
    try {
      await v.admin().storeSecret({ name: "db", value: CANARY.old });
      const t0 = Date.now();
      const e = await refusalOf(v.admin().rotateSecretByHook({ scope: "global", name: "db" }));
      const took = Date.now() - t0;
      assert.equal(e.code, "unavailable");
      assert.ok(took < 8000, `the rotation hung for ${took} ms`);
      assertNoCanary("the error", e.message);
      assert.equal((await v.admin().getSecretMetadata({ scope: "global", name: "db" })).currentVersion, 1);
      const got = await v.session(agent("claude")).requestLeaseAndAccess({ secret: "db" });
      assert.equal(got.value.expose().toString(), CANARY.old);
      // A second run is not refused as "already running".
      const again = await refusalOf(v.admin().rotateSecretByHook({ scope: "global", name: "db" }));
      assert.notEqual(again.code, "rate_limited");
    } finally {
      await v.close();
      // The grandchildren the hook left behind (in sessions of their own), by the pids they recorded.
      const pids = existsSync(join(dir, "orphan")) ? readFileSync(join(dir, "orphan"), "utf8").split("\n").filter(Boolean).map(Number) : [];
      for (const pid of pids) if (pid > 0 && alive(pid)) process.kill(pid, "SIGKILL");
    }
  });

  test("attack: the secret deleted while its hook runs: nothing is stored, and the run that changed the issuer is in the audit trail", async () => {
    const dir = hookState();
    const home = await makeHome({ config: rotateEntry("db", "slow", dir, "1500", 'timeout = "10s"'), policy: HOOK_POLICY });
    const v = await openVault({ home, env: { LESSOR_HOME: home, PATH: process.env.PATH ?? "" } });
    try {
      await v.admin().storeSecret({ name: "db", value: CANARY.old });
      const running = refusalOf(v.admin().rotateSecretByHook({ scope: "global", name: "db" }));
      for (let i = 0; i < 100 && !readdirSync(dir).some((n) => n.startsWith("started-")); i++) await new Promise((r) => setTimeout(r, 50));
      await v.admin().deleteSecret({ scope: "global", name: "db" });
      const e = await running;
      assert.equal(e.code, "secret_not_found");
      const rows = (await v.admin().auditQuery({ limit: 1000 })).filter((r) => r.secret === "global/db" && r.type === "secret_rotated");
      assert.ok(rows.length >= 1, "the hook ran (the issuer's credential changed) but no secret_rotated row records the attempt");
    } finally {
      await v.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The killswitch through a real daemon and the CLI
// ---------------------------------------------------------------------------------------------

describe("killswitch (real lessor serve, the built CLI)", () => {
  let d: RunningDaemon;
  let admin: LessorClient;
  let tokenFile: string;
  let orchFile: string;
  before(async () => {
    const home = await makeHome({ policy: POLICY, config: `[server]\ntcp = "127.0.0.1:0"\n` });
    await seed(home);
    d = await startServe(home);
    admin = await LessorClient.connect({ socketPath: d.socket });
    const t = await admin.createToken({ name: "ks-agent", role: "agent", agent: "renderer-ks", ttl: "1h" });
    tokenFile = file(`${t.token}\n`, 0o600);
    const o = await admin.createToken({ name: "ks-orch", role: "orchestrator", actFor: ["renderer-ks"], ttl: "1h" });
    orchFile = file(`${o.token}\n`, 0o600);
  });
  after(async () => {
    await admin?.close();
    await d?.stop();
  });

  test("attack: an agent or orchestrator token cannot resolve references for another agent (inject, run)", async () => {
    const agentEnv = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: tokenFile };
    const orchEnv = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: orchFile };
    for (const env of [agentEnv, orchEnv]) {
      const r = await runCli(["inject", "-i", file("a: $S:api-token\n"), "--agent", "renderer-other"], { env });
      assert.equal(r.code, 3, r.stderr);
      assert.equal(r.stdout, "");
      const marker = join(tmp, `imp-${++fileNo}`);
      const run = await runCli(["run", "--no-sandbox", "--agent", "renderer-other", "--", NODE, "-e", `require('fs').writeFileSync(${JSON.stringify(marker)}, process.env.T ?? '')`], { env: { ...env, T: "$S:api-token" } });
      assert.notEqual(run.code, 0);
      assert.equal(existsSync(marker), false);
      assertNoCanary("outputs", r.stdout + r.stderr + run.stdout + run.stderr);
    }
    // The agent itself, for its own id, gets its value: the refusal above was about identity.
    const own = await runCli(["inject", "-i", file("a: $S:api-token\n"), "--agent", "renderer-ks"], { env: agentEnv });
    assert.equal(own.code, 0, own.stderr);
    assert.equal(own.stdout, `a: ${CANARY.token}\n`);
    assert.deepEqual(await admin.listLeases({ agent: "renderer-other" }), []);
  });

  test("attack: agents and orchestrators cannot release (or re-pull) it; inject and run get nothing while it is engaged; the live leases of every agent end at once", async () => {
    const agentEnv = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: tokenFile };
    const orchEnv = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: orchFile };
    // Leases of two agents, live before the killswitch.
    const l1 = await admin.requestLease({ agent: "renderer-a", secret: { scope: "global", name: "api-token" } });
    const l2 = await admin.requestLease({ agent: "renderer-ks", secret: { scope: "global", name: "api-token" } });

    const pull = await runCli(["killswitch", "--yes", "--reason", "attack test"], { home: d.home });
    assert.equal(pull.code, 0, pull.stderr);
    const live = await admin.listLeases({ live: true });
    assert.deepEqual(live.filter((l) => l.id === l1.id || l.id === l2.id), [], "a lease outlived the killswitch");

    for (const env of [agentEnv, orchEnv]) {
      const rel = await runCli(["killswitch", "--release", "--reason", "let me out"], { env });
      assert.notEqual(rel.code, 0, `released by ${env.LESSOR_TOKEN_FILE}: ${rel.stdout}`);
      const pull2 = await runCli(["killswitch", "--yes", "--reason", "again"], { env });
      assert.notEqual(pull2.code, 0);
      assert.equal((await admin.status()).killswitch, true);
    }
    const raw = await LessorClient.connect({ host: "127.0.0.1", port: d.tcp!.port }, { token: readFileSync(tokenFile, "utf8").trim() }).catch((e: Error) => e);
    if (!(raw instanceof Error)) {
      const e = await refusalOf(raw.releaseKillswitch("raw"));
      assert.ok(["access_denied", "unavailable", "unauthenticated"].includes(e.code), e.code);
      await raw.close().catch(() => {});
    }
    assert.equal((await admin.status()).killswitch, true);

    const out = join(tmp, "ks.out");
    const inj = await runCli(["inject", "-i", file("a: $S:api-token\n"), "-o", out, "--agent", "renderer-ks"], { home: d.home });
    assert.equal(inj.code, 3, inj.stderr);
    assert.match(inj.stderr, /killswitch is engaged/);
    assert.equal(existsSync(out), false);
    const injAgent = await runCli(["inject", "-i", file("a: $S:api-token\n"), "--agent", "renderer-ks"], { env: agentEnv });
    assert.equal(injAgent.code, 3, injAgent.stderr);
    assert.equal(injAgent.stdout, "");
    const marker = join(tmp, "ran");
    const run = await runCli(["run", "--no-sandbox", "--agent", "renderer-ks", "--", NODE, "-e", `require('fs').writeFileSync(${JSON.stringify(marker)}, 'x')`], { home: d.home, env: { T: "$S:api-token" } });
    assert.equal(run.code, 3, run.stderr);
    assert.equal(existsSync(marker), false, "the command ran under the killswitch");
    assertNoCanary("the CLI's outputs", inj.stdout + inj.stderr + injAgent.stdout + injAgent.stderr + run.stdout + run.stderr);

    const rel = await runCli(["killswitch", "--release", "--reason", "done"], { home: d.home });
    assert.equal(rel.code, 0, rel.stderr);
    // The release does not revive the old leases.
    const e = await refusalOf(admin.accessSecret(l2.id, {}));
    assert.equal(e.code, "lease_revoked");
  });

  test("attack: lessor run's leases are revoked by the killswitch while its command runs, and the proxy-less child's lease cannot be renewed", async () => {
    const marker = join(tmp, "run-ks-started");
    const script = `require('fs').writeFileSync(${JSON.stringify(marker)}, 'x'); setTimeout(() => {}, 4000)`;
    const running = runCli(["run", "--no-sandbox", "--agent", "renderer-run-ks", "--", NODE, "-e", script], { home: d.home, env: { T: "$S:api-token" } });
    for (let i = 0; i < 200 && !existsSync(marker); i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(existsSync(marker), "the command started");
    const before = (await admin.listLeases({ agent: "renderer-run-ks", live: true })).map((l) => l.id);
    assert.equal(before.length, 1);
    const pull = await runCli(["killswitch", "--yes", "--reason", "mid-run"], { home: d.home });
    assert.equal(pull.code, 0, pull.stderr);
    assert.deepEqual(await admin.listLeases({ agent: "renderer-run-ks", live: true }), []);
    const e = await refusalOf(admin.renewLease(before[0]!));
    assert.notEqual(e.code, undefined);
    const r = await running;
    assert.equal(r.code, 0, r.stderr);
    await runCli(["killswitch", "--release", "--reason", "done"], { home: d.home });
  });
});

void readlinkSync;
