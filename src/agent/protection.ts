/**
 * An agent's part in checkpoint protection, both roles:
 *   - as a **primary** host, one {@link Replicator} per protected container,
 *     its spec kept on disk (`<state>/protection/<name>.json`) so a restarted
 *     agent resumes protection by itself;
 *   - as a **backup** host, the {@link ReplicaStore} of epochs it received,
 *     and the promotion that restores the newest intact one at failover.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CorruptCheckpointError,
  FailedPreconditionError,
  HavenError,
  NotFoundError,
} from '../core/errors.js';
import { callJson } from '../core/http-client.js';
import type { ContainerHost, ContainerView } from '../host/container-host.js';
import { assembleDirectory, type EpochManifest, type ServiceClient } from '../replication/chunks.js';
import { manifestKey } from '../replication/manifest-mac.js';
import { MigrationSource } from '../replication/migration-source.js';
import { MAX_SERVICE_CLIENTS, ReplicaStore } from '../replication/replica-store.js';
import { claimServiceAddress, releaseServiceAddress, tickleClients } from '../runtime/service-address.js';
import { OutputCommitProxy, type OutputCommitStats } from './output-commit.js';
import type { Prober } from './probes.js';
import {
  Replicator,
  type EpochResult,
  type ProtectionSpec,
  type ProtectionStatus,
} from '../replication/replicator.js';

/**
 * What the controller orders for a protected primary: its backup (none:
 * replication stops) and, for continuous protection, where its clients
 * connect (the service address and published ports of its output commit).
 */
export interface ProtectionOrder {
  backup: ProtectionSpec['backup'] | null;
  intervalMs: number;
  mode?: 'checkpoint' | 'continuous';
  /** Continuous mode: ports the output-commit proxy publishes on `serviceAddress`. */
  publish?: number[];
  serviceAddress?: string;
}

/** A primary's protection status, with its output commit in continuous mode. */
export interface PrimaryStatus extends ProtectionStatus {
  output?: OutputCommitStats;
}

/** What a promotion did. */
export interface PromotionReport {
  view: ContainerView;
  epoch: number;
  /** When that epoch's checkpoint began: what a client had acknowledged before it is restored. */
  takenAt: string;
  /** Newer epochs that could not be used, why, and the milliseconds spent finding out. */
  skipped: Array<{ epoch: number; error: string; ms: number }>;
  /** Milliseconds: assembling the epoch from chunks, the restore, and the whole. */
  assembleMs: number;
  restoreMs: number;
  totalMs: number;
  /** The epoch was assembled ahead of the order (the controller suspected the primary's host). */
  staged?: boolean;
}

/** An epoch assembled into a scratch directory, ready to restore. */
interface Assembled {
  epoch: number;
  /** The newest epoch held when it was assembled: a newer one since makes it stale. */
  newestHeld: number;
  manifest: EpochManifest;
  scratch: string;
  dir: string;
  /** Newer epochs found damaged on the way. */
  skipped: PromotionReport['skipped'];
  assembleMs: number;
  /** Assembled ahead of the order (see {@link Protection.stage}). */
  staged: boolean;
}

/** How long an epoch assembled ahead of a promotion is kept if no promotion comes. */
const STAGE_TTL_MS = 10_000;

/** When clients of a taken-over service address are tickled the second time (after its second ARP). */
const TICKLE_AGAIN_MS = 1100;

/** What a recovery in place did (see {@link Protection.recoverInPlace}). */
export interface RecoveryReport {
  view: ContainerView;
  /** The local checkpoint restored: that of the newest committed epoch, begun at `takenAt`. */
  checkpoint: string;
  takenAt: string;
  restoreMs: number;
  totalMs: number;
}

/** What a planned switchover's last epoch was, on the primary (see {@link Protection.handover}). */
export interface HandoverReport extends EpochResult {
  /** Milliseconds from the order to the epoch committed on the backup. */
  handoverMs: number;
}

/**
 * A host that has heard nothing from the controller for this long, and
 * reaches none of its backups either, freezes its protected primaries: it may
 * be the one cut off. The controller restores a failed host's containers
 * elsewhere only after this lease (+ a margin) from the host's last beat, so
 * the old copy stops first.
 */
export const LEASE_MS = 500;

/**
 * Test knob: milliseconds an agent holds back the answer of a migration's
 * (provisional) promotion after the restore, as a slow or lost answer would.
 */
export const PROMOTE_HOLD_VARIABLE = 'HAVEN_TEST_PROMOTE_HOLD_MS';

/** How often the lease is looked at: the freeze comes at most this late. */
const LEASE_CHECK_MS = 25;

/**
 * Backups are asked whether they are reachable from this long before the
 * lease runs out (the ask times out after 150 ms), so that the answer is in
 * when it does and the freeze is not held back by it.
 */
const PEER_ASK_LEAD_MS = 200;

/** Protection on one host. */
export class Protection {
  readonly replicas: ReplicaStore;
  /** This host as the source of live migrations (their rounds; see migration-source.ts). */
  readonly migrations: MigrationSource;
  private readonly replicators = new Map<string, Replicator>();
  /** Output-commit proxies of this host's continuously protected primaries (with or without a backup). */
  private readonly proxies = new Map<string, { order: ProtectionOrder; proxy: OutputCommitProxy }>();
  /** Clients of a just-promoted container's old primary, tickled when its proxy starts here. */
  private readonly clientsToTickle = new Map<string, ServiceClient[]>();
  /** Primaries (and provisional copies) this host froze because it lost its lease. */
  private readonly fenced = new Set<string>();
  /**
   * Copies a migration's promotion restored here that the controller has not
   * yet placed here (see {@link confirm}). Until then they run on an order
   * whose answer the controller may never have had: cut off from it for the
   * lease, this host freezes them whatever its peers say — the controller
   * may be rolling the migration back and running the source again, which it
   * does only after that lease (so the two never serve at once).
   */
  private readonly provisional = new Set<string>();
  private fenceTimer: NodeJS.Timeout | undefined;
  private fencing = false;
  /** The latest ask of the backups during this silence (keyed by the acknowledgement it began after). */
  private peerAsk: { after: number; at: number; reachable: boolean | undefined } | undefined;

  constructor(
    private readonly host: ContainerHost,
    private readonly token: string,
    private readonly log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
    private readonly prober?: Prober,
    /** This host's own address: service addresses go on the interface that carries it. */
    private readonly hostAddress?: string,
  ) {
    this.replicas = new ReplicaStore(join(host.config.stateDir, 'replicas'), {
      manifestKey: manifestKey(token),
    });
    this.migrations = new MigrationSource(host, token, log);
  }

  private get specDir(): string {
    return join(this.host.config.stateDir, 'protection');
  }

  /** Resumes protection of every container that had it (after an agent restart). */
  async resume(): Promise<void> {
    // Frozen by fencing before this agent restarted (the freeze and its hold
    // outlive it; nothing else pauses a container): thawed as before, once the
    // controller places them here again.
    for (const c of await this.host.list()) if (c.state === 'paused') this.fenced.add(c.name);
    // Copies still provisional when this agent stopped, that are still here.
    if (existsSync(this.provisionalDir)) {
      for (const name of await readdir(this.provisionalDir)) {
        if (
          await this.host.inspect(name).then(
            () => true,
            () => false,
          )
        )
          this.provisional.add(name);
        else await rm(join(this.provisionalDir, name), { force: true });
      }
    }
    if (!existsSync(this.specDir)) return;
    for (const file of await readdir(this.specDir)) {
      if (!file.endsWith('.json')) continue;
      const name = file.slice(0, -5);
      const order = JSON.parse(await readFile(join(this.specDir, file), 'utf8')) as ProtectionOrder;
      await this.apply(name, order).catch((error: unknown) =>
        this.log(`protection of ${name} not resumed: ${(error as Error).message}`),
      );
    }
  }

  /**
   * Protects `name` as the order says (replacing any previous order), or
   * stops protecting it (`null`). A continuous order without a backup keeps
   * the output-commit proxy, passing output through (nothing can be committed).
   */
  async protect(name: string, order: ProtectionOrder | null): Promise<void> {
    await this.oneAtATime(name, () => this.protectNow(name, order));
  }

  /**
   * Runs `work` once every earlier change to `name`'s replicator (a
   * protection order, a handover, a recovery in place) is done. Each of them
   * stops the replicator it finds and may start another: two at once would
   * each start one, and the one the map forgets would checkpoint for ever.
   */
  private oneAtATime<T>(name: string, work: () => Promise<T>): Promise<T> {
    const running = (this.ordering.get(name) ?? Promise.resolve()).then(work);
    const settled = running.then(
      () => undefined,
      () => undefined,
    );
    this.ordering.set(name, settled);
    void settled.then(() => {
      if (this.ordering.get(name) === settled) this.ordering.delete(name);
    });
    return running;
  }

  /** The last change queued per container, settled or not (see {@link oneAtATime}). */
  private readonly ordering = new Map<string, Promise<void>>();

  private async protectNow(name: string, order: ProtectionOrder | null): Promise<void> {
    await this.replicators.get(name)?.stop();
    this.replicators.delete(name);
    if (!order || (!order.backup && order.mode !== 'continuous')) {
      await this.closeProxy(name);
      await rm(join(this.specDir, `${name}.json`), { force: true });
      return;
    }
    await this.host.inspect(name); // it must exist here
    await mkdir(this.specDir, { recursive: true });
    await writeFile(join(this.specDir, `${name}.json`), JSON.stringify(order));
    await this.apply(name, order);
  }

  /** Starts what an order asks for: the output commit (continuous), then the replicator (with a backup). */
  private async apply(name: string, order: ProtectionOrder): Promise<void> {
    const proxy = order.mode === 'continuous' ? await this.ensureProxy(name, order) : undefined;
    if (!proxy) await this.closeProxy(name);
    if (order.backup) {
      this.startReplicator(
        name,
        { backup: order.backup, intervalMs: order.intervalMs, mode: order.mode },
        proxy,
      );
    }
  }

  /**
   * The output-commit proxy of a continuous primary, listening on its service
   * address (claimed here and announced). Held while a backup exists;
   * passthrough while none does.
   */
  private async ensureProxy(name: string, order: ProtectionOrder): Promise<OutputCommitProxy | undefined> {
    const { serviceAddress, publish } = order;
    if (!serviceAddress || !publish || publish.length === 0) return undefined;
    if (!this.hostAddress)
      throw new FailedPreconditionError('this agent has no host address to carry service addresses');
    const mode = order.backup ? 'held' : 'passthrough';
    const current = this.proxies.get(name);
    if (
      current &&
      current.order.serviceAddress === serviceAddress &&
      current.order.publish?.join() === publish.join()
    ) {
      current.order = order;
      current.proxy.setMode(mode);
      return current.proxy;
    }
    await this.closeProxy(name);
    const view = await this.host.inspect(name);
    const target = view.ip?.split('/')[0];
    if (!target) throw new FailedPreconditionError(`"${name}" has no address for its output commit to reach`);
    await claimServiceAddress(serviceAddress, this.hostAddress);
    const proxy = new OutputCommitProxy({ serviceAddress, target, ports: publish, mode, log: this.log });
    try {
      await proxy.start();
    } catch (error) {
      await proxy.close();
      await releaseServiceAddress(serviceAddress, this.hostAddress);
      throw error;
    }
    this.proxies.set(name, { order, proxy });
    this.log(`output commit of ${name}: ${serviceAddress}:${publish.join(',')} → ${target} (${mode})`);
    const clients = this.clientsToTickle.get(name);
    if (clients) {
      this.clientsToTickle.delete(name);
      // Now, and again once the second announcement has gone out (a client
      // whose answer went to the dead host's address is tickled again).
      // Best effort: a failure is logged, and the second round still goes out.
      const tickle = (): Promise<void> =>
        tickleClients(serviceAddress, clients).then(
          () =>
            this.log(
              `output commit of ${name}: tickled ${clients.length} client connection(s) of the old primary`,
            ),
          (e: unknown) => this.log(`output commit of ${name}: tickling its old clients: ${String(e)}`),
        );
      void tickle().then(() => setTimeout(() => void tickle(), TICKLE_AGAIN_MS).unref());
    }
    return proxy;
  }

  /** Closes a primary's output commit (its connections reset) and gives up its service address. */
  private async closeProxy(name: string, options: { graceful?: boolean } = {}): Promise<void> {
    const current = this.proxies.get(name);
    if (!current) return;
    this.proxies.delete(name);
    await current.proxy.close(options);
    if (current.order.serviceAddress && this.hostAddress) {
      await releaseServiceAddress(current.order.serviceAddress, this.hostAddress);
    }
  }

  private startReplicator(name: string, spec: ProtectionSpec, proxy?: OutputCommitProxy): void {
    const prober = this.prober;
    // Continuous epochs come many times a second: they go by the probe's
    // last verdict instead of running it each time.
    const healthy =
      spec.mode === 'continuous'
        ? () => Promise.resolve(prober?.healthOf(name) !== 'unhealthy')
        : () => (prober ? prober.passesNow(name) : Promise.resolve(true));
    const hooks = proxy
      ? {
          cut: () => proxy.cut(),
          committed: (generation: number) => proxy.release(generation),
          clients: () => proxy.clients(MAX_SERVICE_CLIENTS),
        }
      : undefined;
    const replicator = new Replicator(this.host, name, spec, this.token, this.log, healthy, hooks);
    this.replicators.set(name, replicator);
    replicator.start();
  }

  /** Status of every container this host protects as primary. */
  statuses(): PrimaryStatus[] {
    const statuses: PrimaryStatus[] = [...this.replicators.values()].map((r) => ({
      ...r.status,
      ...(this.proxies.has(r.name) ? { output: this.proxies.get(r.name)!.proxy.stats() } : {}),
    }));
    return statuses;
  }

  /** The output commit of `name` on this host, if it has one. */
  outputStats(name: string): OutputCommitStats | undefined {
    return this.proxies.get(name)?.proxy.stats();
  }

  /**
   * Watches the lease: `lastAckAt` is when the controller last acknowledged a
   * heartbeat. Checked every {@link LEASE_CHECK_MS}.
   */
  startFencing(lastAckAt: () => number): void {
    this.fenceTimer ??= setInterval(() => {
      if (this.fencing) return;
      this.fencing = true;
      void this.checkLease(lastAckAt()).finally(() => (this.fencing = false));
    }, LEASE_CHECK_MS);
    this.fenceTimer.unref();
  }

  private async checkLease(lastAckAt: number): Promise<void> {
    const silentMs = Date.now() - lastAckAt;
    if (silentMs <= LEASE_MS - PEER_ASK_LEAD_MS) return;
    const primaries = [...this.replicators.values()].filter((r) => !this.fenced.has(r.name));
    const provisional = [...this.provisional].filter((name) => !this.fenced.has(name));
    if (silentMs > LEASE_MS && provisional.length > 0) {
      // Only the controller can confirm these: no peer's answer keeps them running.
      await this.fence(provisional, lastAckAt, 'a copy not yet placed here');
    }
    if (primaries.length === 0) return;
    // Cut off from the controller only (its link, or it is down)? Then a peer
    // answers: the controller cannot fail this host over without a peer
    // agreeing it is gone. Asked ahead of the lease's end, and again every
    // PEER_ASK_LEAD_MS while the silence lasts.
    const ask = this.peerAsk;
    if (!ask || ask.after !== lastAckAt || Date.now() - ask.at >= PEER_ASK_LEAD_MS) {
      this.askPeers(primaries, lastAckAt);
    }
    if (silentMs <= LEASE_MS) return;
    // The lease has run out: only a backup's answer already in keeps the primaries running.
    if (this.peerAsk?.after === lastAckAt && this.peerAsk.reachable === true) return;
    await this.fence(
      primaries.map((r) => r.name),
      lastAckAt,
      'no peer',
    );
  }

  /** Asks the backups of `primaries` whether they are reachable; the answer lands in `peerAsk`. */
  private askPeers(primaries: readonly Replicator[], lastAckAt: number): void {
    const ask: { after: number; at: number; reachable: boolean | undefined } = {
      after: lastAckAt,
      at: Date.now(),
      reachable: this.peerAsk?.after === lastAckAt ? this.peerAsk.reachable : undefined,
    };
    this.peerAsk = ask;
    const peers = [...new Set(primaries.map((r) => r.spec.backup.address))];
    void Promise.all(
      peers.map((address) =>
        callJson(address, '/v1/health', this.token, { timeoutMs: 150 }).then(
          () => true,
          () => false,
        ),
      ),
    ).then((answers) => {
      if (this.peerAsk === ask) ask.reachable = answers.some(Boolean);
    });
  }

  /**
   * Freezes every one of `names` at once (the controller's restore elsewhere
   * is at most a margin away); `why` goes into the log.
   */
  private async fence(names: readonly string[], lastAckAt: number, why: string): Promise<void> {
    await Promise.all(
      names.map(async (name) => {
        try {
          await this.host.pause(name);
          this.fenced.add(name);
          // Its kernel would still answer ARP for the address the restored copy takes over.
          await this.host
            .setLink(name, 'down')
            .catch((error: unknown) => this.log(`fencing: cannot cut ${name} off: ${String(error)}`));
          // Its clients must not reach it either: the service address goes (the new primary claims it).
          await this.closeProxy(name);
          this.log(`fencing: no controller for ${Date.now() - lastAckAt} ms (${why}): froze ${name}`);
        } catch (error) {
          // Gone meanwhile: nothing left to freeze or to confirm.
          // (A promotion still restoring it is looked at again on the next check.)
          if (error instanceof NotFoundError && !this.promoting.has(name)) await this.unmarkProvisional(name);
          else this.log(`fencing: cannot freeze ${name}: ${(error as Error).message}`);
        }
      }),
    );
  }

  /** `name` runs here on trust until {@link confirm}ed (see {@link provisional}). */
  async markProvisional(name: string): Promise<void> {
    this.provisional.add(name);
    // Remembered on disk: an agent restarted meanwhile must go on treating it so.
    await mkdir(this.provisionalDir, { recursive: true });
    await writeFile(join(this.provisionalDir, name), '');
  }

  private async unmarkProvisional(name: string): Promise<void> {
    if (!this.provisional.delete(name)) return;
    await rm(join(this.provisionalDir, name), { force: true });
  }

  private get provisionalDir(): string {
    return join(this.host.config.stateDir, 'provisional');
  }

  /**
   * The controller placed `name` here (it moved the container's intent):
   * a provisional copy is confirmed, and thawed if this host had fenced it.
   */
  async confirm(name: string): Promise<void> {
    await this.onPrimaries([name]);
  }

  /** A container removed from this host: nothing of it is to be fenced, thawed or confirmed any more. */
  async forget(name: string): Promise<void> {
    await this.unmarkProvisional(name);
    this.fenced.delete(name);
  }

  /**
   * The controller, reachable again, says which containers this host may run:
   * fenced ones it still places here are thawed; the others stay frozen until
   * the controller removes them (they were failed over elsewhere).
   */
  async onPrimaries(names: readonly string[]): Promise<void> {
    for (const name of names) await this.unmarkProvisional(name);
    for (const name of [...this.fenced]) {
      if (!names.includes(name)) continue;
      await this.host
        .setLink(name, 'up')
        .catch((error: unknown) => this.log(`fencing: cannot reconnect ${name}: ${String(error)}`));
      await this.host
        .resume(name)
        .catch((error: unknown) => this.log(`fencing: cannot thaw ${name}: ${String(error)}`));
      this.fenced.delete(name);
      this.log(`fencing: the controller still places ${name} here: thawed`);
      const order = await readFile(join(this.specDir, `${name}.json`), 'utf8')
        .then((text) => JSON.parse(text) as ProtectionOrder)
        .catch(() => undefined);
      if (order?.mode === 'continuous') {
        await this.ensureProxy(name, order).catch((error: unknown) =>
          this.log(`output commit of ${name} not restored after thaw: ${String(error)}`),
        );
      }
    }
  }

  /**
   * A protected container died (exit, OOM kill) or hung (failing its probe or
   * watchdog) on this live host: whatever is left of it is killed and it is
   * restored here from the local checkpoint of its newest committed epoch —
   * the same state its backup holds, without moving its address. Connections
   * are closed (their sequence numbers are older than what clients saw).
   * Protection goes on from the restored copy.
   * @throws FailedPreconditionError if that checkpoint is not kept here (the
   * controller then restores it on the backup).
   */
  async recoverInPlace(name: string): Promise<RecoveryReport> {
    return this.oneAtATime(name, () => this.recoverInPlaceNow(name));
  }

  private async recoverInPlaceNow(name: string): Promise<RecoveryReport> {
    const replicator = this.replicators.get(name);
    if (!replicator?.status.committedCheckpoint) {
      throw new FailedPreconditionError(`no committed epoch of "${name}" is kept on this host`);
    }
    const started = performance.now();
    // The epoch in flight commits (or not) before the newest committed one is
    // chosen; output the dead copy produced after it is dropped, never released.
    await replicator.stop();
    this.replicators.delete(name);
    this.proxies.get(name)?.proxy.reset();
    const checkpoint = replicator.status.committedCheckpoint;
    const takenAt = replicator.status.committedTakenAt!;
    await this.host.stop(name, 0); // a hung process is killed; a dead one leaves nothing to stop
    // SIGKILL is not instant: the restore needs it gone.
    for (let waited = 0; waited < 2000 && (await this.host.inspect(name)).state === 'running'; waited += 20) {
      await sleep(20);
    }
    const restore = await this.host.restore(name, { checkpoint, tcpClose: true });
    this.startReplicator(name, replicator.spec, this.proxies.get(name)?.proxy);
    await this.prober?.restart(name);
    return {
      view: await this.host.inspect(name),
      checkpoint,
      takenAt,
      restoreMs: restore.wallMs,
      totalMs: performance.now() - started,
    };
  }

  /** Stops every replicator (agent shutdown; protection resumes on restart). */
  async stopAll(): Promise<void> {
    if (this.fenceTimer) clearInterval(this.fenceTimer);
    await Promise.all([...this.replicators.values()].map((r) => r.stop()));
    await Promise.all([...this.proxies.keys()].map((name) => this.closeProxy(name)));
  }

  /**
   * Planned switchover, on the primary: the epoch loop stops and one last
   * epoch is taken with the container stopped (see {@link Replicator.epoch})
   * and committed on the backup, which then restores exactly that epoch with
   * its connections. If it cannot be committed, the container runs on here
   * from that same checkpoint, connections kept, and protection resumes:
   * nothing is lost either way.
   */
  async handover(name: string): Promise<HandoverReport & { already?: boolean }> {
    // Ordered again (a controller restarted half-way): join the handover in
    // flight, or report the one done if the container is still stopped by it.
    const inFlight = this.handingOver.get(name);
    if (inFlight) return inFlight;
    const work = this.oneAtATime(name, () => this.handOverNow(name)).finally(() =>
      this.handingOver.delete(name),
    );
    this.handingOver.set(name, work);
    return work;
  }

  private async handOverNow(name: string): Promise<HandoverReport & { already?: boolean }> {
    const replicator = this.replicators.get(name);
    if (!replicator) {
      const done = await readFile(this.handoverFile(name), 'utf8')
        .then((text) => JSON.parse(text) as HandoverReport)
        .catch(() => undefined);
      const view = await this.host.inspect(name).catch(() => undefined);
      if (done && view?.state === 'checkpointed') return { ...done, already: true };
      throw new FailedPreconditionError(`"${name}" is not protected from this host`);
    }
    return this.handOver(name, replicator);
  }

  private readonly handingOver = new Map<string, Promise<HandoverReport>>();

  private handoverFile(name: string): string {
    return join(this.host.config.stateDir, 'handovers', `${name}.json`);
  }

  private async handOver(name: string, replicator: Replicator): Promise<HandoverReport> {
    const started = performance.now();
    await replicator.stop();
    this.replicators.delete(name);
    try {
      const result = await replicator.epoch({ final: true });
      // No longer a primary here: a restarted agent must not resume its epochs.
      await rm(join(this.specDir, `${name}.json`), { force: true });
      // The final epoch's output is out; its clients reconnect to the new primary.
      await this.closeProxy(name, { graceful: true });
      const report = { ...result, handoverMs: performance.now() - started };
      await mkdir(join(this.host.config.stateDir, 'handovers'), { recursive: true });
      await writeFile(this.handoverFile(name), JSON.stringify(report));
      return report;
    } catch (error) {
      const view = await this.host.inspect(name).catch(() => undefined);
      if (view?.state === 'checkpointed') {
        await this.host
          .restore(name, { tcpClose: false })
          .catch((e: unknown) => this.log(`handover of ${name} failed and so did its restore: ${String(e)}`));
      }
      this.startReplicator(name, replicator.spec, this.proxies.get(name)?.proxy);
      throw error;
    }
  }

  /** Promotions in flight: a repeated order (a restarted controller) joins the one running. */
  private readonly promoting = new Map<string, Promise<PromotionReport>>();

  private promotionFile(name: string): string {
    return join(this.host.config.stateDir, 'promotions', `${name}.json`);
  }

  /**
   * Failover on the backup: restores `name` from the newest committed epoch
   * that is intact, newest first. A damaged epoch (a chunk that no longer
   * matches its hash, a bad manifest) is skipped and reported; the next one
   * is tried. Established TCP connections are closed on restore by default:
   * their sequence numbers are older than what clients have seen.
   */
  async promote(
    name: string,
    options: { tcpClose?: boolean; epoch?: number; provisional?: boolean } = {},
  ): Promise<PromotionReport & { already?: boolean }> {
    const inFlight = this.promoting.get(name);
    if (inFlight) return inFlight;
    const work = (async () => {
      // Marked before the restore: an order whose answer is lost leaves a copy the controller may not count on.
      if (options.provisional) await this.markProvisional(name);
      return this.promoteOnce(name, options);
    })()
      .then(async (report) => {
        // Test knob: the answer of a migration's promotion held back, so that a test can
        // cut the host off between its restore and the controller's hearing of it.
        const holdMs = Number(process.env[PROMOTE_HOLD_VARIABLE] ?? 0);
        if (options.provisional && holdMs > 0) await sleep(holdMs);
        return report;
      })
      .catch(async (error: unknown) => {
        if (options.provisional) await this.unmarkProvisional(name); // nothing restored: nothing to fence
        throw error;
      })
      .finally(() => this.promoting.delete(name));
    this.promoting.set(name, work);
    return work;
  }

  /**
   * A promotion is idempotent: ordered again (by a controller that restarted
   * before it recorded the answer), the container already running here from
   * that promotion — same process as recorded then — is the answer.
   * With `epoch`, only that epoch is restored (a switchover's final one), never an older one.
   */
  private async promoteOnce(
    name: string,
    options: { tcpClose?: boolean; epoch?: number },
  ): Promise<PromotionReport & { already?: boolean }> {
    const earlier = await readFile(this.promotionFile(name), 'utf8')
      .then((text) => JSON.parse(text) as PromotionReport)
      .catch(() => undefined);
    const running = await this.host.inspect(name).catch(() => undefined);
    if (earlier && running && running.pid === earlier.view.pid && running.pid > 0) {
      if (options.epoch !== undefined && options.epoch !== earlier.epoch) {
        throw new FailedPreconditionError(
          `"${name}" already runs here from epoch ${earlier.epoch}, not ${options.epoch}`,
        );
      }
      return { ...earlier, view: running, already: true };
    }
    const report = await this.promoteNewest(name, options);
    await mkdir(join(this.host.config.stateDir, 'promotions'), { recursive: true });
    await writeFile(this.promotionFile(name), JSON.stringify(report));
    return report;
  }

  private async promoteNewest(
    name: string,
    options: { tcpClose?: boolean; epoch?: number },
  ): Promise<PromotionReport> {
    const started = performance.now();
    const skipped: PromotionReport['skipped'] = [];
    let assembled = await this.takeStaged(name, options.epoch);
    for (;;) {
      assembled ??= await this.assembleNewest(name, { epoch: options.epoch, skipped });
      const { epoch, manifest, scratch, dir } = assembled;
      skipped.push(...assembled.skipped.filter((s) => !skipped.includes(s)));
      try {
        const restoreStarted = performance.now();
        // Every chunk was hash-checked as it was assembled: no second pass over the files.
        const restored = await this.host.adoptCheckpoint(manifest.record, dir, {
          tcpClose: options.tcpClose ?? true,
          contentVerified: true,
        });
        const restoreMs = performance.now() - restoreStarted;
        // Its clients, as the epoch listed them: tickled once its service address is here.
        if (manifest.clients?.length) this.clientsToTickle.set(name, manifest.clients);
        // It is a primary now: the replica it came from is spent, and so is the
        // assembled copy. Both go after the answer: removing a checkpoint's
        // files and pruning the chunk store are not the container's downtime.
        void Promise.all([this.replicas.drop(name), rm(scratch, { recursive: true, force: true })]).catch(
          (e: unknown) => this.log(`promote ${name}: cleaning up: ${String(e)}`),
        );
        return {
          view: await this.host.restoredView(name, restored.pid),
          epoch,
          takenAt: manifest.takenAt,
          skipped,
          assembleMs: assembled.assembleMs,
          restoreMs,
          totalMs: performance.now() - started,
          staged: assembled.staged,
        };
      } catch (error) {
        await rm(scratch, { recursive: true, force: true });
        if (!(error instanceof CorruptCheckpointError)) throw error;
        this.log(`promote ${name}: epoch ${epoch} is damaged (${error.message}); trying an older one`);
        skipped.push({ epoch, error: error.message, ms: 0 });
        assembled = undefined;
      }
    }
  }

  /**
   * Assembles the newest intact committed epoch of `name` (or exactly
   * `epoch`) into a scratch directory, skipping epochs listed in `skipped`
   * and any found damaged (added to the result's `skipped`, newest first).
   * The caller removes `scratch`.
   */
  private async assembleNewest(
    name: string,
    options: { epoch?: number; skipped?: PromotionReport['skipped'] },
  ): Promise<Assembled> {
    const held = await this.replicas.epochs(name);
    const tried = new Set((options.skipped ?? []).map((s) => s.epoch));
    const epochs = (options.epoch === undefined ? held : held.filter((e) => e === options.epoch)).filter(
      (e) => !tried.has(e),
    );
    if (epochs.length === 0 && tried.size === 0)
      throw new NotFoundError(
        `this host holds no committed epoch${options.epoch === undefined ? '' : ` ${options.epoch}`} of "${name}"`,
      );
    const skipped: PromotionReport['skipped'] = [];
    for (const epoch of epochs) {
      const began = performance.now();
      let manifest: EpochManifest;
      try {
        manifest = await this.replicas.manifest(name, epoch);
      } catch (error) {
        skipped.push({ epoch, error: (error as Error).message, ms: Math.round(performance.now() - began) });
        continue;
      }
      const bytes = manifest.files.reduce((sum, f) => sum + f.size, 0);
      const scratch = await this.host.scratchDir(bytes);
      const dir = join(scratch, manifest.checkpointId);
      try {
        await assembleDirectory(manifest, this.replicas.chunks, dir);
      } catch (error) {
        await rm(scratch, { recursive: true, force: true });
        if (!(error instanceof CorruptCheckpointError)) throw error;
        this.log(`promote ${name}: epoch ${epoch} is damaged (${error.message}); trying an older one`);
        skipped.push({ epoch, error: error.message, ms: Math.round(performance.now() - began) });
        continue;
      }
      return {
        epoch,
        newestHeld: held[0] ?? epoch,
        manifest,
        scratch,
        dir,
        skipped,
        assembleMs: performance.now() - began,
        staged: false,
      };
    }
    const all = [...(options.skipped ?? []), ...skipped];
    throw new HavenError(
      `no intact epoch of "${name}" here: ${all.map((s) => `${s.epoch}: ${s.error}`).join('; ')}`,
      'corrupt_checkpoint',
    );
  }

  /** Epochs assembled ahead of a likely promotion, by container (see {@link stage}). */
  private readonly staged = new Map<string, Promise<Assembled>>();

  /**
   * Assembles the newest intact epoch of `name` now, ahead of a promotion
   * the controller may order soon: it asks when it suspects the primary's
   * host, and then spends a few hundred milliseconds making sure (peers
   * probe the host; its lease must run out). The assembly — at 100 MB a third
   * of the promotion — is then done by the time the order comes. Kept for
   * {@link STAGE_TTL_MS}; an epoch committed meanwhile makes it stale (the
   * promotion then assembles afresh).
   */
  async stage(name: string): Promise<{ epoch: number; assembleMs: number; skipped: number }> {
    let pending = this.staged.get(name);
    if (pending) {
      // Staged at an earlier suspicion: still good only if no epoch was committed since.
      const earlier = await pending.catch(() => undefined);
      const newest = (await this.replicas.epochs(name))[0];
      if (!earlier || earlier.newestHeld !== newest) {
        if (this.staged.get(name) === pending) this.staged.delete(name);
        if (earlier) await rm(earlier.scratch, { recursive: true, force: true });
        pending = this.staged.get(name);
      }
    }
    if (!pending) {
      pending = this.assembleNewest(name, {}).then((assembled) => {
        const staged = { ...assembled, staged: true };
        // Not promoted in time (the host was alive after all): let it go.
        setTimeout(() => {
          if (this.staged.get(name) !== pending) return;
          this.staged.delete(name);
          void rm(staged.scratch, { recursive: true, force: true });
        }, STAGE_TTL_MS).unref();
        return staged;
      });
      this.staged.set(name, pending);
      pending.catch(() => {
        if (this.staged.get(name) === pending) this.staged.delete(name);
      });
    }
    const staged = await pending;
    return { epoch: staged.epoch, assembleMs: Math.round(staged.assembleMs), skipped: staged.skipped.length };
  }

  /** The staged assembly of `name`, if there is one and it is still the newest intact epoch (or exactly `epoch`). */
  private async takeStaged(name: string, epoch?: number): Promise<Assembled | undefined> {
    const pending = this.staged.get(name);
    if (!pending) return undefined;
    this.staged.delete(name);
    const staged = await pending.catch(() => undefined);
    if (!staged) return undefined;
    const newestHeld = (await this.replicas.epochs(name))[0];
    if (staged.newestHeld === newestHeld && (epoch === undefined || epoch === staged.epoch)) return staged;
    await rm(staged.scratch, { recursive: true, force: true });
    return undefined;
  }
}
