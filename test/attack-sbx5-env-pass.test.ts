/**
 * Sandbox review (sbx5): plain credentials in the owner's environment under the common short names.
 *
 * docs/sandbox.md ("the environment") withholds "plain credentials from your environment —
 * AWS_SECRET_ACCESS_KEY, PGPASSWORD, MYSQL_PWD, … and other well-known names", and treats a URL
 * parameter named `pass` or `pwd` as a password (CREDENTIAL_PARAM in src/sandbox/env.ts). Yet a
 * variable named with the same words — `DB_PASS`, `SMTP_PASS`, `REDIS_PASS` (docker-compose files,
 * twelve-factor apps), `DB_PWD` (MYSQL_PWD's own word) — or Rails' `RAILS_MASTER_KEY` (it decrypts
 * config/credentials.yml.enc: every credential of the app) reached the sandboxed agent in plain text,
 * while `DB_PASSWORD` is withheld. The agent reads them from its own environment.
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

const root = mkdtempSync(join(tmpdir(), "lessor-sbx5-env-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const CANARY = "sbx5canary";
const CREDS: Record<string, string> = {
  DB_PASS: `${CANARY}1hunter2`,
  SMTP_PASS: `${CANARY}2mailpw`,
  REDIS_PASS: `${CANARY}3redispw`,
  DB_PWD: `${CANARY}4pwd`,
  RAILS_MASTER_KEY: `${CANARY}5`.padEnd(32, "0"),
};

test("the owner's DB_PASS, SMTP_PASS, DB_PWD, RAILS_MASTER_KEY never reach the sandboxed agent", { skip: !HAVE_BWRAP && "no bwrap" }, async () => {
  const o = await makeOwner({ root, name: "o", masterKey: randomBytes(32).toString("hex"), policy: ATTACKERS_POLICY });
  const r = await runAgent(o.project, { ...o.env, ...CREDS }, "attacker", ["--network", "none"], "env");
  assert.equal(r.code, 0, r.stderr);
  const leaked = r.stdout.split("\n").filter((l) => l.includes(CANARY)).map((l) => l.replace(/=.*/, "=<canary>"));
  assert.deepEqual(leaked, [], `the owner's credentials reached the sandboxed agent: ${leaked.join(", ")}`);
  for (const k of Object.keys(CREDS)) assert.ok(r.stderr.includes(k), `${k} is named on stderr: ${r.stderr}`);
});

test("names that only look alike still pass (PWD, OLDPWD, PASSWORDLESS, BYPASS_CACHE, PASSENGER_*)", () => {
  for (const n of ["PWD", "OLDPWD", "PASSWORDLESS", "BYPASS_CACHE", "PASSENGER_APP_ENV", "COMPASS_HOME", "KEYMAP", "GPG_KEY_ID"]) assert.equal(withheldReason(n, "x"), null, n);
  for (const n of Object.keys(CREDS)) assert.equal(withheldReason(n, "x"), "credential", n);
});
