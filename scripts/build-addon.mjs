#!/usr/bin/env node
// Builds the optional native addons — the package's `install` script, and the command to run by hand
// after installing a compiler:  node scripts/build-addon.mjs
//   - native/peercred: peer credentials of Unix-socket clients (SO_PEERCRED);
//   - native/vsock: the AF_VSOCK listener for QEMU/vhost-vsock guests (docs/vm.md), built only when
//     its directory is there.
// Each is built on its own: one failing does not stop the other, and each failure gets its own warning.
//
// It never needs the network. node-gyp is told where the Node headers are (--nodedir), so it does not
// try to download them:
//   1. npm_config_nodedir, if set and it holds the headers;
//   2. the prefix of the running Node: <prefix>/include/node/node_api.h, where <prefix> is the
//      directory above the one holding the node binary (/usr for Debian's nodejs, the unpacked
//      tarball or ~/.nvm/versions/node/vX for nvm), resolved through symlinks or not;
//   3. the prefix Node was built with (process.config.variables.node_prefix).
// Only if none has them is node-gyp left to find headers itself (its cache, or a download).
//
// node-gyp is the one npm runs lifecycle scripts with (npm_config_node_gyp), else npm's bundled copy
// beside this Node, else `node-gyp` on PATH.
//
// The addon is optional, so this script always exits 0. When the build fails it prints a warning of
// several lines on stderr saying what that means and how to fix it, with the end of the build output.
// Set LESSOR_ADDON_VERBOSE=1 to see the whole build output.
import { spawnSync } from "node:child_process";
import { existsSync, realpathSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const self = join(root, "scripts", "build-addon.mjs");
const verbose = process.env.LESSOR_ADDON_VERBOSE === "1";

/** Directories that may hold the Node headers, best first, each with where it came from. */
function headerCandidates() {
  const out = [];
  const fromEnv = (process.env.npm_config_nodedir ?? "").trim();
  if (fromEnv !== "") out.push({ dir: fromEnv, from: "npm_config_nodedir" });
  const exec = process.execPath;
  try {
    out.push({ dir: dirname(dirname(realpathSync(exec))), from: `the prefix of ${realpathSync(exec)}` });
  } catch {
    // the binary vanished: ignore
  }
  out.push({ dir: dirname(dirname(exec)), from: `the prefix of ${exec}` });
  const prefix = process.config?.variables?.node_prefix;
  if (typeof prefix === "string" && prefix !== "") out.push({ dir: prefix, from: "the prefix Node was built with" });
  return out;
}

/** The first candidate holding node_api.h and common.gypi, or null. Notes an unusable npm_config_nodedir. */
function findHeaders(notes) {
  for (const c of headerCandidates()) {
    const inc = join(c.dir, "include", "node");
    if (existsSync(join(inc, "node_api.h")) && existsSync(join(inc, "common.gypi"))) return c;
    if (c.from === "npm_config_nodedir") notes.push(`npm_config_nodedir=${c.dir} has no include/node/node_api.h; looking elsewhere`);
  }
  return null;
}

/** How to run node-gyp: [command, ...args]. */
function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"),
    join(dirname(process.execPath), "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"),
  ];
  for (const c of candidates) if (c && existsSync(c)) return [process.execPath, c];
  return ["node-gyp"];
}

/** The lines of node-gyp's output that say what went wrong (not its progress, stack frames or banner). */
function relevant(output) {
  const noise = /^(gyp info |gyp ERR! (System|command|cwd|node -v|node-gyp -v|not ok)\b|gyp ERR! stack\s+at |\s+at |make(\[\d+\])?: (Entering|Leaving) directory)/;
  return output
    .split("\n")
    .map((l) => l.trimEnd())
    .filter((l) => l !== "" && !noise.test(l))
    .slice(-12);
}

/** The addons: where, what the built file must export, and what its absence means (for the warning). */
const ADDONS = [
  {
    name: "peercred",
    title: "peer-credential addon",
    export: "peercred",
    meaning: [
      "  What it means: the lessor daemon cannot tell which local user connects to its Unix",
      "  socket. `lessor serve` then starts only with an owner-only socket (socket_mode",
      "  \"0600\") and no [[identity]] entries in lessor.toml, and refuses to start otherwise;",
      "  agents under other uids cannot be identified by uid (give them tokens instead).",
      "  Everything else (the CLI, the embedded vault, TCP with tokens) works as usual.",
    ],
  },
  {
    name: "vsock",
    title: "vsock addon",
    export: "listen",
    optionalDir: true,
    meaning: [
      "  What it means: the daemon cannot listen on AF_VSOCK, so `[server] vsock_port`",
      "  (QEMU/vhost-vsock guests) makes `lessor serve` refuse to start. Firecracker VMs",
      "  ([[vm]] entries, served on Unix sockets) and everything else work as usual.",
    ],
  },
];

function warn(addon, why, details) {
  const lines = [
    "",
    "==================================================================================",
    `WARNING: lessor's ${addon.title} (native/${addon.name}) is NOT available.`,
    `  Why: ${why}`,
    ...addon.meaning,
    "  How to fix: install python3, make and a C compiler (Debian/Ubuntu:",
    "  apt-get install python3 make gcc), then run:",
    `    node ${self}`,
    `  (set LESSOR_ADDON_VERBOSE=1 for the full build output; see native/${addon.name}/README.md)`,
  ];
  const said = details ? relevant(details) : [];
  if (said.length > 0) {
    lines.push("  The build said:");
    for (const l of said) lines.push(`    ${l}`);
  }
  lines.push("==================================================================================", "");
  process.stderr.write(lines.map((l) => (l === "" ? "" : `lessor: ${l}`)).join("\n") + "\n");
}

function main() {
  for (const addon of ADDONS) {
    const addonDir = join(root, "native", addon.name);
    if (addon.optionalDir && !existsSync(join(addonDir, "binding.gyp"))) continue;
    try {
      build(addon, addonDir);
    } catch (e) {
      warn(addon, `the build script failed (${e instanceof Error ? e.message : String(e)})`, null);
    }
  }
}

function build(addon, addonDir) {
  const built = join(addonDir, "build", "Release", `${addon.name}.node`);
  if (process.platform !== "linux") {
    const what = addon.name === "peercred" ? "peer credentials are only read" : "AF_VSOCK is only used";
    warn(addon, `${what} on Linux (this is ${process.platform}), so the addon is not built`, null);
    return;
  }
  const notes = [];
  const headers = findHeaders(notes);
  const [cmd, ...pre] = nodeGyp();
  const args = [...pre, "rebuild"];
  if (headers !== null) args.push(`--nodedir=${headers.dir}`);
  // node-gyp also reads npm_config_nodedir from the environment in places (config.gypi), so it must
  // agree with --nodedir; an empty one is dropped.
  const env = { ...process.env };
  // A build tool needs no vault secret: none of lessor's reaches node-gyp, make or the compiler.
  for (const k of ["LESSOR_PASSPHRASE", "LESSOR_MASTER_KEY", "LESSOR_TOKEN", "LESSOR_MASTER_KEY_PREVIOUS"]) delete env[k];
  if (headers !== null) env.npm_config_nodedir = headers.dir;
  else if ((env.npm_config_nodedir ?? "").trim() === "") delete env.npm_config_nodedir;
  const r = spawnSync(cmd, args, { cwd: addonDir, env, encoding: "utf8", stdio: verbose ? "inherit" : "pipe", maxBuffer: 16 * 1024 * 1024 });
  const output = verbose ? "" : `${r.stdout ?? ""}${r.stderr ?? ""}`;
  for (const n of notes) process.stderr.write(`lessor: ${n}\n`);
  if (r.error || r.status !== 0) {
    const why = r.error
      ? `node-gyp could not be run (${r.error.code ?? r.error.message})`
      : headers === null
        ? "the build failed, and no Node headers were found on this machine (node-gyp then needs to download them)"
        : `the build failed (node-gyp exited with ${r.status ?? r.signal})`;
    warn(addon, why, output);
    return;
  }
  try {
    const loaded = createRequire(import.meta.url)(built);
    if (typeof loaded[addon.export] !== "function") throw new Error(`it exports no ${addon.export} function`);
  } catch (e) {
    warn(addon, `the addon was built but does not load (${String(e instanceof Error ? e.message : e).split("\n")[0]})`, output);
    return;
  }
  process.stdout.write(`lessor: built the ${addon.title} (${built}${headers ? `, Node headers from ${headers.from}` : ""})\n`);
}

main();
