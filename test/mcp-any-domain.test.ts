/**
 * `lessor mcp`'s request_access under a grant for any host (`any_domain = true`): the injecting proxy
 * adds a credential only for hosts the lease names, so a lease asked for no host would be of no use to
 * http_request. request_access refuses it with what to do (name the hosts), leaves no live lease behind,
 * and with an approval rule refuses before a person is asked. Asked with a host, the lease names it and
 * the usage text says so (it used to say "any host", which the proxy never honoured).
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { BIN } from "./cli-harness.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");
const root = mkdtempSync(join(tmpdir(), "lessor-mcp-any-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const HOME = join(root, "home");
const LESSOR_HOME = join(HOME, ".lessor");

const POLICY = `
[[rule]]
name = "anywhere"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
any_domain = true

[[rule]]
name = "anywhere-approved"
effect = "allow"
agents = ["claude"]
secrets = ["approved-token"]
any_domain = true
approval = "required"
`;

async function leasesOf(agent: string): Promise<{ id: string; name: string; revokedAt: number | null }[]> {
  const vault = await openVault({ home: LESSOR_HOME, env: { PATH: process.env.PATH } });
  try {
    return (await vault.admin().listLeases({ agent })) as never;
  } finally {
    await vault.close();
  }
}

describe("lessor mcp request_access under an any_domain grant", () => {
  let client: Client;
  let stderr = "";
  const call = async (name: string, args: Record<string, unknown>) => {
    const r = (await client.callTool({ name, arguments: args })) as { isError?: boolean; content: { text: string }[] };
    const text = r.content.map((c) => c.text).join("\n");
    assert.ok(!text.includes(CANARY), "a secret value appears in a tool result");
    return { isError: r.isError === true, doc: JSON.parse(text) as Record<string, any>, text };
  };

  before(async () => {
    mkdirSync(HOME, { recursive: true });
    await initHome({ home: LESSOR_HOME, env: { PATH: process.env.PATH } });
    writeFileSync(join(LESSOR_HOME, "policy.toml"), POLICY);
    const vault = await openVault({ home: LESSOR_HOME, env: { PATH: process.env.PATH } });
    try {
      await vault.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
      await vault.admin().storeSecret({ name: "approved-token", value: CANARY, kind: "pat" });
    } finally {
      await vault.close();
    }
    const transport = new StdioClientTransport({
      command: process.execPath,
      args: [BIN, "mcp", "--agent", "claude"],
      env: { HOME, PATH: "/usr/bin:/bin", NO_COLOR: "1", LESSOR_HOME },
      stderr: "pipe",
    });
    transport.stderr!.on("data", (d: Buffer) => (stderr += d.toString("utf8")));
    client = new Client({ name: "lessor-test", version: "1.0.0" });
    await client.connect(transport);
  });

  after(async () => {
    await client?.close();
    assert.ok(!stderr.includes(CANARY), "a secret value appears on the server's stderr");
  });

  test("asked for no host: refused with what to do, and no lease is left live", async () => {
    const r = await call("request_access", { secret: "github-token" });
    assert.equal(r.isError, true, r.text);
    assert.equal(r.doc["error"]?.code ?? r.doc["code"], "invalid_request", r.text);
    assert.match(r.text, /must name the hosts/);
    assert.match(r.text, /domains/);
    const taken = (await leasesOf("claude")).filter((l) => l.name === "github-token");
    assert.equal(taken.length, 1, "the grant was taken (and then undone), not refused by policy");
    assert.notEqual(taken[0]!.revokedAt, null, "the useless lease was revoked");
  });

  test("asked for a host: the lease names it and the usage says that host, not any host", async () => {
    const r = await call("request_access", { secret: "github-token", domains: ["api.test.example"] });
    assert.equal(r.isError, false, r.text);
    assert.deepEqual(r.doc["domains"], ["api.test.example"]);
    assert.match(String(r.doc["usage"]), /to api\.test\.example/);
    assert.doesNotMatch(r.text, /any host/);
  });

  test("an approval rule asked for no host: refused before a person is asked", async () => {
    const r = await call("request_access", { secret: "approved-token" });
    assert.equal(r.isError, true, r.text);
    assert.match(r.text, /must name the hosts/);
    assert.notEqual(r.doc["status"], "approval_pending");
  });
});
