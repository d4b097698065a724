/**
 * The way from `lessor run`'s sandbox to its proxy (src/sandbox/bridge.ts): the native bridge, whose
 * listening socket the proxy accepts on itself, against the Node bridge, a Node process in the sandbox
 * that relays each connection to the proxy's Unix socket (what lessor uses when its addon's helper is
 * not built). Prints JSON lines; the Node bridge is the baseline, measured in the same run.
 *
 *   npm run build:cli && npx tsx bench/run-bridge.ts [--quick]
 *
 * `refused_rps`: a Node client inside `lessor run` (the sandbox, the default network) sends plain-HTTP
 * requests through HTTPS_PROXY's port, 8 keep-alive connections, for a host no lease covers; the proxy
 * answers each itself (403, nothing goes upstream, no lookup). That is the proxy's cheapest answer, so
 * the figure is the bridge's cost per request at its most visible. The Node bridge runs from a copy of
 * this build without the helper (dist, package.json, the addon), as an install whose helper did not build.
 * Rounds alternate between the two so that the VM's drift hits both alike.
 */
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { initHome } from "../src/config/open-vault.js";

const quick = process.argv.includes("--quick");
const ROUNDS = quick ? 2 : 5;
const ROUND_MS = quick ? 1000 : 3000;
const REPO = fileURLToPath(new URL("..", import.meta.url));
const RELEASE = join(REPO, "native", "peercred", "build", "Release");
const emit = (o: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify({ bench: "run-bridge", ...o })}\n`);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** The client run in the sandbox: requests per second answered 403 by the proxy, and any other answer. */
const CLIENT = `const http = require("node:http");
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
const ms = Number(process.argv[2]); const end = Date.now() + ms; let ok = 0, bad = 0, live = 8;
const done = () => { if (--live === 0) { console.log(JSON.stringify({ rps: ok / (ms / 1000), bad })); agent.destroy(); } };
const one = () => {
  if (Date.now() > end) return done();
  const r = http.request({ host: "127.0.0.1", port: 3128, path: "http://refused.invalid/", headers: { host: "refused.invalid" }, agent }, (res) => {
    res.resume();
    res.on("end", () => { res.statusCode === 403 ? ok++ : bad++; one(); });
  });
  r.on("error", () => { bad++; one(); });
  r.end();
};
for (let i = 0; i < 8; i++) one();
`;

async function main(): Promise<void> {
  const bin = join(REPO, "dist", "bin", "lessor.cjs");
  if (!existsSync(bin)) return emit({ figure: "refused_rps", skipped: "dist/bin/lessor.cjs is missing: npm run build:cli first" });
  if (!existsSync(join(RELEASE, "lessor-netbridge"))) return emit({ figure: "refused_rps", skipped: "the native bridge is not built (node scripts/build-addon.mjs)" });
  if (spawnSync("bwrap", ["--version"], { stdio: "ignore" }).error !== undefined) return emit({ figure: "refused_rps", skipped: "bwrap is not installed" });
  const dir = mkdtempSync(join(tmpdir(), "lessor-bench-bridge-"));
  try {
    const home = join(dir, "home");
    const env = { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: process.env["HOME"] ?? dir, LESSOR_HOME: home };
    await initHome({ home, env });
    const project = join(dir, "project");
    mkdirSync(project);
    writeFileSync(join(project, "client.cjs"), CLIENT);
    // This build without the helper: lessor run then uses its Node bridge.
    const copy = join(dir, "no-helper");
    mkdirSync(join(copy, "native", "peercred", "build", "Release"), { recursive: true });
    cpSync(join(REPO, "dist"), join(copy, "dist"), { recursive: true });
    cpSync(join(REPO, "package.json"), join(copy, "package.json"));
    cpSync(join(RELEASE, "peercred.node"), join(copy, "native", "peercred", "build", "Release", "peercred.node"));
    symlinkSync(join(REPO, "node_modules"), join(copy, "node_modules"));
    const builds = { native: bin, node: join(copy, "dist", "bin", "lessor.cjs") };
    const rates: Record<keyof typeof builds, number[]> = { native: [], node: [] };
    for (let i = 0; i < ROUNDS; i++)
      for (const [name, b] of Object.entries(builds) as [keyof typeof builds, string][]) {
        const r = spawnSync(process.execPath, [b, "run", "--agent", "bench", "--", process.execPath, "client.cjs", String(ROUND_MS)], { cwd: project, env, encoding: "utf8", timeout: ROUND_MS + 30_000 });
        const last = r.stdout.trim().split("\n").at(-1) ?? "";
        const got = r.status === 0 && last.startsWith("{") ? (JSON.parse(last) as { rps: number; bad: number }) : null;
        if (got === null || got.bad > 0) throw new Error(`${name} bridge: lessor run exited ${r.status}: ${r.stderr.trim().split("\n").at(-1) ?? ""} ${last}`);
        rates[name].push(got.rps);
      }
    const native = median(rates.native);
    const node = median(rates.node);
    emit({ figure: "refused_rps", unit: "req/s", concurrency: 8, baseline: "node bridge", baseline_rps: Math.round(node), rps: Math.round(native), ratio: +(native / node).toFixed(2), rounds: ROUNDS, goal: null });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
