/**
 * The controller's HTTP API, for the CLI, the dashboard and agents. Every
 * request carries the cluster token; every input is validated by a schema
 * (`schemas.ts`); errors map to 4xx with a message (`core/http.ts`).
 *
 *   GET    /v1/health
 *   GET    /v1/hosts                              → HostView[]
 *   POST   /v1/hosts                              (registerHostSchema) an agent joins;
 *                                                  → HostView & { heartbeat?: { udpPort, key } }
 *   POST   /v1/hosts/:name/heartbeats             NDJSON stream of heartbeats (one per line)
 *   POST   /v1/hosts/:name/heartbeat              one heartbeat or report (heartbeatSchema)
 *   POST   /v1/hosts/:name/cordon | /uncordon
 *   GET    /v1/images                             → RegistryImage[]
 *   PUT    /v1/images[?name=N][&id=sha256:…]       body: the image tar
 *   GET    /v1/images/:ref                        → the tar
 *   GET    /v1/containers                         → ClusterContainerView[]
 *   POST   /v1/containers                         (clusterRunSchema) place and run
 *   GET    /v1/containers/:name                   → ClusterContainerView & { detail }
 *   GET    /v1/containers/:name/logs              → text
 *   POST   /v1/containers/:name/checkpoint|restore|stop
 *   POST   /v1/containers/:name/failover          planned switchover to its backup → SwitchoverReport
 *   POST   /v1/containers/:name/migrate           (migrateRequestSchema) live migration → MigrationReport
 *   POST   /v1/hosts/:name/drain                  (drainRequestSchema) cordon, migrate all off → DrainReport
 *   DELETE /v1/containers/:name[?force=true]
 *   GET    /v1/events[?since=N][&follow=true]     → JSON, or server-sent events when following
 *   GET    /metrics                               Prometheus text format (controller/metrics.ts)
 *   POST   /v1/dashboard/logins                   (cluster token only) a one-time login URL → LoginGrant
 *   GET    /ui/…                                  the dashboard: its files, login and session (dashboard.ts)
 *
 * The dashboard's page calls these routes with a session cookie instead of
 * the token: any GET, and its actions (failover, migrate, drain, cordon)
 * with a CSRF header — see dashboard.ts.
 *
 * Plain heartbeats travel as UDP datagrams (heartbeat-udp.ts), reports as
 * one request each every tenth beat at most; where datagrams cannot go (a
 * controller reached through a Unix socket), as lines on one long-lived
 * request per agent. A request per heartbeat would not do: at 10 beats/s from
 * 1,000 hosts, per-request HTTP overhead alone takes most of a core.
 */
import { createReadStream } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import {
  checkpointRequestSchema,
  nameSchema,
  restoreRequestSchema,
  stopRequestSchema,
} from '../agent/schemas.js';
import { authorizeControllerCall, authorizeRegistration } from '../core/access.js';
import {
  decode,
  HttpError,
  readJsonBody,
  routeParts,
  sendError,
  sendJson,
  type Caller,
} from '../core/http.js';
import { sendMetrics } from '../core/metrics.js';
import { RecordSplitter } from '../core/records.js';
import { peerOf, serverTlsOptions, type TlsIdentity } from '../core/tls.js';
import type { Controller } from './controller.js';
import { authenticate, dashboardAuthFor, handleUi, isUiPath } from './dashboard.js';
import { controllerMetrics, countRequest, heartbeatsByRequest, heartbeatsOnStream } from './metrics.js';
import type { ImageRegistry } from './image-registry.js';
import {
  clusterRunSchema,
  cordonSchema,
  drainRequestSchema,
  eventsQuerySchema,
  heartbeatSchema,
  hostNameSchema,
  migrateRequestSchema,
  registerHostSchema,
} from './schemas.js';
import type { StoredEvent } from './store.js';
import { z } from 'zod';

/** `POST /v1/containers/:name/failover` takes no options (yet): an empty object. */
const failoverRequestSchema = z.object({}).strict();

/** `POST /v1/dashboard/logins` takes no options: an empty object. */
const loginRequestSchema = z.object({}).strict();

/** Options of {@link createControllerServer}. */
export interface ControllerServerOptions {
  controller: Controller;
  images: ImageRegistry;
  token: string;
  /** The UDP port heartbeat datagrams are received on (see heartbeat-udp.ts), told to agents as they register. */
  datagramPort?: number;
  /** Serve HTTPS with this identity, asking clients for certificates of its CA (mutual TLS); else plain HTTP. */
  tls?: TlsIdentity;
}

/** At most one plain acknowledgement per stream this often (well inside an agent's 500 ms lease). */
const ACK_EVERY_MS = 100;

/** Longest heartbeat line accepted (a report of 10,000 containers fits). */
const MAX_HEARTBEAT_LINE = 4 * 1024 * 1024;

const imageQuerySchema = z.object({
  name: z
    .string()
    .regex(/^[a-z0-9][a-z0-9_.-]{0,62}$/)
    .optional(),
  id: z
    .string()
    .regex(/^sha256:[0-9a-f]{64}$/)
    .optional(),
});

/** Builds the controller's HTTP server (not yet listening; listen on TCP and/or a Unix socket). */
export function createControllerServer(options: ControllerServerOptions): Server {
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    // Counted once answered (or cut off: a heartbeat stream ends by closing), by route template.
    res.once('close', () =>
      countRequest(req.method, (req.url ?? '/').split('?', 1)[0] ?? '/', res.statusCode),
    );
    handle(req, res, options).catch((error: unknown) => sendError(res, error, 'controller'));
  };
  // With a TLS identity: HTTPS, clients asked for a certificate of this cluster (scripts may still use the token).
  const server = options.tls
    ? createHttpsServer(serverTlsOptions(options.tls), handler)
    : createServer(handler);
  // Heartbeat streams and event followers stay open for as long as their peer does.
  server.requestTimeout = 0;
  server.headersTimeout = 10_000;
  server.keepAliveTimeout = 30_000;
  return server;
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  options: ControllerServerOptions,
): Promise<void> {
  const dashboard = dashboardAuthFor(options.controller, options.token);
  // The dashboard's files and login come before authentication: they are how a browser gets a session.
  if (isUiPath((req.url ?? '/').split('?', 1)[0] ?? '/')) return handleUi(req, res, dashboard);
  // Under mTLS a certificate of this cluster speaks for its role and host (an agent's may only
  // register itself and beat: core/access.ts); without one, the token or a dashboard session.
  const peer = peerOf(req);
  if (peer.kind === 'refused') throw new HttpError(401, `client certificate refused: ${peer.reason}`);
  const caller: Caller =
    peer.kind === 'certificate'
      ? { kind: 'certificate', role: peer.role, host: peer.host }
      : { kind: 'token' };
  const principal = peer.kind === 'certificate' ? 'token' : authenticate(req, options.token, dashboard);
  // Prometheus scrapes /metrics by convention, outside the versioned API.
  if (req.method === 'GET' && (req.url ?? '').split('?', 1)[0] === '/metrics') {
    authorizeControllerCall(caller, req.method, null);
    return sendMetrics(res, controllerMetrics);
  }
  const { controller, images } = options;
  const { parts, url, method } = routeParts(req);
  authorizeControllerCall(caller, method, parts);
  const [resource, id, action, ...extra] = parts;
  if (extra.length > 0) throw new HttpError(404, `no route ${url.pathname}`);

  if (resource === 'health' && !id && method === 'GET')
    return sendJson(res, 200, { ok: true, role: 'controller' });

  if (resource === 'dashboard' && id === 'logins' && !action && method === 'POST') {
    // Only the holder of the cluster token hands out logins; a session cannot mint more.
    if (principal !== 'token') throw new HttpError(403, 'a login URL needs the cluster token');
    decode(loginRequestSchema, await readJsonBody(req));
    return sendJson(res, 201, dashboard.mintLogin());
  }

  if (resource === 'hosts') {
    if (!id) {
      if (method === 'GET') return sendJson(res, 200, await controller.listHosts());
      if (method === 'POST') {
        const request = decode(registerHostSchema, await readJsonBody(req));
        authorizeRegistration(caller, request.name);
        const { beatKey, ...host } = await controller.registerHost(request);
        // Where and with what key this registration's heartbeat datagrams go.
        const heartbeat = options.datagramPort ? { udpPort: options.datagramPort, key: beatKey } : undefined;
        return sendJson(res, 200, { ...host, heartbeat });
      }
    } else {
      const name = decode(hostNameSchema, id);
      if (action === 'heartbeats' && method === 'POST') return heartbeatStream(req, res, controller, name);
      if (action === 'heartbeat' && method === 'POST') {
        // One heartbeat per request: how agents beating by datagram send their
        // reports (and the benchmark's baseline). A report is answered with the
        // containers this host may run, as on the stream.
        const beat = decode(heartbeatSchema, await readJsonBody(req));
        if (!controller.heartbeat(name, beat))
          throw new HttpError(409, `host "${name}" must register (again) first`);
        heartbeatsByRequest.inc();
        const primaries = beat.containers ? await controller.primariesOf(name) : undefined;
        return sendJson(res, 200, { ok: true, ack: beat.seq, primaries });
      }
      if ((action === 'cordon' || action === 'uncordon') && method === 'POST') {
        await readJsonBody(req);
        return sendJson(res, 200, await controller.setCordon(name, action === 'cordon'));
      }
      if (action === 'drain' && method === 'POST') {
        const body = decode(drainRequestSchema, await readJsonBody(req));
        return sendJson(res, 200, await controller.migrations.drain(name, body));
      }
      if (action === 'cordon' && method === 'PUT') {
        const body = decode(cordonSchema, await readJsonBody(req));
        return sendJson(res, 200, await controller.setCordon(name, body.cordoned));
      }
    }
    throw new HttpError(404, `no route ${method} ${url.pathname}`);
  }

  if (resource === 'images') {
    if (!id && method === 'GET') return sendJson(res, 200, await images.list());
    if (!id && method === 'PUT') {
      const query = decode(imageQuerySchema, Object.fromEntries(url.searchParams));
      const image = await images.put(req, {
        ...(query.name ? { name: query.name } : {}),
        ...(query.id ? { expectId: query.id } : {}),
      });
      return sendJson(res, 201, image);
    }
    if (id && !action && method === 'GET') {
      const { image, path } = await images.tarPath(id);
      res.writeHead(200, {
        'content-type': 'application/x-tar',
        'x-haven-image': image.id,
        'content-length': String(image.bytes),
      });
      createReadStream(path).pipe(res);
      return;
    }
    throw new HttpError(404, `no route ${method} ${url.pathname}`);
  }

  if (resource === 'events' && !id && method === 'GET') {
    const query = decode(eventsQuerySchema, Object.fromEntries(url.searchParams));
    const follow =
      url.searchParams.get('follow') === 'true' || (req.headers.accept ?? '').includes('text/event-stream');
    if (!follow) return sendJson(res, 200, await controller.eventsSince(query.since ?? 0, query.limit));
    // Following without `since` starts from now, as `docker events` does.
    return followEvents(req, res, controller, query.since ?? (await controller.latestEventSeq()));
  }

  if (resource !== 'containers') throw new HttpError(404, `no route ${url.pathname}`);
  if (!id) {
    if (method === 'GET') return sendJson(res, 200, await controller.listContainers());
    if (method === 'POST')
      return sendJson(
        res,
        201,
        await controller.runContainer(decode(clusterRunSchema, await readJsonBody(req))),
      );
    throw new HttpError(405, `${method} not allowed on ${url.pathname}`);
  }
  const name = decode(nameSchema, id);
  if (!action) {
    if (method === 'GET') {
      const view = await controller.getContainer(name);
      const detail = await controller.forward(name, 'inspect').catch(() => undefined);
      return sendJson(res, 200, { ...view, ...(detail ? { detail } : {}) });
    }
    if (method === 'DELETE') {
      await controller.removeContainer(name, url.searchParams.get('force') === 'true');
      return sendJson(res, 200, { removed: name });
    }
  } else if (action === 'logs' && method === 'GET') {
    const text = await controller.forward<string>(name, 'logs');
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(text);
    return;
  } else if (method === 'POST') {
    const raw = await readJsonBody(req);
    if (action === 'checkpoint')
      return sendJson(
        res,
        200,
        await controller.forward(name, 'checkpoint', decode(checkpointRequestSchema, raw)),
      );
    if (action === 'restore')
      return sendJson(res, 200, await controller.forward(name, 'restore', decode(restoreRequestSchema, raw)));
    if (action === 'stop')
      return sendJson(res, 200, await controller.forward(name, 'stop', decode(stopRequestSchema, raw)));
    if (action === 'failover') {
      decode(failoverRequestSchema, raw);
      return sendJson(res, 200, await controller.switchover(name));
    }
    if (action === 'migrate') {
      const body = decode(migrateRequestSchema, raw);
      return sendJson(res, 200, await controller.migrations.migrate(name, body));
    }
  }
  throw new HttpError(404, `no route ${method} ${url.pathname}`);
}

/**
 * Reads heartbeats, one JSON object per line, until the agent closes the
 * stream. An unknown host or boot ends the stream with 409: the agent then
 * registers again. A malformed line ends it with 400.
 */
function heartbeatStream(
  req: IncomingMessage,
  res: ServerResponse,
  controller: Controller,
  host: string,
): Promise<void> {
  return new Promise((resolve) => {
    let failed = false;
    const fail = (status: number, message: string): void => {
      if (failed) return;
      failed = true;
      req.removeAllListeners('data');
      if (res.headersSent) res.end(`${JSON.stringify({ error: message, status })}\n`);
      else sendJson(res, status, { error: message });
      req.resume();
      resolve();
    };
    // Each heartbeat is acknowledged on the response, a line each: the agent's
    // lease runs from its last acknowledgement. A report is answered with the
    // containers this host may run, so a host coming back learns which of its
    // copies were failed over elsewhere. A peer that stops reading gets no
    // more acknowledgements rather than an ever-growing buffer.
    // Plain acknowledgements are coalesced: one line per stream per ACK_EVERY_MS
    // carrying the newest seq (a write per beat cost ~15 µs each at 10,000 beats/s).
    let lastAckAt = 0;
    const ack = (line: Record<string, unknown>, urgent = false): void => {
      const now = Date.now();
      if (!urgent && now - lastAckAt < ACK_EVERY_MS) return;
      lastAckAt = now;
      if (!res.headersSent) res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      if (res.writableLength < 64 * 1024) res.write(`${JSON.stringify(line)}\n`);
    };
    req.setEncoding('utf8');
    const lines = new RecordSplitter((line) => {
      if (line.length === 0) return true;
      let beat;
      try {
        beat = heartbeatSchema.parse(JSON.parse(line));
      } catch {
        fail(400, 'malformed heartbeat line');
        return false;
      }
      if (!controller.heartbeat(host, beat)) {
        fail(409, `host "${host}" must register (again) first`);
        return false;
      }
      heartbeatsOnStream.inc();
      if (beat.containers) {
        const seq = beat.seq;
        void controller.primariesOf(host).then((primaries) => ack({ ack: seq, primaries }, true));
      } else ack({ ack: beat.seq });
      return true;
    });
    req.on('data', (chunk: string) => {
      lines.push(chunk);
      if (lines.pending.length > MAX_HEARTBEAT_LINE) fail(413, 'heartbeat line too long');
    });
    req.on('end', () => {
      if (res.headersSent) res.end();
      else sendJson(res, 200, { ok: true });
      resolve();
    });
    req.on('error', () => resolve());
    req.on('close', () => resolve());
  });
}

/** Server-sent events: the backlog after `since`, then each new event as it happens. */
async function followEvents(
  req: IncomingMessage,
  res: ServerResponse,
  controller: Controller,
  since: number,
): Promise<void> {
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  // Headers now, not with the first event: a follower (the dashboard) knows at once it is connected.
  res.flushHeaders();
  let last = since;
  const write = (event: StoredEvent): void => {
    if (event.seq <= last) return;
    last = event.seq;
    res.write(`id: ${event.seq}\nevent: ${event.kind}\ndata: ${JSON.stringify(event)}\n\n`);
  };
  // Subscribe before reading the backlog so nothing falls between the two.
  const queued: StoredEvent[] = [];
  let live = false;
  const listener = (event: StoredEvent): void => (live ? write(event) : void queued.push(event));
  controller.events.on('event', listener);
  const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
  req.on('close', () => {
    controller.events.off('event', listener);
    clearInterval(keepAlive);
  });
  for (;;) {
    const batch = await controller.eventsSince(last, 1000);
    batch.forEach(write);
    if (batch.length < 1000) break;
  }
  queued.sort((a, b) => a.seq - b.seq).forEach(write);
  live = true;
}
