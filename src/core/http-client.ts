/**
 * A small HTTP client for Haven's own APIs, over TCP (`http://host:port`) or
 * a Unix socket (`unix:/path/to.sock`): JSON in, JSON out, the cluster token
 * on every call, bounded by a timeout. Failures come back as Haven errors
 * with the server's message, so a CLI user reads what the server said.
 */
import { request, type IncomingMessage, type RequestOptions } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { HavenError, InvalidArgumentError, NotLeaderError, type ErrorCode } from './errors.js';
import { clientTlsAgent } from './tls.js';

/** Where an API lives: `http://ADDR:PORT` or `unix:/path/to.sock`. */
export type Endpoint = string;

/** Options of one call. */
export interface CallOptions {
  method?: string;
  body?: unknown;
  /** Milliseconds before the call is abandoned (default 30 s). */
  timeoutMs?: number;
}

/** The server could not be reached at all (connection refused, no socket, timeout). */
export class UnreachableError extends HavenError {
  constructor(message: string) {
    super(message, 'unavailable', true);
  }
}

/**
 * Request options for `path` at `endpoint`. An `https://` endpoint is a
 * cluster with mutual TLS: the options carry this process's certificate
 * (`core/tls.ts`) as an HTTPS connection pool, which `node:http`'s
 * `request` uses as it is given (with `protocol: 'https:'`), so every
 * caller of these options speaks TLS without knowing it.
 */
export function requestOptions(endpoint: Endpoint, path: string, token: string): RequestOptions {
  const headers = { authorization: `Bearer ${token}` };
  if (endpoint.startsWith('unix:')) return { socketPath: endpoint.slice(5), path, headers };
  let url: URL;
  try {
    url = new URL(path, endpoint);
  } catch {
    throw new InvalidArgumentError(
      `invalid endpoint "${endpoint}": expected http://HOST:PORT, https://HOST:PORT or unix:/PATH`,
    );
  }
  if (url.protocol === 'https:')
    return {
      protocol: 'https:',
      agent: clientTlsAgent(),
      host: url.hostname,
      port: url.port || 443,
      path: url.pathname + url.search,
      headers,
    };
  if (url.protocol !== 'http:') throw new InvalidArgumentError(`invalid endpoint "${endpoint}"`);
  return { host: url.hostname, port: url.port || 80, path: url.pathname + url.search, headers };
}

/** Sends a request and returns the raw response (status not checked). */
export function openRequest(
  endpoint: Endpoint,
  path: string,
  token: string,
  options: CallOptions & { headers?: Record<string, string>; payload?: NodeJS.ReadableStream },
): Promise<IncomingMessage> {
  const base = requestOptions(endpoint, path, token);
  const body = options.body === undefined ? undefined : Buffer.from(JSON.stringify(options.body));
  return new Promise((resolve, reject) => {
    const req = request(
      {
        ...base,
        method: options.method ?? (body || options.payload ? 'POST' : 'GET'),
        headers: {
          ...base.headers,
          ...(body ? { 'content-type': 'application/json', 'content-length': String(body.length) } : {}),
          ...options.headers,
        },
        timeout: options.timeoutMs ?? 30_000,
      },
      resolve,
    );
    req.on('timeout', () =>
      req.destroy(new UnreachableError(`${endpoint}: no answer within ${options.timeoutMs ?? 30_000} ms`)),
    );
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (error instanceof HavenError) return reject(error);
      const reason = error.code ?? error.message;
      reject(new UnreachableError(`cannot reach ${endpoint}${path}: ${reason}`));
    });
    if (options.payload) {
      // A payload that fails mid-way (a file gone, a read error) aborts the request, not the process.
      pipeline(options.payload, req).catch((error: unknown) => {
        req.destroy(error instanceof Error ? error : new Error(String(error)));
      });
    } else req.end(body);
  });
}

/** Reads a whole response body as text. */
export async function readText(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of res) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

const CODES: Record<number, ErrorCode> = {
  400: 'invalid_argument',
  401: 'invalid_argument',
  404: 'not_found',
  409: 'failed_precondition',
  413: 'invalid_argument',
  422: 'corrupt_checkpoint',
  503: 'unavailable',
  507: 'resource_exhausted',
};

/** Turns a non-2xx response into the Haven error the server described. */
export async function errorFrom(res: IncomingMessage): Promise<HavenError> {
  const text = await readText(res);
  let message = text;
  let code: string | undefined;
  let leader: string | undefined;
  try {
    const parsed = JSON.parse(text) as { error?: string; code?: string; leader?: unknown };
    message = parsed.error ?? text;
    code = parsed.code;
    // A standby controller names the leader (or says none is known: null).
    if ('leader' in parsed) leader = typeof parsed.leader === 'string' ? parsed.leader : '';
  } catch {
    // Not JSON: keep the text.
  }
  const status = res.statusCode ?? 500;
  if (leader !== undefined && status === 503) return new NotLeaderError(message, leader || undefined);
  return new HavenError(
    message || `HTTP ${status}`,
    (code as ErrorCode | undefined) ?? CODES[status] ?? 'internal',
  );
}

/** Calls a JSON API; returns the parsed reply or throws the server's error. */
export async function callJson<T>(
  endpoint: Endpoint,
  path: string,
  token: string,
  options: CallOptions = {},
): Promise<T> {
  const res = await openRequest(endpoint, path, token, options);
  if ((res.statusCode ?? 500) >= 300) throw await errorFrom(res);
  const text = await readText(res);
  const type = res.headers['content-type'] ?? '';
  return (type.includes('json') ? JSON.parse(text) : text) as T;
}
