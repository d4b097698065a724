/**
 * The `[proxy]` table of lessor.toml (src/config/proxy-config.ts): defaults, every field, and each bad
 * input refused with an error that names the file, the field and what to write instead.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { parse } from "smol-toml";
import { parseProxyConfig, DEFAULT_PROXY_CONFIG } from "../src/config/proxy-config.js";
import { VaultError } from "../src/base/errors.js";

const parsed = (toml: string) => parseProxyConfig("lessor.toml", (parse(toml) as Record<string, unknown>)["proxy"]);

function refused(toml: string, pattern: RegExp): void {
  assert.throws(
    () => parsed(toml),
    (e: unknown) => e instanceof VaultError && e.code === "config_invalid" && /^lessor\.toml: /.test(e.message) && pattern.test(e.message),
  );
}

test("absent: strict egress, ports 443 and 80, nothing allowed, placeholder swapping", () => {
  assert.deepEqual(parsed(""), DEFAULT_PROXY_CONFIG);
  assert.equal(DEFAULT_PROXY_CONFIG.egress, "strict");
});

test("every field read, names canonical, rules keyed by scope/name", () => {
  const c = parsed(`
[proxy]
egress = "open"
ports = [443, 8443, 443]
allow = ["10.20.0.0/16", "fd00::1"]
hosts = { "Git.Internal." = "10.20.0.5" }
upstream_ca = "~/corp-ca.pem"

[[proxy.inject]]
secret = "openai-key"
mode = "bearer"

[[proxy.inject]]
secret = "env:prod/api-key"
mode = "header"
header = "X-Api-Key"

[[proxy.inject]]
secret = "maps"
mode = "query"
param = "key"

[[proxy.inject]]
secret = "git-pat"
mode = "basic"
username = "x-access-token"
`);
  assert.equal(c.egress, "open");
  assert.deepEqual(c.ports, [443, 8443]);
  assert.deepEqual(c.allow, ["10.20.0.0/16", "fd00::1"]);
  assert.deepEqual(c.hosts, { "git.internal": "10.20.0.5" });
  assert.equal(c.upstreamCa, "~/corp-ca.pem");
  assert.deepEqual(
    c.inject.map((r) => [r.secret, r.mode, r.header ?? r.param ?? r.username ?? null]),
    [
      ["global/openai-key", "bearer", null],
      ["env:prod/api-key", "header", "x-api-key"],
      ["global/maps", "query", "key"],
      ["global/git-pat", "basic", "x-access-token"],
    ],
  );
});

test("bad input is refused, naming the field and the fix", () => {
  refused('[proxy]\negress = "loose"', /\[proxy\] egress: expected "strict" or "open"/);
  refused("[proxy]\nports = [0]", /\[proxy\] ports: expected a non-empty list of port numbers/);
  refused("[proxy]\nports = []", /\[proxy\] ports/);
  refused('[proxy]\nallow = ["10.0.0.0/8/1"]', /\[proxy\] allow item 1: "10\.0\.0\.0\/8\/1" is not an address or CIDR range/);
  refused('[proxy]\nallow = ["intranet"]', /not an address or CIDR range/);
  refused('[proxy]\nhosts = { "a.example" = "not-an-ip" }', /\[proxy\] hosts a\.example: expected an IP address/);
  refused('[proxy]\nhosts = { "10.0.0.1" = "10.0.0.2" }', /is not a host name/);
  refused('[proxy]\nupstream_ca = "ca.pem"', /upstream_ca: "ca\.pem" is not an absolute path/);
  refused('[proxy]\nsurprise = 1', /unknown field "surprise"/);
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "cookie"', /mode: expected one of "placeholder", "bearer", "basic", "header", "query"/);
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "header"', /mode = "header" needs header = "…"/);
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "query"', /mode = "query" needs param = "…"/);
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "bearer"\nheader = "X-Key"', /only mode = "header" takes header/);
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "header"\nheader = "Host"', /frames the message or belongs to the proxy/);
  // Some servers read "_" as "-": a credential in Content_Length or Transfer_Encoding would frame the request.
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "header"\nheader = "Content_Length"', /frames the message or belongs to the proxy/);
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "header"\nheader = "transfer_encoding"', /frames the message or belongs to the proxy/);
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "header"\nheader = "X Key"', /is not a header name/);
  refused('[[proxy.inject]]\nsecret = "a"\nmode = "basic"\nusername = "a:b"', /cannot contain a colon/);
  refused('[[proxy.inject]]\nsecret = "a"\n[[proxy.inject]]\nsecret = "global/a"', /secret global\/a has two rules/);
  refused('[[proxy.inject]]\nsecret = "a\\u001b[31m"', /printable characters/);
});
