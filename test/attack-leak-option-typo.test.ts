/**
 * A mistyped option carrying a value (`--valeu=VALUE`, `-vVALUE`): commander echoes the unknown option
 * whole, and src/cli/format/redact-options.ts hides what it carried so that the value does not reach
 * the terminal (or a CI log). A value holding a single quote (common in passwords) ended the redaction
 * early, and it covered `lessor secret` only: `lessor lease … --tokne=lsr_…` and `-vVALUE` were echoed.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { cliHome, runCli } from "./cli-harness.js";

const TAIL = "CANARYq7-typo-do-not-leak";

test("attack: a mistyped --value=… holding a quote is not echoed, in part or whole", async () => {
  const home = await cliHome();
  const cases: string[][] = [
    ["secret", "set", "db", `--valeu=p4ss'${TAIL}`],
    ["secret", "set", "db", `--vaule=a b'c ${TAIL}`],
    ["secret", "set", "db", `--valeu=x'y'${TAIL}`],
    ["secret", "rotate", "db", `--vlaue=it's-${TAIL}`],
    ["secret", "set", "db", `--valeu=-----BEGIN KEY-----\nab'cd\n${TAIL}\n-----END KEY-----`],
    ["secret", "set", "db", `-v${TAIL}`],
    ["lease", "db", "--agent", "a", `--tokne=lsr_${TAIL}`],
    ["audit", "tail", `--filter=${TAIL}`],
    ["run", "--agent", "a", `--env=DB=${TAIL}`, "--", "true"],
  ];
  for (const args of cases) {
    const r = await runCli(args, { home });
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /unknown option/);
    assert.ok(!r.stdout.includes(TAIL) && !r.stderr.includes(TAIL), `lessor ${args.slice(0, 3).join(" ")} … printed part of the value: ${r.stderr}`);
  }
});
