/**
 * The mark of "nothing listens on that endpoint" (ENOENT or ECONNREFUSED on connect), made by the
 * client's own connect step and never by anything the other end sent. The CLI's backend falls back to
 * an in-process vault on this mark alone, not on the words of a message (which a squatter could copy).
 */
import { VaultError } from "../base/errors.js";

/** A registered symbol, so that every bundled copy of this module knows the mark. */
const MARK: unique symbol = Symbol.for("lessor.noDaemonListening") as never;

/** VaultError("unavailable") with `message`, marked as made by a connect that found no listener. */
export function noDaemonError(message: string): VaultError {
  const e = new VaultError("unavailable", message);
  Object.defineProperty(e, MARK, { value: true });
  return e;
}

/** True for an error made by {@link noDaemonError}. */
export function isNoDaemon(e: unknown): boolean {
  return e instanceof VaultError && e.code === "unavailable" && (e as { [MARK]?: unknown })[MARK] === true;
}
