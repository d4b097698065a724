// The floor of `lessor lease` (bench/cli.ts): the least a Node program can do to take a lease and
// print its value. It connects to the daemon's socket, sends the hello and a request_lease with
// `access` in one write (as the CLI's pipelined client does), prints the value and exits. No options
// parsing, no config, no validation, no error handling: a ceiling to read `lessor lease` against,
// not a client.
//
//   node bench/lease-floor.cjs SOCKET AGENT SECRET DOMAIN
"use strict";
const { createConnection } = require("node:net");
const { writeSync } = require("node:fs");

const [socketPath, agent, secret, domain] = process.argv.slice(2);
const frame = (message) => {
  const body = Buffer.from(JSON.stringify(message));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
};
const sock = createConnection({ path: socketPath });
sock.write(
  Buffer.concat([
    frame({ protocol: "lessor", version: 1 }),
    frame({ id: "01890000-0000-7000-8000-000000000001", method: "request_lease", params: { agent, secret, domains: [domain], access: { domain } } }),
  ]),
);
let buf = Buffer.alloc(0);
let frames = 0;
sock.on("data", (chunk) => {
  buf = Buffer.concat([buf, chunk]);
  while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
    const body = buf.subarray(4, 4 + buf.readUInt32BE(0));
    buf = buf.subarray(4 + body.length);
    if (++frames < 2) continue; // the welcome
    const reply = JSON.parse(body.toString("utf8"));
    if (!reply.ok) throw new Error(reply.error.message);
    writeSync(1, Buffer.from(reply.result.value, reply.result.encoding));
    sock.destroy();
  }
});
