/**
 * Review of aec31d9 (linkOnTheWay follows whole chains, run dirs held count, realPlace resolves a
 * dangling link from its real directory). Each test found a problem in the code as reviewed (a `..`
 * after a link applied as text; a pin over a read-only bind), fixed the same day (2026-12-04).
 */
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { planLayout, type LayoutRequest } from "../src/sandbox/layout.js";
import { assertSafeLocation } from "../src/fs/perms.js";
import { bwrapArgs } from "../src/sandbox/bwrap-args.js";

const ROOT = realpathSync(mkdtempSync(join(tmpdir(), "lessor-review-d-")));
process.on("exit", () => rmSync(ROOT, { recursive: true, force: true }));

function baseReq(name: string): Omit<LayoutRequest, "project"> {
  const home = join(ROOT, name, "ownerhome");
  mkdirSync(home, { recursive: true });
  return { home, projectWritable: true, read: [], write: [], protect: [] };
}

describe("linkOnTheWay: `..` in a link target", () => {
  test("a link whose target goes through a link inside the writable project and then `..` is refused (the walk applies `..` only after following the inner link)", () => {
    // The kernel follows <proj>/sub first and only then takes `..` from where it points; path.resolve
    // removes `sub/..` as text, so the walk goes to <proj>/home (missing: "nothing to repoint").
    const base = join(ROOT, "dotdot");
    const project = join(base, "proj");
    mkdirSync(join(project, "a", "b"), { recursive: true });
    mkdirSync(join(project, "a", "home")); // the lessor home, really
    symlinkSync(join(project, "a", "b"), join(project, "sub")); // the agent can repoint this one
    symlinkSync("proj/sub/../home", join(base, "lessor-home")); // the owner's, outside the project
    assert.equal(realpathSync.native(join(base, "lessor-home")), join(project, "a", "home"), "the kernel goes through <proj>/sub");
    const req = { ...baseReq("dotdot"), project, protect: [{ path: join(base, "lessor-home"), what: "the lessor home" }] };
    // Control: the same link named without `..` (proj/sub/x) is refused.
    assert.throws(() => planLayout({ ...req, protect: [{ path: join(project, "sub"), what: "the lessor home" }] }), /is named through/);
    assert.throws(
      () => planLayout(req),
      /is named through/,
      "inside, the agent points <proj>/sub at <proj>/evil/x, and the owner's next lessor command reads <proj>/evil/home",
    );
  });

  test("the same with an absolute target (`/…/proj/sub/../home`)", () => {
    const base = join(ROOT, "dotdot-abs");
    const project = join(base, "proj");
    mkdirSync(join(project, "a", "b"), { recursive: true });
    mkdirSync(join(project, "a", "home"));
    symlinkSync(join(project, "a", "b"), join(project, "sub"));
    symlinkSync(`${project}/sub/../home`, join(base, "lessor-home"));
    const req = { ...baseReq("dotdot-abs"), project, protect: [{ path: join(base, "lessor-home"), what: "the lessor home" }] };
    assert.throws(() => planLayout(req), /is named through/);
  });
});

describe("the real path of a protected path (Node's realpathSync is not the kernel's for `..`)", () => {
  test("a lessor home whose link target is `x/../vault` (x a link outside the project into it) is covered at its real place inside the writable project", () => {
    // No link inside the project: nothing to refuse, but the cover must be at the real place.
    // real() uses fs.realpathSync, whose JS walk applies `..` as text: it reports <base>/vault
    // (missing: null), so <proj>/vault, where the kernel leads, is shown to the agent uncovered.
    const base = join(ROOT, "real-dotdot");
    const project = join(base, "proj");
    mkdirSync(join(project, "inner"), { recursive: true });
    mkdirSync(join(project, "vault")); // the lessor home, really (key, database)
    symlinkSync(join(project, "inner"), join(base, "x")); // the owner's, outside the project
    symlinkSync("x/../vault", join(base, "lessor-home"));
    assert.equal(realpathSync.native(join(base, "lessor-home")), join(project, "vault"));
    const req = { ...baseReq("real-dotdot"), project, protect: [{ path: join(base, "lessor-home"), what: "the lessor home" }] };
    let layout;
    try {
      layout = planLayout(req);
    } catch {
      return; // refused: fine
    }
    assert.ok(
      layout.masks.some((m) => m.path === join(project, "vault")),
      `the lessor home's real place ${join(project, "vault")} is not covered (masks: ${JSON.stringify(layout.masks.map((m) => m.path))})`,
    );
  });
});

describe("the deepest bind decides, but a pin is mounted after it", () => {
  test("a read-only [run] read path under a pinned directory is bound read-only again after the pins, so a link in it stays unchangeable", () => {
    // bwrap-args mounts layout.mounts first, then layout.pinned (writable, from the host), then
    // layout.readOnly: a pin that is an ancestor of a read-only bind covered it, so the read path was
    // writable inside after all (found 2026-12-04, fixed: such binds are in layout.readOnly).
    const base = join(ROOT, "pin-over-ro");
    const project = join(base, "proj");
    mkdirSync(join(project, ".state", "lessor"), { recursive: true }); // masked: pins <proj>/.state
    mkdirSync(join(project, ".state", "cache"));
    mkdirSync(join(base, "sockdir"));
    symlinkSync(join(base, "sockdir"), join(project, ".state", "cache", "run")); // judged unchangeable
    const req = {
      ...baseReq("pin-over-ro"),
      project,
      read: [join(project, ".state", "cache")],
      protect: [
        { path: join(project, ".state", "lessor"), what: "the lessor home" },
        { path: join(project, ".state", "cache", "run", "daemon.sock"), what: "the daemon's socket" },
      ],
    };
    let layout;
    try {
      layout = planLayout(req);
    } catch {
      return; // refused: fine
    }
    const ro = layout.mounts.filter((m) => m.kind === "bind" && !m.writable).map((m) => m.path);
    const covered = ro.filter((r) => layout.pinned.some((p) => r !== p && r.startsWith(p + "/")));
    assert.ok(covered.length > 0, "the case under test: a pin above a read-only bind");
    const exposed = covered.filter((r) => !layout.readOnly.includes(r));
    assert.deepEqual(exposed, [], `the read-only ${exposed.join(", ")} is under a writable pin and not bound again: the link ${join(project, ".state", "cache", "run")} can be repointed`);
    const args = bwrapArgs(layout, {}, { disableUserns: false, shareNet: false });
    const pinAt = args.findIndex((a, i) => a === "--bind" && layout.pinned.includes(args[i + 1]!));
    const roAt = args.findIndex((a, i) => a === "--ro-bind" && args[i + 1] === covered[0] && i > pinAt);
    assert.ok(pinAt >= 0 && roAt > pinAt, "bound read-only again after the pin");
  });
});

describe("assertSafeLocation: realPlace and `..` after a link", () => {
  test("a dangling link whose target is `sub/../x`, sub a link into a world-writable directory, is checked where the kernel puts it", () => {
    const base = mkdtempSync(join(ROOT, "place-"));
    const open = join(base, "shared");
    mkdirSync(join(open, "deep"), { recursive: true });
    chmodSync(open, 0o777); // others can write, not sticky
    const mine = join(base, "mine");
    mkdirSync(mine, { mode: 0o700 });
    symlinkSync(join(open, "deep"), join(mine, "sub"));
    symlinkSync("sub/../later", join(mine, "lessor")); // really <shared>/later; lexically <mine>/later
    const target = join(mine, "lessor");
    assert.throws(() => assertSafeLocation(target, "the lessor home"), /can be written by other users/, "dangling: checked at <mine>/later, not <shared>/later");
    mkdirSync(join(open, "later")); // another user, after the check
    assert.equal(realpathSync.native(target), join(open, "later"), "the kernel puts it in the shared directory");
    // Node's JS realpathSync (used by realPlace) removes `sub/..` as text too: even existing, it is missed.
    assert.throws(() => assertSafeLocation(target, "the lessor home"), /can be written by other users/, "existing: still checked at <mine>/later");
  });
});

describe("vmOfSocket: a `..` after a link in a socket path", () => {
  test("a service socket named `<dir-link>/../fc/vm1.vsock_5000`, which the kernel puts in vm1's directory, is vm1's", async () => {
    const { vmOfSocket } = await import("../src/config/guest-map.js");
    const base = mkdtempSync(join(ROOT, "vmsock-"));
    const fc = join(base, "real", "fc");
    mkdirSync(fc, { recursive: true });
    mkdirSync(join(base, "real", "sub"));
    mkdirSync(join(base, "fc")); // a decoy where the text alone would lead
    symlinkSync(join(base, "real", "sub"), join(base, "link"));
    const vm = { name: "vm1", udsPath: join(fc, "vm1.vsock"), port: 7391, socketMode: 0o600, role: "agent" as const, agent: "claude" };
    const got = vmOfSocket([vm], base, `${base}/link/../fc/vm1.vsock_5000`);
    assert.equal(got?.vm.name, "vm1", "the socket the kernel makes in vm1's directory is recognised as vm1's");
    assert.equal(got?.port, 5000);
  });
});
