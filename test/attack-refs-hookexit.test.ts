/**
 * Rotation hooks: a hook that did its job (changed the credential at the issuer, printed the new
 * value, exited 0) but left a process running in the background that still holds its stdout (a
 * `cmd &` in a shell script, a helper daemon it started). The vault must store what the hook
 * printed rather than wait for the background process until the time limit and then call the run
 * a timeout, discarding a value the issuer already holds (a half-rotated vault: the issuer has the new
 * credential, the vault keeps the old, dead one, and says only "raise timeout").
 */
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readFileSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { openVault } from "../src/config/open-vault.js";
import type { Vault } from "../src/vault/vault.js";
import { makeHome } from "./daemon-harness.js";

const OLD = "OLD-hookexit-3b1f-do-not-print";
const NEW = "NEW-hookexit-9c2e-do-not-print";

const vaults: Vault[] = [];
after(async () => {
  for (const v of vaults) await v.close();
});

describe("rotation hooks: a hook that exited 0 but left a background process holding its stdout", () => {
  test("the value it printed is stored (version 2), not discarded as a time-out; what it left running is ended", { timeout: 60_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), "lessor-hookexit-"));
    chmodSync(dir, 0o755);
    const issuer = join(dir, "issuer"); // what the "issuer" holds after the hook ran
    const bgpid = join(dir, "bg.pid");
    const hook = join(dir, "rotate.sh");
    // A typical rotation script: change the credential at the issuer, start a background cleanup
    // (which inherits stdout, as `&` does in sh), print the new value, exit 0.
    writeFileSync(
      hook,
      `#!/bin/sh\nprintf '%s' '${NEW}' > '${issuer}'\nsleep 30 &\necho $! > '${bgpid}'\nprintf '%s\\n' '${NEW}'\nexit 0\n`,
      { mode: 0o755 },
    );
    chmodSync(hook, 0o755);
    const home = await makeHome({ config: `[[rotate]]\nsecret = "db"\ncommand = ${JSON.stringify([hook])}\ntimeout = "4s"\n` });
    const vault = await openVault({ home, env: { LESSOR_HOME: home, PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp" } });
    vaults.push(vault);
    await vault.admin().storeSecret({ name: "db", value: OLD });

    const started = Date.now();
    let outcome: string;
    try {
      const r = await vault.admin().rotateSecretByHook({ scope: "global", name: "db" });
      outcome = `stored version ${r.version}`;
    } catch (e) {
      outcome = `refused: ${(e as Error).message}`;
    }
    const took = Date.now() - started;
    // The hook changed the issuer either way.
    assert.equal(readFileSync(issuer, "utf8"), NEW);
    const cur = await vault.admin().revealSecret({ scope: "global", name: "db" });
    assert.equal(
      cur.value.expose().toString(),
      NEW,
      `the issuer holds the new credential but the vault kept the old one (${outcome}, after ${took} ms)`,
    );
    assert.equal(outcome, "stored version 2");
    assert.ok(took < 4000, `the rotation waited ${took} ms for a background process the hook left, up to its time limit`);
    // The background process is not left running with the hook's pipes.
    if (existsSync(bgpid)) {
      const pid = Number(readFileSync(bgpid, "utf8").trim());
      let alive = true;
      for (let i = 0; i < 40 && alive; i++) {
        try {
          process.kill(pid, 0);
          await new Promise((r) => setTimeout(r, 50));
        } catch {
          alive = false;
        }
      }
      if (alive) process.kill(pid, "SIGKILL");
      assert.equal(alive, false, "the background process the hook left is still running");
    }
  });
});
