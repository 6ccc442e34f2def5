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
import { CorruptCheckpointError, HavenError, NotFoundError } from '../core/errors.js';
import type { ContainerHost, ContainerView } from '../host/container-host.js';
import { assembleDirectory, type EpochManifest } from '../replication/chunks.js';
import { ReplicaStore } from '../replication/replica-store.js';
import { Replicator, type ProtectionSpec, type ProtectionStatus } from '../replication/replicator.js';

/** What a promotion did. */
export interface PromotionReport {
  view: ContainerView;
  epoch: number;
  /** When that epoch's checkpoint began: what a client had acknowledged before it is restored. */
  takenAt: string;
  /** Newer epochs that could not be used, and why. */
  skipped: Array<{ epoch: number; error: string }>;
  /** Milliseconds: assembling the epoch from chunks, the restore, and the whole. */
  assembleMs: number;
  restoreMs: number;
  totalMs: number;
}

/** Protection on one host. */
export class Protection {
  readonly replicas: ReplicaStore;
  private readonly replicators = new Map<string, Replicator>();

  constructor(
    private readonly host: ContainerHost,
    private readonly token: string,
    private readonly log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
  ) {
    this.replicas = new ReplicaStore(join(host.config.stateDir, 'replicas'));
  }

  private get specDir(): string {
    return join(this.host.config.stateDir, 'protection');
  }

  /** Resumes protection of every container that had it (after an agent restart). */
  async resume(): Promise<void> {
    if (!existsSync(this.specDir)) return;
    for (const file of await readdir(this.specDir)) {
      if (!file.endsWith('.json')) continue;
      const name = file.slice(0, -5);
      const spec = JSON.parse(await readFile(join(this.specDir, file), 'utf8')) as ProtectionSpec;
      this.startReplicator(name, spec);
    }
  }

  /** Protects `name` to `spec.backup` (replacing any previous spec), or stops protecting it (`null`). */
  async protect(name: string, spec: ProtectionSpec | null): Promise<void> {
    await this.replicators.get(name)?.stop();
    this.replicators.delete(name);
    if (!spec) {
      await rm(join(this.specDir, `${name}.json`), { force: true });
      return;
    }
    await this.host.inspect(name); // it must exist here
    await mkdir(this.specDir, { recursive: true });
    await writeFile(join(this.specDir, `${name}.json`), JSON.stringify(spec));
    this.startReplicator(name, spec);
  }

  private startReplicator(name: string, spec: ProtectionSpec): void {
    const replicator = new Replicator(this.host, name, spec, this.token, this.log);
    this.replicators.set(name, replicator);
    replicator.start();
  }

  /** Status of every container this host protects as primary. */
  statuses(): ProtectionStatus[] {
    return [...this.replicators.values()].map((r) => ({ ...r.status }));
  }

  /** Stops every replicator (agent shutdown; protection resumes on restart). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.replicators.values()].map((r) => r.stop()));
  }

  /**
   * Failover on the backup: restores `name` from the newest committed epoch
   * that is intact, newest first. A damaged epoch (a chunk that no longer
   * matches its hash, a bad manifest) is skipped and reported; the next one
   * is tried. Established TCP connections are closed on restore by default:
   * their sequence numbers are older than what clients have seen.
   */
  async promote(name: string, options: { tcpClose?: boolean } = {}): Promise<PromotionReport> {
    const started = performance.now();
    const epochs = await this.replicas.epochs(name);
    if (epochs.length === 0) throw new NotFoundError(`this host holds no committed epoch of "${name}"`);
    const skipped: PromotionReport['skipped'] = [];
    for (const epoch of epochs) {
      let manifest: EpochManifest;
      try {
        manifest = await this.replicas.manifest(name, epoch);
      } catch (error) {
        skipped.push({ epoch, error: (error as Error).message });
        continue;
      }
      const bytes = manifest.files.reduce((s, f) => s + f.size, 0);
      const scratch = await this.host.scratchDir(bytes);
      try {
        const assembleStarted = performance.now();
        const dir = join(scratch, manifest.checkpointId);
        await assembleDirectory(manifest, this.replicas.chunks, dir);
        const assembleMs = performance.now() - assembleStarted;
        const restoreStarted = performance.now();
        await this.host.adoptCheckpoint(manifest.record, dir, { tcpClose: options.tcpClose ?? true });
        const restoreMs = performance.now() - restoreStarted;
        // It is a primary now: the replica it came from is spent.
        await this.replicas.drop(name);
        return {
          view: await this.host.inspect(name),
          epoch,
          takenAt: manifest.takenAt,
          skipped,
          assembleMs,
          restoreMs,
          totalMs: performance.now() - started,
        };
      } catch (error) {
        if (!(error instanceof CorruptCheckpointError)) throw error;
        this.log(`promote ${name}: epoch ${epoch} is damaged (${error.message}); trying an older one`);
        skipped.push({ epoch, error: error.message });
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    }
    throw new HavenError(
      `no intact epoch of "${name}" here: ${skipped.map((s) => `${s.epoch}: ${s.error}`).join('; ')}`,
      'corrupt_checkpoint',
    );
  }
}
