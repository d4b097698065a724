/**
 * Where the CLI gets the passphrase of a passphrase-sealed vault: `LESSOR_PASSPHRASE` when set (for
 * scripts), else a prompt on the terminal with echo off (src/cli/format/prompt.ts). With neither a
 * variable nor a terminal on stdin it refuses with what to do, rather than hang or read a pipe.
 * The crypto layer only calls the provider (src/crypto/keys/passphrase.ts); it never reads a terminal.
 */
import { VaultError } from "../base/errors.js";
import { PromptCancelled, promptHidden } from "./format/prompt.js";

/** The terminal streams a prompt uses (stdin and stderr by default, so stdout stays clean for `$(…)`). */
export interface PromptStreams {
  input: NodeJS.ReadStream;
  output: NodeJS.WritableStream;
}

const STD: () => PromptStreams = () => ({ input: process.stdin, output: process.stderr });

function fromEnv(env: NodeJS.ProcessEnv): string | undefined {
  const v = env["LESSOR_PASSPHRASE"];
  return v === undefined || v === "" ? undefined : v;
}

async function ask(questions: string[], io: PromptStreams, cancelled: string): Promise<string[]> {
  try {
    return await promptHidden(questions, io.input, io.output);
  } catch (e) {
    if (e instanceof PromptCancelled) throw new VaultError("key_unavailable", cancelled);
    throw e;
  }
}

/**
 * A passphrase provider for opening a vault: LESSOR_PASSPHRASE, else one no-echo prompt on the
 * terminal. `about.path` names the key store in the prompt and in errors.
 */
export function terminalPassphrase(env: NodeJS.ProcessEnv, io: PromptStreams = STD()): (about?: { path: string }) => Promise<string> {
  return async (about) => {
    const set = fromEnv(env);
    if (set !== undefined) return set;
    const store = about?.path ?? "the passphrase key store";
    if (io.input.isTTY !== true)
      throw new VaultError(
        "key_unavailable",
        `the master key is sealed with a passphrase (${store}) and stdin is not a terminal to ask for it on; run the command in a terminal, or set LESSOR_PASSPHRASE`,
      );
    const [answer] = await ask([`Passphrase for ${store}: `], io, "cancelled at the passphrase prompt; the vault was not opened");
    if (!answer) throw new VaultError("key_unavailable", `no passphrase was typed; the vault (${store}) was not opened`);
    return answer;
  };
}

/**
 * The passphrase for a new key store (`lessor init --passphrase`): LESSOR_PASSPHRASE, else typed
 * twice on the terminal without echo. Refuses an empty, mismatched or short one (under
 * {@link MIN_PASSPHRASE_LENGTH} characters), and a variable holding a
 * control character (a trailing newline, say) that no prompt could type; creates nothing itself.
 */
export async function newPassphrase(env: NodeJS.ProcessEnv, io: PromptStreams = STD()): Promise<string> {
  const set = fromEnv(env);
  if (set !== undefined) {
    // A newline or other control character (from `echo` or a file read whole) would be part of the
    // passphrase, and no terminal prompt could ever type it: the vault would open from scripts only.
    // eslint-disable-next-line no-control-regex
    const bad = /[\x00-\x1f\x7f]/.exec(set);
    if (bad !== null)
      throw new VaultError(
        "invalid_request",
        `LESSOR_PASSPHRASE holds a control character (${bad[0] === "\n" ? "a newline" : `0x${bad[0].charCodeAt(0).toString(16).padStart(2, "0")}`} at position ${bad.index + 1}), which a passphrase typed at the prompt can never hold; nothing was created. Set it without one (printf '%s', or $(cat file) which drops the last newline) and run lessor init again`,
      );
    return longEnough(set, "LESSOR_PASSPHRASE");
  }
  if (io.input.isTTY !== true)
    throw new VaultError(
      "invalid_request",
      "a passphrase vault needs a passphrase and stdin is not a terminal to ask for it on; run lessor init --passphrase in a terminal, or set LESSOR_PASSPHRASE",
    );
  const [first, again] = await ask(["New passphrase for the master key: ", "Again, to confirm: "], io, "cancelled at the passphrase prompt; nothing was created");
  if (!first) throw new VaultError("invalid_request", "the passphrase is empty; nothing was created. Choose a long passphrase");
  if (first !== again) throw new VaultError("invalid_request", "the two passphrases did not match; nothing was created. Run lessor init --passphrase again");
  return longEnough(first, "the passphrase typed");
}

/**
 * The fewest characters a new passphrase may have. The key store can be copied and guessed at offline
 * (Argon2id slows each guess, it does not stop a short passphrase falling to a list), and it guards
 * every secret in the vault.
 */
export const MIN_PASSPHRASE_LENGTH = 12;

function longEnough(passphrase: string, what: string): string {
  const n = [...passphrase].length;
  if (n < MIN_PASSPHRASE_LENGTH)
    throw new VaultError(
      "invalid_request",
      `${what} has ${n} character${n === 1 ? "" : "s"}; a passphrase that seals the master key needs at least ${MIN_PASSPHRASE_LENGTH} (several words, say), since a copy of the key store can be guessed at offline; nothing was created`,
    );
  return passphrase;
}
