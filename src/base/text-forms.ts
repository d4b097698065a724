/**
 * The text encodings a value is commonly written in by other programs: percent-encoders (each in both
 * hex cases, and twice over for a URL kept in a query), JSON string escapers and HTML escapers. Shared
 * by the proxy's response scrubber (src/proxy/encoded-forms.ts, which pairs each form of a value with
 * the same form of its placeholder) and `lessor run`'s output mask (src/cli/run/mask.ts).
 */

/**
 * `s` percent-encoded as UTF-8 (upper-case hex), leaving ASCII letters, digits and the characters of
 * `keep` as they are; a space as `+` when `plus`.
 */
function percent(s: string, keep: string, plus = false): string {
  let out = "";
  for (const b of Buffer.from(s, "utf8")) {
    const c = String.fromCharCode(b);
    if ((b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || (b < 0x80 && keep.includes(c))) out += c;
    else if (plus && b === 0x20) out += "+";
    else out += "%" + (b < 16 ? "0" : "") + b.toString(16).toUpperCase();
  }
  return out;
}

/** The percent-encoders in common use, by what each leaves as it is. */
const PERCENT: ((s: string) => string)[] = [
  // encodeURIComponent (JavaScript)
  (s) => percent(s, "-_.!~*'()"),
  // application/x-www-form-urlencoded (URLSearchParams, Java's URLEncoder)
  (s) => percent(s, "*-._", true),
  // RFC 3986 unreserved only: Python's quote(s, safe=""), PHP's rawurlencode, Go's QueryEscape (space as +)
  (s) => percent(s, "-._~"),
  (s) => percent(s, "-._~", true),
  // Python's urllib.parse.quote (safe="/" by default)
  (s) => percent(s, "-._~/"),
  // Go's url.PathEscape
  (s) => percent(s, "-._~$&+:=@"),
  // PHP's urlencode
  (s) => percent(s, "-_.", true),
  // encodeURI (JavaScript), which keeps the reserved characters
  (s) => percent(s, "-_.!~*'();/?:@&=+$,#"),
  // gRPC's grpc-message (PROTOCOL-HTTP2.md): only `%` and bytes outside 0x20–0x7E encoded
  (s) => percent(s, " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"),
];

const lowerHex = (s: string): string => s.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());

/** The JSON string body of `s` (JSON.stringify, no quotes). */
const json = (s: string): string => JSON.stringify(s).slice(1, -1);

/**
 * `json(s)` with the characters `which` matches (and `"` when `quote`) as `\uXXXX` escapes, in upper
 * or lower case hex. Code units, so a character above U+FFFF becomes its surrogate pair.
 */
function jsonU(s: string, which: RegExp, upper: boolean, quote = false): string {
  const u = (c: string): string => {
    const hex = c.charCodeAt(0).toString(16).padStart(4, "0");
    return `\\u${upper ? hex.toUpperCase() : hex}`;
  };
  const j = quote ? json(s).replace(/\\"/g, u('"')) : json(s);
  return j.replace(which, u);
}

/** The JSON encoders in common use, beyond JSON.stringify's own. */
const JSON_FORMS: ((s: string) => string)[] = [
  json,
  (s) => json(s).replace(/\//g, "\\/"),
  // Go's encoding/json (HTML-safe by default), and in upper case hex
  (s) => jsonU(s, /[&<>\u2028\u2029]/g, false),
  (s) => jsonU(s, /[&<>\u2028\u2029]/g, true),
  // .NET's System.Text.Json (JavaScriptEncoder.Default): HTML-sensitive characters, `+` and all but ASCII
  (s) => jsonU(s, /[+<>&'`\u007f-\uffff]/g, true, true),
  // Python's json.dumps (ensure_ascii), Jackson's ESCAPE_NON_ASCII (upper case), PHP's json_encode (`\/` too)
  (s) => jsonU(s, /[\u007f-\uffff]/g, false),
  (s) => jsonU(s, /[\u007f-\uffff]/g, true),
  (s) => jsonU(s, /[\u007f-\uffff]/g, false).replace(/\//g, "\\/"),
  // Gson (HTML-safe by default)
  (s) => jsonU(s, /[<>&='\u2028\u2029]/g, false),
];

/** `s` HTML-escaped: `&`, `<`, `>` by name, the quotes (and `+`, `/`, `=`, the backtick when given) as `entities` says. */
function html(s: string, entities: Record<string, string>): string {
  return s.replace(/[&<>"'+/=`]/g, (c) => (c === "&" ? "&amp;" : c === "<" ? "&lt;" : c === ">" ? "&gt;" : (entities[c] ?? c)));
}

/** HTML escapers (an error page quoting the request), with the common entities for quotes. */
const HTML_FORMS: ((s: string) => string)[] = [
  (s) => html(s, { '"': "&quot;", "'": "&#39;" }),
  (s) => html(s, { '"': "&quot;", "'": "&#x27;" }),
  (s) => html(s, { '"': "&#34;", "'": "&#39;" }),
  (s) => html(s, { '"': "&quot;", "'": "&#039;" }),
  // Go's html/template
  (s) => html(s, { '"': "&#34;", "'": "&#39;", "+": "&#43;" }),
  // Mustache.js (and escape-html's stricter kin), in both hex cases
  (s) => html(s, { '"': "&quot;", "'": "&#39;", "/": "&#x2F;", "`": "&#x60;", "=": "&#x3D;" }),
  (s) => html(s, { '"': "&quot;", "'": "&#39;", "/": "&#x2f;", "`": "&#x60;", "=": "&#x3d;" }),
  // Handlebars
  (s) => html(s, { '"': "&quot;", "'": "&#x27;", "`": "&#x60;", "=": "&#x3D;" }),
  // .NET's HtmlEncoder.Default (Razor)
  (s) => html(s, { '"': "&quot;", "'": "&#x27;", "+": "&#x2B;" }),
  // XML text as serializers write it (ElementTree, xml.sax.saxutils.escape, StAX, XmlWriter): & < > only
  (s) => html(s, {}),
  // ElementTree attributes (`"` only), and `&apos;` (XML 1.0 escapers, PHP's ENT_HTML5/ENT_XML1, SecurityElement.Escape)
  (s) => html(s, { '"': "&quot;" }),
  (s) => html(s, { '"': "&quot;", "'": "&apos;" }),
];

/** Text forms: each percent-encoder in both hex cases, each twice over (a URL kept in a query), and the JSON and HTML escapes. */
export const TEXT_FORMS: ((s: string) => string)[] = [
  ...PERCENT.flatMap((f) => [f, (s: string) => lowerHex(f(s))]),
  // A URL holding the value, percent-encoded as a whole (a login redirect's `next=`): the value is
  // encoded twice, by the first and by the second encoder (each of encodeURIComponent and form).
  ...[PERCENT[0]!, PERCENT[1]!].flatMap((inner) =>
    [PERCENT[0]!, PERCENT[1]!].flatMap((outer) => [(s: string) => outer(inner(s)), (s: string) => outer(lowerHex(inner(s)))]),
  ),
  ...JSON_FORMS,
  ...HTML_FORMS,
];

/** The distinct text forms of `s` other than `s` itself (see {@link TEXT_FORMS}). */
export function textFormsOf(s: string): string[] {
  const out = new Set<string>();
  for (const f of TEXT_FORMS) out.add(f(s));
  out.delete(s);
  return [...out];
}
