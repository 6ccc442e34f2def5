/**
 * Mutual TLS in the lab (`haven lab up --tls`): a CA of the lab's own and a
 * certificate for each controller address, each host and the CLI, issued at
 * `up` (see core/ca.ts, core/tls.ts).
 *
 *   /var/lib/haven-lab/tls/ca/                 the lab's CA (key 0600)
 *   /var/lib/haven-lab/tls/controller/         every controller's TLS directory (all its addresses in SAN)
 *   /var/lib/haven-lab/tls/cli/                for the CLI or a test (HAVEN_TLS_DIR)
 *   /var/lib/haven-lab/tls/hosts/<h>/          each host's, copied onto its disk before each agent
 *                                              start (`tls/` there, /var/lib/haven/tls inside the host:
 *                                              a host sees neither /var/lib/haven-lab nor another's key)
 */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ensureCa, issueTlsDirs } from '../cli/commands/init.js';
import { TLS_FILES } from '../core/tls.js';
import { controllerAddress, HOST_VIEW, hostAddress, hostDisk, LAB_PATHS } from './paths.js';

/** Where the lab keeps its CA and TLS directories (root namespace). */
export const LAB_TLS_ROOT = join(LAB_PATHS.stateDir, 'tls');
/** The controllers' TLS directory. */
export const LAB_CONTROLLER_TLS = join(LAB_TLS_ROOT, 'controller');
/** A CLI certificate of the lab (for tests and people reaching a controller over TCP). */
export const LAB_CLI_TLS = join(LAB_TLS_ROOT, 'cli');
/** A host's TLS directory as its agent sees it, on its own disk. */
export const HOST_TLS_VIEW = join(HOST_VIEW.stateDir, 'tls');

/** Makes the lab's CA and issues every certificate (controllers at every address, hosts, CLI). */
export async function issueLabTls(hosts: readonly string[], controllers: number): Promise<void> {
  const { ca } = await ensureCa(LAB_TLS_ROOT, true);
  await issueTlsDirs(ca, [
    {
      role: 'controller',
      host: 'controller',
      addresses: Array.from({ length: controllers }, (_, i) => controllerAddress(i + 1)),
      dir: LAB_CONTROLLER_TLS,
    },
    { role: 'cli', host: 'lab-cli', addresses: [], dir: LAB_CLI_TLS },
    ...hosts.map((h) => ({
      role: 'agent' as const,
      host: h,
      addresses: [hostAddress(h)],
      dir: join(LAB_TLS_ROOT, 'hosts', h),
    })),
  ]);
}

/**
 * Puts a host's TLS directory on its disk if it is not there (a revived
 * host's disk is new). Runs in the root namespace, before its agent starts.
 */
export function placeHostTls(host: string): void {
  const target = join(hostDisk(host), 'tls');
  if (existsSync(join(target, TLS_FILES.key))) return;
  mkdirSync(target, { recursive: true, mode: 0o700 });
  for (const file of [TLS_FILES.ca, TLS_FILES.cert, TLS_FILES.key])
    copyFileSync(join(LAB_TLS_ROOT, 'hosts', host, file), join(target, file));
}

/** `https` in a lab with TLS, else `http`. */
export function labScheme(tls: boolean | undefined): 'https' | 'http' {
  return tls ? 'https' : 'http';
}
