/**
 * `lessor run`'s bubblewrap sandbox, attacked from inside by a hostile agent: process state the
 * kernel does not put in any namespace bwrap makes (the session keyring), /proc as the owner root
 * sees it, and credentials in the owner's environment that the allow-list lets through.
 *
 * Real parts only: the built CLI, real bwrap, real keyctl(2) calls (perl's syscall, x86_64 numbers),
 * a fresh session keyring of the test's own (never the test runner's), temporary directories. The
 * sysctl test writes fs.lease-break-time's current value (a no-op were it to pass) and only asks
 * access(2) about the others.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { BIN, runProcess, type CliResult } from "./cli-harness.js";
import { ATTACKERS_POLICY, HAVE_BWRAP, makeOwner as newOwner, runAgent } from "./run-harness.js";

const NODE = process.execPath;
const IS_ROOT = typeof process.getuid === "function" && process.getuid() === 0;
const PERL = "/usr/bin/perl";
const skip = !HAVE_BWRAP ? "bwrap is not installed or user namespaces are off" : false;
const skipKeyring = skip || (process.arch !== "x64" ? "keyctl syscall numbers are x86_64's" : !existsSync(PERL) ? "needs /usr/bin/perl" : false);

const root = mkdtempSync(join(tmpdir(), "lessor-sbxescape-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

const MASTER_KEY = randomBytes(32).toString("hex");
const GRANTED = `granted-${randomBytes(12).toString("hex")}`;
const makeOwner = (name: string) => newOwner({ root, name, masterKey: MASTER_KEY, policy: ATTACKERS_POLICY, secrets: [{ name: "granted", value: GRANTED }] });

describe("the owner's kernel session keyring", { skip: skipKeyring }, () => {
  // keyctl(2) = 250, add_key(2) = 248 on x86_64. KEY_SPEC_SESSION_KEYRING = -3.
  // Outside: join a new session keyring of the test's own, put a canary key in it, run lessor run as
  // a child (it inherits the session keyring, as every process of a login session does), then look
  // for a key the agent planted there.
  const OUTER = String.raw`
my $ses = "lessor-attack-session"; syscall(250, 1, $ses) >= 0 or die "join: $!";
my ($t, $d, $v) = ("user", "lessor-owner-canary", $ENV{KEYRING_CANARY});
syscall(248, $t, $d, $v, length($v), -3) >= 0 or die "add: $!";
system(@ARGV);
my $p = "agent-planted"; my $id = syscall(250, 10, -3, $t, $p, 0);
print "after-run planted=" . ($id < 0 ? "no" : "yes") . "\n";
`;
  // Inside the sandbox: read the owner's key from the inherited session keyring, and plant one.
  const INNER = String.raw`
my ($t, $d) = ("user", "lessor-owner-canary");
my $id = syscall(250, 10, -3, $t, $d, 0);
if ($id < 0) { print "inside read=refused:$!\n" } else {
  my $buf = "\0" x 512; my $n = syscall(250, 11, $id, $buf, 512);
  print "inside read=" . ($n < 0 ? "refused:$!" : substr($buf, 0, $n)) . "\n";
}
my ($p, $v) = ("agent-planted", "from-the-sandbox");
print "inside plant=" . (syscall(248, $t, $p, $v, length($v), -3) < 0 ? "refused:$!" : "done") . "\n";
`;
  let result: Promise<{ out: string; canary: string }> | null = null;
  const once = () =>
    (result ??= (async () => {
      const o = await makeOwner("keyring");
      const canary = `canary-keyring-${randomBytes(8).toString("hex")}`;
      const r = await runProcess(PERL, ["-e", OUTER, NODE, "--", BIN, "run", "--agent", "attacker-keyring", "--", PERL, "-e", INNER], {
        cwd: o.project,
        env: { ...o.env, KEYRING_CANARY: canary },
        timeoutMs: 40_000,
      });
      return { out: r.stdout + r.stderr, canary };
    })());

  test("sanity: unconfined, a child of the owner's session reads the key (the probe works)", async () => {
    const canary = `canary-keyring-${randomBytes(8).toString("hex")}`;
    const r = await runProcess(PERL, ["-e", OUTER, PERL, "-e", INNER], { env: { PATH: "/usr/bin:/bin", KEYRING_CANARY: canary } });
    assert.match(r.stdout, new RegExp(`inside read=${canary}`), r.stdout + r.stderr);
  });

  test("the sandboxed agent cannot read a secret in the owner's kernel session keyring (docs/sandbox.md: keyctl, add_key and request_key fail with EPERM; Kerberos KEYRING: caches, cifscreds, keyctl-stored tokens live there)", async () => {
    const { out, canary } = await once();
    assert.match(out, /inside read=/, out); // the probe ran inside
    assert.doesNotMatch(out, new RegExp(canary), `the owner's session keyring is the sandbox's too:\n${out}`);
  });

  test("the sandboxed agent cannot plant a key in the owner's session keyring, to outlive the run", async () => {
    const { out } = await once();
    assert.match(out, /after-run planted=/, out);
    assert.match(out, /after-run planted=no/, `a key the agent added is in the owner's login session keyring after the run:\n${out}`);
    assert.match(out, /inside plant=refused:Operation not permitted/, out);
    assert.match(out, /inside read=refused:Operation not permitted/, out);
  });
});

describe("vsock, which no network namespace holds", { skip: skip || (!existsSync(PERL) ? "needs /usr/bin/perl" : false) }, () => {
  // socket(2) with family 40 (AF_VSOCK), type 1 (SOCK_STREAM): no connect, so no packet goes anywhere.
  const PROBE = String.raw`socket(my $s, 40, 1, 0) ? print "vsock=open
" : print "vsock=refused:$!
";`;

  test("attack: the sandboxed agent cannot open an AF_VSOCK socket (in a VM guest it would reach the host past the empty network namespace and the proxy)", async () => {
    // Unconfined, this kernel makes one (this machine is a VM guest with vsock), or says it has no vsock.
    const outside = await runProcess(PERL, ["-e", PROBE], { env: { PATH: "/usr/bin:/bin" } });
    assert.match(outside.stdout, /vsock=(open|refused:Address family not supported)/, outside.stdout + outside.stderr);
    const o = await makeOwner("vsock");
    const r = await runProcess(NODE, [BIN, "run", "--agent", "attacker-vsock", "--", PERL, "-e", PROBE], { cwd: o.project, env: o.env, timeoutMs: 40_000 });
    assert.match(r.stdout, /vsock=refused:Operation not permitted/, `the sandbox let the agent open a vsock socket:\n${r.stdout}${r.stderr}`);
  });
});

describe("sockets made past socket(2): io_uring, and the 32-bit socketcall from a 64-bit program", { skip: skip || (spawnSync("cc", ["--version"]).status !== 0 ? "needs a C compiler (cc)" : process.arch !== "x64" ? "the probe's socketcall is x86_64's" : false) }, () => {
  test("attack: the sandboxed agent cannot make an AF_VSOCK socket with io_uring's IORING_OP_SOCKET or with int $0x80 socketcall, which no socket(2) family check sees", async () => {
    const o = await makeOwner("sockets");
    const probe = join(o.project, "socket-probes");
    const cc = spawnSync("cc", ["-O1", "-o", probe, fileURLToPath(new URL("./fixtures/socket-probes.c", import.meta.url))], { encoding: "utf8" });
    assert.equal(cc.status, 0, cc.stderr);
    for (const how of ["uring", "socketcall"]) {
      // Unconfined, each way makes one here (this machine is a VM guest with vsock), or the kernel has none.
      const outside = await runProcess(probe, [how, "40"], { env: { PATH: "/usr/bin:/bin" } });
      if (how === "socketcall" && outside.stdout === "" && outside.signal === "SIGSEGV") {
        // A kernel without the 32-bit syscall gate (IA32 emulation off at boot): int $0x80 faults, so
        // no program can make a socket this way here, inside or out. Inside it must not either.
        const r = await runProcess(NODE, [BIN, "run", "--agent", "attacker-sockets", "--", probe, how, "40"], { cwd: o.project, env: o.env, timeoutMs: 40_000 });
        assert.doesNotMatch(r.stdout, /socketcall=open/, r.stdout + r.stderr);
        continue;
      }
      assert.match(outside.stdout, new RegExp(`${how}=(open family=40|refused:(Address family not supported|Operation not supported))`), outside.stdout + outside.stderr);
      const r = await runProcess(NODE, [BIN, "run", "--agent", "attacker-sockets", "--", probe, how, "40"], { cwd: o.project, env: o.env, timeoutMs: 40_000 });
      assert.match(r.stdout, new RegExp(`${how}=refused:Operation not permitted`), `the sandbox let the agent make a vsock socket (${how}):\n${r.stdout}${r.stderr}`);
    }
    // An ordinary socket(2) of another family still works inside (the filter refuses vsock, not sockets).
    const inet = await runProcess(NODE, [BIN, "run", "--agent", "attacker-sockets", "--", PERL, "-e", 'socket(my $s, 2, 1, 0) ? print "inet=open\n" : print "inet=refused:$!\n";'], { cwd: o.project, env: o.env, timeoutMs: 40_000 });
    assert.match(inet.stdout, /inet=open/, inet.stdout + inet.stderr);
  });
});

describe("/proc inside, when the owner is root", { skip: skip || (!IS_ROOT ? "only root's agent is kuid 0" : false) }, () => {
  test("the agent of a root owner cannot write the machine's sysctls through /proc/sys, nor /proc's other machine-wide files (kernel.core_pattern would run its program as real root, outside the sandbox)", async () => {
    const o = await makeOwner("procsys");
    const knob = "/proc/sys/fs/lease-break-time"; // harmless: the seconds a lease holder gets
    const before = readFileSync(knob, "utf8").trim();
    let seenOutside = before;
    let r: CliResult | null = null;
    try {
      // The write is of the value already there: were the mount writable, nothing would change.
      // Never kernel.core_pattern itself here: the same write there, with "|/project/evil", runs the
      // agent's program as root in the host's namespaces at the next crash of any process.
      // The others are only asked about (test -w is access(2): EROFS on a read-only mount); a write to
      // /proc/sysrq-trigger is a command to the kernel.
      const others = ["/proc/sysrq-trigger", "/proc/irq", "/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe"];
      r = await runAgent(
        o.project,
        o.env,
        "attacker-procsys",
        [],
        `grep ' /proc' /proc/self/mountinfo; (echo ${before} > ${knob}) 2>&1 && echo sysctl=written || echo sysctl=refused; for f in ${others.join(" ")}; do [ -e $f ] && { [ -w $f ] && echo "writable=$f" || echo "read-only=$f"; }; done; cat /proc/keys /proc/kcore 2>/dev/null | head -c 64 | wc -c | sed 's/^/masked-bytes=/'`,
      );
      seenOutside = readFileSync(knob, "utf8").trim();
    } finally {
      if (readFileSync(knob, "utf8").trim() !== before) writeFileSync(knob, `${before}\n`);
    }
    assert.ok(r !== null);
    assert.match(r.stdout + r.stderr, /sysctl=/, r.stdout + r.stderr);
    assert.equal(seenOutside, before, `the sandboxed agent changed the host's ${knob}:\n${r.stdout}${r.stderr}`);
    assert.match(r.stdout, /sysctl=refused/, r.stdout + r.stderr);
    assert.match(r.stdout, /Read-only file system/, r.stdout);
    assert.doesNotMatch(r.stdout, /writable=/, r.stdout);
    // Those this kernel has (no CONFIG_MAGIC_SYSRQ: no /proc/sysrq-trigger; no modules: no kernel.modprobe).
    for (const f of ["/proc/sysrq-trigger", "/proc/irq", "/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe"].filter((f) => existsSync(f)))
      assert.match(r.stdout, new RegExp(`read-only=${f}\n`), r.stdout);
    assert.match(r.stdout, /masked-bytes=0/, r.stdout);
  });
});

describe("credentials in the owner's environment", { skip }, () => {
  test("a URL with the password in its user info is withheld and named (holds)", async () => {
    const o = await makeOwner("env-userinfo");
    const canary = `canary-pw-${randomBytes(6).toString("hex")}`;
    const r = await runAgent(o.project, { ...o.env, DATABASE_URL: `postgres://app:${canary}@db.internal/app` }, "attacker-env", [], "env");
    assert.doesNotMatch(r.stdout, new RegExp(canary));
    assert.match(r.stderr, /DATABASE_URL/);
  });

  test("a URL with the password in its query (libpq's and node-postgres's ?password=, JDBC's) is withheld and named (docs/sandbox.md: any value that is a URL with a password in it is withheld)", async () => {
    const o = await makeOwner("env-query");
    const c1 = `canary-pw-${randomBytes(6).toString("hex")}`;
    const c2 = `canary-pw-${randomBytes(6).toString("hex")}`;
    const env = { ...o.env, DATABASE_URL: `postgres://app@db.internal:5432/app?sslmode=require&password=${c1}`, JDBC_DATABASE_URL: `jdbc:postgresql://db.internal/app?user=app&password=${c2}` };
    const r = await runAgent(o.project, env, "attacker-env", [], "env");
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stdout, new RegExp(c1), `DATABASE_URL with ?password= reached the agent:\n${r.stdout.split("\n").filter((l) => l.includes("URL")).join("\n")}`);
    assert.doesNotMatch(r.stdout, new RegExp(c2), "JDBC_DATABASE_URL with password= reached the agent");
    assert.match(r.stderr, /DATABASE_URL/);
    assert.match(r.stderr, /JDBC_DATABASE_URL/);
    assert.doesNotMatch(r.stderr, new RegExp(`${c1}|${c2}`), "the stderr line names the variables, not their values");
  });
});

describe("the pieces, unit by unit", () => {
  /** Runs a classic BPF seccomp program on one (arch, nr), as the kernel would: returns its verdict. */
  const runFilter = (prog: { code: number; jt: number; jf: number; k: number }[], arch: number, nr: number, arg0 = 0): number => {
    let a = 0;
    for (let pc = 0; pc < prog.length; pc++) {
      const x = prog[pc]!;
      if (x.code === 0x20) a = x.k === 0 ? nr >>> 0 : x.k === 4 ? arch >>> 0 : x.k === 16 ? arg0 >>> 0 : assert.fail(`load at ${x.k}`);
      else if (x.code === 0x15) pc += a === x.k >>> 0 ? x.jt : x.jf;
      else if (x.code === 0x06) return x.k >>> 0;
      else assert.fail(`unknown instruction ${x.code}`);
    }
    return assert.fail("fell off the end");
  };

  test("the seccomp filter refuses add_key, request_key and keyctl with EPERM on each architecture, x32 too, allows the rest, and kills an unknown architecture", async () => {
    const { keyringFilter, keyringFilterProgram, KEYRING_SYSCALLS, SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS } = await import("../src/sandbox/seccomp.js");
    const prog = keyringFilterProgram();
    const EPERM = 0x00050001;
    const keyring: Record<string, number[]> = { x86_64: [248, 249, 250, 0x40000000 + 248, 0x40000000 + 249, 0x40000000 + 250], i386: [286, 287, 288], aarch64: [217, 218, 219], arm: [309, 310, 311] };
    for (const { arch, name } of KEYRING_SYSCALLS) {
      for (const nr of keyring[name]!) assert.equal(runFilter(prog, arch, nr), EPERM, `${name} ${nr}`);
      for (const nr of [0, 1, 59, 60, 221, 247, 251, 285, 289, 308, 312, 0x40000000 + 59, 0xffffffff]) assert.equal(runFilter(prog, arch, nr), SECCOMP_RET_ALLOW, `${name} ${nr}`);
    }
    assert.equal(runFilter(prog, 0xc00000f3 /* riscv64 */, 219), SECCOMP_RET_KILL_PROCESS);
    // socket(2): AF_VSOCK (40) refused on each architecture, every other family allowed.
    const socket: Record<string, number[]> = { x86_64: [41, 0x40000000 + 41], i386: [359], aarch64: [198], arm: [281] };
    for (const { arch, name } of KEYRING_SYSCALLS)
      for (const nr of socket[name]!) {
        assert.equal(runFilter(prog, arch, nr, 40), EPERM, `${name} socket(AF_VSOCK)`);
        for (const family of [1, 2, 10, 16, 17, 39, 41]) assert.equal(runFilter(prog, arch, nr, family), SECCOMP_RET_ALLOW, `${name} socket(${family})`);
      }
    // Another call with 40 as its first argument is not refused for it (read(40, …)).
    assert.equal(runFilter(prog, 0xc000003e, 0, 40), SECCOMP_RET_ALLOW);
    // io_uring_setup, io_uring_enter and io_uring_register: refused on each architecture, x32 too.
    for (const { arch, name } of KEYRING_SYSCALLS)
      for (const nr of [425, 426, 427, ...(name === "x86_64" ? [0x40000000 + 425, 0x40000000 + 426, 0x40000000 + 427] : [])]) assert.equal(runFilter(prog, arch, nr), EPERM, `${name} io_uring ${nr}`);
    // i386's socketcall: SYS_SOCKET (1) refused whatever the family; its other calls allowed; 102 is
    // another call (getuid) on x86_64 and allowed there.
    assert.equal(runFilter(prog, 0x40000003, 102, 1), EPERM);
    for (const call of [2, 3, 5, 8, 9, 10]) assert.equal(runFilter(prog, 0x40000003, 102, call), SECCOMP_RET_ALLOW, `socketcall ${call}`);
    assert.equal(runFilter(prog, 0xc000003e, 102, 1), SECCOMP_RET_ALLOW);
    const buf = keyringFilter("x64");
    assert.equal(buf.length, prog.length * 8);
    assert.equal(buf.readUInt16LE(0), 0x20);
    assert.equal(buf.readUInt32LE(4), 4);
    assert.throws(() => keyringFilter("riscv64"), (e: Error & { code?: string }) => e.code === "unavailable" && /--no-sandbox/.test(e.message));
  });

  test("/proc's machine-wide parts are bound read-only or covered where this kernel has them, after the fresh /proc", async () => {
    const { procCovers, bwrapArgs, SECCOMP_FD } = await import("../src/sandbox/bwrap-args.js");
    const all = procCovers(() => true);
    for (const p of ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"]) assert.ok(all.join("\0").includes(`--ro-bind\0${p}\0${p}`), p);
    for (const p of ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"]) assert.ok(all.join("\0").includes(`--ro-bind\0/dev/null\0${p}`), p);
    for (const p of ["/proc/acpi", "/proc/scsi"]) assert.ok(all.join("\0").includes(`--tmpfs\0${p}\0--remount-ro\0${p}`), p);
    assert.deepEqual(procCovers(() => false), [], "nothing this kernel lacks (bwrap cannot make a file in /proc)");
    const layout = { mounts: [], pinned: [], locked: [], readOnly: [], sealed: [], sealedFiles: [], masks: [], cwd: "/" } as unknown as Parameters<typeof bwrapArgs>[0];
    const args = bwrapArgs(layout, {}, { disableUserns: false });
    const proc = args.indexOf("--proc");
    assert.ok(proc >= 0 && args.indexOf("/proc/sys") > proc, "after --proc /proc");
    assert.equal(args[args.indexOf("--seccomp") + 1], String(SECCOMP_FD));
  });

  test("a URL's credential parameters are found wherever the URL starts; other parameters pass", async () => {
    const { withheldReason } = await import("../src/sandbox/env.js");
    for (const v of [
      "postgres://app@db/app?sslmode=require&password=x",
      "postgres://app@db/app?PASSWORD=x",
      "postgres://app@db/app?sslpassword=x",
      "mysql://db/app?user=app&pwd=x",
      "jdbc:postgresql://db/app?user=app&password=x",
      "jdbc:sqlserver://db:1433;databaseName=app;user=app;password=x",
      "jdbc:mysql://app:x@db/app",
      "https://api.example.com/v1?access_token=x",
      "https://api.example.com/v1?api_key=x",
      "https://api.example.com/v1?apikey=x",
      "https://api.example.com/v1?client_secret=x",
      "https://bucket.s3.amazonaws.com/o?X-Amz-Security-Token=x",
      "https://example.com/cb#token=x",
      "redis://cache:6379/0?pass%77ord=x",
      "ftp://db/?pass=x",
    ])
      assert.equal(withheldReason("SOME_URL", v), "credential", v);
    for (const v of [
      "postgres://app@db/app?sslmode=require",
      "postgres://app@db/app?password=",
      "jdbc:postgresql://db/app?user=app",
      "https://example.com/?page=2&bypass=1",
      "https://example.com/path;v=1",
      "not a url ?password=x",
      "password=x",
    ])
      assert.equal(withheldReason("SOME_URL", v), null, v);
  });
});
