/**
 * Post-copy live migration (CRIU lazy pages), the destination's part, and
 * the schemas of its agent routes (the source's part is in
 * `migration-source.ts`, the decisions in `controller/migration.ts`).
 *
 * ```
 *   source                                   destination
 *   freeze, lock; criu dump --lazy-pages
 *     --leave-running (no pages written);
 *   images + files → chunks ───────────────▶ epoch committed
 *                                            POST /v1/replicas/:name/promote-lazy:
 *                                              criu lazy-pages --page-server ─┐
 *                                              runc restore --lazy-pages      │
 *   page server (frozen tasks' memory) ◀──── faults first, then the rest ────┘
 *                                            the container runs here, pulling
 *                                            POST /v1/replicas/:name/lazy-wait:
 *                                              every page arrived? (the proof:
 *                                              the daemon exits 0 only then)
 *   complete → the frozen source is killed
 *   failed   → the destination copy is killed here first, then the source
 *              thaws: its state as at the freeze; what the container did on
 *              the destination since the switch is lost
 * ```
 *
 * A destination whose daemon ends without every page — its source died, the
 * link dropped — kills the container at once: a process whose missing pages
 * would read as zeros must never run on. A transfer that makes no progress
 * for {@link LAZY_STALL_MS} (a cut link sends no reset) is ended the same way.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { FailedPreconditionError, NotFoundError } from '../core/errors.js';
import type { ContainerHost, ContainerView } from '../host/container-host.js';
import type { LazyPagesDaemon } from '../runtime/driver.js';
import { assembleDirectory } from './chunks.js';
import type { ReplicaStore } from './replica-store.js';
import { trace } from '../core/exec.js';

/** A post-copy transfer without progress for this long is given up (and the destination copy killed). */
export const LAZY_STALL_MS = 3000;

const hostAddress = z
  .string()
  .max(100)
  .regex(/^[0-9a-zA-Z.:-]+$/, 'an IP address or host name');

/** `POST /v1/replicas/:name/promote-lazy`: restore the committed epoch, its pages from the source's page server. */
export const lazyPromoteSchema = z
  .object({
    epoch: z.number().int().positive(),
    from: z.object({ address: hostAddress, port: z.number().int().min(1024).max(65535) }).strict(),
  })
  .strict();

/** `POST /v1/replicas/:name/lazy-wait`: wait (at most `timeoutMs`) until every page has arrived or the transfer failed. */
export const lazyWaitSchema = z
  .object({ timeoutMs: z.number().int().min(0).max(3_600_000).default(600_000) })
  .strict();

/** `POST /v1/containers/:name/migrate-end`: a post-copy source's end — kill the frozen copy, or thaw it. */
export const lazyEndSchema = z
  .object({
    id: z.string().regex(/^[0-9a-z-]{1,80}$/, 'a migration ID'),
    outcome: z.enum(['complete', 'rollback']),
    /**
     * Rollback: whether the destination copy is known gone (removed, or its
     * host down). If not, a source that served every page refuses to thaw:
     * the destination copy is whole and may be running.
     */
    destinationGone: z.boolean().default(true),
  })
  .strict();

/** What `lazy-wait` answers. */
export interface LazyOutcome {
  /** Every page arrived: the destination copy is whole. */
  complete: boolean;
  /** Still transferring when the wait timed out. */
  pending?: boolean;
  /** Pages received and in all (the daemon's count). */
  transferred?: [number, number];
  /** From the restore to the last page (or the failure). */
  ms: number;
  errors: string[];
  /** Not complete: the destination copy was killed here. */
  killed?: boolean;
}

interface Session {
  daemon: LazyPagesDaemon;
  started: number;
  outcome: Promise<LazyOutcome>;
}

/** Post-copy restores on this host, while their pages arrive. */
export class PostCopyDestination {
  private readonly sessions = new Map<string, Session>();
  /**
   * How each container's last post-copy restore here ended, once a wait has
   * returned it: a controller restarted between that answer and its next
   * step asks again and hears the same, instead of "no such restore" (which
   * would roll back a copy that is whole).
   */
  private readonly finished = new Map<string, LazyOutcome>();

  constructor(
    private readonly host: ContainerHost,
    private readonly replicas: ReplicaStore,
    private readonly log: (line: string) => void = (l) => process.stderr.write(`${l}\n`),
  ) {}

  /**
   * Restores `name` from exactly `epoch` (committed by the source's
   * post-copy round: everything but the lazy pages) with its connections,
   * and returns once it runs; its pages go on arriving (see {@link wait}).
   */
  async promote(
    name: string,
    order: z.infer<typeof lazyPromoteSchema>,
  ): Promise<{ view: ContainerView; assembleMs: number; restoreMs: number }> {
    if (this.sessions.has(name))
      throw new FailedPreconditionError(`a post-copy restore of "${name}" is under way`);
    const began = performance.now();
    const manifest = await this.replicas.manifest(name, order.epoch);
    const bytes = manifest.files.reduce((sum, f) => sum + f.size, 0);
    const scratch = await this.host.scratchDir(bytes);
    const dir = join(scratch, manifest.checkpointId);
    let daemon: LazyPagesDaemon | undefined;
    try {
      await assembleDirectory(manifest, this.replicas.chunks, dir);
      const assembleMs = performance.now() - began;
      trace(`post-copy ${name}: assembled`, began);
      const restoring = performance.now();
      const restored = await this.host.adoptCheckpoint(manifest.record, dir, {
        tcpClose: false,
        contentVerified: true,
        lazy: { from: order.from, started: (d) => (daemon = d) },
      });
      const restoreMs = performance.now() - restoring;
      trace(`post-copy ${name}: restored`, restoring);
      if (!daemon) throw new Error('the lazy-pages daemon did not start');
      const session: Session = {
        daemon,
        started: performance.now(),
        outcome: this.watch(name, daemon, performance.now()).finally(() =>
          rm(scratch, { recursive: true, force: true }),
        ),
      };
      this.finished.delete(name);
      this.sessions.set(name, session);
      // Its epoch is no longer needed here, but dropping it scans the chunk store
      // (a prune): done after the answer, outside the container's downtime.
      void this.replicas
        .drop(name)
        .catch((e: unknown) => this.log(`post-copy of ${name}: dropping its epoch: ${String(e)}`));
      return { view: await this.host.restoredView(name, restored.pid), assembleMs, restoreMs };
    } catch (error) {
      daemon?.kill();
      await rm(scratch, { recursive: true, force: true });
      throw error;
    }
  }

  /**
   * Follows the daemon until it ends; a stalled transfer is ended. Not
   * complete: the container is killed here before anyone hears of it.
   */
  private async watch(name: string, daemon: LazyPagesDaemon, started: number): Promise<LazyOutcome> {
    let last = '';
    let lastChange = performance.now();
    let stalled = false;
    const timer = setInterval(() => {
      void daemon.progress().then((p) => {
        const now = JSON.stringify(p ?? null);
        if (now !== last) {
          last = now;
          lastChange = performance.now();
        } else if (performance.now() - lastChange > LAZY_STALL_MS) {
          stalled = true;
          daemon.kill();
        }
      });
    }, 250);
    const exit = await daemon.exited;
    clearInterval(timer);
    const outcome: LazyOutcome = {
      complete: exit.complete,
      ...(exit.transferred ? { transferred: exit.transferred } : {}),
      ms: performance.now() - started,
      errors: stalled ? [`no page arrived for ${LAZY_STALL_MS} ms`, ...exit.errors] : exit.errors,
    };
    if (!exit.complete) {
      this.log(
        `post-copy of ${name}: pages missing (${outcome.errors.join('; ') || `exit ${exit.code}`}); killing it here`,
      );
      await this.host
        .remove(name, { force: true })
        .catch((e: unknown) => this.log(`post-copy kill of ${name}: ${String(e)}`));
      outcome.killed = true;
    }
    return outcome;
  }

  /** Waits until every page of `name` has arrived or the transfer failed (at most `timeoutMs`). */
  async wait(name: string, timeoutMs: number): Promise<LazyOutcome> {
    const session = this.sessions.get(name);
    if (!session) {
      const outcome = this.finished.get(name);
      if (outcome) return outcome;
      throw new NotFoundError(`no post-copy restore of "${name}" on this host`);
    }
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<LazyOutcome>((resolve) => {
      timer = setTimeout(
        () =>
          void session.daemon.progress().then(
            (transferred) =>
              resolve({
                complete: false,
                pending: true,
                ...(transferred ? { transferred } : {}),
                ms: performance.now() - session.started,
                errors: [],
              }),
            () =>
              resolve({
                complete: false,
                pending: true,
                ms: performance.now() - session.started,
                errors: [],
              }),
          ),
        timeoutMs,
      );
    });
    const outcome = await Promise.race([session.outcome, timeout]);
    clearTimeout(timer);
    if (!outcome.pending) {
      this.sessions.delete(name);
      this.finished.set(name, outcome);
    }
    return outcome;
  }

  /** Ends a post-copy restore here: the daemon and the (incomplete) copy go. */
  async abort(name: string): Promise<void> {
    const session = this.sessions.get(name);
    if (!session) return;
    session.daemon.kill();
    await session.outcome;
    this.sessions.delete(name);
  }
}
