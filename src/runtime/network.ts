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
 *   │ hvbr0 ── c<host><ns> ─┼── veth ──┼── eth0 10.88.x.y, 02:48:…    │
 *   └───────────────────────┘          │   lo up                      │
 *                                      └──────────────────────────────┘
 *
 * Nothing here adds a route out: the bridge has no address and no uplink.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { RuntimeFailedError } from '../core/errors.js';
import { run, trace } from '../core/exec.js';
import { NETLOCK_PATH, type HostConfig } from '../core/config.js';

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
   * Start with the network locked (see {@link lockTableRuleset}): a restore
   * unlocks once CRIU has recreated the sockets.
   */
  locked?: boolean;
  /**
   * Leave the container's link down: a network made ahead of a migration's
   * freeze, while the container still runs on the source with the same
   * address and MAC. A link that is down sends nothing (no ARP, no IPv6
   * neighbour discovery) that would teach the bridge the MAC's new port too
   * early; the restore's {@link Holder.announce} brings it up.
   */
  linkDown?: boolean;
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

const ensuredNetworks = new Set<string>();

/** Creates the host's bridge namespace if missing. Idempotent; checked once per process. */
export async function ensureHostNetwork(config: HostConfig): Promise<void> {
  const ns = config.networkNamespace;
  if (ensuredNetworks.has(ns) && existsSync(netnsPath(ns))) return;
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
  ensuredNetworks.add(ns);
}

/**
 * Builds a container's namespace: veth onto the host bridge, address, MAC,
 * loopback, and the lock table (locked from the start for a restore).
 * On failure nothing is left behind.
 */
export async function createContainerNetwork(config: HostConfig, spec: ContainerNetworkSpec): Promise<void> {
  await ensureHostNetwork(config);
  const hostVeth = hostVethName(config, spec.netns);
  // One shell, one process start from node (which costs ms per 100 MB of its heap).
  const script = [
    'set -e',
    `ip netns add ${spec.netns}`,
    `ip -n ${config.networkNamespace} link add ${hostVeth} type veth peer name eth0 netns ${spec.netns}`,
    `ip -n ${config.networkNamespace} link set ${hostVeth} master ${config.bridge} up`,
    `ip -n ${spec.netns} -batch - <<'IP'`,
    'link set lo up',
    `link set eth0 address ${spec.mac}`,
    `addr add ${spec.address}/${spec.prefix} dev eth0`,
    'IP',
    // arp_notify: bringing eth0 up (a thaw after fencing, too) announces the
    // address with a gratuitous ARP. Not enough for a restored container: a
    // capture on the lab's bridge showed that first announcement leave before
    // the bridge had taken the new port in, so it kept sending clients to the
    // old one — see prepareUnlock, whose holder announces again.
    // The hold's rule (see prepareUnlock), beside the rest: not waited for
    // until the end. Without NFQUEUE in the kernel, packets are dropped
    // while locked instead of held, as before.
    `{ ip netns exec ${spec.netns} ${HOLD_RULE} 2>/dev/null || echo no-hold; } & rule=$!`,
    `nsenter --net=${netnsPath(spec.netns)} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/eth0/arp_notify && exec nft -f -' <<'RULES'`,
    lockTableRuleset(spec.locked ?? false).trimEnd(),
    'RULES',
    ...(spec.linkDown ? [] : [`ip -n ${spec.netns} link set eth0 up`]),
    'wait $rule',
  ].join('\n');
  try {
    const made = await run(['sh', '-c', script]);
    if (made.stdout.includes('no-hold') && !holdUnavailable) {
      holdUnavailable = true;
      process.stderr.write(
        `network ${spec.netns}: no NFQUEUE rule could be made (iptables): clients' packets are dropped, not held, while a container is locked\n`,
      );
    }
  } catch (error) {
    await removeContainerNetwork(config, spec.netns);
    throw error;
  }
}

/**
 * Takes a container's link down or up. Fencing takes it down: a frozen
 * container's processes answer nothing, but its network namespace's kernel
 * still answers ARP (and SYNs to its listening sockets) for an address its
 * restored copy now holds elsewhere, and would pull that address back to
 * itself. Up again (a thaw) announces it by gratuitous ARP (`arp_notify`).
 */
export async function setContainerLink(netns: string, state: 'up' | 'down'): Promise<void> {
  await run(['ip', '-n', netns, 'link', 'set', 'eth0', state]);
}

/** Removes a network namespace by name (for the host's bridge namespace and clients). Idempotent. */
export async function deleteNamespace(netns: string): Promise<void> {
  if (existsSync(netnsPath(netns))) {
    await run(['ip', 'netns', 'del', netns], { allowFailure: true });
  }
}

/**
 * Removes a container's network: its veth pair (deleted from the host side,
 * so the name is free again at once), its sockets, and its namespace.
 * Sockets of killed processes may linger (a FIN that the lock drops is
 * retransmitted for minutes) and keep the namespace alive; `ss -K` aborts
 * them — their resets are dropped by the lock too. Idempotent.
 */
export async function removeContainerNetwork(config: HostConfig, netns: string): Promise<void> {
  // Its epoch holder lives in it (and would keep it alive): it goes first.
  await stopEpochHolder(netns);
  if (!existsSync(netnsPath(netns))) return;
  const script = [
    `ip -n ${config.networkNamespace} link del ${hostVethName(config, netns)} 2>/dev/null`,
    `nsenter --net=${netnsPath(netns)} ss -K -a 2>/dev/null >/dev/null`,
    `ip netns del ${netns}`,
  ].join('; ');
  await run(['sh', '-c', script], { allowFailure: true });
}

/**
 * Haven's network lock. While a container is checkpointed, TCP state must not
 * move under CRIU (dump), and nothing may answer for sockets not yet restored
 * (restore): packets are dropped, and clients retransmit — with steady traffic
 * they recover by fast retransmit within a round trip once the lock lifts.
 *
 * CRIU's own locks cost too much inside a freeze: its iptables lock runs two
 * iptables processes per connection per direction (~40 ms for one
 * connection here), its nftables lock deletes a table at unlock, which waits
 * for an RCU grace period (~12 ms). Cutting the link is worse still: the
 * kernel's link watcher rate-limits carrier changes, stalling traffic for up
 * to a second. So every container namespace gets one small nftables table at
 * birth, and locking and unlocking only ever *add* a set element (fast);
 * the slow deletions happen after the thaw:
 *
 *   lock:    add "eth0" to @lock            → dropped (unless CRIU's repair mark)
 *   unlock:  add "eth0" to @unlock          → passes again
 *   reset:   flush both sets (after thaw)   → ready for the next lock
 */
export function lockTableRuleset(locked: boolean): string {
  return [
    'table inet haven {',
    `  set lock { type ifname; ${locked ? 'elements = { "eth0" }; ' : ''}}`,
    '  set unlock { type ifname; }',
    '  chain input { type filter hook input priority -10; meta mark 0xc114 accept; iifname @lock iifname != @unlock drop; }',
    '  chain output { type filter hook output priority -10; meta mark 0xc114 accept; oifname @lock oifname != @unlock drop; }',
    '}',
    '',
  ].join('\n');
}

/**
 * The command (run inside the container's namespace) that drops its traffic
 * (see {@link lockTableRuleset}): one netlink message from a small static
 * program, native/haven-netlock.c (~0.7 ms a call against `nft`'s ~2.8, and the
 * lock and the unlock both sit inside every freeze).
 */
export const LOCK_COMMAND: readonly string[] = [NETLOCK_PATH, 'lock'];
/** The command that lets the traffic through again: an addition only, so it is fast. */
export const UNLOCK_COMMAND: readonly string[] = [NETLOCK_PATH, 'unlock'];

/**
 * The netfilter queue a locked namespace's incoming packets are held in
 * (HOLD_QUEUE in native/haven-netlock.c): queues are per namespace, so one
 * number serves all.
 */
export const HOLD_QUEUE = 7;

/**
 * The rule, ahead of the lock, that hands a locked namespace's incoming
 * packets to the hold queue. With `--queue-bypass`, packets pass on to the
 * lock when nothing listens on the queue (the lock drops them while it is on).
 */
export const HOLD_RULE = `iptables -w -t mangle -A PREROUTING -i eth0 -j NFQUEUE --queue-num ${HOLD_QUEUE} --queue-bypass`;

/** A restore's hold on its container's traffic (see {@link prepareUnlock}). */
export interface Holder {
  /** Brings the link up (if it was made down) and announces the container: its clients' packets come here, to be held. */
  announce(): void;
  /** Unlocks and lets what was held through; resolves with how many packets were held, then announces once more. */
  unlock(): Promise<number>;
  /** Ends the hold with nothing unlocked or announced: what was held is dropped. */
  cancel(): void;
}

/** Set once a namespace could not get the hold rule: said once per process, not per restore. */
let holdUnavailable = false;

/**
 * Holds what a restored container's clients send until it runs, then lets
 * its traffic through and announces it — from one process made ready
 * ahead, so none of it costs a process start when it counts.
 *
 * The hold: the namespace stays locked while CRIU restores, and what
 * arrived meanwhile used to be dropped. A capture of a migration's client
 * showed what that costs: its first retransmission left 210 ms after the
 * freeze (its minimum timer), was dropped while the destination restored,
 * and the next came 430 ms later (the timer backs off) — the client felt
 * 640 ms for 255 ms of downtime. Now a rule ahead of the lock
 * (`iptables -t mangle … -j NFQUEUE --queue-bypass`) hands those packets to
 * `haven-netlock hold`, which keeps them in the kernel's queue; `unlock()`
 * tells it "go": it unlocks, then lets everything held through at once, so
 * the first retransmission that reaches the new host is answered as soon
 * as the sockets exist. The rule comes with the network
 * ({@link HOLD_RULE}); the holder binds (~1 ms) while CRIU restores.
 * Without a listener the rule's bypass passes packets on to the lock, which
 * drops them as before; a restore that fails closes the queue, which drops
 * what it held — nothing reaches a socket that was not restored. Where the
 * rule cannot be made (no NFQUEUE in the kernel), restores go on without
 * the hold (said once, when a network is made).
 *
 * The announcement: a container that came back on another host (a restore,
 * failover or migration) sends one unsolicited ARP from its own interface,
 * as a hypervisor announces a migrated VM. Its IP and MAC are the same, but
 * the bridges and switches on the way learnt its MAC on the old host's port:
 * until the container sends a frame they keep delivering its clients'
 * packets there, where its old copy is locked (a post-copy source stays so
 * until the last page) or gone. It goes out twice: on `announce()`, which
 * the restore calls before CRIU starts — or, on a post-copy destination,
 * the source's agent as soon as the source is frozen and locked (the
 * holder acts on it once bound) — so that clients' packets come here to be
 * held while CRIU restores; and
 * after the unlock (a bridge may not have taken in a port made
 * moments before: a capture on the lab's bridge once showed the first
 * announcement of a new link lost). The announcement `arp_notify` makes when
 * the namespace's link comes up was not enough on its own. Without any,
 * clients of a migrated server with nothing to send waited 1.5–1.7 s against
 * 0.3–0.8 s of downtime (docs/BENCHMARKS.md). A failed announcement only
 * costs that wait: it is logged, not raised.
 *
 * `cancel()` lets the process exit with nothing done (nor announced).
 */
export function prepareUnlock(netns: string, address: string): Holder {
  const announce = `arping -q -U -c 1 -I eth0 "$1"`;
  const script = [
    // Exits 10 when cancelled (input closed without "go"): nothing to announce.
    // On "announce": the link up (a network made ahead keeps it down), then the first announcement.
    `"$0" hold -- sh -c 'ip link set eth0 up && ${announce.replace('$1', '$0')}' "$1" || exit $?`,
    `exec ${announce}`,
  ].join('\n');
  const child = spawn('nsenter', [`--net=${netnsPath(netns)}`, 'sh', '-c', script, NETLOCK_PATH, address], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdin.on('error', () => undefined); // a shell that died early is reported by unlock()
  const exited = new Promise<number>((resolve) => {
    child.on('error', () => resolve(127));
    child.on('close', (code) => resolve(code ?? 128));
  });
  let announced = false;
  return {
    announce: () => {
      if (announced || child.stdin.writableEnded) return;
      announced = true;
      child.stdin.write('announce\n');
    },
    unlock: () =>
      new Promise<number>((resolve, reject) => {
        const started = performance.now();
        const onData = (): void => {
          const released = /^unlocked (\d+)$/m.exec(stdout);
          if (!released) return;
          child.stdout.off('data', onData);
          trace(`unlock ${netns} (${released[1]} packets held)`, started);
          resolve(Number(released[1]));
          // The second announcement goes on in the background (arping waits
          // a second after it): a short-lived process — `haven restore` —
          // may exit meanwhile and leave it to finish on its own.
          child.unref();
          for (const pipe of [child.stdin, child.stdout, child.stderr])
            (pipe as { unref?: () => void }).unref?.();
          void exited.then((code) => {
            // "Network is down": the namespace was removed meanwhile (the container with it).
            if (code !== 0 && !/Network is down/.test(stderr))
              process.stderr.write(
                `announcing ${address} (${netns}): arping failed (${code}): ${stderr.trim()}\n`,
              );
          });
        };
        child.stdout.on('data', onData);
        onData();
        void exited.then((code) => {
          if (!/^unlocked /m.test(stdout))
            reject(
              new RuntimeFailedError(`unlocking ${netns} failed (exit ${code})`, 'haven-netlock', [
                stderr.trim(),
              ]),
            );
        });
        child.stdin.end('go\n');
      }),
    cancel: () => child.stdin.end(),
  };
}

/** A wait that does not keep the process alive (a bound on a holder's answers). */
function unrefSleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** A checkpoint's holder (see {@link startCheckpointHolder}). */
export interface CheckpointHolder {
  /** Its PID, for the checkpoint's chain to signal. */
  pid: number;
  /** After the chain: how many packets it held (once it has let them through); ends it if the chain never said "go". */
  end(): Promise<number | undefined>;
  /** Ends it now (a checkpoint that failed): what it held is dropped, as the lock would have. */
  cancel(): void;
}

/**
 * Starts a holder for a leave-running checkpoint (`haven-netlock hold
 * --idle`): bound to the namespace's hold queue but letting everything pass
 * until the chain signals that its lock is on; then it keeps what clients
 * send until the chain's "go", when it unlocks and lets it all through
 * (see CheckpointHooks.holderPid). A client whose retransmission fell into
 * a long freeze (over ~200 ms: its first retransmission timer) otherwise
 * waits out a backed-off timer after the thaw. Started before the freeze
 * (a process start costs milliseconds); resolves undefined if it cannot
 * start — the checkpoint then unlocks as before.
 */
export async function startCheckpointHolder(netns: string): Promise<CheckpointHolder | undefined> {
  const child = spawn('nsenter', [`--net=${netnsPath(netns)}`, NETLOCK_PATH, 'hold', '--idle'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  const exited = closeOf(child);
  if (!(await untilHolding(child, () => stdout, exited)) || child.pid === undefined) {
    child.kill();
    return undefined;
  }
  return {
    pid: child.pid,
    end: async () => {
      const done = await Promise.race([exited.then(() => true), unrefSleep(1000).then(() => false)]);
      if (!done) child.kill();
      const released = /^unlocked (\d+)$/m.exec(stdout);
      return released ? Number(released[1]) : undefined;
    },
    cancel: () => child.kill(),
  };
}

/** Resolves once a holder process has exited (or could not start). */
function closeOf(child: ChildProcess): Promise<void> {
  return new Promise<void>((resolve) => {
    child.on('error', () => resolve());
    child.on('close', () => resolve());
  });
}

/**
 * True once a holder printed "holding" (its queue is bound) in `output()`
 * (its stdout so far, read by a listener added before this one); false if it
 * exits first or takes over a second.
 */
function untilHolding(child: ChildProcess, output: () => string, exited: Promise<void>): Promise<boolean> {
  return Promise.race([
    new Promise<boolean>((resolve) => {
      const onData = (): void => {
        if (output().includes('holding\n')) resolve(true);
      };
      child.stdout?.on('data', onData);
      onData();
    }),
    exited.then(() => false),
    unrefSleep(1000).then(() => false),
  ]);
}

/** The holder of a namespace's continuous epochs (see {@link epochHolder}). */
export interface EpochHolder {
  /** Its PID, for each epoch's chain to signal. */
  pid: number;
  /** False once it has exited: a PID that may be another process's by now. */
  alive(): boolean;
  /** Lets through anything it holds and ends it. */
  stop(): Promise<void>;
}

/** Epoch holders by namespace: one per continuously protected container. */
const epochHolders = new Map<string, Promise<EpochHolder | undefined>>();

/**
 * The holder of `netns`'s continuous epochs (`haven-netlock hold --repeat`),
 * started on first use and kept: bound to the hold queue, idle (every packet
 * passes) except between an epoch's SIGUSR1 and SIGUSR2, when it keeps what
 * arrives — as {@link startCheckpointHolder} does for one checkpoint, without
 * a process start for each of several epochs a second. Its input is a pipe
 * from this process: if the agent dies, it releases and exits. Resolves
 * undefined if it cannot start (the epoch then drops while locked).
 */
export async function epochHolder(netns: string): Promise<EpochHolder | undefined> {
  const existing = await epochHolders.get(netns);
  if (existing?.alive()) return existing;
  const starting = startEpochHolder(netns);
  epochHolders.set(netns, starting);
  const holder = await starting;
  if (!holder && epochHolders.get(netns) === starting) epochHolders.delete(netns);
  return holder;
}

/**
 * Ends `netns`'s epoch holder, if any: before its network goes, before a
 * checkpoint that brings its own holder (one listener per queue) or stops
 * the container (whose lock must drop, not keep), and after a failed epoch.
 */
export async function stopEpochHolder(netns: string): Promise<void> {
  const pending = epochHolders.get(netns);
  if (!pending) return;
  epochHolders.delete(netns);
  await (await pending)?.stop();
}

async function startEpochHolder(netns: string): Promise<EpochHolder | undefined> {
  const child = spawn('nsenter', [`--net=${netnsPath(netns)}`, NETLOCK_PATH, 'hold', '--repeat'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let exited = false;
  const closed = closeOf(child);
  void closed.then(() => (exited = true));
  // Read to the end, or its "unlocked N" lines (one per epoch) would fill the pipe and block it.
  let started = '';
  child.stdout.on('data', (b: Buffer) => {
    if (started.length < 64) started += b.toString();
  });
  child.stderr.resume();
  child.stdin.on('error', () => undefined); // it exited first
  if (!(await untilHolding(child, () => started, closed)) || child.pid === undefined) {
    child.kill();
    return undefined;
  }
  const pid = child.pid;
  // It never keeps this process alive: it ends with its input, when this process does.
  child.unref();
  for (const stream of [child.stdin, child.stdout, child.stderr])
    (stream as unknown as { unref?: () => void }).unref?.();
  return {
    pid,
    alive: () => !exited,
    stop: async () => {
      child.stdin.end();
      const done = await Promise.race([closed.then(() => true), unrefSleep(1000).then(() => false)]);
      if (!done) child.kill('SIGKILL');
    },
  };
}

/** Empties both sets once the container runs again, ready for the next lock. */
export async function resetNetworkLock(netns: string): Promise<void> {
  await run(['nsenter', `--net=${netnsPath(netns)}`, NETLOCK_PATH, 'reset']);
}

/**
 * One gratuitous ARP for `address` from the namespace's eth0: a post-copy
 * source thawed by a rollback takes its address back on the bridges, which
 * the destination's early announcement (see prepareUnlock) had taught its
 * own port. Best effort: a failure is logged.
 */
export async function announceAddress(netns: string, address: string): Promise<void> {
  const r = await run(
    [
      'nsenter',
      `--net=${netnsPath(netns)}`,
      'arping',
      '-q',
      '-U',
      '-c',
      '1',
      '-w',
      '1',
      '-I',
      'eth0',
      address,
    ],
    {
      allowFailure: true,
    },
  );
  if (r.code !== 0)
    process.stderr.write(`announcing ${address} (${netns}): arping failed: ${r.stderr.trim()}\n`);
}

/**
 * The bridge-side veth of a container: its first characters name the host
 * (see {@link containerVethPrefix}), so that whoever holds the bridge (the
 * lab, to partition one host) can find a host's container links by name.
 * 1 + 5 + 8 = 14 characters, within the kernel's 15.
 */
function hostVethName(config: HostConfig, netns: string): string {
  return `${containerVethPrefix(config.hostName)}${shortHash(netns).slice(0, 8)}`;
}

/** The prefix every bridge-side veth of `hostName`'s containers starts with. */
export function containerVethPrefix(hostName: string): string {
  return `c${shortHash(hostName).slice(0, 5)}`;
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
