/**
 * Shared pieces of the API fuzz tests (test/unit/fuzz-*.test.ts): a raw
 * HTTP caller (node:http, so that paths reach the server exactly as
 * generated — `fetch` would normalise `..` away), fast-check arbitraries of
 * hostile path segments, query strings and bodies, and the one property
 * every answer must have: no 5xx, and every refusal a 4xx with a JSON error.
 *
 * ```ts
 * const arb = fuzzRequest(routes, { token: TOKEN });
 * await fc.assert(fc.asyncProperty(arb, async (r) => checkAnswer(r, await send(base, r))), { numRuns: 5000 });
 * ```
 */
import assert from 'node:assert/strict';
import { Agent, request } from 'node:http';
import fc from 'fast-check';

/** One generated request. */
export interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string | undefined;
}

/** What came back. */
export interface FuzzAnswer {
  status: number;
  type: string;
  text: string;
}

/** A route template: `:x` segments are filled with hostile or plausible values; `bodies` are valid ones to mutate. */
export interface RouteTemplate {
  method: string;
  path: string;
  bodies?: unknown[];
  /** Query parameters this route reads (values are fuzzed). */
  query?: string[];
}

const keepAlive = new Agent({ keepAlive: true, maxSockets: 8 });

/** Sends one request as generated; an event stream is cut off after its headers (it never ends by itself). */
export function send(base: string, r: FuzzRequest, timeoutMs = 20_000): Promise<FuzzAnswer> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        agent: keepAlive,
        host: url.hostname,
        port: url.port,
        method: r.method,
        path: r.path,
        headers: {
          ...r.headers,
          ...(r.body !== undefined ? { 'content-length': String(Buffer.byteLength(r.body)) } : {}),
        },
        timeout: timeoutMs,
      },
      (res) => {
        const type = String(res.headers['content-type'] ?? '');
        if (type.startsWith('text/event-stream')) {
          res.destroy();
          resolve({ status: res.statusCode ?? 0, type, text: '' });
          return;
        }
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, type, text: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () =>
      req.destroy(new Error(`no answer within ${timeoutMs} ms to ${r.method} ${r.path.slice(0, 200)}`)),
    );
    req.on('error', reject);
    req.end(r.body);
  });
}

/**
 * The property: no 5xx; a refusal is a 4xx whose body is JSON with an
 * `error` string (HEAD has no body). Pages for a browser (`isPage`: the
 * dashboard's login) may refuse in HTML, for the person reading them.
 */
export function checkAnswer(
  r: FuzzRequest,
  a: FuzzAnswer,
  isPage: (path: string) => boolean = () => false,
): void {
  const what = `${r.method} ${r.path.slice(0, 120)} ${String(r.body).slice(0, 120)} → ${a.status} ${a.text.slice(0, 200)}`;
  assert.ok(a.status >= 200 && a.status < 500, what);
  if (isPage(r.path) && a.type.startsWith('text/html')) return;
  if (a.status >= 400 && r.method !== 'HEAD') {
    assert.match(a.type, /json/, what);
    const parsed = JSON.parse(a.text) as { error?: unknown };
    assert.equal(typeof parsed.error, 'string', what);
  }
}

/** Values a path segment or a string field may take: traversal, NUL, unicode, huge, plausible. */
export const hostileString: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    '..',
    '.',
    '../../etc/passwd',
    '/etc/passwd',
    '..\\..\\windows',
    'a/../../b',
    '\u0000',
    'x\u0000y',
    'web',
    'h1',
    'tiny',
    'Web',
    '-x',
    'a'.repeat(63),
    'a'.repeat(64),
    'sha256:' + 'a'.repeat(64),
    'abcdef',
    'ck-1',
    'x;rm -rf /',
    '$(id)',
    '${HOME}',
    '\u202eevil',
    '😀',
    '%00',
    '%2e%2e%2f',
    'null',
    '__proto__',
    'constructor',
    ' ',
    '',
  ),
  fc.string({ maxLength: 40 }),
  fc.fullUnicodeString({ maxLength: 40 }),
  fc.string({ minLength: 2000, maxLength: 6000 }),
);

/** A path segment, percent-encoded as a client would, or raw (traversal and broken escapes reach the server as typed). */
const segment: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: hostileString.map((s) => encodeURIComponent(s)) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '..',
      '.',
      '%2e%2e',
      '..%2f..%2fetc',
      '%E0%A4%A',
      '%',
      '%zz',
      '%00',
      '~root',
      '*',
    ),
  },
);

/** Junk nested `depth` levels deep, as arrays or objects. */
function nested(depth: number, asObject: boolean): string {
  return asObject
    ? `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`
    : `${'['.repeat(depth)}${']'.repeat(depth)}`;
}

/** Any JSON value, hostile strings included. */
const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.anything({ maxDepth: 3, withBigInt: false }),
  hostileString,
  fc.double(),
  fc.integer(),
  fc.constantFrom(-1, 0, 1e308, -1e308, 2 ** 53, 0.5, true, false, null, [], {}),
);

/** A valid body with one field replaced, removed, added or the whole wrapped: deep validation, not only the first check. */
function mutated(valid: unknown): fc.Arbitrary<unknown> {
  if (!valid || typeof valid !== 'object' || Array.isArray(valid)) return anyValue;
  const keys = Object.keys(valid);
  return fc.oneof(
    fc.constant(valid),
    keys.length > 0
      ? fc.tuple(fc.constantFrom(...keys), anyValue).map(([k, v]) => ({ ...valid, [k]: v }))
      : anyValue,
    keys.length > 0
      ? fc.constantFrom(...keys).map((k) => {
          const copy: Record<string, unknown> = { ...(valid as Record<string, unknown>) };
          delete copy[k];
          return copy;
        })
      : anyValue,
    fc.tuple(hostileString, anyValue).map(([k, v]) => ({ ...valid, [k]: v })),
    fc.constant([valid]),
  );
}

/** A request body: a mutation of a valid one, random JSON, malformed JSON, deep nesting, or too big. */
function bodyFor(route: RouteTemplate): fc.Arbitrary<string | undefined> {
  const valid = route.bodies ?? [];
  return fc.oneof(
    {
      weight: 6,
      arbitrary: valid.length
        ? fc
            .constantFrom(...valid)
            .chain(mutated)
            .map((v) => JSON.stringify(v))
        : fc.constant('{}'),
    },
    { weight: 2, arbitrary: fc.json({ maxDepth: 3 }) },
    { weight: 1, arbitrary: fc.string({ maxLength: 200 }) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        '{',
        '{"a":',
        '[1,2',
        'nul',
        '"\\ud800"',
        '{"__proto__":{"x":1}}',
        '1e999',
        '\u0000',
      ),
    },
    {
      weight: 1,
      arbitrary: fc.tuple(fc.integer({ min: 1000, max: 20_000 }), fc.boolean()).map(([d, o]) => nested(d, o)),
    },
    { weight: 1, arbitrary: fc.constant(JSON.stringify({ pad: 'x'.repeat(70_000) })) },
    { weight: 1, arbitrary: fc.constant(undefined) },
  );
}

const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD'];

/** Longest path generated (see {@link fuzzRequest}). */
const MAX_PATH = 12_000;

/**
 * Requests against `routes`: mostly each route's own method and a valid
 * token, sometimes a wrong method, a wrong or missing token, extra segments,
 * junk query parameters or a wrong content type.
 */
export function fuzzRequest(
  routes: readonly RouteTemplate[],
  options: { token: string },
): fc.Arbitrary<FuzzRequest> {
  return fc.constantFrom(...routes).chain((route) => {
    const parts = route.path.split('/').filter((p) => p.length > 0);
    const filled = fc.tuple(...parts.map((p) => (p.startsWith(':') ? segment : fc.constant(p))));
    const queryKeys = [...(route.query ?? []), 'force', 'since', 'limit', 'name', 'id', 'x'];
    const query = fc.array(
      fc.tuple(
        fc.constantFrom(...queryKeys),
        hostileString.map((s) => s.slice(0, 200)),
      ),
      {
        maxLength: 3,
      },
    );
    return fc
      .record({
        method: fc.oneof(
          { weight: 8, arbitrary: fc.constant(route.method) },
          { weight: 1, arbitrary: fc.constantFrom(...METHODS) },
        ),
        parts: filled,
        extra: fc.oneof(
          { weight: 9, arbitrary: fc.constant([] as string[]) },
          { weight: 1, arbitrary: fc.array(segment, { minLength: 1, maxLength: 2 }) },
        ),
        query,
        auth: fc.oneof(
          { weight: 12, arbitrary: fc.constant(`Bearer ${options.token}`) },
          {
            weight: 1,
            arbitrary: fc.constantFrom(
              '',
              'Bearer ',
              `Bearer ${options.token}x`,
              `bearer ${options.token}`,
              'Basic YTpi',
            ),
          },
          { weight: 1, arbitrary: fc.constant(undefined) },
        ),
        type: fc.constantFrom(
          'application/json',
          'application/json',
          'text/plain',
          'application/x-ndjson',
          undefined,
        ),
        body: bodyFor(route),
      })
      .map(({ method, parts: p, extra, query: q, auth, type, body }) => {
        const search = q.length ? `?${q.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&')}` : '';
        const headers: Record<string, string> = {};
        if (auth !== undefined) headers.authorization = auth;
        if (type !== undefined) headers['content-type'] = type;
        const hasBody = method !== 'GET' && method !== 'HEAD' && body !== undefined;
        return {
          method,
          // Under Node's 16 KiB limit on a request's head: past it Node itself answers 431 with no
          // body before Haven sees the request (a long path still arrives, cut anywhere, escapes too).
          path: `/${[...p, ...extra].join('/')}${search}`.slice(0, MAX_PATH),
          headers,
          body: hasBody ? body : undefined,
        };
      });
  });
}
