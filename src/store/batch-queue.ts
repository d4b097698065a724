/**
 * The queue both SQL stores put their transaction calls in. Calls made in one turn of the event loop
 * are taken together by one batch (group commit); one batch runs at a time; a batch started while
 * calls keep coming takes them until it is full, and another is scheduled for what is left.
 */

/** See the module comment. `runBatch` takes calls with {@link BatchQueue.take} and settles each. */
export class BatchQueue<C> {
  #queue: C[] = [];
  /** Index of the first call not taken yet (a queue without shift()'s copying). */
  #head = 0;
  #scheduled = false;
  #running = false;
  #closing = false;
  #idle: (() => void)[] = [];

  constructor(private readonly runBatch: () => Promise<void>) {}

  /** True once {@link close} was called: the store takes no new call. */
  get closing(): boolean {
    return this.#closing;
  }

  /** Queues a call; a batch starts on a later turn, so that callers of this turn share it. */
  push(call: C): void {
    this.#queue.push(call);
    this.#schedule();
  }

  /** The next queued call, or undefined when none is left. */
  take(): C | undefined {
    if (this.#head >= this.#queue.length) return undefined;
    const c = this.#queue[this.#head]!;
    this.#queue[this.#head++] = undefined as unknown as C;
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    return c;
  }

  /** Stops taking calls (callers check {@link closing}); resolves once nothing is queued or running. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#running || this.#scheduled || this.#pending() > 0) await new Promise<void>((r) => this.#idle.push(r));
  }

  #pending(): number {
    return this.#queue.length - this.#head;
  }

  #schedule(): void {
    if (this.#running || this.#scheduled || this.#pending() === 0) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      void this.#drain();
    });
  }

  async #drain(): Promise<void> {
    this.#running = true;
    try {
      await this.runBatch();
    } finally {
      this.#running = false;
    }
    if (this.#pending() > 0) this.#schedule();
    else if (this.#closing) for (const w of this.#idle.splice(0)) w();
  }
}
