import { chmod, mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { callJson } from '../../core/http-client.js';
import { logger } from '../../core/log.js';
import { CachedStore } from '../../controller/cached-store.js';
import { Controller, DEFAULT_FAILURE_MS } from '../../controller/controller.js';
import { ImageRegistry } from '../../controller/image-registry.js';
import { receiveHeartbeatDatagrams, type DatagramStats } from '../../controller/heartbeat-udp.js';
import { instrumentController } from '../../controller/metrics.js';
import { createControllerServer, type ControllerServerOptions } from '../../controller/server.js';
import { SqliteStore } from '../../controller/sqlite-store.js';
import type { StoredEvent } from '../../controller/store.js';
import type { Command } from '../command.js';
import { parseListen, readToken } from './agent.js';

const log = logger('controller');

const usage =
  'haven controller [--listen HOST:PORT] [--socket PATH] [--state-dir DIR] [--token-file FILE] [--failure-ms MS]';

/**
 * `haven controller`: the cluster's controller, on the embedded SQLite store
 * in `--state-dir` (default /var/lib/haven/controller), serving its API on TCP
 * (for agents) and on a Unix socket (for the CLI on this machine).
 */
export const controllerCommand: Command = {
  name: 'controller',
  summary: 'run the cluster controller (embedded store, API on TCP and a Unix socket)',
  usage,
  options: {
    listen: { type: 'string' },
    socket: { type: 'string' },
    'token-file': { type: 'string' },
    'failure-ms': { type: 'string' },
  },
  async run(inv) {
    const token = readToken(inv.values['token-file']);
    const stateDir =
      typeof inv.values['state-dir'] === 'string' ? inv.values['state-dir'] : '/var/lib/haven/controller';
    await mkdir(stateDir, { recursive: true });
    const failureMs =
      typeof inv.values['failure-ms'] === 'string' ? Number(inv.values['failure-ms']) : DEFAULT_FAILURE_MS;
    const store = await CachedStore.over(new SqliteStore(join(stateDir, 'cluster.db')));
    const images = new ImageRegistry(join(stateDir, 'images'));
    const controller = new Controller({
      store,
      images,
      failureAfterMs: Number.isFinite(failureMs) && failureMs >= 100 ? failureMs : DEFAULT_FAILURE_MS,
      callAgent: (host, path, options = {}) =>
        callJson(host.address, path, token, { timeoutMs: 600_000, ...options }),
      ...failpointsFrom(process.env.HAVEN_FAILPOINTS),
    });
    // Before the API listens: a failover cut short by the last controller is
    // claimed before any heartbeat could take its promoted copy for a stray.
    const resumed = await controller.resumeOperations();
    if (resumed > 0) log.info(`resuming ${resumed} unfinished operation(s)`, { operations: resumed });
    controller.start();
    const servers: Server[] = [];
    const listenText = typeof inv.values.listen === 'string' ? inv.values.listen : '127.0.0.1:7070';
    const listen = parseListen(listenText);
    // Heartbeat datagrams arrive on the API's port number, over UDP; agents learn it as they register.
    const tcpOptions: ControllerServerOptions = { controller, images, token };
    const tcp = createControllerServer(tcpOptions);
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      // A thousand agents reconnecting at once (after a restart) must not overflow the accept queue.
      tcp.listen({ port: listen.port, host: listen.host, backlog: 4096 }, () => resolve());
    });
    servers.push(tcp);
    const port = (tcp.address() as AddressInfo).port;
    const stats: DatagramStats = { beats: 0, refused: 0, malformed: 0 };
    const datagrams = await receiveHeartbeatDatagrams(controller, { host: listen.host, port }, stats);
    // Once per process (both servers serve the same registry): events counted, hosts read at each scrape.
    instrumentController(controller, stats);
    controller.events.on('event', logEvent);
    tcpOptions.datagramPort = port;
    const socket = typeof inv.values.socket === 'string' ? inv.values.socket : undefined;
    if (socket) {
      await mkdir(dirname(socket), { recursive: true });
      await rm(socket, { force: true }); // a socket file left by a killed controller
      const unix = createControllerServer({ controller, images, token });
      await new Promise<void>((resolve, reject) => {
        unix.once('error', reject);
        unix.listen(socket, () => resolve());
      });
      await chmod(socket, 0o600);
      servers.push(unix);
    }
    log.info(
      `listening on ${listenText}${socket ? ` and ${socket}` : ''}, heartbeat datagrams on udp ${port} (state in ${stateDir})`,
      { listen: listenText, socket, udpPort: port, stateDir },
    );
    await new Promise<void>((resolve) => {
      const stop = (): void => {
        controller.stop();
        datagrams.close();
        let open = servers.length;
        for (const s of servers) {
          s.close(() => --open === 0 && resolve());
          s.closeAllConnections();
        }
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    });
    await store.close();
    if (socket) await rm(socket, { force: true });
    return 0;
  },
};

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
