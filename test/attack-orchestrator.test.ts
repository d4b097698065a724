/**
 * Attack pass on identities other than the owner, against a real `lessor serve`: agent and
 * orchestrator tokens, an orchestrator naming agents outside its act-for list, token revocation racing
 * handshakes, and refusals that must be audited. A canary secret never shows in a frame or log.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, describe, test } from "node:test";
import { checkServerProof, endpointBinding, hashTokenSecret, newNonce, splitToken } from "../src/crypto/token-proof.js";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";

const CANARY = `CANARY_${randomBytes(16).toString("hex")}`;
const DOMAIN = "api.github.com";
const seen: string[] = [];

class Conn extends DaemonConn {
  /** The token handshake up to the daemon's proof; `show()` sends the token and resolves with the welcome. */
  static async challenge(d: RunningDaemon, token: string, over: "tcp" | "uds" = "tcp"): Promise<{ c: Conn; show: () => Promise<Msg> }> {
    const c = over === "tcp" ? await Conn.open(d.tcp!) : await Conn.open(d.socket);
    const { id, secret } = splitToken(token)!;
    const nonce = newNonce();
    c.send({ protocol: "lessor", version: 1, tokenId: id, nonce: nonce.toString("base64url") });
    const ch = await c.next();
    assert.ok(ch.challenge, JSON.stringify(ch));
    const binding = over === "tcp" ? endpointBinding("tcp", c.socket.remoteAddress, c.socket.remotePort) : endpointBinding("uds");
    assert.ok(checkServerProof(hashTokenSecret(secret), nonce, Buffer.from(ch.challenge.nonce, "base64url"), id, binding, Buffer.from(ch.challenge.proof, "base64url")));
    return {
      c,
      show: async () => {
        c.send({ token });
        const w = await c.next();
        seen.push(JSON.stringify(w));
        return w;
      },
    };
  }
  static async token(d: RunningDaemon, token: string, over: "tcp" | "uds" = "tcp"): Promise<Conn> {
    const { c, show } = await Conn.challenge(d, token, over);
    const w = await show();
    assert.equal(w.ok, true, JSON.stringify(w));
    return c;
  }
  override async call(method: string, params?: unknown): Promise<Msg> {
    const r = await super.call(method, params);
    if (method !== "token_create") seen.push(JSON.stringify(r));
    return r;
  }
  async ok(method: string, params?: unknown): Promise<Msg> {
    const r = await this.call(method, params);
    assert.equal(r.ok, true, `${method} ${JSON.stringify(params)}: ${JSON.stringify(r.error ?? r)}`);
    return r.result;
  }
}

const rule = (name: string, agents: string[], secrets: string[], extra = ""): string =>
  `[[rule]]\nname = ${JSON.stringify(name)}\neffect = "allow"\nagents = ${JSON.stringify(agents)}\nsecrets = ${JSON.stringify(secrets)}\ndomains = ["${DOMAIN}"]\n${extra}\n`;
const POLICY = rule("claude", ["claude", "bob", "ci-*"], ["canary"]);
const CONFIG = `[vault]\nmax_live_leases_per_agent = 100000\n[server]\ntcp = "127.0.0.1:0"\n`;

describe("orchestrators and agent tokens against a real lessor serve", () => {
  let d: RunningDaemon;
  let admin: Conn;
  const tok: Record<string, { id: string; token: string }> = {};

  before(async () => {
    d = await startServe(await makeHome({ config: CONFIG, policy: POLICY }));
    admin = await Conn.admin(d);
    await admin.ok("store_secret", { name: "canary", value: CANARY });
    for (const [n, p] of Object.entries({
      claude: { role: "agent", agent: "claude" },
      bob: { role: "agent", agent: "bob" },
      orch: { role: "orchestrator", actFor: ["ci-*"] },
    })) {
      const t = await admin.ok("token_create", { name: n, ...p });
      tok[n] = { id: t.id, token: t.token };
    }
  });
  after(async () => {
    admin?.close();
    seen.push(d?.stderr() ?? "");
    await d?.stop();
    for (const s of seen) assert.ok(!s.includes(CANARY), "the canary showed in a frame or the daemon's log");
  });

  const auditRows = async (actorPrefix: string, type = "access_denied"): Promise<Msg[]> =>
    ((await admin.ok("audit_query", { types: [type], limit: 1000 })) as Msg[]).filter((e) => String(e.actor?.id ?? e.actorId ?? "").startsWith(actorPrefix));

  test("an agent or an orchestrator naming another agent in list_leases is refused AND audited (security.md: 'both are denied and audited'; protocol.md: 'another: access_denied, audited')", async () => {
    const claude = await Conn.token(d, tok.claude!.token);
    const orch = await Conn.token(d, tok.orch!.token, "uds");
    const bob = await Conn.token(d, tok.bob!.token);
    await bob.ok("request_lease", { secret: "canary", ttl: "1h" });
    const before1 = (await auditRows(`token:claude/`)).length;
    const before2 = (await auditRows(`token:orch/`)).length;
    const r1 = await claude.call("list_leases", { agent: "bob" });
    assert.equal(r1.error?.code, "access_denied");
    const r2 = await orch.call("list_leases", { agent: "bob" });
    assert.equal(r2.error?.code, "access_denied");
    // Compare: list_granted naming bob is refused and audited.
    assert.equal((await claude.call("list_granted", { agent: "bob" })).error?.code, "access_denied");
    const after1 = await auditRows(`token:claude/`);
    const after2 = await auditRows(`token:orch/`);
    const audited = { agent: after1.length - before1, orchestrator: after2.length - before2 };
    assert.deepEqual(audited, { agent: 2, orchestrator: 1 }, `claude's two refusals (list_granted, list_leases) and the orchestrator's list_leases refusal must each be audited; audited: ${JSON.stringify(audited)}`);
    for (const c of [claude, orch, bob]) c.close();
  });

  test("a token revoked while 40 connections (TCP and Unix socket) are finishing their handshake: none is left open 1.5 s after the revocation", async () => {
    const t = await admin.ok("token_create", { name: "racy", role: "agent", agent: "claude" });
    // 40 connections at the daemon's proof, over both transports, then the token shown on all of them
    // while the admin revokes it.
    const pend = await Promise.all(Array.from({ length: 40 }, (_, i) => Conn.challenge(d, t.token, i % 2 === 0 ? "tcp" : "uds")));
    const welcomes: Promise<Msg>[] = [];
    for (let i = 0; i < pend.length; i++) {
      welcomes.push(pend[i]!.show());
      if (i === 20) welcomes.push(admin.call("token_revoke", { id: t.id }));
    }
    const got = await Promise.all(welcomes);
    const revoked = got.splice(21, 1)[0]!;
    assert.equal(revoked.ok, true, JSON.stringify(revoked));
    const welcomed = pend.filter((_, i) => got[i]!.ok === true).map((p) => p.c);
    // Give the daemon well past its second.
    await sleep(1500);
    const stillOpen = welcomed.filter((c) => !c.isClosed);
    // Each one still open is one the daemon let in and never closed: it answers a request only then.
    const answers = await Promise.all(stillOpen.map((c) => c.call("whoami").catch(() => null)));
    for (const c of pend) c.c.close();
    assert.equal(stillOpen.length, 0, `${stillOpen.length} of ${welcomed.length} connections welcomed around the revocation were still open 1.5 s after it (answers: ${JSON.stringify(answers.map((a) => a?.error?.code ?? a?.ok))})`);
  });
});
