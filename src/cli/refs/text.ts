/**
 * References inside a larger text (an env value, a template): finding each one with its offsets, and
 * rendering the text with each replaced by its value. Every other character is kept as it was.
 */
import { VaultError } from "../../base/errors.js";
import { CANONICAL, charAt, expected, isSchemeChar, ParseFail, scanAt, show, type ParsedReference, type SecretFieldRef } from "./grammar.js";
import { formatReference } from "./reference.js";

/** A reference found in a larger text: `text.slice(start, end)` is the whole reference (braces included). */
export interface FoundReference {
  start: number;
  end: number;
  ref: ParsedReference;
}

const CANDIDATE = /\{\{[ \t]*(?=lessor:\/\/|\$S:|\$secret:\/\/)|lessor:\/\/|\$S:|\$secret:\/\//g;

function textError(text: string, start: number, f: ParseFail): VaultError {
  const before = text.slice(0, f.at);
  const line = before.split("\n").length;
  const column = [...before.slice(before.lastIndexOf("\n") + 1)].length + 1;
  const upto = Math.min(text.length, f.at + charAt(text, f.at).length);
  return new VaultError(
    "invalid_request",
    `reference ${show(text.slice(start, upto))} at line ${line}, column ${column}: ${f.what}`,
  );
}

/**
 * Every reference in a larger text (env value, template), in order, with 0-based offsets (`end`
 * exclusive). A bare reference ends at the first character that cannot continue it (whitespace,
 * quotes, `@`, `:`, `,`, …; see docs/references.md); `{{ ref }}` wraps one explicitly. Anything that
 * starts like a reference but is malformed throws VaultError("invalid_request") with its line and column.
 */
export function findReferences(text: string): FoundReference[] {
  const out: FoundReference[] = [];
  const re = new RegExp(CANDIDATE.source, "g");
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    const start = m.index;
    try {
      if (m[0].startsWith("{{")) {
        const scan = scanAt(text, start + m[0].length, false);
        let q = scan.end;
        while (text[q] === " " || text[q] === "\t") q++;
        if (!text.startsWith("}}", q)) throw expected(text, q, `"}}" to close "{{"`);
        out.push({ start, end: q + 2, ref: scan.ref });
        re.lastIndex = q + 2;
      } else {
        if (m[0] === CANONICAL && start > 0 && isSchemeChar(text.charCodeAt(start - 1))) {
          re.lastIndex = start + 1;
          continue;
        }
        const scan = scanAt(text, start, true);
        out.push({ start, end: scan.end, ref: scan.ref });
        re.lastIndex = scan.end;
      }
    } catch (e) {
      if (e instanceof ParseFail) throw textError(text, start, e);
      throw e;
    }
  }
  return out;
}

/** The reference without its form. */
function plain(r: SecretFieldRef): SecretFieldRef {
  return r.field === undefined ? { scope: r.scope, name: r.name } : { scope: r.scope, name: r.name, field: r.field };
}

/**
 * Replaces every reference in `text` with what `resolve` returns for it (called once per occurrence,
 * in order, one at a time), keeping all other text exactly as it was.
 */
export async function renderReferences(text: string, resolve: (ref: SecretFieldRef) => Promise<string>): Promise<string> {
  let out = "";
  let at = 0;
  for (const f of findReferences(text)) {
    const value = await resolve(plain(f.ref));
    if (typeof value !== "string")
      throw new VaultError("internal", `the resolver returned a ${typeof value} for ${formatReference(f.ref)}, not a string`);
    out += text.slice(at, f.start) + value;
    at = f.end;
  }
  return out + text.slice(at);
}
