/**
 * Can a policy glob match anything at all? A secret pattern is checked against the forms real scopes
 * and secret names take (src/base/names.ts), so a pattern no secret can ever have ("prod/*": a scope
 * is "global" or "kind:id"; "Env:prod/*": kinds are lower case) is refused when the policy loads
 * instead of silently matching nothing: on a deny rule that would deny nothing.
 *
 * A form is a sequence of runs (a character class repeated min..max times). The glob and the form are
 * walked together as a small automaton: one set of (run, count) states per glob position, no
 * backtracking, at most |glob| × (states of the form) steps.
 */

/** `min`..`max` characters, each one that `chars` accepts (never "/", never empty). */
export interface Run {
  readonly chars: (c: string) => boolean;
  readonly min: number;
  readonly max: number;
}

/** A sequence of runs: the strings it describes are those runs one after another. */
export type Form = readonly Run[];

const run = (re: RegExp, min: number, max: number): Run => ({ chars: (c) => re.test(c), min, max });

/** `<kind>:<id>` as SCOPE_RE in src/base/names.ts has it (the other scope, "global", is a literal). */
export const KIND_ID_SCOPE: Form = [
  run(/^[a-z]$/, 1, 1),
  run(/^[a-z0-9_-]$/, 0, 31),
  run(/^:$/, 1, 1),
  run(/^[A-Za-z0-9]$/, 1, 1),
  run(/^[A-Za-z0-9._@-]$/, 0, 127),
];

/** A secret name as NAME_RE in src/base/names.ts has it (isSecretName also refuses ".."). */
export const SECRET_NAME: Form = [run(/^[A-Za-z0-9_]$/, 1, 1), run(/^[A-Za-z0-9_.-]$/, 0, 127)];

/** A state: run index × 1024 + characters taken in that run. */
const key = (i: number, k: number): number => i * 1024 + k;

/** Adds `(i, k)` and every state reachable from it without taking a character (ending runs that may end). */
function addClosed(form: Form, into: Set<number>, i: number, k: number): void {
  for (;;) {
    const s = key(i, k);
    if (into.has(s)) return;
    into.add(s);
    if (i >= form.length || k < form[i]!.min) return;
    i += 1;
    k = 0;
  }
}

/** States after taking one character: `c`, or any character when `c` is null (`?`). */
function step(form: Form, from: Set<number>, c: string | null): Set<number> {
  const next = new Set<number>();
  for (const s of from) {
    const i = Math.floor(s / 1024);
    const k = s % 1024;
    const r = form[i];
    if (r !== undefined && k < r.max && (c === null || r.chars(c))) addClosed(form, next, i, k + 1);
  }
  return next;
}

/**
 * True when some string of `form` matches `glob` (`*` any run of characters, `?` one character, the
 * rest literal; the form never holds "/", which is all the wildcards leave out).
 */
export function globCanMatch(glob: string, form: Form): boolean {
  let states = new Set<number>();
  addClosed(form, states, 0, 0);
  for (const c of Array.from(glob)) {
    if (c === "*") {
      // Any number of characters: everything reachable by taking characters one by one.
      let frontier = states;
      while (frontier.size > 0) {
        const more = new Set<number>();
        for (const s of step(form, frontier, null)) if (!states.has(s)) more.add(s);
        for (const s of more) states.add(s);
        frontier = more;
      }
    } else {
      states = step(form, states, c === "?" ? null : c);
    }
    if (states.size === 0) return false;
  }
  return states.has(key(form.length, 0));
}
