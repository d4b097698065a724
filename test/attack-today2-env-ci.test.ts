/**
 * Review (today2) of 710fe53 (credential words in variable names), same family as DB_PASS:
 * plain credentials a CI system or a secrets tool puts in the environment of the job that runs
 * `lessor run`, which reached the sandboxed agent in `env`:
 * - Azure Pipelines' `SYSTEM_ACCESSTOKEN` (the pipeline's OAuth token, a JWT): ACCESSTOKEN is one
 *   word (AUTHTOKEN is on the list, ACCESSTOKEN was not) and a JWT is no known token format;
 * - Jenkins' `credentials()` binding of a username/password: `FOO_CREDS` (user:password) and
 *   `FOO_CREDS_PSW` (the password), names Jenkins' own docs use (`BITBUCKET_COMMON_CREDS_PSW`);
 * - the `_PW` abbreviation (`LDAP_BIND_PW`, `DB_PW`), as `_PWD`;
 * - SOPS's `SOPS_AGE_KEY`: an age private key (`AGE-SECRET-KEY-1…`), which decrypts every
 *   sops-encrypted secret of the repository; a private key, but not in PEM/PGP armour.
 *
 * Real parts: the built CLI, real bwrap, the owner's environment as lessor gets it.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { ATTACKERS_POLICY, HAVE_BWRAP, makeOwner, runAgent } from "./run-harness.js";
import { withheldReason } from "../src/sandbox/env.js";

const root = mkdtempSync(join(tmpdir(), "lessor-today2-env-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const CANARY = "tdy2canary";
const JWT = `eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJuYW1laWQiOiIx${CANARY}Iiwic2NwIjoiYXBwX3Rva2VuIn0.c2lnbmF0dXJlc2lnbmF0dXJl`;
const CREDS: Record<string, string> = {
  SYSTEM_ACCESSTOKEN: JWT,
  BITBUCKET_COMMON_CREDS: `alice:${CANARY}1pw`,
  BITBUCKET_COMMON_CREDS_PSW: `${CANARY}1pw`,
  LDAP_BIND_PW: `${CANARY}2pw`,
  SOPS_AGE_KEY: `AGE-SECRET-KEY-1${CANARY.toUpperCase()}QYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQYQ`,
};

test("the owner's SYSTEM_ACCESSTOKEN, FOO_CREDS(_PSW), LDAP_BIND_PW, SOPS_AGE_KEY never reach the sandboxed agent", { skip: !HAVE_BWRAP && "no bwrap" }, async () => {
  const o = await makeOwner({ root, name: "o", masterKey: randomBytes(32).toString("hex"), policy: ATTACKERS_POLICY });
  const r = await runAgent(o.project, { ...o.env, ...CREDS }, "attacker", ["--network", "none"], "env");
  assert.equal(r.code, 0, r.stderr);
  const leaked = r.stdout.split("\n").filter((l) => l.toLowerCase().includes(CANARY)).map((l) => l.replace(/=.*/, "=<canary>"));
  assert.deepEqual(leaked, [], `the owner's credentials reached the sandboxed agent: ${leaked.join(", ")}`);
});

test("names that only look alike still pass (Playwright's PW_*, PWDEBUG)", () => {
  for (const n of ["PW_TEST_REPORTER", "PWDEBUG", "PW_CHROMIUM_ATTACH_TO_OTHER", "PWD", "OLDPWD", "SOPS_AGE_RECIPIENTS"]) assert.equal(withheldReason(n, "x"), null, n);
});
