/**
 * `lessor secret …` through the BUILT CLI as a child process (npm run build:cli first): every command and
 * option, the --json shapes, exit codes, the lossless export/import of awkward values in both formats,
 * the no-echo prompt under a real pseudo-terminal (util-linux `script`), and daemon mode.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import fc from "fast-check";
import { formatDotenv, parseDotenv } from "../src/cli/secret/dotenv.js";
import { formatJson, parseJsonExport } from "../src/cli/secret/json-format.js";
import { openVault } from "../src/config/open-vault.js";
import { BIN, cliHome, runCli } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";
import { assertPtyEchoes, hasScript, pty as runPty, type PtyOptions } from "./pty.js";

const CANARY = "CANARY-5e1d-secret-cli-do-not-leak";
const work = mkdtempSync(join(tmpdir(), "lessor-cli-secret-"));

interface RawResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Like runCli, but stdout stays bytes (values may be binary). */
function cli(args: string[], opts: { home: string; input?: string | Buffer }): Promise<RawResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: opts.home },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString("utf8") });
    });
    child.stdin.end(opts.input ?? "");
  });
}

/** Runs and asserts exit code 0, returning stdout as text. */
async function ok(args: string[], home: string, input?: string | Buffer): Promise<string> {
  const r = await cli(args, { home, ...(input !== undefined ? { input } : {}) });
  assert.equal(r.code, 0, `lessor ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout.toString("utf8");
}

async function reveal(home: string, name: string): Promise<Buffer> {
  const r = await cli(["secret", "get", name, "--reveal"], { home });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

/** Runs `fn` over `items` at most `n` at a time. */
async function pool<T, R>(items: T[], n: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

function file(name: string, data: string | Buffer): string {
  const p = join(work, name);
  writeFileSync(p, data);
  return p;
}

describe("secret set", { concurrency: 2 }, () => {
  test("stdin: one trailing \\n or \\r\\n is removed by default, kept with --keep-newline", async () => {
    const home = await cliHome();
    assert.equal(await ok(["secret", "set", "a"], home, "tok\n"), "stored global/a version 1\n");
    assert.deepEqual(await reveal(home, "a"), Buffer.from("tok"));
    await ok(["secret", "set", "b"], home, "tok\r\n");
    assert.deepEqual(await reveal(home, "b"), Buffer.from("tok"));
    await ok(["secret", "set", "c"], home, "tok\n\n");
    assert.deepEqual(await reveal(home, "c"), Buffer.from("tok\n"), "exactly one newline is removed");
    await ok(["secret", "set", "d", "--keep-newline"], home, "tok\n");
    assert.deepEqual(await reveal(home, "d"), Buffer.from("tok\n"));
    assert.equal(await ok(["secret", "set", "a"], home, "tok2"), "stored global/a version 2\n");
  });

  test("--json prints the metadata; --kind, --description and --tag are kept; --create refuses an existing secret", async () => {
    const home = await cliHome();
    const meta = JSON.parse(
      await ok(["secret", "set", "env:prod/gh", "--kind", "pat", "--description", "ci token", "--tag", "ci", "--tag", "gh,prod", "--json"], home, CANARY),
    );
    assert.equal(meta.scope, "env:prod");
    assert.equal(meta.name, "gh");
    assert.equal(meta.kind, "pat");
    assert.equal(meta.description, "ci token");
    assert.deepEqual(meta.tags, ["ci", "gh", "prod"]);
    assert.equal(meta.currentVersion, 1);
    assert.equal(meta.versions.length, 1);
    assert.equal(meta.versions[0].size, CANARY.length);
    assert.ok(!JSON.stringify(meta).includes(CANARY));

    // --scope is the same as scope/name; a contradiction is a usage error
    await ok(["secret", "set", "gh", "--scope", "env:prod"], home, "v2");
    assert.deepEqual(await reveal(home, "env:prod/gh"), Buffer.from("v2"));
    const clash = await cli(["secret", "set", "env:prod/gh", "--scope", "env:dev"], { home, input: "x" });
    assert.equal(clash.code, 2);
    assert.match(clash.stderr, /--scope/);

    const dup = await cli(["secret", "set", "env:prod/gh", "--create"], { home, input: "v3" });
    assert.equal(dup.code, 2);
    assert.match(dup.stderr, /already exists/);
    assert.equal(JSON.parse(await ok(["secret", "get", "env:prod/gh", "--json"], home)).currentVersion, 2);
    assert.equal(await ok(["secret", "set", "fresh", "--create"], home, "v"), "stored global/fresh version 1\n");

    const badKind = await cli(["secret", "set", "k", "--kind", "password"], { home, input: "v" });
    assert.equal(badKind.code, 2);
    assert.match(badKind.stderr, /--kind must be one of/);
    const badName = await cli(["secret", "set", "no spaces"], { home, input: "v" });
    assert.equal(badName.code, 2);
    assert.match(badName.stderr, /not valid/);
  });

  test("a value on argv is refused (exit 2) unless --force-argv, which warns; it never reaches stderr", async () => {
    const home = await cliHome();
    for (const args of [
      ["secret", "set", "t", "--value", CANARY],
      ["secret", "set", "t", CANARY],
      ["secret", "rotate", "t", "--value", CANARY],
      ["secret", "set", "t", `--valu=${CANARY}`],
    ]) {
      const r = await cli(args, { home });
      assert.equal(r.code, 2, args.join(" "));
      assert.ok(!r.stderr.includes(CANARY), `canary on stderr for ${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stdout.length, 0);
    }
    const refused = await cli(["secret", "set", "t", "--value", CANARY], { home });
    assert.match(refused.stderr, /shell history/);
    assert.match(refused.stderr, /\bps\b/);
    assert.match(refused.stderr, /--force-argv/);
    assert.equal((await cli(["secret", "get", "t"], { home })).code, 4, "nothing was stored");

    const forced = await cli(["secret", "set", "t", "--value", CANARY, "--force-argv"], { home });
    assert.equal(forced.code, 0, forced.stderr);
    assert.match(forced.stderr, /warning: .*shell history/);
    assert.ok(!forced.stderr.includes(CANARY));
    assert.deepEqual(await reveal(home, "t"), Buffer.from(CANARY));
    assert.equal((await cli(["secret", "set", "t", "--force-argv"], { home, input: "x" })).code, 2, "--force-argv needs --value");
  });

  test("an empty value needs --allow-empty; --from-file takes bytes as they are", async () => {
    const home = await cliHome();
    const empty = await cli(["secret", "set", "e"], { home, input: "" });
    assert.equal(empty.code, 2);
    assert.match(empty.stderr, /empty.*--allow-empty/);
    const justNewline = await cli(["secret", "set", "e"], { home, input: "\n" });
    assert.equal(justNewline.code, 2);
    await ok(["secret", "set", "e", "--allow-empty"], home, "");
    assert.equal((await reveal(home, "e")).length, 0);

    const bytes = Buffer.from([0, 255, 10, 13, 10, 0x80, 0xc3, 0x28, 0x0a]);
    await ok(["secret", "set", "bin", "--from-file", file("bin.dat", bytes)], home);
    assert.deepEqual(await reveal(home, "bin"), bytes, "no newline stripped, no re-encoding");
    const missing = await cli(["secret", "set", "bin", "--from-file", join(work, "nope")], { home });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /cannot read --from-file .*ENOENT/);
    const two = await cli(["secret", "set", "bin", "--from-file", join(work, "bin.dat"), "--random"], { home });
    assert.equal(two.code, 2);
    assert.match(two.stderr, /one value source/);
  });

  test("endless or oversized input is refused before it is all read: /dev/zero as --from-file, on stdin and to import; nothing stored", async () => {
    const home = await cliHome();
    /** Runs with stdin read from `path` (a device: it never ends). */
    const fromDevice = (args: string[], path: string): Promise<{ code: number | null; stderr: string }> =>
      new Promise((resolve, reject) => {
        const fd = openSync(path, "r");
        const child = spawn(process.execPath, [BIN, ...args], {
          env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", LESSOR_HOME: home },
          stdio: [fd, "ignore", "pipe"],
        });
        closeSync(fd);
        let err = "";
        child.stderr!.on("data", (d: Buffer) => (err += d.toString("utf8")));
        const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
        child.on("error", reject);
        child.on("close", (code) => (clearTimeout(timer), resolve({ code, stderr: err })));
      });
    const file = await cli(["secret", "set", "z", "--from-file", "/dev/zero"], { home });
    assert.equal(file.code, 2, file.stderr);
    assert.match(file.stderr, /--from-file \/dev\/zero is larger than 524290 bytes.*nothing was stored.*max_secret_bytes/);
    const piped = await fromDevice(["secret", "set", "z"], "/dev/zero");
    assert.equal(piped.code, 2, piped.stderr);
    assert.match(piped.stderr, /the value on stdin is larger than 524290 bytes/);
    // Just over the cap, on a pipe that ends: refused the same way (the cap, not the vault's limit).
    const over = await cli(["secret", "set", "z"], { home, input: Buffer.alloc(512 * 1024 + 3, 0x61) });
    assert.equal(over.code, 2, over.stderr);
    assert.match(over.stderr, /larger than 524290 bytes/);
    const imp = await cli(["secret", "import", "/dev/zero"], { home });
    assert.equal(imp.code, 2, imp.stderr);
    assert.match(imp.stderr, /\/dev\/zero is larger than 67108864 bytes.*split it/);
    const impStdin = await fromDevice(["secret", "import", "-"], "/dev/zero");
    assert.equal(impStdin.code, 2, impStdin.stderr);
    assert.match(impStdin.stderr, /stdin is larger than 67108864 bytes/);
    assert.equal(JSON.parse(await ok(["secret", "list", "--json"], home)).length, 0, "nothing stored");
  });

  test("--random: default 32 base64url characters; --length and --charset hex|alnum; a fresh value each time", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "r1", "--random"], home);
    await ok(["secret", "set", "r2", "--random"], home);
    const [r1, r2] = [(await reveal(home, "r1")).toString(), (await reveal(home, "r2")).toString()];
    assert.match(r1, /^[A-Za-z0-9_-]{32}$/);
    assert.notEqual(r1, r2);
    await ok(["secret", "set", "h", "--random", "--length", "64", "--charset", "hex"], home);
    assert.match((await reveal(home, "h")).toString(), /^[0-9a-f]{64}$/);
    await ok(["secret", "set", "n", "--random", "--length", "500", "--charset", "alnum"], home);
    const n = (await reveal(home, "n")).toString();
    assert.match(n, /^[A-Za-z0-9]{500}$/);
    assert.ok(new Set(n).size > 40, "draws cover the charset");
    for (const args of [
      ["--random", "--length", "0"],
      ["--random", "--length", "abc"],
      ["--random", "--charset", "emoji"],
      ["--length", "10"],
    ]) {
      const r = await cli(["secret", "set", "bad", ...args], { home, input: "x" });
      assert.equal(r.code, 2, args.join(" "));
    }
  });
});

describe("secret get, list, history, rotate, rollback, rm", { concurrency: 2 }, () => {
  test("get is redacted by default; --reveal prints exact bytes and is audited; --json shapes; --ver", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "gh", "--kind", "pat", "--tag", "ci"], home, `${CANARY}-v1`);
    await ok(["secret", "set", "gh"], home, CANARY);

    const plain = await ok(["secret", "get", "gh"], home);
    assert.ok(!plain.includes(CANARY));
    assert.match(plain, /^secret: +global\/gh$/m);
    assert.match(plain, /^kind: +pat$/m);
    assert.match(plain, /^version: +2 \(current, stored \d{4}-\d\d-\d\dT[\d:]+Z\)$/m);
    assert.match(plain, new RegExp(`^value: +\\[redacted, ${CANARY.length} bytes\\]$`, "m"));

    const meta = JSON.parse(await ok(["secret", "get", "gh", "--json"], home));
    assert.deepEqual(Object.keys(meta).sort(), [
      "createdAt", "currentVersion", "description", "encoding", "kind", "name", "scope", "secret", "size", "tags", "updatedAt", "value", "version",
    ]);
    assert.equal(meta.secret, "global/gh");
    assert.equal(meta.value, null);
    assert.equal(meta.encoding, null);
    assert.equal(meta.size, CANARY.length);
    const old = JSON.parse(await ok(["secret", "get", "gh", "--ver", "1", "--json"], home));
    assert.equal(old.version, 1);
    assert.equal(old.size, CANARY.length + 3);

    assert.equal((await reveal(home, "gh")).toString(), CANARY, "no newline added on a pipe");
    const v1 = await cli(["secret", "get", "gh", "--ver", "1", "--reveal"], { home });
    assert.equal(v1.stdout.toString(), `${CANARY}-v1`);
    const j = JSON.parse(await ok(["secret", "get", "gh", "--reveal", "--json"], home));
    assert.equal(j.encoding, "base64");
    assert.equal(Buffer.from(j.value, "base64").toString(), CANARY);
    assert.equal(j.version, 2);
    assert.equal(j.kind, "pat");

    const vault = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const reveals = await vault.admin().auditQuery({ types: ["secret_revealed"], secret: "global/gh" });
      assert.equal(reveals.length, 3, "each --reveal is audited; the redacted gets are not");
    } finally {
      await vault.close();
    }

    for (const args of [["secret", "get", "nope"], ["secret", "get", "nope", "--reveal"], ["secret", "get", "gh", "--ver", "9"], ["secret", "get", "gh", "--ver", "9", "--reveal"]]) {
      const r = await cli(args, { home });
      assert.equal(r.code, 4, args.join(" "));
      assert.match(r.stderr, /^lessor: .*(does not exist|no version)/);
    }
    assert.equal((await cli(["secret", "get", "gh", "--ver", "x"], { home })).code, 2);
  });

  test("list: table and --json, filtered by --scope, --prefix and --tag", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "gh-token", "--kind", "pat", "--tag", "ci"], home, "a");
    await ok(["secret", "set", "gh-app"], home, "b");
    await ok(["secret", "set", "env:prod/db", "--tag", "ci,db"], home, "c");
    const table = (await ok(["secret", "list"], home)).trimEnd().split("\n");
    assert.match(table[0]!, /^SECRET +KIND +VERSION +UPDATED +TAGS$/);
    assert.equal(table.length, 4);
    assert.match(table.find((l) => l.startsWith("global/gh-token"))!, /^global\/gh-token +pat +1 +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ +ci$/);
    assert.ok(!table.join("\n").includes("\"a\""));

    const all = JSON.parse(await ok(["secret", "list", "--json"], home));
    assert.equal(all.length, 3);
    assert.deepEqual(Object.keys(all[0]).sort(), ["createdAt", "currentVersion", "description", "kind", "name", "scope", "tags", "updatedAt"]);
    const names = async (...f: string[]) => JSON.parse(await ok(["secret", "list", "--json", ...f], home)).map((s: { scope: string; name: string }) => `${s.scope}/${s.name}`).sort();
    assert.deepEqual(await names("--scope", "env:prod"), ["env:prod/db"]);
    assert.deepEqual(await names("--prefix", "gh-"), ["global/gh-app", "global/gh-token"]);
    assert.deepEqual(await names("--tag", "ci"), ["env:prod/db", "global/gh-token"]);
    const none = await cli(["secret", "list", "--tag", "nothing"], { home });
    assert.equal(none.code, 0);
    assert.equal(none.stdout.length, 0);
    assert.match(none.stderr, /no secrets match/);
  });

  test("rotate needs an existing secret; history lists versions; rollback restores an old value as a new version", async () => {
    const home = await cliHome();
    const missing = await cli(["secret", "rotate", "k"], { home, input: "x" });
    assert.equal(missing.code, 4);
    assert.match(missing.stderr, /does not exist/);
    await ok(["secret", "set", "k"], home, "one\n");
    assert.equal(await ok(["secret", "rotate", "k"], home, "two\n"), "rotated global/k to version 2\n");
    assert.deepEqual(await reveal(home, "k"), Buffer.from("two"));
    const rj = JSON.parse(await ok(["secret", "rotate", "k", "--random", "--length", "10", "--json"], home));
    assert.equal(rj.currentVersion, 3);
    assert.match((await reveal(home, "k")).toString(), /^[A-Za-z0-9_-]{10}$/);

    const hist = (await ok(["secret", "history", "k"], home)).trimEnd().split("\n");
    assert.match(hist[0]!, /^VERSION +BYTES +CREATED +BY +KEY$/);
    assert.match(hist[1]!, /^1 +3 +\d{4}-/);
    assert.match(hist[3]!, /^3 \* +10 +/);
    const hj = JSON.parse(await ok(["secret", "history", "k", "--json"], home));
    assert.deepEqual(hj.map((v: { version: number }) => v.version), [1, 2, 3]);
    assert.deepEqual(Object.keys(hj[0]).sort(), ["alg", "createdAt", "createdBy", "keyId", "size", "version"]);

    assert.equal(await ok(["secret", "rollback", "k", "1"], home), "rolled back global/k: version 4 has the value of version 1\n");
    assert.deepEqual(await reveal(home, "k"), Buffer.from("one"));
    assert.equal(JSON.parse(await ok(["secret", "rollback", "k", "2", "--json"], home)).currentVersion, 5);
    assert.equal((await cli(["secret", "rollback", "k", "99"], { home })).code, 4);
    assert.equal((await cli(["secret", "rollback", "k", "one"], { home })).code, 2);
    assert.equal((await cli(["secret", "history", "nope"], { home })).code, 4);
  });

  test("rm refuses without --yes when stdin is not a terminal; --yes deletes; missing is 4", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "gone"], home, "x");
    const refused = await cli(["secret", "rm", "gone"], { home });
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, /--yes/);
    assert.equal((await cli(["secret", "get", "gone"], { home })).code, 0, "still there");
    assert.equal(await ok(["secret", "rm", "gone", "--yes"], home), "deleted global/gone\n");
    assert.equal((await cli(["secret", "get", "gone"], { home })).code, 4);
    assert.equal((await cli(["secret", "rm", "gone", "--yes"], { home })).code, 4);
    await ok(["secret", "set", "g2"], home, "x");
    assert.deepEqual(JSON.parse(await ok(["secret", "rm", "g2", "--yes", "--json"], home)), { secret: "global/g2", deleted: true, revokedLeases: 0 });
  });

  test("every subcommand has --help with examples", async () => {
    const home = await cliHome();
    for (const sub of ["set", "get", "list", "rm", "rotate", "history", "rollback", "export", "import"]) {
      const r = await runCli(["secret", sub, "--help"], { home });
      assert.equal(r.code, 0, sub);
      assert.match(r.stdout, /Examples:\n {2}lessor secret /, sub);
    }
  });
});

/** Values that break naive dotenv and JSON handling. */
const AWKWARD: Record<string, Buffer> = {
  DQUOTE: Buffer.from('say "hi" and \\"escaped\\"'),
  SQUOTE: Buffer.from("it's 'quoted'"),
  LF: Buffer.from("line1\nline2\n"),
  CRLF: Buffer.from("a\r\nb\r\n"),
  LONE_CR: Buffer.from("a\rb"),
  HASH: Buffer.from("abc # not a comment"),
  EQUALS: Buffer.from("a=b==c="),
  SPACES: Buffer.from("  padded  "),
  DOLLAR: Buffer.from("${HOME} $USER `id` $(id)"),
  BACKSLASH: Buffer.from("C:\\new\\table\\n \\"),
  TAB: Buffer.from("a\tb"),
  UNICODE: Buffer.from("héllo wörld 😀 日本語 \u2028"),
  BOM: Buffer.from("\ufeffbom"),
  EMPTY: Buffer.alloc(0),
  NUL: Buffer.from("a\u0000b"),
  ESC: Buffer.from("\u001b[31mred"),
  BASE64_LOOKALIKE: Buffer.from("base64:AAAA"),
  INVALID_UTF8: Buffer.from([0xff, 0xfe, 0x80, 0x61, 0xc3, 0x28, 0xed, 0xa0, 0x80]),
  BIG: Buffer.from(Array.from({ length: 1024 }, (_, i) => `${i % 10}"#=\n\\`).join("").padEnd(10 * 1024, "x")),
};

describe("export and import", { concurrency: 2 }, () => {
  test("export then import is lossless for awkward values, in JSON and dotenv", async () => {
    const src = await cliHome();
    const names = Object.keys(AWKWARD);
    await pool(names, 3, (n) => ok(["secret", "set", n, "--from-file", file(`v-${n}`, AWKWARD[n]!), "--allow-empty", "--kind", "api_key", "--tag", "t1"], src));

    const jsonPath = join(work, "backup.json");
    const envPath = join(work, "backup.env");
    const je = await cli(["secret", "export", "--output", jsonPath], { home: src });
    assert.equal(je.code, 0, je.stderr);
    assert.match(je.stderr, new RegExp(`exported ${names.length} secrets as json`));
    assert.equal(statSync(jsonPath).mode & 0o777, 0o600);
    await ok(["secret", "export", "--format", "dotenv", "-o", envPath], src);
    assert.equal(statSync(envPath).mode & 0o777, 0o600);
    const env = readFileSync(envPath, "utf8");
    assert.match(env, /^INVALID_UTF8=base64:/m);
    assert.match(env, /^BASE64_LOOKALIKE="base64:AAAA"$/m);
    assert.match(env, /^EMPTY=""$/m);
    assert.match(env, /^DOLLAR="\\\$\{HOME\}/m);
    const json = JSON.parse(readFileSync(jsonPath, "utf8"));
    assert.equal(json["global/INVALID_UTF8"].encoding, "base64");
    assert.equal(json["global/UNICODE"].encoding, "utf8");
    assert.equal(json["global/UNICODE"].value, AWKWARD.UNICODE!.toString());
    assert.deepEqual(Object.keys(json["global/HASH"]).sort(), ["description", "encoding", "kind", "tags", "value"]);

    // Stdout export gives the same document
    assert.deepEqual(JSON.parse(await ok(["secret", "export", "--format", "json"], src)), json);

    const viaJson = await cliHome();
    const viaEnv = await cliHome();
    const ij = await ok(["secret", "import", jsonPath], viaJson);
    assert.match(ij, new RegExp(`imported ${names.length} secrets from ${jsonPath.replace(/[/.]/g, "\\$&")}`));
    await ok(["secret", "import", envPath], viaEnv);

    const checks = names.flatMap((n) => [viaJson, viaEnv].map((home) => ({ n, home })));
    await pool(checks, 4, async ({ n, home }) => {
      assert.deepEqual(await reveal(home, n), AWKWARD[n], `${n} via ${home === viaJson ? "json" : "dotenv"}`);
    });
    const meta = JSON.parse(await ok(["secret", "get", "HASH", "--json"], viaJson));
    assert.equal(meta.kind, "api_key", "JSON keeps the kind");
    assert.deepEqual(meta.tags, ["t1"]);

    // Importing again adds a version
    const again = JSON.parse(await ok(["secret", "import", jsonPath, "--json"], viaJson));
    assert.equal(again.length, names.length);
    assert.deepEqual(Object.keys(again[0]).sort(), ["name", "scope", "secret", "version"]);
    assert.ok(again.every((e: { version: number }) => e.version === 2));
  });

  test("dotenv refuses other scopes and names that are not env keys, pointing at --format json; --scope selects and re-targets", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "API_KEY"], home, "g");
    await ok(["secret", "set", "env:prod/DB_URL"], home, "postgres://p");
    const scopes = await cli(["secret", "export", "--format", "dotenv"], { home });
    assert.equal(scopes.code, 2);
    assert.match(scopes.stderr, /one scope.*env:prod\/DB_URL.*--scope env:prod.*--format json/);
    assert.equal(scopes.stdout.length, 0);

    const prod = await ok(["secret", "export", "--scope", "env:prod"], home);
    assert.match(prod, /^DB_URL="postgres:\/\/p"$/m);
    assert.ok(!prod.includes("API_KEY"));

    await ok(["secret", "set", "env:prod/my.key"], home, "x");
    const names = await cli(["secret", "export", "--scope", "env:prod"], { home });
    assert.equal(names.code, 2);
    assert.match(names.stderr, /my\.key.*--format json/);

    // JSON handles every scope; import --scope moves them into one
    const all = await ok(["secret", "export", "--format", "json", "--prefix", "DB"], home);
    const target = await cliHome();
    const r = await cli(["secret", "import", "-", "--scope", "env:staging"], { home: target, input: all });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(await reveal(target, "env:staging/DB_URL"), Buffer.from("postgres://p"));
    // dotenv import from stdin into a scope
    await ok(["secret", "import", "-", "--scope", "env:dev"], target, prod);
    assert.deepEqual(await reveal(target, "env:dev/DB_URL"), Buffer.from("postgres://p"));
  });

  test("property: both formats read back any bytes and any text (in-process)", () => {
    const value = fc.oneof(fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), fc.string({ unit: "binary", maxLength: 64 }).map((t) => Buffer.from(t)));
    const entries = fc.uniqueArray(fc.record({ name: fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,20}$/), value }), { selector: (e) => e.name, maxLength: 8 });
    fc.assert(
      fc.property(entries, (es) => {
        const back = parseDotenv(formatDotenv(es, ["header"]));
        assert.deepEqual(new Map(back.map((e) => [e.name, e.value])), new Map(es.map((e) => [e.name, e.value])));
        const json = parseJsonExport(formatJson(es.map((e) => ({ scope: "env:x", ...e }))));
        assert.deepEqual(new Map(json.map((e) => [`${e.scope}/${e.name}`, e.value])), new Map(es.map((e) => [`env:x/${e.name}`, e.value])));
      }),
      { numRuns: 300 },
    );
  });

  test("import reads hand-written dotenv: export, comments, single quotes, unquoted values, multi-line quotes", async () => {
    const home = await cliHome();
    const text = [
      "# a comment",
      "",
      "export A=plain value  # trailing comment",
      "B='single $HOME \\n'",
      'C="multi',
      'line"',
      "D=",
      "  E = spaced",
      "F=x#y",
    ].join("\r\n");
    await ok(["secret", "import", "-"], home, text);
    const want: Record<string, string> = { A: "plain value", B: "single $HOME \\n", C: "multi\r\nline", D: "", E: "spaced", F: "x#y" };
    for (const [k, v] of Object.entries(want)) assert.equal((await reveal(home, k)).toString(), v, k);
  });

  test("a bad import file is exit 2 with its line and column, stores nothing, and never echoes values", async () => {
    const home = await cliHome();
    const cases: [string, string, RegExp][] = [
      ["bad1.env", `OK=1\nGOOD="fine"\nBAD="${CANARY}\nNEXT=2\n`, /line 3, column 5: the double-quoted value of BAD is never closed/],
      ["bad2.env", `A=1\n\n${CANARY}\n`, /line 3, column 7: expected "=" after the name;/],
      ["bad7.env", `A=1\n\n  -${CANARY}\n`, /line 3, column 3: expected NAME=VALUE/],
      ["bad3.env", `A="${CANARY}" trailing\n`, /line 1, column \d+: unexpected text after the value of A/],
      ["bad4.env", `A="a\\q${CANARY}"\n`, /line 1, column 5: unknown escape/],
      ["bad5.env", `A=1\nA=2\n`, /line 2, column 1: A is set twice \(first on line 1\)/],
      ["bad6.env", `A=base64:${CANARY}\n`, /line 1, column 10: .*not valid standard base64/],
      ["bad1.json", `{\n  "a": { "value": "${CANARY}", },\n}\n`, /line 2, column \d+: expected a key in double quotes/],
      ["bad2.json", `{\n  "a": { "value": "x" },\n  "a": { "value": "${CANARY}" }\n}`, /line 3, column 3: this key appears twice in the same object \(first at line 2\)/],
      ["bad3.json", `{\n  "a": { "value": "${CANARY}", "encoding": "hex" }\n}`, /line 2, column \d+: encoding must be/],
      ["bad4.json", `{\n  "a": { "value": "x", "${CANARY}": 1 }\n}`, /line 2, column \d+: unknown field in the entry for a; the fields are value, encoding/],
      ["bad5.json", `{\n  "a": { "value": "${CANARY}" }`, /line 2, column \d+: the file ends inside an object/],
      ["bad6.json", `{\n  "bad name": { "value": "${CANARY}" }\n}`, /line 2, column 3: secret name "bad name" is not valid/],
    ];
    for (const [name, body, want] of cases) {
      const r = await cli(["secret", "import", file(name, body)], { home });
      assert.equal(r.code, 2, `${name}: ${r.stderr}`);
      assert.match(r.stderr, want, name);
      assert.match(r.stderr, /nothing was imported/, name);
      assert.ok(!r.stderr.includes(CANARY), `${name} leaked the value: ${r.stderr}`);
    }
    assert.deepEqual(JSON.parse(await ok(["secret", "list", "--json"], home)), [], "nothing was stored from any bad file");
    const missing = await cli(["secret", "import", join(work, "no-such-file")], { home });
    assert.equal(missing.code, 2);
    const badFormat = await cli(["secret", "export", "--format", "yaml"], { home });
    assert.equal(badFormat.code, 2);
  });
});

const PTY: PtyOptions = { killAfterMs: 20_000, waitForMs: 10_000 };
const pty = (command: string, env: Record<string, string>) => runPty(command, env, PTY);

const lessorCmd = (args: string) => `${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} ${args}`;

describe("prompts under a real pseudo-terminal", { skip: !hasScript && "util-linux script (bsdutils) is not installed" }, () => {
  test("the pty echoes typed input by default (so the no-echo checks below mean something)", () => assertPtyEchoes(PTY));

  test("secret set prompts twice without echo; backspace edits; the value is stored", async () => {
    const home = await cliHome();
    const t = pty(lessorCmd("secret set typed --kind pat"), { LESSOR_HOME: home });
    await t.waitFor("Value for global/typed: ");
    t.type(`${CANARY}xy\x7f\x7fZ\r`);
    await t.waitFor("Again, to confirm: ");
    t.type(`${CANARY}Z\r`);
    assert.equal(await t.exit(), 0, t.out);
    assert.match(t.out, /stored global\/typed version 1/);
    assert.ok(!t.out.includes(CANARY), `the typed value was echoed: ${JSON.stringify(t.out)}`);
    assert.ok(!t.out.includes("*"), "no masking characters either");
    assert.deepEqual(await reveal(home, "typed"), Buffer.from(`${CANARY}Z`));
  });

  test("a mismatch stores nothing (exit 2); Ctrl-C cancels (exit 130); rotate prompts too", async () => {
    const home = await cliHome();
    const a = pty(lessorCmd("secret set m"), { LESSOR_HOME: home });
    await a.waitFor("Value for");
    a.type(`${CANARY}1\r`);
    await a.waitFor("Again");
    a.type(`${CANARY}2\r`);
    assert.equal(await a.exit(), 2);
    assert.match(a.out, /did not match; nothing was stored/);
    assert.ok(!a.out.includes(CANARY));

    const b = pty(lessorCmd("secret set m"), { LESSOR_HOME: home });
    await b.waitFor("Value for");
    b.type(`${CANARY}\x03`);
    assert.equal(await b.exit(), 130);
    assert.match(b.out, /cancelled; nothing was stored/);
    assert.ok(!b.out.includes(CANARY));
    assert.equal((await cli(["secret", "get", "m"], { home })).code, 4);

    await ok(["secret", "set", "m"], home, "old");
    const c = pty(lessorCmd("secret rotate m"), { LESSOR_HOME: home });
    await c.waitFor("Value for global/m");
    c.type("new-value\r");
    await c.waitFor("Again");
    c.type("new-value\r");
    assert.equal(await c.exit(), 0, c.out);
    assert.ok(!c.out.includes("new-value"));
    assert.deepEqual(await reveal(home, "m"), Buffer.from("new-value"));

    const d = pty(lessorCmd("secret rotate absent"), { LESSOR_HOME: home });
    assert.equal(await d.exit(), 4, "a missing secret is reported before prompting");
    assert.ok(!d.out.includes("Value for"));
  });

  test("rm asks for confirmation on a terminal", async () => {
    const home = await cliHome();
    await ok(["secret", "set", "keep"], home, "x");
    const no = pty(lessorCmd("secret rm keep"), { LESSOR_HOME: home });
    await no.waitFor("Delete global/keep (1 kept version)? [y/N] ");
    no.type("n\r");
    assert.equal(await no.exit(), 1);
    assert.match(no.out, /not deleted/);
    assert.equal((await cli(["secret", "get", "keep"], { home })).code, 0);

    const yes = pty(lessorCmd("secret rm keep"), { LESSOR_HOME: home });
    await yes.waitFor("[y/N] ");
    yes.type("y\r");
    assert.equal(await yes.exit(), 0, yes.out);
    assert.match(yes.out, /deleted global\/keep/);
    assert.equal((await cli(["secret", "get", "keep"], { home })).code, 4);
  });
});

describe("against a running daemon", () => {
  test("set, get, list, rotate, export and import go through the daemon", async () => {
    const home = await cliHome();
    const d = await startServe(home);
    try {
      assert.equal(await ok(["secret", "set", "env:ci/tok", "--tag", "ci"], home, `${CANARY}\n`), "stored env:ci/tok version 1\n");
      assert.deepEqual(await reveal(home, "env:ci/tok"), Buffer.from(CANARY));
      const got = await ok(["secret", "get", "env:ci/tok"], home);
      assert.match(got, /\[redacted, \d+ bytes\]/);
      assert.ok(!got.includes(CANARY));
      assert.equal(JSON.parse(await ok(["secret", "list", "--json"], home))[0].name, "tok");
      await ok(["secret", "rotate", "env:ci/tok"], home, Buffer.from([0xff, 0x00]));
      const exported = await ok(["secret", "export", "--format", "json"], home);
      assert.equal(JSON.parse(exported)["env:ci/tok"].value, "/wA=");
      await ok(["secret", "import", "-", "--scope", "env:copy"], home, exported);
      assert.deepEqual(await reveal(home, "env:copy/tok"), Buffer.from([0xff, 0x00]));
      assert.equal((await cli(["secret", "get", "missing"], { home })).code, 4);
    } finally {
      await d.stop();
    }
    const vault = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      const stored = await vault.admin().auditQuery({ types: ["secret_stored"], secret: "env:ci/tok" });
      assert.equal(stored.length, 1);
      assert.notEqual(stored[0]!.transport, "cli", "the daemon served it, not an embedded vault");
    } finally {
      await vault.close();
    }
  });
});
