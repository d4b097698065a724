/**
 * `--version` after a command belongs to that command (issue 12, item 12): `lessor secret get NAME
 * --version 2` shows version 2 of the secret — it used to print lessor's own version and exit 0,
 * because commander took the program-level flag anywhere on the line. `lessor --version` (before
 * any command) still prints lessor's version. Run as the built CLI.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { before, describe, test } from "node:test";
import { VERSION } from "../src/version.js";
import { cliHome, runCli, seedHome } from "./cli-harness.js";

const V = (n: number) => `v${n}-${randomBytes(8).toString("hex")}`;

describe("--version: lessor's before a command, the command's after it", () => {
  let home: string;
  const values = [V(1), V(2), V(3)];
  before(async () => {
    home = await cliHome();
    await seedHome(home, "", [{ name: "tok", value: values[0]! }]);
    for (const v of values.slice(1)) {
      const r = await runCli(["secret", "rotate", "tok"], { home, input: v });
      assert.equal(r.code, 0, r.stderr);
    }
  });

  test("secret get NAME --version 2 --reveal prints version 2's value, not lessor's version", async () => {
    const r = await runCli(["secret", "get", "tok", "--version", "2", "--reveal"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, values[1]);
    const eq = await runCli(["secret", "get", "tok", "--version=1", "--reveal"], { home });
    assert.equal(eq.stdout, values[0]);
    const old = await runCli(["secret", "get", "tok", "--ver", "2", "--reveal"], { home });
    assert.equal(old.stdout, values[1], "--ver still works");
  });

  test("secret get NAME --version 2 shows version 2's metadata (plain and --json)", async () => {
    const r = await runCli(["secret", "get", "tok", "--version", "2"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.notEqual(r.stdout.trim(), VERSION);
    assert.match(r.stdout, /^version: +2 \(current is 3, stored /m);
    assert.ok(!r.stdout.includes(values[1]!));
    const j = await runCli(["secret", "get", "tok", "--version", "2", "--json"], { home });
    assert.equal(JSON.parse(j.stdout).version, 2);
  });

  test("mistakes with --version after a command are usage errors, never lessor's version with exit 0", async () => {
    const cases: [string[], RegExp][] = [
      [["secret", "get", "tok", "--version", "9"], /has no version 9/],
      [["secret", "get", "tok", "--version"], /argument missing/],
      [["secret", "get", "tok", "--version", "two"], /--version/],
      [["secret", "get", "tok", "--version", "1", "--ver", "2"], /ask for different versions/],
      [["lease", "tok", "--agent", "a", "--version"], /unknown option '--version'/],
      [["secret", "list", "--version"], /unknown option '--version'/],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(args, { home });
      assert.notEqual(r.code, 0, `${args.join(" ")} exited 0 with ${JSON.stringify(r.stdout)}`);
      assert.notEqual(r.stdout.trim(), VERSION, args.join(" "));
      assert.match(r.stderr, message, args.join(" "));
    }
  });

  test("lessor --version and -V (also after --home) still print lessor's version; help lists it", async () => {
    for (const args of [["--version"], ["-V"], ["--home", home, "--version"], [`--home=${home}`, "-V"]]) {
      const r = await runCli(args);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `${VERSION}\n`, args.join(" "));
    }
    const help = await runCli(["--help"]);
    assert.match(help.stdout, /-V, --version +output the version number/);
    const getHelp = await runCli(["secret", "get", "--help"]);
    assert.match(getHelp.stdout, /--version <n> +a kept version/);
  });
});
