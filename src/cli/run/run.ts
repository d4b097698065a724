/**
 * `lessor run`: resolve the references in the child's environment through leases, start the child
 * (no shell) in the sandbox (src/cli/run/sandbox.ts; unconfined with --no-sandbox, after one
 * warning), mask secret values in its output when that goes to a pipe or file, pass signals on,
 * revoke every lease when it exits, and exit with its code (128 + N when signal N killed it). The
 * child itself is src/cli/run/child.ts.
 */
import { VaultError } from "../../base/errors.js";
import type { Cli } from "../cli.js";
import { baseEnv, resolveEnv, scanEnv } from "./child-env.js";
import { LeaseBook, refuseRevoked } from "./leases.js";
import { Connection, revokeLeases } from "./connection.js";
import type { MaskPattern } from "./mask.js";
import { holdLeases } from "../holding.js";
import { RunCredentials } from "./placeholders.js";
import type { RunProxy } from "./proxy.js";
import { findCommand, hostNetworkWarning, noSandboxWarning, prepareSandbox, vaultPaths, type RunSandbox } from "./sandbox.js";
import { Interrupted, SignalRelay, signalExitCode } from "./signals.js";
import { checkGitAfterRun, checkGitBeforeRun } from "../../sandbox/git-guard.js";
import { holdRun, type RunHold } from "../../sandbox/run-holds.js";
import { pathForOwner, writableAt, type Layout } from "../../sandbox/layout.js";
import { escapeUnsafe } from "../../base/text.js";
import { resolve, sep } from "node:path";
import type { VaultSession } from "./vault-session.js";
import { forbidDumps } from "../../native/no-dump.js";

/** Options of {@link runChild}. */
export interface RunOptions {
  agent: string;
  envFiles: string[];
  domains: string[];
  ttl?: string;
  /** False for --no-sandbox. */
  sandbox: boolean;
  /** --project: the directory the sandbox shows (default: the current directory). */
  project?: string;
  /** --network: "proxy", "none" or "host" (default: `[run] network`, else "proxy"). */
  network?: string;
  /** --vault-session: true; absent: `[run] vault_session` (src/cli/run/vault-session.ts). */
  vaultSession?: boolean;
}

/**
 * Refuses an `--env-file` reached through a symbolic link the sandboxed agent can change (in the
 * project, say): an earlier run's agent could have pointed it at another dotenv file of the owner's,
 * whose values would then be handed to the agent. Checked after the read, against the file that was
 * really read (`opened`: its path from /proc when it was open), so that an agent of another run
 * flipping the path between a file and a link cannot slip one past. Throws VaultError("invalid_request").
 */
function refuseAgentLinkedEnvFiles(layout: Layout, files: readonly string[], opened: ReadonlyMap<string, string | null>): void {
  for (const f of files) {
    const named = resolve(f);
    const real = opened.get(f) ?? null;
    const { link, resolved } = pathForOwner(layout, named);
    // What was read must be where the path leads with no agent's link on the way: a link there when
    // it was read (and gone now) shows as another file.
    const inWritable = writableAt(layout, named) !== null || (real !== null && real.startsWith(sep) && writableAt(layout, real) !== null);
    if (link === null && inWritable && (real === null || resolved !== real))
      throw new VaultError(
        "invalid_request",
        `--env-file ${escapeUnsafe(f)} changed while lessor read it (it is in a writable path of the sandbox, where an agent can replace it with a link to another file of yours); run again, and keep other runs from changing it. The command was not started`,
      );
    if (link !== null)
      throw new VaultError(
        "invalid_request",
        `--env-file ${escapeUnsafe(f)} is reached through the symbolic link ${escapeUnsafe(link)}, which the sandboxed agent can change (it is in a writable path of the sandbox): an agent of an earlier run could have pointed it at another file of yours. Name the file by its real path, or put the file itself in place of the link. The command was not started`,
      );
  }
}

/** Runs `argv` as the child; resolves with the exit code for lessor. */
export async function runChild(cli: Cli, o: RunOptions, argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new VaultError("invalid_request", "say which command to run after --, e.g. lessor run --agent claude -- claude");
  const relay = new SignalRelay({ say: (line) => cli.err(line) });
  // lessor's output closing early (| head) must not end the process before the leases are revoked.
  // On a crash, what the run's normal end does: its vault session ends (token and its leases
  // revoked), its proxy stops, its own leases are revoked.
  const release = holdLeases(async () => {
    // The command first (its connections to the vault session end with it).
    relay.killNow();
    await new Promise((r) => setTimeout(r, 200));
    await endSession().catch(() => {});
    await proxy?.close().catch(() => {});
    await revoke();
  });
  // The proxy asks the vault through it for the whole run: it reconnects after a daemon restart.
  const conn = new Connection(cli, undefined, { longLived: true });
  let book: LeaseBook | null = null;
  let creds: RunCredentials | null = null;
  let proxy: RunProxy | null = null;
  let session: VaultSession | null = null;
  let sessionEnded: Promise<void> | null = null;
  const endSession = (): Promise<void> => (sessionEnded ??= session ? closeSession(cli, conn, session) : Promise.resolve());
  let patterns: MaskPattern[] = [];
  let revoked: Promise<unknown> | null = null;
  let hold: RunHold | null = null;
  const revoke = (): Promise<unknown> => (revoked ??= book ? revokeLeases(cli, conn, book, "lessor run ended", "this run") : Promise.resolve());
  const abort = (): void => {
    if (relay.early) throw new Interrupted(relay.early);
  };
  try {
    const opened = new Map<string, string | null>();
    const vars = baseEnv(process.env, o.envFiles, opened);
    const found = scanEnv(vars);
    // Before any lease: a run that cannot be confined takes none.
    let sandbox: RunSandbox | null = null;
    const paths = vaultPaths(cli.home, process.env);
    if (o.sandbox) {
      // Before the layout looks at the project: a run that ends meanwhile sees this one and leaves the
      // empty files it sealed git paths with, which this sandbox may mount (src/sandbox/run-holds.ts).
      hold = holdRun(paths.home);
      sandbox = prepareSandbox(paths, { project: o.project, network: o.network, cmd, pathValue: vars.get("PATH")?.value });
      refuseAgentLinkedEnvFiles(sandbox.layout, o.envFiles, opened);
      if (sandbox.network === "host") cli.err(hostNetworkWarning());
    } else cli.err(noSandboxWarning(paths, process.env, forbidDumps().done && process.getuid?.() !== 0));
    // Before any lease too: a command that is not there (a typo, an agent not installed yet) takes
    // none, and leaves no grant, use and revocation in the trail for a run that never started.
    const command = sandbox?.command ?? findCommand(cmd, vars.get("PATH")?.value, process.cwd());
    if ("error" in command) return cannotRun(cli, cmd, command.error);
    // An agent session for the sandboxed command; unconfined, the command is you and needs none.
    if (!o.sandbox && o.vaultSession === true)
      throw new VaultError("invalid_request", "--vault-session gives the sandboxed command an agent session at the vault; with --no-sandbox the command runs as you and can reach the vault as you: drop one of the two");
    const wantSession = sandbox !== null && (o.vaultSession ?? paths.config.run.vaultSession);
    // The default: the child holds placeholders, and lessor's proxy adds the credentials on the way out.
    const proxied = sandbox?.network === "proxy";
    let env: Record<string, string>;
    let childModule: Promise<typeof import("./child.js")>;
    if (found.length > 0) {
      const backend = await conn.open();
      abort();
      book = new LeaseBook(backend.api, { agent: o.agent, domains: o.domains, ...(o.ttl !== undefined ? { ttl: o.ttl } : {}), ...(proxied ? { via: "proxy" as const } : {}) });
      if (proxied) creds = new RunCredentials(o.agent, book, paths.config.proxy.inject);
      // The first lease request is on its way once resolveEnv is called; the child-process code
      // loads while the daemon answers it.
      const resolving = resolveEnv(vars, found, book, abort, creds?.render);
      childModule = import("./child.js");
      let resolved;
      try {
        resolved = await resolving;
      } catch (e) {
        if (e instanceof VaultError) throw new VaultError(e.code, `${e.message}. The command was not started.`);
        throw e;
      }
      env = resolved.env;
      try {
        patterns = (await childModule).maskPatterns(resolved.masks);
      } finally {
        for (const m of resolved.masks) m.value.fill(0);
      }
      // The child gets the values (or, through the proxy, placeholders) in its environment; lessor
      // keeps only the mask patterns, and the proxy's credentials.
      book.wipe();
      // The connection stays open for the revocation at the end; if the daemon closed it meanwhile
      // (idle timeout, restart), revokeLeases reconnects.
    } else {
      env = Object.fromEntries([...vars].map(([k, v]) => [k, v.value]));
      childModule = import("./child.js");
    }
    const { startChild, exited } = await childModule;
    abort();
    let features: Awaited<RunSandbox["ready"]> | undefined;
    if (sandbox) {
      // Loaded only for the proxy (the CA, x509 and http2 code is not needed by a run without it),
      // and while the sandbox's probe runs, a process of its own.
      const proxyModule = proxied ? import("./proxy.js") : null;
      proxyModule?.catch(() => {}); // awaited below, unless the probe fails first
      features = await sandbox.ready;
      abort();
      const scrubbed = sandbox.childEnv(env, vars, found);
      env = scrubbed.env;
      if (scrubbed.withheld.length > 0)
        cli.err(
          `lessor: not passed to the sandboxed command (credentials in your environment): ${scrubbed.withheld.join(", ")}; store them in the vault and refer to them (${scrubbed.withheld[0]}='$S:name'), or put them in an --env-file`,
        );
      if (wantSession) {
        await conn.open();
        abort();
      }
      if (proxied) {
        const { startRunProxy } = await proxyModule!;
        proxy = await startRunProxy({
          config: paths.config.proxy,
          api: (await conn.current())?.api ?? null,
          agent: o.agent,
          credentials: creds?.credentials ?? [],
          warn: (line) => cli.err(line),
          // The native bridge hands over the socket it listens on in the sandbox (adopted below).
          ...(sandbox.bridge === "native" ? { listen: { adopt: true } as const } : {}),
        });
        env = proxy.childEnv(env);
      }
      if (wantSession) {
        const { daemonEndpoint, startVaultSession } = await import("./vault-session.js");
        session = await startVaultSession({
          backend: await conn.open(),
          agent: o.agent,
          ...(proxy ? { dir: proxy.dir } : {}),
          ...(o.ttl !== undefined ? { ttl: o.ttl } : {}),
          daemon: daemonEndpoint(process.env, paths.socket),
        });
        abort();
        env = session.childEnv(env);
      }
    }

    // Values go in the command's environment (no proxy): their leases must still be in force as it
    // starts, or a killswitch that came while the run got ready would leave a new process holding them.
    if (book !== null && book.leases.length > 0 && !proxied) {
      await refuseRevoked((await conn.open()).api, o.agent, book.leases);
      abort();
    }
    // A commondir left by an earlier run that was killed before its check (src/sandbox/git-guard.ts).
    if (sandbox) for (const line of [...sandbox.layout.notes, ...checkGitBeforeRun(sandbox.layout.git)]) cli.err(line);
    const { child, flushed, signal, started, listener } = startChild(
      cmd,
      args,
      env,
      patterns,
      sandbox && features ? { sandbox, features, ...(proxy ? { proxyDir: proxy.dir } : session ? { runDir: session.dir } : {}) } : undefined,
    );
    relay.attach(child, signal);
    if (listener && proxy) {
      const p = proxy;
      listener.then(
        (fd) => p.adopt(fd),
        (e: NodeJS.ErrnoException) => {
          // EPIPE: bwrap or the bridge failed first, said why, and the sandbox ends by itself.
          if (e.code === "EPIPE") return;
          cli.err(`lessor: the sandbox's proxy bridge did not hand over its listener (${e.message}); the command is stopped`);
          child.kill("SIGKILL");
        },
      );
    }
    const ended = await exited(child);
    // Every process of the sandbox is gone: undo what it planted for the owner's git (src/sandbox/git-guard.ts).
    if (sandbox) for (const line of checkGitAfterRun(sandbox.layout.git)) cli.err(line);
    // Then its placeholders go, unless another run alive may have them mounted (the last run removes them).
    if (sandbox && hold) for (const line of hold.end(sandbox.layout.git.flatMap((g) => g.sealedFiles), sandbox.layout.git.flatMap((g) => g.sealedDirs))) cli.err(line);
    // The child is gone: its vault session ends (its token revoked), its proxy stops (its last audit
    // reports written), then its leases end, before lessor waits for the last of its output.
    await endSession();
    await proxy?.close();
    await revoke();
    await Promise.all(flushed);
    if (ended.error) return cannotRun(cli, cmd, ended.error.code);
    if (!(await started)) {
      cli.err("lessor: bwrap could not make the sandbox (its message is above); the command was not started");
      return 126;
    }
    if (ended.signal) return signalExitCode(ended.signal);
    return ended.code ?? 1;
  } catch (e) {
    if (e instanceof Interrupted) {
      cli.err(`lessor: stopped by ${e.signal} before the command started; the leases taken so far are revoked`);
      return signalExitCode(e.signal);
    }
    throw e;
  } finally {
    await endSession();
    await proxy?.close();
    creds?.wipe();
    await revoke();
    await conn.close();
    for (const p of patterns) p.bytes.fill(0);
    relay.dispose();
    // A run that failed before its sandbox ended leaves its placeholders (as a run killed would).
    if (hold) for (const line of hold.end([], [])) cli.err(line);
    release();
  }
}

/** Says why `cmd` could not be started; returns the exit code a shell would give (127 not found, 126 not executable). */
function cannotRun(cli: Cli, cmd: string, code: string | undefined): number {
  cli.err(`lessor: cannot run ${JSON.stringify(cmd)}: ${code === "ENOENT" ? "no such command; check the name and PATH" : `${code ?? "error"}; check that it is an executable file`}`);
  return code === "ENOENT" ? 127 : 126;
}

/** Ends the run's vault session; says so on stderr if its token or leases could not be revoked. */
async function closeSession(cli: Cli, conn: Connection, s: VaultSession): Promise<void> {
  const revoked = await s.close(
    async () => (await conn.open()).api,
    () => conn.close(),
  );
  if (!revoked)
    cli.err(
      s.tokenId === null
        ? "lessor: the leases this run's vault session granted could not all be revoked; they end when they expire (lessor revoke --agent can end them now)"
        : `lessor: the vault session token of this run (${s.tokenId}) or its leases could not be revoked; they end when they expire (lessor token revoke ${s.tokenId} and lessor revoke --agent end them now)`,
    );
}
