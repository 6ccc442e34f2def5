/**
 * The cluster store on etcd (v3 API, through the `etcd3` client), for a
 * control plane of several controllers: the state outlives any one of them,
 * and only the elected leader may change it.
 *
 * Layout, under the prefix (default `haven/`):
 *
 * ```
 * hosts/<name>          HostRecord as JSON
 * containers/<name>     intent as JSON; its generation is the key's etcd mod revision
 * operations/<name>     OperationRecord as JSON
 * events/<seq, 16 digits>  StoredEvent as JSON
 * ```
 *
 * **Generations are etcd revisions.** A container's generation is the
 * revision at which its key last changed: monotonic across every controller
 * that ever led (a new leader cannot hand out a generation an old one used),
 * so compare-and-set and the fencing of orders need no counter of their own.
 * They are not dense (1, 2, 3 …) as SQLite's are; nothing compares them but
 * for equality.
 *
 * **Fencing the leader.** Every write is a transaction guarded by the
 * leader's election key (`fence`): it applies only while that key still has
 * the create revision this controller was elected with. A deposed leader —
 * its lease expired during a pause, another took over — has every write
 * refused ({@link NotLeaderError}), so two controllers never both decide.
 *
 * **Events** get their sequence numbers from the leader, which is the only
 * writer: it reads the newest at start and appends one at a time (in order,
 * so a reader following `eventsSince` never skips one that commits late).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { circuitBreaker, ConsecutiveBreaker, handleWhen } from 'cockatiel';
import { Etcd3, isRecoverableError, type IOptions, type Namespace } from 'etcd3';
import { HavenError, NotLeaderError } from '../core/errors.js';

export { NotLeaderError };
import type { ClusterStore, ContainerIntent, HostRecord, OperationRecord, StoredEvent } from './store.js';

/** A store call that etcd did not answer in this time fails as unavailable (no quorum, all members down). */
const CALL_TIMEOUT_MS = 3_000;
/** A member the client gave up on (three failures in a row) is tried again after this long. */
const MEMBER_RETRY_MS = 500;
/** Events kept: older ones are deleted as new ones come (SQLite keeps all; etcd is not a log store). */
const EVENTS_KEPT = 20_000;

/** Which election key guards writes, and the create revision it must still have. */
export interface Fence {
  key: string;
  createRevision: string;
}

/** Options of {@link EtcdStore}. */
export interface EtcdStoreOptions {
  /** Client endpoints, e.g. `http://127.0.0.1:2379`. */
  endpoints: string[];
  /** Key prefix (default `haven/`). */
  prefix?: string;
  /** Guards every write (see the module comment); without it writes are unguarded (tests, tools). */
  fence?: Fence;
  /** An existing client (shared with the election); closed by {@link EtcdStore.close} only if the store made it. */
  client?: Etcd3;
}

interface StoredIntent {
  name: string;
  spec: Record<string, unknown>;
  desired: 'running' | 'stopped';
  host?: string;
  updatedAt: string;
}

/** What a controller presents to an etcd that asks for client certificates (PEM). */
export interface EtcdClientTls {
  /** The CA that signed etcd's certificates. */
  ca: string;
  /** A client certificate etcd trusts, and its key. */
  cert: string;
  key: string;
}

/**
 * The client options Haven uses: bounded calls, so a lost quorum is an error,
 * not a hang; with `tls`, every connection is TLS with a client certificate
 * (the endpoints must then be `https://`).
 */
export function etcdClientOptions(endpoints: string[], tls?: EtcdClientTls): IOptions {
  return {
    hosts: endpoints,
    faultHandling: {
      // A member that failed three calls in a row is skipped, and tried again
      // after 500 ms — not the client's default 5 s: a leader whose keep-alives
      // failed while etcd had no quorum would otherwise go on deciding nothing
      // for up to 5 s after the quorum came back.
      host: () =>
        circuitBreaker(handleWhen(isRecoverableError), {
          halfOpenAfter: MEMBER_RETRY_MS,
          breaker: new ConsecutiveBreaker(3),
        }),
    },
    ...(tls
      ? {
          credentials: {
            rootCertificate: Buffer.from(tls.ca),
            certChain: Buffer.from(tls.cert),
            privateKey: Buffer.from(tls.key),
          },
        }
      : {}),
    dialTimeout: 2_000,
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }),
  };
}

/** {@link ClusterStore} on etcd. */
export class EtcdStore implements ClusterStore {
  private readonly client: Etcd3;
  private readonly ownsClient: boolean;
  private readonly ns: Namespace;
  private readonly fence: Fence | undefined;
  /** Newest event sequence number, once read (the leader is the only appender). */
  private lastSeq: number | undefined;
  /** Appends run one after another, so sequence numbers commit in order. */
  private appending: Promise<unknown> = Promise.resolve();

  constructor(options: EtcdStoreOptions) {
    this.ownsClient = options.client === undefined;
    this.client = options.client ?? new Etcd3(etcdClientOptions(options.endpoints));
    this.ns = this.client.namespace(options.prefix ?? 'haven/');
    this.fence = options.fence;
  }

  /**
   * Runs `call`, turning etcd's failures into Haven's `unavailable`
   * (retryable). A call refused by a dead member is tried again (the client
   * picks members at random and gives up after three): only a call etcd
   * itself could not answer in time (no quorum) fails at once.
   */
  private async guard<T>(what: string, call: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + CALL_TIMEOUT_MS;
    // The client's circuit breaker hides why a member was given up: the first error says.
    let firstError: string | undefined;
    for (;;) {
      try {
        return await call();
      } catch (error) {
        if (error instanceof HavenError) throw error;
        const message = (error as Error).message;
        const unreached = /ECONNREFUSED|No connection established|circuit breaker/i.test(message);
        if (!/circuit breaker/i.test(message)) firstError ??= message;
        if (unreached && Date.now() < deadline) {
          await sleep(50);
          continue;
        }
        const why = firstError && firstError !== message ? `${message} (first: ${firstError})` : message;
        throw new HavenError(`etcd: ${what}: ${why}`, 'unavailable', true, { cause: error });
      }
    }
  }

  /**
   * Commits `then` if `compares` hold and this controller still leads.
   * Returns false when a compare failed; throws {@link NotLeaderError} when
   * the fence did.
   */
  private async commit(
    what: string,
    compares: Array<[string, 'Create' | 'Mod', '==', number | string]>,
    then: Array<ReturnType<Namespace['put']> | ReturnType<Namespace['delete']>>,
  ): Promise<{ ok: boolean; revision: number }> {
    return this.guard(what, async () => {
      // Compares name keys from the root (the fence is outside this store's prefix).
      const all: Array<[string, 'Create' | 'Mod', '==', number | string]> = [
        ...(this.fence ? [[this.fence.key, 'Create', '==', this.fence.createRevision] as const] : []),
        ...compares.map(([key, t, c, v]) => [`${this.prefix}${key}`, t, c, v] as const),
      ].map(([k, t, c, v]) => [k, t, c, v]);
      const [first, ...rest] = all;
      if (!first) {
        // Neither fenced nor conditional (tests, tools): the write as it is.
        let revision = 0;
        for (const op of then) revision = Number((await op.exec()).header.revision);
        return { ok: true, revision };
      }
      let txn = this.client.if(...first);
      for (const compare of rest) txn = txn.and(...compare);
      const result = await txn.then(...then).commit();
      if (!result.succeeded && this.fence) {
        const held = await this.client.get(this.fence.key).exec();
        const kv = held.kvs[0];
        if (!kv || String(kv.create_revision) !== this.fence.createRevision) {
          throw new NotLeaderError('this controller is no longer the leader (its election key is gone)');
        }
      }
      return { ok: result.succeeded, revision: Number(result.header.revision) };
    });
  }

  /** This store's key prefix, as the root namespace sees it. */
  private get prefix(): string {
    return this.ns.prefix.toString();
  }

  // ---------------------------------------------------------------- hosts

  async putHost(host: HostRecord): Promise<void> {
    await this.commit('put host', [], [this.ns.put(`hosts/${host.name}`).value(JSON.stringify(host))]);
  }

  async getHost(name: string): Promise<HostRecord | undefined> {
    const value = await this.guard('get host', () => this.ns.get(`hosts/${name}`).string());
    return value === null ? undefined : (JSON.parse(value) as HostRecord);
  }

  async listHosts(): Promise<HostRecord[]> {
    const all = await this.guard('list hosts', () => this.ns.getAll().prefix('hosts/').strings());
    return Object.values(all)
      .map((v) => JSON.parse(v) as HostRecord)
      .sort(byName);
  }

  async deleteHost(name: string): Promise<void> {
    await this.commit('delete host', [], [this.ns.delete().key(`hosts/${name}`)]);
  }

  // ----------------------------------------------------------- containers

  async createContainer(intent: Omit<ContainerIntent, 'generation' | 'updatedAt'>): Promise<boolean> {
    const stored: StoredIntent = {
      name: intent.name,
      spec: intent.spec,
      desired: intent.desired,
      ...(intent.host !== undefined ? { host: intent.host } : {}),
      updatedAt: new Date().toISOString(),
    };
    const key = `containers/${intent.name}`;
    const { ok } = await this.commit(
      'create container',
      [[key, 'Create', '==', 0]],
      [this.ns.put(key).value(JSON.stringify(stored))],
    );
    return ok;
  }

  async getContainer(name: string): Promise<ContainerIntent | undefined> {
    const result = await this.guard('get container', () => this.ns.get(`containers/${name}`).exec());
    const kv = result.kvs[0];
    return kv ? intentOf(kv.value.toString(), kv.mod_revision) : undefined;
  }

  async listContainers(): Promise<ContainerIntent[]> {
    const result = await this.guard('list containers', () => this.ns.getAll().prefix('containers/').exec());
    return result.kvs.map((kv) => intentOf(kv.value.toString(), kv.mod_revision)).sort(byName);
  }

  async updateContainer(
    name: string,
    expected: number,
    change: Partial<Pick<ContainerIntent, 'spec' | 'desired' | 'host'>>,
  ): Promise<ContainerIntent | undefined> {
    const current = await this.getContainer(name);
    if (!current || current.generation !== expected) return undefined;
    const next: StoredIntent = {
      name,
      spec: change.spec ?? current.spec,
      desired: change.desired ?? current.desired,
      updatedAt: new Date().toISOString(),
    };
    // `host: undefined` in a change means "on no host", as SQLite's NULL does.
    const host = 'host' in change ? change.host : current.host;
    if (host !== undefined) next.host = host;
    const key = `containers/${name}`;
    const { ok, revision } = await this.commit(
      'update container',
      [[key, 'Mod', '==', expected]],
      [this.ns.put(key).value(JSON.stringify(next))],
    );
    return ok ? { ...next, generation: revision } : undefined;
  }

  async deleteContainer(name: string, expected: number): Promise<boolean> {
    const key = `containers/${name}`;
    const { ok } = await this.commit(
      'delete container',
      [[key, 'Mod', '==', expected]],
      [this.ns.delete().key(key)],
    );
    return ok;
  }

  // ----------------------------------------------------------- operations

  async putOperation(operation: Omit<OperationRecord, 'updatedAt'>): Promise<OperationRecord> {
    const stored: OperationRecord = { ...operation, updatedAt: new Date().toISOString() };
    await this.commit(
      'put operation',
      [],
      [this.ns.put(`operations/${operation.container}`).value(JSON.stringify(stored))],
    );
    return stored;
  }

  async getOperation(container: string): Promise<OperationRecord | undefined> {
    const value = await this.guard('get operation', () => this.ns.get(`operations/${container}`).string());
    return value === null ? undefined : (JSON.parse(value) as OperationRecord);
  }

  async listOperations(): Promise<OperationRecord[]> {
    const all = await this.guard('list operations', () => this.ns.getAll().prefix('operations/').strings());
    return Object.values(all)
      .map((v) => JSON.parse(v) as OperationRecord)
      .sort((a, b) => (a.container < b.container ? -1 : a.container > b.container ? 1 : 0));
  }

  async deleteOperation(container: string): Promise<void> {
    await this.commit('delete operation', [], [this.ns.delete().key(`operations/${container}`)]);
  }

  // --------------------------------------------------------------- events

  appendEvent(kind: string, subject: string, data: Record<string, unknown>): Promise<StoredEvent> {
    const next = this.appending.then(async () => {
      const seq = (this.lastSeq ?? (await this.latestEventSeq())) + 1;
      const event: StoredEvent = { seq, at: new Date().toISOString(), kind, subject, data };
      const key = eventKey(seq);
      const { ok } = await this.commit(
        'append event',
        [[key, 'Create', '==', 0]],
        [this.ns.put(key).value(JSON.stringify(event))],
      );
      if (!ok) {
        // Someone else appended (a leader before this one, still finishing): read again next time.
        this.lastSeq = undefined;
        throw new HavenError(`etcd: event ${seq} was taken`, 'unavailable', true);
      }
      this.lastSeq = seq;
      if (seq % 1000 === 0 && seq > EVENTS_KEPT) {
        await this.commit(
          'trim events',
          [],
          [this.ns.delete().range(this.ns.range({ start: 'events/', end: eventKey(seq - EVENTS_KEPT) }))],
        ).catch(() => undefined);
      }
      return event;
    });
    this.appending = next.catch(() => undefined);
    return next;
  }

  async latestEventSeq(): Promise<number> {
    const result = await this.guard('latest event', () =>
      this.ns.getAll().prefix('events/').sort('Key', 'Descend').limit(1).keys(),
    );
    const key = result[0];
    return key ? Number(key.slice('events/'.length)) : 0;
  }

  async eventsSince(seq: number, limit: number): Promise<StoredEvent[]> {
    const n = Math.max(0, Math.min(limit, 10_000));
    if (n === 0) return [];
    const read = (serializable: boolean): Promise<Record<string, string>> =>
      this.ns
        .getAll()
        .inRange({ start: eventKey(seq + 1), end: 'events0' }) // '0' follows '/': the end of the prefix
        .sort('Key', 'Ascend')
        .limit(n)
        .serializable(serializable)
        // The quorum read is given a second (not the usual three) before one member's copy is read.
        .options({ deadline: Date.now() + (serializable ? CALL_TIMEOUT_MS : 1_000) })
        .strings();
    // Without a quorum the events are still told, from one member's copy (a prefix of the log:
    // members apply it in order, so a follower may lag but never skips one).
    const result = await this.guard('events since', () => read(false)).catch(() =>
      this.guard('events since (one member)', () => read(true)),
    );
    return Object.values(result)
      .map((v) => JSON.parse(v) as StoredEvent)
      .sort((a, b) => a.seq - b.seq);
  }

  async close(): Promise<void> {
    await this.appending;
    if (this.ownsClient) this.client.close();
  }
}

function eventKey(seq: number): string {
  return `events/${String(Math.max(0, seq)).padStart(16, '0')}`;
}

function intentOf(value: string, modRevision: string | number): ContainerIntent {
  const stored = JSON.parse(value) as StoredIntent;
  return {
    name: stored.name,
    spec: stored.spec,
    desired: stored.desired === 'stopped' ? 'stopped' : 'running',
    ...(stored.host !== undefined ? { host: stored.host } : {}),
    generation: Number(modRevision),
    updatedAt: stored.updatedAt,
  };
}

function byName<T extends { name: string }>(a: T, b: T): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}
