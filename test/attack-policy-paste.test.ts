/**
 * A value pasted by mistake into policy.toml (a token where the ttl goes, a URL with a credential in
 * a domain or a path): the load error quotes what it found, which is what the admin needs at
 * `lessor policy check` / `lessor policy reload`; but the audit trail (hash-chained: it cannot be
 * scrubbed afterwards), the daemon's log and a broken policy's refusals, audited too, must not keep
 * it. Real CLI, real `lessor serve`, real SQLite.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { cliHome, runCli } from "./cli-harness.js";
import { startServe } from "./daemon-harness.js";

const CANARY = "ghp_CANARYpolicyPaste7f3a9c1e";

const POLICIES: [string, string][] = [
  ["a token where the ttl goes", `[defaults]\nttl = "${CANARY}"\n`],
  ["a URL with a credential as a domain", `[[rule]]\nname = "r"\neffect = "allow"\nagents = ["a"]\nsecrets = ["x"]\ndomains = ["https://${CANARY}@api.example.com"]\n`],
  ["a path prefix with a token query", `[[rule]]\nname = "r"\neffect = "allow"\nagents = ["a"]\nsecrets = ["x"]\ndomains = ["api.example.com"]\npaths = ["/v1?token=${CANARY}"]\n`],
  ["a token as a key", `[[rule]]\nname = "r"\neffect = "allow"\nagents = ["a"]\nsecrets = ["x"]\ndomains = ["api.example.com"]\n${CANARY} = 1\n`],
];

const lines = (text: string): string => text.split("\n").filter((l) => l.includes(CANARY)).join("\n");

for (const [what, policy] of POLICIES)
  test(`${what} in policy.toml: policy check and reload quote it to the admin; the trail, and a broken policy's audited refusal, do not`, async () => {
    const home = await cliHome();
    writeFileSync(join(home, "policy.toml"), policy, { mode: 0o600 });
    const check = await runCli(["policy", "check"], { home });
    assert.equal(check.code, 2);
    const reload = await runCli(["policy", "reload"], { home });
    assert.equal(reload.code, 2, "the broken policy is refused");
    assert.ok(check.stderr.includes(CANARY.slice(0, 20)) || reload.stderr.includes(CANARY.slice(0, 20)), "the admin is shown what was found, to fix it");
    // An admin's grant while the policy is broken: refused, the refusal audited.
    const grant = await runCli(["lease", "x", "--agent", "a", "--domain", "api.example.com"], { home });
    assert.notEqual(grant.code, 0);
    const q = await runCli(["audit", "query", "--json"], { home });
    assert.equal(q.code, 0, q.stderr);
    assert.match(q.stdout, /policy_reloaded/, "the failed reload is audited");
    assert.match(q.stdout, /the policy is invalid, so every grant is denied/, "the refused grant is audited");
    assert.ok(!q.stdout.includes(CANARY), `the audit trail holds the pasted value:\n${lines(q.stdout)}`);
    assert.ok(!grant.stderr.includes(CANARY), `the refusal quotes it:\n${grant.stderr}`);
  });

test("lessor serve on a policy with a value pasted into it does not log it, at start or at a reload (SIGHUP)", async () => {
  const home = await cliHome();
  writeFileSync(join(home, "policy.toml"), POLICIES[0]![1], { mode: 0o600 });
  const d = await startServe(home);
  try {
    assert.match(d.stderr(), /the policy file is invalid/);
    writeFileSync(join(home, "policy.toml"), POLICIES[1]![1], { mode: 0o600 });
    d.proc.kill("SIGHUP");
    for (let i = 0; i < 400 && !/policy reload failed/.test(d.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
    assert.match(d.stderr(), /policy reload failed/);
    assert.ok(!d.stderr().includes(CANARY), `the daemon's log holds the pasted value:\n${lines(d.stderr())}`);
  } finally {
    await d.stop();
  }
});
