/**
 * Logging what anyone who can connect may cause over and over (refused logins, dropped connections):
 * the first ten one by one, then every hundredth with the count, so that a flood cannot fill a log.
 */

/** Events logged one by one before only every hundredth is. */
export const LOGGED_ONE_BY_ONE = 10;

/** Counts one kind of event and logs it sparsely (see the module comment). */
export class SparseLog {
  #count = 0;

  /**
   * `log` writes a line; `each` is the line for one event, `summary` the line for every hundredth
   * past the first ten, given the count so far.
   */
  constructor(
    private readonly log: (line: string) => void,
    private readonly each: (detail: string) => string,
    private readonly summary: (count: number, detail: string) => string,
  ) {}

  /** Events counted so far. */
  get count(): number {
    return this.#count;
  }

  /** Counts one event (`detail` says which) and logs it if its turn has come. */
  add(detail = ""): void {
    this.#count++;
    if (this.#count <= LOGGED_ONE_BY_ONE) this.log(this.each(detail));
    else if (this.#count % 100 === 0) this.log(this.summary(this.#count, detail));
  }
}
