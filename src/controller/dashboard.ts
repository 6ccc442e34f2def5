/**
 * The dashboard's side of the controller: its static files, its login and
 * its sessions. It works as Jupyter's token URL does — `haven dashboard`
 * asks the controller (with the cluster token) for a one-time login token
 * and prints `/ui/login?token=…`; opening it sets a session cookie and
 * redirects to `/ui/`, and the page then calls the ordinary `/v1` API with
 * that cookie instead of the cluster token, which never reaches a browser.
 *
 * ```
 *   haven dashboard ─POST /v1/dashboard/logins (Bearer)─▶ { token, expiresAt }   one use, 2 minutes
 *   browser ─GET /ui/login?token=…─▶ Set-Cookie: haven_session (HttpOnly, SameSite=Strict), 303 /ui/
 *   page    ─GET /ui/session─▶ { csrf, expiresAt }
 *   page    ─GET /v1/…  with the cookie                       (read-only: any GET)
 *   page    ─POST /v1/… with the cookie and x-haven-csrf      (only the operator's actions)
 * ```
 *
 * Sessions are stateless — an HMAC over (expiry, id) under a key derived
 * from the cluster token — so a session outlives a controller restart (the
 * demo restarts it while someone watches) and the two listeners of one
 * controller (TCP and Unix socket) agree without sharing anything. Login
 * tokens are the opposite, state in memory: single use needs memory, and a
 * restart forgetting them only fails closed. Why a CSRF token on top of
 * SameSite=Strict: a browser that ignores SameSite, or a page on another
 * port of the same host (same site, other origin), cannot read the CSRF
 * token, so it cannot act.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { REPO_ROOT } from '../core/config.js';
import { HttpError, sendJson } from '../core/http.js';

/** The session cookie's name. */
export const SESSION_COOKIE = 'haven_session';
/** The header a cookie-authenticated request that changes something must carry (its value: the session's CSRF token). */
export const CSRF_HEADER = 'x-haven-csrf';
/** How long a login token may wait to be used. */
export const LOGIN_TTL_MS = 120_000;
/** How long a session lasts (a working day; log in again after). */
export const SESSION_TTL_MS = 8 * 3600_000;
/** Login tokens outstanding at most: the oldest goes first (each `haven dashboard` makes one). */
const MAX_LOGINS = 256;
/** Sessions logged out and remembered until they expire, at most. */
const MAX_REVOKED = 4096;

/** Where the bundle is built (`npm run build`: scripts/build-dashboard.mjs). */
export const UI_DIR = join(REPO_ROOT, 'dist', 'ui');

/** A login token, as `POST /v1/dashboard/logins` answers. */
export interface LoginGrant {
  token: string;
  /** The path to open on the controller's address: `/ui/login?token=…`. */
  path: string;
  expiresAt: string;
}

/** A valid session, as read from its cookie. */
export interface Session {
  id: string;
  expiresAt: number;
}

/** Logins and sessions of one controller (shared by its TCP and Unix-socket listeners). */
export class DashboardAuth {
  private readonly key: Buffer;
  /** sha256(login token) → expiry; only hashes are kept, so a memory dump reveals no usable token. */
  private readonly logins = new Map<string, number>();
  /** Logged-out session id → its expiry. */
  private readonly revoked = new Map<string, number>();

  constructor(
    clusterToken: string,
    private readonly now: () => number = Date.now,
  ) {
    // A key of its own: a session cookie is no use as a cluster token, nor the reverse.
    this.key = createHmac('sha256', clusterToken).update('haven dashboard session v1').digest();
  }

  /** A new one-time login token. */
  mintLogin(): LoginGrant {
    this.prune();
    while (this.logins.size >= MAX_LOGINS) {
      const oldest = this.logins.keys().next().value;
      if (oldest === undefined) break;
      this.logins.delete(oldest);
    }
    const token = randomBytes(32).toString('hex');
    const expiresAt = this.now() + LOGIN_TTL_MS;
    this.logins.set(sha256(token), expiresAt);
    return {
      token,
      path: `/ui/login?token=${token}`,
      expiresAt: new Date(expiresAt).toISOString(),
    };
  }

  /** Uses up a login token; a new session's cookie value if it was valid, else undefined. */
  redeemLogin(token: string): string | undefined {
    if (!/^[0-9a-f]{64}$/.test(token)) return undefined;
    const hash = sha256(token);
    const expiresAt = this.logins.get(hash);
    this.logins.delete(hash);
    if (expiresAt === undefined || expiresAt < this.now()) return undefined;
    const expiry = (this.now() + SESSION_TTL_MS).toString(36);
    const id = randomBytes(16).toString('base64url');
    return `${expiry}.${id}.${this.mac(`${expiry}.${id}`)}`;
  }

  /** The session a request's cookie names, if it is genuine, unexpired and not logged out. */
  session(req: IncomingMessage): Session | undefined {
    const value = cookie(req, SESSION_COOKIE);
    const match = value ? /^([0-9a-z]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$/.exec(value) : null;
    if (!match) return undefined;
    const [, expiry = '', id = '', mac = ''] = match;
    if (!safeEqual(mac, this.mac(`${expiry}.${id}`))) return undefined;
    const expiresAt = parseInt(expiry, 36);
    if (!(expiresAt > this.now()) || this.revoked.has(id)) return undefined;
    return { id, expiresAt };
  }

  /** The CSRF token of a session: derived, so nothing is stored and every listener agrees. */
  csrf(session: Session): string {
    return this.mac(`csrf.${session.id}`);
  }

  /** Ends a session (until this controller restarts: then only its expiry ends it). */
  revoke(session: Session): void {
    this.prune();
    if (this.revoked.size >= MAX_REVOKED) {
      const oldest = this.revoked.keys().next().value;
      if (oldest !== undefined) this.revoked.delete(oldest);
    }
    this.revoked.set(session.id, session.expiresAt);
  }

  private mac(text: string): string {
    return createHmac('sha256', this.key).update(text).digest('base64url');
  }

  private prune(): void {
    const now = this.now();
    for (const [hash, at] of this.logins) if (at < now) this.logins.delete(hash);
    for (const [id, at] of this.revoked) if (at < now) this.revoked.delete(id);
  }
}

const auths = new WeakMap<object, DashboardAuth>();

/**
 * The {@link DashboardAuth} of a controller: one per controller object, so
 * its TCP and Unix-socket servers share login tokens (`haven dashboard`
 * mints through the socket; the browser logs in over TCP).
 */
export function dashboardAuthFor(controller: object, clusterToken: string): DashboardAuth {
  let auth = auths.get(controller);
  if (!auth) {
    auth = new DashboardAuth(clusterToken);
    auths.set(controller, auth);
  }
  return auth;
}

/**
 * Routes the browser may call with a session cookie and the CSRF header:
 * the dashboard's actions, nothing an agent or an image upload uses.
 */
const SESSION_WRITES: readonly RegExp[] = [
  /^\/v1\/containers\/[^/]+\/(failover|migrate)$/,
  /^\/v1\/hosts\/[^/]+\/(drain|cordon|uncordon)$/,
];

/** How a request to the API was authenticated. */
export type Principal = 'token' | 'session';

/**
 * Authenticates a request to the API: the cluster token (Bearer), or a
 * dashboard session — for reads, and for the dashboard's actions when the
 * request also carries the session's CSRF token and, if it names one, this
 * origin. Throws 401 (no valid credential) or 403 (a session asking for
 * more than a session may).
 */
export function authenticate(req: IncomingMessage, clusterToken: string, auth: DashboardAuth): Principal {
  if (req.headers.authorization !== undefined) {
    if (!safeEqual(req.headers.authorization, `Bearer ${clusterToken}`))
      throw new HttpError(401, 'missing or wrong cluster token');
    return 'token';
  }
  const session = auth.session(req);
  if (!session) throw new HttpError(401, 'missing or wrong cluster token (or dashboard session)');
  const method = req.method ?? 'GET';
  if (method === 'GET' || method === 'HEAD') return 'session';
  const path = (req.url ?? '/').split('?', 1)[0] ?? '/';
  if (method !== 'POST' || !SESSION_WRITES.some((route) => route.test(path)))
    throw new HttpError(403, `a dashboard session may not ${method} ${path}`);
  checkCsrf(req, auth, session);
  return 'session';
}

function checkCsrf(req: IncomingMessage, auth: DashboardAuth, session: Session): void {
  const header = req.headers[CSRF_HEADER];
  if (typeof header !== 'string' || !safeEqual(header, auth.csrf(session)))
    throw new HttpError(403, `missing or wrong ${CSRF_HEADER} header`);
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== `http://${req.headers.host ?? ''}`)
    throw new HttpError(403, `cross-origin request from ${origin}`);
}

/** Whether a path is the dashboard's own (static files, login, session), served before any authentication. */
export function isUiPath(path: string): boolean {
  return path === '/ui' || path.startsWith('/ui/');
}

/** Static files of the bundle: exactly these names, nothing read from a path a request chose. */
const STATIC: Readonly<Record<string, string>> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'app.css': 'text/css; charset=utf-8',
  'favicon.svg': 'image/svg+xml',
};

/**
 * Everything the page is allowed to load or talk to: this origin only (no
 * CDN, no inline script), and it may not be framed (clickjacking the
 * action buttons).
 */
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  // The login URL carries a token: it must never travel on as a Referer.
  'referrer-policy': 'no-referrer',
} as const;

/**
 * Serves `/ui/…`: the login, the session's CSRF token, logout, and the
 * bundle. Files come from `uiDir` (default {@link UI_DIR}).
 */
export async function handleUi(
  req: IncomingMessage,
  res: ServerResponse,
  auth: DashboardAuth,
  uiDir = UI_DIR,
): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://haven');
  const method = req.method ?? 'GET';
  const path = url.pathname;
  if (path === '/ui') return redirect(res, '/ui/');

  if (path === '/ui/login' && method === 'GET') {
    const token = url.searchParams.get('token') ?? '';
    const cookieValue = auth.redeemLogin(token);
    if (!cookieValue) {
      res.writeHead(401, {
        ...SECURITY_HEADERS,
        'content-type': 'text/html; charset=utf-8',
        'cache-control': 'no-store',
      });
      res.end(
        '<!doctype html><meta charset="utf-8"><title>Haven: login link not valid</title>' +
          '<p>This login link was already used or has expired. Run <code>haven dashboard</code> for a new one.</p>',
      );
      return;
    }
    res.writeHead(303, {
      ...SECURITY_HEADERS,
      location: '/ui/',
      'cache-control': 'no-store',
      'set-cookie': `${SESSION_COOKIE}=${cookieValue}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_TTL_MS / 1000}`,
    });
    res.end();
    return;
  }

  if (path === '/ui/session' && method === 'GET') {
    const session = auth.session(req);
    if (!session) throw new HttpError(401, 'not logged in: open the URL haven dashboard prints');
    res.setHeader('cache-control', 'no-store');
    return sendJson(res, 200, {
      csrf: auth.csrf(session),
      expiresAt: new Date(session.expiresAt).toISOString(),
    });
  }

  if (path === '/ui/logout' && method === 'POST') {
    const session = auth.session(req);
    if (session) {
      checkCsrf(req, auth, session);
      auth.revoke(session);
    }
    res.writeHead(200, {
      'content-type': 'application/json',
      'set-cookie': `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`,
    });
    res.end('{"ok":true}');
    return;
  }

  if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, `${method} not allowed on ${path}`);
  const name = path === '/ui/' ? 'index.html' : path.slice('/ui/'.length);
  const type = Object.hasOwn(STATIC, name) ? STATIC[name] : undefined;
  if (!type) throw new HttpError(404, `no such file ${path}`);
  let body: Buffer;
  try {
    body = await readFile(join(uiDir, name));
  } catch {
    throw new HttpError(404, `${path} is not built: run npm run build`);
  }
  res.writeHead(200, {
    ...SECURITY_HEADERS,
    'content-type': type,
    'content-length': String(body.length),
    // The page is tiny; always the one this controller was built with.
    'cache-control': 'no-cache',
  });
  res.end(method === 'HEAD' ? undefined : body);
}

function redirect(res: ServerResponse, location: string): void {
  res.writeHead(301, { location });
  res.end();
}

/** One cookie's value from the Cookie header. */
function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Constant-time comparison of two strings (a length difference returns at once: lengths are not secret). */
function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
