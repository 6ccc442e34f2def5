/**
 * A host's configuration, compiled once at start-up with every default
 * filled in (in the style of Temporal's `compileWorkerOptions`): nothing
 * downstream reads environment variables or raw options.
 */
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** What a user may set, by flag or environment. */
export interface HostOptions {
  /** Name of this host in the cluster (default: the machine's hostname). */
  hostName?: string;
  /** The host's "disk": images, containers, volumes, checkpoints. */
  stateDir?: string;
  /** runc's state root; each host has its own. */
  runcRoot?: string;
  /** CRIU binary; default the one setup installs. */
  criuPath?: string;
  /** Network namespace that holds this host's container bridge. */
  networkNamespace?: string;
  /** Subnet from which container addresses are allocated. */
  subnet?: string;
}

/** {@link HostOptions} with every default resolved. */
export interface HostConfig {
  readonly hostName: string;
  readonly stateDir: string;
  readonly runcRoot: string;
  readonly criuPath: string;
  readonly runcPath: string;
  readonly shimPath: string;
  /** The network lock's tool (native/haven-netlock.c). */
  readonly netlockPath: string;
  readonly networkNamespace: string;
  readonly bridge: string;
  readonly subnet: { base: string; prefix: number };
}

/** The repository root (for the native helpers built into `build/`). */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Where `npm run build` puts haven-netlock (native/haven-netlock.c). */
export const NETLOCK_PATH = join(REPO_ROOT, 'build', 'haven-netlock');

/** Resolves options against the environment (`HAVEN_*`) and defaults. */
export function compileHostConfig(
  options: HostOptions = {},
  env: NodeJS.ProcessEnv = process.env,
): HostConfig {
  const hostName = options.hostName ?? env.HAVEN_HOST ?? hostname();
  const subnetText = options.subnet ?? env.HAVEN_SUBNET ?? '10.88.0.0/16';
  const [base = '10.88.0.0', prefixText = '16'] = subnetText.split('/');
  return {
    hostName,
    stateDir: resolve(options.stateDir ?? env.HAVEN_STATE_DIR ?? '/var/lib/haven'),
    runcRoot: resolve(options.runcRoot ?? env.HAVEN_RUNC_ROOT ?? '/run/haven/runc'),
    criuPath: options.criuPath ?? env.HAVEN_CRIU ?? defaultCriu(),
    runcPath: env.HAVEN_RUNC ?? 'runc',
    shimPath: join(REPO_ROOT, 'build', 'haven-shim'),
    netlockPath: NETLOCK_PATH,
    networkNamespace: options.networkNamespace ?? env.HAVEN_NETNS ?? 'haven-net',
    bridge: 'hvbr0',
    subnet: { base, prefix: Number(prefixText) },
  };
}

function defaultCriu(): string {
  // Setup installs CRIU >= 4.2 here; never fall back to Debian's 3.17 by PATH order.
  return existsSync('/usr/local/sbin/criu') ? '/usr/local/sbin/criu' : 'criu';
}
