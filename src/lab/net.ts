/**
 * The lab's network: one L2 segment (10.88.0.0/16) on a bridge that lives in
 * a namespace of its own (`hvlab`), with no address on the bridge and no
 * uplink, so nothing the lab carries can leave the machine and the root
 * namespace has no address or route into it. Each lab namespace (controller,
 * client, hosts) hangs on the bridge by a veth `hvl-<name>` ⇄ `eth0`;
 * containers attach their own veths to the same bridge (see
 * src/runtime/network.ts), so a container's address can move between hosts.
 *
 * Faults are link states: a partition sets bridge-side links down (processes
 * keep running, packets are dropped at the bridge), a shaped link gets tbf on
 * both ends (tbf works in namespaces here; netem does not exist).
 */
import { existsSync } from 'node:fs';
import { run } from '../core/exec.js';
import { InvalidArgumentError } from '../core/errors.js';
import { containerVethPrefix, netnsPath } from '../runtime/network.js';
import { BRIDGE, BRIDGE_NETNS, LAB_PREFIX, bridgeLink } from './paths.js';

/** Shell lines that create the bridge namespace (fails if it exists: callers tear down first). */
export function bridgeScript(): string[] {
  return [
    `ip netns add ${BRIDGE_NETNS}`,
    `ip -n ${BRIDGE_NETNS} -batch - <<'IP'`,
    'link set lo up',
    // STP off (the default) so a port forwards as soon as it is up: links flap in fault tests.
    `link add ${BRIDGE} type bridge stp_state 0`,
    `link set ${BRIDGE} up`,
    'IP',
  ];
}

/**
 * Shell lines that make namespace `netns` and hang it on the bridge as
 * `hvl-<name>` ⇄ `eth0` with `address`/16, `lo` up.
 */
export function attachScript(name: string, netns: string, address: string): string[] {
  const link = bridgeLink(name);
  return [
    `ip netns add ${netns}`,
    // A namespace just deleted is torn down by the kernel in the background,
    // its veth with it: the old bridge end may still hold the name (revive
    // right after kill-host failed with "File exists"). Deleting that end
    // takes the pair at once.
    `ip -n ${BRIDGE_NETNS} link del ${link} 2>/dev/null || true`,
    `ip -n ${BRIDGE_NETNS} link add ${link} type veth peer name eth0 netns ${netns}`,
    `ip -n ${BRIDGE_NETNS} link set ${link} master ${BRIDGE} up`,
    `ip -n ${netns} -batch - <<'IP'`,
    'link set lo up',
    `addr add ${address}/${LAB_PREFIX} dev eth0`,
    'link set eth0 up',
    'IP',
  ];
}

/** Runs shell lines as one script (`set -e`): one process start instead of one per command. */
export async function runScript(lines: readonly string[]): Promise<void> {
  await run(['sh', '-c', ['set -e', ...lines].join('\n')]);
}

/** Deletes a namespace if it exists; its veth pair goes with it. Idempotent. */
export async function deleteNetns(netns: string): Promise<void> {
  if (existsSync(netnsPath(netns))) await run(['ip', 'netns', 'del', netns], { allowFailure: true });
}

/** Names of the links in the bridge namespace. */
async function bridgeNamespaceLinks(): Promise<string[]> {
  if (!existsSync(netnsPath(BRIDGE_NETNS))) return [];
  const { stdout } = await run(['ip', '-n', BRIDGE_NETNS, '-o', 'link', 'show']);
  // "7: hvl-h1@if2: <…>" — the name ends at '@' for veths, at ':' otherwise.
  return stdout
    .split('\n')
    .map((line) => /^\d+:\s+([^:@\s]+)/.exec(line)?.[1])
    .filter((name): name is string => name !== undefined);
}

/** The bridge-side links of a host's containers (named by {@link containerVethPrefix}). */
export async function containerLinks(host: string): Promise<string[]> {
  const prefix = containerVethPrefix(host);
  return (await bridgeNamespaceLinks()).filter((name) => name.startsWith(prefix) && name.length === 14);
}

/**
 * Sets links in the bridge namespace up or down, and checks they are: a
 * partition or a heal that silently did not happen would make a fault test
 * measure nothing. Links that vanished meanwhile are skipped.
 */
export async function setLinks(links: readonly string[], state: 'up' | 'down'): Promise<void> {
  if (links.length === 0) return;
  let pending = [...links];
  for (let attempt = 1; ; attempt++) {
    // -force: go on past a container link deleted between the listing and now.
    await run(['ip', '-force', '-n', BRIDGE_NETNS, '-batch', '-'], {
      input: pending.map((l) => `link set ${l} ${state}\n`).join(''),
      allowFailure: true,
    });
    const now = await bridgeNamespaceLinkStates();
    pending = pending.filter((l) => now.has(l) && now.get(l) !== (state === 'up'));
    if (pending.length === 0) return;
    if (attempt === 3) throw new Error(`lab: links still not ${state}: ${pending.join(', ')}`);
  }
}

/** Links in the bridge namespace and whether each is administratively up. */
async function bridgeNamespaceLinkStates(): Promise<Map<string, boolean>> {
  const { stdout } = await run(['ip', '-n', BRIDGE_NETNS, '-o', 'link', 'show']);
  const states = new Map<string, boolean>();
  for (const line of stdout.split('\n')) {
    const match = /^\d+:\s+([^:@\s]+)[^<]*<([^>]*)>/.exec(line);
    if (match) states.set(match[1]!, match[2]!.split(',').includes('UP'));
  }
  return states;
}

/** Deletes links in the bridge namespace (the peer ends go with them). */
export async function deleteLinks(links: readonly string[]): Promise<void> {
  if (links.length === 0) return;
  await run(['ip', '-force', '-n', BRIDGE_NETNS, '-batch', '-'], {
    input: links.map((l) => `link del ${l}\n`).join(''),
    allowFailure: true,
  });
}

const RATE = /^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps)$/;
const UNIT_BITS: Record<string, number> = {
  bit: 1,
  kbit: 1e3,
  mbit: 1e6,
  gbit: 1e9,
  tbit: 1e12,
  bps: 8,
  kbps: 8e3,
  mbps: 8e6,
  gbps: 8e9,
};

/** Checks a rate in tc's words (`1gbit`, `100mbit`, `500kbps`) and returns it in bytes per second. */
export function parseRate(rate: string): number {
  const match = RATE.exec(rate.toLowerCase());
  const bytes = match ? (Number(match[1]) * (UNIT_BITS[match[2] ?? ''] ?? 0)) / 8 : 0;
  if (!(bytes >= 1000)) {
    throw new InvalidArgumentError(
      `invalid rate "${rate}": expected a number and a tc unit (bit, kbit, mbit, gbit, bps, kbps, mbps), at least 8kbit, or "off"`,
    );
  }
  return bytes;
}

/**
 * Shapes a lab namespace's link with tbf at `rate`, in both directions: on the
 * bridge end (traffic towards the namespace) and on its `eth0` (traffic from
 * it). `rate` null removes the shaping. The bucket holds 2 ms at the rate
 * (at least 64 KiB: veths pass GSO packets of up to 64 KiB), so the rate is
 * reached without tick-sized bursts; at most 50 ms of packets queue.
 */
export async function shapeLink(name: string, netns: string, rate: string | null): Promise<void> {
  const ends: [string, string][] = [
    [BRIDGE_NETNS, bridgeLink(name)],
    [netns, 'eth0'],
  ];
  if (rate === null) {
    for (const [ns, dev] of ends) {
      await run(['tc', '-n', ns, 'qdisc', 'del', 'dev', dev, 'root'], { allowFailure: true });
    }
    return;
  }
  const burst = Math.max(65_536, Math.ceil(parseRate(rate) * 0.002));
  for (const [ns, dev] of ends) {
    const argv = ['tc', '-n', ns, 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', rate];
    await run([...argv, 'burst', String(burst), 'latency', '50ms']);
  }
}

/** Parses a loss rate (`2%`, `0.5%`, `2`) into percent; between 0 and 100, at most two decimals. */
export function parseLoss(loss: string): number {
  const match = /^(\d{1,3}(?:\.\d{1,2})?)%?$/.exec(loss);
  const percent = match ? Number(match[1]) : Number.NaN;
  if (!(percent > 0 && percent <= 100)) {
    throw new InvalidArgumentError(
      `invalid loss "${loss}": expected a percentage above 0 and at most 100 (e.g. 2%), or "off"`,
    );
  }
  return percent;
}

/** The nftables table that drops packets at random in a lossy namespace. */
const LOSS_TABLE = 'hvlab-loss';

/**
 * Drops `percent`% of the packets entering and leaving network namespace
 * `netns`, each at random (nftables `numgen random`: netem does not exist on
 * this kernel); null removes the loss. The namespace's own processes (a
 * host's agent) see a lossy link; its containers, in namespaces of their own,
 * do not.
 */
export async function setLinkLoss(netns: string, percent: number | null): Promise<void> {
  await run(['ip', 'netns', 'exec', netns, 'nft', 'delete', 'table', 'inet', LOSS_TABLE], {
    allowFailure: true,
  });
  if (percent === null) return;
  // Per 10,000, so that a loss of 0.25% is exact.
  const drop = `numgen random mod 10000 < ${Math.round(percent * 100)} drop`;
  const ruleset = [
    `table inet ${LOSS_TABLE} {`,
    `  chain in { type filter hook input priority 0; ${drop}; }`,
    `  chain out { type filter hook output priority 0; ${drop}; }`,
    '}',
  ].join('\n');
  await run(['ip', 'netns', 'exec', netns, 'nft', '-f', '-'], { input: ruleset });
}
