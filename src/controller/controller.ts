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
import { EventEmitter } from 'node:events';
import { AlreadyExistsError, FailedPreconditionError, HavenError, NotFoundError } from '../core/errors.js';
import type { ContainerView } from '../host/container-host.js';
import type { ImageRegistry } from './image-registry.js';
import { place, type ClusterSnapshot, type PlacementRequest } from './placement.js';
import type { ClusterRunRequest, Heartbeat, RegisterHostRequest, ReportedContainer } from './schemas.js';
import type { ClusterStore, ContainerIntent, HostRecord, StoredEvent } from './store.js';

/** How the controller calls an agent; replaced by fakes in unit tests and benchmarks. */
export type AgentCaller = <T>(
  host: HostRecord,
  path: string,
  options?: { method?: string; body?: unknown },
) => Promise<T>;

/** Options of {@link Controller}. */
export interface ControllerOptions {
  store: ClusterStore;
  images: ImageRegistry;
  callAgent: AgentCaller;
  /** A host missing heartbeats this long is down (default 3000 ms). */
  failureAfterMs?: number;
  /** Container addresses come from `<a>.<b>.1.1` up (default prefix 10.88, /16). */
  subnet?: { a: number; b: number; prefix: number };
  /** Milliseconds clock (tests drive it). */
  now?: () => number;
}

/** Liveness of a host: `unknown` until its first heartbeat after a controller start. */
export type HostState = 'up' | 'down' | 'unknown';

/** A host as the API shows it. */
export interface HostView extends HostRecord {
  state: HostState;
  /** Milliseconds since its last heartbeat (null before the first). */
  lastSeenMs: number | null;
  containers: number;
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
}

interface Liveness {
  lastSeen: number;
  state: HostState;
  bootId: string;
  containers: Map<string, ReportedContainer>;
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
    this.failureAfterMs = options.failureAfterMs ?? 3000;
    this.now = options.now ?? Date.now;
    this.subnet = options.subnet ?? { a: 10, b: 88, prefix: 16 };
    this.events.setMaxListeners(0);
  }

  /** Starts the failure detector (checks liveness every quarter of the failure time). */
  start(): void {
    this.monitor ??= setInterval(
      () => void this.checkLiveness().catch(() => undefined),
      Math.max(50, this.failureAfterMs / 4),
    );
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

  /** An agent (re)announces itself. Keeps the operator's cordon across re-registrations. */
  async registerHost(request: RegisterHostRequest): Promise<HostView> {
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
    const rebooted = previous !== undefined && previous.bootId !== request.bootId;
    this.liveness.set(request.name, {
      lastSeen: this.now(),
      state: 'up',
      bootId: request.bootId,
      containers: rebooted
        ? new Map<string, ReportedContainer>()
        : (previous?.containers ?? new Map<string, ReportedContainer>()),
    });
    if (!existing) await this.emit('host.joined', request.name, { address: request.address });
    else if (rebooted) await this.emit('host.rebooted', request.name, { bootId: request.bootId });
    // After a controller restart every host registers again: known and not seen down, that is no news.
    else if (previous?.state === 'down') await this.emit('host.up', request.name, {});
    return this.hostView(record);
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
    if (beat.containers) {
      live.containers = new Map(beat.containers.map((c) => [c.name, c]));
    }
    if (live.state !== 'up') {
      live.state = 'up';
      void this.emit('host.up', hostName, {}).catch(() => undefined);
    }
    return true;
  }

  /** Marks hosts whose heartbeats stopped as down; emits one event per transition. */
  async checkLiveness(): Promise<void> {
    const now = this.now();
    for (const [name, live] of this.liveness) {
      if (live.state === 'up' && now - live.lastSeen > this.failureAfterMs) {
        live.state = 'down';
        const lost = [...live.containers.keys()];
        await this.emit('host.down', name, { silentMs: now - live.lastSeen, containers: lost });
      }
    }
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
      containers: live?.containers.size ?? 0,
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
        schedulable: !h.cordoned && this.liveness.get(h.name)?.state === 'up',
      })),
      containers: intents
        .filter((c) => c.host !== undefined)
        .map((c) => ({
          name: c.name,
          host: c.host!,
          cpuMillis: numberOf(c.spec.cpuMillis, 0),
          memoryBytes: numberOf(c.spec.memoryBytes, 0),
          apart: stringsOf(c.spec.apart),
        })),
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
    const ip = request.ip ?? (await this.allocateIp());
    const spec = { ...request, image: image.id, ip };
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
        body: {
          name: request.name,
          image: image.id,
          args: request.args,
          env: request.env,
          volumes: request.volumes,
          ip,
          ...(request.memoryBytes ? { memoryBytes: request.memoryBytes } : {}),
        },
      });
      this.noteReported(decision.host, { name: view.name, state: view.state, pid: view.pid, ip: view.ip });
      await this.emit('container.started', request.name, { host: decision.host, pid: view.pid });
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
  private async allocateIp(): Promise<string> {
    const used = new Set<string>();
    for (const c of await this.options.store.listContainers()) {
      if (typeof c.spec.ip === 'string') used.add(c.spec.ip.split('/')[0]!);
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

  /** Forwards a container action (`stop`, `checkpoint`, `restore`, `logs`, inspect) to its agent. */
  async forward<T>(
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
      await this.options.store.updateContainer(name, intent.generation, { desired });
      await this.emit(action === 'stop' ? 'container.stopped' : 'container.restored', name, {
        host: host.name,
      });
      const view = result as unknown as Partial<ContainerView>;
      if (typeof view.state === 'string' && typeof view.pid === 'number') {
        this.noteReported(host.name, { name, state: view.state, pid: view.pid, ip: view.ip ?? '' });
      }
    } else if (action === 'checkpoint') {
      await this.emit('container.checkpointed', name, { host: host.name });
    }
    return result;
  }

  /**
   * Removes a container: from its host (if the host is up), then the intent.
   * With `force`, a container whose host is down or gone is forgotten anyway.
   */
  async removeContainer(name: string, force: boolean): Promise<void> {
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
