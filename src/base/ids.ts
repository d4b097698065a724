/** UUIDv7 ids (RFC 9562): 48-bit millisecond time, then random bits; sortable by creation time. */
import { randomFillSync } from "node:crypto";

let lastMs = 0;
let seq = 0;
/** Random bytes are drawn from the CSPRNG 4 KiB at a time; each id takes 10 fresh bytes. */
const pool = Buffer.alloc(4096);
let poolAt = pool.length;
const rand = Buffer.alloc(16);

function fillRandom(): void {
  if (poolAt + 10 > pool.length) {
    randomFillSync(pool);
    poolAt = 0;
  }
  pool.copy(rand, 6, poolAt, poolAt + 10);
  pool.fill(0, poolAt, poolAt + 10);
  poolAt += 10;
}

/** A new UUIDv7 string. Ids made in the same millisecond stay ordered by a 12-bit counter. */
export function uuidv7(now: number = Date.now()): string {
  fillRandom();
  if (now <= lastMs) {
    seq = (seq + 1) & 0xfff;
    if (seq === 0) lastMs += 1;
    now = lastMs;
  } else {
    lastMs = now;
    seq = rand.readUInt16BE(6) & 0x7ff;
  }
  const b = rand;
  b.writeUIntBE(now, 0, 6);
  b[6] = 0x70 | ((seq >> 8) & 0x0f);
  b[7] = seq & 0xff;
  b[8] = 0x80 | (b[8]! & 0x3f);
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * A lower-case hyphenated UUID: the one definition. The wire schemas (src/protocol) take it for their
 * id fields; everything else asks {@link isUuid}.
 */
export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** True for a lower-case hyphenated UUID string. */
export function isUuid(s: unknown): s is string {
  return typeof s === "string" && UUID_RE.test(s);
}
