/**
 * Leader election among controllers on etcd: one leads (decides, orders
 * agents, runs the failure detector), the others stand by and answer "not
 * the leader, it is at …".
 *
 * ```
 *            campaign: key under the election prefix, on a 1 s lease
 *  standby ───────────────────────────────────────────────────────▶ leader
 *     ▲    (oldest key = leader: etcd's own election recipe)           │
 *     │                                                                │ keep-alive every 250 ms
 *     │                      lease confirmed ≤ 1 s ago: may decide     │
 *     │                      not confirmed (no quorum, etcd down):     │
 *     │                        acknowledges heartbeats, decides nothing│
 *     └──── exit, restarted as a standby ◀──── lease gone: deposed ◀──┘
 * ```
 *
 * Why a leader that cannot reach a quorum keeps acknowledging heartbeats:
 * agents' fencing leases come from those acknowledgements. Stopping them
 * would freeze every protected primary in the cluster because etcd lost a
 * member too many — the control plane's trouble turned into the data
 * plane's outage. Deciding nothing is enough: without a quorum no other
 * controller can be elected either, and once one is (etcd reachable again,
 * this lease gone) this controller learns it at its next keep-alive and
 * steps down. A new leader never fails over a host it has not heard from
 * (liveness is learnt from heartbeats, never read from the store), so
 * agents still held by an old leader are not failed over behind its back.
 *
 * **Fencing generation**: the create revision of the leader's key. The
 * store guards every write with it (etcd-store.ts), so a deposed leader's
 * writes are refused by etcd itself, whatever it believes.
 */
import { EventEmitter } from 'node:events';
import { Etcd3, EtcdLeaseInvalidError, type Lease } from 'etcd3';
import { setTimeout as sleep } from 'node:timers/promises';
import { logger } from '../core/log.js';
import type { Fence } from './etcd-store.js';

const log = logger('controller.leader');

/** The election's key prefix (keys are `<prefix><lease id>`, valued with the controller's API address). */
export const ELECTION_PREFIX = 'haven/election/controller/';
/** Lease of a candidate's key: a killed leader's key goes within 1–1.5 s (etcd checks expiry every 0.5 s). */
export const ELECTION_TTL_S = 1;
/** Keep-alives this often: three chances per lease. */
const KEEPALIVE_MS = 250;
/** A keep-alive that failed (a dead member picked, etcd electing) is tried again this soon. */
const RETRY_MS = 50;
/** A standby looks at who leads this often. */
const POLL_MS = 50;
/** The lease is counted confirmed for its TTL less this, from when the keep-alive was sent. */
const CONFIRM_MARGIN_MS = 200;

/** `standby`, `leader`, or `deposed` (lease lost: stop; a supervisor restarts the process as a standby). */
export type Role = 'standby' | 'leader' | 'deposed';

/** Options of {@link LeaderElection}. */
export interface LeaderElectionOptions {
  client: Etcd3;
  /** This controller's API address (what standbys tell clients). */
  address: string;
  ttlSeconds?: number;
  now?: () => number;
}

/**
 * One controller's candidacy. Emits `elected` (with the {@link Fence}),
 * `deposed`, and `decisions` (true/false) when the right to decide changes.
 */
export class LeaderElection extends EventEmitter {
  role: Role = 'standby';
  private lease: Lease | undefined;
  private key: string | undefined;
  private createRevision: string | undefined;
  private confirmedUntil = 0;
  private stopped = false;
  private decided = false;
  private readonly ttlMs: number;
  private readonly now: () => number;
  /** The leader's address as last seen (standbys answer clients with it). */
  leaderAddress: string | undefined;

  constructor(readonly options: LeaderElectionOptions) {
    super();
    this.ttlMs = (options.ttlSeconds ?? ELECTION_TTL_S) * 1000;
    this.now = options.now ?? Date.now;
  }

  /** The leader's fencing generation (create revision of its key), once elected. */
  get fence(): Fence | undefined {
    return this.key && this.createRevision
      ? { key: this.key, createRevision: this.createRevision }
      : undefined;
  }

  /** True while this controller leads with a lease confirmed by a quorum: it may decide. */
  mayDecide(): boolean {
    return this.role === 'leader' && this.now() < this.confirmedUntil;
  }

  /**
   * Resolves true as soon as this controller may decide, or false after
   * `timeoutMs`. A request for a decision waits here rather than failing at
   * once: etcd losing a member (its raft leader, say) leaves the lease
   * unconfirmed for the ~0.5–1 s etcd takes to elect, which is no reason to
   * refuse an operator.
   */
  async awaitDecisions(timeoutMs: number): Promise<boolean> {
    const until = this.now() + timeoutMs;
    while (!this.mayDecide()) {
      if (this.role !== 'leader' || this.now() >= until) return false;
      await sleep(POLL_MS);
    }
    return true;
  }

  /** Joins the election and resolves once this controller leads. */
  async campaign(): Promise<Fence> {
    const { client } = this.options;
    for (;;) {
      if (this.stopped) throw new Error('election stopped');
      try {
        if (!this.lease || this.lease.revoked()) {
          this.lease = client.lease(this.options.ttlSeconds ?? ELECTION_TTL_S, { autoKeepAlive: false });
          const id = await this.lease.grant();
          this.key = `${ELECTION_PREFIX}${BigInt(id).toString(16)}`;
          await client.put(this.key).value(this.options.address).lease(id).exec();
          const own = await client.get(this.key).exec();
          this.createRevision = String(own.kvs[0]?.create_revision ?? '');
          this.confirmedUntil = this.now() + this.ttlMs - CONFIRM_MARGIN_MS;
          this.keepAlive();
        }
        const candidates = await client.getAll().prefix(ELECTION_PREFIX).sort('Create', 'Ascend').exec();
        const first = candidates.kvs[0];
        this.leaderAddress = first?.value.toString();
        if (first && first.key.toString() === this.key) {
          this.role = 'leader';
          const fence = this.fence!;
          log.info(`elected (fencing generation ${fence.createRevision})`, { ...fence });
          this.emit('elected', fence);
          this.noteDecisions();
          return fence;
        }
      } catch (error) {
        log.warn(`election: ${(error as Error).message}`);
      }
      await sleep(POLL_MS);
    }
  }

  /** The current leader's address (read from etcd), or undefined. */
  async leader(): Promise<string | undefined> {
    try {
      const candidates = await this.options.client
        .getAll()
        .prefix(ELECTION_PREFIX)
        .sort('Create', 'Ascend')
        .limit(1)
        .strings();
      this.leaderAddress = Object.values(candidates)[0];
    } catch {
      // etcd unreachable: the last one seen.
    }
    return this.leaderAddress;
  }

  /** Keeps the lease alive; a lease etcd says is gone deposes this controller. */
  private keepAlive(): void {
    void (async () => {
      while (!this.stopped && this.lease && !this.lease.revoked()) {
        const sentAt = this.now();
        try {
          await Promise.race([
            this.lease.keepaliveOnce({ deadline: new Date(sentAt + KEEPALIVE_MS * 2) }),
            sleep(KEEPALIVE_MS * 2).then(() => {
              throw new Error('keep-alive timed out');
            }),
          ]);
          this.confirmedUntil = sentAt + this.ttlMs - CONFIRM_MARGIN_MS;
        } catch (error) {
          if (error instanceof EtcdLeaseInvalidError) {
            // A standby simply campaigns again with a new lease; a leader has lost its office.
            if (this.role === 'leader') this.depose('etcd says the election lease is gone');
            return;
          }
          // No quorum or no member reachable: the lease is not confirmed (no decisions), not lost.
          // Tried again soon rather than at the next beat: the client picks a member at random,
          // and the next pick is likely a live one (or etcd has elected its new raft leader).
          this.noteDecisions();
          await sleep(RETRY_MS);
          continue;
        }
        this.noteDecisions();
        await sleep(Math.max(0, sentAt + KEEPALIVE_MS - this.now()));
      }
    })();
  }

  private noteDecisions(): void {
    const may = this.mayDecide();
    if (may === this.decided) return;
    this.decided = may;
    if (this.role === 'leader')
      log[may ? 'info' : 'warn'](
        may
          ? 'etcd confirms the lease: deciding again'
          : 'cannot confirm the lease with etcd: deciding nothing',
      );
    this.emit('decisions', may);
  }

  /** The lease is gone: another controller may lead now. */
  depose(why: string): void {
    if (this.role === 'deposed') return;
    const wasLeader = this.role === 'leader';
    this.role = 'deposed';
    this.decided = false;
    log.warn(`deposed: ${why}`, { wasLeader });
    this.emit('deposed', why);
  }

  /** Gives up: resigns (deletes the key, so a standby takes over at once) if etcd answers. */
  async stop(): Promise<void> {
    this.stopped = true;
    try {
      await this.lease?.revoke();
    } catch {
      // It expires by itself.
    }
  }
}
