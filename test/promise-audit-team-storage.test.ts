/**
 * A promise audit of docs/team.md, docs/storage.md, docs/vm.md, docs/cli/migrate.md,
 * docs/references.md and docs/cli/secret.md: attacks on promises no other test attacks (or attacks
 * only weakly). Real parts: the built CLI as a child process, real SQLite files, the PostgreSQL
 * server of LESSOR_TEST_PG_URL (a schema of its own per test), real Unix sockets. Nothing connects
 * over AF_VSOCK and nothing leaves loopback.
 *
 * Three tests found breaks when written (2026-12-04), fixed that day: a VM's socket reached through a
 * symlinked directory, a migrate target through one's own symlink into a directory others can write,
 * and one socket spelled two ways in two [[vm]] entries.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { ReadBuffer, serializeMessage } from "@modelcontextprotocol/sdk/shared/stdio.js";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";
import { isVaultError } from "../src/base/errors.js";
import { openVault } from "../src/config/open-vault.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { openPostgresStore } from "../src/store/postgres/postgres-store.js";
import { parsePolicy } from "../src/vault/policy.js";
import type { RotationHook, RotationHooks } from "../src/vault/rotation-hooks.js";
import { Vault } from "../src/vault/vault.js";
import { cliHome, runCli, seedHome, startCli, type RunningCli } from "./cli-harness.js";
import { grant, hexKey, tempDirUntilExit } from "./helpers.js";
import { PG_SKIP, PG_URL, testSchema } from "./pg-helpers.js";

const CANARY = `CANARY-pats-${randomBytes(10).toString("hex")}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The SDK's Transport over a connected Unix socket (a guest's end): newline-delimited JSON-RPC. */
class SocketTransport implements Transport {
  onmessage?: (m: JSONRPCMessage) => void;
  onclose?: () => void;
  onerror?: (e: Error) => void;
  readonly #buf = new ReadBuffer();
  constructor(readonly socket: Socket) {}
  async start(): Promise<void> {
    this.socket.on("data", (d: Buffer) => {
      this.#buf.append(d);
      for (let m = this.#buf.readMessage(); m !== null; m = this.#buf.readMessage()) this.onmessage?.(m);
    });
    this.socket.on("error", (e) => this.onerror?.(e));
    this.socket.on("close", () => this.onclose?.());
  }
  async send(m: JSONRPCMessage): Promise<void> {
    this.socket.write(serializeMessage(m));
  }
  async close(): Promise<void> {
    this.socket.end();
  }
}

async function stop(r: RunningCli): Promise<number | null> {
  if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill("SIGTERM");
  const t = setTimeout(() => r.child.kill("SIGKILL"), 10_000);
  const { code } = await r.exited;
  clearTimeout(t);
  return code;
}

async function liveLeases(home: string, agentName: string): Promise<number> {
  const vault = await openVault({ home, env: { LESSOR_HOME: home } });
  try {
    return (await vault.admin().listLeases({ agent: agentName, liveAt: Date.now() })).length;
  } finally {
    await vault.close();
  }
}

// ---------------------------------------------------------------------------------------------
// docs/vm.md: a [[vm]]'s socket <uds_path>_<P> is that VM's, whatever spelling reaches it
// ---------------------------------------------------------------------------------------------

describe("a hostile VM guest: which agent a VM's vsock socket serves (docs/vm.md)", () => {
  /*
   * docs/vm.md, "The proxy and the MCP server over vsock": "A socket `<uds_path>_<P>` of a `[[vm]]`
   * (any port P but the daemon's own) is that VM: the proxy starts only if `--agent` is the VM's agent
   * …, and `lessor mcp` serves the VM's agent"; and "The Firecracker form": "lessor recognises such a
   * path as vm1's: the socket is made with the entry's `socket_mode`, its `uid` is checked, and the
   * service is offered only the VM's agent."
   *
   * The operator names the socket through another spelling of the same directory (a symlinked
   * directory: /var/run → /run on most distributions, or /srv/fc → /run/fc). The socket file lands
   * exactly where Firecracker delivers vm1's guest connections to port 5000, but lessor mcp does not
   * recognise it as vm1's and serves it as a plain socket for `--agent codex`: vm1's guest (agent
   * claude) gets an MCP session of codex and leases codex's grants.
   */
  test("lessor mcp --agent codex on vm1's socket reached through a symlinked directory is refused, as it is by its real path; vm1's guest never becomes codex", async () => {
    const root = tempDirUntilExit("lessor-pats-vm-");
    const home = join(root, "home");
    const env = { PATH: "/usr/bin:/bin", HOME: root, LESSOR_HOME: home, NO_COLOR: "1" };
    const init = await runCli(["init"], { env });
    assert.equal(init.code, 0, init.stderr);
    const fc = join(root, "fc");
    mkdirSync(fc, { mode: 0o700 });
    symlinkSync(fc, join(root, "fc-alias")); // the operator's own symlink: /var/run → /run, say
    writeFileSync(
      join(home, "lessor.toml"),
      `${readFileSync(join(home, "lessor.toml"), "utf8")}\n[[vm]]\nname = "vm1"\nuds_path = "${fc}/vm1.vsock"\nport = 7391\nagent = "claude"\n`,
      { mode: 0o600 },
    );
    // codex is granted a secret claude is not: what vm1's guest must never reach.
    await seedHome(home, grant("codex-only", ["codex"], ["codex-tok"], ["api.test.example"]), [{ name: "codex-tok", value: CANARY }]);

    // Control: by its real path the socket is vm1's and codex is refused before anything listens.
    const real = await startCli(["mcp", "--agent", "codex", "--socket", join(fc, "vm1.vsock_5000")], /(?!)/, env);
    assert.notEqual(await stop(real), 0);
    assert.match(real.stderr(), /is the socket of \[\[vm\]\] "vm1"/, real.stderr());

    // The same socket file, named through the symlinked directory.
    const m = await startCli(["mcp", "--agent", "codex", "--socket", join(root, "fc-alias", "vm1.vsock_5000")], /lessor mcp: serving|lessor:/, env);
    let guestGot = "(the command did not serve)";
    try {
      if (/lessor mcp: serving/.test(m.stderr())) {
        // vm1's guest: Firecracker delivers its connections to guest port 5000 at <uds_path>_5000.
        const client = new Client({ name: "vm1-guest", version: "1.0.0" });
        await client.connect(new SocketTransport(connect(join(fc, "vm1.vsock_5000"))));
        try {
          const r = (await client.callTool({ name: "request_access", arguments: { secret: "codex-tok" } })) as { isError?: boolean; content: { text: string }[] };
          guestGot = `request_access(codex-tok) from vm1's guest: isError=${r.isError === true}; live leases of codex: ${await liveLeases(home, "codex")}`;
          assert.ok(!r.content.map((c) => c.text).join("").includes(CANARY));
        } finally {
          await client.close().catch(() => {});
        }
      }
    } finally {
      await stop(m);
    }
    assert.ok(!m.stderr().includes(CANARY) && !m.stdout().includes(CANARY));
    assert.match(
      m.stderr(),
      /is the socket of \[\[vm\]\] "vm1"/,
      `lessor mcp served vm1's vsock socket (${join(fc, "vm1.vsock_5000")}) as agent codex: ${guestGot}\n${m.stderr()}`,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// docs/cli/migrate.md: the SQLite target's directories must not let another user swap the file
// ---------------------------------------------------------------------------------------------

describe("lessor migrate: the SQLite target's place (docs/cli/migrate.md)", () => {
  /*
   * docs/cli/migrate.md, "What it refuses": "A SQLite target that exists. Migrate creates the file
   * itself (mode 0600, never through a link) … The directories on the way must not let another user
   * swap the file (as for the home)." docs/security.md (`lessor migrate`): "A SQLite target is a new
   * 0600 file migrate creates (O_EXCL|O_NOFOLLOW) in a place no one else can swap".
   *
   * The target is named through the user's own symlink whose destination sits under a directory
   * every local user can write (mode 0777, not sticky). By its real path the target is refused; by
   * the symlink the check looks only at the path as written (the file does not exist yet, so its real
   * path is never computed) and migrate writes the vault there: another user can rename the
   * directory between the check and SQLite's later opens by path (the file, its -wal, its -shm) and
   * have the vault written into a database they planted.
   */
  test("a target reached through the user's own symlink into a directory others can write is refused, as the same place by its real path is", async () => {
    const home = await cliHome();
    await seedHome(home, "", [{ name: "canary", value: CANARY }]);
    const base = tempDirUntilExit("lessor-pats-mig-");
    const open = join(base, "open"); // any local user may rename what is in here
    mkdirSync(join(open, "inner"), { recursive: true, mode: 0o700 });
    chmodSync(open, 0o777);
    symlinkSync(join(open, "inner"), join(base, "link"));

    const byReal = await runCli(["migrate", "--to", `sqlite:${join(open, "inner", "copy-a.db")}`], { home });
    assert.notEqual(byReal.code, 0, "control: the real path is refused");
    assert.match(byReal.stderr, /can be written by other users/, byReal.stderr);
    assert.ok(!existsSync(join(open, "inner", "copy-a.db")));

    const byLink = await runCli(["migrate", "--to", `sqlite:${join(base, "link", "copy-b.db")}`], { home });
    assert.ok(!byLink.stderr.includes(CANARY) && !byLink.stdout.includes(CANARY));
    assert.ok(
      byLink.code !== 0 && !existsSync(join(open, "inner", "copy-b.db")),
      `migrate wrote the vault under ${open} (mode 0777, not sticky) through a symlink: exit ${byLink.code}\n${byLink.stderr}`,
    );
  });

  /*
   * docs/cli/migrate.md, "How it checks the copy": "Progress lines go to stderr; `--json` prints the
   * summary as JSON on stdout instead, with no progress lines." and "Exit codes: … 5 a daemon is
   * serving the home, or the database cannot be reached". A newcomer pointing migrate at a server
   * that is down must get 5 (not 2, a bad target) and no URL echoed.
   */
  test("--json prints only the JSON summary (no progress lines, no value); an unreachable PostgreSQL target is exit 5 naming no URL", async () => {
    const home = await cliHome();
    await seedHome(home, "", [{ name: "canary", value: CANARY }]);
    const dir = tempDirUntilExit("lessor-pats-mig-");
    const r = await runCli(["migrate", "--to", `sqlite:${join(dir, "copy.db")}`, "--json"], { home });
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout) as unknown;
    assert.equal(typeof summary, "object");
    assert.equal(r.stderr.trim(), "", `--json printed progress lines on stderr:\n${r.stderr}`);
    assert.ok(!r.stdout.includes(CANARY));

    // Nothing listens on 127.0.0.1:1 (a privileged port no test binds).
    const pw = `pw-${randomBytes(8).toString("hex")}`;
    const down = await runCli(["migrate"], { home, env: { LESSOR_MIGRATE_TO: `postgres://lessor:${pw}@127.0.0.1:1/lessor` } });
    assert.equal(down.code, 5, `${down.code}\n${down.stderr}`);
    assert.ok(!down.stderr.includes(pw) && !down.stdout.includes(pw), "the password is never shown");
    assert.match(down.stderr, /127\.0\.0\.1:1/, down.stderr);
  });
});

// ---------------------------------------------------------------------------------------------
// docs/cli/secret.md: one rotation hook run at a time per secret, across daemons on one PostgreSQL
// ---------------------------------------------------------------------------------------------

describe("rotation hooks across instances on one PostgreSQL schema (docs/cli/secret.md)", { skip: PG_SKIP }, () => {
  const drops: (() => Promise<void>)[] = [];
  after(async () => {
    for (const d of drops) await d();
  });

  /*
   * docs/cli/secret.md, "Running it": "One hook runs at a time per secret, across every lessor process
   * sharing the store (embedded CLIs, a daemon, daemons on one PostgreSQL): a second `rotate` (or the
   * schedule) while one runs is refused with `rate_limited`." Only the SQLite form is attacked
   * elsewhere (test/refs-hooks-attacks.test.ts). Two instances on one schema rotate at once, again and
   * again: the issuer's command runs once per round, the vault keeps what it printed, and the claim
   * is released for the next round on the other instance.
   */
  test("two instances rotating one secret by its hook at once: the hook runs once per round, the other is rate_limited, versions follow the runs", async () => {
    const { schema, drop } = await testSchema();
    const key = hexKey();
    const hook: RotationHook = { secret: { scope: "global", name: "db" }, command: ["/bin/true"], timeoutMs: 5_000, revoke: "all", stdin: "none", everyMs: null };
    const issued: string[] = []; // what the issuer handed out, in order
    const hooks: RotationHooks = {
      find: (ref) => (ref.scope === "global" && ref.name === "db" ? hook : null),
      list: () => [hook],
      run: async () => {
        const v = `issued-${issued.length + 1}-${randomBytes(6).toString("hex")}`;
        issued.push(v);
        await sleep(400); // the issuer takes its time
        return { ok: true, value: Buffer.from(v) };
      },
    };
    const mk = async (): Promise<Vault> =>
      Vault.open({
        store: await openPostgresStore({ url: PG_URL!, schema, feed: { pollMs: 60_000 } }),
        keys: envKeySource({ LESSOR_MASTER_KEY: key })!,
        policy: async () => parsePolicy(grant("g", ["claude"], ["db"], ["db.example"]), "policy.toml"),
        rotationHooks: hooks,
      });
    const a = await mk();
    const b = await mk();
    drops.push(async () => {
      await a.close();
      await b.close();
      await drop();
    });
    await a.admin().storeSecret({ name: "db", value: "initial" });
    for (let round = 1; round <= 3; round++) {
      const got = await Promise.allSettled([a.admin().rotateSecretByHook({ scope: "global", name: "db" }), b.admin().rotateSecretByHook({ scope: "global", name: "db" })]);
      const ok = got.filter((g) => g.status === "fulfilled");
      const refused = got.filter((g) => g.status === "rejected");
      assert.equal(ok.length, 1, `round ${round}: ${JSON.stringify(got.map((g) => (g.status === "rejected" ? String(g.reason) : "ok")))}`);
      assert.ok(isVaultError((refused[0] as PromiseRejectedResult).reason, "rate_limited"), String((refused[0] as PromiseRejectedResult).reason));
      assert.equal(issued.length, round, "the issuer's command ran once this round");
      assert.equal((ok[0] as PromiseFulfilledResult<{ version: number }>).value.version, round + 1);
    }
    // What each instance reads is what the issuer last handed out.
    for (const v of [a, b]) {
      const meta = await v.admin().getSecretMetadata({ scope: "global", name: "db" });
      assert.equal(meta.currentVersion, 4);
    }
    assert.equal((await b.admin().revealSecret({ scope: "global", name: "db" })).value.expose().toString(), issued[2]);
    const verify = await a.admin().auditVerify();
    assert.equal(verify.ok, true, JSON.stringify(verify));
  });
});

// ---------------------------------------------------------------------------------------------
// docs/vm.md: two [[vm]] entries naming one socket are a configuration error
// ---------------------------------------------------------------------------------------------

describe("[[vm]] entries that name one socket (docs/vm.md)", () => {
  /*
   * docs/vm.md, "The Firecracker form": "Each `(uds_path, port)` belongs to one entry; two entries
   * naming the same socket are a configuration error." The check compares the text of uds_path, so
   * the same socket spelled `/run/fc/./vm1.vsock`, `/run/fc//vm1.vsock` or relative to the home is
   * accepted as a second VM (another agent) on vm1's socket. (lessor serve then fails at bind with
   * "another lessor daemon is listening on …", a misleading message, but it does not serve; lessor
   * proxy/mcp take the first entry the path matches.)
   */
  test("the same socket spelled two ways in two [[vm]] entries (another agent on each) is a configuration error", async () => {
    const { parseVms } = await import("../src/config/vm-config.js");
    const home = tempDirUntilExit("lessor-pats-vmcfg-");
    const spellings: [string, string][] = [
      [`${home}/fc/vm1.vsock`, `${home}/fc/./vm1.vsock`],
      [`${home}/fc/vm1.vsock`, `${home}//fc/vm1.vsock`],
      [`${home}/fc/vm1.vsock`, `${home}/fc/../fc/vm1.vsock`],
    ];
    const accepted: string[] = [];
    for (const [one, two] of spellings) {
      const entries = [
        { name: "vm1", uds_path: one, port: 7391, agent: "claude" },
        { name: "vm2", uds_path: two, port: 7391, agent: "codex" },
      ];
      try {
        parseVms(join(home, "lessor.toml"), entries);
        accepted.push(`${one} and ${two}`);
      } catch (e) {
        assert.match(String((e as Error).message), /used by another \[\[vm\]\] entry|own socket/);
      }
    }
    assert.deepEqual(accepted, [], `two [[vm]] entries naming one socket were accepted: ${accepted.join("; ")}`);
  });
});

// ---------------------------------------------------------------------------------------------
// docs/team.md: restarting an instance does not change the policy in force
// ---------------------------------------------------------------------------------------------

describe("the policy in force survives a restart with another file (docs/team.md, step 4)", { skip: PG_SKIP }, () => {
  /*
   * docs/team.md, step 4: "The database holds the digest (sha-256) of the policy in force … Restarting
   * an instance does not change the policy in force: change it with a reload." A newcomer edits
   * policy.toml and restarts the only instance (no reload): an agent must not be granted by the new
   * file until a reload puts it in force, and the old grants are refused too (the instance is stale).
   */
  test("the only instance restarted with another policy.toml grants nothing (unavailable: not the policy in force) until a reload puts the file in force", async () => {
    const { schema, drop } = await testSchema();
    const key = hexKey();
    const open = async (text: { t: string }): Promise<Vault> =>
      Vault.open({
        store: await openPostgresStore({ url: PG_URL!, schema, feed: { pollMs: 60_000 } }),
        keys: envKeySource({ LESSOR_MASTER_KEY: key })!,
        policy: async () => parsePolicy(text.t, "policy.toml"),
      });
    const { agent } = await import("./helpers.js");
    try {
      const p1 = { t: grant("old", ["claude"], ["tok"], ["api.example.com"]) };
      const a = await open(p1);
      await a.admin().storeSecret({ name: "tok", value: "v-tok" });
      await a.admin().storeSecret({ name: "wide", value: CANARY });
      await a.session(agent("claude")).requestLease({ secret: "tok" });
      await a.close();

      // Restarted with a file that would grant "wide" as well.
      const p2 = { t: `${grant("old", ["claude"], ["tok"], ["api.example.com"])}\n${grant("new", ["claude"], ["wide"], ["api.example.com"])}` };
      const b = await open(p2);
      try {
        for (const secret of ["wide", "tok"]) {
          await assert.rejects(b.session(agent("claude")).requestLease({ secret }), (e) => {
            assert.ok(isVaultError(e, "unavailable"), String(e));
            assert.match((e as Error).message, /not the policy in force/);
            assert.ok(!(e as Error).message.includes(CANARY));
            return true;
          });
        }
        // The brakes still work on the stale instance.
        assert.equal((await b.admin().revokeAllForAgent("claude")).revoked, 1, "the lease granted before the restart");
        // A reload on it puts its own file in force: now it grants by it.
        await b.admin().reloadPolicy();
        const l = await b.session(agent("claude")).requestLease({ secret: "wide" });
        assert.equal(l.agent, "claude");
      } finally {
        await b.close();
      }
    } finally {
      await drop();
    }
  });
});
