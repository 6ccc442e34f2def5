/**
 * Mutual TLS between Haven's processes, with certificates from the cluster
 * CA (`ca.ts`). Opt-in per cluster: a process given a TLS directory
 * (`--tls-dir DIR` or `HAVEN_TLS_DIR`) serves HTTPS and asks every client
 * for a certificate; without one everything stays plain HTTP with the
 * token, as before.
 *
 * A TLS directory holds three files: `ca.pem` (the cluster CA's
 * certificate: whom to trust), `cert.pem` and `key.pem` (this process's own
 * certificate, naming its role and host, and its key).
 *
 * Servers do not let TLS refuse a client certificate during the handshake
 * (`rejectUnauthorized: false`): they read the verdict from the socket and
 * answer 401 with the reason (expired, another CA, none), which a person can
 * act on — a handshake alert says nothing. Each server then decides per
 * route which roles it serves (see `agent/access.ts`).
 *
 * Clients: `openRequest` and `callJson` (`http-client.ts`) take an
 * `https://` endpoint to mean "with my certificate": the identity set by
 * {@link useClientTls}, else the one in `HAVEN_TLS_DIR`.
 */
import { readFileSync } from 'node:fs';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { Agent as HttpsAgent } from 'node:https';
import type { IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { TLSSocket, type TlsOptions } from 'node:tls';
import { describeCertificate, identityOf, type CertificatePair, type Role } from './ca.js';
import { InvalidArgumentError } from './errors.js';

/** File names in a TLS directory. */
export const TLS_FILES = { ca: 'ca.pem', cert: 'cert.pem', key: 'key.pem' } as const;

/** A process's TLS identity: whom it trusts and who it is. */
export interface TlsIdentity {
  /** The cluster CA's certificate (PEM). */
  ca: string;
  /** This process's certificate and key (PEM). */
  cert: string;
  key: string;
  /** What its certificate says. */
  role: Role;
  host: string;
}

/** Reads a TLS directory (synchronously: it is read once, at start-up or at a client's first HTTPS call). */
export function loadTlsIdentity(dir: string): TlsIdentity {
  const read = (file: string): string => {
    try {
      return readFileSync(join(dir, file), 'utf8');
    } catch (error) {
      throw new InvalidArgumentError(
        `TLS directory ${dir}: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)}); make it with haven init --tls`,
      );
    }
  };
  const ca = read(TLS_FILES.ca);
  const cert = read(TLS_FILES.cert);
  const key = read(TLS_FILES.key);
  const { role, host } = describeCertificate(cert);
  return { ca, cert, key, role, host };
}

/** Writes a TLS directory: the CA's certificate, and a certificate with its key (0600). */
export async function writeTlsIdentity(dir: string, caCertPem: string, pair: CertificatePair): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(join(dir, TLS_FILES.ca), caCertPem);
  await writeFile(join(dir, TLS_FILES.cert), pair.certPem);
  await writeFile(join(dir, TLS_FILES.key), pair.keyPem, { mode: 0o600 });
  await chmod(join(dir, TLS_FILES.key), 0o600);
}

/**
 * Options of an HTTPS server with this identity: TLS 1.3 only, a client
 * certificate asked for (and verified against the cluster CA) but judged by
 * the server itself — see {@link peerOf}.
 */
export function serverTlsOptions(id: TlsIdentity): TlsOptions {
  return {
    ca: id.ca,
    cert: id.cert,
    key: id.key,
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.3',
  };
}

/** Who is on the other end of a request, as its connection says. */
export type Peer =
  /** Not TLS at all (plain HTTP, a Unix socket). */
  | { kind: 'plain' }
  /** TLS, and no client certificate. */
  | { kind: 'anonymous' }
  /** A client certificate that failed: another CA, expired, not one of ours. */
  | { kind: 'refused'; reason: string }
  /** A certificate of this cluster, valid now. */
  | { kind: 'certificate'; role: Role; host: string };

/** OpenSSL's verdicts, as a person reads them. */
const REASONS: Readonly<Record<string, string>> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "not issued by this cluster's CA",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "not issued by this cluster's CA",
  UNABLE_TO_GET_ISSUER_CERT: "not issued by this cluster's CA",
  SELF_SIGNED_CERT_IN_CHAIN: "not issued by this cluster's CA",
  DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed, not issued by this cluster's CA",
  CERT_SIGNATURE_FAILURE: 'its signature does not verify',
  CERT_HAS_EXPIRED: 'expired',
  CERT_NOT_YET_VALID: 'not valid yet',
};

/** Reads the verdict on a request's client certificate from its TLS socket. */
export function peerOf(req: IncomingMessage): Peer {
  const socket = req.socket;
  if (!(socket instanceof TLSSocket)) return { kind: 'plain' };
  const cert = socket.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return { kind: 'anonymous' };
  if (!socket.authorized) {
    const error = socket.authorizationError;
    const code =
      error instanceof Error ? ((error as NodeJS.ErrnoException).code ?? error.message) : String(error);
    return { kind: 'refused', reason: `${REASONS[code] ?? 'not valid'} (${code})` };
  }
  const id = identityOf(cert.subject);
  if (!id) return { kind: 'refused', reason: 'the certificate names no Haven role' };
  return { kind: 'certificate', ...id };
}

let clientIdentity: TlsIdentity | undefined;
let clientAgent: HttpsAgent | undefined;

/** Sets (or clears) the identity this process presents on `https://` calls. */
export function useClientTls(id: TlsIdentity | undefined): void {
  clientAgent?.destroy();
  clientAgent = undefined;
  clientIdentity = id;
}

/** The identity this process presents on `https://` calls: set by {@link useClientTls}, else read from `HAVEN_TLS_DIR`. */
export function clientTls(): TlsIdentity | undefined {
  if (!clientIdentity && process.env.HAVEN_TLS_DIR)
    clientIdentity = loadTlsIdentity(process.env.HAVEN_TLS_DIR);
  return clientIdentity;
}

/**
 * The connection pool for `https://` calls, presenting this process's
 * certificate and trusting only the cluster CA (server names are checked
 * against the certificate's SAN as usual). Throws if no identity is set.
 */
export function clientTlsAgent(): HttpsAgent {
  if (clientAgent) return clientAgent;
  const id = clientTls();
  if (!id)
    throw new InvalidArgumentError(
      'an https:// endpoint needs a TLS identity: give --tls-dir DIR or set HAVEN_TLS_DIR (haven init --tls makes one)',
    );
  clientAgent = new HttpsAgent({
    ca: id.ca,
    cert: id.cert,
    key: id.key,
    minVersion: 'TLSv1.3',
    keepAlive: true,
  });
  return clientAgent;
}

/**
 * The TLS identity a daemon was started with (`--tls-dir`, else
 * `HAVEN_TLS_DIR`), also set as the one it presents on its own calls; none:
 * plain HTTP, as before.
 */
export function daemonTls(tlsDir: unknown): TlsIdentity | undefined {
  const dir = typeof tlsDir === 'string' ? tlsDir : process.env.HAVEN_TLS_DIR;
  if (!dir) return undefined;
  const id = loadTlsIdentity(dir);
  useClientTls(id);
  return id;
}
