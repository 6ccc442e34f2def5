/**
 * The agent's HTTP API: one host's containers over HTTP, for the controller
 * (and, until the controller exists, for scripts). Handlers only decode,
 * call the host, and encode; errors map to status codes by their `code` (as
 * containerd's errdefs do). Every request must carry the cluster token.
 *
 *   GET    /v1/health
 *   GET    /v1/containers                      → ContainerView[]
 *   POST   /v1/containers                      (runRequestSchema) → ContainerView
 *   GET    /v1/containers/:name                → ContainerView
 *   GET    /v1/containers/:name/logs           → text
 *   POST   /v1/containers/:name/checkpoint     (checkpointRequestSchema)
 *   POST   /v1/containers/:name/restore        (restoreRequestSchema)
 *   POST   /v1/containers/:name/stop           (stopRequestSchema)
 *   DELETE /v1/containers/:name[?force=true]
 *
 * The agent holds no state of its own: records live on the host's disk and
 * containers run under their shims, so an agent that crashes and restarts
 * finds every container still running, exactly where it was.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { ZodType, ZodTypeDef } from 'zod';
import { HavenError } from '../core/errors.js';
import type { ContainerHost } from '../host/container-host.js';
import {
  checkpointRequestSchema,
  nameSchema,
  restoreRequestSchema,
  runRequestSchema,
  stopRequestSchema,
} from './schemas.js';

/** Largest request body accepted. */
const MAX_BODY_BYTES = 64 * 1024;

/** A failure with an HTTP status, raised by the server itself. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Status code of a Haven error code. */
export function statusFor(error: unknown): number {
  if (error instanceof HttpError) return error.status;
  if (!(error instanceof HavenError)) return 500;
  switch (error.code) {
    case 'invalid_argument':
      return 400;
    case 'not_found':
      return 404;
    case 'already_exists':
    case 'failed_precondition':
      return 409;
    case 'corrupt_checkpoint':
      return 422;
    case 'unavailable':
      return 503;
    default:
      return 500;
  }
}

/** Options of {@link createAgentServer}. */
export interface AgentServerOptions {
  host: ContainerHost;
  /** The cluster token every request must present as `Authorization: Bearer <token>`. */
  token: string;
}

/** Builds the agent's HTTP server (not yet listening). */
export function createAgentServer(options: AgentServerOptions): Server {
  const expected = Buffer.from(`Bearer ${options.token}`);
  return createServer((req, res) => {
    handle(req, res, options.host, expected).catch((error: unknown) => {
      const status = statusFor(error);
      const message =
        status === 500 ? 'internal error' : error instanceof Error ? error.message : String(error);
      if (status === 500)
        process.stderr.write(
          `agent: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
        );
      send(res, status, { error: message, code: error instanceof HavenError ? error.code : undefined });
    });
  });
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  host: ContainerHost,
  expected: Buffer,
): Promise<void> {
  const auth = Buffer.from(req.headers.authorization ?? '');
  if (auth.length !== expected.length || !timingSafeEqual(auth, expected)) {
    throw new HttpError(401, 'missing or wrong cluster token');
  }
  const url = new URL(req.url ?? '/', 'http://agent');
  const parts = url.pathname.split('/').filter((p) => p.length > 0);
  if (parts[0] !== 'v1') throw new HttpError(404, `no route ${url.pathname}`);
  const method = req.method ?? 'GET';

  if (parts.length === 2 && parts[1] === 'health' && method === 'GET') {
    send(res, 200, { ok: true, host: host.config.hostName });
    return;
  }
  if (parts[1] !== 'containers') throw new HttpError(404, `no route ${url.pathname}`);
  if (parts.length === 2) {
    if (method === 'GET') return send(res, 200, await host.list());
    if (method === 'POST') {
      const body = decode(runRequestSchema, await readBody(req));
      return send(res, 201, await host.run(body));
    }
    throw new HttpError(405, `${method} not allowed on ${url.pathname}`);
  }
  const name = decode(nameSchema, parts[2] ?? '');
  const action = parts[3];
  if (parts.length > 4) throw new HttpError(404, `no route ${url.pathname}`);
  if (action === undefined) {
    if (method === 'GET') return send(res, 200, await host.inspect(name));
    if (method === 'DELETE') {
      await host.remove(name, { force: url.searchParams.get('force') === 'true' });
      return send(res, 200, { removed: name });
    }
  } else if (action === 'logs' && method === 'GET') {
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(await host.logs(name));
    return;
  } else if (method === 'POST') {
    const raw = await readBody(req);
    if (action === 'checkpoint') {
      const body = decode(checkpointRequestSchema, raw);
      return send(
        res,
        200,
        await host.checkpoint(name, {
          leaveRunning: body.leaveRunning,
          ...(body.keep ? { keep: body.keep } : {}),
        }),
      );
    }
    if (action === 'restore') {
      const body = decode(restoreRequestSchema, raw);
      return send(
        res,
        200,
        await host.restore(name, {
          ...(body.checkpoint ? { checkpoint: body.checkpoint } : {}),
          tcpClose: body.tcpClose,
        }),
      );
    }
    if (action === 'stop') {
      const body = decode(stopRequestSchema, raw);
      return send(res, 200, await host.stop(name, body.graceSeconds * 1000));
    }
  }
  throw new HttpError(404, `no route ${method} ${url.pathname}`);
}

function decode<T>(schema: ZodType<T, ZodTypeDef, unknown>, value: unknown): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
    throw new HttpError(400, `invalid request: ${where}${issue?.message ?? 'malformed'}`);
  }
  return parsed.data;
}

async function readBody(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new HttpError(400, 'request body is not JSON');
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}
