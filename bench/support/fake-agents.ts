/**
 * bench/support/fake-agents.ts: simulated Haven agents for controller
 * benchmarks, run in worker processes so that their CPU is theirs, not the
 * benchmark's or the controller's.
 *
 * A worker serves one fake agent API (`POST /v1/containers` answers a
 * ContainerView-like `{name, state: 'running', pid, ip, host}`, `GET
 * /v1/containers` answers `[]`, `POST /v1/probe` says the host asked about is
 * reachable, `DELETE /v1/containers/:name` succeeds) that every host it
 * simulates advertises, and
 * for each host: registers it (`POST /v1/hosts`), then heartbeats every
 * `beatMs`, as `src/agent/cluster-link.ts` does — a beat `{seq, bootId}`; on
 * every 10th beat the report (`containers`, and the `protection` and
 * `replicas` lists, empty here) if it changed, and on every 50th regardless —
 * in one of three ways: a UDP datagram per beat with the report as a request
 * of its own (`datagram`, Haven's way; the controller acknowledges a host at
 * most every 190 ms, an ack covering every beat up to its seq); a line per
 * beat on one long-lived NDJSON stream per host, the report inline
 * (`stream`, Haven's fallback where UDP cannot go; acknowledged on its
 * answer at most every 100 ms); or one keep-alive request per beat
 * (`oneshot`, the baseline). A beat counts as delivered once acknowledged.
 *
 * Beats are spread evenly over the period (hosts are dealt into 5 ms slots);
 * a worker more than a period behind drops the backlog rather than bursting,
 * so an overloaded machine shows as fewer beats sent, never as a burst.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Agent, createServer, request, type ClientRequest, type Server } from 'node:http';
import { createSocket, type Socket } from 'node:dgram';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { encodeHeartbeatDatagram, parseHeartbeatAnswer } from '../../src/core/heartbeat-datagram.js';
import { callJson } from '../../src/core/http-client.js';
import { RecordSplitter } from '../../src/core/records.js';
import type { ReportedContainer } from '../../src/controller/schemas.js';

/** How a worker's hosts heartbeat. */
export type BeatMode = 'off' | 'datagram' | 'stream' | 'oneshot';

/** What a worker's hosts did since the last `stats` call. */
export interface BeatStats {
  hosts: number;
  /** Heartbeats sent: lines written (stream) or requests sent (oneshot). */
  sent: number;
  /** Beats that carried the report. */
  reports: number;
  /** Beats the controller acknowledged: a 200 (one-shot) or an ack line (stream). */
  acked: number;
  errors: number;
  /** One-shot beats not sent because the host's previous one was still unanswered. */
  skipped: number;
  /** Whole periods the worker fell behind and dropped. */
  droppedPeriods: number;
  /** Stream writes that hit back-pressure (the controller reading slower than beats come). */
  backpressured: number;
  /** Beat to acknowledgement, milliseconds. */
  latenciesMs: number[];
  /** Containers the fake agent API was asked to start. */
  containersStarted: number;
  lastError?: string;
  elapsedMs: number;
}

type Command =
  | { op: 'register'; hosts: HostSpec[] }
  | { op: 'mode'; mode: BeatMode }
  | { op: 'reports'; reports: Record<string, ReportedContainer[]> }
  | { op: 'stats' }
  | { op: 'exit' };

/** A host to simulate, as it registers. */
export interface HostSpec {
  name: string;
  cpuMillis: number;
  memoryBytes: number;
}

interface WorkerConfig {
  controller: string;
  token: string;
  beatMs: number;
}

type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: string };

const WORKER_FLAG = '--fake-agent-worker';

/** Parent side: a pool of worker processes simulating hosts. */
export class FakeAgentWorkers {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(readonly workers: ReadonlyArray<{ child: ChildProcess; port: number }>) {
    for (const { child } of workers) {
      child.on('message', (message: Reply) => {
        const waiter = this.waiting.get(message.id);
        if (!waiter) return;
        this.waiting.delete(message.id);
        if (message.ok) waiter.resolve(message.result);
        else waiter.reject(new Error(message.error));
      });
      child.on('exit', (code, signal) => {
        for (const [id, waiter] of this.waiting) {
          waiter.reject(new Error(`fake agent worker ${child.pid} exited (${code ?? signal})`));
          this.waiting.delete(id);
        }
      });
    }
  }

  /** Starts `count` workers; each serves its fake agent API on a loopback port. */
  static async start(count: number, config: WorkerConfig): Promise<FakeAgentWorkers> {
    const path = fileURLToPath(import.meta.url);
    const started = await Promise.allSettled(
      Array.from({ length: count }, () => {
        const child = fork(path, [WORKER_FLAG, JSON.stringify(config)], { stdio: 'inherit' });
        return new Promise<{ child: ChildProcess; port: number }>((resolve, reject) => {
          const timer = setTimeout(
            () => reject(new Error('fake agent worker did not start in 10 s')),
            10_000,
          );
          child.once('message', (m: { port: number }) => {
            clearTimeout(timer);
            resolve({ child, port: m.port });
          });
          child.once('exit', (code) => reject(new Error(`fake agent worker exited with ${code}`)));
        }).catch((error: unknown) => {
          child.kill('SIGKILL');
          throw error;
        });
      }),
    );
    const ok = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const failed = started.find((s) => s.status === 'rejected');
    if (failed) {
      for (const w of ok) w.child.kill('SIGKILL');
      throw failed.reason;
    }
    return new FakeAgentWorkers(ok);
  }

  /** Process IDs of the workers (for CPU accounting). */
  get pids(): number[] {
    return this.workers.map((w) => w.child.pid ?? 0);
  }

  private call(index: number, command: Command, timeoutMs = 60_000): Promise<unknown> {
    const worker = this.workers[index];
    if (!worker) return Promise.reject(new Error(`no worker ${index}`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`fake agent worker ${index}: ${command.op} took over ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      worker.child.send({ id, ...command });
    });
  }

  /** Registers `hosts`, dealt to the workers in contiguous shares; each advertises its worker's port. */
  async register(hosts: readonly HostSpec[]): Promise<void> {
    const share = Math.ceil(hosts.length / this.workers.length);
    await Promise.all(
      this.workers.map((_, i) =>
        this.call(i, { op: 'register', hosts: hosts.slice(i * share, (i + 1) * share) }),
      ),
    );
  }

  /** Switches every host's heartbeats (ending the previous mode's streams cleanly first). */
  async mode(mode: BeatMode): Promise<void> {
    await Promise.all(this.workers.map((_, i) => this.call(i, { op: 'mode', mode })));
  }

  /** Sets the containers each host reports (a changed report goes out on the host's next beat). */
  async reports(byHost: Record<string, ReportedContainer[]>): Promise<void> {
    await Promise.all(this.workers.map((_, i) => this.call(i, { op: 'reports', reports: byHost })));
  }

  /** Each worker's counters since the previous call (and resets them). */
  async stats(): Promise<BeatStats[]> {
    return (await Promise.all(this.workers.map((_, i) => this.call(i, { op: 'stats' })))) as BeatStats[];
  }

  /** Stops heartbeats and ends every worker (killed if it does not exit within 5 s). */
  async stop(): Promise<void> {
    await Promise.all(
      this.workers.map(async ({ child }, i) => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
        await this.call(i, { op: 'exit' }, 5000).catch(() => undefined);
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}

// ------------------------------------------------------------------ worker

interface SimHost {
  spec: HostSpec;
  bootId: string;
  seq: number;
  containers: ReportedContainer[];
  /** The report changed since it was last sent (or the stream is new). */
  dirty: boolean;
  stream: ClientRequest | undefined;
  agent: Agent | undefined;
  inFlight: boolean;
  /** Stream and datagram beats not acknowledged yet: seq → when sent. */
  sentAt: Map<number, number>;
  /** Where this registration's heartbeat datagrams go, and their key. */
  datagram: { port: number; key: string } | undefined;
  /** This host's UDP socket (datagram mode). */
  socket: Socket | undefined;
}

const SLOT_MS = 5;
const ACK = /^\{"ack":(\d+)/;

class Worker {
  private readonly hosts: SimHost[] = [];
  private mode: BeatMode = 'off';
  private ticker: NodeJS.Timeout | undefined;
  private slot = 0;
  private nextSlotAt = 0;
  private stats = Worker.emptyStats();
  private statsSince = performance.now();
  private oneShotsInFlight = 0;
  private readonly url: URL;

  constructor(
    private readonly config: WorkerConfig,
    private readonly advertise: string,
  ) {
    this.url = new URL(config.controller);
  }

  private static emptyStats(): Omit<BeatStats, 'hosts' | 'elapsedMs'> {
    return {
      sent: 0,
      reports: 0,
      acked: 0,
      errors: 0,
      skipped: 0,
      droppedPeriods: 0,
      backpressured: 0,
      latenciesMs: [],
      containersStarted: 0,
    };
  }

  noteStarted(): void {
    this.stats.containersStarted++;
  }

  private fail(message: string): void {
    this.stats.errors++;
    this.stats.lastError = message;
  }

  async register(specs: HostSpec[]): Promise<void> {
    let next = 0;
    const one = async (): Promise<void> => {
      while (next < specs.length) {
        const spec = specs[next++]!;
        const host: SimHost = {
          spec,
          bootId: randomBytes(16).toString('hex'),
          seq: 0,
          containers: [],
          dirty: true,
          stream: undefined,
          agent: undefined,
          inFlight: false,
          sentAt: new Map(),
          datagram: undefined,
          socket: undefined,
        };
        const registered = await callJson<{ heartbeat?: { udpPort: number; key: string } }>(
          this.config.controller,
          '/v1/hosts',
          this.config.token,
          {
            method: 'POST',
            timeoutMs: 30_000,
            body: {
              ...spec,
              address: this.advertise,
              labels: {},
              bootId: host.bootId,
              heartbeatMs: this.config.beatMs,
            },
          },
        );
        if (registered.heartbeat)
          host.datagram = { port: registered.heartbeat.udpPort, key: registered.heartbeat.key };
        this.hosts.push(host);
      }
    };
    await Promise.all(Array.from({ length: 16 }, one));
  }

  setReports(reports: Record<string, ReportedContainer[]>): void {
    for (const host of this.hosts) {
      const report = reports[host.spec.name];
      if (report) {
        host.containers = report;
        host.dirty = true;
      }
    }
  }

  takeStats(): BeatStats {
    const now = performance.now();
    const stats: BeatStats = { ...this.stats, hosts: this.hosts.length, elapsedMs: now - this.statsSince };
    this.stats = Worker.emptyStats();
    this.statsSince = now;
    return stats;
  }

  /**
   * Switches modes without a gap in the beats (the controller calls a host
   * silent for a second down): the new mode starts at once, and the old one's
   * streams or connections are closed beside it.
   */
  async setMode(mode: BeatMode): Promise<void> {
    if (this.ticker) clearInterval(this.ticker);
    this.ticker = undefined;
    const previous = this.mode;
    const streams = this.hosts.flatMap((h) => (h.stream ? [h.stream] : []));
    const agents = this.hosts.flatMap((h) => (h.agent ? [h.agent] : []));
    const sockets = this.hosts.flatMap((h) => (h.socket ? [h.socket] : []));
    for (const h of this.hosts) {
      h.stream = undefined;
      h.agent = undefined;
      h.socket = undefined;
      h.sentAt.clear();
    }
    this.mode = mode;
    if (mode !== 'off') {
      this.slot = 0;
      this.nextSlotAt = performance.now();
      this.ticker = setInterval(() => this.tick(), SLOT_MS);
    }
    if (previous === 'stream') await this.endStreams(streams);
    if (previous === 'datagram') {
      for (const socket of sockets) socket.close();
    }
    if (previous === 'oneshot') {
      // Let the last requests finish, then drop their keep-alive connections.
      const deadline = performance.now() + 5000;
      while (this.oneShotsInFlight > 0 && performance.now() < deadline) await sleep(10);
      for (const agent of agents) agent.destroy();
    }
  }

  private tick(): void {
    const slots = Math.max(1, Math.round(this.config.beatMs / SLOT_MS));
    const now = performance.now();
    let fired = 0;
    while (this.nextSlotAt <= now && fired < slots) {
      for (let i = this.slot; i < this.hosts.length; i += slots) this.beat(this.hosts[i]!);
      this.slot = (this.slot + 1) % slots;
      this.nextSlotAt += SLOT_MS;
      fired++;
    }
    if (this.nextSlotAt <= now) {
      // More than a whole period behind: drop it rather than burst.
      const behind = Math.floor((now - this.nextSlotAt) / this.config.beatMs) + 1;
      this.stats.droppedPeriods += behind;
      this.nextSlotAt += behind * this.config.beatMs;
    }
  }

  /** One heartbeat line, as the real agent builds it (REPORT_EVERY = 10, and every 5th report regardless). */
  private line(host: SimHost): string {
    const seq = host.seq++;
    const line: Record<string, unknown> = { seq, bootId: host.bootId };
    if (seq % 10 === 0 && (host.dirty || seq % 50 === 0)) {
      Object.assign(line, { containers: host.containers, protection: [], replicas: [] });
      host.dirty = false;
      this.stats.reports++;
    }
    return JSON.stringify(line);
  }

  private beat(host: SimHost): void {
    if (this.mode === 'datagram') {
      if (!host.datagram) throw new Error(`${host.spec.name}: the controller offered no heartbeat datagrams`);
      host.socket ??= this.openSocket(host);
      const seq = host.seq++;
      host.sentAt.set(seq, performance.now());
      host.socket.send(
        encodeHeartbeatDatagram({ host: host.spec.name, bootId: host.bootId, key: host.datagram.key, seq }),
        host.datagram.port,
        this.url.hostname,
      );
      this.stats.sent++;
      // The report rides on its own request, as the agent sends it, never holding a beat back.
      if (seq % 10 === 0 && (host.dirty || seq % 50 === 0) && !host.inFlight) {
        host.dirty = false;
        this.stats.reports++;
        this.oneShot(
          host,
          { seq, bootId: host.bootId, containers: host.containers, protection: [], replicas: [] },
          false,
        );
      }
    } else if (this.mode === 'stream') {
      host.stream ??= this.openStream(host);
      const line = this.line(host);
      host.sentAt.set(host.seq - 1, performance.now());
      const ok = host.stream.write(`${line}\n`);
      this.stats.sent++;
      if (!ok) this.stats.backpressured++;
    } else if (this.mode === 'oneshot') {
      host.agent ??= new Agent({ keepAlive: true, maxSockets: 1 });
      if (host.inFlight) {
        this.stats.skipped++;
        return;
      }
      this.oneShot(host);
    }
  }

  /** A UDP socket for one host's datagrams; an acknowledgement covers every beat up to its seq. */
  private openSocket(host: SimHost): Socket {
    const socket = createSocket('udp4');
    socket.on('message', (bytes) => {
      if (host.socket !== socket) return;
      const answer = parseHeartbeatAnswer(bytes);
      if (!answer || 'error' in answer) {
        this.fail(`datagrams of ${host.spec.name}: ${bytes.toString().slice(0, 200)}`);
        return;
      }
      this.ackUpTo(host, answer.ack);
    });
    socket.on('error', (error) => this.fail(`datagrams of ${host.spec.name}: ${error.message}`));
    return socket;
  }

  /** Counts every beat of `host` up to `seq` as acknowledged. */
  private ackUpTo(host: SimHost, seq: number): void {
    for (const [sent, at] of host.sentAt) {
      if (sent > seq) continue;
      this.acked(at);
      host.sentAt.delete(sent);
    }
  }

  /** A beat acknowledged (stream: its ack line; one-shot: its 200), counted in the period it was sent in. */
  private acked(sentAt: number | undefined): void {
    if (sentAt === undefined || sentAt < this.statsSince) return;
    this.stats.acked++;
    this.stats.latenciesMs.push(performance.now() - sentAt);
  }

  /**
   * One long-lived request per host. The controller answers 200 at once and
   * then a line per heartbeat (`{"ack":seq}`, with `primaries` after a
   * report), as `src/agent/cluster-link.ts` reads them; any other answer, an
   * error line or the end of the answer ends the stream (the next beat opens
   * another).
   */
  private openStream(host: SimHost): ClientRequest {
    const stream = request({
      host: this.url.hostname,
      port: this.url.port,
      path: `/v1/hosts/${host.spec.name}/heartbeats`,
      method: 'POST',
      agent: false,
      headers: {
        authorization: `Bearer ${this.config.token}`,
        'content-type': 'application/x-ndjson',
      },
    });
    host.dirty = true; // a new stream starts with the full report, as the agent's does
    host.sentAt.clear();
    const drop = (why: string): void => {
      if (host.stream !== stream) return;
      this.fail(`stream of ${host.spec.name}: ${why}`);
      host.stream = undefined;
      stream.destroy();
    };
    stream.on('response', (res) => {
      res.setEncoding('utf8');
      const lines = new RecordSplitter((line) => {
        const seq = ACK.exec(line)?.[1];
        // The controller coalesces acknowledgements: one line covers every beat up to its seq.
        if (res.statusCode === 200 && seq !== undefined) this.ackUpTo(host, Number(seq));
        else drop(`answered ${res.statusCode}: ${line.slice(0, 200)}`);
      });
      res.on('data', (chunk: string) => lines.push(chunk));
      res.on('end', () =>
        drop(`the controller ended the stream (${res.statusCode} ${lines.pending.slice(0, 200)})`),
      );
    });
    stream.on('error', (error) => drop(error.message));
    return stream;
  }

  /** Ends streams as the agent would on shutdown: the controller then ends its answer. */
  private async endStreams(streams: ClientRequest[]): Promise<void> {
    await Promise.all(
      streams.map(
        (stream) =>
          new Promise<void>((resolve) => {
            const timer = setTimeout(() => {
              stream.destroy();
              resolve();
            }, 5000);
            stream.once('close', () => {
              clearTimeout(timer);
              resolve();
            });
            stream.end();
          }),
      ),
    );
  }

  /**
   * One request to `/heartbeat`: a beat (the baseline: `line` built here,
   * counted as a beat) or, in datagram mode, a report (not counted as a beat;
   * a failure is still an error).
   */
  private oneShot(host: SimHost, report?: Record<string, unknown>, countAsBeat = true): void {
    const body = Buffer.from(report ? JSON.stringify(report) : this.line(host));
    const started = performance.now();
    host.inFlight = true;
    host.agent ??= new Agent({ keepAlive: true, maxSockets: 1 });
    this.oneShotsInFlight++;
    if (countAsBeat) this.stats.sent++;
    let done = false;
    const finish = (error?: string): void => {
      if (done) return;
      done = true;
      host.inFlight = false;
      this.oneShotsInFlight--;
      if (error) this.fail(`heartbeat of ${host.spec.name}: ${error}`);
      else if (countAsBeat) this.acked(started);
    };
    const req = request(
      {
        host: this.url.hostname,
        port: this.url.port,
        path: `/v1/hosts/${host.spec.name}/heartbeat`,
        method: 'POST',
        agent: host.agent,
        timeout: 10_000,
        headers: {
          authorization: `Bearer ${this.config.token}`,
          'content-type': 'application/json',
          'content-length': String(body.length),
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => finish(res.statusCode === 200 ? undefined : `answered ${res.statusCode}`));
        res.on('error', (error) => finish(error.message));
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer in 10 s')));
    req.on('error', (error) => finish(error.message));
    req.end(body);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The fake agent API every simulated host of this worker advertises. */
function fakeAgentServer(worker: () => Worker | undefined): Server {
  let pid = 10_000;
  return createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const reply = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      };
      if (req.method === 'GET' && req.url === '/v1/containers') return reply(200, []);
      // Asked before a silent host is failed over whether we reach it: every fake host is alive.
      if (req.method === 'POST' && req.url === '/v1/probe')
        return reply(200, { reachable: true, agent: true, ms: 0 });
      // A stale copy fenced.
      if (req.method === 'DELETE' && req.url?.startsWith('/v1/containers/'))
        return reply(200, { removed: true });
      if (req.method === 'POST' && req.url === '/v1/containers') {
        let body: { name?: unknown; ip?: unknown };
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { name?: unknown; ip?: unknown };
        } catch {
          return reply(400, { error: 'malformed JSON' });
        }
        worker()?.noteStarted();
        return reply(200, {
          name: String(body.name),
          state: 'running',
          pid: pid++,
          ip: (typeof body.ip === 'string' ? body.ip : '').split('/')[0],
          host: 'fake',
        });
      }
      reply(404, { error: `no route ${req.method} ${req.url}` });
    });
  });
}

async function workerMain(config: WorkerConfig): Promise<void> {
  const holder: { worker?: Worker } = {};
  const server = fakeAgentServer(() => holder.worker);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const self = new Worker(config, `http://127.0.0.1:${port}`);
  holder.worker = self;
  process.on('message', (message: { id: number } & Command) => {
    const run = async (): Promise<unknown> => {
      switch (message.op) {
        case 'register':
          return self.register(message.hosts);
        case 'mode':
          return self.setMode(message.mode);
        case 'reports':
          return self.setReports(message.reports);
        case 'stats':
          return self.takeStats();
        case 'exit':
          await self.setMode('off');
          server.closeAllConnections();
          server.close();
          process.disconnect();
          return undefined;
      }
    };
    run().then(
      (result) => process.connected && process.send?.({ id: message.id, ok: true, result }),
      (error: unknown) =>
        process.connected &&
        process.send?.({
          id: message.id,
          ok: false,
          error: error instanceof Error ? error.message : String(error),
        }),
    );
  });
  // The parent going away (crash, kill) ends the worker too.
  process.on('disconnect', () => process.exit(0));
  process.send?.({ port });
}

if (process.argv[2] === WORKER_FLAG) {
  workerMain(JSON.parse(process.argv[3] ?? '{}') as WorkerConfig).catch((error: unknown) => {
    process.stderr.write(`fake agent worker: ${String(error)}\n`);
    process.exit(1);
  });
}
