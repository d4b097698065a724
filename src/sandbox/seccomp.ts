/**
 * The sandbox's seccomp filter, as the classic BPF program `bwrap --seccomp FD` loads: keyctl(2),
 * add_key(2) and request_key(2) fail with EPERM (as Flatpak's and Docker's default filters make
 * them), so do io_uring_setup(2), io_uring_enter(2) and io_uring_register(2) (Docker's default
 * profile refuses them too), and socket(2) for AF_VSOCK; every other call is allowed.
 *
 * The kernel's keyrings are in no namespace bwrap makes: the owner's session keyring (`@s`) is
 * inherited across fork and exec, and the user keyring (`@u`) belongs to the uid, so without this
 * the agent would read the keys in them (Kerberos `KEYRING:` caches, cifscreds, tokens stored with
 * keyctl) and add keys there that outlive the run. A new session keyring would still leave `@u`.
 *
 * Nor is vsock: an AF_VSOCK socket needs no device file and belongs to no network namespace, so in a
 * VM guest the agent could reach the host (CID 2) past the empty network namespace and the proxy,
 * a lessor daemon there that serves the VM among it. A socket can be made three ways, each closed:
 * socket(2), whose family the filter reads; io_uring's IORING_OP_SOCKET, which no syscall filter
 * sees, so io_uring is refused whole; and the 32-bit x86 socketcall(2) (a 64-bit program can call it
 * too, with `int $0x80`), whose arguments a filter cannot read, so its SYS_SOCKET is refused whole:
 * a 32-bit program that makes its sockets that way gets none in the sandbox (docs/sandbox.md).
 *
 * Nor may the agent trace bwrap's init (PID 1 inside, its own uid): ptrace(2) and
 * process_vm_readv/writev(2) on pid 1 are refused ({@link PTRACE_SYSCALLS}), or the agent could make
 * it clear its PR_SET_PDEATHSIG and so outlive lessor run.
 */
import { endianness } from "node:os";
import { VaultError } from "../base/errors.js";

/**
 * `struct seccomp_data`: the syscall number at offset 0, the audit architecture at offset 4, the
 * first argument's low 32 bits at offset 16 (on the little-endian machines of {@link SUPPORTED}).
 */
const NR = 0;
const ARCH = 4;
const ARG0 = 16;
/** The second argument's low 32 bits (ptrace's pid: the kernel reads it as a pid_t, its low 32 bits). */
const ARG1 = 24;
/** socket(2)'s address family for vsock. */
export const AF_VSOCK = 40;

const BPF_LD_W_ABS = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K = 0x06; // BPF_RET | BPF_K

export const SECCOMP_RET_ALLOW = 0x7fff0000;
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
const SECCOMP_RET_ERRNO = 0x00050000;
const EPERM = 1;

/** x32's syscalls arrive as x86_64's with this bit set. */
const X32_BIT = 0x40000000;

/**
 * add_key, request_key and keyctl on each architecture a 64-bit x86 or Arm kernel runs a process
 * as (the native one and its 32-bit compat one). A call under any other architecture kills the
 * process: there is none on these machines, and a filter that does not know its numbers cannot
 * hold.
 */
export const KEYRING_SYSCALLS: readonly { arch: number; name: string; nrs: readonly number[] }[] = [
  { arch: 0xc000003e, name: "x86_64", nrs: [248, 249, 250, X32_BIT | 248, X32_BIT | 249, X32_BIT | 250] },
  { arch: 0x40000003, name: "i386", nrs: [286, 287, 288] },
  { arch: 0xc00000b7, name: "aarch64", nrs: [217, 218, 219] },
  { arch: 0x40000028, name: "arm", nrs: [309, 310, 311] },
];

/** socket(2) by architecture (i386's direct call; its socketcall(2) is {@link SOCKETCALL}). */
export const SOCKET_SYSCALLS: Readonly<Record<string, readonly number[]>> = { x86_64: [41, X32_BIT | 41], i386: [359], aarch64: [198], arm: [281] };

/** io_uring_setup, io_uring_enter and io_uring_register: the same numbers on every architecture here. */
export const IO_URING_SYSCALLS: Readonly<Record<string, readonly number[]>> = {
  x86_64: [425, 426, 427, X32_BIT | 425, X32_BIT | 426, X32_BIT | 427],
  i386: [425, 426, 427],
  aarch64: [425, 426, 427],
  arm: [425, 426, 427],
};

/**
 * ptrace(2) (pid: its second argument) and process_vm_readv(2)/process_vm_writev(2) (pid: the first)
 * by architecture, refused for pid 1: bwrap's init, which runs as the agent's uid and would otherwise
 * be the agent's to take over (clear its PR_SET_PDEATHSIG, and the sandbox outlives lessor run). The
 * agent's own processes stay traceable (strace, gdb).
 */
export const PTRACE_SYSCALLS: Readonly<Record<string, readonly number[]>> = { x86_64: [101, X32_BIT | 101, X32_BIT | 521], i386: [26], aarch64: [117], arm: [26] };
export const PROCESS_VM_SYSCALLS: Readonly<Record<string, readonly number[]>> = {
  x86_64: [310, 311, X32_BIT | 310, X32_BIT | 311, X32_BIT | 539, X32_BIT | 540],
  i386: [347, 348],
  aarch64: [270, 271],
  arm: [376, 377],
};
/** The sandbox's init, as the sandbox's PID namespace numbers it. */
export const INIT_PID = 1;

/** i386's socketcall(2) and its first argument's SYS_SOCKET, refused (the family it points at cannot be read). */
export const SOCKETCALL = { arch: "i386", nr: 102, sysSocket: 1 } as const;

/** The Node architectures whose kernel runs only processes of {@link KEYRING_SYSCALLS}' architectures. */
const SUPPORTED = new Set(["x64", "arm64"]);

/** One BPF instruction: `struct sock_filter`. */
interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/** A call refused when its first argument is `value` (socket's family, socketcall's call). */
interface ArgCheck {
  nrs: readonly number[];
  value: number;
  /** Where in `struct seccomp_data` the argument is (its low 32 bits); the first by default. */
  at?: number;
}

/** The filter's instructions (see {@link KEYRING_SYSCALLS}, {@link IO_URING_SYSCALLS}, {@link SOCKET_SYSCALLS} and {@link SOCKETCALL}). */
export function keyringFilterProgram(): Insn[] {
  const p: Insn[] = [{ code: BPF_LD_W_ABS, jt: 0, jf: 0, k: ARCH }];
  for (const { arch, name, nrs } of KEYRING_SYSCALLS) {
    const refused = [...nrs, ...(IO_URING_SYSCALLS[name] ?? [])];
    const checks: ArgCheck[] = [
      { nrs: SOCKET_SYSCALLS[name] ?? [], value: AF_VSOCK },
      { nrs: PTRACE_SYSCALLS[name] ?? [], value: INIT_PID, at: ARG1 },
      { nrs: PROCESS_VM_SYSCALLS[name] ?? [], value: INIT_PID },
    ];
    if (name === SOCKETCALL.arch) checks.push({ nrs: [SOCKETCALL.nr], value: SOCKETCALL.sysSocket });
    // This architecture's block, by index within it: 0 its architecture (else the next block), 1 load
    // the number, then a jump to the refusal per refused call and to its check per checked call,
    // `allow`, each check (load the first argument; its value is refused, else allowed), and the
    // refusal.
    const jumps = checks.reduce((n, c) => n + c.nrs.length, 0);
    const allow = 2 + refused.length + jumps;
    const checkAt = checks.map((_, i) => allow + 1 + 3 * i);
    const refuse = allow + 1 + 3 * checks.length;
    const at = (i: number, target: number): number => target - (i + 1);
    p.push({ code: BPF_JEQ_K, jt: 0, jf: at(0, refuse + 1), k: arch });
    p.push({ code: BPF_LD_W_ABS, jt: 0, jf: 0, k: NR });
    refused.forEach((nr, i) => p.push({ code: BPF_JEQ_K, jt: at(2 + i, refuse), jf: 0, k: nr >>> 0 }));
    let i = 2 + refused.length;
    checks.forEach((c, n) => c.nrs.forEach((nr) => p.push({ code: BPF_JEQ_K, jt: at(i++, checkAt[n]!), jf: 0, k: nr >>> 0 })));
    p.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW });
    checks.forEach((c, n) => {
      p.push({ code: BPF_LD_W_ABS, jt: 0, jf: 0, k: c.at ?? ARG0 });
      p.push({ code: BPF_JEQ_K, jt: at(checkAt[n]! + 1, refuse), jf: 0, k: c.value });
      p.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW });
    });
    p.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | EPERM });
  }
  p.push({ code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_KILL_PROCESS });
  return p;
}

/**
 * The filter as bwrap reads it from its `--seccomp` descriptor: 8 bytes an instruction, in this
 * machine's byte order. Throws `unavailable` on an architecture the filter does not know, so the
 * agent is never started with the owner's keyrings in reach.
 */
export function keyringFilter(arch: string = process.arch): Buffer {
  if (!SUPPORTED.has(arch))
    throw new VaultError(
      "unavailable",
      `lessor run's sandbox keeps the agent from the kernel's keyrings with a seccomp filter that knows x86_64 and aarch64 only, and this machine is ${arch}; run with --no-sandbox to start the agent unconfined (it can then read your files and the vault's key)`,
    );
  const prog = keyringFilterProgram();
  const buf = Buffer.alloc(prog.length * 8);
  const le = endianness() === "LE";
  prog.forEach((x, i) => {
    const o = i * 8;
    if (le) buf.writeUInt16LE(x.code, o);
    else buf.writeUInt16BE(x.code, o);
    buf.writeUInt8(x.jt, o + 2);
    buf.writeUInt8(x.jf, o + 3);
    if (le) buf.writeUInt32LE(x.k, o + 4);
    else buf.writeUInt32BE(x.k, o + 4);
  });
  return buf;
}
