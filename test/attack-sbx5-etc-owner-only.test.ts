/**
 * Sandbox review (sbx5): a root owner's agent reads root-only files of /etc that are not on the list.
 *
 * docs/sandbox.md: "As root, the agent is root inside its user namespace without capabilities: it can
 * read root-owned files that are shown (which is why /etc's secrets are covered)". The cover was a
 * fixed list (shadow, sudoers, ssl/private, wireguard, …), so every other 0600 root file in /etc went
 * to the agent: k3s's cluster-admin kubeconfig /etc/rancher/k3s/k3s.yaml, kubeadm's
 * /etc/kubernetes/admin.conf, /etc/mysql/debian.cnf, /etc/ipsec.secrets, /etc/ppp/chap-secrets,
 * /etc/postfix/sasl_passwd, netplan's Wi-Fi passwords. The machine already marks them secret (no read
 * bit for others): they are now covered too.
 *
 * Real parts: the built CLI, real bwrap, a real 0600 root file in /etc — made in a private mount
 * namespace (an overlay over /etc seen only by this test's `unshare -m` child), so the host's /etc is
 * never touched. Root only.
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
import { ownerOnlyEtc } from "../src/sandbox/hidden.js";

const root = mkdtempSync(join(tmpdir(), "lessor-sbx5-etc-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));
const isRoot = process.getuid?.() === 0;
const haveUnshare = spawnSync("sh", ["-c", "command -v unshare"]).status === 0;
const SKIP = !HAVE_BWRAP ? "no bwrap" : !isRoot ? "needs root (the agent of a root owner)" : !haveUnshare ? "needs unshare" : false;

test("a root owner's agent cannot read a 0600 root file of /etc (k3s's admin kubeconfig)", { skip: SKIP, timeout: 60_000 }, async () => {
  const o = await makeOwner({ root, name: "o", masterKey: randomBytes(32).toString("hex"), policy: ATTACKERS_POLICY });
  const canary = `K3S${randomBytes(8).toString("hex")}`;
  const up = join(root, "ov", "u");
  const work = join(root, "ov", "w");
  mkdirSync(up, { recursive: true });
  mkdirSync(work, { recursive: true });
  // The file as k3s writes it, in the overlay's upper layer: visible at /etc/rancher/k3s/k3s.yaml only
  // inside the private mount namespace below.
  mkdirSync(join(up, "rancher", "k3s"), { recursive: true });
  writeFileSync(join(up, "rancher", "k3s", "k3s.yaml"), `apiVersion: v1\nusers:\n- name: default\n  user:\n    client-key-data: ${canary}\n`);
  chmodSync(join(up, "rancher", "k3s", "k3s.yaml"), 0o600);
  const script = [
    `mount -t overlay overlay -o lowerdir=/etc,upperdir=${up},workdir=${work} /etc`,
    `exec node ${BIN} run --agent attacker --network none -- /bin/sh -c 'cat /etc/rancher/k3s/k3s.yaml; true'`,
  ].join(" && ");
  const r = spawnSync("unshare", ["-m", "--propagation", "private", "sh", "-c", script], { cwd: o.project, env: o.env, encoding: "utf8", timeout: 50_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(!r.stdout.includes(canary), `the agent read /etc/rancher/k3s/k3s.yaml (0600 root) from inside the sandbox:\n${r.stdout}`);
});

test("ownerOnlyEtc: the owner's files and directories others may not read; not others', not world-readable ones, not through links", () => {
  const etc = join(root, "etc");
  mkdirSync(join(etc, "ppp"), { recursive: true });
  mkdirSync(join(etc, "private"), { mode: 0o700 });
  writeFileSync(join(etc, "ppp", "chap-secrets"), "x");
  chmodSync(join(etc, "ppp", "chap-secrets"), 0o600);
  writeFileSync(join(etc, "hosts"), "x");
  chmodSync(join(etc, "hosts"), 0o644);
  chmodSync(join(etc, "private"), 0o700);
  writeFileSync(join(etc, "private", "inner"), "x");
  const me = process.getuid!();
  assert.deepEqual(ownerOnlyEtc(etc, me).sort(), [join(etc, "ppp", "chap-secrets"), join(etc, "private")]);
  assert.deepEqual(ownerOnlyEtc(etc, me + 12345), []);
});
