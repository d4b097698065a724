/**
 * What agents write is shown safely (issue 12, item 7). Two layers, each attacked here:
 * - the boundary refuses control characters (C0 with ESC, DEL, C1), bidi overrides and isolates and
 *   other invisible format characters in what an agent sends: a real daemon over loopback TCP with an
 *   agent token (the protocol's params schemas), and the vault itself in-process (its own checks);
 * - the CLI escapes them in everything it prints, so rows written before the boundary existed, or by
 *   another writer, cannot drive the terminal: rows are put straight into the SQLite file, and the
 *   built `lessor` runs as a child process.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { jsonlSink } from "../src/audit/jsonl-sink.js";
import { logSink } from "../src/audit/sink.js";
import { LessorClient } from "../src/client/index.js";
import { openVault } from "../src/config/open-vault.js";
import { table } from "../src/cli/format/table.js";
import { jsonText, terminalSafe } from "../src/cli/format/terminal-safe.js";
import { checkPlainText, escapeUnsafe, hasUnsafeText, quoteText, safeJson } from "../src/base/text.js";
import { cliHome, runCli, seedHome } from "./cli-harness.js";
import { makeHome, startServe, type RunningDaemon } from "./daemon-harness.js";
import { agent, codeOf, grant, makeVault, refusalOf, tempDir } from "./helpers.js";

/** OSC 52: writes "pwned" (base64 cHduZWQ=) to the clipboard of the terminal that prints it. */
const OSC52 = "\u001b]52;c;cHduZWQ=\u0007";
const CLEAR = "\u001b[2J";
const RLO = "\u202e";
const CSI_C1 = "\u009b";
/** The attacks an agent sends as free text. */
const HOSTILE = [OSC52, CLEAR, RLO, CSI_C1, "\u2066", "\u200f", "\u061c", "\u007f", "line\nbreak", "tab\there", "\u200b", "\u2028", "\u{e0041}"];

/**
 * Bytes a terminal acts on, in output meant for one: any C0 control but the line feed, DEL, C1, the
 * bidi marks, embeddings, overrides and isolates, zero-width and other format characters, U+2028/9.
 */
const RAW_UNSAFE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u00ad\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\u2028\u2029\ufeff]|\u{e0041}/u;

function assertTerminalSafe(what: string, text: string): void {
  const m = RAW_UNSAFE.exec(text);
  assert.equal(m, null, `${what} holds the raw character U+${m?.[0].codePointAt(0)!.toString(16).padStart(4, "0")} at ${m?.index}: ${JSON.stringify(text.slice(Math.max(0, (m?.index ?? 0) - 40), (m?.index ?? 0) + 40))}`);
}

describe("the text rules (src/base/text.ts, src/cli/format/terminal-safe.ts)", () => {
  test("unsafe characters are escaped visibly; everything else is kept", () => {
    assert.equal(terminalSafe(OSC52), "\\x1b]52;c;cHduZWQ=\\x07");
    assert.equal(terminalSafe(CLEAR), "\\x1b[2J");
    assert.equal(terminalSafe(`a${RLO}b`), "a\\u202eb");
    assert.equal(terminalSafe(CSI_C1), "\\x9b");
    assert.equal(terminalSafe("\u007f\u0000\n\t"), "\\x7f\\x00\\x0a\\x09");
    assert.equal(terminalSafe("\u{e0041}"), "\\u{e0041}");
    assert.equal(terminalSafe("\ud800x"), "\\ud800x", "a lone surrogate");
    for (const s of ["plain text", "ünïcødé ✓ 漢字 😀", "C:\\path\\x1b", "", "a\u00a0b"]) assert.equal(terminalSafe(s), s);
    for (const s of HOSTILE) {
      assert.equal(hasUnsafeText(s), true, JSON.stringify(s));
      assertTerminalSafe(JSON.stringify(s), terminalSafe(s));
    }
  });

  test("JSON output escapes C1, bidi and invisible characters as \\u and parses back to the same value", () => {
    const value = { reason: HOSTILE.join("|"), nested: [{ agent: `x${RLO}y` }], n: 1 };
    for (const text of [jsonText(value), jsonText(value, 2), safeJson(value)]) {
      assertTerminalSafe("JSON output", text);
      assert.deepEqual(JSON.parse(text), value);
    }
    assert.match(jsonText({ r: RLO }), /\\u202e/);
    assert.match(jsonText({ r: CSI_C1 }), /\\u009b/);
  });

  test("tables escape every cell, so a cell can neither forge a row nor drive the terminal", () => {
    const lines = table(["A", "B"], [[`x${CLEAR}`, `forged\nrow ${RLO}`]]);
    assert.equal(lines.length, 2);
    for (const l of lines) assertTerminalSafe("a table line", l);
    assert.equal(lines[1], "x\\x1b[2J  forged\\x0arow \\u202e");
  });

  test("messages quote values escaped, and free text is refused naming the character, not echoing it", () => {
    assert.equal(quoteText(`a${RLO}\u001b`), '"a\\u202e\\u001b"');
    for (const s of HOSTILE)
      assert.throws(
        () => checkPlainText(`please ${s}`, "a revocation reason", 200),
        (e: unknown) => (e as { code?: string }).code === "invalid_request" && /^a revocation reason must be one line of plain text, but it has the .*U\+[0-9A-F]{4,5} at character \d+; remove control characters/.test((e as Error).message) && !hasUnsafeText((e as Error).message),
        JSON.stringify(s),
      );
    assert.equal(checkPlainText("laptop lost — rotate ✓", "a reason", 200), "laptop lost — rotate ✓");
    assert.equal(escapeUnsafe("fine"), "fine");
  });
});

const POLICY = grant("gh", ["claude"], ["github-token"], ["api.github.com"], 'paths = ["/repos/"]');

describe("the audit sinks write lines a terminal can show", () => {
  test("the JSONL file and the log sink escape C1, bidi and invisible characters as \\u, and the lines parse back", async () => {
    const dir = tempDir();
    const file = join(dir, "audit.jsonl");
    const logged: string[] = [];
    const t = await makeVault({ sinks: [jsonlSink(file), logSink((l) => logged.push(l))] });
    // A server-side writer the protocol's checks do not cover: the reason is whatever it passes.
    const reason = `cut ${OSC52} ${RLO} ${CSI_C1} \u2028`;
    await t.vault.recordConnectionCut(agent("claude"), reason, { note: `${CLEAR}\u200b` });
    const lines = readFileSync(file, "utf8").trim().split("\n");
    for (const text of [lines.at(-1)!, logged.at(-1)!]) {
      assertTerminalSafe("a sink line", text);
      const e = JSON.parse(text) as { reason: string; detail: { note: string } };
      assert.equal(e.reason, reason);
      assert.equal(e.detail.note, `${CLEAR}\u200b`);
    }
  });
});

/** Every string in an audit event, checked for unsafe characters. */
function assertCleanEvents(events: readonly object[]): void {
  for (const e of events) assertTerminalSafe(`audit event ${JSON.stringify(e).slice(0, 120)}`, JSON.stringify(e).replace(/\\u[0-9a-f]{4}|\\[nrt"\\/bf]/g, ""));
}

describe("the boundary: a real daemon, an agent over loopback TCP", () => {
  let d: RunningDaemon;
  let admin: LessorClient;
  let claude: LessorClient;
  before(async () => {
    d = await startServe(await makeHome({ config: '[server]\ntcp = "127.0.0.1:0"\n', policy: POLICY }));
    admin = await LessorClient.connect({ socketPath: d.socket });
    await admin.storeSecret({ name: "github-token", value: "gh-value" });
    const tok = await admin.createToken({ name: "claude", role: "agent", agent: "claude" });
    claude = await LessorClient.connect(d.tcp!, { token: tok.token });
  });
  after(async () => {
    await claude?.close();
    await admin?.close();
    await d?.stop();
  });

  test("an agent's revoke reason with OSC 52, ESC [2J, U+202E or C1 CSI is refused with invalid_request", async () => {
    const lease = await claude.requestLease({ secret: "github-token" });
    for (const bad of HOSTILE) {
      const r = await refusalOf(claude.revokeLease(lease.id, `done ${bad}`));
      assert.equal(r.code, "invalid_request", JSON.stringify(bad));
      assert.match(r.message, /reason: must not contain control characters \(such as ESC or a line break\) or invisible or bidirectional formatting characters/);
      assert.equal(hasUnsafeText(r.message), false);
    }
    const [live] = await admin.listLeases({ agent: "claude", live: true });
    assert.equal(live?.id, lease.id, "nothing was revoked");
    assert.deepEqual(await claude.revokeLease(lease.id, "finished — ✓ done"), { revoked: true });
  });

  test("identifiers and targets from an agent are refused too: agent ids, domains, methods, paths, secret names", async () => {
    const lease = await claude.requestLease({ secret: "github-token" });
    const calls: [string, () => Promise<unknown>][] = [
      ["agent", () => claude.requestLease({ agent: `claude${CLEAR}`, secret: "github-token" })],
      ["secret", () => claude.requestLease({ secret: `github-token${RLO}` })],
      ["domains", () => claude.requestLease({ secret: "github-token", domains: [`api.github.com${CSI_C1}`] })],
      ["access.domain", () => claude.leaseAndAccess({ secret: "github-token" }, { domain: `${RLO}moc.buhtig.ipa` })],
      ["domain", () => claude.accessSecret(lease.id, { domain: `api.github.com${OSC52}` })],
      ["method", () => claude.accessSecret(lease.id, { domain: "api.github.com", method: `GET${CLEAR}` })],
      ["path", () => claude.accessSecret(lease.id, { domain: "api.github.com", path: `/repos/${RLO}x` })],
      ["agent", () => claude.listLeases({ agent: `claude${CLEAR}` })],
      ["description", () => admin.storeSecret({ name: "other", value: "v", description: `desc ${OSC52}` })],
      ["tags", () => admin.storeSecret({ name: "other", value: "v", tags: [`t${RLO}`] })],
      ["reason", () => admin.killswitch(`now ${CLEAR}`)],
      ["reason", () => admin.revokeAllForAgent("claude", `bye ${CSI_C1}`)],
      ["name", () => admin.createToken({ name: `tok${RLO}`, role: "agent", agent: "claude" })],
    ];
    for (const [field, call] of calls) {
      const r = await refusalOf(call());
      assert.equal(r.code, "invalid_request", field);
      assert.ok(r.message.includes(`${field}: must not contain control characters`) || r.message.includes(`${field}.0: must not contain control characters`), `${field}: ${r.message}`);
      assert.equal(hasUnsafeText(r.message), false, r.message);
    }
    assert.equal((await admin.listLeases({ agent: "claude", live: true })).length, 1, "the killswitch was not pulled");
    assertCleanEvents(await admin.auditQuery({ limit: 10_000 }));
  });
});

describe("the boundary in the vault itself (in-process, no protocol schemas in the way)", () => {
  test("reasons, descriptions, domains, methods and paths with unsafe characters are refused; the trail stays clean", async () => {
    const t = await makeVault({ policy: POLICY });
    const admin = t.vault.admin();
    await admin.storeSecret({ name: "github-token", value: "gh-value" });
    const claude = t.vault.session(agent("claude"));
    const lease = await claude.requestLease({ secret: "github-token" });
    for (const bad of HOSTILE) {
      assert.equal(await codeOf(claude.revokeLease(lease.id, `x ${bad}`)), "invalid_request", JSON.stringify(bad));
      assert.equal(await codeOf(admin.killswitch(`x ${bad}`)), "invalid_request");
      assert.equal(await codeOf(admin.storeSecret({ name: "d", value: "v", description: `x ${bad}` })), "invalid_request");
      assert.equal(await codeOf(claude.requestLease({ secret: "github-token", domains: [`api.github.com${bad}`] })), "invalid_request");
      assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: `api.github.com${bad}` })), "invalid_request");
      assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.github.com", path: `/repos/${bad}` })), "invalid_request");
      assert.equal(await codeOf(claude.accessSecret(lease.id, { domain: "api.github.com", method: `GET${bad}` })), "invalid_request");
      assert.equal(await codeOf(claude.requestLeaseAndAccess({ secret: "github-token" }, { domain: `api.github.com${bad}` })), "invalid_request");
    }
    // Identifiers were already narrow; their messages quote the bad value escaped.
    for (const call of [() => claude.requestLease({ secret: `gh${RLO}` }), () => claude.requestLease({ agent: `claude${CSI_C1}`, secret: "github-token" })])
      await assert.rejects(call(), (e: Error) => (e as { code?: string }).code === "invalid_request" && !hasUnsafeText(e.message) && /\\u(202e|009b)/.test(e.message));
    assert.equal((await claude.listLeases({ liveAt: Date.now() })).length, 1, "the lease is still live");
    assertCleanEvents(await admin.auditQuery({ limit: 10_000 }));
  });
});

describe("the CLI prints old or foreign rows escaped (the built lessor, a real SQLite file)", () => {
  let home: string;
  /** Each hostile string, tagged so the test can find where it was printed. */
  const REASON = `deny ${OSC52} ${CLEAR} ${RLO}evil ${CSI_C1} forged\nrow \u2066x\u2069 \u007f`;
  const AGENT = `mallory${RLO}yrollam${CLEAR}`;
  const SECRET = `global/gh${OSC52}`;

  before(async () => {
    home = await cliHome();
    await seedHome(home, POLICY, [{ name: "github-token", value: "gh-value", description: "clean", tags: ["ci"] }]);
    const vault = await openVault({ home, env: { LESSOR_HOME: home } });
    let leaseId: string;
    try {
      const claude = vault.session(agent("claude"));
      leaseId = (await claude.requestLease({ secret: "github-token" })).id;
      await vault.admin().createToken({ name: "ci", role: "agent", agent: "claude" });
    } finally {
      await vault.close();
    }
    // Another writer (or an older lessor) puts hostile text straight into the file.
    const db = new Database(join(home, "lessor.db"));
    try {
      const last = db.prepare("SELECT * FROM audit ORDER BY seq DESC LIMIT 1").get() as Record<string, unknown>;
      const row = {
        ...last,
        seq: (last.seq as number) + 1,
        id: "01900000-0000-7000-8000-000000000001",
        type: "access_denied",
        outcome: "denied",
        actor_id: `uid:0${CLEAR}`,
        agent: AGENT,
        secret: SECRET,
        domain: `api.github.com${RLO}`,
        reason: REASON,
        detail: JSON.stringify({ note: `${OSC52}${CSI_C1}` }),
      };
      const cols = Object.keys(row);
      db.prepare(`INSERT INTO audit (${cols.join(", ")}) VALUES (${cols.map((c) => `@${c}`).join(", ")})`).run(row);
      db.prepare("UPDATE leases SET agent = ?, revoked_at = issued_at, revoke_reason = ?, done = 1 WHERE id = ?").run(AGENT, REASON, leaseId);
      db.prepare("UPDATE secrets SET description = ?, tags = ? WHERE name = 'github-token'").run(REASON, JSON.stringify([`ci${RLO}`, `x${CLEAR}`]));
      db.prepare("UPDATE tokens SET name = ?").run(`ci${OSC52}`);
    } finally {
      db.close();
    }
  });

  async function lessor(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const r = await runCli(args, { home });
    assertTerminalSafe(`stdout of lessor ${args.join(" ")}`, r.stdout);
    assertTerminalSafe(`stderr of lessor ${args.join(" ")}`, r.stderr);
    return r;
  }

  test("lessor audit tail and audit query print the hostile row escaped", async () => {
    for (const args of [["audit", "tail", "-n", "5"], ["audit", "query", "--type", "access_denied"]]) {
      const r = await lessor(args);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(r.stdout.includes("\\x1b]52;c;cHduZWQ=\\x07"), r.stdout);
      assert.ok(r.stdout.includes("\\x1b[2J"));
      assert.ok(r.stdout.includes("\\u202eevil"));
      // The reason, a cell with more than printable ASCII, is quoted as JSON text (src/cli/commands/audit.ts):
      // the line break shows as \n and forges no row.
      assert.ok(r.stdout.includes('\\u009b forged\\nrow \\u2066x\\u2069 \\u007f"'), `a line break in a cell shows escaped and forges no row: ${r.stdout}`);
      assert.ok(r.stdout.includes("mallory\\u202eyrollam\\x1b[2J"));
      assert.ok(r.stdout.includes("uid:0\\x1b[2J"));
      assert.equal(r.stdout.split("\n").filter((l) => l.includes("forged")).length, 1);
    }
  });

  test("--json keeps the exact text, escaped as JSON, with no raw C1 or bidi byte", async () => {
    for (const args of [["audit", "tail", "-n", "5", "--json"], ["audit", "query", "--type", "access_denied", "--json"]]) {
      const r = await lessor(args);
      assert.equal(r.code, 0, r.stderr);
      const events = JSON.parse(r.stdout) as { reason: string; agent: string; domain: string; detail: { note: string } }[];
      const hostile = events.find((e) => e.reason === REASON);
      assert.ok(hostile, "the hostile row round-trips exactly");
      assert.equal(hostile.agent, AGENT);
      assert.equal(hostile.domain, `api.github.com${RLO}`);
      assert.equal(hostile.detail.note, `${OSC52}${CSI_C1}`);
      assert.match(r.stdout, /\\u202e/);
      assert.match(r.stdout, /\\u009b/);
    }
  });

  test("lessor audit tail --follow --json writes its lines escaped too", async () => {
    const r = await runCli(["audit", "tail", "--follow", "--json", "-n", "3"], { home, timeoutMs: 4000 });
    assertTerminalSafe("audit tail --follow --json", r.stdout);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as { reason: string | null });
    assert.ok(lines.some((e) => e.reason === REASON), r.stdout + r.stderr);
  });

  test("lease listings, secret listings and details, token listings print stored text escaped", async () => {
    const leases = await lessor(["leases"]);
    assert.equal(leases.code, 0, leases.stderr);
    assert.ok(leases.stdout.includes("mallory\\u202eyrollam\\x1b[2J"), leases.stdout);
    const leasesJson = await lessor(["leases", "--json"]);
    assert.equal((JSON.parse(leasesJson.stdout) as { agent: string; revokeReason: string }[])[0]!.revokeReason, REASON);

    const list = await lessor(["secret", "list"]);
    assert.equal(list.code, 0, list.stderr);
    assert.ok(list.stdout.includes("ci\\u202e,x\\x1b[2J"), list.stdout);
    const get = await lessor(["secret", "get", "github-token"]);
    assert.equal(get.code, 0, get.stderr);
    assert.ok(get.stdout.includes("\\x1b]52;c;cHduZWQ=\\x07"), get.stdout);
    const getJson = await lessor(["secret", "get", "github-token", "--json"]);
    assert.equal((JSON.parse(getJson.stdout) as { description: string }).description, REASON);

    const tokens = await lessor(["token", "list"]);
    assert.equal(tokens.code, 0, tokens.stderr);
    assert.ok(tokens.stdout.includes("ci\\x1b]52;c;cHduZWQ=\\x07"), tokens.stdout);
  });

  test("a command-line mistake that quotes the argument is printed escaped", async () => {
    // A value glued to an option is not echoed at all (src/cli/format/redact-options.ts); no raw escape.
    const glued = await lessor(["leases", `--agent${CLEAR}`]);
    assert.equal(glued.code, 2);
    assert.ok(glued.stderr.includes("unknown option '--agent…'") && !glued.stderr.includes("\x1b"), glued.stderr);
    // An argument commander quotes (an option's value it does not allow) is printed escaped.
    const r = await lessor(["token", "create", "x", "--role", `adm${CLEAR}`]);
    assert.equal(r.code, 2);
    assert.ok(r.stderr.includes("adm\\x1b[2J") && !r.stderr.includes("\x1b"), r.stderr);
  });

  test("an error that echoes stored text (a revoked lease's reason) is printed escaped", async () => {
    // A home of its own: the hostile audit row above breaks the chain, and audited operations stop.
    const other = await cliHome();
    await seedHome(other, POLICY, [{ name: "github-token", value: "gh-value" }]);
    const vault = await openVault({ home: other, env: { LESSOR_HOME: other } });
    let leaseId: string;
    try {
      leaseId = (await vault.session(agent("claude")).requestLease({ secret: "github-token" })).id;
    } finally {
      await vault.close();
    }
    const db = new Database(join(other, "lessor.db"));
    try {
      db.prepare("UPDATE leases SET revoked_at = issued_at, revoke_reason = ?, done = 1 WHERE id = ?").run(REASON, leaseId);
    } finally {
      db.close();
    }
    const r = await runCli(["renew", leaseId], { home: other });
    assertTerminalSafe("stdout of lessor renew", r.stdout);
    assertTerminalSafe("stderr of lessor renew", r.stderr);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /^lessor: lease .* was revoked \(deny \\x1b\]52;c;cHduZWQ=\\x07 /);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, "the line break in the reason forges no second line");
  });
});
