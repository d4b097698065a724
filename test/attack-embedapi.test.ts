/**
 * An attack pass on the embedded API (`lessor` / `lessor/vault`: openVault, Vault.session, a vault held
 * open in-process) under concurrency and across processes: the same home used at once by a long-lived
 * embedded program and by other processes (embedded `lessor` CLIs, other programs on the embedded API).
 *
 * Real parts only: real SQLite files in temp homes, the built CLI (dist/bin/lessor.cjs) and tsx
 * scripts as real child processes. No network. The two breaks the pass found (a master-key rotation
 * race, a policy reload unseen by another process) are fixed; their tests hold the guarantees.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs, { readFileSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";
import { initHome, openVault } from "../src/config/open-vault.js";
import { VaultError } from "../src/base/errors.js";
import type { Identity } from "../src/base/types.js";
import type { Vault } from "../src/vault/vault.js";
import { BIN } from "./cli-harness.js";
import { grant, tempDir } from "./helpers.js";

const CANARY = `CANARY_embedapi_${randomBytes(12).toString("hex")}`;
const DOMAIN = "api.example.com";
const SRC = fileURLToPath(new URL("../src/", import.meta.url));
const ref = (name: string) => ({ scope: "global", name });
const who = (agent: string, id = `embedded:${agent}`): Identity => ({ id, role: "agent", agent, transport: "embedded" });

async function home(policy: string): Promise<string> {
  const h = join(tempDir("lessor-embedapi-"), "home");
  await initHome({ home: h, env: { LESSOR_HOME: h } });
  writeFileSync(join(h, "policy.toml"), policy, { mode: 0o600 });
  return h;
}

const open = (h: string): Promise<Vault> => openVault({ home: h, env: { LESSOR_HOME: h } });

/** The built CLI on `h`, embedded (no daemon), with exactly this environment. */
function cli(h: string, ...args: string[]): { code: number | null; out: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH!, HOME: process.env.HOME!, LESSOR_HOME: h }, encoding: "utf8", timeout: 30_000 });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

/** How a call ended: "ok", or the VaultError's code (anything else is reported as it is). */
async function outcome(f: () => Promise<unknown>): Promise<string> {
  try {
    const r = (await f()) as { value?: { wipe?: () => void } } | undefined;
    r?.value?.wipe?.();
    return "ok";
  } catch (e) {
    return e instanceof VaultError ? e.code : `not a VaultError: ${inspect(e)}`;
  }
}

function assertNoCanary(text: string, where: string): void {
  assert.ok(!text.includes(CANARY), `the canary value appears in ${where}`);
}

/** A tsx script in a temp dir, importing the sources through @SRC@. */
function script(name: string, text: string): string {
  const p = join(tempDir("lessor-embedapi-script-"), name);
  writeFileSync(p, text.replaceAll("@SRC@", SRC));
  return p;
}

function runScript(file: string, args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, ["--import", "tsx", file, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { PATH: process.env.PATH, HOME: process.env.HOME } });
    let out = "";
    let err = "";
    c.stdout.on("data", (b: Buffer) => (out += b));
    c.stderr.on("data", (b: Buffer) => (err += b));
    c.on("close", (code) => resolve({ code, out, err }));
  });
}

describe("master-key rotation from two processes on one home", () => {
  /*
   * docs/crypto.md, src/vault/rotation.ts: rotation is "crash-safe at every point … Killed anywhere,
   * the key source holds every key some row points at"; docs/security.md (durability): "nothing is
   * left under a retired key or undecryptable". Two rotations at once (a program on the embedded API
   * and `lessor key rotate` in another terminal; two cron'd CLIs; a daemon and an embedded program)
   * both rewrite master.key with read-check-rename and no lock between processes
   * (src/crypto/keys/file.ts promote/retire: checkUnchanged() then write()). Here A has checked the
   * file and written its temporary copy; before A's rename lands (an fsync on a busy disk), B's
   * complete `lessor key rotate` runs: it re-wraps every DEK under its new key KB and retires the
   * others (file = [KB]). A's rename then puts back [KA, K0]: KB, which every row names, is in no
   * file. Every later command fails ("the master key … does not match this vault (it needs key KB)")
   * and every secret is lost for good. With two looping `lessor key rotate` processes this happens
   * within seconds, without any hook; the hook here only makes the interleaving deterministic.
   * Now one rotation runs at a time among the processes sharing the store: it is claimed in the
   * store for the whole rotation (src/vault/rotation-claim.ts), and the key source is written only
   * when it will still hold every key the store uses; B is refused, saying A's rotation is running.
   */
  test("a master-key rotation in an embedded program racing `lessor key rotate` in another process never leaves the vault under a key no key source holds: the second is refused, saying another rotation is running", { timeout: 60_000 }, async () => {
    const h = await home(grant("g", ["claude"], ["s*"], [DOMAIN]));
    {
      const v = await open(h);
      for (let i = 0; i < 5; i++) await v.admin().storeSecret({ name: `s${i}`, value: `${CANARY}-${i}` });
      await v.close();
    }
    const A = await open(h);
    const keyFile = join(h, "master.key");
    const orig = fs.renameSync;
    const seen: { b?: { code: number | null; out: string } } = {};
    // A's rename of its new key file is where the other process's whole rotation happens.
    fs.renameSync = ((from: fs.PathLike, to: fs.PathLike) => {
      if (seen.b === undefined && String(to) === keyFile) seen.b = cli(h, "key", "rotate");
      return orig(from, to);
    }) as typeof fs.renameSync;
    syncBuiltinESMExports();
    let a: string;
    try {
      a = await outcome(() => A.admin().rotateMasterKey());
    } finally {
      fs.renameSync = orig;
      syncBuiltinESMExports();
      await A.close();
    }
    const b = seen.b;
    assert.ok(b !== undefined, "B's rotation ran during A's");
    // The one refused says why: another rotation is running (not a broken trail or a key set back).
    if (b.code !== 0) assert.match(b.out, /another master-key rotation is running on this vault/, b.out);
    if (a !== "ok") assert.equal(b.code, 0, `both rotations failed: A ${a}, B ${b.out}`);
    assertNoCanary(b.out, "B's output");
    // However the two rotations end (one may be refused), every secret still opens afterwards.
    const got = cli(h, "secret", "get", "s1", "--reveal");
    assertNoCanary(got.out.replace(`${CANARY}-1`, ""), "secret get");
    const keys = (JSON.parse(readFileSync(keyFile, "utf8")) as { keys: string[] }).keys.length;
    assert.equal(
      got.code,
      0,
      `after A's rotation (${a}) and B's (exit ${b.code}) the vault does not open: ${got.out.trim()} (key file holds ${keys} key(s))`,
    );
    assert.equal(got.out.trim(), `${CANARY}-1`);
    const verify = cli(h, "audit", "verify");
    assert.equal(verify.code, 0, verify.out);
  });
});

describe("a long-lived embedded vault and other processes on the same home", () => {
  /*
   * docs/policy.md "Reloading": "A reload that loads is in force before its policy_reloaded event is
   * written … It applies to leases granted before it too: every use is decided again by the policy in
   * force". `lessor policy reload` in embedded mode (no daemon) loads the file, audits
   * policy_reloaded and says "policy reloaded (embedded vault)", exit 0. A vault already open in
   * another process (a program on the README's embedded API, or `lessor run`/`lessor proxy`/`lessor
   * mcp` started without a daemon, which keep their own vault open for hours) once kept deciding by
   * the rules it read at open: the agent the reload removed kept using its lease, renewing it and
   * being granted new ones, since src/vault/policy-sync.ts checked the policy stamp on PostgreSQL
   * only. It now checks it on SQLite too, inside each grant's, use's and renewal's transaction.
   */
  test("after `lessor policy reload` (embedded) removes an agent's rule, a vault held open by another process grants and serves that agent nothing more", { timeout: 60_000 }, async () => {
    const allow = (agents: string[]) => grant("r", agents, ["tok"], [DOMAIN], 'ttl = "1h"');
    const h = await home(allow(["claude"]));
    const A = await open(h);
    after(() => A.close());
    await A.admin().storeSecret({ name: "tok", value: CANARY });
    const claude = A.session(who("claude"));
    const lease = await claude.requestLease({ secret: "tok", domains: [DOMAIN] });
    assert.equal(await outcome(() => claude.accessSecret(lease.id, { domain: DOMAIN })), "ok");
    writeFileSync(join(h, "policy.toml"), allow(["bob"]), { mode: 0o600 });
    const r = cli(h, "policy", "reload");
    assert.equal(r.code, 0, r.out);
    const now = {
      "use of the old lease": await outcome(() => claude.accessSecret(lease.id, { domain: DOMAIN })),
      "a new grant": await outcome(() => claude.requestLease({ secret: "tok", domains: [DOMAIN] })),
      "a renewal": await outcome(() => claude.renewLease(lease.id)),
    };
    for (const [what, code] of Object.entries(now)) assert.notEqual(code, "ok", `${what} after the reload committed in another process: ${JSON.stringify(now)}`);
  });

  test("`lessor revoke` and `lessor killswitch --yes` committed by another process bind a vault held open here at its next call; the trail verifies", { timeout: 60_000 }, async () => {
    const h = await home(grant("r", ["claude"], ["tok"], [DOMAIN], 'ttl = "1h"\nmax_uses = 100'));
    const A = await open(h);
    after(() => A.close());
    await A.admin().storeSecret({ name: "tok", value: CANARY });
    const claude = A.session(who("claude"));
    const l1 = await claude.requestLease({ secret: "tok", domains: [DOMAIN] });
    const l2 = await claude.requestLease({ secret: "tok", domains: [DOMAIN] });
    assert.equal(await outcome(() => claude.accessSecret(l1.id, { domain: DOMAIN })), "ok");
    const rv = cli(h, "revoke", l1.id);
    assert.equal(rv.code, 0, rv.out);
    assert.equal(await outcome(() => claude.accessSecret(l1.id, { domain: DOMAIN })), "lease_revoked");
    assert.equal(await outcome(() => claude.renewLease(l1.id)), "lease_revoked");
    assert.equal(await outcome(() => claude.accessSecret(l2.id, { domain: DOMAIN })), "ok");
    const ks = cli(h, "killswitch", "--yes", "--reason", "attack pass");
    assert.equal(ks.code, 0, ks.out);
    const got = {
      access: await outcome(() => claude.accessSecret(l2.id, { domain: DOMAIN })),
      grant: await outcome(() => claude.requestLease({ secret: "tok", domains: [DOMAIN] })),
      leaseAndAccess: await outcome(() => claude.requestLeaseAndAccess({ secret: "tok", domains: [DOMAIN] }, { domain: DOMAIN })),
    };
    assert.deepEqual(got, { access: "lease_revoked", grant: "access_denied", leaseAndAccess: "access_denied" });
    assert.deepEqual(await A.admin().auditVerify().then((v) => [v.ok, v.problem]), [true, undefined]);
    const v = cli(h, "audit", "verify");
    assert.equal(v.code, 0, v.out);
  });

  test("a max_uses = 1 lease used at once by four processes, each with its own embedded vault, hands out its value exactly once, beside two writer processes; the trail verifies", { timeout: 120_000 }, async () => {
    const h = await home(grant("r", ["claude"], ["tok", "w*"], [DOMAIN], 'ttl = "1h"\nmax_uses = 1'));
    const A = await open(h);
    after(() => A.close());
    await A.admin().storeSecret({ name: "tok", value: CANARY });
    const user = script(
      "user.mts",
      `import { openVault } from "@SRC@config/open-vault.ts";
import { existsSync, writeFileSync, writeSync } from "node:fs";
const [home, leaseId, go] = process.argv.slice(2);
const vault = await openVault({ home, env: { LESSOR_HOME: home } });
const s = vault.session({ id: "proc:" + process.pid, role: "agent", agent: "claude", transport: "embedded" });
writeFileSync(go + "." + process.pid, "");
while (!existsSync(go)) await new Promise((r) => setTimeout(r, 2));
const rs = await Promise.allSettled(Array.from({ length: 10 }, () => s.accessSecret(leaseId, { domain: "${DOMAIN}" })));
for (const r of rs) {
  if (r.status === "fulfilled") { writeSync(1, "ok " + r.value.value.expose().length + "\\n"); r.value.value.wipe(); }
  else writeSync(1, "err " + r.reason.code + "\\n");
}
await vault.close();
`,
    );
    const writer = script(
      "writer.mts",
      `import { openVault } from "@SRC@config/open-vault.ts";
const home = process.argv[2];
const vault = await openVault({ home, env: { LESSOR_HOME: home } });
const a = vault.admin();
const s = vault.session({ id: "writer:" + process.pid, role: "agent", agent: "claude", transport: "embedded" });
const name = "w" + process.pid;
await a.storeSecret({ name, value: "v0" });
const end = Date.now() + 1000;
let i = 0;
await Promise.all([0, 1, 2].map(async () => {
  while (Date.now() < end) {
    const k = i++;
    if (k % 2) await a.rotateSecret({ scope: "global", name }, "v" + k);
    else { const l = await s.requestLease({ secret: name, domains: ["${DOMAIN}"] }); (await s.accessSecret(l.id, { domain: "${DOMAIN}" })).value.wipe(); await s.revokeLease(l.id); }
  }
}));
await vault.close();
`,
    );
    const lease = await A.session(who("claude")).requestLease({ secret: "tok", domains: [DOMAIN] });
    const go = join(tempDir("lessor-embedapi-go-"), "go");
    const kids = Array.from({ length: 4 }, () => runScript(user, [h, lease.id, go]));
    // Two writer processes storing, rotating, leasing, using and revoking at the same time.
    const ws = [0, 1].map(() => runScript(writer, [h]));
    const dir = join(go, "..");
    while (fs.readdirSync(dir).length < 4) await new Promise((r) => setTimeout(r, 10)); // every child has opened its vault
    writeFileSync(go, "");
    const results = await Promise.all(kids);
    const lines = results.flatMap((r) => r.out.trim().split("\n"));
    for (const r of results) assertNoCanary(`${r.out}${r.err}`, "a child's output");
    assert.equal(lines.filter((l) => l.startsWith("ok ")).length, 1, results.map((r) => r.err).join(""));
    assert.deepEqual([...new Set(lines.filter((l) => !l.startsWith("ok ")))], ["err lease_exhausted"]);
    assert.equal((await A.admin().listLeases({ agent: "claude" })).find((l) => l.id === lease.id)!.uses, 1);
    for (const w of await Promise.all(ws)) assert.equal(w.code, 0, w.err);
    assert.deepEqual(await A.admin().auditVerify().then((v) => [v.ok, v.problem]), [true, undefined]);
    const v = cli(h, "audit", "verify");
    assert.equal(v.code, 0, v.out);
  });
});
