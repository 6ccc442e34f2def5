/**
 * `haven init`: this machine's cluster token and, with `--tls`, the
 * cluster's certificate authority and the certificates of this machine's
 * controller, agent and CLI (mutual TLS, see core/tls.ts); `--issue` gives
 * another machine (or a lab host) its certificate from the same CA.
 *
 *   /var/lib/haven/tls/ca/ca.pem, ca-key.pem    the CA (its key 0600, never leaves this directory)
 *   /var/lib/haven/tls/<role>/                  ca.pem, cert.pem, key.pem: a TLS directory
 *                                               (--tls-dir of `haven agent` / `haven controller`,
 *                                               HAVEN_TLS_DIR of the CLI)
 */
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { createCa, issueCertificate, ROLES, type CertificatePair, type Role } from '../../core/ca.js';
import { InvalidArgumentError } from '../../core/errors.js';
import { writeTlsIdentity } from '../../core/tls.js';
import { CLUSTER_PATHS } from '../cluster-client.js';
import type { Command } from '../command.js';
import { ensureToken } from './up.js';

/** Where `haven init --tls` keeps the CA and this machine's TLS directories. */
export const LOCAL_TLS_ROOT = join(dirname(CLUSTER_PATHS.localToken), 'tls');

/** The CA under `root/ca/`, made if absent (or `force`). */
export async function ensureCa(root: string, force = false): Promise<{ ca: CertificatePair; made: boolean }> {
  const dir = join(root, 'ca');
  const certFile = join(dir, 'ca.pem');
  const keyFile = join(dir, 'ca-key.pem');
  if (!force && existsSync(certFile) && existsSync(keyFile))
    return {
      ca: { certPem: readFileSync(certFile, 'utf8'), keyPem: readFileSync(keyFile, 'utf8') },
      made: false,
    };
  const ca = await createCa();
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(keyFile, ca.keyPem, { mode: 0o600 });
  await chmod(keyFile, 0o600);
  await writeFile(certFile, ca.certPem);
  return { ca, made: true };
}

/** One certificate to issue into a TLS directory. */
export interface TlsDirSpec {
  role: Role;
  host: string;
  addresses: readonly string[];
  dir: string;
}

/** Issues each certificate from the CA into its TLS directory (ca.pem, cert.pem, key.pem). */
export async function issueTlsDirs(ca: CertificatePair, specs: readonly TlsDirSpec[]): Promise<void> {
  for (const spec of specs) {
    const pair = await issueCertificate(ca, { role: spec.role, host: spec.host, addresses: spec.addresses });
    await writeTlsIdentity(spec.dir, ca.certPem, pair);
  }
}

/** This machine's name as a certificate takes it (Haven's name rules). */
function localHostName(given: unknown): string {
  const name = (typeof given === 'string' ? given : (process.env.HAVEN_HOST ?? hostname())).toLowerCase();
  return (
    name
      .replace(/[^a-z0-9_.-]/g, '-')
      .replace(/^[^a-z0-9]+/, '')
      .slice(0, 63) || 'host'
  );
}

function role(value: unknown): Role {
  if (typeof value !== 'string' || !ROLES.includes(value as Role))
    throw new InvalidArgumentError(`invalid --issue "${String(value)}": controller, agent or cli`);
  return value as Role;
}

/** `haven init`: make this cluster's token, and with `--tls` its CA and certificates. */
export const initCommand: Command = {
  name: 'init',
  summary: "make this cluster's token, and with --tls its CA and this machine's certificates",
  usage:
    'haven init [--force] [--tls [--address ADDR]...]\n' +
    '       haven init --issue controller|agent|cli --name NAME [--address ADDR]... --out DIR',
  options: {
    force: { type: 'boolean' },
    tls: { type: 'boolean' },
    address: { type: 'string', multiple: true },
    issue: { type: 'string' },
    name: { type: 'string' },
    out: { type: 'string' },
  },
  async run(inv) {
    const addresses = (inv.values.address as string[] | undefined) ?? [];
    if (inv.values.issue !== undefined) {
      // Another machine's certificate, from this machine's CA (which must exist).
      if (typeof inv.values.out !== 'string' || typeof inv.values.name !== 'string')
        throw new InvalidArgumentError('--issue needs --name NAME and --out DIR');
      if (!existsSync(join(LOCAL_TLS_ROOT, 'ca', 'ca-key.pem')))
        throw new InvalidArgumentError(`no CA in ${LOCAL_TLS_ROOT}/ca: run haven init --tls first`);
      const { ca } = await ensureCa(LOCAL_TLS_ROOT);
      const spec = { role: role(inv.values.issue), host: inv.values.name, addresses, dir: inv.values.out };
      await issueTlsDirs(ca, [spec]);
      process.stdout.write(`issued a ${spec.role} certificate for ${spec.host} into ${spec.dir}\n`);
      return 0;
    }
    const force = inv.values.force === true;
    const { made } = await ensureToken(force);
    process.stdout.write(`${made ? 'made' : 'kept'} the cluster token in ${CLUSTER_PATHS.localToken}\n`);
    if (inv.values.tls !== true) return 0;
    const { ca, made: madeCa } = await ensureCa(LOCAL_TLS_ROOT, force);
    const host = localHostName(inv.values['host-name']);
    const local = ['127.0.0.1', 'localhost', ...addresses];
    await issueTlsDirs(
      ca,
      ROLES.map((r) => ({
        role: r,
        host,
        addresses: r === 'cli' ? [] : local,
        dir: join(LOCAL_TLS_ROOT, r),
      })),
    );
    process.stdout.write(
      `${madeCa ? 'made' : 'kept'} the cluster CA in ${LOCAL_TLS_ROOT}/ca; issued controller, agent and cli ` +
        `certificates for ${host} into ${LOCAL_TLS_ROOT}/{controller,agent,cli}\n` +
        `mutual TLS: haven controller --tls-dir ${LOCAL_TLS_ROOT}/controller, haven agent --tls-dir ` +
        `${LOCAL_TLS_ROOT}/agent --controller https://…, and HAVEN_TLS_DIR=${LOCAL_TLS_ROOT}/cli ` +
        `HAVEN_CONTROLLER=https://… for the CLI\n`,
    );
    return 0;
  },
};
