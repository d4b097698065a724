/**
 * A wipeable holder for secret bytes. It never shows its contents by accident: `toString`,
 * `toJSON` and `util.inspect` all print a redaction. Call {@link SecretBytes.wipe} (or let `using`
 * do it) when done; after that every read throws VaultError("invalid_request").
 */
import { VaultError } from "../base/errors.js";

const inspectSymbol = Symbol.for("nodejs.util.inspect.custom");
const REDACTED = "[redacted]";

/** Marks SecretBytes, so that `instanceof` knows them whichever copy of this module made them. */
const BRAND: unique symbol = Symbol.for("lessor.SecretBytes") as never;

export class SecretBytes {
  /**
   * True for a SecretBytes made by any copy of this module, as for VaultError (src/base/errors.ts):
   * the CLI's bundles (scripts/build-cli.mjs) each hold a copy, and a value one of them made (a vault
   * opened by the command tree, read by the fast path's code) must still be encoded, and wiped, as a
   * secret by the other: a plain prototype check would let it through as an ordinary object.
   */
  static [Symbol.hasInstance](x: unknown): boolean {
    return typeof x === "object" && x !== null && (x as { [BRAND]?: unknown })[BRAND] === true;
  }

  #buf: Buffer | null;

  /** Length in bytes (still known after wiping). */
  readonly length: number;

  private constructor(buf: Buffer) {
    this.#buf = buf;
    this.length = buf.length;
  }

  /** Copies `value` (bytes or UTF-8 text) into a new, unpooled buffer owned by the result. */
  static from(value: Uint8Array | string): SecretBytes {
    if (typeof value === "string") {
      const len = Buffer.byteLength(value, "utf8");
      const buf = Buffer.alloc(len);
      buf.write(value, 0, "utf8");
      return new SecretBytes(buf);
    }
    const buf = Buffer.alloc(value.byteLength);
    buf.set(value);
    return new SecretBytes(buf);
  }

  /** Takes ownership of `buf` without copying; the caller must not keep using it. */
  static adopt(buf: Buffer): SecretBytes {
    return new SecretBytes(buf);
  }

  /** True once wiped. */
  get wiped(): boolean {
    return this.#buf === null;
  }

  /** The live buffer (not a copy). Do not keep it past the holder's life; it is zeroed by `wipe`. */
  expose(): Buffer {
    if (this.#buf === null) throw new VaultError("invalid_request", "this secret value was wiped (SecretBytes.wipe) and cannot be read; read the secret again");
    return this.#buf;
  }

  /** Runs `fn` with the live buffer. */
  use<T>(fn: (bytes: Buffer) => T): T {
    return fn(this.expose());
  }

  /**
   * The value as UTF-8 text. JavaScript strings cannot be wiped, so prefer {@link expose} where
   * the consumer takes bytes.
   */
  unsafeText(): string {
    return this.expose().toString("utf8");
  }

  /** Constant-time-ish comparison with other bytes (length is not hidden). */
  equals(other: Uint8Array | SecretBytes): boolean {
    const a = this.expose();
    const b = other instanceof SecretBytes ? other.expose() : other;
    if (a.length !== b.length) return false;
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
    return diff === 0;
  }

  /** Zeroes the bytes and drops them. Safe to call twice. */
  wipe(): void {
    if (this.#buf !== null) {
      this.#buf.fill(0);
      this.#buf = null;
    }
  }

  [Symbol.dispose](): void {
    this.wipe();
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspectSymbol](): string {
    return `SecretBytes(${this.#buf === null ? "wiped" : `${this.length} bytes`}) ${REDACTED}`;
  }
}

Object.defineProperty(SecretBytes.prototype, BRAND, { value: true });
