/**
 * `lessor demo`: walks the whole life of a secret on the embedded default (SQLite in a fresh home):
 * init, store, grant, lease, access, attacks that must fail, revoke, audit verify. Prints what happened.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { initHome, openVault } from "../config/open-vault.js";
import { VaultError } from "../base/errors.js";

const POLICY = `[[rule]]
name = "claude-github"
effect = "allow"
agents = ["claude"]
secrets = ["github-token"]
domains = ["api.github.com"]
ttl = "15m"
max_uses = 3

[[rule]]
name = "nobody-gets-prod"
effect = "deny"
agents = ["*"]
secrets = ["env:prod/*"]
`;

/** Runs the demo; `out` receives each printed line. Returns the process exit code. */
export async function runDemo(opts: { home?: string; keep?: boolean; out?: (line: string) => void } = {}): Promise<number> {
  const say = opts.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const home = opts.home ?? join(mkdtempSync(join(tmpdir(), "lessor-demo-")), "home");
  const step = (n: number, text: string) => say(`\n${n}. ${text}`);
  const expectFail = async (what: string, fn: () => Promise<unknown>) => {
    try {
      await fn();
      say(`   !! ${what}: was allowed (this is a bug)`);
      return false;
    } catch (e) {
      if (!(e instanceof VaultError)) throw e;
      say(`   refused: ${what} -> ${e.code}: ${e.message}`);
      return true;
    }
  };
  let ok = true;

  step(1, `lessor init ${home}`);
  const init = await initHome({ home, env: { ...process.env, LESSOR_MASTER_KEY: "" } });
  for (const f of init.created) say(`   created ${f}`);
  writeFileSync(join(home, "policy.toml"), POLICY, { mode: 0o600 });
  say("   policy: agent claude may lease github-token for api.github.com, 15 min, 3 uses");

  const vault = await openVault({ home, env: { ...process.env, LESSOR_MASTER_KEY: "" } });
  try {
    const admin = vault.admin();
    const claude = vault.session({ id: "demo:claude", role: "agent", agent: "claude", transport: "embedded" });
    const mallory = vault.session({ id: "demo:mallory", role: "agent", agent: "mallory", transport: "embedded" });

    step(2, "store a secret (admin)");
    const token = `ghp_${randomBytes(18).toString("base64url")}`;
    const meta = await admin.storeSecret({ name: "github-token", value: token, kind: "pat", description: "GitHub token for the demo" });
    const v = meta.versions.at(-1)!;
    say(`   stored global/github-token v${v.version}: ${v.size} bytes, ${v.alg}, DEK wrapped by master key ${v.keyId}`);

    step(3, "agent claude asks for a lease");
    const lease = await claude.requestLease({ secret: "github-token", domains: ["api.github.com"] });
    say(`   lease ${lease.id}: domains ${lease.domains.join(",")}, expires ${new Date(lease.expiresAt).toISOString()}, ${lease.maxUses} uses`);

    step(4, "claude uses the lease for api.github.com");
    const got = await claude.accessSecret(lease.id, { domain: "api.github.com" });
    const matches = got.value.equals(Buffer.from(token));
    say(`   got ${got.value.length} bytes (${matches ? "the stored value" : "WRONG VALUE"}); printed as ${String(got.value)}`);
    got.value.wipe();
    ok &&= matches;

    step(5, "attacks that must fail");
    ok &&= await expectFail("mallory uses claude's lease", () => mallory.accessSecret(lease.id, { domain: "api.github.com" }));
    ok &&= await expectFail("claude sends it to api.github.com.evil.com", () => claude.accessSecret(lease.id, { domain: "api.github.com.evil.com" }));
    ok &&= await expectFail("claude asks for a secret no rule grants", () => claude.requestLease({ secret: "env:prod/db-password" }));
    ok &&= await expectFail("claude stores a secret (admin only)", () => claude.storeSecret({ name: "x", value: "y" }));

    step(6, "revoke the lease, then try it again");
    await admin.revokeLease(lease.id, "demo is over");
    say(`   revoked ${lease.id}`);
    ok &&= await expectFail("claude uses the revoked lease", () => claude.accessSecret(lease.id, { domain: "api.github.com" }));

    step(7, "the audit trail");
    for (const e of await admin.auditQuery({ limit: 100 }))
      say(`   #${e.seq} ${e.type.padEnd(16)} ${(e.agent ?? "-").padEnd(8)} ${e.outcome.padEnd(6)} ${e.reason ? e.reason.slice(0, 60) : ""}`);
    const verdict = await admin.auditVerify();
    say(`   verify: ${verdict.ok ? `ok, ${verdict.events} events chained and checkpointed` : `FAILED: ${verdict.problem}`}`);
    ok &&= verdict.ok;

    step(8, "is the value anywhere on disk in the clear?");
    const hits = readdirSync(home).filter((f) => readFileSync(join(home, f)).includes(token));
    say(`   ${hits.length === 0 ? "no: not in any file of the home (database, WAL, audit, keys)" : `YES, in ${hits.join(", ")}`}`);
    ok &&= hits.length === 0;
  } finally {
    await vault.close();
    if (!opts.home && !opts.keep) rmSync(join(home, ".."), { recursive: true, force: true });
  }
  say(ok ? "\ndemo finished: every step behaved as it should" : "\ndemo FAILED: see the lines marked !!");
  return ok ? 0 : 1;
}
