import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { SecretBytes } from "../src/crypto/secret-bytes.js";
import { isVaultError, VaultError } from "../src/base/errors.js";
import { isScope, isSecretName } from "../src/base/names.js";
import type { ReferenceForm, SecretFieldRef } from "../src/cli/refs/grammar.js";
import { formatReference, isReference, parseReference, tryParseReference } from "../src/cli/refs/reference.js";
import { findReferences, renderReferences } from "../src/cli/refs/text.js";
import { extractField, fieldKeys } from "../src/cli/refs/json-field.js";

const FORMS: ReferenceForm[] = ["canonical", "zlayer", "secret-url"];

// ---------- parsing every form ----------

const GOOD: [string, SecretFieldRef & { form: ReferenceForm }][] = [
  ["lessor://global/github-token", { scope: "global", name: "github-token", form: "canonical" }],
  ["lessor://env:prod/db#password", { scope: "env:prod", name: "db", field: "password", form: "canonical" }],
  ["lessor://workspace:acme/gh", { scope: "workspace:acme", name: "gh", form: "canonical" }],
  ["lessor://principal:bob@example.com/key.v2#a\\.b.c", { scope: "principal:bob@example.com", name: "key.v2", field: "a\\.b.c", form: "canonical" }],
  ["lessor://global/token.", { scope: "global", name: "token.", form: "canonical" }],
  ["$S:name", { scope: "global", name: "name", form: "zlayer" }],
  ["$S:name/field", { scope: "global", name: "name", field: "field", form: "zlayer" }],
  ["$S:db/conn.password", { scope: "global", name: "db", field: "conn.password", form: "zlayer" }],
  ["$S:@api/token", { scope: "service:api", name: "token", form: "zlayer" }],
  ["$S:@api/token/client_secret", { scope: "service:api", name: "token", field: "client_secret", form: "zlayer" }],
  ["$S::prod/db", { scope: "env:prod", name: "db", form: "zlayer" }],
  ["$S::prod/db/password", { scope: "env:prod", name: "db", field: "password", form: "zlayer" }],
  ["$S:acme:prod/db", { scope: "env:prod@acme", name: "db", form: "zlayer" }],
  ["$S:acme:prod/db/user.name", { scope: "env:prod@acme", name: "db", field: "user.name", form: "zlayer" }],
  ["$secret://prod/API_KEY", { scope: "env:prod", name: "API_KEY", form: "secret-url" }],
  ["$secret://prod/API_KEY/token", { scope: "env:prod", name: "API_KEY", field: "token", form: "secret-url" }],
  ["$secret://prod@acme/K", { scope: "env:prod@acme", name: "K", form: "secret-url" }],
];

test("every form parses to the expected parts and formats back to the same text", () => {
  for (const [s, want] of GOOD) {
    const got = parseReference(s);
    assert.deepEqual(got, want, s);
    assert.ok(!("field" in got) || got.field !== undefined, "no field key when there is no field");
    assert.ok(isScope(got.scope) && isSecretName(got.name));
    assert.equal(formatReference(got, got.form), s, `round trip of ${s}`);
    assert.deepEqual(tryParseReference(s), want);
    assert.ok(isReference(s));
  }
});

test("one reference written in every form it fits", () => {
  const cases: [SecretFieldRef, Partial<Record<ReferenceForm, string>>][] = [
    [{ scope: "global", name: "gh" }, { canonical: "lessor://global/gh", zlayer: "$S:gh" }],
    [{ scope: "service:api", name: "t", field: "a" }, { canonical: "lessor://service:api/t#a", zlayer: "$S:@api/t/a" }],
    [{ scope: "env:prod", name: "K" }, { canonical: "lessor://env:prod/K", zlayer: "$S::prod/K", "secret-url": "$secret://prod/K" }],
    [
      { scope: "env:prod@acme", name: "K", field: "x.y" },
      { canonical: "lessor://env:prod@acme/K#x.y", zlayer: "$S:acme:prod/K/x.y", "secret-url": "$secret://prod@acme/K/x.y" },
    ],
    [{ scope: "workspace:acme", name: "gh" }, { canonical: "lessor://workspace:acme/gh" }],
  ];
  for (const [ref, written] of cases)
    for (const form of FORMS) {
      const want = written[form];
      if (want === undefined) {
        assert.throws(() => formatReference(ref, form), (e: unknown) => isVaultError(e, "invalid_request") && /canonical form/.test(e.message));
        continue;
      }
      assert.equal(formatReference(ref, form), want);
      const back = parseReference(want);
      assert.deepEqual({ scope: back.scope, name: back.name, field: back.field }, { field: undefined, ...ref });
      assert.equal(back.form, form);
    }
  assert.equal(formatReference({ scope: "global", name: "x" }), "lessor://global/x", "canonical by default");
});

test("formatReference refuses what a form cannot say, and invalid parts", () => {
  const bad: [SecretFieldRef, ReferenceForm, RegExp][] = [
    [{ scope: "workspace:x", name: "n" }, "zlayer", /workspace:x.*cannot be written as a zlayer reference/],
    [{ scope: "global", name: "n" }, "secret-url", /env:<name> scopes/],
    [{ scope: "service:api", name: "n" }, "secret-url", /env:<name> scopes/],
    [{ scope: "env:a@b@c", name: "n" }, "zlayer", /project must be/],
    [{ scope: "env:a@.b", name: "n" }, "zlayer", /project must be/],
    [{ scope: "Global", name: "n" }, "canonical", /scope "Global" is not valid/],
    [{ scope: "global", name: "a..b" }, "canonical", /secret name "a\.\.b" is not valid/],
    [{ scope: "global", name: "a/b" }, "canonical", /secret name/],
    [{ scope: "global", name: "n", field: "" }, "canonical", /field path "": position 1: expected a field name/],
    [{ scope: "global", name: "n", field: "a..b" }, "zlayer", /field path "a\.\.b": position 3/],
    [{ scope: "global", name: "n", field: "a b" }, "canonical", /position 2: unexpected whitespace/],
    [{ scope: "global", name: "n" }, "nope" as ReferenceForm, /unknown reference form/],
  ];
  for (const [ref, form, re] of bad)
    assert.throws(() => formatReference(ref, form), (e: unknown) => isVaultError(e, "invalid_request") && re.test(e.message), `${JSON.stringify(ref)} ${form}`);
});

// ---------- errors and their positions ----------

const BAD: [string, number, RegExp][] = [
  ["", 1, /empty/],
  ["lessor://global/", 17, /expected a secret name$/],
  ["lessor:/x", 9, /expected "lessor:\/\/", found "x"/],
  ["lessor:x", 8, /expected "lessor:\/\/"/],
  ["lesor://global/x", 1, /unknown scheme "lesor"/],
  ["https://x/y", 1, /unknown scheme "https"/],
  ["LESSOR://global/x", 1, /expected "lessor:\/\/" \(references are case-sensitive\)/],
  ["lessor://global/x".replace("s", "S"), 3, /case-sensitive/],
  [" lessor://global/x", 1, /found whitespace/],
  ["lessor://global/x ", 18, /unexpected whitespace after the reference/],
  ["lessor://global/x\n", 18, /unexpected whitespace/],
  ["lessor://global/x!", 18, /unexpected "!" after the reference/],
  ["lessor://global/x/y", 18, /cannot contain "\/"/],
  ["lessor://global/x#", 19, /expected a field name after "#"$/],
  ["lessor://global/x#a.", 21, /expected a field name after "\."/],
  ["lessor://global/x#a..b", 21, /expected a field name after "\.", found "\."/],
  ["lessor://global/x#.a", 19, /expected a field name after "#", found "\."/],
  ["lessor://global/x#a\\b", 20, /only escape in a field path is "\\\."/],
  ["lessor://global/a..b", 18, /must not contain "\.\."/],
  ["lessor://global/.a", 17, /starts with a letter, digit or "_"/],
  ["lessor://global/-a", 17, /starts with a letter, digit or "_"/],
  ["lessor://global/" + "a".repeat(129), 17 + 128, /at most 128 characters/],
  ["lessor:///x", 10, /expected a scope/],
  ["lessor://Global/x", 10, /lower case/],
  ["lessor://env/x", 13, /expected ":" after the scope kind "env"/],
  ["lessor://env:/x", 14, /expected a scope id, found "\/"/],
  ["lessor://env:-x/x", 14, /scope id starts with a letter or digit/],
  ["lessor://1env:x/x", 10, /scope kind starts with a lowercase letter/],
  ["lessor://env:prod", 18, /expected "\/" and a secret name after the scope$/],
  ["lessor://env:prod x", 18, /found whitespace/],
  ["lessor://global", 16, /expected ":"/],
  ["$S:", 4, /expected a secret name$/],
  ["$S: x", 4, /expected a secret name, found whitespace/],
  ["$s:x", 2, /expected "\$S:" \(references are case-sensitive\)/],
  ["$x", 2, /a reference starts with "lessor:\/\/", "\$S:" or "\$secret:\/\/"; found "x"/],
  ["$S:x/", 6, /expected a field name after "\/"$/],
  ["$S:x/a/b", 7, /one field path; separate nested keys with "\."/],
  ["$S:x#a", 5, /in this form a field follows a "\/"/],
  ["$S:@/x", 5, /expected a service name, found "\/"/],
  ["$S:@api", 8, /expected "\/" and a secret name after the service$/],
  ["$S:@api/", 9, /expected a secret name/],
  ["$S::/x", 5, /expected an environment name/],
  ["$S::prod", 9, /expected "\/"/],
  ["$S::a@b/x", 6, /cannot contain "@".*\$S:project:env\/name/],
  ["$S:a:", 6, /expected an environment name after the project$/],
  ["$S:a:b", 7, /expected "\/" and a secret name after the environment$/],
  ["$S:a:b/", 8, /expected a secret name/],
  ["$S:_a:b/x", 4, /project name starts with a letter or digit/],
  ["$S:a_b:c/x", 5, /project name may contain only/],
  ["$S:a:b@c/x", 7, /expected "\/".*found "@"/],
  ["$S:..", 4, /starts with a letter, digit or "_"/],
  ["$secret:/x/y", 10, /expected "\$secret:\/\/"/],
  ["$secret://", 11, /expected an environment name$/],
  ["$secret://prod", 15, /expected "\/"/],
  ["$secret://prod/", 16, /expected a secret name/],
  ["$secret://prod/K/", 18, /expected a field name/],
  ["$secret://prod/K#f", 17, /in this form a field follows a "\/"/],
  ["lessor://global/x#" + "a".repeat(257), 19 + 256, /field path is at most 256/],
  ["lessor://global/x\u00e9", 18, /unexpected "é"/],
  ["lessor://global/x\u{1F600}", 18, /unexpected "😀"/],
];

test("bad references fail with a VaultError naming what is wrong and its 1-based position", () => {
  for (const [s, pos, re] of BAD) {
    assert.throws(
      () => parseReference(s),
      (e: unknown) => {
        assert.ok(e instanceof VaultError && e.code === "invalid_request", s);
        const m = /^reference "(?:[^"\\]|\\.)*": position (\d+): (.*)$/s.exec(e.message);
        assert.ok(m, `message shape: ${e.message}`);
        assert.equal(Number(m[1]), pos, `position for ${JSON.stringify(s)}: ${e.message}`);
        assert.match(m[2]!, re, s);
        return true;
      },
    );
    assert.equal(tryParseReference(s), null);
    assert.equal(isReference(s), false);
  }
  assert.equal(
    (() => {
      try {
        parseReference("lessor://global/");
      } catch (e) {
        return (e as Error).message;
      }
    })(),
    'reference "lessor://global/": position 17: expected a secret name',
  );
  assert.throws(() => parseReference(42 as unknown as string), (e: unknown) => isVaultError(e, "invalid_request"));
});

// ---------- property tests ----------

const chars = (s: string) => [...s];
const LOWER = chars("abcdefghijklmnopqrstuvwxyz");
const ALNUM = [...LOWER, ...chars("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")];
const str = (first: string[], rest: string[], max: number) =>
  fc.tuple(fc.constantFrom(...first), fc.string({ unit: fc.constantFrom(...rest), maxLength: max })).map(([a, b]) => a + b);

const nameArb = str([...ALNUM, "_"], [...ALNUM, "_", ".", "-"], 30).filter((n) => !n.includes(".."));
const idArb = str(ALNUM, [...ALNUM, ".", "@", "-"], 20);
const envArb = str(ALNUM, [...ALNUM, ".", "-"], 12);
const scopeArb = fc.oneof(
  fc.constant("global"),
  fc.tuple(str(LOWER, [...LOWER, ..."0123456789_-"], 8), idArb).map(([k, id]) => `${k}:${id}`),
  idArb.map((id) => `service:${id}`),
  idArb.map((id) => `env:${id}`),
  fc.tuple(envArb, envArb).map(([e, p]) => `env:${e}@${p}`),
);
const keyArb = fc
  .array(fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...ALNUM, "_", "-") }, { weight: 1, arbitrary: fc.constant("\\.") }), {
    minLength: 1,
    maxLength: 8,
  })
  .map((a) => a.join(""));
const fieldArb = fc.array(keyArb, { minLength: 1, maxLength: 4 }).map((k) => k.join("."));
const refArb: fc.Arbitrary<SecretFieldRef> = fc
  .record({ scope: scopeArb, name: nameArb, field: fc.option(fieldArb, { nil: undefined }) })
  .map((r) => (r.field === undefined ? { scope: r.scope, name: r.name } : r));

/** Which forms can write `r`, worked out independently of the implementation. */
function expressible(r: SecretFieldRef): ReferenceForm[] {
  const out: ReferenceForm[] = ["canonical"];
  const env = r.scope.startsWith("env:") ? r.scope.slice(4) : null;
  if (
    r.scope === "global" ||
    r.scope.startsWith("service:") ||
    (env !== null && (!env.includes("@") || /^[^@]+@[A-Za-z0-9][A-Za-z0-9.-]*$/.test(env)))
  )
    out.push("zlayer");
  if (env !== null) out.push("secret-url");
  return out;
}

test("property: format then parse round-trips in every form that can express the reference", () => {
  fc.assert(
    fc.property(refArb, (r) => {
      assert.ok(isScope(r.scope) && isSecretName(r.name));
      const can = expressible(r);
      for (const form of FORMS) {
        if (!can.includes(form)) {
          assert.throws(() => formatReference(r, form), (e: unknown) => isVaultError(e, "invalid_request"));
          continue;
        }
        const s = formatReference(r, form);
        assert.deepEqual(parseReference(s), { ...r, form });
        assert.equal(formatReference(parseReference(s), form), s);
      }
    }),
    { numRuns: 1500 },
  );
});

const REF_ALPHABET = [...chars("lessor:/$S@#.\\-_ secret\"'{}"), "a", "Z", "0", "é", "\u{1F600}"];
const nearMiss = fc
  .tuple(fc.constantFrom("lessor://", "$S:", "$secret://", "lessor:", "$S", "{{ lessor://", ""), fc.string({ unit: fc.constantFrom(...REF_ALPHABET), maxLength: 24 }))
  .map(([a, b]) => a + b);

test("property: parse never throws anything but VaultError, and agrees with tryParse and isReference", () => {
  fc.assert(
    fc.property(fc.oneof(fc.string({ unit: "binary" }), nearMiss), (s) => {
      let ok = true;
      try {
        const r = parseReference(s);
        assert.ok(isScope(r.scope) && isSecretName(r.name));
        assert.equal(formatReference(r, r.form), s, "whatever parses is in its one written form");
      } catch (e) {
        ok = false;
        assert.ok(isVaultError(e, "invalid_request"), String(e));
        assert.match(e.message, /position \d+: /);
      }
      assert.equal(tryParseReference(s) !== null, ok);
      assert.equal(isReference(s), ok);
    }),
    { numRuns: 3000 },
  );
});

test("property: findReferences only throws VaultError; each find is a valid reference at its offsets", () => {
  fc.assert(
    fc.property(fc.oneof(fc.string({ unit: "binary" }), fc.array(nearMiss, { maxLength: 4 }).map((a) => a.join(" "))), (text) => {
      let found;
      try {
        found = findReferences(text);
      } catch (e) {
        assert.ok(isVaultError(e, "invalid_request"), String(e));
        assert.match(e.message, /at line \d+, column \d+: /);
        return;
      }
      let last = 0;
      for (const f of found) {
        assert.ok(f.start >= last && f.end > f.start);
        last = f.end;
        const slice = text.slice(f.start, f.end);
        const inner = slice.startsWith("{{") ? slice.slice(2, -2).trim() : slice;
        assert.deepEqual(parseReference(inner), f.ref);
      }
    }),
    { numRuns: 2000 },
  );
});

test("property: a reference written into text is found with exact offsets", () => {
  const before = fc.constantFrom("", " ", "X=", '"', "'", "(", "user:", "a\n", "é ");
  const after = fc.constantFrom("", " ", '"', "'", ",", ";", ")", "@host", "\n", " é", ". Done", "/path", "#frag");
  fc.assert(
    fc.property(refArb, fc.constantFrom(...FORMS), before, after, (r, form, pre, post) => {
      if (!expressible(r).includes(form)) return;
      let s = formatReference(r, form);
      // Characters that could continue the reference would be taken into it: wrap those cases.
      const cont = r.field === undefined ? (form === "canonical" ? /^[#.]/ : /^[/.]/) : /^\./;
      if ((r.field === undefined && r.name.endsWith(".")) || cont.test(post)) s = `{{ ${s} }}`;
      const text = pre + s + post;
      const found = findReferences(text);
      assert.equal(found.length, 1, text);
      assert.equal(found[0]!.start, pre.length);
      assert.equal(found[0]!.end, pre.length + s.length);
      assert.deepEqual(found[0]!.ref, { ...r, form });
    }),
    { numRuns: 1500 },
  );
});

// ---------- references in text ----------

test("findReferences: env-style values end a reference at '@', ':' and other characters it cannot hold", () => {
  const v = "postgres://user:$S:db/password@host:5432/app";
  const found = findReferences(v);
  assert.deepEqual(found, [{ start: 16, end: 30, ref: { scope: "global", name: "db", field: "password", form: "zlayer" } }]);
  assert.equal(v.slice(16, 30), "$S:db/password");

  const two = "postgres://$S:dbuser:$S:dbpass@db.internal/app";
  assert.deepEqual(
    findReferences(two).map((f) => [f.start, f.end, f.ref.name]),
    [
      [11, 20, "dbuser"],
      [21, 30, "dbpass"],
    ],
  );
  // `$S:a:b/c` is the project form: the documented pitfall, and `{{ }}` as the way out.
  assert.deepEqual(findReferences("http://$S:host:8080/x")[0]!.ref, { scope: "env:8080@host", name: "x", form: "zlayer" });
  assert.deepEqual(
    findReferences("http://{{$S:host}}:8080/x").map((f) => [f.start, f.end, f.ref.name]),
    [[7, 18, "host"]],
  );
  // A field stops at "@"; a name without a field stops at "@" too.
  assert.deepEqual(
    findReferences("u:lessor://env:prod/pw@h").map((f) => [f.start, f.end, f.ref.scope, f.ref.name]),
    [[2, 22, "env:prod", "pw"]],
  );
  assert.deepEqual(
    findReferences("K=$secret://prod/API_KEY/token;").map((f) => [f.start, f.end, f.ref.field]),
    [[2, 30, "token"]],
  );
  // Sentence punctuation and a "/" or "#" that does not start a field are not taken in.
  assert.deepEqual(
    findReferences("see lessor://global/x. Or $S:db/pw... or $S:y/ or lessor://global/z#!").map((f) => [f.start, f.end, f.ref.name, f.ref.field]),
    [
      [4, 21, "x", undefined],
      [26, 34, "db", "pw"],
      [41, 45, "y", undefined],
      [50, 67, "z", undefined],
    ],
  );
  // A "." followed by a name character continues the name; a backslash that is not "\." ends a field.
  assert.deepEqual(
    findReferences('"lessor://global/a.b#c\\n"').map((f) => [f.start, f.end, f.ref.name, f.ref.field]),
    [[1, 22, "a.b", "c"]],
  );
  assert.deepEqual(findReferences("no refs here: $5, lessor, $S, $secret:x, https://x"), []);
  assert.deepEqual(findReferences("xlessor://global/a notlessor://global/b"), [], "part of another scheme");
  assert.deepEqual(findReferences(""), []);
});

test("findReferences: templates, the wrapped {{ }} form, and other template syntax left alone", () => {
  const t = [
    "# config ✓",
    'token = "lessor://global/github-token"',
    "db = {{ lessor://env:prod/db#password }}",
    "tight={{$S::prod/db/user}}",
    "dotted = {{ lessor://global/name. }}.",
    "helm = {{ .Values.image }} and {{ include \"x\" . }}",
    "odd = {{{ $S:a }}}",
  ].join("\n");
  const found = findReferences(t);
  const slices = found.map((f) => t.slice(f.start, f.end));
  assert.deepEqual(slices, [
    "lessor://global/github-token",
    "{{ lessor://env:prod/db#password }}",
    "{{$S::prod/db/user}}",
    "{{ lessor://global/name. }}",
    "{{ $S:a }}",
  ]);
  assert.deepEqual(found[1]!.ref, { scope: "env:prod", name: "db", field: "password", form: "canonical" });
  assert.deepEqual(found[3]!.ref, { scope: "global", name: "name.", form: "canonical" });
  assert.equal(found[0]!.start, t.indexOf("lessor://global/github-token"));
});

test("findReferences: malformed references in text throw with line and column", () => {
  const cases: [string, RegExp][] = [
    ["a\nb lessor://global/ c", /^reference "lessor:\/\/global\/ " at line 2, column 19: expected a secret name, found whitespace$/],
    ["é $S: x", /^reference "\$S: " at line 1, column 6: expected a secret name/],
    ["x {{ lessor://global/a b }}", /^reference "\{\{ lessor:\/\/global\/a b" at line 1, column 24: expected "}}" to close "\{\{", found "b"$/],
    ["{{ lessor://global/a", /line 1, column 21: expected "}}" to close/],
    ["{{ $S:a:b }}", /line 1, column 10: expected "\/"/],
    ["v=$S:p:prod/", /line 1, column 13: expected a secret name$/],
    ["v=lessor://global/a..b", /line 1, column 20: a secret name must not contain "\.\."$/],
    ["v=$S::a@b/x", /column 8: an environment in/],
  ];
  for (const [text, re] of cases)
    assert.throws(() => findReferences(text), (e: unknown) => isVaultError(e, "invalid_request") && re.test(e.message), `${text}`);
});

test("renderReferences keeps other text byte for byte and resolves once per occurrence, in order", async () => {
  const text = "héllo 🌍 $S:a, again $S:a; {{ lessor://env:prod/db#pw }} — ¿ü? lessor://global/b.\r\n\ttail\u0000";
  const calls: SecretFieldRef[] = [];
  const out = await renderReferences(text, async (ref) => {
    calls.push(ref);
    await new Promise((r) => setImmediate(r));
    return `<${ref.scope}/${ref.name}${ref.field ? "#" + ref.field : ""}:${calls.length}>`;
  });
  assert.equal(out, "héllo 🌍 <global/a:1>, again <global/a:2>; <env:prod/db#pw:3> — ¿ü? <global/b:4>.\r\n\ttail\u0000");
  assert.deepEqual(calls, [
    { scope: "global", name: "a" },
    { scope: "global", name: "a" },
    { scope: "env:prod", name: "db", field: "pw" },
    { scope: "global", name: "b" },
  ]);
  assert.ok(calls.every((c) => !("form" in c)), "the resolver gets plain references");

  let n = 0;
  const plain = "no references: ✓ 🌍 $ S: lessor:/x {{ x }}";
  assert.equal(await renderReferences(plain, async () => String(++n)), plain);
  assert.equal(n, 0);
  await assert.rejects(renderReferences("$S:a $S:", async () => "v"), (e: unknown) => isVaultError(e, "invalid_request"));
  await assert.rejects(renderReferences("$S:a", async () => { throw new Error("boom"); }), /boom/);
});

// ---------- JSON fields ----------

const bytes = (s: string) => SecretBytes.from(s);
const pick = (json: string, field: string) => extractField(bytes(json), field).unsafeText();

test("fieldKeys splits on unescaped dots", () => {
  assert.deepEqual(fieldKeys("db.password"), ["db", "password"]);
  assert.deepEqual(fieldKeys("a\\.b.c"), ["a.b", "c"]);
  assert.deepEqual(fieldKeys("a\\..b"), ["a.", "b"]);
  assert.deepEqual(fieldKeys("\\.\\."), [".."]);
  assert.throws(() => fieldKeys("a..b"), /position 3/);
});

test("extractField: nested objects, escaped dots, arrays, non-string leaves", () => {
  const doc = JSON.stringify({
    db: { password: "p@ss wörd\n\"q\"", port: 5432, "host.name": "db.local" },
    list: [{ k: "zero" }, "one"],
    big: 12345678901234567890,
    exp: 1.50e3,
    flag: true,
    none: null,
    obj: { a: [1, { b: "c d" }], e: {} },
  });
  assert.equal(pick(doc, "db.password"), 'p@ss wörd\n"q"', "string leaves come back as their text");
  assert.equal(pick(doc, "db.port"), "5432");
  assert.equal(pick(doc, "db.host\\.name"), "db.local");
  assert.equal(pick(doc, "list.0.k"), "zero");
  assert.equal(pick(doc, "list.1"), "one");
  assert.equal(pick(doc, "flag"), "true");
  assert.equal(pick(doc, "none"), "null");
  assert.equal(pick(doc, "obj"), '{"a":[1,{"b":"c d"}],"e":{}}');
  // Whitespace in the stored JSON is dropped outside strings; numbers keep their exact digits.
  const spaced = '{ "n" : 12345678901234567890 , "x" : [ 1.0 , 2e10 , { "s" : " a  b " } ] , "n2": -0.000 }';
  assert.equal(pick(spaced, "n"), "12345678901234567890");
  assert.equal(pick(spaced, "x"), '[1.0,2e10,{"s":" a  b "}]');
  assert.equal(pick(spaced, "n2"), "-0.000");
  // Duplicate keys: the last one wins, as JSON.parse does.
  assert.equal(pick('{"a":"first","a":"second"}', "a"), "second");
  assert.equal(pick('{"a\\u002eb":"escaped key"}', "a\\.b"), "escaped key");
  assert.equal(pick('{"__proto__":"x"}', "__proto__"), "x");
  assert.equal(pick('{"k":"\\u00e9\\ud83d\\ude00"}', "k"), "é😀");
  const out = extractField(bytes('{"k":"v"}'), "k");
  assert.ok(out instanceof SecretBytes);
  assert.equal(String(out), "[redacted]");
});

test("extractField errors name the field and never the value (canary)", () => {
  const CANARY = "CANARY-7f3a9c";
  const cases: [string, string, RegExp][] = [
    [`${CANARY} not json`, "a", /value is not JSON, so field "a" cannot be picked out/],
    [`{"a": "${CANARY}"`, "a", /not JSON/],
    [`{"x": "${CANARY}"}`, "password", /field "password" is not in the secret's value: nothing named "password" at the top level/],
    [`{"db": {"user": "${CANARY}"}}`, "db.password", /nothing named "password" at "db"/],
    [`{"db": "${CANARY}"}`, "db.password", /field "db\.password" cannot be picked out: the value at "db" is not a JSON object/],
    [`"${CANARY}"`, "a", /the value at the top level is not a JSON object/],
    [`[ "${CANARY}" ]`, "1", /nothing named "1"/],
    [`[ "${CANARY}" ]`, "x", /nothing named "x"/],
    [`[ "${CANARY}" ]`, "01", /nothing named "01"/],
    [`{"a.b": "${CANARY}"}`, "a.b", /nothing named "a" at the top level/],
  ];
  for (const [value, field, re] of cases)
    assert.throws(
      () => extractField(bytes(value), field),
      (e: unknown) => {
        assert.ok(isVaultError(e, "invalid_request"));
        assert.match(e.message, re);
        assert.ok(!e.message.includes(CANARY) && !e.message.includes("CANARY"), e.message);
        assert.equal(e.cause, undefined, "no parse error (which would quote the value) is attached");
        assert.ok(!JSON.stringify(e).includes("CANARY"));
        return true;
      },
      value,
    );
  assert.throws(() => extractField(SecretBytes.from(Uint8Array.of(0x7b, 0xff, 0x7d)), "a"), /not JSON/);
  assert.throws(() => extractField(bytes('{"a":1}'), "a..b"), (e: unknown) => isVaultError(e, "invalid_request") && /field path "a\.\.b"/.test(e.message));
});
