/**
 * `lessor run`'s sandbox (src/sandbox/, docs/sandbox.md): what it must not show, taken from the
 * home's lessor.toml and the environment; the layout, the command's path and bwrap are checked
 * before any lease is taken, so a run that cannot be confined never takes one.
 */
import { accessSync, closeSync, constants, existsSync, readdirSync, readFileSync, realpathSync, statSync, type Stats } from "node:fs";
import { createRequire } from "node:module";
import { homedir, userInfo } from "node:os";
import { delimiter, dirname, isAbsolute, join, resolve, sep } from "node:path";
import { VaultError } from "../../base/errors.js";
import { LESSOR_SECRET_VARIABLES } from "../../base/secret-env.js";
import { loadConfig } from "../../config/load.js";
import { HOME_FILES, inHome, resolveHome } from "../../config/home.js";
import type { Config } from "../../config/config.js";
import { parseRunNetwork, type RunNetwork } from "../../config/run-config.js";
import { bwrapArgs, copiedFiles } from "../../sandbox/bwrap-args.js";
import { bridgeCommand, LISTENER_WAIT_MS, nativeBridgeCommand, SANDBOX_PROXY_DIR } from "../../sandbox/bridge.js";
import { bwrapMissingError, findBwrap, probeSandbox, type BwrapFeatures } from "../../sandbox/detect.js";
import { pathsNamedBy, withheldReason } from "../../sandbox/env.js";
import { CREDENTIAL_STORES, expandHome, expandStore } from "../../sandbox/hidden.js";
import { planLayout, shows, writableAt, type Layout, type Protected } from "../../sandbox/layout.js";
import { startSandboxed, type Sandboxed, type StdioKind } from "../../sandbox/launch.js";
import type { EnvVar, VarRefs } from "./child-env.js";
import { configuredPrograms, refuseWritablePrograms, replaceableAt } from "./owner-programs.js";
import { programTrustProblem } from "../../fs/perms.js";
import { loadHandoff, type Handoff } from "../../native/handoff.js";

/** Where the vault's own files are, for the sandbox to hide and for the --no-sandbox warning. */
export interface VaultPaths {
  home: string;
  keyFile: string;
  socket: string;
  config: Config;
}

/** The home, its configuration, and the key file and socket it names. */
export function vaultPaths(homeOption: string | undefined, env: NodeJS.ProcessEnv): VaultPaths {
  const home = resolveHome(homeOption, env);
  const config = loadConfig(home);
  const socket = env["LESSOR_SOCKET"] ? resolve(env["LESSOR_SOCKET"]) : inHome(home, config.server.socket);
  return { home, keyFile: inHome(home, config.keys.file), socket, config };
}

/**
 * The one line `--no-sandbox` prints: what the unconfined agent can reach. When one of lessor's own
 * secrets (src/base/secret-env.ts: the master key, the passphrase, the token, the database's URL) is
 * in lessor's own environment, the line says so: the agent is not given them; it can read them from
 * lessor's /proc/PID/environ unless lessor is `shielded` (non-dumpable, src/native/no-dump.ts, and not
 * root, whose processes read any), and from any other process of the owner's started with them.
 */
export function noSandboxWarning(p: VaultPaths, env: NodeJS.ProcessEnv = {}, shielded = false): string {
  // Those src/cli/run/child-env.ts withholds from the command (PGPASSWORD is passed as your other credentials are).
  const inEnv = LESSOR_SECRET_VARIABLES.filter((k) => k.startsWith("LESSOR_") && env[k]);
  const vars = inEnv.join(" and ");
  const fromEnv =
    inEnv.length === 0
      ? ""
      : shielded
        ? `, ${vars} from any other process of yours started with them (not from lessor's own /proc/${process.pid}/environ, which is closed to your other processes)`
        : `, ${vars} from lessor's environment (/proc/${process.pid}/environ)`;
  return `lessor: warning: --no-sandbox: the agent runs unconfined, as you: it can read all your files (~/.ssh, ~/.aws and the rest), ${keyWhere(p)} and home ${p.home}${fromEnv}, and connect to the daemon's socket ${p.socket}`;
}

/** Where the master key is, as the warning names it: the key source the home actually has. */
function keyWhere(p: VaultPaths): string {
  const marker = inHome(p.home, p.config.keys.keychainFile);
  const store = inHome(p.home, p.config.keys.passphraseFile);
  if (!existsSync(p.keyFile) && existsSync(marker))
    return `the master key in your OS keychain (through your session's keychain service, as you; ${marker} names the entry)`;
  if (!existsSync(p.keyFile) && existsSync(store)) return `the vault's passphrase-sealed key store ${store}`;
  if (existsSync(p.keyFile)) return `the vault's key file ${p.keyFile}`;
  const command = p.config.keys.command;
  if (command !== null && command !== undefined && command.length > 0) return `the master key by running the key command ${JSON.stringify(command[0])} as you`;
  return "the master key wherever you keep it";
}

/**
 * True when the session bus listens on an abstract Unix socket (`unix:abstract=`, or `unix:tmpdir=`
 * which is abstract on Linux): such a socket lives in the network namespace, not the filesystem, so
 * `--network host` would hand it to the agent.
 */
export function sessionBusIsAbstract(env: NodeJS.ProcessEnv): boolean {
  return [env["DBUS_SESSION_BUS_ADDRESS"], env["DBUS_STARTER_ADDRESS"]].some((a) => a !== undefined && /(^|;)unix:([^;]*,)?(abstract|tmpdir)=/.test(a));
}

/** Directories that hold a socket among other things: hiding one would hide too much. */
const SHARED_DIRS = ["/", "/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm"];

/** What the sandbox must not show: the vault's files, the caller's token, the owner's credential stores. */
function protectedPaths(p: VaultPaths, env: NodeJS.ProcessEnv, home: string | undefined, passwdHome?: string): Protected[] {
  const c = p.config;
  const out: Protected[] = [
    { path: p.home, what: "the lessor home" },
    { path: p.keyFile, what: "the vault's key file" },
    { path: inHome(p.home, c.keys.passphraseFile), what: "the vault's passphrase key store" },
    { path: inHome(p.home, HOME_FILES.config), what: "the vault's configuration" },
    { path: inHome(p.home, HOME_FILES.database), what: "the vault's database" },
    { path: inHome(p.home, c.policyFile), what: "the vault's policy" },
    { path: p.socket, what: "the daemon's socket" },
  ];
  // A file is covered by a /dev/null bind on its dentry, which the kernel detaches when the file is
  // replaced by rename on the owner's side: `lessor key rotate` writes the key file and the passphrase
  // store that way, so the running agent would read the new key there. Kept outside the lessor home,
  // their directory (private, 0700, as src/crypto/keys/common.ts requires) is covered as a whole, whose
  // mount no rename inside it removes; unless it is the owner's home or a shared directory, where the
  // file alone is covered.
  for (const [file, what] of [
    [p.keyFile, "the directory of the vault's key file"],
    [inHome(p.home, c.keys.passphraseFile), "the directory of the vault's passphrase key store"],
  ] as const) {
    const dir = dirname(file);
    if (dir === p.home || dir === home || dir === passwdHome || dir === "/" || SHARED_DIRS.includes(dir)) continue;
    out.push({ path: dir, what });
  }
  // The socket's directory too, unless it is a shared one (/tmp, /run, the home): then the socket alone.
  const socketDir = dirname(p.socket);
  if (!SHARED_DIRS.includes(socketDir) && socketDir !== home) out.push({ path: socketDir, what: "the daemon's socket directory" });
  if (c.auditJsonl !== null) out.push({ path: inHome(p.home, c.auditJsonl), what: "the vault's audit file" });
  // What the owner's environment names and lessor withholds from the agent (src/sandbox/env.ts): the ssh
  // agent's socket (it would sign as the owner), the D-Bus session bus (through it, as the owner, the
  // OS keychain gives up what it holds, a keychain home's master key included), Docker's socket,
  // GNUPGHOME, KUBECONFIG, PGPASSFILE… Withholding the variable alone would leave what it names to be
  // found by name. A relative one is what the tools (and lessor) read from this directory: covered there.
  for (const { path, what } of pathsNamedBy(env, process.cwd())) out.push({ path, what });
  const runtime = env["XDG_RUNTIME_DIR"];
  if (runtime && isAbsolute(runtime)) {
    out.push({ path: join(runtime, "bus"), what: "your D-Bus session bus" });
    out.push({ path: join(runtime, "keyring"), what: "your keyring daemon's sockets" });
  }
  for (const s of [...CREDENTIAL_STORES, ...c.run.hide]) {
    for (const h of passwdHome !== undefined && passwdHome !== home ? [home, passwdHome] : [home]) {
      for (const path of expandStore(s, h)) out.push({ path, what: `a credential store (${s})` });
    }
  }
  return out;
}

/** The owner's home from the passwd database, or undefined when it cannot be read. */
function ownerHome(): string | undefined {
  try {
    const h = userInfo().homedir;
    return h && isAbsolute(h) ? resolve(h) : undefined;
  } catch {
    return undefined;
  }
}

/** The owner's runtime directories: $XDG_RUNTIME_DIR and /run/user/UID (sockets of the owner's services). */
function runtimeDirs(env: NodeJS.ProcessEnv): string[] {
  const out: string[] = [];
  const x = env["XDG_RUNTIME_DIR"];
  if (x && isAbsolute(x)) out.push(resolve(x));
  const uid = process.getuid?.();
  if (uid !== undefined) out.push(`/run/user/${uid}`);
  return out;
}

/**
 * The first `cmd` on `pathValue` (or `cmd` itself when it holds a slash), as execvp would find it:
 * a candidate that exists but is not an executable regular file (a directory, a FIFO, a file without
 * x) makes it "not executable" (EACCES, exit 126) unless a later one runs, as execve's EACCES does.
 */
export function findCommand(cmd: string, pathValue: string | undefined, cwd: string): { path: string } | { error: "ENOENT" | "EACCES" } {
  const candidates = cmd.includes("/") ? [resolve(cwd, cmd)] : (pathValue ?? "/usr/bin:/bin").split(delimiter).map((d) => join(resolve(cwd, d || "."), cmd));
  let denied = false;
  for (const c of candidates) {
    try {
      if (!statSync(c).isFile()) {
        denied = true;
        continue;
      }
      accessSync(c, constants.X_OK);
      return { path: c };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EACCES") denied = true;
    }
  }
  return { error: denied ? "EACCES" : "ENOENT" };
}

/** A sandbox made ready for one run. */
export interface RunSandbox {
  layout: Layout;
  /** The command's path, or why it cannot be run (reported as an unconfined run reports it). */
  command: { path: string } | { error: "ENOENT" | "EACCES" };
  /** Resolves once bwrap is known to work here; rejects with the reason it does not. */
  ready: Promise<BwrapFeatures>;
  /** The sandbox's network: "proxy" (loopback, and lessor's proxy through the bridge), "none" (loopback only) or "host". */
  network: RunNetwork;
  /**
   * Which bridge leads the agent to the proxy (network "proxy"): "native", whose listening socket the
   * proxy accepts on itself ({@link SandboxedRun.listener}), or "node", which relays each connection
   * to the proxy's Unix socket in the run's directory (when the addon or its helper is not built).
   */
  bridge: "native" | "node";
  /**
   * The child's environment in the sandbox: lessor's own variables and the owner's session sockets
   * dropped; credentials that came as plain values from the owner's environment dropped and named
   * in `withheld` (a reference or an --env-file line passes).
   */
  childEnv(env: Record<string, string>, vars: Map<string, EnvVar>, found: VarRefs[]): { env: Record<string, string>; withheld: string[] };
  /**
   * Starts the command (`features`: what {@link RunSandbox.ready} found). With `proxyDir` (network
   * "proxy"), that directory is shown at /run/lessor and the command runs behind the bridge
   * (src/sandbox/bridge.ts). Without it, `runDir` (the vault session's own directory, network "none"
   * or "host") is shown there instead, with no bridge.
   */
  start(features: BwrapFeatures, args: string[], env: Record<string, string>, stdio: StdioKind[], proxyDir?: string, runDir?: string): SandboxedRun;
}

/** A started sandbox, and with the native bridge the listening socket it hands over. */
export interface SandboxedRun extends Sandboxed {
  /**
   * With the native bridge: resolves with the descriptor of the socket listening on the bridge's port
   * in the sandbox, for the proxy to accept on (its owner from then on); rejects with code EPIPE when
   * bwrap or the bridge failed before handing it over (both say why on stderr), or another code when
   * something else arrived or nothing did in {@link LISTENER_WAIT_MS}.
   */
  listener?: Promise<number>;
}

/**
 * Refuses a bwrap that the sandboxed agent could write (found on PATH in the project, a virtualenv's
 * bin in it, a `[run] write` path; or reached through a directory or link there: {@link replaceableAt}):
 * an agent of an earlier run could have replaced it, and lessor runs it as the owner, unconfined, with
 * the child's environment in its arguments. (One it put in a writable PATH directory searched before
 * the system's is the one found next time, and refused then.) Throws VaultError("invalid_request").
 */
export function refuseWritableBwrap(bwrap: string, layout: Layout): void {
  const r = replaceableAt(layout, bwrap);
  if (r !== null)
    throw new VaultError(
      "invalid_request",
      `the bwrap found on PATH, ${bwrap}, is inside ${r.at}, which the sandboxed agent can write${r.via === bwrap ? "" : ` (${r.via}, on the way to it)`}: an agent of an earlier run could have replaced it, and lessor runs bwrap as you, outside any sandbox; install bubblewrap system-wide and take that directory off PATH (or put it after /usr/bin). The command was not started`,
    );
}

/**
 * Refuses a bwrap another local user could change: lessor runs it as you, outside any sandbox, and
 * hands it the command's environment (leased values among it), so it is held to the rule of the
 * other programs lessor runs as the owner (src/fs/perms.ts programTrustProblem): a regular file of
 * yours or root's that no one else can write, in directories no one else can write, as found on PATH
 * and as its real path. Throws VaultError("insecure_permissions").
 */
export function refuseUntrustedBwrap(bwrap: string): void {
  let problem: ReturnType<typeof programTrustProblem>;
  try {
    problem = programTrustProblem(bwrap, {
      what: "the bwrap found on PATH",
      who: "who could run their code as you, outside any sandbox, with what lessor hands the agent",
      elsewhere: "install bubblewrap system-wide and take that directory off PATH (or put it after /usr/bin)",
    });
  } catch {
    return; // gone since it was found: starting it fails as not installed
  }
  if (problem !== null) throw new VaultError("insecure_permissions", `${problem.message}. The command was not started`);
}

/** The npm packages lessor loads from node_modules at run time (the rest is bundled into dist/). */
const EXTERNAL_PACKAGES = ["better-sqlite3", "@node-rs/argon2", "pino", "@napi-rs/keyring"];
/** At most this many packages are followed from them (pino's tree is the largest, a few dozen). */
const MAX_PACKAGES = 400;

/**
 * Where the code of this lessor comes from: the command as started (`process.argv[1]`, a
 * `node_modules/.bin` link say) and its real file, the package directory holding it, the packages it
 * loads from node_modules, and the Node binary running it. Paths that cannot be found are left out.
 */
export function lessorCodePaths(): string[] {
  const out = new Set<string>();
  const add = (p: string | undefined): void => {
    if (p === undefined || !isAbsolute(p)) return;
    out.add(p);
    try {
      out.add(realpathSync.native(p));
    } catch {
      // gone: nothing to run from there either
    }
  };
  const entry = process.argv[1];
  add(process.execPath);
  if (entry === undefined) return [...out];
  add(entry);
  let real: string;
  try {
    real = realpathSync.native(entry);
  } catch {
    return [...out];
  }
  // The package directory: the nearest one above the entry with a package.json.
  for (let d = dirname(real); d !== dirname(d); d = dirname(d))
    if (existsSync(join(d, "package.json"))) {
      add(d);
      break;
    }
  // The packages lessor loads from node_modules, and theirs in turn (better-sqlite3 loads bindings…),
  // found where Node's require looks for them from the requiring file (its node_modules folders up to
  // the root, then NODE_PATH and the global folders: require.resolve.paths), as their real
  // directories, which is where Node resolves their own dependencies from. Looked up by directory
  // rather than with require.resolve: that costs several times more, and refuses a package whose
  // `exports` leave out its package.json, which would then go unchecked.
  const seen = new Set<string>();
  const queue: [string, string][] = EXTERNAL_PACKAGES.map((name) => [name, real]);
  const requirers = new Map<string, NodeJS.Require>();
  while (queue.length > 0 && seen.size < MAX_PACKAGES) {
    const [name, from] = queue.shift()!;
    let req = requirers.get(from);
    if (req === undefined) requirers.set(from, (req = createRequire(from)));
    // With a path after the name: for a name that is also a builtin's (the buffer package), Node
    // gives no folders at all.
    const paths = req.resolve.paths(`${name}/package.json`) ?? [];
    const found = paths.map((p) => join(p, name)).find((d) => existsSync(join(d, "package.json")));
    if (found === undefined) continue; // not installed (optional): not loaded from there either
    let dir: string;
    try {
      dir = realpathSync.native(found);
    } catch {
      continue; // gone since
    }
    add(found);
    if (seen.has(dir)) continue;
    seen.add(dir);
    add(dir);
    const pkg = readPackage(dir);
    for (const dep of Object.keys({ ...pkg?.dependencies, ...pkg?.optionalDependencies })) queue.push([dep, join(dir, "package.json")]);
  }
  return [...out];
}

/**
 * Refuses to run when lessor's own code ({@link lessorCodePaths}) lies in a path the sandboxed agent can
 * write (lessor installed in the project's node_modules, a Node under a `[run] write` path), or is
 * the same file as a copy there ({@link sharedWithWritable}): the agent could rewrite it, and the
 * owner's next lessor command would run the agent's code, unconfined, with the master key at hand.
 * Throws VaultError("invalid_request"). One case passes: lessor run from a source checkout of lessor
 * (a `.git` and `src/cli` beside its package.json) on that checkout, which is how lessor's developers,
 * and its tests, run it: they build what they run from what they read.
 */
export function refuseWritableSelf(layout: Layout, code: readonly string[] = lessorCodePaths()): void {
  const advice = "install lessor (and Node) outside the directories the agent may write, with a package manager that copies files (npm install -g lessor, or a directory of its own), and run that one. The command was not started";
  const checkout = code.find((p) => existsSync(join(p, ".git")) && existsSync(join(p, "src", "cli")) && packageName(p) === "lessor");
  for (const p of code) {
    const at = writableAt(layout, p);
    // The checkout is the project itself (not one vendored inside a project).
    if (at !== null && checkout !== undefined && at === checkout && (p === checkout || p.startsWith(checkout + sep))) continue;
    if (at !== null)
      throw new VaultError(
        "invalid_request",
        `lessor's own code (${p}) is inside ${at}, which the sandboxed agent can write: it could rewrite it, and your next lessor command would run the agent's code as you, outside any sandbox, with your master key at hand; ${advice}`,
      );
  }
  const shared = sharedWithWritable(layout, code);
  if (shared !== null)
    throw new VaultError(
      "invalid_request",
      `lessor's own file ${shared.ours} is the same file (a hard link, as pnpm and bun install) as ${shared.theirs}, which the sandboxed agent can write: rewriting it there would rewrite your lessor, and your next lessor command would run the agent's code as you, with your master key at hand; ${advice}`,
    );
}

/** What lessor reads of a package.json. */
interface PackageJson {
  name?: unknown;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

/** The package.json in `dir` (null: none, or unreadable), read once per process. */
const packages = new Map<string, PackageJson | null>();
function readPackage(dir: string): PackageJson | null {
  if (!packages.has(dir)) {
    let pkg: PackageJson | null = null;
    try {
      pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as PackageJson;
    } catch {
      // no readable package.json
    }
    packages.set(dir, pkg);
  }
  return packages.get(dir)!;
}

/** The `name` of the package.json in `dir`, or null. */
function packageName(dir: string): string | null {
  const name = readPackage(dir)?.name;
  return typeof name === "string" ? name : null;
}

/**
 * Files compared by identity (device and inode) between a package of lessor's (`dir`) and copies in
 * writable paths: its manifest, every file in its dist/bin that a command runs (lessor's bundles
 * and their code caches, which V8 runs as compiled code: scripts/build-cli.mjs), and the native code
 * it loads or starts (a package's `*.node` addons at its top or in build/Release, as better-sqlite3's
 * and @node-rs/argon2's; lessor's own under native/NAME/build/Release, its sandbox bridge helper
 * included). pnpm's side-effects cache hard-links built files as it links the rest. Listed from the
 * package itself so that a bundle or addon added to the build is compared too.
 */
function sharedCheckFiles(dir: string): string[] {
  const out = ["package.json"];
  const list = (sub: string, keep: RegExp): void => {
    const at = sub === "" ? dir : join(dir, sub);
    if (sub !== "" && !existsSync(at)) return; // most packages: told without an exception
    let names: string[] = [];
    try {
      names = readdirSync(at).filter((n) => keep.test(n));
    } catch {
      return; // no such directory (most packages), or unreadable: the rest is still compared
    }
    for (const n of names) out.push(sub === "" ? n : `${sub}/${n}`);
  };
  list("dist/bin", /\.(c?js|mjs|cache)$/);
  list("", /\.node$/);
  list("build/Release", /\.node$/);
  let natives: string[] = [];
  try {
    if (existsSync(join(dir, "native"))) natives = readdirSync(join(dir, "native"));
  } catch {
    // unreadable: the rest is still compared
  }
  for (const n of natives) list(`native/${n}/build/Release`, /^(.*\.node|lessor-netbridge)$/);
  return out;
}

/**
 * `statSync(path)`, or undefined when there is no such file or it cannot be examined. A missing file is
 * the usual answer here (most packages have no dist/bin), and is told without an exception, which
 * would cost more than the stat.
 */
function statIfAny(path: string): Stats | undefined {
  try {
    return statSync(path, { throwIfNoEntry: false });
  } catch {
    return undefined; // not a directory on the way, no permission: nothing to compare
  }
}

/**
 * A file of lessor's packages (among `code`, the package directories) that is the very same file as
 * one in a copy of that package installed in a writable path of `layout`, or null. Package managers
 * that hard-link every install of a version from one store (pnpm, bun) make lessor outside the
 * project and a dependency in it share their files. Looked for where they install: `node_modules/NAME`
 * and pnpm's `node_modules/.pnpm/NAME@VERSION/node_modules/NAME`, at the top of each writable path.
 */
export function sharedWithWritable(layout: Layout, code: readonly string[]): { ours: string; theirs: string } | null {
  const roots = layout.mounts.filter((m) => m.kind === "bind" && m.writable).map((m) => m.path);
  // Each writable path's pnpm store directory, read once for every package.
  const stores = roots.map((root) => {
    const pnpm = join(root, "node_modules", ".pnpm");
    try {
      return { root, pnpm, entries: existsSync(pnpm) ? readdirSync(pnpm) : [] };
    } catch {
      return { root, pnpm, entries: [] as string[] }; // unreadable: no pnpm store links to follow here
    }
  });
  for (const dir of code) {
    const name = packageName(dir); // null: not a package directory (Node's binary, the entry file)
    if (name === null || !/^(@[a-z0-9._-]+\/)?[a-z0-9._-]+$/i.test(name)) continue;
    // The copies of this package in writable paths, found first: most packages have none, and then
    // their files need not be listed at all. The package itself is no copy (lessor run from a source
    // checkout that is the project), though a build may hard-link files within it (node-gyp links
    // build/Release/X.node to obj.target's).
    const self = statIfAny(dir);
    const prefix = `${name.replace("/", "+")}@`;
    const copies = stores
      .flatMap(({ root, pnpm, entries }) => [join(root, "node_modules", name), ...entries.filter((e) => e.startsWith(prefix)).map((e) => join(pnpm, e, "node_modules", name))])
      .filter((copy) => {
        const c = statIfAny(copy);
        return c !== undefined && !(self !== undefined && c.dev === self.dev && c.ino === self.ino);
      });
    if (copies.length === 0) continue;
    const ours = new Map<string, string>();
    const files = sharedCheckFiles(dir);
    for (const f of files) {
      const st = statIfAny(join(dir, f)); // undefined: not in this package
      if (st !== undefined && st.nlink > 1) ours.set(`${st.dev}:${st.ino}`, join(dir, f));
    }
    if (ours.size === 0) continue;
    for (const copy of copies)
      for (const f of files) {
        const st = statIfAny(join(copy, f)); // undefined: no such file there
        const mine = st && ours.get(`${st.dev}:${st.ino}`);
        const theirs = join(copy, f);
        if (mine !== undefined && writableAt(layout, theirs) !== null) return { ours: mine, theirs };
      }
  }
  return null;
}

/** The one line `--network host` prints: the agent's network is not scoped. */
export function hostNetworkWarning(): string {
  return "lessor: warning: network host: the sandboxed command shares this machine's network: it can reach any host (not only the lease's domains), services listening on loopback and abstract Unix sockets; only its files and processes are confined";
}

/** Options of {@link prepareSandbox}. */
export interface SandboxOptions {
  /** --project, else the current directory. */
  project: string | undefined;
  /** --network, else `[run] network`. */
  network?: string | undefined;
  cmd: string;
  /** The child's PATH (as lessor's environment and the env files set it). */
  pathValue: string | undefined;
}

/**
 * Checks that bwrap is installed (synchronously: a missing bwrap stops the run before anything
 * else), plans the layout and finds the command; the sandbox probe runs meanwhile.
 */
export function prepareSandbox(paths: VaultPaths, o: SandboxOptions, env: NodeJS.ProcessEnv = process.env): RunSandbox {
  const bwrap = findBwrap(env["PATH"]);
  if (bwrap === null) throw bwrapMissingError();
  const home = env["HOME"] ? resolve(env["HOME"]) : homedir() || undefined;
  // $HOME may name another directory than the owner's own (set by hand, or by a tool): the owner's
  // credential stores and dotfiles in the passwd home stay protected too.
  const passwdHome = ownerHome();
  const run = paths.config.run;
  const expand = (list: string[], field: string): string[] =>
    list.map((p) => {
      const e = expandHome(p, home);
      if (e === null) throw new VaultError("config_invalid", `[run] ${field}: ${p} starts with ~/ and HOME is not set`);
      return e;
    });
  const layout = planLayout({
    home,
    project: run.project === "none" ? null : resolve(o.project ?? process.cwd()),
    projectWritable: run.project === "read-write",
    read: expand(run.read, "read"),
    write: expand(run.write, "write"),
    protect: protectedPaths(paths, env, home, passwdHome),
    socketDirs: runtimeDirs(env),
    passwdHome,
  });
  // The socket alone is covered where its directory is shown (the home, with [run] project =
  // "read-only" from it): a mount on the socket's dentry, which a daemon restart during the run (unlink,
  // then a new socket at the path) detaches in the sandbox too, and the agent, of the daemon's own uid,
  // would connect as the vault's admin. Only a covered directory keeps it out: refused.
  if (shows(layout, dirname(paths.socket)))
    throw new VaultError(
      "invalid_request",
      `the daemon's socket ${paths.socket} lies in ${dirname(paths.socket)}, which the sandbox shows: a restart of the daemon during the run would re-create the socket where the agent (your uid, the vault's admin) can connect; put [server] socket in a directory of its own (or in the lessor home), or run from a directory that does not show it. The command was not started`,
    );
  refuseWritableBwrap(bwrap, layout);
  refuseUntrustedBwrap(bwrap);
  refuseWritableSelf(layout);
  // The key command and the rotation hooks, which lessor runs as you outside the sandbox.
  refuseWritablePrograms(layout, configuredPrograms(paths.config, paths.home, env));
  const command = findCommand(o.cmd, o.pathValue, process.cwd());
  if ("path" in command && !shows(layout, command.path))
    throw new VaultError(
      "invalid_request",
      `${JSON.stringify(o.cmd)} is ${command.path}, which the sandbox does not show the agent (it shows the system directories, the project directory and the [run] read and write paths of lessor.toml); add its directory to [run] read, e.g. read = ["${dirname(command.path)}"], or install it system-wide. The command was not started`,
    );
  const network = o.network === undefined ? run.network : parseRunNetwork(o.network, (msg) => {
    throw new VaultError("invalid_request", `--network: ${msg}`);
  });
  // A keychain home's master key is one session-bus call away: an abstract bus socket lives in the
  // network namespace that --network host would share with the agent.
  if (network === "host" && existsSync(inHome(paths.home, paths.config.keys.keychainFile)) && sessionBusIsAbstract(env))
    throw new VaultError(
      "invalid_request",
      "--network host would let the agent reach your D-Bus session bus (it listens on an abstract socket, which lives in the network namespace), and through it the OS keychain that holds this vault's master key; use the default network (the proxy), or run the session bus on a path (unix:path=…). The command was not started",
    );
  const ready = probeSandbox(bwrap);
  ready.catch(() => {}); // awaited before the start; a run stopped earlier must not see it unhandled
  const handoff = network !== "proxy" ? null : nativeBridge();
  return {
    layout,
    command,
    ready,
    network,
    bridge: handoff !== null ? "native" : "node",
    childEnv(childEnv, vars, found) {
      const referred = new Set(found.map((f) => f.key));
      const out: Record<string, string> = {};
      const withheld: string[] = [];
      for (const [k, v] of Object.entries(childEnv)) {
        const reason = withheldReason(k, v);
        if (reason === "lessor" || reason === "session") continue;
        if (reason === "credential" && !referred.has(k) && vars.get(k)?.from === "the environment") {
          withheld.push(k);
          continue;
        }
        out[k] = v;
      }
      // Where the agent starts, and a temporary directory it can use (the owner's may not be shown).
      out["PWD"] = layout.cwd;
      delete out["OLDPWD"];
      if (out["TMPDIR"] !== undefined && !shows(layout, out["TMPDIR"])) out["TMPDIR"] = "/tmp";
      return { env: out, withheld };
    },
    start(features, args, childEnv, stdio, proxyDir, runDir) {
      if (!("path" in command)) throw new Error("the command was not found");
      // The run's private directory holds its proxy's socket (no token) and its vault session: shown at
      // its own path, it would be there for every run's agent with the same layout (src/proxy/private-dir.ts).
      for (const d of [proxyDir, runDir])
        if (d !== undefined && shows(layout, d))
          throw new VaultError(
            "invalid_request",
            `the run's private directory ${d} (its proxy's socket) is in a place the sandbox shows, where another run's agent could reach it; make /tmp writable, or set XDG_RUNTIME_DIR (or TMPDIR) to a directory outside the project and the [run] read and write paths. The command was not started`,
          );
      if (proxyDir === undefined) {
        const binds = runDir === undefined ? [] : [{ from: runDir, to: SANDBOX_PROXY_DIR }];
        return startSandboxed(bwrap, bwrapArgs(layout, childEnv, { ...features, shareNet: network === "host", binds }), command.path, args, stdio, undefined, copiedFiles(layout));
      }
      // The bridge (the native helper, or the Node running lessor) is shown read-only if the layout does not show it.
      const program = handoff !== null ? handoff.helper : realpathSync(process.execPath);
      const binds = [{ from: proxyDir, to: SANDBOX_PROXY_DIR }, ...(shows(layout, program) ? [] : [{ from: program, to: program }])];
      const bwrapLine = bwrapArgs(layout, childEnv, { ...features, shareNet: false, binds });
      if (handoff === null) {
        const line = bridgeCommand(program, command.path, args);
        return startSandboxed(bwrap, bwrapLine, line.cmd, line.args, stdio, undefined, copiedFiles(layout));
      }
      const line = nativeBridgeCommand(program, command.path, args);
      const [ours, theirs] = handoff.pair();
      let started: Sandboxed;
      try {
        started = startSandboxed(bwrap, bwrapLine, line.cmd, line.args, stdio, theirs, copiedFiles(layout));
      } catch (e) {
        closeSync(ours);
        throw e;
      } finally {
        closeSync(theirs); // the sandbox holds its own copy: once it closes it, a wait sees the end
      }
      const listener = handoff.receive(ours, LISTENER_WAIT_MS).finally(() => closeSync(ours));
      listener.catch(() => {}); // the run handles it; a sandbox that failed must not leave it unhandled
      return { ...started, listener };
    },
  };
}

/** The native bridge when the addon and its helper are built here, else null (the Node bridge). */
function nativeBridge(): Handoff | null {
  const h = loadHandoff();
  return "helper" in h ? h : null;
}
