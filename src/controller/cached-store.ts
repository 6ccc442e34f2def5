/**
 * A write-through cache in front of any {@link ClusterStore}. The controller
 * reads its whole cluster on every placement decision; reading thousands of
 * rows from SQLite (or etcd) each time would make a decision cost
 * milliseconds per container. The leader is the only writer, so it can keep
 * the cluster in memory: loaded once at start, and changed only after the
 * backend accepted each write (a failed write changes nothing here).
 */
import type { ClusterStore, ContainerIntent, HostRecord, OperationRecord, StoredEvent } from './store.js';

/** {@link ClusterStore} that serves reads from memory and writes through to `backend`. */
export class CachedStore implements ClusterStore {
  private readonly hosts = new Map<string, HostRecord>();
  private readonly containers = new Map<string, ContainerIntent>();
  private changes = 0;

  /** Bumped by every container change that went through. */
  version(): number {
    return this.changes;
  }

  private constructor(private readonly backend: ClusterStore) {}

  /** Loads everything from `backend` and returns the cache over it. */
  static async over(backend: ClusterStore): Promise<CachedStore> {
    const cache = new CachedStore(backend);
    for (const h of await backend.listHosts()) cache.hosts.set(h.name, h);
    for (const c of await backend.listContainers()) cache.containers.set(c.name, c);
    return cache;
  }

  async putHost(host: HostRecord): Promise<void> {
    await this.backend.putHost(host);
    this.hosts.set(host.name, { ...host });
  }

  getHost(name: string): Promise<HostRecord | undefined> {
    const host = this.hosts.get(name);
    return Promise.resolve(host ? { ...host } : undefined);
  }

  listHosts(): Promise<HostRecord[]> {
    return Promise.resolve([...this.hosts.values()].sort(byName));
  }

  async deleteHost(name: string): Promise<void> {
    await this.backend.deleteHost(name);
    this.hosts.delete(name);
  }

  async createContainer(intent: Omit<ContainerIntent, 'generation' | 'updatedAt'>): Promise<boolean> {
    if (this.containers.has(intent.name)) return false;
    const created = await this.backend.createContainer(intent);
    if (created) {
      this.changes++;
      const stored = await this.backend.getContainer(intent.name);
      if (stored) this.containers.set(stored.name, stored);
    }
    return created;
  }

  getContainer(name: string): Promise<ContainerIntent | undefined> {
    return Promise.resolve(this.containers.get(name));
  }

  listContainers(): Promise<ContainerIntent[]> {
    return Promise.resolve([...this.containers.values()].sort(byName));
  }

  async updateContainer(
    name: string,
    expected: number,
    change: Partial<Pick<ContainerIntent, 'spec' | 'desired' | 'host'>>,
  ): Promise<ContainerIntent | undefined> {
    const updated = await this.backend.updateContainer(name, expected, change);
    if (updated) {
      this.containers.set(name, updated);
      this.changes++;
    }
    return updated;
  }

  async deleteContainer(name: string, expected: number): Promise<boolean> {
    const deleted = await this.backend.deleteContainer(name, expected);
    if (deleted) {
      this.containers.delete(name);
      this.changes++;
    }
    return deleted;
  }

  // Operations are few and read only at start-up and between steps: straight to the backend.
  putOperation(operation: Omit<OperationRecord, 'updatedAt'>): Promise<OperationRecord> {
    return this.backend.putOperation(operation);
  }

  getOperation(container: string): Promise<OperationRecord | undefined> {
    return this.backend.getOperation(container);
  }

  listOperations(): Promise<OperationRecord[]> {
    return this.backend.listOperations();
  }

  deleteOperation(container: string): Promise<void> {
    return this.backend.deleteOperation(container);
  }

  appendEvent(kind: string, subject: string, data: Record<string, unknown>): Promise<StoredEvent> {
    return this.backend.appendEvent(kind, subject, data);
  }

  latestEventSeq(): Promise<number> {
    return this.backend.latestEventSeq();
  }

  eventsSince(seq: number, limit: number): Promise<StoredEvent[]> {
    return this.backend.eventsSince(seq, limit);
  }

  close(): Promise<void> {
    return this.backend.close();
  }
}

function byName<T extends { name: string }>(a: T, b: T): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}
