/**
 * Hand-written configuration and policy files, attacked by typos, wrong types, values in the wrong
 * place and contradictions: a security setting must fail closed, so a slip of the person writing
 * policy.toml or lessor.toml never silently gives an agent more than they meant.
 *
 * Real parts only: the built CLI (dist/bin/lessor.cjs) as child processes, real homes in temp
 * directories, real SQLite files, real bwrap for `lessor run`. No network traffic at all.
 *
 * Each test once named a break it found (fixed since); it now holds the guarantee.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { parseConfig } from "../src/config/config.js";
import { initHome } from "../src/config/open-vault.js";
import { parsePolicy } from "../src/vault/policy.js";
import { cliHome, runCli, runCliWithEnv, seedHome } from "./cli-harness.js";
import { tempDir } from "./helpers.js";
import { HAVE_BWRAP, makeOwner, runAgent } from "./run-harness.js";

const NO_BWRAP = HAVE_BWRAP ? false : "bwrap is not usable here (apt-get install bubblewrap)";
const canary = (tag: string): string => `canary-${tag}-${randomBytes(10).toString("hex")}`;

/** A rule table as TOML, from `fields` (each value JSON, which TOML reads the same for strings, lists, booleans). */
function rule(name: string, effect: "allow" | "deny", fields: Record<string, unknown>, raw = ""): string {
  const lines = Object.entries(fields).map(([k, v]) => `${k} = ${JSON.stringify(v)}`);
  return `[[rule]]\nname = ${JSON.stringify(name)}\neffect = "${effect}"\n${lines.join("\n")}\n${raw}\n`;
}

describe("policy.toml: slips that would widen a grant", () => {
  test("a secret pattern that can name no secret (a scope without its kind, or in the wrong case) is refused naming the rule and field, so a deny rule never silently denies nothing", async () => {
    // A newcomer denies the production scope but writes it the way they think of it: "prod/*"
    // (lessor scopes are global or kind:id, so "prod" is no scope) or "Env:prod/*" (kinds are lower
    // case). `lessor secret set prod/x` is refused ("scope \"prod\" is not valid"), yet the policy
    // loads, the deny matches nothing, and the broad allow after it decides.
    for (const pattern of ["prod/*", "Env:prod/*", "ENV:PROD/*"]) {
      const home = await cliHome();
      const value = canary("prod");
      const policy =
        rule("no-prod", "deny", { agents: ["*"], secrets: [pattern] }) +
        rule("claude-everything-else", "allow", { agents: ["claude"], secrets: ["*/*"], any_domain: true });
      await seedHome(home, policy, [{ scope: "env:prod", name: "db-password", value }]);

      const check = await runCli(["policy", "check"], { home });
      assert.notEqual(check.code, 0, `policy check accepted secrets = [${JSON.stringify(pattern)}] on a deny rule, a pattern no secret name can match:\n${check.stdout}`);
      assert.match(check.stderr, /no-prod/, "the error names the rule");
      assert.match(check.stderr, /secrets/, "the error names the field");

      const lease = await runCli(["lease", "env:prod/db-password", "--agent", "claude"], { home });
      assert.ok(!lease.stdout.includes(value), `secrets = [${JSON.stringify(pattern)}] on a deny rule denied nothing: the env:prod value was handed to claude`);
      assert.notEqual(lease.code, 0);
    }
  });

  test("an allow rule with both domains and any_domain = true is refused, so its domains are never silently dropped: no lease for any other host", async () => {
    const home = await cliHome();
    const value = canary("gh");
    // The person listed the one host the token is for, and (copying the nightly-db example) added
    // any_domain = true. Nothing says the list is now ignored; `policy check` just prints "domains any".
    await seedHome(home, rule("claude-github", "allow", { agents: ["claude"], secrets: ["github-token"], domains: ["api.github.com"], any_domain: true }), [
      { name: "github-token", value },
    ]);
    const lease = await runCli(["lease", "github-token", "--agent", "claude", "--domain", "exfil.example"], { home });
    assert.ok(!lease.stdout.includes(value), "the token was leased for exfil.example although the rule lists only api.github.com");
    assert.notEqual(lease.code, 0, "a rule that lists api.github.com granted a lease for exfil.example (any_domain = true silently dropped domains)");
  });

  test("misspelled, misplaced and mistyped rule fields are refused naming the rule and field, and no grant is made under the file", async () => {
    const home = await cliHome();
    const value = canary("typo");
    const base = { agents: ["claude"], secrets: ["tok"], domains: ["api.example.com"] };
    const cases: [string, string, RegExp][] = [
      ["aproval", rule("r", "allow", base, 'aproval = "required"'), /"aproval".*did you mean "approval"/],
      ["approval case", rule("r", "allow", base, 'approval = "Required"'), /field "approval"/],
      ["approval table", rule("r", "allow", base, 'approval = { mode = "required" }'), /field "approval"/],
      ["dotted key", rule("r", "allow", base, 'rule.approval = "required"'), /unknown field "rule"/],
      ["max_use", rule("r", "allow", base, "max_use = 1"), /did you mean "max_uses"/],
      ["max_uses string", rule("r", "allow", base, 'max_uses = "1"'), /field "max_uses"/],
      ["max_uses 1.5", rule("r", "allow", base, "max_uses = 1.5"), /field "max_uses"/],
      ["max_uses 0", rule("r", "allow", base, "max_uses = 0"), /field "max_uses"/],
      ["max_uses -1", rule("r", "allow", base, "max_uses = -1"), /field "max_uses"/],
      ["max_uses inf", rule("r", "allow", base, "max_uses = inf"), /field "max_uses"/],
      ["ttl '1 h'", rule("r", "allow", base, 'ttl = "1 h"'), /field "ttl"/],
      ["ttl 0s", rule("r", "allow", base, 'ttl = "0s"'), /field "ttl"/],
      ["ttl number", rule("r", "allow", base, "ttl = 15"), /field "ttl"/],
      ["ttl_max", rule("r", "allow", base, 'ttl_max = "1h"'), /unknown field "ttl_max"/],
      ["domain singular", rule("r", "allow", { agents: ["claude"], secrets: ["tok"], domain: ["api.example.com"] }), /"domain".*did you mean "domains"/],
      ["domains string", rule("r", "allow", { agents: ["claude"], secrets: ["tok"], domains: "api.example.com" }), /field "domains"/],
      ["domain with space", rule("r", "allow", { agents: ["claude"], secrets: ["tok"], domains: [" api.example.com"] }), /field "domains"/],
      ["domain *", rule("r", "allow", { agents: ["claude"], secrets: ["tok"], domains: ["*"] }), /field "domains"/],
      ["any_domain string", rule("r", "allow", { agents: ["claude"], secrets: ["tok"], any_domain: "false" }), /field "any_domain"/],
      ["reveal string", rule("r", "allow", base, 'reveal = "false"'), /field "reveal"/],
      ["method", rule("r", "allow", base, 'method = ["GET"]'), /did you mean "methods"/],
      ["path", rule("r", "allow", base, 'path = ["/repos/"]'), /did you mean "paths"/],
      ["agent singular", rule("r", "allow", { agent: ["claude"], secrets: ["tok"], domains: ["api.example.com"] }), /did you mean "agents"/],
      ["Effect", `[[rule]]\nname = "r"\nEffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n`, /did you mean "effect"/],
      ["effect Allow", `[[rule]]\nname = "r"\neffect = "Allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n`, /field "effect"/],
      ["agents []", rule("r", "allow", { agents: [], secrets: ["tok"], domains: ["api.example.com"] }), /field "agents"/],
      ["secrets []", rule("r", "allow", { agents: ["claude"], secrets: [], domains: ["api.example.com"] }), /field "secrets"/],
      ["agent with newline", rule("r", "allow", { agents: ["claude\n"], secrets: ["tok"], domains: ["api.example.com"] }), /field "agents"/],
      ["fullwidth star", rule("r", "allow", { agents: ["claude"], secrets: ["\uff0a"], domains: ["api.example.com"] }), /field "secrets"/],
      ["[[rules]]", `[[rules]]\nname = "r"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n`, /"rules".*did you mean "rule"/],
      ["[[Rule]]", `[[Rule]]\nname = "r"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n`, /"Rule".*did you mean "rule"/],
      ["[rule] single", `[rule]\nname = "r"\neffect = "allow"\nagents = ["claude"]\nsecrets = ["tok"]\ndomains = ["api.example.com"]\n`, /double brackets/],
      ["approval in [defaults]", `[defaults]\napproval = "required"\n${rule("r", "allow", base)}`, /\[defaults\].*unknown field "approval"/],
      ["allow-only field on deny", rule("d", "deny", { agents: ["*"], secrets: ["tok"], max_uses: 1 }), /field "max_uses".*deny rule/],
      ["duplicate name", rule("r", "deny", { agents: ["*"], secrets: ["tok"] }) + rule("r", "allow", base), /already used by rule 1/],
    ];
    // Every case in process (the same parser dist/ is built from), a few through the built CLI.
    for (const [what, text, why] of cases)
      assert.throws(() => parsePolicy(text, "/x/policy.toml"), (e: Error) => /^\/x\/policy\.toml: /.test(e.message) && why.test(e.message), what);
    await seedHome(home, rule("r", "allow", base), [{ name: "tok", value }]);
    const dir = tempDir("lessor-typos-policies-");
    await Promise.all(
      cases.filter(([what]) => ["aproval", "domain singular", "[[rules]]"].includes(what)).map(async ([what, text, why], i) => {
        const file = join(dir, `policy-${i}.toml`);
        writeFileSync(file, text, { mode: 0o600 });
        const check = await runCli(["policy", "check", file], { home });
        assert.equal(check.code, 2, `${what}: policy check accepted it:\n${check.stdout}`);
        assert.match(check.stderr, why, `${what}: ${check.stderr}`);
        assert.ok(check.stderr.includes(file), `${what}: the error names the file`);
      }),
    );
    writeFileSync(join(home, "policy.toml"), cases[0]![1], { mode: 0o600 });
    // And the vault, on the first of them in force, grants nothing (a broken policy denies every grant).
    const lease = await runCli(["lease", "tok", "--agent", "claude", "--domain", "api.example.com"], { home });
    assert.notEqual(lease.code, 0);
    assert.ok(!lease.stdout.includes(value));
  });
});

describe("lessor.toml: slips in security settings", () => {
  test("keys in the wrong table, wrong case or wrong type are refused naming the file and the field", async () => {
    const cases: [string, string, RegExp][] = [
      ["egress under [vault]", '[vault]\negress = "strict"\n', /\[vault\]: unknown field "egress"/],
      ["egress under [run]", '[run]\negress = "open"\n', /\[run\]: unknown field "egress"/],
      ["[Run]", '[Run]\nnetwork = "none"\n', /unknown table or field "Run"/],
      ["network case", '[run]\nnetwork = "None"\n', /\[run\] network/],
      ["network list", '[run]\nnetwork = ["none"]\n', /\[run\] network/],
      ["vault_session string", '[run]\nvault_session = "false"\n', /\[run\] vault_session/],
      ["write string", '[run]\nwrite = "~/.claude"\n', /\[run\] write/],
      ["write ~", '[run]\nwrite = ["~"]\n', /\[run\] write/],
      ["read relative", '[run]\nread = ["lessor-home"]\n', /\[run\] read/],
      ["hide $HOME", '[run]\nhide = ["$HOME/.config/tool"]\n', /\[run\] hide/],
      ["egress case", '[proxy]\negress = "Strict"\n', /\[proxy\] egress/],
      ["inject mode case", '[[proxy.inject]]\nsecret = "gh"\nmode = "Bearer"\n', /mode/],
      ["socket_mode 0o", '[server]\nsocket_mode = "0o666"\n', /\[server\] socket_mode/],
      ["socket_mode number", "[server]\nsocket_mode = 600\n", /\[server\] socket_mode/],
      ["[identity] single", '[identity]\nuid = 4242\nrole = "agent"\nagent = "claude"\n', /double brackets/],
      ["identity role case", '[[identity]]\nuid = 4242\nrole = "Agent"\nagent = "claude"\n', /role/],
      ["vsock admin", '[[vsock]]\ncid = 5\nrole = "admin"\n', /cannot be admin/],
      ["audit json", '[audit]\njson = "audit.jsonl"\n', /\[audit\]: unknown field "json"/],
      ["key command string", '[keys]\ncommand = "op read op://x/y/z"\n', /\[keys\] command/],
    ];
    for (const [what, extra, why] of cases)
      assert.throws(() => parseConfig(extra, "/x/lessor.toml"), (e: Error) => /^\/x\/lessor\.toml: /.test(e.message) && why.test(e.message), what);
    // Two through the built CLI, in a home of its own holding only lessor.toml (read, and refused, first).
    const dir = tempDir("lessor-typos-configs-");
    await Promise.all(
      cases.filter(([what]) => ["egress under [vault]", "network case"].includes(what)).map(async ([what, extra, why], i) => {
        const home = join(dir, `home-${i}`);
        mkdirSync(home, { mode: 0o700 });
        const cfgFile = join(home, "lessor.toml");
        writeFileSync(cfgFile, extra, { mode: 0o600 });
        const r = await runCli(["status"], { home });
        assert.notEqual(r.code, 0, `${what}: lessor.toml was accepted:\n${r.stdout}`);
        assert.match(r.stderr, why, `${what}: ${r.stderr}`);
        assert.ok(r.stderr.includes(cfgFile), `${what}: the error names the file`);
      }),
    );
  });

  test("an [[identity]] act_for pattern that is not an agent pattern is refused when lessor.toml loads, naming act_for", async () => {
    const home = await cliHome();
    const cfgFile = join(home, "lessor.toml");
    // "claude *" (a space), "claude/*" (a path): lessor token create refuses both ("is not a valid agent
    // pattern"); lessor.toml takes them, and the orchestrator's requests later fail with policy_invalid.
    for (const pat of ["claude *", "claude/*"]) {
      writeFileSync(cfgFile, `[[identity]]\nuid = 4242\nrole = "orchestrator"\nact_for = [${JSON.stringify(pat)}]\n`, { mode: 0o600 });
      const r = await runCli(["status"], { home });
      assert.notEqual(r.code, 0, `act_for = [${JSON.stringify(pat)}] was accepted by lessor.toml`);
      assert.match(r.stderr, /act_for/);
    }
  });

  test("a [run] hide entry with a * before its last part (which would hide nothing) is refused: the agent never reads the file it names", { skip: NO_BWRAP }, async () => {
    // docs/sandbox.md: "a * in an entry's last part matches the names its directory holds". Written
    // one level up (~/.config/*/token, one token per tool), it is taken as a literal path that does
    // not exist, silently: the tokens it was meant to hide are shown by [run] read.
    const root = tempDir("lessor-typos-hide-");
    const o = await makeOwner({
      root,
      name: "o",
      masterKey: randomBytes(32).toString("hex"),
      policy: "",
      config: '\n[run]\nread = ["~/.config"]\nhide = ["~/.config/*/token"]\n',
    });
    const token = canary("hide");
    mkdirSync(join(o.home, ".config", "mytool"), { recursive: true });
    writeFileSync(join(o.home, ".config", "mytool", "token"), `${token}\n`, { mode: 0o600 });
    const r = await runAgent(o.project, o.env, "claude", ["--network", "none"], `cat ${join(o.home, ".config", "mytool", "token")} 2>/dev/null; true`);
    assert.ok(!r.stdout.includes(token), `hide = ["~/.config/*/token"] hid nothing: the agent read ~/.config/mytool/token (run exit ${r.code})`);
  });
});

describe("lessor.toml: programs lessor runs as the owner, under [run] write", () => {
  test("a [keys] command inside a [run] write path refuses the run: the agent cannot rewrite what the owner's next lessor command runs", { skip: NO_BWRAP }, async () => {
    // The key command is a file lessor.toml names, run as you by every later lessor command (docs:
    // "Run only by full path … a file of yours or root's in directories no one else can write"). With
    // [run] write = ["~/.local"] (an agent's state under ~/.local/share) and the key command in
    // ~/.local/bin, the agent replaces it. lessor refuses a run when its own code is in a writable
    // path for this reason; the key command is not checked.
    const root = tempDir("lessor-typos-keycmd-");
    const home = join(root, "home");
    const project = join(home, "project");
    const bin = join(home, ".local", "bin");
    const lh = join(home, ".lessor");
    mkdirSync(project, { recursive: true });
    mkdirSync(bin, { recursive: true });
    mkdirSync(lh, { mode: 0o700 });
    const key = randomBytes(32).toString("hex");
    const prog = join(bin, "lessor-key");
    writeFileSync(prog, `#!/bin/sh\necho ${key}\n`, { mode: 0o700 });
    writeFileSync(join(lh, "lessor.toml"), `[keys]\ncommand = ${JSON.stringify([prog])}\n\n[run]\nwrite = ["~/.local"]\n`, { mode: 0o600 });
    await initHome({ home: lh, env: { LESSOR_HOME: lh }, keySource: "command" });
    writeFileSync(join(lh, "policy.toml"), "", { mode: 0o600 });
    const env = { PATH: "/usr/bin:/bin", HOME: home, NO_COLOR: "1", LESSOR_HOME: lh };
    const marker = join(root, "agent-code-ran-as-owner");
    const plant = `printf '#!/bin/sh\\necho ran >> ${marker}\\necho ${key}\\n' > ${prog} 2>/dev/null; true`;
    const run = await runCliWithEnv(["run", "--agent", "claude", "--network", "none", "--", "/bin/sh", "-c", plant], { cwd: project, env, timeoutMs: 40_000 });
    assert.match(run.stderr, /\[keys\] command in lessor\.toml runs .*lessor-key, and that file is inside .*\.local \(the \[run\] write path\)/);
    await runCliWithEnv(["status"], { cwd: root, env });
    assert.ok(!existsSync(marker), "the agent rewrote the [keys] command in ~/.local/bin during lessor run, and the owner's next `lessor status` ran it outside the sandbox");
  });

  test("a [[rotate]] hook command inside a [run] write path refuses the run: the agent cannot rewrite what the owner's next rotation runs", { skip: NO_BWRAP }, async () => {
    const root = tempDir("lessor-typos-rotate-");
    const hookDir = join(root, "o", "home", ".local", "bin");
    const hook = join(hookDir, "rotate-tok");
    const o = await makeOwner({
      root,
      name: "o",
      masterKey: randomBytes(32).toString("hex"),
      policy: "",
      config: `\n[run]\nwrite = ["~/.local"]\n\n[[rotate]]\nsecret = "tok"\ncommand = ${JSON.stringify([hook])}\n`,
      secrets: [{ name: "tok", value: canary("rot") }],
    });
    mkdirSync(hookDir, { recursive: true });
    writeFileSync(hook, "#!/bin/sh\necho new-value-1\n", { mode: 0o700 });
    const marker = join(root, "agent-code-ran-as-owner");
    const plant = `printf '#!/bin/sh\\necho ran >> ${marker}\\necho new-value-2\\n' > ${hook} 2>/dev/null; true`;
    const run = await runAgent(o.project, o.env, "claude", ["--network", "none"], plant);
    assert.match(run.stderr, /\[\[rotate\]\] command of global\/tok in lessor\.toml runs .*rotate-tok, and that file is inside .*\.local \(the \[run\] write path\)/);
    await runCliWithEnv(["secret", "rotate", "tok"], { cwd: root, env: o.env });
    assert.ok(!existsSync(marker), "the agent rewrote the [[rotate]] hook in ~/.local/bin during lessor run, and the owner's next `lessor secret rotate` ran it outside the sandbox");
  });
});
