/**
 * The bodies of `lessor secret set|get|list|rm|rotate|history|rollback`. Each returns an exit code;
 * errors are thrown (VaultError or UsageError) and mapped by Cli.run. No value is ever printed here
 * except by `get --reveal`, and then only to stdout.
 */
import type { Cli } from "../cli.js";
import { UsageError } from "../cli.js";
import { EXIT } from "../exit-codes.js";
import { VaultError } from "../../base/errors.js";
import { refString } from "../../base/names.js";
import { SECRET_KINDS, type SecretKind } from "../../base/types.js";
import { confirm, PromptCancelled } from "../format/prompt.js";
import { positiveInt } from "../format/options.js";
import { unsafeForTerminal } from "../format/terminal-safe.js";
import { listAllSecrets } from "./list-all.js";
import { secretRef } from "./ref.js";
import { fields, isoTime, table } from "./render.js";
import { checkValueOptions, readSecretValue, willPrompt, type ValueOptions } from "./value-source.js";

/** Exit code when the user cancels a prompt (as for SIGINT). */
export const EXIT_CANCELLED = 130;

/** Options of `secret set`. */
export interface SetOptions extends ValueOptions {
  scope?: string;
  kind?: string;
  description?: string;
  tag?: string[];
  create?: boolean;
  json?: boolean;
}

function kindOf(k: string | undefined): SecretKind | undefined {
  if (k === undefined) return undefined;
  if (!(SECRET_KINDS as readonly string[]).includes(k)) throw new UsageError(`--kind must be one of ${SECRET_KINDS.join(", ")}`);
  return k as SecretKind;
}

/** Splits repeated and comma-separated `--tag` values. */
function tagsOf(t: string[] | undefined): string[] | undefined {
  return t?.flatMap((x) => x.split(",")).map((x) => x.trim()).filter((x) => x !== "");
}

async function cancellable(cli: Cli, what: string, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (!(e instanceof PromptCancelled)) throw e;
    cli.err(`lessor: cancelled; ${what}`);
    return EXIT_CANCELLED;
  }
}

/** `secret set NAME`. */
export function setSecret(cli: Cli, nameArg: string, o: SetOptions, extraArgs: readonly string[]): Promise<number> {
  return cancellable(cli, "nothing was stored", async () => {
    checkValueOptions(o, extraArgs);
    const kind = kindOf(o.kind);
    const tags = tagsOf(o.tag);
    const r = secretRef(nameArg, o.scope);
    const { api } = await cli.backend();
    if (o.create && willPrompt(o)) {
      // Say so before the user types a value that could not be stored.
      const exists = await api.getSecretMetadata(r).then(
        () => true,
        (e: unknown) => {
          if (e instanceof VaultError && e.code === "secret_not_found") return false;
          throw e;
        },
      );
      if (exists) throw new VaultError("secret_exists", `secret ${refString(r)} already exists; use lessor secret rotate to add a version`);
    }
    const value = await readSecretValue(cli, o, refString(r));
    try {
      const meta = await api.storeSecret({
        scope: r.scope,
        name: r.name,
        value,
        ...(kind !== undefined ? { kind } : {}),
        ...(o.description !== undefined ? { description: o.description } : {}),
        ...(tags !== undefined ? { tags } : {}),
        ...(o.create ? { mode: "create" as const } : {}),
      });
      if (o.json) cli.json(meta);
      else cli.out(`stored ${refString(r)} version ${meta.currentVersion}`);
      return EXIT.ok;
    } finally {
      value.fill(0);
    }
  });
}

/** Options of `secret rotate`. */
export interface RotateOptions extends ValueOptions {
  scope?: string;
  json?: boolean;
  /** Run the secret's rotation hook (refused with a value option). */
  hook?: boolean;
}

/**
 * `secret rotate NAME`: to a given value (stdin, the prompt, --from-file, --random, --value), or by the
 * secret's rotation hook (src/cli/secret/rotate-hook.ts): with --hook, or when it has one and no value
 * is given (stdin is a terminal or empty).
 */
export function rotateSecret(cli: Cli, nameArg: string, o: RotateOptions, extraArgs: readonly string[]): Promise<number> {
  return cancellable(cli, "nothing was stored", async () => {
    checkValueOptions(o, extraArgs);
    const r = secretRef(nameArg, o.scope);
    const hook = await import("./rotate-hook.js");
    const choice = await hook.chooseRotation(cli, r, o);
    if (choice.kind === "hook") return hook.rotateByHook(cli, r, o);
    const { api } = await cli.backend();
    if (choice.kind === "ask" && willPrompt(o)) await api.getSecretMetadata(r); // not found before the prompt, not after
    const value = choice.kind === "piped" ? choice.value : await readSecretValue(cli, o, refString(r));
    try {
      const meta = await api.rotateSecret(r, value);
      if (o.json) cli.json(meta);
      else cli.out(`rotated ${refString(r)} to version ${meta.currentVersion}`);
      return EXIT.ok;
    } finally {
      value.fill(0);
    }
  });
}

/** `secret get NAME`: metadata with the value redacted, or with `--reveal` the value itself. */
export async function getSecret(cli: Cli, nameArg: string, o: { scope?: string; version?: string; ver?: string; reveal?: boolean; json?: boolean }): Promise<number> {
  const r = secretRef(nameArg, o.scope);
  if (o.version !== undefined && o.ver !== undefined && o.version !== o.ver)
    throw new UsageError(`--version ${o.version} and --ver ${o.ver} ask for different versions; give one`);
  const wanted = o.version !== undefined ? positiveInt("--version", o.version) : o.ver !== undefined ? positiveInt("--ver", o.ver) : undefined;
  const { api } = await cli.backend();
  const meta = await api.getSecretMetadata(r);
  const { versions: _versions, ...record } = meta;
  if (!o.reveal) {
    const version = wanted ?? meta.currentVersion;
    const vm = meta.versions.find((v) => v.version === version);
    if (!vm) throw new VaultError("secret_not_found", `secret ${refString(r)} has no version ${version}; see lessor secret history ${refString(r)}`);
    if (o.json) {
      cli.json({ secret: refString(r), ...record, version, size: vm.size, value: null, encoding: null });
      return EXIT.ok;
    }
    for (const line of fields([
      ["secret", refString(r)],
      ["kind", meta.kind],
      ...(meta.description ? [["description", meta.description] as [string, string]] : []),
      ["tags", meta.tags.length ? meta.tags.join(", ") : "-"],
      ["version", `${version} (${version === meta.currentVersion ? "current" : `current is ${meta.currentVersion}`}, stored ${isoTime(vm.createdAt)})`],
      ["created", isoTime(meta.createdAt)],
      ["updated", isoTime(meta.updatedAt)],
      ["value", `[redacted, ${vm.size} byte${vm.size === 1 ? "" : "s"}]`],
    ]))
      cli.out(line);
    if (cli.stdout.isTTY) cli.err(cli.dim(`(lessor secret get ${refString(r)} --reveal prints the value; reveals are audited)`));
    return EXIT.ok;
  }
  const { value, version } = await api.revealSecret(r, wanted);
  try {
    if (o.json) {
      const vm = meta.versions.find((v) => v.version === version);
      cli.json({ secret: refString(r), ...record, version, size: vm?.size ?? value.length, value: value.expose().toString("base64"), encoding: "base64" });
      return EXIT.ok;
    }
    // On a terminal the bytes are shown, not stored: a value from elsewhere (a pasted token, an
    // import, a rotation hook's output) must not drive it (OSC 52, ESC [2J, a C1 CSI, a stray 0x9b).
    if (cli.stdout.isTTY) {
      const unsafe = unsafeForTerminal(value.expose());
      if (unsafe !== null)
        throw new VaultError(
          "invalid_request",
          `the value of ${refString(r)} holds ${unsafe}, which would act on this terminal rather than be shown, so it was not printed (the reveal is audited); redirect it to a file or a pipe (lessor secret get ${refString(r)} --reveal > FILE), or use --json for its base64`,
        );
    }
    await new Promise<void>((resolve, reject) => cli.stdout.write(value.expose(), (e) => (e ? reject(e) : resolve())));
    if (cli.stdout.isTTY) cli.stdout.write("\n");
    return EXIT.ok;
  } finally {
    value.wipe();
  }
}

/** `secret list`. */
export async function listSecrets(cli: Cli, o: { scope?: string; prefix?: string; tag?: string; json?: boolean }): Promise<number> {
  const { api } = await cli.backend();
  const list = await listAllSecrets(api, {
    ...(o.scope !== undefined ? { scope: o.scope } : {}),
    ...(o.prefix !== undefined ? { namePrefix: o.prefix } : {}),
    ...(o.tag !== undefined ? { tag: o.tag } : {}),
  });
  if (o.json) {
    cli.json(list);
    return EXIT.ok;
  }
  if (list.length === 0) {
    cli.err(o.scope || o.prefix || o.tag ? "no secrets match" : "no secrets yet; add one with lessor secret set NAME");
    return EXIT.ok;
  }
  const rows = list.map((s) => [`${s.scope}/${s.name}`, s.kind, String(s.currentVersion), isoTime(s.updatedAt), s.tags.join(",")]);
  for (const line of table(["SECRET", "KIND", "VERSION", "UPDATED", "TAGS"], rows)) cli.out(line);
  return EXIT.ok;
}

/** `secret rm NAME`: asks on a terminal unless `--yes`; refuses without `--yes` when stdin is not one. */
export function removeSecret(cli: Cli, nameArg: string, o: { scope?: string; yes?: boolean; json?: boolean }): Promise<number> {
  return cancellable(cli, "nothing was deleted", async () => {
    const r = secretRef(nameArg, o.scope);
    if (!o.yes && !process.stdin.isTTY)
      throw new UsageError(`refusing to delete ${refString(r)} without confirmation because stdin is not a terminal; pass --yes`);
    const { api } = await cli.backend();
    if (!o.yes) {
      const meta = await api.getSecretMetadata(r);
      const live = (await api.listLeases({ secret: r, live: true })).length;
      const leases = live ? ` and revoke its ${live} live lease${live === 1 ? "" : "s"}` : "";
      const versions = `${meta.versions.length} kept version${meta.versions.length === 1 ? "" : "s"}`;
      if (!(await confirm(`Delete ${refString(r)} (${versions})${leases}? [y/N] `, process.stdin, process.stderr))) {
        cli.err("lessor: not deleted");
        return EXIT.error;
      }
    }
    const res = await api.deleteSecret(r);
    if (o.json) cli.json({ secret: refString(r), deleted: true, revokedLeases: res.revokedLeases });
    else cli.out(`deleted ${refString(r)}${res.revokedLeases ? ` (revoked ${res.revokedLeases} lease${res.revokedLeases === 1 ? "" : "s"})` : ""}`);
    return EXIT.ok;
  });
}

/** `secret history NAME`: kept versions, oldest first. */
export async function secretHistory(cli: Cli, nameArg: string, o: { scope?: string; json?: boolean }): Promise<number> {
  const r = secretRef(nameArg, o.scope);
  const { api } = await cli.backend();
  const versions = await api.secretHistory(r);
  if (o.json) {
    cli.json(versions);
    return EXIT.ok;
  }
  const last = versions.at(-1)?.version;
  const rows = versions.map((v) => [`${v.version}${v.version === last ? " *" : ""}`, String(v.size), isoTime(v.createdAt), v.createdBy, v.keyId]);
  for (const line of table(["VERSION", "BYTES", "CREATED", "BY", "KEY"], rows)) cli.out(line);
  return EXIT.ok;
}

/** `secret rollback NAME VERSION`: stores an older version's value as a new version. */
export async function rollbackSecret(cli: Cli, nameArg: string, versionArg: string, o: { scope?: string; json?: boolean }): Promise<number> {
  const r = secretRef(nameArg, o.scope);
  const from = positiveInt("VERSION", versionArg);
  const { api } = await cli.backend();
  const meta = await api.rollbackSecret(r, from);
  if (o.json) cli.json(meta);
  else cli.out(`rolled back ${refString(r)}: version ${meta.currentVersion} has the value of version ${from}`);
  return EXIT.ok;
}
