/**
 * MCP's stdio framing (newline-delimited JSON-RPC) over a pair of streams — stdin/stdout, or one
 * connection of `--socket`/`--vsock-port` (./stream.ts) — read no faster than the server answers.
 *
 * The SDK's `StdioServerTransport` reads its input as fast as it arrives and starts every request at
 * once, whatever the other side does with the answers: a client that sends requests without reading
 * what comes back (a `tools/list` line of 50 bytes is answered with kilobytes) made the server buffer
 * every answer in memory, without bound, until the process died (its sessions' leases left live); on a
 * socket shared by VM guests, one guest could so take down the server of all. This transport stops
 * reading while
 * - the answers not yet taken by the other side exceed {@link MAX_UNSENT} bytes (until they drain), or
 * - {@link MAX_IN_FLIGHT} requests of the client are being served (until one is answered),
 * so memory stays bounded by what one message and those requests take; the client's writes block
 * instead. A line longer than `maxMessage` bytes ends the transport, as the SDK's does.
 *
 * The client's `notifications/cancelled` are not passed on: lessor's handlers do not stop for one,
 * and the SDK, told of it, only withholds the answer, so the request would run on unseen, either
 * counted out at once (a "request + cancel" loop then serves any number at a time) or never (the
 * session stalls after 64). A request is counted out when its answer is sent, and a client that
 * cancelled ignores that answer (MCP: the receiver of a cancellation may ignore it; the sender
 * ignores a response that arrives after).
 */
import type { Readable, Writable } from "node:stream";
import type { Transport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { deserializeMessage, serializeMessage } from "@modelcontextprotocol/sdk/shared/stdio.js";
import type { JSONRPCMessage } from "@modelcontextprotocol/sdk/types.js";

/** Bytes of answers waiting for the client to read them before reading stops. */
export const MAX_UNSENT = 1024 * 1024;
/** Requests of the client served at once before reading stops. */
export const MAX_IN_FLIGHT = 64;

/** The key of a JSON-RPC id (a number and its string are different ids). */
const idKey = (id: unknown): string => `${typeof id}:${String(id)}`;

/** True for the client's cancellation of one of its requests (a notification: no id). */
function isCancellation(m: JSONRPCMessage): boolean {
  const r = m as { method?: unknown; id?: unknown };
  return r.method === "notifications/cancelled" && r.id === undefined;
}

/** See the module comment. */
export class PacedStreamTransport implements Transport {
  onclose?: () => void;
  onerror?: (error: Error) => void;
  onmessage?: (message: JSONRPCMessage) => void;

  #chunks: Buffer[] = [];
  /** Chunks at the front of #chunks known to hold no line end. */
  #scanned = 0;
  #buffered = 0;
  /** Requests of the client being served, by id (a client may reuse an id: counted). */
  readonly #inFlight = new Map<string, number>();
  #inFlightCount = 0;
  #started = false;
  #closed = false;
  /** Set once more than maxMessage bytes arrived without a line end. */
  #tooLong = false;

  constructor(
    private readonly input: Readable,
    private readonly output: Writable,
    private readonly maxMessage: number,
  ) {}

  /** Requests being served now (for tests and the log). */
  get inFlight(): number {
    return this.#inFlightCount;
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    this.#process();
  };
  readonly #onError = (e: Error): void => this.onerror?.(e);
  readonly #onDrain = (): void => this.#process();
  readonly #onOutputGone = (): void => void this.close();

  async start(): Promise<void> {
    if (this.#started) throw new Error("PacedStreamTransport already started");
    this.#started = true;
    this.input.on("data", this.#onData);
    this.input.on("error", this.#onError);
    this.output.on("drain", this.#onDrain);
    // The client is gone (EPIPE): nothing more can be answered.
    this.output.on("error", this.#onOutputGone);
    this.output.on("close", this.#onOutputGone);
  }

  /** True while reading must wait: answers piled up, or too many requests being served. */
  #held(): boolean {
    return this.output.writableLength > MAX_UNSENT || this.#inFlightCount >= MAX_IN_FLIGHT;
  }

  /** Hands over whole lines while not held; pauses the input while held, resumes it otherwise. */
  #process(): void {
    while (!this.#closed && !this.#tooLong && !this.#held()) {
      const line = this.#nextLine();
      if (line === null) break;
      let message: JSONRPCMessage;
      try {
        message = deserializeMessage(line);
      } catch (e) {
        this.onerror?.(e as Error);
        continue;
      }
      if (isCancellation(message)) continue; // see the module comment
      this.#received(message);
      this.onmessage?.(message);
    }
    if (this.#closed) return;
    if (this.#tooLong) {
      // More than one message's worth without a line end: the SDK's transport ends the session so too.
      this.onerror?.(new Error(`a message over ${this.maxMessage} bytes`));
      void this.close();
      return;
    }
    if (this.#held()) this.input.pause();
    else this.input.resume();
  }

  /** The next complete line (without its end), or null. Each chunk is searched for a line end once. */
  #nextLine(): string | null {
    while (this.#scanned < this.#chunks.length && !this.#chunks[this.#scanned]!.includes(0x0a)) this.#scanned++;
    if (this.#scanned === this.#chunks.length) {
      if (this.#buffered > this.maxMessage) this.#tooLong = true;
      return null;
    }
    const buf = this.#scanned === 0 ? this.#chunks[0]! : Buffer.concat(this.#chunks.slice(0, this.#scanned + 1));
    const end = buf.indexOf(0x0a);
    if (end > this.maxMessage) {
      this.#tooLong = true;
      return null;
    }
    const line = buf.toString("utf8", 0, end).replace(/\r$/, "");
    const rest = buf.subarray(end + 1);
    this.#chunks = [...(rest.length > 0 ? [rest] : []), ...this.#chunks.slice(this.#scanned + 1)];
    this.#scanned = 0;
    this.#buffered -= end + 1;
    return line;
  }

  /** Counts a request of the client in (its answer counts it out: {@link send}). */
  #received(m: JSONRPCMessage): void {
    const r = m as { method?: unknown; id?: unknown };
    if (typeof r.method !== "string" || r.id === undefined) return;
    const k = idKey(r.id);
    this.#inFlight.set(k, (this.#inFlight.get(k) ?? 0) + 1);
    this.#inFlightCount++;
  }

  #answered(id: unknown): void {
    const k = idKey(id);
    const n = this.#inFlight.get(k);
    if (n === undefined) return;
    if (n <= 1) this.#inFlight.delete(k);
    else this.#inFlight.set(k, n - 1);
    this.#inFlightCount--;
  }

  send(message: JSONRPCMessage): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const r = message as { method?: unknown; id?: unknown };
    // Written at once: what waits for the client is bounded by pausing the input (see #held).
    this.output.write(serializeMessage(message));
    // An answer (not a request of ours to the client, which has a method) ends one of its requests,
    // and reading may go on (once the answers drain, if they piled up).
    if (r.method === undefined && r.id !== undefined) {
      this.#answered(r.id);
      setImmediate(() => this.#process());
    }
    return Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.input.off("data", this.#onData);
    this.input.off("error", this.#onError);
    this.output.off("drain", this.#onDrain);
    this.output.off("error", this.#onOutputGone);
    this.output.off("close", this.#onOutputGone);
    if (this.input.listenerCount("data") === 0) this.input.pause();
    this.#chunks = [];
    this.#scanned = 0;
    this.#buffered = 0;
    this.onclose?.();
  }
}
