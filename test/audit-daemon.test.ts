/**
 * A broken audit trail under a running daemon (`lessor serve`, a real child process): the database is
 * cut by another connection while the daemon runs; the daemon refuses audited writes, logs the
 * problem once at error level, and an admin recovers over the protocol (audit_recover).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";
import Database from "better-sqlite3";
import { LessorClient } from "../src/client/client.js";
import { openVault } from "../src/config/open-vault.js";
import { serveInSuite } from "./daemon-harness.js";
import { grant, refusalOf } from "./helpers.js";

const POLICY = grant("g", ["claude"], ["tok"], ["api.example.com"]);

describe("a broken audit trail under a running daemon", () => {
  const daemon = serveInSuite(POLICY, async (home) => {
    const v = await openVault({ home, env: { LESSOR_HOME: home } });
    try {
      for (let i = 0; i < 5; i++) await v.admin().storeSecret({ name: `s${i}`, value: `v${i}` });
    } finally {
      await v.close();
    }
  });

  test("refuses audited writes, logs once at error level, and resumes after audit_recover", async () => {
    const d = daemon();
    const admin = await LessorClient.connect({ socketPath: d.socket });
    try {
      await admin.storeSecret({ name: "tok", value: "x" }); // event 6, through the daemon
      const db = new Database(join(d.home, "lessor.db"));
      db.pragma("busy_timeout = 5000");
      db.prepare("DELETE FROM audit WHERE seq > 3").run();
      db.close();
      for (let i = 0; i < 3; i++) {
        const e = await refusalOf(admin.storeSecret({ name: `n${i}`, value: "x" }));
        assert.equal(e.code, "unavailable", "audit_broken travels as the wire code unavailable");
        assert.match(e.message, /the audit trail is broken \(the trail ends at event 3 but the checkpoint says 6/);
        assert.match(e.message, /lessor audit recover/);
      }
      const v = await admin.auditVerify();
      assert.equal(v.ok, false, "verify still answers");
      const logged = d
        .stderr()
        .split("\n")
        .filter((l) => l.includes("the audit trail is broken"))
        .map((l) => JSON.parse(l) as { level: number; problem: string });
      assert.equal(logged.length, 1, d.stderr());
      assert.equal(logged[0]!.level, 50, "error level");
      assert.match(logged[0]!.problem, /events were removed from the end/);

      const r = await admin.auditRecover("test: trail cut on purpose");
      assert.equal(r.recovered, true);
      assert.equal(r.breakSeq, 4);
      await admin.storeSecret({ name: "after", value: "y" });
      const v2 = await admin.auditVerify();
      assert.equal(v2.ok, true, v2.problem);
      assert.deepEqual(v2.breaks.map((b) => [b.seq, b.found.headSeq, b.found.checkpointSeq]), [[4, 3, 6]]);
    } finally {
      await admin.close();
    }
  });
});
