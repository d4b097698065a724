/**
 * Commands that hold leases while they run (`lessor run`, `lessor proxy`, `lessor mcp`) must revoke
 * them before lessor exits. lessor's entry ends the process quietly when its output is closed early
 * (`lessor … | head`, EPIPE); while a command holds leases it must not, so the command can finish and
 * revoke. The count lives on a global symbol because the entry and the commands are bundled apart
 * (dist/bin/lessor.cjs, main.cjs, full.cjs, run.cjs): a module variable would not be shared.
 */

const KEY = Symbol.for("lessor.holdingLeases");
const CLEANUPS = Symbol.for("lessor.crashCleanups");

type Holder = { [KEY]?: number; [CLEANUPS]?: Set<() => Promise<unknown>> };

/**
 * Marks the process as holding leases until the returned function is called. `onCrash` revokes them
 * (and undoes what else the command made) if the process fails on an error nothing caught: lessor's
 * entry runs it before it exits ({@link crashCleanups}).
 */
export function holdLeases(onCrash?: () => Promise<unknown>): () => void {
  const g = globalThis as Holder;
  g[KEY] = (g[KEY] ?? 0) + 1;
  if (onCrash) (g[CLEANUPS] ??= new Set()).add(onCrash);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    g[KEY] = Math.max(0, (g[KEY] ?? 1) - 1);
    if (onCrash) g[CLEANUPS]?.delete(onCrash);
  };
}

/** What the commands holding leases asked to be run if the process fails (see {@link holdLeases}). */
export function crashCleanups(): (() => Promise<unknown>)[] {
  return [...((globalThis as Holder)[CLEANUPS] ?? [])];
}

/** True while some command holds leases (the entry then ignores EPIPE on its own output). */
export function holdingLeases(): boolean {
  return ((globalThis as Holder)[KEY] ?? 0) > 0;
}
