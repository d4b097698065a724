/** VaultError: recognised across copies of its module, and nothing else passes for one. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { isVaultError, VaultError } from "../src/base/errors.js";

test("a VaultError from another copy of the module is still a VaultError (the CLI's two bundles each hold one)", async () => {
  // A different URL is a different module instance, with its own VaultError class.
  const other = (await import(`../src/base/errors.ts?copy=${Date.now()}`)) as typeof import("../src/base/errors.js");
  assert.notEqual(other.VaultError, VaultError);
  const e = new other.VaultError("access_denied", "no");
  assert.ok(e instanceof VaultError);
  assert.ok(isVaultError(e, "access_denied"));
  assert.ok(new VaultError("internal", "x") instanceof other.VaultError);
});

test("nothing else passes for a VaultError", () => {
  const lookalike = Object.assign(new Error("no"), { name: "VaultError", code: "access_denied" });
  assert.equal(lookalike instanceof VaultError, false);
  assert.equal(isVaultError({ code: "access_denied", message: "no" }), false);
  assert.equal(isVaultError(null), false);
  assert.equal(isVaultError("access_denied"), false);
  assert.ok(new VaultError("internal", "x") instanceof Error);
});

test("an unexpected error is printed by class and code only; its message (which may quote a secret) only with LESSOR_DEBUG=1", async () => {
  const { internalErrorLine } = await import("../src/cli/internal-error.js");
  const canary = "sk_live_CANARY_internal_error";
  const e = Object.assign(new TypeError(`The argument 'options.env['X']' must be a string without null bytes. Received '${canary}\\x00'`), { code: "ERR_INVALID_ARG_VALUE" });
  const line = internalErrorLine(e, {});
  assert.match(line, /^internal error: TypeError ERR_INVALID_ARG_VALUE \(this is a bug/);
  assert.ok(!line.includes(canary), line);
  assert.match(internalErrorLine(e, { LESSOR_DEBUG: "1" }), new RegExp(canary));
  assert.match(internalErrorLine("thrown text", {}), /^internal error: string \(/);
});

test("a subclass of VaultError is checked by its own prototype: a plain VaultError is not a ProxyRefusal or a TargetNotEmpty", async () => {
  // VaultError's own instanceof check (any copy of the module) was inherited by its subclasses, so
  // `e instanceof ProxyRefusal` held for every VaultError: the proxy took any refusal for its own
  // kind (calling methods it lacks), and migrate took a failed copy for "target not empty" and left
  // out that the target holds part of the vault.
  const { ProxyRefusal } = await import("../src/proxy/refusal.js");
  const { TargetNotEmpty } = await import("../src/store/copy.js");
  const plain = new VaultError("access_denied", "no");
  assert.equal(plain instanceof ProxyRefusal, false);
  assert.equal(plain instanceof TargetNotEmpty, false);
  const refusal = new ProxyRefusal({ reason: "not_granted", host: "h.example", port: 443 }, "not granted");
  assert.equal(refusal instanceof ProxyRefusal, true);
  assert.equal(refusal instanceof VaultError, true);
  assert.equal(refusal instanceof TargetNotEmpty, false);
  const full = new TargetNotEmpty("x.db", ["secrets"]);
  assert.equal(full instanceof TargetNotEmpty, true);
  assert.equal(full instanceof VaultError, true);
});
