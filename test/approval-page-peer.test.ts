/**
 * The approval page's URL is its capability, but a URL handed to a browser sits in the browser's
 * argv, which every local user can read (/proc/PID/cmdline). The page is shown and decided only for
 * a client whose socket belongs to the user running lessor mcp (or root): another local user (uid
 * 65534 through setpriv) holding the URL and the page's CSRF token gets 403 and decides nothing.
 * Real loopback TCP, a real curl run as the other uid.
 */
import assert from "node:assert/strict";
import { execFile, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { createServer, connect, type Socket } from "node:net";
import { test } from "node:test";
import { ApprovalPages, type ApprovalView } from "../src/mcp/approval-page.js";
import { loopbackPeerUid } from "../src/mcp/loopback-peer.js";

const asRoot = process.getuid?.() === 0;
const hasCurl = spawnSync("curl", ["--version"]).status === 0;
const skip = !asRoot ? "needs root to act as another uid (setpriv)" : !hasCurl ? "needs curl" : process.platform !== "linux" ? "Linux only (/proc/net/tcp)" : false;

const run = promisify(execFile);

const view = (): ApprovalView => ({ id: "01940000-0000-7000-8000-000000000001", agent: "claude", secret: "global/tok", hosts: ["api.example.com"], anyDomain: false, ttlMs: 60_000, maxUses: null, rule: "g", reason: null, expiresAt: Date.now() + 60_000, requestedBy: "uid:0", reveal: false, methods: null, paths: null });

/** curl in a child process (not spawnSync: the page's server runs in this process and must answer). */
async function curl(asOther: boolean, args: string[]): Promise<{ status: number; body: string }> {
  const argv = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", ...args];
  const [cmd, ...rest] = asOther ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...argv] : argv;
  const { stdout } = await run(cmd!, rest, { encoding: "utf8" });
  const i = stdout.lastIndexOf("\n");
  return { status: Number(stdout.slice(i + 1)), body: stdout.slice(0, i) };
}

test("loopbackPeerUid names the uid at the other end of a loopback connection (our own here), null for what it cannot tell", { skip: process.platform !== "linux" }, async () => {
  const accepted = new Promise<Socket>((resolve) => {
    const srv = createServer((s) => {
      resolve(s);
      srv.close();
    }).listen(0, "127.0.0.1", () => {
      const c = connect((srv.address() as { port: number }).port, "127.0.0.1");
      c.on("error", () => {});
      void accepted.then((s) => s.once("close", () => c.destroy()));
    });
  });
  const s = await accepted;
  try {
    assert.equal(loopbackPeerUid(s), process.getuid!());
    assert.equal(loopbackPeerUid(s, "/nonexistent/tcp"), null);
  } finally {
    s.destroy();
  }
});

test("another local user with the page's URL (and its CSRF token) is refused 403 and decides nothing; the owner's client is served", { skip }, async () => {
  const pages = new ApprovalPages(() => {});
  const decisions: boolean[] = [];
  try {
    const opened = await pages.open(view(), async (approve) => void decisions.push(approve));
    assert.ok(opened);
    const theirs = await curl(true, [opened.url]);
    assert.equal(theirs.status, 403, theirs.body);
    assert.match(theirs.body, /this page is for the user running lessor mcp/);
    assert.ok(!theirs.body.includes("csrf"), "the page (and its form token) is not shown to them");
    const mine = await curl(false, [opened.url]);
    assert.equal(mine.status, 200, mine.body);
    const csrf = /name="csrf" value="([^"]+)"/.exec(mine.body)?.[1];
    assert.ok(csrf, "the owner's page holds the form token");
    const post = ["-X", "POST", "-H", "Content-Type: application/x-www-form-urlencoded", "--data", `csrf=${csrf}&decision=approve`, opened.url];
    const theirPost = await curl(true, post);
    assert.equal(theirPost.status, 403, theirPost.body);
    assert.deepEqual(decisions, [], "their POST decided nothing");
    const myPost = await curl(false, post);
    assert.equal(myPost.status, 200, myPost.body);
    assert.deepEqual(decisions, [true]);
    assert.equal(await opened.decided, "approved");
  } finally {
    await pages.close();
  }
});

test("on Linux, a client whose socket owner cannot be found in /proc is refused the page and its decision (fail closed)", { skip: process.platform !== "linux" || !hasCurl ? "Linux with curl only" : false }, async () => {
  // The lookup reads a table that does not exist: the owner of every client is unknown.
  const pages = new ApprovalPages(() => {}, (s) => loopbackPeerUid(s, "/nonexistent/proc/net/tcp"));
  const decisions: boolean[] = [];
  try {
    const opened = await pages.open(view(), async (approve) => void decisions.push(approve));
    assert.ok(opened);
    const got = await curl(false, [opened.url]);
    assert.equal(got.status, 403, got.body);
    assert.match(got.body, /could not tell which user is connecting/);
    assert.ok(!got.body.includes("csrf"), "the page (and its form token) is not shown");
    const post = await curl(false, ["-X", "POST", "-H", "Content-Type: application/x-www-form-urlencoded", "--data", "csrf=x&decision=approve", opened.url]);
    assert.equal(post.status, 403, post.body);
    assert.deepEqual(decisions, [], "nothing was decided");
  } finally {
    await pages.close();
  }
});
