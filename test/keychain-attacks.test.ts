/**
 * The OS keychain key source, attacked: can an agent under `lessor run` reach the master key of a home
 * whose key is in the keychain (src/crypto/keys/keychain.ts), with the keychain service (gnome-keyring's
 * Secret Service) running on the owner's D-Bus session, as on a desktop?
 *
 * Two private sessions (dbus-run-session with a private HOME, XDG dirs and a bus of their own; the
 * user's keyring is never touched), each with a keychain home made by `lessor init --key-source
 * keychain` and the CLI run from source:
 * - "abstract": the bus on an abstract Unix socket (`unix:abstract=…`, what dbus-launch and older or
 *   other distributions' session configurations give; Debian 12's dbus-run-session uses a path under
 *   /tmp). Abstract sockets belong to the network namespace.
 * - "path": the bus at `<runtime dir>/bus`, as systemd's /run/user/UID/bus.
 * The hostile agent is a Node script (written into the project) that looks for a bus (the environment,
 * abstract names in /proc/net/unix, well-known and given paths), speaks raw D-Bus (EXTERNAL auth,
 * Secret Service SearchItems/OpenSession/GetSecret; perl relays abstract sockets, whose names Node
 * pads) and reports every lessor item it could read. The same probe run unconfined (--no-sandbox)
 * reads the key, so a failure inside proves the sandbox, not a broken probe.
 *
 * Needs dbus-run-session, gnome-keyring-daemon, bwrap (with user namespaces), perl and the optional
 * package @napi-rs/keyring; without one the file skips with one line. The other-user attacks (setpriv
 * to uid 65534) need root and are skipped otherwise.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { keyIdOf } from "../src/crypto/keyring.js";
import { keychainKeySource } from "../src/crypto/keys/keychain.js";
import { keychainMissing, onPath, runInBusSession, type BusSessionResult } from "./keychain-harness.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(root, "src/cli/main.ts");
const TSX = pathToFileURL(createRequire(join(root, "package.json")).resolve("tsx")).href;
const IS_ROOT = process.getuid?.() === 0;
const CANARY = `CANARY-kc-attack-${randomBytes(6).toString("hex")}`;

// Importing the harness points this process's session bus nowhere: nothing here may reach the user's own keychain.
const missing = keychainMissing([
  () => (!onPath("bwrap") || spawnSync("bwrap", ["--unshare-all", "--unshare-user", "--ro-bind", "/", "/", "true"]).status !== 0 ? "bwrap is not installed or user namespaces are off" : null),
  () => (onPath("perl") ? null : "perl is not installed"),
]);
const skip = missing === null ? false : `keychain attack tests skipped: ${missing}`;

// ---- the hostile agent: a raw D-Bus client and the probe ----

/** A minimal D-Bus client (little-endian, EXTERNAL auth) and the Secret Service calls an attacker needs. */
const DBUS_CLIENT = String.raw`
import { connect } from "node:net";
import { spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import { readFileSync } from "node:fs";
// Node pads an abstract socket's name to the whole sun_path, so it cannot reach dbus-daemon's: perl relays.
const RELAY = 'use Socket; use IO::Select; socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!\\n"; connect($s, pack_sockaddr_un("\\0" . $ARGV[0])) or die "connect: $!\\n"; syswrite(STDOUT, "+"); binmode STDIN; binmode STDOUT; my $sel = IO::Select->new(\\*STDIN, $s); while (1) { for my $h ($sel->can_read) { my $n = sysread($h, my $buf, 65536); exit 0 if !$n; if (fileno($h) == fileno($s)) { syswrite(STDOUT, $buf) } else { syswrite($s, $buf) } } }';
function relay(name) {
  const e = new EventEmitter();
  const child = spawn("perl", ["-e", RELAY, name], { stdio: ["pipe", "pipe", "pipe"] });
  let err = "";
  let up = false;
  child.stderr.on("data", (d) => (err += d));
  child.stdout.on("data", (d) => { if (!up) { up = true; d = d.subarray(1); e.emit("connect"); } if (d.length) e.emit("data", d); });
  child.on("close", () => { if (!up) e.emit("error", Object.assign(new Error(err.trim() || "relay failed"), { code: /refused/i.test(err) ? "ECONNREFUSED" : "ERELAY" })); e.emit("close"); });
  child.on("error", (x) => e.emit("error", x));
  child.stdin.on("error", () => {});
  e.write = (b) => child.stdin.write(b);
  e.destroy = () => child.kill("SIGKILL");
  return e;
}
const ALIGN = { y: 1, g: 1, v: 1, n: 2, q: 2, b: 4, i: 4, u: 4, s: 4, o: 4, a: 4, h: 4, x: 8, t: 8, d: 8, "(": 8, "{": 8 };
function typeEnd(sig, i) {
  const c = sig[i];
  if (c === "a") return typeEnd(sig, i + 1);
  if (c === "(" || c === "{") { const close = c === "(" ? ")" : "}"; let j = i + 1; while (sig[j] !== close) j = typeEnd(sig, j); return j + 1; }
  return i + 1;
}
function splitSig(sig) { const out = []; for (let i = 0; i < sig.length; ) { const e = typeEnd(sig, i); out.push(sig.slice(i, e)); i = e; } return out; }
class W {
  constructor() { this.b = Buffer.alloc(0); }
  get len() { return this.b.length; }
  raw(buf) { this.b = Buffer.concat([this.b, buf]); }
  align(n) { while (this.b.length % n) this.raw(Buffer.alloc(1)); }
  u8(v) { this.raw(Buffer.from([v])); }
  u32(v) { this.align(4); const x = Buffer.alloc(4); x.writeUInt32LE(v); this.raw(x); }
  str(s) { const d = Buffer.from(s); this.u32(d.length); this.raw(d); this.u8(0); }
  sig(s) { this.u8(Buffer.byteLength(s)); this.raw(Buffer.from(s)); this.u8(0); }
  value(t, v) {
    const c = t[0];
    if (c === "y") return this.u8(v);
    if (c === "b" || c === "u") return this.u32(Number(v));
    if (c === "s" || c === "o") return this.str(v);
    if (c === "g") return this.sig(v);
    if (c === "v") { this.sig(v[0]); return this.value(v[0], v[1]); }
    if (c === "(") { this.align(8); splitSig(t.slice(1, -1)).forEach((p, k) => this.value(p, v[k])); return; }
    if (c === "a") {
      const et = t.slice(1);
      this.align(4); const at = this.len; this.u32(0); this.align(ALIGN[et[0]]); const start = this.len;
      if (et[0] === "{") { const [kt, vt] = splitSig(et.slice(1, -1)); for (const [k, x] of Object.entries(v)) { this.align(8); this.value(kt, k); this.value(vt, x); } }
      else if (et === "y") this.raw(Buffer.from(v));
      else for (const x of v) this.value(et, x);
      this.b.writeUInt32LE(this.len - start, at); return;
    }
    throw new Error("cannot write type " + t);
  }
}
class R {
  constructor(b, off = 0) { this.b = b; this.o = off; }
  align(n) { this.o = Math.ceil(this.o / n) * n; }
  u8() { return this.b[this.o++]; }
  u32() { this.align(4); const v = this.b.readUInt32LE(this.o); this.o += 4; return v; }
  str() { const n = this.u32(); const s = this.b.toString("utf8", this.o, this.o + n); this.o += n + 1; return s; }
  sig() { const n = this.u8(); const s = this.b.toString("utf8", this.o, this.o + n); this.o += n + 1; return s; }
  value(t) {
    const c = t[0];
    if (c === "y") return this.u8();
    if (c === "b") return this.u32() !== 0;
    if (c === "u" || c === "i" || c === "h") return this.u32();
    if (c === "n" || c === "q") { this.align(2); const v = this.b.readUInt16LE(this.o); this.o += 2; return v; }
    if (c === "x" || c === "t" || c === "d") { this.align(8); const v = this.b.readBigUInt64LE(this.o); this.o += 8; return String(v); }
    if (c === "s" || c === "o") return this.str();
    if (c === "g") return this.sig();
    if (c === "v") { const s = this.sig(); return this.value(s); }
    if (c === "(") { this.align(8); return splitSig(t.slice(1, -1)).map((p) => this.value(p)); }
    if (c === "a") {
      const et = t.slice(1); const n = this.u32(); this.align(ALIGN[et[0]]); const end = this.o + n;
      if (et === "y") { const v = this.b.subarray(this.o, end); this.o = end; return Buffer.from(v); }
      if (et[0] === "{") { const [kt, vt] = splitSig(et.slice(1, -1)); const out = {}; while (this.o < end) { this.align(8); const k = this.value(kt); out[k] = this.value(vt); } return out; }
      const out = []; while (this.o < end) out.push(this.value(et)); return out;
    }
    throw new Error("cannot read type " + t);
  }
}
/** Connects to a D-Bus address (unix:path= or unix:abstract=), authenticates (EXTERNAL) and says Hello. */
async function openBus(address, ms = 5000) {
  const m = /^unix:(path|abstract)=([^,;]+)/.exec(address);
  if (!m) throw Object.assign(new Error("unsupported address"), { code: "EADDRESS" });
  const sock = m[1] === "abstract" ? relay(m[2]) : connect({ path: m[2] });
  let buf = Buffer.alloc(0);
  let waiter = null;
  const pending = new Map();
  let authed = false;
  let failed = null;
  const fail = (e) => { if (failed) return; failed = e; for (const p of pending.values()) p.reject(e); pending.clear(); if (waiter) waiter.reject(e); };
  sock.on("error", fail);
  sock.on("close", () => fail(Object.assign(new Error("the bus closed the connection"), { code: "CLOSED" })));
  const pump = () => {
    if (!authed) { const i = buf.indexOf("\r\n"); if (i >= 0 && waiter) { const line = buf.toString("latin1", 0, i); buf = buf.subarray(i + 2); const w = waiter; waiter = null; w.resolve(line); } return; }
    for (;;) {
      if (buf.length < 16) return;
      const bodyLen = buf.readUInt32LE(4); const fieldsLen = buf.readUInt32LE(12);
      const bodyStart = Math.ceil((16 + fieldsLen) / 8) * 8; const total = bodyStart + bodyLen;
      if (buf.length < total) return;
      const msg = buf.subarray(0, total); buf = buf.subarray(total);
      const type = msg[1]; const fields = Object.fromEntries(new R(msg, 12).value("a(yv)"));
      const body = new R(msg, bodyStart); const args = splitSig(fields[8] ?? "").map((t) => body.value(t));
      if ((type === 2 || type === 3) && pending.has(fields[5])) { const p = pending.get(fields[5]); pending.delete(fields[5]); if (type === 2) p.resolve(args); else p.reject(Object.assign(new Error(fields[4] + ": " + String(args[0] ?? "")), { code: fields[4] })); }
    }
  };
  sock.on("data", (d) => { buf = Buffer.concat([buf, d]); pump(); });
  const line = () => new Promise((resolve, reject) => { if (failed) return reject(failed); waiter = { resolve, reject }; pump(); });
  const timer = setTimeout(() => { fail(Object.assign(new Error("timeout"), { code: "TIMEOUT" })); sock.destroy(); }, ms);
  try {
    await new Promise((res, rej) => { sock.once("connect", res); sock.once("error", rej); });
    sock.write("\0AUTH EXTERNAL " + Buffer.from(String(process.getuid())).toString("hex") + "\r\n");
    const answer = await line();
    if (!answer.startsWith("OK ")) throw Object.assign(new Error("authentication refused: " + answer), { code: "AUTH_REFUSED" });
  } catch (e) { clearTimeout(timer); sock.destroy(); throw e; }
  sock.write("BEGIN\r\n");
  authed = true;
  let serial = 0;
  const call = (dest, path, iface, member, sig = "", args = []) => new Promise((resolve, reject) => {
    if (failed) return reject(failed);
    const s = ++serial; const body = new W(); splitSig(sig).forEach((t, k) => body.value(t, args[k]));
    const fields = [[1, ["o", path]], [2, ["s", iface]], [3, ["s", member]], ...(dest ? [[6, ["s", dest]]] : []), ...(sig ? [[8, ["g", sig]]] : [])];
    const h = new W(); h.u8(0x6c); h.u8(1); h.u8(0); h.u8(1); h.u32(body.len); h.u32(s); h.value("a(yv)", fields); h.align(8);
    pending.set(s, { resolve, reject }); sock.write(Buffer.concat([h.b, body.b]));
  });
  const close = () => { clearTimeout(timer); sock.destroy(); };
  try {
    const [name] = await call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello");
    return { name, call, close };
  } catch (e) { close(); throw e; }
}
const SS = "org.freedesktop.secrets";
/** Every unlocked item the Secret Service holds for a service, with its attributes (the account) and secret. */
async function secretsOf(bus, service) {
  const [unlocked] = await bus.call(SS, "/org/freedesktop/secrets", "org.freedesktop.Secret.Service", "SearchItems", "a{ss}", [{ service }]);
  const [, session] = await bus.call(SS, "/org/freedesktop/secrets", "org.freedesktop.Secret.Service", "OpenSession", "sv", ["plain", ["s", ""]]);
  const out = [];
  for (const item of unlocked) {
    const [attributes] = await bus.call(SS, item, "org.freedesktop.DBus.Properties", "Get", "ss", ["org.freedesktop.Secret.Item", "Attributes"]);
    const [secret] = await bus.call(SS, item, "org.freedesktop.Secret.Item", "GetSecret", "o", [session]);
    out.push({ item, attributes, secret: secret[2].toString("utf8") });
  }
  return out;
}
`;

/** The agent: finds a bus, reads every lessor item it can, prints one `PROBE {json}` line. */
const PROBE = `${DBUS_CLIENT}
const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const ENV = ["DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "DBUS_STARTER_ADDRESS", "DBUS_STARTER_BUS_TYPE", "GNOME_KEYRING_CONTROL"];
const report = { ran: true, uid: process.getuid(), env: Object.fromEntries(ENV.map((k) => [k, process.env[k] ?? null])), tried: {}, found: [], dial: {} };
const candidates = new Set();
for (const k of ["DBUS_SESSION_BUS_ADDRESS", "DBUS_STARTER_ADDRESS"]) if (process.env[k]) for (const a of process.env[k].split(";")) candidates.add(a.replace(/,guid=.*$/, ""));
let unix = "";
try { unix = readFileSync("/proc/net/unix", "latin1"); } catch {}
// Abstract names a bus would have (the attacker would try all; only buses, so as not to disturb other tests' sockets).
report.abstractBuses = [...new Set(unix.split("\\n").map((l) => l.trim().split(/\\s+/)[7]).filter((p) => p && p.startsWith("@") && /dbus/.test(p)))];
for (const n of report.abstractBuses) candidates.add("unix:abstract=" + n.slice(1));
// Guessed: the well-known path, and the owner's real address (as if guessed right).
candidates.add("unix:path=/run/user/" + process.getuid() + "/bus");
for (const a of spec.addresses ?? []) candidates.add(a);
for (const address of candidates) {
  let bus;
  try {
    bus = await openBus(address);
    const items = await secretsOf(bus, "lessor");
    report.tried[address] = "read " + items.length + " lessor item(s)";
    for (const o of items) report.found.push({ address, account: o.attributes.username ?? null, secret: o.secret });
  } catch (e) {
    report.tried[address] = String((e && e.code) || (e && e.message) || e);
  } finally {
    bus?.close();
  }
}
for (const path of spec.dial ?? []) {
  report.dial[path] = await new Promise((res) => { const c = connect({ path }); const t = setTimeout(() => { c.destroy(); res("TIMEOUT"); }, 3000); c.once("connect", () => { clearTimeout(t); c.destroy(); res("connected"); }); c.once("error", (e) => { clearTimeout(t); res(e.code); }); });
}
process.stdout.write("\\nPROBE " + JSON.stringify(report) + "\\n", () => process.exit(0));
`;

interface Found {
  address: string;
  account: string | null;
  secret: string;
}
interface Probe {
  ran: true;
  uid: number;
  env: Record<string, string | null>;
  dial: Record<string, string>;
  tried: Record<string, string>;
  found: Found[];
  abstractBuses: string[];
}
interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** The probe's report in a run's stdout, or null when the probe did not run (lessor refused to start it). */
function probeOf(r: Run): Probe | null {
  const line = r.stdout.split("\n").find((l) => l.startsWith("PROBE "));
  return line === undefined ? null : (JSON.parse(line.slice("PROBE ".length)) as Probe);
}

// ---- the owner's private desktop: a bus, gnome-keyring, a keychain home, a project ----

interface Box {
  dir: string;
  home: string;
  project: string;
  /** A 0755 directory other users can enter (the probe's copy for them, the path bus). */
  open: string;
  env: Record<string, string>;
}

const cleanup: string[] = [];
process.on("exit", () => {
  for (const d of cleanup) rmSync(d, { recursive: true, force: true });
});

function box(name: string): Box {
  const dir = mkdtempSync(join(tmpdir(), `lessor-kca-${name}-`));
  const open = mkdtempSync(join(tmpdir(), `lessor-kca-${name}-open-`));
  cleanup.push(dir, open);
  chmodSync(dir, 0o700);
  chmodSync(open, 0o755);
  for (const d of ["user", "project"]) mkdirSync(join(dir, d), { mode: 0o700 });
  mkdirSync(join(open, "run"), { mode: 0o755 });
  writeFileSync(join(dir, "project/probe.mjs"), PROBE);
  writeFileSync(join(open, "probe.mjs"), PROBE, { mode: 0o644 });
  const user = join(dir, "user");
  return {
    dir,
    open,
    home: join(dir, "lessor"),
    project: join(dir, "project"),
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: user,
      XDG_DATA_HOME: join(user, ".local/share"),
      XDG_CONFIG_HOME: join(user, ".config"),
      XDG_CACHE_HOME: join(user, ".cache"),
      XDG_RUNTIME_DIR: join(open, "run"),
      LESSOR_HOME: join(dir, "lessor"),
      NO_COLOR: "1",
      KEYRING_PW: `pw-${randomBytes(8).toString("hex")}`,
    },
  };
}

function busConfig(listen: string): string {
  return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>${listen}</listen>
  <auth>EXTERNAL</auth>
  <standard_session_servicedirs/>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`;
}

/** What every owner script starts with: the CLI from source, the keychain package, the probe runner. */
const PRELUDE = `
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
const ROOT = ${JSON.stringify(root)};
const CLI = ${JSON.stringify(CLI)};
const TSX = ${JSON.stringify(TSX)};
const { Entry } = createRequire(join(ROOT, "package.json"))("@napi-rs/keyring");
const entry = (account) => new Entry("lessor", account, { linux: { store: "secret-service" } });
const lessor = (args, o = {}) => {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ["--import", TSX, CLI, ...args], { cwd: o.cwd ?? ROOT, env: { ...process.env, ...(o.env ?? {}) }, input: o.input ?? "", encoding: "utf8", timeout: 60000 });
  return { code: r.status, stdout: r.stdout ?? "", stderr: r.stderr ?? "", ms: Date.now() - t0 };
};
const account = () => JSON.parse(readFileSync(join(process.env.LESSOR_HOME, "keychain.json"), "utf8")).account;
const PROJECT = process.env.PROJECT;
const spec = (name, s) => { const p = join(PROJECT, "spec-" + name + ".json"); writeFileSync(p, JSON.stringify(s)); return p; };
/** lessor run --agent a EXTRA -- node probe.mjs SPEC, from the project directory. */
const agentRun = (name, extra, s, env = {}) => lessor(["run", "--agent", "a", ...extra, "--", process.execPath, join(PROJECT, "probe.mjs"), spec(name, s)], { cwd: PROJECT, env });
const out = {};
`;

/** Runs `body` (after PRELUDE) inside a private D-Bus session listening on `listen`, gnome-keyring unlocked. */
function session(b: Box, listen: string, body: string, timeoutMs = 110_000): Promise<BusSessionResult> {
  const cfg = join(b.dir, "bus.xml");
  writeFileSync(cfg, busConfig(listen));
  const script = join(b.dir, "owner.mts");
  writeFileSync(script, `${PRELUDE}\n${body}\nprocess.stdout.write("\\nRESULT " + JSON.stringify(out) + "\\n");\n`, { mode: 0o600 });
  const start = 'printf "%s" "$KEYRING_PW" | gnome-keyring-daemon --unlock --components=secrets >/dev/null';
  return runInBusSession({ busArgs: [`--config-file=${cfg}`], start, tsx: TSX, script, cwd: root, env: { ...b.env, PROJECT: b.project }, timeoutMs });
}

const keysOf = (ring: unknown): string[] => (JSON.parse(ring as string) as { keys: string[] }).keys;
const ok = (r: unknown): Run => {
  const run = r as Run;
  assert.equal(run.code, 0, `exit ${run.code}: ${run.stderr}`);
  return run;
};
/**
 * True when any of `keys` (this home's master keys) shows in the run's output or in what the probe
 * read. Only this home's: with the host's network the probe may also read the other session's bus.
 */
function reached(r: Run, keys: string[]): boolean {
  const text = (r.stdout + r.stderr + JSON.stringify(probeOf(r)?.found ?? [])).toLowerCase();
  return keys.some((k) => text.includes(k.toLowerCase()));
}

// ---- the sessions, run side by side ----

interface AbstractResult {
  busAddress: string;
  account: string;
  ring: string;
  inside: Run;
  none: Run;
  host: Run;
  unconfined: Run;
  nobody: { status: number | null; stdout: string; stderr: string } | null;
  planted: string;
  statusAfterPlant: Run;
  setAfterPlant: Run;
  rotate: Run;
  ringAfterRotate: string;
  getOld: Run;
}
interface PathResult {
  busAddress: string;
  account: string;
  ring: string;
  inside: Run;
  host: Run;
  shownRuntime: Run;
  sshSock: string;
  ownerDirect: { status: number | null; stdout: string; stderr: string };
  nobody: { status: number | null; stdout: string; stderr: string } | null;
  helper: { calls: { file: string; args: string[]; nodeOptions: string | null; stdin: boolean }[]; keys: string[]; error?: string };
}

const ATTACKER_KEY = randomBytes(32).toString("hex");

describe("the keychain home under lessor run, attacked from inside the sandbox", { skip }, () => {
  let A: AbstractResult;
  let P: PathResult;
  let abstractBox: Box;
  let pathBox: Box;

  before(async () => {
    abstractBox = box("abs");
    pathBox = box("path");
    const abstractName = `/tmp/dbus-lessor-kca-${randomBytes(6).toString("hex")}`;
    const busPath = join(pathBox.open, "run", "bus");
    const nobody = (b: Box, address: string) =>
      IS_ROOT
        ? `(() => { const s = spec("nobody", { addresses: [${JSON.stringify(address)}] }); const copy = join(${JSON.stringify(b.open)}, "spec-nobody.json"); writeFileSync(copy, readFileSync(s)); const r = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "--", process.execPath, join(${JSON.stringify(b.open)}, "probe.mjs"), copy], { cwd: "/", encoding: "utf8", timeout: 30000, env: { PATH: process.env.PATH, DBUS_SESSION_BUS_ADDRESS: process.env.DBUS_SESSION_BUS_ADDRESS } }); return { status: r.status, stdout: r.stdout, stderr: r.stderr }; })()`
        : "null";

    const abstractRun = session(
      abstractBox,
      `unix:abstract=${abstractName}`,
      `
out.busAddress = process.env.DBUS_SESSION_BUS_ADDRESS;
const init = lessor(["init", "--key-source", "keychain"]);
if (init.code !== 0) throw new Error("init: " + init.stderr);
out.account = account();
out.ring = entry(out.account).getPassword();
const set = lessor(["secret", "set", "old-secret"], { input: ${JSON.stringify(CANARY)} });
if (set.code !== 0) throw new Error("secret set: " + set.stderr);
const s = { addresses: ["unix:abstract=${abstractName}"] };
// As when lessor is started from a D-Bus-activated terminal or an old gnome-keyring session: the same bus and keyring under other names.
const starter = { DBUS_STARTER_ADDRESS: process.env.DBUS_SESSION_BUS_ADDRESS, DBUS_STARTER_BUS_TYPE: "session", GNOME_KEYRING_CONTROL: join(process.env.XDG_RUNTIME_DIR, "keyring") };
out.inside = agentRun("inside", [], s, starter);
out.none = agentRun("none", ["--network", "none"], s);
out.host = agentRun("host", ["--network", "host"], s);
out.unconfined = agentRun("unconfined", ["--no-sandbox"], s);
out.nobody = ${nobody(abstractBox, `unix:abstract=${abstractName}`)};
// What an agent that reached the bus once can leave behind: a key of its own, current, in the entry.
const real = JSON.parse(out.ring).keys;
out.planted = JSON.stringify({ lessor_keyfile: 1, keys: [${JSON.stringify(ATTACKER_KEY)}, ...real] }) + "\\n";
entry(out.account).setPassword(out.planted);
out.statusAfterPlant = lessor(["status", "--json"]);
out.setAfterPlant = lessor(["secret", "set", "new-secret"], { input: ${JSON.stringify(CANARY + "-new")} });
out.rotate = lessor(["key", "rotate"]);
out.ringAfterRotate = entry(out.account).getPassword();
out.getOld = lessor(["secret", "get", "old-secret", "--reveal"]);
`,
    ).then((r) => (A = r.out as unknown as AbstractResult));

    const pathRun = session(
      pathBox,
      `unix:path=${busPath}`,
      `
out.busAddress = process.env.DBUS_SESSION_BUS_ADDRESS;
const init = lessor(["init", "--key-source", "keychain"]);
if (init.code !== 0) throw new Error("init: " + init.stderr);
out.account = account();
out.ring = entry(out.account).getPassword();
const s = { addresses: ["unix:path=${busPath}"] };
out.inside = agentRun("inside", [], s);
out.host = agentRun("host", ["--network", "host"], s);
// The owner shows the runtime directory (Wayland, PulseAudio, …) read-only: the bus socket is in it.
const cfg = join(process.env.LESSOR_HOME, "lessor.toml");
writeFileSync(cfg, readFileSync(cfg, "utf8") + ${JSON.stringify(`\n[run]\nread = [${JSON.stringify(join(pathBox.open, "run"))}]\n`)});
// Control: an ssh agent's socket in that directory is covered (SSH_AUTH_SOCK is a protected path).
const { createServer } = await import("node:net");
const sshSock = join(process.env.XDG_RUNTIME_DIR, "ssh-agent.sock");
const sshServer = createServer((c) => c.destroy());
await new Promise((r) => sshServer.listen(sshSock, r));
out.shownRuntime = agentRun("shown", [], { ...s, dial: [sshSock, ${JSON.stringify(busPath)}] }, { SSH_AUTH_SOCK: sshSock });
out.sshSock = sshSock;
sshServer.close();
{
  const r = spawnSync(process.execPath, [join(PROJECT, "probe.mjs"), spec("direct", s)], { encoding: "utf8", timeout: 30000, env: { PATH: process.env.PATH } });
  out.ownerDirect = { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
out.nobody = ${nobody(pathBox, `unix:path=${busPath}`)};
// The keychain helper: what its argv and environment hold while keys travel (execFile recorded).
{
  const cp = (await import("node:child_process")).default;
  const { syncBuiltinESMExports } = await import("node:module");
  const calls = [];
  const orig = cp.execFile;
  cp.execFile = function (file, args, opts, cb) {
    const child = orig.apply(this, arguments);
    calls.push({ file, args: [...args], nodeOptions: opts?.env?.NODE_OPTIONS ?? null, stdin: child.stdin !== null });
    return child;
  };
  syncBuiltinESMExports();
  process.env.NODE_OPTIONS = "--no-warnings";
  const keys = [];
  try {
    const { createKeychainKey, keychainKeySource } = await import(join(ROOT, "src/crypto/keys/keychain.ts"));
    const { mkdtempSync } = await import("node:fs");
    const dir = mkdtempSync(join(process.env.HOME, "helper-"));
    const marker = join(dir, "m.json");
    await createKeychainKey(marker);
    const src = keychainKeySource(marker);
    const ring = await src.load();
    const fresh = (await import("node:crypto")).randomBytes(32);
    const ring2 = await src.promote(ring, fresh);
    const ring3 = await src.retire(ring2, [ring2.current.id]);
    for (const r of [ring, ring2, ring3]) for (const id of r.ids()) keys.push(r.get(id).key.toString("hex"));
    out.helper = { calls, keys };
  } catch (e) {
    out.helper = { calls, keys, error: String(e && e.message) };
  } finally {
    delete process.env.NODE_OPTIONS;
  }
}
`,
    ).then((r) => (P = r.out as unknown as PathResult));

    await Promise.all([abstractRun, pathRun]);
  });

  test("the probe works: unconfined (--no-sandbox) it finds the bus, learns the account id from the item and reads the master key; the warning says the keychain is reachable", () => {
    const keys = keysOf(A.ring);
    const r = ok(A.unconfined);
    const p = probeOf(r);
    assert.ok(p, r.stdout);
    assert.ok(p.env["DBUS_SESSION_BUS_ADDRESS"] !== null, "unconfined, the agent has the owner's environment");
    assert.ok(p.found.some((f) => f.account === A.account && keysOf(f.secret)[0] === keys[0]), JSON.stringify(p.tried));
    assert.match(r.stderr, /--no-sandbox: the agent runs unconfined.*the master key in your OS keychain \(through your session's keychain service, as you; .*keychain\.json names the entry\)/);
    // The path bus too, as the owner, from outside any sandbox.
    const direct = probeOf({ ...P.ownerDirect, code: P.ownerDirect.status, ms: 0 });
    assert.ok(direct?.found.some((f) => keysOf(f.secret)[0] === keysOf(P.ring)[0]), P.ownerDirect.stdout + P.ownerDirect.stderr);
  });

  test("default sandbox (network proxy) and --network none: DBUS_SESSION_BUS_ADDRESS and XDG_RUNTIME_DIR withheld, no abstract bus listed or reachable, the path bus and /run/user/UID/bus not there: no master key", () => {
    for (const [name, run, ring, address] of [
      ["abstract/proxy", A.inside, A.ring, A.busAddress],
      ["abstract/none", A.none, A.ring, A.busAddress],
      ["path/proxy", P.inside, P.ring, P.busAddress],
    ] as const) {
      const r = ok(run);
      const p = probeOf(r);
      assert.ok(p, `${name}: the probe ran: ${r.stdout} ${r.stderr}`);
      assert.equal(p.env["DBUS_SESSION_BUS_ADDRESS"], null, name);
      assert.equal(p.env["XDG_RUNTIME_DIR"], null, name);
      assert.deepEqual(p.abstractBuses, [], `${name}: the sandbox's network namespace lists no bus`);
      const given = address.replace(/,guid=.*$/, "");
      assert.ok(p.tried[given] !== undefined && !p.tried[given]!.startsWith("read"), `${name}: ${JSON.stringify(p.tried)}`);
      assert.equal(p.found.length, 0, `${name}: ${JSON.stringify(p.tried)}`);
      assert.ok(!reached(r, keysOf(ring)), `${name}: the master key reached the agent`);
    }
  });

  test("--network host with the bus on a path (Debian's dbus-run-session, systemd's /run/user/UID/bus): the socket is not in the sandbox, no master key", () => {
    const r = ok(P.host);
    const p = probeOf(r);
    assert.ok(p, r.stdout + r.stderr);
    assert.equal(p.env["DBUS_SESSION_BUS_ADDRESS"], null);
    const given = P.busAddress.replace(/,guid=.*$/, "");
    assert.match(p.tried[given] ?? "", /^ENOENT$/, JSON.stringify(p.tried));
    assert.ok(!reached(r, keysOf(P.ring)), JSON.stringify(p.tried));
  });

  test("--network host on a keychain home whose session bus is abstract is refused, naming the bus: the agent never reaches it through /proc/net/unix", () => {
    const r = A.host;
    const p = probeOf(r);
    assert.match(r.stderr, /--network host would let the agent reach your D-Bus session bus/, "refused before it starts, naming why");
    const leaked = p?.found.filter((f) => f.secret.includes("lessor_keyfile")) ?? [];
    assert.ok(
      !reached(r, keysOf(A.ring)),
      `the agent read the master key through ${leaked.map((f) => f.address).join(", ")} (account ${leaked[0]?.account}); buses it saw: ${JSON.stringify(p?.abstractBuses)}; the warning was: ${r.stderr.trim()}`,
    );
  });

  test("a [run] read path holding the session bus socket (the runtime directory) covers the bus, as it covers the key file, SSH_AUTH_SOCK and the daemon socket: the agent cannot connect by path", () => {
    const r = P.shownRuntime;
    const p = probeOf(r);
    assert.ok(p || r.code !== 0, `the probe ran or lessor refused: ${r.stderr}`);
    // Held in the same run: the ssh agent's socket beside it is covered.
    if (p) assert.notEqual(p.dial[P.sshSock], "connected", "the ssh agent socket in the shown directory is reachable");
    assert.ok(!reached(r, keysOf(P.ring)), `the agent read the master key: ${JSON.stringify(p?.tried)}`);
  });

  test("the session bus and keyring under other names are withheld too: DBUS_STARTER_ADDRESS, DBUS_STARTER_BUS_TYPE and GNOME_KEYRING_CONTROL, as DBUS_SESSION_BUS_ADDRESS is", () => {
    const r = ok(A.inside);
    const p = probeOf(r);
    assert.ok(p, r.stdout + r.stderr);
    assert.equal(p.found.length, 0, "the default sandbox cannot reach the abstract bus whatever its address");
    const passed = ["DBUS_STARTER_ADDRESS", "DBUS_STARTER_BUS_TYPE", "GNOME_KEYRING_CONTROL"].filter((k) => p.env[k] !== null);
    assert.deepEqual(passed, [], `the agent was given ${passed.map((k) => `${k}=${p.env[k]}`).join(", ")}`);
  });

  test("a key planted in the entry (by an agent that reached the bus once) does not survive `lessor key rotate`: the rotation makes a fresh key and retires every other, the planted one included", () => {
    const planted = keyIdOf(Buffer.from(ATTACKER_KEY, "hex"));
    const real = keysOf(A.ring).map((k) => keyIdOf(Buffer.from(k, "hex")));
    // Facts of today, which the fix need not change: the planted ring opens (it holds every key in use).
    const status = JSON.parse(ok(A.statusAfterPlant).stdout) as { keyId: string; keyIds: string[] };
    assert.deepEqual(status.keyIds.sort(), [planted, ...real].sort());
    ok(A.rotate);
    assert.equal(ok(A.getOld).stdout, CANARY, "old secrets still read after the rotation");
    const after = keysOf(A.ringAfterRotate);
    assert.ok(
      !after.includes(ATTACKER_KEY),
      `after the owner's rotation the entry's keys are [${after.map((k) => keyIdOf(Buffer.from(k, "hex"))).join(", ")}]: the planted key ${planted} is ${after[0] === ATTACKER_KEY ? "the current master key" : "still held"} (rotate said: ${A.rotate.stdout.trim()}; before it, new secrets were sealed under ${status.keyId})`,
    );
  });

  test("another local user (uid 65534) can reach the bus socket, abstract or a 0777 path, but the bus refuses its EXTERNAL authentication: no item, no key", { skip: IS_ROOT ? false : "needs root (setpriv to uid 65534)" }, () => {
    for (const [name, r, ring] of [
      ["abstract", A.nobody, A.ring],
      ["path", P.nobody, P.ring],
    ] as const) {
      assert.ok(r, name);
      const p = probeOf({ code: r.status, stdout: r.stdout, stderr: r.stderr, ms: 0 });
      assert.ok(p, `${name}: ${r.stdout} ${r.stderr}`);
      assert.equal(p.uid, 65534);
      const given = Object.entries(p.tried).filter(([a]) => a.startsWith(name === "abstract" ? "unix:abstract=" : `unix:path=${pathBox.open}`));
      assert.ok(given.length > 0, JSON.stringify(p.tried));
      for (const [, result] of given) assert.match(result, /^(AUTH_REFUSED|CLOSED|EPIPE|ECONNRESET)$/, `${name}: ${JSON.stringify(p.tried)}`);
      assert.equal(p.found.length, 0);
      assert.ok(!(r.stdout + r.stderr).includes(keysOf(ring)[0]!));
    }
  });

  test("the keychain helper: keys travel on its pipes, never in its argv (which `ps` shows every user); its argv is the same constant script every time; NODE_OPTIONS is not passed on", () => {
    const h = P.helper;
    assert.equal(h.error, undefined, h.error);
    assert.ok(h.keys.length >= 3, "the helper moved keys (load, promote, retire)");
    assert.ok(h.calls.length >= 6, `${h.calls.length} helper calls recorded`);
    const argvs = new Set(h.calls.map((c) => JSON.stringify([c.file, ...c.args])));
    assert.equal(argvs.size, 1, "one constant command line");
    const argv = [...argvs][0]!;
    for (const k of h.keys) {
      assert.ok(!argv.toLowerCase().includes(k), "a key is on the helper's command line");
      assert.ok(!argv.includes(Buffer.from(k, "hex").toString("base64")));
    }
    for (const c of h.calls) {
      assert.equal(c.nodeOptions, null, "NODE_OPTIONS passed to the helper");
      assert.ok(c.stdin, "the request goes on stdin");
    }
  });
});

describe("the keychain marker, attacked by another local user (uid 65534)", { skip: missing !== null ? skip : IS_ROOT ? false : "needs root (setpriv to uid 65534)" }, () => {
  const asNobody = (cmd: string) => spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", cmd], { encoding: "utf8", timeout: 15_000 });
  const markerText = (account: string) => JSON.stringify({ lessor_keychain: 1, service: "lessor", account }) + "\n";

  test("the marker cannot be planted or swapped in the 0700 home, and a marker another user owns (in a shared directory, or chowned) is refused, never followed to an entry of its choosing", async () => {
    const base = mkdtempSync(join(tmpdir(), "lessor-kca-marker-"));
    cleanup.push(base);
    chmodSync(base, 0o755);
    const home = join(base, "home");
    mkdirSync(home, { mode: 0o700 });
    const marker = join(home, "keychain.json");
    writeFileSync(marker, markerText("owner0account"), { mode: 0o600 });

    // Swap or plant in the home: no write or search permission there.
    const swap = asNobody(`printf '%s' '${markerText("attacker1")}' > ${marker}; mv -f /dev/null ${marker} 2>/dev/null; ln -sf /tmp/x ${join(home, "planted.json")}`);
    assert.ok(swap.status !== 0, swap.stderr);
    assert.equal(readFileSync(marker, "utf8"), markerText("owner0account"));
    assert.ok(!existsSync(join(home, "planted.json")));
    assert.equal(keychainKeySource(marker).describe, "keychain lessor/owner0account");

    // [keys] keychain_file pointing into a shared, sticky directory: a marker the other user made there is refused.
    const shared = join(base, "shared");
    mkdirSync(shared);
    chmodSync(shared, 0o1777);
    const theirs = join(shared, "keychain.json");
    const plant = asNobody(`umask 077; printf '%s' '${markerText("attacker2")}' > ${theirs}`);
    assert.equal(plant.status, 0, plant.stderr);
    assert.throws(() => keychainKeySource(theirs), (e: { code?: string }) => e.code === "insecure_permissions");

    // The same marker, the other user's, moved into a private directory of the owner's: still refused (not yours).
    const priv = join(base, "priv");
    mkdirSync(priv, { mode: 0o700 });
    writeFileSync(join(priv, "keychain.json"), markerText("attacker3"), { mode: 0o600 });
    spawnSync("chown", ["65534:65534", join(priv, "keychain.json")]);
    assert.throws(() => keychainKeySource(join(priv, "keychain.json")), (e: { code?: string }) => e.code === "insecure_permissions");
  });
});
