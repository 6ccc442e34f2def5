/**
 * The runc + CRIU implementation of {@link RuntimeDriver}: the only module
 * that spawns runc or criu.
 *
 * Every runc call names its own state root (`--root`, one per host) and the
 * CRIU binary Haven installed (`--criu`), never whatever `criu` PATH finds.
 * Calls that may involve CRIU run inside the container's network namespace
 * (`nsenter --net`, not `ip netns exec`, which remounts /sys and breaks runc),
 * so that the network lock and CRIU act where the sockets are.
 *
 * Containers are created and restored under `haven-shim`, which holds the
 * read ends of the container's stdio pipes, writes them to the log, and
 * records the exit status (see native/haven-shim.c).
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdir, open, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { BASH_C, lastLines, run, trace } from '../../core/exec.js';
import { FailedPreconditionError, RuntimeFailedError } from '../../core/errors.js';
import type { HostConfig } from '../../core/config.js';
import type {
  CheckpointHooks,
  CheckpointOptions,
  CheckpointResult,
  CreateRequest,
  DumpStats,
  LazyCheckpoint,
  LazyListen,
  LazyPagesDaemon,
  RestoreOptions,
  RestoreResult,
  RuntimeDriver,
  RuntimeState,
  RuntimeStatus,
} from '../driver.js';
import { readDumpStats, readRestoreStats } from './criu-images.js';
import { freezerControl, type FreezerControl } from './freezer.js';
import { lazyPagesSummary } from './lazy-pages-log.js';

/** The parts of runc's `state.json` (runc 1.1) the fast path reads. */
interface RuncStateFile {
  init_process_pid: number;
  external_descriptors?: string[];
  cgroup_paths?: Record<string, string>;
  config: {
    rootfs: string;
    mounts?: Array<{ device: string; destination: string }>;
    mask_paths?: string[];
    labels?: string[];
  };
}

interface RuncStateJson {
  id: string;
  pid: number;
  status: string;
  bundle: string;
}

/** runc + CRIU, for one host's runc root. */
export class RuncDriver implements RuntimeDriver {
  constructor(private readonly config: HostConfig) {}

  private base(): string[] {
    return [this.config.runcPath, '--root', this.config.runcRoot, '--criu', this.config.criuPath];
  }

  async create(request: CreateRequest): Promise<RuntimeStatus> {
    await this.underShim(request, [
      'create',
      '--bundle',
      request.bundle,
      '--pid-file',
      join(request.bundle, 'init.pid'),
      request.id,
    ]);
    return this.mustState(request.id);
  }

  async start(id: string): Promise<void> {
    await this.runc(['start', id]);
  }

  async state(id: string): Promise<RuntimeStatus | undefined> {
    const result = await run([...this.base(), 'state', id], { allowFailure: true });
    if (result.code !== 0) return undefined;
    return toStatus(JSON.parse(result.stdout) as RuncStateJson);
  }

  async list(): Promise<RuntimeStatus[]> {
    if (!existsSync(this.config.runcRoot)) return [];
    const { stdout } = await this.runc(['list', '--format', 'json']);
    const parsed = JSON.parse(stdout || '[]') as RuncStateJson[] | null;
    return (parsed ?? []).map(toStatus);
  }

  async kill(id: string, signal: string): Promise<void> {
    await this.runc(['kill', id, signal]);
  }

  async exec(id: string, argv: readonly string[], timeoutMs: number): Promise<number> {
    const result = await run([...this.base(), 'exec', id, ...argv], { allowFailure: true, timeoutMs }).catch(
      () => ({ code: -1 }),
    );
    return result.code;
  }

  async delete(id: string): Promise<void> {
    await rm(this.heldMarker(id), { force: true });
    // Nothing runc knows of: nothing to delete. Spares a runc process (~8 ms)
    // in every restore, which clears leftovers of an earlier life first.
    if (!existsSync(join(this.config.runcRoot, id))) return;
    await this.runc(['delete', '--force', id]);
  }

  async pause(id: string): Promise<void> {
    // Held before frozen: a checkpoint's freeze chain running now then leaves it
    // frozen at its end instead of thawing it (CRIU's own freeze would too).
    await mkdir(dirname(this.heldMarker(id)), { recursive: true });
    await writeFile(this.heldMarker(id), '');
    // Not frozen under CRIU's feet: once it has seized the tasks CRIU thaws the
    // cgroup and runs its parasite code in them; frozen then, they never run it
    // and CRIU waits for them forever (seen: a checkpoint hung, its container
    // killed under it left CRIU in wait4 for good). Meanwhile the tasks are
    // held by the dump anyway; the chain's end freezes them (see checkpoint()).
    if (!this.dumping.has(id)) await this.freezeNow(id);
  }

  /** Checkpoint chains running now, by container (see {@link pause}). */
  private readonly dumping = new Map<string, number>();

  /** Counts a chain running on `id` until `ended` settles; then a hold is applied (frozen). */
  private trackDump(id: string, ended: Promise<unknown>): void {
    this.dumping.set(id, (this.dumping.get(id) ?? 0) + 1);
    void ended
      .catch(() => undefined)
      .then(async () => {
        const left = (this.dumping.get(id) ?? 1) - 1;
        if (left > 0) this.dumping.set(id, left);
        else this.dumping.delete(id);
        // Paused on purpose while the chain ran, just as it checked for the hold
        // and thawed (or CRIU thawed it)? Frozen again: a fenced copy stays fenced.
        if (left <= 0 && existsSync(this.heldMarker(id))) await this.freezeNow(id).catch(() => undefined);
      });
  }

  async resume(id: string): Promise<void> {
    await rm(this.heldMarker(id), { force: true });
    await this.thawNow(id);
  }

  async thaw(id: string): Promise<void> {
    if (existsSync(this.heldMarker(id))) return;
    await this.thawNow(id);
  }

  /** Where a container paused on purpose is marked (see {@link FreezerFile.held}); beside runc's root. */
  private heldMarker(id: string): string {
    return join(`${this.config.runcRoot}.held`, id);
  }

  private async freezeNow(id: string): Promise<void> {
    const control = await this.freezer(id);
    if (control) control.freeze();
    else await this.runc(['pause', id]);
  }

  private async thawNow(id: string): Promise<void> {
    const control = await this.freezer(id);
    if (control) control.thaw();
    else await this.runc(['resume', id]);
  }

  /**
   * The container's freezer, found through runc's state file (its
   * `cgroup_paths`), or undefined if runc's layout is not the one we know —
   * then `runc pause`/`resume` do the job, more slowly.
   */
  private async freezer(id: string): Promise<FreezerControl | undefined> {
    try {
      const state = await this.runcState(id);
      const dir = state.cgroup_paths?.freezer ?? state.cgroup_paths?.[''];
      return dir && existsSync(dir) ? freezerControl(dir) : undefined;
    } catch {
      return undefined;
    }
  }

  async checkpoint(id: string, options: CheckpointOptions): Promise<CheckpointResult> {
    await ensureCriuRundir();
    if ((options.preDump || options.parentImageDir) && !(await this.hasDirtyTracking())) {
      throw new FailedPreconditionError(
        'this kernel does not track dirty memory (CONFIG_MEM_SOFT_DIRTY is off): pre-dump and parent images ' +
          'are unavailable; every dump here is a full dump',
      );
    }
    await mkdir(options.imageDir, { recursive: true });
    await mkdir(options.workDir, { recursive: true });
    const argv = options.viaRunc
      ? this.runcCheckpointArgv(id, options)
      : await this.criuDumpArgv(id, options);
    const freezer = options.freeze ? await this.freezerFile(id) : undefined;
    const script = checkpointChainScript(argv, options.hooks, freezer, options.keepFrozen ?? false);
    const started = performance.now();
    // The chain is started before the freeze and waits for a "go" on its
    // stdin: starting a process from a large parent costs milliseconds per
    // 100 MB of its memory (fork copies page tables), and none of that may
    // fall inside the freeze.
    const chain = spawn('nsenter', [`--net=${options.netnsPath}`, ...BASH_C, script], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: CRIU_DUMP_ENV,
    });
    let stdout = '';
    let stderr = '';
    chain.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    chain.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const closed = new Promise<number>((resolve, reject) => {
      chain.on('error', reject);
      chain.on('spawn', () => chain.stdin.end('go\n'));
      chain.on('close', (n) => resolve(n ?? 128));
    });
    this.trackDump(id, closed);
    const code = await closed;
    const wallMs = performance.now() - started;
    // Paused on purpose while the chain ran (see trackDump)? Frozen before this answers.
    if (existsSync(this.heldMarker(id))) await this.freezeNow(id);
    if (code !== 0) {
      throw new RuntimeFailedError(
        `checkpoint of "${id}" failed${code === 125 ? ' (network lock)' : code === 124 ? ' (copying files)' : code === 123 ? ' (freeze)' : ''}`,
        'criu',
        await criuErrors(join(options.workDir, options.preDump ? 'pre-dump.log' : 'dump.log'), stderr),
      );
    }
    const times = /haven-times ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)/.exec(stdout)?.slice(1).map(Number);
    const [t0 = 0, t1 = 0, t2 = 0, t3 = 0] = times ?? [];
    const freeze =
      times && freezer
        ? { freezeMs: (t1 - t0) * 1000, dumpMs: (t2 - t1) * 1000, thawMs: (t3 - t2) * 1000 }
        : undefined;
    if (times) {
      const spawnedAt = performance.timeOrigin + started;
      trace(
        `checkpoint ${id}: spawn → go ${(t0 * 1000 - spawnedAt).toFixed(1)} ms, thawed → closed ${(spawnedAt + wallMs - t3 * 1000).toFixed(1)} ms`,
        started,
      );
    }
    // CRIU writes its statistics into the work directory when one is given.
    const stats =
      readDumpStats(join(options.workDir, 'stats-dump')) ??
      readDumpStats(join(options.imageDir, 'stats-dump'));
    return { stats, wallMs, ...(freeze ? { freeze } : {}) };
  }

  /**
   * Post-copy's dump: `criu dump --lazy-pages --leave-running` in the freeze
   * chain (see {@link lazyChainScript}), its page server listening on
   * `listen` in the host's network namespace. Unlike {@link checkpoint}, the
   * chain never thaws the container once CRIU has started: with
   * `--leave-running`, CRIU lets go of the tasks when the transfer ends —
   * completed or failed — and they stay frozen in their cgroup with their
   * memory as at the freeze, which is what makes post-copy rollback-safe
   * (measured here: the destination's daemon killed mid-transfer → "Lazy
   * pages transfer FAILED", the source's memory check passed after a thaw).
   */
  async checkpointLazy(id: string, options: CheckpointOptions, listen: LazyListen): Promise<LazyCheckpoint> {
    await ensureCriuRundir();
    await mkdir(options.imageDir, { recursive: true });
    await mkdir(options.workDir, { recursive: true });
    const dump = await this.criuDumpArgv(id, { ...options, leaveRunning: true, lazyPages: true });
    const argv = [
      'nsenter',
      `--net=${listen.netnsPath}`,
      ...dump,
      '--address',
      listen.address,
      '--port',
      String(listen.port),
      // A NUL byte on stdout once the images (without lazy pages) are written.
      '--status-fd',
      '1',
    ];
    const freezer = await this.freezerFile(id);
    const script = lazyChainScript(argv, options.hooks, freezer);
    const started = performance.now();
    const chain = spawn('nsenter', [`--net=${options.netnsPath}`, ...BASH_C, script], {
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
      env: CRIU_LAZY_DUMP_ENV,
    });
    let stdout = '';
    let stderr = '';
    let settle: { resolve: (v: { frozenAt: number; readyMs: number }) => void; reject: (e: Error) => void };
    const ready = new Promise<{ frozenAt: number; readyMs: number }>((resolve, reject) => {
      settle = { resolve, reject };
    });
    let frozenAt = 0;
    let settled = false;
    let lockedSeen = false;
    chain.stdout.on('data', (b: Buffer) => {
      stdout += b.toString('latin1');
      const frozen = /haven-frozen ([\d.]+) ([\d.]+)/.exec(stdout);
      if (frozen) frozenAt = Number(frozen[1]) * 1000;
      if (!lockedSeen && stdout.includes('haven-locked ')) {
        lockedSeen = true;
        listen.onLocked?.();
      }
      if (settled) return;
      const files = /haven-files (\d+)/.exec(stdout)?.[1];
      if (files !== undefined && files !== '0') {
        settled = true;
        settle.reject(new RuntimeFailedError(`checkpoint of "${id}": copying its files failed`, 'criu', []));
      } else if (files === '0' && stdout.includes('\0')) {
        settled = true;
        const locked = Number(/haven-locked ([\d.]+)/.exec(stdout)?.[1] ?? 0) * 1000;
        trace(
          `lazy checkpoint ${id}: spawn → frozen ${(frozenAt - (Date.now() - (performance.now() - started))).toFixed(1)} ms, ` +
            `frozen → locked ${(locked - frozenAt).toFixed(1)} ms, frozen → images ${(Date.now() - frozenAt).toFixed(1)} ms`,
          started,
        );
        // From the freeze (not from the spawn: the container ran until then) to the images.
        settle.resolve({ frozenAt, readyMs: frozenAt ? Date.now() - frozenAt : performance.now() - started });
      }
    });
    chain.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const done = new Promise<{ code: number; errors: string[]; stats: DumpStats | undefined }>((resolve) => {
      chain.on('error', (error) => {
        stderr += String(error);
        resolve({ code: 128, errors: [String(error)], stats: undefined });
      });
      chain.on('spawn', () => chain.stdin.end('go\n'));
      chain.on('close', (n) => {
        const code = n ?? 128;
        void criuErrors(join(options.workDir, 'dump.log'), stderr).then((errors) => {
          if (!settled) {
            settled = true;
            settle.reject(
              new RuntimeFailedError(
                `checkpoint of "${id}" failed${code === 125 ? ' (network lock)' : code === 123 ? ' (freeze)' : ''}`,
                'criu',
                errors,
              ),
            );
          }
          resolve({
            code,
            errors: code === 0 ? [] : errors,
            stats: readDumpStats(join(options.workDir, 'stats-dump')),
          });
        });
      });
    });
    this.trackDump(id, done);
    return {
      ready,
      done,
      abort: () => {
        try {
          if (chain.pid) process.kill(-chain.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      },
    };
  }

  /**
   * Post-copy's destination: `criu lazy-pages --page-server`, which the
   * restore (`runc restore --lazy-pages` with the same work directory)
   * hands its userfaultfds to; it pulls faulting pages first and the rest
   * in the background from the source's page server. Started before the
   * restore, in the host's network namespace.
   */
  lazyPagesDaemon(options: {
    imageDir: string;
    workDir: string;
    address: string;
    port: number;
  }): LazyPagesDaemon {
    const log = join(options.workDir, 'lazy-pages.log');
    const daemon = spawn(
      this.config.criuPath,
      [
        'lazy-pages',
        '--page-server',
        '--address',
        options.address,
        '--port',
        String(options.port),
        '--images-dir',
        options.imageDir,
        '--work-dir',
        options.workDir,
        '--log-file',
        'lazy-pages.log',
        // Level 4 logs each copy ("uffd_copy: ADDR/BYTES") and each process's summary: the progress.
        '-v4',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    daemon.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    // Read as it grows: each copy into the process is a line "uffd_copy: ADDR/BYTES", and
    // "Found N pages to be handled by UFFD" gives the whole, per process.
    let offset = 0;
    let copied = 0;
    let total = 0;
    let partial = '';
    const progress = async (): Promise<[number, number] | undefined> => {
      const handle = await open(log, 'r').catch(() => undefined);
      if (!handle) return undefined;
      try {
        const { size } = await handle.stat();
        if (size > offset) {
          const buffer = Buffer.alloc(size - offset);
          await handle.read(buffer, 0, buffer.length, offset);
          offset = size;
          const lines = (partial + buffer.toString('latin1')).split('\n');
          partial = lines.pop() ?? '';
          for (const line of lines) {
            const copy = /uffd_copy: 0x[0-9a-f]+\/(\d+)/.exec(line);
            if (copy) copied += Number(copy[1]);
            const found = /Found (\d+) pages to be handled by UFFD/.exec(line);
            if (found) total += Number(found[1]);
          }
        }
      } finally {
        await handle.close();
      }
      return total > 0 ? [Math.min(total, Math.round(copied / 4096)), total] : undefined;
    };
    const finalCount = async (): Promise<[number, number] | undefined> => {
      // Each process's summary is logged when its transfer ends: read far enough back for all.
      const summary = lazyPagesSummary(await readTail(log, 4 << 20));
      return summary ? [summary.copied, summary.total] : undefined;
    };
    const exited = new Promise<{
      complete: boolean;
      code: number;
      transferred?: [number, number];
      errors: string[];
    }>((resolve) => {
      daemon.on('error', (error) => resolve({ complete: false, code: 128, errors: [String(error)] }));
      daemon.on('close', (n) => {
        void (async () => {
          const code = n ?? 128;
          const transferred = await finalCount().catch(() => undefined);
          // The exit status is the proof (see lazy-pages-log.ts): a process that exited or
          // unmapped memory meanwhile leaves the counts short, rightly.
          const complete = code === 0;
          resolve({
            complete,
            code,
            ...(transferred ? { transferred } : {}),
            errors: complete ? [] : await criuErrors(log, stderr),
          });
        })();
      });
    });
    return {
      exited,
      progress,
      kill: () => {
        daemon.kill('SIGKILL');
      },
    };
  }

  /** The file that freezes the container's cgroup: v1 `freezer.state` or v2 `cgroup.freeze`. */
  private async freezerFile(id: string): Promise<FreezerFile> {
    const state = await this.runcState(id);
    const v1 = state.cgroup_paths?.freezer;
    const held = this.heldMarker(id);
    if (v1 && existsSync(join(v1, 'freezer.state')))
      return { path: join(v1, 'freezer.state'), version: 1, held };
    const v2 = state.cgroup_paths?.[''];
    if (v2 && existsSync(join(v2, 'cgroup.freeze')))
      return { path: join(v2, 'cgroup.freeze'), version: 2, held };
    throw new RuntimeFailedError(`no freezer cgroup found for "${id}"`, 'runc', []);
  }

  /** `runc checkpoint …`: runc's own path (the baseline the fast path is measured against). */
  private runcCheckpointArgv(id: string, options: CheckpointOptions): string[] {
    const args = [
      ...this.base(),
      'checkpoint',
      '--image-path',
      options.imageDir,
      '--work-path',
      options.workDir,
    ];
    if (options.leaveRunning) args.push('--leave-running');
    if (options.tcpEstablished) args.push('--tcp-established');
    if (options.parentImageDir) args.push('--parent-path', options.parentImageDir);
    if (options.preDump) args.push('--pre-dump');
    if (options.lazyPages) args.push('--lazy-pages');
    if (options.pageServer) args.push('--page-server', options.pageServer);
    return [...args, id];
  }

  /**
   * `criu dump …` with exactly the options runc would give CRIU (so that
   * `runc restore` takes the images as its own), minus runc itself: one
   * process start instead of runc's Go start-up, swrk handshake and
   * notification round trips. See docs/CHECKPOINT-FAST-PATH.md.
   */
  private async criuDumpArgv(id: string, options: CheckpointOptions): Promise<string[]> {
    const state = await this.runcState(id);
    const pid = state.init_process_pid;
    const config = state.config;
    // What runc writes before every dump: the container's stdio, so restore can re-attach them.
    await writeFile(
      join(options.imageDir, 'descriptors.json'),
      JSON.stringify(state.external_descriptors ?? []),
    );
    const argv = [
      this.config.criuPath,
      options.preDump ? 'pre-dump' : 'dump',
      '--tree',
      String(pid),
      '--images-dir',
      options.imageDir,
      '--work-dir',
      options.workDir,
      '--log-file',
      options.preDump ? 'pre-dump.log' : 'dump.log',
      '-v4',
      '--root',
      config.rootfs,
      // runc (re)creates the container's cgroups and their limits from config.json on
      // restore, so CRIU need not walk every controller inside the freeze.
      '--manage-cgroups=ignore', // an optional argument: only the '=' form parses
      '--external',
      `net[${(await stat(options.netnsPath)).ino}]:extRootNetNS`,
    ];
    const freezer = state.cgroup_paths?.freezer ?? state.cgroup_paths?.[''];
    if (freezer) argv.push('--freeze-cgroup', freezer);
    for (const mount of config.mounts ?? []) {
      // runc marks every bind mount external, keyed by its destination; runc restore maps them back.
      if (mount.device === 'bind') argv.push('--external', `mnt[${mount.destination}]:${mount.destination}`);
    }
    for (const path of config.mask_paths ?? []) {
      // Masked files are bind mounts of /dev/null; runc passes them the same way.
      const inContainer = join(`/proc/${pid}/root`, path);
      if (existsSync(inContainer) && !(await stat(inContainer)).isDirectory()) {
        argv.push('--external', `mnt[${path}]:/dev/null`);
      }
    }
    const criuConfig = config.labels
      ?.find((l) => l.startsWith('org.criu.config='))
      ?.slice('org.criu.config='.length);
    if (criuConfig && existsSync(criuConfig)) argv.push('--config', criuConfig);
    if (options.leaveRunning) argv.push('--leave-running');
    // A connection still in the listen backlog (a client connecting just
    // then) would fail the whole dump: it is skipped, and that client's
    // handshake is reset (it retries) — CRIU's --skip-in-flight.
    if (options.tcpEstablished) argv.push('--tcp-established', '--skip-in-flight');
    if (options.parentImageDir) argv.push('--prev-images-dir', options.parentImageDir, '--track-mem');
    if (options.lazyPages) argv.push('--lazy-pages');
    if (options.pageServer) {
      const [address = '', port = ''] = options.pageServer.split(':');
      argv.push('--page-server', '--address', address, '--port', port);
    }
    return argv;
  }

  async memoryUsage(id: string): Promise<number | undefined> {
    const paths = (await this.runcState(id).catch(() => undefined))?.cgroup_paths;
    for (const file of [
      join(paths?.memory ?? '', 'memory.usage_in_bytes'),
      join(paths?.[''] ?? '', 'memory.current'),
    ]) {
      if (existsSync(file)) return Number((await readFile(file, 'utf8')).trim());
    }
    return undefined;
  }

  private async runcState(id: string): Promise<RuncStateFile> {
    try {
      return JSON.parse(
        await readFile(join(this.config.runcRoot, id, 'state.json'), 'utf8'),
      ) as RuncStateFile;
    } catch (error) {
      throw new RuntimeFailedError(`cannot read runc's state of "${id}"`, 'runc', [String(error)]);
    }
  }

  async restore(id: string, options: RestoreOptions): Promise<RestoreResult> {
    await ensureCriuRundir();
    await mkdir(options.workDir, { recursive: true });
    const args = [
      'restore',
      '--detach',
      '--image-path',
      options.imageDir,
      '--work-path',
      options.workDir,
      '--bundle',
      options.bundle,
      '--pid-file',
      join(options.bundle, 'init.pid'),
    ];
    if (options.tcpEstablished) args.push('--tcp-established');
    if (options.lazyPages) args.push('--lazy-pages');
    args.push(id);
    const started = performance.now();
    try {
      await this.underShim(options, args);
    } catch (error) {
      if (error instanceof RuntimeFailedError) {
        throw new RuntimeFailedError(
          `restore of "${id}" failed`,
          'criu',
          await criuErrors(join(options.workDir, 'restore.log'), error.details.join('\n')),
        );
      }
      throw error;
    }
    const wallMs = performance.now() - started;
    const stats =
      readRestoreStats(join(options.workDir, 'stats-restore')) ??
      readRestoreStats(join(options.imageDir, 'stats-restore'));
    // runc wrote the restored init's PID before it exited 0 (--detach): the
    // container runs. Read from there, not by `runc state` — a process start
    // (~20 ms) on every failover's and migration's critical path.
    const pid = Number((await readFile(join(options.bundle, 'init.pid'), 'utf8').catch(() => '')).trim());
    const status: RuntimeStatus =
      Number.isInteger(pid) && pid > 0
        ? { id, state: 'running', pid, bundle: options.bundle }
        : await this.mustState(id);
    return { status, stats, wallMs };
  }

  private dirtyTracking: boolean | undefined;

  /** Whether CRIU can track dirty pages here (soft-dirty); asked once per driver. */
  async hasDirtyTracking(): Promise<boolean> {
    if (this.dirtyTracking === undefined) {
      const probe = await run([this.config.criuPath, 'check', '--feature', 'mem_dirty_track'], {
        allowFailure: true,
      });
      this.dirtyTracking = probe.code === 0;
    }
    return this.dirtyTracking;
  }

  private lazyPagesAbility: boolean | undefined;

  /**
   * What a migration may use here: dirty tracking (pre-dump) and lazy pages —
   * CRIU's non-cooperative userfaultfd and a pipe size limit of at least
   * 4 MiB (root here lacks CAP_SYS_RESOURCE; with less the page server
   * fails with a splice EBADF).
   */
  async abilities(): Promise<{ dirtyTracking: boolean; lazyPages: boolean }> {
    if (this.lazyPagesAbility === undefined) {
      const probe = await run([this.config.criuPath, 'check', '--feature', 'uffd-noncoop'], {
        allowFailure: true,
      });
      const pipeMax = Number((await readFile('/proc/sys/fs/pipe-max-size', 'utf8').catch(() => '0')).trim());
      this.lazyPagesAbility = probe.code === 0 && pipeMax >= 4 * 1024 * 1024;
    }
    return { dirtyTracking: await this.hasDirtyTracking(), lazyPages: this.lazyPagesAbility };
  }

  async adopt(id: string): Promise<RuntimeStatus | undefined> {
    const status = await this.state(id);
    return status && status.state !== 'stopped' ? status : undefined;
  }

  private async mustState(id: string): Promise<RuntimeStatus> {
    const status = await this.state(id);
    if (!status)
      throw new RuntimeFailedError(`runc does not know container "${id}" after creating it`, 'runc', []);
    return status;
  }

  private async runc(args: string[]): Promise<{ stdout: string }> {
    return run([...this.base(), ...args]);
  }

  /**
   * Runs a runc command that starts container processes (create, restore)
   * under a detached haven-shim, and waits for runc itself to finish.
   */
  private async underShim(request: CreateRequest, runcArgs: string[]): Promise<void> {
    const runcLog = join(request.bundle, 'runc.log');
    await writeFile(runcLog, ''); // only this call's errors are reported
    const shimErr = openSync(join(request.bundle, 'shim.err'), 'a');
    const argv = [
      ...(request.notify ? ['--notify', request.notify.socket, request.notify.stateFile] : []),
      request.logFile,
      request.exitFile,
      '--',
      'nsenter',
      `--net=${request.netnsPath}`,
      ...this.base(),
      '--log',
      runcLog,
      '--log-format',
      'json',
      ...runcArgs,
    ];
    const shimStarted = performance.now();
    const shim = spawn(this.config.shimPath, argv, { detached: true, stdio: ['ignore', 'pipe', shimErr] });
    closeSync(shimErr);
    const stdout = shim.stdout;
    if (!stdout) throw new Error('haven-shim started without a stdout pipe');
    let out = '';
    stdout.on('data', (b: Buffer) => (out += b.toString()));
    await new Promise<void>((resolve, reject) => {
      shim.on('error', reject);
      stdout.on('close', () => resolve());
    });
    shim.unref();
    trace(`haven-shim … runc ${runcArgs[0] ?? ''}`, shimStarted);
    const match = /runc-exit (\d+)/.exec(out);
    const code = match ? Number(match[1]) : -1;
    if (code !== 0) {
      throw new RuntimeFailedError(
        `runc ${runcArgs[0] ?? ''} of "${request.id}" failed (exit ${code})`,
        'runc',
        await runcErrors(runcLog),
      );
    }
  }
}

/** Quotes one word for sh. */
function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** A cgroup freezer control file. */
export interface FreezerFile {
  path: string;
  version: 1 | 2;
  /**
   * A file that exists while the container is paused on purpose (fencing,
   * `pause`): a chain that froze it for a checkpoint does not thaw it then.
   */
  held?: string;
}

/** The shell command that thaws `freezer`'s cgroup, unless it is held (see {@link FreezerFile.held}). */
function thawCommand(freezer: FreezerFile): string {
  const f = shellQuote(freezer.path);
  const thaw = freezer.version === 1 ? `echo THAWED > ${f}` : `echo 0 > ${f}`;
  return freezer.held ? `{ [ -e ${shellQuote(freezer.held)} ] || ${thaw}; }` : thaw;
}

/**
 * The bash script a checkpoint runs in the container's network namespace:
 *
 *   read "go" ─▶ freeze cgroup (busy poll, no process starts) ─▶ hooks.before
 *   ─▶ SIGUSR1 to hooks.holderPid (it starts keeping clients' packets) ─▶
 *   hooks.alongside in the background ─▶ the dump command ─▶ hooks.after ─▶
 *   SIGUSR2 to the holder (it lets them through) ─▶ wait for alongside ─▶
 *   thaw ─▶ print "haven-times t0 t1 t2 t3"
 *
 * Exit status: the dump's; 125 if a `before` hook failed, 124 if an
 * `alongside` command failed, 123 if the cgroup would not freeze. A failure
 * always thaws (the container runs on); a success thaws unless `keepFrozen`
 * (the caller then persists the checkpoint and kills the container, or thaws
 * it if that fails). No thaw happens while `freezer.held` exists: a
 * container paused on purpose during the dump stays paused.
 * `$EPOCHREALTIME` (bash ≥ 5) stamps the phases without starting `date`.
 */
export function checkpointChainScript(
  argv: readonly string[],
  hooks: CheckpointHooks | undefined,
  freezer: FreezerFile | undefined,
  keepFrozen = false,
): string {
  const line = (cmd: readonly string[]): string => cmd.map(shellQuote).join(' ');
  const f = freezer ? shellQuote(freezer.path) : '';
  const freeze = !freezer
    ? []
    : freezer.version === 1
      ? [
          `echo FROZEN > ${f}`,
          'n=0',
          `while read -r s < ${f}; [ "$s" != FROZEN ]; do`,
          '  n=$((n+1)); [ $n -gt 500000 ] && { ' + thawCommand(freezer) + '; exit 123; }',
          `  echo FROZEN > ${f}`,
          'done',
        ]
      : [
          `echo 1 > ${f}`,
          'n=0; frozen=0',
          // Builtins only: a process start per poll would cost more than the freeze itself.
          'until [ "$frozen" = 1 ]; do',
          `  while read -r k v; do [ "$k" = frozen ] && frozen=$v; done < ${shellQuote(freezer.path.replace(/cgroup\.freeze$/, 'cgroup.events'))}`,
          '  n=$((n+1)); [ $n -gt 500000 ] && { ' + thawCommand(freezer) + '; exit 123; }',
          'done',
        ];
  const thaw = freezer ? [thawCommand(freezer)] : [];
  const after = (hooks?.after ?? []).map((cmd) => `${line(cmd)} || true`);
  const holder = hooks?.holderPid && Number.isInteger(hooks.holderPid) ? hooks.holderPid : undefined;
  return [
    'set -u',
    'read -r go',
    't0=$EPOCHREALTIME',
    ...freeze,
    't1=$EPOCHREALTIME',
    ...(hooks?.before ?? []).map(
      (cmd) => `${line(cmd)} || { ${thaw.join('; ')}${thaw.length ? '; ' : ''}exit 125; }`,
    ),
    ...(holder ? [`kill -USR1 ${holder} 2>/dev/null`] : []),
    ...(hooks?.alongside ?? []).map((cmd, i) => `${line(cmd)} & side${i}=$!`),
    `${line(argv)}; status=$?`,
    ...after,
    ...(holder ? [`kill -USR2 ${holder} 2>/dev/null`] : []),
    ...(hooks?.alongside ?? []).map((_, i) => `wait $side${i} || { [ $status -eq 0 ] && status=124; }`),
    't2=$EPOCHREALTIME',
    ...(keepFrozen ? thaw.map((t) => `[ $status -ne 0 ] && ${t}`) : thaw),
    't3=$EPOCHREALTIME',
    'echo "haven-times $t0 $t1 $t2 $t3"',
    'exit $status',
  ].join('\n');
}

/**
 * The freeze chain of a post-copy dump (see {@link RuncDriver.checkpointLazy}):
 *
 *   read "go" ─▶ freeze ─▶ "haven-frozen t0 t1" ─▶ hooks.before (a failure
 *   thaws, exit 125) ─▶ hooks.alongside and CRIU in the background ─▶ wait
 *   for alongside: "haven-files 0|1" ─▶ wait for CRIU (it ends when every
 *   page is served, or the transfer fails) ─▶ hooks.after ─▶ exit CRIU's status
 *
 * Once CRIU has started, nothing here thaws: the caller does, on rollback.
 */
export function lazyChainScript(
  argv: readonly string[],
  hooks: CheckpointHooks | undefined,
  freezer: FreezerFile,
): string {
  const full = checkpointChainScript([':'], undefined, freezer).split('\n');
  // The freeze and thaw lines of the ordinary chain, so both chains freeze alike.
  const freeze = full.slice(full.indexOf('t0=$EPOCHREALTIME') + 1, full.indexOf('t1=$EPOCHREALTIME'));
  const thaw = full.slice(full.indexOf('t2=$EPOCHREALTIME') + 1, full.indexOf('t3=$EPOCHREALTIME'));
  const line = (cmd: readonly string[]): string => cmd.map(shellQuote).join(' ');
  return [
    'set -u',
    'read -r go',
    't0=$EPOCHREALTIME',
    ...freeze,
    't1=$EPOCHREALTIME',
    'echo "haven-frozen $t0 $t1"',
    ...(hooks?.before ?? []).map((cmd) => `${line(cmd)} || { ${thaw.join('; ')}; exit 125; }`),
    'echo "haven-locked $EPOCHREALTIME"',
    ...(hooks?.alongside ?? []).map((cmd, i) => `${line(cmd)} & side${i}=$!`),
    `${line(argv)} & dump=$!`,
    'files=0',
    ...(hooks?.alongside ?? []).map((_, i) => `wait $side${i} || files=1`),
    'echo "haven-files $files"',
    'wait $dump; status=$?',
    ...(hooks?.after ?? []).map((cmd) => `${line(cmd)} || true`),
    'exit $status',
  ].join('\n');
}

/** The last `bytes` of a file ('' if it does not exist). */
async function readTail(path: string, bytes: number): Promise<string> {
  const handle = await open(path, 'r').catch(() => undefined);
  if (!handle) return '';
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, bytes);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    return buffer.toString('latin1');
  } finally {
    await handle.close();
  }
}

/**
 * The environment of CRIU's dumps. A container's network namespace is
 * Haven's own (external to CRIU) and holds no conntrack state worth
 * restoring — its only rules are the stateless lock table — so Haven's
 * CRIU build (`scripts/criu-patches/`) is told to skip the conntrack dump:
 * a walk of the whole global hash, ~9 ms here, inside every freeze. A CRIU
 * without the patch ignores the variable.
 */
const CRIU_DUMP_ENV: NodeJS.ProcessEnv = { ...process.env, CRIU_SKIP_EXTERNAL_NETNS_CONNTRACK: '1' };

/**
 * A lazy dump's environment: CRIU splices every lazy page into pipes while
 * the tasks are frozen, to serve them from there (25–35 ms of a 1 GB
 * post-copy's freeze, measured). Haven's CRIU build is told to leave them in
 * the tasks, which stay seized and stopped until the lazy transfer ends,
 * and to read each when the destination asks for it
 * (`scripts/criu-patches/criu-page-server-read-lazy-pages-later.patch`).
 */
const CRIU_LAZY_DUMP_ENV: NodeJS.ProcessEnv = { ...CRIU_DUMP_ENV, CRIU_LAZY_PAGES_READ_LATER: '1' };

/** Where Haven's CRIU build keeps its kernel-feature cache (`make RUNDIR=…` in setup). */
export const CRIU_RUNDIR = '/run/haven/criu';
const TMPFS_MAGIC = 0x01021994;
let criuRundirReady = false;

/**
 * Makes sure CRIU's kernel-feature cache can be kept: CRIU keeps it only on a
 * tmpfs, and without it re-probes the kernel on every run (~40 ms here). After
 * a reboot /run/haven/criu is gone; where /run is not a tmpfs, a 1 MB tmpfs
 * is mounted there.
 */
export async function ensureCriuRundir(): Promise<void> {
  if (criuRundirReady) return;
  await mkdir(CRIU_RUNDIR, { recursive: true, mode: 0o700 });
  if ((await statfs(CRIU_RUNDIR)).type !== TMPFS_MAGIC) {
    await run(['mount', '-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'haven-criu', CRIU_RUNDIR]);
  }
  criuRundirReady = true;
}

function toStatus(json: RuncStateJson): RuntimeStatus {
  const state: RuntimeState =
    json.status === 'running' || json.status === 'paused' || json.status === 'created'
      ? json.status
      : 'stopped';
  return { id: json.id, state, pid: state === 'stopped' ? 0 : json.pid, bundle: json.bundle };
}

/** CRIU's own error lines from its log, falling back to what runc printed. */
async function criuErrors(logPath: string, fallback: string): Promise<string[]> {
  if (existsSync(logPath)) {
    const text = await readFile(logPath, 'utf8');
    const errors = text.split('\n').filter((l) => /Error|\bErr\b|error/.test(l));
    if (errors.length > 0) return errors.slice(-8).map((l) => l.trim());
  }
  return lastLines(fallback, 8);
}

/** Error messages from runc's JSON log. */
async function runcErrors(logPath: string): Promise<string[]> {
  if (!existsSync(logPath)) return [];
  const lines = (await readFile(logPath, 'utf8')).split('\n').filter((l) => l.length > 0);
  const messages: string[] = [];
  for (const line of lines) {
    try {
      const entry = JSON.parse(line) as { level?: string; msg?: string };
      if (entry.level === 'error' || entry.level === 'fatal') messages.push(entry.msg ?? line);
    } catch {
      messages.push(line);
    }
  }
  return messages.slice(-8);
}
