/**
 * Attack pass on the secret lifecycle (set|get|list|rm|rotate|history|rollback|import|export), through
 * the built CLI and the core. Attackers: another local user (nobody, via setpriv), a hostile agent or
 * orchestrator with a token, and an owner making mistakes. Each test is named after the promise it checks.
 *
 * The built CLI is copied to a private temp dir at load (dist/ may be rebuilt under us), with a
 * node_modules symlink so its ESM chunks resolve their packages.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { LessorClient } from "../src/client/client.js";
import { openVault } from "../src/config/open-vault.js";
import { cliHome } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";
import { agent, codeOf, grant, makeVault } from "./helpers.js";

const NOBODY = 65534;
const CANARY = `CANARY-slc-${randomBytes(8).toString("hex")}`;

// ---- a private copy of the built CLI ----
const PRIV = mkdtempSync(join(tmpdir(), "lessor-slc-"));
chmodSync(PRIV, 0o755);
process.on("exit", () => rmSync(PRIV, { recursive: true, force: true }));
const REPO = fileURLToPath(new URL("..", import.meta.url));
cpSync(join(REPO, "dist"), join(PRIV, "dist"), { recursive: true });
cpSync(join(REPO, "package.json"), join(PRIV, "package.json"));
symlinkSync(join(REPO, "node_modules"), join(PRIV, "node_modules"));
const BIN = join(PRIV, "dist", "bin", "lessor.cjs");

const isRoot = process.getuid?.() === 0;
const hasSetpriv = spawnSync("setpriv", ["--version"]).error === undefined;
const nobodyWorks =
  isRoot && hasSetpriv && spawnSync("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "id", "-u"], { encoding: "utf8" }).stdout.trim() === String(NOBODY);
const needNobody = nobodyWorks ? false : "needs root and setpriv to act as user nobody";

interface Res {
  code: number | null;
  stdout: Buffer;
  out: string;
  stderr: string;
}

/**
 * Runs the private CLI. `shellPrefix` (e.g. "umask 000; ulimit -f 0;") runs it through sh; `asNobody`
 * runs it as uid/gid 65534.
 */
function run(
  args: string[],
  o: { home?: string; env?: Record<string, string>; input?: string | Buffer; shellPrefix?: string; asNobody?: boolean; timeoutMs?: number } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    let cmd = process.execPath;
    let argv = ["--", BIN, ...args];
    if (o.shellPrefix !== undefined) {
      argv = ["-c", `${o.shellPrefix} exec "$0" "$@"`, process.execPath, "--", BIN, ...args];
      cmd = "/bin/sh";
    }
    if (o.asNobody) {
      argv = [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", cmd, ...argv];
      cmd = "setpriv";
    }
    const child = spawn(cmd, argv, {
      env: { PATH: process.env.PATH ?? "", HOME: o.asNobody ? "/nonexistent" : (process.env.HOME ?? "/tmp"), NO_COLOR: "1", ...(o.home ? { LESSOR_HOME: o.home } : {}), ...o.env },
      stdio: ["pipe", "pipe", "pipe"],
      cwd: "/",
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill("SIGKILL"), o.timeoutMs ?? 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out);
      resolve({ code, stdout, out: stdout.toString("utf8"), stderr: Buffer.concat(err).toString("utf8") });
    });
    child.stdin.on("error", () => {});
    child.stdin.end(o.input ?? "");
  });
}

async function ok(args: string[], home: string, input?: string | Buffer): Promise<string> {
  const r = await run(args, { home, ...(input !== undefined ? { input } : {}) });
  assert.equal(r.code, 0, `lessor ${args.join(" ")}: ${r.stderr}`);
  return r.out;
}

async function reveal(home: string, name: string): Promise<Buffer> {
  const r = await run(["secret", "get", name, "--reveal"], { home });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

async function listNames(home: string): Promise<string[]> {
  return (JSON.parse(await ok(["secret", "list", "--json"], home)) as { scope: string; name: string }[]).map((s) => `${s.scope}/${s.name}`);
}

/** Scratch dirs under /tmp, removed at exit. */
const scratches: string[] = [];
process.on("exit", () => {
  for (const d of scratches) rmSync(d, { recursive: true, force: true });
});
function scratch(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  scratches.push(d);
  return d;
}

/** Every file under `dir` (recursively) whose bytes contain `needle`. */
function filesContaining(dir: string, needle: string): string[] {
  const hits: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && readFileSync(p).includes(Buffer.from(needle))) hits.push(p);
    }
  };
  walk(dir);
  return hits;
}

// =====================================================================================================
describe("export: the file it writes", { concurrency: 1 }, () => {
  test("export -o under umask 000 over an existing 0666 file ends 0600, and a hard link to the old file never receives the values", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "API_KEY"], home, CANARY);
    const dir = scratch("lessor-slc-exp-");
    const out = join(dir, "backup.env");
    writeFileSync(out, "old\n");
    chmodSync(out, 0o666);
    linkSync(out, join(dir, "hardlink")); // someone kept a second name for the old inode
    const r = await run(["secret", "export", "-o", out], { home, shellPrefix: "umask 000;" });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(statSync(out).mode & 0o777, 0o600, "the export is 0600 even under umask 000");
    assert.ok(readFileSync(out, "utf8").includes(CANARY), "the export has the value");
    assert.equal(readFileSync(join(dir, "hardlink"), "utf8"), "old\n", "the old inode (other name) was not written through");
    assert.ok(!r.stderr.includes(CANARY));
    assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith(".tmp")), [], "no temporary file is left");
  });

  test("export -o onto a symlink (and onto predicted temp names) planted by another user in a shared sticky dir never writes the values into the attacker's file", { skip: needNobody }, async () => {
    const home = await cliHome();
    await ok(["secret", "set", "API_KEY"], home, CANARY);
    const shared = scratch("lessor-slc-shared-");
    chmodSync(shared, 0o1777);
    const trap = join(shared, "attacker-file");
    writeFileSync(trap, "");
    chmodSync(trap, 0o666);
    chownSync(trap, NOBODY, NOBODY);
    const out = join(shared, "backup.env");
    symlinkSync(trap, out);
    // The temp name is ".<base>.<pid>.tmp": plant it for the next few hundred pids too.
    const last = Number(readFileSync("/proc/sys/kernel/ns_last_pid", "utf8"));
    for (let p = last + 1; p < last + 400; p++) symlinkSync(trap, join(shared, `.backup.env.${p}.tmp`));
    const r = await run(["secret", "export", "-o", out], { home });
    assert.ok(!readFileSync(trap).includes(Buffer.from(CANARY)), "the attacker's file never got the value");
    if (r.code === 0) {
      const st = lstatSync(out);
      assert.ok(st.isFile() && !st.isSymbolicLink(), "the symlink was replaced, not followed");
      assert.equal(st.mode & 0o777, 0o600);
      const peek = spawnSync("setpriv", [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "cat", out], { encoding: "utf8" });
      assert.notEqual(peek.status, 0, "nobody cannot read the export");
      assert.ok(!peek.stdout.includes(CANARY));
    } else assert.equal(r.code, 2, r.stderr);
    assert.ok(!r.stderr.includes(CANARY));
  });

  test("an export killed before its rename leaves a 0600 temp holding the values: the next export to that path removes it, and leaves a live process's temp, a link and another user's file alone", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "API_KEY"], home, CANARY);
    const dir = scratch("lessor-slc-stale-");
    const out = join(dir, "backup.env");
    // What a SIGKILLed export leaves: ".<base>.<pid>.tmp", 0600, with the values, its process gone.
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid!;
    const stale = join(dir, `.backup.env.${dead}.tmp`);
    writeFileSync(stale, `API_KEY=${CANARY}\n`, { mode: 0o600 });
    const live = join(dir, `.backup.env.${process.pid}.tmp`); // an export running now
    writeFileSync(live, "in progress\n", { mode: 0o600 });
    const deadLink = join(dir, `.backup.env.${dead + 1}.tmp`);
    symlinkSync(join(dir, "elsewhere"), deadLink);
    const r = await run(["secret", "export", "-o", out], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!existsSync(stale), "the stale temp with the values is gone");
    assert.match(r.stderr, /removed 1 temporary file holding secret values that an interrupted export to .*backup\.env left beside it/);
    assert.ok(!r.stderr.includes(CANARY));
    assert.equal(readFileSync(live, "utf8"), "in progress\n", "a live process's temp is not touched");
    assert.ok(lstatSync(deadLink).isSymbolicLink(), "a link is not removed");
    assert.ok(readFileSync(out, "utf8").includes(CANARY));
    if (nobodyWorks) {
      const theirs = join(dir, `.backup.env.${dead + 2}.tmp`);
      writeFileSync(theirs, "theirs\n");
      chownSync(theirs, NOBODY, NOBODY);
      const again = await run(["secret", "export", "-o", out], { home });
      assert.equal(again.code, 0, again.stderr);
      assert.ok(existsSync(theirs), "another user's file is not removed");
    }
  });

  test("export -o onto a FIFO does not hang and does not write the values into the pipe", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "API_KEY"], home, CANARY);
    const dir = scratch("lessor-slc-fifo-");
    const out = join(dir, "pipe.env");
    assert.equal(spawnSync("mkfifo", [out]).status, 0);
    const started = Date.now();
    const r = await run(["secret", "export", "-o", out], { home, timeoutMs: 15_000 });
    assert.ok(Date.now() - started < 14_000, "it finished");
    assert.equal(r.code, 0, r.stderr);
    const st = lstatSync(out);
    assert.ok(st.isFile() && !st.isFIFO());
    assert.equal(st.mode & 0o777, 0o600);
  });

  test("an export that fails while writing leaves an existing backup intact and no partial or temporary file", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "API_KEY"], home, CANARY);
    const dir = scratch("lessor-slc-fail-");
    const out = join(dir, "backup.env");
    writeFileSync(out, "previous backup\n", { mode: 0o600 });
    const r = await run(["secret", "export", "-o", out], { home, shellPrefix: "ulimit -f 0;" });
    assert.notEqual(r.code, 0, "the write failed");
    assert.equal(readFileSync(out, "utf8"), "previous backup\n", "the old backup is untouched");
    assert.deepEqual(readdirSync(dir), ["backup.env"], "no temporary file is left");
    assert.ok(!r.stderr.includes(CANARY));
    const missing = await run(["secret", "export", "-o", join(dir, "no-such-dir", "x.env")], { home });
    assert.equal(missing.code, 2);
    assert.ok(!missing.stderr.includes(CANARY) && missing.stdout.length === 0, "nothing of the export went to stdout instead");
  });

  test("every value an export reads is audited as secret_revealed, one per secret; a refused export reveals (and audits a reveal of) nothing", async () => {
    const home = await cliHome();
    for (const n of ["A", "B", "C"]) await ok(["secret", "set", n], home, `${CANARY}-${n}`);
    await ok(["secret", "set", "env:prod/D"], home, "d");
    const refused = await run(["secret", "export", "--format", "dotenv"], { home }); // another scope matches
    assert.equal(refused.code, 2);
    assert.equal(refused.stdout.length, 0);
    const count = async () => {
      const v = await openVault({ home, env: { LESSOR_HOME: home } });
      try {
        return (await v.admin().auditQuery({ types: ["secret_revealed"] })).map((e) => e.secret).sort();
      } finally {
        await v.close();
      }
    };
    assert.deepEqual(await count(), [], "the refused export revealed nothing");
    const out = await run(["secret", "export", "--scope", "global"], { home });
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual(await count(), ["global/A", "global/B", "global/C"]);
  });

  test("another local user cannot list, export or read secrets through the owner's home", { skip: needNobody }, async () => {
    const home = await cliHome();
    await ok(["secret", "set", "API_KEY"], home, CANARY);
    for (const args of [["secret", "export"], ["secret", "list"], ["secret", "get", "API_KEY", "--reveal"], ["secret", "history", "API_KEY"]]) {
      const r = await run(args, { home, asNobody: true });
      assert.notEqual(r.code, 0, `${args.join(" ")} as nobody: ${r.out}`);
      assert.ok(!r.out.includes(CANARY) && !r.stderr.includes(CANARY) && !r.out.includes("API_KEY"), args.join(" "));
    }
  });
});

// =====================================================================================================
describe("export and metadata through a daemon, as an agent and an orchestrator token", { concurrency: 1 }, () => {
  test("an agent or orchestrator token cannot export, reveal, list or read history; nothing of a value is printed or written", async () => {
    const home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), `[server]\ntcp = "127.0.0.1:0"\n`, { mode: 0o600 });
    writeFileSync(join(home, "policy.toml"), grant("g", ["claude"], ["API_KEY"], ["api.example.com"]), { mode: 0o600 });
    await ok(["secret", "set", "API_KEY", "--tag", "prod"], home, CANARY);
    const d = await startServe(home);
    const dir = scratch("lessor-slc-tok-");
    let admin: LessorClient | undefined;
    try {
      admin = await LessorClient.connect({ socketPath: d.socket });
      const ag = await admin.createToken({ name: "ag", role: "agent", agent: "claude" });
      const orch = await admin.createToken({ name: "orch", role: "orchestrator", actFor: ["claude"] });
      const head = (await admin.status()).auditHead;
      for (const [who, tok] of [["agent", ag.token], ["orchestrator", orch.token]] as const) {
        const tf = join(dir, `${who}.token`);
        writeFileSync(tf, `${tok}\n`, { mode: 0o600 });
        const env = { LESSOR_ADDR: `127.0.0.1:${d.tcp!.port}`, LESSOR_TOKEN_FILE: tf };
        const out = join(dir, `${who}.json`);
        const exp = await run(["secret", "export", "--format", "json", "-o", out], { env });
        assert.equal(exp.code, 3, `${who} export: ${exp.stderr}`);
        assert.ok(!existsSync(out), `${who}: no export file`);
        assert.deepEqual(readdirSync(dir).filter((f) => f.endsWith(".tmp")), []);
        const toStdout = await run(["secret", "export", "--format", "json"], { env });
        assert.equal(toStdout.code, 3);
        assert.equal(toStdout.stdout.length, 0, `${who}: nothing on stdout`);
        const rev = await run(["secret", "get", "API_KEY", "--reveal"], { env });
        assert.equal(rev.code, 3, `${who} reveal: ${rev.stderr}`);
        for (const r of [exp, toStdout, rev]) assert.ok(!r.out.includes(CANARY) && !r.stderr.includes(CANARY));
        if (who === "agent") {
          for (const args of [["secret", "list"], ["secret", "history", "API_KEY"], ["secret", "get", "API_KEY"]]) {
            const r = await run(args, { env });
            assert.equal(r.code, 3, `agent ${args.join(" ")}: ${r.stderr}`);
            assert.ok(!r.out.includes("API_KEY") && !r.out.includes("prod"), `agent ${args.join(" ")} printed metadata: ${r.out}`);
          }
        }
      }
      const rows = (await admin.auditQuery({ afterSeq: head, limit: 1000 })).filter((e) => e.seq > head);
      assert.ok(!rows.some((e) => e.type === "secret_revealed" && e.outcome === "ok"), "no reveal succeeded");
      assert.ok(rows.filter((e) => e.type === "access_denied").length >= 4, "the refusals are audited");
      assert.ok(!JSON.stringify(rows).includes(CANARY));
    } finally {
      await admin?.close();
      await d.stop();
    }
  });
});

// =====================================================================================================
describe("import", { concurrency: 1 }, () => {
  test("import parses the whole file before storing anything: a bad tag or description in a later entry stores nothing", async () => {
    const home = await cliHome();
    const dir = scratch("lessor-slc-imp-");
    const cases: [string, string][] = [
      ["tag.json", `{\n  "global/a": { "value": "${CANARY}" },\n  "global/b": { "value": "x", "tags": ["has space"] }\n}\n`],
      ["desc.json", `{\n  "global/a": { "value": "${CANARY}" },\n  "global/b": { "value": "x", "description": "two\\nlines" }\n}\n`],
      ["tags33.json", `{\n  "global/a": { "value": "${CANARY}" },\n  "global/b": { "value": "x", "tags": ${JSON.stringify(Array.from({ length: 33 }, (_, i) => `t${i}`))} }\n}\n`],
    ];
    const broken: string[] = [];
    for (const [name, body] of cases) {
      const f = join(dir, name);
      writeFileSync(f, body);
      const r = await run(["secret", "import", f], { home });
      assert.equal(r.code, 2, `${name}: ${r.stderr}`);
      assert.ok(!r.stderr.includes(CANARY), `${name} echoed a value`);
      const stored = await listNames(home);
      if (stored.length > 0) {
        broken.push(`${name}: stored ${stored.join(", ")} then failed (${r.stderr.trim().split("\n").join(" | ")})`);
        await ok(["secret", "rm", "a", "--yes"], home);
      }
    }
    assert.deepEqual(broken, [], "a mistake in the file must be found by the parse, with nothing stored");
  });

  test("an import file naming one secret twice (as x and as global/x) is refused and stores nothing", async () => {
    const home = await cliHome();
    const dir = scratch("lessor-slc-dup-");
    const f = join(dir, "dup.json");
    writeFileSync(f, `{\n  "x": { "value": "first" },\n  "global/x": { "value": "${CANARY}" }\n}\n`);
    const r = await run(["secret", "import", f], { home });
    const names = await listNames(home);
    assert.equal(r.code, 2, `imported both entries for global/x (exit ${r.code}): ${r.out}`);
    assert.deepEqual(names, []);
    assert.ok(!r.stderr.includes(CANARY));
  });

  test("look-alike and invalid names are refused before anything is stored (unicode homoglyphs, .., a slash in dotenv)", async () => {
    const home = await cliHome();
    const dir = scratch("lessor-slc-names-");
    const cases: [string, string][] = [
      ["cyr.json", `{ "global/ok": { "value": "1" }, "global/\u0430pi": { "value": "${CANARY}" } }`],
      ["dots.json", `{ "global/ok": { "value": "1" }, "global/a..b": { "value": "${CANARY}" } }`],
      ["zw.json", `{ "global/ok": { "value": "1" }, "global/api\u200b": { "value": "${CANARY}" } }`],
      ["scope.json", `{ "global/ok": { "value": "1" }, "Env:Prod/x": { "value": "${CANARY}" } }`],
      ["cyr.env", `OK=1\n\u0430PI=${CANARY}\n`],
      ["slash.env", `OK=1\nA/B=${CANARY}\n`],
    ];
    for (const [name, body] of cases) {
      const f = join(dir, name);
      writeFileSync(f, body);
      const r = await run(["secret", "import", f], { home });
      assert.equal(r.code, 2, `${name}: ${r.stderr}`);
      assert.match(r.stderr, /nothing was imported/, name);
      assert.ok(!r.stderr.includes(CANARY), name);
    }
    assert.deepEqual(await listNames(home), []);
  });

  test("a value over max_secret_bytes: the earlier secrets stay (as documented), stderr says how many, later ones are not stored, and no value is echoed", async () => {
    const home = await cliHome();
    writeFileSync(join(home, "lessor.toml"), `[vault]\nmax_secret_bytes = 64\n`, { mode: 0o600 });
    const dir = scratch("lessor-slc-big-");
    const f = join(dir, "big.env");
    writeFileSync(f, `A=small\nB="${CANARY}${"x".repeat(100)}"\nC=later\n`);
    const r = await run(["secret", "import", f], { home });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /stored 1 of 3 secrets/);
    assert.ok(!r.stderr.includes(CANARY) && !r.out.includes(CANARY));
    assert.deepEqual(await listNames(home), ["global/A"]);
  });

  test("import over existing secrets adds a version (the old one stays readable), audits one secret_stored per entry, and no audit row holds a value", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "A", "--kind", "api_key", "--tag", "keep"], home, "old-A");
    const dir = scratch("lessor-slc-over-");
    const f = join(dir, "in.env");
    writeFileSync(f, `A="${CANARY}-A"\nB=base64:AP8ACg==\n`);
    const r = await run(["secret", "import", f, "--json"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.out).map((e: { secret: string; version: number }) => [e.secret, e.version]), [["global/A", 2], ["global/B", 1]]);
    assert.equal((await reveal(home, "A")).toString(), `${CANARY}-A`);
    const v1 = await run(["secret", "get", "A", "--version", "1", "--reveal"], { home });
    assert.equal(v1.out, "old-A");
    assert.deepEqual(await reveal(home, "B"), Buffer.from([0, 0xff, 0, 0x0a]));
    const meta = JSON.parse(await ok(["secret", "get", "A", "--json"], home));
    assert.equal(meta.kind, "api_key", "dotenv import keeps the kind");
    assert.deepEqual(meta.tags, ["keep"]);
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const stored = await v.admin().auditQuery({ types: ["secret_stored"] });
      assert.deepEqual(stored.map((e) => e.secret).sort(), ["global/A", "global/A", "global/B"]);
      assert.ok(!JSON.stringify(await v.admin().auditQuery({})).includes(CANARY));
      assert.equal((await v.admin().auditVerify()).ok, true);
    } finally {
      await v.close();
    }
  });

  test("a non-UTF-8 (binary, NUL) or truncated import file stores nothing and echoes no value (one other users can write is refused before it is read)", async () => {
    const home = await cliHome();
    const dir = scratch("lessor-slc-nul-");
    const f = join(dir, "nul.env");
    writeFileSync(f, Buffer.concat([Buffer.from(`A=1\nB=${CANARY}`), Buffer.from([0xff, 0xfe, 0x00]), Buffer.from("\n")]));
    chmodSync(f, 0o666);
    const shared = await run(["secret", "import", f], { home });
    assert.notEqual(shared.code, 0, shared.stderr);
    assert.match(shared.stderr, /can be changed by other users \(mode 0?666\)/);
    assert.ok(!shared.stderr.includes(CANARY));
    chmodSync(f, 0o600);
    const r = await run(["secret", "import", f], { home });
    assert.equal(r.code, 2, r.stderr);
    assert.ok(!r.stderr.includes(CANARY));
    assert.deepEqual(await listNames(home), []);
    // Truncated JSON (a file cut mid-write): nothing.
    const t = join(dir, "cut.json");
    writeFileSync(t, `{ "global/a": { "value": "1" }, "global/b": { "value": "${CANARY}`);
    const r2 = await run(["secret", "import", t], { home });
    assert.equal(r2.code, 2);
    assert.ok(!r2.stderr.includes(CANARY));
    assert.deepEqual(await listNames(home), []);
  });
});

// =====================================================================================================
describe("rm, rollback, history and leases (core)", { concurrency: 1 }, () => {
  const POLICY = grant("g", ["claude"], ["s"], ["api.example.com"], 'ttl = "1h"');

  test("rm revokes live leases, and after set of the same name an old lease never reads the new value or renews", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    await admin.storeSecret({ name: "s", value: "old-value" });
    const l1 = await claude.requestLease({ secret: "s", domains: ["api.example.com"] });
    const l2 = await claude.requestLease({ secret: "s", domains: ["api.example.com"] });
    assert.deepEqual(await admin.deleteSecret({ scope: "global", name: "s" }), { revokedLeases: 2 });
    assert.equal(await codeOf(claude.requestLease({ secret: "s" })), "secret_not_found");
    await admin.storeSecret({ name: "s", value: CANARY });
    for (const l of [l1, l2]) {
      assert.equal(await codeOf(claude.accessSecret(l.id, { domain: "api.example.com" })), "lease_revoked");
      assert.notEqual(await codeOf(claude.renewLease(l.id)), null, "a revoked lease does not renew");
    }
    const fresh = await claude.requestLease({ secret: "s", domains: ["api.example.com"] });
    assert.equal((await claude.accessSecret(fresh.id, { domain: "api.example.com" })).value.unsafeText(), CANARY);
    const h = await admin.secretHistory({ scope: "global", name: "s" });
    assert.deepEqual(h.map((v) => v.version), [1], "the re-created secret starts again; no old version survives");
    assert.equal(await codeOf(admin.revealSecret({ scope: "global", name: "s" }, 2)), "secret_not_found");
    await vault.close();
  });

  test("rm ends what a person approved for the old secret: an approval given before rm never yields a lease on a value stored again under the name", async () => {
    const { vault } = await makeVault({ policy: grant("gated", ["claude"], ["s"], ["api.example.com"], 'approval = "required"\nttl = "15m"') });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    await admin.storeSecret({ name: "s", value: "staging-token" });
    const asked = await claude.requestApproval({ secret: "s", domains: ["api.example.com"], reason: "read staging" });
    assert.ok(asked.required);
    await admin.decideApproval(asked.approval.id, true, "staging is fine");
    await admin.deleteSecret({ scope: "global", name: "s" });
    await admin.storeSecret({ name: "s", value: CANARY }); // a different credential under the old name
    let leaked = false;
    try {
      const l = await claude.requestLease({ secret: "s", domains: ["api.example.com"] });
      leaked = (await claude.accessSecret(l.id, { domain: "api.example.com" })).value.unsafeText() === CANARY;
    } catch {
      // refused: what we want
    }
    assert.equal(leaked, false, "the approval given for the deleted secret granted a lease on the new value");
    await vault.close();
  });

  test("keep_versions pruning the version a live lease was granted on: the lease reads the current value, never an error or a stale value", async () => {
    const { vault } = await makeVault({ policy: POLICY, limits: { keepVersions: 1 } });
    const admin = vault.admin();
    const claude = vault.session(agent("claude"));
    await admin.storeSecret({ name: "s", value: "v1" });
    const l = await claude.requestLease({ secret: "s", domains: ["api.example.com"] });
    await admin.rotateSecret({ scope: "global", name: "s" }, "v2");
    assert.deepEqual((await admin.secretHistory({ scope: "global", name: "s" })).map((v) => v.version), [2]);
    assert.equal((await claude.accessSecret(l.id, { domain: "api.example.com" })).value.unsafeText(), "v2");
    // Rollback to the pruned version: not found, nothing stored.
    assert.equal(await codeOf(admin.rollbackSecret({ scope: "global", name: "s" }, 1)), "secret_not_found");
    assert.equal((await admin.getSecretMetadata({ scope: "global", name: "s" })).currentVersion, 2);
    await vault.close();
  });

  test("rollback racing rotate: versions stay unique and consecutive, every version opens to a value that was written, the trail verifies", async () => {
    const { vault } = await makeVault({ limits: { keepVersions: 100 } });
    const admin = vault.admin();
    const ref = { scope: "global", name: "race" };
    await admin.storeSecret({ name: "race", value: "base" });
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 20; i++) {
      ops.push(admin.rotateSecret(ref, `r${i}`));
      ops.push(admin.rollbackSecret(ref, 1));
    }
    await Promise.all(ops);
    const h = await admin.secretHistory(ref);
    assert.deepEqual(h.map((v) => v.version), Array.from({ length: 41 }, (_, i) => i + 1));
    const allowed = new Set(["base", ...Array.from({ length: 20 }, (_, i) => `r${i}`)]);
    let bases = 0;
    for (const v of h) {
      const got = (await admin.revealSecret(ref, v.version)).value.unsafeText();
      assert.ok(allowed.has(got), `version ${v.version} holds ${got}`);
      if (got === "base") bases++;
    }
    assert.equal(bases, 21, "version 1 and the 20 rollbacks");
    assert.equal((await admin.auditVerify()).ok, true);
    await vault.close();
  });

  test("history and list as an agent are refused and audited; history as an orchestrator shows metadata only", async () => {
    const { vault } = await makeVault({ policy: POLICY });
    const admin = vault.admin();
    await admin.storeSecret({ name: "s", value: CANARY, description: "d" });
    const claude = vault.session(agent("claude"));
    assert.equal(await codeOf(claude.secretHistory({ scope: "global", name: "s" })), "access_denied");
    assert.equal(await codeOf(claude.listSecrets()), "access_denied");
    assert.equal(await codeOf(claude.getSecretMetadata({ scope: "global", name: "s" })), "access_denied");
    const orch = vault.session({ id: "test:orch", role: "orchestrator", actFor: ["claude"], transport: "embedded" });
    const h = await orch.secretHistory({ scope: "global", name: "s" });
    assert.ok(!JSON.stringify(h).includes(CANARY));
    assert.equal(await codeOf(orch.revealSecret({ scope: "global", name: "s" })), "access_denied");
    const denials = await admin.auditQuery({ types: ["access_denied"] });
    assert.ok(denials.length >= 4, `denials audited: ${denials.length}`);
    await vault.close();
  });
});

// =====================================================================================================
describe("rollback across a master-key rotation, and a canary through the whole CLI lifecycle", { concurrency: 1 }, () => {
  test("rollback to a version written under the previous master key gives back its exact value after lessor key rotate", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "k"], home, Buffer.from([0, 1, 2, 0xff]));
    await ok(["secret", "rotate", "k"], home, "second");
    const before = JSON.parse(await ok(["secret", "history", "k", "--json"], home)) as { keyId: string }[];
    const kr = await run(["key", "rotate"], { home });
    assert.equal(kr.code, 0, kr.stderr);
    const after = JSON.parse(await ok(["secret", "history", "k", "--json"], home)) as { keyId: string }[];
    assert.notEqual(after[0]!.keyId, before[0]!.keyId, "the DEK was re-wrapped under the new key");
    const rb = await run(["secret", "rollback", "k", "1"], { home });
    assert.equal(rb.code, 0, rb.stderr);
    assert.deepEqual(await reveal(home, "k"), Buffer.from([0, 1, 2, 0xff]));
    const pruned = await run(["secret", "rollback", "k", "99"], { home });
    assert.equal(pruned.code, 4, pruned.stderr);
    assert.equal(JSON.parse(await ok(["secret", "get", "k", "--json"], home)).currentVersion, 3, "a refused rollback stores nothing");
  });

  test("a canary value appears only in reveal output and the export the owner asked for: never in the home's files, audit rows, JSONL, stderr or list/history/get output", async () => {
    const home = await cliHome();
    const cfg = readFileSync(join(home, "lessor.toml"), "utf8").replace('# jsonl = "audit.jsonl"', 'jsonl = "audit.jsonl"');
    writeFileSync(join(home, "lessor.toml"), cfg, { mode: 0o600 });
    const dir = scratch("lessor-slc-canary-");
    mkdirSync(join(dir, "out"));
    const outputs: Res[] = [];
    const step = async (args: string[], input?: string) => {
      const r = await run(args, { home, ...(input !== undefined ? { input } : {}) });
      outputs.push(r);
      return r;
    };
    await step(["secret", "set", "CAN", "--kind", "api_key"], CANARY);
    await step(["secret", "rotate", "CAN"], `${CANARY}-2`);
    await step(["secret", "rollback", "CAN", "1"]);
    await step(["secret", "set", "CAN", "--create"], CANARY); // refused: exists
    await step(["secret", "set", "CAN", CANARY]); // refused: value on argv
    await step(["secret", "get", "CAN"]);
    await step(["secret", "get", "CAN", "--json"]);
    await step(["secret", "get", "CAN", "--version", "9", "--reveal"]);
    await step(["secret", "list", "--json"]);
    await step(["secret", "history", "CAN", "--json"]);
    const exp = join(dir, "out", "b.json");
    await step(["secret", "export", "-o", exp]);
    await step(["secret", "import", exp, "--scope", "env:copy"]);
    await step(["secret", "import", "-"], `CAN2="${CANARY}\n`); // malformed: never closed
    await step(["audit", "tail"]);
    await step(["audit", "query", "--json"]);
    await step(["secret", "rm", "CAN", "--yes"]);
    for (const r of outputs) {
      assert.ok(!r.stderr.includes(CANARY), `stderr leaked: ${r.stderr}`);
      assert.ok(!r.out.includes(CANARY), `stdout leaked: ${r.out.slice(0, 200)}`);
    }
    assert.ok(readFileSync(exp, "utf8").includes(CANARY), "the export holds it (as asked)");
    assert.deepEqual(readdirSync(join(dir, "out")), ["b.json"], "no stray temp file next to the export");
    assert.deepEqual(filesContaining(home, CANARY), [], "no file of the home (db, WAL, audit.jsonl) holds the value in clear");
    assert.ok(existsSync(join(home, "audit.jsonl")), "the JSONL sink was on");
    assert.equal((await reveal(home, "env:copy/CAN")).toString(), CANARY);
  });
});

after(() => {
  rmSync(PRIV, { recursive: true, force: true });
});
