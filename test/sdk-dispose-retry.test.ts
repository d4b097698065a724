/**
 * A `LeasedCredential` whose disposal failed while the daemon was down revokes the lease when the
 * disposal is retried, or fails again: it never resolves with the lease live. A real `lessor serve`,
 * stopped and started again on the same home.
 */
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { LessorClient } from "../src/client/client.js";
import { CredentialProvider } from "../src/client/credential-provider.js";
import { VaultError } from "../src/base/errors.js";
import { openVault } from "../src/config/open-vault.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";

const CANARY = "ghp_" + randomBytes(18).toString("hex");

const POLICY = `
[[rule]]
name = "github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["api.test.example"]
`;

/** A home with the canary stored and `config` as its lessor.toml. */
async function seededHome(config = ""): Promise<string> {
  const home = await makeHome({ policy: POLICY, ...(config !== "" ? { config } : {}) });
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    await v.admin().storeSecret({ name: "github-token", value: CANARY, kind: "pat" });
  } finally {
    await v.close();
  }
  return home;
}

/** Every lease of claude, read from the vault itself (the daemon stopped, or through it). */
async function leasesOf(home: string, d?: RunningDaemon): Promise<{ id: string; revokedAt: number | null; revokeReason: string | null }[]> {
  const pick = (ls: { id: string; revokedAt: number | null; revokeReason: string | null }[]) => ls.map((l) => ({ id: l.id, revokedAt: l.revokedAt, revokeReason: l.revokeReason }));
  if (d) {
    const c = await LessorClient.connect({ socketPath: d.socket });
    try {
      return pick(await c.listLeases({ agent: "claude", limit: 1000 }));
    } finally {
      await c.close();
    }
  }
  const v = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    return pick(await v.admin().listLeases({ agent: "claude", limit: 1000 }));
  } finally {
    await v.close();
  }
}

describe("the SDK's LeasedCredential (await using)", () => {
  // docs/client.md: "Disposing the credential revokes the lease ... throws any other error (such as
  // unavailable when the daemon is gone)". The caller retries the disposal once the daemon is back, as
  // that error invites: the retry resolves at once and sends nothing (the credential marked itself
  // released before the first attempt), so the lease stays live and value() now claims it was released.
  test("a disposal that failed because the daemon was down revokes the lease when it is retried once the daemon is back (or fails again), never resolves with the lease live", { timeout: 30_000 }, async () => {
    const home = await seededHome();
    let d = await startServe(home);
    const client = await LessorClient.connect({ socketPath: d.socket });
    try {
      const cred = await new CredentialProvider(client, { agent: "claude" }).lease("github-token", { domains: ["api.test.example"] });
      const v = await cred.value({ domain: "api.test.example" });
      assert.equal(v.unsafeText(), CANARY);
      await d.stop();
      await assert.rejects(cred[Symbol.asyncDispose](), (e: unknown) => e instanceof VaultError && e.code === "unavailable");
      assert.equal(v.wiped, true, "the values were wiped even though the revocation failed");
      d = await startServe(home);
      let retry: unknown = null;
      try {
        await cred[Symbol.asyncDispose]();
      } catch (e) {
        retry = e;
      }
      const lease = (await leasesOf(home, d)).find((l) => l.id === cred.lease.id)!;
      assert.ok(
        lease.revokedAt !== null || retry !== null,
        `the retried disposal resolved without error, yet lease ${lease.id} is still live (until its expiry); value() says: ${await cred.value().then(
          () => "a value",
          (e: Error) => e.message,
        )}`,
      );
    } finally {
      await client.close();
      await d.stop();
    }
  });
});
