/**
 * Container networking, owned by Haven rather than runc.
 *
 * Each host has one network namespace holding a bridge (`hvbr0`). Each
 * container gets a namespace of its own, made here, with a veth whose host end
 * is on that bridge and whose container end is `eth0`, carrying a stable IP
 * and a MAC derived from it, so both move with the container. runc only joins
 * the namespace (`namespaces.network.path`): a namespace runc made itself came
 * back from a restore with `lo` down.
 *
 *   host netns "haven-net"            container netns "hvc-<host>-<name>"
 *   ┌───────────────────────┐          ┌──────────────────────────────┐
 *   │ hvbr0 ── hv<hash> ────┼── veth ──┼── eth0 10.88.x.y, 02:48:…    │
 *   └───────────────────────┘          │   lo up                      │
 *                                      └──────────────────────────────┘
 *
 * Nothing here adds a route out: the bridge has no address and no uplink.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { run } from '../core/exec.js';
import type { HostConfig } from '../core/config.js';

/** An established TCP connection seen from inside a container. */
export interface TcpConnection {
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
}

/** What a container's network namespace is built from. */
export interface ContainerNetworkSpec {
  /** Network namespace name (a file under /run/netns). */
  netns: string;
  address: string;
  prefix: number;
  mac: string;
  /**
   * Connections to keep locked (dropped by iptables) until CRIU has restored
   * them: without this, a client's packet arriving before the socket exists
   * would be answered with a reset and the connection lost.
   */
  lockedConnections?: readonly TcpConnection[];
}

const NETNS_DIR = '/run/netns';

/** Path of a named network namespace. */
export function netnsPath(name: string): string {
  return `${NETNS_DIR}/${name}`;
}

/** Name of a container's network namespace on a host. */
export function containerNetnsName(config: HostConfig, container: string): string {
  return `hvc-${shortHash(config.hostName)}-${container}`;
}

/** Creates the host's bridge namespace if missing. Idempotent. */
export async function ensureHostNetwork(config: HostConfig): Promise<void> {
  const ns = config.networkNamespace;
  if (!existsSync(netnsPath(ns))) {
    await run(['ip', 'netns', 'add', ns]);
  }
  const links = await run(['ip', '-n', ns, '-o', 'link', 'show', config.bridge], { allowFailure: true });
  if (links.code !== 0) {
    await run(['ip', '-n', ns, 'link', 'add', config.bridge, 'type', 'bridge']);
  }
  await run(['ip', '-n', ns, '-batch', '-'], {
    input: `link set lo up\nlink set ${config.bridge} up\n`,
  });
}

/**
 * Builds a container's namespace: veth onto the host bridge, address, MAC,
 * loopback, and (for a restore) the connection locks, which go in before the
 * link comes up. On failure nothing is left behind.
 */
export async function createContainerNetwork(config: HostConfig, spec: ContainerNetworkSpec): Promise<void> {
  await ensureHostNetwork(config);
  const hostVeth = `hv${shortHash(`${config.hostName}/${spec.netns}`)}`;
  await run(['ip', 'netns', 'add', spec.netns]);
  try {
    await run([
      'ip',
      '-n',
      config.networkNamespace,
      'link',
      'add',
      hostVeth,
      'type',
      'veth',
      'peer',
      'name',
      'eth0',
      'netns',
      spec.netns,
    ]);
    await run(['ip', '-n', config.networkNamespace, 'link', 'set', hostVeth, 'master', config.bridge, 'up']);
    await run(['ip', '-n', spec.netns, '-batch', '-'], {
      input: [
        'link set lo up',
        `link set eth0 address ${spec.mac}`,
        `addr add ${spec.address}/${spec.prefix} dev eth0`,
        '',
      ].join('\n'),
    });
    if (spec.lockedConnections && spec.lockedConnections.length > 0) {
      await run(['nsenter', `--net=${netnsPath(spec.netns)}`, 'iptables-restore', '--noflush'], {
        input: connectionLockRules(spec.lockedConnections),
      });
    }
    await run(['ip', '-n', spec.netns, 'link', 'set', 'eth0', 'up']);
  } catch (error) {
    await deleteContainerNetwork(spec.netns);
    throw error;
  }
}

/** Removes a container's namespace (its veth pair goes with it). Idempotent. */
export async function deleteContainerNetwork(netns: string): Promise<void> {
  if (existsSync(netnsPath(netns))) {
    await run(['ip', 'netns', 'del', netns], { allowFailure: true });
  }
}

/**
 * iptables rules that lock connections exactly as CRIU's own
 * `iptables_connection_switch_raw` does (criu/netfilter.c), so that CRIU's
 * unlock after the restore deletes them: packets not marked by CRIU's socket
 * repair (0xC114) are dropped in both directions.
 */
export function connectionLockRules(connections: readonly TcpConnection[]): string {
  const rules = connections.flatMap((c) => [
    `-I INPUT -p tcp -m mark ! --mark 0xc114 -s ${c.remoteAddress}/32 -d ${c.localAddress}/32 -m tcp --sport ${c.remotePort} --dport ${c.localPort} -j DROP`,
    `-I OUTPUT -p tcp -m mark ! --mark 0xc114 -s ${c.localAddress}/32 -d ${c.remoteAddress}/32 -m tcp --sport ${c.localPort} --dport ${c.remotePort} -j DROP`,
  ]);
  return ['*filter', ...rules, 'COMMIT', ''].join('\n');
}

/** Deletes whatever connection locks are still present in a namespace. */
export async function clearConnectionLocks(netns: string): Promise<void> {
  const { stdout } = await run(['nsenter', `--net=${netnsPath(netns)}`, 'iptables-save', '-t', 'filter']);
  const stale = stdout.split('\n').filter((l) => l.includes('0xc114') && l.startsWith('-A '));
  for (const rule of stale) {
    await run(
      [
        'nsenter',
        `--net=${netnsPath(netns)}`,
        'iptables',
        '-t',
        'filter',
        ...splitRule(rule.replace(/^-A /, '-D ')),
      ],
      {
        allowFailure: true,
      },
    );
  }
}

function splitRule(rule: string): string[] {
  return rule.split(/\s+/).filter((p) => p.length > 0);
}

/** A short, stable hash for interface and namespace names (veth names are ≤ 15 bytes). */
export function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 10);
}

/**
 * Established IPv4 TCP connections in the network namespace of process
 * `pid`, read from `/proc/<pid>/net/tcp`: no process to spawn, so it costs
 * microseconds inside a freeze where `ss` would cost milliseconds.
 */
export function readEstablished(pid: number): TcpConnection[] {
  const text = readFileSync(`/proc/${pid}/net/tcp`, 'utf8');
  const connections: TcpConnection[] = [];
  for (const line of text.split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    const [, local, remote, state] = fields;
    if (state !== '01' || !local || !remote) continue; // 01 = TCP_ESTABLISHED
    const [la, lp] = decodeEndpoint(local);
    const [ra, rp] = decodeEndpoint(remote);
    connections.push({ localAddress: la, localPort: lp, remoteAddress: ra, remotePort: rp });
  }
  return connections;
}

/** `0100007F:1B58` → ['127.0.0.1', 7000] (the address is in host byte order, little-endian here). */
export function decodeEndpoint(text: string): [string, number] {
  const [hexAddr = '', hexPort = '0'] = text.split(':');
  const n = parseInt(hexAddr, 16);
  const address = [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].join('.');
  return [address, parseInt(hexPort, 16)];
}
