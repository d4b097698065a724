/** Starts `lessor serve` as a real child process for end-to-end tests; raw connections to it. */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { LessorClient } from "../src/client/index.js";
import { initHome } from "../src/config/open-vault.js";
import { FrameDecoder } from "../src/protocol/framing.js";
import { checkServerProof, endpointBinding, hashTokenSecret, newNonce, splitToken } from "../src/crypto/token-proof.js";
import { RawClient, type Msg, type RawClientOptions } from "./raw-client.js";

/** Homes made here are removed when the test process exits (node:test hooks run too early for suites' before()). */
const homes: string[] = [];
process.on("exit", () => {
  for (const h of homes) rmSync(h, { recursive: true, force: true });
});

export const CLI = fileURLToPath(new URL("../src/cli/main.ts", import.meta.url));

export interface RunningDaemon {
  home: string;
  socket: string;
  tcp: { host: string; port: number } | null;
  proc: ChildProcess;
  stderr: () => string;
  /** Sends a signal and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Two daemons started at once (`starts`), each with an admin client on its socket. What started is
 * pushed onto `daemons` and the clients onto `clients` (the caller stops and closes them); when one
 * fails to start, its error is thrown after the other was kept for that cleanup.
 */
export async function startTwo(
  starts: [Promise<RunningDaemon>, Promise<RunningDaemon>],
  daemons: RunningDaemon[],
  clients: { close(): unknown }[],
): Promise<{ a: RunningDaemon; b: RunningDaemon; adminA: LessorClient; adminB: LessorClient }> {
  const started = await Promise.allSettled(starts);
  for (const r of started) if (r.status === "fulfilled") daemons.push(r.value);
  for (const r of started) if (r.status === "rejected") throw r.reason;
  const [a, b] = started.map((r) => (r as PromiseFulfilledResult<RunningDaemon>).value) as [RunningDaemon, RunningDaemon];
  const adminA = await LessorClient.connect({ socketPath: a.socket });
  clients.push(adminA);
  const adminB = await LessorClient.connect({ socketPath: b.socket });
  clients.push(adminB);
  return { a, b, adminA, adminB };
}

/** A fresh home with `config` appended to lessor.toml and `policy` as policy.toml. */
export async function makeHome(opts: { config?: string; policy?: string } = {}): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "lessor-d-"));
  homes.push(dir);
  const home = join(dir, "home");
  await initHome({ home, env: { LESSOR_HOME: home } });
  if (opts.config) writeFileSync(join(home, "lessor.toml"), opts.config, { mode: 0o600 });
  if (opts.policy) writeFileSync(join(home, "policy.toml"), opts.policy, { mode: 0o600 });
  return home;
}

/**
 * A daemon for the enclosing describe(): its before() makes a home with `policy`, fills it with
 * `seed` and starts `lessor serve` there; its after() stops it. Tests call the returned function for
 * the running daemon.
 */
export function serveInSuite(policy: string, seed: (home: string) => Promise<void>): () => RunningDaemon {
  let d: RunningDaemon | undefined;
  before(async () => {
    const home = await makeHome({ policy });
    await seed(home);
    d = await startServe(home);
  });
  after(async () => {
    await d?.stop();
  });
  return () => {
    if (d === undefined) throw new Error("the suite's daemon has not started; call this from a test");
    return d;
  };
}

/**
 * Spawns `lessor serve` for `home`; resolves when it logs "lessor daemon ready" (rejects if it exits
 * first). `nodeArgs` go before the script (a preload, say), `env` adds to its PATH and HOME.
 */
export function startServe(home: string, opts: { nodeArgs?: string[]; env?: Record<string, string> } = {}): Promise<RunningDaemon> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [...(opts.nodeArgs ?? []), "--import", "tsx", CLI, "--home", home, "serve"], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...opts.env },
    });
    let err = "";
    let ready = false;
    const exited = new Promise<number | null>((r) => proc.on("exit", (code) => r(code)));
    createInterface({ input: proc.stderr! }).on("line", (line) => {
      err += `${line}\n`;
      if (ready) return;
      try {
        const o = JSON.parse(line) as { msg?: string; socket?: string; tcp?: { host: string; port: number } | null };
        if (o.msg === "lessor daemon ready") {
          ready = true;
          resolve({
            home,
            socket: o.socket!,
            tcp: o.tcp ?? null,
            proc,
            stderr: () => err,
            stop: (signal = "SIGTERM") => {
              proc.kill(signal);
              return exited;
            },
          });
        }
      } catch {
        // not JSON: an error message
      }
    });
    void exited.then((code) => {
      if (!ready) reject(Object.assign(new Error(`lessor serve exited with ${code}: ${err}`), { code, stderr: err }));
    });
  });
}

/**
 * `lessor serve` on a new home with `policy` and `secret` stored, the owner's client, and one client
 * per agent token (`tokens`: the token's name → its agent), by token name. `stop` closes the clients
 * and stops the daemon (asserting it exits 0); after the test it is stopped if `stop` was not called.
 */
export async function serveWithAgentTokens(o: { policy: string; secret: { name: string; value: string }; tokens: Record<string, string> }): Promise<{
  home: string;
  admin: LessorClient;
  agents: Record<string, LessorClient>;
  stop(): Promise<void>;
}> {
  const home = await makeHome({ policy: o.policy });
  const d = await startServe(home);
  let stopped = false;
  after(async () => {
    if (!stopped) await d.stop();
  });
  const admin = await LessorClient.connect({ socketPath: d.socket });
  await admin.storeSecret(o.secret);
  const agents: Record<string, LessorClient> = {};
  for (const [name, agent] of Object.entries(o.tokens)) {
    const t = await admin.createToken({ name, role: "agent", agent });
    agents[name] = await LessorClient.connect({ socketPath: d.socket }, { token: t.token });
  }
  return {
    home,
    admin,
    agents,
    stop: async () => {
      for (const c of Object.values(agents)) await c.close();
      await admin.close();
      assert.equal(await d.stop(), 0);
      stopped = true;
    },
  };
}

/** A raw connection for malformed-input tests: send bytes, read frames. */
export class RawConn {
  readonly sock: Socket;
  readonly frames: unknown[] = [];
  closed = false;
  #dec = new FrameDecoder(16 * 1024 * 1024);
  #waiters: (() => void)[] = [];

  private constructor(sock: Socket) {
    this.sock = sock;
    sock.on("data", (c: Buffer) => {
      for (const f of this.#dec.push(c)) this.frames.push(JSON.parse(f.toString("utf8")));
      this.#wake();
    });
    sock.on("close", () => {
      this.closed = true;
      this.#wake();
    });
    sock.on("error", () => {});
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  static open(path: string): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = connect(path, () => resolve(new RawConn(s)));
      s.once("error", reject);
    });
  }

  send(obj: unknown): void {
    const body = Buffer.from(typeof obj === "string" ? obj : JSON.stringify(obj));
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    this.sock.write(Buffer.concat([head, body]));
  }

  /** Waits until `n` frames arrived or the socket closed (or `ms` passed). */
  async waitFrames(n: number, ms = 5000): Promise<unknown[]> {
    const end = Date.now() + ms;
    while (this.frames.length < n && !this.closed && Date.now() < end)
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, Math.max(1, end - Date.now()));
      });
    return this.frames;
  }

  async waitClosed(ms = 5000): Promise<boolean> {
    const end = Date.now() + ms;
    while (!this.closed && Date.now() < end)
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, Math.max(1, end - Date.now()));
      });
    return this.closed;
  }

  /** Sends the hello and waits for the welcome (undefined if none came within `ms` or the socket closed). */
  async hello(token?: string, ms = 5000): Promise<unknown> {
    this.send({ protocol: "lessor", version: 1, ...(token ? { token } : {}) });
    await this.waitFrames(1, ms);
    return this.frames[0];
  }
}

type ConnClass<C> = (new (socket: Socket, opts: RawClientOptions) => C) & { readonly nextTimeoutMs: number };

/** A `cls` connection to a Unix socket path or a TCP address (frames up to 16 MiB, `cls.nextTimeoutMs` for next()), once connected (or closed first). */
function openAs<C extends RawClient>(cls: ConnClass<C>, to: string | { host: string; port: number }): Promise<C> {
  const s = typeof to === "string" ? connect(to) : connect({ host: to.host, port: to.port });
  return RawClient.connected(new cls(s, { maxFrameBytes: 16 * 1024 * 1024, nextTimeoutMs: cls.nextTimeoutMs }));
}

/** A RawClient to a running daemon, for tests that subclass it with their own calls: `open` and `admin` make one of the subclass. */
export class DaemonConn extends RawClient {
  /** How long next() waits for a frame by default (a subclass may wait longer). */
  static readonly nextTimeoutMs: number = 10_000;

  /** A connection to a Unix socket path or a TCP address (frames up to 16 MiB, nextTimeoutMs for next()), once connected (or closed first). */
  static open<C extends DaemonConn>(this: ConnClass<C>, to: string | { host: string; port: number }): Promise<C> {
    return openAs(this, to);
  }

  /** Connects and says hello (with `token`, if given); resolves with the connection and the welcome (or refusal). */
  static async hello<C extends DaemonConn>(this: ConnClass<C>, to: string | { host: string; port: number }, token?: string): Promise<{ c: C; welcome: Msg }> {
    const c = await openAs(this, to);
    c.send({ protocol: "lessor", version: 1, ...(token !== undefined ? { token } : {}) });
    return { c, welcome: await c.next() };
  }

  /**
   * The token handshake over the daemon's TCP listener, checking the daemon's proof of the token
   * (the test fails unless it holds and the daemon welcomes the token); resolves once welcomed.
   */
  static async provedToken<C extends DaemonConn>(this: ConnClass<C>, d: { tcp: { host: string; port: number } | null }, token: string): Promise<C> {
    const c = await openAs(this, d.tcp!);
    const { id, secret } = splitToken(token)!;
    const nonce = newNonce();
    c.send({ protocol: "lessor", version: 1, tokenId: id, nonce: nonce.toString("base64url") });
    const ch = (await c.next()).challenge as { nonce: string; proof: string };
    const binding = endpointBinding("tcp", c.socket.remoteAddress, c.socket.remotePort);
    assert.ok(checkServerProof(hashTokenSecret(secret), nonce, Buffer.from(ch.nonce, "base64url"), id, binding, Buffer.from(ch.proof, "base64url")), "the daemon's proof");
    c.send({ token });
    const w = await c.next();
    assert.equal(w.ok, true, JSON.stringify(w));
    return c;
  }

  /** Calls `method`; the test fails unless it succeeds. Resolves with the result. */
  async okResult(method: string, params?: unknown): Promise<Msg> {
    const r = await this.call(method, params);
    assert.equal(r.ok, true, `${method} ${JSON.stringify(params)}: ${JSON.stringify(r.error ?? r)}`);
    return r.result;
  }

  /** The daemon's Unix socket as its owner: the hello, which the test fails unless welcomed as admin. */
  static async admin<C extends DaemonConn>(this: ConnClass<C>, d: { socket: string }): Promise<C> {
    const c = await openAs(this, d.socket);
    c.send({ protocol: "lessor", version: 1 });
    const w = await c.next();
    assert.equal(w.ok, true, JSON.stringify(w));
    assert.equal(w.identity?.role, "admin", JSON.stringify(w));
    return c;
  }
}
