/**
 * Attack (shadow): a covered file of /etc replaced by rename on the host while the agent runs.
 *
 * docs/sandbox.md covered /etc's secrets with a mount on the file itself (/dev/null bound over
 * /etc/shadow, k3s's /etc/rancher/k3s/k3s.yaml, …). The kernel detaches a mount whose dentry is
 * renamed over or unlinked, in every namespace: `passwd` (which writes /etc/nshadow and renames it
 * over /etc/shadow) or k3s rewriting its kubeconfig during a run handed a root owner's agent (uid 0
 * without capabilities) the new file. /etc is now a tmpfs of the sandbox's own, each entry recreated
 * in it, the covers living there: no host rename reaches them.
 *
 * Real parts: the built CLI, real bwrap, a real rename — made in an overlay over /etc seen only by
 * this test's `unshare -m` child, so the host's /etc is never touched. Root only.
 */
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import assert from "node:assert/strict";
import { ATTACKERS_POLICY, HAVE_BWRAP, makeOwner } from "./run-harness.js";
import { BIN } from "./cli-harness.js";

const root = mkdtempSync(join(tmpdir(), "lessor-shadow-etc-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const isRoot = process.getuid?.() === 0;
const haveUnshare = spawnSync("sh", ["-c", "command -v unshare"]).status === 0;
const SKIP = !HAVE_BWRAP ? "no bwrap" : !isRoot ? "needs root (the agent of a root owner)" : !haveUnshare ? "needs unshare" : false;

/**
 * Runs `agent` (a shell script) in `lessor run` inside a private mount namespace whose `lower` (/etc)
 * is an overlay (upper layer made by `prepare`); once the agent has written `ready` in the project, runs
 * `host` there (outside the sandbox), then lets the agent go on (`go`). The agent's stdout is returned.
 */
async function race(name: string, prepare: (upper: string) => void, host: string, agent: string, lower = "/etc"): Promise<{ stdout: string; stderr: string; status: number | null }> {
  const o = await makeOwner({ root, name, masterKey: randomBytes(32).toString("hex"), policy: ATTACKERS_POLICY });
  const up = join(root, name, "ov", "u");
  const work = join(root, name, "ov", "w");
  mkdirSync(up, { recursive: true });
  mkdirSync(work, { recursive: true });
  prepare(up);
  const wait = (f: string): string => `i=0; while [ ! -e ${f} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done`;
  const inside = `touch ready; ${wait("go")}; ${agent}; true`;
  const script = [
    `mount -t overlay overlay -o lowerdir=${lower},upperdir=${up},workdir=${work} ${lower}`,
    `(node ${BIN} run --agent attacker --network none -- /bin/sh -c '${inside}' > out.txt 2> err.txt; echo $? > rc.txt) &`,
    `${wait("ready")}`,
    host,
    `touch go`,
    `wait`,
    `cat out.txt; cat err.txt >&2; exit $(cat rc.txt)`,
  ].join("\n");
  const r = spawnSync("unshare", ["-m", "--propagation", "private", "sh", "-c", script], { cwd: o.project, env: o.env, encoding: "utf8", timeout: 50_000 });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

test("attack: /etc/shadow replaced by rename on the host during the run (passwd) stays covered", { skip: SKIP, timeout: 60_000 }, async () => {
  const canary = `SHADOW${randomBytes(8).toString("hex")}`;
  const r = await race(
    "shadow",
    () => {},
    `printf 'root:%s:20000:0:99999:7:::\\n' ${canary} > /etc/nshadow && chmod 600 /etc/nshadow && mv /etc/nshadow /etc/shadow`,
    "cat /etc/shadow",
  );
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!r.stdout.includes(canary), `the agent read the new /etc/shadow renamed in on the host during the run:\n${r.stdout}`);
});

test("attack: k3s rewriting its 0600 kubeconfig in /etc by rename during the run stays covered", { skip: SKIP, timeout: 60_000 }, async () => {
  const canary = `K3S${randomBytes(8).toString("hex")}`;
  const r = await race(
    "k3s",
    (up) => {
      mkdirSync(join(up, "rancher", "k3s"), { recursive: true });
      writeFileSync(join(up, "rancher", "k3s", "k3s.yaml"), "apiVersion: v1\n");
      chmodSync(join(up, "rancher", "k3s", "k3s.yaml"), 0o600);
    },
    `umask 077 && printf 'client-key-data: %s\\n' ${canary} > /etc/rancher/k3s/.k3s.yaml.tmp && mv /etc/rancher/k3s/.k3s.yaml.tmp /etc/rancher/k3s/k3s.yaml`,
    "cat /etc/rancher/k3s/k3s.yaml",
  );
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!r.stdout.includes(canary), `the agent read the kubeconfig renamed in on the host during the run:\n${r.stdout}`);
});

test("attack: a 0600 file of /usr/local/etc (from-source ipsec.secrets) rewritten by rename during the run stays covered", { skip: SKIP, timeout: 60_000 }, async () => {
  const canary = `PSK${randomBytes(8).toString("hex")}`;
  const r = await race(
    "usrlocal",
    (up) => {
      mkdirSync(join(up, "etc"), { recursive: true });
      writeFileSync(join(up, "etc", "ipsec.secrets"), ": PSK old\n");
      chmodSync(join(up, "etc", "ipsec.secrets"), 0o600);
    },
    `umask 077 && printf ': PSK "%s"\\n' ${canary} > /usr/local/etc/ipsec.secrets.new && mv /usr/local/etc/ipsec.secrets.new /usr/local/etc/ipsec.secrets`,
    "cat /usr/local/etc/ipsec.secrets; ls /usr/bin/env /usr/local >/dev/null && echo usr-ok",
    "/usr/local",
  );
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!r.stdout.includes(canary), `the agent read the ipsec.secrets renamed in on the host during the run:\n${r.stdout}`);
  assert.match(r.stdout, /usr-ok/, "/usr still works around the tree");
});

test("a shown file of /etc replaced by rename during the run still reads, /etc's links work, and the agent cannot write /etc", { skip: SKIP, timeout: 60_000 }, async () => {
  const r = await race(
    "shown",
    (up) => {
      writeFileSync(join(up, "lessor-shown.conf"), "old\n");
    },
    `printf 'new\\n' > /etc/.lessor-shown.tmp && mv /etc/.lessor-shown.tmp /etc/lessor-shown.conf && cp /etc/passwd /etc/.passwd.tmp && mv /etc/.passwd.tmp /etc/passwd`,
    [
      `echo "shown=$(cat /etc/lessor-shown.conf)"`,
      `grep -q "^root:" /etc/passwd && echo passwd-ok`,
      `id -un`,
      `[ -L /etc/mtab ] || [ ! -e /etc/mtab ] && echo mtab-ok`,
      `(test -e /etc/mtab && head -c1 /etc/mtab >/dev/null || true) && echo mtab-read`,
      `[ -f /etc/shadow ] && [ ! -s /etc/shadow ] && echo shadow-empty`,
      `touch /etc/planted 2>/dev/null && echo WROTE-ETC`,
      `mkdir /etc/planted.d 2>/dev/null && echo WROTE-ETC`,
      `rm -f /etc/hostname 2>/dev/null; [ -e /etc/hostname ] || echo REMOVED-ETC`,
      `mv /etc/shadow /etc/shadow.x 2>/dev/null && echo REMOVED-ETC`,
      `(echo x >> /etc/hosts) 2>/dev/null && echo WROTE-ETC`,
      `chmod 666 /etc/passwd 2>/dev/null && echo WROTE-ETC`,
      `(echo x >> /etc/shadow) 2>/dev/null; [ -s /etc/shadow ] && echo WROTE-ETC`,
    ].join("; "),
  );
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^shown=(old|new)$/m, r.stdout + r.stderr);
  assert.match(r.stdout, /passwd-ok/);
  assert.match(r.stdout, /^root$/m, "id -un still resolves through /etc/passwd");
  assert.match(r.stdout, /mtab-ok/);
  assert.match(r.stdout, /shadow-empty/);
  assert.doesNotMatch(r.stdout, /WROTE-ETC|REMOVED-ETC/, r.stdout);
});

test("planShadow/shadowArgs: a tmpfs tree, directories on the way made, the rest bound whole, copied or linked, covers in the tree", async () => {
  const { planShadow, shadowArgs } = await import("../src/sandbox/shadow.js");
  const etc = join(root, "unit-etc");
  mkdirSync(join(etc, "ssh"), { recursive: true });
  mkdirSync(join(etc, "apt", "sources.list.d"), { recursive: true });
  mkdirSync(join(etc, "wireguard"));
  writeFileSync(join(etc, "passwd"), "root:x:0:0::/root:/bin/sh\n");
  writeFileSync(join(etc, "shadow"), "root:hash\n");
  chmodSync(join(etc, "shadow"), 0o600);
  writeFileSync(join(etc, "ssh", "ssh_config"), "");
  writeFileSync(join(etc, "ssh", "ssh_host_ed25519_key"), "KEY");
  writeFileSync(join(etc, "big.db"), Buffer.alloc(300 * 1024));
  const { symlinkSync } = await import("node:fs");
  symlinkSync("/proc/self/mounts", join(etc, "mtab"));
  const covers = [
    { path: join(etc, "shadow"), dir: false },
    { path: join(etc, "ssh", "ssh_host_ed25519_key"), dir: false },
    { path: join(etc, "wireguard"), dir: true },
  ];
  const s = planShadow(etc, covers)!;
  const kinds = Object.fromEntries(s.entries.map((e) => [e.path.slice(etc.length + 1), e.kind]));
  assert.deepEqual(kinds, {
    apt: "bind",
    "big.db": "bind",
    mtab: "symlink",
    passwd: "copy",
    shadow: "cover",
    ssh: "dir",
    "ssh/ssh_config": "copy",
    "ssh/ssh_host_ed25519_key": "cover",
    wireguard: "cover",
  });
  const a = shadowArgs(etc, s, () => 9);
  assert.deepEqual(a.slice(0, 2), ["--tmpfs", etc]);
  assert.deepEqual(a.slice(-2), ["--remount-ro", etc], "the tree is made read-only once built");
  assert.ok(a.indexOf(join(etc, "ssh")) < a.indexOf(join(etc, "ssh", "ssh_config")), "a directory before what it holds");
  const at = (p: string): string[] => a.slice(a.lastIndexOf(p) - 2, a.lastIndexOf(p) + 1);
  assert.deepEqual(at(join(etc, "shadow")), ["--file", "9", join(etc, "shadow")]);
  const { copySources } = await import("../src/sandbox/shadow.js");
  assert.deepEqual(Object.fromEntries(copySources(s)), { [join(etc, "passwd")]: join(etc, "passwd"), [join(etc, "shadow")]: "/dev/null", [join(etc, "ssh", "ssh_config")]: join(etc, "ssh", "ssh_config"), [join(etc, "ssh", "ssh_host_ed25519_key")]: "/dev/null" }, "covered files are filled from /dev/null, never from the host's file");
  assert.deepEqual(at(join(etc, "mtab")), ["--symlink", "/proc/self/mounts", join(etc, "mtab")]);
  assert.deepEqual(at(join(etc, "apt")), ["--ro-bind-try", join(etc, "apt"), join(etc, "apt")]);
  for (const c of covers) assert.equal(a.filter((x) => x === c.path).length, 1, `the host's ${c.path} is never bound, only made in the tree`);
});
