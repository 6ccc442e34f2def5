/**
 * The agent's side of the cluster: it registers its host with the
 * controller, keeps one heartbeat stream open (a JSON line per beat; the
 * a report of its containers every 10th beat, when it changed and every 5th time regardless), and
 * pulls images it lacks from the controller, verifying their hash.
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
import type { ClientRequest } from 'node:http';
import { request } from 'node:http';
import { CorruptCheckpointError } from '../core/errors.js';
import { RecordSplitter } from '../core/records.js';
import { callJson, errorFrom, openRequest, requestOptions, type Endpoint } from '../core/http-client.js';
import type { ContainerHost } from '../host/container-host.js';
import type { Prober } from './probes.js';
import type { Protection } from './protection.js';

/** Default heartbeat period: a host's death is noticed within a few of these. */
export const DEFAULT_HEARTBEAT_MS = 100;
/** A full report (containers, protection) rides on every this-many heartbeats. */
const REPORT_EVERY = 10;

/** Options of {@link ClusterLink}. */
export interface ClusterLinkOptions {
  host: ContainerHost;
  controller: Endpoint;
  token: string;
  /** The URL the controller reaches this agent at. */
  advertise: string;
  labels?: Record<string, string>;
  cpuMillis?: number;
  memoryBytes?: number;
  /** Milliseconds between heartbeats (default {@link DEFAULT_HEARTBEAT_MS}). */
  heartbeatMs?: number;
  /** Protection, whose progress goes into the reports. */
  protection?: Protection;
  /** Probes, whose results go into the reports. */
  prober?: Prober;
  /** Called with the containers the controller says this host may run, after each report. */
  onPrimaries?: (names: readonly string[]) => void;
  log?: (line: string) => void;
}

/** A host's connection to its controller. */
export class ClusterLink {
  private stream: ClientRequest | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private seq = 0;
  private lastDigest = '';
  private bootId = '';
  private backoffMs = 200;
  /**
   * When the controller last acknowledged a heartbeat (ms since the epoch).
   * It starts at the agent's start: an agent restarted while cut off must
   * fence too, not wait for a first acknowledgement that never comes.
   */
  lastAckAt = Date.now();

  constructor(private readonly options: ClusterLinkOptions) {}

  /** Starts registering and heartbeating in the background. */
  async start(): Promise<void> {
    this.bootId = await readBootId(this.options.host.config.stateDir);
    void this.connect();
  }

  /** Stops heartbeating (the host's containers are not touched). */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.stream?.destroy();
  }

  private log(line: string): void {
    (this.options.log ?? ((l: string) => process.stderr.write(`${l}\n`)))(line);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    try {
      await callJson(this.options.controller, '/v1/hosts', this.options.token, {
        method: 'POST',
        timeoutMs: 5000,
        body: {
          name: this.options.host.config.hostName,
          address: this.options.advertise,
          labels: this.options.labels ?? {},
          cpuMillis: this.options.cpuMillis ?? cpus().length * 1000,
          memoryBytes: this.options.memoryBytes ?? totalmem(),
          bootId: this.bootId,
        },
      });
      this.log(`agent: registered with ${this.options.controller}`);
      this.backoffMs = 200;
      this.lastDigest = '';
      this.openStream();
    } catch (error) {
      this.log(`agent: cannot register with ${this.options.controller}: ${(error as Error).message}`);
      this.retry();
    }
  }

  private retry(): void {
    if (this.stopped) return;
    this.stream = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.connect(), this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, 2000);
  }

  private openStream(): void {
    const base = requestOptions(
      this.options.controller,
      `/v1/hosts/${this.options.host.config.hostName}/heartbeats`,
      this.options.token,
    );
    const stream = request({
      ...base,
      method: 'POST',
      headers: { ...base.headers, 'content-type': 'application/x-ndjson' },
    });
    this.stream = stream;
    let ended = false;
    const end = (why: string): void => {
      if (ended) return;
      ended = true;
      if (!this.stopped) this.log(`agent: heartbeat stream ended (${why}); reconnecting`);
      stream.destroy();
      this.retry();
    };
    stream.on('response', (res) => {
      if (res.statusCode !== 200) {
        // Refused at once (e.g. 409: register again).
        void errorFrom(res).then(
          (e) => end(e.message),
          () => end('closed'),
        );
        return;
      }
      // One acknowledgement line per heartbeat; an error line ends the stream.
      res.setEncoding('utf8');
      const lines = new RecordSplitter((line) => {
        try {
          const ack = JSON.parse(line) as { ack?: number; primaries?: string[]; error?: string };
          if (ack.error) {
            end(ack.error);
            return false;
          }
          this.lastAckAt = Date.now();
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
      const line: Record<string, unknown> = { seq, bootId: this.bootId };
      // Liveness every beat; the report (which reads the host's records) every
      // REPORT_EVERY beats, sent when it changed and every 5th time regardless.
      if (seq % REPORT_EVERY === 0) {
        try {
          const report = await this.report();
          const digest = createHash('sha1').update(JSON.stringify(report)).digest('hex');
          if (digest !== this.lastDigest || seq % (5 * REPORT_EVERY) === 0) {
            Object.assign(line, report);
            this.lastDigest = digest;
          }
        } catch (error) {
          this.log(`agent: cannot list containers: ${(error as Error).message}`);
        }
      }
      if (ended || this.stopped) return;
      stream.write(`${JSON.stringify(line)}\n`);
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
        lastError: p.lastError,
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
      this.options.controller,
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
      this.log(`agent: pulled image ${got}`);
    } finally {
      await rm(temp, { force: true });
    }
  }
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
