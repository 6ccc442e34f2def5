/**
 * The agent's HTTP API: one host's containers over HTTP, for the controller
 * (and, until the controller exists, for scripts). Handlers only decode,
 * call the host, and encode; errors map to status codes by their `code` (as
 * containerd's errdefs do). Every request must carry the cluster token.
 *
 *   GET    /metrics                            Prometheus text format (agent/metrics.ts)
 *   GET    /v1/health
 *   GET    /v1/containers                      → ContainerView[]
 *   POST   /v1/containers                      (runRequestSchema) → ContainerView
 *   GET    /v1/containers/:name                → ContainerView
 *   GET    /v1/containers/:name/logs           → text
 *   POST   /v1/containers/:name/checkpoint     (checkpointRequestSchema)
 *   POST   /v1/containers/:name/restore        (restoreRequestSchema)
 *   POST   /v1/containers/:name/stop           (stopRequestSchema)
 *   POST   /v1/containers/:name/handover       a switchover's final epoch, shipped to the backup
 *   POST   /v1/containers/:name/recover        restore it here from its newest committed epoch
 *   POST   /v1/containers/:name/migrate        (migrateRoundSchema) one round of a live migration, as its source
 *   POST   /v1/containers/:name/migrate-facts  (migrateFactsSchema) memory, abilities and (for auto) the dirty rate
 *   POST   /v1/replicas/:name/prepare          (prepareReplicaSchema) a migration's destination: fetch the image
 *   POST   /v1/replicas/:name/announce         a post-copy destination: its network made ahead announces itself
 *   POST   /v1/replicas/:name/stage            assemble the newest intact epoch ahead of a likely promotion
 *   DELETE /v1/containers/:name[?force=true]
 *
 * The agent holds no state of its own: records live on the host's disk and
 * containers run under their shims, so an agent that crashes and restarts
 * finds every container still running, exactly where it was.
 */
import { createReadStream } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect } from 'node:net';
import { asNoSpace, NotFoundError } from '../core/errors.js';
import { sendMetrics } from '../core/metrics.js';
import { agentMetrics, freezeOfRequest } from './metrics.js';
import {
  decode,
  HttpError,
  readJsonBody,
  authenticateCaller,
  routeParts,
  sendError,
  sendJson as send,
} from '../core/http.js';
import { authorizeAgentCall } from '../core/access.js';
import { serverTlsOptions, type TlsIdentity } from '../core/tls.js';
import type { ContainerHost } from '../host/container-host.js';
import {
  lazyEndSchema,
  lazyPromoteSchema,
  lazyWaitSchema,
  PostCopyDestination,
} from '../replication/post-copy.js';
import { validateEpochManifest } from '../replication/replica-store.js';
import { FRAMES_HEADER } from '../replication/transfer.js';
import { probeSpecSchema, type Prober } from './probes.js';
import type { Protection } from './protection.js';
import { z } from 'zod';
import { trace } from '../core/exec.js';
import { logger } from '../core/log.js';
import {
  checkpointRequestSchema,
  handoverRequestSchema,
  recoverRequestSchema,
  stageRequestSchema,
  imageIdSchema,
  migrateRoundSchema,
  missingChunksSchema,
  nameSchema,
  migrateFactsSchema,
  prepareReplicaSchema,
  probeRequestSchema,
  placedRequestSchema,
  promoteRequestSchema,
  protectRequestSchema,
  restoreRequestSchema,
  runRequestSchema,
  stopRequestSchema,
} from './schemas.js';

/** Options of {@link createAgentServer}. */
export interface AgentServerOptions {
  host: ContainerHost;
  /** The cluster token every request must present as `Authorization: Bearer <token>`. */
  token: string;
  /**
   * Fetches an image this host lacks (from the controller or a peer) into its
   * store, verified by hash. Without it, a run naming a missing image fails.
   */
  pullImage?: (id: string) => Promise<void>;
  /** Checkpoint protection (primary replicators and backup replicas); without it those routes are 404. */
  protection?: Protection;
  /** Application probes; without it the probe route is 404. */
  prober?: Prober;
  /** Serve HTTPS with this identity and require client certificates of its CA (mutual TLS); else plain HTTP. */
  tls?: TlsIdentity;
}

/** Builds the agent's HTTP server (not yet listening). */
export function createAgentServer(options: AgentServerOptions): Server {
  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    handle(req, res, options).catch((error: unknown) =>
      // A full disk is named with this host, for whoever relays it (a migration's source, the CLI).
      sendError(res, asNoSpace(error, `host ${options.host.config.hostName}`), 'agent'),
    );
  };
  // With a TLS identity: HTTPS, every client asked for a certificate of this cluster.
  return options.tls ? createHttpsServer(serverTlsOptions(options.tls), handler) : createServer(handler);
}

async function handle(req: IncomingMessage, res: ServerResponse, options: AgentServerOptions): Promise<void> {
  // Under mTLS, orders only from the controller's certificate, replication only from agents'
  // (core/access.ts); the token alone is not enough here: it is for scripts, at the controller.
  const caller = authenticateCaller(req, options.token, { acceptToken: !options.tls });
  // Prometheus scrapes /metrics by convention, outside the versioned API.
  if (req.method === 'GET' && (req.url ?? '').split('?', 1)[0] === '/metrics') {
    authorizeAgentCall(caller, req.method, null);
    return sendMetrics(res, agentMetrics);
  }
  const { host } = options;
  const { parts, url, method } = routeParts(req);
  authorizeAgentCall(caller, method, parts);

  if (parts.length === 1 && parts[0] === 'health' && method === 'GET') {
    send(res, 200, { ok: true, host: host.config.hostName });
    return;
  }
  if (parts.length === 1 && parts[0] === 'probe' && method === 'POST') {
    // Asked by the controller before it fails a silent host over: do *we* still reach it?
    const { address } = decode(probeRequestSchema, await readJsonBody(req));
    return send(res, 200, await probeHost(address));
  }
  if (parts[0] === 'images' && parts.length === 2 && method === 'GET') {
    // Peers and the controller fetch images from here: the exact bytes the ID hashes.
    const image = await host.images.get(decode(imageIdSchema, parts[1]));
    const tar = await host.images.tarOf(image.id);
    res.writeHead(200, { 'content-type': 'application/x-tar', 'x-haven-image': image.id });
    createReadStream(tar).pipe(res);
    return;
  }
  if (parts[0] === 'replicas' && options.protection)
    return replicaRoute(req, res, options, options.protection, parts, method, url);
  if (parts[0] !== 'containers') throw new HttpError(404, `no route ${url.pathname}`);
  if (parts.length === 1) {
    if (method === 'GET') return send(res, 200, await host.list());
    if (method === 'POST') {
      const body = decode(runRequestSchema, await readJsonBody(req));
      await ensureImage(options, body.image);
      const view = await host.run(body);
      await options.prober?.watch(view.name); // its watchdog, if the request gave one
      return send(res, 201, view);
    }
    throw new HttpError(405, `${method} not allowed on ${url.pathname}`);
  }
  const name = decode(nameSchema, parts[1] ?? '');
  const action = parts[2];
  if (parts.length > 3) throw new HttpError(404, `no route ${url.pathname}`);
  if (action === undefined) {
    if (method === 'GET') return send(res, 200, await host.inspect(name));
    if (method === 'DELETE') {
      // Replication stops first: an epoch in flight must not read files being removed.
      await options.protection?.protect(name, null);
      await options.prober?.forget(name);
      await host.remove(name, { force: url.searchParams.get('force') === 'true' });
      await options.protection?.forget(name);
      return send(res, 200, { removed: name });
    }
  } else if (action === 'logs' && method === 'GET') {
    // Read before the status goes out: a missing container must be a 404, not a cut connection.
    const text = await host.logs(name);
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(text);
    return;
  } else if (method === 'POST') {
    const raw = await readJsonBody(req);
    if (action === 'checkpoint') {
      const body = decode(checkpointRequestSchema, raw);
      const report = await host.checkpoint(name, {
        leaveRunning: body.leaveRunning,
        ...(body.keep ? { keep: body.keep } : {}),
      });
      freezeOfRequest.observe(report.frozenMs / 1000);
      return send(res, 200, report);
    }
    if (action === 'restore') {
      const body = decode(restoreRequestSchema, raw);
      const report = await host.restore(name, {
        ...(body.checkpoint ? { checkpoint: body.checkpoint } : {}),
        tcpClose: body.tcpClose,
      });
      await options.prober?.watch(name); // a restore starts a new shim: the watchdog starts over
      return send(res, 200, report);
    }
    if (action === 'probe' && options.prober) {
      const body = decode(z.object({ probe: probeSpecSchema.nullable() }).strict(), raw);
      await options.prober.set(name, body.probe);
      return send(res, 200, { name, probed: body.probe !== null });
    }
    if (action === 'protect' && options.protection) {
      const body = decode(protectRequestSchema, raw);
      // A continuous primary keeps its output commit without a backup (output then passes through).
      await options.protection.protect(name, body.backup || body.mode === 'continuous' ? body : null);
      return send(res, 200, { name, protected: body.backup !== null });
    }
    if (action === 'handover' && options.protection) {
      decode(handoverRequestSchema, raw);
      return send(res, 200, await options.protection.handover(name));
    }
    if (action === 'recover' && options.protection) {
      decode(recoverRequestSchema, raw);
      return send(res, 200, await options.protection.recoverInPlace(name));
    }
    if (action === 'migrate' && options.protection) {
      const body = decode(migrateRoundSchema, raw);
      return send(res, 200, await options.protection.migrations.round(name, body));
    }
    if (action === 'migrate-end' && options.protection) {
      const body = decode(lazyEndSchema, raw);
      return send(res, 200, await options.protection.migrations.end(name, body));
    }
    if (action === 'placed' && options.protection) {
      decode(placedRequestSchema, raw);
      await host.inspect(name); // a 404 for a container not here
      await options.protection.confirm(name);
      return send(res, 200, { placed: name });
    }
    if (action === 'migrate-facts' && options.protection) {
      const body = decode(migrateFactsSchema, raw);
      return send(res, 200, await options.protection.migrations.facts(name, body));
    }
    if (action === 'stop') {
      const body = decode(stopRequestSchema, raw);
      return send(res, 200, await host.stop(name, body.graceSeconds * 1000));
    }
  }
  throw new HttpError(404, `no route ${method} ${url.pathname}`);
}

const postCopies = new WeakMap<Protection, PostCopyDestination>();

/** This host's post-copy restores (one per protection, i.e. per agent). */
function postCopyOf(host: ContainerHost, protection: Protection): PostCopyDestination {
  let destination = postCopies.get(protection);
  if (!destination) {
    destination = new PostCopyDestination(host, protection.replicas);
    postCopies.set(protection, destination);
  }
  return destination;
}

/** Makes sure the image is in this host's store, pulling it when a puller is configured. */
async function ensureImage(options: AgentServerOptions, id: string): Promise<void> {
  try {
    await options.host.images.get(id);
  } catch (error) {
    if (!(error instanceof NotFoundError) || !options.pullImage) throw error;
    await options.pullImage(id);
  }
}

/** Largest replication request accepted: a manifest of a 1 TiB checkpoint is ~300 MB of hashes; 64 MiB covers 200 GB. */
const MAX_REPLICATION_JSON = 64 * 1024 * 1024;

/** `/v1/replicas/...`: this host as a backup (receiving epochs) and at failover (promoting one). */
async function replicaRoute(
  req: IncomingMessage,
  res: ServerResponse,
  options: AgentServerOptions,
  protection: Protection,
  parts: string[],
  method: string,
  url: URL,
): Promise<void> {
  const [, id, action, ...extra] = parts;
  if (extra.length > 0) throw new HttpError(404, 'no such replica route');
  if (!id) {
    if (method === 'GET') return send(res, 200, await protection.replicas.list());
    throw new HttpError(405, `${method} not allowed on /v1/replicas`);
  }
  const name = decode(nameSchema, id);
  if (!action && method === 'DELETE') {
    // A migration rolled back: what its prepare made here goes too.
    await options.host.discardPremadeNetwork(name);
    await protection.replicas.drop(name);
    return send(res, 200, { dropped: name });
  }
  if (!action && method === 'GET')
    return send(res, 200, { name, epochs: await protection.replicas.epochs(name) });
  if (method !== 'POST') throw new HttpError(405, `${method} not allowed here`);
  if (action === 'missing') {
    const body = decode(missingChunksSchema, await readJsonBody(req, MAX_REPLICATION_JSON));
    // Pinned for this container's epoch on its way: no prune takes them before its commit.
    return send(res, 200, { missing: await protection.replicas.missing(body.hashes, name) });
  }
  if (action === 'chunks') {
    const format = req.headers[FRAMES_HEADER];
    const receiving = performance.now();
    const stored = await protection.replicas.receive(
      req as AsyncIterable<Buffer>,
      typeof format === 'string' ? format : undefined,
    );
    trace(`replica ${name}: ${stored} chunks stored`, receiving);
    return send(res, 200, { stored });
  }
  if (action === 'epochs') {
    const committing = performance.now();
    const manifest = validateEpochManifest(await readJsonBody(req, MAX_REPLICATION_JSON));
    if (manifest.container !== name) throw new HttpError(400, 'the manifest names another container');
    // The record is what a promotion adopts: it must be this container's, not another's state directory.
    if ((manifest.record as { name?: unknown }).name !== name)
      throw new HttpError(400, 'the manifest record names another container');
    // The backup must be able to restore without the network: fetch the image now, not at failover.
    const image = (manifest.record as { image?: unknown }).image;
    if (typeof image !== 'string') throw new HttpError(400, 'the manifest record has no image');
    await ensureImage(options, decode(imageIdSchema, image));
    const durable = url.searchParams.get('durable');
    if (durable !== null && durable !== 'false' && durable !== 'true')
      throw new HttpError(400, `durable must be true or false, not "${durable}"`);
    await protection.replicas.commit(manifest, { durable: durable !== 'false' });
    trace(`replica ${name}: epoch committed`, committing);
    return send(res, 200, { name, epoch: manifest.epoch, committed: true });
  }
  if (action === 'prepare') {
    // A migration's destination: the image now, so that no final round waits on its download.
    const body = decode(prepareReplicaSchema, await readJsonBody(req));
    await ensureImage(options, body.image);
    const here = await options.host.inspect(name).catch(() => undefined);
    if (here) throw new HttpError(409, `a container "${name}" already exists on this host (${here.state})`);
    // Best effort: without it the restore makes the network itself, ~20 ms later, and holds nothing early.
    const network = body.network
      ? await options.host.prepareNetwork(name, body.network).then(
          () => true,
          (error: unknown) => {
            logger('agent').warn('cannot make the network ahead of the migration', {
              name,
              error: String(error),
            });
            return false;
          },
        )
      : false;
    return send(res, 200, { name, ready: true, network });
  }
  if (action === 'announce') {
    // A post-copy source has frozen and locked the container: its clients' packets come here from now on, held.
    return send(res, 200, { name, announced: options.host.announcePremade(name) });
  }
  if (action === 'stage') {
    // Its primary's host is suspected: assemble the newest epoch now, so a promotion finds it ready.
    decode(stageRequestSchema, await readJsonBody(req));
    return send(res, 200, { name, ...(await protection.stage(name)) });
  }
  if (action === 'promote-lazy') {
    // Post-copy: it runs here once restored; its pages follow (see replication/post-copy.ts).
    const body = decode(lazyPromoteSchema, await readJsonBody(req));
    const promoted = await postCopyOf(options.host, protection).promote(name, body);
    await options.prober?.watch(name);
    return send(res, 200, promoted);
  }
  if (action === 'lazy-wait') {
    const body = decode(lazyWaitSchema, await readJsonBody(req));
    return send(res, 200, await postCopyOf(options.host, protection).wait(name, body.timeoutMs));
  }
  if (action === 'promote') {
    const body = decode(promoteRequestSchema, await readJsonBody(req));
    const promoted = await protection.promote(name, {
      tcpClose: body.tcpClose,
      provisional: body.provisional,
      ...(body.epoch !== undefined ? { epoch: body.epoch } : {}),
    });
    await options.prober?.watch(name); // the record carries its watchdog to this host
    return send(res, 200, promoted);
  }
  throw new HttpError(404, 'no such replica route');
}

/**
 * Is the host at `address` (an agent URL) alive? A TCP connection to its
 * agent port that is accepted — or refused, which only a running kernel does —
 * says yes: a dead agent on a live host must not look like a dead host (its
 * containers still serve). No answer within 200 ms says no.
 */
export function probeHost(address: string): Promise<{ reachable: boolean; agent: boolean; ms: number }> {
  const url = new URL(address);
  const started = performance.now();
  return new Promise((resolve) => {
    const socket = connect({ host: url.hostname, port: Number(url.port) });
    const done = (reachable: boolean, agent: boolean): void => {
      socket.destroy();
      resolve({ reachable, agent, ms: Math.round(performance.now() - started) });
    };
    socket.setTimeout(200, () => done(false, false));
    socket.once('connect', () => done(true, true));
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code === 'ECONNREFUSED', false));
  });
}
