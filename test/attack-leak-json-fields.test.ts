/**
 * `lessor run` masks the values it put in the child's environment, in the forms other programs write
 * them in (docs/cli/run.md "Output masking"). A secret whose value is a JSON document (a service
 * account key, `{"user":…,"password":…}`) is handed whole when the reference names no field; the
 * programs that read it print its fields, or the document re-serialised (`jq .`, a pretty-printed
 * dump in an error), and the mask held only the whole document's bytes: the password came out in
 * plain text on the run's output.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { cliHome, runCli, seedHome } from "./cli-harness.js";

const NODE = process.execPath;
const POLICY = `
[[rule]]
name = "testers"
effect = "allow"
agents = ["tester"]
secrets = ["*"]
any_domain = true
`;

test("attack: the fields of a JSON secret handed whole are masked in `lessor run`'s output, as the value is", async () => {
  const home = await cliHome();
  const password = `pw-${randomBytes(10).toString("hex")}`;
  const key = `-----BEGIN PRIVATE KEY-----\nMII${randomBytes(24).toString("base64")}\n-----END PRIVATE KEY-----\n`;
  await seedHome(home, POLICY, [
    { name: "creds", value: JSON.stringify({ user: "svc", password }) },
    { name: "sa", value: JSON.stringify({ type: "service_account", private_key: key }) },
  ]);
  // What a tool reading a JSON credential prints: a field, or the document re-serialised.
  const child = [
    "const c = JSON.parse(process.env.CREDS), s = JSON.parse(process.env.SA);",
    "console.log('whole: ' + process.env.CREDS);",
    "console.log('field: ' + c.password);",
    "console.log(JSON.stringify(c, null, 2));",
    "console.error('bad key: ' + JSON.stringify(s.private_key));",
  ].join("\n");
  const r = await runCli(["run", "--agent", "tester", "--no-sandbox", "--", NODE, "-e", child], {
    home,
    env: { CREDS: "lessor://global/creds", SA: "lessor://global/sa" },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /whole: \[redacted:creds\]/, "the whole value is masked (as before)");
  const out = r.stdout + r.stderr;
  assert.ok(!out.includes(password), `the password field of creds was printed in plain text:\n${r.stdout}`);
  const body = key.split("\n")[1]!;
  assert.ok(!out.includes(body), `the private_key field of sa was printed in plain text:\n${r.stderr}`);
});
