/**
 * etcd members for the lab, the tests and the benchmarks: Debian's
 * `etcd-server` 3.4, each member with a data dir of ours (Debian's own
 * service is disabled by setup-host.sh; it is not ours).
 *
 * Raft runs with a 50 ms heartbeat and a 500 ms election timeout (etcd's
 * defaults are 100 ms / 1 s, tuned for members across a network): members
 * here share one machine, and the shortest lease etcd grants is 1.5
 * election timeouts — 0.75 s here, so the controllers' 1 s election lease
 * is honoured instead of being raised to 2 s.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3, type IOptions } from 'etcd3';

/** The etcd binary (Debian's etcd-server). */
export const ETCD_BIN = '/usr/bin/etcd';

/** One member of an etcd cluster. */
export interface EtcdMember {
  name: string;
  /** Where clients reach it, e.g. `http://10.88.0.2:2379`. */
  clientUrl: string;
  /** Where peers reach it. */
  peerUrl: string;
  dataDir: string;
}

/**
 * TLS for an etcd cluster, in etcd's own terms: its CA, and one certificate
 * (server and client use) that every member presents to clients and peers.
 * Clients then need a certificate from that CA (`--client-cert-auth`).
 */
export interface EtcdTls {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** The command line of `member` in a cluster of `members` (all started with the same `token`). */
export function etcdArgs(
  member: EtcdMember,
  members: readonly EtcdMember[],
  token: string,
  tls?: EtcdTls,
): string[] {
  const secured = tls
    ? [
        '--cert-file',
        tls.certFile,
        '--key-file',
        tls.keyFile,
        '--trusted-ca-file',
        tls.caFile,
        '--client-cert-auth',
        '--peer-cert-file',
        tls.certFile,
        '--peer-key-file',
        tls.keyFile,
        '--peer-trusted-ca-file',
        tls.caFile,
        '--peer-client-cert-auth',
      ]
    : [];
  return [
    ...secured,
    '--name',
    member.name,
    '--data-dir',
    member.dataDir,
    '--listen-client-urls',
    member.clientUrl,
    '--advertise-client-urls',
    member.clientUrl,
    '--listen-peer-urls',
    member.peerUrl,
    '--initial-advertise-peer-urls',
    member.peerUrl,
    '--initial-cluster',
    members.map((m) => `${m.name}=${m.peerUrl}`).join(','),
    '--initial-cluster-token',
    token,
    // A member restarted with its data dir rejoins; `new` only matters for an empty one.
    '--initial-cluster-state',
    'new',
    '--heartbeat-interval',
    '50',
    '--election-timeout',
    '500',
    '--log-level',
    'warn',
    '--logger',
    'zap',
  ];
}

/** Members named `e1…eN` on `address`, client ports from `basePort` (peer ports 1000 above). */
export function etcdMembers(
  count: number,
  address: string,
  basePort: number,
  dataRoot: string,
  scheme: 'http' | 'https' = 'http',
): EtcdMember[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `e${i + 1}`,
    clientUrl: `${scheme}://${address}:${basePort + i}`,
    peerUrl: `${scheme}://${address}:${basePort + 1000 + i}`,
    dataDir: join(dataRoot, `e${i + 1}`),
  }));
}

/** Waits until a quorum answers a read through `endpoints` (throws after `timeoutMs`). */
export async function waitForEtcd(
  endpoints: string[],
  timeoutMs = 20_000,
  credentials?: IOptions['credentials'],
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const client = new Etcd3({
    hosts: endpoints,
    dialTimeout: 1000,
    defaultCallOptions: (c) => (c.isStream ? {} : { deadline: Date.now() + 1000 }),
    ...(credentials ? { credentials } : {}),
  });
  try {
    for (;;) {
      try {
        // A linearizable read: answered only with a raft leader, i.e. a quorum.
        await client.get('haven/probe').string();
        return;
      } catch (error) {
        if (Date.now() > deadline)
          throw new Error(`etcd at ${endpoints.join(',')} did not answer: ${(error as Error).message}`);
        await sleep(100);
      }
    }
  } finally {
    client.close();
  }
}

/**
 * A cluster of etcd members on this machine's loopback, for tests and
 * benchmarks (the lab runs its members under its supervisor instead).
 */
export class LocalEtcd {
  private readonly children = new Map<string, ChildProcess>();
  readonly members: EtcdMember[];

  constructor(
    dataRoot: string,
    count: number,
    basePort: number,
    private readonly logFile?: string,
    /** With TLS: https URLs, and clients (and peers) must present a certificate from its CA. */
    private readonly tls?: EtcdTls & { client: NonNullable<IOptions['credentials']> },
  ) {
    this.members = etcdMembers(count, '127.0.0.1', basePort, dataRoot, tls ? 'https' : 'http');
  }

  /** Client URLs of every member. */
  get endpoints(): string[] {
    return this.members.map((m) => m.clientUrl);
  }

  /** Starts every member and waits for a quorum. */
  async start(): Promise<void> {
    for (const m of this.members) this.startMember(m.name);
    await waitForEtcd(this.endpoints, 20_000, this.tls?.client);
  }

  /** Starts (or restarts, keeping its data) member `name`. */
  startMember(name: string): void {
    const member = this.members.find((m) => m.name === name);
    if (!member) throw new Error(`no etcd member ${name}`);
    mkdirSync(member.dataDir, { recursive: true, mode: 0o700 });
    const out = this.logFile ? openSync(this.logFile, 'a') : 'ignore';
    const child = spawn(ETCD_BIN, etcdArgs(member, this.members, 'haven-local', this.tls), {
      stdio: ['ignore', out, out],
    });
    if (typeof out === 'number') closeSync(out);
    this.children.set(name, child);
  }

  /** SIGKILLs member `name` and waits for it to be gone. */
  async killMember(name: string): Promise<void> {
    const child = this.children.get(name);
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await gone;
    this.children.delete(name);
  }

  /** Stops every member. */
  async stop(): Promise<void> {
    for (const name of [...this.children.keys()]) await this.killMember(name);
  }
}
