/**
 * Terminal prompts: {@link confirm} for yes/no, and {@link promptHidden} for values, read with echo
 * off: the TTY goes into raw mode and node:readline's keypress decoding gives one event per typed
 * (or pasted) character, so nothing the user types is ever written back to the terminal.
 */
import { emitKeypressEvents } from "node:readline";

/** The user pressed Ctrl-C (or Ctrl-D on an empty line) at a prompt. */
export class PromptCancelled extends Error {
  constructor() {
    super("cancelled at the prompt");
  }
}

interface Key {
  name?: string;
  ctrl?: boolean;
  meta?: boolean;
}

/**
 * Asks each question in turn on `output` and reads one answer per question from the raw-mode TTY
 * `input`, without echo. Enter ends an answer; Backspace deletes a character; Ctrl-U clears the line;
 * Ctrl-C cancels; Ctrl-D ends the answer, or cancels on an empty line. Rejects with {@link PromptCancelled}.
 */
export function promptHidden(questions: string[], input: NodeJS.ReadStream, output: NodeJS.WritableStream): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const answers: string[] = [];
    let chars: string[] = [];
    const wasRaw = input.isRaw;
    emitKeypressEvents(input);
    input.setRawMode(true);

    const finish = (err: Error | null): void => {
      input.off("keypress", onKey);
      input.setRawMode(wasRaw);
      input.pause();
      if (err) reject(err);
      else resolve(answers);
    };
    const submit = (): void => {
      answers.push(chars.join(""));
      chars = [];
      output.write("\r\n");
      if (answers.length === questions.length) finish(null);
      else output.write(questions[answers.length]!);
    };
    const onKey = (str: string | undefined, key: Key | undefined): void => {
      if (answers.length === questions.length) return;
      const k = key ?? {};
      if (k.ctrl && k.name === "c") {
        output.write("\r\n");
        finish(new PromptCancelled());
      } else if (k.ctrl && k.name === "d") {
        if (chars.length === 0) {
          output.write("\r\n");
          finish(new PromptCancelled());
        } else submit();
      } else if (k.name === "return" || k.name === "enter") submit();
      else if (k.name === "backspace") chars.pop();
      else if (k.ctrl && k.name === "u") chars = [];
      else if (str !== undefined && !k.ctrl && !k.meta && (str === "\t" || !/[\u0000-\u001f\u007f]/.test(str))) chars.push(str);
      // anything else (arrows, function keys, other control keys) is ignored
    };

    input.on("keypress", onKey);
    input.resume();
    output.write(questions[0]!);
  });
}

/** Asks a yes/no question on a TTY (with echo); resolves true only for "y" or "yes". */
export async function confirm(question: string, input: NodeJS.ReadStream, output: NodeJS.WritableStream): Promise<boolean> {
  const { createInterface } = await import("node:readline");
  const rl = createInterface({ input, output, terminal: true });
  try {
    const answer = await new Promise<string | null>((resolve) => {
      rl.on("SIGINT", () => {
        output.write("\n");
        resolve(null);
      });
      rl.on("close", () => resolve(null));
      rl.question(question, resolve);
    });
    if (answer === null) throw new PromptCancelled();
    return /^\s*y(es)?\s*$/i.test(answer);
  } finally {
    rl.close();
    input.pause();
  }
}
