/**
 * `lessor.toml`: the vault's configuration file in its home. Parsed strictly: an unknown key or a
 * wrong type is an error naming the file, the table and the field.
 */
import { parse, TomlError } from "smol-toml";
import type { Alg } from "../crypto/aead.js";
import { DEFAULT_LIMITS, type Limits } from "../vault/limits.js";
import { formatDuration, parseDuration } from "../vault/duration.js";
import { MAX_HEARTBEAT_MS, MIN_HEARTBEAT_MS } from "../vault/heartbeat.js";
import type { ServerLimits } from "./server-limits.js";
import { DEFAULT_SERVER_LIMITS } from "./server-limits.js";
import { DEFAULT_RUN_CONFIG, parseRunConfig, type RunConfig } from "./run-config.js";
import { DEFAULT_PROXY_CONFIG, parseProxyConfig, type ProxyConfig } from "./proxy-config.js";
import { parseDockerConfig, type DockerConfig } from "./docker-config.js";
import { parseRotateHooks } from "./rotate-config.js";
import type { RotationHook } from "../vault/rotation-hooks.js";
import { parseVms, parseVsockGuests, parseVsockPort, type VmConfig, type VsockGuest } from "./vm-config.js";
import { fail, roleFields, show } from "./fields.js";

export type { GuestIdentity, VmConfig, VsockGuest } from "./vm-config.js";

/**
 * The store adapters `[vault] store` may name (src/config/store-factory.ts opens them). "postgres"
 * needs a URL: `[vault] database_url`, or LESSOR_DATABASE_URL in the environment (which wins).
 */
export const STORE_KINDS = ["sqlite", "memory", "postgres"] as const;
export type StoreKind = (typeof STORE_KINDS)[number];

/** The parsed configuration, with defaults filled in. Paths are as written (relative to the home). */
export interface Config {
  cipher: Alg;
  /** Which store holds the vault: "sqlite" (lessor.db in the home; the default), "memory" (gone at exit) or "postgres". */
  store: StoreKind;
  /** `[vault] database_url`: the PostgreSQL URL for store = "postgres" (LESSOR_DATABASE_URL overrides it). */
  databaseUrl: string | null;
  /**
   * `[vault] listen` and `[vault] poll_ms`: how a store shared by several instances (PostgreSQL) hears
   * the others' revocations: LISTEN/NOTIFY (unless listen = false) plus a poll every pollMs (docs/team.md).
   */
  changeFeed: { listen: boolean; pollMs: number };
  limits: Limits;
  keys: {
    file: string;
    passphraseFile: string;
    command: string[] | null;
    commandTimeoutMs: number;
    /** `[keys] keychain_file`: the marker naming the OS keychain entry that holds the key (src/crypto/keys/keychain.ts). */
    keychainFile: string;
    /** `[keys] keychain_timeout`: time limit for one keychain call. */
    keychainTimeoutMs: number;
  };
  policyFile: string;
  auditJsonl: string | null;
  server: ServerConfig;
  /** Unix-socket peers by uid → identity (the daemon's own uid is admin unless listed). */
  identities: UidIdentity[];
  /** `[[vm]]`: Firecracker VMs, each served on its own Unix socket `<uds_path>_<port>` (src/config/vm-config.ts). */
  vms: VmConfig[];
  /** `[[vsock]]`: AF_VSOCK guests by CID, for `[server] vsock_port`. */
  vsockGuests: VsockGuest[];
  /** `[run]`: what `lessor run`'s sandbox shows the agent (src/config/run-config.ts). */
  run: RunConfig;
  /** `[proxy]`: the injecting proxy lessor run starts (src/config/proxy-config.ts). */
  proxy: ProxyConfig;
  /** `[docker]`: the registries docker-credential-lessor lends for (src/config/docker-config.ts). */
  docker: DockerConfig;
  /** `[[rotate]]`: rotation hooks, commands that make a secret's new value (src/config/rotate-config.ts). */
  rotate: RotationHook[];
}

/** The `[server]` table. */
export interface ServerConfig extends ServerLimits {
  /** Unix socket path (relative to the home). */
  socket: string;
  /** Mode of the socket file; 0600 unless agents under other uids must reach it. */
  socketMode: number;
  /** Loopback TCP listener ("127.0.0.1:7391"), or null for none. Clients send a token. */
  tcp: { host: string; port: number } | null;
  /** AF_VSOCK port to listen on (any CID; QEMU/vhost-vsock guests, mapped by `[[vsock]]`), or null for none. */
  vsockPort: number | null;
}

/** One `[[identity]]` entry: a uid and who it is. */
export interface UidIdentity {
  uid: number;
  role: "admin" | "orchestrator" | "agent";
  agent?: string;
  actFor?: string[];
}

export const DEFAULT_CONFIG: Config = {
  cipher: "aes-256-gcm",
  store: "sqlite",
  databaseUrl: null,
  changeFeed: { listen: true, pollMs: 1000 },
  limits: DEFAULT_LIMITS,
  keys: { file: "master.key", passphraseFile: "keystore.json", command: null, commandTimeoutMs: 10_000, keychainFile: "keychain.json", keychainTimeoutMs: 30_000 },
  policyFile: "policy.toml",
  auditJsonl: null,
  server: {
    socket: "lessor.sock",
    socketMode: 0o600,
    tcp: null,
    vsockPort: null,
    ...DEFAULT_SERVER_LIMITS,
  },
  identities: [],
  vms: [],
  vsockGuests: [],
  run: DEFAULT_RUN_CONFIG,
  proxy: DEFAULT_PROXY_CONFIG,
  docker: [],
  rotate: [],
};

type Table = Record<string, unknown>;

/** The cipher names lessor.toml accepts (kept in step with crypto/aead.ts by the type below, without loading it). */
const ALGS = ["aes-256-gcm", "xchacha20-poly1305"] as const satisfies readonly Alg[];



function table(source: string, root: Table, name: string, allowed: readonly string[]): Table {
  const t = root[name];
  if (t === undefined) return {};
  if (typeof t !== "object" || t === null || Array.isArray(t)) fail(source, `[${name}]`, "expected a table");
  for (const k of Object.keys(t)) if (!allowed.includes(k)) fail(source, `[${name}]`, `unknown field "${k}" (known: ${allowed.join(", ")})`);
  return t as Table;
}

function int(source: string, where: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max)
    fail(source, where, `expected a whole number from ${min} to ${max}, got ${show(v)}`);
  return v;
}

function str(source: string, where: string, v: unknown): string {
  if (typeof v !== "string" || v.length === 0 || v.length > 4096) fail(source, where, `expected a non-empty string, got ${show(v)}`);
  // A path or an argument cannot hold a NUL byte: refused here rather than by the system call later.
  if (v.includes("\0")) fail(source, where, "the string holds a NUL byte (\\u0000), which no path or argument can hold; remove it");
  return v;
}

function duration(source: string, where: string, v: unknown): number {
  if (typeof v !== "string") fail(source, where, `expected a duration such as "10s" or "7d", got ${show(v)}`);
  try {
    return parseDuration(v);
  } catch {
    return fail(source, where, `expected a duration such as "10s" or "7d", got ${show(v)}`);
  }
}

/** Parses the text of a lessor.toml; `source` names it in errors. */
export function parseConfig(text: string, source: string): Config {
  let root: Table;
  try {
    // An editor that saves UTF-8 with a byte-order mark puts U+FEFF in front; TOML does not allow it,
    // and policy.toml drops it the same way (src/vault/policy/parse.ts).
    root = parse(text.startsWith("\uFEFF") ? text.slice(1) : text) as Table;
  } catch (e) {
    const where = e instanceof TomlError ? `line ${e.line}, column ${e.column}` : "syntax";
    return fail(source, where, `not valid TOML (${(e as Error).message.split("\n")[0]})`);
  }
  for (const k of Object.keys(root))
    if (!["vault", "keys", "policy", "audit", "server", "identity", "vm", "vsock", "run", "proxy", "docker", "rotate"].includes(k))
      fail(source, "top level", `unknown table or field "${k}" (known: [vault], [keys], [policy], [audit], [server], [[identity]], [[vm]], [[vsock]], [run], [proxy], [docker], [[rotate]])`);
  const v = table(source, root, "vault", ["cipher", "store", "database_url", "listen", "poll_ms", "max_secret_bytes", "keep_versions", "max_live_leases_per_agent", "proxy_request_rows", "lease_retention", "approval_wait", "approval_use", "heartbeat"]);
  const k = table(source, root, "keys", ["file", "passphrase_file", "command", "command_timeout", "keychain_file", "keychain_timeout"]);
  const p = table(source, root, "policy", ["file"]);
  const a = table(source, root, "audit", ["jsonl"]);
  const cfg: Config = structuredClone(DEFAULT_CONFIG);
  if (v.cipher !== undefined) {
    if (!ALGS.includes(v.cipher as Alg)) fail(source, "[vault] cipher", `expected one of ${ALGS.join(", ")}, got ${show(v.cipher)}`);
    cfg.cipher = v.cipher as Alg;
  }
  if (v.store !== undefined) {
    if (!STORE_KINDS.includes(v.store as StoreKind)) fail(source, "[vault] store", `expected one of ${STORE_KINDS.join(", ")}, got ${show(v.store)}`);
    cfg.store = v.store as StoreKind;
  }
  if (v.database_url !== undefined) {
    if (typeof v.database_url !== "string" || !/^postgres(ql)?:\/\/./.test(v.database_url))
      fail(source, "[vault] database_url", "expected a URL such as \"postgres://lessor@db.internal:5432/lessor\" (the value is not shown: it may hold a password)");
    cfg.databaseUrl = v.database_url;
  }
  if (v.listen !== undefined) {
    if (typeof v.listen !== "boolean") fail(source, "[vault] listen", `expected true or false, got ${show(v.listen)}`);
    cfg.changeFeed.listen = v.listen;
  }
  if (v.poll_ms !== undefined) cfg.changeFeed.pollMs = int(source, "[vault] poll_ms", v.poll_ms, 10, 600_000);
  if (v.max_secret_bytes !== undefined) cfg.limits.maxSecretBytes = int(source, "[vault] max_secret_bytes", v.max_secret_bytes, 1, 512 * 1024);
  if (v.keep_versions !== undefined) cfg.limits.keepVersions = int(source, "[vault] keep_versions", v.keep_versions, 1, 1000);
  if (v.max_live_leases_per_agent !== undefined)
    cfg.limits.maxLiveLeasesPerAgent = int(source, "[vault] max_live_leases_per_agent", v.max_live_leases_per_agent, 1, 1_000_000);
  if (v.proxy_request_rows !== undefined)
    cfg.limits.proxyRequestRows = int(source, "[vault] proxy_request_rows", v.proxy_request_rows, 1, 1_000_000);
  if (v.lease_retention !== undefined) cfg.limits.leaseRetentionMs = duration(source, "[vault] lease_retention", v.lease_retention);
  for (const [key, field] of [["approval_wait", "approvalWaitMs"], ["approval_use", "approvalUseMs"]] as const) {
    if (v[key] === undefined) continue;
    const ms = duration(source, `[vault] ${key}`, v[key]);
    if (ms < 1000 || ms > 24 * 3600_000) fail(source, `[vault] ${key}`, `expected a duration from "1s" to "24h", got ${show(v[key])}`);
    cfg.limits[field] = ms;
  }
  if (v.heartbeat !== undefined) {
    const ms = duration(source, "[vault] heartbeat", v.heartbeat);
    if (ms < MIN_HEARTBEAT_MS || ms > MAX_HEARTBEAT_MS)
      fail(source, "[vault] heartbeat", `expected a duration from "${formatDuration(MIN_HEARTBEAT_MS)}" to "${formatDuration(MAX_HEARTBEAT_MS)}" (how long lessor waits for lessor heartbeat before it pulls the killswitch), got ${show(v.heartbeat)}`);
    cfg.limits.heartbeatMs = ms;
  }
  if (k.file !== undefined) cfg.keys.file = str(source, "[keys] file", k.file);
  if (k.passphrase_file !== undefined) cfg.keys.passphraseFile = str(source, "[keys] passphrase_file", k.passphrase_file);
  if (k.command !== undefined) {
    if (!Array.isArray(k.command) || k.command.length === 0 || !k.command.every((x) => typeof x === "string" && x.length > 0))
      fail(source, "[keys] command", 'expected a list of strings, program first, such as ["op", "read", "op://vault/item/key"] (it runs without a shell)');
    if (k.command.some((x) => (x as string).includes("\0"))) fail(source, "[keys] command", "an argument holds a NUL byte (\\u0000), which no argument can hold; remove it");
    cfg.keys.command = k.command as string[];
  }
  if (k.command_timeout !== undefined) {
    const ms = duration(source, "[keys] command_timeout", k.command_timeout);
    if (ms < 100 || ms > 600_000) fail(source, "[keys] command_timeout", `expected a duration from "100ms" to "10m", got ${show(k.command_timeout)}`);
    cfg.keys.commandTimeoutMs = ms;
  }
  if (k.keychain_file !== undefined) cfg.keys.keychainFile = str(source, "[keys] keychain_file", k.keychain_file);
  if (k.keychain_timeout !== undefined) {
    const ms = duration(source, "[keys] keychain_timeout", k.keychain_timeout);
    if (ms < 1000 || ms > 600_000) fail(source, "[keys] keychain_timeout", `expected a duration from "1s" to "10m", got ${show(k.keychain_timeout)}`);
    cfg.keys.keychainTimeoutMs = ms;
  }
  if (p.file !== undefined) cfg.policyFile = str(source, "[policy] file", p.file);
  if (a.jsonl !== undefined) cfg.auditJsonl = str(source, "[audit] jsonl", a.jsonl);
  parseServer(source, root, cfg.server);
  cfg.identities = parseIdentities(source, root["identity"]);
  cfg.vms = parseVms(source, root["vm"]);
  // Without [server] vsock_port the entries still serve lessor proxy/mcp --vsock-port (the daemon refuses every CID it does not map either way).
  cfg.vsockGuests = parseVsockGuests(source, root["vsock"]);
  cfg.run = parseRunConfig(source, root["run"]);
  cfg.proxy = parseProxyConfig(source, root["proxy"]);
  cfg.docker = parseDockerConfig(source, root["docker"]);
  cfg.rotate = parseRotateHooks(source, root["rotate"]);
  return cfg;
}

function parseServer(source: string, root: Table, out: ServerConfig): void {
  const t = table(source, root, "server", [
    "socket",
    "socket_mode",
    "tcp",
    "vsock_port",
    "max_connections",
    "handshake_timeout",
    "idle_timeout",
    "read_timeout",
    "max_in_flight",
    "max_in_flight_per_principal",
    "max_in_flight_per_principal_shared",
    "max_in_flight_total",
    "max_buffered_bytes",
    "max_connections_per_principal",
    "max_connections_per_issuer",
    "owner_reserved_connections",
    "max_handshakes",
    "max_handshakes_per_peer",
    "max_frame_bytes",
    "shutdown_grace",
    "max_connection_lifetime",
  ]);
  if (t.socket !== undefined) out.socket = str(source, "[server] socket", t.socket);
  if (t.socket_mode !== undefined) {
    if (typeof t.socket_mode !== "string" || !/^0?[0-7]{3}$/.test(t.socket_mode))
      fail(source, "[server] socket_mode", `expected an octal mode as a string such as "0600", got ${show(t.socket_mode)}`);
    out.socketMode = parseInt(t.socket_mode, 8);
  }
  if (t.tcp !== undefined) {
    const m = typeof t.tcp === "string" ? /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(t.tcp) : null;
    if (!m || Number(m[2]) > 65535)
      fail(source, "[server] tcp", `expected "host:port" on a loopback address such as "127.0.0.1:7391", got ${show(t.tcp)}`);
    out.tcp = { host: m[1]!.replace(/^\[|\]$/g, ""), port: Number(m[2]) };
  }
  if (t.vsock_port !== undefined) out.vsockPort = parseVsockPort(source, t.vsock_port);
  if (t.max_connections !== undefined) out.maxConnections = int(source, "[server] max_connections", t.max_connections, 1, 100_000);
  if (t.handshake_timeout !== undefined) out.handshakeTimeoutMs = duration(source, "[server] handshake_timeout", t.handshake_timeout);
  if (t.idle_timeout !== undefined) out.idleTimeoutMs = duration(source, "[server] idle_timeout", t.idle_timeout);
  if (t.read_timeout !== undefined) out.readTimeoutMs = duration(source, "[server] read_timeout", t.read_timeout);
  if (t.max_in_flight !== undefined) out.maxInFlight = int(source, "[server] max_in_flight", t.max_in_flight, 1, 10_000);
  if (t.max_in_flight_per_principal !== undefined)
    out.maxInFlightPerPrincipal = int(source, "[server] max_in_flight_per_principal", t.max_in_flight_per_principal, 1, 10_000);
  if (t.max_in_flight_per_principal_shared !== undefined)
    out.maxInFlightPerPrincipalShared = int(source, "[server] max_in_flight_per_principal_shared", t.max_in_flight_per_principal_shared, 1, 10_000);
  if (t.max_in_flight_total !== undefined) out.maxInFlightTotal = int(source, "[server] max_in_flight_total", t.max_in_flight_total, 1, 100_000);
  if (t.max_buffered_bytes !== undefined) out.maxBufferedBytes = int(source, "[server] max_buffered_bytes", t.max_buffered_bytes, 16 * 1024, 1024 * 1024 * 1024);
  if (t.max_connections_per_principal !== undefined)
    out.maxConnectionsPerPrincipal = int(source, "[server] max_connections_per_principal", t.max_connections_per_principal, 1, 100_000);
  if (t.max_connections_per_issuer !== undefined)
    out.maxConnectionsPerIssuer = int(source, "[server] max_connections_per_issuer", t.max_connections_per_issuer, 1, 100_000);
  if (t.owner_reserved_connections !== undefined)
    out.ownerReservedConnections = int(source, "[server] owner_reserved_connections", t.owner_reserved_connections, 1, 1_000);
  if (t.max_handshakes !== undefined) out.maxHandshakes = int(source, "[server] max_handshakes", t.max_handshakes, 1, 100_000);
  if (t.max_handshakes_per_peer !== undefined) out.maxHandshakesPerPeer = int(source, "[server] max_handshakes_per_peer", t.max_handshakes_per_peer, 1, 100_000);
  if (t.max_frame_bytes !== undefined) out.maxFrameBytes = int(source, "[server] max_frame_bytes", t.max_frame_bytes, 1024, 1024 * 1024);
  if (t.shutdown_grace !== undefined) out.shutdownGraceMs = duration(source, "[server] shutdown_grace", t.shutdown_grace);
  if (t.max_connection_lifetime !== undefined)
    out.maxConnectionLifetimeMs = duration(source, "[server] max_connection_lifetime", t.max_connection_lifetime);
}

function parseIdentities(source: string, v: unknown): UidIdentity[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) fail(source, "[[identity]]", "expected [[identity]] tables (note the double brackets)");
  const seen = new Set<number>();
  return v.map((raw, i) => {
    const where = `identity ${i + 1}`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail(source, where, "expected a table");
    const t = raw as Table;
    for (const k of Object.keys(t)) if (!["uid", "role", "agent", "act_for"].includes(k)) fail(source, where, `unknown field "${k}" (known: uid, role, agent, act_for)`);
    const uid = int(source, `${where}: uid`, t.uid, 0, 2 ** 32 - 1);
    if (seen.has(uid)) fail(source, `${where}: uid`, `uid ${uid} is listed twice`);
    seen.add(uid);
    const role = t.role;
    if (role !== "admin" && role !== "orchestrator" && role !== "agent")
      fail(source, `${where}: role`, `expected "admin", "orchestrator" or "agent", got ${show(role)}`);
    return { uid, role, ...roleFields(source, where, t, role, "identity") } satisfies UidIdentity;
  });
}

/** The commented starter file `lessor init` writes. */
export const STARTER_CONFIG = `# lessor configuration. Paths are relative to this directory (the lessor home).

[vault]
# cipher = "aes-256-gcm"            # or "xchacha20-poly1305"; applies to newly written values
# store = "sqlite"                  # lessor.db in this directory; "memory": nothing kept after exit (tests, demos);
#                                   # "postgres": one vault shared by several lessor instances (docs/storage.md)
# database_url = "postgres://lessor@db.internal:5432/lessor"   # for "postgres"; LESSOR_DATABASE_URL wins;
#                                   # keep a password out of this file: use ~/.pgpass or the environment
# listen = true                     # "postgres": hear other instances' revocations by LISTEN/NOTIFY (docs/team.md)
# poll_ms = 1000                    # "postgres": also read the change log this often (a pooler may drop NOTIFY)
# max_secret_bytes = 65536          # largest secret value
# keep_versions = 10                # older versions are pruned on write
# max_live_leases_per_agent = 100
# proxy_request_rows = 200          # requests an agent's own proxy reports (and its own tool-call reports, its
#                                   # revocations that changed nothing): one row each per 10 s; past it
#                                   # counted in one summary row per window (docs/daemon.md)
# lease_retention = "7d"            # expired leases are deleted after this
# approval_wait = "10m"             # a request needing a person's approval lapses if nobody decides in this time
# approval_use = "10m"              # an approved request must be taken up (and a denial stands) this long
# heartbeat = "8h"                  # dead-man switch: with no lessor heartbeat for this long, the killswitch
#                                   # is pulled (every live lease revoked, no grants until --release)

[keys]
# The master key comes from the first source that is configured:
#   1. the LESSOR_MASTER_KEY environment variable (64 hex characters; for CI),
#   2. the passphrase key store (passphrase_file), if it exists,
#   3. the key file (file), if it exists,
#   4. the OS keychain, if the marker file naming its entry (keychain_file) exists
#      (lessor init --key-source keychain; needs the optional package @napi-rs/keyring),
#   5. a command (run without a shell; prints the key as 64 hex characters).
# file = "master.key"
# passphrase_file = "keystore.json"
# keychain_file = "keychain.json"
# keychain_timeout = "30s"          # a keychain that does not answer (locked, hung) fails after this
# command = ["op", "read", "op://Private/lessor/master-key"]
# command_timeout = "10s"

[policy]
# file = "policy.toml"

[audit]
# jsonl = "audit.jsonl"             # also append every audit event to this file

[server]
# socket = "lessor.sock"            # the daemon's Unix socket (in this directory)
# socket_mode = "0600"              # widen only if agents under other uids must connect (see [[identity]])
# tcp = "127.0.0.1:7391"            # optional loopback TCP listener; clients authenticate with a token
# max_connections = 1024
# handshake_timeout = "5s"
# idle_timeout = "5m"
# read_timeout = "10s"              # a started frame must complete within this
# max_in_flight = 64                # pipelined requests per connection
# max_in_flight_per_principal = 32  # requests running at once for one identity, alone (fair scheduling)
# max_in_flight_per_principal_shared = 4  # the same while other identities are active too
# max_in_flight_total = 256         # requests running at once in the daemon
# max_buffered_bytes = 1048576      # unread answers past which a connection is not read
# max_connections_per_principal = 64  # per uid, vsock cid or token
# max_connections_per_issuer = 512  # all the tokens one uid (or VM) made, together
# owner_reserved_connections = 16   # past max_connections, for the daemon's own uid only (the brakes)
# max_handshakes = 128              # connections per transport still in their handshake
# max_handshakes_per_peer = 64      # of those, from one uid, cid or TCP address
# max_frame_bytes = 1048576
# shutdown_grace = "10s"
# max_connection_lifetime = "24h"   # every connection is closed after this, however busy; clients reconnect

# Unix-socket peers are identified by uid (SO_PEERCRED). The daemon's own uid is admin.
# A wider socket_mode or any [[identity]] needs the peer-credential addon (native/peercred): without
# it the daemon refuses to start. A socket other uids reach must sit in a directory you own that they
# cannot write (e.g. socket = "/run/lessor/agents.sock" with /run/lessor yours, mode 0755).
# [[identity]]
# uid = 1001
# role = "agent"
# agent = "claude"
#
# [[identity]]
# uid = 1002
# role = "orchestrator"
# act_for = ["claude-*"]

# [run]
# What lessor run's sandbox shows the agent (docs/sandbox.md). ~/ is your home, which the agent
# does not see otherwise; the vault's home, key and socket and your credential stores never show.
# project = "read-write"            # the current directory; or "read-only", or "none"
# read = ["~/.nvm"]                 # also shown, read-only (an agent installed under your home)
# write = ["~/.claude"]             # also shown, writable (an agent's own state)
# hide = ["~/.config/my-tool"]      # never shown, on top of ~/.ssh, ~/.aws, ~/.config/gh, ~/.netrc, …
# network = "proxy"                 # lessor's injecting proxy only; "none": no network; "host": this machine's network, unscoped
# vault_session = false             # true: the command gets an agent session at the vault for the run (--vault-session)

# VM guests (docs/vm.md). A guest is an agent or an orchestrator, never admin.
# Firecracker: a guest's connection to vsock port 7391 arrives on the Unix socket
# <uds_path>_7391, which lessor creates (0600, in a directory only you can write); every
# connection there is this VM, whatever its hello says.
# [[vm]]
# name = "vm1"                      # identity vm:vm1
# uds_path = "/run/fc/vm1.vsock"    # the vsock device's uds_path in Firecracker's configuration
# port = 7391
# agent = "claude"                  # role = "agent" (default) or "orchestrator" with act_for
# socket_mode = "0600"              # "0660" with uid = <Firecracker's uid> if it runs as another user
#
# QEMU/vhost-vsock: listen on AF_VSOCK (needs the native/vsock addon) and map guest CIDs.
# vsock_port = 7391                # in [server] above
# [[vsock]]
# cid = 5
# agent = "claude"

# Rotation hooks (docs/cli/secret.md): a command, run without a shell, that makes a secret's new
# value at its issuer and prints it on stdout. lessor secret rotate NAME runs it; with every, the
# daemon does too. Its environment holds only PATH, HOME, LANG, LC_ALL and TZ.
# [[rotate]]
# secret = "db-password"
# command = ["/usr/local/bin/rotate-db", "--user", "app"]
# timeout = "30s"
# revoke = "all"                    # the secret's live leases; or "none"
# stdin = "none"                    # or "current": the old value on the command's stdin
# every = "24h"                     # optional: lessor serve rotates it this often
`;
