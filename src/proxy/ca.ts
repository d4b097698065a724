/**
 * The local certificate authority of the injecting proxy. It is made for one session: a fresh ECDSA
 * P-256 key that lives only in this process (never written unless `keyFile` is set), a short-lived
 * self-signed certificate whose name constraints limit it to the hosts the grants cover (so even a
 * leaked CA cannot vouch for another host), and leaf certificates minted per host on demand and kept
 * in a bounded LRU cache as ready node:tls SecureContexts for the proxy's SNI callback.
 */
import { randomBytes, X509Certificate } from "node:crypto";
import { createSecureContext, type SecureContext, type TLSSocketOptions } from "node:tls";
import { VaultError } from "../base/errors.js";
import { quoteText } from "../base/text.js";
import { writeFileAtomic } from "../fs/atomic-file.js";
import { isPermitted, leafKey, parseLeafHost, parsePermittedName, type LeafHost, type PermittedName } from "./ca-names.js";
import { LruCache } from "./lru.js";
import {
  certificatePem,
  issuerOf,
  makeCaCertificate,
  makeLeafCertificate,
  newP256KeyPair,
  orgName,
  type Issuer,
} from "./x509.js";

/** The protocols the proxy's TLS side offers, in order of preference. */
export const ALPN_PROTOCOLS: readonly string[] = Object.freeze(["h2", "http/1.1"]);

/** Default CA lifetime: one day. */
export const DEFAULT_CA_LIFETIME_MS = 24 * 60 * 60 * 1000;
/** Default leaf lifetime: one hour (a leaf is re-minted after three quarters of it). */
export const DEFAULT_LEAF_LIFETIME_MS = 60 * 60 * 1000;
/** Default number of leaves kept. */
export const DEFAULT_MAX_LEAVES = 256;
/** How far notBefore is set in the past, so a client whose clock is a little behind still accepts. */
const BACKDATE_MS = 60 * 1000;

/** Settings for {@link LocalCa.create}. */
export interface LocalCaOptions {
  /**
   * Hosts the CA may vouch for: exact hosts (`api.github.com`), `*.suffix` (any host strictly below),
   * or IP literals. Written into the CA certificate as name constraints and checked before minting.
   */
  permitted: readonly string[];
  /** How long the CA certificate is valid, in ms (default 24 h). */
  lifetimeMs?: number;
  /** How long each leaf is valid, in ms (default 1 h; never past the CA's own expiry). */
  leafLifetimeMs?: number;
  /** How many leaves (with their SecureContexts) are cached (default 256). */
  maxLeaves?: number;
  /**
   * If set, the CA private key is also written here as PKCS#8 PEM, mode 0600, atomically. Unset (the
   * default), the key exists only in this process's memory.
   */
  keyFile?: string;
  /** The clock, in ms since the epoch (tests only). */
  now?: () => number;
}

/** A leaf certificate the CA issued, with the TLS context that serves it. */
export interface IssuedLeaf {
  /** The host the leaf names (canonical form). */
  readonly host: string;
  /** The leaf certificate in PEM. */
  readonly certPem: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** A node:tls context holding the leaf and its private key. */
  readonly context: SecureContext;
}

interface CachedLeaf extends IssuedLeaf {
  /** When the cache stops handing this leaf out and mints a new one (ms). */
  readonly renewAt: number;
}

function positiveMs(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < 1000)
    throw new VaultError("invalid_request", `${name} must be a whole number of milliseconds, at least 1000 (got ${String(v)})`);
  return v;
}

/** A certificate authority that lives for one proxy session. Make one with {@link LocalCa.create}. */
export class LocalCa {
  /** The CA certificate in PEM: what the child trusts (NODE_EXTRA_CA_CERTS, SSL_CERT_FILE, ...). */
  readonly certPem: string;
  /** The CA certificate's validity. */
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** The permitted hosts, canonical, as written into the name constraints. */
  readonly permitted: readonly string[];

  readonly #issuer: Issuer; // holds the private key: kept in a private field, never exported
  readonly #names: readonly PermittedName[];
  readonly #leaves: LruCache<string, CachedLeaf>;
  readonly #leafLifetimeMs: number;
  readonly #now: () => number;

  private constructor(init: {
    certPem: string;
    notBefore: Date;
    notAfter: Date;
    issuer: Issuer;
    names: readonly PermittedName[];
    maxLeaves: number;
    leafLifetimeMs: number;
    now: () => number;
  }) {
    this.certPem = init.certPem;
    this.notBefore = init.notBefore;
    this.notAfter = init.notAfter;
    this.#issuer = init.issuer;
    this.#names = init.names;
    this.permitted = Object.freeze(init.names.map((n) => (n.kind === "dns" ? n.name : n.kind === "below" ? `*.${n.suffix}` : n.ip)));
    this.#leaves = new LruCache(init.maxLeaves);
    this.#leafLifetimeMs = init.leafLifetimeMs;
    this.#now = init.now;
  }

  /**
   * Makes a new CA: a fresh key pair and a self-signed certificate valid from now (less a minute of
   * clock slack) for `lifetimeMs`. Throws VaultError("invalid_request") for a bad host or setting.
   */
  static create(opts: LocalCaOptions): LocalCa {
    const now = opts.now ?? Date.now;
    const lifetimeMs = positiveMs("lifetimeMs", opts.lifetimeMs, DEFAULT_CA_LIFETIME_MS);
    const leafLifetimeMs = positiveMs("leafLifetimeMs", opts.leafLifetimeMs, DEFAULT_LEAF_LIFETIME_MS);
    const maxLeaves = opts.maxLeaves ?? DEFAULT_MAX_LEAVES;
    if (!Number.isSafeInteger(maxLeaves) || maxLeaves < 1)
      throw new VaultError("invalid_request", `maxLeaves must be a positive whole number (got ${String(maxLeaves)})`);
    if (!Array.isArray(opts.permitted)) throw new VaultError("invalid_request", "permitted must be a list of hosts");
    const names = opts.permitted.map(parsePermittedName);

    const keys = newP256KeyPair();
    const t = now();
    const notBefore = new Date(t - BACKDATE_MS);
    const notAfter = new Date(t + lifetimeMs);
    // A random id in the name tells one session's CA from another's in a trust store or a log.
    const subject = orgName(`lessor session CA ${randomBytes(6).toString("hex")}`);
    const der = makeCaCertificate({ keys, subject, notBefore, notAfter, permitted: names });
    const cert = new X509Certificate(der);
    if (opts.keyFile !== undefined) {
      writeFileAtomic(opts.keyFile, keys.privateKey.export({ type: "pkcs8", format: "pem" }), 0o600);
    }
    return new LocalCa({
      certPem: certificatePem(der),
      // X.509 keeps whole seconds: report what the certificate says.
      notBefore: new Date(cert.validFrom),
      notAfter: new Date(cert.validTo),
      issuer: issuerOf(keys, subject),
      names,
      maxLeaves,
      leafLifetimeMs,
      now,
    });
  }

  /**
   * The leaf for `host` (a DNS name or an IP literal), minted on first use and cached until three
   * quarters of its life have passed. Throws VaultError("access_denied") for a host the CA was not
   * made for, VaultError("invalid_request") for something that is not a host, and
   * VaultError("unavailable") once the CA itself has expired.
   */
  leafFor(host: string): IssuedLeaf {
    const h = parseLeafHost(host);
    const key = leafKey(h);
    const t = this.#now();
    const hit = this.#leaves.get(key);
    if (hit !== undefined && t < hit.renewAt) return hit;
    if (!isPermitted(this.#names, h))
      throw new VaultError(
        "access_denied",
        `host ${quoteText(key)} is not one this proxy session's CA may certify (it covers: ${this.permitted.join(", ") || "no host"})`,
      );
    const leaf = this.#mint(h, t);
    this.#leaves.set(key, leaf);
    return leaf;
  }

  /** The cached node:tls SecureContext serving `host`'s leaf (see {@link leafFor} for the errors). */
  secureContextFor(host: string): SecureContext {
    return this.leafFor(host).context;
  }

  /**
   * An SNI callback for a TLS server (`SNICallback`): answers with the context for the server name the
   * client sent, or fails the handshake if the CA may not certify it.
   */
  readonly sniCallback = (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void => {
    let ctx: SecureContext;
    try {
      ctx = this.secureContextFor(servername);
    } catch (e) {
      cb(e as Error);
      return;
    }
    cb(null, ctx);
  };

  /**
   * Options for `new tls.TLSSocket(socket, …)` on a tunnel the proxy terminates: the context for the
   * CONNECT host (used when the client sends no SNI, as for IP literals), the SNI callback, and ALPN
   * offering h2 and http/1.1 (read `socket.alpnProtocol` after the handshake to pick the handler).
   */
  tlsSocketOptions(connectHost: string): TLSSocketOptions {
    return {
      isServer: true,
      secureContext: this.secureContextFor(connectHost),
      SNICallback: this.sniCallback,
      ALPNProtocols: [...ALPN_PROTOCOLS],
    };
  }

  /** How many leaves are cached now. */
  get cachedLeaves(): number {
    return this.#leaves.size;
  }

  #mint(h: LeafHost, t: number): CachedLeaf {
    const caEnd = this.notAfter.getTime();
    if (t >= caEnd)
      throw new VaultError(
        "unavailable",
        `the proxy session's CA expired at ${this.notAfter.toISOString()}; start a new session (or give the CA a longer lifetime)`,
      );
    const keys = newP256KeyPair();
    const notBefore = new Date(Math.max(t - BACKDATE_MS, this.notBefore.getTime()));
    const notAfter = new Date(Math.min(t + this.#leafLifetimeMs, caEnd));
    const der = makeLeafCertificate(this.#issuer, { host: h, publicKey: keys.publicKey, notBefore, notAfter });
    const certPem = certificatePem(der);
    const context = createSecureContext({
      cert: certPem,
      // The leaf key goes straight into OpenSSL; node:tls takes PEM, not a KeyObject.
      key: keys.privateKey.export({ type: "pkcs8", format: "pem" }),
      minVersion: "TLSv1.2",
    });
    const start = Math.floor(notBefore.getTime() / 1000) * 1000;
    const end = Math.floor(notAfter.getTime() / 1000) * 1000;
    return Object.freeze({
      host: leafKey(h),
      certPem,
      notBefore: new Date(start),
      notAfter: new Date(end),
      context,
      renewAt: t + (end - t) * 0.75,
    });
  }
}
