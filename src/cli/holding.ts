/**
 * Commands that hold leases while they run (`lessor run`, `lessor proxy`, `lessor mcp`) must revoke
 * them before lessor exits. lessor's entry ends the process quietly when its output is closed early
 * (`lessor … | head`, EPIPE); while a command holds leases it must not, so the command can finish and
 * revoke. The count lives on a global symbol because the entry and the commands are bundled apart
 * (dist/bin/lessor.cjs, main.cjs, full/*.mjs): a module variable would not be shared.
 */

const KEY = Symbol.for("lessor.holdingLeases");

type Holder = { [KEY]?: number };

/** Marks the process as holding leases until the returned function is called. */
export function holdLeases(): () => void {
  const g = globalThis as Holder;
  g[KEY] = (g[KEY] ?? 0) + 1;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    g[KEY] = Math.max(0, (g[KEY] ?? 1) - 1);
  };
}

/** True while some command holds leases (the entry then ignores EPIPE on its own output). */
export function holdingLeases(): boolean {
  return ((globalThis as Holder)[KEY] ?? 0) > 0;
}
