/**
 * Policy globs match in linear time: a pattern with many stars against a long agent-chosen name must
 * not backtrack (a regex takes seconds for `*a*a*a*a*b` against 128 "a"s, and grows with each star).
 * Semantics are checked against the obvious regex on every small pattern/subject pair.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { codeOf, grant, makeVault } from "./helpers.js";
import { compileGlob, globSteps } from "../src/vault/pattern.js";
import { decide, parsePolicy } from "../src/vault/policy.js";
import type { Identity } from "../src/base/types.js";

/** The reference: the regex the matcher replaced (fine for short inputs). */
function byRegex(pattern: string): (s: string) => boolean {
  let src = "^";
  for (const ch of pattern) {
    if (ch === "*") src += "[^/]*";
    else if (ch === "?") src += "[^/]";
    else src += ch.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&");
  }
  const re = new RegExp(`${src}$`, "u");
  return (s) => re.test(s);
}

/** Every string over `alphabet` of length 0..max. */
function strings(alphabet: string[], max: number): string[] {
  const out = [""];
  let layer = [""];
  for (let n = 1; n <= max; n++) {
    layer = layer.flatMap((s) => alphabet.map((c) => s + c));
    out.push(...layer);
  }
  return out;
}

describe("glob matching", () => {
  test("agrees with the regex it replaced on every pattern and subject up to 5 characters", () => {
    const patterns = strings(["a", "b", "*", "?", "/"], 5).filter((p) => p.length > 0);
    const subjects = strings(["a", "b", "/"], 5);
    let checked = 0;
    for (const p of patterns) {
      const mine = compileGlob(p);
      const ref = byRegex(p);
      for (const s of subjects) {
        assert.equal(mine(s), ref(s), `pattern ${JSON.stringify(p)} against ${JSON.stringify(s)}`);
        checked++;
      }
    }
    assert.ok(checked > 100_000, `checked ${checked} pairs`);
  });

  test("? is one character, even outside the BMP; meta characters are literal", () => {
    assert.equal(compileGlob("a?b")("a😀b"), true);
    assert.equal(compileGlob("a??b")("a😀b"), false);
    assert.equal(compileGlob("*😀?")("xx😀y"), true);
    assert.equal(compileGlob("a.*")("axb"), false);
    assert.equal(compileGlob("[ab]*")("[ab]x"), true);
    assert.equal(compileGlob("a**b")("ab"), true);
    assert.equal(compileGlob("a**b")("a/b"), false);
  });

  test("a pathological pattern costs at most |subject| × |pattern| comparisons", () => {
    const cases: [string, string, boolean][] = [
      ["*a*a*a*a*a*a*a*a*a*a*a*a*b", "a".repeat(128), false],
      ["*a*a*a*a*a*a*a*a*a*a*a*a*b", "a".repeat(127) + "b", true],
      ["*a?a?a?a?a?a?a?b*", "a".repeat(160), false],
      ["a*?*?*?*?*?*?*?*?*?*?*c", "a".repeat(100) + "b", false],
      ["*aaaaaaaaaaaaaaaaaaab*", "a".repeat(5000), false],
      ["*aaaaaaaaaaaaaaaaaaab*", "a".repeat(5000) + "b", true],
      ["*a*a*a*a*a*a*a*a*a*a*a*a*b", "a".repeat(100_000), false],
      ["*a*a*a*a*a*a*a*a*a*a*a*a*b", "a".repeat(50_000) + "/" + "a".repeat(50_000) + "b", false],
    ];
    for (const [p, s, expected] of cases) {
      const match = compileGlob(p);
      let got: boolean | undefined;
      const started = performance.now();
      const steps = globSteps(() => (got = match(s)));
      const ms = performance.now() - started;
      assert.equal(got, expected, `${p} against ${s.length} characters`);
      assert.ok(steps <= (s.length + 1) * (p.length + 1), `${p} against ${s.length} chars took ${steps} comparisons`);
      assert.ok(ms < 250, `${p} against ${s.length} chars took ${ms.toFixed(1)} ms`);
    }
  });

  test("a policy with a star-heavy pattern answers a long agent-chosen secret name at once", async () => {
    // The regex this replaced takes 5-60 s here on the development VM (grows with each star and character).
    const policy = grant("stars", ["claude"], ["*a*a*a*a*a*b"], ["api.example.com"]);
    assert.equal(decide(parsePolicy(policy, "p.toml"), { agent: "claude", secret: { scope: "global", name: "aaaaab" } }).allow, true);
    const { vault } = await makeVault({ policy });
    const claude: Identity = { id: "test:claude", role: "agent", agent: "claude", transport: "embedded" };
    const session = vault.session(claude);
    const started = performance.now();
    const code = await codeOf(session.requestLease({ secret: "a".repeat(100), domains: ["api.example.com"] }));
    const ms = performance.now() - started;
    assert.equal(code, "access_denied");
    // 2 s: far below the old regex's 5-60 s, and above any pause of a loaded machine.
    assert.ok(ms < 2000, `the denied request took ${ms.toFixed(0)} ms`);
  });
});
