/**
 * One host's containers: the local engine behind the CLI (and, later, the
 * agent). It ties together the image store, volumes, the overlay root
 * filesystem, Haven's container network and the runtime driver, and keeps a
 * record per container on the host's disk (`<state>/containers/<name>/`).
 *
 * Container lifecycle (the record's `state`; "exited" is derived when runc
 * reports the init gone):
 *
 *            run                 checkpoint               restore
 *   (none) ──────▶ running ──────────────────▶ checkpointed ──────▶ running
 *                   │  ▲  └─ checkpoint --leave-running ─┐            │
 *                   │  └─────────────────────────────────┘            │
 *                   │ stop / init exits                               │ stop
 *                   ▼                                                 ▼
 *                 stopped|exited ──────────── restore ──────────▶ running
 *                   │
 *                   └── rm ──▶ (none)
 *
 * Every operation either completes or undoes what it did: a failed run
 * leaves no namespace, mount or directory; a failed checkpoint resumes the
 * container; a failed restore leaves the checkpoint and the record as they
 * were.
 */
import { existsSync, readFileSync } from 'node:fs';
import {
  chmod,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  symlink,
  readFile,
  readlink,
  rename,
  rm,
  rmdir,
  stat,
  statfs,
  writeFile,
} from 'node:fs/promises';
import { isAbsolute, join, normalize } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { run, trace } from '../core/exec.js';
import {
  AlreadyExistsError,
  asNoSpace,
  CorruptCheckpointError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from '../core/errors.js';
import { macForIp, parseIpv4Cidr, validateName } from '../core/names.js';
import { logger } from '../core/log.js';
import type { HostConfig } from '../core/config.js';
import type {
  CheckpointResult,
  CreateRequest,
  DumpStats,
  LazyCheckpoint,
  LazyListen,
  LazyPagesDaemon,
  RestoreStats,
  RuntimeDriver,
} from '../runtime/driver.js';
import { RuncDriver } from '../runtime/runc/runc-driver.js';
import { NOTIFY_SOCKET_NAME, ociConfig } from '../runtime/runc/bundle.js';
import {
  containerNetnsName,
  createContainerNetwork,
  ensureHostNetwork,
  removeContainerNetwork,
  netnsPath,
  readEstablished,
  LOCK_COMMAND,
  prepareUnlock,
  announceAddress,
  resetNetworkLock,
  epochHolder,
  stopEpochHolder,
  startCheckpointHolder,
  type Holder,
  setContainerLink,
  UNLOCK_COMMAND,
  shortHash,
} from '../runtime/network.js';
import { ImageStore } from './images.js';
import {
  compressionFor,
  extractArchive,
  type ArchiveHeader,
  syncFile,
  verifyExtracted,
  writeArchive,
  ARCHIVE_VERSION,
  type ArchiveCompression,
  type MachineRequirements,
} from './archive.js';
import { incompatibility, localMachine } from './compat.js';
import {
  hashTree,
  MANIFEST_VERSION,
  sha256File,
  verifyCheckpoint,
  writeManifest,
  type CheckpointManifest,
} from './checkpoint-manifest.js';

/** Checkpoints kept per container unless told otherwise; older ones are deleted after a new one is complete. */
export const DEFAULT_KEEP_CHECKPOINTS = 3;

/** How long a network made ahead of a migration waits for its restore (see ContainerHost.prepareNetwork). */
export const PREMADE_NETWORK_MS = 10 * 60_000;

/** How long after a restore's unlock its lock sets are emptied (see `resetLockLater`). */
const LOCK_RESET_DELAY_MS = 100;

/** A volume mounted into a container. */
export interface VolumeMount {
  volume: string;
  path: string;
}

/**
 * The application watchdog (sd_notify's `WATCHDOG=1`): the application must
 * send a heartbeat at least every `timeoutSeconds`, the first one within
 * `initialDelaySeconds + timeoutSeconds` of a start or restore.
 */
export interface WatchdogConfig {
  timeoutSeconds: number;
  initialDelaySeconds: number;
}

/** What a user asks for with `haven run`. */
export interface RunSpec {
  name: string;
  /** A root filesystem directory, a tar archive, or an image ID. */
  image: string;
  args: string[];
  env?: string[];
  volumes?: VolumeMount[];
  /** `ADDR/PREFIX`; allocated from the host's subnet when absent. */
  ip?: string;
  memoryBytes?: number;
  watchdog?: WatchdogConfig;
}

/** Record states, as stored. */
export type RecordState = 'running' | 'checkpointed' | 'stopped';

/** Public container states (`exited`: the record says running, the process is gone). */
export type ContainerState = RecordState | 'exited' | 'paused';

/** A checkpoint as listed in the container's record. */
export interface CheckpointSummary {
  id: string;
  createdAt: string;
  leaveRunning: boolean;
}

/** The container's record on disk. Holds no absolute paths: a copy restores on another host. */
export interface ContainerRecord {
  name: string;
  host: string;
  image: string;
  args: string[];
  env: string[];
  volumes: VolumeMount[];
  ip: string;
  prefix: number;
  mac: string;
  memoryBytes?: number;
  /** Given the sd_notify socket and watched (see {@link WatchdogConfig}). */
  watchdog?: WatchdogConfig;
  state: RecordState;
  createdAt: string;
  checkpoints: CheckpointSummary[];
  /** Set when the newest checkpoint went only into an archive: a plain restore here would go back in time. */
  exported?: { file: string; checkpoint: string; at: string };
}

/** A container as `ps` and `inspect --json` show it (stable fields for scripts). */
export interface ContainerView {
  name: string;
  state: ContainerState;
  ip: string;
  host: string;
  mac: string;
  image: string;
  pid: number;
  exitCode?: number;
  exitSignal?: number;
  createdAt: string;
  volumes: VolumeMount[];
  checkpoints: CheckpointSummary[];
}

/** Result of a checkpoint, for the CLI and benchmarks. */
export interface CheckpointReport {
  id: string;
  /** Where the checkpoint is kept on this host (absent when it went only into an archive). */
  dir?: string;
  /** With `exportTo`: the archive written. */
  exported?: { file: string; bytes: number };
  stats?: DumpStats;
  /**
   * How long the container's processes were frozen, as Haven measured it
   * (from the cgroup freeze to the thaw; for a stopping checkpoint, to the end of the dump).
   */
  frozenMs: number;
  /**
   * Where the time went: freezing the cgroup; the dump chain (network lock,
   * CRIU with the file copies beside it, unlock); thawing.
   */
  phases: { freezeMs: number; dumpMs: number; thawMs: number };
  wallMs: number;
}

/** Options of {@link ContainerHost.checkpoint}. */
export interface CheckpointOptions {
  leaveRunning?: boolean;
  viaRunc?: boolean;
  /** How many checkpoints to keep, this one included (default {@link DEFAULT_KEEP_CHECKPOINTS}). */
  keep?: number;
  /**
   * Keep the local copy in the memory staging area (when it fits) instead of
   * copying it to disk: continuous protection's epochs, many a second, whose
   * local copy only serves a restore in place on this running host (the
   * backup holds the durable one). `checkpoints/<id>` then links to it.
   */
  keepInMemory?: boolean;
  /** Also write the checkpoint as a portable archive (see `archive.ts`), from the staging copy. */
  exportTo?: { file: string; compression?: string; keepLocal?: boolean };
}

/** Result of a restore. */
/** A post-copy restore: where the pages come from, and who watches the daemon that fetches them. */
export interface LazyRestore {
  from: { address: string; port: number };
  /** Called with the lazy-pages daemon once started (before the restore). */
  started(daemon: LazyPagesDaemon): void;
}

/** A post-copy dump on its source (see {@link ContainerHost.checkpointLazy}). */
export interface LazySource {
  id: string;
  /** The checkpoint without its lazy pages, with its manifest. */
  dir: string;
  manifest: CheckpointManifest;
  /** When the freeze began (milliseconds since the epoch), and how long until the images were ready. */
  frozenAt: number;
  readyMs: number;
  /** CRIU's end: every page served (code 0) or the transfer failed. */
  done: LazyCheckpoint['done'];
  /** Kills the frozen source (`complete`) or thaws it (`rollback`); idempotent. */
  end(outcome: 'complete' | 'rollback'): Promise<void>;
}

export interface RestoreReport {
  checkpoint: string;
  stats?: RestoreStats;
  wallMs: number;
  /** The restored init's PID (host namespace). */
  pid: number;
}

/** The containers of one host. */
export class ContainerHost {
  readonly images: ImageStore;

  /**
   * `options.shortLived`: this host object lives for one command (the CLI in
   * local mode), whose process exits once the work left after its answer is
   * done: that work then starts at once instead of leaving the answer's way.
   */
  constructor(
    readonly config: HostConfig,
    private readonly driver: RuntimeDriver = new RuncDriver(config),
    private readonly options: { shortLived?: boolean } = {},
  ) {
    this.images = new ImageStore(config.stateDir);
  }

  // --- paths: everything of a container lives under its directory -----------

  private dir(name: string): string {
    return join(this.config.stateDir, 'containers', name);
  }
  private volumeDir(volume: string): string {
    return join(this.config.stateDir, 'volumes', volume, 'data');
  }
  private runtimeId(name: string): string {
    // runc IDs are per runc root, which is per host; keep the user's name.
    return name;
  }
  private netns(name: string): string {
    return containerNetnsName(this.config, name);
  }

  // --- queries ----------------------------------------------------------------

  /** Reads a container's record. @throws NotFoundError */
  async record(name: string): Promise<ContainerRecord> {
    validateName(name, 'container');
    const path = join(this.dir(name), 'container.json');
    if (!existsSync(path)) throw new NotFoundError(`no such container: "${name}"`);
    return JSON.parse(await readFile(path, 'utf8')) as ContainerRecord;
  }

  private async save(record: ContainerRecord): Promise<void> {
    const path = join(this.dir(record.name), 'container.json');
    await writeFile(`${path}.tmp`, JSON.stringify(record, null, 2));
    await rename(`${path}.tmp`, path);
  }

  /** The public view of one container, its state checked against runc. */
  async inspect(name: string): Promise<ContainerView> {
    // A checkpoint under way when the runtime was asked, or begun since: its freeze is what
    // `runc state` may have seen, even if it has ended by the time the answer comes (~20 ms).
    const begunBefore = this.checkpointsBegun.get(name) ?? 0;
    const markedBefore = this.checkpointing.has(name);
    const view = await this.inspectRaw(name);
    const ownFreeze = markedBefore || (this.checkpointsBegun.get(name) ?? 0) !== begunBefore;
    if (view.state === 'paused' && ownFreeze) view.state = 'running';
    return view;
  }

  /** As {@link inspect}, but a container frozen by its own checkpoint shows as it is: paused. */
  private async inspectRaw(name: string): Promise<ContainerView> {
    const record = await this.record(name);
    const view = viewOf(record);
    if (record.state === 'running') {
      const status = await this.driver.state(this.runtimeId(name));
      if (status && status.state !== 'stopped') {
        view.pid = status.pid;
        if (status.state === 'paused') view.state = 'paused';
      } else {
        view.state = 'exited';
        const exit = readExitFile(join(this.dir(name), 'exit.json'));
        if (exit.exitCode !== undefined) view.exitCode = exit.exitCode;
        if (exit.signal !== undefined) view.exitSignal = exit.signal;
      }
    }
    return view;
  }

  /**
   * The view of a container this host has just restored, its init `pid`
   * known from the restore: no runtime call (a process start, ~20 ms, on a
   * failover's or migration's critical path).
   */
  async restoredView(name: string, pid: number): Promise<ContainerView> {
    return { ...viewOf(await this.record(name)), state: 'running', pid };
  }

  /** Every container on this host. */
  async list(): Promise<ContainerView[]> {
    return Promise.all((await this.names()).map((n) => this.inspect(n)));
  }

  /** Every container's record, without asking the runtime (no process starts). */
  private async records(): Promise<ContainerRecord[]> {
    return Promise.all((await this.names()).map((n) => this.record(n)));
  }

  private async names(): Promise<string[]> {
    const root = join(this.config.stateDir, 'containers');
    if (!existsSync(root)) return [];
    return (await readdir(root)).filter((n) => existsSync(join(root, n, 'container.json'))).sort();
  }

  /** The container's captured stdout and stderr. */
  async logs(name: string): Promise<string> {
    await this.record(name);
    const path = join(this.dir(name), 'container.log');
    return existsSync(path) ? readFile(path, 'utf8') : '';
  }

  // --- run --------------------------------------------------------------------

  /** Creates and starts a container. Nothing is left behind if any step fails. */
  async run(spec: RunSpec): Promise<ContainerView> {
    const name = validateName(spec.name, 'container');
    if (spec.args.length === 0) throw new InvalidArgumentError('a command to run is required (after --)');
    const volumes = (spec.volumes ?? []).map(validateVolumeMount);
    if (existsSync(this.dir(name))) throw new AlreadyExistsError(`container "${name}" already exists`);
    // Resolve the image before making anything: a missing image must leave nothing behind.
    const image = await this.images.resolve(spec.image);
    const { address, prefix } = spec.ip ? parseIpv4Cidr(spec.ip) : await this.allocateIp();
    await this.assertIpFree(address);

    await mkdir(join(this.config.stateDir, 'containers'), { recursive: true });
    try {
      await mkdir(this.dir(name)); // atomic: loses a race cleanly
    } catch {
      throw new AlreadyExistsError(`container "${name}" already exists`);
    }
    const record: ContainerRecord = {
      name,
      host: this.config.hostName,
      image: image.id,
      args: spec.args,
      env: spec.env ?? [],
      volumes,
      ip: address,
      prefix,
      mac: macForIp(address),
      ...(spec.memoryBytes ? { memoryBytes: spec.memoryBytes } : {}),
      ...(spec.watchdog ? { watchdog: validateWatchdog(spec.watchdog) } : {}),
      state: 'running',
      createdAt: new Date().toISOString(),
      checkpoints: [],
    };
    const undo: Array<() => Promise<unknown>> = [() => rm(this.dir(name), { recursive: true, force: true })];
    try {
      for (const v of volumes) await mkdir(this.volumeDir(v.volume), { recursive: true });
      await mkdir(join(this.dir(name), 'upper'));
      await this.mountRootfs(record);
      undo.push(() => this.unmountRootfs(name));
      await this.writeBundle(record, []);
      await createContainerNetwork(this.config, {
        netns: this.netns(name),
        address,
        prefix,
        mac: record.mac,
      });
      undo.push(() => removeContainerNetwork(this.config, this.netns(name)));
      undo.push(() => this.driver.delete(this.runtimeId(name)).catch(() => undefined));
      await this.driver.create(this.createRequest(record));
      await this.driver.start(this.runtimeId(name));
      await this.save(record);
    } catch (error) {
      for (const step of undo.reverse()) await step().catch(() => undefined);
      throw error;
    }
    return this.inspect(name);
  }

  private createRequest(record: ContainerRecord): CreateRequest {
    const name = record.name;
    const dir = this.dir(name);
    return {
      id: this.runtimeId(name),
      bundle: join(dir, 'bundle'),
      netnsPath: netnsPath(this.netns(name)),
      logFile: join(dir, 'container.log'),
      exitFile: join(dir, 'exit.json'),
      ...(record.watchdog
        ? {
            notify: {
              socket: join(dir, 'notify', NOTIFY_SOCKET_NAME),
              stateFile: this.watchdogStateFileOf(name),
            },
          }
        : {}),
    };
  }

  /** Where a watched container's shim records its heartbeats (see native/haven-shim.c). */
  watchdogStateFileOf(name: string): string {
    return join(this.dir(name), 'watchdog.state');
  }

  private async allocateIp(): Promise<{ address: string; prefix: number }> {
    const used = new Set((await this.records()).map((c) => c.ip));
    const [a = 10, b = 88] = this.config.subnet.base.split('.').map(Number);
    // .0.1 is kept free for a future gateway; x.255.* for lab clients and tools.
    for (let host = 2; host < 255 * 255; host++) {
      const address = `${a}.${b}.${Math.floor(host / 256)}.${host % 256}`;
      if (host % 256 === 0 || host % 256 === 255 || used.has(address)) continue;
      return { address, prefix: this.config.subnet.prefix };
    }
    throw new FailedPreconditionError('no free address left in the host subnet');
  }

  private async assertIpFree(address: string): Promise<void> {
    // Records, not views: asking runc about every container here would start a process per container.
    const owner = (await this.records()).find((c) => c.ip === address && c.state !== 'stopped');
    if (owner)
      throw new AlreadyExistsError(`address ${address} is already used by container "${owner.name}"`);
  }

  private async mountRootfs(record: ContainerRecord): Promise<void> {
    const dir = this.dir(record.name);
    const rootfs = join(dir, 'rootfs');
    await mkdir(rootfs, { recursive: true });
    await rm(join(dir, 'ovl-work'), { recursive: true, force: true });
    await mkdir(join(dir, 'ovl-work'));
    const lower = this.images.rootfsOf(record.image);
    if (!existsSync(lower)) throw new NotFoundError(`image ${record.image} is not in this host's store`);
    await run([
      'mount',
      '-t',
      'overlay',
      'overlay',
      '-o',
      `lowerdir=${lower},upperdir=${join(dir, 'upper')},workdir=${join(dir, 'ovl-work')}`,
      rootfs,
    ]);
  }

  private async unmountRootfs(name: string): Promise<void> {
    const rootfs = join(this.dir(name), 'rootfs');
    // Not lazy: MNT_DETACH waits for an RCU grace period (~150 ms here); a plain umount takes ~3 ms.
    if (await isMountPoint(rootfs)) await run(['umount', rootfs]);
  }

  private async writeBundle(record: ContainerRecord, criuOptions: readonly string[]): Promise<void> {
    const dir = this.dir(record.name);
    await mkdir(join(dir, 'bundle'), { recursive: true });
    await prepareDevDir(dir, this.deviceTemplateDir);
    if (record.watchdog) await mkdir(join(dir, 'notify'), { recursive: true });
    const criuConfigFile = join(dir, 'criu.conf');
    // runc (re)creates the cgroups from config.json; CRIU must neither dump them
    // (slow, inside the freeze) nor move tasks into the old host's cgroup paths.
    // Haven locks the network itself (see lockTableRuleset in network.ts):
    // CRIU's own locks cost 12-40 ms of freeze.
    const lines = ['manage-cgroups=ignore', 'network-lock skip', ...criuOptions];
    await writeFile(criuConfigFile, lines.map((o) => `${o}\n`).join(''));
    const config = ociConfig({
      rootfs: join(dir, 'rootfs'),
      args: record.args,
      env: record.env,
      hostname: record.name,
      netnsPath: netnsPath(this.netns(record.name)),
      cgroupsPath: `${this.cgroupParent()}/${record.name}`,
      ...(record.memoryBytes ? { memoryLimitBytes: record.memoryBytes } : {}),
      mounts: record.volumes.map((v) => ({ source: this.volumeDir(v.volume), destination: v.path })),
      criuConfigFile,
      dev: { devDir: join(dir, 'dev'), shmDir: join(dir, 'shm'), emptyDir: join(dir, 'empty') },
      ...(record.watchdog
        ? {
            watchdog: {
              hostDir: join(dir, 'notify'),
              timeoutUsec: Math.round(record.watchdog.timeoutSeconds * 1_000_000),
            },
          }
        : {}),
    });
    await writeFile(join(dir, 'bundle', 'config.json'), JSON.stringify(config, null, 2));
  }

  /**
   * The live directories a checkpoint copies, each with where it sits in a
   * checkpoint directory: the writable layer, /dev/shm, every volume. Read
   * while the container runs by a migration's file sync rounds
   * (`replication/fs-sync.ts`).
   */
  async liveTrees(name: string): Promise<Array<{ prefix: string; dir: string }>> {
    const record = await this.record(name);
    return [
      { prefix: 'rootfs-diff', dir: join(this.dir(name), 'upper') },
      { prefix: 'shm', dir: join(this.dir(name), 'shm') },
      ...record.volumes.map((v) => ({ prefix: `volumes/${v.volume}`, dir: this.volumeDir(v.volume) })),
    ];
  }

  // --- checkpoint ---------------------------------------------------------------

  /**
   * Checkpoints a running container: memory and processes (CRIU), its
   * writable layer and its volumes, all taken in one freeze so that they
   * agree. Without `leaveRunning` the container stops, as with Podman — but
   * only once the checkpoint is complete on disk: until then it stays frozen
   * with its network locked, and any failure (a full disk, say) thaws it and
   * leaves it running, so a failed checkpoint never loses the container.
   */
  async checkpoint(name: string, options: CheckpointOptions = {}): Promise<CheckpointReport> {
    const unmark = this.markCheckpointing(name);
    try {
      return await this.checkpointNow(name, options);
    } finally {
      unmark();
    }
  }

  /**
   * Work on a container left running after an answer went out — a
   * restore's lock reset, a stopping checkpoint's tear-down — by container.
   * The next checkpoint or restore of that container waits for it.
   */
  private readonly settling = new Map<string, Promise<void>>();
  /**
   * Tear-downs that still hold an address: a restore of *any* container
   * waits for these, since a copy being torn down may hold the address it
   * is about to take — but only until the tear-down has released it, not
   * for the rest (killing, `runc delete`, the unmount: ~60 ms that an import
   * right after an export waited for). Not for other containers' lock
   * resets: restores of several containers in a row, a failover's, must not
   * wait on each other.
   */
  private readonly holdingAddress = new Map<string, Promise<void>>();

  /**
   * Networks made ahead of a migration's freeze (see {@link prepareNetwork}),
   * by container name, each with its hold already in place.
   */
  private readonly premade = new Map<
    string,
    { ip: string; prefix: number; mac: string; holder: Holder; expiry: NodeJS.Timeout }
  >();

  /**
   * A migration's destination, before the source freezes: makes the
   * container's network namespace now — locked, its link down (the
   * container still runs on the source with the same address and MAC: see
   * `linkDown` in runtime/network.ts), and its hold bound — so that
   * the restore after the freeze neither makes it (~20 ms of process starts
   * inside the downtime) nor waits for it to announce: its first act brings
   * the link up, and from then on what the clients send is held for the
   * restored sockets instead of dropped (see {@link prepareUnlock}). A
   * restore of `name` with the same address takes it; a network left
   * unused for {@link PREMADE_NETWORK_MS} (a migration that never got to
   * its restore) is removed, as by {@link discardPremadeNetwork}.
   */
  async prepareNetwork(name: string, cidr: string): Promise<void> {
    validateName(name, 'container');
    const { address, prefix } = parseIpv4Cidr(cidr);
    await this.premakeNetwork(name, { ip: address, prefix, mac: macForIp(address) });
  }

  /** {@link prepareNetwork} for an address and MAC known already (an import's). */
  private async premakeNetwork(
    name: string,
    { ip: address, prefix, mac }: Pick<ContainerRecord, 'ip' | 'prefix' | 'mac'>,
  ): Promise<void> {
    await this.discardPremadeNetwork(name);
    if (existsSync(this.dir(name))) {
      throw new AlreadyExistsError(`container "${name}" already exists on this host`);
    }
    const netns = this.netns(name);
    await removeContainerNetwork(this.config, netns);
    await createContainerNetwork(this.config, { netns, address, prefix, mac, locked: true, linkDown: true });
    const holder = prepareUnlock(netns, address);
    const expiry = setTimeout(() => void this.discardPremadeNetwork(name), PREMADE_NETWORK_MS);
    expiry.unref();
    this.premade.set(name, { ip: address, prefix, mac, holder, expiry });
  }

  /**
   * A post-copy source has frozen and locked the container (nothing leaves
   * it any more): the network made ahead here brings its link up and
   * announces itself now, ~0.2 s before the restore would, so that from
   * the freeze on what clients send comes here and is held instead of
   * dying at the locked source (where each lost packet cost its client a
   * retransmission timer). Returns whether there was one to announce.
   */
  announcePremade(name: string): boolean {
    const made = this.premade.get(name);
    made?.holder.announce();
    return made !== undefined;
  }

  /** Removes a network {@link prepareNetwork} made, if any (a migration rolled back). */
  async discardPremadeNetwork(name: string): Promise<void> {
    const made = this.premade.get(name);
    if (!made) return;
    this.premade.delete(name);
    clearTimeout(made.expiry);
    made.holder.cancel();
    await removeContainerNetwork(this.config, this.netns(name));
  }

  /** The network made ahead for `record`, if its address matches; any other is discarded. */
  private async takePremade(record: ContainerRecord): Promise<Holder | undefined> {
    const made = this.premade.get(record.name);
    if (!made) return undefined;
    if (made.ip !== record.ip || made.prefix !== record.prefix || made.mac !== record.mac) {
      await this.discardPremadeNetwork(record.name);
      return undefined;
    }
    this.premade.delete(record.name);
    clearTimeout(made.expiry);
    return made.holder;
  }

  /**
   * Runs `work` on `name` after the answer (see {@link settling}); its
   * failure is logged. A tear-down (`teardown`) calls the `addressFree` it
   * is given once the container's address is released (at its end at the
   * latest).
   */
  private settleLater(
    name: string,
    what: string,
    work: (addressFree: () => void) => Promise<void>,
    teardown = false,
  ): void {
    let free: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (free = resolve));
    const done: Promise<void> = (this.settling.get(name) ?? Promise.resolve())
      .then(() => work(free))
      .catch((error: unknown) => logger('host').warn(`${what} of ${name} failed: ${String(error)}`))
      .finally(() => {
        free();
        if (this.settling.get(name) === done) this.settling.delete(name);
      });
    this.settling.set(name, done);
    if (teardown) {
      this.holdingAddress.set(name, released);
      void released.then(() => {
        if (this.holdingAddress.get(name) === released) this.holdingAddress.delete(name);
      });
    }
  }

  /** Waits for the work left running on `name`. */
  private async settled(name: string): Promise<void> {
    await this.settling.get(name);
  }

  /**
   * Empties `name`'s lock sets in the background: the next checkpoint's lock
   * (an addition to the same set) must not be flushed away by it, so
   * checkpoints wait for it first.
   */
  private resetLockLater(name: string): void {
    // Started a little later in a long-lived agent: a process start blocks
    // this thread for milliseconds, and the restore's answer is on its way
    // out now. A CLI's answer is printed already; its process waits for this.
    this.settleLater(name, 'the network lock reset', async () => {
      if (!this.options.shortLived) await sleep(LOCK_RESET_DELAY_MS);
      await resetNetworkLock(this.netns(name));
    });
  }

  /**
   * Containers being checkpointed now (and how many times over). Their own
   * checkpoint freezes them for milliseconds: anyone asking meanwhile (a
   * heartbeat report, say) is told `running`, not `paused` — a paused
   * container is one stopped on purpose (fencing, `pause`).
   */
  private readonly checkpointing = new Map<string, number>();
  /** Checkpoints begun per container (until it is removed): an inspection spanning a whole checkpoint sees it here. */
  private readonly checkpointsBegun = new Map<string, number>();

  /** Marks `name` as being checkpointed (see {@link checkpointing}); returns the unmarking. */
  private markCheckpointing(name: string): () => void {
    this.checkpointing.set(name, (this.checkpointing.get(name) ?? 0) + 1);
    this.checkpointsBegun.set(name, (this.checkpointsBegun.get(name) ?? 0) + 1);
    let marked = true;
    return () => {
      if (!marked) return;
      marked = false;
      const left = (this.checkpointing.get(name) ?? 1) - 1;
      if (left > 0) this.checkpointing.set(name, left);
      else this.checkpointing.delete(name);
    };
  }

  private async checkpointNow(name: string, options: CheckpointOptions): Promise<CheckpointReport> {
    await this.settled(name);
    const record = await this.record(name);
    // Raw: a container paused by fencing (or frozen by another checkpoint) is not to be dumped and thawed.
    const view = await this.inspectRaw(name);
    if (view.state !== 'running') {
      throw new FailedPreconditionError(
        `container "${name}" is ${view.state}, not running: nothing to checkpoint`,
      );
    }
    const id = `ck-${new Date()
      .toISOString()
      .replace(/[-:.TZ]/g, '')
      .slice(0, 17)}-${shortHash(String(Math.random())).slice(0, 4)}`;
    const checkpoints = join(this.dir(name), 'checkpoints');
    // Stage in memory when it fits: CRIU writes pages inside the freeze, and tmpfs
    // takes them at memory speed; the move to disk happens after the thaw.
    const inMemory = await this.memoryStagingFits(name);
    const keptInMemory = inMemory && options.keepInMemory === true && !options.exportTo;
    const staging = keptInMemory
      ? join(await this.stagingRoot(), 'kept', name, id)
      : inMemory
        ? join(await this.stagingRoot(), id)
        : join(checkpoints, `.tmp-${id}`);
    await mkdir(staging, { recursive: true });
    await mkdir(checkpoints, { recursive: true });
    const runtimeId = this.runtimeId(name);
    const stopping = !options.leaveRunning;
    // As with Podman, an exported checkpoint is not also kept here unless asked:
    // writing every byte twice (local copy and archive) doubles the time to the archive.
    const keepLocal = !options.exportTo || options.exportTo.keepLocal === true;
    const started = performance.now();
    // Informational (the network lock does not need it): connections as the checkpoint begins.
    const connections = readEstablished(view.pid);
    // Files are copied side by side with CRIU's dump, inside the freeze, in the
    // same process chain as the freeze, the network lock and the unlock.
    const trees: Array<[string, string]> = [
      [join(this.dir(name), 'upper'), join(staging, 'rootfs-diff')],
      [join(this.dir(name), 'shm'), join(staging, 'shm')],
      ...record.volumes.map((v): [string, string] => [
        this.volumeDir(v.volume),
        join(staging, 'volumes', v.volume),
      ]),
    ];
    for (const [, to] of trees) await mkdir(to, { recursive: true });
    // A container that goes on running keeps what its clients send while
    // locked: a continuous epoch through its container's long-lived holder
    // (see epochHolder), any other checkpoint through one of its own (see
    // startCheckpointHolder; the queue takes one listener, so the epochs'
    // goes first). A stopping checkpoint's lock drops: its sockets must
    // never answer again.
    const netns = this.netns(name);
    const epochHold = keptInMemory ? await epochHolder(netns) : undefined;
    if (!keptInMemory) await stopEpochHolder(netns);
    const holder = stopping || keptInMemory ? undefined : await startCheckpointHolder(netns);
    const holderPid = epochHold?.pid ?? holder?.pid;
    let result: CheckpointResult;
    try {
      result = await this.driver.checkpoint(runtimeId, {
        imageDir: join(staging, 'criu'),
        workDir: join(staging, 'work'),
        // CRIU always leaves the processes alive; a stopping checkpoint kills them itself, later.
        leaveRunning: true,
        keepFrozen: stopping,
        tcpEstablished: true,
        netnsPath: netnsPath(this.netns(name)),
        freeze: true,
        hooks: {
          before: [LOCK_COMMAND],
          alongside: trees.map(([from, to]) => copyTreeCommand(from, to)),
          // A stopping container stays locked: its sockets' closing packets must never leave.
          after: stopping ? [] : [UNLOCK_COMMAND],
          ...(holderPid ? { holderPid } : {}),
        },
        ...(options.viaRunc ? { viaRunc: true } : {}),
      });
    } catch (error) {
      holder?.cancel();
      // Whatever it holds is let through once the lock is reset; the next epoch starts another.
      if (epochHold) await stopEpochHolder(netns);
      await resetNetworkLock(this.netns(name)).catch(() => undefined);
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
    if (holder)
      void holder.end().then((held) => trace(`checkpoint ${name}: ${held ?? 'no'} packets held`, started));
    const phases = result.freeze ?? { freezeMs: 0, dumpMs: result.wallMs, thawMs: 0 };
    trace(
      `checkpoint ${name}: chain ${result.wallMs.toFixed(1)} ms, frozen ${(phases.freezeMs + phases.dumpMs + phases.thawMs).toFixed(1)} ms`,
      started,
    );
    // The slow part of the lock (deleting set elements) runs after the answer.
    if (!stopping) this.resetLockLater(name);
    let manifest: CheckpointManifest;
    try {
      // CRIU's logs stay beside the images for diagnosis, outside the verified set.
      await rename(join(staging, 'work'), join(staging, 'logs'));
      const described: Omit<CheckpointManifest, 'files'> = {
        version: MANIFEST_VERSION,
        id,
        container: name,
        createdAt: new Date().toISOString(),
        leaveRunning: options.leaveRunning ?? false,
        connections,
        origin: { host: this.config.hostName, ...(await this.thisMachine()) },
        ...(result.stats ? { stats: result.stats } : {}),
      };
      if (options.exportTo) {
        trace(`checkpoint ${name}: dumped`, started);
        // The archive is written from the staging copy and hashed as it is
        // written: the manifest comes out of that one read of the checkpoint.
        manifest = await this.writeExport(
          {
            ...record,
            checkpoints: [{ id, createdAt: described.createdAt, leaveRunning: described.leaveRunning }],
          },
          staging,
          described,
          options.exportTo.file,
          compressionFor(options.exportTo.file, options.exportTo.compression),
        );
        trace(`checkpoint ${name}: archive written`, started);
        if (stopping) {
          const file = options.exportTo.file;
          await syncFile(file).catch(async (error: unknown) => {
            await rm(file, { force: true });
            throw asNoSpace(error, 'the archive');
          });
          trace(`checkpoint ${name}: archive synced`, started);
        }
        if (keepLocal) await writeManifest(staging, manifest);
      } else {
        manifest = {
          ...described,
          // An epoch kept in memory is hashed once, by the replication that ships it, not here too.
          files: await hashTree(staging, { hash: !keptInMemory, skip: ['logs'] }),
          ...(keptInMemory ? { memoryOnly: true } : {}),
        };
        await writeManifest(staging, manifest);
      }
      try {
        if (keptInMemory) {
          await symlink(staging, join(checkpoints, id));
        } else if (keepLocal && inMemory) {
          const onDisk = join(checkpoints, `.tmp-${id}`);
          await run(['cp', '-a', staging, onDisk]);
          await rename(onDisk, join(checkpoints, id));
        } else if (keepLocal) {
          await rename(staging, join(checkpoints, id));
        }
      } finally {
        if ((inMemory && !keptInMemory) || !keepLocal) await rm(staging, { recursive: true, force: true });
      }
    } catch (error) {
      if (stopping) {
        // Not safely stored: the container goes on as if nothing happened (unless paused meanwhile).
        await resetNetworkLock(this.netns(name)).catch(() => undefined);
        await this.driver.thaw(runtimeId).catch(() => undefined);
      }
      await rm(staging, { recursive: true, force: true });
      await rm(join(checkpoints, `.tmp-${id}`), { recursive: true, force: true });
      throw error;
    }
    if (stopping) {
      // Stored (an archive is synced to disk above), so the answer can go:
      // the container is torn down after it (~0.1 s of process starts and an
      // unmount). Still frozen and locked, so no packet of its closing
      // sockets leaves; whatever comes next for it, or for its address,
      // waits for that. (If it died on its own meanwhile, there is nothing
      // left to kill: the checkpoint stands.)
      this.settleLater(
        name,
        'the tear-down after its checkpoint',
        async (addressFree) => {
          // The address first (a restore of another container waits for it):
          // with its link gone before anything is killed, nothing of the
          // closing sockets can leave either.
          await removeContainerNetwork(this.config, this.netns(name));
          addressFree();
          await this.driver.kill(runtimeId, 'SIGKILL').catch(() => undefined);
          await this.driver.resume(runtimeId).catch(() => undefined);
          await this.driver.delete(runtimeId).catch(() => undefined);
          await this.unmountRootfs(name);
        },
        true,
      );
      record.state = 'checkpointed';
    }
    if (keepLocal) {
      record.checkpoints.push({ id, createdAt: manifest.createdAt, leaveRunning: manifest.leaveRunning });
      delete record.exported;
    } else if (options.exportTo) {
      record.exported = { file: options.exportTo.file, checkpoint: id, at: manifest.createdAt };
    }
    // Keep the newest few: every checkpoint is a full copy of the container's memory.
    const keep = Math.max(1, options.keep ?? DEFAULT_KEEP_CHECKPOINTS);
    const pruned = record.checkpoints.splice(0, Math.max(0, record.checkpoints.length - keep));
    await this.save(record);
    for (const old of pruned) await removeCheckpointDir(join(checkpoints, old.id));
    return {
      id,
      ...(keepLocal ? { dir: join(checkpoints, id) } : {}),
      ...(options.exportTo
        ? { exported: { file: options.exportTo.file, bytes: (await stat(options.exportTo.file)).size } }
        : {}),
      ...(result.stats ? { stats: result.stats } : {}),
      frozenMs: phases.freezeMs + phases.dumpMs + phases.thawMs,
      phases,
      wallMs: performance.now() - started,
    };
  }

  /**
   * Releases what the host holds beyond its containers: the staging tmpfs.
   * For tools that bring a host up and down (the demo, tests); a daemon keeps it.
   */
  async unmountStaging(): Promise<void> {
    const root = join(this.config.stateDir, 'staging');
    if (await isMountPoint(root)) await run(['umount', root]);
  }

  /** A tmpfs of this host's own for staging checkpoints (mounted on first use). */
  private async stagingRoot(): Promise<string> {
    const root = join(this.config.stateDir, 'staging');
    // Checked once per process: epochs come many times a second.
    if (this.stagingMounted.has(root)) return root;
    await mkdir(root, { recursive: true });
    if (!(await isMountPoint(root))) {
      await run(['mount', '-t', 'tmpfs', '-o', 'mode=0700', 'haven-staging', root]);
    }
    this.stagingMounted.add(root);
    return root;
  }

  /**
   * Readies ahead of first use what a checkpoint or restore would otherwise
   * set up inside a freeze or a downtime: the staging tmpfs (checkpoints
   * staged in memory, post-copy scratch), the host's bridge and the device
   * nodes containers' /dev are copied from — ~10 ms of process starts each
   * (a failover's or migration's first restore on a host).
   */
  async prepare(): Promise<void> {
    await Promise.all([
      this.stagingRoot(),
      ensureHostNetwork(this.config),
      deviceTemplate(this.deviceTemplateDir),
    ]);
  }

  /** Where this host keeps the device nodes containers' /dev are copied from (see `deviceTemplate`). */
  private get deviceTemplateDir(): string {
    return join(this.config.stateDir, 'dev-template');
  }

  /** Staging roots seen mounted by this process. */
  private readonly stagingMounted = new Set<string>();

  /** Whether the container's memory, twice over for safety, fits in the staging tmpfs now. */
  private async memoryStagingFits(name: string): Promise<boolean> {
    const usage = await this.driver.memoryUsage(this.runtimeId(name));
    return usage !== undefined && this.stagingFits(usage * 2);
  }

  private async stagingFits(bytes: number): Promise<boolean> {
    const { bavail, bsize } = await statfs(await this.stagingRoot());
    return bytes < bavail * bsize;
  }

  /**
   * A fresh scratch directory for `bytes` of checkpoint: in the memory
   * staging area when it fits (a restore then reads its pages from RAM), else
   * on the state disk. The caller removes it.
   */
  async scratchDir(bytes: number): Promise<string> {
    await mkdir(this.config.stateDir, { recursive: true });
    const root = (await this.stagingFits(bytes * 2)) ? await this.stagingRoot() : this.config.stateDir;
    return mkdtemp(join(root, '.scratch-'));
  }

  private machine: Promise<MachineRequirements> | undefined;

  /**
   * This machine's CPU features, kernel and CRIU version, read once per
   * process: what checkpoints taken here need, what the agent reports at
   * registration, and what restores here are checked against (`host/compat.ts`,
   * with its `HAVEN_TEST_CPU_MASK` test knob).
   */
  thisMachine(): Promise<MachineRequirements> {
    return (this.machine ??= localMachine(this.config.criuPath, this.config.hostName));
  }

  // --- restore ----------------------------------------------------------------

  /**
   * Restores a container from its newest (or a named) checkpoint: files
   * first, then a fresh network namespace with its connections locked, then
   * CRIU. The checkpoint is verified before anything is changed.
   */
  async restore(
    name: string,
    options: { checkpoint?: string; tcpClose?: boolean } = {},
  ): Promise<RestoreReport> {
    const record = await this.record(name);
    const view = await this.inspect(name);
    if (view.state === 'running' || view.state === 'paused') {
      throw new FailedPreconditionError(`container "${name}" is already running; stop it before restoring`);
    }
    if (!options.checkpoint && record.exported) {
      throw new FailedPreconditionError(
        `the newest checkpoint of "${name}" (${record.exported.checkpoint}) is in the archive ${record.exported.file} ` +
          'and not kept here: restore it with restore --import, or name an older one with --checkpoint',
      );
    }
    const chosen = options.checkpoint ?? record.checkpoints.at(-1)?.id;
    if (!chosen) throw new NotFoundError(`container "${name}" has no checkpoint to restore`);
    if (!/^ck-[0-9a-z-]+$/.test(chosen)) throw new InvalidArgumentError(`invalid checkpoint id "${chosen}"`);
    const dir = join(this.dir(name), 'checkpoints', chosen);
    if (!existsSync(dir)) throw new NotFoundError(`container "${name}" has no checkpoint "${chosen}"`);
    const manifest = await verifyCheckpoint(dir); // before anything is touched
    // A state directory carried to another machine keeps its checkpoints: check they can run here.
    const reason = incompatibility(manifest.origin, await this.thisMachine());
    if (reason) throw new FailedPreconditionError(`cannot restore this checkpoint here: ${reason}`);
    return this.restoreFrom(record, dir, chosen, options.tcpClose ?? false);
  }

  /** Restores `record` from a verified checkpoint directory (its own, or an import's staging copy). */
  private async restoreFrom(
    record: ContainerRecord,
    dir: string,
    chosen: string,
    tcpClose: boolean,
    lazy?: LazyRestore,
    /** Settles when the images are known good (an import's hashes): the address's announcement and CRIU wait for it. */
    verified?: Promise<unknown>,
  ): Promise<RestoreReport> {
    const name = record.name;
    const options = { tcpClose };

    const started = performance.now();
    const runtimeId = this.runtimeId(name);
    // Leftovers of an earlier life, independent of each other: a stale runc
    // entry (exited container) would block the restore's ID. Work still
    // running on this container, and any tear-down until it has released
    // its address (it may be the same), ends first.
    await this.settled(name);
    await Promise.all(this.holdingAddress.values());
    trace(`restore ${name}: begun`, started);
    // A network made ahead (a migration's destination) is announced first of
    // all: its clients' packets come here from now on, to be held.
    const premade = await this.takePremade(record);
    // (An import's address is announced once its images are known good.)
    if (!verified) premade?.announce();
    await Promise.all([
      this.driver.delete(runtimeId).catch(() => undefined),
      this.unmountRootfs(name),
      premade ? undefined : removeContainerNetwork(this.config, this.netns(name)),
    ]);
    record.host = this.config.hostName;
    const undo: Array<() => Promise<unknown>> = [];
    if (premade) {
      undo.push(() => removeContainerNetwork(this.config, this.netns(name)));
      undo.push(() => Promise.resolve(premade.cancel()));
    }
    try {
      // The files and the network are made side by side (each costs tens of ms of process starts).
      const files = (async () => {
        // Files as they were at the freeze: CRIU refuses open files whose size changed.
        await replaceTree(join(dir, 'rootfs-diff'), join(this.dir(name), 'upper'));
        await replaceTree(join(dir, 'shm'), join(this.dir(name), 'shm'));
        for (const v of record.volumes) {
          await replaceTree(join(dir, 'volumes', v.volume), this.volumeDir(v.volume));
        }
        // The bundle (config, /dev) does not need the root file system mounted: both at once.
        const mounted = this.mountRootfs(record).then(() => undo.push(() => this.unmountRootfs(name)));
        const bundle = this.writeBundle(record, options.tcpClose ? ['tcp-close'] : []);
        for (const step of await Promise.allSettled([mounted, bundle])) {
          if (step.status === 'rejected') throw step.reason;
        }
      })();
      const network = (async () => {
        if (premade) return;
        await createContainerNetwork(this.config, {
          netns: this.netns(name),
          address: record.ip,
          prefix: record.prefix,
          mac: record.mac,
          locked: true, // until CRIU has recreated the sockets
        });
        undo.push(() => removeContainerNetwork(this.config, this.netns(name)));
      })();
      for (const step of await Promise.allSettled([files, network])) {
        if (step.status === 'rejected') throw step.reason;
      }
      trace(`restore ${name}: files and network ready`, started);
      if (verified) {
        await verified;
        premade?.announce();
      }
      undo.push(() => this.driver.delete(runtimeId).catch(() => undefined));
      const unlocking = premade ?? prepareUnlock(this.netns(name), record.ip);
      if (!premade) {
        undo.push(() => Promise.resolve(unlocking.cancel()));
        unlocking.announce();
      }
      const workDir = join(this.dir(name), 'restore-work');
      await rm(workDir, { recursive: true, force: true });
      await rm(join(this.dir(name), 'exit.json'), { force: true });
      if (lazy) {
        // The daemon first, in the same work directory: the restore hands it its userfaultfds there.
        if (!this.driver.lazyPagesDaemon)
          throw new FailedPreconditionError('this runtime cannot restore lazily');
        await mkdir(workDir, { recursive: true });
        const daemon = this.driver.lazyPagesDaemon({ imageDir: join(dir, 'criu'), workDir, ...lazy.from });
        undo.push(() => Promise.resolve(daemon.kill()));
        lazy.started(daemon);
      }
      const result = await this.driver.restore(runtimeId, {
        ...this.createRequest(record),
        imageDir: join(dir, 'criu'),
        workDir,
        tcpEstablished: true,
        tcpClose: options.tcpClose ?? false,
        ...(lazy ? { lazyPages: true } : {}),
      });
      // Unlocked by an addition (fast), through a process started ahead, which
      // then announces the container; the sets are emptied (an RCU grace
      // period, 15-20 ms) after the answer — a checkpoint waits for that first.
      trace(`restore ${name}: restored`, started);
      await unlocking.unlock();
      trace(`restore ${name}: unlocked`, started);
      this.resetLockLater(name);
      record.state = 'running';
      delete record.exported;
      await this.save(record);
      return {
        checkpoint: chosen,
        ...(result.stats ? { stats: result.stats } : {}),
        wallMs: performance.now() - started,
        pid: result.status.pid,
      };
    } catch (error) {
      for (const step of undo.reverse()) await step().catch(() => undefined);
      throw error;
    }
  }

  // --- portable archives ----------------------------------------------------------

  /**
   * Writes checkpoint directory `dir` of `record` as an archive and returns
   * its manifest (`described` plus the files as hashed on their way into
   * the archive).
   */
  private async writeExport(
    record: ContainerRecord,
    dir: string,
    described: Omit<CheckpointManifest, 'files'>,
    file: string,
    compression: ArchiveCompression,
  ): Promise<CheckpointManifest> {
    const imageTar = await this.images.tarOf(record.image);
    let manifest: CheckpointManifest = { ...described, files: [] };
    await writeArchive(file, { checkpointDir: dir, imageTar }, compression, (streamed) => {
      manifest = { ...described, files: streamed.files };
      return {
        manifest: JSON.stringify(manifest, null, 2),
        header: {
          format: 'haven-checkpoint-archive',
          version: ARCHIVE_VERSION,
          createdAt: new Date().toISOString(),
          checkpointId: described.id,
          container: { ...record, checkpoints: record.checkpoints.filter((c) => c.id === described.id) },
          machine: described.origin,
          imageSha256: streamed.imageSha256,
        },
      };
    });
    return manifest;
  }

  /**
   * Imports an archive as a new (checkpointed) container, `as` or its
   * original name, and restores it. Everything in the archive is checked
   * first — names, addresses, volumes, CPU compatibility, every file's hash —
   * and nothing on this host is kept unless all of it passes (the network,
   * made while the archive is extracted, is removed again).
   */
  async importArchive(
    file: string,
    options: { as?: string } = {},
  ): Promise<RestoreReport & { name: string }> {
    const started = performance.now();
    await mkdir(this.config.stateDir, { recursive: true });
    // Extract into memory when it fits: the restore then reads its pages from RAM,
    // and nothing is written to disk — the checkpoint stays in the archive.
    const { size } = await stat(file).catch(() => ({ size: Number.POSITIVE_INFINITY }));
    const stagingRoot = (await this.stagingFits(size * 2)) ? await this.stagingRoot() : this.config.stateDir;
    const staging = await mkdtemp(join(stagingRoot, '.import-'));
    let record: ContainerRecord | undefined;
    // The network, made while the archive is extracted (an uncompressed
    // one's header is read first): the name it was made for, if any.
    let networkAhead: Promise<string | undefined> = Promise.resolve(undefined);
    let imported = false;
    try {
      const { header, streamed } = await extractArchive(file, staging, {
        onHeader: (early) => {
          networkAhead = this.importNetworkAhead(early, options.as);
        },
      });
      trace(`import ${file}: extracted`, started);
      const source = validateImportedRecord(header.container);
      const name = validateName(options.as ?? source.name, 'container');
      if (existsSync(this.dir(name))) {
        throw new AlreadyExistsError(
          `container "${name}" already exists on this host; import it with --name NEW`,
        );
      }
      const reason = incompatibility(header.machine, await this.thisMachine());
      if (reason) throw new FailedPreconditionError(`cannot restore this checkpoint here: ${reason}`);
      const checkpointDir = join(staging, 'checkpoint');
      // Sizes here; the hashes as they streamed by (older archives) or now, on the extracted
      // files — while the image is imported and the restore prepares the container's files and
      // network: CRIU starts (reads a page) only once they all passed (64 MB: ~20 ms of b3sum).
      const manifest = await verifyCheckpoint(checkpointDir, { contentVerified: true });
      const imageTar = join(staging, 'image.tar');
      const verified = verifyExtracted(checkpointDir, manifest.files, streamed);
      verified.catch(() => undefined); // awaited below; an earlier failure must not leave it unhandled
      const imageSha256 = await (streamed.get('image.tar')?.sha256 ??
        (existsSync(imageTar) ? sha256File(imageTar) : Promise.resolve(undefined)));
      await this.assertFreeFor(source);
      if (imageSha256 !== header.imageSha256) {
        throw new CorruptCheckpointError(`archive "${file}": its image (image.tar) is missing or corrupted`);
      }
      // Hashed just above: not read again.
      const image = await this.images.import(imageTar, { sha256: header.imageSha256 });
      trace(`import ${file}: verified, image imported`, started);
      await mkdir(join(this.dir(name), 'upper'), { recursive: true });
      record = {
        ...source,
        name,
        host: this.config.hostName,
        image: image.id,
        state: 'checkpointed',
        checkpoints: [],
        exported: { file, checkpoint: manifest.id, at: manifest.createdAt },
      };
      await this.save(record);
      await networkAhead; // taken by the restore if it matches the record
      const report = await this.restoreFrom(record, checkpointDir, manifest.id, false, undefined, verified);
      imported = true;
      // The staging copy (the whole memory image) is freed after the answer.
      this.settleLater(name, "removing an import's staging copy", () =>
        rm(staging, { recursive: true, force: true }),
      );
      return { ...report, name, wallMs: performance.now() - started };
    } catch (error) {
      // The archive still holds everything: a failed import leaves no container behind.
      const ahead = await networkAhead;
      if (ahead) await this.discardPremadeNetwork(ahead).catch(() => undefined);
      if (record) await this.remove(record.name, { force: true }).catch(() => undefined);
      throw error;
    } finally {
      if (!imported) await rm(staging, { recursive: true, force: true });
    }
  }

  /**
   * An import's network, made ahead from the archive's header while the
   * rest is extracted (see {@link premakeNetwork}): only when the header's
   * record is valid, the name free and its address and volumes unused
   * here — the import's own checks, which refuse it otherwise, come later.
   * Returns the name it was made for, or undefined (nothing made).
   */
  private async importNetworkAhead(
    header: ArchiveHeader,
    as: string | undefined,
  ): Promise<string | undefined> {
    try {
      const source = validateImportedRecord(header.container);
      const name = validateName(as ?? source.name, 'container');
      if (existsSync(this.dir(name)) || this.premade.has(name)) return undefined;
      await this.assertFreeFor(source);
      await this.premakeNetwork(name, source);
      return name;
    } catch {
      return undefined;
    }
  }

  /** Refuses a container whose address or volumes are already in use on this host. */
  private async assertFreeFor(source: ContainerRecord): Promise<void> {
    const records = await this.records();
    const ipOwner = records.find((c) => c.ip === source.ip && c.state === 'running');
    if (ipOwner) {
      throw new AlreadyExistsError(
        `address ${source.ip} is in use by running container "${ipOwner.name}" on this host`,
      );
    }
    for (const v of source.volumes) {
      const user = records.find((c) => c.volumes.some((w) => w.volume === v.volume));
      if (user)
        throw new AlreadyExistsError(
          `volume "${v.volume}" is already used by container "${user.name}" on this host`,
        );
    }
  }

  /**
   * Takes over a container from a checkpoint made on another host (a replica
   * at failover): checks the record and the checkpoint, that its address and
   * volumes are free here and its image is in this host's store, then
   * restores it. A failure leaves no container behind; `checkpointDir` is
   * left to the caller.
   */
  async adoptCheckpoint(
    recordSource: unknown,
    checkpointDir: string,
    options: {
      tcpClose?: boolean;
      contentVerified?: boolean;
      /** Post-copy: its pages come from the source's page server (see {@link LazyRestore}). */
      lazy?: LazyRestore;
    } = {},
  ): Promise<RestoreReport & { name: string }> {
    const started = performance.now();
    const source = validateImportedRecord(recordSource);
    const name = source.name;
    if (existsSync(this.dir(name))) {
      throw new AlreadyExistsError(`container "${name}" already exists on this host`);
    }
    const manifest = await verifyCheckpoint(checkpointDir, { contentVerified: options.contentVerified });
    const reason = incompatibility(manifest.origin, await this.thisMachine());
    if (reason) throw new FailedPreconditionError(`cannot restore this checkpoint here: ${reason}`);
    await this.assertFreeFor(source);
    const image = await this.images.get(source.image);
    let record: ContainerRecord | undefined;
    try {
      await mkdir(join(this.dir(name), 'upper'), { recursive: true });
      record = {
        ...source,
        host: this.config.hostName,
        image: image.id,
        state: 'checkpointed',
        checkpoints: [],
      };
      delete record.exported;
      await this.save(record);
      const report = await this.restoreFrom(
        record,
        checkpointDir,
        manifest.id,
        options.tcpClose ?? false,
        options.lazy,
      );
      return { ...report, name, wallMs: performance.now() - started };
    } catch (error) {
      if (record) await this.remove(record.name, { force: true }).catch(() => undefined);
      throw error;
    }
  }

  // --- post-copy (lazy pages) ----------------------------------------------------

  /**
   * What a migration's `auto` weighs, from this host: the container's memory
   * now (its cgroup's count) and whether CRIU can track dirty pages and
   * serve lazy pages here.
   */
  async migrationFacts(
    name: string,
  ): Promise<{ memoryBytes: number | undefined; dirtyTracking: boolean; lazyPages: boolean }> {
    await this.record(name);
    const abilities = (await this.driver.abilities?.()) ?? { dirtyTracking: false, lazyPages: false };
    return { memoryBytes: await this.driver.memoryUsage(this.runtimeId(name)), ...abilities };
  }

  /**
   * Post-copy's source: freezes the container and dumps everything but its
   * memory pages (CRIU `--lazy-pages --leave-running`), whose page server
   * then serves them to the destination from the frozen tasks. Resolves once
   * the images and files are written (`dir`, with its manifest); the
   * container stays frozen, network locked, until {@link LazySource.end}:
   * `complete` kills it (the destination holds every page), `rollback`
   * thaws it — its state exactly as at the freeze — once the destination
   * copy is gone. Nothing on disk holds its memory: the frozen tasks are the
   * rollback copy.
   */
  async checkpointLazy(name: string, listen: LazyListen): Promise<LazySource> {
    const driver = this.driver;
    if (!driver.checkpointLazy) throw new FailedPreconditionError('this runtime cannot serve lazy pages');
    await this.settled(name);
    const record = await this.record(name);
    const view = await this.inspectRaw(name);
    if (view.state !== 'running')
      throw new FailedPreconditionError(
        `container "${name}" is ${view.state}, not running: nothing to migrate`,
      );
    const id = `ck-${new Date()
      .toISOString()
      .replace(/[-:.TZ]/g, '')
      .slice(0, 17)}-${shortHash(String(Math.random())).slice(0, 4)}`;
    // Without its pages the checkpoint is small: staged in memory.
    const staging = join(await this.stagingRoot(), id);
    const trees: Array<[string, string]> = [
      [join(this.dir(name), 'upper'), join(staging, 'rootfs-diff')],
      [join(this.dir(name), 'shm'), join(staging, 'shm')],
      ...record.volumes.map((v): [string, string] => [
        this.volumeDir(v.volume),
        join(staging, 'volumes', v.volume),
      ]),
    ];
    for (const [, to] of trees) await mkdir(to, { recursive: true });
    const connections = readEstablished(view.pid);
    const runtimeId = this.runtimeId(name);
    const netns = this.netns(name);
    // Reported running while frozen by its own migration, as during any checkpoint.
    const unmark = this.markCheckpointing(name);
    const thaw = async (): Promise<void> => {
      await resetNetworkLock(netns).catch(() => undefined);
      await driver.thaw(runtimeId).catch(() => undefined);
      // The destination may have announced itself already (at the lock): the address comes back here.
      void announceAddress(netns, record.ip);
    };
    let lazy: LazyCheckpoint | undefined;
    try {
      lazy = await driver.checkpointLazy(
        runtimeId,
        {
          imageDir: join(staging, 'criu'),
          workDir: join(staging, 'work'),
          leaveRunning: true,
          tcpEstablished: true,
          netnsPath: netnsPath(netns),
          freeze: true,
          hooks: { before: [LOCK_COMMAND], alongside: trees.map(([from, to]) => copyTreeCommand(from, to)) },
        },
        listen,
      );
      const ready = await lazy.ready;
      const manifest: CheckpointManifest = {
        version: MANIFEST_VERSION,
        id,
        container: name,
        createdAt: new Date().toISOString(),
        leaveRunning: false,
        connections,
        origin: { host: this.config.hostName, ...(await this.thisMachine()) },
        files: await hashTree(staging, { skip: ['work'] }),
      };
      await writeManifest(staging, manifest);
      const started = lazy;
      let ended: Promise<void> | undefined;
      return {
        id,
        dir: staging,
        manifest,
        frozenAt: ready.frozenAt,
        readyMs: ready.readyMs,
        done: lazy.done,
        end: (outcome) =>
          (ended ??= (async () => {
            try {
              if (outcome === 'complete') {
                // Every page is on the destination: CRIU ends by itself; a straggler is cut.
                const timer = setTimeout(() => started.abort(), 10_000);
                await started.done;
                clearTimeout(timer);
                // Still frozen and locked: no packet of its closing sockets leaves.
                await driver.kill(runtimeId, 'SIGKILL').catch(() => undefined);
                await driver.resume(runtimeId).catch(() => undefined);
                await driver.delete(runtimeId).catch(() => undefined);
                await removeContainerNetwork(this.config, netns);
                await this.unmountRootfs(name);
                const now = await this.record(name);
                now.state = 'stopped';
                await this.save(now);
              } else {
                started.abort();
                await started.done;
                await thaw();
              }
            } finally {
              unmark();
              await rm(staging, { recursive: true, force: true });
            }
          })()),
      };
    } catch (error) {
      lazy?.abort();
      await lazy?.done;
      await thaw();
      unmark();
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
  }

  // --- stop and remove -------------------------------------------------------------

  /** Stops a container: SIGTERM, then SIGKILL after `graceMs`. Its files and checkpoints stay. */
  async stop(name: string, graceMs = 10_000): Promise<ContainerView> {
    const record = await this.record(name);
    const runtimeId = this.runtimeId(name);
    const status = await this.driver.state(runtimeId);
    if (status && status.state !== 'stopped') {
      if (status.state === 'paused') await this.driver.resume(runtimeId);
      await this.driver.kill(runtimeId, 'SIGTERM').catch(() => undefined);
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline && (await this.driver.state(runtimeId))?.state === 'running')
        await sleep(50);
      if ((await this.driver.state(runtimeId))?.state === 'running') {
        await this.driver.kill(runtimeId, 'SIGKILL').catch(() => undefined);
      }
    }
    await this.release(name);
    if (record.state === 'running') record.state = 'stopped';
    await this.save(record);
    return this.inspect(name);
  }

  /** Runs a command inside a running container; its exit status, or -1 on time-out. */
  async exec(name: string, argv: readonly string[], timeoutMs: number): Promise<number> {
    await this.record(name);
    return this.driver.exec(this.runtimeId(name), argv, timeoutMs);
  }

  /** Path of a container's network namespace (for probes that connect from inside it). */
  netnsPathOf(name: string): string {
    return netnsPath(this.netns(name));
  }

  /** Freezes a running container's processes (fencing: it must not serve, but may have to resume). */
  async pause(name: string): Promise<void> {
    await this.record(name);
    await this.driver.pause(this.runtimeId(name));
  }

  /** Thaws a paused container. */
  async resume(name: string): Promise<void> {
    await this.record(name);
    await this.driver.resume(this.runtimeId(name));
  }

  /**
   * Cuts a container off its network (`down`) or reconnects it (`up`):
   * fencing, so a frozen copy cannot answer for the address its restored copy
   * holds elsewhere.
   */
  async setLink(name: string, state: 'up' | 'down'): Promise<void> {
    await this.record(name);
    await setContainerLink(this.netns(name), state);
  }

  /** Removes a container and everything of it (not its volumes). */
  async remove(name: string, options: { force?: boolean } = {}): Promise<void> {
    await this.settled(name); // a tear-down still running ends first
    const view = await this.inspect(name);
    if ((view.state === 'running' || view.state === 'paused') && !options.force) {
      throw new FailedPreconditionError(`container "${name}" is running; stop it first or use --force`);
    }
    await this.release(name);
    await rm(this.dir(name), { recursive: true, force: true });
    this.checkpointsBegun.delete(name); // a container of the same name later counts afresh
    // Epoch checkpoints kept in memory (see CheckpointOptions.keepInMemory).
    const staging = join(this.config.stateDir, 'staging');
    if (this.stagingMounted.has(staging) || (await isMountPoint(staging))) {
      await rm(join(staging, 'kept', name), { recursive: true, force: true });
    }
  }

  /** Frees the runtime entry, network namespace, mount and cgroup parents of a container. */
  private async release(name: string): Promise<void> {
    await this.driver.delete(this.runtimeId(name)).catch(() => undefined);
    await removeContainerNetwork(this.config, this.netns(name));
    await this.unmountRootfs(name);
    await pruneEmptyCgroups(this.cgroupParent());
    await rm(join(this.config.stateDir, 'staging', name), { recursive: true, force: true });
  }

  /** The cgroup directory under which this host's containers live (unique per host). */
  private cgroupParent(): string {
    return `/haven/${shortHash(this.config.hostName)}`;
  }
}

/** Checks a container record read from an archive: every field a restore uses, typed and sane. */
function validateImportedRecord(value: unknown): ContainerRecord {
  const r = value as Partial<ContainerRecord> | null;
  const strings = (x: unknown): x is string[] => Array.isArray(x) && x.every((s) => typeof s === 'string');
  if (
    !r ||
    typeof r !== 'object' ||
    typeof r.ip !== 'string' ||
    typeof r.prefix !== 'number' ||
    !strings(r.args) ||
    !strings(r.env) ||
    !Array.isArray(r.volumes)
  ) {
    throw new InvalidArgumentError("the archive's container record is malformed");
  }
  validateName(r.name, 'container');
  parseIpv4Cidr(`${r.ip}/${r.prefix}`);
  const volumes = r.volumes.map((v) => validateVolumeMount(v));
  if (r.memoryBytes !== undefined && (typeof r.memoryBytes !== 'number' || r.memoryBytes < 4 * 1024 * 1024)) {
    throw new InvalidArgumentError("the archive's memory limit is malformed");
  }
  return {
    name: r.name as string,
    host: String(r.host ?? ''),
    image: String(r.image ?? ''),
    args: r.args,
    env: r.env,
    volumes,
    ip: r.ip,
    prefix: r.prefix,
    mac: macForIp(r.ip),
    ...(r.memoryBytes ? { memoryBytes: r.memoryBytes } : {}),
    // The checkpoint holds the watchdog's mount: a restore without it would fail.
    ...(r.watchdog !== undefined ? { watchdog: validateWatchdog(r.watchdog) } : {}),
    state: 'checkpointed',
    createdAt: String(r.createdAt ?? new Date().toISOString()),
    checkpoints: [],
  };
}

/** Checks a watchdog setting (from a run request or an imported record). */
function validateWatchdog(value: unknown): WatchdogConfig {
  const w = value as Partial<WatchdogConfig> | null;
  const seconds = (x: unknown, min: number): x is number =>
    typeof x === 'number' && Number.isFinite(x) && x >= min && x <= 3600;
  if (!w || typeof w !== 'object' || !seconds(w.timeoutSeconds, 0.1) || !seconds(w.initialDelaySeconds, 0)) {
    throw new InvalidArgumentError(
      'invalid watchdog: timeoutSeconds 0.1-3600 and initialDelaySeconds 0-3600 are required',
    );
  }
  return { timeoutSeconds: w.timeoutSeconds, initialDelaySeconds: w.initialDelaySeconds };
}

function validateVolumeMount(mount: VolumeMount): VolumeMount {
  validateName(mount.volume, 'volume');
  if (!isAbsolute(mount.path) || normalize(mount.path) !== mount.path || mount.path === '/') {
    throw new InvalidArgumentError(
      `invalid volume path "${mount.path}": use an absolute, normalised path like /data`,
    );
  }
  return mount;
}

/** The device nodes runc would make in a tmpfs /dev: (name, major, minor). */
const DEVICE_NODES: ReadonlyArray<readonly [string, number, number]> = [
  ['null', 1, 3],
  ['zero', 1, 5],
  ['full', 1, 7],
  ['random', 1, 8],
  ['urandom', 1, 9],
  ['tty', 5, 0],
];

/** A container's view from its record alone: its state as recorded, no PID. */
function viewOf(record: ContainerRecord): ContainerView {
  return {
    name: record.name,
    state: record.state,
    ip: record.ip,
    host: record.host,
    mac: record.mac,
    image: record.image,
    pid: 0,
    createdAt: record.createdAt,
    volumes: record.volumes,
    checkpoints: record.checkpoints,
  };
}

/** Device-node templates made by this process, by directory (see {@link deviceTemplate}). */
const deviceTemplates = new Map<string, Promise<string>>();

/**
 * A directory holding one of each of {@link DEVICE_NODES}, made once per
 * process: a container's nodes are copied from it by one `cp` (~2 ms)
 * rather than made by a shell and a `mknod` each (~10 ms — inside every
 * restore's downtime). Copies, not links: a container that changes its
 * node's mode must not change another's.
 */
function deviceTemplate(dir: string): Promise<string> {
  let made = deviceTemplates.get(dir);
  if (!made) {
    made = (async () => {
      await mkdir(dir, { recursive: true });
      await makeDeviceNodes(dir, DEVICE_NODES);
      return dir;
    })();
    made.catch(() => deviceTemplates.delete(dir)); // tried again next time
    deviceTemplates.set(dir, made);
  }
  return made;
}

/** Makes `nodes` that are missing in `dir`: one process start for all of them (node cannot mknod). */
async function makeDeviceNodes(
  dir: string,
  nodes: ReadonlyArray<readonly [string, number, number]>,
): Promise<void> {
  const missing = nodes.filter(([node]) => !existsSync(join(dir, node)));
  if (missing.length === 0) return;
  const script = missing
    .map(([node, major, minor]) => `mknod -m 0666 '${join(dir, node)}' c ${major} ${minor}`)
    .join(' && ');
  await run(['sh', '-c', script]);
}

/**
 * Builds the host directories behind the container's /dev, /dev/shm and the
 * /sys/firmware mask (see `BundleSpec.dev`). runc makes device nodes only in
 * a tmpfs /dev, so the standard ones are made here, copied from `template`
 * (see {@link deviceTemplate}). Idempotent.
 */
async function prepareDevDir(containerDir: string, template: string): Promise<void> {
  const dev = join(containerDir, 'dev');
  for (const d of [
    dev,
    join(dev, 'pts'),
    join(dev, 'shm'),
    join(dev, 'mqueue'),
    join(containerDir, 'shm'),
    join(containerDir, 'empty'),
  ]) {
    await mkdir(d, { recursive: true });
  }
  await chmod(join(containerDir, 'shm'), 0o1777);
  const missing = DEVICE_NODES.filter(([node]) => !existsSync(join(dev, node)));
  if (missing.length > 0) {
    const from = await deviceTemplate(template);
    // -R: special files are made anew as special files (mknod, the template's numbers), never read;
    // --preserve=mode keeps 0666 whatever the umask.
    const copied = await run(
      ['cp', '-R', '--preserve=mode', '--', ...missing.map(([node]) => join(from, node)), dev],
      { allowFailure: true },
    );
    // A template damaged since (a node removed by hand): made here, as before templates.
    if (copied.code !== 0) await makeDeviceNodes(dev, missing);
  }
  const links: Array<[string, string]> = [
    ['fd', '/proc/self/fd'],
    ['stdin', '/proc/self/fd/0'],
    ['stdout', '/proc/self/fd/1'],
    ['stderr', '/proc/self/fd/2'],
    ['ptmx', 'pts/ptmx'],
    ['core', '/proc/kcore'],
  ];
  for (const [name, target] of links) {
    if (!existsSync(join(dev, name))) await symlink(target, join(dev, name)).catch(() => undefined);
  }
}

/** Parses `--volume NAME:/path`. */
export function parseVolumeFlag(text: string): VolumeMount {
  const at = text.indexOf(':');
  if (at <= 0) throw new InvalidArgumentError(`invalid volume "${text}": expected NAME:/path`);
  return validateVolumeMount({ volume: text.slice(0, at), path: text.slice(at + 1) });
}

function readExitFile(path: string): { exitCode?: number; signal?: number } {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as { exitCode?: number; signal?: number };
  } catch {
    return {};
  }
}

/**
 * Removes the host's cgroup parent directories once empty (runc removes each
 * container's own cgroup, not the parents it created). rmdir fails harmlessly
 * while any container still lives there.
 */
async function pruneEmptyCgroups(parent: string): Promise<void> {
  const controllers = existsSync('/sys/fs/cgroup') ? await readdir('/sys/fs/cgroup') : [];
  for (const controller of ['', ...controllers]) {
    const base = join('/sys/fs/cgroup', controller);
    for (const dir of [join(base, parent), join(base, '/haven')]) {
      if (existsSync(dir)) await rmdir(dir).catch(() => undefined);
    }
  }
}

async function isMountPoint(path: string): Promise<boolean> {
  if (!existsSync(path)) return false;
  const { code } = await run(['mountpoint', '-q', path], { allowFailure: true });
  return code === 0;
}

/** The command that copies a tree with owners, modes, times, xattrs, whiteouts and sparse files kept. */
function copyTreeCommand(from: string, to: string): string[] {
  return ['cp', '-a', '--reflink=auto', `${from}/.`, `${to}/`];
}

/** Copies a directory tree (see {@link copyTreeCommand}); an empty tree costs no process start. */
async function copyTree(from: string, to: string): Promise<void> {
  await mkdir(to, { recursive: true });
  if (existsSync(from) && (await readdir(from)).length > 0) await run(copyTreeCommand(from, to));
}

/** Makes `to` an exact copy of `from` (files not in `from` are removed). */
async function replaceTree(from: string, to: string): Promise<void> {
  const fresh = `${to}.restore-${process.pid}`;
  await rm(fresh, { recursive: true, force: true });
  await copyTree(from, fresh);
  await rm(to, { recursive: true, force: true });
  await rename(fresh, to);
}

/** Removes a checkpoint directory, or the link to one kept in memory and what it links to. */
async function removeCheckpointDir(path: string): Promise<void> {
  const info = await lstat(path).catch(() => undefined);
  if (info?.isSymbolicLink()) await rm(await readlink(path), { recursive: true, force: true });
  await rm(path, { recursive: true, force: true });
}
