/**
 * The scrubber's second stage (src/proxy/scrub-wrapped.ts): a value's base64 form wrapped in lines, a
 * break anywhere inside it, is masked whatever the chunking, the breaks kept where they are; and the
 * encoded forms (src/proxy/encoded-forms.ts) each common encoder writes are listed, once each.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { Scrubber, ScrubPatterns, scrub } from "../src/proxy/scrub.js";
import { encodedForms } from "../src/proxy/encoded-forms.js";
import { makePlaceholder } from "../src/proxy/placeholder.js";

const BREAKS = ["\n", "\r\n", "\\n", "\\r\\n"];

/** `text` in chunks cut at `cuts` (offsets), scrubbed; also the most the scrubber held at once. */
function chunked(text: Buffer, patterns: ScrubPatterns, cuts: number[]): { out: Buffer; held: number } {
  const s = new Scrubber(patterns);
  const out: Buffer[] = [];
  let held = 0;
  let at = 0;
  for (const c of [...new Set(cuts)].filter((c) => c > 0 && c < text.length).sort((a, b) => a - b).concat(text.length)) {
    out.push(...s.push(text.subarray(at, c)));
    held = Math.max(held, s.held);
    at = c;
  }
  out.push(...s.end());
  return { out: Buffer.concat(out), held };
}

/** The patterns the proxy scrubs for `value` (./lease-egress.ts), and the placeholder they put back. */
function patternsFor(value: string): { p: ScrubPatterns; ph: string } {
  const ph = makePlaceholder(value);
  return { p: new ScrubPatterns([{ value, placeholder: ph }, ...encodedForms(value, ph)]), ph };
}

test("property: a value's base64 wrapped every 60, 64 or 76 characters (each break style, any alignment, any chunking) is masked, breaks kept in place", () => {
  fc.assert(
    fc.property(
      fc.string({ minLength: 12, maxLength: 120 }).filter((v) => Buffer.byteLength(v) >= 12),
      fc.uint8Array({ maxLength: 200 }),
      fc.uint8Array({ maxLength: 6 }),
      fc.constantFrom(60, 64, 76),
      fc.constantFrom(...BREAKS),
      fc.array(fc.nat({ max: 2000 }), { maxLength: 12 }),
      (value, before, after, width, br, cuts) => {
        const { p } = patternsFor(value);
        const blob = Buffer.concat([before, Buffer.from(value), after]).toString("base64");
        const text = Buffer.from(`{"content":"${blob.replace(new RegExp(`(.{${width}})`, "g"), `$1${br}`)}"}\nend\n`);
        const whole = scrub(text, p);
        const { out, held } = chunked(text, p, cuts);
        assert.ok(out.equals(whole), "the chunking changes nothing");
        assert.equal(whole.length, text.length);
        const notB64 = (b: Buffer): string => b.toString("latin1").replace(/[A-Za-z0-9+/]/g, "");
        assert.equal(notB64(whole), notB64(text), "the breaks stay where they were");
        const decoded = Buffer.from(whole.toString("latin1").split('"')[3]!.replace(/\\r|\\n|\r|\n/g, ""), "base64");
        assert.ok(!decoded.includes(Buffer.from(value)), "the value decodes out of the wrapped blob");
        assert.ok(held <= p.longest + (p.wrapped ? p.longest + 40 : 0), `held ${held}`);
      },
    ),
    { numRuns: 1000 },
  );
});

test("line breaks in plain text are not held back, nor a short base64 line; an occurrence in progress across a break is", () => {
  const v = "ghp_" + "k".repeat(36);
  const { p, ph } = patternsFor(v);
  let s = new Scrubber(p);
  // Lines of text (SSE, NDJSON, logs, a hex id): the second stage holds nothing, whatever ends the
  // chunk (the first holds only a possible prefix of a form, as without it).
  const plain = new Scrubber(new ScrubPatterns([{ value: v, placeholder: ph }, ...encodedForms(v, ph).map(({ value, placeholder }) => ({ value, placeholder }))]));
  for (const chunk of ["data: one two three\n", "\n", '{"a":"b"}\n', "word ending in a letter\\n", "commit " + "0123456789abcdef".repeat(3) + "\n", "\n\n"]) {
    assert.deepEqual(Buffer.concat(s.push(Buffer.from(chunk))), Buffer.concat(plain.push(Buffer.from(chunk))), JSON.stringify(chunk));
    assert.equal(s.held, plain.held, JSON.stringify(chunk));
  }
  assert.deepEqual(Buffer.concat(s.end()), Buffer.concat(plain.end()));
  s = new Scrubber(p);
  // A wrapped blob cut right after a break that splits the value's base64: the start is held, then masked.
  const b64 = Buffer.from("x".repeat(40) + v).toString("base64");
  const cut = 60;
  const first = Buffer.concat(s.push(Buffer.from(b64.slice(0, cut) + "\n")));
  assert.ok(s.held > 0);
  const rest = Buffer.concat([...s.push(Buffer.from(b64.slice(cut))), ...s.end()]);
  const all = Buffer.concat([first, rest]).toString();
  assert.equal(all.length, b64.length + 1);
  assert.ok(!Buffer.from(all.replace("\n", ""), "base64").toString().includes(v));
  // (the characters at the core's ends also encode its neighbours: the placeholder shows but for its first and last bytes)
  assert.ok(Buffer.from(all.replace("\n", ""), "base64").toString().includes(ph.slice(1, -1)));
});

test("encoded forms: each common encoder's form is listed once, none equal to the value, each paired with the placeholder's", () => {
  const v = "a+b/c d!'()*~é<>&\"=$@:,;?#`x" + "Z".repeat(10);
  const ph = makePlaceholder(v);
  const forms = encodedForms(v, ph);
  const values = forms.map((f) => f.value);
  assert.equal(new Set(values).size, values.length, "no form twice");
  assert.ok(!values.includes(v));
  const want = [
    // Go's QueryEscape (all of !'()* encoded, space as +) and PathEscape ($&+:=@ kept)
    "a%2Bb%2Fc+d%21%27%28%29%2A~%C3%A9%3C%3E%26%22%3D%24%40%3A%2C%3B%3F%23%60x",
    "a+b%2Fc%20d%21%27%28%29%2A~%C3%A9%3C%3E&%22=$@:%2C%3B%3F%23%60x",
    // Python's quote (`/` kept)
    "a%2Bb/c%20d%21%27%28%29%2A~%C3%A9%3C%3E%26%22%3D%24%40%3A%2C%3B%3F%23%60x",
    // encodeURIComponent twice
    encodeURIComponent(encodeURIComponent(v)),
    // .NET's System.Text.Json, Python's json.dumps
    "a\\u002Bb/c d!\\u0027()*~\\u00E9\\u003C\\u003E\\u0026\\u0022=$@:,;?#\\u0060x",
    'a+b/c d!\'()*~\\u00e9<>&\\"=$@:,;?#`x',
    // Go's html/template
    "a&#43;b/c d!&#39;()*~é&lt;&gt;&amp;&#34;=$@:,;?#`x",
  ];
  for (const w of want) assert.ok(values.some((x) => x.startsWith(w)), `missing ${w}`);
  for (const f of forms) assert.equal(f.placeholder.length === f.value.length || f.wrapped !== true, true);
  // A token of letters and digits has only its base64 forms; the base64 (not base64url) ones are wrapped.
  const tok = encodedForms("ghp_" + "Ab1".repeat(12), makePlaceholder("ghp_" + "Ab1".repeat(12)));
  assert.ok(tok.every((f) => /^[A-Za-z0-9+/_-]+$/.test(f.value)));
  assert.equal(tok.filter((f) => f.wrapped).length, 3);
});
