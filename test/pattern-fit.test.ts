/**
 * A secret pattern that can name no secret is refused when the policy loads (src/vault/pattern-fit.ts):
 * the automaton that decides it is checked against the real rules (isScope, isSecretName) on every
 * small glob, and the patterns people write are checked both ways.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isScope, isSecretName } from "../src/base/names.js";
import { compileSecretPattern } from "../src/vault/pattern.js";
import { globCanMatch, KIND_ID_SCOPE, SECRET_NAME } from "../src/vault/pattern-fit.js";

/** The glob as a regex (fine for short inputs). */
function byRegex(pattern: string): RegExp {
  let src = "^";
  for (const ch of pattern) src += ch === "*" ? "[^/]*" : ch === "?" ? "[^/]" : ch.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&");
  return new RegExp(`${src}$`);
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

describe("secret patterns that can name no secret", () => {
  test("globCanMatch agrees with the real scope and name rules on every glob up to 4 characters", () => {
    const subjects = strings(["a", "A", ":", ".", "-"], 6);
    const scopes = subjects.filter((s) => s !== "global" && isScope(s));
    const names = subjects.filter((s) => isSecretName(s));
    for (const glob of strings(["a", "A", ":", ".", "-", "*", "?"], 4)) {
      const re = byRegex(glob);
      assert.equal(globCanMatch(glob, KIND_ID_SCOPE), scopes.some((s) => re.test(s)), `scope glob ${JSON.stringify(glob)}`);
      // pattern.ts adds the one rule a form cannot say: a name never holds "..", and only a literal ".." forces one.
      assert.equal(globCanMatch(glob, SECRET_NAME) && !glob.includes(".."), names.some((s) => re.test(s)), `name glob ${JSON.stringify(glob)}`);
    }
  });

  test("patterns no scope or name can match are refused with a fix; globs that could match stay valid", () => {
    const refused: [string, RegExp][] = [
      ["prod/*", /no scope.*"env:prod\/\*"/],
      ["Env:prod/*", /kinds are lower case: write "env:prod\/\*"/],
      ["ENV:PROD/*", /write "env:PROD\/\*"/],
      ["Global/x", /write "global\/x"/],
      ["env:a:b/x", /no scope/],
      ["env:/x", /no scope/],
      ["-env:x/y", /no scope/],
      ["E*:x/y", /no scope/],
      [`${"k".repeat(33)}:x/y`, /no scope/],
      ["*/.x", /no secret name/],
      ["*/-x", /no secret name/],
      ["*/a..b", /no secret name/],
      [`*/${"n".repeat(129)}`, /no secret name/],
    ];
    for (const [p, why] of refused)
      assert.throws(() => compileSecretPattern(p), (e: Error & { code?: string }) => e.code === "policy_invalid" && why.test(e.message), p);
    for (const p of ["*", "*/*", "env:*/x", "*:*/x", "global/*", "glob?l/x", "g*/x", "??????/x", "e*:X/y", "env:prod/*", "workspace:*/gh-*", "env:a.b/key.v1", "*/a.*.b", `*/*${"n".repeat(128)}`, `${"k".repeat(32)}:x/y`, "GLOBAL"])
      assert.doesNotThrow(() => compileSecretPattern(p), p);
  });
});
