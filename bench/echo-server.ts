/**
 * The baseline for bench/daemon.ts: a Unix-socket server in its own process that answers every frame
 * with the same frame (decoded by the real FrameDecoder, written back unparsed). argv: <socket path>.
 */
import { unlinkSync } from "node:fs";
import { createServer } from "node:net";
import { FrameDecoder } from "../src/protocol/framing.js";

const path = process.argv[2]!;
try {
  unlinkSync(path);
} catch {
  // not there
}
const server = createServer((sock) => {
  const dec = new FrameDecoder();
  sock.on("error", () => sock.destroy());
  sock.on("data", (chunk: Buffer) => {
    for (const body of dec.push(chunk)) {
      const head = Buffer.allocUnsafe(4);
      head.writeUInt32BE(body.length, 0);
      sock.write(Buffer.concat([head, body]));
    }
  });
});
server.listen(path, () => process.stdout.write("ready\n"));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
