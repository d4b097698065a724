/**
 * Attacks on `lessor secret …` (docs/cli/secret.md) through the BUILT CLI as a real child process, on a
 * real embedded SQLite home: a newcomer following the docs literally, and a hostile import-file author.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { cliHome, runCli } from "./cli-harness.js";

const CANARY = "sk_live_CANARY7f3a-imp-do-not-leak";
const work = mkdtempSync(join(tmpdir(), "lessor-atk-imp-"));

function auditText(home: string): string {
  // The audit lives in the home's database (and maybe log files): every file under the home, as bytes.
  const seen: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) seen.push(readFileSync(p).toString("latin1"));
    }
  };
  walk(home);
  return seen.join("\n");
}

describe("lessor secret: attacks (imp)", () => {
  test("`secret set NAME=VALUE` (the fly/heroku habit) is refused without printing the value back", async () => {
    const home = await cliHome();
    for (const args of [
      ["secret", "set", `API_KEY=${CANARY}`],
      ["secret", "set", `env:prod/API_KEY=${CANARY}`],
      ["secret", "rotate", `API_KEY=${CANARY}`],
    ]) {
      const r = await runCli(args, { home, input: "" });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.ok(
        !r.stderr.includes(CANARY) && !r.stdout.includes(CANARY),
        `lessor ${args[0]} ${args[1]} NAME=VALUE echoed the value in its error (value-source.ts:4 "The value is never printed or put in a message"; ` +
          `the CLI already hides what follows "=" in commander errors "in case it was a value"): ${r.stderr.trim()}`,
      );
    }
  });

  test("a dotenv import file well under the 64 MiB cap parses in linear time (its error is reported promptly)", async () => {
    const home = await cliHome();
    // 80,000 distinct one-letter values (~700 KB, 1% of MAX_IMPORT_BYTES) and then a name set twice:
    // the parse must fail ("set twice") and store nothing. Parsing is linear work; position() once
    // scanned from the start of the file for every entry (dotenv.ts), which took ~50 s here (and a
    // 64 MiB file days). The bound is loose (a loaded CI machine), the quadratic time far above it.
    let s = "";
    for (let i = 0; i < 80_000; i++) s += `K${i}=v\n`;
    s += "K0=again\n";
    const path = join(work, "big.env");
    writeFileSync(path, s);
    const t0 = Date.now();
    const r = await runCli(["secret", "import", path], { home, timeoutMs: 30_000 });
    const ms = Date.now() - t0;
    assert.ok(
      r.code === 2 && ms < 30_000,
      `import of a ${s.length}-byte dotenv file (docs: "It reads at most 64 MiB … many thousands of ordinary" values) did not report its ` +
        `duplicate within 30 s (exit ${r.code}, signal ${r.signal}, ${ms} ms): parsing is quadratic in the number of entries`,
    );
  });

  test("a JSON import file well under the cap parses in linear time too", async () => {
    const home = await cliHome();
    const parts: string[] = [];
    for (let i = 0; i < 80_000; i++) parts.push(`"k${i}":{"value":"v"}`);
    parts.push(`"global/k0":{"value":"again"}`); // the same secret as k0: an error, nothing stored
    const path = join(work, "big.json");
    writeFileSync(path, `{${parts.join(",\n")}}\n`);
    const t0 = Date.now();
    const r = await runCli(["secret", "import", path], { home, timeoutMs: 30_000 });
    const ms = Date.now() - t0;
    assert.ok(
      r.code === 2 && ms < 30_000,
      `import of a ${statSync(path).size}-byte JSON file did not report its duplicate within 30 s (exit ${r.code}, signal ${r.signal}, ${ms} ms): ` +
        `json-format.ts computes position(text, keyAt) from the file's start for every entry`,
    );
  });

  test("holds: hostile import files never quote a value in their error, and store nothing", async () => {
    const home = await cliHome();
    const files: [string, string][] = [
      ["unclosed.env", `A="x"\nDB_URL="${CANARY}\n`],
      ["escape.env", `A="${CANARY}\\q"\n`],
      ["dup.env", `A=${CANARY}\nA=${CANARY}\n`],
      ["after.env", `A="${CANARY}" ${CANARY}\n`],
      ["b64.env", `A=base64:${CANARY}\n`],
      ["name.env", `${CANARY.replace(/[^A-Za-z]/g, "")}-x=1\n`],
      ["surrogate.json", `{"global/a":{"value":"${CANARY}\\ud800"}}`],
      ["b64.json", `{"global/a":{"value":"${CANARY}","encoding":"base64"}}`],
      ["ctl.json", `{"global/a":{"value":"${CANARY}\u0001"}}`],
      ["field.json", `{"global/a":{"value":"x","${CANARY}":"y"}}`],
      ["desc.json", `{"global/a":{"value":"x","description":"${CANARY}\\u001b[2J"}}`],
      ["tags.json", `{"global/a":{"value":"x","tags":["${CANARY} x"]}}`],
      ["trail.json", `{"global/a":{"value":"x"}} ${CANARY}`],
      ["notutf8.env", `A=${CANARY}\xff`],
    ];
    for (const [name, text] of files) {
      const p = join(work, name);
      writeFileSync(p, name === "notutf8.env" ? Buffer.concat([Buffer.from(`A=${CANARY}`), Buffer.from([0xff, 0x0a])]) : text);
      const r = await runCli(["secret", "import", p], { home });
      assert.equal(r.code, 2, `${name}: ${r.stderr}`);
      assert.ok(!(r.stderr + r.stdout).includes(CANARY), `${name}: the canary was quoted: ${r.stderr}`);
      assert.ok(!(r.stderr + r.stdout).includes("\u001b"), `${name}: raw ESC printed`);
    }
    const list = await runCli(["secret", "list", "--json"], { home });
    assert.equal(list.stdout.trim(), "[]");
    assert.ok(!auditText(home).includes(CANARY), "canary in the home (audit) after refused imports");
  });

  test("holds: stdin value keeps NULs and only one trailing newline is removed; export -o is 0600 over a 0644 file and a FIFO", async () => {
    const home = await cliHome();
    const v = Buffer.concat([Buffer.from(CANARY), Buffer.from([0, 0x0a, 0x0a])]);
    const s = await runCli(["secret", "set", "nul"], { home, input: v });
    assert.equal(s.code, 0, s.stderr);
    const g = await runCli(["secret", "get", "nul", "--reveal", "--json"], { home });
    assert.deepEqual(Buffer.from(JSON.parse(g.stdout).value, "base64"), v.subarray(0, v.length - 1));
    const out = join(work, "backup.json");
    writeFileSync(out, "old", { mode: 0o644 });
    const e = await runCli(["secret", "export", "-o", out], { home });
    assert.equal(e.code, 0, e.stderr);
    assert.equal(statSync(out).mode & 0o777, 0o600);
    assert.ok(!e.stderr.includes(CANARY) && !e.stdout.includes(CANARY));
    const fifo = join(work, "fifo.env");
    execFileSync("mkfifo", [fifo]);
    const f = await runCli(["secret", "export", "-o", fifo], { home, timeoutMs: 10_000 });
    assert.equal(f.code, 0, f.stderr);
    assert.ok(statSync(fifo).isFile() && (statSync(fifo).mode & 0o777) === 0o600);
  });
});
