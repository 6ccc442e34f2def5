/**
 * The controller: the one place that knows the whole cluster. It keeps the
 * host registry and each container's intent in the {@link ClusterStore},
 * learns what actually runs from agents' heartbeats, places containers with
 * the pure {@link place} function, orders agents over their APIs, and tells
 * everything that happens as events.
 *
 * Liveness is in memory, not in the store: at 10 heartbeats a second from a
 * thousand hosts a store write per heartbeat would make the store the
 * bottleneck. A restarted controller knows every host and intent from the
 * store and learns liveness again from the next heartbeats.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { AlreadyExistsError, FailedPreconditionError, HavenError, NotFoundError } from '../core/errors.js';
import type { ContainerView } from '../host/container-host.js';
import type { ImageRegistry } from './image-registry.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { DEFAULT_HEARTBEAT_MS } from '../agent/cluster-link.js';
import { LEASE_MS as AGENT_LEASE_MS } from '../agent/protection.js';
import { ArrivalWindow, phiAccrualDefaults } from './failure-detector.js';
import { MigrationFailedError, Migrations, type MigrationContext } from './migration.js';
import { place, type ClusterSnapshot, type PlacementRequest } from './placement.js';
import type { MachineFacts } from '../host/compat.js';
import {
  replicated,
  type ClusterRunRequest,
  type Heartbeat,
  type ProtectionReport,
  type RegisterHostRequest,
  type ReportedContainer,
} from './schemas.js';
import type { ClusterStore, ContainerIntent, HostRecord, OperationRecord, StoredEvent } from './store.js';

/**
 * A host silent this long is suspected however irregular its heartbeats:
 * the ceiling of the adaptive detector (failure-detector.ts), which suspects
 * a host that beats steadily every 100 ms after ~0.3 s of silence.
 */
export const DEFAULT_FAILURE_MS = 1000;

/**
 * Slack on the agents' lease before a failed host's containers are restored
 * elsewhere: the acknowledgement's flight time and clock-rate differences
 * (the lease is measured on the agent, from when the acknowledgement arrived).
 */
const LEASE_MARGIN_MS = 100;
/**
 * How long after a controller's start (or election) a host known from the
 * store must have registered before it is suspected (see adoptKnownHosts).
 */
const ADOPTED_GRACE_MS = 5000;

/** An event loop busier than this over a detector tick may not have read every beat that came. */
const SATURATED = 0.9;

/** How often the detector looks at every host's deadline. */
const CHECK_EVERY_MS = 25;

/** How the controller calls an agent; replaced by fakes in unit tests and benchmarks. */
export type AgentCaller = <T>(
  host: HostRecord,
  path: string,
  options?: { method?: string; body?: unknown; timeoutMs?: number },
) => Promise<T>;

/** Options of {@link Controller}. */
export interface ControllerOptions {
  store: ClusterStore;
  images: ImageRegistry;
  callAgent: AgentCaller;
  /**
   * A host silent this long is suspected whatever its rhythm (default
   * {@link DEFAULT_FAILURE_MS}); before that, when the adaptive detector says so.
   */
  failureAfterMs?: number;
  /** Container addresses come from `<a>.<b>.1.1` up (default prefix 10.88, /16). */
  subnet?: { a: number; b: number; prefix: number };
  /** Milliseconds clock (tests drive it). */
  now?: () => number;
  /**
   * Test-only: called at each named step of an operation this controller
   * began (`failover.decided`, `failover.promoted`, `switchover.decided`,
   * `switchover.shipped`, `switchover.promoted`) once the step is recorded,
   * never at steps it resumes. The `controller` command kills its own
   * process at the steps named in `HAVEN_FAILPOINTS`, so tests can cut a
   * failover exactly there.
   */
  failpoint?: (step: string) => void;
  /**
   * Whether this controller may decide now (default: always). With several
   * controllers on etcd (leader.ts), false while the leader cannot confirm
   * its lease with a quorum: it goes on acknowledging heartbeats — agents'
   * fencing leases depend on them — but declares no host down, fails
   * nothing over, fences and recovers nothing, until etcd confirms it again.
   */
  mayDecide?: () => boolean;
}

/** What a primary's agent answers to a switchover's handover order. */
interface HandoverResult {
  epoch: number;
  takenAt: string;
  sentBytes: number;
  totalBytes: number;
  frozenMs: number;
  handoverMs: number;
}

/** What a planned switchover did, and how long each part took (milliseconds). */
export interface SwitchoverReport {
  name: string;
  from: string;
  to: string;
  /** The final epoch, and when its checkpoint began (the container stopped then). */
  epoch: number;
  takenAt: string;
  /** Checkpoint of the final epoch: freeze to dump done. */
  frozenMs: number;
  /** Bytes of the final epoch that travelled (the backup had the rest), and its whole size. */
  finalEpochBytes: number;
  checkpointBytes: number;
  /** The order to the primary: final checkpoint and its transfer, committed on the backup. */
  handoverMs: number;
  /** On the backup: the epoch assembled from chunks, and the restore. */
  assembleMs: number;
  restoreMs: number;
  /** From the decision to the intent moved and the old copy removed. */
  totalMs: number;
  /** Established TCP connections are restored with the container. */
  connections: 'kept';
  /** Finished by a controller that restarted half-way. */
  resumed?: boolean;
}

/** Liveness of a host: `unknown` until its first heartbeat after a controller start. */
export type HostState = 'up' | 'down' | 'unknown';

/** A host as the API shows it. */
export interface HostView extends HostRecord {
  state: HostState;
  /** Milliseconds since its last heartbeat (null before the first). */
  lastSeenMs: number | null;
  /** The failure detector's φ now, and the silence after which it suspects this host (null before registration). */
  phi: number | null;
  suspectAfterMs: number | null;
  containers: number;
  /** What its agent reported at registration (absent for an agent that did not). */
  machine?: MachineFacts;
}

/** A container as the API shows it: the intent, and what its host last reported. */
export interface ClusterContainerView {
  name: string;
  host: string | null;
  /** What actually runs: the agent's state; `lost` when its host is down or no longer has it; `pending` before it first ran. */
  state: string;
  desired: ContainerIntent['desired'];
  ip: string;
  image: string;
  pid: number;
  generation: number;
  protection: ProtectionView;
  /** Probe result (`starting`, `healthy`, `unhealthy`), or null without a probe. */
  health: string | null;
}

interface Liveness {
  lastSeen: number;
  /** Heartbeat inter-arrival history: when this host's silence becomes suspect. */
  arrivals: ArrivalWindow;
  state: HostState;
  bootId: string;
  /** The secret this registration's heartbeat datagrams carry (see heartbeat-udp.ts). */
  beatKey: Buffer;
  containers: Map<string, ReportedContainer>;
  /** As primary: replication progress per protected container. */
  protection: Map<string, ProtectionReport>;
  /** As backup: newest committed epoch per container it holds. */
  replicas: Map<string, number | null>;
  /** Probe results per probed container. */
  health: Map<string, string>;
  /** CPU flags, kernel and CRIU as reported at registration (compatibility of checkpoints). */
  machine?: MachineFacts;
}

/** Protection of a container as the API shows it. */
export interface ProtectionView {
  mode: 'none' | 'restart' | 'checkpoint' | 'continuous';
  intervalMs: number;
  backup: string | null;
  /** Newest epoch the backup acknowledged, and its age in milliseconds. */
  committedEpoch: number | null;
  committedAgeMs: number | null;
  /** Data a failover now would lose at most: the age of the last commit plus one interval. */
  rpoMs: number | null;
  sentBytes: number | null;
  totalBytes: number | null;
  frozenMs: number | null;
  epochMs: number | null;
  lastError: string | null;
  /** Epochs committed per second lately (reported by the primary). */
  epochRate: number | null;
  /** Where the newest epoch's time went: checkpoint (freeze included), chunking, transfer. */
  phases?: ProtectionReport['phases'] & object;
  /** Epochs committed since the primary began protecting it (reported every ~1 s). */
  epochsCommitted?: number;
  /**
   * Continuous protection: where clients connect, and the output commit as
   * the primary last reported it. `passthrough` means no backup holds an
   * epoch: output is not held and a failure would lose state.
   */
  serviceAddress?: string;
  publish?: number[];
  output?: ProtectionReport['output'] & object;
}

/** The controller's logic, independent of HTTP. */
export class Controller {
  /** Emits `event` with each {@link StoredEvent} as it is appended. */
  readonly events = new EventEmitter();
  private readonly liveness = new Map<string, Liveness>();
  private readonly failureAfterMs: number;
  private readonly now: () => number;
  private readonly subnet: { a: number; b: number; prefix: number };
  private monitor: NodeJS.Timeout | undefined;
  /** Names being started right now: a heartbeat that predates the start must not call them lost. */
  private readonly starting = new Set<string>();

  constructor(private readonly options: ControllerOptions) {
    this.failureAfterMs = options.failureAfterMs ?? DEFAULT_FAILURE_MS;
    this.now = options.now ?? Date.now;
    this.subnet = options.subnet ?? { a: 10, b: 88, prefix: 16 };
    this.events.setMaxListeners(0);
    this.migrations = new Migrations(this.migrationContext());
  }

  /** Live migration and drain (migration.ts holds their logic). */
  readonly migrations: Migrations;

  /** What migration.ts uses of the controller: its store, agents, liveness and shared operation steps. */
  private migrationContext(): MigrationContext {
    return {
      store: this.options.store,
      callAgent: this.options.callAgent,
      now: this.now,
      emit: (kind, subject, data) => this.emit(kind, subject, data),
      isUp: (host) => this.isLive(host),
      leaseEnd: (host) => {
        const live = this.liveness.get(host);
        return live ? live.lastSeen + AGENT_LEASE_MS + LEASE_MARGIN_MS : this.now();
      },
      upHost: (name) => this.upHost(name),
      claim: (name) => this.tryHold(name),
      snapshot: () => this.snapshot(),
      placementOf,
      backupSlot,
      moveIntent: (op) => this.moveIntent(op),
      removeCopy: (host, name) => this.removeCopy(host, name),
      orderProtection: (intent) => this.orderProtection(intent),
      reprotect: (name) => this.reprotect(name),
      orderProbe: (intent) => this.orderProbe(intent),
      noteReported: (host, container) => this.noteReported(host, container),
      setCordon: (name, cordoned) => this.setCordon(name, cordoned),
      failpoint: (step) => this.failpoint(step),
    };
  }

  /** Starts the failure detector (checks liveness every quarter of the failure time). */
  start(): void {
    let lastTick = this.now();
    let lastUse = performance.eventLoopUtilization();
    this.monitor ??= setInterval(() => {
      // Local health first (as Lifeguard does for SWIM): when this process
      // could not listen, the hosts' silence is not theirs. A tick that comes
      // late means it was not running at all (GC, a blocking write); a tick
      // after a saturated interval means it ran but may not have kept up —
      // Node reads at most 32 datagrams a turn of its loop, so under a burst
      // of work (a thousand agents registering) beats wait unread in the
      // socket. Either way that time is excused, up to the ceiling.
      const now = this.now();
      const elapsed = now - lastTick;
      const use = performance.eventLoopUtilization(lastUse);
      lastTick = now;
      lastUse = performance.eventLoopUtilization();
      const deaf = elapsed - CHECK_EVERY_MS > CHECK_EVERY_MS ? elapsed - CHECK_EVERY_MS : 0;
      const excused = use.utilization > SATURATED ? elapsed : deaf;
      if (excused > 0) for (const live of this.liveness.values()) live.arrivals.excuse(excused);
      if (this.options.mayDecide && !this.options.mayDecide()) return;
      void this.checkLiveness().catch(() => undefined);
    }, CHECK_EVERY_MS);
    this.monitor.unref();
  }

  /** Stops the failure detector. */
  stop(): void {
    if (this.monitor) clearInterval(this.monitor);
    this.monitor = undefined;
  }

  private async emit(
    kind: string,
    subject: string,
    data: Record<string, unknown> = {},
  ): Promise<StoredEvent> {
    const event = await this.options.store.appendEvent(kind, subject, data);
    this.events.emit('event', event);
    return event;
  }

  // ---------------------------------------------------------------- hosts

  /**
   * An agent (re)announces itself. Keeps the operator's cordon across
   * re-registrations. Returns the host and the key its heartbeat datagrams
   * must carry until it registers again.
   */
  async registerHost(request: RegisterHostRequest): Promise<HostView & { beatKey: string }> {
    const existing = await this.options.store.getHost(request.name);
    const record: HostRecord = {
      name: request.name,
      address: request.address,
      labels: request.labels,
      cpuMillis: request.cpuMillis,
      memoryBytes: request.memoryBytes,
      cordoned: existing?.cordoned ?? false,
      registeredAt: existing?.registeredAt ?? new Date(this.now()).toISOString(),
    };
    await this.options.store.putHost(record);
    const previous = this.liveness.get(request.name);
    // (A host only adopted from the store, `unknown`, has no boot to compare with.)
    const rebooted =
      previous !== undefined && previous.state !== 'unknown' && previous.bootId !== request.bootId;
    const beatKey = randomBytes(16);
    const arrivals = new ArrivalWindow(phiAccrualDefaults(request.heartbeatMs, this.failureAfterMs));
    arrivals.reset(this.now());
    this.liveness.set(request.name, {
      lastSeen: this.now(),
      arrivals,
      state: 'up',
      bootId: request.bootId,
      beatKey,
      containers: rebooted
        ? new Map<string, ReportedContainer>()
        : (previous?.containers ?? new Map<string, ReportedContainer>()),
      protection: (!rebooted && previous?.protection) || new Map<string, ProtectionReport>(),
      replicas: (!rebooted && previous?.replicas) || new Map<string, number | null>(),
      health: (!rebooted && previous?.health) || new Map<string, string>(),
      ...(request.machine ? { machine: request.machine } : {}),
    });
    if (!existing) await this.emit('host.joined', request.name, { address: request.address });
    else if (rebooted) await this.emit('host.rebooted', request.name, { bootId: request.bootId });
    // After a controller restart every host registers again: known and not seen down, that is no news.
    else if (previous?.state === 'down') await this.emit('host.up', request.name, {});
    return { ...this.hostView(record), beatKey: beatKey.toString('hex') };
  }

  /**
   * A plain heartbeat that arrived as a datagram: it counts only with the key
   * of the host's current registration and boot. False: the host must
   * register (again).
   */
  datagramHeartbeat(hostName: string, bootId: string, beatKey: string, seq: number): boolean {
    const live = this.liveness.get(hostName);
    if (!live) return false;
    const given = Buffer.from(beatKey, 'hex');
    if (given.length !== live.beatKey.length || !timingSafeEqual(given, live.beatKey)) return false;
    return this.heartbeat(hostName, { seq, bootId });
  }

  /**
   * One heartbeat. Cheap by design (this is the controller's hottest path):
   * no store access, no allocation beyond the report it carries.
   * Returns false if the host is not registered (the agent then registers).
   */
  heartbeat(hostName: string, beat: Heartbeat): boolean {
    const live = this.liveness.get(hostName);
    if (!live || live.bootId !== beat.bootId) return false;
    live.lastSeen = this.now();
    live.arrivals.beat(live.lastSeen);
    // Without the right to decide (no etcd quorum) reports are taken, but nothing is done about them.
    const decide = this.options.mayDecide?.() ?? true;
    if (beat.containers) {
      live.containers = new Map(beat.containers.map((c) => [c.name, c]));
      if (decide) this.fenceStaleCopies(hostName, beat.containers);
      if (decide)
        this.recoverFailed(
          hostName,
          beat.containers.filter((c) => c.state === 'exited').map((c) => c.name),
          'container exited',
        );
    }
    if (beat.health) {
      live.health = new Map(beat.health.map((h) => [h.name, h.health]));
      if (decide)
        this.recoverFailed(
          hostName,
          beat.health.filter((h) => h.health === 'unhealthy').map((h) => h.name),
          'application unhealthy',
        );
    }
    if (beat.protection) live.protection = new Map(beat.protection.map((p) => [p.name, p]));
    if (beat.replicas) live.replicas = new Map(beat.replicas.map((r) => [r.name, r.epoch]));
    if (live.state !== 'up') {
      live.state = 'up';
      void this.emit('host.up', hostName, {}).catch(() => undefined);
    }
    return true;
  }

  /** Containers the cluster has placed on `hostName`: what it may run (the rest it must not). */
  async primariesOf(hostName: string): Promise<string[]> {
    // Asked after every report: rebuilt only when the store's intents changed.
    const version = this.options.store.version?.() ?? Number.NaN;
    if (this.primariesCache?.version !== version) {
      const byHost = new Map<string, string[]>();
      for (const c of await this.options.store.listContainers()) {
        if (!c.host) continue;
        const list = byHost.get(c.host) ?? [];
        list.push(c.name);
        byHost.set(c.host, list);
      }
      this.primariesCache = { version, byHost };
    }
    return this.primariesCache.byHost.get(hostName) ?? [];
  }

  private primariesCache: { version: number; byHost: Map<string, string[]> } | undefined;

  /** Last time unprotected checkpoint containers were offered a backup. */
  private lastReprotect = 0;

  /**
   * Watches the hosts of the store that have not registered with this
   * controller (it has just started, or just been elected) as if heard from
   * now: a host that died while no controller ran never registers again, and
   * must still be declared down and its containers failed over. Live agents
   * register again within their retry back-off (at most 2 s), so such a host
   * is suspected only {@link ADOPTED_GRACE_MS} later; until it registers it
   * is `unknown` and offered no new work. Returns how many hosts were adopted.
   */
  async adoptKnownHosts(): Promise<number> {
    const now = this.now();
    let adopted = 0;
    for (const host of await this.options.store.listHosts()) {
      if (this.liveness.has(host.name)) continue;
      const arrivals = new ArrivalWindow(phiAccrualDefaults(DEFAULT_HEARTBEAT_MS, this.failureAfterMs));
      arrivals.reset(now + ADOPTED_GRACE_MS);
      this.liveness.set(host.name, {
        lastSeen: now,
        arrivals,
        state: 'unknown',
        bootId: '', // no beat matches until it registers
        beatKey: randomBytes(16),
        containers: new Map(),
        protection: new Map(),
        replicas: new Map(),
        health: new Map(),
      });
      adopted++;
    }
    return adopted;
  }

  /** Whether host `name` is up: registered with this controller and beating (not `unknown`, not `down`). */
  private isLive(name: string): boolean {
    return this.liveness.get(name)?.state === 'up';
  }

  /** Marks hosts whose heartbeats stopped as down; emits one event per transition. */
  async checkLiveness(): Promise<void> {
    const now = this.now();
    if (now - this.lastReprotect > 2000) {
      this.lastReprotect = now;
      await this.reprotectOrphans();
      await this.retryOperations();
    }
    for (const [name, live] of this.liveness) {
      // `unknown`: adopted from the store and never registered since (see adoptKnownHosts).
      if ((live.state === 'up' || live.state === 'unknown') && live.arrivals.suspectAt(now)) {
        live.state = 'down';
        this.stageOnBackups(name);
        const lost = [...live.containers.keys()];
        await this.emit('host.down', name, {
          silentMs: now - live.lastSeen,
          // Of the silence, how much the controller excused itself for (it was not listening).
          excusedMs: Math.round(live.arrivals.excusedMs),
          containers: lost,
        });
        this.onHostDown(name, now - live.lastSeen);
      } else if (live.state === 'down' && (this.suspects.get(name) ?? Infinity) < now - 1000) {
        this.suspects.set(name, now);
        this.onHostDown(name, now - live.lastSeen);
      } else if (live.state === 'up') this.suspects.delete(name);
    }
  }

  // ------------------------------------------------------------ protection

  /** Failovers in flight, by container: one at a time each. */
  private readonly failingOver = new Map<string, Promise<void>>();

  /** Silent hosts that peers still reach: not failed over; looked at again each second. */
  private readonly suspects = new Map<string, number>();

  /**
   * Indirect probing (as in SWIM): asks up to two other live agents whether
   * they reach `hostName`. A host silent only to the controller (its own link
   * at fault) is not failed over.
   */
  private async peersSee(hostName: string): Promise<'seen' | 'unseen' | 'no witness'> {
    const target = await this.options.store.getHost(hostName);
    if (!target) return 'unseen';
    const peers = (await this.options.store.listHosts())
      .filter((h) => h.name !== hostName && this.isLive(h.name))
      .slice(0, 2);
    // Every other host silent too: more likely the controller is the one cut
    // off. Without a witness, nothing is failed over (it could not reach a
    // backup to restore on anyway).
    if (peers.length === 0) return 'no witness';
    // Only a peer's answer counts: a peer the controller cannot ask is no witness
    // (the controller may be the one cut off).
    const answers = await Promise.all(
      peers.map((peer) =>
        this.options
          .callAgent<{ reachable: boolean }>(peer, '/v1/probe', {
            method: 'POST',
            body: { address: target.address },
            timeoutMs: 1000,
          })
          .then(
            (r) => r.reachable,
            () => undefined,
          ),
      ),
    );
    if (answers.includes(true)) return 'seen';
    return answers.includes(false) ? 'unseen' : 'no witness';
  }

  /**
   * The host is suspected: while peers probe it and its lease runs out, the
   * backups of its checkpoint-protected primaries assemble their newest epoch
   * (Protection.stage), so that a failover, if it comes, only restores.
   * Fire and forget: a backup that cannot stage assembles at promotion.
   */
  private stageOnBackups(hostName: string): void {
    void (async () => {
      for (const intent of await this.options.store.listContainers()) {
        if (intent.host !== hostName || intent.desired !== 'running' || !replicated(haOf(intent))) continue;
        const backupName = typeof intent.spec.backup === 'string' ? intent.spec.backup : undefined;
        if (!backupName || !this.isLive(backupName)) continue;
        const backup = await this.options.store.getHost(backupName);
        if (!backup) continue;
        void this.options
          .callAgent(backup, `/v1/replicas/${encodeURIComponent(intent.name)}/stage`, {
            method: 'POST',
            body: {},
          })
          .catch(() => undefined);
      }
    })().catch(() => undefined);
  }

  /** A host died: its protected primaries fail over; primaries whose backup it was get a new one. */
  private onHostDown(hostName: string, silentMs: number): void {
    void (async () => {
      const seen = await this.peersSee(hostName);
      if (seen !== 'unseen') {
        if (!this.suspects.has(hostName)) {
          await this.emit('host.suspect', hostName, {
            silentMs,
            why:
              seen === 'seen'
                ? 'silent to the controller, but peers reach it: no failover'
                : 'every other host is silent too (is the controller cut off?): no failover',
          });
        }
        this.suspects.set(hostName, this.now());
        return;
      }
      this.suspects.delete(hostName);
      // Fencing: a host cut off stops its primaries once its lease (from the
      // controller's last acknowledgement) runs out. Nothing is restored
      // elsewhere before then, however fast the detector was.
      const live = this.liveness.get(hostName);
      if (live) await sleep(Math.max(0, live.lastSeen + AGENT_LEASE_MS + LEASE_MARGIN_MS - this.now()));
      for (const intent of await this.options.store.listContainers()) {
        if (intent.desired !== 'running' || this.failingOver.has(intent.name)) continue;
        const mode = haOf(intent);
        let work: Promise<void> | undefined;
        if (intent.host === hostName && mode !== 'none') work = this.failover(intent, hostName, silentMs);
        else if (intent.spec.backup === hostName && replicated(mode)) work = this.reprotect(intent.name);
        if (!work) continue;
        const tracked = work
          .catch(async (error: unknown) => {
            await this.emit('container.failover-failed', intent.name, {
              from: hostName,
              error: error instanceof Error ? error.message : String(error),
            });
          })
          .finally(() => this.failingOver.delete(intent.name));
        this.failingOver.set(intent.name, tracked);
      }
    })().catch(() => undefined);
  }

  /*
   * Failovers and switchovers are operations: a few orders to agents, each
   * step recorded in the store (one OperationRecord per container) once done
   * and before the next is ordered, so a controller killed between two steps
   * knows after a restart where it stopped and finishes — or rolls back:
   *
   *   failover    decided ──promote (or run fresh) on `to`──▶ promoted ──intent moves──▶ done
   *   switchover  decided ──final epoch, container stopped──▶ shipped
   *                       ──promote exactly that epoch, connections kept──▶ promoted
   *                       ──intent moves, old copy removed──▶ done
   *               a failure before `promoted`: the primary runs on from its final checkpoint
   *
   * Every order is idempotent on the agent (a promotion ordered again answers
   * with the copy it already started; a handover ordered again joins or
   * reports the one done), so a resumed step is simply ordered again. The
   * intent moves by compare-and-set: an operation whose container was removed
   * or placed elsewhere meanwhile is stale, and what it started is undone
   * instead of applied. While an operation runs, its container is claimed in
   * `failingOver`: nothing else (recovery, fencing of "stale" copies) touches it.
   */

  /**
   * Brings a container whose host died back elsewhere: from its backup's
   * newest intact epoch (`checkpoint`), or fresh on another host (`restart`).
   * The intent moves to the new host with a new generation; then a new backup
   * is chosen and protection resumes by itself.
   */
  private async failover(
    intent: ContainerIntent,
    from: string,
    detectMs: number,
    reason = 'host down',
  ): Promise<void> {
    const mode = haOf(intent);
    let to: string;
    if (replicated(mode)) {
      const backupName = typeof intent.spec.backup === 'string' ? intent.spec.backup : undefined;
      const backup = backupName ? await this.options.store.getHost(backupName) : undefined;
      if (!backup || !this.isLive(backup.name)) {
        throw new FailedPreconditionError(`its backup host ${backupName ?? '(none)'} is not up`);
      }
      to = backup.name;
    } else {
      const snapshot = await this.snapshot();
      const decision = place(snapshot, { ...placementOf(intent), excludeHosts: [from] });
      if (!decision.ok)
        throw new FailedPreconditionError(`no host can take it: ${JSON.stringify(decision.reasons)}`);
      to = decision.host;
    }
    const operation = await this.options.store.putOperation({
      container: intent.name,
      kind: 'failover',
      from,
      to,
      step: 'decided',
      generation: intent.generation,
      epoch: null,
      detail: { mode, reason, detectMs: Math.round(detectMs) },
      startedAt: new Date(this.now()).toISOString(),
    });
    this.failpoint('failover.decided');
    try {
      await this.driveFailover(operation, false);
      this.operationErrors.delete(intent.name);
    } catch (error) {
      await this.operationFailed(operation, error);
    }
  }

  /** Runs a failover from the step it reached (`resumed`: after a controller restart). */
  private async driveFailover(operation: OperationRecord, resumed: boolean): Promise<void> {
    const { store } = this.options;
    let op = operation;
    const name = op.container;
    if (op.step === 'decided') {
      const intent = await store.getContainer(name);
      if (!intent) return this.abandon(op, 'the container was removed');
      if (op.detail.reason !== 'host down') {
        // The host is alive: its dead copy goes first, freeing the address for the restored one.
        const from = await this.upHost(op.from);
        await this.removeCopy(from, name);
      }
      const to = await this.upHost(op.to);
      if (replicated(op.detail.mode)) {
        const report = await this.options.callAgent<{
          epoch: number;
          takenAt: string;
          skipped: Array<{ epoch: number; error: string }>;
          assembleMs: number;
          restoreMs: number;
          staged?: boolean;
          view: ContainerView;
          already?: boolean;
        }>(to, `/v1/replicas/${encodeURIComponent(name)}/promote`, {
          method: 'POST',
          body: { tcpClose: true },
        });
        // A damaged epoch means the backup's disk lost data: an error of its own, not just a detail of the failover.
        if (!report.already) {
          for (const s of report.skipped) {
            await this.emit('container.epoch-damaged', name, { host: to.name, ...s });
          }
        }
        this.noteReported(to.name, {
          name,
          state: report.view.state,
          pid: report.view.pid,
          ip: report.view.ip,
        });
        op = await store.putOperation({
          ...op,
          step: 'promoted',
          epoch: report.epoch,
          detail: {
            ...op.detail,
            takenAt: report.takenAt,
            skipped: report.skipped,
            assembleMs: Math.round(report.assembleMs),
            restoreMs: Math.round(report.restoreMs),
            // Assembled while the host was only suspected: off the critical path.
            staged: report.staged === true,
          },
        });
      } else {
        const view = await this.runOrFind(to, intent);
        this.noteReported(to.name, { name, state: view.state, pid: view.pid, ip: view.ip });
        op = await store.putOperation({ ...op, step: 'promoted', detail: { ...op.detail, fresh: true } });
      }
      if (!resumed) this.failpoint('failover.promoted');
    }
    const moved = await this.moveIntent(op);
    if (!moved) return;
    await this.emit('container.failed-over', name, {
      from: op.from,
      to: op.to,
      ...op.detail,
      failoverMs: this.now() - Date.parse(op.startedAt),
      ...(op.epoch !== null ? { epoch: op.epoch } : {}),
      ...(resumed ? { resumed: true } : {}),
    });
    await store.deleteOperation(name);
    await this.orderProbe(moved);
    if (replicated(op.detail.mode)) await this.reprotect(name);
  }

  /**
   * The last step of both operations: the intent moves to `op.to`. It moves
   * only while it is still placed on `op.from` — compare-and-set on the
   * generation decided at, or on the current one if what changed since left
   * the placement alone (a new backup, say). Already on `op.to`: a restarted
   * controller finishing a move it made. Removed or placed elsewhere: the
   * operation is stale and abandoned. Returns the moved intent, or undefined.
   */
  private async moveIntent(op: OperationRecord): Promise<ContainerIntent | undefined> {
    const { store } = this.options;
    const intent = await store.getContainer(op.container);
    if (intent?.host === op.to) return intent;
    if (!intent || intent.host !== op.from) {
      await this.abandon(
        op,
        intent ? `it was placed on ${intent.host ?? 'no host'} meanwhile` : 'it was removed',
      );
      return undefined;
    }
    const moved = await store.updateContainer(op.container, intent.generation, {
      host: op.to,
      spec: { ...intent.spec, backup: null },
    });
    if (!moved)
      throw new HavenError(`the intent of "${op.container}" changed while it moved`, 'unavailable', true);
    return moved;
  }

  /** A stale operation: the copy it may have started on `to` is removed, and it is forgotten. */
  private async abandon(op: OperationRecord, why: string): Promise<void> {
    const intent = await this.options.store.getContainer(op.container);
    if (op.step !== 'decided' && intent?.host !== op.to) {
      const to = await this.options.store.getHost(op.to);
      if (to) await this.removeCopy(to, op.container);
    }
    await this.options.store.deleteOperation(op.container);
    await this.emit('container.operation-abandoned', op.container, {
      kind: op.kind,
      from: op.from,
      to: op.to,
      step: op.step,
      why,
    });
  }

  /** Removes a container's copy from a host; one already gone is fine. */
  private async removeCopy(host: HostRecord, name: string): Promise<void> {
    try {
      await this.options.callAgent(host, `/v1/containers/${encodeURIComponent(name)}?force=true`, {
        method: 'DELETE',
      });
    } catch (error) {
      if (!(error instanceof HavenError && error.code === 'not_found')) throw error;
    }
    this.liveness.get(host.name)?.containers.delete(name);
  }

  /** Starts `intent` fresh on `host` — or finds it already running there (an order repeated after a restart). */
  private async runOrFind(host: HostRecord, intent: ContainerIntent): Promise<ContainerView> {
    try {
      return await this.options.callAgent<ContainerView>(host, '/v1/containers', {
        method: 'POST',
        body: agentRunBody(intent),
      });
    } catch (error) {
      if (!(error instanceof HavenError && error.code === 'already_exists')) throw error;
      const view = await this.options.callAgent<ContainerView>(
        host,
        `/v1/containers/${encodeURIComponent(intent.name)}`,
      );
      if (view.state !== 'running') throw error;
      return view;
    }
  }

  /**
   * A host an operation needs, once it is up. After a controller restart
   * hosts are `unknown` until they register again (within a heartbeat or
   * two): waited for, up to 10 s; then the step fails as retryable.
   */
  private async upHost(name: string): Promise<HostRecord> {
    const deadline = this.now() + 10_000;
    for (;;) {
      const host = await this.options.store.getHost(name);
      const state = this.liveness.get(name)?.state;
      if (host && this.isLive(name)) return host;
      if (!host || state === 'down' || this.now() > deadline)
        throw new HavenError(`host "${name}" is not up`, 'unavailable', true);
      await sleep(100);
    }
  }

  /** Calls a test-only failpoint (see {@link ControllerOptions.failpoint}). */
  private failpoint(name: string): void {
    this.options.failpoint?.(name);
  }

  /** Last error of each operation retried in the background, so a repeated failure is told once. */
  private readonly operationErrors = new Map<string, string>();

  /**
   * Claims every unfinished operation in the store (call before the API
   * listens: no heartbeat may see a half-moved container as a stray copy)
   * and finishes them in the background. Returns how many there were.
   */
  async resumeOperations(): Promise<number> {
    const operations = await this.options.store.listOperations();
    for (const op of operations) this.driveInBackground(op, true);
    return operations.length;
  }

  /** Operations left unfinished by a retryable failure are tried again (every 2 s, from the liveness loop). */
  private async retryOperations(): Promise<void> {
    for (const op of await this.options.store.listOperations()) {
      if (!this.failingOver.has(op.container)) this.driveInBackground(op, true);
    }
  }

  private driveInBackground(op: OperationRecord, resumed: boolean): void {
    const release = this.tryHold(op.container);
    if (!release) return;
    void (async () => {
      try {
        if (op.kind === 'switchover') await this.driveSwitchover(op, resumed);
        else if (op.kind === 'migration')
          // A migration rolled back has said so itself (container.migration-failed).
          await this.migrations.drive(op, resumed).catch((error: unknown) => {
            if (!(error instanceof MigrationFailedError)) throw error;
          });
        else await this.driveFailover(op, resumed);
        this.operationErrors.delete(op.container);
      } catch (error) {
        await this.operationFailed(op, error);
      }
    })()
      .catch(() => undefined)
      .finally(release);
  }

  /**
   * A step failed. Retryable (a host not up or not answering): the operation
   * stays and is tried again. Otherwise a failover is given up (as before
   * operations were recorded: the container stays lost, and says why).
   */
  private async operationFailed(op: OperationRecord, error: unknown): Promise<void> {
    const message = error instanceof Error ? error.message : String(error);
    const retryable = !(error instanceof HavenError) || error.retryable;
    if (!retryable) await this.options.store.deleteOperation(op.container);
    if (this.operationErrors.get(op.container) === message && retryable) return;
    this.operationErrors.set(op.container, message);
    await this.emit(
      op.kind === 'switchover'
        ? 'container.switchover-failed'
        : op.kind === 'migration'
          ? 'container.migration-failed'
          : 'container.failover-failed',
      op.container,
      {
        from: op.from,
        to: op.to,
        step: op.step,
        error: message,
        willRetry: retryable,
      },
    );
  }

  /**
   * Planned switchover (`haven failover NAME`): the primary is stopped in a
   * final epoch that is shipped to the backup (no acknowledged write is
   * lost), the backup restores exactly that epoch with its established TCP
   * connections (same IP and MAC: clients see a pause, not a reset), the old
   * copy is removed and protection resumes on a new backup. If the final
   * epoch cannot be shipped or restored, the primary runs on from it.
   */
  async switchover(name: string): Promise<SwitchoverReport> {
    const release = this.tryHold(name);
    if (!release)
      throw new FailedPreconditionError(`a failover or switchover of "${name}" is already in progress`);
    try {
      const intent = await this.intent(name);
      if (!replicated(haOf(intent)))
        throw new FailedPreconditionError(
          `"${name}" is not protected with --ha checkpoint or continuous: it has no backup to switch over to`,
        );
      if (!intent.host || intent.desired !== 'running')
        throw new FailedPreconditionError(`"${name}" is not meant to be running`);
      const backup = typeof intent.spec.backup === 'string' ? intent.spec.backup : undefined;
      if (!backup) throw new FailedPreconditionError(`"${name}" has no backup host now`);
      for (const h of [intent.host, backup]) {
        if (!this.isLive(h)) throw new HavenError(`host "${h}" of "${name}" is not up`, 'unavailable', true);
      }
      const operation = await this.options.store.putOperation({
        container: name,
        kind: 'switchover',
        from: intent.host,
        to: backup,
        step: 'decided',
        generation: intent.generation,
        epoch: null,
        detail: {},
        startedAt: new Date(this.now()).toISOString(),
      });
      this.failpoint('switchover.decided');
      return await this.driveSwitchover(operation, false);
    } finally {
      release();
    }
  }

  /** Runs a switchover from the step it reached. */
  private async driveSwitchover(operation: OperationRecord, resumed: boolean): Promise<SwitchoverReport> {
    const { store } = this.options;
    let op = operation;
    const name = op.container;
    if (op.step === 'decided') {
      const from = await this.upHost(op.from);
      let handover: HandoverResult;
      try {
        // Ordered again after a restart, the agent joins (or reports) the handover it began.
        handover = await this.options.callAgent<HandoverResult>(
          from,
          `/v1/containers/${encodeURIComponent(name)}/handover`,
          { method: 'POST', body: {} },
        );
      } catch (error) {
        await this.rollBackSwitchover(op, error);
        throw error;
      }
      op = await store.putOperation({
        ...op,
        step: 'shipped',
        epoch: handover.epoch,
        detail: {
          takenAt: handover.takenAt,
          frozenMs: Math.round(handover.frozenMs),
          finalEpochBytes: handover.sentBytes,
          checkpointBytes: handover.totalBytes,
          handoverMs: Math.round(handover.handoverMs),
        },
      });
      if (!resumed) this.failpoint('switchover.shipped');
    }
    if (op.step === 'shipped') {
      const to = await this.upHost(op.to);
      let report: { epoch: number; assembleMs: number; restoreMs: number; view: ContainerView };
      try {
        report = await this.options.callAgent(to, `/v1/replicas/${encodeURIComponent(name)}/promote`, {
          method: 'POST',
          body: { tcpClose: false, epoch: op.epoch },
        });
      } catch (error) {
        // Not restored there: but it must not run there either before the primary runs again.
        await this.removeCopy(to, name);
        await this.rollBackSwitchover(op, error);
        throw error;
      }
      this.noteReported(to.name, {
        name,
        state: report.view.state,
        pid: report.view.pid,
        ip: report.view.ip,
      });
      op = await store.putOperation({
        ...op,
        step: 'promoted',
        detail: {
          ...op.detail,
          assembleMs: Math.round(report.assembleMs),
          restoreMs: Math.round(report.restoreMs),
        },
      });
      if (!resumed) this.failpoint('switchover.promoted');
    }
    const moved = await this.moveIntent(op);
    if (!moved)
      throw new FailedPreconditionError(`the switchover of "${name}" was overtaken by another change`);
    const from = await store.getHost(op.from);
    if (from && this.isLive(from.name)) await this.removeCopy(from, name);
    const report: SwitchoverReport = {
      name,
      from: op.from,
      to: op.to,
      epoch: op.epoch ?? 0,
      takenAt: typeof op.detail.takenAt === 'string' ? op.detail.takenAt : '',
      frozenMs: numberOf(op.detail.frozenMs, 0),
      finalEpochBytes: numberOf(op.detail.finalEpochBytes, 0),
      checkpointBytes: numberOf(op.detail.checkpointBytes, 0),
      handoverMs: numberOf(op.detail.handoverMs, 0),
      assembleMs: numberOf(op.detail.assembleMs, 0),
      restoreMs: numberOf(op.detail.restoreMs, 0),
      totalMs: this.now() - Date.parse(op.startedAt),
      connections: 'kept',
      ...(resumed ? { resumed: true } : {}),
    };
    await this.emit('container.switched-over', name, { ...report });
    await store.deleteOperation(name);
    await this.orderProbe(moved);
    await this.reprotect(name);
    return report;
  }

  /**
   * The switchover did not reach the backup: the primary runs on — from its
   * final checkpoint, connections kept, if it was already stopped — and is
   * protected again. Its host must be up; if it is not, the operation stays
   * and is tried again.
   */
  private async rollBackSwitchover(op: OperationRecord, cause: unknown): Promise<void> {
    const from = await this.upHost(op.from);
    const path = `/v1/containers/${encodeURIComponent(op.container)}`;
    const view = await this.options.callAgent<ContainerView>(from, path);
    if (view.state === 'checkpointed') {
      await this.options.callAgent(from, `${path}/restore`, { method: 'POST', body: { tcpClose: false } });
    }
    const intent = await this.options.store.getContainer(op.container);
    if (intent?.host === op.from) await this.orderProtection(intent);
    await this.options.store.deleteOperation(op.container);
    await this.emit('container.switchover-failed', op.container, {
      from: op.from,
      to: op.to,
      step: op.step,
      error: cause instanceof Error ? cause.message : String(cause),
      rolledBack: true,
    });
  }

  /** Checkpoint-protected containers left without a backup (none had room) get one when a host can take it. */
  private async reprotectOrphans(): Promise<void> {
    for (const intent of await this.options.store.listContainers()) {
      if (!replicated(haOf(intent)) || intent.spec.backup || !intent.host || intent.desired !== 'running')
        continue;
      if (this.failingOver.has(intent.name) || !this.isLive(intent.host)) continue;
      const work = this.reprotect(intent.name, true)
        .catch(() => undefined)
        .finally(() => this.failingOver.delete(intent.name));
      this.failingOver.set(intent.name, work);
    }
  }

  /** Recent recoveries per container (times), for crash-loop back-off. */
  private readonly recoveries = new Map<string, number[]>();

  /**
   * Container failures on a live host: a protected container whose process
   * died (exit, OOM kill, crash) is brought back — from its backup's newest
   * epoch (`checkpoint`) or fresh (`restart`). Three recoveries within a
   * minute is a crash loop: Haven stops trying and says so.
   */
  private recoverFailed(hostName: string, names: readonly string[], reason: string): void {
    for (const name of names) {
      // Held before the first await: a second report cannot start a second recovery.
      const release = this.tryHold(name);
      if (!release) continue;
      void this.recover(hostName, name, reason)
        .catch(async (error: unknown) => {
          await this.emit('container.failover-failed', name, {
            from: hostName,
            error: error instanceof Error ? error.message : String(error),
          });
        })
        .catch(() => undefined)
        .finally(release);
    }
  }

  private async recover(hostName: string, name: string, reason: string): Promise<void> {
    const intent = await this.options.store.getContainer(name);
    if (!intent || intent.host !== hostName || intent.desired !== 'running' || haOf(intent) === 'none')
      return;
    const now = this.now();
    const recent = (this.recoveries.get(name) ?? []).filter((t) => now - t < 60_000);
    if (recent.length >= 3) {
      if (recent.length === 3) {
        await this.emit('container.crash-loop', name, { host: hostName, recoveries: 3, withinMs: 60_000 });
      }
      this.recoveries.set(name, [...recent, now]);
      return;
    }
    this.recoveries.set(name, [...recent, now]);
    // Back-off: each recovery within the minute waits twice as long as the one before (0, 1 s, 2 s).
    const backoffMs = recent.length === 0 ? 0 : 1000 * 2 ** (recent.length - 1);
    await this.emit(reason === 'container exited' ? 'container.exited' : 'container.unhealthy', name, {
      host: hostName,
      backoffMs,
    });
    if (backoffMs > 0) {
      await sleep(backoffMs);
      const now = await this.options.store.getContainer(name);
      if (now?.generation !== intent.generation || now.desired !== 'running') return; // moved, stopped or removed meanwhile
    }
    // The first failure in a minute: restored where it was, from the local
    // copy of its newest committed epoch — the state its backup holds, without
    // moving it. One that keeps failing there goes to its backup.
    let inPlaceError: string | undefined;
    if (replicated(haOf(intent)) && recent.length === 0) {
      try {
        await this.recoverInPlace(intent, hostName, reason);
        return;
      } catch (error) {
        inPlaceError = error instanceof Error ? error.message : String(error);
      }
    }
    await this.failover(intent, hostName, 0, inPlaceError ? `${reason} (in place: ${inPlaceError})` : reason);
  }

  /** Asks the container's own host to restore it from its newest committed epoch (see Protection.recoverInPlace). */
  private async recoverInPlace(intent: ContainerIntent, hostName: string, reason: string): Promise<void> {
    const host = await this.options.store.getHost(hostName);
    if (!host) throw new NotFoundError(`host "${hostName}" is not in the cluster`);
    const started = this.now();
    const report = await this.options.callAgent<{
      view: ContainerView;
      checkpoint: string;
      takenAt: string;
      restoreMs: number;
    }>(host, `/v1/containers/${encodeURIComponent(intent.name)}/recover`, { method: 'POST', body: {} });
    this.noteReported(hostName, {
      name: intent.name,
      state: report.view.state,
      pid: report.view.pid,
      ip: report.view.ip,
    });
    // Its probe starts over on the agent; the failures reported before are the dead copy's.
    this.liveness.get(hostName)?.health.set(intent.name, 'starting');
    await this.emit('container.recovered', intent.name, {
      host: hostName,
      reason,
      where: 'in place',
      checkpoint: report.checkpoint,
      takenAt: report.takenAt,
      restoreMs: Math.round(report.restoreMs),
      totalMs: this.now() - started,
    });
  }

  /** Chooses a (new) backup for a checkpoint-protected container and tells its primary. */
  private async reprotect(name: string, onlyIfFound = false): Promise<void> {
    const intent = await this.intent(name);
    if (!intent.host) return;
    const snapshot = await this.snapshot();
    const decision = place(
      { ...snapshot, containers: snapshot.containers.filter((c) => c.name !== backupSlot(name)) },
      // Its epochs come from the primary's host: the backup must be able to run them.
      { ...placementOf(intent), name: backupSlot(name), excludeHosts: [intent.host], origin: intent.host },
    );
    const backup = decision.ok ? decision.host : null;
    if (!backup && onlyIfFound) return;
    const updated = await this.options.store.updateContainer(name, intent.generation, {
      spec: { ...intent.spec, backup },
    });
    if (!updated) return;
    await this.orderProtection(updated);
    await this.emit(backup ? 'container.protected' : 'container.unprotected', name, {
      primary: intent.host,
      backup,
      ...(decision.ok ? {} : { why: decision.reasons }),
    });
  }

  /** Tells a container's agent to run its probe (after a start, a restore elsewhere). */
  private async orderProbe(intent: ContainerIntent): Promise<void> {
    if (!intent.spec.probe || !intent.host) return;
    const host = await this.options.store.getHost(intent.host);
    if (!host) return;
    await this.options.callAgent(host, `/v1/containers/${encodeURIComponent(intent.name)}/probe`, {
      method: 'POST',
      body: { probe: intent.spec.probe },
    });
  }

  /** Tells a primary's agent where (and how often) to replicate, or to stop. */
  private async orderProtection(intent: ContainerIntent): Promise<void> {
    const primary = intent.host ? await this.options.store.getHost(intent.host) : undefined;
    if (!primary) return;
    const backup =
      typeof intent.spec.backup === 'string'
        ? await this.options.store.getHost(intent.spec.backup)
        : undefined;
    await this.options.callAgent(primary, `/v1/containers/${encodeURIComponent(intent.name)}/protect`, {
      method: 'POST',
      body: {
        backup: backup ? { host: backup.name, address: backup.address } : null,
        intervalMs: numberOf(intent.spec.intervalMs, 1000),
        ...(haOf(intent) === 'continuous'
          ? {
              mode: 'continuous',
              ...(typeof intent.spec.serviceAddress === 'string'
                ? { serviceAddress: intent.spec.serviceAddress, publish: intent.spec.publish }
                : {}),
            }
          : {}),
      },
    });
  }

  /**
   * A host reports a container the cluster has placed elsewhere: a copy left
   * behind by a failover (its host was cut off, not dead). It must not serve
   * beside the new primary: the controller orders it removed.
   */
  private fenceStaleCopies(hostName: string, reported: readonly ReportedContainer[]): void {
    void (async () => {
      for (const c of reported) {
        const intent = await this.options.store.getContainer(c.name);
        if (!intent || !intent.host || intent.host === hostName || this.failingOver.has(c.name)) continue;
        const host = await this.options.store.getHost(hostName);
        if (!host) continue;
        await this.options.callAgent(host, `/v1/containers/${encodeURIComponent(c.name)}?force=true`, {
          method: 'DELETE',
        });
        this.liveness.get(hostName)?.containers.delete(c.name);
        await this.emit('container.fenced', c.name, { host: hostName, primary: intent.host });
      }
    })().catch(() => undefined);
  }

  /** Every registered host with its liveness. */
  async listHosts(): Promise<HostView[]> {
    const hosts = await this.options.store.listHosts();
    return hosts.map((h) => this.hostView(h));
  }

  private hostView(record: HostRecord): HostView {
    const live = this.liveness.get(record.name);
    return {
      ...record,
      state: live?.state ?? 'unknown',
      lastSeenMs: live ? this.now() - live.lastSeen : null,
      phi: live ? Math.round(live.arrivals.phiAt(this.now()) * 100) / 100 : null,
      suspectAfterMs: live ? Math.round(live.arrivals.timeoutMs()) : null,
      containers: live?.containers.size ?? 0,
      ...(live?.machine ? { machine: live.machine } : {}),
    };
  }

  /** Cordons or uncordons a host: a cordoned host takes no new containers. */
  async setCordon(name: string, cordoned: boolean): Promise<HostView> {
    const host = await this.options.store.getHost(name);
    if (!host) throw new NotFoundError(`host "${name}" is not in the cluster`);
    const record = { ...host, cordoned };
    await this.options.store.putHost(record);
    await this.emit(cordoned ? 'host.cordoned' : 'host.uncordoned', name);
    return this.hostView(record);
  }

  // ------------------------------------------------------------ containers

  /** The cluster as placement sees it: hosts up and uncordoned are schedulable. */
  async snapshot(): Promise<ClusterSnapshot> {
    const [hosts, intents] = await Promise.all([
      this.options.store.listHosts(),
      this.options.store.listContainers(),
    ]);
    return {
      hosts: hosts.map((h) => ({
        name: h.name,
        cpuMillis: h.cpuMillis,
        memoryBytes: h.memoryBytes,
        labels: h.labels,
        schedulable: !h.cordoned && this.isLive(h.name),
        ...(this.liveness.get(h.name)?.machine ? { machine: this.liveness.get(h.name)!.machine } : {}),
      })),
      containers: intents
        .filter((c) => c.host !== undefined)
        .map((c) => ({
          name: c.name,
          host: c.host!,
          cpuMillis: numberOf(c.spec.cpuMillis, 0),
          memoryBytes: numberOf(c.spec.memoryBytes, 0),
          apart: stringsOf(c.spec.apart),
        }))
        .concat(
          intents
            .filter((c) => typeof c.spec.backup === 'string')
            .map((c) => ({
              name: backupSlot(c.name),
              host: c.spec.backup as string,
              cpuMillis: numberOf(c.spec.cpuMillis, 0),
              memoryBytes: numberOf(c.spec.memoryBytes, 0),
              apart: [],
            })),
        ),
    };
  }

  /**
   * Runs a container: resolve the image, place it, give it an address,
   * record the intent, order the chosen agent. If the agent fails, the intent
   * is withdrawn and the agent's error returned — nothing half-made stays.
   */
  async runContainer(request: ClusterRunRequest): Promise<ClusterContainerView> {
    const { store } = this.options;
    if (await store.getContainer(request.name)) {
      throw new AlreadyExistsError(`container "${request.name}" already exists`);
    }
    const image = await this.options.images.resolve(request.image);
    if (request.host && !(await store.getHost(request.host))) {
      throw new NotFoundError(`host "${request.host}" is not in the cluster`);
    }
    const snapshot = await this.snapshot();
    const placementRequest: PlacementRequest = {
      name: request.name,
      cpuMillis: request.cpuMillis,
      memoryBytes: request.memoryBytes ?? 0,
      ...(request.requireHostLabels ? { requireHostLabels: request.requireHostLabels } : {}),
      ...(request.with ? { with: request.with } : {}),
      ...(request.apart ? { apart: request.apart } : {}),
      ...(request.host ? { host: request.host } : {}),
    };
    const decision = place(snapshot, placementRequest);
    if (!decision.ok) {
      const why = Object.entries(decision.reasons)
        .map(([h, r]) => `${h}: ${r}`)
        .join('; ');
      throw new FailedPreconditionError(
        `no host can run "${request.name}": ${why || 'the cluster has no hosts'}`,
      );
    }
    // Admission control: a checkpoint-protected container needs a backup host
    // with room for it, other than its primary, before it is admitted.
    let backup: string | null = null;
    if (replicated(request.ha)) {
      const withPrimary: ClusterSnapshot = {
        ...snapshot,
        containers: [
          ...snapshot.containers,
          {
            name: request.name,
            host: decision.host,
            cpuMillis: request.cpuMillis,
            memoryBytes: request.memoryBytes ?? 0,
            apart: request.apart ?? [],
          },
        ],
      };
      const backupDecision = place(withPrimary, {
        ...placementRequest,
        name: backupSlot(request.name),
        host: undefined,
        excludeHosts: [decision.host],
        origin: decision.host,
      });
      if (!backupDecision.ok) {
        const why = Object.entries(backupDecision.reasons)
          .map(([h, r]) => `${h}: ${r}`)
          .join('; ');
        throw new FailedPreconditionError(
          `no room to protect "${request.name}": no backup host besides ${decision.host} (${why || 'one host only'})`,
        );
      }
      backup = backupDecision.host;
    }
    const ip = request.ip ?? (await this.allocateIp());
    // Continuous protection: clients reach the output commit at an address of its own that moves with it.
    const serviceAddress =
      request.ha === 'continuous' && request.publish
        ? (await this.allocateIp([ip.split('/')[0]!])).split('/')[0]!
        : undefined;
    const spec = {
      ...request,
      intervalMs: request.intervalMs ?? (request.ha === 'continuous' ? 100 : 1000),
      image: image.id,
      ip,
      backup,
      ...(serviceAddress ? { serviceAddress } : {}),
    };
    const created = await store.createContainer({
      name: request.name,
      spec,
      desired: 'running',
      host: decision.host,
    });
    if (!created) throw new AlreadyExistsError(`container "${request.name}" already exists`);
    await this.emit('container.placed', request.name, { host: decision.host, ip });
    const host = (await store.getHost(decision.host))!;
    this.starting.add(request.name);
    try {
      const view = await this.options.callAgent<ContainerView>(host, '/v1/containers', {
        method: 'POST',
        body: agentRunBody((await store.getContainer(request.name))!),
      });
      this.noteReported(decision.host, { name: view.name, state: view.state, pid: view.pid, ip: view.ip });
      await this.emit('container.started', request.name, { host: decision.host, pid: view.pid });
      if (request.probe) await this.orderProbe((await store.getContainer(request.name))!);
      if (backup) {
        await this.orderProtection((await store.getContainer(request.name))!);
        await this.emit('container.protected', request.name, { primary: decision.host, backup });
      }
    } catch (error) {
      const current = await store.getContainer(request.name);
      if (current) await store.deleteContainer(request.name, current.generation);
      await this.emit('container.failed', request.name, {
        host: decision.host,
        error: error instanceof Error ? error.message : String(error),
      });
      throw error;
    } finally {
      this.starting.delete(request.name);
    }
    return this.getContainer(request.name);
  }

  private noteReported(hostName: string, container: ReportedContainer): void {
    this.liveness.get(hostName)?.containers.set(container.name, container);
  }

  /** First free address of the container range (`a.b.1.1` up; `.0`, `.255` and the x.0.* / x.255.* rows are kept for hosts and clients). */
  private async allocateIp(taken: readonly string[] = []): Promise<string> {
    const used = new Set<string>(taken);
    for (const c of await this.options.store.listContainers()) {
      if (typeof c.spec.ip === 'string') used.add(c.spec.ip.split('/')[0]!);
      if (typeof c.spec.serviceAddress === 'string') used.add(c.spec.serviceAddress);
    }
    const { a, b, prefix } = this.subnet;
    for (let n = 256; n < 255 * 256; n++) {
      const address = `${a}.${b}.${n >> 8}.${n & 255}`;
      if ((n & 255) === 0 || (n & 255) === 255 || used.has(address)) continue;
      return `${address}/${prefix}`;
    }
    throw new FailedPreconditionError('no free container address left in the cluster subnet');
  }

  /** Every container with its actual state. */
  async listContainers(): Promise<ClusterContainerView[]> {
    return (await this.options.store.listContainers()).map((c) => this.containerView(c));
  }

  /** One container, or NotFound. */
  async getContainer(name: string): Promise<ClusterContainerView> {
    return this.containerView(await this.intent(name));
  }

  private async intent(name: string): Promise<ContainerIntent> {
    const intent = await this.options.store.getContainer(name);
    if (!intent) throw new NotFoundError(`container "${name}" does not exist in the cluster`);
    return intent;
  }

  private containerView(intent: ContainerIntent): ClusterContainerView {
    const live = intent.host ? this.liveness.get(intent.host) : undefined;
    const reported = live?.containers.get(intent.name);
    let state: string;
    if (!intent.host) state = 'pending';
    else if (!live || live.state === 'unknown') state = reported?.state ?? 'unknown';
    else if (live.state === 'down') state = 'lost';
    else state = reported?.state ?? (this.starting.has(intent.name) ? 'starting' : 'lost');
    return {
      name: intent.name,
      host: intent.host ?? null,
      state,
      desired: intent.desired,
      ip: typeof intent.spec.ip === 'string' ? intent.spec.ip.split('/')[0]! : '',
      image: typeof intent.spec.image === 'string' ? intent.spec.image : '',
      pid: reported?.pid ?? 0,
      generation: intent.generation,
      protection: this.protectionView(intent, live?.protection.get(intent.name)),
      health:
        intent.spec.probe || intent.spec.watchdog ? (live?.health.get(intent.name) ?? 'starting') : null,
    };
  }

  private protectionView(intent: ContainerIntent, report: ProtectionReport | undefined): ProtectionView {
    const mode = haOf(intent);
    const intervalMs = numberOf(intent.spec.intervalMs, 1000);
    const committedAt = report?.committedAt ? Date.parse(report.committedAt) : NaN;
    const age = Number.isFinite(committedAt) ? Math.max(0, this.now() - committedAt) : null;
    return {
      mode,
      intervalMs,
      backup: typeof intent.spec.backup === 'string' ? intent.spec.backup : null,
      committedEpoch: report?.committedEpoch ?? null,
      committedAgeMs: age,
      rpoMs: age === null ? null : age + intervalMs,
      sentBytes: report?.sentBytes ?? null,
      totalBytes: report?.totalBytes ?? null,
      frozenMs: report?.frozenMs ?? null,
      epochMs: report?.epochMs ?? null,
      lastError: report?.lastError ?? null,
      epochRate: report?.epochRate ?? null,
      ...(report?.phases ? { phases: report.phases } : {}),
      ...(report?.epochsCommitted !== undefined ? { epochsCommitted: report.epochsCommitted } : {}),
      ...(mode === 'continuous'
        ? {
            ...(typeof intent.spec.serviceAddress === 'string'
              ? { serviceAddress: intent.spec.serviceAddress, publish: numbersOf(intent.spec.publish) }
              : {}),
            ...(report?.output ? { output: report.output } : {}),
          }
        : {}),
    };
  }

  /** The agent that holds a container (its host must be known and up). */
  private async agentOf(name: string): Promise<{ intent: ContainerIntent; host: HostRecord }> {
    const intent = await this.intent(name);
    if (!intent.host) throw new FailedPreconditionError(`container "${name}" is not placed on any host`);
    const host = await this.options.store.getHost(intent.host);
    if (!host)
      throw new FailedPreconditionError(
        `container "${name}" is on host "${intent.host}", which left the cluster`,
      );
    if (this.liveness.get(host.name)?.state === 'down') {
      throw new HavenError(`host "${host.name}" of container "${name}" is down`, 'unavailable', true);
    }
    return { intent, host };
  }

  /**
   * Forwards a container action (`stop`, `checkpoint`, `restore`, `logs`,
   * inspect) to its agent. A stop, or a checkpoint that stops the container,
   * first marks it stopped on purpose (no recovery, no failover); a restore
   * marks it running again.
   */
  async forward<T>(
    name: string,
    action: 'stop' | 'checkpoint' | 'restore' | 'logs' | 'inspect',
    body?: unknown,
  ): Promise<T> {
    if (stopsContainer(action, body)) {
      // Stopped on purpose: first the intent says so and no recovery may run,
      // so the exit the host reports meanwhile is not taken for a crash (nor
      // a checkpointed container, whose host then dies, failed over).
      const release = await this.claim(name);
      try {
        const { intent } = await this.agentOf(name);
        await this.options.store.updateContainer(name, intent.generation, { desired: 'stopped' });
        try {
          return await this.forwardClaimed<T>(name, action, body);
        } catch (error) {
          const now = await this.options.store.getContainer(name);
          if (now)
            await this.options.store.updateContainer(name, now.generation, { desired: intent.desired });
          throw error;
        }
      } finally {
        release();
      }
    }
    return this.forwardClaimed<T>(name, action, body);
  }

  private async forwardClaimed<T>(
    name: string,
    action: 'stop' | 'checkpoint' | 'restore' | 'logs' | 'inspect',
    body?: unknown,
  ): Promise<T> {
    const { intent, host } = await this.agentOf(name);
    const path = `/v1/containers/${encodeURIComponent(name)}${action === 'inspect' ? '' : `/${action}`}`;
    const result = await this.options.callAgent<T>(
      host,
      path,
      action === 'logs' || action === 'inspect' ? {} : { method: 'POST', body: body ?? {} },
    );
    if (action === 'stop' || action === 'restore') {
      const desired = action === 'stop' ? 'stopped' : 'running';
      if (intent.desired !== desired)
        await this.options.store.updateContainer(name, intent.generation, { desired });
      await this.emit(action === 'stop' ? 'container.stopped' : 'container.restored', name, {
        host: host.name,
      });
      // Shown as it is now, not at the host's next report (a restore answers with its report, not a view).
      const answered = result as unknown as Partial<ContainerView>;
      const view =
        typeof answered.state === 'string' && typeof answered.pid === 'number'
          ? answered
          : await this.options
              .callAgent<ContainerView>(host, `/v1/containers/${encodeURIComponent(name)}`)
              .catch(() => undefined);
      if (typeof view?.state === 'string' && typeof view.pid === 'number') {
        this.noteReported(host.name, { name, state: view.state, pid: view.pid, ip: view.ip ?? '' });
      }
    } else if (action === 'checkpoint') {
      const stopped = stopsContainer(action, body);
      await this.emit('container.checkpointed', name, { host: host.name, stopped });
      // Shown stopped at once, not at the host's next report.
      const reported = this.liveness.get(host.name)?.containers.get(name);
      if (stopped && reported) this.noteReported(host.name, { ...reported, state: 'checkpointed', pid: 0 });
    }
    return result;
  }

  /**
   * Removes a container: from its host (if the host is up), then the intent.
   * With `force`, a container whose host is down or gone is forgotten anyway.
   */
  async removeContainer(name: string, force: boolean): Promise<void> {
    const release = await this.claim(name);
    try {
      await this.removeClaimed(name, force);
    } finally {
      release();
    }
  }

  /**
   * Takes the container's slot in `failingOver` (one thing at a time per
   * container): waits up to 30 s for a recovery, failover or switchover in
   * flight to finish, then holds the slot so that none starts — a host
   * reporting the container exited while the operator removes or stops it
   * must not bring it back. Past 30 s it goes ahead: an operation that finds
   * its intent gone or changed abandons its copy.
   */
  private async claim(name: string): Promise<() => void> {
    const deadline = Date.now() + 30_000;
    for (
      let busy = this.failingOver.get(name);
      busy && Date.now() < deadline;
      busy = this.failingOver.get(name)
    ) {
      await Promise.race([busy.catch(() => undefined), sleep(1000)]);
    }
    this.failingOver.delete(name); // still busy after 30 s: go ahead (see above)
    return this.tryHold(name)!;
  }

  /**
   * Holds the container's slot in `failingOver` if it is free — at once, with
   * no await between the look and the hold, so two callers cannot both get
   * it. Returns the release, or undefined if something else holds it.
   */
  private tryHold(name: string): (() => void) | undefined {
    if (this.failingOver.has(name)) return undefined;
    let release = (): void => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    this.failingOver.set(name, held);
    return () => {
      if (this.failingOver.get(name) === held) this.failingOver.delete(name);
      release();
    };
  }

  private async removeClaimed(name: string, force: boolean): Promise<void> {
    const intent = await this.intent(name);
    const host = intent.host ? await this.options.store.getHost(intent.host) : undefined;
    const hostUp = host && this.liveness.get(host.name)?.state !== 'down';
    if (host && hostUp) {
      try {
        await this.options.callAgent(
          host,
          `/v1/containers/${encodeURIComponent(name)}${force ? '?force=true' : ''}`,
          { method: 'DELETE' },
        );
      } catch (error) {
        // Already gone from the host (e.g. it rebooted empty): the intent can go too.
        if (!(error instanceof HavenError && error.code === 'not_found')) throw error;
      }
      this.liveness.get(host.name)?.containers.delete(name);
    } else if (!force) {
      throw new FailedPreconditionError(
        `host "${intent.host ?? '?'}" of "${name}" is down: use --force to forget it`,
      );
    }
    const backup =
      typeof intent.spec.backup === 'string'
        ? await this.options.store.getHost(intent.spec.backup)
        : undefined;
    if (backup && this.isLive(backup.name)) {
      await this.options
        .callAgent(backup, `/v1/replicas/${encodeURIComponent(name)}`, { method: 'DELETE' })
        .catch(() => undefined);
    }
    await this.options.store.deleteContainer(name, intent.generation);
    await this.emit('container.removed', name, { host: intent.host ?? null });
  }

  /** Sequence number of the newest event. */
  latestEventSeq(): Promise<number> {
    return this.options.store.latestEventSeq();
  }

  /** Events after `since`, oldest first. */
  eventsSince(since: number, limit: number): Promise<StoredEvent[]> {
    return this.options.store.eventsSince(since, limit);
  }
}

function numberOf(value: unknown, fallback: number): number {
  return typeof value === 'number' ? value : fallback;
}

function stringsOf(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

/** An array of numbers from a stored spec field (anything else: empty). */
function numbersOf(value: unknown): number[] {
  return Array.isArray(value) ? value.filter((v): v is number => typeof v === 'number') : [];
}

/** A container's protection mode. */
function haOf(intent: ContainerIntent): ProtectionView['mode'] {
  const ha = intent.spec.ha;
  return ha === 'restart' || ha === 'checkpoint' || ha === 'continuous' ? ha : 'none';
}

/**
 * The name under which a container's backup reserves room on its backup
 * host: failover capacity is held, as vSphere HA's admission control holds it.
 */
function backupSlot(name: string): string {
  return `${name}~backup`;
}

/** The placement request a stored intent stands for. */
function placementOf(intent: ContainerIntent): PlacementRequest {
  const labels = intent.spec.requireHostLabels;
  return {
    name: intent.name,
    cpuMillis: numberOf(intent.spec.cpuMillis, 0),
    memoryBytes: numberOf(intent.spec.memoryBytes, 0),
    ...(labels && typeof labels === 'object' ? { requireHostLabels: labels as Record<string, string> } : {}),
    ...(Array.isArray(intent.spec.with) ? { with: stringsOf(intent.spec.with) } : {}),
    apart: stringsOf(intent.spec.apart),
  };
}

/** The agent's run request for a stored intent (same image, address, volumes). */
function agentRunBody(intent: ContainerIntent): Record<string, unknown> {
  const spec = intent.spec;
  return {
    name: intent.name,
    image: spec.image,
    args: spec.args,
    env: spec.env ?? [],
    volumes: spec.volumes ?? [],
    ip: spec.ip,
    ...(typeof spec.memoryBytes === 'number' ? { memoryBytes: spec.memoryBytes } : {}),
    // The application's own heartbeat: the agent gives it a notify socket and watches it.
    ...(spec.watchdog ? { watchdog: spec.watchdog } : {}),
  };
}

/** True for an action that stops the container: `stop`, or a checkpoint that does not leave it running. */
function stopsContainer(action: string, body: unknown): boolean {
  return (
    action === 'stop' ||
    (action === 'checkpoint' && (body as { leaveRunning?: boolean } | undefined)?.leaveRunning !== true)
  );
}
