/**
 * Connection admission against denial of service aimed at the vault's owner, on real `lessor serve`
 * children with small caps (max_connections 40, 8 per principal), real sockets, another uid (nobody)
 * through setpriv:
 * - a principal holding many tokens fills max_connections with token connections: the owner (its
 *   uid over the Unix socket, by peer credentials) still gets in and pulls the killswitch with the
 *   real CLI; a token shown over the owner's socket does not take the owner's reserve;
 * - connections from another uid and idle TCP connections that never say hello fill
 *   max_connections: the owner still gets in;
 * - the tokens one principal made (an admin token minting agent tokens) hold at most
 *   max_connections_per_issuer together, so another uid mapped by [[identity]] still connects.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { LessorClient } from "../src/client/index.js";
import { VaultError } from "../src/base/errors.js";
import type { Identity } from "../src/base/types.js";
import type { Hello } from "../src/protocol/messages.js";
import { LessorServer, type PeerInfo } from "../src/server/server.js";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { cliHome, envOf, runCli, seedHome, startCli } from "./cli-harness.js";
import { grant, makeVault, tempDir, within } from "./helpers.js";
import { duplexPair, RawClient, type Msg } from "./raw-client.js";
import { AS_NOBODY, attacker as dosAttacker, LINUX_ROOT, sharedHome } from "./dos-harness.js";

const POLICY = grant("gh", ["claude", "bob"], ["github-token"], ["api.github.com"]);

/** Daemon connections with a patient next(). */
class Raw extends DaemonConn {
  static override readonly nextTimeoutMs = 20_000;
}

/** test/fixtures/dos-client.mjs with `args`, as user nobody (60 s for each line). */
const attacker = (args: string[]) => dosAttacker(args, true, 60_000);

/** A daemon whose socket nobody can reach (nobody mapped to agent claude), with `server` in [server]. */
async function daemon(server: string): Promise<{ d: RunningDaemon; socket: string; tcp: { host: string; port: number } }> {
  const { home, socket } = await sharedHome(POLICY, `handshake_timeout = "60s"\n${server}`);
  const d = await startServe(home);
  after(() => d.stop());
  return { d, socket, tcp: d.tcp! };
}

/** The code of a refused hello. */
const codeOf = (m: Msg): unknown => (m.error as { code?: unknown } | undefined)?.code;
const messageOf = (m: Msg): string => String((m.error as { message?: unknown } | undefined)?.message);

/** Opens `n` connections authenticated with `token` over TCP, one after another; the welcomed ones stay open. */
async function tokenConns(tcp: { host: string; port: number }, token: string, n: number, held: Raw[]): Promise<{ ok: number; refused: Msg[] }> {
  let ok = 0;
  const refused: Msg[] = [];
  for (let i = 0; i < n; i++) {
    const { c, welcome } = await Raw.hello(tcp, token);
    if (welcome.ok === true) {
      ok++;
      held.push(c);
    } else {
      refused.push(welcome);
      c.close();
    }
  }
  return { ok, refused };
}

/** A token made over the owner's socket `socket` (a connection opened and closed for it). */
async function ownerToken(socket: string, params: Parameters<LessorClient["createToken"]>[0]): ReturnType<LessorClient["createToken"]> {
  const admin = await LessorClient.connect({ socketPath: socket });
  try {
    return await admin.createToken(params);
  } finally {
    await admin.close();
  }
}

/** An array of connections closed after the test (file). */
function heldUntilAfter(): Raw[] {
  const held: Raw[] = [];
  after(() => held.forEach((c) => c.close()));
  return held;
}

/** tokenConns for each of `tokens` in turn: how many were welcomed in all, and every refusal. */
async function tokensConns(tcp: { host: string; port: number }, tokens: { token: string }[], n: number, held: Raw[]): Promise<{ ok: number; refused: Msg[] }> {
  let ok = 0;
  const refused: Msg[] = [];
  for (const t of tokens) {
    const r = await tokenConns(tcp, t.token, n, held);
    ok += r.ok;
    refused.push(...r.refused);
  }
  return { ok, refused };
}

describe("the owner always gets in to use the brakes (lessor serve, max_connections 40)", { skip: AS_NOBODY }, () => {
  test("a principal with six agent tokens fills max_connections: the owner still pulls the killswitch with the CLI, and a token over the owner's socket takes none of the owner's reserve", async () => {
    const { d, socket, tcp } = await daemon("max_connections = 40\nmax_connections_per_principal = 8\nowner_reserved_connections = 4\n");
    const admin = await LessorClient.connect({ socketPath: socket });
    const tokens: { token: string }[] = [];
    for (let i = 0; i < 6; i++) tokens.push(await admin.createToken({ name: `hog-${i}`, role: "agent", agent: "claude" }));
    const spare = await admin.createToken({ name: "relay", role: "agent", agent: "bob" });
    await admin.close();
    const held = heldUntilAfter();
    const { ok, refused } = await tokensConns(tcp, tokens, 8, held);
    // 48 tried, 40 held: the global cap is full of token connections, each token within its 8.
    assert.equal(ok, 40, JSON.stringify(refused));
    assert.ok(refused.length > 0 && refused.every((r) => codeOf(r) === "rate_limited"), JSON.stringify(refused));
    // A token shown over the owner's socket (as a relay running as the owner does) gets no reserve slot.
    const relay = await Raw.hello(socket, spare.token);
    assert.equal(relay.welcome.ok, false, JSON.stringify(relay.welcome));
    assert.equal(codeOf(relay.welcome), "rate_limited");
    relay.c.close();
    // The owner: its own CLI, over its Unix socket, during the flood.
    const env = { LESSOR_SOCKET: socket };
    const st = await runCli(["status", "--json"], { home: d.home, env, timeoutMs: 60_000 });
    assert.equal(st.code, 0, st.stderr);
    const ks = await runCli(["killswitch", "--yes", "--reason", "connection flood"], { home: d.home, env, timeoutMs: 60_000 });
    assert.equal(ks.code, 0, ks.stderr);
    // The killswitch closes every agent connection: the flood is gone.
    await within(20_000, "the agents' connections close after the killswitch", () => held.every((c) => c.closed), 50);
    const rel = await runCli(["killswitch", "--release", "--reason", "flood stopped"], { home: d.home, env, timeoutMs: 60_000 });
    assert.equal(rel.code, 0, rel.stderr);
  });

  test("another uid's connections and idle TCP connections that never say hello fill max_connections: the owner still gets in", async () => {
    const { socket, tcp } = await daemon("max_connections = 40\nmax_connections_per_principal = 8\nowner_reserved_connections = 4\n");
    // nobody (a uid mapped by [[identity]]) holds its 8, authenticated; 40 more idle TCP connections
    // from 8 loopback addresses sit in their handshake (within the handshake budgets).
    const mapped = attacker(["hello", `unix:${socket}`, "8"]);
    const got = (await mapped.line(0)) as { ok: boolean }[];
    assert.equal(got.filter((r) => r.ok).length, 8, JSON.stringify(got));
    const idle = attacker(["idle", `tcp:${tcp.host}:${tcp.port}`, "40", "8"]);
    const r = (await idle.line(0)) as { refused: number; stillOpen: number; connectErrors: number };
    assert.ok(r.stillOpen >= 32 - 1, `the idle flood holds the rest of the cap: ${JSON.stringify(r)}`);
    // The cap is full; the owner holds one reserve slot...
    const admin0 = await Raw.hello(socket);
    assert.equal(admin0.welcome.ok, true, `the owner gets in: ${JSON.stringify(admin0.welcome)}`);
    // ...and the owner, again and again, as its CLI would.
    for (let i = 0; i < 6; i++) {
      const owner = await LessorClient.connect({ socketPath: socket });
      assert.equal(owner.identity.role, "admin");
      assert.ok((await owner.status()).daemon.connections > 40);
      await owner.close();
    }
    admin0.c.close();
    await idle.stop();
    await mapped.stop();
  });
});

describe("the daemon's uid mapped to an agent by [[identity]] (lessor serve)", { skip: LINUX_ROOT ? false : "needs root on Linux (the test's uid must be the daemon's, mapped to an agent)" }, () => {
  test("its processes are that agent: held to max_connections_per_principal, and none of the owner's reserve", async () => {
    const run = tempDir("lessor-adm-");
    const socket = join(run, "agents.sock");
    const uid = process.getuid!();
    const config = `[server]\nsocket = ${JSON.stringify(socket)}\nmax_connections = 12\nmax_connections_per_principal = 4\nowner_reserved_connections = 4\n[[identity]]\nuid = ${uid}\nrole = "agent"\nagent = "claude"\n`;
    const d = await startServe(await makeHome({ config, policy: POLICY }));
    after(() => d.stop());
    const held = heldUntilAfter();
    const welcomes: Msg[] = [];
    for (let i = 0; i < 20; i++) {
      const { c, welcome } = await Raw.hello(socket);
      welcomes.push(welcome);
      if (welcome.ok === true) held.push(c);
      else c.close();
    }
    const ok = welcomes.filter((w) => w.ok === true);
    assert.ok(ok.every((w) => (w.identity as { role?: string } | undefined)?.role === "agent"), JSON.stringify(ok[0]));
    // Before: the mapped uid counted as the owner, exempt from the per-uid cap, and filled the 12 common
    // slots and the 4 of the reserve (16), locking out the admin's token.
    assert.equal(ok.length, 4, `welcomed ${ok.length} of 20: ${JSON.stringify(welcomes.find((w) => w.ok !== true))}`);
    assert.ok(welcomes.filter((w) => w.ok !== true).every((w) => codeOf(w) === "rate_limited"));
  });
});

describe("connections that never say hello never hold max_connections (lessor serve)", { skip: AS_NOBODY }, () => {
  test("idle TCP connections from eight loopback addresses, within the handshake budgets, fill max_connections: a token client still gets in", async () => {
    // The handshake budgets (128 per transport, 64 per peer by default) are larger than this
    // max_connections, as they are whenever an admin lowers it below them.
    const { socket, tcp } = await daemon("max_connections = 40\nmax_connections_per_principal = 8\n");
    const bob = await ownerToken(socket, { name: "quiet-bob", role: "agent", agent: "bob" });
    const idle = attacker(["idle", `tcp:${tcp.host}:${tcp.port}`, "48", "8"]);
    const r = (await idle.line(0)) as { refused: number; stillOpen: number; connectErrors: number };
    assert.equal(r.connectErrors, 0, JSON.stringify(r));
    const held = heldUntilAfter();
    for (let i = 0; i < 3; i++) {
      const { c, welcome } = await Raw.hello(tcp, bob.token);
      assert.equal(welcome.ok, true, `a token client is welcomed during the idle flood: ${JSON.stringify(welcome)} (${JSON.stringify(r)})`);
      assert.equal((await c.call("status")).ok, true);
      held.push(c);
    }
    await idle.stop();
  });
});

describe("connections on their way to a token over the owner's socket (lessor serve)", { skip: AS_NOBODY }, () => {
  test("a vault-session relay's connections, mid token handshake over the owner's socket, do not use up the owner's caps: its CLI still gets in", async () => {
    // lessor run --vault-session relays each connection of its sandboxed agent to the daemon's socket
    // as the owner's uid, then authenticates it with the run's agent token: until then it counted for
    // the owner's uid (its connection cap and handshake budget), up to 64 per run at once, so the
    // agent, reconnecting in a loop, kept the owner's own CLI out. Here the relayed connections are
    // held mid handshake (the daemon's proof sent, the token not yet), as the agent's loop keeps them.
    const { d, socket } = await daemon("max_connections = 40\nmax_connections_per_principal = 8\nmax_handshakes_per_peer = 8\nowner_reserved_connections = 4\n");
    const run = await ownerToken(socket, { name: "lessor-run-1", role: "agent", agent: "claude" });
    const relayed = heldUntilAfter();
    for (let i = 0; i < 8; i++) {
      const c = await Raw.open(socket);
      c.send({ protocol: "lessor", version: 1, tokenId: run.id, nonce: randomBytes(32).toString("base64url") });
      const challenge = await c.next();
      assert.equal(typeof challenge.challenge?.proof, "string", JSON.stringify(challenge));
      relayed.push(c);
    }
    const env = { LESSOR_SOCKET: socket };
    for (let i = 0; i < 3; i++) {
      const st = await runCli(["status", "--json"], { home: d.home, env, timeoutMs: 60_000 });
      assert.equal(st.code, 0, st.stderr);
    }
    const ks = await runCli(["killswitch", "--yes", "--reason", "relay flood"], { home: d.home, env, timeoutMs: 60_000 });
    assert.equal(ks.code, 0, ks.stderr);
    // Another uid is still held to its own caps: nobody's ninth is refused.
    const mapped = attacker(["hello", `unix:${socket}`, "9"]);
    const got = (await mapped.line(0)) as { ok: boolean; code?: string }[];
    assert.equal(got.filter((r) => r.ok).length, 8, JSON.stringify(got));
    assert.equal(got[8]!.code, "rate_limited");
    await mapped.stop();
  });
});

describe("tokens one principal made share one cap (max_connections_per_issuer)", { skip: AS_NOBODY }, () => {
  test("an admin token that mints five agent tokens cannot fill max_connections with them: another uid still connects", async () => {
    const { socket, tcp } = await daemon("max_connections = 40\nmax_connections_per_principal = 8\nmax_connections_per_issuer = 16\nowner_reserved_connections = 2\n");
    const owner = await LessorClient.connect({ socketPath: socket });
    const orch = await owner.createToken({ name: "orchestrator", role: "admin" });
    await owner.close();
    // The orchestrator's job, over TCP with its admin token, mints tokens for its agents.
    const job = await LessorClient.connect({ host: tcp.host, port: tcp.port }, { token: orch.token });
    const minted: { token: string }[] = [];
    for (let i = 0; i < 5; i++) minted.push(await job.createToken({ name: `sub-${i}`, role: "agent", agent: "claude" }));
    const held = heldUntilAfter();
    const { ok, refused } = await tokensConns(tcp, minted, 8, held);
    // The job's own connection and its tokens' share one issuer (the owner's uid, who made the job's token).
    assert.equal(ok, 15, JSON.stringify(refused));
    assert.ok(refused.length === 25 && refused.every((r) => codeOf(r) === "rate_limited" && /max_connections_per_issuer/.test(messageOf(r))), JSON.stringify(refused.slice(0, 2)));
    // Another uid mapped by [[identity]] still gets its connections.
    const mapped = attacker(["hello", `unix:${socket}`, "8"]);
    const got = (await mapped.line(0)) as { ok: boolean; code?: string }[];
    assert.equal(got.filter((r) => r.ok).length, 8, JSON.stringify(got));
    await mapped.stop();
    // A connection of the issuer closes: one of its tokens gets the slot.
    held.pop()!.close();
    await within(20_000, "a freed issuer slot is taken again", async () => {
      const { c, welcome } = await Raw.hello(tcp, minted[4]!.token);
      if (welcome.ok === true) held.push(c);
      else c.close();
      return welcome.ok === true;
    }, 100);
    await job.close();
  });
});

describe("the owner's reserve (server, in process)", () => {
  test("a reserve full of connections in a token's handshake (a relay's, the daemon still checking the token) is given up to the owner's own client", async () => {
    const OWNER = 1000;
    const { vault } = await makeVault({ policy: POLICY });
    // Token hellos are authenticated only once `release` is called: they sit in the daemon's own step
    // (not waiting on their client), as a relay's connections do while the daemon checks the token.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let checking = 0;
    const authenticate = async (peer: PeerInfo, hello: Hello): Promise<Identity> => {
      if (hello.token === "fast") return { id: "token:fast/aaaaaaaaaaaaaaaa", role: "agent", agent: "claude", transport: peer.transport, token: { id: "aaaaaaaaaaaaaaaa", expiresAt: null, issuer: "uid:2000" } };
      if (hello.token === "slow") {
        checking++;
        await gate;
        return { id: "token:slow/bbbbbbbbbbbbbbbb", role: "agent", agent: "claude", transport: peer.transport, token: { id: "bbbbbbbbbbbbbbbb", expiresAt: null, issuer: `uid:${OWNER}` } };
      }
      if (peer.transport === "uds" && peer.uid === OWNER) return { id: `uid:${OWNER}`, role: "admin", transport: "uds" };
      throw new VaultError("unauthenticated", "no");
    };
    const server = new LessorServer({ vault, authenticate, version: "test", ownerUid: OWNER, limits: { maxConnections: 4, ownerReservedConnections: 2 } });
    after(() => server.close());
    const open = async (peer: PeerInfo, token?: string, wait = true): Promise<{ c: RawClient; welcome: Msg | null }> => {
      const [client, served] = duplexPair();
      server.handle(served, peer);
      const c = new RawClient(client as unknown as Socket, { nextTimeoutMs: 20_000 });
      c.send({ protocol: "lessor", version: 1, ...(token !== undefined ? { token } : {}) });
      return { c, welcome: wait ? await c.next() : null };
    };
    // The common slots: four token connections from TCP.
    for (let i = 0; i < 4; i++) assert.equal((await open({ transport: "tcp", remoteAddress: "127.0.0.1" }, "fast")).welcome!.ok, true);
    // Two connections over the owner's socket showing a token fill the reserve, held in the token check.
    const relayed = [await open({ transport: "uds", uid: OWNER }, "slow", false), await open({ transport: "uds", uid: OWNER }, "slow", false)];
    await within(20_000, "both relayed connections are in the token check", () => checking === 2, 10);
    // The owner's own client (no token) still gets in, and is served.
    const owner = await open({ transport: "uds", uid: OWNER });
    assert.equal(owner.welcome!.ok, true, JSON.stringify(owner.welcome));
    assert.equal(owner.welcome!.identity.role, "admin");
    const st = await owner.c.call("status");
    assert.equal(st.ok, true, JSON.stringify(st));
    // The relayed one it replaced was told why; the other is refused when its token is accepted (no common slot).
    release();
    const answers = await Promise.all(relayed.map((r) => r.c.next()));
    assert.deepEqual(answers.map((a) => a.ok), [false, false], JSON.stringify(answers));
    assert.ok(answers.every((a) => a.error.code === "rate_limited"), JSON.stringify(answers));
  });
});

describe("lessor proxy on a TCP port: connections that never send a request", { skip: AS_NOBODY }, () => {
  test("another local user holding 600 idle connections (no token, no request) does not keep the agent from its proxy", async () => {
    const home = await cliHome();
    await seedHome(home, POLICY, [{ name: "github-token", value: "ghp_" + randomBytes(18).toString("hex") }]);
    // A process limit on open files the idle flood can reach without taking long (every process has one).
    const proxy = await startCli(
      ["proxy", "--agent", "claude", "--domain", "api.github.com", "--listen", "127.0.0.1:0"],
      /lessor: proxy for agent/,
      { PATH: "/usr/bin:/bin", HOME: home, LESSOR_HOME: home, NO_COLOR: "1", GITHUB_TOKEN: "$S:github-token" },
      { prefix: ["prlimit", "--nofile=512:512", "--"], killAfterMs: 120_000 },
    );
    after(() => proxy.child.kill());
    const url = new URL(envOf(proxy.stdout()).HTTPS_PROXY!);
    const port = Number(url.port);
    const auth = "Basic " + Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString("base64");
    /** The agent: a CONNECT to a host its proxy does not cover (answered at once, nothing upstream). */
    const agentAsks = (): Promise<string> =>
      new Promise((resolve) => {
        const s = connect(port, "127.0.0.1");
        let got = "";
        s.on("data", (d: Buffer) => (got += d.toString("latin1")));
        s.on("error", () => {});
        s.on("close", () => resolve(got));
        s.setTimeout(20_000, () => s.destroy());
        s.write(`CONNECT uncovered.example:443 HTTP/1.1\r\nHost: uncovered.example:443\r\nProxy-Authorization: ${auth}\r\n\r\n`, () => setTimeout(() => s.end(), 2000));
      });
    assert.match(await agentAsks(), /^HTTP\/1\.1 \d{3} /, "the agent is answered before the flood");
    const idle = attacker(["idle", `tcp:127.0.0.1:${port}`, "600", "6"]);
    const r = (await idle.line(0)) as { stillOpen: number; connectErrors: number };
    assert.equal(r.connectErrors, 0, JSON.stringify(r));
    for (let i = 0; i < 3; i++) assert.match(await agentAsks(), /^HTTP\/1\.1 \d{3} /, `the agent is answered during the flood (${JSON.stringify(r)})`);
    await idle.stop();
  });
});
