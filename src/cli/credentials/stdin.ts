/**
 * Reading a credential helper's request from stdin, bounded: git and docker write a few short lines
 * and close the pipe, so anything larger is refused rather than buffered without end.
 */
import { VaultError } from "../../base/errors.js";

/** The most a helper request may be: git's lines and docker's server URL are far shorter. */
export const MAX_REQUEST_BYTES = 64 * 1024;

/**
 * Reads `input` until it ends (or, with `untilBlankLine`, until a blank line, where git's protocol
 * says a request ends) and returns what came. More than {@link MAX_REQUEST_BYTES} is an error.
 */
export function readRequest(input: NodeJS.ReadableStream, untilBlankLine: boolean): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (e: Error | null): void => {
      if (done) return;
      done = true;
      input.off("data", onData);
      input.off("end", onEnd);
      input.off("error", onError);
      input.pause();
      if (e) reject(e);
      else resolve(Buffer.concat(parts));
    };
    const onData = (d: Buffer | string): void => {
      const b = typeof d === "string" ? Buffer.from(d) : d;
      parts.push(b);
      size += b.length;
      if (size > MAX_REQUEST_BYTES) return finish(new VaultError("invalid_request", `the request on stdin is over ${MAX_REQUEST_BYTES} bytes; a credential helper request is a few short lines`));
      if (untilBlankLine) {
        const all = Buffer.concat(parts);
        if (all.indexOf("\n\n") >= 0 || all.indexOf("\r\n\r\n") >= 0 || all[0] === 0x0a) finish(null);
      }
    };
    const onEnd = (): void => finish(null);
    const onError = (e: Error): void => finish(e);
    input.on("data", onData);
    input.on("end", onEnd);
    input.on("error", onError);
    input.resume();
  });
}
