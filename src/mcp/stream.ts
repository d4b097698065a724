/**
 * `lessor mcp` over a stream socket instead of stdio (`--socket PATH`, `--vsock-port P`): MCP's stdio
 * transport is newline-delimited JSON-RPC, and that framing works over any connected stream, so a VM
 * guest runs its MCP client with `socat - VSOCK-CONNECT:2:P` (or `socat - UNIX-CONNECT:PATH`) as the
 * server command and reaches lessor on the host.
 *
 * Each connection is one MCP session (./server.ts) of its own: its own leases, placeholders and
 * injecting proxy, acting for the agent the connection's socket or peer CID maps to — decided by the
 * listener before the first byte is read (src/cli/guest-gate.ts), never by a tool argument. When the
 * connection ends (the client closes it, a message over {@link MAX_STREAM_MESSAGE} bytes, or the
 * server stops) the session is closed and its leases revoked.
 */
import type { Duplex } from "node:stream";
import { McpError } from "@modelcontextprotocol/sdk/types.js";
import type { McpIdentity } from "./identity.js";
import type { McpSession } from "./server.js";
import { PacedStreamTransport } from "./paced-transport.js";

/** Largest message a client may send, bytes (as over HTTP: an http_request body of 1 MiB, JSON-escaped, fits). */
export const MAX_STREAM_MESSAGE = 8 * 1024 * 1024;

/** Options of {@link StreamSessions}. */
export interface StreamSessionsOptions {
  /** A new MCP session acting for `identity` (one per connection). */
  newSession(identity: McpIdentity): McpSession;
  /** One line on stderr; never a credential. */
  log(line: string): void;
}

/** The MCP sessions of one `lessor mcp --socket/--vsock-port`, one per connection. */
export class StreamSessions {
  readonly #o: StreamSessionsOptions;
  readonly #live = new Set<() => void>();
  readonly #ending = new Set<Promise<void>>();
  #closed = false;
  #count = 0;

  constructor(o: StreamSessionsOptions) {
    this.#o = o;
  }

  /** Sessions open now. */
  get size(): number {
    return this.#live.size;
  }

  /**
   * Serves one MCP session on `stream` for `identity` (`who` names the guest in the log) until the
   * stream ends or {@link close} is called; then closes the session (revoking its leases) and the stream.
   */
  serve(stream: Duplex, identity: McpIdentity, who: string): Promise<void> {
    if (this.#closed) {
      stream.destroy();
      return Promise.resolve();
    }
    const n = ++this.#count;
    const label = `session ${n} (${who}, agent ${JSON.stringify(identity.agent)})`;
    const done = this.#run(stream, identity, label);
    this.#ending.add(done);
    void done.finally(() => this.#ending.delete(done));
    return done;
  }

  async #run(stream: Duplex, identity: McpIdentity, label: string): Promise<void> {
    const { log } = this.#o;
    stream.on("error", () => {});
    let stop: () => void = () => {};
    const stopped = new Promise<void>((r) => (stop = r));
    this.#live.add(stop);
    let session: McpSession | null = null;
    try {
      session = this.#o.newSession(identity);
      // Read no faster than the guest takes the answers: one guest cannot fill the host's memory.
      const transport = new PacedStreamTransport(stream, stream, MAX_STREAM_MESSAGE);
      for (const e of ["end", "close", "error"] as const) stream.once(e, stop);
      transport.onclose = stop;
      // The error's name only: a parse error's message quotes the input, which may hold anything.
      session.server.onerror = (e) => log(`lessor mcp: ${label}: a message from the client could not be handled (${e instanceof McpError ? `MCP error ${e.code}` : e.name})`);
      await session.server.connect(transport);
      log(`lessor mcp: ${label} opened`);
      await stopped;
    } catch (e) {
      log(`lessor mcp: ${label} could not start (${e instanceof Error ? e.name : "error"})`);
    } finally {
      this.#live.delete(stop);
      await session?.server.close().catch(() => {});
      // What was written is flushed; a client that stops reading is cut off after a second.
      stream.end();
      setTimeout(() => stream.destroy(), 1000).unref();
      await session?.close();
      if (session) log(`lessor mcp: ${label} closed; its leases are revoked`);
    }
  }

  /** Ends every session (revoking their leases) and refuses new ones. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const stop of this.#live) stop();
    await Promise.allSettled([...this.#ending]);
  }
}

/** A JSON-RPC error line for a refused connection (id null: no request was read), then the end. */
export function refuseMcpStream(stream: Duplex, message: string): void {
  stream.write(`${JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32001, message } })}\n`);
}
