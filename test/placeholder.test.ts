/**
 * Placeholders (src/proxy/placeholder.ts, src/base/token-formats.ts, placeholder-registry.ts): shaped like the
 * credential so format checks pass, random elsewhere, independent of the value beyond its shape,
 * unique per lease and agent.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { inspect } from "node:util";
import fc from "fast-check";
import { CHARACTER_CLASSES, fillShape, makePlaceholder, MIN_BITS, placeholderShape, type RandomSource } from "../src/proxy/placeholder.js";
import { knownFormat, TOKEN_FORMATS } from "../src/base/token-formats.js";
import { PlaceholderRegistry } from "../src/proxy/placeholder-registry.js";
import { isVaultError } from "../src/base/errors.js";

/** A deterministic random source: SHA-256 in counter mode over a seed. */
function seeded(seed: string): RandomSource {
  let counter = 0;
  let pool = Buffer.alloc(0);
  return (n) => {
    while (pool.length < n) pool = Buffer.concat([pool, createHash("sha256").update(`${seed}/${counter++}`).digest()]);
    const out = pool.subarray(0, n);
    pool = pool.subarray(n);
    return Uint8Array.from(out);
  };
}

const B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const pick = (chars: string, n: number): string => [...randomBytes(n)].map((b) => chars[b % chars.length]).join("");

/**
 * Real-looking values and the pattern a format checker (GitHub, gitleaks, the vendors' docs) applies.
 * The placeholder must pass the same pattern.
 */
const SAMPLES: [string, RegExp][] = [
  [`ghp_${pick(B62, 36)}`, /^ghp_[A-Za-z0-9]{36}$/],
  [`gho_${pick(B62, 36)}`, /^gho_[A-Za-z0-9]{36}$/],
  [`ghu_${pick(B62, 36)}`, /^ghu_[A-Za-z0-9]{36}$/],
  [`ghs_${pick(B62, 36)}`, /^ghs_[A-Za-z0-9]{36}$/],
  [`ghr_${pick(B62, 36)}`, /^ghr_[A-Za-z0-9]{36}$/],
  [`github_pat_11${pick(B62, 20)}_${pick(B62, 59)}`, /^github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}$/],
  [`glpat-${pick(`${B62}-_`, 20)}`, /^glpat-[0-9a-zA-Z_-]{20}$/],
  [`gldt-${pick(B62, 20)}`, /^gldt-[0-9a-zA-Z_-]{20}$/],
  [`glrt-${pick(B62, 20)}`, /^glrt-[0-9a-zA-Z_-]{20}$/],
  [`glptt-${pick("0123456789abcdef", 40)}`, /^glptt-[0-9a-f]{40}$/],
  [`sk-ant-api03-${pick(`${B62}-_`, 93)}AA`, /^sk-ant-api03-[a-zA-Z0-9_-]{93}AA$/],
  [`sk-ant-admin01-${pick(`${B62}-_`, 93)}AA`, /^sk-ant-admin01-[a-zA-Z0-9_-]{93}AA$/],
  [`sk-proj-${pick(`${B62}-_`, 156)}`, /^sk-proj-[A-Za-z0-9_-]{156}$/],
  [`sk-svcacct-${pick(`${B62}-_`, 156)}`, /^sk-svcacct-[A-Za-z0-9_-]{156}$/],
  [`sk-admin-${pick(`${B62}-_`, 156)}`, /^sk-admin-[A-Za-z0-9_-]{156}$/],
  [`sk-or-v1-${pick("0123456789abcdef", 64)}`, /^sk-or-v1-[0-9a-f]{64}$/],
  [`sk-${pick(B62, 48)}`, /^sk-[A-Za-z0-9]{48}$/],
  [`sk_live_${pick(B62, 99)}`, /^sk_live_[0-9a-zA-Z]{99}$/],
  [`sk_test_${pick(B62, 24)}`, /^sk_test_[0-9a-zA-Z]{24}$/],
  [`rk_live_${pick(B62, 24)}`, /^rk_live_[0-9a-zA-Z]{24}$/],
  [`rk_test_${pick(B62, 24)}`, /^rk_test_[0-9a-zA-Z]{24}$/],
  [`whsec_${pick(`${B62}+/`, 32)}`, /^whsec_[A-Za-z0-9+/]{32}$/],
  [`xoxb-${pick("0123456789", 12)}-${pick("0123456789", 13)}-${pick(B62, 24)}`, /^xoxb-[0-9]{10,13}-[0-9]{10,13}-[a-zA-Z0-9]{24}$/],
  [`xoxp-${pick("0123456789", 12)}-${pick("0123456789", 12)}-${pick("0123456789", 13)}-${pick("0123456789abcdef", 32)}`, /^xoxp-[0-9]{10,13}-[0-9]{10,13}-[0-9]{10,13}-[a-f0-9]{32}$/],
  [`xoxa-2-${pick("0123456789", 12)}-${pick("0123456789", 12)}-${pick("0123456789abcdef", 32)}`, /^xoxa-2-[0-9]{12}-[0-9]{12}-[a-f0-9]{32}$/],
  [`xoxe-1-${pick(B62, 140)}`, /^xoxe-1-[A-Za-z0-9]{140}$/],
  [`xoxe-${pick(B62, 140)}`, /^xoxe-[A-Za-z0-9]{140}$/],
  [`xoxa-${pick("0123456789", 12)}-${pick("0123456789abcdef", 32)}`, /^xoxa-[0-9]{12}-[a-f0-9]{32}$/],
  [`xapp-${pick(B62, 40)}`, /^xapp-[A-Za-z0-9]{40}$/],
  [`xoxe.xoxp-1-${pick(B62, 140)}`, /^xoxe\.xoxp-1-[A-Za-z0-9]{140}$/],
  [`xoxe.xoxb-1-${pick(B62, 140)}`, /^xoxe\.xoxb-1-[A-Za-z0-9]{140}$/],
  [`xapp-1-A${pick("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", 10)}-${pick("0123456789", 13)}-${pick("0123456789abcdef", 64)}`, /^xapp-1-[A-Z0-9]{11}-[0-9]{13}-[a-f0-9]{64}$/],
  [`AKIA${pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)}`, /^AKIA[0-9A-Z]{16}$/],
  [`ASIA${pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)}`, /^ASIA[0-9A-Z]{16}$/],
  [`AIza${pick(`${B62}-_`, 35)}`, /^AIza[0-9A-Za-z_-]{35}$/],
  [`npm_${pick(B62, 36)}`, /^npm_[A-Za-z0-9]{36}$/],
  [`pypi-${pick(`${B62}-_`, 100)}`, /^pypi-[A-Za-z0-9_-]{100}$/],
  [`pypi-AgEIcHlwaS5vcmc${pick(`${B62}-_`, 150)}`, /^pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{150}$/],
  [`hf_${pick(B62, 34)}`, /^hf_[A-Za-z0-9]{34}$/],
  [`dckr_pat_${pick(`${B62}-_`, 27)}`, /^dckr_pat_[A-Za-z0-9_-]{27}$/],
  [`dop_v1_${pick("0123456789abcdef", 64)}`, /^dop_v1_[a-f0-9]{64}$/],
  [`shpat_${pick("0123456789abcdef", 32)}`, /^shpat_[a-fA-F0-9]{32}$/],
  [`lin_api_${pick(B62, 40)}`, /^lin_api_[a-zA-Z0-9]{40}$/],
  [`SG.${pick(`${B62}-_`, 22)}.${pick(`${B62}-_`, 43)}`, /^SG\.[\w-]{22}\.[\w-]{43}$/],
  [`gsk_${pick(B62, 52)}`, /^gsk_[a-zA-Z0-9]{52}$/],
  [`xai-${pick(B62, 80)}`, /^xai-[a-zA-Z0-9]{80}$/],
  [`hvs.${pick(`${B62}_-`, 90)}`, /^hvs\.[A-Za-z0-9_-]{90}$/],
];

test("every known format has a sample, and its placeholder keeps the prefix, the length and the checker's pattern", () => {
  const covered = new Set(SAMPLES.map(([v]) => knownFormat(v)?.prefix));
  for (const f of TOKEN_FORMATS) assert.ok(covered.has(f.prefix), `no sample for ${f.prefix}`);
  for (const [value, pattern] of SAMPLES) {
    assert.match(value, pattern, `the sample itself is well formed: ${value}`);
    const format = knownFormat(value)!;
    for (let i = 0; i < 20; i++) {
      const p = makePlaceholder(value);
      assert.match(p, pattern, `${format.name}: ${p}`);
      assert.ok(p.startsWith(format.prefix));
      assert.equal(p.length, value.length, format.name);
      assert.notEqual(p, value);
    }
    assert.equal(placeholderShape(value).format, format.name);
  }
});

test("the longest known prefix wins (sk-ant-api03- over sk-, github_pat_ over nothing)", () => {
  assert.equal(knownFormat("sk-ant-api03-xyz")?.prefix, "sk-ant-api03-");
  assert.equal(knownFormat("sk-proj-xyz")?.prefix, "sk-proj-");
  assert.equal(knownFormat("sk-xyz")?.prefix, "sk-");
  assert.equal(knownFormat("github_pat_x")?.prefix, "github_pat_");
  assert.equal(knownFormat("GHP_xyz"), undefined, "prefixes are case-sensitive");
  assert.equal(knownFormat("token"), undefined);
  // A value that is only a prefix has nothing to shape after it: it is treated as opaque.
  assert.equal(placeholderShape("ghp_").format, undefined);
});

test("an unknown opaque value keeps its length and character class", () => {
  const cases: [string, RegExp][] = [
    [pick("0123456789abcdef", 64), /^[0-9a-f]{64}$/],
    [pick("0123456789ABCDEF", 40), /^[0-9A-F]{40}$/],
    [pick("0123456789", 24), /^[0-9]{24}$/],
    [`Zz0${pick(B62, 37)}`, /^[A-Za-z0-9]{40}$/],
    [`-_${pick(`${B62}-_`, 41)}`, /^[A-Za-z0-9_-]{43}$/],
    [`${randomBytes(30).toString("base64")}`, /^[A-Za-z0-9+/]{40}$/],
    [`${randomBytes(31).toString("base64")}`, /^[A-Za-z0-9+/]{42}==$/],
    [`${randomBytes(32).toString("base64")}`, /^[A-Za-z0-9+/]{43}=$/],
    [`a.b~c${pick(B62, 30)}`, /^[A-Za-z0-9._~+/-]{35}$/],
  ];
  for (const [value, pattern] of cases) {
    const p = makePlaceholder(value);
    assert.match(p, pattern, `${value} → ${p}`);
    assert.equal(placeholderShape(value).format, undefined);
  }
  // Characters no class holds (space, quote, non-ASCII) give base62 as long as the UTF-8 bytes.
  for (const value of ['pass word "quoted" 123456', "pässwörd-sehr-geheim-0123456789", Buffer.from([0, 1, 2, 255, 254, 10, 13, 9, 8, 7, 6, 5, 4, 3, 2, 1])]) {
    const p = makePlaceholder(value);
    assert.match(p, /^[A-Za-z0-9]+$/);
    assert.equal(p.length, typeof value === "string" ? Buffer.byteLength(value) : value.length);
  }
});

test(`short values are lengthened to carry at least ${MIN_BITS} random bits`, () => {
  for (const value of ["a", "42", "hunter2", "abc-def", "ghp_abc"]) {
    const shape = placeholderShape(value);
    assert.ok(shape.bits >= MIN_BITS, `${value}: ${shape.bits} bits`);
    const p = makePlaceholder(value);
    assert.ok(p.length > value.length, `${value} → ${p}`);
    assert.ok(!p.includes(value));
  }
  assert.ok(makePlaceholder("ghp_abc").startsWith("ghp_"));
  for (const [value] of SAMPLES) assert.ok(placeholderShape(value).bits >= MIN_BITS, value);
  assert.throws(() => makePlaceholder(""), (e: unknown) => isVaultError(e, "invalid_request"));
  assert.throws(() => makePlaceholder(new Uint8Array(0)), (e: unknown) => isVaultError(e, "invalid_request"));
});

test("the shape keeps only the public prefix, declared separators, a fixed suffix and padding", () => {
  for (const [value] of SAMPLES) {
    const format = knownFormat(value)!;
    const literals = placeholderShape(value)
      .parts.filter((p): p is { literal: string } => "literal" in p)
      .map((p) => p.literal);
    assert.equal(literals[0], format.prefix);
    for (const l of literals.slice(1)) assert.ok((format.separators ?? "").includes(l) || l === format.suffix || /^={1,2}$/.test(l), `${format.name}: kept ${JSON.stringify(l)}`);
  }
});

test("property: the placeholder depends on the value only through its shape", () => {
  // With the same random bytes, two values of the same shape get the same placeholder: nothing of
  // the value beyond its shape (prefix, length, class, separators) can be read from it.
  const prefixes = ["", ...TOKEN_FORMATS.map((f) => f.prefix)];
  const body = (len: number) => fc.array(fc.constantFrom(...B62), { minLength: len, maxLength: len }).map((cs) => `Zz9${cs.join("")}`);
  fc.assert(
    fc.property(fc.constantFrom(...prefixes), fc.integer({ min: 10, max: 80 }).chain((len) => fc.tuple(body(len), body(len))), fc.string(), (prefix, [a, b], seed) => {
      const va = prefix + a;
      const vb = prefix + b;
      fc.pre(va !== vb);
      assert.deepEqual(placeholderShape(va), placeholderShape(vb));
      assert.equal(makePlaceholder(va, seeded(seed)), makePlaceholder(vb, seeded(seed)));
    }),
    { numRuns: 1000 },
  );
});

test("statistically, a placeholder character matches the value's at the same place no more than chance", () => {
  const value = `ghp_${pick(B62, 36)}`;
  let same = 0;
  const N = 2000;
  for (let i = 0; i < N; i++) {
    const p = makePlaceholder(value);
    for (let k = 4; k < value.length; k++) if (p[k] === value[k]) same++;
  }
  // Binomial(72000, 1/62): mean 1161, standard deviation 34; ±5 sd.
  assert.ok(same > 990 && same < 1335, `${same} matching characters`);
});

test("placeholders are unique: 20000 for one value, all different", () => {
  const value = `AKIA${pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)}`;
  const seen = new Set<string>();
  for (let i = 0; i < 20000; i++) seen.add(makePlaceholder(value));
  assert.equal(seen.size, 20000);
});

test("a draw that would equal or contain the value is thrown away; a stuck random source is refused", () => {
  // "ghp_" + 36 × "A": class hex (upper case), 16 characters, so byte 10 draws "A".
  const value = `ghp_${"A".repeat(36)}`;
  let calls = 0;
  const real = seeded("x");
  const first: RandomSource = (n) => (calls++ === 0 ? new Uint8Array(n).fill(10) : real(n));
  const p = makePlaceholder(value, first);
  assert.notEqual(p, value);
  assert.ok(calls > 1);
  assert.throws(
    () => makePlaceholder(value, (n) => new Uint8Array(n).fill(10)),
    (e: unknown) => isVaultError(e, "internal"),
  );
});

test("fillShape draws uniformly (rejection sampling, no modulo bias)", () => {
  // base62: bytes 248-255 are rejected; a source yielding only them must be asked again.
  let asked = 0;
  const biased: RandomSource = (n) => (asked++ < 3 ? new Uint8Array(n).fill(250) : new Uint8Array(n).fill(61));
  const shape = placeholderShape(`Zz9${"a".repeat(20)}`);
  assert.equal(fillShape(shape, biased), "z".repeat(23));
  assert.equal(asked, 4);
  assert.ok(CHARACTER_CLASSES.every((c) => new Set(c.chars).size === c.chars.length));
});

test("registry: one placeholder per (lease, agent), O(1) lookup, agent-bound, released with the lease", () => {
  const reg = new PlaceholderRegistry();
  const value = `ghp_${pick(B62, 36)}`;
  const a1 = reg.issue("lease-1", "agent-a", value);
  assert.equal(reg.issue("lease-1", "agent-a", value), a1, "the same pair gets the same placeholder");
  const b1 = reg.issue("lease-1", "agent-b", value);
  const a2 = reg.issue("lease-2", "agent-a", value);
  assert.equal(new Set([a1, b1, a2]).size, 3);
  assert.equal(reg.size, 3);
  assert.deepEqual(reg.lookup(a1), { placeholder: a1, leaseId: "lease-1", agent: "agent-a" });
  assert.equal(reg.lookupFor(a1, "agent-a")?.leaseId, "lease-1");
  assert.equal(reg.lookupFor(a1, "agent-b"), undefined, "another agent's placeholder is not theirs to use");
  assert.equal(reg.lookup(value), undefined, "the real value is not a placeholder");
  assert.deepEqual(reg.forLease("lease-1").map((e) => e.agent).sort(), ["agent-a", "agent-b"]);

  // The registry never keeps the value.
  assert.ok(!inspect(reg, { depth: 20, showHidden: true }).includes(value.slice(4)));

  assert.equal(reg.release("lease-1"), 2);
  assert.equal(reg.lookup(a1), undefined);
  assert.equal(reg.lookup(b1), undefined);
  assert.equal(reg.lookup(a2)?.leaseId, "lease-2");
  assert.equal(reg.release("lease-1"), 0);
  assert.notEqual(reg.issue("lease-1", "agent-a", value), a1, "a re-issued lease gets a fresh placeholder");
  assert.throws(() => reg.issue("", "agent", value), (e: unknown) => isVaultError(e, "invalid_request"));
});

test("registry: a colliding draw is redrawn, so two leases never share a placeholder", () => {
  // Record the random bytes of the first issue, then replay them for the second: its first draw
  // collides, and the registry must draw again.
  const fresh = seeded("fresh");
  const log: Uint8Array[] = [];
  let replay = -1;
  const source: RandomSource = (n) => {
    if (replay >= 0 && replay < log.length) return log[replay++]!;
    const b = fresh(n);
    if (replay < 0) log.push(b);
    return b;
  };
  const reg = new PlaceholderRegistry({ random: source });
  const value = `ghp_${pick(B62, 36)}`;
  const first = reg.issue("lease-1", "a", value);
  replay = 0;
  const second = reg.issue("lease-2", "a", value);
  assert.equal(replay, log.length, "the replayed draw was used (and collided)");
  assert.notEqual(second, first);
  assert.equal(reg.lookup(first)?.leaseId, "lease-1");
  assert.equal(reg.lookup(second)?.leaseId, "lease-2");

  const stuck = new PlaceholderRegistry({ random: (n) => new Uint8Array(n).fill(7) });
  stuck.issue("lease-1", "a", value);
  assert.throws(() => stuck.issue("lease-2", "a", value), (e: unknown) => isVaultError(e, "internal"));
});
