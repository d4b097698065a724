/**
 * One master-key rotation at a time, among every lessor process sharing the store: two embedded
 * `lessor key rotate` runs, a program on the embedded API beside the CLI, a CLI beside a daemon, or
 * several daemons on one PostgreSQL store. Two rotations at once each read the key source, make their
 * own key current and retire the others: the second to write the key source can put back a key ring
 * that lacks the key every value was just re-wrapped under, and every secret is lost.
 *
 * The claim is one metadata document (`master_key_rotation`, JSON {@link Claim}), read and written
 * inside a store transaction; transactions are serialised by every store (SQLite's write lock, the
 * PostgreSQL store's row lock), so two claims cannot both succeed. A rotation claims it before it reads
 * the key source, renews it at every step (each re-wrap batch, and just before each write to the key
 * source), and ends it when it ends, however it ends. A claim lasts {@link ROTATION_CLAIM_MS} past its
 * last renewal; a claim whose process is known to have ended (same host and pid namespace, no longer
 * running: {@link Processes}) is taken over at once, so a rotation killed mid-way can be resumed
 * straight away. A damaged document counts as no claim; so does one dated further ahead than a claim
 * ever is. The record is not authenticated: someone who can write the database can block rotations
 * with it, as they can the vault itself (docs/security.md, the database's writers).
 */
import { VaultError } from "../base/errors.js";
import { uuidv7 } from "../base/ids.js";
import type { Identity } from "../base/types.js";
import type { ProcessRef, StoreReader, StoreTx } from "./ports.js";
import type { VaultContext } from "./context.js";

/** The metadata key of the claim. */
export const ROTATION_CLAIM_META = "master_key_rotation";

/** How long a claim outlives its last renewal (a rotation renews it at every step). */
export const ROTATION_CLAIM_MS = 5 * 60_000;

/** A rotation's claim as stored. */
interface Claim {
  v: 1;
  /** This rotation's random id. */
  owner: string;
  /** The identity that asked for it. */
  by: string;
  /** When it was claimed, and until when it holds (epoch ms, the store's clock). */
  started: number;
  until: number;
  /** The process running it, when known. */
  process?: ProcessRef;
}

/** A held claim, as the rotation holding it knows it. */
export interface RotationClaim {
  readonly owner: string;
}

const iso = (ms: number): string => new Date(ms).toISOString();

export function isProcessRef(p: unknown): p is ProcessRef {
  const r = p as Partial<ProcessRef> | null;
  return typeof r === "object" && r !== null && typeof r.host === "string" && Number.isSafeInteger(r.pid) && (r.start === null || typeof r.start === "string");
}

/** The live claim, or null (none, lapsed, damaged, or held by a process known to have ended). */
async function readClaim(ctx: VaultContext, r: Pick<StoreReader, "getMeta">, now: number): Promise<Claim | null> {
  const text = await r.getMeta(ROTATION_CLAIM_META);
  if (!text) return null;
  let doc: Partial<Claim>;
  try {
    doc = JSON.parse(text) as Partial<Claim>;
  } catch {
    return null;
  }
  if (typeof doc !== "object" || doc === null || doc.v !== 1 || typeof doc.owner !== "string" || typeof doc.by !== "string") return null;
  if (typeof doc.started !== "number" || typeof doc.until !== "number") return null;
  if (doc.until <= now || doc.until > now + 2 * ROTATION_CLAIM_MS) return null;
  if (doc.process !== undefined && (!isProcessRef(doc.process) || ctx.processes?.ended(doc.process) === true)) return null;
  return doc as Claim;
}

async function writeClaim(ctx: VaultContext, tx: StoreTx, claim: Claim | null): Promise<void> {
  await tx.setMeta(ROTATION_CLAIM_META, claim === null ? "" : JSON.stringify(claim));
}

/** The refusal of a rotation while `other` is running. */
function runningError(other: Claim): VaultError {
  const where = other.process !== undefined ? `, process ${other.process.pid}` : "";
  return new VaultError(
    "unavailable",
    `another master-key rotation is running on this vault (started ${iso(other.started)} by ${other.by}${where}); two at once could leave the secrets under a key no key source holds, so this one was refused and changed nothing. Wait for it to finish, then run lessor key rotate again if it is still needed (a rotation that was stopped is resumed; its claim lapses by ${iso(other.until)} at the latest)`,
  );
}

/** The refusal naming the rotation that holds the claim now, if one other than `claim` does; else null. */
export async function rotationRunningIn(ctx: VaultContext, tx: StoreTx, claim: RotationClaim, now: number): Promise<VaultError | null> {
  const held = await readClaim(ctx, tx, now);
  return held !== null && held.owner !== claim.owner ? runningError(held) : null;
}

/**
 * Inside the transaction that starts a rotation: claims the rotation for `who`, or returns the
 * refusal naming the rotation that holds it. The claim's owner id is made by {@link newRotationClaim}
 * before the transaction, so that a transaction run again claims with the same id.
 */
export async function claimRotationIn(ctx: VaultContext, tx: StoreTx, claim: RotationClaim, who: Identity, now: number): Promise<VaultError | null> {
  const held = await readClaim(ctx, tx, now);
  if (held !== null && held.owner !== claim.owner) return runningError(held);
  await writeClaim(ctx, tx, {
    v: 1,
    owner: claim.owner,
    by: who.id,
    started: held?.started ?? now,
    until: now + ROTATION_CLAIM_MS,
    ...(ctx.processes !== undefined ? { process: ctx.processes.self } : {}),
  });
  return null;
}

/** A new claim id for {@link claimRotationIn}. */
export function newRotationClaim(): RotationClaim {
  return { owner: uuidv7() };
}

/**
 * Inside a transaction of a rotation that holds `claim`: renews it, or throws when it is no longer
 * this rotation's (it lapsed and another rotation claimed it, or someone cleared it): nothing more of
 * this rotation may be done then, and the key source is not written again.
 */
export async function holdRotationIn(ctx: VaultContext, tx: StoreTx, claim: RotationClaim, now: number): Promise<void> {
  const held = await readClaim(ctx, tx, now);
  if (held === null || held.owner !== claim.owner) {
    const by = held === null ? "" : ` (now held by the rotation ${held.by} started ${iso(held.started)})`;
    throw new VaultError(
      "unavailable",
      `this master-key rotation lost its claim on the vault${by}: it went longer than ${ROTATION_CLAIM_MS / 60_000} minutes without renewing it, so another rotation may have run or be running; it stopped before changing the key source again. Wait for any other rotation to finish, then run lessor key rotate again (it resumes this one)`,
    );
  }
  await writeClaim(ctx, tx, { ...held, until: now + ROTATION_CLAIM_MS });
}

/** Ends the claim inside `tx` if it is still `claim` (nothing when it lapsed or another holds it). */
export async function releaseRotationIn(ctx: VaultContext, tx: StoreTx, claim: RotationClaim, now: number): Promise<void> {
  const held = await readClaim(ctx, tx, now);
  if (held?.owner === claim.owner) await writeClaim(ctx, tx, null);
}

/** Ends the claim in a transaction of its own; best effort (a claim left behind lapses by itself). */
export async function releaseRotation(ctx: VaultContext, claim: RotationClaim): Promise<void> {
  await ctx.store.transaction((tx) => releaseRotationIn(ctx, tx, claim, ctx.now())).catch(() => undefined);
}
