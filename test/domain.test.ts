import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  coversPattern,
  formatDomainPattern,
  matchDomain,
  normalizeHost,
  parseDomainPattern,
  type DomainPattern,
} from "../src/vault/domain.js";
import { isVaultError } from "../src/base/errors.js";
import { quoteText } from "../src/base/text.js";

const label = fc
  .stringMatching(/^[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?$/)
  .filter((l) => !l.startsWith("xn--"));
const tld = fc.stringMatching(/^[a-z]{2,6}$/);
/** A valid host of 2-5 labels. */
const host = fc.tuple(fc.array(label, { minLength: 1, maxLength: 4 }), tld).map(([ls, t]) => [...ls, t].join("."));
/** A suffix and a host that lies 1-3 labels below it. */
const hostUnder = fc
  .tuple(fc.array(label, { minLength: 1, maxLength: 3 }), host)
  .map(([ls, s]) => ({ suffix: s, host: `${ls.join(".")}.${s}` }));

function randomCase(s: string, flips: boolean[]): string {
  return [...s].map((c, i) => (flips[i % flips.length] ? c.toUpperCase() : c)).join("");
}

const wild = (suffix: string): DomainPattern => ({ kind: "wildcard", suffix });
const exact = (h: string): DomainPattern => ({ kind: "exact", host: h });

test("normalizeHost lower-cases, strips one trailing dot and converts IDN to punycode", () => {
  assert.equal(normalizeHost("API.GitHub.COM"), "api.github.com");
  assert.equal(normalizeHost("api.github.com."), "api.github.com");
  assert.equal(normalizeHost("bücher.de"), "xn--bcher-kva.de");
  assert.equal(normalizeHost("SHOP.BÜCHER.DE."), "shop.xn--bcher-kva.de");
  assert.equal(normalizeHost("xn--bcher-kva.de"), "xn--bcher-kva.de");
});

test("normalizeHost rejects everything that is not a plain DNS name, naming the input", () => {
  const bad: [string, RegExp][] = [
    ["", /is empty/],
    ["localhost", /only one label/],
    ["api..github.com", /empty label/],
    [".api.github.com", /empty label/],
    ["api.github.com..", /empty label/],
    ["api.github.com:443", /port/],
    ["evil.com/.github.com", /path/],
    ["api.github.com@evil.com", /userinfo/],
    ["*.github.com", /wildcard/],
    ["1.2.3.4", /IPv4/],
    ["0x7f.1", /IPv4/],
    ["[::1]", /IPv6/],
    ["::1", /IPv6/],
    ["a b.com", /whitespace/],
    [" api.github.com", /whitespace/],
    ["api.github.com ", /whitespace/],
    ["api.github.com\0.evil", /control/],
    ["api.github.com%2eevil.com", /"%"/],
    ["api\\github.com", /"\\\\"/],
    ["evil.com#.github.com", /"#"/],
    ["evil.com?.github.com", /"\?"/],
    ["-api.github.com", /starts or ends with "-"/],
    ["a_b.example.com", /"_"/],
    [`${"a".repeat(64)}.com`, /longer than 63/],
    [`${"abcdefghi.".repeat(26)}com`, /longer than 253/],
    ["xn--zz.com", /punycode/],
    ["a\u200bb.com", /invisible/],
    ["api.github.com\u00ad", /invisible/],
  ];
  for (const [input, re] of bad) {
    assert.throws(
      () => normalizeHost(input),
      (e: unknown) => {
        assert.ok(isVaultError(e, "invalid_request"), `${JSON.stringify(input)} should throw invalid_request`);
        assert.match(e.message, re, `message for ${JSON.stringify(input)}: ${e.message}`);
        assert.ok(e.message.includes(quoteText(input).slice(0, 20)), `message names the input (escaped): ${e.message}`);
        return true;
      },
    );
  }
});

test("normalizeHost truncates a long input in its message", () => {
  const long = `${"x".repeat(500)}:80`;
  assert.throws(
    () => normalizeHost(long),
    (e: unknown) => isVaultError(e) && e.message.length < 300 && e.message.includes("…"),
  );
});

test("parseDomainPattern accepts hosts and *.suffix, and rejects misplaced or too-broad wildcards", () => {
  assert.deepEqual(parseDomainPattern("API.github.com."), exact("api.github.com"));
  assert.deepEqual(parseDomainPattern("*.GitHub.com"), wild("github.com"));
  assert.deepEqual(parseDomainPattern("*.bücher.de"), wild("xn--bcher-kva.de"));
  for (const bad of ["*", "*.com", "*.com.", "a*.b.com", "*.*.b.com", "**.b.com", "*b.com", "b.*.com", " *.b.com", "*.", "*..b.com"]) {
    assert.throws(
      () => parseDomainPattern(bad),
      (e: unknown) => isVaultError(e, "invalid_request") && e.message.includes(JSON.stringify(bad)),
      bad,
    );
  }
});

test("matchDomain: wildcard needs at least one label below the suffix", () => {
  const p = parseDomainPattern("*.github.com");
  assert.equal(matchDomain(p, "api.github.com"), true);
  assert.equal(matchDomain(p, "a.b.github.com"), true);
  assert.equal(matchDomain(p, "github.com"), false);
  assert.equal(matchDomain(p, "evilgithub.com"), false);
  assert.equal(matchDomain(p, "api.evilgithub.com"), false);
  assert.equal(matchDomain(p, ".github.com"), false);
});

test("matchDomain refuses spoofs and accepts only genuinely equal hosts", () => {
  const p = parseDomainPattern("api.github.com");
  const w = parseDomainPattern("*.github.com");
  const same = ["api.github.com", "api.github.com.", "API.GitHub.COM", "API.GITHUB.COM."];
  for (const h of same) {
    assert.equal(matchDomain(p, h), true, h);
    assert.equal(matchDomain(w, h), true, h);
  }
  const spoofs = [
    "api.github.com.evil.com",
    "evil.com/.github.com",
    "api.github.com@evil.com",
    "evil.com@api.github.com",
    "api.github.com@api.github.com",
    "evil.com#.github.com",
    "evil.com?.github.com",
    "evilgithub.com",
    "github.com",
    "api.github.com:443",
    "api..github.com",
    "api.github.com\0.evil",
    "api.github.com%2eevil.com",
    "api.github.com\\.evil.com",
    " api.github.com",
    "api.github.com ",
    "api.github.com\n",
    "api.github.com..",
    "",
  ];
  for (const h of spoofs) {
    assert.equal(matchDomain(p, h), false, JSON.stringify(h));
    assert.equal(matchDomain(w, h), false, `wildcard vs ${JSON.stringify(h)}`);
  }
  // Real, different hosts: not the exact one (the wildcard does cover those under github.com).
  for (const h of ["api.github.co", "ap.github.com", "\u0430pi.github.com"]) assert.equal(matchDomain(p, h), false, h);
  // The confusable is a different (punycode) host, so it is below github.com but never equal to api.github.com.
  assert.equal(normalizeHost("\u0430pi.github.com"), "xn--pi-6kc.github.com");
});

test("matchDomain normalises IDN, case and the trailing dot", () => {
  assert.equal(matchDomain(parseDomainPattern("*.bücher.de"), "SHOP.BÜCHER.DE."), true);
  assert.equal(matchDomain(parseDomainPattern("*.bücher.de"), "shop.xn--bcher-kva.de"), true);
  assert.equal(matchDomain(parseDomainPattern("bücher.de"), "BÜCHER.DE"), true);
  assert.equal(matchDomain(parseDomainPattern("*.bücher.de"), "shop.bucher.de"), false);
});

test("coversPattern: exact by exact or wildcard above; wildcard by same or higher wildcard", () => {
  const P = parseDomainPattern;
  assert.equal(coversPattern(P("api.github.com"), P("api.github.com")), true);
  assert.equal(coversPattern(P("api.github.com"), P("github.com")), false);
  assert.equal(coversPattern(P("*.github.com"), P("api.github.com")), true);
  assert.equal(coversPattern(P("*.github.com"), P("github.com")), false);
  assert.equal(coversPattern(P("*.github.com"), P("*.github.com")), true);
  assert.equal(coversPattern(P("*.github.com"), P("*.api.github.com")), true);
  assert.equal(coversPattern(P("*.api.github.com"), P("*.github.com")), false);
  assert.equal(coversPattern(P("api.github.com"), P("*.api.github.com")), false);
  assert.equal(coversPattern(P("*.github.com"), P("*.evilgithub.com")), false);
});

test("property: matchDomain(*.s, h) iff h ends with '.'+s and h != s", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.tuple(host, host).map(([s, h]) => ({ suffix: s, host: h })),
        hostUnder,
        host.map((h) => ({ suffix: h, host: h })),
        hostUnder.map(({ suffix, host: h }) => ({ suffix: h, host: suffix })),
      ),
      ({ suffix, host: h }) => {
        const expected = h.endsWith(`.${suffix}`) && h !== suffix;
        assert.equal(matchDomain(parseDomainPattern(`*.${suffix}`), h), expected);
      },
    ),
    { numRuns: 300 },
  );
});

test("property: appending a label, path, userinfo, port, query or fragment to a matched host never matches", () => {
  const tail = fc.oneof(
    label.map((l) => `.${l}`),
    host.map((h) => `.${h}`),
    fc.stringMatching(/^\/[a-z0-9./]{0,10}$/),
    host.map((h) => `@${h}`),
    fc.integer({ min: 0, max: 65535 }).map((n) => `:${n}`),
    host.map((h) => `#.${h}`),
    host.map((h) => `?.${h}`),
    host.map((h) => `%2e${h}`),
    host.map((h) => `\0.${h}`),
    fc.constantFrom(" ", "\t", "\n", "..", "\\"),
  );
  fc.assert(
    fc.property(host, tail, (h, t) => {
      const p = parseDomainPattern(h);
      assert.equal(matchDomain(p, h), true);
      assert.equal(matchDomain(p, h + t), false, JSON.stringify(h + t));
    }),
    { numRuns: 300 },
  );
});

test("property: case changes and one trailing dot never change the result", () => {
  fc.assert(
    fc.property(
      fc.oneof(hostUnder, fc.tuple(host, host).map(([s, h]) => ({ suffix: s, host: h }))),
      fc.array(fc.boolean(), { minLength: 1, maxLength: 20 }),
      fc.boolean(),
      ({ suffix, host: h }, flips, dot) => {
        const variant = randomCase(h, flips) + (dot ? "." : "");
        for (const p of [parseDomainPattern(`*.${suffix}`), parseDomainPattern(suffix), parseDomainPattern(h)])
          assert.equal(matchDomain(p, variant), matchDomain(p, h));
        assert.equal(normalizeHost(variant), h);
      },
    ),
  );
});

test("property: matchDomain never throws, and parseDomainPattern only throws VaultError", () => {
  const anyString = fc.oneof(
    fc.string({ unit: "binary", maxLength: 40 }),
    fc.string({ unit: "binary-ascii", maxLength: 40 }),
    fc.string({ unit: fc.constantFrom("a", ".", "*", "-", ":", "/", "@", "%", "x", "n", "1", "é", "\u0430"), maxLength: 30 }),
  );
  const p = parseDomainPattern("*.example.com");
  fc.assert(
    fc.property(anyString, (s) => {
      assert.equal(typeof matchDomain(p, s), "boolean");
      assert.equal(typeof matchDomain(exact("example.com"), s), "boolean");
      try {
        const q = parseDomainPattern(s);
        // Whatever parses must round-trip through its canonical text.
        assert.deepEqual(parseDomainPattern(formatDomainPattern(q)), q);
      } catch (e) {
        assert.ok(isVaultError(e, "invalid_request"), String(e));
      }
    }),
    { numRuns: 500 },
  );
});

test("property: parse/format round-trip and normalizeHost is idempotent", () => {
  fc.assert(
    fc.property(host, fc.boolean(), (h, w) => {
      const text = w ? `*.${h}` : h;
      const p = parseDomainPattern(text);
      assert.equal(formatDomainPattern(p), text);
      assert.deepEqual(parseDomainPattern(formatDomainPattern(p)), p);
      assert.equal(normalizeHost(normalizeHost(h)), h);
    }),
  );
});

test("property: coversPattern is sound — every host the requested pattern allows, the rule allows", () => {
  const pattern = fc.oneof(
    host.map((h) => parseDomainPattern(h)),
    host.map((h) => parseDomainPattern(`*.${h}`)),
  );
  fc.assert(
    fc.property(pattern, pattern, label, (rule, requested, l) => {
      if (!coversPattern(rule, requested)) return;
      const probe = requested.kind === "exact" ? requested.host : `${l}.${requested.suffix}`;
      assert.equal(matchDomain(rule, probe), true);
    }),
    { numRuns: 500 },
  );
  // and it does cover in the constructed cases
  fc.assert(
    fc.property(hostUnder, ({ suffix, host: h }) => {
      assert.equal(coversPattern(wild(suffix), exact(h)), true);
      assert.equal(coversPattern(wild(suffix), wild(h)), true);
      assert.equal(coversPattern(wild(h), wild(suffix)), false);
    }),
  );
});
