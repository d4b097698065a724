/**
 * Attack (roles pass): the leases a run's vault session took must not outlive the session. The
 * session sweep (src/server/session-sweep.ts) revokes a gone run's token AND the leases it was
 * issued, but only for tokens still live: once the session token has expired (a run longer than its
 * --ttl, 1h by default, then killed -9 / OOM-killed; or killed while the daemon was down past the
 * token's ttl), the leases the sandboxed command took through the session stay live for their own
 * (longer) ttl.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";
import { type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";
import { agentRule, OkConn, sessionSuite } from "./session-probe.js";
import { tempDirUntilExit } from "./helpers.js";

const AGENT = "runner-x";

/** As the owner: makes a session token (ttl argv[5]) on socket argv[2] for agent argv[3], writes it to argv[4], then stays until killed. */
const MINT = String.raw`
import { writeFileSync } from "node:fs";
import { connect } from "node:net";
const [sock, agent, out, ttl] = process.argv.slice(2);
const frame = (o) => { const j = Buffer.from(JSON.stringify(o)); const h = Buffer.alloc(4); h.writeUInt32BE(j.length); return Buffer.concat([h, j]); };
const s = connect({ path: sock });
let buf = Buffer.alloc(0); let n = 0;
s.on("data", (c) => { buf = Buffer.concat([buf, c]); while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) { const m = JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString()); buf = buf.subarray(4 + buf.readUInt32BE(0)); n++;
  if (n === 1) s.write(frame({ id: "00000000-0000-4000-8000-000000000001", method: "token_create", params: { name: "minted", role: "agent", agent, ttl, session: true } }));
  else writeFileSync(out, JSON.stringify(m)); } });
s.on("connect", () => s.write(frame({ protocol: "lessor", version: 1 })));
setInterval(() => {}, 1000);
`;

const POLICY = agentRule(AGENT)("open", ["open"], `domains = ["api.example.com"]\nttl = "1h"\nmax_ttl = "2h"\nrenewable = true\nreveal = true`);

async function until(what: string, f: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return;
    await sleep(100);
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe("a run's vault session: its leases end with it even when its token expired first", () => {
  let d: RunningDaemon;
  let admin: OkConn;
  const root = tempDirUntilExit("lessor-rolesx-");
  sessionSuite(
    POLICY,
    (x) => ({ d, admin } = x),
    async (a) => void (await a.ok("store_secret", { name: "open", value: "v-" + "x".repeat(20) })),
  );

  test("a run that outlived its session token's ttl, then killed -9: the lease its session took is not left live for its 1h ttl", async () => {
    const dir = join(root, "mint");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "mint.mjs"), MINT);
    const out = join(dir, "token.json");
    const minter = spawn(process.execPath, [join(dir, "mint.mjs"), d.socket, AGENT, out, "3s"], { stdio: "ignore" });
    const gone = new Promise((r) => minter.on("close", r));
    try {
      await until("the minted token", () => existsSync(out));
      const made = JSON.parse(readFileSync(out, "utf8"));
      assert.equal(made.ok, true, JSON.stringify(made));
      assert.match(made.result.name, new RegExp(`^session:${minter.pid}\\.`));
      // The sandboxed command, through the session, takes a lease (1h) while the token lives.
      const session = await OkConn.open(d.socket);
      session.send({ protocol: "lessor", version: 1, token: made.result.token });
      assert.equal((await session.next()).ok, true);
      const lease = await session.ok("request_lease", { secret: "open", domains: ["api.example.com"] });
      session.close();
      // The session token expires (the run went on past its --ttl), then the run is killed outright.
      await sleep(3500);
      minter.kill("SIGKILL");
      await gone;
      await sleep(3000); // three sweeps
      const [l] = (await admin.ok("list_leases", { id: lease.id })) as Msg[];
      const live = ((await admin.ok("list_leases", { agent: AGENT, live: true })) as Msg[]).map((x) => x.id);
      assert.ok(!live.includes(lease.id), `the lease the gone run's session took is still live until ${new Date(l.expiresAt).toISOString()}: ${JSON.stringify(l)}`);
    } finally {
      minter.kill("SIGKILL");
    }
  });
});
