/**
 * Fair admission of requests to the vault. Every connection may pipeline up to `maxInFlight`
 * requests, and the store runs whatever it is given in one batch; without a scheduler, one principal
 * with many connections (8 × 64 requests) fills the store's queue, and a quiet principal's request
 * waits behind all of it.
 *
 * The scheduler keeps one lane per principal (the identity id: `uid:1000`, `token:ci/…`) and starts
 * requests from the lanes in turn (round robin), at most `total` running for all lanes, and for one
 * lane at most:
 * - `perPrincipal` while it is the only principal active, so a lone busy client (a benchmark, a
 *   batch job) still fills the store's group commits;
 * - `perPrincipalShared` while another principal has sent a request within the last `sharedForMs`.
 *   Every request of the store's next batch is then one of a few per principal, so the batch (one
 *   event-loop turn and one fsync, during which nothing else is answered) stays short.
 * So a principal arriving during another's flood waits for what is already running (at most
 * `perPrincipal` of the flood's requests) and from then on for one turn of each other busy principal,
 * not for the flood's queue.
 *
 * A request waiting here still counts against its connection's in-flight cap, so a connection that
 * pipelines stops being read once it has `maxInFlight` requests waiting or running: the waiting
 * lines are bounded by the connection caps.
 */

/** One request: started when admitted; settles when done (it answers its own errors). */
export type Job = () => Promise<void>;

/** How many requests may run at once. */
export interface SchedulerLimits {
  /** For one principal, while no other principal is active. */
  perPrincipal: number;
  /** For one principal, while another principal is active. */
  perPrincipalShared: number;
  /** For all principals together. */
  total: number;
  /** A principal counts as active this long after its last request. Default 1000 ms. */
  sharedForMs?: number;
}

/** A principal's waiting requests and how many of its requests run. */
interface Lane {
  readonly principal: string;
  readonly waiting: Job[];
  /** Index of the first waiting job in `waiting` (a queue without shift()'s copying). */
  head: number;
  running: number;
  /** True while the lane is in the ready ring. */
  ready: boolean;
}

/** Starts requests fairly between principals (see the module comment). */
export class Scheduler {
  readonly #limits: SchedulerLimits;
  readonly #lanes = new Map<string, Lane>();
  /** Lanes with a waiting request and a free slot, in turn order. */
  #ring: Lane[] = [];
  #ringHead = 0;
  #running = 0;
  #waiting = 0;
  /** When each principal last submitted a request (performance.now()), pruned every so often. */
  readonly #seen = new Map<string, number>();
  #prunedAt = 0;
  readonly #sharedForMs: number;

  constructor(limits: SchedulerLimits) {
    this.#limits = limits;
    this.#sharedForMs = limits.sharedForMs ?? 1000;
  }

  /** The running cap of one lane at `now`: lower while more than one principal is active. */
  #cap(now: number): number {
    if (now - this.#prunedAt >= Math.min(100, this.#sharedForMs)) {
      this.#prunedAt = now;
      for (const [p, at] of this.#seen) {
        if (now - at < this.#sharedForMs) continue;
        const lane = this.#lanes.get(p);
        if (lane !== undefined && (lane.running > 0 || lane.head < lane.waiting.length)) continue;
        this.#seen.delete(p);
        this.#lanes.delete(p);
      }
    }
    return this.#seen.size > 1 ? this.#limits.perPrincipalShared : this.#limits.perPrincipal;
  }

  /** Requests running now. */
  get running(): number {
    return this.#running;
  }

  /** Requests admitted to no slot yet. */
  get waiting(): number {
    return this.#waiting;
  }

  /** Requests of `principal` running now (0 for an unknown principal). */
  runningFor(principal: string): number {
    return this.#lanes.get(principal)?.running ?? 0;
  }

  /**
   * Queues `job` for `principal`; it starts at once if its lane has nothing waiting and a slot is
   * free (the common case, with no queue touched), else in its turn.
   */
  submit(principal: string, job: Job): void {
    const now = performance.now();
    this.#seen.set(principal, now);
    let lane = this.#lanes.get(principal);
    if (lane === undefined) this.#lanes.set(principal, (lane = { principal, waiting: [], head: 0, running: 0, ready: false }));
    if (lane.head === lane.waiting.length && this.#running < this.#limits.total && lane.running < this.#cap(now)) {
      // Nothing of this lane waits, and a lane with a free slot is never left waiting while the
      // total has room (#admit drains the ring whenever a slot frees): starting now is its turn.
      lane.running++;
      this.#running++;
      void this.#run(lane, job);
      return;
    }
    lane.waiting.push(job);
    this.#waiting++;
    this.#markReady(lane, now);
    this.#admit();
  }

  #markReady(lane: Lane, now: number): void {
    if (!lane.ready && lane.head < lane.waiting.length && lane.running < this.#cap(now)) {
      lane.ready = true;
      this.#ring.push(lane);
    }
  }

  /** Starts jobs from the ring, one per lane per turn, while total slots are free. */
  #admit(): void {
    const now = performance.now();
    while (this.#running < this.#limits.total && this.#ringHead < this.#ring.length) {
      const lane = this.#ring[this.#ringHead++]!;
      lane.ready = false;
      if (lane.running >= this.#cap(now)) continue; // the cap fell since it joined the ring; a completion re-adds it
      const job = lane.waiting[lane.head]!;
      lane.waiting[lane.head++] = undefined as unknown as Job;
      if (lane.head === lane.waiting.length) {
        lane.waiting.length = 0;
        lane.head = 0;
      }
      this.#waiting--;
      lane.running++;
      this.#running++;
      this.#markReady(lane, now); // to the back of the ring: the others go first
      void this.#run(lane, job);
    }
    if (this.#ringHead === this.#ring.length) {
      this.#ring = [];
      this.#ringHead = 0;
    } else if (this.#ringHead > 1024 && this.#ringHead * 2 > this.#ring.length) {
      this.#ring = this.#ring.slice(this.#ringHead);
      this.#ringHead = 0;
    }
  }

  async #run(lane: Lane, job: Job): Promise<void> {
    try {
      await job();
    } catch {
      // Jobs answer their own errors (Connection's #run catches everything); never crash the daemon.
    } finally {
      lane.running--;
      this.#running--;
      // An idle lane stays (no allocation per request); #cap's pruning drops it once its principal is quiet.
      if (lane.head < lane.waiting.length) this.#markReady(lane, performance.now());
      if (this.#waiting > 0) this.#admit();
    }
  }
}
