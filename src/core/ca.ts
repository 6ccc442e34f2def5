/**
 * The cluster's certificate authority: `haven init --tls` makes one, and
 * every controller, agent and CLI gets a certificate from it that names its
 * **role** and its **host**. Keys are ECDSA P-256 made by node:crypto;
 * certificates are built by `@peculiar/x509` (no ASN.1 of our own).
 *
 * What a certificate says, and what the servers check (see `tls.ts`):
 *
 *   subject   CN=<host>, OU=haven-<role>, O=haven
 *   SAN       DNS:<host> (when it is a DNS name), and each address given (IP or DNS)
 *   EKU       clientAuth, and serverAuth for controllers and agents
 *
 * ```ts
 * const ca = await createCa();
 * const agent = await issueCertificate(ca, { role: 'agent', host: 'h1', addresses: ['10.88.0.11'] });
 * ```
 */
import { randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type * as X509 from '@peculiar/x509';
import { InvalidArgumentError } from './errors.js';

/**
 * The X.509 writer, loaded by the first certificate made: reading one
 * (every TLS connection, every CLI call) needs only node's own
 * `X509Certificate`, and loading this took ~0.1 s of each CLI start.
 */
let x509Module: Promise<typeof X509> | undefined;
function x509Writer(): Promise<typeof X509> {
  x509Module ??= (async () => {
    await import('reflect-metadata');
    const x509 = await import('@peculiar/x509');
    x509.cryptoProvider.set(webcrypto as never);
    return x509;
  })();
  return x509Module;
}

/** Who a certificate speaks for. */
export type Role = 'controller' | 'agent' | 'cli';

/** Every role, in the order `haven init` issues them. */
export const ROLES: readonly Role[] = ['controller', 'agent', 'cli'];

/** The subject's OU that marks a role: `haven-<role>`. */
export const ROLE_PREFIX = 'haven-';

/** A certificate and its private key, both PEM. */
export interface CertificatePair {
  certPem: string;
  keyPem: string;
}

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
const HOST = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

/** A positive random serial number (RFC 5280: at most 20 bytes, no sign bit). */
function serial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
}

function pem(label: string, der: ArrayBuffer): string {
  const body = Buffer.from(der)
    .toString('base64')
    .replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${body}${body.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

function derOf(pemText: string): Buffer {
  return Buffer.from(pemText.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

async function exportKey(key: webcrypto.CryptoKey): Promise<string> {
  return pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', key));
}

/**
 * Makes a new cluster CA: a self-signed certificate that may sign leaf
 * certificates only (path length 0), valid `validDays` (default ten years).
 */
export async function createCa(
  options: { name?: string; validDays?: number } = {},
): Promise<CertificatePair> {
  const x509 = await x509Writer();
  const keys = await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${options.name ?? 'haven cluster CA'}, O=haven`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + (options.validDays ?? 3650) * DAY_MS),
    keys,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await exportKey(keys.privateKey) };
}

/** What to put in a leaf certificate. */
export interface IssueOptions {
  role: Role;
  /** The host (or, for the CLI, the user) it speaks for: Haven's name rules. */
  host: string;
  /** Addresses a server is reached at (IP or DNS name), put in its subject alternative names. */
  addresses?: readonly string[];
  /** Days it is valid from now (default 825, the CA/Browser Forum's old ceiling). */
  validDays?: number;
  /** Explicit validity (tests make expired certificates with it). */
  notBefore?: Date;
  notAfter?: Date;
}

/** Issues a certificate for one role and host, signed by the cluster CA. */
export async function issueCertificate(ca: CertificatePair, options: IssueOptions): Promise<CertificatePair> {
  if (!HOST.test(options.host) || options.host.includes('..'))
    throw new InvalidArgumentError(`invalid host name "${options.host}" for a certificate`);
  if (!ROLES.includes(options.role)) throw new InvalidArgumentError(`invalid role "${String(options.role)}"`);
  const x509 = await x509Writer();
  const caCert = new x509.X509Certificate(ca.certPem);
  const caKey = await webcrypto.subtle.importKey('pkcs8', derOf(ca.keyPem), ALGORITHM, false, ['sign']);
  const keys = await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']);
  const names: X509.JsonGeneralName[] = [];
  const seen = new Set<string>();
  const add = (value: string): void => {
    if (seen.has(value)) return;
    seen.add(value);
    names.push({ type: isIP(value) ? 'ip' : 'dns', value });
  };
  if (!options.host.includes('_')) add(options.host);
  for (const address of options.addresses ?? []) {
    if (!isIP(address) && !/^[a-zA-Z0-9.-]{1,253}$/.test(address))
      throw new InvalidArgumentError(`invalid address "${address}" for a certificate: an IP or a DNS name`);
    add(address);
  }
  const now = Date.now();
  const usages =
    options.role === 'cli'
      ? [x509.ExtendedKeyUsage.clientAuth]
      : [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${options.host}, OU=${ROLE_PREFIX}${options.role}, O=haven`,
    issuer: caCert.subject,
    notBefore: options.notBefore ?? new Date(now - 60_000),
    notAfter: options.notAfter ?? new Date(now + (options.validDays ?? 825) * DAY_MS),
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension(usages, false),
      ...(names.length ? [new x509.SubjectAlternativeNameExtension(names, false)] : []),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await exportKey(keys.privateKey) };
}

/** The role and host a certificate of ours names, or undefined when it names none. */
export function identityOf(subject: { OU?: string | string[]; CN?: string | string[] }):
  | {
      role: Role;
      host: string;
    }
  | undefined {
  const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);
  const ou = first(subject.OU);
  const host = first(subject.CN);
  if (!ou?.startsWith(ROLE_PREFIX) || !host) return undefined;
  const role = ou.slice(ROLE_PREFIX.length) as Role;
  return ROLES.includes(role) ? { role, host } : undefined;
}

/** The role and host of a PEM certificate (its own subject), or an error if it is not one of ours. */
export function describeCertificate(certPem: string): { role: Role; host: string; notAfter: Date } {
  const cert = new X509Certificate(certPem);
  const subject: Record<string, string> = {};
  for (const line of cert.subject.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0) subject[line.slice(0, at)] = line.slice(at + 1);
  }
  const id = identityOf(subject);
  if (!id)
    throw new InvalidArgumentError(`certificate "${cert.subject.replace(/\n/g, ', ')}" names no Haven role`);
  return { ...id, notAfter: new Date(cert.validTo) };
}
