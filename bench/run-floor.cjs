// The floor of `lessor run` (bench/cli.ts): the least a Node program can do to do `lessor run`'s
// job. It connects to the daemon's socket, sends the hello and a request_lease with `access` in one
// write (as the CLI's pipelined client does), starts the command with the value in VAR and its
// output piped through this process (as `lessor run` does when its output is not a terminal), and
// when the command exits revokes the lease, waits for the daemon's answer (the revocation is a
// durable commit, as every write is) and exits with the command's code. No options parsing, no
// config, no references, no masking, no validation, no error handling: a ceiling to read
// `lessor run` against, not a client.
//
//   node bench/run-floor.cjs SOCKET AGENT SECRET VAR -- CMD ARGS…
"use strict";
const { createConnection } = require("node:net");
const { spawn } = require("node:child_process");

const [socketPath, agent, secret, variable, dashes, cmd, ...args] = process.argv.slice(2);
if (dashes !== "--" || !cmd) throw new Error("usage: node bench/run-floor.cjs SOCKET AGENT SECRET VAR -- CMD ARGS…");
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
    frame({ id: "01890000-0000-7000-8000-000000000001", method: "request_lease", params: { agent, secret, access: {} } }),
  ]),
);
let buf = Buffer.alloc(0);
let frames = 0;
let code = 1;
sock.on("data", (chunk) => {
  buf = Buffer.concat([buf, chunk]);
  while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
    const body = buf.subarray(4, 4 + buf.readUInt32BE(0));
    buf = buf.subarray(4 + body.length);
    frames++;
    if (frames === 1) continue; // the welcome
    const reply = JSON.parse(body.toString("utf8"));
    if (!reply.ok) throw new Error(reply.error.message);
    if (frames === 3) {
      // the revocation is durable: done
      sock.destroy();
      process.exitCode = code;
      continue;
    }
    const value = Buffer.from(reply.result.value, reply.result.encoding).toString("utf8");
    const child = spawn(cmd, args, { env: { ...process.env, [variable]: value }, stdio: ["inherit", "pipe", "pipe"] });
    child.stdout.pipe(process.stdout);
    child.stderr.pipe(process.stderr);
    child.once("exit", (c) => {
      code = c ?? 1;
      sock.write(frame({ id: "01890000-0000-7000-8000-000000000002", method: "revoke_lease", params: { leaseId: reply.result.id, reason: "run ended" } }));
    });
  }
});
