/**
 * Attack pass on moving values in and out: `lessor secret export|import|set`, secret names and
 * scopes, and how references (docs/references.md) name them. Real SQLite homes, the built CLI as a
 * child process, a real `lessor serve` on its Unix socket.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import { isScope } from "../src/base/names.js";
import { formatReference, parseReference } from "../src/cli/refs/reference.js";
import { extractField } from "../src/cli/refs/json-field.js";
import { SecretBytes } from "../src/crypto/secret-bytes.js";
import { BIN, cliHome, runCli } from "./cli-harness.js";
import { hasScript, pty } from "./pty.js";
import { startServe } from "./daemon-harness.js";

const CANARY = `CANARY-ie-${randomBytes(8).toString("hex")}`;
const work = mkdtempSync(join(tmpdir(), "lessor-atk-ie-"));
process.on("exit", () => rmSync(work, { recursive: true, force: true }));

describe("lessor secret import/export, names and scopes: attacks (importexport)", () => {
  test("the canonical reference form can name every scope, a scope with \"_\" (env:my_env) that `secret set` accepts included", async () => {
    // docs/references.md "Canonical": "The canonical form can name every scope." src/base/names.ts
    // SCOPE_RE allows "_" in a scope id ([A-Za-z0-9][A-Za-z0-9._@-]*), so the CLI stores the secret:
    const home = await cliHome();
    const set = await runCli(["secret", "set", "env:my_env/db"], { home, input: CANARY });
    assert.equal(set.code, 0, set.stderr);
    assert.ok(isScope("env:my_env"));
    // ...but the reference grammar's scope-id class has no "_" (src/cli/refs/grammar.ts isIdChar), so
    // no reference names it: `lessor run`/`inject` can never reach a secret the vault holds.
    let parsed: unknown;
    try {
      parsed = parseReference("lessor://env:my_env/db");
    } catch (e) {
      parsed = String(e);
    }
    assert.deepEqual(
      parsed,
      { scope: "env:my_env", name: "db", form: "canonical" },
      `lessor://env:my_env/db does not parse, though env:my_env is a valid scope holding a secret: ${String(parsed)}`,
    );
  });

  test("formatReference either throws or writes a reference that parses back to the same scope (env:my_env in every form)", () => {
    // docs/references.md "Round trips": "parsing what formatReference(ref, form) wrote gives back ref.
    // formatReference throws invalid_request when the form cannot express the scope."
    const broken: string[] = [];
    for (const [scope, form] of [
      ["env:my_env", "canonical"],
      ["env:my_env", "zlayer"],
      ["env:my_env@acme", "zlayer"],
      ["env:my_env", "secret-url"],
      ["service:my_svc", "zlayer"],
    ] as const) {
      let text: string;
      try {
        text = formatReference({ scope, name: "x" }, form);
      } catch {
        continue; // refusing is allowed
      }
      try {
        const back = parseReference(text);
        if (back.scope !== scope || back.name !== "x") broken.push(`${scope} as ${form}: ${text} parses as ${back.scope}/${back.name}`);
      } catch (e) {
        broken.push(`${scope} as ${form}: wrote ${text}, which does not parse (${(e as Error).message})`);
      }
    }
    assert.deepEqual(broken, []);
  });

  test(
    "`secret export` (and `secret list`) work the same against a running daemon: a backup of 1000 secrets with long descriptions is taken there too",
    { timeout: 60_000 },
    async () => {
      // docs/cli/secret.md: "Every command works the same against a running daemon and on the embedded
      // vault". Descriptions may be 1024 characters (src/vault/secrets.ts MAX_DESCRIPTION). Embedded,
      // the export below works; through `lessor serve` the one unpaged list_secrets answer is over the
      // 1 MiB frame limit (src/server/connection.ts:477), so the owner cannot take a backup at all
      // while the daemon runs (about 7,000 secrets without descriptions do the same).
      const home = await cliHome();
      const vault = await openVault({ home, env: { LESSOR_HOME: home } });
      try {
        for (let i = 0; i < 1000; i++) await vault.admin().storeSecret({ name: `k${i}`, value: `${CANARY}-${i}`, description: "d".repeat(1000) });
      } finally {
        await vault.close();
      }
      const embedded = join(work, "embedded.json");
      const e = await runCli(["secret", "export", "-o", embedded], { home, timeoutMs: 30_000 });
      assert.equal(e.code, 0, `embedded export: ${e.stderr}`);
      assert.equal(Object.keys(JSON.parse(readFileSync(embedded, "utf8"))).length, 1000);

      const d = await startServe(home);
      try {
        const out = join(work, "daemon.json");
        const r = await runCli(["secret", "export", "-o", out], { home, timeoutMs: 30_000 });
        assert.equal(r.code, 0, `export through the daemon failed (exit ${r.code}): ${r.stderr.trim()}`);
        assert.equal(Object.keys(JSON.parse(readFileSync(out, "utf8"))).length, 1000);
        const l = await runCli(["secret", "list", "--json"], { home, timeoutMs: 30_000 });
        assert.equal(l.code, 0, `list through the daemon failed (exit ${l.code}): ${l.stderr.trim()}`);
        const names = (JSON.parse(l.stdout) as { name: string }[]).map((s) => s.name);
        assert.equal(names.length, 1000);
        assert.equal(new Set(names).size, 1000);
      } finally {
        await d.stop();
      }
    },
  );

  test("the next export removes the temporary file a killed export left, even when the killed export's pid now belongs to another process", async () => {
    // docs/cli/secret.md: "An export killed before the rename leaves that temporary file, with the
    // values; the next export to the same FILE removes it (yours, a regular file, its process gone)".
    // transfer.ts removeStaleTemps judges "its process gone" by kill(pid, 0) alone: once the pid is
    // reused (soon, in a container) the values stay on disk for good, and nothing says so.
    const home = await cliHome();
    const s = await runCli(["secret", "set", "API_KEY"], { home, input: CANARY });
    assert.equal(s.code, 0, s.stderr);
    const out = join(work, "backup.env");
    // A stand-in for the process that got the dead export's pid.
    const other: ChildProcess = spawn("sleep", ["30"], { stdio: "ignore" });
    try {
      // An export names its temp .FILE.<pid>.<start time>.tmp (field 22 of /proc/<pid>/stat): the dead
      // export's pid with a start time that is not the new process's. (Names without a start time come
      // only from versions before that, and are still judged by the pid alone.)
      const otherStart = () => {
        const st = readFileSync(`/proc/${other.pid}/stat`, "latin1");
        return st.slice(st.lastIndexOf(")") + 2).split(" ")[19]!;
      };
      const stale = join(work, `.backup.env.${other.pid}.${Number(otherStart()) + 7}.tmp`);
      writeFileSync(stale, `API_KEY="${CANARY}"\n`, { mode: 0o600 });
      // The temp of an export that is still running (its pid and its start time) is kept.
      const live = join(work, `.backup.env.${other.pid}.${otherStart()}.tmp`);
      writeFileSync(live, "in progress\n", { mode: 0o600 });
      const r = await runCli(["secret", "export", "-o", out], { home });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(statSync(out).isFile());
      assert.ok(
        !existsSync(stale),
        `a 0600 temp holding the values (${stale}), left by an export that is gone, is still there after the next export: its pid is another (non-lessor) process's now`,
      );
      assert.ok(existsSync(live), "the temp of a running export was removed");
      assert.match(r.stderr, /removed 1 temporary file holding secret values/);
    } finally {
      other.kill("SIGKILL");
    }
  });

  test("holds: look-alike spellings of one secret in a JSON import (\\u escapes, x vs global/x) are refused and nothing is stored", async () => {
    const home = await cliHome();
    const p = join(work, "alias.json");
    writeFileSync(p, `{"global/x":{"value":"a"},"\\u0078":{"value":"${CANARY}"}}`);
    const r = await runCli(["secret", "import", p], { home });
    assert.equal(r.code, 2, r.stderr);
    assert.ok(!(r.stdout + r.stderr).includes(CANARY));
    const list = await runCli(["secret", "list", "--json"], { home });
    assert.equal(list.stdout.trim(), "[]");
  });

  test("holds: a #field pick agrees with JSON.parse on duplicate keys (last wins) and on a __proto__ key", () => {
    const cases = ['{"password":"first","password":"last"}', '{"__proto__":"proto-val","a":1}', '{"a":{"x":"1"},"a":{"y":"2"}}'];
    const pick = (json: string, field: string): string | null => {
      try {
        return extractField(SecretBytes.from(json), field).expose().toString("utf8");
      } catch {
        return null;
      }
    };
    assert.equal(pick(cases[0]!, "password"), (JSON.parse(cases[0]!) as { password: string }).password);
    assert.equal(pick(cases[1]!, "__proto__"), Object.getOwnPropertyDescriptor(JSON.parse(cases[1]!), "__proto__")!.value);
    assert.equal(pick(cases[2]!, "a.x"), null); // JSON.parse keeps only the last "a", which has no x
    assert.equal(pick(cases[2]!, "a.y"), "2");
  });

  test("holds: export then import keeps NUL, invalid UTF-8, a BOM and CR-only line breaks byte for byte, in both formats", async () => {
    const home = await cliHome();
    const values: Record<string, Buffer> = {
      NUL: Buffer.concat([Buffer.from(CANARY), Buffer.from([0, 0x0a])]),
      BAD: Buffer.from([0xc3, 0x28, 0xff, 0xfe]),
      BOM: Buffer.from(`\ufeff${CANARY}`, "utf8"),
      CR: Buffer.from(`a\rb\r\nc\n`, "utf8"),
    };
    const vault = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      for (const [name, v] of Object.entries(values)) await vault.admin().storeSecret({ name, value: v });
    } finally {
      await vault.close();
    }
    for (const format of ["json", "dotenv"]) {
      const file = join(work, `rt.${format}`);
      const e = await runCli(["secret", "export", "--format", format, "--scope", "global", "-o", file], { home });
      assert.equal(e.code, 0, e.stderr);
      const i = await runCli(["secret", "import", file, "--scope", `env:${format}`], { home });
      assert.equal(i.code, 0, i.stderr);
      const back = await runCli(["secret", "export", "--format", "json", "--scope", `env:${format}`], { home });
      assert.equal(back.code, 0, back.stderr);
      const got = JSON.parse(back.stdout) as Record<string, { value: string; encoding: "utf8" | "base64" }>;
      for (const [name, v] of Object.entries(values)) {
        const e = got[`env:${format}/${name}`]!;
        assert.deepEqual(Buffer.from(e.value, e.encoding), v, `${format} ${name}`);
      }
    }
  });

  test("`secret export` to a terminal without -o is refused before any value is read; -o - prints them there on purpose", { skip: !hasScript && "util-linux script (bsdutils) is not installed" }, async () => {
    const home = await cliHome();
    assert.equal((await runCli(["secret", "set", "TERM_TOKEN"], { home, input: CANARY })).code, 0);
    const cmd = (args: string): string => `${JSON.stringify(process.execPath)} -- ${JSON.stringify(BIN)} ${args}`;
    const opts = { killAfterMs: 60_000, waitForMs: 30_000 };
    const refused = pty(cmd("secret export"), { LESSOR_HOME: home }, opts);
    assert.equal(await refused.exit(), 2, refused.out);
    assert.match(refused.out, /stdout is a terminal; give -o FILE for a backup file \(0600\), or -o - to print the values here/);
    assert.ok(!refused.out.includes(CANARY), "the value reached the terminal");
    const audit = await runCli(["audit", "tail", "--json"], { home });
    assert.ok(!audit.stdout.includes("secret_revealed"), "a refused export read (and audited) a value");
    const asked = pty(cmd("secret export -o -"), { LESSOR_HOME: home }, opts);
    assert.equal(await asked.exit(), 0, asked.out);
    assert.ok(asked.out.includes(CANARY), "-o - prints the values on the terminal");
    // A pipe is not a terminal: `lessor secret export > file` and `| gpg` work as before.
    const piped = await runCli(["secret", "export"], { home });
    assert.equal(piped.code, 0, piped.stderr);
    assert.ok(piped.stdout.includes(CANARY));
  });
});
