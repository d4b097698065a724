/**
 * lessor run's signal relay (src/cli/run/signals.ts) with a real child that ignores signals: SIGINT is
 * only passed on; SIGTERM is passed on and, if the child has not stopped when the grace period ends,
 * the child gets SIGKILL (said in one line); a child that stops in time is not killed.
 */
import { spawn } from "node:child_process";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { SignalRelay } from "../src/cli/run/signals.js";
import { exited } from "../src/cli/run/child.js";
import { inTime } from "./proxy-harness.js";

function child(script: string) {
  const c = spawn("/bin/sh", ["-c", script], { stdio: ["ignore", "pipe", "ignore"] });
  const ready = new Promise<void>((r) => c.stdout!.on("data", (d: Buffer) => d.toString().includes("ready") && r()));
  return { c, ready };
}

describe("lessor run's signal relay", () => {
  test("SIGTERM then the grace period: a child that ignores it gets SIGKILL, and the line says why; SIGINT alone never escalates", async () => {
    const lines: string[] = [];
    const relay = new SignalRelay({ say: (l) => lines.push(l), graceMs: 300 });
    const { c, ready } = child("trap '' INT TERM; echo ready; while :; do sleep 0.05; done");
    try {
      await ready;
      relay.attach(c);
      const end = exited(c);
      process.emit("SIGINT" as never);
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(c.exitCode ?? c.signalCode, null, "SIGINT is passed on only");
      process.emit("SIGTERM" as never);
      const ended = await inTime(end, 5000, "the child is killed after the grace period");
      assert.equal(ended.signal, "SIGKILL");
      assert.deepEqual(lines, ["lessor: the command did not stop; 0.3 s after SIGTERM, lessor ends it (SIGKILL)"]);
    } finally {
      relay.dispose();
      c.kill("SIGKILL");
    }
  });

  test("a child that stops on SIGTERM within the grace period is not killed", async () => {
    const lines: string[] = [];
    const relay = new SignalRelay({ say: (l) => lines.push(l), graceMs: 2000 });
    const { c, ready } = child("trap 'sleep 0.2; exit 7' TERM; echo ready; while :; do sleep 0.05; done");
    try {
      await ready;
      relay.attach(c);
      const end = exited(c);
      process.emit("SIGTERM" as never);
      const ended = await inTime(end, 5000, "the child stops by itself");
      assert.equal(ended.code, 7);
      await new Promise((r) => setTimeout(r, 2200));
      assert.deepEqual(lines, [], "nothing was killed");
    } finally {
      relay.dispose();
      c.kill("SIGKILL");
    }
  });
});
