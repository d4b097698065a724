/**
 * The CLI's start-up fast path (src/cli/fast-path.ts): for every argument list it takes, it must
 * read the options exactly as commander does; it must refuse (so commander runs) whatever it cannot
 * read the same way; and against a running daemon, `lease` and `run` must really take it — they
 * work with nothing but the entry bundle, without the command tree beside it.
 */
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Script } from "node:vm";
import { after, before, describe, test } from "node:test";
import { Command, CommanderError } from "commander";
import { Cli } from "../src/cli/cli.js";
import { registerLease } from "../src/cli/commands/lease.js";
import { registerRun } from "../src/cli/commands/run.js";
import { fastParse } from "../src/cli/fast-path.js";
import { addOptions, GLOBAL_OPTIONS, optionKey, type OptionValues } from "../src/cli/option-spec.js";
import { buildIdOf, cachedDataFor, wrapCommonJs } from "../src/cli/code-cache.js";
import { FAST_COMMANDS } from "../src/cli/entry.js";
import { openVault } from "../src/config/open-vault.js";
import { BIN } from "./cli-harness.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";

class Captured extends Error {
  constructor(readonly options: OptionValues, readonly args: string[]) {
    super("captured");
  }
}

/** What commander makes of `args`: the action's options (with --home) and arguments, or "error". */
async function commanderParse(args: string[]): Promise<{ command: string; options: OptionValues; args: string[] } | "error"> {
  const cli = new Cli(() => Promise.reject(new Error("no backend in this test")));
  const program = new Command().name("lessor").exitOverride().configureOutput({ writeOut: () => {}, writeErr: () => {} });
  addOptions(program, GLOBAL_OPTIONS);
  registerLease(program, cli);
  registerRun(program, cli);
  program.hook("preAction", (_root, action) => {
    const options: OptionValues = { ...action.optsWithGlobals() };
    const positional = action.processedArgs.flat() as string[];
    throw new Captured(options, positional);
  });
  try {
    await program.parseAsync(args, { from: "user" });
  } catch (e) {
    if (e instanceof Captured) return { command: args.find((a) => a === "lease" || a === "run")!, options: e.options, args: e.args };
    if (e instanceof CommanderError) return "error";
    throw e;
  }
  return "error";
}

/** The fast path's reading in the same shape (options it left unset dropped, as commander does). */
function fastReading(args: string[]): { command: string; options: OptionValues; args: string[] } | null {
  const p = fastParse(args);
  if (!p) return null;
  const options = Object.fromEntries(Object.entries(p.options).filter(([, v]) => v !== undefined));
  return { command: args[0]!, options, args: p.args };
}

const TAKEN: string[][] = [
  ["lease", "tok", "--agent", "a"],
  ["lease", "tok"], // no --agent: an agent's own id (the daemon decides; others are told to give one)
  ["lease", "tok", "--agent=a", "--domain", "x.com", "--domain", "*.y.com", "--ttl", "5m", "--max-uses", "3", "--json"],
  ["lease", "--agent", "a", "env:prod/db"],
  ["lease", "tok", "--agent", "a", "--home", "/somewhere/else"],
  ["lease", "tok", "--agent", ""],
  ["lease", "tok", "--agent", "a", "--domain=api.example.com"],
  ["run", "--agent", "a", "--", "node", "-e", "0"],
  ["run", "--agent", "a", "--env-file", "f1", "--env-file", "f2", "--domain", "d", "--ttl", "1h", "--", "cmd", "--agent", "x", "--help"],
  ["run", "--agent", "a", "--", "cmd", "--"],
  ["run", "--home", "/h", "--agent=a", "--", "sh", "-c", "echo hi"],
  ["run", "--agent", "a", "--no-sandbox", "--project", "/p", "--", "cmd"], // commander reads --no-sandbox as sandbox: false
];

const REFUSED: string[][] = [
  ["lease", "tok", "--agent"], // no value
  ["lease", "tok", "--agent", "a", "--bogus"], // unknown option
  ["lease", "tok", "--agent", "a", "--help"],
  ["lease", "tok", "-h"],
  ["lease", "a", "b", "--agent", "x"], // too many arguments
  ["lease", "--agent", "x"], // no name
  ["lease", "tok", "--agent", "a", "--agent", "b"], // repeated single-value option
  ["lease", "tok", "--agent", "-x"], // a value that looks like an option
  ["lease", "tok", "--agent", "a", "--json=yes"], // a value for a flag
  ["lease", "tok", "--agent", "a", "--", "extra"],
  ["run", "--agent", "a", "cmd"], // the command must come after --
  ["run", "--agent", "a", "--"], // no command
  ["run", "--", "cmd"], // no --agent
  ["run", "--agent", "a", "--help", "--", "cmd"],
  ["renew", "x"], // not a fast command
  ["--home", "/h", "lease", "tok", "--agent", "a"], // a global option before the command: commander
  [],
];

describe("CLI fast path: parsing", () => {
  test("reads every argument list it takes exactly as commander does", async () => {
    for (const args of TAKEN) {
      const fast = fastReading(args);
      assert.ok(fast, `the fast path should take ${JSON.stringify(args)}`);
      assert.deepEqual(fast, await commanderParse(args), JSON.stringify(args));
    }
  });

  test("refuses what it cannot read the same way, so commander runs (and prints its help or error)", () => {
    for (const args of REFUSED) assert.equal(fastParse(args), null, JSON.stringify(args));
  });

  test("every fast command has its parse", () => {
    const samples: Record<(typeof FAST_COMMANDS)[number], string[]> = { lease: ["tok", "--agent", "a"], run: ["--agent", "a", "--", "y"] };
    for (const c of FAST_COMMANDS) assert.notEqual(fastParse([c, ...samples[c]]), null, c);
    assert.equal(fastParse(["renew", "x"]), null);
  });

  test("option keys follow commander's camelCase", () => {
    assert.equal(optionKey("max-uses"), "maxUses");
    assert.equal(optionKey("env-file"), "envFile");
  });
});

describe("CLI fast path: a running daemon", () => {
  let daemon: RunningDaemon;
  let dir: string;
  let lone: string;
  const env = (): NodeJS.ProcessEnv => ({ PATH: process.env.PATH, HOME: process.env.HOME, LESSOR_HOME: daemon.home, NO_COLOR: "1" });

  before(async () => {
    const home = await makeHome({
      policy: `[[rule]]\nname = "r"\neffect = "allow"\nagents = ["bot"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n`,
    });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    await v.session({ id: "t", role: "admin", transport: "embedded" }).storeSecret({ name: "tok", value: "fast-path-value" });
    await v.close();
    daemon = await startServe(home);
    // The bin and the fast path alone, without dist/bin/full.cjs (the command tree) beside them.
    dir = mkdtempSync(join(tmpdir(), "lessor-fast-"));
    lone = join(dir, "lessor.cjs");
    for (const f of ["lessor.cjs", "main.cjs", "main.cache", "run.cjs", "run.cache", "run-proxy.cjs", "run-proxy.cache", "run-vault-session.cjs", "run-vault-session.cache"]) copyFileSync(join(dirname(BIN), f), join(dir, f));
    writeFileSync(join(dir, "env"), "TOKEN=lessor://global/tok\n");
  });
  after(async () => {
    await daemon?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("lessor lease needs nothing but the fast-path bundle", () => {
    const r = spawnSync(process.execPath, [lone, "lease", "tok", "--agent", "bot", "--domain", "api.example.com"], { env: env(), encoding: "utf8" });
    assert.match(r.stderr, /^lessor: lease [0-9a-f-]{36} expires in (5m|4m5\ds); used up by this print\n$/);
    assert.equal(r.status, 0);
    assert.equal(r.stdout, "fast-path-value");
  });

  test("lessor run needs nothing but the fast-path bundle, and its errors keep their exit codes", () => {
    const ok = spawnSync(process.execPath, [lone, "run", "--agent", "bot", "--domain", "api.example.com", "--env-file", join(dir, "env"), "--", process.execPath, "-e", "process.exit(process.env.TOKEN.length)"], {
      env: env(),
      encoding: "utf8",
    });
    assert.equal(ok.stderr, "");
    assert.equal(ok.status, "fast-path-value".length);
    const denied = spawnSync(process.execPath, [lone, "run", "--agent", "intruder", "--env-file", join(dir, "env"), "--", "true"], { env: env(), encoding: "utf8" });
    assert.equal(denied.status, 3, denied.stderr);
    assert.match(denied.stderr, /^lessor: .*agent "intruder"/);
  });

  test("with a cache from another build, or none, the fast path still works (V8 compiles as usual)", () => {
    for (const cache of ["0".repeat(32) + "\ngarbage", null]) {
      const other = mkdtempSync(join(tmpdir(), "lessor-nocache-"));
      try {
        for (const f of ["lessor.cjs", "main.cjs", "run.cjs", "run-proxy.cjs", "run-vault-session.cjs"]) copyFileSync(join(dir, f), join(other, f));
        if (cache !== null) writeFileSync(join(other, "main.cache"), cache);
        const r = spawnSync(process.execPath, [join(other, "lessor.cjs"), "lease", "tok", "--agent", "bot", "--domain", "api.example.com"], { env: env(), encoding: "utf8" });
        assert.match(r.stderr, /^lessor: lease [0-9a-f-]{36} expires in /);
        assert.equal(r.stdout, "fast-path-value");
      } finally {
        rmSync(other, { recursive: true, force: true });
      }
    }
  });

  test("what the fast path does not take still needs the command tree (so the test above proves something)", () => {
    const r = spawnSync(process.execPath, [lone, "lease", "tok", "--agent", "bot", "--help"], { env: env(), encoding: "utf8" });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /full\.cjs|internal error/);
  });
});

describe("CLI fast path: the code caches", () => {
  const binDir = dirname(BIN);

  for (const name of ["main", "full", "run", "run-proxy", "run-vault-session"]) {
    const source = readFileSync(join(binDir, `${name}.cjs`), "utf8");
    const cache = readFileSync(join(binDir, `${name}.cache`));

    test(`the build's cache belongs to its ${name}.cjs and this Node accepts it`, () => {
      assert.match(buildIdOf(source) ?? "", /^[0-9a-f]{32}$/);
      const data = cachedDataFor(cache, source);
      assert.ok(data, `the cache is stamped with ${name}.cjs's build id`);
      const script = new Script(wrapCommonJs(source), { filename: join(binDir, `${name}.cjs`), cachedData: data });
      assert.equal(script.cachedDataRejected, false);
    });

    test(`a cache is not used with another build of ${name}.cjs, even one of the same length`, () => {
      const id = buildIdOf(source)!;
      const other = source.replace(id, id.replace(/^./, (c) => (c === "0" ? "1" : "0")));
      assert.equal(other.length, source.length);
      assert.equal(cachedDataFor(cache, other), undefined);
      assert.equal(cachedDataFor(cache, source.slice(0, source.lastIndexOf("//# lessor-build="))), undefined);
      assert.equal(cachedDataFor(Buffer.from("not a cache"), source), undefined);
    });
  }

  test("the bundles apart are loaded through their code caches, not with a plain require, and are in no other bundle", () => {
    const read = (name: string) => readFileSync(join(binDir, `${name}.cjs`), "utf8");
    // main.cjs (lease, run) loads run.cjs; run.cjs loads the proxy and the vault session.
    for (const [from, part] of [
      ["main", "run"],
      ["run", "run-proxy"],
      ["run", "run-vault-session"],
    ] as const) {
      const src = read(from);
      assert.match(src, new RegExp(`loadBundle\\(__dirname,\\s*"${part}"\\)`), `${from}.cjs loads ${part}.cjs`);
      assert.doesNotMatch(src, new RegExp(`require\\("\\./${part}\\.cjs"\\)`));
    }
    // Their code is in their own bundles only: run's sandbox, the proxy's CA, the vault session's protocol server.
    const main = read("main");
    assert.doesNotMatch(main, /src\/cli\/run\/(run|proxy|vault-session)\.ts|src\/sandbox\/|src\/server\/server\.ts/);
    assert.doesNotMatch(main, /\bfunction runChild\b|\bfunction bwrapArgs\b/);
    assert.doesNotMatch(read("run"), /src\/cli\/run\/(proxy|vault-session)\.ts|src\/server\/server\.ts|\bLessorServer=class\b/);
    assert.match(read("run"), /\bfunction runChild\b/);
    assert.match(read("run-vault-session"), /\bLessorServer=class\b/);
  });
});

/** One script of a NODE_V8_COVERAGE file: its functions with the call count of each (the first range). */
interface Coverage {
  url: string;
  functions: { functionName: string; ranges: { count: number }[] }[];
}

describe("CLI start-up: what the bundles load", () => {
  const binDir = dirname(BIN);

  // How esbuild names the driver's entry module in a bundle (after the path it was found at): the
  // function that runs the module, which V8's coverage reports under that name.
  const PG = "node_modules/pg/lib/index.js";

  test("a command of a SQLite vault with a key file runs neither PostgreSQL's driver nor argon2: each is loaded only when needed", async () => {
    // The driver is in the command tree's bundle (so this test looks at the right thing)…
    assert.ok(readFileSync(join(binDir, "full.cjs"), "utf8").includes(`"${PG}"(`), "pg is bundled into full.cjs");
    // …but `lessor secret list` (in-process, SQLite) never runs its module: V8's coverage of the run
    // counts the calls of each function of full.cjs, the modules' own functions among them.
    const dir = mkdtempSync(join(tmpdir(), "lessor-loads-"));
    try {
      const home = await makeHome();
      const cov = join(dir, "coverage");
      const r = spawnSync(process.execPath, [BIN, "--home", home, "secret", "list"], { encoding: "utf8", env: { PATH: process.env.PATH, HOME: process.env.HOME, NODE_V8_COVERAGE: cov } });
      assert.equal(r.status, 0, r.stderr);
      const scripts = readdirSync(cov).flatMap((f) => (JSON.parse(readFileSync(join(cov, f), "utf8")) as { result: Coverage[] }).result);
      // (Named as the build named it: V8 keeps a script's name in its code cache.)
      const full = scripts.find((s) => /(^|\/)dist\/bin\/full\.cjs$/.test(s.url));
      assert.ok(full, `the run ran full.cjs: ${scripts.map((s) => s.url).filter((u) => u.includes("dist")).join(" ")}`);
      const calls = (name: string): number => full.functions.filter((f) => f.functionName === name).reduce((n, f) => n + f.ranges[0]!.count, 0);
      assert.ok(calls("src/config/open-vault.ts") > 0, "the run opened the vault in-process (else this test checks nothing)");
      assert.ok(calls("src/store/sqlite/sqlite-store.ts") > 0, "the run used the SQLite store");
      assert.equal(calls(PG), 0, "pg's module ran");
      // Nor argon2's addon: the home's key is a key file, and only a passphrase needs it.
      const loaded = scripts.map((s) => s.url);
      assert.ok(loaded.some((u) => u.includes("/node_modules/better-sqlite3/")), "coverage saw the native modules' loaders the run loads");
      assert.deepEqual(loaded.filter((u) => u.includes("@node-rs/argon2")), []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the bundles leave out zod's translated messages, and keep English ones", () => {
    // main.cjs (lease, run) has no zod at all; the vault session's protocol server and the command tree do.
    assert.ok(!readFileSync(join(binDir, "main.cjs"), "utf8").includes("$ZodType"), "main.cjs bundles zod");
    for (const name of ["run-vault-session", "full"]) {
      const src = readFileSync(join(binDir, `${name}.cjs`), "utf8");
      assert.ok(src.includes("$ZodType"), `${name}.cjs holds zod (else this test checks nothing)`);
      // Words of zod's German and Portuguese messages (node_modules/zod/v4/locales/de.js, pt.js), in
      // ASCII since the bundle escapes the rest.
      assert.ok(!src.includes("erwartet"), `German messages are bundled in ${name}.cjs`);
      assert.ok(!src.includes("esperado"), `Portuguese messages are bundled in ${name}.cjs`);
      assert.ok(src.includes("Invalid input"), `English messages are bundled in ${name}.cjs`);
    }
  });
});
