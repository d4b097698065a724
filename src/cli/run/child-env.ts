/**
 * The child's environment for `lessor run`: the parent's variables (minus lessor's own key material),
 * then each `--env-file` in order (later wins), then every reference in every value resolved through
 * leases. A variable may be a reference (`TOKEN=$S:github-token`) or contain several
 * (`DATABASE_URL=postgres://app:$S:db-password@db/app`).
 */
import { closeSync, fstatSync, readlinkSync } from "node:fs";
import { checkOwnInput, openNoWait } from "../../fs/trusted-file.js";
import { firstNonUtf8Line, readCappedSync, type Capped } from "../../fs/capped-read.js";
import type { SecretBytes } from "../../crypto/secret-bytes.js";
import { VaultError } from "../../base/errors.js";
import { LESSOR_SECRET_VARIABLES } from "../../base/secret-env.js";
import { refString } from "../../base/names.js";
import type { SecretFieldRef } from "../refs/grammar.js";
import { extractField } from "../refs/json-field.js";
import { findReferences, type FoundReference } from "../refs/text.js";
import { parseEnvFile } from "./env-file.js";
import type { LeaseBook } from "./leases.js";

/**
 * Variables never passed to the child: lessor's own secrets by their `LESSOR_` names
 * (src/base/secret-env.ts: the master keys and the passphrase would hand it the vault's key,
 * `LESSOR_DATABASE_URL` and `LESSOR_MIGRATE_TO` the vault's store, where leases and revocations are
 * not sealed) and the token ones, which would hand it the caller's own daemon identity (an
 * orchestrator's or admin's token, say). `PGPASSWORD` is libpq's own variable, which the command's
 * tools may need: the sandbox withholds it (and says so) as it does your other credentials.
 */
export const WITHHELD_VARIABLES: readonly string[] = Object.freeze([...LESSOR_SECRET_VARIABLES.filter((k) => k.startsWith("LESSOR_")), "LESSOR_TOKEN_FILE"]);

/** A variable of the child's environment and where it came from (for messages). */
export interface EnvVar {
  value: string;
  from: string;
}

/** The most an env file or a template may hold (more is refused before it is all read). */
export const MAX_TEXT_FILE_BYTES = 64 * 1024 * 1024;

/** How {@link readTextFile} reads a file. */
export interface ReadTextOptions {
  /** Called with the file's real path as opened (/proc/self/fd), or null when that cannot be told. */
  opened?: (real: string | null) => void;
  /**
   * The file decides what the command gets (an --env-file: which secrets, and variables such as
   * LD_PRELOAD): refused unless it belongs to you or root and no other user may change it, the rule
   * policy.toml follows (src/fs/trusted-file.ts).
   */
  trusted?: boolean;
}

/**
 * Reads `path` ("-": stdin) as UTF-8 text, at most {@link MAX_TEXT_FILE_BYTES}: a file that cannot
 * be read, is larger, or is not UTF-8 is an `invalid_request` naming `what` (and the line), never
 * its content. A byte sequence that is not UTF-8 is never silently replaced.
 */
export function readTextFile(path: string, what: string, option: string, o: ReadTextOptions = {}): string {
  let got: Capped;
  try {
    if (path === "-") got = readCappedSync(0, MAX_TEXT_FILE_BYTES);
    else {
      // Without waiting: a fifo planted at the path is refused (trusted) or read to its end, not waited on.
      const fd = openNoWait(path);
      try {
        if (o.trusted) checkOwnInput(fstatSync(fd), `${what} ${path}`, path, "change which variables and secrets your command gets", undefined, fd);
        if (o.opened) {
          // The file as opened, for a check after the read (src/cli/run/run.ts): which file this really was.
          let real: string | null = null;
          try {
            real = readlinkSync(`/proc/self/fd/${fd}`);
          } catch {
            // no /proc: not known
          }
          o.opened(real);
        }
        got = readCappedSync(fd, MAX_TEXT_FILE_BYTES);
      } finally {
        closeSync(fd);
      }
    }
  } catch (e) {
    if (e instanceof VaultError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new VaultError("invalid_request", `cannot read ${what} ${path} (${code === "ENOENT" ? "it does not exist" : (code ?? "error")}); check the ${option} path`);
  }
  if ("tooLarge" in got) throw new VaultError("invalid_request", `${what} ${path} is larger than ${MAX_TEXT_FILE_BYTES} bytes, the most lessor reads; check the ${option} path`);
  try {
    const bad = firstNonUtf8Line(got.bytes);
    if (bad !== null) throw new VaultError("invalid_request", `${what} ${path} is not UTF-8 text (line ${bad}); convert it (iconv -t UTF-8) and try again`);
    return got.bytes.toString("utf8");
  } finally {
    got.bytes.fill(0);
  }
}

/** The parent's environment without {@link WITHHELD_VARIABLES}, then each env file over it. */
export function baseEnv(parent: NodeJS.ProcessEnv, envFiles: string[], opened?: Map<string, string | null>): Map<string, EnvVar> {
  const vars = new Map<string, EnvVar>();
  for (const [k, v] of Object.entries(parent)) {
    if (v === undefined || WITHHELD_VARIABLES.includes(k)) continue;
    vars.set(k, { value: v, from: "the environment" });
  }
  for (const file of envFiles) {
    const text = readTextFile(file, "the env file", "--env-file", { trusted: true, ...(opened ? { opened: (real: string | null) => void opened.set(file, real) } : {}) });
    for (const e of parseEnvFile(text, file)) {
      vars.delete(e.key); // keep file order for the later-wins variables
      vars.set(e.key, { value: e.value, from: `${file}:${e.line}` });
    }
  }
  return vars;
}

/** How a resolved piece is labelled in masked output: `name`, `scope/name`, plus `#field`. */
export function maskLabel(ref: SecretFieldRef): string {
  const base = ref.scope === "global" ? ref.name : refString(ref);
  return ref.field === undefined ? base : `${base}#${ref.field}`;
}

/** The bytes a reference stands for: the secret's value, or one JSON field of it (a new holder). */
export function referencedBytes(whole: SecretBytes, ref: SecretFieldRef): { bytes: SecretBytes; owned: boolean } {
  if (ref.field === undefined) return { bytes: whole, owned: false };
  return { bytes: extractField(whole, ref.field), owned: true };
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** The value as environment-variable text; refuses NUL bytes and invalid UTF-8 (without showing the value). */
export function envText(bytes: SecretBytes, what: string): string {
  const buf = bytes.expose();
  if (buf.includes(0)) throw new VaultError("invalid_request", `${what} contains a NUL byte, which an environment variable cannot hold; use lessor inject to write it to a file`);
  try {
    return utf8.decode(buf);
  } catch {
    throw new VaultError("invalid_request", `${what} is not UTF-8 text, so it cannot go in an environment variable; use lessor inject to write it to a file`);
  }
}

/** What {@link resolveEnv} returns: the child's environment and the pieces to mask in its output. */
export interface ResolvedEnv {
  env: Record<string, string>;
  masks: { label: string; value: Buffer }[];
  /** How many variables held references. */
  resolved: number;
}

/** A variable that holds references, with them. */
export interface VarRefs {
  key: string;
  v: EnvVar;
  refs: FoundReference[];
}

/**
 * The variables that hold references, in order. A malformed reference is an error naming the
 * variable and where it came from.
 */
export function scanEnv(vars: Map<string, EnvVar>): VarRefs[] {
  const found: VarRefs[] = [];
  for (const [key, v] of vars) {
    let refs: FoundReference[];
    try {
      refs = findReferences(v.value);
    } catch (e) {
      if (e instanceof VaultError) throw new VaultError(e.code, `$${key} (from ${v.from}) holds a malformed ${e.message}; fix it or remove it from the environment`);
      throw e;
    }
    if (refs.length > 0) found.push({ key, v, refs });
  }
  return found;
}

/**
 * What a reference becomes in the child's environment, given its value's text: the value itself (the
 * default), or, when lessor run's proxy adds credentials, a placeholder (src/cli/run/placeholders.ts).
 */
export type RenderPiece = (text: string, ref: SecretFieldRef, label: string) => string;

/**
 * Resolves the references `found` in `vars`: leases every distinct secret first (in variable order,
 * so the first denial is reported before the child is ever started), then renders each variable.
 * `abort` is called between leases (it throws when the run was interrupted).
 */
export async function resolveEnv(vars: Map<string, EnvVar>, found: VarRefs[], book: LeaseBook, abort: () => void, render: RenderPiece = (text) => text): Promise<ResolvedEnv> {
  for (const { key, v, refs } of found)
    for (const r of refs) {
      await book.value(r.ref, `$${key} (from ${v.from})`);
      abort();
    }
  const env: Record<string, string> = {};
  for (const [key, v] of vars) env[key] = v.value;
  const masks = new Map<string, { label: string; value: Buffer }>();
  for (const { key, v, refs } of found) {
    let out = "";
    let at = 0;
    for (const r of refs) {
      const whole = await book.value(r.ref, `$${key}`);
      const what = `${r.ref.field === undefined ? "secret" : `field "${r.ref.field}" of secret`} ${refString(r.ref)} (used by $${key} from ${v.from})`;
      let picked;
      try {
        picked = referencedBytes(whole, r.ref);
      } catch (e) {
        if (e instanceof VaultError) throw new VaultError(e.code, `$${key} (from ${v.from}) refers to secret ${refString(r.ref)}: ${e.message}`);
        throw e;
      }
      const { bytes, owned } = picked;
      try {
        const text = envText(bytes, `the value of ${what}`);
        const label = maskLabel(r.ref);
        out += v.value.slice(at, r.start) + render(text, r.ref, label);
        at = r.end;
        if (!masks.has(label)) masks.set(label, { label, value: Buffer.from(bytes.expose()) });
      } finally {
        if (owned) bytes.wipe();
      }
    }
    env[key] = out + v.value.slice(at);
  }
  return { env, masks: [...masks.values()], resolved: found.length };
}

