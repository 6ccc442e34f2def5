/**
 * Service addresses: the address at which clients reach a continuously
 * protected container's output-commit proxy (see src/agent/output-commit.ts).
 * It lives on the primary's host — on the interface that carries the host's
 * own address — and moves with the container, as a virtual IP does under
 * keepalived: the new holder adds it and announces it with unsolicited
 * (gratuitous) ARP, so neighbours switch at once instead of waiting for
 * their ARP entries to go stale; the old holder, if alive, removes it before
 * its lease ends (fencing).
 *
 * The address is added as a /32: it adds no route, only a local address.
 */
import { NETLOCK_PATH } from '../core/config.js';
import { RuntimeFailedError } from '../core/errors.js';
import { run } from '../core/exec.js';
import type { ServiceClient } from '../replication/chunks.js';

/** The interface that carries `hostAddress` in this network namespace. */
export async function interfaceOf(hostAddress: string): Promise<string> {
  const out = await run(['ip', '-o', '-4', 'addr', 'show']);
  for (const line of out.stdout.split('\n')) {
    // "2: eth0    inet 10.88.0.2/16 brd … scope global eth0"
    const match = /^\d+:\s+(\S+)\s+inet\s+([0-9.]+)\//.exec(line);
    if (match && match[2] === hostAddress) return match[1]!.replace(/@.*$/, '');
  }
  throw new Error(`no interface here carries ${hostAddress}: cannot hold a service address`);
}

/**
 * Adds `address` to the interface of `hostAddress` and announces it with
 * unsolicited ARP (two, a second apart, in the background: the first goes at
 * once). Idempotent.
 */
export async function claimServiceAddress(address: string, hostAddress: string): Promise<void> {
  const device = await interfaceOf(hostAddress);
  await run(['ip', 'addr', 'replace', `${address}/32`, 'dev', device]);
  // Two, a second apart (iputils' arping takes whole seconds): the second
  // also lands after the kernel's 1 s ARP locktime, in case a neighbour
  // refreshed its entry for the old holder just before the first.
  void run(['arping', '-q', '-U', '-c', '2', '-I', device, address], { allowFailure: true }).then((r) => {
    if (r.code !== 0) process.stderr.write(`service address ${address}: arping failed: ${r.stderr.trim()}\n`);
  });
}

/** Removes `address` from this host, if it holds it. */
export async function releaseServiceAddress(address: string, hostAddress: string): Promise<void> {
  const device = await interfaceOf(hostAddress).catch(() => undefined);
  if (!device) return;
  await run(['ip', 'addr', 'del', `${address}/32`, 'dev', device], { allowFailure: true });
}

/** Pairs per `haven-netlock tickle` process (its argument list stays small). */
const TICKLES_PER_PROCESS = 256;

/**
 * Sends each of `clients` of `address` a tickle ACK (`haven-netlock
 * tickle`, see native/haven-netlock.c): a client still holding a connection
 * to the dead holder answers it, this host resets that connection, and the
 * client reconnects at once instead of waiting for a reply that will never
 * come (for its own time-out, or for ever).
 * @throws RuntimeFailedError after trying every client, if any tickle failed.
 */
export async function tickleClients(address: string, clients: readonly ServiceClient[]): Promise<void> {
  // Every batch is tried; what failed is thrown at the end, for the caller to log.
  const failures: string[] = [];
  for (let i = 0; i < clients.length; i += TICKLES_PER_PROCESS) {
    const pairs = clients
      .slice(i, i + TICKLES_PER_PROCESS)
      .flatMap((c) => [`${address}:${c.port}`, `${c.address}:${c.clientPort}`]);
    const r = await run([NETLOCK_PATH, 'tickle', ...pairs], { allowFailure: true });
    if (r.code !== 0) failures.push(r.stderr.trim() || `exit ${r.code}`);
  }
  if (failures.length > 0)
    throw new RuntimeFailedError(`tickling clients of ${address} failed`, 'haven-netlock', failures);
}
