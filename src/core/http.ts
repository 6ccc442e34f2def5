/**
 * What Haven's HTTP servers (agent and controller) share: token checks,
 * bounded JSON bodies validated by schema, error-to-status mapping (as
 * containerd's errdefs do) and JSON replies. Handlers only decode, call,
 * and encode; every failure becomes a 4xx with a message, or a logged 500.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { ZodType, ZodTypeDef } from 'zod';
import { asNoSpace, HavenError } from './errors.js';
import type { Role } from './ca.js';
import { logger } from './log.js';
import { peerOf } from './tls.js';

/** Largest JSON request body accepted. */
export const MAX_JSON_BODY_BYTES = 64 * 1024;

/** A failure with an HTTP status, raised by a server itself. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Status code of an error: its own for {@link HttpError}, by `code` for Haven errors, else 500. */
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
    case 'resource_exhausted':
      return 507;
    default:
      return 500;
  }
}

/** Throws 401 unless the request carries `Authorization: Bearer <token>` (constant-time compare). */
export function requireToken(req: IncomingMessage, token: string): void {
  const expected = Buffer.from(`Bearer ${token}`);
  const auth = Buffer.from(req.headers.authorization ?? '');
  if (auth.length !== expected.length || !timingSafeEqual(auth, expected)) {
    throw new HttpError(401, 'missing or wrong cluster token');
  }
}

/** Who made a request: the holder of the cluster token, or a certificate of this cluster naming a role and host. */
export type Caller = { kind: 'token' } | { kind: 'certificate'; role: Role; host: string };

/**
 * Authenticates a request. On a TLS connection (mTLS clusters), a client
 * certificate of this cluster is the caller; a certificate presented but
 * refused (another CA, expired, no Haven role) is a 401 naming why, even
 * with the token; with no certificate, the token counts only where
 * `acceptToken` (scripts talking to a controller) — else 401. On plain
 * HTTP, the token, as always.
 */
export function authenticateCaller(
  req: IncomingMessage,
  token: string,
  options: { acceptToken?: boolean } = {},
): Caller {
  const peer = peerOf(req);
  if (peer.kind === 'certificate') return { kind: 'certificate', role: peer.role, host: peer.host };
  if (peer.kind === 'refused') throw new HttpError(401, `client certificate refused: ${peer.reason}`);
  if (peer.kind === 'anonymous' && options.acceptToken === false)
    throw new HttpError(401, 'a client certificate of this cluster is required');
  requireToken(req, token);
  return { kind: 'token' };
}

/** Validates `value` against `schema`; a 400 naming the first bad field otherwise. */
export function decode<T>(schema: ZodType<T, ZodTypeDef, unknown>, value: unknown): T {
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
    throw new HttpError(400, `invalid request: ${where}${issue?.message ?? 'malformed'}`);
  }
  return parsed.data;
}

/** Reads a JSON body of at most `limit` bytes (default {@link MAX_JSON_BODY_BYTES}); an empty body is `{}`. */
export async function readJsonBody(req: IncomingMessage, limit = MAX_JSON_BODY_BYTES): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    // Past the limit, read on (up to a point) without keeping anything, so the
    // client gets its 413 instead of a connection reset mid-send.
    if (size > 256 * limit) break;
    if (size <= limit) chunks.push(chunk as Buffer);
  }
  if (size > limit) throw new HttpError(413, `request body over ${limit} bytes`);
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch {
    throw new HttpError(400, 'request body is not JSON');
  }
}

/** Replies with a JSON body (no-op if a reply already started). */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

/**
 * Replies to a failed request: 4xx carry the error's message and code; a 500
 * is logged in full under `label` and answered with "internal error" only.
 */
export function sendError(res: ServerResponse, error: unknown, label: string): void {
  // A full disk is the caller's to hear of, in plain words, not an internal error.
  error = asNoSpace(error);
  const status = statusFor(error);
  const message = status === 500 ? 'internal error' : error instanceof Error ? error.message : String(error);
  if (status === 500) {
    logger(`${label}.http`).error(
      `internal error: ${error instanceof Error ? error.message : String(error)}`,
      {
        stack: error instanceof Error ? error.stack : undefined,
      },
    );
  }
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, status, { error: message, code: error instanceof HavenError ? error.code : undefined });
}

/** The path's segments after `/v1`, or a 404. */
export function routeParts(req: IncomingMessage): { parts: string[]; url: URL; method: string } {
  const url = new URL(req.url ?? '/', 'http://haven');
  let parts: string[];
  try {
    parts = url.pathname
      .split('/')
      .filter((p) => p.length > 0)
      .map((p) => decodeURIComponent(p));
  } catch {
    throw new HttpError(400, `malformed path ${url.pathname}`);
  }
  if (parts[0] !== 'v1') throw new HttpError(404, `no route ${url.pathname}`);
  return { parts: parts.slice(1), url, method: req.method ?? 'GET' };
}
