/**
 * The programs lessor runs as the owner, outside any sandbox, and what a `lessor run` sandbox must
 * leave out of the agent's reach for them: the key command (`[keys] command`) and the rotation hooks
 * (`[[rotate]] command`), which any later lessor command may run (bwrap, which only `lessor run` runs,
 * is checked there with {@link replaceableAt}). Each is found the way it is run: a path as written, or a bare
 * name looked up on PATH, where any directory searched before the program is found could take a
 * program of that name. An agent that can change one of those places (the file, a directory or a
 * symbolic link on the way to it, or an earlier PATH directory) has the owner run its code, unconfined,
 * the next time lessor runs that program; `lessor run` refuses to start it. What such a program runs as
 * code is held to the same: the interpreter of its `#!` line (and the PATH directories `env` searches
 * for it) and each argument naming an existing file, such as a script handed to an interpreter.
 */
import { basename, delimiter, dirname, isAbsolute, join, resolve } from "node:path";
import { VaultError } from "../../base/errors.js";
import type { Config } from "../../config/config.js";
import { refString } from "../../base/names.js";
import { hookEnv } from "../../hooks/run-hook.js";
import { commandFiles, isExecutableFile } from "../../fs/perms.js";
import { pathForOwner, writableAt, type Layout } from "../../sandbox/layout.js";

/** A program lessor runs as the owner, outside any sandbox. */
export interface OwnerProgram {
  /** What names it, for messages: `[keys] command in lessor.toml`, `the [[rotate]] command of global/db in lessor.toml`. */
  key: string;
  /** The program as named (a path, or a bare name looked up on PATH). */
  program: string;
  /** What running the agent's code there would do, for messages. */
  harm: string;
  /** How to move it out of the agent's reach, for messages. */
  fix: string;
  /**
   * Where it may be run from, in lookup order: the path for a name with a slash; for a bare name
   * each PATH directory's candidate up to the first that holds an executable file (all of them when
   * none does: the agent could place it in any).
   */
  places: string[];
}

/**
 * Where `program` may be run from (see {@link OwnerProgram.places}): a name with a slash resolved
 * from `cwd`; a bare name on `pathValue`, whose relative directories are `cwd`'s (execvp's way) or,
 * with `absoluteOnly`, skipped (lessor's own lookups).
 */
export function lookupPlaces(program: string, pathValue: string, cwd: string, absoluteOnly: boolean): string[] {
  if (program.includes("/")) return [resolve(cwd, program)];
  const out: string[] = [];
  for (const dir of pathValue.split(delimiter)) {
    if (absoluteOnly && !isAbsolute(dir)) continue;
    const place = join(resolve(cwd, dir || "."), program);
    out.push(place);
    if (isExecutableFile(place)) break;
  }
  return out;
}

/**
 * The programs the home's lessor.toml has lessor run as the owner: the key command (a path as
 * written, or a bare name on the absolute directories of PATH: src/crypto/keys/command.ts) and each
 * rotation hook (run in the home, on the hook's PATH: src/hooks/run-hook.ts). `env` is lessor's own.
 */
export function configuredPrograms(config: Config, home: string, env: NodeJS.ProcessEnv): OwnerProgram[] {
  const out: OwnerProgram[] = [];
  const key = config.keys.command?.[0];
  // A relative path with a slash is refused when the key is loaded: it never runs.
  if (key !== undefined && key !== "" && (!key.includes("/") || isAbsolute(key))) {
    const entry: OwnerProgram = {
      key: "the [keys] command in lessor.toml",
      program: key,
      harm: "your next lessor command would run the agent's code as you, outside any sandbox, and take the master key it prints",
      fix: "keep the key command in a directory only you or root can write (such as /usr/local/bin) and name it by its full path under [keys] command",
      places: lookupPlaces(key, env["PATH"] ?? "", home, true),
    };
    out.push(entry);
    // It runs in the lessor home, with lessor's PATH (src/crypto/keys/command.ts).
    out.push(...filesOf(entry, config.keys.command!.slice(1), home, env["PATH"] ?? ""));
  }
  const hookPath = hookEnv(env)["PATH"] ?? "";
  for (const hook of config.rotate) {
    const program = hook.command[0];
    if (program === undefined || program === "") continue;
    const secret = refString(hook.secret);
    const entry: OwnerProgram = {
      key: `the [[rotate]] command of ${secret} in lessor.toml`,
      program,
      harm: `your next rotation of ${secret} would run the agent's code as you, outside any sandbox, and store what it prints as the secret`,
      fix: "keep the hook in a directory only you or root can write (such as /usr/local/bin) and name it by its full path in its [[rotate]] command",
      places: lookupPlaces(program, hookPath, home, false),
    };
    out.push(entry);
    out.push(...filesOf(entry, hook.command.slice(1), home, hookPath));
  }
  return out;
}

/**
 * What `program`'s run reads as code beyond its program (src/fs/perms.ts commandFiles): the
 * interpreter of its `#!` line (for `env NAME`, every PATH directory searched for NAME up to the one
 * that holds it), what env or a launcher among its arguments runs (found the same way), and each
 * argument naming an existing file or directory (a script handed to an interpreter), each
 * as a program of its own for {@link firstReplaceable}: the agent changing one runs its code as you.
 */
function filesOf(program: OwnerProgram, args: readonly string[], cwd: string, pathValue: string): OwnerProgram[] {
  const found = program.places[program.places.length - 1];
  if (found === undefined || !isExecutableFile(found)) return [];
  const out: OwnerProgram[] = [];
  let searched: string[] = [];
  let of: "interpreter" | "launched" | undefined;
  for (const f of commandFiles(found, args, cwd, pathValue)) {
    if (f.role === "searched") {
      searched.push(f.path);
      of = f.of;
      continue;
    }
    const what =
      f.role === "argument" ? `the file ${JSON.stringify(f.name)} it is given` : f.role === "launched" ? `the program ${JSON.stringify(f.name)} named in its arguments` : `the interpreter ${JSON.stringify(f.name)} of its #! line`;
    const bare = f.role !== "argument" && searched.length > 0;
    out.push({ ...program, key: `${what} (${program.key})`, program: bare ? f.name : f.path, places: bare ? [...searched, f.path] : [f.path] });
    searched = [];
  }
  if (searched.length > 0) out.push({ ...program, key: `${of === "launched" ? "the program named in its arguments" : "the interpreter of its #! line"} (${program.key})`, program: basename(searched[0]!), places: searched });
  return out;
}

/** Where the agent could change what runs at `place`: the writable path (`at`) and what in it (`via`). */
export interface Replaceable {
  /** The place, a directory or link on the way to it, or its real path, that the agent can write. */
  via: string;
  /** The writable path of the sandbox that holds `via`. */
  at: string;
}

/**
 * How the sandboxed agent could change the program run from `place`, or null: the place itself or
 * its directory is in a writable path (it could be rewritten, or replaced, or made when missing), a
 * symbolic link on the way is (it could be repointed), or the file it leads to (or that file's
 * directory) is.
 */
export function replaceableAt(layout: Layout, place: string): Replaceable | null {
  const { link, resolved, missing } = pathForOwner(layout, place);
  const candidates = [place, dirname(place), ...(link !== null ? [link] : []), ...(missing !== null ? [missing] : []), ...(resolved !== null ? [resolved, dirname(resolved)] : [])];
  for (const via of candidates) {
    const at = writableAt(layout, via);
    if (at !== null) return { via, at };
  }
  return null;
}

/** What made `at` writable in the sandbox: "[run] write path", "project directory". */
function whyWritable(layout: Layout, at: string): string {
  const m = layout.mounts.find((x) => x.kind === "bind" && x.path === at);
  return m !== undefined && m.kind === "bind" ? m.why : "writable path";
}

/**
 * Whether `place`, the `index`th of `program`'s places, is where it runs (its file) or a directory
 * searched before it is found (where the agent could put one of that name).
 */
function isSearchedDir(program: OwnerProgram, index: number): boolean {
  if (program.program.includes("/")) return false;
  return index < program.places.length - 1 || !isExecutableFile(program.places[index]!);
}

/**
 * The first program of `programs` the sandboxed agent could change (see {@link replaceableAt}), with
 * the message that refuses the run, or null.
 */
export function firstReplaceable(layout: Layout, programs: readonly OwnerProgram[]): { program: OwnerProgram; message: string } | null {
  for (const p of programs) {
    for (const [i, place] of p.places.entries()) {
      const r = replaceableAt(layout, place);
      if (r === null) continue;
      const why = whyWritable(layout, r.at);
      const where = `inside ${r.at} (the ${why}), which the sandboxed agent can write`;
      const narrow = why === "project directory" ? 'run from another directory, or set [run] project = "read-only"' : "narrow [run] write so that it no longer holds it";
      const name = JSON.stringify(p.program);
      const what = isSearchedDir(p, i)
        ? `${name} (${p.key}) is looked up on PATH, and ${dirname(place)}, searched for it${isSearchedDir(p, p.places.length - 1) ? "" : " before the directory that holds it"}, is ${where}: the agent could put its own ${name} there`
        : `${p.key} runs ${place}${p.program === place ? "" : ` (${name})`}, and ${r.via === place ? "that file" : `${r.via}, on the way to it,`} is ${where}: the agent could replace it`;
      return { program: p, message: `${what}, and ${p.harm}; ${p.fix}, or ${narrow}. The command was not started` };
    }
  }
  return null;
}

/**
 * Refuses a run in which the sandboxed agent could change a program lessor runs as the owner
 * ({@link configuredPrograms}): an agent could plant its code there, and lessor would run it later,
 * unconfined. Throws VaultError("invalid_request").
 */
export function refuseWritablePrograms(layout: Layout, programs: readonly OwnerProgram[]): void {
  const r = firstReplaceable(layout, programs);
  if (r !== null) throw new VaultError("invalid_request", r.message);
}
