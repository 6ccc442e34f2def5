/**
 * The controller's state store: what the cluster should be (containers and
 * their intent), what it has (hosts), and what happened (events). One
 * interface, several backends — embedded SQLite by default
 * (`sqlite-store.ts`), etcd when several controllers share a cluster (a later
 * issue) — in the style of Nomad's state store.
 *
 * Every container carries a `generation`, bumped by each change and checked
 * by compare-and-set: the basis of fencing (an order carries the generation
 * it was decided at; a stale one is refused) and of safe concurrent updates.
 */

/** A host as the controller records it. */
export interface HostRecord {
  name: string;
  /** Agent API address, e.g. `http://10.89.0.2:7070`. */
  address: string;
  labels: Record<string, string>;
  cpuMillis: number;
  memoryBytes: number;
  cordoned: boolean;
  registeredAt: string;
}

/** What the user asked for a container, and where it is meant to run. */
export interface ContainerIntent {
  name: string;
  /** The run spec, as accepted by the API (image ID, args, env, volumes, ip, resources, rules). */
  spec: Record<string, unknown>;
  desired: 'running' | 'stopped';
  /** The host it is placed on, if any. */
  host?: string;
  /** Bumped by every change; compare-and-set target. */
  generation: number;
  updatedAt: string;
}

/** An event as stored: a monotonic sequence number makes the stream resumable. */
export interface StoredEvent {
  seq: number;
  at: string;
  kind: string;
  subject: string;
  data: Record<string, unknown>;
}

/**
 * A multi-step operation on one container (a failover, a planned
 * switchover), recorded step by step so that a controller killed half-way
 * finishes it — or rolls it back — after a restart instead of leaving the
 * container lost or running twice. At most one per container.
 */
export interface OperationRecord {
  container: string;
  kind: 'failover' | 'switchover' | 'migration';
  /** The host the container leaves, and the one it goes to. */
  from: string;
  to: string;
  /** The last step done (see the state diagram above `Controller.failover`). */
  step: string;
  /**
   * The intent's generation when the operation was decided: the intent moves
   * only if it is still that (compare-and-set), so an operation overtaken by
   * another change is refused instead of applied.
   */
  generation: number;
  /** The epoch restored (once known). */
  epoch: number | null;
  /** What the steps so far measured and why it began (reason, detection time, timings). */
  detail: Record<string, unknown>;
  startedAt: string;
  updatedAt: string;
}

/** The store interface every backend implements. */
export interface ClusterStore {
  putHost(host: HostRecord): Promise<void>;
  getHost(name: string): Promise<HostRecord | undefined>;
  listHosts(): Promise<HostRecord[]>;
  deleteHost(name: string): Promise<void>;

  /** Creates a container intent (generation 1); false if the name is taken. */
  createContainer(intent: Omit<ContainerIntent, 'generation' | 'updatedAt'>): Promise<boolean>;
  getContainer(name: string): Promise<ContainerIntent | undefined>;
  listContainers(): Promise<ContainerIntent[]>;
  /**
   * Applies `change` if the stored generation is still `expected`; returns the
   * new record, or undefined if someone else changed it first (or it is gone).
   */
  updateContainer(
    name: string,
    expected: number,
    change: Partial<Pick<ContainerIntent, 'spec' | 'desired' | 'host'>>,
  ): Promise<ContainerIntent | undefined>;
  deleteContainer(name: string, expected: number): Promise<boolean>;

  /** Records an operation, replacing the container's previous one (its next step). */
  putOperation(operation: Omit<OperationRecord, 'updatedAt'>): Promise<OperationRecord>;
  getOperation(container: string): Promise<OperationRecord | undefined>;
  /** Every unfinished operation, by container name. */
  listOperations(): Promise<OperationRecord[]>;
  /** Forgets a container's operation (it finished or was rolled back). */
  deleteOperation(container: string): Promise<void>;

  appendEvent(kind: string, subject: string, data: Record<string, unknown>): Promise<StoredEvent>;
  /** Sequence number of the newest event (0 when there is none). */
  latestEventSeq(): Promise<number>;
  /** Events after `seq`, oldest first, at most `limit`. */
  eventsSince(seq: number, limit: number): Promise<StoredEvent[]>;

  close(): Promise<void>;

  /**
   * Optional: a number that changes whenever containers change, for callers
   * that cache views of them (a backend that cannot say omits it).
   */
  version?(): number;
}
