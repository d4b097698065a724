/**
 * The VM guests of lessor.toml: who a guest is, decided by where its connection arrives.
 *
 * - `[[vm]]`: a Firecracker microVM. Firecracker hands the host a guest's connection to vsock port P
 *   as a connection to the Unix socket `<uds_path>_<P>`; lessor listens there, one socket per VM, and
 *   every connection on it is this VM's identity.
 * - `[[vsock]]` with `[server] vsock_port`: QEMU/vhost-vsock guests reaching an AF_VSOCK listener; the
 *   peer's CID (assigned by the host, not forgeable by the guest) maps to an identity.
 *
 * A guest is an agent or an orchestrator, never an admin: a VM exists to run code lessor does not
 * trust, and administration belongs on the host. Parsed strictly, like the rest of the file.
 */
import { normalize } from "node:path";
import { fail, roleFields, show } from "./fields.js";

/** Who a guest is: the role and its agent id (agent) or the agents it may act for (orchestrator). */
export interface GuestIdentity {
  role: "orchestrator" | "agent";
  agent?: string;
  actFor?: string[];
}

/** One `[[vm]]` entry: a Firecracker VM whose vsock device is `uds_path`, served on host port `port`. */
export interface VmConfig extends GuestIdentity {
  /** The VM's name: its identity is `vm:<name>`. */
  name: string;
  /** Firecracker's `uds_path` (as written; relative paths are in the home). */
  udsPath: string;
  /** The vsock port the guest connects to; the socket is `<udsPath>_<port>`. */
  port: number;
  /** Mode of the socket file; 0600 unless the Firecracker process runs under another uid. */
  socketMode: number;
  /** The uid the Firecracker process runs as: connections from another uid are refused (needs the peer-credential addon). */
  uid?: number;
}

/** One `[[vsock]]` entry: an AF_VSOCK guest by CID. */
export interface VsockGuest extends GuestIdentity {
  cid: number;
}

type Table = Record<string, unknown>;

/** Largest vsock port and CID (VMADDR_PORT_ANY / VMADDR_CID_ANY = 2^32-1 mean "any", never a peer). */
const MAX_U32_REAL = 2 ** 32 - 2;
/** The lowest CID a guest can have: 0 is the hypervisor, 1 local loopback, 2 the host. */
export const MIN_GUEST_CID = 3;
const VM_NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;



function u32(source: string, where: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max)
    fail(source, where, `expected a whole number from ${min} to ${max}, got ${show(v)}`);
  return v;
}

function entries(source: string, v: unknown, table: string): Table[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) fail(source, `[[${table}]]`, `expected [[${table}]] tables (note the double brackets)`);
  return v.map((raw, i) => {
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail(source, `${table} ${i + 1}`, "expected a table");
    return raw as Table;
  });
}

function known(source: string, where: string, t: Table, allowed: readonly string[]): void {
  for (const k of Object.keys(t)) if (!allowed.includes(k)) fail(source, where, `unknown field "${k}" (known: ${allowed.join(", ")})`);
}

/** role / agent / act_for, as in [[identity]] but without admin; role defaults to "agent". */
function guestIdentity(source: string, where: string, t: Table): GuestIdentity {
  const role = t.role ?? "agent";
  if (role === "admin")
    fail(source, `${where}: role`, "a VM guest cannot be admin (it runs code lessor does not trust); administer the vault from the host, and give the guest role \"agent\" or \"orchestrator\"");
  if (role !== "orchestrator" && role !== "agent") fail(source, `${where}: role`, `expected "agent" or "orchestrator", got ${show(role)}`);
  return { role, ...roleFields(source, where, t, role, "guest") };
}

/** Parses the `[[vm]]` tables. */
export function parseVms(source: string, v: unknown): VmConfig[] {
  const names = new Set<string>();
  const sockets = new Set<string>();
  return entries(source, v, "vm").map((t, i) => {
    const where = `vm ${i + 1}`;
    known(source, where, t, ["name", "uds_path", "port", "role", "agent", "act_for", "socket_mode", "uid"]);
    if (typeof t.name !== "string" || !VM_NAME_RE.test(t.name))
      fail(source, `${where}: name`, `expected a name of letters, digits, "_", "." or "-" (at most 64), such as "vm1", got ${show(t.name)}`);
    if (names.has(t.name)) fail(source, `${where}: name`, `VM ${show(t.name)} is listed twice`);
    names.add(t.name);
    const udsPath = t.uds_path;
    if (typeof udsPath !== "string" || udsPath.length === 0 || udsPath.length > 1024 || udsPath.includes("\0") || udsPath.endsWith("/"))
      fail(source, `${where}: uds_path`, `expected the path Firecracker's vsock device was given as uds_path, such as "/run/fc/vm1.vsock", got ${show(udsPath)}`);
    const port = u32(source, `${where}: port`, t.port, 1, MAX_U32_REAL);
    // One socket however it is spelled (`/x/./fc`, `/x//fc`, `/x/fc/../fc`).
    const key = `${normalize(udsPath)}_${port}`;
    if (sockets.has(key)) fail(source, `${where}: uds_path`, `${key} is used by another [[vm]] entry; each VM needs its own socket`);
    sockets.add(key);
    let socketMode = 0o600;
    if (t.socket_mode !== undefined) {
      if (typeof t.socket_mode !== "string" || !/^0?[0-7]{3}$/.test(t.socket_mode))
        fail(source, `${where}: socket_mode`, `expected an octal mode as a string such as "0600", got ${show(t.socket_mode)}`);
      socketMode = parseInt(t.socket_mode, 8);
      if ((socketMode & 0o007) !== 0)
        fail(source, `${where}: socket_mode`, `"${t.socket_mode}" lets every local user connect as VM ${show(t.name)}; use "0600", or "0660" with the Firecracker process in the socket's group`);
    }
    const vm: VmConfig = { name: t.name, udsPath, port, socketMode, ...guestIdentity(source, where, t) };
    if (t.uid !== undefined) vm.uid = u32(source, `${where}: uid`, t.uid, 0, 2 ** 32 - 1);
    if ((socketMode & 0o070) !== 0 && vm.uid === undefined)
      fail(source, `${where}: socket_mode`, `a group-accessible socket needs uid = <the Firecracker process's uid>, so that other members of the group cannot connect as VM ${show(t.name)}`);
    return vm;
  });
}

/** Parses `[server] vsock_port` (undefined: no AF_VSOCK listener). */
export function parseVsockPort(source: string, v: unknown): number | null {
  if (v === undefined) return null;
  return u32(source, "[server] vsock_port", v, 1, MAX_U32_REAL);
}

/** Parses the `[[vsock]]` tables (AF_VSOCK guests by CID). */
export function parseVsockGuests(source: string, v: unknown): VsockGuest[] {
  const cids = new Set<number>();
  return entries(source, v, "vsock").map((t, i) => {
    const where = `vsock ${i + 1}`;
    known(source, where, t, ["cid", "role", "agent", "act_for"]);
    const cid = u32(source, `${where}: cid`, t.cid, MIN_GUEST_CID, MAX_U32_REAL);
    if (cids.has(cid)) fail(source, `${where}: cid`, `cid ${cid} is listed twice`);
    cids.add(cid);
    return { cid, ...guestIdentity(source, where, t) };
  });
}
