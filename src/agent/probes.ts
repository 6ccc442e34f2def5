/**
 * Application monitoring on the agent, in Kubernetes' probe vocabulary: an
 * `exec` command run inside the container, a `tcpSocket` connect or an
 * `httpGet` made from inside the container's network namespace, every
 * `periodSeconds`, each given `timeoutSeconds`, after `initialDelaySeconds`;
 * `failureThreshold` failures in a row make the container `unhealthy`, which
 * the agent reports and the controller acts on (as on an exit).
 *
 * An exec probe catches what a port check cannot: a process stopped with
 * SIGSTOP still has its listening socket accept connections in the kernel,
 * but it answers nothing.
 *
 * The application watchdog goes further, as systemd's `WatchdogSec` and
 * VMware's application monitoring do: the application itself sends
 * `WATCHDOG=1` (sd_notify) to the socket named by `NOTIFY_SOCKET`, at least
 * every `WATCHDOG_USEC`; a main loop that hangs stops the heartbeats even
 * while every port still accepts. The container's shim owns the socket and
 * records each heartbeat's time (native/haven-shim.c); the Prober reads that
 * record and reports `unhealthy` once a heartbeat is overdue, like a failed
 * probe:
 *
 *   start/restore ──first WATCHDOG=1──▶ healthy ◀──WATCHDOG=1──┐
 *        │ starting                        │                    │
 *        │ none within delay + timeout     │ none within timeout│
 *        ▼                                 ▼                    │
 *    unhealthy ◀───────────────────────────┘ ───────────────────┘
 *
 * Time spent frozen (a checkpoint, fencing) is not held against it: once
 * seen paused, the application gets a full timeout after the thaw.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { setTimeout as sleep } from 'node:timers/promises';
import { BASH_C, run } from '../core/exec.js';
import type { ContainerHost, WatchdogConfig } from '../host/container-host.js';
import { probeChecked } from './metrics.js';

/** A probe, as given to `haven run` and stored with the container. */
export const probeSpecSchema = z
  .object({
    exec: z
      .object({ command: z.array(z.string().max(4096)).min(1).max(64) })
      .strict()
      .optional(),
    tcpSocket: z
      .object({ port: z.number().int().min(1).max(65535) })
      .strict()
      .optional(),
    httpGet: z
      .object({
        port: z.number().int().min(1).max(65535),
        path: z
          .string()
          .max(1024)
          .regex(/^\/[\x21-\x7e]*$/, 'an absolute path without spaces'),
      })
      .strict()
      .optional(),
    periodSeconds: z.number().min(0.1).max(3600).default(1),
    timeoutSeconds: z.number().min(0.1).max(60).default(1),
    failureThreshold: z.number().int().min(1).max(100).default(3),
    initialDelaySeconds: z.number().min(0).max(3600).default(0),
  })
  .strict()
  .refine(
    (p) => [p.exec, p.tcpSocket, p.httpGet].filter(Boolean).length === 1,
    'exactly one of exec, tcpSocket, httpGet',
  );

export type ProbeSpec = z.infer<typeof probeSpecSchema>;

/** Health of a probed container. */
export interface ProbeStatus {
  name: string;
  health: 'starting' | 'healthy' | 'unhealthy';
  failures: number;
  lastError: string | null;
}

/** One heartbeat record written by haven-shim: times in CLOCK_MONOTONIC nanoseconds. */
export interface WatchdogState {
  /** When the shim (the container's start or restore) began. */
  startNs: bigint;
  /** The newest WATCHDOG=1 or READY=1; 0 before the first. */
  lastNs: bigint;
  heartbeats: number;
  /** WATCHDOG=trigger messages: the application asks to be treated as failed. */
  triggers: number;
}

/** Parses a shim's heartbeat record (`v1 START LAST COUNT TRIGGERS`); undefined if malformed. */
export function parseWatchdogState(text: string): WatchdogState | undefined {
  const match = /^v1 (\d{1,20}) (\d{1,20}) (\d{1,15}) (\d{1,15})\n?$/.exec(text);
  if (!match) return undefined;
  return {
    startNs: BigInt(match[1]!),
    lastNs: BigInt(match[2]!),
    heartbeats: Number(match[3]),
    triggers: Number(match[4]),
  };
}

/**
 * The watchdog's verdict at `nowNs` (CLOCK_MONOTONIC): null while the
 * heartbeat is on time, else why not. `notBeforeNs` is when the container was
 * last seen frozen: the timeout runs from there at the earliest.
 */
export function watchdogVerdict(
  state: WatchdogState,
  spec: WatchdogConfig,
  nowNs: bigint,
  notBeforeNs = 0n,
): { health: 'starting' | 'healthy'; error: null } | { health: 'unhealthy'; error: string } {
  if (state.triggers > 0) return { health: 'unhealthy', error: 'the application sent WATCHDOG=trigger' };
  const timeoutNs = BigInt(Math.round(spec.timeoutSeconds * 1e9));
  const first = state.heartbeats === 0;
  const since = first ? state.startNs + BigInt(Math.round(spec.initialDelaySeconds * 1e9)) : state.lastNs;
  const from = since > notBeforeNs ? since : notBeforeNs;
  const overdueNs = nowNs - from - timeoutNs;
  if (overdueNs <= 0n) return { health: first ? 'starting' : 'healthy', error: null };
  const silentMs = Number((nowNs - (first ? state.startNs : state.lastNs)) / 1_000_000n);
  return {
    health: 'unhealthy',
    error: first
      ? `no WATCHDOG=1 within ${silentMs} ms of the start (delay ${spec.initialDelaySeconds} s + timeout ${spec.timeoutSeconds} s)`
      : `no WATCHDOG=1 for ${silentMs} ms (timeout ${spec.timeoutSeconds} s)`,
  };
}

/** How often the agent reads a watched container's heartbeat record: a quarter of the timeout, 50 ms to 1 s. */
export function watchdogCheckMs(spec: WatchdogConfig): number {
  return Math.min(1000, Math.max(50, Math.round((spec.timeoutSeconds * 1000) / 4)));
}

interface Watch {
  spec: WatchdogConfig;
  status: ProbeStatus;
  timer?: NodeJS.Timeout;
  /** When the container was last seen frozen (CLOCK_MONOTONIC ns). */
  notBeforeNs: bigint;
}

/** Which of the three a probe is (the schema admits exactly one). */
function probeKind(spec: ProbeSpec): 'exec' | 'tcpSocket' | 'httpGet' {
  return spec.exec ? 'exec' : spec.tcpSocket ? 'tcpSocket' : 'httpGet';
}

/** Runs the probes and application watchdogs of this host's containers. */
export class Prober {
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly status = new Map<string, ProbeStatus>();
  private readonly specs = new Map<string, ProbeSpec>();
  private readonly watches = new Map<string, Watch>();

  constructor(
    private readonly host: ContainerHost,
    private readonly log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
  ) {}

  private get dir(): string {
    return join(this.host.config.stateDir, 'probes');
  }

  /** Starts the probes kept on disk and the watchdogs of the containers that have one (after an agent restart). */
  async resume(): Promise<void> {
    for (const view of await this.host.list()) await this.watch(view.name);
    if (!existsSync(this.dir)) return;
    for (const file of await readdir(this.dir)) {
      if (!file.endsWith('.json')) continue;
      const spec = probeSpecSchema.safeParse(JSON.parse(await readFile(join(this.dir, file), 'utf8')));
      if (spec.success) this.start(file.slice(0, -5), spec.data, 0);
    }
  }

  /**
   * Watches a container's heartbeats if its record asks for a watchdog (and
   * stops watching it otherwise). Called after the agent runs, restores or
   * takes over a container: the record, not the caller, says what to watch,
   * so a container failed over to this host is watched as it was before.
   */
  async watch(name: string): Promise<void> {
    this.unwatch(name);
    const record = await this.host.record(name).catch(() => undefined);
    if (!record?.watchdog) return;
    const watch: Watch = {
      spec: record.watchdog,
      status: { name, health: 'starting', failures: 0, lastError: null },
      notBeforeNs: 0n,
    };
    this.watches.set(name, watch);
    const tick = async (): Promise<void> => {
      await this.checkWatch(name, watch).catch(() => undefined);
      if (this.watches.get(name) !== watch) return; // replaced or removed meanwhile
      watch.timer = setTimeout(() => void tick(), watchdogCheckMs(watch.spec));
    };
    await tick();
  }

  /** Stops watching a container's heartbeats. */
  unwatch(name: string): void {
    const watch = this.watches.get(name);
    if (watch?.timer) clearTimeout(watch.timer);
    this.watches.delete(name);
  }

  /** Forgets everything about a container (it is being removed): its probe, kept on disk, and its watchdog. */
  async forget(name: string): Promise<void> {
    this.unwatch(name);
    await this.set(name, null);
  }

  /** Reads the shim's heartbeat record and updates the watch's status. */
  private async checkWatch(name: string, watch: Watch): Promise<void> {
    const text = await readFile(this.host.watchdogStateFileOf(name), 'utf8').catch(() => '');
    const state = parseWatchdogState(text);
    const verdict = state
      ? watchdogVerdict(state, watch.spec, process.hrtime.bigint(), watch.notBeforeNs)
      : ({ health: 'unhealthy', error: 'no heartbeat record from the shim' } as const);
    const status = watch.status;
    if (verdict.error === null) {
      status.health = verdict.health;
      status.failures = 0;
      status.lastError = null;
      return;
    }
    // Overdue: only now ask the runtime (a process per call) why.
    const view = await this.host.inspect(name).catch(() => undefined);
    if (view?.state === 'paused') {
      // Frozen (a checkpoint, fencing): it cannot send; it gets a full timeout after the thaw.
      watch.notBeforeNs = process.hrtime.bigint();
      return;
    }
    if (this.watches.get(name) !== watch) return;
    const error = view && view.state !== 'running' ? `container is ${view.state}` : verdict.error;
    status.failures++;
    status.lastError = error;
    if (status.health !== 'unhealthy') {
      status.health = 'unhealthy';
      this.log(`watchdog: ${name} is unhealthy (${error})`);
    }
  }

  /**
   * Starts a container's probe and watchdog over, as for a fresh start (after
   * it was restored in place: the failures of the copy that died are not the
   * new copy's).
   */
  async restart(name: string): Promise<void> {
    const spec = this.specs.get(name);
    if (spec) {
      this.stopOne(name);
      this.start(name, spec, spec.initialDelaySeconds * 1000);
    }
    await this.watch(name);
  }

  /** Sets (or, with null, removes) a container's probe. */
  async set(name: string, spec: ProbeSpec | null): Promise<void> {
    this.stopOne(name);
    if (!spec) {
      await rm(join(this.dir, `${name}.json`), { force: true });
      return;
    }
    await this.host.inspect(name);
    await mkdir(this.dir, { recursive: true });
    await writeFile(join(this.dir, `${name}.json`), JSON.stringify(spec));
    this.start(name, spec, spec.initialDelaySeconds * 1000);
  }

  /**
   * Runs a container's probe now: true if it passes or the container has no
   * probe. Replication asks before each epoch, so an application that has
   * hung is never saved as the state to fail over to.
   */
  async passesNow(name: string): Promise<boolean> {
    const watch = this.watches.get(name);
    if (watch) {
      await this.checkWatch(name, watch).catch(() => undefined);
      if (watch.status.health === 'unhealthy') return false;
    }
    const spec = this.specs.get(name);
    if (!spec) return true;
    const limit = spec.timeoutSeconds * 1000 + 1000;
    const error = await Promise.race([
      this.check(name, spec).catch(() => 'error'),
      sleep(limit).then(() => 'timeout'),
    ]);
    probeChecked(probeKind(spec), error === null);
    return error === null;
  }

  /** Health of every probed or watched container: the worse of its probe's and its watchdog's. */
  statuses(): ProbeStatus[] {
    const rank = { healthy: 0, starting: 1, unhealthy: 2 } as const;
    const merged = new Map<string, ProbeStatus>();
    for (const s of [...this.status.values(), ...[...this.watches.values()].map((w) => w.status)]) {
      const seen = merged.get(s.name);
      if (!seen || rank[s.health] > rank[seen.health]) merged.set(s.name, { ...s });
    }
    return [...merged.values()];
  }

  /** The last verdict on `name` (probe and watchdog merged), without checking again; undefined if it has neither. */
  healthOf(name: string): ProbeStatus['health'] | undefined {
    return this.statuses().find((s) => s.name === name)?.health;
  }

  /** Stops every probe and watchdog. */
  stopAll(): void {
    for (const name of [...this.timers.keys()]) this.stopOne(name);
    for (const name of [...this.watches.keys()]) this.unwatch(name);
  }

  private stopOne(name: string): void {
    const timer = this.timers.get(name);
    if (timer) clearTimeout(timer);
    this.timers.delete(name);
    this.status.delete(name);
    this.specs.delete(name);
  }

  private start(name: string, spec: ProbeSpec, delayMs: number): void {
    this.status.set(name, { name, health: 'starting', failures: 0, lastError: null });
    this.specs.set(name, spec);
    const tick = async (): Promise<void> => {
      const status = this.status.get(name);
      if (!status) return;
      // The check's own time-out, whatever the probe does: a probe that never
      // returns must count as a failure, not stop probing.
      const limit = spec.timeoutSeconds * 1000 + 1000;
      const error = await Promise.race([
        this.check(name, spec).catch((e: unknown) => (e instanceof Error ? e.message : String(e))),
        sleep(limit).then(() => `no answer within ${limit} ms`),
      ]);
      if (!this.status.has(name)) return; // removed meanwhile
      probeChecked(probeKind(spec), error === null);
      if (error === null) {
        status.failures = 0;
        status.health = 'healthy';
        status.lastError = null;
      } else {
        status.failures++;
        status.lastError = error;
        if (status.failures >= spec.failureThreshold && status.health !== 'unhealthy') {
          status.health = 'unhealthy';
          this.log(`probe: ${name} is unhealthy after ${status.failures} failures (${error})`);
        }
      }
      this.timers.set(
        name,
        setTimeout(() => void tick(), spec.periodSeconds * 1000),
      );
    };
    this.timers.set(
      name,
      setTimeout(() => void tick(), delayMs),
    );
  }

  /** One check: null if it passed, else why not. A container not running fails it. */
  private async check(name: string, spec: ProbeSpec): Promise<string | null> {
    const view = await this.host.inspect(name);
    if (view.state !== 'running') return `container is ${view.state}`;
    const timeoutMs = spec.timeoutSeconds * 1000;
    if (spec.exec) {
      const code = await this.host.exec(name, spec.exec.command, timeoutMs);
      return code === 0 ? null : `exec exited ${code}`;
    }
    // Connects from inside the container's network namespace (bash's /dev/tcp): the
    // container's own view, reachable whatever the host's routes.
    const port = spec.tcpSocket?.port ?? spec.httpGet!.port;
    const script = spec.httpGet
      ? `exec 3<>/dev/tcp/127.0.0.1/${port} && printf 'GET ${spec.httpGet.path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -qE ' [23][0-9][0-9]'`
      : `exec 3<>/dev/tcp/127.0.0.1/${port}`;
    const result = await run(['nsenter', `--net=${this.host.netnsPathOf(name)}`, ...BASH_C, script], {
      allowFailure: true,
      timeoutMs,
    });
    return result.code === 0 ? null : `${spec.httpGet ? 'httpGet' : 'tcpSocket'} failed (${result.code})`;
  }
}
