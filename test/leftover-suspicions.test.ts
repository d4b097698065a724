/**
 * Suspicions earlier testers left without a demonstration, each checked here with real parts:
 *
 * 1. the git guard of `lessor run` (src/sandbox/git-guard.ts): what the agent can create under
 *    `.git/worktrees/` and `.git/modules/` during the run, for the owner's git afterwards;
 * 2. the daemon closing a connection on an oversize frame: what happens to requests pipelined before it;
 * 3. the daemon waiting in `BEGIN IMMEDIATE` while an embedded CLI writes the same SQLite file;
 * 4. refusal counters and the brakes when a batch of store calls is re-run;
 * 5. a WebSocket upgrade pipelined behind a slow request on one keep-alive connection through the proxy;
 * 6. Transfer-Encoding variants (`chunked\t`, `chunked, identity`, TE + CL) through the proxy.
 *
 * Only loopback and temporary directories. Each attack that should be stopped by the sandbox is also
 * shown to work with --no-sandbox, so a failure inside proves the sandbox and not a broken probe.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import type { IncomingMessage } from "node:http";
import * as https from "node:https";
import { connect as netConnect, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import * as tls from "node:tls";
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import Database from "better-sqlite3";
import { makeHome, RawConn, startServe } from "./daemon-harness.js";
import { codeOf, grant, makeVault } from "./helpers.js";
import { openVault } from "../src/config/open-vault.js";
import { BURST } from "../src/vault/refusals.js";
import type { SqliteStore } from "../src/store/sqlite/sqlite-store.js";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { loopbackOnly, readAll, tableResolver } from "./proxy-harness.js";
import { ATTACKERS_POLICY, evilCommonDir, git, gitInit, gitOk, HAVE_BWRAP, makeOwner as newOwner, plantScript, runAgent } from "./run-harness.js";

const NODE = process.execPath;
const HAVE_GIT = spawnSync("git", ["--version"]).status === 0;
const skipGit = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : !HAVE_GIT ? "git is not installed" : false;

const root = mkdtempSync(join(tmpdir(), "lessor-leftover-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

// ---------------------------------------------------------------------------------------------
// 1. The git guard: new entries under .git/worktrees and .git/modules
// ---------------------------------------------------------------------------------------------

const MASTER_KEY = randomBytes(32).toString("hex");

/** A fake owner (run-harness): a home, ~/.lessor with the env key and ATTACKERS_POLICY (a granted secret stored), and a project directory. */
const makeOwner = (name: string) => newOwner({ root, name, masterKey: MASTER_KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: `granted-${randomBytes(12).toString("hex")}` }] });

/** `lessor run --agent AGENT EXTRA -- sh -c SCRIPT` from `cwd` (run-harness's runAgent, given 60 s). */
const lessorRun = (cwd: string, env: Record<string, string>, agent: string, extra: string[], script: string) => runAgent(cwd, env, agent, extra, script, 60_000);


describe("1. the git guard and what the agent creates under .git/worktrees and .git/modules", { skip: skipGit }, () => {
  /** Not imported at the top of the file (its other parts are edited apart from this one). */
  const fsMore = (): Promise<typeof import("node:fs")> => import("node:fs");
  /** A shell line running `cmd`, then printing `label:done` or `label:refused` (and, refused, its stderr). */
  const attempt = (label: string, cmd: string): string => `if ( ${cmd} ) 2>.attempt-err; then echo "${label}:done"; else echo "${label}:refused: $(tr '\\n' ' ' <.attempt-err)"; fi`;

  test("an agent cannot plant a new .git/worktrees/NAME admin directory nor repoint the owner's linked worktree inside the project: .git/worktrees takes no new entry, the checkout's .git file is read-only, its `git worktree add` fails with git's error, and the owner's `git status` in that worktree runs nothing of the agent's", async () => {
    const { readdirSync } = await fsMore();
    for (const confined of [false, true]) {
      const o = await makeOwner(`wt-inside-${confined}`);
      gitInit(o.project);
      // A linked worktree kept inside the project, as agents' tools do (.claude/worktrees/NAME, .worktrees/NAME).
      gitOk(o.project, "worktree", "add", "-q", ".worktrees/feat");
      const wt = join(o.project, ".worktrees/feat");
      const dotGit = `gitdir: ${join(o.project, ".git/worktrees/feat")}`;
      assert.equal(readFileSync(join(wt, ".git"), "utf8").trim(), dotGit);
      const marker = join(root, `wt-inside-${confined}`, "marker");
      const evil = join(o.project, "evil.sh");
      const plant = [
        "set -e",
        // A NEW worktree admin directory (nothing there before the run to guard), its commondir the agent's.
        "mkdir -p .git/worktrees/evil",
        "cp .git/worktrees/feat/HEAD .git/worktrees/evil/HEAD",
        `echo "$PWD/evil-common" > .git/worktrees/evil/commondir`,
        `echo "$PWD/.worktrees/feat/.git" > .git/worktrees/evil/gitdir`,
        // The owner's worktree's .git file now names it.
        `echo "gitdir: $PWD/.git/worktrees/evil" > .worktrees/feat/.git`,
      ].join("\n");
      const r = await lessorRun(
        o.project,
        o.env,
        "attacker-wt",
        confined ? [] : ["--no-sandbox"],
        [
          "set -e",
          plantScript(evil, marker),
          // A common directory of the agent's: the repository's objects and refs, a config with core.fsmonitor.
          ...evilCommonDir(evil),
          "set +e",
          ...(confined
            ? [
                // Also the shorter ways: the .git file straight at the agent's git directory, the checkout or
                // its admin directory renamed away, and git's own command for a new worktree.
                attempt("repoint", `echo "gitdir: $PWD/evil-common" > .worktrees/feat/.git`),
                attempt("mvcheckout", "mv .worktrees/feat .worktrees/feat-old"),
                attempt("mvadmin", "mv .git/worktrees/feat .git/worktrees/feat-old"),
                attempt("wtadd", "git worktree add -q .worktrees/new"),
                attempt("commit", "cd .worktrees/feat && echo x > f && git add f && git -c user.name=a -c user.email=a@a commit -qm agent"),
              ]
            : []),
          attempt("plant", plant),
        ].join("\n"),
      );
      assert.equal(r.code, 0, `${confined ? "confined" : "unconfined"}: ${r.stderr}`);
      // The owner, after the run, in their worktree: a plain git status.
      const st = git(wt, "status");
      if (!confined) {
        assert.match(r.stdout, /plant:done/);
        assert.ok(existsSync(marker), "the probe works unconfined: git status in the worktree ran the agent's fsmonitor");
        continue;
      }
      for (const label of ["plant", "repoint", "mvcheckout", "mvadmin", "wtadd"]) assert.match(r.stdout, new RegExp(`${label}:refused`), `${label}: ${r.stdout}`);
      // git's own error, nothing of lessor's.
      assert.match(r.stdout, /wtadd:refused: .*(Read-only file system|could not create)/i, r.stdout);
      // The worktree's own git directory stays writable: the agent still commits there.
      assert.match(r.stdout, /commit:done/, r.stdout);
      assert.equal(
        existsSync(marker),
        false,
        `after a sandboxed run (lessor printed: ${JSON.stringify(r.stderr.trim())}), the owner's \`git -C .worktrees/feat status\` ran the agent's core.fsmonitor`,
      );
      assert.equal(st.status, 0, st.stderr);
      assert.equal(readFileSync(join(wt, ".git"), "utf8").trim(), dotGit);
      // Nothing corrupted: the owner's git lists the one worktree, and can add another.
      assert.deepEqual(readdirSync(join(o.project, ".git/worktrees")), ["feat"]);
      const list = git(o.project, "worktree", "list", "--porcelain");
      assert.equal(list.status, 0, list.stderr);
      assert.deepEqual([...list.stdout.matchAll(/^worktree (.*)$/gm)].map((m) => m[1]), [o.project, wt]);
      gitOk(o.project, "worktree", "add", "-q", ".worktrees/later");
      assert.equal(existsSync(join(o.project, ".git/worktrees.lessor-quarantine")), false, "nothing new got past the mounts, so nothing was quarantined");
    }
  });

  test("an agent cannot plant .git/modules/NAME for the owner's submodule that is not checked out yet (a fresh clone): .git/modules and .git/worktrees are sealed while missing, its `git submodule update --init` and `git worktree add` fail with git's error, and the owner's `git submodule update --init` afterwards runs nothing of the agent's", async () => {
    for (const confined of [false, true]) {
      const base = join(root, `mod-new-${confined}`);
      const o = await makeOwner(`mod-new-${confined}`);
      // The owner's repository with a submodule, cloned fresh: .gitmodules names it, .git/modules is empty.
      const upstream = join(base, "subsrc");
      const origin = join(base, "origin");
      for (const d of [upstream, origin]) {
        mkdirSync(d);
        gitInit(d);
      }
      gitOk(origin, "submodule", "add", "-q", upstream, "sub");
      gitOk(origin, "commit", "-qm", "a submodule");
      rmSync(o.project, { recursive: true });
      gitOk(base, "clone", "-q", origin, o.project);
      assert.equal(existsSync(join(o.project, ".git/modules")), false, "a fresh clone has no submodule git directory yet");
      const marker = join(base, "marker");
      const plant = [
        "set -e",
        // An empty git directory for the submodule, its origin the URL .gitmodules names (fetched later
        // by the owner's git, outside), and a post-checkout hook.
        "git init -q --bare .git/modules/sub",
        "git config -f .git/modules/sub/config core.bare false",
        `git config -f .git/modules/sub/config remote.origin.url "$(git config -f .gitmodules submodule.sub.url)"`,
        "git config -f .git/modules/sub/config remote.origin.fetch '+refs/heads/*:refs/remotes/origin/*'",
        plantScript(".git/modules/sub/hooks/post-checkout", marker),
      ].join("\n");
      const r = await lessorRun(
        o.project,
        o.env,
        "attacker-mod",
        confined ? [] : ["--no-sandbox"],
        [
          ...(confined
            ? [
                attempt("mkdir", "mkdir .git/modules/sub"),
                attempt("mvmodules", "mv .git/modules .git/modules-old"),
                // git's way: refused at .git/config (read-only) by `--init`, and without it (the submodule
                // made active for this command only) at .git/modules.
                attempt("update", "git -c protocol.file.allow=always submodule update --init"),
                // (The owner's upstream is not shown in the sandbox: a repository of the agent's stands in.)
                "git init -q /tmp/up && git -C /tmp/up -c user.name=a -c user.email=a@a commit -q --allow-empty -m up",
                attempt("update2", "git -c protocol.file.allow=always -c submodule.sub.active=true -c submodule.sub.url=/tmp/up submodule update"),
                "ls -A sub; cat sub/.git 2>/dev/null; true",
                attempt("wtadd", "git worktree add -q ../wt2"),
              ]
            : []),
          attempt("plant", plant),
        ].join("\n"),
      );
      assert.equal(r.code, 0, `${confined ? "confined" : "unconfined"}: ${r.stderr}`);
      // The owner, after the run: the usual next step in a fresh clone.
      const u = git(o.project, "submodule", "update", "--init");
      assert.equal(u.status, 0, u.stderr);
      if (!confined) {
        assert.match(r.stdout, /plant:done/);
        assert.ok(existsSync(marker), "the probe works unconfined: git submodule update adopted the planted git directory and ran its hook");
        continue;
      }
      for (const label of ["plant", "mkdir", "mvmodules", "update", "update2", "wtadd"]) assert.match(r.stdout, new RegExp(`${label}:refused`), `${label}: ${r.stdout}`);
      assert.match(r.stdout, /update:refused: .*could not write config file \.git\/config/i, r.stdout);
      assert.match(r.stdout, /update2:refused: .*Read-only file system/i, r.stdout);
      assert.match(r.stdout, /wtadd:refused: .*(Read-only file system|could not create)/i, r.stdout);
      assert.equal(
        existsSync(marker),
        false,
        `after a sandboxed run (lessor printed: ${JSON.stringify(r.stderr.trim())}), the owner's \`git submodule update --init\` adopted the agent's .git/modules/sub and ran its post-checkout hook`,
      );
      // The owner's submodule is checked out from its own URL, and the sealed directories bwrap made are gone.
      assert.equal(readFileSync(join(o.project, "sub/README"), "utf8"), "the project\n");
      assert.equal(existsSync(join(o.project, ".git/worktrees")), false);
      assert.equal(existsSync(join(base, "wt2")), false);
      assert.equal(existsSync(join(o.project, ".git/modules.lessor-quarantine")), false);
    }
  });

  test("the second line: an entry of .git/worktrees or .git/modules that was not there when the run was planned (nested ones too) is moved aside after it, and the empty directories sealed for the run are removed", async () => {
    const { checkGitAfterRun, planGit } = await import("../src/sandbox/git-guard.js");
    const { readdirSync } = await fsMore();
    const base = join(root, "second-line");
    const project = join(base, "project");
    mkdirSync(project, { recursive: true });
    gitInit(project);
    gitOk(project, "worktree", "add", "-q", ".worktrees/feat");
    mkdirSync(join(project, ".git/modules/a/b"), { recursive: true });
    const plan = planGit(project, (p) => p === project || p.startsWith(project + "/"), null);
    const main = plan.guards.find((g) => g.gitDir === join(project, ".git"))!;
    assert.ok(plan.locked.includes(join(project, ".git/worktrees")) && plan.locked.includes(join(project, ".git/modules/a/b")), JSON.stringify(plan.locked));
    assert.ok(plan.pinned.includes(join(project, ".git/worktrees/feat")) && !plan.pinned.includes(join(project, ".git/worktrees")));
    assert.ok(plan.readOnly.includes(join(project, ".worktrees/feat/.git")), "the linked checkout's .git file is read-only");
    assert.ok(plan.pinned.includes(join(project, ".worktrees/feat")), "and its directory pinned");
    // What got past the mounts (say, planted by hand while the sandbox ran).
    mkdirSync(join(project, ".git/worktrees/evil"));
    mkdirSync(join(project, ".git/modules/a/b/sub"));
    mkdirSync(join(project, ".git/modules/sub"));
    const out = checkGitAfterRun([main]);
    assert.equal(out.length, 3, out.join("\n"));
    assert.deepEqual(readdirSync(join(project, ".git/worktrees")), ["feat"]);
    assert.deepEqual(readdirSync(join(project, ".git/modules")), ["a"]);
    assert.deepEqual(readdirSync(join(project, ".git/modules/a/b")), []);
    assert.ok(existsSync(join(project, ".git/worktrees.lessor-quarantine/evil")));
    assert.ok(existsSync(join(project, ".git/modules.lessor-quarantine/sub")));
    assert.ok(existsSync(join(project, ".git/modules.lessor-quarantine/a/b/sub")));
    // A repository without them: both sealed, and the empty directories bwrap would make removed after.
    const fresh = join(base, "fresh");
    mkdirSync(fresh);
    gitInit(fresh);
    const p2 = planGit(fresh, (p) => p === fresh || p.startsWith(fresh + "/"), null);
    assert.ok(p2.sealed.includes(join(fresh, ".git/worktrees")) && p2.sealed.includes(join(fresh, ".git/modules")), JSON.stringify(p2.sealed));
    mkdirSync(join(fresh, ".git/worktrees"));
    mkdirSync(join(fresh, ".git/modules"));
    assert.deepEqual(checkGitAfterRun(p2.guards), []);
    // Removed by the run's hold, as lessor run does after the check (src/sandbox/run-holds.ts).
    const { holdRun } = await import("../src/sandbox/run-holds.js");
    assert.deepEqual(holdRun(join(base, "lessor-home")).end(p2.guards.flatMap((g) => g.sealedFiles), p2.guards.flatMap((g) => g.sealedDirs)), []);
    assert.equal(existsSync(join(fresh, ".git/worktrees")), false);
    assert.equal(existsSync(join(fresh, ".git/modules")), false);
  });

  test("a symlinked .git/modules or .git/worktrees refuses the run (the agent could repoint it), and so does a link under them into a writable directory", async () => {
    const { planGit } = await import("../src/sandbox/git-guard.js");
    const { symlinkSync } = await fsMore();
    const base = join(root, "linked");
    const project = join(base, "project");
    mkdirSync(project, { recursive: true });
    gitInit(project);
    const inside = (p: string): boolean => p === project || p.startsWith(project + "/");
    mkdirSync(join(base, "elsewhere"));
    symlinkSync(join(base, "elsewhere"), join(project, ".git/modules"));
    assert.throws(() => planGit(project, inside, null), /modules is a symbolic link/);
    rmSync(join(project, ".git/modules"));
    mkdirSync(join(project, ".git/modules"));
    mkdirSync(join(project, "gitdir-of-the-agent"));
    symlinkSync(join(project, "gitdir-of-the-agent"), join(project, ".git/modules/sub"));
    assert.throws(() => planGit(project, inside, null), /sub is a symbolic link to .*gitdir-of-the-agent/);
  });

  test("a symlinked .git/modules/NAME for an existing submodule cannot be swapped in: .git/modules/NAME is pinned, and the owner's git status runs nothing of the agent's", async () => {
    const base = join(root, "mod-swap");
    const o = await makeOwner("mod-swap");
    const upstream = join(base, "subsrc");
    mkdirSync(upstream);
    gitInit(upstream);
    gitInit(o.project);
    gitOk(o.project, "submodule", "add", "-q", upstream, "sub");
    gitOk(o.project, "commit", "-qm", "a submodule");
    const marker = join(base, "marker");
    const evil = join(o.project, "evil.sh");
    const tries = [
      "mv .git/modules/sub .git/modules/sub-old",
      "rm -rf .git/modules/sub",
      "rm -rf .git/modules && ln -s ../evil-modules .git/modules",
    ];
    const script = [
      plantScript(evil, marker),
      "mkdir -p evil-modules/sub && cp -r .git/modules/sub/objects .git/modules/sub/refs .git/modules/sub/HEAD evil-modules/sub/",
      `printf '[core]\\n\\trepositoryformatversion = 0\\n\\tbare = false\\n\\tworktree = ../../../sub\\n\\tfsmonitor = ${evil}\\n' > evil-modules/sub/config`,
      ...tries.map((t, i) => `if ${t} 2>/dev/null; then echo "try${i}:done"; else echo "try${i}:refused"; fi`),
    ].join("\n");
    const r = await lessorRun(o.project, o.env, "attacker-modswap", [], script);
    assert.equal(r.code, 0, r.stderr);
    for (let i = 0; i < tries.length; i++) assert.match(r.stdout, new RegExp(`try${i}:refused`), tries[i]);
    git(o.project, "status");
    assert.equal(existsSync(marker), false, "the owner's git status ran the agent's fsmonitor");
  });
});

// ---------------------------------------------------------------------------------------------
// 2. The daemon closing a connection on an oversize frame
// ---------------------------------------------------------------------------------------------

/** One frame: a 4-byte length, then the JSON body. */
const wireFrame = (obj: unknown): Buffer => {
  const body = Buffer.from(JSON.stringify(obj));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
};
/** A length prefix one byte over the default 1 MiB cap (no body follows: the daemon must not wait for it). */
const OVERSIZE = (() => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(1024 * 1024 + 1);
  return b;
})();

describe("2. requests pipelined before an oversize frame (lessor serve, Unix socket)", () => {
  // On an oversize length prefix the daemon reads no more; the requests it started run to the end and
  // are answered, then it sends the id:null error and closes (src/server/connection.ts, #lastWord;
  // docs/protocol.md "Framing"). Requests received but not started never run and get no answer.

  type Answer = { id: string | null; ok: boolean; result?: unknown; error?: { code: string; message: string } };

  /** A home whose secret "db" rotates through a hook that sleeps `sleep` seconds first. */
  const rotatingHome = async (sleep: number, server = ""): Promise<string> => {
    const home = await makeHome({
      config: `${server}[[rotate]]\nsecret = "db"\ncommand = ["/bin/sh", "-c", "sleep ${sleep}; echo rotated-value-from-hook"]\ntimeout = "20s"\n`,
    });
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      await v.admin().storeSecret({ name: "db", value: "first-value" });
    } finally {
      await v.close();
    }
    return home;
  };
  /** What another connection reads: the current version of "db" and the names of the secrets. */
  const look = async (socket: string): Promise<{ version: number; names: string }> => {
    const client = await RawConn.open(socket);
    await client.hello();
    const [mid, lid] = [randomUUID(), randomUUID()];
    client.send({ id: mid, method: "get_secret_metadata", params: { name: "db" } });
    client.send({ id: lid, method: "list_secrets", params: {} });
    await client.waitFrames(3);
    client.sock.destroy();
    // Answers come in the order the requests finish, not the order sent.
    const answer = (id: string) => (client.frames.slice(1) as Answer[]).find((f) => f.id === id)!;
    const meta = answer(mid) as { result: { currentVersion: number } };
    return { version: meta.result.currentVersion, names: JSON.stringify(answer(lid)) };
  };

  test("a rotation in flight when the client's next frame is oversize is answered first (ok, version 2), then the id:null error, then the close: the client knows it took effect", async () => {
    const home = await rotatingHome(1);
    const d = await startServe(home);
    try {
      const c = await RawConn.open(d.socket);
      const welcome = (await c.hello()) as { ok: boolean; identity: { role: string } };
      assert.equal(welcome.ok, true);
      assert.equal(welcome.identity.role, "admin");
      const id = randomUUID();
      c.send({ id, method: "rotate_secret_hook", params: { name: "db" } });
      // The hook is running (a second): the request is in flight. Now a frame over the cap.
      await new Promise((r) => setTimeout(r, 300));
      c.sock.write(OVERSIZE);
      assert.equal(await c.waitClosed(8000), true, "the daemon closes the connection");
      const answers = c.frames.slice(1) as Answer[];
      assert.deepEqual(answers.map((a) => [a.id, a.ok]), [[id, true], [null, false]], `the rotation's answer, then the oversize error: ${JSON.stringify(answers)}`);
      assert.match(answers[1]!.error!.message, /over the 1048576-byte limit/);
      assert.equal((await look(d.socket)).version, 2, "the rotation committed");
    } finally {
      await d.stop();
    }
  });

  // (A frame queued behind the connection's max_in_flight cannot meet an oversize prefix in a later
  // read: the daemon reads nothing while one is queued, so it starts before the prefix is read.)
  test("a request received but not started (waiting for the scheduler behind max_in_flight_per_principal) when the oversize frame comes never runs and gets no answer; the one running is answered", async () => {
    const home = await rotatingHome(1, "[server]\nmax_in_flight_per_principal = 1\n");
    const d = await startServe(home);
    try {
      const c = await RawConn.open(d.socket);
      await c.hello();
      const id = randomUUID();
      const queued = randomUUID();
      c.send({ id, method: "rotate_secret_hook", params: { name: "db" } });
      c.send({ id: queued, method: "store_secret", params: { name: "queued-store", value: "vq" } });
      await new Promise((r) => setTimeout(r, 300));
      c.sock.write(OVERSIZE);
      assert.equal(await c.waitClosed(8000), true);
      const answers = c.frames.slice(1) as Answer[];
      assert.deepEqual(answers.map((a) => [a.id, a.ok]), [[id, true], [null, false]], JSON.stringify(answers));
      const seen = await look(d.socket);
      assert.equal(seen.version, 2);
      assert.doesNotMatch(seen.names, /queued-store/, "the queued store never ran");
    } finally {
      await d.stop();
    }
  });

  test("the wait for requests running is bounded by shutdown_grace: a hostile client cannot hold the connection half-open while a slow request runs (its answer is dropped, as at shutdown)", async () => {
    const home = await rotatingHome(8, '[server]\nshutdown_grace = "1s"\n');
    const d = await startServe(home);
    try {
      const c = await RawConn.open(d.socket);
      await c.hello();
      c.send({ id: randomUUID(), method: "rotate_secret_hook", params: { name: "db" } });
      await new Promise((r) => setTimeout(r, 300));
      const t0 = Date.now();
      c.sock.write(OVERSIZE);
      // More bytes after it change nothing: they are not read.
      c.sock.write(Buffer.alloc(64 * 1024, 0x41));
      assert.equal(await c.waitClosed(6000), true, "closed within the grace (plus a sweep and the linger)");
      const took = Date.now() - t0;
      assert.ok(took >= 900 && took < 4000, `closed ${took} ms after the oversize frame (grace 1 s, hook 8 s)`);
      const answers = c.frames.slice(1) as Answer[];
      assert.deepEqual(answers.map((a) => a.id), [null], JSON.stringify(answers));
      assert.match(answers[0]!.error!.message, /over the 1048576-byte limit/);
    } finally {
      await d.stop();
    }
  });

  test("requests in the same read as an oversize frame's length prefix never run (no answer, no write)", async () => {
    const home = await makeHome();
    const d = await startServe(home);
    try {
      const c = await RawConn.open(d.socket);
      await c.hello();
      const ids = [randomUUID(), randomUUID()];
      c.sock.write(Buffer.concat([wireFrame({ id: ids[0], method: "store_secret", params: { name: "piped-a", value: "va" } }), wireFrame({ id: ids[1], method: "store_secret", params: { name: "piped-b", value: "vb" } }), OVERSIZE]));
      assert.equal(await c.waitClosed(8000), true);
      const answers = c.frames.slice(1) as { id: string | null }[];
      const client = await RawConn.open(d.socket);
      await client.hello();
      client.send({ id: randomUUID(), method: "list_secrets", params: {} });
      await client.waitFrames(2);
      const listed = JSON.stringify(client.frames[1]);
      client.sock.destroy();
      // src/protocol/framing.ts FrameDecoder.push throws and the frames it had decoded are lost: they
      // were never started, so neither ran and neither got an answer; the client gets one id:null error
      // and a close.
      assert.deepEqual(answers.map((a) => a.id), [null], "only the oversize frame's error");
      assert.doesNotMatch(listed, /piped-a|piped-b/, "neither pipelined store ran");
    } finally {
      await d.stop();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 4. Refusals counted against the burst when a batch is run again
// ---------------------------------------------------------------------------------------------

describe("4. the refusal burst when a shared commit is run again (src/store/sqlite/sqlite-store.ts runBatch)", () => {
  // A refusal written takes its place in its identity's burst inside the transaction, and keeps it only
  // if the transaction commits: a run again or a rollback gives it back (src/vault/context.ts commitOnce,
  // AuditWindow.release). Refusals counted past the burst are tallied only after the commit.

  /** The access_denied rows of `actor`, before and after the window closes. */
  const bobRows = async (vault: Awaited<ReturnType<typeof makeVault>>["vault"], actor: string) => {
    const admin = vault.admin();
    const rows = (await admin.auditQuery({ types: ["access_denied"], limit: 10_000 })).filter((r) => r.actorId === actor);
    await vault.flushRefusals();
    const after = (await admin.auditQuery({ types: ["access_denied"], limit: 10_000 })).filter((r) => r.actorId === actor);
    const summarised = after.filter((r) => r.detail !== null && /"count"/.test(r.detail));
    return { rows, summarised, counts: summarised.map((r) => JSON.parse(r.detail!).count).join("+") || "0" };
  };

  test("another identity's call failing in the same commit (the store runs bob's calls again) leaves bob's first 32 refusals one row each, each naming the lease id probed, as docs/audit.md promises", async () => {
    const { vault, store, dbPath } = await makeVault({ policy: grant("gh", ["bob", "mallory"], ["tok"], ["api.example.com"]), limits: { authFailureWindowMs: 3_600_000 } });
    const admin = vault.admin();
    await admin.storeSecret({ name: "tok", value: "t".repeat(24) });
    // Mallory's audit rows cannot be written (the disk trouble audit.test.ts uses): her calls fail
    // inside the commit they share with bob's, which makes the store run bob's calls again.
    const db = new Database(dbPath!);
    db.exec("CREATE TRIGGER no_mallory BEFORE INSERT ON audit WHEN NEW.actor_id = 'token:mallory' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;");
    db.close();
    const bob = vault.session({ id: "token:bob", role: "agent", agent: "bob", transport: "tcp" });
    const mallory = vault.session({ id: "token:mallory", role: "agent", agent: "mallory", transport: "tcp" });
    const sqlite = store as SqliteStore;
    const r0 = sqlite.stats().reruns;
    const probes = Array.from({ length: BURST }, () => randomUUID());
    const out = await Promise.all([...probes.map((id) => codeOf(bob.accessSecret(id, { domain: "api.example.com" }))), codeOf(mallory.accessSecret(randomUUID(), { domain: "api.example.com" }))]);
    assert.deepEqual(new Set(out.slice(0, BURST)), new Set(["lease_not_found"]), "every probe of bob's is refused");
    assert.ok(out[BURST] !== "resolved" && out[BURST] !== "lease_not_found", `mallory's call failed in the commit (${out[BURST]})`);
    assert.ok(sqlite.stats().reruns - r0 >= 1, "the commit was run again");
    const { rows, summarised, counts } = await bobRows(vault, "token:bob");
    assert.equal(
      rows.length,
      BURST,
      `bob made ${BURST} refused calls, his first in this window: docs/audit.md says they are one row each (each naming the lease id probed). ${rows.length} were written; after the window closed, ${summarised.length} summary row(s) stand for ${counts} of them, without the lease ids`,
    );
    assert.deepEqual(new Set(rows.map((r) => r.leaseId)), new Set(probes), "each row names the lease id probed");
    assert.equal(summarised.length, 0, "nothing was counted past the burst");
  });

  test("refusals whose commits failed (rolled back) do not spend the burst: once the disk is back, bob's next 32 refusals are one row each", async () => {
    const { vault, dbPath } = await makeVault({ policy: grant("gh", ["bob"], ["tok"], ["api.example.com"]), limits: { authFailureWindowMs: 3_600_000 } });
    const bob = vault.session({ id: "token:bob", role: "agent", agent: "bob", transport: "tcp" });
    const db = new Database(dbPath!);
    try {
      db.exec("CREATE TRIGGER no_bob BEFORE INSERT ON audit WHEN NEW.actor_id = 'token:bob' BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;");
      for (let i = 0; i < BURST; i++) {
        const code = await codeOf(bob.accessSecret(randomUUID(), { domain: "api.example.com" }));
        assert.ok(code !== "resolved" && code !== "lease_not_found", `the refusal's row could not be written, so the call failed (${code})`);
      }
      db.exec("DROP TRIGGER no_bob");
    } finally {
      db.close();
    }
    const probes = Array.from({ length: BURST }, () => randomUUID());
    for (const id of probes) assert.equal(await codeOf(bob.accessSecret(id, { domain: "api.example.com" })), "lease_not_found");
    const { rows, summarised, counts } = await bobRows(vault, "token:bob");
    assert.equal(rows.length, BURST, `${rows.length} rows written; ${summarised.length} summary row(s) stand for ${counts}`);
    assert.deepEqual(new Set(rows.map((r) => r.leaseId)), new Set(probes));
  });

  test("without a rerun the same 32 refusals are one row each (the control)", async () => {
    const { vault } = await makeVault({ policy: grant("gh", ["bob"], ["tok"], ["api.example.com"]), limits: { authFailureWindowMs: 3_600_000 } });
    const admin = vault.admin();
    const bob = vault.session({ id: "token:bob", role: "agent", agent: "bob", transport: "tcp" });
    await Promise.all(Array.from({ length: BURST }, () => codeOf(bob.accessSecret(randomUUID(), { domain: "api.example.com" }))));
    const rows = (await admin.auditQuery({ types: ["access_denied"], limit: 10_000 })).filter((r) => r.actorId === "token:bob");
    assert.equal(rows.length, BURST);
    assert.ok(rows.every((r) => r.leaseId !== null && r.detail === null));
  });

  test("PostgreSQL: bob's refusals in a batch the store runs again after mallory's call fails in the commit spend his burst only if they commit (src/store/postgres/postgres-store.ts)", { skip: process.env.LESSOR_TEST_PG_URL ? false : "LESSOR_TEST_PG_URL is not set" }, async () => {
    const { Vault } = await import("../src/vault/vault.js");
    const { openPostgresStore } = await import("../src/store/postgres/postgres-store.js");
    const { envKeySource } = await import("../src/crypto/keys/env.js");
    const { parsePolicy } = await import("../src/vault/policy.js");
    const { hexKey } = await import("./helpers.js");
    const { admin: pgAdmin, testSchema } = await import("./pg-helpers.js");
    const { schema, drop } = await testSchema();
    const store = await openPostgresStore({ url: process.env.LESSOR_TEST_PG_URL!, schema });
    const vault = await Vault.open({
      store,
      keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!,
      policy: parsePolicy(grant("gh", ["bob", "mallory"], ["tok"], ["api.example.com"]), "policy.toml"),
      limits: { authFailureWindowMs: 3_600_000 },
    });
    try {
      await vault.admin().storeSecret({ name: "tok", value: "t".repeat(24) });
      await pgAdmin(
        `CREATE FUNCTION ${schema}.no_mallory() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk trouble'; END $$;` +
          `CREATE TRIGGER no_mallory BEFORE INSERT ON ${schema}.audit FOR EACH ROW WHEN (NEW.actor_id = 'token:mallory') EXECUTE FUNCTION ${schema}.no_mallory();`,
      );
      const bob = vault.session({ id: "token:bob", role: "agent", agent: "bob", transport: "tcp" });
      const mallory = vault.session({ id: "token:mallory", role: "agent", agent: "mallory", transport: "tcp" });
      const r0 = store.stats().reruns;
      const probes = Array.from({ length: BURST }, () => randomUUID());
      const out = await Promise.all([...probes.map((id) => codeOf(bob.accessSecret(id, { domain: "api.example.com" }))), codeOf(mallory.accessSecret(randomUUID(), { domain: "api.example.com" }))]);
      assert.ok(out[BURST] !== "resolved" && out[BURST] !== "lease_not_found", `mallory's call failed in the commit (${out[BURST]})`);
      assert.ok(store.stats().reruns - r0 >= 1, "the batch was run again");
      // Mallory's row is written in the commit (a deferred insert, failing at COMMIT), so the store cannot
      // tell whose it was and fails the whole batch, bob's refusals with it: those committed nothing.
      const committed = probes.filter((_, i) => out[i] === "lease_not_found");
      assert.ok(out.slice(0, BURST).every((c) => c !== "resolved"), "no probe of bob's succeeded");
      await pgAdmin(`DROP TRIGGER no_mallory ON ${schema}.audit`);
      // Bob's refusals that did not commit spent nothing: his next ones, up to his burst, are one row each.
      const more = Array.from({ length: BURST - committed.length }, () => randomUUID());
      for (const id of more) assert.equal(await codeOf(bob.accessSecret(id, { domain: "api.example.com" })), "lease_not_found");
      const { rows, summarised, counts } = await bobRows(vault, "token:bob");
      assert.equal(rows.length, BURST, `${committed.length} of bob's first probes committed, then ${more.length} more; ${rows.length} rows written; ${summarised.length} summary row(s) stand for ${counts}`);
      assert.deepEqual(new Set(rows.map((r) => r.leaseId)), new Set([...committed, ...more]));
      assert.equal(summarised.length, 0);
    } finally {
      await vault.close();
      await drop();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 5 and 6. The injecting proxy: a pipelined WebSocket upgrade, and Transfer-Encoding variants
// ---------------------------------------------------------------------------------------------

const PHOST = "api.leftover.example";
const CANARY = "sk-" + randomBytes(20).toString("hex");
const pupCa = LocalCa.create({ permitted: [PHOST] });

interface Seen {
  method: string;
  url: string;
  auth: string;
  body: string;
}
/** What the upstream parsed (as a typical Node upstream), and every raw byte it got. */
const seen: Seen[] = [];
const wsSeen: Seen[] = [];
let upRaw = "";
const pup = https.createServer({ SNICallback: pupCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  let body = "";
  req.on("data", (d: Buffer) => (body += d.toString("latin1")));
  req.on("end", () => {
    const auth = String(req.headers.authorization ?? "");
    seen.push({ method: req.method!, url: req.url!, auth, body });
    const answer = (): void => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`you sent ${auth} to ${req.url}`); // echoes the credential: the scrubber must catch it
    };
    if (req.url!.startsWith("/ok/slow")) setTimeout(answer, 1000);
    else answer();
  });
});
pup.on("secureConnection", (s: tls.TLSSocket) => s.on("data", (d: Buffer) => (upRaw += d.toString("latin1"))));
pup.on("upgrade", (req: IncomingMessage, socket: Duplex) => {
  const auth = String(req.headers.authorization ?? "");
  wsSeen.push({ method: req.method!, url: req.url!, auth, body: "" });
  const key = String(req.headers["sec-websocket-key"] ?? "");
  const acceptKey = createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
  const text = Buffer.from(`ws got ${auth}`);
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey}\r\n\r\n`);
  socket.write(Buffer.concat([Buffer.from([0x81, text.length]), text])); // one unmasked text frame, < 126 bytes
  socket.on("error", () => {});
  setTimeout(() => socket.destroy(), 1500);
});
const pupReady = new Promise<number>((r) => pup.listen(0, "127.0.0.1", () => r((pup.address() as AddressInfo).port)));

interface ProxyRig {
  port: number;
  upPort: number;
  placeholder: string;
  leaseId: string;
  connects: ConnectTo[];
  uses(): Promise<number>;
  close(): Promise<void>;
}

/** ForwardProxy + LeaseEgress over a real vault (SQLite): agent bot holds `key` for PHOST, paths under /ok/. */
async function proxyRig(maxUses?: number): Promise<ProxyRig> {
  const upPort = await pupReady;
  const { vault } = await makeVault({ policy: grant("api", ["bot"], ["key"], [PHOST], 'paths = ["/ok/"]') });
  const admin = vault.admin();
  await admin.storeSecret({ name: "key", value: CANARY });
  const lease = await admin.requestLease({ agent: "bot", secret: "key", domains: [PHOST], ...(maxUses ? { maxUses } : {}) });
  const placeholder = makePlaceholder(CANARY);
  const creds: ProxyCredential[] = [{ lease, secret: "global/key", placeholder, value: CANARY, rule: { mode: "placeholder" } }];
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict" });
  const guard = new SsrfGuard({ ports: [upPort], allow: ["127.0.0.0/8"], resolve: tableResolver({ [PHOST]: "127.0.0.1" }) });
  const connects: ConnectTo[] = [];
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [PHOST] }), guard, upstreamCa: pupCa.certPem, connect: loopbackOnly(connects) });
  const port = await proxy.listen();
  return {
    port,
    upPort,
    placeholder,
    leaseId: lease.id,
    connects,
    uses: async () => (await admin.listLeases({ agent: "bot" })).find((l) => l.id === lease.id)!.uses,
    close: async () => {
      await proxy.close();
      await egress.close();
    },
  };
}

/** A CONNECT tunnel to PHOST through the rig, then TLS inside it (the agent trusts anything). */
async function tunnel(r: ProxyRig): Promise<tls.TLSSocket> {
  const raw = netConnect(r.port, "127.0.0.1");
  raw.on("error", () => {});
  raw.write(`CONNECT ${PHOST}:${r.upPort} HTTP/1.1\r\nHost: ${PHOST}:${r.upPort}\r\n\r\n`);
  await new Promise<void>((resolve, reject) => {
    let got = "";
    const onData = (d: Buffer): void => {
      got += d.toString("latin1");
      if (!got.includes("\r\n\r\n")) return;
      raw.off("data", onData);
      if (!/^HTTP\/1\.1 200 /.test(got)) reject(new Error(`CONNECT refused: ${got}`));
      else resolve();
    };
    raw.on("data", onData);
    raw.once("error", reject);
  });
  const s = tls.connect({ socket: raw, servername: PHOST, ALPNProtocols: ["http/1.1"], rejectUnauthorized: false });
  s.on("error", () => {});
  await new Promise<void>((resolve, reject) => {
    s.once("secureConnect", resolve);
    s.once("error", reject);
  });
  return s;
}

const wsHead = (path: string, ph: string): string =>
  `GET ${path} HTTP/1.1\r\nHost: ${PHOST}\r\nAuthorization: Bearer ${ph}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
  `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\nSec-WebSocket-Version: 13\r\n\r\n`;

describe("5. a WebSocket upgrade pipelined behind a slow request on one keep-alive connection", () => {
  after(() => new Promise<void>((r) => pup.close(() => r())));

  test("an upgrade to a path the rule does not allow, pipelined behind a slow allowed request, is refused on its own (the connection is closed, failing closed): it never reaches the upstream, and nothing the agent reads holds the credential", async () => {
    const r = await proxyRig();
    try {
      const s = await tunnel(r);
      const before = seen.length;
      const wsBefore = wsSeen.length;
      s.write(`GET /ok/slow HTTP/1.1\r\nHost: ${PHOST}\r\nAuthorization: Bearer ${r.placeholder}\r\n\r\n` + wsHead("/admin/ws", r.placeholder));
      const got = await readAll(s, 3000);
      assert.ok(!got.includes(CANARY), "the credential reached the agent");
      // The refusal cannot be written while the slow answer owns the connection (src/proxy/websocket.ts,
      // detachedResponse): the connection is closed instead, the slow request's answer with it. Fails closed.
      assert.ok(/HTTP\/1\.1 403 /.test(got) || !got.includes("101 Switching"), `the refused upgrade was switched: ${JSON.stringify(got.slice(0, 300))}`);
      assert.ok(wsSeen.slice(wsBefore).every((w) => !w.url.startsWith("/admin")), "the refused upgrade reached the upstream");
      assert.ok(seen.slice(before).every((w) => w.url.startsWith("/ok/")));
      assert.ok(!upRaw.includes("/admin/ws"), "the upstream never got a byte of the refused handshake");
      assert.ok(r.connects.every((c) => c.host === "127.0.0.1"));
    } finally {
      await r.close();
    }
  });

  test("an allowed upgrade pipelined behind a slow request gets its own use and injection (the credential for the tunnel's host only); the slow answer and the 101's frames reach the agent scrubbed", async (t) => {
    const r = await proxyRig();
    try {
      const s = await tunnel(r);
      const before = seen.length;
      const wsBefore = wsSeen.length;
      s.write(`GET /ok/slow HTTP/1.1\r\nHost: ${PHOST}\r\nAuthorization: Bearer ${r.placeholder}\r\n\r\n` + wsHead("/ok/ws", r.placeholder));
      const got = await readAll(s, 3000);
      t.diagnostic(`the agent read: ${JSON.stringify(got.slice(0, 600))}`);
      assert.ok(!got.includes(CANARY), `the credential reached the agent: ${JSON.stringify(got.slice(0, 400))}`);
      assert.match(got, /101 Switching Protocols/);
      assert.ok(got.includes(`ws got Bearer ${r.placeholder}`), "the upstream's echo came back as the placeholder");
      const ws = wsSeen.slice(wsBefore);
      assert.equal(ws.length, 1);
      assert.equal(ws[0]!.auth, `Bearer ${CANARY}`, "injected for the covered host");
      assert.ok(seen.slice(before).every((w) => w.url === "/ok/slow" && w.auth === `Bearer ${CANARY}`));
      assert.equal(await r.uses(), seen.slice(before).length + 1, "one use per request that went out, the upgrade included");
    } finally {
      await r.close();
    }
  });
});

describe("6. Transfer-Encoding variants through the proxy: no request past the lease's checks", () => {
  const smuggled = (ph: string): string => `GET /admin/x HTTP/1.1\r\nHost: ${PHOST}\r\nAuthorization: Bearer ${ph}\r\nContent-Length: 0\r\n\r\n`;
  const second = (ph: string): string => `GET /ok/second HTTP/1.1\r\nHost: ${PHOST}\r\nAuthorization: Bearer ${ph}\r\n\r\n`;
  /** Each variant: the head lines framing a POST whose body hides a second request. */
  const variants: [string, (body: string) => string][] = [
    ["TE: chunked<TAB>", (b) => `Transfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n${b}`],
    ["TE: <SP>chunked<SP>", (b) => `Transfer-Encoding:  chunked \r\n\r\n0\r\n\r\n${b}`],
    ["TE: chunked, identity", (b) => `Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${b}`],
    ["TE: identity, chunked", (b) => `Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n${b}`],
    ["TE: xchunked", (b) => `Transfer-Encoding: xchunked\r\nContent-Length: ${b.length}\r\n\r\n${b}`],
    ["TE chunked + CL", (b) => `Transfer-Encoding: chunked\r\nContent-Length: ${b.length + 5}\r\n\r\n0\r\n\r\n${b}`],
    ["CL + TE chunked", (b) => `Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${b}`],
    ["two CL", (b) => `Content-Length: 0\r\nContent-Length: ${b.length}\r\n\r\n${b}`],
    ["TE twice", (b) => `Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${b}`],
    ["TE: chunked<VT>", (b) => `Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n${b}`],
    ["Transfer-Encoding<SP>: chunked", (b) => `Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n${b}`],
    ["chunk size 0;ext + LF only", (b) => `Transfer-Encoding: chunked\r\n\r\n0;x\n\n${b}`],
    ["Connection: content-length hides CL from the upstream copy", (b) => `Content-Length: ${b.length}\r\nConnection: content-length\r\n\r\n${b}`],
  ];
  for (const [name, frame] of variants) {
    test(`${name}: a hidden request to a path outside the rule, or a second use of a one-use lease, never reaches the upstream with the credential`, async () => {
      const r = await proxyRig(1);
      try {
        const s = await tunnel(r);
        const rawBefore = upRaw.length;
        const before = seen.length;
        const body = smuggled(r.placeholder) + second(r.placeholder);
        s.write(`POST /ok/first HTTP/1.1\r\nHost: ${PHOST}\r\nAuthorization: Bearer ${r.placeholder}\r\n` + frame(body));
        const got = await readAll(s, 2500);
        const raw = upRaw.slice(rawBefore);
        const reached = seen.slice(before);
        const withCred = reached.filter((q) => q.auth.includes(CANARY));
        const diag = `agent got ${JSON.stringify(got.slice(0, 300))}; upstream parsed ${JSON.stringify(reached.map((q) => `${q.method} ${q.url}`))}`;
        assert.ok(!got.includes(CANARY), `the credential reached the agent; ${diag}`);
        assert.ok(reached.every((q) => q.url.startsWith("/ok/")), `a request outside the path rule reached the upstream; ${diag}`);
        assert.ok(withCred.length <= 1, `the one-use lease's credential went out ${withCred.length} times; ${diag}`);
        assert.ok(raw.split(CANARY).length - 1 <= 1, `the credential is ${raw.split(CANARY).length - 1} times in the upstream's raw bytes; ${diag}`);
        assert.ok(!/\r\n\r\nGET \/admin/.test(raw) || reached.every((q) => !q.url.startsWith("/admin")), diag);
        assert.ok((await r.uses()) <= 1);
      } finally {
        await r.close();
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------
// 3. The daemon waiting in BEGIN IMMEDIATE while an embedded process writes the same SQLite file
// ---------------------------------------------------------------------------------------------

describe("3. lessor serve beside an embedded vault writing the same lessor.db", () => {
  test("facts: a daemon `status` (read-only) waits while the daemon's own write waits for the lock, at most about busy_timeout (5 s, docs/storage.md), however the two processes interleave", async (t) => {
    const home = await makeHome();
    const d = await startServe(home);
    // The embedded writer: the vault opened in another process (what the CLI does with no daemon
    // answering), storing secrets back to back for a few seconds.
    const script = `
      const { openVault } = await import(${JSON.stringify(new URL("../src/config/open-vault.ts", import.meta.url).pathname)});
      const v = await openVault({ home: ${JSON.stringify(home)}, env: { LESSOR_HOME: ${JSON.stringify(home)} } });
      const a = v.admin();
      console.log("writing");
      const end = Date.now() + 7000;
      let n = 0;
      const loop = async (k) => { while (Date.now() < end) { try { await a.storeSecret({ name: "embedded-" + k, value: "v" + n++ }); } catch {} } };
      await Promise.all([0, 1, 2, 3].map(loop));
      await v.close();
      console.log("done", n);
    `;
    const child = spawn(NODE, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (err += b.toString()));
    const exited = new Promise<void>((r) => child.on("close", () => r()));
    try {
      for (let i = 0; i < 600 && !out.includes("writing"); i++) await new Promise((r) => setTimeout(r, 20));
      assert.match(out, /writing/, err);
      const writer = await RawConn.open(d.socket);
      await writer.hello();
      const reader = await RawConn.open(d.socket);
      await reader.hello();
      // The daemon writes too (an admin storing secrets), one at a time.
      const writes: { ms: number; ok: boolean; code?: string }[] = [];
      let stop = false;
      const writing = (async () => {
        for (let i = 0; !stop; i++) {
          const n = writer.frames.length;
          const t0 = performance.now();
          writer.send({ id: randomUUID(), method: "store_secret", params: { name: `daemon-${i}`, value: "x" } });
          await writer.waitFrames(n + 1, 15_000);
          const f = writer.frames[n] as { ok: boolean; error?: { code: string } } | undefined;
          writes.push({ ms: performance.now() - t0, ok: f?.ok === true, ...(f?.error ? { code: f.error.code } : {}) });
        }
      })();
      // Meanwhile another client asks for status (read-only) every 50 ms.
      const lat: number[] = [];
      const endAt = Date.now() + 6000;
      while (Date.now() < endAt) {
        const n = reader.frames.length;
        const t0 = performance.now();
        reader.send({ id: randomUUID(), method: "status" });
        await reader.waitFrames(n + 1, 15_000);
        lat.push(performance.now() - t0);
        await new Promise((r) => setTimeout(r, 50));
      }
      stop = true;
      await writing;
      writer.sock.destroy();
      reader.sock.destroy();
      const worst = Math.max(...lat);
      const sorted = [...lat].sort((a, b) => a - b);
      const failed = writes.filter((w) => !w.ok);
      t.diagnostic(
        `status calls: ${lat.length}, median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)} ms, worst ${worst.toFixed(0)} ms; daemon writes: ${writes.length}, worst ${Math.max(...writes.map((w) => w.ms)).toFixed(0)} ms, failed ${failed.length} (${[...new Set(failed.map((f) => f.code))].join(",")})`,
      );
      assert.ok(worst < 5000 + 2000, `a read-only status waited ${worst.toFixed(0)} ms, past the documented busy_timeout bound`);
    } finally {
      child.kill("SIGKILL");
      await exited;
      await d.stop();
    }
  });
});
