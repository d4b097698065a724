/**
 * Builds the two kinds of X.509 certificate the local CA needs: its own self-signed certificate and a
 * leaf per host. Node 20's node:crypto can sign and parse certificates but not build them, so the
 * ASN.1 structures come from @peculiar/asn1-x509 (typed RFC 5280 schemas, no global state), the three
 * outer SEQUENCEs are put together here, and the signature comes from node:crypto (ECDSA P-256 with
 * SHA-256, DER-encoded as X.509 wants). OpenSSL's verifier checks the result in the tests.
 */
import { createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from "node:crypto";
import { AsnConvert, OctetString } from "@peculiar/asn1-schema";
import * as x from "@peculiar/asn1-x509";
import type { LeafHost, PermittedName } from "./ca-names.js";

const ECDSA_WITH_SHA256 = "1.2.840.10045.4.3.2";
const OID_CN = "2.5.4.3";
const OID_O = "2.5.4.10";

/** An ECDSA P-256 key pair held as node:crypto KeyObjects (in memory, never written by this module). */
export interface P256KeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

/** Makes a fresh ECDSA P-256 key pair. */
export function newP256KeyPair(): P256KeyPair {
  return generateKeyPairSync("ec", { namedCurve: "P-256" });
}

/** A distinguished name `O=lessor, CN=<cn>`. */
export function orgName(cn: string): x.Name {
  const rdn = (type: string, v: string) =>
    new x.RelativeDistinguishedName([new x.AttributeTypeAndValue({ type, value: new x.AttributeValue({ utf8String: v }) })]);
  return new x.Name([rdn(OID_O, "lessor"), rdn(OID_CN, cn)]);
}

/** SPKI DER of a P-256 public key: a fixed 26-byte header, then the uncompressed point 0x04 || x || y. */
const P256_SPKI_LENGTH = 91;

function p256Spki(publicKey: KeyObject): Buffer {
  const spki = publicKey.export({ type: "spki", format: "der" });
  if (spki.length !== P256_SPKI_LENGTH || spki[26] !== 0x04) throw new Error("not an uncompressed P-256 public key");
  return spki;
}

/**
 * Key identifier: the first 160 bits of SHA-256 over the subjectPublicKey bits, i.e. the EC point
 * (RFC 7093, method 1). Takes the SPKI DER so one export serves both the certificate and the id.
 */
function keyIdOfSpki(spki: Buffer): ArrayBuffer {
  return bufferOf(createHash("sha256").update(spki.subarray(26)).digest().subarray(0, 20));
}

/** The key identifier of a P-256 public key (see keyIdOfSpki). */
export function keyIdentifier(publicKey: KeyObject): ArrayBuffer {
  return keyIdOfSpki(p256Spki(publicKey));
}

function bufferOf(b: Uint8Array): ArrayBuffer {
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}

/** A DER length prefix (definite form). */
function derLength(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** A DER TLV: `tag`, length, then the parts' bytes. */
function der(tag: number, ...parts: Uint8Array[]): Buffer {
  const content = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), derLength(content.length), content]);
}

/** DER of a schema object. */
function enc(value: unknown): Buffer {
  return Buffer.from(AsnConvert.serialize(value));
}

/** A random positive 128-bit serial number, minimally encoded (first byte 0x01..0x7f). */
function randomSerial(): Buffer {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f || 0x01;
  return b;
}

function ext(extnID: string, critical: boolean, value: unknown): x.Extension {
  return new x.Extension({ extnID, critical, extnValue: new OctetString(AsnConvert.serialize(value)) });
}

/** ecdsa-with-SHA256 with its parameters absent (RFC 5758). */
const SIGNATURE_ALGORITHM = enc(new x.AlgorithmIdentifier({ algorithm: ECDSA_WITH_SHA256 }));
/** [0] EXPLICIT Version v3. */
const VERSION_V3 = der(0xa0, der(0x02, Buffer.from([x.Version.v3])));

interface CertSpec {
  /** The issuer's name, already DER-encoded (a CA encodes its own once). */
  issuerDer: Buffer;
  subject: x.Name;
  notBefore: Date;
  notAfter: Date;
  /** The subject's public key as SPKI DER. */
  spki: Buffer;
  extensions: x.Extension[];
}

/**
 * Encodes the TBSCertificate, signs it with `signingKey` and returns the certificate's DER bytes. The
 * outer SEQUENCEs are assembled here from parts the schemas encode (names, validity, extensions) and
 * node:crypto's SPKI export, so the signed bytes are encoded once and the CA's name once per CA.
 */
function signCertificate(spec: CertSpec, signingKey: KeyObject): Buffer {
  const tbs = der(
    0x30,
    VERSION_V3,
    der(0x02, randomSerial()),
    SIGNATURE_ALGORITHM,
    spec.issuerDer,
    enc(new x.Validity({ notBefore: spec.notBefore, notAfter: spec.notAfter })),
    enc(spec.subject),
    spec.spki,
    der(0xa3, der(0x30, ...spec.extensions.map(enc))), // [3] EXPLICIT Extensions
  );
  const signature = sign("sha256", tbs, signingKey); // DER ECDSA-Sig-Value, as X.509 expects
  // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }
  return der(0x30, tbs, SIGNATURE_ALGORITHM, der(0x03, Buffer.from([0]), signature));
}

/** Name constraints for a CA that may only vouch for `permitted` (RFC 5280 §4.2.1.10). */
function nameConstraints(permitted: readonly PermittedName[]): x.NameConstraints {
  const allowed: x.GeneralSubtree[] = [];
  let dns = false;
  let ip = false;
  for (const p of permitted) {
    if (p.kind === "ip") {
      ip = true;
      allowed.push(new x.GeneralSubtree({ base: new x.GeneralName({ iPAddress: `${p.ip}/${p.version === 4 ? 32 : 128}` }) }));
    } else {
      dns = true;
      // A leading "." means "strictly below" to OpenSSL, Go and BoringSSL; a bare name also covers its subdomains.
      const dNSName = p.kind === "dns" ? p.name : `.${p.suffix}`;
      allowed.push(new x.GeneralSubtree({ base: new x.GeneralName({ dNSName }) }));
    }
  }
  // A name form with no permitted subtree would be unconstrained, so exclude that form entirely.
  const excluded: x.GeneralSubtree[] = [];
  if (!dns) excluded.push(new x.GeneralSubtree({ base: new x.GeneralName({ dNSName: "" }) }));
  if (!ip)
    for (const all of ["0.0.0.0/0", "::/0"]) excluded.push(new x.GeneralSubtree({ base: new x.GeneralName({ iPAddress: all }) }));
  return new x.NameConstraints({
    ...(allowed.length > 0 ? { permittedSubtrees: new x.GeneralSubtrees(allowed) } : {}),
    ...(excluded.length > 0 ? { excludedSubtrees: new x.GeneralSubtrees(excluded) } : {}),
  });
}

/** What a CA certificate states. */
export interface CaCertSpec {
  keys: P256KeyPair;
  subject: x.Name;
  notBefore: Date;
  notAfter: Date;
  /** Hosts the CA may vouch for, written as a critical name-constraints extension. */
  permitted: readonly PermittedName[];
}

/** Self-signed CA certificate: CA:true, pathlen 0, keyUsage keyCertSign, name constraints; DER. */
export function makeCaCertificate(spec: CaCertSpec): Buffer {
  const ku = new x.KeyUsage(x.KeyUsageFlags.keyCertSign);
  const spki = p256Spki(spec.keys.publicKey);
  return signCertificate(
    {
      issuerDer: enc(spec.subject),
      subject: spec.subject,
      notBefore: spec.notBefore,
      notAfter: spec.notAfter,
      spki,
      extensions: [
        ext(x.id_ce_basicConstraints, true, new x.BasicConstraints({ cA: true, pathLenConstraint: 0 })),
        ext(x.id_ce_keyUsage, true, ku),
        ext(x.id_ce_subjectKeyIdentifier, false, new x.SubjectKeyIdentifier(keyIdOfSpki(spki))),
        ext(x.id_ce_nameConstraints, true, nameConstraints(spec.permitted)),
      ],
    },
    spec.keys.privateKey,
  );
}

/** The issuing side of a leaf: the CA's encoded subject name, key identifier and private key. */
export interface Issuer {
  readonly subjectDer: Buffer;
  readonly keyId: ArrayBuffer;
  readonly privateKey: KeyObject;
}

/** The issuer for leaves signed by the CA with `keys` and `subject` (encoded once, reused per leaf). */
export function issuerOf(keys: P256KeyPair, subject: x.Name): Issuer {
  return { subjectDer: enc(subject), keyId: keyIdentifier(keys.publicKey), privateKey: keys.privateKey };
}

/** What a leaf certificate states. */
export interface LeafCertSpec {
  host: LeafHost;
  publicKey: KeyObject;
  notBefore: Date;
  notAfter: Date;
}

/**
 * A TLS server certificate for one host (DNS or IP subjectAltName), signed by `issuer`; DER. This does
 * not check the host against the CA's permitted list: {@link LocalCa} does, and the CA certificate's
 * name constraints make any other leaf fail verification.
 */
export function makeLeafCertificate(issuer: Issuer, spec: LeafCertSpec): Buffer {
  const h = spec.host;
  const san = h.kind === "dns" ? new x.GeneralName({ dNSName: h.name }) : new x.GeneralName({ iPAddress: h.ip });
  // Clients match the subjectAltName. For an IP leaf the CN is not host-like on purpose, so that
  // OpenSSL's name-constraint check of the CN (done when there is no DNS SAN) does not treat it as a DNS name.
  const cn = h.kind === "dns" ? h.name : `lessor proxy leaf for ${h.ip}`;
  const spki = p256Spki(spec.publicKey);
  return signCertificate(
    {
      issuerDer: issuer.subjectDer,
      subject: orgName(cn),
      notBefore: spec.notBefore,
      notAfter: spec.notAfter,
      spki,
      extensions: [
        ext(x.id_ce_basicConstraints, true, new x.BasicConstraints({ cA: false })),
        ext(x.id_ce_keyUsage, true, new x.KeyUsage(x.KeyUsageFlags.digitalSignature)),
        ext(x.id_ce_extKeyUsage, false, new x.ExtendedKeyUsage([x.id_kp_serverAuth])),
        ext(x.id_ce_subjectAltName, false, new x.SubjectAlternativeName([san])),
        ext(x.id_ce_subjectKeyIdentifier, false, new x.SubjectKeyIdentifier(keyIdOfSpki(spki))),
        ext(x.id_ce_authorityKeyIdentifier, false, new x.AuthorityKeyIdentifier({ keyIdentifier: new x.KeyIdentifier(issuer.keyId) })),
      ],
    },
    issuer.privateKey,
  );
}

/** PEM text of a DER certificate. */
export function certificatePem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString("base64");
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN CERTIFICATE-----\n${lines.join("\n")}\n-----END CERTIFICATE-----\n`;
}
