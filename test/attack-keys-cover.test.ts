/**
 * The sandbox covers a protected *file* (the key file, the passphrase store, a credential store such as
 * ~/.git-credentials) with a `/dev/null` bind mount. A bind mount sits on the file's dentry: when the
 * owner's side replaces the file by rename (lessor's own key rotation writes master.key through a
 * temporary file renamed over it; git's credential-store commits a lock file the same way), the kernel
 * detaches the mount in the sandbox's namespace, and the agent, still running, reads the new file.
 *
 * Layout: the key file kept outside the lessor home (`[keys] file`, in a private directory of the
 * owner's home), `lessor run` started from the home with `[run] project = "read-only"` (docs/sandbox.md:
 * "the home is shown read-only, with every protected path in it covered").
 */
import { mkdirSync, readFileSync, rmSync, mkdtempSync, writeFileSync, renameSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { initHome } from "../src/config/open-vault.js";
import { HAVE_BWRAP } from "./run-harness.js";
import { runCliWithEnv } from "./cli-harness.js";

const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : false;
const root = mkdtempSync(join(tmpdir(), "lessor-keys-cover-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

async function owner(name: string): Promise<{ home: string; lessorHome: string; keyFile: string; env: Record<string, string> }> {
  const home = join(root, name, "home");
  mkdirSync(home, { recursive: true, mode: 0o700 });
  const lessorHome = join(home, ".lessor");
  mkdirSync(lessorHome, { mode: 0o700 });
  const keyDir = join(home, ".lessor-key");
  const keyFile = join(keyDir, "master.key");
  writeFileSync(join(lessorHome, "lessor.toml"), `[keys]\nfile = "${keyFile}"\n\n[run]\nproject = "read-only"\n`, { mode: 0o600 });
  writeFileSync(join(lessorHome, "policy.toml"), `[[rule]]\nname = "a"\neffect = "allow"\nagents = ["agent"]\nsecrets = ["granted"]\nany_domain = true\n`, { mode: 0o600 });
  const env = { PATH: "/usr/bin:/bin", HOME: home, NO_COLOR: "1", LESSOR_HOME: lessorHome };
  await initHome({ home: lessorHome, env, keySource: "file" });
  return { home, lessorHome, keyFile, env };
}

/** The agent reads `path` once a second for `secs` seconds and prints the first non-empty content. */
const watch = (path: string, secs: number) =>
  `i=0; while [ $i -lt ${secs} ]; do c=$(cat '${path}' 2>/dev/null); if [ -n "$c" ]; then echo "READ:$c"; exit 0; fi; i=$((i+1)); sleep 1; done; echo NOTHING`;

test("attack: the key file, covered in the sandbox, is readable by the running agent once `lessor key rotate` replaces it", { skip, timeout: 90_000 }, async () => {
  const o = await owner("rotate");
  const run = runCliWithEnv(["run", "--agent", "agent", "--", "/bin/sh", "-c", watch(o.keyFile, 25)], { cwd: o.home, env: o.env, timeoutMs: 60_000 });
  await new Promise((r) => setTimeout(r, 6000)); // the sandbox is up, and the cover was in force at first
  const rot = await runCliWithEnv(["key", "rotate"], { cwd: o.home, env: o.env, timeoutMs: 30_000 });
  assert.equal(rot.code, 0, rot.stderr);
  const r = await run;
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const newKey = (JSON.parse(readFileSync(o.keyFile, "utf8")) as { keys: string[] }).keys[0]!;
  assert.ok(!r.stdout.includes(newKey), `the agent read the vault's new master key from ${o.keyFile}:\n${r.stdout}`);
  assert.doesNotMatch(r.stdout, /READ:/, r.stdout);
});

test("attack (same mechanism, outside lessor's files): ~/.git-credentials rewritten by rename during the run is readable by the agent", { skip, timeout: 90_000, todo: "not fixed: a /dev/null cover over a credential store file does not survive its replacement by rename (src/sandbox covers files on their dentry)" }, async () => {
  const o = await owner("gitcreds");
  const creds = join(o.home, ".git-credentials");
  writeFileSync(creds, "https://u:old-token@example.invalid\n", { mode: 0o600 });
  const run = runCliWithEnv(["run", "--agent", "agent", "--", "/bin/sh", "-c", watch(creds, 25)], { cwd: o.home, env: o.env, timeoutMs: 60_000 });
  await new Promise((r) => setTimeout(r, 6000));
  // What git's credential-store does on `store`: write credentials.lock, rename it over the file.
  writeFileSync(`${creds}.lock`, "https://u:NEW-TOKEN-abc@example.invalid\n", { mode: 0o600 });
  renameSync(`${creds}.lock`, creds);
  const r = await run;
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.doesNotMatch(r.stdout, /NEW-TOKEN/, `the agent read the rewritten ~/.git-credentials:\n${r.stdout}`);
});
