/**
 * The injecting proxy for bench/proxy.ts, in its own process as under `lessor run` (the agent is one
 * process, the proxy another): a ForwardProxy on 127.0.0.1 that intercepts the bench upstream's host
 * and puts the credential in `Authorization: Bearer …`. Every other host is refused. Two modes:
 *
 * - fixed (default): `fixedIntercept`, no vault. Every request gets the credential added, and every
 *   response is scrubbed for it (one ScrubPatterns, built once and shared, as for an agent's live
 *   leases). This is the proxy's own cost: tunnels, TLS both ways, headers, scrubbing.
 * - `--leased`: the egress policy `lessor run` really uses (LeaseEgress) over a vault opened in this
 *   process, as run's embedded mode does: a temp lessor home (SQLite, the default store), the secret
 *   stored, a policy granting agent "bench" that secret for the upstream's host (no use limit, 2 h), one
 *   lease taken with leaseAndAccess, and a placeholder issued for it. The client sends
 *   `Authorization: Bearer <placeholder>`; per request the policy uses the lease through the vault
 *   (access_secret: one use, counted and audited), swaps the placeholder for the value, scrubs the
 *   response, and afterwards reports the request (record_proxy_requests: an audit event, batched); it also polls
 *   the leases every 50 ms. The home is removed on exit.
 *
 * Input: LESSOR_BENCH_UPSTREAM, the JSON line bench/proxy-upstream.ts printed ({ host, port, caPem });
 * LESSOR_BENCH_SECRET, the credential (the upstream answers 401 to any other); LESSOR_BENCH_NO_SCRUB=1
 * turns scrubbing off in fixed mode (LeaseEgress always scrubs, as lessor run does);
 * LESSOR_BENCH_LEASED_TMP, where the leased mode's temp home goes (default: the system's temp dir).
 * Output: one JSON line on stdout when ready: { mode, port, caPem, scrub } and, leased, `placeholder`
 * (what the client must send instead of the credential). Leased, on SIGTERM, one more before it exits:
 * { leaseUses }, the uses the vault counted, so the client can check that each request took one.
 *
 * Names resolve through a fixed table (host → 127.0.0.1), never a real lookup; the guard allows
 * 127.0.0.0/8 for this bench only, and the connect step refuses anything but loopback.
 */
import type { IncomingHttpHeaders } from "node:http";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inProcessApi } from "../src/backend/in-process.js";
import { initHome, openVault } from "../src/config/open-vault.js";
import { LocalCa } from "../src/proxy/ca.js";
import { fixedIntercept, type Egress } from "../src/proxy/egress.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard, type ConnectTo } from "../src/proxy/guard.js";
import { LeaseEgress } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { PlaceholderRegistry } from "../src/proxy/placeholder-registry.js";
import { ProxyRefusal } from "../src/proxy/refusal.js";
import { ScrubPatterns } from "../src/proxy/scrub.js";

const up = JSON.parse(process.env.LESSOR_BENCH_UPSTREAM ?? "null") as { host: string; port: number; caPem: string } | null;
if (!up) throw new Error("LESSOR_BENCH_UPSTREAM is not set: start this from bench/proxy.ts");
const SECRET = process.env.LESSOR_BENCH_SECRET ?? "";
if (!/^ghp_[A-Za-z0-9]{36}$/.test(SECRET)) throw new Error("LESSOR_BENCH_SECRET is not a ghp_… token: start this from bench/proxy.ts");
const leased = process.argv.includes("--leased");
/** LESSOR_BENCH_NO_SCRUB=1 turns scrubbing off, to see what it costs (lessor run always scrubs). */
const scrubbing = leased || process.env.LESSOR_BENCH_NO_SCRUB !== "1";

/** What the run holds beside the proxy; `close` undoes it. */
interface Policy {
  egress: Egress;
  placeholder?: string;
  /** Leased: how many times the vault counted the lease used (the lease taken, then one per request). */
  uses?(): Promise<number>;
  close(): Promise<void>;
}

/** Fixed mode: the credential added to every request, no vault. */
function fixedPolicy(host: string, port: number): Policy {
  const patterns = new ScrubPatterns([{ value: SECRET, placeholder: makePlaceholder(SECRET) }]);
  const inject = (h: IncomingHttpHeaders): IncomingHttpHeaders => ({ ...h, authorization: `Bearer ${SECRET}` });
  const egress: Egress = {
    decide(h, p) {
      if (h === host && p === port) return fixedIntercept(inject, scrubbing ? patterns : undefined);
      return { kind: "refuse", refusal: new ProxyRefusal({ reason: "not_granted", host: h, port: p }, `the bench proxy covers ${host} only`) };
    },
  };
  return { egress, close: async () => {} };
}

const AGENT = "bench";
const SECRET_NAME = "bench-token";

/** Leased mode: lessor run's LeaseEgress over an in-process vault in a temp home (see the module comment). */
async function leasedPolicy(host: string): Promise<Policy> {
  const dir = mkdtempSync(join(process.env.LESSOR_BENCH_LEASED_TMP || tmpdir(), "lessor-bench-proxy-leased-"));
  const home = join(dir, "home");
  // Only what the vault needs: the parent's LESSOR_* variables must not pick another key or daemon.
  const env = { PATH: process.env.PATH };
  try {
    await initHome({ home, env });
    // No max_uses: the bench makes tens of thousands of requests on one lease, each one use.
    writeFileSync(
      join(home, "policy.toml"),
      `[[rule]]\nname = "bench-proxy"\neffect = "allow"\nagents = ["${AGENT}"]\nsecrets = ["${SECRET_NAME}"]\ndomains = ["${host}"]\nttl = "2h"\nmax_ttl = "24h"\n`,
    );
    const vault = await openVault({ home, env });
    try {
      const api = inProcessApi(vault);
      await api.storeSecret({ name: SECRET_NAME, value: SECRET });
      const got = await api.leaseAndAccess({ agent: AGENT, secret: SECRET_NAME, domains: [host], ttl: "2h" });
      got.value.wipe();
      // As lessor run does (src/cli/run/placeholders.ts): one placeholder per lease and agent.
      const placeholder = new PlaceholderRegistry().issue(got.lease.id, AGENT, SECRET);
      const egress = new LeaseEgress({
        api,
        agent: AGENT,
        credentials: [{ lease: got.lease, secret: `global/${SECRET_NAME}`, placeholder, value: SECRET, rule: { mode: "placeholder" } }],
        egress: "strict",
        warn: (line) => process.stderr.write(`${line}\n`),
      });
      egress.start();
      return {
        egress,
        placeholder,
        uses: async () => (await api.listLeases({ agent: AGENT })).find((l) => l.id === got.lease.id)?.uses ?? -1,
        close: async () => {
          await egress.close();
          await vault.close();
          rmSync(dir, { recursive: true, force: true });
        },
      };
    } catch (e) {
      await vault.close();
      throw e;
    }
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

const policy = leased ? await leasedPolicy(up.host) : fixedPolicy(up.host, up.port);

const guard = new SsrfGuard({
  ports: [up.port],
  allow: ["127.0.0.0/8"],
  resolve: async (host) => {
    if (host !== up.host) throw Object.assign(new Error("not in the bench's table"), { code: "ENOTFOUND" });
    return [{ address: "127.0.0.1", family: 4 }];
  },
});

function connect(to: ConnectTo) {
  if (to.host !== "127.0.0.1") throw new Error(`the bench proxy never connects off loopback (asked for ${to.host})`);
  return createConnection({ host: to.host, port: to.port, family: to.family });
}

const ca = LocalCa.create({ permitted: [up.host] });
const proxy = new ForwardProxy({ egress: policy.egress, ca, guard, upstreamCa: up.caPem, connect });
const port = await proxy.listen();
process.stdout.write(`${JSON.stringify({ mode: leased ? "leased" : "fixed", port, caPem: ca.certPem, scrub: scrubbing, ...(policy.placeholder !== undefined ? { placeholder: policy.placeholder } : {}) })}\n`);
// Exit through close() so that --cpu-prof writes its profile (and the leased home is removed).
process.on("SIGTERM", () =>
  void proxy
    .close()
    .then(async () => {
      if (policy.uses) process.stdout.write(`${JSON.stringify({ leaseUses: await policy.uses() })}\n`);
    })
    .finally(() => policy.close())
    .finally(() => process.exit(0)),
);
