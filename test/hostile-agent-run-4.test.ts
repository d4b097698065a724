/**
 * A hostile agent started by `lessor run --agent X -- CMD`, fourth pass: IPC that crosses namespaces
 * by filesystem path (the owner's session services: Docker, gpg-agent, the keyring daemon), the
 * shared writable places the owner trusts later (/tmp, /dev/shm, the home's dotfiles), and the
 * sandbox's lifetime (a setsid grandchild, lessor run SIGKILLed from outside).
 *
 * Real parts only: the built CLI, real bwrap, real Unix sockets (fake services listen on them, in this
 * process, and count what reaches them), a real gnome-keyring-daemon on a private D-Bus session
 * (dbus-run-session, its own HOME), loopback and temporary directories only.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { BIN, runCliWithEnv, type CliResult } from "./cli-harness.js";
import { keychainMissing } from "./keychain-harness.js";
import { ATTACKERS_POLICY, HAVE_BWRAP, makeOwner as newOwner, runAgent } from "./run-harness.js";

const NODE = process.execPath;
const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : false;
const keyringMissing = keychainMissing();
const skipKeyring = skip || (keyringMissing !== null ? `needs a private keyring: ${keyringMissing}` : false);

const root = mkdtempSync(join(tmpdir(), "lessor-hostile4-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const MASTER_KEY = randomBytes(32).toString("hex");
const GRANTED = `granted-${randomBytes(12).toString("hex")}`;

/** A fake owner (run-harness): a home, ~/.lessor with the env key and ATTACKERS_POLICY, the granted secret stored, a project directory. */
const makeOwner = (name: string, config = "") => newOwner({ root, name, masterKey: MASTER_KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: GRANTED }], config });

/** `lessor run --agent AGENT -- node ARGS…` from `cwd` with exactly `env`, as the owner would start it. */
function runNode(cwd: string, env: Record<string, string>, agent: string, args: string[]): Promise<CliResult> {
  return runCliWithEnv(["run", "--agent", agent, "--", NODE, ...args], { cwd, env, timeoutMs: 40_000 });
}

/** A Unix socket server that counts connections (and answers HTTP when `http`). */
async function listenCounting(path: string, http = false): Promise<{ server: Server; hits: () => number; requests: string[] }> {
  let hits = 0;
  const requests: string[] = [];
  const server = http
    ? createHttpServer((req, res) => {
        requests.push(`${req.method} ${req.url}`);
        res.setHeader("content-type", "application/json");
        res.end(req.url?.endsWith("/_ping") ? "OK" : '{"Id":"owned-by-the-agent"}');
      })
    : createServer((c) => {
        c.on("error", () => {});
        c.end();
      });
  server.on("connection", () => hits++);
  await new Promise<void>((r) => server.listen(path, () => r()));
  return { server, hits: () => hits, requests };
}

/** The agent's probe: a Node script run as the sandboxed command; prints one `RESULT {json}` line. */
const PROBE = String.raw`
const fs = require("node:fs"), net = require("node:net"), path = require("node:path");
const spec = JSON.parse(process.argv[2]);
const out = { read: {}, dial: {}, wrote: {}, kill: {}, sockets: [] };
for (const f of spec.read || []) { try { out.read[f] = fs.readFileSync(f, "utf8"); } catch (e) { out.read[f] = "ERR " + e.code; } }
for (const [f, v] of Object.entries(spec.write || {})) { try { fs.mkdirSync(path.dirname(f), { recursive: true }); fs.writeFileSync(f, v); out.wrote[f] = "ok"; } catch (e) { out.wrote[f] = "ERR " + e.code; } }
for (const p of spec.kill || []) { try { process.kill(p, 0); out.kill[p] = "alive"; } catch (e) { out.kill[p] = e.code; } }
(function walk(d, depth) {
  if (depth > 6) return;
  let es = []; try { es = fs.readdirSync(d, { withFileTypes: true }); } catch { return; }
  for (const e of es) { const p = path.join(d, e.name); if (e.isSocket()) out.sockets.push(p); else if (e.isDirectory()) walk(p, depth + 1); }
})(process.env.HOME || "/nonexistent", 0);
const dials = [...new Set([...(spec.dial || []), ...out.sockets])];
let left = dials.length;
const done = () => { console.log("RESULT " + JSON.stringify(out)); };
if (left === 0) done();
for (const p of dials) {
  const s = net.connect({ path: p });
  const t = setTimeout(() => { out.dial[p] = out.dial[p] || "timeout"; s.destroy(); }, 3000);
  s.on("connect", () => { out.dial[p] = "connected"; s.write(spec.say || "GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n"); });
  s.on("data", (d) => { out.dial[p] = "answered " + d.toString("latin1").slice(0, 200); });
  s.on("error", (e) => { out.dial[p] = out.dial[p] || "ERR " + e.code; });
  s.on("close", () => { clearTimeout(t); if (--left === 0) done(); });
}
`;

function resultOf(r: CliResult): { read: Record<string, string>; dial: Record<string, string>; wrote: Record<string, string>; kill: Record<string, string>; sockets: string[] } {
  const line = r.stdout.split("\n").find((l) => l.startsWith("RESULT "));
  assert.ok(line, `the probe printed no result (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(line.slice("RESULT ".length));
}

describe("the sandbox's lifetime", { skip }, () => {
  test("a setsid+nohup grandchild that outlives the command dies with the sandbox: nothing of it runs after lessor run returns", async () => {
    const o = await makeOwner("grandchild");
    const tag = `h4bg${randomBytes(4).toString("hex")}`;
    const script = [
      `setsid nohup sh -c 'echo started > ${o.project}/bg-started; sleep 1.5; echo survived > ${o.project}/bg-after; exec sleep 30 ${tag}' </dev/null >/dev/null 2>&1 &`,
      "sleep 0.3",
      "echo parent-exits",
    ].join("\n");
    const r = await runAgent(o.project, o.env, "attacker-bg", [], script);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /parent-exits/);
    assert.ok(existsSync(join(o.project, "bg-started")), "the grandchild started (the probe works)");
    await new Promise((res) => setTimeout(res, 2500));
    assert.equal(existsSync(join(o.project, "bg-after")), false, "the grandchild kept running after lessor run returned and wrote to the project");
    assert.deepEqual(processesWith(tag), [], "a process of the sandbox is still alive");
  });

  test("lessor run SIGKILLed from outside: the whole sandbox dies with it (--die-with-parent), a setsid grandchild too; nothing writes to the project afterwards", async () => {
    const o = await makeOwner("sigkill");
    const tag = `h4tick${randomBytes(4).toString("hex")}`;
    const ticks = join(o.project, "ticks");
    const script = [
      `setsid nohup sh -c 'while :; do echo g >> ${ticks}; sleep 0.1; done; : ${tag}' </dev/null >/dev/null 2>&1 &`,
      "echo ready",
      `while :; do echo c >> ${ticks}; sleep 0.1; done; : ${tag}`,
    ].join("\n");
    const child = spawn(NODE, ["--", BIN, "run", "--agent", "attacker-kill", "--", "/bin/sh", "-c", script], { cwd: o.project, env: o.env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const closed = new Promise((r) => child.on("close", r));
    try {
      for (let i = 0; i < 400 && !out.includes("ready"); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, /ready/, err);
      await new Promise((r) => setTimeout(r, 400));
      assert.match(readFileSync(ticks, "utf8"), /g/, "the grandchild ticks (the probe works)");
    } finally {
      child.kill("SIGKILL");
    }
    await closed;
    await new Promise((r) => setTimeout(r, 700));
    const size = statSync(ticks).size;
    await new Promise((r) => setTimeout(r, 1200));
    assert.equal(statSync(ticks).size, size, "something of the sandbox still writes to the project after lessor run was killed");
    assert.deepEqual(processesWith(tag), [], "a process of the sandbox outlived lessor run");
  });
});

/** Host processes whose command line holds `tag` (this test's own are not). */
function processesWith(tag: string): string[] {
  const found: string[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, "utf8").replace(/\0/g, " ");
      if (cmd.includes(tag)) found.push(`${e}: ${cmd}`);
    } catch {
      // gone
    }
  }
  return found;
}

describe("shared places and host sockets in the default layout (project writable, home empty)", { skip }, () => {
  test("/tmp, /var/tmp, /dev/shm and the home are the sandbox's own: nothing planted there (~/.bashrc, ~/.config/git/config, ~/.npmrc, /tmp, /dev/shm) reaches the host; a socket under the host's /tmp, /run and the host's PIDs are out of reach", async () => {
    const o = await makeOwner("shared");
    const canary = `h4-${randomBytes(8).toString("hex")}`;
    // An ssh agent's socket where ssh-agent puts it (/tmp/ssh-XXXX/agent.N), and one under /run/user.
    const sockDir = mkdtempSync(join("/tmp", "ssh-h4-"));
    const sock = join(sockDir, "agent.4242");
    const agent = await listenCounting(sock);
    const probe = join(o.project, "probe.cjs");
    writeFileSync(probe, PROBE);
    const names = [`/tmp/${canary}`, `/var/tmp/${canary}`, `/dev/shm/${canary}`];
    const dotfiles = [".bashrc", ".profile", ".config/git/config", ".npmrc", ".cache/h4/x"].map((f) => join(o.home, f));
    const spec = {
      write: Object.fromEntries([...names, ...dotfiles].map((f) => [f, `${canary}\n`])),
      dial: [sock, "/run/user/0/bus", "/var/run/docker.sock", "/run/docker.sock", "/tmp/.X11-unix/X0", "/run/dbus/system_bus_socket"],
      kill: [process.pid, process.ppid],
    };
    try {
      const r = await runNode(o.project, o.env, "attacker-shared", [probe, JSON.stringify(spec)]);
      assert.equal(r.code, 0, r.stderr);
      const res = resultOf(r);
      for (const f of [...names, ...dotfiles]) {
        assert.equal(res.wrote[f], "ok", `inside, ${f} is writable scratch (${res.wrote[f]})`);
        assert.ok(!existsSync(f) || !readFileSync(f, "utf8").includes(canary), `${f} written inside the sandbox is on the host`);
      }
      for (const p of spec.dial) assert.match(res.dial[p] ?? "", /^ERR (ENOENT|ENOTDIR)$/, `${p}: ${res.dial[p]}`);
      assert.equal(agent.hits(), 0, "the host's ssh agent socket under /tmp was reached");
      for (const p of spec.kill) assert.equal(res.kill[p], "ESRCH", `host pid ${p} is visible to the agent: ${res.kill[p]}`);
    } finally {
      agent.server.close();
      rmSync(sockDir, { recursive: true, force: true });
      for (const f of names) rmSync(f, { force: true });
    }
  });
});

/**
 * The owner runs from the home with `[run] project = "read-only"`, as lessor's refusal of a writable
 * home advises ("then the home is shown read-only, with every protected path in it covered").
 * The owner's environment names where its session services and credential files are: lessor itself
 * withholds those variables from the agent (src/sandbox/env.ts: DOCKER_HOST, GNUPGHOME, DOCKER_CONFIG,
 * KUBECONFIG, XAUTHORITY, GNOME_KEYRING_CONTROL as the owner's session; PGPASSFILE and
 * GOOGLE_APPLICATION_CREDENTIALS as credentials), and covers the paths they name (one table,
 * PATH_VARIABLES, says both), with gnome-keyring's and X11's default places too.
 */
describe("the home shown read-only: what the owner's environment names there", { skip }, () => {
  test("the credential files lessor withholds by variable name (PGPASSFILE relative, KUBECONFIG's list, GOOGLE_APPLICATION_CREDENTIALS, DOCKER_CONFIG, GNUPGHOME, XAUTHORITY, AWS_SHARED_CREDENTIALS_FILE, PASSWORD_STORE_DIR) are covered in the read-only home, and ~/.Xauthority and ~/.cache/keyring-* at their default places: the agent reads none of them", async () => {
    const o = await makeOwner("named-files", `\n[run]\nproject = "read-only"\n`);
    const h = (p: string): string => join(o.home, p);
    const files: Record<string, { env: string; value: string; file: string }> = {
      // Relative: as psql reads it, from where lessor runs (the home).
      pgpass: { env: "PGPASSFILE", value: ".config/pg/pgpass", file: h(".config/pg/pgpass") },
      // A list: the second entry is as much the owner's as the first.
      kube: { env: "KUBECONFIG", value: `${h(".config/kube/base")}:${h(".config/kube/config")}`, file: h(".config/kube/config") },
      gcp: { env: "GOOGLE_APPLICATION_CREDENTIALS", value: h("keys/gcp-sa.json"), file: h("keys/gcp-sa.json") },
      docker: { env: "DOCKER_CONFIG", value: h(".config/docker"), file: h(".config/docker/config.json") },
      gpg: { env: "GNUPGHOME", value: h(".local/share/gnupg"), file: h(".local/share/gnupg/private-keys-v1.d/0123456789ABCDEF.key") },
      xauth: { env: "XAUTHORITY", value: h(".local/share/xorg/Xauthority"), file: h(".local/share/xorg/Xauthority") },
      aws: { env: "AWS_SHARED_CREDENTIALS_FILE", value: h(".config/aws/credentials"), file: h(".config/aws/credentials") },
      pass: { env: "PASSWORD_STORE_DIR", value: h(".local/share/pass"), file: h(".local/share/pass/github.gpg") },
    };
    const canaries: Record<string, string> = {};
    const env: Record<string, string> = { ...o.env };
    for (const [k, f] of Object.entries(files)) {
      canaries[k] = `${k.toUpperCase()}canary${randomBytes(6).toString("hex")}`;
      mkdirSync(join(f.file, ".."), { recursive: true, mode: 0o700 });
      writeFileSync(f.file, `${canaries[k]}\n`, { mode: 0o600 });
      env[f.env] = f.value;
    }
    // The same kind of file at its default place is covered (~/.pgpass, ~/.Xauthority, ~/.cache/keyring-*).
    const defaults = [h(".pgpass"), h(".Xauthority"), h(".cache/keyring-AB12CD/control")];
    mkdirSync(h(".cache/keyring-AB12CD"), { recursive: true, mode: 0o700 });
    for (const f of defaults) writeFileSync(f, "DEFAULTcanary\n", { mode: 0o600 });
    const probe = h("probe.cjs");
    writeFileSync(probe, PROBE);
    const r = await runNode(o.home, env, "attacker-named", [probe, JSON.stringify({ read: [...Object.values(files).map((f) => f.file), ...defaults] })]);
    assert.equal(r.code, 0, r.stderr);
    const res = resultOf(r);
    for (const f of defaults) assert.match(res.read[f] ?? "", /^ERR|^$/, `${f} at its default place is covered`);
    // lessor knows these variables point at the owner's credentials: it names two of them as withheld.
    assert.match(r.stderr, /not passed to the sandboxed command \(credentials in your environment\): .*PGPASSFILE/);
    const leaked = Object.entries(files)
      .filter(([k, f]) => (res.read[f.file] ?? "").includes(canaries[k]!))
      .map(([, f]) => `${f.env} (${f.file})`);
    assert.deepEqual(leaked, [], `the agent read the files these variables name, which lessor withholds: ${leaked.join(", ")}`);
  });

  test("DOCKER_HOST's socket in the read-only home (colima's ~/.colima/default/docker.sock) is covered as SSH_AUTH_SOCK's is: the agent cannot drive the owner's Docker daemon", async () => {
    const o = await makeOwner("docker-host", `\n[run]\nproject = "read-only"\n`);
    const sockDir = join(o.home, ".colima", "default");
    mkdirSync(sockDir, { recursive: true, mode: 0o700 });
    const sock = join(sockDir, "docker.sock");
    const docker = await listenCounting(sock, true);
    // Control: the ssh agent's socket named by SSH_AUTH_SOCK in the same home is covered.
    const sshSock = join(o.home, ".ssh-agent.sock");
    const ssh = await listenCounting(sshSock);
    const probe = join(o.home, "probe.cjs");
    writeFileSync(probe, PROBE);
    try {
      const say = 'POST /v1.43/containers/create HTTP/1.0\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{"Image":"alpine","HostConfig":{"Binds":["/:/host"]},"Cmd":[]}  ';
      const r = await runNode(o.home, { ...o.env, DOCKER_HOST: `unix://${sock}`, SSH_AUTH_SOCK: sshSock }, "attacker-docker", [probe, JSON.stringify({ say })]);
      assert.equal(r.code, 0, r.stderr);
      const res = resultOf(r);
      assert.equal(ssh.hits(), 0, `SSH_AUTH_SOCK's socket is covered (held): ${JSON.stringify(res.dial)}`);
      assert.deepEqual(
        docker.requests,
        [],
        `the agent found ${JSON.stringify(res.sockets)} in the read-only home and the owner's Docker daemon answered it (${res.dial[sock]}): a container binding / is root on the host`,
      );
    } finally {
      docker.server.close();
      ssh.server.close();
    }
  });

  test(
    "gnome-keyring's control socket (GNOME_KEYRING_CONTROL=~/.cache/keyring-*/control) is covered in the read-only home, whether lessor run's environment names it or not: the agent cannot stop the keyring that holds the vault's master key, and the owner's next lessor command opens the vault",
    { skip: skipKeyring },
    async () => {
      // A private session: its own HOME, no XDG_RUNTIME_DIR (root over ssh, a container, a cron job), so
      // gnome-keyring keeps its sockets in ~/.cache/keyring-XXXXXX and says so in GNOME_KEYRING_CONTROL.
      const home = join(root, "keyring", "home");
      mkdirSync(home, { recursive: true, mode: 0o700 });
      const lessorHome = join(home, ".lessor");
      const agent = join(home, "agent.cjs");
      // QUIT (op 3) on the control protocol: one credentials byte, then [length][op], big-endian.
      writeFileSync(
        agent,
        String.raw`
const fs = require("node:fs"), net = require("node:net"), path = require("node:path");
const cache = path.join(process.env.HOME, ".cache");
let dirs = []; try { dirs = fs.readdirSync(cache).filter((d) => d.startsWith("keyring-")); } catch (e) { console.log("no cache: " + e.code); }
console.log("seen: " + JSON.stringify(dirs) + " env: " + JSON.stringify(process.env.GNOME_KEYRING_CONTROL || null));
for (const d of dirs) {
  const s = net.connect(path.join(cache, d, "control"));
  s.on("connect", () => { const p = Buffer.alloc(8); p.writeUInt32BE(8, 0); p.writeUInt32BE(3, 4); s.write(Buffer.concat([Buffer.from([0]), p])); });
  s.on("data", (b) => console.log("keyring answered " + b.toString("hex")));
  s.on("error", (e) => console.log("dial " + d + ": " + e.code));
}
`,
      );
      const script = [
        "set -u",
        'eval "$(echo | gnome-keyring-daemon --unlock --components=secrets)"',
        "export GNOME_KEYRING_CONTROL",
        'echo "control=$GNOME_KEYRING_CONTROL"',
        `node -- "$BIN" init --key-source keychain >/dev/null 2>&1 || echo init-failed`,
        `printf '%s' "$POLICY" > "$LESSOR_HOME/policy.toml"`,
        `printf '\\n[run]\\nproject = "read-only"\\n' >> "$LESSOR_HOME/lessor.toml"`,
        `printf %s "$SECRET" | node -- "$BIN" secret set granted >/dev/null 2>&1 && echo before:ok || echo before:failed`,
        "unset SECRET POLICY",
        'cd "$HOME"',
        `node -- "$BIN" run --agent attacker-keyring -- "$NODE" "$AGENT" 2>&1 | sed 's/^/run: /'`,
        // Again from a shell that lost the variable (a cron job, sudo): the default place is covered too.
        `env -u GNOME_KEYRING_CONTROL node -- "$BIN" run --agent attacker-keyring -- "$NODE" "$AGENT" 2>&1 | sed 's/^/run2: /'`,
        "sleep 1",
        `node -- "$BIN" secret list >/dev/null 2>&1 && echo after:ok || echo after:failed`,
      ].join("\n");
      const r = await new Promise<CliResult>((resolve) => {
        const child = spawn("dbus-run-session", ["--", "sh", "-c", script], {
          cwd: home,
          env: { PATH: "/usr/bin:/bin", HOME: home, NO_COLOR: "1", LESSOR_HOME: lessorHome, BIN, NODE, AGENT: agent, POLICY: ATTACKERS_POLICY, SECRET: GRANTED },
          stdio: ["ignore", "pipe", "pipe"],
          detached: true,
        });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
        child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
        const kill = (): void => {
          try {
            process.kill(-child.pid!, "SIGKILL");
          } catch {
            // gone
          }
        };
        const timer = setTimeout(kill, 90_000);
        child.on("close", (code, signal) => {
          clearTimeout(timer);
          kill(); // the bus and a keyring daemon left behind
          resolve({ code, signal, stdout, stderr });
        });
      });
      const all = `${r.stdout}\n${r.stderr}`;
      assert.match(r.stdout, /control=.*\/\.cache\/keyring-/, all);
      assert.match(r.stdout, /before:ok/, `the keychain vault works before the run (the setup works): ${all}`);
      assert.match(r.stdout, /run: seen: \["keyring-.* env: null/, `GNOME_KEYRING_CONTROL is withheld, the directory is there: ${all}`);
      assert.match(r.stdout, /run2: seen: \["keyring-.* env: null/, `the second run sees the directory: ${all}`);
      assert.doesNotMatch(r.stdout, /run2?: keyring answered/, `the agent reached the owner's keyring daemon through ~/.cache/keyring-*/control and told it to quit; afterwards: ${/after:failed/.test(r.stdout) ? "the owner's lessor cannot open the vault (its master key was in that keyring)" : "?"}\n${all}`);
      assert.match(r.stdout, /after:ok/, `after the run, the owner's lessor cannot open the keychain vault: ${all}`);
      assert.ok(!all.includes(GRANTED), "the canary secret appeared in the output");
    },
  );
});
