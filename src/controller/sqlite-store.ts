/**
 * The embedded store: SQLite through better-sqlite3 (version 12; 13 needs
 * Node 22 and crashes on 20). One file, WAL journal, synchronous=FULL —
 * a controller killed at any instant restarts with every committed change.
 */
import Database from 'better-sqlite3';
import type { ClusterStore, ContainerIntent, HostRecord, OperationRecord, StoredEvent } from './store.js';

const SCHEMA_VERSION = 1;

interface HostRow {
  name: string;
  address: string;
  labels: string;
  cpu_millis: number;
  memory_bytes: number;
  cordoned: number;
  registered_at: string;
}

interface ContainerRow {
  name: string;
  spec: string;
  desired: string;
  host: string | null;
  generation: number;
  updated_at: string;
}

interface OperationRow {
  container: string;
  kind: string;
  from_host: string;
  to_host: string;
  step: string;
  generation: number;
  epoch: number | null;
  detail: string;
  started_at: string;
  updated_at: string;
}

interface EventRow {
  seq: number;
  at: string;
  kind: string;
  subject: string;
  data: string;
}

/** {@link ClusterStore} on an SQLite file. */
export class SqliteStore implements ClusterStore {
  private readonly db: Database.Database;

  /** Opens (creating if needed) the store at `path` (`:memory:` for tests). */
  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS hosts (
        name TEXT PRIMARY KEY, address TEXT NOT NULL, labels TEXT NOT NULL,
        cpu_millis INTEGER NOT NULL, memory_bytes INTEGER NOT NULL,
        cordoned INTEGER NOT NULL, registered_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS containers (
        name TEXT PRIMARY KEY, spec TEXT NOT NULL, desired TEXT NOT NULL, host TEXT,
        generation INTEGER NOT NULL, updated_at TEXT NOT NULL);
      -- Added after schema 1 was released, without a version bump: a store
      -- without it simply has no operation in flight.
      CREATE TABLE IF NOT EXISTS operations (
        container TEXT PRIMARY KEY, kind TEXT NOT NULL, from_host TEXT NOT NULL,
        to_host TEXT NOT NULL, step TEXT NOT NULL, generation INTEGER NOT NULL,
        epoch INTEGER, detail TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL,
        subject TEXT NOT NULL, data TEXT NOT NULL);
    `);
    const version = this.db.prepare('SELECT value FROM meta WHERE key = ?').get('schema') as
      { value: string } | undefined;
    if (!version) {
      this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('schema', String(SCHEMA_VERSION));
    } else if (Number(version.value) > SCHEMA_VERSION) {
      throw new Error(
        `store ${path} has schema ${version.value}, newer than this Haven reads (${SCHEMA_VERSION})`,
      );
    }
  }

  putHost(host: HostRecord): Promise<void> {
    this.db
      .prepare(
        `INSERT INTO hosts (name, address, labels, cpu_millis, memory_bytes, cordoned, registered_at)
         VALUES (@name, @address, @labels, @cpuMillis, @memoryBytes, @cordoned, @registeredAt)
         ON CONFLICT(name) DO UPDATE SET address = excluded.address, labels = excluded.labels,
           cpu_millis = excluded.cpu_millis, memory_bytes = excluded.memory_bytes, cordoned = excluded.cordoned`,
      )
      .run({ ...host, labels: JSON.stringify(host.labels), cordoned: host.cordoned ? 1 : 0 });
    return Promise.resolve();
  }

  getHost(name: string): Promise<HostRecord | undefined> {
    const row = this.db.prepare('SELECT * FROM hosts WHERE name = ?').get(name) as HostRow | undefined;
    return Promise.resolve(row ? hostOf(row) : undefined);
  }

  listHosts(): Promise<HostRecord[]> {
    return Promise.resolve(
      (this.db.prepare('SELECT * FROM hosts ORDER BY name').all() as HostRow[]).map(hostOf),
    );
  }

  deleteHost(name: string): Promise<void> {
    this.db.prepare('DELETE FROM hosts WHERE name = ?').run(name);
    return Promise.resolve();
  }

  createContainer(intent: Omit<ContainerIntent, 'generation' | 'updatedAt'>): Promise<boolean> {
    const result = this.db
      .prepare(
        `INSERT INTO containers (name, spec, desired, host, generation, updated_at)
         VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(name) DO NOTHING`,
      )
      .run(
        intent.name,
        JSON.stringify(intent.spec),
        intent.desired,
        intent.host ?? null,
        new Date().toISOString(),
      );
    return Promise.resolve(result.changes === 1);
  }

  getContainer(name: string): Promise<ContainerIntent | undefined> {
    const row = this.db.prepare('SELECT * FROM containers WHERE name = ?').get(name) as
      ContainerRow | undefined;
    return Promise.resolve(row ? containerOf(row) : undefined);
  }

  listContainers(): Promise<ContainerIntent[]> {
    const rows = this.db.prepare('SELECT * FROM containers ORDER BY name').all() as ContainerRow[];
    return Promise.resolve(rows.map(containerOf));
  }

  updateContainer(
    name: string,
    expected: number,
    change: Partial<Pick<ContainerIntent, 'spec' | 'desired' | 'host'>>,
  ): Promise<ContainerIntent | undefined> {
    const apply = this.db.transaction(() => {
      const row = this.db.prepare('SELECT * FROM containers WHERE name = ?').get(name) as
        ContainerRow | undefined;
      if (!row || row.generation !== expected) return undefined;
      const current = containerOf(row);
      const next: ContainerIntent = {
        ...current,
        ...change,
        generation: current.generation + 1,
        updatedAt: new Date().toISOString(),
      };
      this.db
        .prepare(
          'UPDATE containers SET spec = ?, desired = ?, host = ?, generation = ?, updated_at = ? WHERE name = ?',
        )
        .run(
          JSON.stringify(next.spec),
          next.desired,
          next.host ?? null,
          next.generation,
          next.updatedAt,
          name,
        );
      return next;
    });
    return Promise.resolve(apply());
  }

  deleteContainer(name: string, expected: number): Promise<boolean> {
    const result = this.db
      .prepare('DELETE FROM containers WHERE name = ? AND generation = ?')
      .run(name, expected);
    return Promise.resolve(result.changes === 1);
  }

  putOperation(operation: Omit<OperationRecord, 'updatedAt'>): Promise<OperationRecord> {
    const stored: OperationRecord = { ...operation, updatedAt: new Date().toISOString() };
    this.db
      .prepare(
        `INSERT INTO operations (container, kind, from_host, to_host, step, generation, epoch, detail,
           started_at, updated_at)
         VALUES (@container, @kind, @from, @to, @step, @generation, @epoch, @detail, @startedAt, @updatedAt)
         ON CONFLICT(container) DO UPDATE SET kind = excluded.kind, from_host = excluded.from_host,
           to_host = excluded.to_host, step = excluded.step, generation = excluded.generation,
           epoch = excluded.epoch, detail = excluded.detail, started_at = excluded.started_at,
           updated_at = excluded.updated_at`,
      )
      .run({ ...stored, detail: JSON.stringify(stored.detail) });
    return Promise.resolve(stored);
  }

  getOperation(container: string): Promise<OperationRecord | undefined> {
    const row = this.db.prepare('SELECT * FROM operations WHERE container = ?').get(container) as
      OperationRow | undefined;
    return Promise.resolve(row ? operationOf(row) : undefined);
  }

  listOperations(): Promise<OperationRecord[]> {
    const rows = this.db.prepare('SELECT * FROM operations ORDER BY container').all() as OperationRow[];
    return Promise.resolve(rows.map(operationOf));
  }

  deleteOperation(container: string): Promise<void> {
    this.db.prepare('DELETE FROM operations WHERE container = ?').run(container);
    return Promise.resolve();
  }

  appendEvent(kind: string, subject: string, data: Record<string, unknown>): Promise<StoredEvent> {
    const at = new Date().toISOString();
    const result = this.db
      .prepare('INSERT INTO events (at, kind, subject, data) VALUES (?, ?, ?, ?)')
      .run(at, kind, subject, JSON.stringify(data));
    return Promise.resolve({ seq: Number(result.lastInsertRowid), at, kind, subject, data });
  }

  latestEventSeq(): Promise<number> {
    const row = this.db.prepare('SELECT MAX(seq) AS seq FROM events').get() as { seq: number | null };
    return Promise.resolve(row.seq ?? 0);
  }

  eventsSince(seq: number, limit: number): Promise<StoredEvent[]> {
    const rows = this.db
      .prepare('SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?')
      .all(seq, Math.max(0, Math.min(limit, 10_000))) as EventRow[];
    return Promise.resolve(rows.map((r) => ({ ...r, data: JSON.parse(r.data) as Record<string, unknown> })));
  }

  close(): Promise<void> {
    this.db.close();
    return Promise.resolve();
  }
}

function hostOf(row: HostRow): HostRecord {
  return {
    name: row.name,
    address: row.address,
    labels: JSON.parse(row.labels) as Record<string, string>,
    cpuMillis: row.cpu_millis,
    memoryBytes: row.memory_bytes,
    cordoned: row.cordoned === 1,
    registeredAt: row.registered_at,
  };
}

function containerOf(row: ContainerRow): ContainerIntent {
  return {
    name: row.name,
    spec: JSON.parse(row.spec) as Record<string, unknown>,
    desired: row.desired === 'stopped' ? 'stopped' : 'running',
    ...(row.host !== null ? { host: row.host } : {}),
    generation: row.generation,
    updatedAt: row.updated_at,
  };
}

const OPERATION_KINDS: ReadonlyArray<OperationRecord['kind']> = ['failover', 'switchover', 'migration'];

/**
 * An operation's kind as stored. Read back exactly: a migration resumed as a
 * failover (as an older reader here did) fences its source while the
 * destination still pulls pages from it.
 */
function operationKind(kind: string): OperationRecord['kind'] {
  const known = OPERATION_KINDS.find((k) => k === kind);
  if (!known) throw new Error(`unknown operation kind "${kind}" in the store`);
  return known;
}

function operationOf(row: OperationRow): OperationRecord {
  return {
    container: row.container,
    kind: operationKind(row.kind),
    from: row.from_host,
    to: row.to_host,
    step: row.step,
    generation: row.generation,
    epoch: row.epoch,
    detail: JSON.parse(row.detail) as Record<string, unknown>,
    startedAt: row.started_at,
    updatedAt: row.updated_at,
  };
}
