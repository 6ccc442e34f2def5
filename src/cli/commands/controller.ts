import { readFileSync } from 'node:fs';
import { chmod, mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  createServer,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { Etcd3 } from 'etcd3';
import { InvalidArgumentError } from '../../core/errors.js';
import { sendJson } from '../../core/http.js';
import { callJson } from '../../core/http-client.js';
import { logger } from '../../core/log.js';
import { daemonTls, serverTlsOptions, TLS_FILES } from '../../core/tls.js';
import { EtcdStore, etcdClientOptions, type EtcdClientTls } from '../../controller/etcd-store.js';
import { LeaderElection } from '../../controller/leader.js';
import { CachedStore } from '../../controller/cached-store.js';
import { Controller, DEFAULT_FAILURE_MS } from '../../controller/controller.js';
import { ImageRegistry } from '../../controller/image-registry.js';
import { receiveHeartbeatDatagrams, type DatagramStats } from '../../controller/heartbeat-udp.js';
import { instrumentController } from '../../controller/metrics.js';
import { createControllerServer, type ControllerServerOptions } from '../../controller/server.js';
import { SqliteStore } from '../../controller/sqlite-store.js';
import type { ClusterStore, StoredEvent } from '../../controller/store.js';
import type { Command } from '../command.js';
import { parseListen, readToken } from './agent.js';

const log = logger('controller');
const orderLog = logger('controller.orders');

const usage =
  'haven controller [--listen HOST:PORT] [--socket PATH] [--state-dir DIR] [--token-file FILE] [--failure-ms MS]\n' +
  '                 [--store sqlite|etcd --etcd URL,URL,... --advertise URL] [--images-dir DIR]\n' +
  '                 [--etcd-tls-dir DIR]   (https:// etcd: its CA and a client certificate it trusts)\n' +
  '                 [--tls-dir DIR]   (or HAVEN_TLS_DIR: HTTPS on TCP with mutual TLS, see haven init --tls)';

/**
 * How long a decision waits for the leader's lease to be confirmed before it
 * is refused for want of quorum: longer than etcd takes to elect a new raft
 * leader after losing one (500 ms election timeout in the lab).
 */
const DECISION_WAIT_MS = 2_000;
/**
 * The client certificate for an etcd reached over `https://` endpoints, from
 * `--etcd-tls-dir` (ca.pem: the CA of etcd's certificates; cert.pem and
 * key.pem: a client certificate etcd trusts — etcd's own PKI, apart from the
 * cluster CA, so that no agent's or CLI's certificate opens the store).
 * Plain `http://` endpoints take none; mixing the two is refused.
 */
function etcdClientTls(endpoints: string[], dir: unknown): EtcdClientTls | undefined {
  const secure = endpoints.filter((e) => e.startsWith('https://'));
  if (secure.length === 0) {
    if (typeof dir === 'string')
      throw new InvalidArgumentError('--etcd-tls-dir is for https:// etcd endpoints; these are http://');
    return undefined;
  }
  if (secure.length !== endpoints.length)
    throw new InvalidArgumentError('--etcd endpoints must all be https:// or all http://');
  if (typeof dir !== 'string')
    throw new InvalidArgumentError(
      "https:// etcd endpoints need --etcd-tls-dir DIR (ca.pem, cert.pem, key.pem: etcd's CA and a client certificate it trusts)",
    );
  const read = (file: string): string => {
    try {
      return readFileSync(join(dir, file), 'utf8');
    } catch (error) {
      throw new InvalidArgumentError(
        `--etcd-tls-dir ${dir}: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)})`,
      );
    }
  };
  return { ca: read(TLS_FILES.ca), cert: read(TLS_FILES.cert), key: read(TLS_FILES.key) };
}

/** Exit status of a deposed leader: its supervisor (systemd, the lab) restarts it as a standby. */
export const EXIT_DEPOSED = 75;

/**
 * `haven controller`: the cluster's controller, serving its API on TCP (for
 * agents) and on a Unix socket (for the CLI on this machine).
 *
 * `--store sqlite` (default): the embedded store in `--state-dir` (default
 * /var/lib/haven/controller); this controller is the only one.
 *
 * `--store etcd --etcd URLS`: one of several controllers sharing etcd. It
 * campaigns (controller/leader.ts); until elected it answers every request
 * with a 503 naming the leader (agents and the CLI, given every
 * controller's address, go there), and binds neither the heartbeat port
 * nor `--socket`. Once elected it loads the cluster from etcd, claims the
 * operations the last leader left unfinished, and serves. Deposed (its
 * lease gone), it exits at once ({@link EXIT_DEPOSED}) rather than risk a
 * decision: its supervisor restarts it as a standby.
 */
export const controllerCommand: Command = {
  name: 'controller',
  summary: 'run the cluster controller (embedded store, or one of several on etcd)',
  usage,
  options: {
    listen: { type: 'string' },
    socket: { type: 'string' },
    'token-file': { type: 'string' },
    'failure-ms': { type: 'string' },
    store: { type: 'string' },
    etcd: { type: 'string' },
    advertise: { type: 'string' },
    'images-dir': { type: 'string' },
    'tls-dir': { type: 'string' },
    'etcd-tls-dir': { type: 'string' },
  },
  async run(inv) {
    const token = readToken(inv.values['token-file']);
    // Mutual TLS when a TLS directory is given: HTTPS on TCP (the Unix socket stays plain, 0600),
    // and this certificate on every order to an agent.
    const tls = daemonTls(inv.values['tls-dir']);
    const stateDir =
      typeof inv.values['state-dir'] === 'string' ? inv.values['state-dir'] : '/var/lib/haven/controller';
    await mkdir(stateDir, { recursive: true });
    const failureMs =
      typeof inv.values['failure-ms'] === 'string' ? Number(inv.values['failure-ms']) : DEFAULT_FAILURE_MS;
    const storeKind = typeof inv.values.store === 'string' ? inv.values.store : 'sqlite';
    if (storeKind !== 'sqlite' && storeKind !== 'etcd')
      throw new InvalidArgumentError(`invalid --store "${storeKind}": sqlite or etcd`);
    const listenText = typeof inv.values.listen === 'string' ? inv.values.listen : '127.0.0.1:7070';
    const listen = parseListen(listenText);
    const socket = typeof inv.values.socket === 'string' ? inv.values.socket : undefined;
    const images = new ImageRegistry(
      typeof inv.values['images-dir'] === 'string' ? inv.values['images-dir'] : join(stateDir, 'images'),
    );

    // ---- the control plane: alone on SQLite, or elected among several on etcd
    let election: LeaderElection | undefined;
    let etcd: Etcd3 | undefined;
    let openStore: () => Promise<ClusterStore>;
    if (storeKind === 'etcd') {
      if (typeof inv.values.etcd !== 'string')
        throw new InvalidArgumentError('--store etcd needs --etcd URL[,URL...]');
      const endpoints = inv.values.etcd.split(',').filter((e) => e.length > 0);
      const etcdTls = etcdClientTls(endpoints, inv.values['etcd-tls-dir']);
      const advertise =
        typeof inv.values.advertise === 'string'
          ? inv.values.advertise
          : `${tls ? 'https' : 'http'}://${listenText}`;
      etcd = new Etcd3(etcdClientOptions(endpoints, etcdTls));
      election = new LeaderElection({ client: etcd, address: advertise });
      const client = etcd;
      const elected = election;
      openStore = () => Promise.resolve(new EtcdStore({ endpoints, client, fence: elected.fence! }));
    } else {
      openStore = () => Promise.resolve(new SqliteStore(join(stateDir, 'cluster.db')));
    }

    // The API listens from the start: a standby answers "not the leader" until it leads.
    const state = { serving: false };
    const gate =
      (inner: RequestListener): RequestListener =>
      (req, res) => {
        if (!state.serving) return notLeader(res, election);
        if (election && !election.mayDecide() && decides(req)) {
          void election.awaitDecisions(DECISION_WAIT_MS).then((may) =>
            may
              ? inner(req, res)
              : sendJson(res, 503, {
                  error: 'this controller cannot reach an etcd quorum: it decides nothing until it can',
                  code: 'unavailable',
                }),
          );
          return;
        }
        inner(req, res);
      };
    const servers: Server[] = [];
    const tcpOptions: ControllerServerOptions = {
      controller: undefined as unknown as Controller,
      images,
      token,
    };
    const tcpInner = createControllerServer(tcpOptions);
    const tcpHandler = tcpInner.listeners('request')[0] as RequestListener;
    const tcpListener = gate((req, res) => tcpHandler(req, res));
    const tcp = tls ? createHttpsServer(serverTlsOptions(tls), tcpListener) : createServer(tcpListener);
    Object.assign(tcp, {
      requestTimeout: tcpInner.requestTimeout,
      headersTimeout: tcpInner.headersTimeout,
      keepAliveTimeout: tcpInner.keepAliveTimeout,
    });
    let port = 0;
    const listenTcp = async (): Promise<void> => {
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        // A thousand agents reconnecting at once (after a restart) must not overflow the accept queue.
        tcp.listen({ port: listen.port, host: listen.host, backlog: 4096 }, () => resolve());
      });
      servers.push(tcp);
      port = (tcp.address() as AddressInfo).port;
    };
    // A standby listens at once (to send clients to the leader); a lone controller only once it serves.
    if (election) await listenTcp();

    let stopping = false;
    let wake: () => void = () => undefined;
    const stopped = new Promise<void>((resolve) => (wake = resolve));
    const stop = (): void => {
      stopping = true;
      wake();
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);

    let waitedMs = 0;
    if (election) {
      log.info(`standing by on ${listenText}: campaigning for leader`, { listen: listenText });
      const since = Date.now();
      const won = await Promise.race([election.campaign().then(() => true), stopped.then(() => false)]);
      if (!won) {
        await shutDown(servers, election, etcd);
        return 0;
      }
      waitedMs = Date.now() - since;
      // Deposed: every write would be refused anyway; exit before anything is ordered on stale beliefs.
      election.on('deposed', (why: string) => {
        log.error(`deposed (${why}): exiting; restarted, this controller stands by`, { why });
        process.exit(EXIT_DEPOSED);
      });
    }

    const store = await CachedStore.over(await openStore());
    if (election) {
      // The first thing a new leader records: that it took office, with its fencing generation.
      await store.appendEvent('controller.elected', election.options.address, {
        generation: election.fence!.createRevision,
        campaignedMs: waitedMs,
      });
    }
    const controller = new Controller({
      store,
      images,
      failureAfterMs: Number.isFinite(failureMs) && failureMs >= 100 ? failureMs : DEFAULT_FAILURE_MS,
      callAgent: (host, path, options = {}) => {
        // Every order (not a read) is logged: with several controllers, the log shows who ordered what —
        // the end-to-end test counts them across a change of leader.
        if (options.method && options.method !== 'GET')
          orderLog.info(`order ${options.method} ${path} to ${host.name}`, {
            host: host.name,
            method: options.method,
            path,
          });
        return callJson(host.address, path, token, { timeoutMs: 600_000, ...options });
      },
      ...failpointsFrom(process.env.HAVEN_FAILPOINTS),
      ...(election ? { mayDecide: () => election.mayDecide() } : {}),
    });
    tcpOptions.controller = controller;
    controller.events.on('event', logEvent);
    // Hosts that died while no controller ran never register: watched from now on.
    const adopted = await controller.adoptKnownHosts();
    if (adopted > 0) log.info(`watching ${adopted} known host(s) until they register`, { hosts: adopted });
    // Before the API serves: a failover cut short by the last controller (or
    // the last leader) is claimed before any heartbeat could take its
    // promoted copy for a stray.
    const resumed = await controller.resumeOperations();
    if (resumed > 0) log.info(`resuming ${resumed} unfinished operation(s)`, { operations: resumed });
    controller.start();
    state.serving = true;
    if (!election) await listenTcp();
    // Heartbeat datagrams arrive on the API's port number, over UDP; agents learn it as they register.
    const stats: DatagramStats = { beats: 0, refused: 0, malformed: 0 };
    const datagrams = await receiveHeartbeatDatagrams(controller, { host: listen.host, port }, stats);
    // Once per process (both servers serve the same registry): events counted, hosts read at each scrape.
    instrumentController(controller, stats);
    tcpOptions.datagramPort = port;
    let socketInode: number | undefined;
    if (socket) {
      await mkdir(dirname(socket), { recursive: true });
      const unix = createServer(
        gate(
          createControllerServer({ controller, images, token }).listeners('request')[0] as RequestListener,
        ),
      );
      unix.requestTimeout = 0;
      unix.keepAliveTimeout = 30_000;
      // Bound under a name of its own, then renamed over the socket a killed
      // controller (or the last leader) left: the path never goes missing
      // while a controller restarts. A CLI that finds no socket acts on the
      // local host, and would answer "no such container" for the cluster's.
      const bound = `${socket}.${process.pid}`;
      await rm(bound, { force: true });
      await new Promise<void>((resolve, reject) => {
        unix.once('error', reject);
        unix.listen(bound, () => resolve());
      });
      await chmod(bound, 0o600);
      await rename(bound, socket);
      socketInode = (await stat(socket)).ino;
      servers.push(unix);
    }
    log.info(
      `listening on ${listenText}${socket ? ` and ${socket}` : ''}, heartbeat datagrams on udp ${port} (${
        election
          ? `leader on etcd, fencing generation ${election.fence!.createRevision}`
          : `state in ${stateDir}`
      })`,
      { listen: listenText, socket, udpPort: port, stateDir, store: storeKind },
    );
    if (!stopping) await stopped;
    controller.stop();
    datagrams.close();
    await shutDown(servers, election, etcd);
    await store.close();
    // Removed only if it is still ours: a leader that took over since has bound its own there.
    if (socket && (await stat(socket).catch(() => undefined))?.ino === socketInode)
      await rm(socket, { force: true });
    return 0;
  },
};

/** Closes the API servers, resigns (a standby takes over at once) and closes the etcd client. */
async function shutDown(servers: Server[], election?: LeaderElection, etcd?: Etcd3): Promise<void> {
  await Promise.all(
    servers.map(
      (s) =>
        new Promise<void>((resolve) => {
          s.close(() => resolve());
          s.closeAllConnections();
        }),
    ),
  );
  await election?.stop();
  etcd?.close();
}

/** A standby's answer to everything: 503, and where the leader is (agents and the CLI go there). */
function notLeader(res: ServerResponse, election: LeaderElection | undefined): void {
  const leader = election?.leaderAddress;
  sendJson(res, 503, {
    error: leader
      ? `this controller is a standby; the leader is at ${leader}`
      : 'this controller is a standby; no leader is elected yet',
    code: 'unavailable',
    leader: leader ?? null,
  });
}

/**
 * Whether a request asks for a decision (refused without an etcd quorum).
 * Reads, registrations and heartbeats are not: liveness and acknowledgements
 * must go on — agents' fencing leases depend on them.
 */
function decides(req: IncomingMessage): boolean {
  if (req.method === 'GET' || req.method === 'HEAD') return false;
  const path = (req.url ?? '/').split('?', 1)[0] ?? '/';
  return !/^\/v1\/hosts(\/[^/]+\/heartbeats?)?$/.test(path) && !path.startsWith('/ui/');
}

const hostLog = logger('controller.hosts');
const failoverLog = logger('controller.failover');
const containerLog = logger('controller.containers');

/**
 * Every cluster event also goes to the log (the store keeps them for `haven
 * events`; the log is what journald or Loki collect), under the module of
 * what it concerns, as a warning when something went wrong.
 */
function logEvent(event: StoredEvent): void {
  const log = event.kind.startsWith('host.')
    ? hostLog
    : /failed-over|failover|switch|operation|epoch-damaged|fenced/.test(event.kind)
      ? failoverLog
      : containerLog;
  const level = /failed|damaged|crash-loop|down|abandoned|unhealthy|exited/.test(event.kind)
    ? 'warn'
    : 'info';
  log[level](`${event.kind} ${event.subject}`, {
    ...event.data,
    event: event.kind,
    subject: event.subject,
    seq: event.seq,
  });
}

/**
 * Test-only failpoints: `HAVEN_FAILPOINTS=failover.promoted,...` makes the
 * controller SIGKILL itself right after recording that step of an operation
 * it began (see `ControllerOptions.failpoint`), as a crash at the worst
 * moment would. Never set in production.
 */
function failpointsFrom(value: string | undefined): { failpoint?: (step: string) => void } {
  const steps = new Set((value ?? '').split(',').filter((s) => s.length > 0));
  if (steps.size === 0) return {};
  return {
    failpoint: (step) => {
      if (!steps.has(step)) return;
      log.warn(`failpoint ${step}: killing myself`, { failpoint: step });
      process.kill(process.pid, 'SIGKILL');
    },
  };
}
