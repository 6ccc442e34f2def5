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
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { setTimeout as sleep } from 'node:timers/promises';
import { run } from '../core/exec.js';
import type { ContainerHost } from '../host/container-host.js';

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

/** Runs the probes of this host's containers. */
export class Prober {
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly status = new Map<string, ProbeStatus>();
  private readonly specs = new Map<string, ProbeSpec>();

  constructor(
    private readonly host: ContainerHost,
    private readonly log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
  ) {}

  private get dir(): string {
    return join(this.host.config.stateDir, 'probes');
  }

  /** Starts the probes kept on disk (after an agent restart). */
  async resume(): Promise<void> {
    if (!existsSync(this.dir)) return;
    for (const file of await readdir(this.dir)) {
      if (!file.endsWith('.json')) continue;
      const spec = probeSpecSchema.safeParse(JSON.parse(await readFile(join(this.dir, file), 'utf8')));
      if (spec.success) this.start(file.slice(0, -5), spec.data, 0);
    }
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
    const spec = this.specs.get(name);
    if (!spec) return true;
    const limit = spec.timeoutSeconds * 1000 + 1000;
    const error = await Promise.race([
      this.check(name, spec).catch(() => 'error'),
      sleep(limit).then(() => 'timeout'),
    ]);
    return error === null;
  }

  /** Health of every probed container. */
  statuses(): ProbeStatus[] {
    return [...this.status.values()].map((s) => ({ ...s }));
  }

  /** Stops every probe. */
  stopAll(): void {
    for (const name of [...this.timers.keys()]) this.stopOne(name);
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
    const result = await run(['nsenter', `--net=${this.host.netnsPathOf(name)}`, 'bash', '-c', script], {
      allowFailure: true,
      timeoutMs,
    });
    return result.code === 0 ? null : `${spec.httpGet ? 'httpGet' : 'tcpSocket'} failed (${result.code})`;
  }
}
