/**
 * The egress policy of `lessor run`'s proxy, backed by the run's leases: which hosts are intercepted,
 * what each request carries, and when a tunnel must end.
 *
 * - CONNECT: a host one of the leases covers (its domains) is intercepted; any other host is refused
 *   (strict egress, the default) or tunnelled untouched (open egress).
 * - Each request inside an intercepted tunnel: the credentials it uses are those whose placeholder it
 *   carries (mode "placeholder") or whose rule adds them unasked (bearer, basic, header, query) for a
 *   host the lease covers. Each is used through the vault at that moment (`access_secret` with the
 *   host, method and path: one use counted, expiry, revocation, method and path rules checked and
 *   audited by the vault); a refusal answers 403 and nothing goes upstream. What the head decides (a
 *   method or path outside a lease's own bounds, a body refused for its coding) is refused before the
 *   first use, so a request using two credentials does not spend the first's use on a refusal the
 *   second's lease gives; a refusal only the vault knows still comes after it. Under a `methods` or
 *   `paths` restriction (the lease's, or the rule's in force as the vault reports it) the request
 *   goes with the canonical path the vault matched, and one that names another method or path some
 *   other way (dropped segments, override headers) is refused (./request-bounds.ts).
 * - Bodies and WebSocket frames: a placeholder rule with `body = true` (or `websocket = true`) also has
 *   the placeholder replaced in the request body (or the client's frames), streaming. The body cannot be
 *   read before deciding, so for a host the lease covers such a credential counts as used by every
 *   request that may have a body (`hasBody` not false), and by every WebSocket handshake, whether the
 *   placeholder turns up or not: one use each (a WebSocket's frames then ride on its handshake's use,
 *   and the connection closes when the lease is revoked or expires). If that use is refused (method or path rule, use
 *   count, revocation) the request is refused: the proxy fails closed rather than guess.
 * - Tripwire: a request that carries a credential's placeholder or real value to a host that
 *   credential's lease does not cover is refused, the lease is revoked and an alarm is audited. The
 *   target and headers (each header, and all of them joined, so a mark split across two is seen) are
 *   read before deciding; the body and HTTP/2 request trailers are watched as they stream
 *   (./body-tripwire.ts): at a mark the upstream request is ended, nothing more of the body goes, and
 *   the agent gets 403 (or a reset, if the answer had begun). A WebSocket's client frames are watched
 *   the same way; a frame with a mark closes the connection (1008). Compressed bodies are not watched;
 *   a placeholder in one goes as is, which leaks nothing.
 * - Every request is reported (`record_proxy_requests`, in batches: one commit for many requests):
 *   agent, leases, method, host, path, status, bytes, duration; never a credential. A batch the vault
 *   could not take (`unavailable`: the daemon's database cut off or restarting) is sent again until it
 *   lands, so a tripwire's alarm and revocation reach the trail once the vault is back.
 * - A lease that is revoked (anywhere) or expires closes every tunnel that used it within one watch
 *   period (50 ms by default): the watcher polls the vault, since the daemon does not push. A used-up
 *   lease adds nothing more, but the requests that took its uses (the last one still streaming, say)
 *   were granted and run on, watched still: a revocation (the killswitch revokes used-up leases too)
 *   or its expiry closes them like any other.
 * - Fail closed: a tunnel carries a credential only while the watch keeps confirming its lease. When
 *   no answer of the vault has confirmed it for {@link UNCONFIRMED_MS} (the vault or the daemon
 *   unreachable, the run's connection to it gone, an answer that does not come), every tunnel that
 *   carries it is closed: a revocation may be going unseen. New requests ask the vault each time and
 *   are refused (503) while it cannot answer; once it answers again they go as before.
 */
import type { OutgoingHttpHeaders } from "node:http";
import { isVaultError, VaultError } from "../base/errors.js";
import { leaseState } from "../base/lease-state.js";
import type { LeaseRecord } from "../base/types.js";
import { listAllLeases } from "../backend/all-leases.js";
import type { BackendApi } from "../backend/backend.js";
import type { SecretBytes } from "../crypto/secret-bytes.js";
import type { Params } from "../protocol/registry.js";
import { matchDomain, parseDomainPattern, type DomainPattern } from "../vault/domain.js";
import { matchPathPrefixes, requestBoundsReason } from "../vault/http-path.js";
import { refusalForAgent } from "../vault/policy.js";
import { checkTarget } from "../vault/target.js";
import { extractField } from "../vault/json-field.js";
import { steadyClock } from "../vault/clock.js";
import type { Egress, EgressDecision, Prepared, ProxiedRequest, RequestOutcome, TunnelHandle } from "./egress.js";
import { TripwireMarks } from "./body-tripwire.js";
import { ProxyRefusal } from "./refusal.js";
import { encodedBody, encodedBodyRefusal, ENCODED_BODY_REASON } from "./request-body.js";
import { overrideRefusal, pathRefusal, queryMethodRefusal, withCanonicalPath, type BoundsRefusal } from "./request-bounds.js";
import { ScrubPatterns } from "./scrub.js";
import { base64Cores, encodedForms, maskPatterns } from "./encoded-forms.js";
import { textFitError, utf8OrNull, type ValueFit } from "../base/value-fit.js";

/** How a credential is added (the `[[proxy.inject]]` rule of its secret; src/config/proxy-config.ts). */
export type InjectionRule =
  | {
      mode: "placeholder";
      /** Also replace the placeholder in request bodies. */
      body?: boolean;
      /** Also replace the placeholder in WebSocket client frames. */
      websocket?: boolean;
    }
  | { mode: "bearer" }
  | { mode: "basic"; username: string }
  | { mode: "header"; header: string }
  | { mode: "query"; param: string };

/**
 * The injection rule for `secret` (`scope/name`) from the `[[proxy.inject]]` entries of lessor.toml
 * (given by shape: this layer does not read the configuration), else placeholder swapping.
 */
export function injectionRuleFor(
  rules: readonly { secret: string; mode: string; header?: string; param?: string; username?: string; body?: boolean; websocket?: boolean }[],
  secret: string,
): InjectionRule {
  const r = rules.find((x) => x.secret === secret);
  if (!r || r.mode === "placeholder") return { mode: "placeholder", ...(r?.body ? { body: true } : {}), ...(r?.websocket ? { websocket: true } : {}) };
  if (r.mode === "bearer") return { mode: "bearer" };
  if (r.mode === "basic") return { mode: "basic", username: r.username ?? "" };
  if (r.mode === "header") return { mode: "header", header: r.header! };
  return { mode: "query", param: r.param! };
}

/** One credential the run lends through the proxy. */
export interface ProxyCredential {
  lease: LeaseRecord;
  /** `scope/name`, for messages. */
  secret: string;
  /** What the agent holds instead of the value. */
  placeholder: string;
  /** The value as text (held by lessor, outside the sandbox: scrubbing and the tripwire need it). */
  value: string;
  rule: InjectionRule;
  /**
   * The field of the secret's JSON value this credential is, when not all of it (a reference's
   * `secret#field`): sent with each use, so that the vault refuses a value without that field, or
   * whose field cannot go where the rule puts it, before it counts the use; then picked out of the
   * value each request reads, so the upstream gets that field and never the rest of the secret.
   */
  field?: string;
}

/** Options of {@link LeaseEgress}. */
export interface LeaseEgressOptions {
  api: BackendApi;
  agent: string;
  credentials: ProxyCredential[];
  egress: "strict" | "open";
  /**
   * Period of the lease watch, ms (default 50). A lease's tunnels close once it has gone unconfirmed
   * for {@link UNCONFIRMED_MS}, or for four periods when those are longer.
   */
  watchMs?: number;
  /** Hears alarms (a tripwire fired) and failures to audit, one line each, never a credential. */
  warn?(line: string): void;
  /**
   * Hears that a credential's value changed under the run (rotated: the vault's current value is what
   * is injected), so that a holder of the old one (lessor mcp's last guard) masks the new one too.
   */
  onValue?(leaseId: string, value: string): void;
}

/** Values of one credential masked at once: the current one and the last few before a rotation. */
const KEPT_VALUES = 4;

interface Held extends ProxyCredential {
  patterns: DomainPattern[];
  /** The values this run has seen for it, oldest first (the current one last; at most {@link KEPT_VALUES}). */
  values: string[];
  /**
   * What the tripwire looks for in a request's texts, each also percent-decoded: the placeholder, the
   * value (8 bytes or more), and their base64 and base64url forms at each alignment ({@link base64Cores}).
   */
  marks: string[];
  /** The placeholder and value (8 bytes or more) in lower case, as header names arrive. */
  nameMarks: string[];
  /**
   * What the body tripwire looks for: the placeholder and value (8 bytes or more), their
   * {@link encodedForms}, and every byte of them percent-encoded (upper and lower case hex).
   */
  bodyMarks: string[];
  /** Why new requests may not use it (revoked, expired, used up), or null while it is live. */
  dead: string | null;
  /** True once its tunnels must end too (revoked, expired, gone): one added later is refused. */
  over: boolean;
  /** The watch tick at which the vault last said the lease is in force (the asking tick: see {@link UNCONFIRMED_MS}). */
  confirmed: number;
  tunnels: Set<TunnelHandle>;
}

/**
 * How long, ms, an open tunnel (a WebSocket, a streaming body) may carry a credential without the
 * vault confirming its lease: live, or used up but neither revoked nor expired. The watch asks every
 * period; when none of its answers has confirmed the lease for this long (the vault unreachable, the
 * daemon gone, a question unanswered), the tunnels that carry the credential are closed, since a
 * revocation may be going unseen. Counted in watch ticks (this over the period), so a pause of the
 * whole process (which moves no bytes either) is not mistaken for the vault's silence. Short enough
 * that a stream outlives a revocation it cannot hear of by half a second at most, long enough for
 * several polls to fail or be slow before an open stream is cut.
 */
export const UNCONFIRMED_MS = 500;

/** What record_proxy_requests takes for one request. */
type ProxyReport = Params<"record_proxy_requests">["reports"][number];

/** Reports per audit commit, and how long a report may wait for others. */
const MAX_BATCH = 128;
const BATCH_MS = 50;
/**
 * A report the vault could not take (`unavailable`: its database cut off, restarting, a commit whose
 * outcome is unknown) is sent again after this, the wait doubling up to {@link REPORT_RETRY_MAX_MS}.
 */
const REPORT_RETRY_MS = 250;
const REPORT_RETRY_MAX_MS = 5000;
/** Batches of ordinary reports waiting to be sent again, at most (a tripwire's report always is): bounds memory while the vault is away. */
const MAX_RETRYING = 64;

/** Headers a rule or a placeholder may never be put in: they frame the message or belong to the proxy. */
const FRAMING = new Set(["host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive", "proxy-authorization"]);
/** Why a lease is dead, from the vault's error codes. */
const ENDED = new Set(["lease_revoked", "lease_expired", "lease_exhausted", "lease_not_found"]);

/** The run's egress policy; `close` stops the watch and waits for the audit reports in flight. */
export class LeaseEgress implements Egress {
  readonly #o: LeaseEgressOptions;
  readonly #held: Held[];
  /** The response scrubber's patterns: rebuilt when a value changes (a rotation mid-run). */
  #scrub: ScrubPatterns | undefined;
  readonly #reports = new Set<Promise<unknown>>();
  readonly #queue: ProxyReport[] = [];
  /** The body tripwire's marks, by the set of credentials whose leases do not cover a host (./body-tripwire.ts). */
  readonly #awayMarks = new Map<string, TripwireMarks<Held> | null>();
  #batchTimer: NodeJS.Timeout | null = null;
  #timer: NodeJS.Timeout | null = null;
  /** The tick the poll in flight was asked at, or null: one at a time, unless it hangs (see #poll). */
  #polling: number | null = null;
  /** The clock the watch judges expiry by: this process's, never going back (src/vault/clock.ts). */
  readonly #clock: () => number;
  /** Watch ticks so far; a lease unconfirmed for more than {@link #patience} of them has its tunnels closed. */
  #tick = 0;
  #patience = 0;
  /** Set by {@link close}: reports waiting to be sent again get one last attempt now. */
  #closing = false;
  /** Wakes the reports waiting to be sent again (at close). */
  readonly #wakers = new Set<() => void>();
  /** Batches of reports waiting to be sent again. */
  #retrying = 0;
  /**
   * Answers on their way (relaying, streaming), by tunnel: each is scrubbed with the patterns in force
   * when its request was prepared, so a rotation closes the tunnels that have any (see #prepare).
   */
  readonly #answering = new Map<TunnelHandle, number>();

  constructor(o: LeaseEgressOptions) {
    this.#o = o;
    this.#held = o.credentials.map((c) => {
      const h: Held = { ...c, patterns: c.lease.domains.map((d) => parseDomainPattern(d)), values: c.value.length > 0 ? [c.value] : [], marks: [], nameMarks: [], bodyMarks: [], dead: null, over: false, confirmed: 0, tunnels: new Set() };
      markAll(h);
      return h;
    });
    this.#scrub = this.#scrubPatterns();
    // The vault's time has reached every lease's issue time: a process started after the wall clock
    // stepped back (the daemon's steady clock did not) starts there, as the vault's clock does.
    const issued = o.credentials.reduce<number | null>((m, c) => (m === null || c.lease.issuedAt > m ? c.lease.issuedAt : m), null);
    this.#clock = steadyClock(() => Date.now(), issued);
  }

  /**
   * Each value as it is, and in the encoded forms an upstream may echo it in (the base64 of a Basic
   * pair, a percent-encoded query parameter in a Location, a JSON-escaped string), each replaced by the
   * same form of its placeholder; every value a credential had this run, so an echo of the value
   * injected before a rotation is masked too.
   */
  #scrubPatterns(): ScrubPatterns | undefined {
    return maskPatterns(this.#held.flatMap((h) => h.values.map((value) => ({ value, placeholder: h.placeholder })))) ?? undefined;
  }

  /**
   * `h`'s value is now `value` (the vault's, read for this request: a rotation under the run). Throws
   * VaultError("value_too_large") when the answers could not be masked of it (the scrubber's table
   * cannot hold it with the others, src/proxy/scrub.ts): then nothing changes, so the value is never
   * injected, and every request that would carry it asks again and is refused the same way.
   */
  #rotated(h: Held, value: string): void {
    const before = h.values;
    h.values = [...before.filter((v) => v !== value), value].slice(-KEPT_VALUES);
    let scrub: ScrubPatterns | undefined;
    try {
      scrub = this.#scrubPatterns();
    } catch (e) {
      h.values = before;
      throw e;
    }
    h.value = value;
    markAll(h);
    this.#awayMarks.clear();
    this.#scrub = scrub;
    this.#o.onValue?.(h.lease.id, value);
  }

  /**
   * Starts watching the leases (revocation anywhere, expiry) so that their tunnels close at once, and
   * closing the tunnels of a lease the vault has not confirmed for {@link UNCONFIRMED_MS}.
   */
  start(): void {
    if (this.#timer || this.#held.length === 0) return;
    const period = this.#o.watchMs ?? 50;
    this.#patience = Math.max(4, Math.ceil(UNCONFIRMED_MS / period));
    this.#timer = setInterval(() => {
      this.#tick++;
      this.#unconfirmed();
      void this.#poll();
    }, period);
    this.#timer.unref();
  }

  /**
   * Stops the watch, sends the queued audit reports and waits for every report on its way (one the
   * vault could not take gets one last attempt now).
   */
  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    this.#closing = true;
    for (const wake of this.#wakers) wake();
    void this.#flush();
    await Promise.allSettled([...this.#reports]);
  }

  decide(host: string, port: number): EgressDecision {
    if (this.#held.some((h) => covers(h, host))) return { kind: "intercept", prepare: (req, t) => this.#prepare(req, t) };
    if (this.#o.egress === "open") return { kind: "tunnel" };
    return {
      kind: "refuse",
      refusal: new ProxyRefusal(
        { reason: "not_granted", host, port },
        `no lease of agent "${this.#o.agent}" in this run covers ${host}; ask the operator for a grant whose domains include it (lessor policy explain), or set [proxy] egress = "open" to let uncovered hosts through untouched`,
      ),
    };
  }

  async #prepare(req: ProxiedRequest, tunnel: TunnelHandle): Promise<Prepared> {
    const carried = this.#carried(req);
    // Tripwire first: a credential on its way to a host its lease does not cover, as it is or hidden
    // (percent-encoded, base64, in a header name).
    let seen: SeenTexts | undefined; // read once per request, and only when some credential is astray of this host
    const astray = this.#held.filter((h) => !covers(h, req.host) && (carried.includes(h) || hides((seen ??= seenTexts(req)), h)));
    if (astray.length > 0) return this.#tripwire(req, astray);

    // A body or frames still to come may carry a placeholder the headers do not: see the module comment.
    const inBody = (h: Held): boolean => h.rule.mode === "placeholder" && h.rule.body === true && req.hasBody !== false;
    const inFrames = (h: Held): boolean => h.rule.mode === "placeholder" && h.rule.websocket === true && req.upgrade === "websocket";
    const using = this.#held.filter((h) => covers(h, req.host) && (h.rule.mode !== "placeholder" || carried.includes(h) || inBody(h) || inFrames(h)));
    for (const h of using)
      if (h.dead !== null) return this.#refuse(req, using, 403, "lease_ended", `the lease for ${h.secret} has ended (${h.dead}); lessor run no longer adds this credential`);

    // A placeholder is replaced in headers (and bodies or frames when the rule says so), never in the
    // URL: one there would go upstream as it is, a use spent for a request bound to fail. Say what to
    // do instead, before any use.
    const inUrl = this.#held.filter((h) => h.rule.mode === "placeholder" && covers(h, req.host) && req.target.includes(h.placeholder));
    if (inUrl.length > 0)
      return this.#refuse(
        req,
        inUrl,
        403,
        "invalid_request",
        `the placeholder of ${inUrl[0]!.secret} is in the URL, where lessor does not replace it (only in headers); send it in a header (Authorization: Bearer <placeholder>), or have the operator add a [[proxy.inject]] rule with mode = "query" for a credential that goes in a query parameter`,
      );
    // Nor one with a credential of the run in the URL in any form (a value the agent should never have
    // held, a placeholder encoded): it would go upstream as it is, and a refusal by the vault would
    // quote the path into the trail.
    const marked = this.#held.filter((h) => covers(h, req.host) && holdsMarkOf(h, req.target));
    if (marked.length > 0)
      return this.#refuse(
        req,
        marked,
        403,
        "invalid_request",
        `the URL holds a credential of this run (${marked[0]!.secret}, its value or placeholder, as it is or encoded); lessor sends no request that carries one in the URL: send the placeholder in a header (Authorization: Bearer <placeholder>), or have the operator add a [[proxy.inject]] rule with mode = "query" for a credential that goes in a query parameter`,
      );

    const path = req.target.split("?")[0]!;
    // A lease that restricts methods or paths: the request's method and path must be ones it allows
    // (refused as the vault would refuse them: with two credentials, the vault's refusal of the second
    // would come after the first's use was counted), and the request must not name another method or
    // path some other way (./request-bounds.ts). Checked before any use, so such a refusal costs none.
    for (const h of using) {
      const { methods, paths } = h.lease;
      if (methods === null && paths === null) continue;
      const m = paths === null ? null : matchPathPrefixes(paths, req.target);
      const outside = requestBoundsReason(methods, paths, req.method, m, "this lease");
      if (outside !== null) return this.#refuse(req, using, 403, "access_denied", `${h.secret} may not be used for ${req.method} ${req.host}${path}: ${outside}`);
      const bad = outOfBounds(req, methods, paths !== null, m?.allowed ? m.path : null);
      if (bad) return this.#refuse(req, using, bad.status, bad.reason, `${h.secret} may not be used for ${req.method} ${req.host}${path}: ${bad.detail}`);
    }
    // A body the proxy would refuse for its Content-Encoding (./request-body.ts): decided from the head,
    // so refused before any use. (The proxy checks again before it sends, for any policy.)
    const coding = req.headers["content-encoding"];
    if (req.hasBody !== false && req.upgrade === undefined && encodedBody(coding) !== null) {
      const encoded = encodedBodyRefusal(coding, using.some(inBody), this.#marksAwayFrom(req.host) !== null);
      if (encoded !== null) return this.#refuse(req, using, 415, ENCODED_BODY_REASON, encoded);
    }
    // A target the vault would refuse for its shape (a control character in an HTTP/2 :path, a path
    // too long): the agent's request, refused as the vault would refuse it, before any use. So an
    // invalid_request of the access below is the vault's word on the value (the fit asked for).
    if (using.length > 0)
      try {
        checkTarget({ domain: req.host, method: req.method, path: req.target });
      } catch (e) {
        if (!isVaultError(e)) throw e;
        return this.#refuse(req, using, 403, e.code, `${using[0]!.secret} may not be used for ${req.method} ${req.host}${reportablePath(path)}: ${e.message}`);
      }
    const values = new Map<Held, string>();
    /** The canonical path the vault matched under a `paths` restriction: what goes upstream. */
    let canonical: string | null = null;
    for (const h of using) {
      try {
        const asked = this.#tick;
        // Where the value goes, so that the vault refuses one that cannot go there before it counts
        // the use (a use spent must be a request sent). For a credential that is one field of its
        // secret, the field too: the vault checks that it is there and fits.
        const field = h.field === undefined ? {} : { field: h.field };
        const got = await this.#o.api.accessSecret(h.lease.id, { domain: req.host, method: req.method, path: req.target, via: "proxy", fit: fitFor(h, req.headers), ...field });
        // The bounds the vault checked the use against (the rule in force may be narrower than the
        // lease): checked again here, as above, for the rule's.
        const bad = got.bounds ? outOfBounds(req, got.bounds.methods, got.bounds.path !== null, got.bounds.path) : null;
        if (bad) {
          got.value.wipe();
          return this.#refuse(req, using, bad.status, bad.reason, `${h.secret} may not be used for ${req.method} ${req.host}${path}: ${bad.detail}`);
        }
        if (got.bounds && got.bounds.path !== null) canonical = got.bounds.path;
        // The vault has just said the lease is in force: as good as the watch's word.
        h.confirmed = Math.max(h.confirmed, asked);
        // The value as the vault has it now (a rotation mid-run is picked up), as text for a header:
        // the field the credential stands for, when it stands for one, never the whole secret.
        let part: SecretBytes | undefined;
        let text: string | null = null;
        try {
          part = h.field === undefined ? got.value : extractField(got.value, h.field);
          text = utf8OrNull(part.expose());
        } finally {
          part?.wipe();
          got.value.wipe();
        }
        // Bytes that are not UTF-8 (a value rotated under the run to a binary one): no request can
        // carry them as they are. Said as what it is, not as a vault that could not be asked.
        if (text === null)
          return this.#refuse(req, using, 502, "invalid_request", `Bad gateway: the value of ${h.secret} is not UTF-8 text, so the proxy cannot add it to a request; the request was not sent`);
        // The field a credential stands for goes where its rule says: checked as the vault checks a whole value.
        const unfit = h.field === undefined ? null : textFitError(text, h.secret, fitFor(h, req.headers));
        if (unfit) return this.#refuse(req, using, 502, "invalid_request", `Bad gateway: ${unfit.message}; the request was not sent`);
        values.set(h, text);
      } catch (e) {
        const code = isVaultError(e) ? e.code : "internal";
        // The vault refused the value for where it was going (the fit asked above), before the use
        // counted: said as the bad gateway it is (the target's shape was checked before asking).
        if (code === "invalid_request") return this.#refuse(req, using, 502, code, `Bad gateway: ${refusalForAgent((e as Error).message)}; the request was not sent`);
        if (ENDED.has(code)) this.#end(h, code.replace("lease_", ""), code !== "lease_exhausted");
        const status = code === "unavailable" || code === "internal" ? 503 : 403;
        const why = isVaultError(e) ? refusalForAgent(e.message) : "the vault could not be asked";
        return this.#refuse(req, using, status, code, `${h.secret} may not be used for ${req.method} ${req.host}${path}: ${why}`);
      }
    }
    // Ended while its use was being granted (the watch saw a revocation meanwhile): its tunnels are
    // closed already, and this one would outlive them.
    const ended = [...values.keys()].find((h) => h.over);
    if (ended) return this.#refuse(req, using, 403, "lease_ended", `the lease for ${ended.secret} has ended (${ended.dead}); lessor run no longer adds this credential`);
    // A value other than the one held: the secret was rotated under the run. What is injected now must
    // be masked in the answer, and watched for by the tripwire, before the request goes.
    let rotated = false;
    for (const [h, value] of values)
      if (value !== h.value && value.length > 0)
        try {
          this.#rotated(h, value);
          rotated = true;
        } catch (e) {
          // A new value the answers could not be masked of: not sent, so that no echo of it reaches the agent.
          if (!isVaultError(e)) throw e;
          return this.#refuse(
            req,
            using,
            502,
            e.code,
            `Bad gateway: the value of ${h.secret} changed while this run goes on (a rotation), and the proxy could not mask the new one in answers (${e.message}); the request was not sent. Rotate it to a shorter value, or end the run and start it again with fewer credentials`,
          );
        }
    if (rotated) {
      // Answers already on their way are masked with the patterns of before, which miss the new value:
      // an upstream writing it into a stream opened earlier (an event feed, a long poll, a WebSocket)
      // would show it to the agent. Their connections are closed; idle ones go on, and their next
      // requests are masked anew. This request's own connection too, if it carries such an answer
      // (HTTP/2 streams, pipelined requests): then it is not sent.
      for (const [t, n] of this.#answering)
        if (n > 0) {
          t.close();
          this.#answering.delete(t);
        }
      if (tunnel.closed)
        return this.#refuse(
          req,
          using,
          503,
          "rotated",
          `a credential of this request was rotated while this connection carried an answer masked for its old value, so the connection was closed and the request was not sent; send it again on a new connection`,
        );
    }
    let headers: OutgoingHttpHeaders = { ...req.headers };
    // Under a `paths` restriction the upstream gets the path the vault matched, never the raw one.
    let target = canonical === null ? req.target : withCanonicalPath(req.target, canonical);
    try {
      for (const [h, value] of values) {
        headers = inject(headers, h, value);
        if (h.rule.mode === "query") target = withQueryParam(target, h.rule.param, value);
      }
    } catch (e) {
      // A value no header can carry (checkHeaderValue): refused, said and audited as a refusal, nothing
      // sent. The vault refuses such a value before counting the use (the fit asked for above); only a
      // credential that is one field of its secret gets here with its use counted.
      if (!isVaultError(e)) throw e;
      return this.#refuse(req, using, 502, e.code, `Bad gateway: ${e.message}; the request was not sent`);
    }
    for (const h of values.keys()) h.tunnels.add(tunnel);
    // Reverse patterns (placeholder → value) with the values just read, so a rotation is picked up here too.
    const reverse = (pick: (h: Held) => boolean): ScrubPatterns | undefined => {
      const pairs = [...values].filter(([h]) => pick(h)).map(([h, value]) => ({ value: h.placeholder, placeholder: value }));
      return pairs.length > 0 ? new ScrubPatterns(pairs) : undefined;
    };
    const requestBody = reverse(inBody);
    const frames = reverse(inFrames);
    const leaseIds = using.map((h) => h.lease.id);
    const away = req.hasBody !== false || req.upgrade === "websocket" ? this.#marksAwayFrom(req.host) : null;
    this.#answering.set(tunnel, (this.#answering.get(tunnel) ?? 0) + 1);
    let answered = false;
    return {
      kind: "forward",
      headers,
      target,
      ...(this.#scrub ? { scrub: this.#scrub } : {}),
      ...(requestBody ? { requestBody } : {}),
      ...(frames ? { frames } : {}),
      ...(away
        ? {
            bodyTripwire: {
              marks: away,
              trip: (owners: readonly unknown[]) => this.#trip(req, owners as Held[], req.upgrade === "websocket" ? "in a WebSocket frame" : "in the request body"),
              // Trailers are read as the head is (its names, its values percent-decoded and joined).
              fields: (fields: Readonly<Record<string, string | readonly string[] | undefined>>) => {
                const seen = seenFields("", fields);
                return this.#held.filter((h) => !covers(h, req.host) && hides(seen, h));
              },
            },
          }
        : {}),
      done: (o) => {
        if (!answered) {
          answered = true;
          const n = (this.#answering.get(tunnel) ?? 1) - 1;
          if (n > 0) this.#answering.set(tunnel, n);
          else this.#answering.delete(tunnel);
        }
        return this.#report(req, leaseIds, o, o.error ? "error" : "ok", o.error);
      },
    };
  }

  /** The credentials whose placeholder or real value appears in the request's target or headers. */
  #carried(req: ProxiedRequest): Held[] {
    const texts = [req.target];
    for (const [k, v] of Object.entries(req.headers)) {
      if (v === undefined) continue;
      for (const one of Array.isArray(v) ? v : [v]) {
        texts.push(one);
        if (k === "authorization") {
          const basic = decodeBasic(one);
          if (basic !== null) texts.push(basic);
        }
      }
    }
    return this.#held.filter((h) => texts.some((t) => t.includes(h.placeholder) || h.values.some((v) => v.length >= 8 && t.includes(v))));
  }

  async #tripwire(req: ProxiedRequest, astray: Held[]): Promise<Prepared> {
    return { kind: "refuse", status: 403, reason: "tripwire", detail: await this.#trip(req, astray, "") };
  }

  /**
   * The tripwire fired for `astray` (`where`: "" for the request head, else where in the request):
   * ends their leases (revoked by the vault on the alarm report) and closes their tunnels, and
   * resolves, once the revocation has landed, to the 403 detail for the agent.
   */
  async #trip(req: ProxiedRequest, astray: Held[], where: string): Promise<string> {
    const names = astray.map((h) => h.secret).join(", ") || "a credential";
    const place = where === "" ? "" : ` ${where}`;
    this.#o.warn?.(`lessor: ALARM: the agent sent the credential of ${names}${place} to ${req.host}, which its lease does not cover; the request was refused, the credential is no longer added and the lease is being revoked`);
    for (const h of astray) this.#end(h, "revoked by the tripwire");
    const reason = `the credential of ${names} was sent${place} to ${req.host}, which its grant does not cover`;
    const report = this.#report(req, astray.map((h) => h.lease.id), { status: 403, bytesIn: 0, bytesOut: 0, ms: 0 }, "tripwire", reason);
    // The revocation is part of the answer: wait for it, so the agent cannot retry before it lands.
    // (This run adds the credential no more either way: the lease is ended here.)
    const landed = (await report) === true;
    const sent = where === "" ? "The request was not sent" : "The request was stopped before that part of it went upstream";
    if (!landed)
      return `Forbidden: ${reason}. ${sent} and the credential is no longer added; the vault could not be reached to revoke the lease and audit the alarm, which are sent again until it answers.`;
    return `Forbidden: ${reason}. ${sent}, the lease is revoked and the event is audited as an alarm.`;
  }

  /** The body tripwire's marks for requests to `host`, or null when every credential covers it. */
  #marksAwayFrom(host: string): TripwireMarks<Held> | null {
    const away = this.#held.filter((h) => !covers(h, host));
    if (away.length === 0) return null;
    // Cached by which credentials are away, not by host: a run has few such sets, and many hosts.
    const key = away.map((h) => this.#held.indexOf(h)).join(",");
    let m = this.#awayMarks.get(key);
    if (m === undefined) {
      try {
        m = new TripwireMarks(away.map((h) => [h, h.bodyMarks] as const));
      } catch (e) {
        // Too many marks for one automaton (src/proxy/scrub.ts caps its table): the bodies of these
        // requests go unwatched, as before the body tripwire, and the run says so once per set.
        m = null;
        this.#o.warn?.(`lessor: the tripwire does not watch request bodies to ${host} and hosts like it: ${isVaultError(e) ? e.message : "its marks could not be compiled"}`);
      }
      if (this.#awayMarks.size >= 64) this.#awayMarks.clear();
      this.#awayMarks.set(key, m);
    }
    return m;
  }

  /**
   * A refusal (its `reason` code goes to the trail with the request's path as {@link #pathForTrail}
   * gives it). A `detail` that would repeat a credential's mark (a path with a value in it, quoted
   * back by a bounds check) is replaced by one that says why and repeats none of the request.
   */
  #refuse(req: ProxiedRequest, using: Held[], status: number, reason: string, detail: string): Prepared {
    const leaseIds = using.map((h) => h.lease.id);
    if (this.#holdsMark(detail))
      detail = `${req.method} ${req.host} was refused (${reason}); its URL holds a credential, so lessor repeats no part of it: credentials go in headers, never in a URL`;
    return { kind: "refuse", status, reason, detail, done: (o) => this.#report(req, leaseIds, o, "refused", reason) };
  }

  /** True when `text`, as it is or percent-decoded, holds a mark of any credential of this run. */
  #holdsMark(text: string): boolean {
    return this.#held.some((h) => holdsMarkOf(h, text));
  }

  /**
   * Queues the request's audit event. Events go to the vault in batches (one commit for up to
   * {@link MAX_BATCH} requests, at most {@link BATCH_MS} ms later), so a proxied request costs one
   * durable commit (its use), not two; a tripwire report goes at once, alone. Failures are said on
   * stderr, never thrown.
   */
  /**
   * The path of `target` as the trail (and a refusal's reason, which the trail keeps too) may hold
   * it: {@link WITHHELD_PATH} when it holds, as sent or percent-decoded, a mark of any credential of
   * this run (a value or its placeholder, plain or in base64: a tripwire's exfiltration attempt, or a
   * tool that puts a token in a path), else {@link reportablePath}'s form.
   */
  #pathForTrail(target: string): string {
    const path = target.split("?")[0]!;
    return this.#holdsMark(path) ? WITHHELD_PATH : reportablePath(path);
  }

  #report(req: ProxiedRequest, leaseIds: string[], o: RequestOutcome, outcome: "ok" | "refused" | "error" | "tripwire", reason?: string): Promise<unknown> {
    const report: ProxyReport = {
      agent: this.#o.agent,
      leaseIds,
      method: req.method,
      host: req.host,
      path: this.#pathForTrail(req.target),
      status: o.status,
      bytesOut: o.bytesOut,
      bytesIn: o.bytesIn,
      ms: Math.round(o.ms * 1000) / 1000,
      outcome,
      ...(reason !== undefined ? { reason: reason.slice(0, 300) } : {}),
    };
    if (outcome === "tripwire") return this.#send([report], true);
    this.#queue.push(report);
    if (this.#queue.length >= MAX_BATCH) return this.#flush();
    if (this.#batchTimer === null) {
      this.#batchTimer = setTimeout(() => void this.#flush(), BATCH_MS);
      this.#batchTimer.unref();
    }
    return Promise.resolve();
  }

  /** Sends every queued report (in batches of at most {@link MAX_BATCH}). */
  #flush(): Promise<unknown> {
    if (this.#batchTimer !== null) clearTimeout(this.#batchTimer);
    this.#batchTimer = null;
    const sent: Promise<unknown>[] = [];
    while (this.#queue.length > 0) sent.push(this.#send(this.#queue.splice(0, MAX_BATCH)));
    return Promise.all(sent);
  }

  /**
   * Sends `reports` in one record_proxy_requests; resolves to whether that first attempt landed. A
   * batch the vault could not take (`unavailable`: the daemon's database cut off or restarting, a
   * commit whose outcome is unknown) is sent again, with backoff, until it lands, is refused for
   * another reason, or the egress closes (then it gets one last attempt): a tripwire's alarm, and the
   * revocation that comes with it, must reach the vault once it is back, not be dropped with a line
   * on stderr. `alarm` (a tripwire's report) is always sent again; ordinary batches while fewer than
   * {@link MAX_RETRYING} wait. A batch sent again after a commit of unknown outcome may be recorded
   * twice (a revocation twice is one); none is lost while the run lasts.
   */
  #send(reports: ProxyReport[], alarm = false): Promise<boolean> {
    let first!: (landed: boolean) => void;
    const firstTry = new Promise<boolean>((r) => (first = r));
    const what = () => `${reports.length} proxied request(s) to ${[...new Set(reports.map((r) => r.host))].join(", ")}${alarm ? " (a tripwire's alarm and its lease's revocation)" : ""}`;
    const p = (async () => {
      let wait = REPORT_RETRY_MS;
      let waiting = false;
      try {
        for (let attempt = 1; ; attempt++) {
          try {
            await this.#o.api.api.record_proxy_requests({ reports });
            first(true);
            if (attempt > 1) this.#o.warn?.(`lessor: audited ${what()} at attempt ${attempt}`);
            return;
          } catch (e) {
            first(false);
            const why = isVaultError(e) ? e.message : "error";
            const again = isVaultError(e) && e.code === "unavailable" && !(this.#closing && attempt > 1) && (alarm || waiting || this.#retrying < MAX_RETRYING);
            if (!again) {
              this.#o.warn?.(`lessor: could not audit ${what()}: ${why}`);
              return;
            }
            if (attempt === 1) this.#o.warn?.(`lessor: could not audit ${what()} yet: ${why}; sending it again until the vault answers`);
            if (!waiting) {
              waiting = true;
              this.#retrying++;
            }
            await this.#pause(wait);
            wait = Math.min(wait * 2, REPORT_RETRY_MAX_MS);
          }
        }
      } finally {
        if (waiting) this.#retrying--;
      }
    })();
    this.#reports.add(p);
    void p.finally(() => this.#reports.delete(p));
    return firstTry;
  }

  /** Waits `ms`, or less when the egress closes (at once if it has). */
  #pause(ms: number): Promise<void> {
    if (this.#closing) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(t);
        this.#wakers.delete(done);
        resolve();
      };
      const t = setTimeout(done, ms);
      t.unref();
      this.#wakers.add(done);
    });
  }

  /** Marks a lease dead and (unless `close` is false: used up) ends it for its tunnels too, closing every one that used it. */
  #end(h: Held, why: string, close = true): void {
    if (h.dead === null) h.dead = why;
    if (!close) return;
    h.over = true;
    for (const t of h.tunnels) t.close();
    h.tunnels.clear();
  }

  /**
   * Fails closed: closes the tunnels of every lease no answer of the vault has confirmed for more than
   * {@link #patience} ticks (see {@link UNCONFIRMED_MS}). The lease is not marked dead: new requests
   * ask the vault themselves, and one it grants confirms the lease again.
   */
  #unconfirmed(): void {
    for (const t of this.#answering.keys()) if (t.closed) this.#answering.delete(t);
    for (const h of this.#held) {
      for (const t of h.tunnels) if (t.closed) h.tunnels.delete(t);
      if (h.tunnels.size === 0 || this.#tick - h.confirmed <= this.#patience) continue;
      this.#o.warn?.(`lessor: the vault has not confirmed the lease for ${h.secret} for ${UNCONFIRMED_MS} ms (unreachable?); its ${h.tunnels.size} open connection(s) carrying it were closed (each new request still asks the vault, and is refused while it cannot answer)`);
      for (const t of h.tunnels) t.close();
      h.tunnels.clear();
    }
  }

  async #poll(): Promise<void> {
    // One poll at a time; one left unanswered for half as long as a lease may go unconfirmed no longer
    // holds the next back (its late answer still counts, as of when it was asked), so that the watch
    // confirms again soon after the vault does answer.
    if (this.#polling !== null && this.#tick - this.#polling <= this.#patience / 2) return;
    const asked = this.#tick;
    this.#polling = asked;
    try {
      const now = this.#clock();
      for (const h of this.#held) {
        // Tunnels the client already closed need no closing: forget them (a long run opens many).
        for (const t of h.tunnels) if (t.closed) h.tunnels.delete(t);
        // Expired by this process's clock (steady: a wall clock stepped back does not keep a lease's
        // tunnels open past its expiry): over, used up or not.
        if (!h.over && h.lease.expiresAt <= now) this.#end(h, "expired");
      }
      const live = this.#held.filter((h) => h.dead === null);
      // Used up, but the requests that took its last uses still stream: watched until they end, so
      // that a revocation (the killswitch) or its expiry closes them.
      const spent = this.#held.filter((h) => h.dead !== null && !h.over && h.tunnels.size > 0);
      const checks = spent.map((h) => this.#check(h, asked));
      if (live.length > 0)
        checks.push(
          (async () => {
            const rows = await listAllLeases(this.#o.api, { agent: this.#o.agent, live: true });
            const alive = new Set(rows.map((l) => l.id));
            // Not live: revoked, expired or used up (the live list leaves all of them out): asked one by one.
            const gone: Promise<void>[] = [];
            for (const h of live) {
              if (alive.has(h.lease.id)) h.confirmed = Math.max(h.confirmed, asked);
              else gone.push(this.#check(h, asked, true));
            }
            await Promise.all(gone);
          })(),
        );
      // A failure confirms nothing: the lease's tunnels close once it has gone unconfirmed too long (#unconfirmed).
      await Promise.allSettled(checks);
    } finally {
      if (this.#polling === asked) this.#polling = null;
    }
  }

  /**
   * Reads `h`'s lease (asked at tick `asked`) and follows it: used up (neither revoked nor expired)
   * keeps the tunnels that took its uses; revoked, expired or not found closes them.
   */
  async #check(h: Held, asked: number, notLive = false): Promise<void> {
    const rows = await this.#o.api.listLeases({ agent: this.#o.agent, id: h.lease.id });
    const l = rows.find((r) => r.id === h.lease.id);
    let state = l === undefined ? "gone" : leaseState(l, this.#clock());
    // The vault left it out of its live list, and it is neither revoked nor used up: the vault's clock
    // is past its expiry, whatever this process's clock (floored at issue times only) says.
    if (notLive && state === "live") state = "expired";
    if (state === "live" || state === "exhausted") h.confirmed = Math.max(h.confirmed, asked);
    if (state === "exhausted") this.#end(h, "used up", false);
    else if (state !== "live") this.#end(h, state === "gone" ? "revoked" : state);
  }
}

/** What the trail holds for a request path that carried a credential's mark: the rest of the path could hold part of it. */
export const WITHHELD_PATH = "/(path-withheld:it-held-a-credential)";

/**
 * The path of `target` as the trail may hold it: every character but visible ASCII percent-encoded
 * (one byte each, as Node's parsers give them, latin1). An HTTP/2 `:path` may carry a C1 control
 * (U+009B): the vault refuses such text, and one report it refuses loses the whole batch, the
 * tripwire's alarm (and its revocation) with it.
 */
function reportablePath(target: string): string {
  const path = target.split("?")[0]!.replace(/[^\x21-\x7e]/g, (c) => {
    const code = c.charCodeAt(0);
    const bytes = code <= 0xff ? [code] : [...Buffer.from(c, "utf8")];
    return bytes.map((b) => `%${b.toString(16).toUpperCase().padStart(2, "0")}`).join("");
  });
  return path.slice(0, 8192) || "/";
}

/** True when one of the lease's domain patterns covers `host`. */
function covers(h: Held, host: string): boolean {
  return h.patterns.some((p) => matchDomain(p, host));
}

/** The `user:password` text of a Basic Authorization value, or null. */
function decodeBasic(v: string): string | null {
  const m = /^basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(v);
  return m ? Buffer.from(m[1]!, "base64").toString("utf8") : null;
}

/**
 * A credential may go in a header only if it is one line of printable ASCII, as it is or, `inBase64`,
 * inside a Basic pair (src/base/value-fit.ts says why).
 */
function checkHeaderValue(value: string, secret: string, inBase64 = false): void {
  const e = textFitError(value, secret, inBase64 ? "base64" : "header");
  if (e) throw e;
}

/**
 * Where `h`'s value is about to go in a request with `headers` ({@link inject}'s cases): "header" when
 * it goes in a header as it is, "base64" when only inside a Basic pair, else "text" (a query
 * parameter, a body, WebSocket frames).
 */
function fitFor(h: Held, headers: OutgoingHttpHeaders): ValueFit {
  const r = h.rule;
  if (r.mode === "bearer" || r.mode === "header") return "header";
  if (r.mode === "basic") return "base64";
  if (r.mode === "query") return "text";
  let fit: ValueFit = "text";
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined || FRAMING.has(k)) continue;
    for (const s of Array.isArray(v) ? v : typeof v === "string" ? [v] : []) {
      const pair = k === "authorization" ? decodeBasic(s) : null;
      if (pair !== null && pair.includes(h.placeholder)) fit = "base64";
      else if (s.includes(h.placeholder)) return "header";
    }
  }
  return fit;
}

/** The headers with `h`'s credential added as its rule says. */
function inject(headers: OutgoingHttpHeaders, h: Held, value: string): OutgoingHttpHeaders {
  const r = h.rule;
  if (r.mode === "query") return headers;
  if (r.mode !== "placeholder") checkHeaderValue(value, h.secret, r.mode === "basic");
  if (r.mode === "bearer") return { ...headers, authorization: `Bearer ${value}` };
  if (r.mode === "basic") return { ...headers, authorization: `Basic ${Buffer.from(`${r.username}:${value}`, "utf8").toString("base64")}` };
  if (r.mode === "header") return { ...headers, [r.header]: value };
  // Placeholder: replaced wherever it appears in a header value, inside a Basic pair too. The value is
  // checked only when it goes in a header: a body-only credential may hold line breaks (a PEM key).
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(headers)) {
    if (v === undefined) continue;
    if (FRAMING.has(k)) {
      out[k] = v;
      continue;
    }
    const swap = (s: string): string => {
      if (k === "authorization") {
        const pair = decodeBasic(s);
        if (pair !== null && pair.includes(h.placeholder)) {
          checkHeaderValue(value, h.secret, true);
          return `Basic ${Buffer.from(pair.split(h.placeholder).join(value), "utf8").toString("base64")}`;
        }
      }
      if (!s.includes(h.placeholder)) return s;
      checkHeaderValue(value, h.secret);
      return s.split(h.placeholder).join(value);
    };
    out[k] = Array.isArray(v) ? v.map(swap) : typeof v === "string" ? swap(v) : v;
  }
  return out;
}

/** `target` with the query parameter `param` set to `value` (replacing any the agent sent). */
function withQueryParam(target: string, param: string, value: string): string {
  const q = target.indexOf("?");
  const path = q < 0 ? target : target.slice(0, q);
  const params = new URLSearchParams(q < 0 ? "" : target.slice(q + 1));
  params.set(param, value);
  return `${path}?${params.toString()}`;
}

/** Sets `h`'s tripwire marks from its placeholder and every value it has had this run (values under 8 bytes are not marks). */
function markAll(h: Held): void {
  const values = h.values.filter((v) => v.length >= 8);
  h.marks = [h.placeholder, ...base64Cores(h.placeholder), ...values.flatMap((v) => [v, ...base64Cores(v)])];
  h.nameMarks = [h.placeholder.toLowerCase(), ...values.map((v) => v.toLowerCase())];
  h.bodyMarks = [h.placeholder, ...values].flatMap((t) => [t, ...encodedForms(t, t).map((f) => f.value), ...everyBytePercent(t)]);
}

/**
 * Why `req` may not go with a credential bounded by `methods` (null: any) and a `paths` restriction
 * (`paths`; `canonical`: the canonical path it matched, null when it matched none, which the vault
 * refuses itself), or null.
 */
function outOfBounds(req: ProxiedRequest, methods: readonly string[] | null, paths: boolean, canonical: string | null): BoundsRefusal | null {
  return overrideRefusal(req.headers, methods, paths) ?? queryMethodRefusal(req.target, methods) ?? (canonical === null ? null : pathRefusal(req.target, canonical));
}

/** `text` with every byte percent-encoded, in upper and in lower case hex (what the head's percent-decoding catches). */
function everyBytePercent(text: string): string[] {
  const upper = [...Buffer.from(text, "utf8")].map((b) => "%" + b.toString(16).toUpperCase().padStart(2, "0")).join("");
  return [upper, upper.toLowerCase()];
}

/** A request's header names, and its target and header values each with their percent-decodings. */
interface SeenTexts {
  names: string[];
  texts: string[];
}

function seenTexts(req: ProxiedRequest): SeenTexts {
  return seenFields(req.target, req.headers);
}

/** {@link seenTexts} of a target (empty for HTTP/2 request trailers) and header fields. */
function seenFields(target: string, fields: Readonly<Record<string, string | readonly string[] | undefined>>): SeenTexts {
  const names = Object.keys(fields).map((k) => k.toLowerCase());
  const texts = percentDecodings(target);
  const values: string[] = [];
  for (const v of Object.values(fields)) if (v !== undefined) for (const one of typeof v === "string" ? [v] : v) values.push(String(one));
  for (const one of values) texts.push(...percentDecodings(one));
  // A mark split across headers, or between the target and a header (an upstream may join them):
  // the target and all values joined, in order, as well.
  if (values.length > 0) texts.push(...percentDecodings(target + values.join("")));
  return { names, texts };
}

/** True when a header name, or the target or a header value (as sent or percent-decoded), holds one of `h`'s marks. */
function hides(seen: SeenTexts, h: Held): boolean {
  return seen.names.some((k) => h.nameMarks.some((m) => k.includes(m))) || seen.texts.some((t) => h.marks.some((m) => t.includes(m)));
}

/** True when `text`, as it is or percent-decoded, holds one of `h`'s marks. */
function holdsMarkOf(h: Held, text: string): boolean {
  return percentDecodings(text).some((t) => h.marks.some((m) => t.includes(m)));
}

/** `text`, and it percent-decoded once, twice and three times (bytes as latin1), while that changes it. */
function percentDecodings(text: string): string[] {
  const out = [text];
  let t = text;
  for (let i = 0; i < 3 && t.includes("%"); i++) {
    const next = t.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
    if (next === t) break;
    out.push((t = next));
  }
  return out;
}
