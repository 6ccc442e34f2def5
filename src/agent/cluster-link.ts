/**
 * The agent's side of the cluster: it registers its host with the
 * controller, heartbeats (a UDP datagram per beat, or a JSON line per beat on
 * one long-lived request where datagrams cannot go), reports its containers
 * every 10th beat (when the report changed, and every 5th time regardless),
 * and pulls images it lacks from the controller, verifying their hash.
 *
 * The link never takes the host down with it: while the controller is
 * unreachable the agent keeps serving and its containers keep running; the
 * link retries with backoff and re-registers after a controller restart.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { createSocket } from 'node:dgram';
import { request } from 'node:http';
import { isIPv6 } from 'node:net';
import { CorruptCheckpointError, NotLeaderError, type HavenError } from '../core/errors.js';
import { encodeHeartbeatDatagram, parseHeartbeatAnswer } from '../core/heartbeat-datagram.js';
import { lineLogger, logger, type Logger } from '../core/log.js';
import type { HistogramChild } from '../core/metrics.js';
import { RecordSplitter } from '../core/records.js';
import { callJson, errorFrom, openRequest, requestOptions, type Endpoint } from '../core/http-client.js';
import type { ContainerHost } from '../host/container-host.js';
import { heartbeatMetrics } from './metrics.js';
import type { Prober } from './probes.js';
import type { Protection } from './protection.js';

/** Default heartbeat period: a host's death is noticed within a few of these. */
export const DEFAULT_HEARTBEAT_MS = 100;
/**
 * With several controllers, one silent this long is left for the next: more
 * than two acknowledgement periods (the controller acknowledges at most
 * every 190 ms), well under the agent's 500 ms fencing lease.
 */
const CONTROLLER_SILENT_MS = 400;
/** A full report (containers, protection) rides on every this-many heartbeats. */
const REPORT_EVERY = 10;

/** Options of {@link ClusterLink}. */
export interface ClusterLinkOptions {
  host: ContainerHost;
  /**
   * The controller's address — or, for a control plane of several
   * controllers (etcd), all of their addresses separated by commas: the
   * link registers with whichever leads, following a standby's "not the
   * leader, it is at …", and moves on when its controller stops answering.
   */
  controller: Endpoint;
  token: string;
  /** The URL the controller reaches this agent at. */
  advertise: string;
  labels?: Record<string, string>;
  cpuMillis?: number;
  memoryBytes?: number;
  /** Milliseconds between heartbeats (default {@link DEFAULT_HEARTBEAT_MS}). */
  heartbeatMs?: number;
  /**
   * How beats travel: `datagram` (default: UDP, where the controller offers
   * it and is reached over the network) or `stream` (JSON lines on one HTTP
   * request, e.g. where UDP is filtered).
   */
  transport?: 'datagram' | 'stream';
  /** Protection, whose progress goes into the reports. */
  protection?: Protection;
  /** Probes, whose results go into the reports. */
  prober?: Prober;
  /** Called with the containers the controller says this host may run, after each report. */
  onPrimaries?: (names: readonly string[]) => void;
  /** Takes the link's log as readable lines (tests); by default it goes to the structured log as `agent.link`. */
  log?: (line: string) => void;
}

/** Heartbeats remembered for their round trip: an acknowledgement names the seq of the beat it answers. */
const RTT_SLOTS = 16;

/** A host's connection to its controller. */
export class ClusterLink {
  /** Ends the current heartbeats (datagrams or stream), if any. */
  private closeBeats: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private seq = 0;
  private lastDigest = '';
  private bootId = '';
  private backoffMs = 200;
  /** Every controller's address, and the one in use (see {@link ClusterLinkOptions.controller}). */
  private readonly controllers: Endpoint[];
  private current = 0;
  /** Registrations tried since the last success, to back off only once every controller refused. */
  private tries = 0;
  /**
   * When the controller last acknowledged a heartbeat (ms since the epoch).
   * It starts at the agent's start: an agent restarted while cut off must
   * fence too, not wait for a first acknowledgement that never comes.
   */
  lastAckAt = Date.now();
  private readonly log: Logger;
  /** Send times (performance.now()) of the last RTT_SLOTS beats and their seqs, by seq modulo RTT_SLOTS: no allocation per beat. */
  private readonly sentAt = new Float64Array(RTT_SLOTS);
  private readonly sentSeq = new Float64Array(RTT_SLOTS).fill(-1);

  constructor(private readonly options: ClusterLinkOptions) {
    this.log = options.log ? lineLogger('agent.link', options.log) : logger('agent.link');
    this.controllers = options.controller.split(',').filter((c) => c.length > 0);
  }

  /** The controller this link talks to now. */
  get controller(): Endpoint {
    return this.controllers[this.current] ?? this.options.controller;
  }

  /**
   * Registration with the current controller failed: with several, go to the
   * leader a standby named, else to the next one. True if there is another
   * to try at once.
   */
  private nextController(error: unknown): boolean {
    if (this.controllers.length < 2) return false;
    const leader = error instanceof NotLeaderError ? error.leader : undefined;
    const named = leader ? this.controllers.indexOf(leader) : -1;
    this.current =
      named >= 0 && named !== this.current ? named : (this.current + 1) % this.controllers.length;
    return ++this.tries < 2 * this.controllers.length;
  }

  /** Starts registering and heartbeating in the background. */
  async start(): Promise<void> {
    this.bootId = await readBootId(this.options.host.config.stateDir);
    void this.connect();
  }

  /** Stops heartbeating (the host's containers are not touched). */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.closeBeats?.();
  }

  /** Notes when beat `seq` left, for its round trip. */
  private sent(seq: number): void {
    const slot = seq % RTT_SLOTS;
    this.sentSeq[slot] = seq;
    this.sentAt[slot] = performance.now();
  }

  /** The controller acknowledged beat `seq`: its round trip, once, if it is still remembered. */
  private acknowledged(seq: number | undefined, rtt: HistogramChild): void {
    this.lastAckAt = Date.now();
    if (seq === undefined) return;
    const slot = seq % RTT_SLOTS;
    if (this.sentSeq[slot] !== seq) return;
    this.sentSeq[slot] = -1;
    rtt.observe((performance.now() - this.sentAt[slot]!) / 1000);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    try {
      const registered = await callJson<{ heartbeat?: { udpPort: number; key: string } }>(
        this.controller,
        '/v1/hosts',
        this.options.token,
        {
          method: 'POST',
          timeoutMs: 5000,
          body: {
            name: this.options.host.config.hostName,
            address: this.options.advertise,
            labels: this.options.labels ?? {},
            cpuMillis: this.options.cpuMillis ?? cpus().length * 1000,
            memoryBytes: this.options.memoryBytes ?? totalmem(),
            bootId: this.bootId,
            heartbeatMs: this.options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
            // What checkpoints need of a host: placement keeps state off hosts that cannot run it.
            machine: await this.options.host.thisMachine(),
          },
        },
      );
      this.log.info(`registered with ${this.controller}`, { controller: this.controller });
      this.backoffMs = 200;
      this.tries = 0;
      this.lastDigest = '';
      // Datagrams where the controller takes them and is reached over the
      // network; the stream through a Unix socket or when asked for.
      const target = datagramTarget(this.controller, registered.heartbeat);
      if (target && this.options.transport !== 'stream') this.beatByDatagram(target);
      else this.beatOnStream();
    } catch (error) {
      const failed = this.controller;
      const again = this.nextController(error);
      // Several controllers and none leads yet (an election under way, ~1 s): keep asking every
      // 100 ms rather than back off to seconds — a new leader waits for the hosts its first
      // decisions need. One controller: back off, as always.
      const afterMs = again ? 50 : this.controllers.length > 1 ? 100 : undefined;
      this.log.warn(`cannot register with ${failed}: ${(error as Error).message}`, {
        controller: failed,
        retryInMs: afterMs ?? this.backoffMs,
      });
      this.retry(afterMs);
    }
  }

  private retry(afterMs?: number): void {
    if (this.stopped) return;
    this.closeBeats = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.connect(), afterMs ?? this.backoffMs);
    if (afterMs === undefined) this.backoffMs = Math.min(this.backoffMs * 2, 2000);
  }

  /**
   * The report for beat `seq`, or null: every REPORT_EVERY beats (reading
   * the host's records), sent when it changed and every 5th time regardless.
   */
  private async reportFor(seq: number): Promise<Record<string, unknown> | null> {
    if (seq % REPORT_EVERY !== 0) return null;
    try {
      const report = await this.report();
      const digest = createHash('sha1').update(JSON.stringify(report)).digest('hex');
      if (digest === this.lastDigest && seq % (5 * REPORT_EVERY) !== 0) return null;
      this.lastDigest = digest;
      return report;
    } catch (error) {
      this.log.warn(`cannot list containers: ${(error as Error).message}`);
      return null;
    }
  }

  /**
   * Beats as UDP datagrams (`core/heartbeat-datagram.ts`), one per period;
   * reports go to the API as a request each, never holding a beat back. The
   * lease runs from the controller's acknowledgements of either.
   */
  private beatByDatagram(target: DatagramTarget): void {
    const socket = createSocket(isIPv6(target.address) ? 'udp6' : 'udp4');
    let ended = false;
    const end = (why: string, afterMs?: number): void => {
      if (ended) return;
      ended = true;
      if (!this.stopped)
        this.log.warn(`heartbeats stopped (${why}); registering again`, { transport: 'datagram' });
      socket.close();
      this.retry(afterMs);
    };
    const registeredAt = Date.now();
    this.closeBeats = () => end('stopped');
    socket.on('message', (bytes) => {
      const answer = parseHeartbeatAnswer(bytes);
      if (!answer) return;
      if ('error' in answer) end('the controller does not know this registration');
      else this.acknowledged(answer.ack, heartbeatMetrics.datagram.rtt);
    });
    // Unconnected UDP sends fail only locally (no route, buffer full): the next beat tries again.
    socket.on('error', (error) => this.log.warn(`heartbeat datagram: ${error.message}`));
    const host = this.options.host.config.hostName;
    let reporting = false;
    const beat = async (): Promise<void> => {
      if (ended || this.stopped) return;
      // Several controllers: one that stopped acknowledging (killed, deposed) is left for the next,
      // which leads or names the leader. (A lone controller is waited for, as it always was.)
      const silentMs = Date.now() - Math.max(this.lastAckAt, registeredAt);
      if (this.controllers.length > 1 && silentMs > CONTROLLER_SILENT_MS) {
        this.current = (this.current + 1) % this.controllers.length;
        end(`no acknowledgement for ${silentMs} ms: trying the next controller`, 0);
        return;
      }
      const seq = this.seq++;
      socket.send(
        encodeHeartbeatDatagram({ host, bootId: this.bootId, key: target.key, seq }),
        target.port,
        target.address,
      );
      this.sent(seq);
      heartbeatMetrics.datagram.sent.inc();
      this.timer = setTimeout(() => void beat(), this.options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS);
      // One report in flight at most: a slow controller gets fewer, not a pile.
      if (reporting) return;
      reporting = true;
      try {
        const report = await this.reportFor(seq);
        if (report && !ended) await this.sendReport({ seq, bootId: this.bootId, ...report });
      } catch (error) {
        this.lastDigest = ''; // not delivered: send it again next time
        if ((error as HavenError).code === 'failed_precondition') end((error as Error).message);
        else this.log.warn(`report not delivered: ${(error as Error).message}`);
      } finally {
        reporting = false;
      }
    };
    void beat();
  }

  /** Sends one report; the answer acknowledges it and says which containers this host may run. */
  private async sendReport(beat: Record<string, unknown>): Promise<void> {
    const answer = await callJson<{ primaries?: string[] }>(
      this.controller,
      `/v1/hosts/${this.options.host.config.hostName}/heartbeat`,
      this.options.token,
      { method: 'POST', body: beat, timeoutMs: 5000 },
    );
    this.lastAckAt = Date.now();
    if (answer.primaries) this.options.onPrimaries?.(answer.primaries);
  }

  /** Beats as JSON lines on one long-lived request, each acknowledged on its answer. */
  private beatOnStream(): void {
    const base = requestOptions(
      this.controller,
      `/v1/hosts/${this.options.host.config.hostName}/heartbeats`,
      this.options.token,
    );
    const stream = request({
      ...base,
      method: 'POST',
      headers: { ...base.headers, 'content-type': 'application/x-ndjson' },
    });
    let ended = false;
    const end = (why: string): void => {
      if (ended) return;
      ended = true;
      if (!this.stopped)
        this.log.warn(`heartbeat stream ended (${why}); reconnecting`, { transport: 'stream' });
      stream.destroy();
      this.retry();
    };
    this.closeBeats = () => end('stopped');
    stream.on('response', (res) => {
      if (res.statusCode !== 200) {
        // Refused at once (e.g. 409: register again).
        void errorFrom(res).then(
          (e) => end(e.message),
          () => end('closed'),
        );
        return;
      }
      // Acknowledgement lines (coalesced); an error line ends the stream.
      res.setEncoding('utf8');
      const lines = new RecordSplitter((line) => {
        try {
          const ack = JSON.parse(line) as { ack?: number; primaries?: string[]; error?: string };
          if (ack.error) {
            end(ack.error);
            return false;
          }
          this.acknowledged(ack.ack, heartbeatMetrics.stream.rtt);
          if (ack.primaries) this.options.onPrimaries?.(ack.primaries);
          return true;
        } catch {
          end('malformed acknowledgement');
          return false;
        }
      });
      res.on('data', (chunk: string) => lines.push(chunk));
      res.on('end', () => end('the controller ended the stream'));
      res.on('error', () => end('closed'));
    });
    stream.on('error', (error) => end(error.message));
    stream.on('close', () => end('closed'));
    const beat = async (): Promise<void> => {
      if (ended || this.stopped) return;
      const seq = this.seq++;
      const report = await this.reportFor(seq);
      if (ended || this.stopped) return;
      stream.write(`${JSON.stringify({ seq, bootId: this.bootId, ...report })}\n`);
      this.sent(seq);
      heartbeatMetrics.stream.sent.inc();
      this.timer = setTimeout(() => void beat(), this.options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS);
    };
    void beat();
  }

  /** What this host reports: its containers and, with protection, its primaries' and replicas' progress. */
  private async report(): Promise<Record<string, unknown>> {
    const containers = (await this.options.host.list()).map((c) => ({
      name: c.name,
      state: c.state,
      pid: c.pid,
      ip: c.ip,
    }));
    const protection = this.options.protection;
    const health = this.options.prober
      ?.statuses()
      .map((p) => ({ name: p.name, health: p.health, failures: p.failures }));
    if (!protection) return { containers, ...(health ? { health } : {}) };
    return {
      containers,
      ...(health ? { health } : {}),
      protection: protection.statuses().map((p) => ({
        name: p.name,
        backup: p.backup.host,
        committedEpoch: p.committedEpoch,
        committedAt: p.committedAt,
        sentBytes: p.sentBytes,
        totalBytes: p.totalBytes,
        frozenMs: Math.round(p.frozenMs),
        epochMs: Math.round(p.epochMs),
        epochRate: Math.round(p.epochRate * 10) / 10,
        phases: p.phases,
        epochsCommitted: p.epochsCommitted,
        lastError: p.lastError,
        ...(p.output
          ? {
              output: {
                mode: p.output.mode,
                connections: p.output.connections,
                heldBytes: p.output.heldBytes,
                outputDelayMs: p.output.outputDelayMs,
              },
            }
          : {}),
      })),
      replicas: (await protection.replicas.list()).map((r) => ({ name: r.name, epoch: r.epochs[0] ?? null })),
    };
  }

  /**
   * Fetches image `id` from the controller into this host's store. The bytes
   * are hashed as they arrive; a mismatch is refused and leaves nothing.
   */
  async pullImage(id: string): Promise<void> {
    const res = await openRequest(
      this.controller,
      `/v1/images/${encodeURIComponent(id)}`,
      this.options.token,
      { timeoutMs: 600_000 },
    );
    if ((res.statusCode ?? 500) !== 200) throw await errorFrom(res);
    const dir = join(this.options.host.config.stateDir, 'images');
    await mkdir(dir, { recursive: true });
    const temp = join(dir, `.pull-${process.pid}-${Date.now()}.tar`);
    const hash = createHash('sha256');
    try {
      await pipeline(
        res,
        new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            hash.update(chunk);
            callback(null, chunk);
          },
        }),
        createWriteStream(temp),
      );
      const got = `sha256:${hash.digest('hex')}`;
      const want = res.headers['x-haven-image'];
      if (typeof want !== 'string' || got !== want || !want.includes(id.replace(/^sha256:/, ''))) {
        throw new CorruptCheckpointError(`image ${id} arrived as ${got}: refused`);
      }
      await this.options.host.images.import(temp);
      this.log.info(`pulled image ${got}`, { image: got });
    } finally {
      await rm(temp, { force: true });
    }
  }
}

/** Where heartbeat datagrams go. */
interface DatagramTarget {
  address: string;
  port: number;
  key: string;
}

/** The datagram target for a controller at `endpoint` that offered `offer`; null if datagrams cannot reach it. */
function datagramTarget(
  endpoint: Endpoint,
  offer: { udpPort: number; key: string } | undefined,
): DatagramTarget | null {
  if (!offer || !endpoint.startsWith('http://')) return null;
  const address = new URL(endpoint).hostname.replace(/^\[(.*)\]$/, '$1');
  return { address, port: offer.udpPort, key: offer.key };
}

/**
 * The host's boot ID: made once per disk. A host whose disk is new (a lab
 * host revived, a machine reinstalled) announces a new one, and the
 * controller knows none of its old containers can be there.
 */
export async function readBootId(stateDir: string): Promise<string> {
  const file = join(stateDir, 'boot-id');
  if (existsSync(file)) {
    const text = (await readFile(file, 'utf8')).trim();
    if (/^[0-9a-f]{8,64}$/.test(text)) return text;
  }
  await mkdir(stateDir, { recursive: true });
  const id = randomBytes(16).toString('hex');
  await writeFile(file, `${id}\n`);
  return id;
}
