/**
 * The runc + CRIU implementation of {@link RuntimeDriver}: the only module
 * that spawns runc or criu.
 *
 * Every runc call names its own state root (`--root`, one per host) and the
 * CRIU binary Haven installed (`--criu`), never whatever `criu` PATH finds.
 * Calls that may involve CRIU run inside the container's network namespace
 * (`nsenter --net`, not `ip netns exec`, which remounts /sys and breaks runc),
 * so CRIU's per-connection iptables locks land where the sockets are.
 *
 * Containers are created and restored under `haven-shim`, which holds the
 * read ends of the container's stdio pipes, writes them to the log, and
 * records the exit status (see native/haven-shim.c).
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { lastLines, run } from '../../core/exec.js';
import { FailedPreconditionError, RuntimeFailedError } from '../../core/errors.js';
import type { HostConfig } from '../../core/config.js';
import type {
  CheckpointOptions,
  CheckpointResult,
  CreateRequest,
  RestoreOptions,
  RestoreResult,
  RuntimeDriver,
  RuntimeState,
  RuntimeStatus,
} from '../driver.js';
import { readDumpStats, readRestoreStats } from './criu-stats.js';

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

  async delete(id: string): Promise<void> {
    await this.runc(['delete', '--force', id]);
  }

  async pause(id: string): Promise<void> {
    await this.runc(['pause', id]);
  }

  async resume(id: string): Promise<void> {
    await this.runc(['resume', id]);
  }

  async checkpoint(id: string, options: CheckpointOptions): Promise<CheckpointResult> {
    if ((options.preDump || options.parentImageDir) && !(await this.hasDirtyTracking())) {
      throw new FailedPreconditionError(
        'this kernel does not track dirty memory (CONFIG_MEM_SOFT_DIRTY is off): pre-dump and parent images ' +
          'are unavailable; every dump here is a full dump',
      );
    }
    await mkdir(options.imageDir, { recursive: true });
    await mkdir(options.workDir, { recursive: true });
    const args = ['checkpoint', '--image-path', options.imageDir, '--work-path', options.workDir];
    if (options.leaveRunning) args.push('--leave-running');
    if (options.tcpEstablished) args.push('--tcp-established');
    if (options.parentImageDir) args.push('--parent-path', options.parentImageDir);
    if (options.preDump) args.push('--pre-dump');
    if (options.lazyPages) args.push('--lazy-pages');
    if (options.pageServer) args.push('--page-server', options.pageServer);
    args.push(id);
    const started = performance.now();
    const result = await run(['nsenter', `--net=${options.netnsPath}`, ...this.base(), ...args], {
      allowFailure: true,
    });
    const wallMs = performance.now() - started;
    if (result.code !== 0) {
      throw new RuntimeFailedError(
        `checkpoint of "${id}" failed`,
        'criu',
        await criuErrors(join(options.workDir, options.preDump ? 'pre-dump.log' : 'dump.log'), result.stderr),
      );
    }
    // CRIU writes its statistics into the work directory when one is given.
    const stats =
      readDumpStats(join(options.workDir, 'stats-dump')) ??
      readDumpStats(join(options.imageDir, 'stats-dump'));
    return { stats, wallMs };
  }

  async restore(id: string, options: RestoreOptions): Promise<RestoreResult> {
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
    return { status: await this.mustState(id), stats, wallMs };
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
