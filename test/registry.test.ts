/**
 * The method registry (src/protocol/registry.ts) is the one list of methods: every entry is dispatched
 * by the server, callable through the client's `api` and `call`, and served by the in-process backend,
 * all derived from the table (this file iterates it; it lists no method except in SAMPLES, which types
 * force to cover every entry). Each answer matches the entry's result schema, and the table's roles and
 * audit behaviour agree with what the core does.
 */
import assert from "node:assert/strict";
import { createServer, type Server } from "node:net";
import { Duplex, PassThrough } from "node:stream";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { inProcessApi } from "../src/backend/in-process.js";
import { LessorClient } from "../src/client/index.js";
import { envKeySource } from "../src/crypto/keys/env.js";
import { SecretBytes } from "../src/crypto/secret-bytes.js";
import { REGISTRY, type MethodName, type Params } from "../src/protocol/registry.js";
import { LessorServer, type PeerInfo } from "../src/server/server.js";
import { createMemoryStore } from "../src/store/memory.js";
import { VaultError } from "../src/base/errors.js";
import type { Identity, Role } from "../src/base/types.js";
import { parsePolicy } from "../src/vault/policy.js";
import { Vault } from "../src/vault/vault.js";
import { grant, hexKey, tempDir } from "./helpers.js";

const POLICY = grant("gh", ["claude"], ["github-token"], ["api.github.com"]) + grant("gate", ["claude"], ["gated"], ["api.github.com"], 'approval = "required"');
const NAMES = Object.keys(REGISTRY) as MethodName[];
const ROLES: Role[] = ["admin", "orchestrator", "agent"];

/** What samples may refer to: state made before the calls. */
interface Ctx {
  leaseId: string;
  tokenId: string;
  /** A pending approval (rule "gate"). */
  approvalId: string;
}

/** Params for one call of each method, valid for an admin on the rig below (run in registry order). */
const SAMPLES: { [M in MethodName]: (c: Ctx) => Params<M> } = {
  status: () => ({}),
  describe: () => ({}),
  whoami: () => ({}),
  store_secret: () => ({ name: "github-token", value: "ghp_one", kind: "pat" }),
  rotate_secret: () => ({ name: "github-token", value: Buffer.from("ghp_two").toString("base64"), encoding: "base64" }),
  rotate_secret_hook: () => ({ name: "github-token" }),
  rollback_secret: () => ({ name: "github-token", version: 1 }),
  delete_secret: () => ({ name: "old-token" }),
  reveal_secret: () => ({ name: "github-token" }),
  list_secrets: () => ({}),
  list_granted: () => ({ agent: "claude" }),
  get_secret_metadata: () => ({ name: "github-token" }),
  secret_history: () => ({ scope: "global", name: "github-token" }),
  request_lease: () => ({ agent: "claude", secret: "github-token", domains: ["api.github.com"], access: {} }),
  access_secret: (c) => ({ leaseId: c.leaseId, domain: "api.github.com" }),
  renew_lease: (c) => ({ leaseId: c.leaseId, ttl: "10m" }),
  revoke_lease: (c) => ({ leaseId: c.leaseId, reason: "done" }),
  record_proxy_requests: (c) => ({ reports: [{ agent: "claude", leaseIds: [c.leaseId], method: "GET", host: "api.github.com", path: "/user", status: 200, bytesOut: 0, bytesIn: 12, ms: 3.5, outcome: "ok" }] }),
  record_tool_call: () => ({ agent: "claude", tool: "list_secrets", outcome: "refused", code: "access_denied", ms: 4.5 }),
  record_refusal: () => ({ agent: "claude", secret: "github-token", domain: "api.github.com", by: "git-credential", reason: "the URL is plain http://" }),
  revoke_all_for_agent: () => ({ agent: "other-agent" }), // not claude: it would withdraw the rig's approval too
  list_leases: () => ({ agent: "claude", live: false }),
  approval_request: () => ({ agent: "claude", secret: "gated", domains: ["api.github.com"], reason: "the sample asks" }),
  approval_list: () => ({ all: true }),
  approval_decide: (c) => ({ id: c.approvalId, approve: true, reason: "looks right" }),
  approval_withdraw: () => ({ requestedBy: "embedded", agent: "claude", reason: "the run ended" }), // the rig's approval, approved above and not used
  killswitch: () => ({ reason: "drill" }),
  killswitch_release: () => ({ reason: "drill over" }),
  heartbeat: () => ({ reason: "still watching" }),
  audit_query: () => ({ limit: 5, order: "desc" }),
  audit_verify: () => ({}),
  audit_recover: () => ({ reason: "nothing is broken" }),
  reload_policy: () => ({}),
  explain: () => ({ agent: "claude", secret: "github-token", domain: "api.github.com" }),
  rotate_master_key: () => ({}),
  token_create: () => ({ name: "ci", role: "agent", agent: "claude", ttl: "1d" }),
  token_list: () => ({}),
  token_revoke: (c) => ({ id: c.tokenId }),
};

const IDENTITIES: Record<Role, Omit<Identity, "transport">> = {
  admin: { id: "test:admin", role: "admin" },
  orchestrator: { id: "test:orch", role: "orchestrator", actFor: ["claude"] },
  agent: { id: "test:claude", role: "agent", agent: "claude" },
};

/** A vault (policy from a loader, so reload_policy works) with the state the samples refer to. */
async function openRigVault(): Promise<{ vault: Vault; ctx: Ctx }> {
  // A rotation hook that makes a value without running anything; revoke "none" keeps the samples' lease.
  const hook = { secret: { scope: "global", name: "github-token" }, command: ["fake"], timeoutMs: 1000, revoke: "none", stdin: "none", everyMs: null } as const;
  const rotationHooks = { find: () => hook, list: () => [hook], run: async () => ({ ok: true as const, value: Buffer.from("ghp_hooked") }) };
  const vault = await Vault.open({ store: createMemoryStore(), keys: envKeySource({ LESSOR_MASTER_KEY: hexKey() })!, policy: async () => parsePolicy(POLICY, "test-policy.toml"), rotationHooks });
  after(() => vault.close());
  const admin = vault.admin();
  await admin.storeSecret({ name: "github-token", value: "ghp_zero" });
  await admin.storeSecret({ name: "old-token", value: "old" });
  const lease = await admin.requestLease({ agent: "claude", secret: "github-token", domains: ["api.github.com"] });
  const token = await admin.createToken({ name: "spare", role: "agent", agent: "claude" });
  await admin.storeSecret({ name: "gated", value: "gated-value" });
  const asked = await admin.requestApproval({ agent: "claude", secret: "gated" });
  assert.ok(asked.required);
  return { vault, ctx: { leaseId: lease.id, tokenId: token.id, approvalId: asked.approval.id } };
}

/** A server with one Unix socket per role (the peer's role told by a fake uid), and a client on each. */
async function openRig(): Promise<{ vault: Vault; ctx: Ctx; clients: Record<Role, LessorClient>; server: LessorServer }> {
  const { vault, ctx } = await openRigVault();
  const byUid = new Map(ROLES.map((r, i) => [i + 1, r]));
  const server = new LessorServer({
    vault,
    authenticate: async (peer: PeerInfo) => ({ ...IDENTITIES[byUid.get(peer.uid!)!], transport: peer.transport }),
    log: { info() {}, warn() {}, error() {} },
    version: "test-registry",
  });
  const dir = tempDir("lessor-registry-");
  const listeners: Server[] = [];
  const clients = {} as Record<Role, LessorClient>;
  for (const [uid, role] of byUid) {
    const path = join(dir, `${role}.sock`);
    const l = createServer((s) => server.handle(s, { transport: "uds", uid }));
    await new Promise<void>((resolve) => l.listen(path, resolve));
    listeners.push(l);
    clients[role] = await LessorClient.connect({ socketPath: path });
  }
  after(async () => {
    for (const c of Object.values(clients)) await c.close();
    for (const l of listeners) l.close();
    await server.close();
  });
  return { vault, ctx, clients, server };
}

/** The wire form of a decoded result: a SecretBytes value back in base64, as the server sends it. */
function wireOf(r: unknown): unknown {
  if (typeof r !== "object" || r === null || !((r as { value?: unknown }).value instanceof SecretBytes)) return r;
  const { value, ...rest } = r as { value: SecretBytes };
  return { value: value.expose().toString("base64"), encoding: "base64", ...rest };
}

/** Checks `result` against the entry's result schema (strict: no field more, none missing). */
function assertShape(m: MethodName, result: unknown): void {
  const parsed = REGISTRY[m].result.safeParse(result);
  assert.ok(parsed.success, `${m}: the answer does not match its result schema: ${parsed.success ? "" : parsed.error.message}`);
}

/** True for a refusal of the caller's role by the core (src/vault/access.ts roleError). */
function isRoleRefusal(e: unknown): boolean {
  return e instanceof VaultError && e.code === "access_denied" && /^role \w+ may not /.test(e.message);
}

const rig = await openRig();

describe("the method registry", () => {
  test("every entry is dispatched by the server and answers in its result shape, audited as the table says", async () => {
    const admin = rig.vault.admin();
    const head = async () => (await admin.status()).auditHead;
    for (const m of NAMES) {
      const before = await head();
      let result: unknown;
      try {
        result = await rig.clients.admin.call(m, SAMPLES[m](rig.ctx) as never);
      } catch (e) {
        assert.fail(`${m} as admin was refused: ${(e as Error).message}`);
      }
      assertShape(m, result);
      const wrote = (await head()) > before;
      // "audited": a call that does something writes an event; one that says it did nothing may not.
      const r = result as Record<string, unknown>;
      // (a rotation with one key in a read-only source rotates from nothing: `from` is empty)
      const didNothing = ["recovered", "revoked", "released"].some((k) => r[k] === false) || (Array.isArray(r["from"]) && r["from"].length === 0);
      if (REGISTRY[m].audit === "read-only") assert.equal(wrote, false, `${m} is "read-only" in the registry but wrote an audit event`);
      else if (!didNothing) assert.equal(wrote, true, `${m} is "audited" in the registry but wrote no audit event`);
    }
  });

  test("every entry is callable through client.api, which decodes values", async () => {
    for (const m of NAMES) assert.equal(typeof rig.clients.admin.api[m], "function", m);
    assert.equal((rig.clients.admin.api as unknown as Record<string, unknown>)["then"], undefined, "the api is not a thenable");
    const got = await rig.clients.agent.api.request_lease({ secret: "github-token", access: { domain: "api.github.com" } });
    assert.ok("value" in got && got.value instanceof SecretBytes);
    assert.equal(got.lease.uses, 1);
    got.value.wipe();
    const who = await rig.clients.orchestrator.api.whoami();
    assert.equal(who.identity.role, "orchestrator");
  });

  test("the table's roles are the core's: a role outside them is refused (and audited), one inside is not refused for its role", async () => {
    const admin = rig.vault.admin();
    for (const role of ROLES) {
      for (const m of NAMES) {
        const allowed = REGISTRY[m].roles.includes(role);
        const denialsBefore = (await admin.auditQuery({ types: ["access_denied"] })).length;
        let refusal: unknown = null;
        try {
          await rig.clients[role].api[m](SAMPLES[m](rig.ctx) as never);
        } catch (e) {
          refusal = e;
        }
        if (allowed) assert.ok(!isRoleRefusal(refusal), `${m} lists ${role} but the core refused its role: ${(refusal as Error | null)?.message}`);
        else {
          assert.ok(isRoleRefusal(refusal), `${m} does not list ${role} but the core did not refuse its role (${refusal === null ? "it ran" : (refusal as Error).message})`);
          assert.equal((await admin.auditQuery({ types: ["access_denied"] })).length, denialsBefore + 1, `${m} refused for ${role} is audited`);
        }
      }
    }
  });

  test("the in-process backend serves exactly the registry's methods, through the same bindings", async () => {
    const { vault, ctx } = await openRigVault();
    const api = inProcessApi(vault).api;
    assert.deepEqual(Object.keys(api).sort(), [...NAMES].sort());
    for (const m of NAMES) {
      let result: unknown;
      try {
        result = await api[m](SAMPLES[m](ctx) as never);
      } catch (e) {
        assert.fail(`${m} in-process was refused: ${(e as Error).message}`);
      }
      assertShape(m, wireOf(result));
    }
  });
});

test("the client's engine runs over any duplex stream: here an in-memory pipe into the server, no socket", async () => {
  const toServer = new PassThrough();
  const toClient = new PassThrough();
  const clientEnd = Duplex.from({ readable: toClient, writable: toServer });
  const serverEnd = Duplex.from({ readable: toServer, writable: toClient });
  const transport = {
    where: "an in-memory pipe",
    needsToken: false,
    dial: () => {
      rig.server.handle(serverEnd, { transport: "uds", uid: 3 }); // uid 3: the agent's listener above
      return { stream: clientEnd, connected: Promise.resolve(), binding: () => ({ transport: "uds" }) };
    },
    connectError: (e: Error) => new VaultError("unavailable", e.message),
  };
  const c = await LessorClient.over(transport, { reconnect: false });
  try {
    assert.equal(c.identity.agent, "claude");
    assert.equal((await c.api.whoami()).identity.role, "agent");
    const got = await c.leaseAndAccess({ secret: "github-token" }, { domain: "api.github.com" });
    assert.equal(got.lease.uses, 1);
    got.value.wipe();
  } finally {
    await c.close();
  }
});
