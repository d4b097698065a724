/**
 * The logger the server writes to: a subset of pino's API, so a pino logger can be passed as is.
 * The server never logs request params or secret values, only connection events and failures.
 */

/** A structured logger: `obj` holds fields, `msg` one plain sentence. */
export interface Logger {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

const noop = (): void => {};

/** A logger that drops everything. */
export const noopLogger: Logger = Object.freeze({ info: noop, warn: noop, error: noop });
