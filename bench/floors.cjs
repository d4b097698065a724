// The floors of `lessor lease` and `lessor run` (bench/cli.ts): the least a Node program can do to do
// their job. Each connects to the daemon's socket and sends the hello and a request_lease with
// `access` in one write (as the CLI's pipelined client does). No options parsing, no config, no
// references, no masking, no validation, no error handling: ceilings to read the CLI against, not
// clients. One file for both, so that neither pays for loading a shared module.
//
//   node bench/floors.cjs lease SOCKET AGENT SECRET DOMAIN
//     prints the value and exits.
//   node bench/floors.cjs run SOCKET AGENT SECRET VAR -- CMD ARGS…
//     starts CMD with the value in VAR and its output piped through this process (as `lessor run`
//     does when its output is not a terminal); when CMD exits, revokes the lease, waits for the
//     daemon's answer (the revocation is a durable commit, as every write is) and exits with CMD's code.
"use strict";
const { createConnection } = require("node:net");

const [mode, socketPath, agent, secret, ...rest] = process.argv.slice(2);
const frame = (message) => {
  const body = Buffer.from(JSON.stringify(message));
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
};

/** Sends the hello and request_lease(`params`), then calls `onReply(reply, sock)` for every frame after the welcome. */
function lease(params, onReply) {
  const sock = createConnection({ path: socketPath });
  sock.write(
    Buffer.concat([
      frame({ protocol: "lessor", version: 1 }),
      frame({ id: "01890000-0000-7000-8000-000000000001", method: "request_lease", params: { agent, secret, ...params } }),
    ]),
  );
  let buf = Buffer.alloc(0);
  let welcomed = false;
  sock.on("data", (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
      const body = buf.subarray(4, 4 + buf.readUInt32BE(0));
      buf = buf.subarray(4 + body.length);
      if (!welcomed) {
        welcomed = true;
        continue;
      }
      const reply = JSON.parse(body.toString("utf8"));
      if (!reply.ok) throw new Error(reply.error.message);
      onReply(reply.result, sock);
    }
  });
}

if (mode === "lease") {
  const [domain] = rest;
  lease({ domains: [domain], access: { domain } }, (result, sock) => {
    require("node:fs").writeSync(1, Buffer.from(result.value, result.encoding));
    sock.destroy();
  });
} else if (mode === "run" && rest[1] === "--" && rest[2]) {
  const [variable, , cmd, ...args] = rest;
  let code = null;
  lease({ access: {} }, (result, sock) => {
    if (code !== null) {
      // the revocation's answer: it is durable
      sock.destroy();
      process.exitCode = code;
      return;
    }
    const value = Buffer.from(result.value, result.encoding).toString("utf8");
    const child = require("node:child_process").spawn(cmd, args, { env: { ...process.env, [variable]: value }, stdio: ["inherit", "pipe", "pipe"] });
    child.stdout.pipe(process.stdout);
    child.stderr.pipe(process.stderr);
    child.once("exit", (c) => {
      code = c ?? 1;
      sock.write(frame({ id: "01890000-0000-7000-8000-000000000002", method: "revoke_lease", params: { leaseId: result.lease.id, reason: "run ended" } }));
    });
  });
} else {
  throw new Error("usage: node bench/floors.cjs lease SOCKET AGENT SECRET DOMAIN | run SOCKET AGENT SECRET VAR -- CMD ARGS…");
}
