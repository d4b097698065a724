/** Yes/no confirmation on a terminal, for destructive commands. */
import { UsageError } from "../cli.js";

/**
 * Asks `question [y/N]` on stderr and reads one line from stdin. When stdin is not a terminal it
 * refuses with a UsageError telling the user to pass `--yes` (so scripts never hang or guess).
 */
export async function confirm(question: string, refusal: string): Promise<boolean> {
  if (process.stdin.isTTY !== true) throw new UsageError(refusal);
  const { createInterface } = await import("node:readline/promises");
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`${question} [y/N] `);
    return /^\s*y(es)?\s*$/i.test(answer);
  } finally {
    rl.close();
  }
}
