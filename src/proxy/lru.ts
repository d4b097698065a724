/**
 * A small bounded map that forgets the least recently used entry when full. Used for the local CA's
 * leaf certificates, so a client that names many hosts cannot grow the proxy's memory without bound.
 */
export class LruCache<K, V> {
  readonly #max: number;
  // A Map iterates in insertion order, so re-inserting on use keeps the oldest entry first.
  readonly #map = new Map<K, V>();

  /** @param max the most entries kept (at least 1). */
  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`LRU size must be a positive integer, got ${max}`);
    this.#max = max;
  }

  /** The value for `key`, marked as most recently used; undefined when absent. */
  get(key: K): V | undefined {
    const v = this.#map.get(key);
    if (v === undefined) return undefined;
    this.#map.delete(key);
    this.#map.set(key, v);
    return v;
  }

  /** Stores `value` as the most recently used entry, dropping the least recently used one if full. */
  set(key: K, value: V): void {
    this.#map.delete(key);
    this.#map.set(key, value);
    if (this.#map.size > this.#max) {
      const oldest = this.#map.keys().next().value as K;
      this.#map.delete(oldest);
    }
  }

  /** Removes `key`; true when it was there. */
  delete(key: K): boolean {
    return this.#map.delete(key);
  }

  /** Drops every entry. */
  clear(): void {
    this.#map.clear();
  }

  /** How many entries are held. */
  get size(): number {
    return this.#map.size;
  }
}
