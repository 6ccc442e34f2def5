/**
 * The dashboard without a browser: its login tokens (one use, short-lived),
 * sessions (signed, expiring, not forgeable, logged out), what a session
 * may do (any GET; only the operator's actions, with the CSRF token and
 * this origin), and the page's model — operations rebuilt from events for
 * the timeline, bounded epoch samples, the SSE parser.
 */
import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { test } from 'node:test';
import {
  authenticate,
  CSRF_HEADER,
  DashboardAuth,
  LOGIN_TTL_MS,
  SESSION_COOKIE,
  SESSION_TTL_MS,
} from '../../src/controller/dashboard.js';
import {
  addOperation,
  formatEpoch,
  MAX_SAMPLES,
  operationOf,
  parseSse,
  recordSamples,
  type ClusterEvent,
  type ContainerView,
} from '../../src/dashboard/model.js';

const TOKEN = 'cluster-token-0123456789abcdef';

function request(fields: {
  method?: string;
  url?: string;
  cookie?: string;
  headers?: Record<string, string>;
}): IncomingMessage {
  return {
    method: fields.method ?? 'GET',
    url: fields.url ?? '/v1/hosts',
    headers: {
      host: '127.0.0.1:7080',
      ...(fields.cookie ? { cookie: `other=1; ${SESSION_COOKIE}=${fields.cookie}` } : {}),
      ...fields.headers,
    },
  } as unknown as IncomingMessage;
}

function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1_800_000_000_000;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

test('a login token works once, and not after two minutes', () => {
  const c = clock();
  const auth = new DashboardAuth(TOKEN, c.now);
  const grant = auth.mintLogin();
  assert.match(grant.path, /^\/ui\/login\?token=[0-9a-f]{64}$/);
  assert.ok(auth.redeemLogin(grant.token));
  assert.equal(auth.redeemLogin(grant.token), undefined, 'used');
  const late = auth.mintLogin();
  c.advance(LOGIN_TTL_MS + 1);
  assert.equal(auth.redeemLogin(late.token), undefined, 'expired');
  assert.equal(auth.redeemLogin('../../etc/passwd'), undefined);
  assert.equal(auth.redeemLogin('0'.repeat(64)), undefined, 'never minted');
});

test('a session is signed, expires, survives a restart (same token) and not another cluster', () => {
  const c = clock();
  const auth = new DashboardAuth(TOKEN, c.now);
  const cookie = auth.redeemLogin(auth.mintLogin().token)!;
  assert.ok(auth.session(request({ cookie })));
  assert.ok(new DashboardAuth(TOKEN, c.now).session(request({ cookie })), 'a restarted controller');
  assert.equal(new DashboardAuth(`${TOKEN}x`, c.now).session(request({ cookie })), undefined);
  const [expiry, id, mac] = cookie.split('.');
  const forged = `${(parseInt(expiry!, 36) + 1e9).toString(36)}.${id}.${mac}`;
  assert.equal(auth.session(request({ cookie: forged })), undefined, 'a longer expiry is not signed');
  c.advance(SESSION_TTL_MS + 1);
  assert.equal(auth.session(request({ cookie })), undefined, 'expired');
});

test('a logged-out session is refused', () => {
  const auth = new DashboardAuth(TOKEN);
  const cookie = auth.redeemLogin(auth.mintLogin().token)!;
  auth.revoke(auth.session(request({ cookie }))!);
  assert.equal(auth.session(request({ cookie })), undefined);
});

test('what a session may do: read anything; act only with the CSRF token, from this origin', () => {
  const auth = new DashboardAuth(TOKEN);
  const cookie = auth.redeemLogin(auth.mintLogin().token)!;
  const csrf = auth.csrf(auth.session(request({ cookie }))!);
  const status = (req: IncomingMessage): number | string => {
    try {
      return authenticate(req, TOKEN, auth);
    } catch (error) {
      return (error as { status: number }).status;
    }
  };
  assert.equal(status(request({ headers: { authorization: `Bearer ${TOKEN}` } })), 'token');
  assert.equal(status(request({ headers: { authorization: 'Bearer nope' }, cookie })), 401);
  assert.equal(status(request({})), 401);
  assert.equal(status(request({ cookie })), 'session');
  assert.equal(status(request({ cookie, url: '/v1/events?follow=true' })), 'session');
  const migrate = { method: 'POST', url: '/v1/containers/kv/migrate', cookie };
  assert.equal(status(request(migrate)), 403, 'no CSRF header');
  assert.equal(status(request({ ...migrate, headers: { [CSRF_HEADER]: 'x' } })), 403);
  assert.equal(status(request({ ...migrate, headers: { [CSRF_HEADER]: csrf } })), 'session');
  assert.equal(
    status(request({ ...migrate, headers: { [CSRF_HEADER]: csrf, origin: 'http://127.0.0.1:7080' } })),
    'session',
  );
  assert.equal(
    status(request({ ...migrate, headers: { [CSRF_HEADER]: csrf, origin: 'http://127.0.0.1:9999' } })),
    403,
  );
  for (const [method, url] of [
    ['POST', '/v1/hosts/h1/drain'],
    ['POST', '/v1/containers/kv/failover'],
  ] as const)
    assert.equal(status(request({ method, url, cookie, headers: { [CSRF_HEADER]: csrf } })), 'session');
  for (const [method, url] of [
    ['POST', '/v1/containers'],
    ['DELETE', '/v1/containers/kv'],
    ['PUT', '/v1/images'],
    ['POST', '/v1/hosts'],
    ['POST', '/v1/dashboard/logins'],
    ['POST', '/v1/containers/kv/stop'],
  ] as const)
    assert.equal(status(request({ method, url, cookie, headers: { [CSRF_HEADER]: csrf } })), 403, url);
});

const at = '2026-01-01T00:00:10.000Z';
const event = (kind: string, data: Record<string, unknown>, seq = 1): ClusterEvent => ({
  seq,
  at,
  kind,
  subject: 'kv',
  data,
});

test('a failover on the timeline: detection, decision, assemble, restore back from its end', () => {
  const op = operationOf(
    event('container.failed-over', {
      from: 'h1',
      to: 'h2',
      mode: 'checkpoint',
      reason: 'host down',
      detectMs: 400,
      failoverMs: 600,
      assembleMs: 100,
      restoreMs: 300,
      epoch: Date.parse('2026-01-01T00:00:08.500Z'),
    }),
  )!;
  assert.equal(op.kind, 'failover');
  assert.equal(op.startedAt, Date.parse(at) - 1000);
  assert.equal(op.downtimeMs, 1000);
  assert.deepEqual(
    op.segments.map((s) => [s.label, s.startMs, s.durationMs]),
    [
      ['detection', 0, 400],
      ['decision', 400, 200],
      ['assemble', 600, 100],
      ['restore', 700, 300],
    ],
  );
  assert.match(op.detail, /host down \(checkpoint, epoch 00:00:08\.500\)/);
});

test('a migration, a failed one, and events that are not operations', () => {
  const done = operationOf(
    event('container.migrated', {
      from: 'h1',
      to: 'h3',
      strategy: 'pre-copy',
      totalMs: 3000,
      downtimeMs: 500,
      assembleMs: 50,
      restoreMs: 250,
      totalSentBytes: 5_000_000,
      rounds: [{ round: 1, frozenMs: 40, sentBytes: 4_000_000, checkpointBytes: 4_000_000 }],
    }),
  )!;
  assert.equal(done.downtimeMs, 500);
  assert.deepEqual(
    done.segments.map((s) => s.durationMs),
    [2500, 200, 50, 250],
  );
  assert.equal(done.rounds.length, 1);
  const failed = operationOf(
    event('container.migration-failed', {
      from: 'h1',
      to: 'h3',
      phase: 'transfer',
      error: 'boom',
      rolledBack: true,
    }),
  )!;
  assert.equal(failed.ok, false);
  assert.match(failed.detail, /failed in transfer: boom \(rolled back\)/);
  assert.equal(operationOf(event('container.protected', {})), undefined);
  let ops = addOperation([], event('container.migrated', { totalMs: 1 }, 5));
  ops = addOperation(ops, event('container.migrated', { totalMs: 1 }, 5));
  ops = addOperation(ops, event('container.failed-over', {}, 9));
  assert.deepEqual(
    ops.map((o) => o.seq),
    [9, 5],
    'newest first, each once',
  );
});

test('epoch samples: one per new epoch, bounded, reset by a new primary', () => {
  const view = (epoch: number | null): ContainerView =>
    ({
      name: 'kv',
      protection: { committedEpoch: epoch, frozenMs: 30, sentBytes: 10, totalBytes: 100 },
    }) as ContainerView;
  let history = recordSamples(new Map(), [view(null)], 0);
  assert.deepEqual(history.get('kv'), []);
  history = recordSamples(history, [view(1000)], 1);
  history = recordSamples(history, [view(1000)], 2);
  assert.equal(history.get('kv')!.length, 1, 'the same epoch once');
  for (let i = 1; i <= MAX_SAMPLES + 10; i++) history = recordSamples(history, [view(1000 + i)], i);
  assert.equal(history.get('kv')!.length, MAX_SAMPLES);
  history = recordSamples(history, [view(5)], 0);
  assert.deepEqual(
    history.get('kv')!.map((s) => s.epoch),
    [5],
  );
  assert.equal(recordSamples(history, [], 0).size, 0, 'a removed container goes');
  assert.equal(formatEpoch(7), '#7');
});

test('the SSE parser keeps a partial event for the next chunk', () => {
  const first = parseSse('id: 1\nevent: a\ndata: {"seq":1}\n\n: keep-alive\n\nid: 2\ndata: {"se');
  assert.deepEqual(first.data, ['{"seq":1}']);
  const second = parseSse(`${first.rest}q":2}\n\n`);
  assert.deepEqual(second.data, ['{"seq":2}']);
  assert.equal(second.rest, '');
});
