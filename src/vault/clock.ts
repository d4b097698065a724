/**
 * The vault's clock, which never goes back. Leases, tokens, approvals and the dead-man switch are
 * judged by absolute times in epoch ms, so a wall clock stepped back (an NTP correction of a clock
 * that ran fast, a time set by hand) would bring a lease that had expired back to life, and lengthen
 * one's `max_ttl` by the step. While the wall clock is behind what this clock last said, time goes on
 * from there at the pace of the monotonic clock; once the wall clock is ahead again it is followed as
 * it is. A clock stepped forward is followed at once (leases end early: the safe side).
 */

/**
 * How far ahead of the wall clock at opening the trail's last event may be and still hold the clock
 * back: a clock stepped back while no lessor ran is caught up to it, but a trail written under a clock
 * that was wildly ahead (a year, a bad RTC) does not freeze every expiry until then.
 */
export const FLOOR_MAX_AHEAD_MS = 24 * 60 * 60 * 1000;

/**
 * A clock over `wall` (epoch ms) that never returns less than it returned before (see the module
 * comment). `floor`: the latest time the vault has recorded (its trail's last event), or null; it
 * starts the clock there when it is ahead of `wall` by at most {@link FLOOR_MAX_AHEAD_MS}. `mono`: a
 * monotonic clock in ms (performance.now).
 */
export function steadyClock(wall: () => number, floor: number | null, mono: () => number = () => performance.now()): () => number {
  let last = wall();
  if (floor !== null && floor > last && floor - last <= FLOOR_MAX_AHEAD_MS) last = floor;
  let lastMono = mono();
  return () => {
    const w = wall();
    const t = mono();
    last = w >= last ? w : Math.max(w, last + Math.max(0, t - lastMono));
    lastMono = t;
    return last;
  };
}
