/** `lessor audit recover` (embedded mode, the built CLI as a real child process) after the trail is cut. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { cliHome, runCli, seedHome } from "./cli-harness.js";

describe("lessor audit recover", () => {
  test("a cut trail refuses writes naming the recovery; recover records the break; verify shows it; writes resume", async () => {
    const home = await cliHome();
    await seedHome(home, "", [
      { name: "a", value: "1" },
      { name: "b", value: "2" },
      { name: "c", value: "3" },
    ]);
    assert.equal((await runCli(["audit", "recover", "--reason", "nothing wrong"], { home })).stdout, "the audit trail is not broken; nothing to recover\n");
    const db = new Database(join(home, "lessor.db"));
    db.prepare("DELETE FROM audit WHERE seq > 1").run();
    db.close();

    const refused = await runCli(["secret", "set", "d"], { home, input: "4" });
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /the audit trail is broken \(the trail ends at event 1 but the checkpoint says 3/);
    assert.match(refused.stderr, /lessor audit recover --reason/);
    const bad = await runCli(["audit", "verify"], { home });
    assert.equal(bad.code, 1);

    const missing = await runCli(["audit", "recover"], { home });
    assert.equal(missing.code, 2, "--reason is required");
    const r = await runCli(["audit", "recover", "--reason", "restored from backup, incident 42"], { home });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      r.stdout,
      "recorded the break as event 2: the trail ends at event 1 but the checkpoint says 3: events were removed from the end\naudited operations resume\n",
    );
    const ok = await runCli(["audit", "verify"], { home });
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    const lines = ok.stdout.trimEnd().split("\n");
    assert.equal(lines[0], "audit trail verified: 2 events, head at event 2, checkpoint matches");
    assert.match(lines[1]!, /^break at event 2 \(recovered .+ by .+, reason "restored from backup, incident 42"\): the trail ends at event 1 but the checkpoint says 3: events were removed from the end$/);
    const j = JSON.parse((await runCli(["audit", "verify", "--json"], { home })).stdout) as { ok: boolean; breaks: { seq: number }[] };
    assert.equal(j.ok, true);
    assert.deepEqual(j.breaks.map((b) => b.seq), [2]);
    const again = await runCli(["secret", "set", "d"], { home, input: "4" });
    assert.equal(again.code, 0, again.stderr);
  });
});
