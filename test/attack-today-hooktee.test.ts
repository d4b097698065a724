/**
 * Rotation hooks (c0634c2): the hook's process group is SIGKILLed as soon as its own process exits.
 * A rotation script that logs its stdout through `exec > >(tee -a LOG)` (a common bash idiom) prints the
 * new value into tee, which forwards it to the hook's stdout; the script exits 0 right after. Killing
 * tee with the script's exit can lose the value the issuer already holds.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import type { Vault } from "../src/vault/vault.js";
import { makeHome } from "./daemon-harness.js";

const vaults: Vault[] = [];
after(async () => { for (const v of vaults) await v.close(); });

describe("rotation hooks: stdout through a logging tee", () => {
  const variants: [string, (log: string) => string][] = [
    ["exec > >(tee -a LOG)", (log) => `exec > >(tee -a '${log}')`],
    ["a timestamping logger: exec > >(while read l; do echo \"$(date) $l\" >> LOG; echo \"$l\"; done)", (log) => `exec > >(while IFS= read -r l; do printf '%s %s\\n' "$(date -Is)" "$l" >> '${log}'; printf '%s\\n' "$l"; done)`],
  ];
  for (const [name, redirect] of variants)
  test("a script that prints through " + name + " and exits 0 has its value stored every time", { timeout: 120_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-hooktee-"));
    chmodSync(dir, 0o755);
    const issuer = join(dir, "issuer");
    const log = join(dir, "rotate.log");
    const hook = join(dir, "rotate.sh");
    writeFileSync(
      hook,
      `#!/bin/bash\n${redirect(log)}\nv="NEW-$(date +%s%N)"\nprintf '%s' "$v" > '${issuer}'\nprintf '%s\\n' "$v"\nexit 0\n`,
      { mode: 0o755 },
    );
    chmodSync(hook, 0o755);
    const home = await makeHome({ config: `[[rotate]]\nsecret = "db"\ncommand = ${JSON.stringify([hook])}\ntimeout = "10s"\n` });
    const vault = await openVault({ home, env: { LESSOR_HOME: home, PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp" } });
    vaults.push(vault);
    await vault.admin().storeSecret({ name: "db", value: "OLD" });
    const lost: string[] = [];
    for (let i = 0; i < 20; i++) {
      let outcome = "stored";
      try {
        await vault.admin().rotateSecretByHook({ scope: "global", name: "db" });
      } catch (e) {
        outcome = `refused: ${(e as Error).message}`;
      }
      const cur = await vault.admin().revealSecret({ scope: "global", name: "db" });
      const atIssuer = readFileSync(issuer, "utf8");
      if (cur.value.expose().toString() !== atIssuer) lost.push(`run ${i}: ${outcome}`);
      cur.value.wipe();
    }
    assert.deepEqual(lost, [], `the issuer took the new value but the vault kept the old one in ${lost.length}/20 runs`);
  });
});
