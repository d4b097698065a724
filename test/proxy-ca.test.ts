/**
 * The injecting proxy's local CA (src/proxy/ca.ts), with real TLS on loopback: node:tls, node:https,
 * node:http2 and curl clients that trust only the session CA, OpenSSL's own verifier for the name
 * constraints, and a child process that shows the CA key never reaches the disk.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createPrivateKey, createPublicKey, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as https from "node:https";
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import * as tls from "node:tls";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { AsnConvert } from "@peculiar/asn1-schema";
import * as x from "@peculiar/asn1-x509";
import { ALPN_PROTOCOLS, LocalCa } from "../src/proxy/ca.js";
import { parseLeafHost, parsePermittedName } from "../src/proxy/ca-names.js";
import { LruCache } from "../src/proxy/lru.js";
import {
  certificatePem,
  issuerOf,
  makeCaCertificate,
  makeLeafCertificate,
  newP256KeyPair,
  orgName,
} from "../src/proxy/x509.js";
import { isVaultError } from "../src/base/errors.js";
import { clock, tempDir } from "./helpers.js";

const run = promisify(execFile);
const HOST = "api.example.test";

/** Writes `pem` to a file in a fresh temp dir (removed after the file's tests) and returns its path. */
function pemFile(pem: string, name = "ca.pem"): string {
  const p = join(tempDir("lessor-ca-test-"), name);
  writeFileSync(p, pem);
  return p;
}

async function listen(server: NetServer): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return (server.address() as AddressInfo).port;
}

async function close(server: NetServer): Promise<void> {
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

/** A TLS server on loopback that writes "hello" to each client and closes. */
async function helloServer(opts: tls.TlsOptions): Promise<{ port: number; server: tls.Server }> {
  const server = tls.createServer(opts, (s) => s.end("hello"));
  server.on("tlsClientError", () => {}); // failed handshakes are the point of several tests
  return { port: await listen(server), server };
}

type Handshake = { ok: true; body: string; alpn: string | false; peer: tls.PeerCertificate } | { ok: false; code: string };

/** Connects to 127.0.0.1:port (never another address) and reports the verification outcome. */
function connect(port: number, opts: tls.ConnectionOptions): Promise<Handshake> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: "127.0.0.1", port, ...opts });
    let body = "";
    s.setEncoding("utf8");
    s.on("data", (d: string) => (body += d));
    s.on("end", () => resolve({ ok: true, body, alpn: s.alpnProtocol ?? false, peer: s.getPeerCertificate() }));
    s.on("error", (e: NodeJS.ErrnoException) => resolve({ ok: false, code: String(e.code) }));
  });
}

function refusalCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (isVaultError(e)) return e.code;
    throw e;
  }
  return "no error";
}

const tlsCa = (ca: LocalCa) => ({ ca: ca.certPem });

test("the CA certificate is ECDSA P-256, CA:true with pathlen 0, keyUsage keyCertSign, name-constrained", async () => {
  const ca = LocalCa.create({ permitted: [HOST, "*.svc.example.test", "127.0.0.1"] });
  const cert = new X509Certificate(ca.certPem);
  assert.equal(cert.ca, true);
  assert.equal(cert.publicKey.asymmetricKeyType, "ec");
  assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, "prime256v1");
  assert.equal(cert.subject, cert.issuer);
  assert.ok(cert.verify(cert.publicKey), "self-signed");
  assert.deepEqual(ca.permitted, [HOST, "*.svc.example.test", "127.0.0.1"]);

  // Read the extensions back with the ASN.1 schemas...
  const parsed = AsnConvert.parse(cert.raw, x.Certificate);
  const exts = new Map(parsed.tbsCertificate.extensions!.map((e) => [e.extnID, e]));
  const bc = AsnConvert.parse(exts.get(x.id_ce_basicConstraints)!.extnValue, x.BasicConstraints);
  assert.equal(bc.cA, true);
  assert.equal(bc.pathLenConstraint, 0);
  assert.equal(exts.get(x.id_ce_basicConstraints)!.critical, true);
  const ku = AsnConvert.parse(exts.get(x.id_ce_keyUsage)!.extnValue, x.KeyUsage);
  assert.equal(ku.toNumber(), x.KeyUsageFlags.keyCertSign);
  assert.equal(exts.get(x.id_ce_nameConstraints)!.critical, true);
  const sig = parsed.signatureAlgorithm.algorithm;
  assert.equal(sig, "1.2.840.10045.4.3.2", "ecdsa-with-SHA256");

  // ...and with OpenSSL, as a second reader.
  const { stdout } = await run("openssl", ["x509", "-noout", "-text", "-in", pemFile(ca.certPem)]);
  assert.match(stdout, /Public-Key: \(256 bit\)/);
  assert.match(stdout, /NIST CURVE: P-256/);
  assert.match(stdout, /Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
  assert.match(stdout, /Key Usage: critical\s+Certificate Sign\n/);
  assert.match(stdout, /Name Constraints: critical\s+Permitted:\s+DNS:api\.example\.test\s+DNS:\.svc\.example\.test\s+IP:127\.0\.0\.1\/255\.255\.255\.255/);
});

test("an https server using secureContextFor via SNI is verified by a client that trusts only the CA, and by curl", async () => {
  const ca = LocalCa.create({ permitted: [HOST] });
  const server = https.createServer({ SNICallback: ca.sniCallback }, (req, res) => res.end(`hi ${req.headers.host}`));
  server.on("tlsClientError", () => {});
  const port = await listen(server);
  try {
    const body = await new Promise<string>((resolve, reject) => {
      const req = https.get(
        // Connect to the loopback address; the name travels only in SNI and Host, so nothing is resolved.
        { host: "127.0.0.1", port, servername: HOST, headers: { host: HOST }, ca: ca.certPem, agent: false },
        (res) => {
          let b = "";
          res.setEncoding("utf8");
          res.on("data", (d: string) => (b += d));
          res.on("end", () => resolve(b));
        },
      );
      req.on("error", reject);
    });
    assert.equal(body, `hi ${HOST}`);

    const caFile = pemFile(ca.certPem);
    const { stdout } = await run("curl", [
      "--silent", "--show-error", "--noproxy", "*",
      "--cacert", caFile, "--resolve", `${HOST}:${port}:127.0.0.1`,
      `https://${HOST}:${port}/`,
    ]);
    assert.equal(stdout, `hi ${HOST}:${port}`);
  } finally {
    server.closeAllConnections();
    await close(server);
  }
});

test("a leaf for another name fails verification, and a client without the CA fails", async () => {
  const ca = LocalCa.create({ permitted: [HOST, "other.example.test"] });
  // This server always presents the leaf for other.example.test, whatever name the client sends.
  const other = ca.secureContextFor("other.example.test");
  const { port, server } = await helloServer({ SNICallback: (_name, cb) => cb(null, other) });
  try {
    const control = await connect(port, { servername: "other.example.test", ...tlsCa(ca) });
    assert.equal(control.ok, true, "the leaf itself is good for its own name");
    const wrongName = await connect(port, { servername: HOST, ...tlsCa(ca) });
    assert.deepEqual(wrongName, { ok: false, code: "ERR_TLS_CERT_ALTNAME_INVALID" });
    const curl = await run("curl", [
      "--silent", "--noproxy", "*", "--cacert", pemFile(ca.certPem), "--resolve", `${HOST}:${port}:127.0.0.1`,
      `https://${HOST}:${port}/`,
    ]).then(() => 0, (e: { code: number }) => e.code);
    assert.equal(curl, 60, "curl: peer certificate cannot be authenticated");
  } finally {
    await close(server);
  }

  const sni = await helloServer({ SNICallback: ca.sniCallback });
  try {
    const noCa = await connect(sni.port, { servername: HOST });
    assert.equal(noCa.ok, false);
    assert.equal((noCa as { code: string }).code, "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
    const otherCa = LocalCa.create({ permitted: [HOST] });
    const wrongCa = await connect(sni.port, { servername: HOST, ca: otherCa.certPem });
    assert.equal(wrongCa.ok, false, "another session's CA does not vouch for this one's leaves");
  } finally {
    await close(sni.server);
  }
});

test("name constraints: a leaf the CA signs for an unpermitted name fails verification in node, curl and OpenSSL", async () => {
  // Sign leaves directly with the CA's key, as someone holding a leaked key could: the permitted-host
  // check of LocalCa is skipped, so only the certificate's name constraints stand in the way.
  const keys = newP256KeyPair();
  const subject = orgName("constrained test CA");
  const t = Date.now();
  const validity = { notBefore: new Date(t - 60_000), notAfter: new Date(t + 3_600_000) };
  const caDer = makeCaCertificate({ keys, subject, ...validity, permitted: [HOST, "*.svc.example.test"].map(parsePermittedName) });
  const issuer = issuerOf(keys, subject);
  const caPem = certificatePem(caDer);
  const caFile = pemFile(caPem);
  const leafKeys = newP256KeyPair();
  const leaf = (host: string) =>
    certificatePem(makeLeafCertificate(issuer, { host: parseLeafHost(host), publicKey: leafKeys.publicKey, ...validity }));
  const leafKeyPem = leafKeys.privateKey.export({ type: "pkcs8", format: "pem" });

  const verdicts: Record<string, string> = {};
  for (const host of [HOST, "a.svc.example.test", "evil.test", "svc.example.test", "127.0.0.1"]) {
    const r = await run("openssl", ["verify", "-CAfile", caFile, pemFile(leaf(host), "leaf.pem")]).then(
      () => "OK",
      (e: { stdout: string; stderr: string }) => /(permitted|excluded) subtree violation/.exec(e.stdout + e.stderr)?.[0] ?? "other failure",
    );
    verdicts[host] = r;
  }
  assert.deepEqual(verdicts, {
    [HOST]: "OK",
    "a.svc.example.test": "OK",
    "evil.test": "permitted subtree violation",
    "svc.example.test": "permitted subtree violation", // "*.svc.example.test" is strictly below
    "127.0.0.1": "excluded subtree violation", // no IP was permitted, so every IP is excluded
  });

  const evil = await helloServer({ cert: leaf("evil.test"), key: leafKeyPem });
  const good = await helloServer({ cert: leaf(HOST), key: leafKeyPem });
  try {
    assert.equal((await connect(good.port, { servername: HOST, ca: caPem })).ok, true, "control: a permitted leaf verifies");
    // Node has no code of its own for OpenSSL's "permitted subtree violation" (it says UNSPECIFIED);
    // the control above and the OpenSSL verdicts show that the constraint is what fails it.
    const refused = await connect(evil.port, { servername: "evil.test", ca: caPem });
    assert.equal(refused.ok, false);
    assert.notEqual((refused as { code: string }).code, "ERR_TLS_CERT_ALTNAME_INVALID");
    const curl = await run("curl", [
      "--silent", "--noproxy", "*", "--cacert", caFile, "--resolve", `evil.test:${evil.port}:127.0.0.1`,
      `https://evil.test:${evil.port}/`,
    ]).then(() => 0, (e: { code: number }) => e.code);
    assert.equal(curl, 60);
  } finally {
    await close(evil.server);
    await close(good.server);
  }

  // LocalCa itself refuses to mint outside its list, before any signing.
  const ca = LocalCa.create({ permitted: [HOST, "*.svc.example.test"] });
  for (const host of ["evil.test", `x.${HOST}`, "svc.example.test", "127.0.0.1", "::1"])
    assert.equal(refusalCode(() => ca.secureContextFor(host)), "access_denied", host);
  for (const host of ["", "a b.test", "api.example.test:443", "1.2.3", "fe80::1%eth0", "ex\u0430mple.test"])
    assert.equal(refusalCode(() => ca.secureContextFor(host)), "invalid_request", JSON.stringify(host));
  assert.equal(refusalCode(() => LocalCa.create({ permitted: ["*.*.test"] })), "invalid_request");
  assert.ok(ca.secureContextFor("deep.a.svc.example.test"));
  assert.equal(ca.secureContextFor("API.Example.Test."), ca.secureContextFor(HOST), "names are compared in canonical form");
});

test("an IP leaf (IP SAN) is served on a tunnel the proxy terminates, with ALPN offering h2 and http/1.1", async () => {
  const ca = LocalCa.create({ permitted: [HOST, "127.0.0.1", "::1"] });
  assert.deepEqual(ALPN_PROTOCOLS, ["h2", "http/1.1"]);
  // As the proxy will do after a CONNECT: wrap the accepted socket, with the CONNECT host's context
  // as the default (clients send no SNI for an IP literal) and the SNI callback for names.
  const server = createNetServer((sock) => {
    const t = new tls.TLSSocket(sock, ca.tlsSocketOptions("127.0.0.1"));
    t.on("secure", () => t.end(`alpn=${t.alpnProtocol}`));
    t.on("error", () => {});
  });
  const port = await listen(server);
  try {
    const byIp = await connect(port, { ca: ca.certPem, ALPNProtocols: ["http/1.1"] });
    assert.equal(byIp.ok, true, JSON.stringify(byIp));
    if (byIp.ok) {
      assert.equal(byIp.peer.subjectaltname, "IP Address:127.0.0.1");
      assert.equal(byIp.body, "alpn=http/1.1");
    }
    const byName = await connect(port, { servername: HOST, ca: ca.certPem, ALPNProtocols: ["h2", "http/1.1"] });
    assert.equal(byName.ok, true);
    if (byName.ok) {
      assert.equal(byName.peer.subjectaltname, `DNS:${HOST}`, "the SNI name wins over the default context");
      assert.equal(byName.alpn, "h2");
    }
  } finally {
    await close(server);
  }
  assert.equal(ca.leafFor("[::1]").host, "::1");
  assert.equal(ca.leafFor("0:0:0:0:0:0:0:1"), ca.leafFor("::1"));
});

test("an HTTP/2 server on the SNI callback serves an h2 client that trusts only the CA", async () => {
  const ca = LocalCa.create({ permitted: [HOST] });
  const server = http2.createSecureServer({ SNICallback: ca.sniCallback, allowHTTP1: true }, (req, res) =>
    res.end(`h${req.httpVersion} ${req.headers[":authority"]}`),
  );
  server.on("tlsClientError", () => {});
  const port = await listen(server);
  try {
    const session = http2.connect(`https://${HOST}:${port}`, {
      // Dial the loopback address ourselves so the name is never resolved.
      createConnection: () => tls.connect({ host: "127.0.0.1", port, servername: HOST, ca: ca.certPem, ALPNProtocols: ["h2"] }),
    });
    const body = await new Promise<string>((resolve, reject) => {
      session.on("error", reject);
      const req = session.request({ ":path": "/" });
      let b = "";
      req.setEncoding("utf8");
      req.on("data", (d: string) => (b += d));
      req.on("end", () => resolve(b));
      req.on("error", reject);
      req.end();
    });
    session.close();
    assert.equal(body, `h2.0 ${HOST}:${port}`);
  } finally {
    await close(server);
  }
});

test("leaves are cached: the same object for the same host, in a bounded LRU", () => {
  const ca = LocalCa.create({ permitted: ["*.cache.test"], maxLeaves: 3 });
  const a = ca.secureContextFor("a.cache.test");
  assert.equal(ca.secureContextFor("a.cache.test"), a);
  assert.equal(ca.leafFor("a.cache.test").context, a);
  ca.secureContextFor("b.cache.test");
  ca.secureContextFor("c.cache.test");
  assert.equal(ca.secureContextFor("a.cache.test"), a, "a was used last, so it stays");
  ca.secureContextFor("d.cache.test"); // evicts b, the least recently used
  assert.equal(ca.cachedLeaves, 3);
  assert.equal(ca.secureContextFor("a.cache.test"), a);
  const b2 = ca.leafFor("b.cache.test");
  assert.equal(ca.cachedLeaves, 3);
  assert.notEqual(b2.context, undefined);
  for (let i = 0; i < 50; i++) ca.secureContextFor(`h${i}.cache.test`);
  assert.equal(ca.cachedLeaves, 3);

  const lru = new LruCache<string, number>(2);
  lru.set("x", 1);
  lru.set("y", 2);
  lru.get("x");
  lru.set("z", 3);
  assert.deepEqual([lru.get("x"), lru.get("y"), lru.get("z"), lru.size], [1, undefined, 3, 2]);
  assert.throws(() => new LruCache(0), RangeError);
  assert.equal(refusalCode(() => LocalCa.create({ permitted: [HOST], maxLeaves: 0 })), "invalid_request");
});

test("expiry fields are as configured; leaves are re-minted before they expire and never outlive the CA", () => {
  const c = clock(Date.now());
  const t0 = c.now();
  const sec = (ms: number) => Math.floor(ms / 1000) * 1000;
  const ca = LocalCa.create({ permitted: [HOST, "short.example.test"], lifetimeMs: 2 * 3_600_000, leafLifetimeMs: 10 * 60_000, now: c.now });
  const cert = new X509Certificate(ca.certPem);
  assert.equal(new Date(cert.validTo).getTime(), sec(t0 + 2 * 3_600_000));
  assert.equal(new Date(cert.validFrom).getTime(), sec(t0 - 60_000), "notBefore is a minute early, for clock slack");
  assert.equal(ca.notAfter.getTime(), sec(t0 + 2 * 3_600_000));

  const leaf = ca.leafFor(HOST);
  const leafCert = new X509Certificate(leaf.certPem);
  assert.equal(new Date(leafCert.validTo).getTime(), sec(t0 + 10 * 60_000));
  assert.equal(leaf.notAfter.getTime(), sec(t0 + 10 * 60_000));
  assert.ok(leafCert.checkIssued(cert) && leafCert.verify(cert.publicKey));
  assert.equal(leafCert.ca, false);
  assert.notEqual(new X509Certificate(ca.leafFor("short.example.test").certPem).serialNumber, leafCert.serialNumber);

  c.advance(7 * 60_000);
  assert.equal(ca.leafFor(HOST), leaf, "still in the first three quarters of its life");
  c.advance(1 * 60_000);
  const renewed = ca.leafFor(HOST);
  assert.notEqual(renewed, leaf, "re-minted after three quarters of its life");
  assert.notEqual(new X509Certificate(renewed.certPem).serialNumber, leafCert.serialNumber);

  c.set(t0 + 2 * 3_600_000 - 5 * 60_000);
  const last = ca.leafFor("short.example.test");
  assert.equal(last.notAfter.getTime(), ca.notAfter.getTime(), "a leaf never outlives its CA");
  c.set(t0 + 2 * 3_600_000 + 1000);
  assert.equal(refusalCode(() => ca.leafFor("short.example.test")), "unavailable", "an expired CA mints nothing");

  const dflt = LocalCa.create({ permitted: [HOST] });
  const span = dflt.notAfter.getTime() - Date.now();
  assert.ok(span > 24 * 3_600_000 - 5000 && span <= 24 * 3_600_000, "default CA lifetime is 24 h");
  assert.equal(refusalCode(() => LocalCa.create({ permitted: [HOST], lifetimeMs: 10 })), "invalid_request");
});

test("the CA key is never written to disk: a child process leaves its home, tmp and working dirs empty", async () => {
  const root = mkdtempSync(join(tmpdir(), "lessor-ca-nodisk-"));
  try {
    const dirs = { home: join(root, "home"), tmp: join(root, "tmp"), cwd: join(root, "cwd") };
    for (const d of Object.values(dirs)) mkdirSync(d);
    const caUrl = new URL("../src/proxy/ca.ts", import.meta.url).href;
    const script = `
      import { LocalCa } from ${JSON.stringify(caUrl)};
      import * as tls from "node:tls";
      const ca = LocalCa.create({ permitted: ["api.example.test"] });
      const server = tls.createServer({ SNICallback: ca.sniCallback }, (s) => s.end("ok"));
      server.listen(0, "127.0.0.1", () => {
        const s = tls.connect({ host: "127.0.0.1", port: server.address().port, servername: "api.example.test", ca: ca.certPem });
        s.on("data", (d) => { process.stdout.write(String(d) + " " + JSON.stringify(Object.keys(ca))); server.close(); });
      });`;
    const loader = fileURLToPath(import.meta.resolve("tsx"));
    const { stdout } = await run(process.execPath, ["--import", loader, "--input-type=module", "-e", script], {
      cwd: dirs.cwd,
      env: { PATH: process.env.PATH ?? "", HOME: dirs.home, TMPDIR: dirs.tmp, TSX_DISABLE_CACHE: "1" },
    });
    const [word, keys] = stdout.split(" ");
    assert.equal(word, "ok", "the child completed a verified handshake");
    assert.ok(!/key|issuer/i.test(keys!), `no key material among the CA's public fields: ${keys}`);
    for (const [name, d] of Object.entries(dirs)) assert.deepEqual(readdirSync(d), [], `${name} dir stays empty`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("when keyFile is configured, the CA key is written 0600 atomically and matches the certificate", () => {
  const dir = tempDir("lessor-ca-keyfile-");
  const keyFile = join(dir, "ca-key.pem");
  const ca = LocalCa.create({ permitted: [HOST], keyFile });
  assert.equal(statSync(keyFile).mode & 0o777, 0o600);
  assert.deepEqual(readdirSync(dir), ["ca-key.pem"], "no temporary file left behind");
  const key = createPrivateKey(readFileSync(keyFile));
  assert.equal(key.asymmetricKeyDetails?.namedCurve, "prime256v1");
  const certKey = new X509Certificate(ca.certPem).publicKey.export({ type: "spki", format: "der" });
  assert.deepEqual(createPublicKey(key).export({ type: "spki", format: "der" }), certKey);
  assert.ok(existsSync(keyFile));
});

test("leaf minting time (printed, not asserted)", () => {
  const ca = LocalCa.create({ permitted: ["*.bench.test"], maxLeaves: 1000 });
  ca.secureContextFor("warm.bench.test");
  const n = 200;
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    ca.secureContextFor(`h${i}.bench.test`);
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  const p = (q: number) => times[Math.min(n - 1, Math.floor(q * n))]!.toFixed(3);
  const cached = performance.now();
  for (let i = 0; i < n; i++) ca.secureContextFor(`h${i}.bench.test`);
  const hit = ((performance.now() - cached) / n).toFixed(4);
  console.log(`# leaf minting (key pair + certificate + SecureContext): p50 ${p(0.5)} ms, p99 ${p(0.99)} ms over ${n}; cached lookup ${hit} ms`);
});
