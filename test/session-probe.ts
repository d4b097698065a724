/**
 * For attacks on `lessor run --vault-session`: a probe the sandboxed command runs to speak the raw
 * protocol over its session socket, a project directory to run it in, the run's answers read back,
 * and an owner's connection whose calls must succeed.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { after, before } from "node:test";
import { fileURLToPath } from "node:url";
import { DaemonConn, makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import type { Msg } from "./raw-client.js";

/** The `skip` option for tests that need a bwrap sandbox. */
export const NO_BWRAP = spawnSync("bwrap", ["--ro-bind", "/", "/", "true"]).status !== 0 ? "bwrap cannot make a sandbox here" : false;
/** The repository (a run's [run] read path, so the probe's node can load). */
export const REPO = resolve(fileURLToPath(new URL("..", import.meta.url)));

/** A daemon connection whose `ok()` fails the test unless the call succeeded, and resolves with its result. */
export class OkConn extends DaemonConn {
  async ok(method: string, params?: unknown): Promise<Msg> {
    const r = await this.call(method, params);
    assert.equal(r.ok, true, `${method}: ${JSON.stringify(r)}`);
    return r.result;
  }
}

/**
 * Runs in the sandbox: sends the requests given as JSON in argv[3] over the session socket (raw
 * protocol, after a plain hello) and writes every answer to argv[2]/<argv[4]>.json. A request
 * `{ waitFor: F }` writes the answers so far and <name>.waiting, and waits for file F; "$LAST" in
 * params is the id of the last answer's result, "$OTHERS" the id of a lease in the last answer's list
 * issued to someone other than this session. Gives up after `finAfterMs`.
 */
export const sessionProbe = (finAfterMs: number): string => String.raw`
import { existsSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { randomUUID } from "node:crypto";
const [out, reqsJson, name] = process.argv.slice(2);
const reqs = JSON.parse(reqsJson);
const frame = (o) => { const j = Buffer.from(JSON.stringify(o)); const h = Buffer.alloc(4); h.writeUInt32BE(j.length); return Buffer.concat([h, j]); };
const s = connect({ path: "/run/lessor/vault.sock" });
let buf = Buffer.alloc(0); const frames = [];
let i = 0;
const save = () => writeFileSync(out + "/" + name + ".json", JSON.stringify(frames));
const fin = () => { s.destroy(); save(); process.exit(0); };
const others = () => (Array.isArray(frames.at(-1)?.result) ? frames.at(-1).result.find((l) => l.issuedBy !== frames[0]?.identity?.id)?.id : "") ?? "";
const sendNext = async () => { if (i >= reqs.length) return fin(); const r = reqs[i++];
  if (r.waitFor) { save(); writeFileSync(out + "/" + name + ".waiting", "1"); while (!existsSync(out + "/" + r.waitFor)) await new Promise((t) => setTimeout(t, 50)); frames.push({ waited: true }); return sendNext(); }
  const p = JSON.parse(JSON.stringify(r.params ?? {}).replaceAll("$LAST", frames.at(-1)?.result?.id ?? "").replaceAll("$OTHERS", others()));
  s.write(frame({ id: randomUUID(), method: r.method, params: p })); };
s.on("data", (c) => { buf = Buffer.concat([buf, c]); for (;;) { if (buf.length < 4) break; const n = buf.readUInt32BE(0); if (buf.length < 4 + n) break; frames.push(JSON.parse(buf.subarray(4, 4 + n).toString())); buf = buf.subarray(4 + n); sendNext(); } });
s.on("error", fin); s.on("close", fin);
s.on("connect", () => s.write(frame({ protocol: "lessor", version: 1 })));
setTimeout(fin, ${finAfterMs});
`;

/** A directory `name` under `root` holding `files` (name → text). */
export function projectDir(root: string, name: string, files: Record<string, string>): string {
  const p = join(root, name);
  mkdirSync(p, { recursive: true });
  for (const [f, text] of Object.entries(files)) writeFileSync(join(p, f), text);
  return p;
}

/** The answers the probe named `name` wrote in `proj` (none yet: []). */
export const answersIn = (proj: string, name: string): Msg[] => (existsSync(join(proj, `${name}.json`)) ? JSON.parse(readFileSync(join(proj, `${name}.json`), "utf8")) : []);

/** Whether `canary` is in `x`: plain, or as access_secret's base64 value. */
export const leaksOf =
  (canary: string) =>
  (x: unknown): boolean =>
    [canary, Buffer.from(canary).toString("base64")].some((c) => JSON.stringify(x).includes(c));

/** An allow rule for `agent` alone. */
export const agentRule =
  (agent: string) =>
  (name: string, secrets: string[], extra = ""): string =>
    `[[rule]]\nname = ${JSON.stringify(name)}\neffect = "allow"\nagents = [${JSON.stringify(agent)}]\nsecrets = ${JSON.stringify(secrets)}\n${extra}\n`;

/** `lessor serve` on a fresh home with `policy` whose [run] may read the repository, and the owner's connection to it. */
export async function sessionDaemon(policy: string): Promise<{ d: RunningDaemon; admin: OkConn }> {
  const home = await makeHome({ policy, config: `[run]\nread = [${JSON.stringify(REPO)}]\n` });
  const d = await startServe(home);
  try {
    return { d, admin: await OkConn.admin(d) };
  } catch (e) {
    await d.stop();
    throw e;
  }
}

/**
 * For the enclosing describe(): its before() starts a sessionDaemon with `policy`, hands it to `set`
 * and fills it with `seed`; its after() closes the owner's connection and stops the daemon.
 */
export function sessionSuite(policy: string, set: (x: { d: RunningDaemon; admin: OkConn }) => void, seed: (admin: OkConn) => Promise<void>): void {
  let x: { d: RunningDaemon; admin: OkConn } | undefined;
  before(async () => {
    x = await sessionDaemon(policy);
    set(x);
    await seed(x.admin);
  });
  after(async () => {
    x?.admin.close();
    await x?.d.stop();
  });
}
