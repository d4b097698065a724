/**
 * What policy rules mean is pinned beside the policy on a shared PostgreSQL store (`rule_semantics=2`
 * in the stamp's limits, src/vault/limits.ts): an instance that reads rules another way (an older
 * lessor, to which `reveal` and the proxy-only default for methods and paths mean nothing) grants
 * nothing under a stamp of another semantics, rather than hand out a value a newer instance keeps
 * from the agent. Shown from the newer side: a stamp as an older lessor writes it (limits without
 * rule_semantics, or with another number) makes this instance refuse grants, saying why, while the
 * brakes keep working; a stamp this lessor writes carries the pair an older one refuses on.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import { POLICY_META } from "../src/vault/policy-sync.js";
import { Vault } from "../src/vault/vault.js";
import { agent, grant, hexKey, refusalOf } from "./helpers.js";
import { admin, PG_SKIP, testSchema } from "./pg-helpers.js";

const POLICY = grant("g", ["claude"], ["tok"], ["api.example.com"], 'methods = ["GET"]\nreveal = true');

describe("rule semantics pinned on a shared store", { skip: PG_SKIP }, () => {
  test("a stamp of another rule semantics (an older lessor's) stops this instance's grants, naming why; revocation still works; this lessor's stamp carries rule_semantics=2", async () => {
    const { schema, drop } = await testSchema();
    const key = hexKey();
    const vault = await Vault.open({
      store: await openPostgresStore({ url: process.env.LESSOR_TEST_PG_URL!, schema }),
      keys: envKeySource({ LESSOR_MASTER_KEY: key })!,
      policy: async () => parsePolicy(POLICY, "policy.toml"),
      claimLimits: { id: "test:serve", role: "admin", transport: "serve" },
    });
    try {
      await vault.admin().storeSecret({ name: "tok", value: "v" });
      const claude = vault.session(agent("claude"));
      const held = await claude.requestLease({ secret: "tok" });
      const row = await admin(`SELECT value FROM ${schema}.meta WHERE key = $1`, [POLICY_META]);
      const stamp = JSON.parse(String(row.rows[0].value)) as { limits: string };
      assert.match(stamp.limits, /(^| )rule_semantics=2( |$)/, "the stamp pins the rule semantics");

      await vault.close();
      const open = async () =>
        Vault.open({
          store: await openPostgresStore({ url: process.env.LESSOR_TEST_PG_URL!, schema }),
          keys: envKeySource({ LESSOR_MASTER_KEY: key })!,
          policy: async () => parsePolicy(POLICY, "policy.toml"),
        });
      const stored = async (): Promise<string> => (JSON.parse(String((await admin(`SELECT value FROM ${schema}.meta WHERE key = $1`, [POLICY_META])).rows[0].value)) as { limits: string }).limits;

      // A stamp of a newer lessor (rule semantics 3): this one reads rules another way, grants nothing, and leaves it as it is.
      await admin(`UPDATE ${schema}.meta SET value = $2 WHERE key = $1`, [POLICY_META, JSON.stringify({ ...stamp, limits: stamp.limits.replace("rule_semantics=2", "rule_semantics=3") })]);
      let other = await open();
      try {
        const r = await refusalOf(other.session(agent("claude")).requestLease({ secret: "tok" }));
        assert.equal(r.code, "unavailable");
        assert.match(r.message, /reads policy rules differently from the instance in force .* run the same lessor version on every instance/);
        assert.deepEqual(await other.admin().revokeLease(held.id, "brakes work"), { revoked: true });
        assert.match(await stored(), /rule_semantics=3/, "an older lessor does not bring a newer stamp down to its own");
      } finally {
        await other.close();
      }

      // A stamp of an older lessor (no rule_semantics, or 1), with no daemon to restart: an embedded
      // command brings it up to this lessor's (which makes instances of the older one grant nothing).
      for (const limits of [stamp.limits.replace(/ ?rule_semantics=2/, ""), stamp.limits.replace("rule_semantics=2", "rule_semantics=1")]) {
        await admin(`UPDATE ${schema}.meta SET value = $2 WHERE key = $1`, [POLICY_META, JSON.stringify({ ...stamp, limits })]);
        other = await open();
        try {
          const l = await other.session(agent("claude")).requestLease({ secret: "tok" });
          assert.equal(l.agent, "claude", limits);
          assert.match(await stored(), /(^| )rule_semantics=2( |$)/, limits);
        } finally {
          await other.close();
        }
      }
    } finally {
      await vault.close().catch(() => {});
      await drop();
    }
  });
});
