/**
 * A team server for attack tests: two real `lessor serve` daemons (A and B) on one fresh PostgreSQL
 * schema, same key and policy, B reaching PostgreSQL through a loopback TCP relay the test owns so
 * that B's database link can be cut (and restored) while A keeps its own. Needs LESSOR_TEST_PG_URL
 * (pg-helpers.ts PG_SKIP).
 */
import { copyFileSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import { makeHome, startServe, startTwo, type RunningDaemon } from "./daemon-harness.js";
import { admin, PG_URL, testSchema } from "./pg-helpers.js";

/** A TCP relay on 127.0.0.1 to the test server's PostgreSQL; `cut()` drops every connection and refuses new ones until `restore()`. */
export class PgRelay {
  #open = true;
  readonly #socks = new Set<Socket>();
  private constructor(
    readonly server: Server,
    readonly port: number,
  ) {}
  static async start(): Promise<PgRelay> {
    const pg = new URL(PG_URL!);
    let relay: PgRelay | undefined;
    const server = createServer((c) => {
      c.on("error", () => {});
      if (!relay!.#open) return void c.destroy();
      const up = createConnection({ host: "127.0.0.1", port: Number(pg.port || 5432) });
      up.on("error", () => c.destroy());
      c.on("close", () => up.destroy());
      up.on("close", () => c.destroy());
      relay!.#socks.add(c).add(up);
      c.once("close", () => relay!.#socks.delete(c));
      up.once("close", () => relay!.#socks.delete(up));
      c.pipe(up).pipe(c);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    relay = new PgRelay(server, (server.address() as AddressInfo).port);
    return relay;
  }
  cut(): void {
    this.#open = false;
    for (const s of this.#socks) s.destroy();
  }
  restore(): void {
    this.#open = true;
  }
  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** The two daemons with an admin client each (startTwo), and what the test may need of the set-up. */
export type PgTeam = Awaited<ReturnType<typeof startTwo>> & {
  schema: string;
  relay: PgRelay;
  homeB: string;
  /** Closed with the team after the test. */
  closeLater(c: { close(): unknown }): void;
  /** Stopped after the test (push a daemon started later). */
  daemons: RunningDaemon[];
};

/**
 * A and B on a fresh schema of their own, same key and `policy`; B through a PgRelay. `seed` fills the
 * vault (opened on A's home) before the daemons start; `vault`: extra [vault] lines for both, left out
 * while seeding (a heartbeat period there would arm the dead-man switch at that open, and a slow start
 * of the two daemons could outlast it: they would come up fired). Stopped, closed and dropped after `t`.
 */
export async function pgTeam(
  t: TestContext,
  opts: { policy: string; seed: (v: Awaited<ReturnType<typeof openVault>>) => Promise<void>; vault?: string },
): Promise<PgTeam> {
  const daemons: RunningDaemon[] = [];
  const clients: { close(): unknown }[] = [];
  const s = await testSchema();
  const relay = await PgRelay.start();
  t.after(async () => {
    await Promise.allSettled(clients.map(async (c) => c.close()));
    await Promise.allSettled(daemons.map((d) => d.stop()));
    await relay.close();
    await s.drop();
  });
  const urlB = new URL(s.url);
  urlB.hostname = "127.0.0.1";
  urlB.port = String(relay.port);
  const config = (u: string, extra: string) => `[vault]\nstore = "postgres"\ndatabase_url = ${JSON.stringify(u)}\n${extra}\n[server]\ntcp = "127.0.0.1:0"\n`;
  const homeA = await makeHome({ config: config(s.url, ""), policy: opts.policy });
  const homeB = await makeHome({ config: config(urlB.toString(), opts.vault ?? ""), policy: opts.policy });
  copyFileSync(join(homeA, "master.key"), join(homeB, "master.key"));
  const v = await openVault({ home: homeA, env: { LESSOR_HOME: homeA } });
  await opts.seed(v);
  await v.close();
  if (opts.vault) writeFileSync(join(homeA, "lessor.toml"), config(s.url, opts.vault), { mode: 0o600 });
  const two = await startTwo([startServe(homeA), startServe(homeB)], daemons, clients);
  return { ...two, schema: s.schema, relay, homeB, daemons, closeLater: (c) => void clients.push(c) };
}

/** How many of `schema`'s audit rows hold `value` anywhere in their text. */
export async function auditRowsHolding(schema: string, value: string): Promise<number> {
  return (await admin(`SELECT count(*)::int AS n FROM ${schema}.audit a WHERE position($1 in a::text) > 0`, [value])).rows[0].n;
}
