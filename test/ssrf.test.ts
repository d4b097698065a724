/**
 * The proxy's SSRF guard (src/proxy/address.ts, src/proxy/guard.ts). No test here sends a packet to a
 * non-loopback address: names are resolved by an injected resolver, and connections go through an
 * instrumented `create` that fails the test if it is reached for a refused target. The only real
 * connections are to a server on 127.0.0.1, opened through an explicit allow range.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { BlockList, createServer, type AddressInfo } from "node:net";
import { createServer as createHttpServer, request } from "node:http";
import fc from "fast-check";
import { classifyIp, parseIp, type AddressClass } from "../src/proxy/address.js";
import {
  connectChecked,
  DEFAULT_PORTS,
  parseHostLiteral,
  pinnedLookup,
  SsrfGuard,
  systemResolver,
  type CheckedTarget,
  type ConnectTo,
  type Resolver,
} from "../src/proxy/guard.js";
import { ProxyRefusal, type RefusalReason } from "../src/proxy/refusal.js";
import { isVaultError, VaultError } from "../src/base/errors.js";

/** A resolver over a fixed table that records every name it is asked for. */
function tableResolver(table: Record<string, string[]>): Resolver & { calls: string[] } {
  const calls: string[] = [];
  const resolve = async (host: string) => {
    calls.push(host);
    const found = table[host];
    if (!found) throw Object.assign(new Error(`no such host ${host}`), { code: "ENOTFOUND" });
    return found.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));
  };
  return Object.assign(resolve, { calls });
}

const TABLE: Record<string, string[]> = {
  "api.example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
  "internal.example.com": ["10.1.2.3"],
  "mixed.example.com": ["93.184.216.34", "10.0.0.5"],
  "mixed-reverse.example.com": ["192.168.1.1", "93.184.216.34"],
  "v6mixed.example.com": ["2606:2800:220:1:248:1893:25c8:1946", "fd00:ec2::254"],
  "mapped.example.com": ["::ffff:127.0.0.1"],
  "zero.example.com": ["0.0.0.0"],
  "metadata.example.com": ["169.254.169.254"],
  "cgnat.example.com": ["100.64.1.1"],
  "empty.example.com": [],
  "garbage.example.com": ["not-an-ip"],
  "loose.example.com": ["127.1"],
  "upstream.test": ["127.0.0.1"],
};

/** A create function that fails the test if the guard lets a refused target through. */
function forbidden(to: ConnectTo): never {
  assert.fail(`connect reached for a refused target: ${JSON.stringify(to)}`);
}

/** Checks, then connects through `create`: the whole path the proxy takes. */
async function checkAndConnect(guard: SsrfGuard, host: string, port: number, create: (to: ConnectTo) => unknown = forbidden): Promise<CheckedTarget> {
  const target = await guard.check(host, port);
  connectChecked(target, create);
  return target;
}

async function assertRefused(guard: SsrfGuard, host: string, port: number, reason: RefusalReason, address?: string): Promise<ProxyRefusal> {
  let caught: unknown;
  await checkAndConnect(guard, host, port).catch((e: unknown) => (caught = e));
  assert.ok(caught instanceof ProxyRefusal, `${host}:${port} should be refused (${reason}), got ${String(caught)}`);
  assert.equal(caught.reason, reason, `${host}: ${caught.message}`);
  assert.equal(caught.host, host);
  assert.equal(caught.port, port);
  if (address !== undefined) assert.equal(caught.address, address);
  return caught;
}

test("parseIp accepts only the standard forms and writes them canonically", () => {
  const ok: [string, string][] = [
    ["127.0.0.1", "127.0.0.1"],
    ["0.0.0.0", "0.0.0.0"],
    ["255.255.255.255", "255.255.255.255"],
    ["::1", "::1"],
    ["::", "::"],
    ["0:0:0:0:0:0:0:1", "::1"],
    ["FE80::1", "fe80::1"],
    ["::ffff:127.0.0.1", "::ffff:7f00:1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"],
    ["1:0:0:2:0:0:0:3", "1:0:0:2::3"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    ["1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"],
  ];
  for (const [text, canonical] of ok) assert.equal(parseIp(text)?.text, canonical, text);
  const odd = [
    "127.1",
    "127.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "017700000001",
    "2130706433",
    "0177.0.0.1",
    "127.0.0.01",
    "01.2.3.4",
    "1.2.3.4.",
    " 127.0.0.1",
    "127.0.0.1\n",
    "256.0.0.1",
    "[::1]",
    "fe80::1%eth0",
    "fe80::1%25eth0",
    "1::2::3",
    "::ffff:127.1",
    "localhost",
    "",
  ];
  for (const text of odd) assert.equal(parseIp(text), undefined, JSON.stringify(text));
});

test("parseIp round-trips any IPv4 and IPv6 address through its canonical text", () => {
  fc.assert(
    fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), (text) => {
      const ip = parseIp(text);
      assert.ok(ip, text);
      assert.deepEqual(parseIp(ip.text)?.bytes, ip.bytes);
      assert.equal(parseIp(ip.text)?.text, ip.text);
    }),
    { numRuns: 2000 },
  );
});

test("classifyIp refuses every special IPv4 range, at its edges, with the range named", () => {
  const refused: [string, AddressClass, string][] = [
    ["127.0.0.1", "loopback", "127.0.0.0/8"],
    ["127.255.255.254", "loopback", "127.0.0.0/8"],
    ["0.0.0.0", "unspecified", "0.0.0.0/8"],
    ["0.1.2.3", "unspecified", "0.0.0.0/8"],
    ["10.0.0.1", "private", "10.0.0.0/8"],
    ["10.255.255.255", "private", "10.0.0.0/8"],
    ["172.16.0.0", "private", "172.16.0.0/12"],
    ["172.31.255.255", "private", "172.16.0.0/12"],
    ["192.168.0.1", "private", "192.168.0.0/16"],
    ["100.64.0.0", "cgnat", "100.64.0.0/10"],
    ["100.127.255.255", "cgnat", "100.64.0.0/10"],
    ["169.254.0.1", "link_local", "169.254.0.0/16"],
    ["169.254.169.254", "metadata", "169.254.169.254/32"],
    ["169.254.170.2", "metadata", "169.254.170.2/32"],
    ["100.100.100.200", "metadata", "100.100.100.200/32"],
    ["192.0.0.192", "metadata", "192.0.0.192/32"],
    ["192.0.0.8", "reserved", "192.0.0.0/24"],
    ["192.0.2.1", "documentation", "192.0.2.0/24"],
    ["198.51.100.7", "documentation", "198.51.100.0/24"],
    ["203.0.113.9", "documentation", "203.0.113.0/24"],
    ["198.18.0.1", "reserved", "198.18.0.0/15"],
    ["198.19.255.255", "reserved", "198.18.0.0/15"],
    ["192.88.99.1", "reserved", "192.88.99.0/24"],
    ["224.0.0.1", "multicast", "224.0.0.0/4"],
    ["239.255.255.250", "multicast", "224.0.0.0/4"],
    ["240.0.0.1", "reserved", "240.0.0.0/4"],
    ["255.255.255.254", "reserved", "240.0.0.0/4"],
    ["255.255.255.255", "broadcast", "255.255.255.255/32"],
  ];
  for (const [addr, cls, range] of refused) {
    const v = classifyIp(addr);
    assert.equal(v.allowed, false, addr);
    if (!v.allowed) {
      assert.equal(v.class, cls, addr);
      assert.equal(v.range, range, addr);
      assert.ok(v.about.length > 0);
    }
  }
  const allowed = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0", "100.63.255.255", "100.128.0.0", "169.253.255.255", "169.255.0.0", "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255", "1.0.0.0"];
  for (const addr of allowed) assert.equal(classifyIp(addr).allowed, true, addr);
});

test("classifyIp agrees with net.BlockList built from the same IPv4 ranges, for random addresses", () => {
  // An independent oracle for the prefix arithmetic: Node's BlockList over the documented ranges.
  const ranges = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "100.100.100.200/32"];
  const list = new BlockList();
  for (const r of ranges) {
    const [net, bits] = r.split("/");
    list.addSubnet(net!, Number(bits), "ipv4");
  }
  const edgeish = fc.tuple(fc.constantFrom(0, 10, 100, 127, 169, 172, 192, 198, 203, 223, 224, 239, 240, 255), fc.nat(255), fc.nat(255), fc.nat(255)).map((p) => p.join("."));
  fc.assert(
    fc.property(fc.oneof(fc.ipV4(), edgeish), (addr) => {
      assert.equal(classifyIp(addr).allowed, !list.check(addr, "ipv4"), addr);
    }),
    { numRuns: 5000 },
  );
});

test("classifyIp refuses special IPv6 ranges and everything outside global unicast", () => {
  const refused: [string, AddressClass][] = [
    ["::1", "loopback"],
    ["::", "unspecified"],
    ["fc00::1", "private"],
    ["fd12:3456:789a::1", "private"],
    ["fe80::1", "link_local"],
    ["febf:ffff::1", "link_local"],
    ["fec0::1", "private"],
    ["ff02::1", "multicast"],
    ["fd00:ec2::254", "metadata"],
    ["fd20:ce::254", "metadata"],
    ["2001:db8::1", "documentation"],
    ["3fff::1", "documentation"],
    ["100::1", "reserved"],
    ["2001:2::1", "reserved"],
    ["2001:10::1", "reserved"],
    ["4000::1", "reserved"],
    ["1::1", "reserved"],
    ["e000::1", "reserved"],
  ];
  for (const [addr, cls] of refused) {
    const v = classifyIp(addr);
    assert.equal(v.allowed, false, addr);
    if (!v.allowed) assert.equal(v.class, cls, addr);
  }
  for (const addr of ["2606:4700:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001::1", "2000::1", "3ffe::1"])
    assert.equal(classifyIp(addr).allowed, true, addr);
});

test("IPv6 forms that carry an IPv4 address are judged by the IPv4 address inside", () => {
  const cases: [string, AddressClass, string, RegExp][] = [
    ["::ffff:127.0.0.1", "loopback", "127.0.0.1", /mapped/],
    ["::ffff:7f00:1", "loopback", "127.0.0.1", /mapped/],
    ["::ffff:10.0.0.1", "private", "10.0.0.1", /mapped/],
    ["::ffff:169.254.169.254", "metadata", "169.254.169.254", /mapped/],
    ["::ffff:0.0.0.0", "unspecified", "0.0.0.0", /mapped/],
    ["::ffff:0:127.0.0.1", "loopback", "127.0.0.1", /translated/],
    ["::127.0.0.1", "loopback", "127.0.0.1", /compatible/],
    ["::10.1.1.1", "private", "10.1.1.1", /compatible/],
    ["64:ff9b::127.0.0.1", "loopback", "127.0.0.1", /NAT64/],
    ["64:ff9b::a9fe:a9fe", "metadata", "169.254.169.254", /NAT64/],
    ["64:ff9b:1::a00:1", "private", "10.0.0.1", /local NAT64/],
    ["2002:7f00:1::", "loopback", "127.0.0.1", /6to4/],
    ["2002:a9fe:a9fe::1", "metadata", "169.254.169.254", /6to4/],
    ["2002:c0a8:101:1::1", "private", "192.168.1.1", /6to4/],
    // Teredo: server in bits 32-63, client bit-inverted in the last 32 bits.
    ["2001:0:808:808::80ff:fffe", "loopback", "127.0.0.1", /Teredo client/],
    ["2001:0:a00:1::f7f7:f7f7", "private", "10.0.0.1", /Teredo server/],
  ];
  for (const [addr, cls, inner, form] of cases) {
    const v = classifyIp(addr);
    assert.equal(v.allowed, false, addr);
    if (!v.allowed) {
      assert.equal(v.class, cls, addr);
      assert.equal(v.embedded?.ipv4, inner, addr);
      assert.match(v.embedded!.form, form, addr);
    }
  }
  for (const addr of ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "2001:0:808:808::f7f7:f7f7", "::ffff:0:8.8.8.8"]) {
    const v = classifyIp(addr);
    assert.equal(v.allowed, true, addr);
    assert.equal(v.embedded?.ipv4, "8.8.8.8", addr);
  }
});

test("for any IPv4 address, its mapped, NAT64, 6to4 and Teredo forms get the same verdict", () => {
  const hex = (a: number[]) => `${((a[0]! << 8) | a[1]!).toString(16)}:${((a[2]! << 8) | a[3]!).toString(16)}`;
  fc.assert(
    fc.property(fc.ipV4(), (v4) => {
      const b = v4.split(".").map(Number);
      const inv = b.map((x) => ~x & 0xff);
      const base = classifyIp(v4);
      for (const form of [`::ffff:${v4}`, `::ffff:0:${v4}`, `64:ff9b::${v4}`, `64:ff9b:1::${v4}`, `2002:${hex(b)}::1`, `2001:0:808:808::${hex(inv)}`]) {
        const v = classifyIp(form);
        assert.equal(v.allowed, base.allowed, `${form} vs ${v4}`);
        if (!v.allowed && !base.allowed) assert.equal(v.class, base.class, form);
      }
      // IPv4-compatible: ::0.0.0.1 is ::1, so only the verdict, not the class, must agree.
      assert.equal(classifyIp(`::${v4}`).allowed, base.allowed, `::${v4}`);
    }),
    { numRuns: 3000 },
  );
});

test("the guard refuses the issue's list, and never reaches connect for them", async () => {
  const resolve = tableResolver(TABLE);
  const guard = new SsrfGuard({ resolve });
  await assertRefused(guard, "127.0.0.1", 443, "loopback", "127.0.0.1");
  await assertRefused(guard, "localhost", 443, "loopback");
  await assertRefused(guard, "[::1]", 443, "loopback", "::1");
  await assertRefused(guard, "::1", 443, "loopback", "::1");
  await assertRefused(guard, "::ffff:127.0.0.1", 443, "loopback", "::ffff:7f00:1");
  await assertRefused(guard, "[::ffff:127.0.0.1]", 80, "loopback", "::ffff:7f00:1");
  await assertRefused(guard, "169.254.169.254", 80, "metadata", "169.254.169.254");
  await assertRefused(guard, "[fd00:ec2::254]", 80, "metadata", "fd00:ec2::254");
  await assertRefused(guard, "10.0.0.1", 443, "private", "10.0.0.1");
  await assertRefused(guard, "0.0.0.0", 443, "unspecified", "0.0.0.0");
  await assertRefused(guard, "[::]", 443, "unspecified", "::");
  await assertRefused(guard, "100.64.0.1", 443, "cgnat");
  await assertRefused(guard, "[fe80::1]", 443, "link_local");
  await assertRefused(guard, "[2002:7f00:1::]", 443, "loopback");
  assert.deepEqual(resolve.calls, [], "IP literals and localhost are never looked up");

  await assertRefused(guard, "internal.example.com", 443, "private", "10.1.2.3");
  await assertRefused(guard, "mixed.example.com", 443, "private", "10.0.0.5");
  await assertRefused(guard, "mixed-reverse.example.com", 443, "private", "192.168.1.1");
  await assertRefused(guard, "v6mixed.example.com", 443, "metadata", "fd00:ec2::254");
  await assertRefused(guard, "mapped.example.com", 443, "loopback", "::ffff:7f00:1");
  await assertRefused(guard, "zero.example.com", 443, "unspecified");
  await assertRefused(guard, "metadata.example.com", 443, "metadata");
  await assertRefused(guard, "cgnat.example.com", 443, "cgnat");
});

test("a refusal is a typed access_denied VaultError with a message and problem document an agent can act on", async () => {
  const guard = new SsrfGuard({ resolve: tableResolver(TABLE) });
  const r = await assertRefused(guard, "mixed.example.com", 443, "private", "10.0.0.5");
  assert.ok(r instanceof VaultError);
  assert.ok(isVaultError(r, "access_denied"));
  assert.equal(r.status, 403);
  assert.equal(
    r.message,
    `proxy refused "mixed.example.com" port 443: it resolves to 10.0.0.5, which is in 10.0.0.0/8: private network (RFC 1918); ` +
      `the proxy connects to public addresses only (the owner can allow a range in the proxy's configuration)`,
  );
  const p = r.problem();
  assert.deepEqual(
    { type: p.type, status: p.status, reason: p.reason, host: p.host, port: p.port, address: p.address },
    { type: "urn:lessor:egress:private", status: 403, reason: "private", host: "mixed.example.com", port: 443, address: "10.0.0.5" },
  );
  assert.equal(p.detail, r.message);
  // A plain VaultError is not a ProxyRefusal, although ProxyRefusal is a VaultError.
  assert.equal(new VaultError("access_denied", "x") instanceof ProxyRefusal, false);

  const mapped = await assertRefused(guard, "::ffff:127.0.0.1", 443, "loopback");
  assert.match(mapped.message, /::ffff:7f00:1 \(IPv4-mapped \(::ffff:0:0\/96\) of 127\.0\.0\.1\) is in 127\.0\.0\.0\/8/);
  const meta = await assertRefused(guard, "169.254.169.254", 80, "metadata");
  assert.match(meta.message, /cloud metadata service/);
  assert.doesNotMatch(meta.message, /can allow/, "metadata cannot be allowed, so the message does not offer it");
});

test("the guard approves a public name, resolves it once, and connects to exactly the checked address", async () => {
  const resolve = tableResolver(TABLE);
  const guard = new SsrfGuard({ resolve });
  const seen: ConnectTo[] = [];
  const target = await checkAndConnect(guard, "API.Example.COM.", 443, (to) => seen.push(to));
  assert.deepEqual(resolve.calls, ["api.example.com"]);
  assert.equal(target.host, "api.example.com");
  assert.equal(target.address, "93.184.216.34");
  assert.equal(target.family, 4);
  assert.deepEqual(target.addresses.map((a) => a.address), ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]);
  assert.deepEqual(seen, [{ host: "93.184.216.34", port: 443, family: 4, servername: "api.example.com" }]);
  assert.ok(Object.isFrozen(target));
  assert.throws(() => {
    (target as { address: string }).address = "10.0.0.1";
  }, TypeError);

  const literal = await checkAndConnect(guard, "[2606:4700:4700::1111]", 80, (to) => seen.push(to));
  assert.equal(literal.servername, undefined, "no SNI for an IP literal");
  assert.deepEqual(seen[1], { host: "2606:4700:4700::1111", port: 80, family: 6, servername: undefined });
  assert.deepEqual(resolve.calls, ["api.example.com"], "an IP literal is not looked up");
});

test("DNS rebinding: the guard looks up once, so a second, different answer is never used", async () => {
  let calls = 0;
  const rebinding: Resolver = async () => (calls++ === 0 ? [{ address: "93.184.216.34", family: 4 }] : [{ address: "127.0.0.1", family: 4 }]);
  const guard = new SsrfGuard({ resolve: rebinding });
  const seen: ConnectTo[] = [];
  const target = await guard.check("rebind.example.com", 443);
  connectChecked(target, (to) => seen.push(to));
  connectChecked(target, (to) => seen.push(to));
  assert.equal(calls, 1);
  assert.deepEqual(seen.map((s) => s.host), ["93.184.216.34", "93.184.216.34"]);
});

test("connectChecked and pinnedLookup accept only targets the guard made", () => {
  const fake = Object.freeze({ host: "x.example", port: 443, address: "10.0.0.1", family: 4, addresses: [], servername: "x.example" }) as CheckedTarget;
  let reached = false;
  assert.throws(() => connectChecked(fake, () => (reached = true)), (e: unknown) => isVaultError(e, "internal"));
  assert.throws(() => pinnedLookup(fake), (e: unknown) => isVaultError(e, "internal"));
  assert.equal(reached, false);
});

test("the port allow-list is checked first: 443 and 80 by default, configurable", async () => {
  assert.deepEqual([...DEFAULT_PORTS], [443, 80]);
  const resolve = tableResolver(TABLE);
  const guard = new SsrfGuard({ resolve });
  for (const port of [22, 25, 8080, 8443, 0, -1, 65536, 443.5, Number.NaN]) {
    const r = await assertRefused(guard, "api.example.com", port, "port");
    assert.match(r.message, /not on the proxy's port allow-list \(443, 80\)/);
  }
  assert.deepEqual(resolve.calls, [], "a refused port needs no lookup");
  await checkAndConnect(guard, "api.example.com", 80, () => undefined);

  const custom = new SsrfGuard({ resolve, ports: [8443] });
  await checkAndConnect(custom, "api.example.com", 8443, () => undefined);
  await assertRefused(custom, "api.example.com", 443, "port");
  for (const bad of [0, 70000, 1.5]) assert.throws(() => new SsrfGuard({ ports: [bad] }), (e: unknown) => isVaultError(e, "invalid_request"));
});

test("numeric hosts in non-standard forms are refused, never looked up or parsed loosely", async () => {
  const resolve = tableResolver(TABLE);
  const guard = new SsrfGuard({ resolve });
  for (const host of ["127.1", "127.0.1", "0x7f.1", "0x7f.0.0.1", "0x7f000001", "017700000001", "2130706433", "0177.0.0.1", "127.0.0.01", "127.0.0.1.", "8.8.8.8.", "foo.123", "example.0x10", "0"]) {
    const r = await assertRefused(guard, host, 443, "host_invalid");
    assert.match(r.message, /non-standard form/, host);
  }
  assert.deepEqual(resolve.calls, []);
  // A resolver answering with a loose form is refused too: only standard addresses are checked.
  await assertRefused(guard, "loose.example.com", 443, "unresolvable");
});

test("the odd numeric forms are refused whatever number they encode", async () => {
  const resolve = tableResolver({});
  const guard = new SsrfGuard({ resolve });
  await fc.assert(
    fc.asyncProperty(fc.nat(0xffffffff), fc.constantFrom("int", "hex", "octal", "short"), async (n, form) => {
      const a = [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
      const host =
        form === "int" ? String(n) : form === "hex" ? `0x${n.toString(16)}` : form === "octal" ? `0${n.toString(8)}` : `${a[0]}.${(n & 0xffffff) >>> 0}`;
      assert.equal(parseIp(host), undefined, host);
      await assertRefused(guard, host, 443, "host_invalid");
    }),
    { numRuns: 300 },
  );
  assert.deepEqual(resolve.calls, []);
});

test("malformed hosts are refused as host_invalid, with the host quoted safely", async () => {
  const resolve = tableResolver(TABLE);
  const guard = new SsrfGuard({ resolve });
  for (const host of ["", "[::1", "[127.0.0.1]", "[fe80::1%25eth0]", "fe80::1%eth0", "exa mple.com", "a..b.com", "-a.com", "a-.com", "api.example.com:443", "user@api.example.com", "api.example.com/x", "api.example.com\\x", "api.example.com?x", "api.example.com#x", "a%2e.com", "１２７.０.０.１", "０ｘ７ｆ.１", `${"a".repeat(64)}.com`, `${"a.".repeat(130)}com`, "\u001b[31mevil.com"]) {
    const r = await assertRefused(guard, host, 443, "host_invalid");
    assert.doesNotMatch(r.message, /\u001b/);
  }
  assert.deepEqual(resolve.calls, []);
});

test("localhost names are loopback without a lookup; other names are looked up in punycode", async () => {
  const resolve = tableResolver({ ...TABLE, "xn--bcher-kva.example": ["93.184.216.34"] });
  const guard = new SsrfGuard({ resolve });
  for (const host of ["localhost", "LOCALHOST", "localhost.", "api.localhost", "a.b.localhost", "ⓛocalhost", "ｌｏｃａｌｈｏｓｔ"]) await assertRefused(guard, host, 443, "loopback");
  assert.deepEqual(resolve.calls, []);
  const t = await guard.check("bücher.example", 443);
  assert.equal(t.host, "xn--bcher-kva.example");
  assert.deepEqual(resolve.calls, ["xn--bcher-kva.example"]);
});

test("names that do not resolve are refused as unresolvable (502), including a lookup that hangs", async () => {
  const guard = new SsrfGuard({ resolve: tableResolver(TABLE) });
  for (const host of ["nowhere.example.com", "empty.example.com", "garbage.example.com"]) {
    const r = await assertRefused(guard, host, 443, "unresolvable");
    assert.ok(isVaultError(r, "unavailable"));
    assert.equal(r.status, 502);
  }
  const nx = await assertRefused(guard, "nowhere.example.com", 443, "unresolvable");
  assert.match(nx.message, /ENOTFOUND/);

  const hanging = new SsrfGuard({ resolve: () => new Promise(() => undefined), resolveTimeoutMs: 20 });
  const t0 = Date.now();
  const r = await assertRefused(hanging, "slow.example.com", 443, "unresolvable");
  assert.match(r.message, /ETIMEOUT/);
  assert.ok(Date.now() - t0 < 2000);
});

test("allow ranges open only the ranges named, and never metadata, unspecified, multicast or broadcast", async () => {
  const resolve = tableResolver(TABLE);
  const guard = new SsrfGuard({ resolve, allow: ["127.0.0.1/32", "10.1.0.0/16", "::1", "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "255.255.255.255", "fd00::/8"] });
  const ok = async (host: string) => checkAndConnect(guard, host, 443, () => undefined);
  await ok("127.0.0.1");
  await ok("[::1]");
  await ok("::ffff:127.0.0.1");
  await ok("internal.example.com");
  await ok("169.254.1.1");
  await assertRefused(guard, "127.0.0.2", 443, "loopback");
  await assertRefused(guard, "10.2.0.1", 443, "private");
  await assertRefused(guard, "mixed.example.com", 443, "private", "10.0.0.5");
  await assertRefused(guard, "169.254.169.254", 443, "metadata");
  await assertRefused(guard, "[fd00:ec2::254]", 443, "metadata");
  await assertRefused(guard, "0.0.0.0", 443, "unspecified");
  await assertRefused(guard, "224.0.0.1", 443, "multicast");
  await assertRefused(guard, "255.255.255.255", 443, "broadcast");
  for (const bad of ["127.0.0.1/33", "10.0.0.0/x", "localhost", "0x7f.1/8", "::1/129", "1.2.3.4/8/9", ""])
    assert.throws(() => new SsrfGuard({ allow: [bad] }), (e: unknown) => isVaultError(e, "invalid_request"), bad);
});

test("parseHostLiteral tells IP literals, names, numeric forms and junk apart", () => {
  const v6 = parseHostLiteral("[0:0::1]");
  assert.equal(typeof v6 === "object" && v6.ip?.text, "::1");
  assert.deepEqual(parseHostLiteral("Api.GitHub.com."), { name: "api.github.com" });
  assert.deepEqual(parseHostLiteral("_dmarc.example.com"), { name: "_dmarc.example.com" });
  assert.equal(parseHostLiteral("[10.0.0.1]"), "invalid");
  assert.equal(parseHostLiteral("0x7f.1"), "numeric");
  assert.deepEqual(parseHostLiteral("1e3"), { name: "1e3" }, "not numeric to a resolver: a name");
  assert.equal(parseHostLiteral("a b"), "invalid");
});

test("a real connection to a loopback upstream goes to the checked address, with one lookup", async (t) => {
  const server = createServer((s) => s.end("hello"));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => server.close());
  const port = (server.address() as AddressInfo).port;
  const resolve = tableResolver(TABLE);
  const guard = new SsrfGuard({ resolve, ports: [port], allow: ["127.0.0.1/32"] });

  const target = await guard.check("upstream.test", port);
  const socket = connectChecked(target);
  const remote = new Promise((r) => socket.on("connect", () => r(socket.remoteAddress)));
  const chunks: Buffer[] = [];
  socket.on("data", (c: Buffer) => chunks.push(c));
  await new Promise((r) => socket.on("close", r));
  assert.equal(Buffer.concat(chunks).toString(), "hello");
  assert.equal(await remote, "127.0.0.1");
  assert.deepEqual(resolve.calls, ["upstream.test"]);
});

test("pinnedLookup lets an HTTP client use the name while connecting to the checked address", async (t) => {
  const http = createHttpServer((req, res) => res.end(`host=${req.headers.host}`));
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  t.after(() => http.close());
  const port = (http.address() as AddressInfo).port;
  const resolve = tableResolver(TABLE);
  const guard = new SsrfGuard({ resolve, ports: [port], allow: ["127.0.0.1/32"] });
  const target = await guard.check("upstream.test", port);
  const lookup = pinnedLookup(target);

  const body = await new Promise<string>((resolveBody, reject) => {
    const req = request({ host: "upstream.test", port, path: "/", lookup, agent: false }, (res) => {
      let text = "";
      res.on("data", (c: Buffer) => (text += c.toString()));
      res.on("end", () => resolveBody(text));
    });
    req.on("error", reject);
    req.end();
  });
  assert.equal(body, `host=upstream.test:${port}`);
  assert.deepEqual(resolve.calls, ["upstream.test"], "the HTTP client did not look the name up again");

  // Asked for any other name, the pinned lookup fails instead of answering.
  const err = await new Promise<unknown>((r) => lookup("evil.example.com", {}, (e) => r(e)));
  assert.match(String(err), /pinned lookup for upstream\.test/);
  const all = await new Promise<unknown>((r) => lookup("upstream.test", { all: true }, (_e, a) => r(a)));
  assert.deepEqual(all, [{ address: "127.0.0.1", family: 4 }]);
});

test("systemResolver is dns.lookup with all addresses (checked on an IP literal: no packet is sent)", async () => {
  assert.deepEqual(await systemResolver("127.0.0.1"), [{ address: "127.0.0.1", family: 4 }]);
});
