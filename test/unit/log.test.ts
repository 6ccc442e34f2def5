/**
 * Structured logs (core/log.ts): one JSON object a line with time, level,
 * module and msg first; readable lines with HAVEN_LOG=text; levels filtered.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { lineLogger, logger } from '../../src/core/log.js';

test('JSON lines carry time, level, module, msg and the fields; reserved names do not overwrite', () => {
  const lines: string[] = [];
  const log = logger('agent', { format: 'json', write: (l) => lines.push(l) }).child('protection');
  log.warn('froze c1', {
    container: 'c1',
    silentMs: 512,
    msg: 'clash',
    error: new Error('boom'),
    skip: undefined,
  });
  assert.equal(lines.length, 1);
  assert.ok(!lines[0]!.includes('\n'));
  const record = JSON.parse(lines[0]!) as Record<string, unknown>;
  assert.deepEqual(Object.keys(record).slice(0, 4), ['time', 'level', 'module', 'msg']);
  assert.equal(record.level, 'warn');
  assert.equal(record.module, 'agent.protection');
  assert.equal(record.msg, 'froze c1');
  assert.equal(record.container, 'c1');
  assert.equal(record.silentMs, 512);
  assert.equal(record['field.msg'], 'clash');
  assert.equal(record.error, 'boom');
  assert.ok(!('skip' in record));
  assert.ok(!Number.isNaN(Date.parse(record.time as string)));
});

test('a field JSON cannot carry does not lose the record', () => {
  const lines: string[] = [];
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  logger('controller', { write: (l) => lines.push(l) }).info('odd', { cyclic, big: 10n });
  const record = JSON.parse(lines[0]!) as Record<string, unknown>;
  assert.equal(record.msg, 'odd');
});

test('HAVEN_LOG=text gives readable lines; levels below HAVEN_LOG_LEVEL are dropped', () => {
  const lines: string[] = [];
  const saved = { format: process.env.HAVEN_LOG, level: process.env.HAVEN_LOG_LEVEL };
  process.env.HAVEN_LOG = 'text';
  process.env.HAVEN_LOG_LEVEL = 'warn';
  try {
    const log = logger('controller.failover', { write: (l) => lines.push(l) });
    log.info('not written');
    log.warn('failover of redis failed', { container: 'redis', why: 'no backup up' });
  } finally {
    if (saved.format === undefined) delete process.env.HAVEN_LOG;
    else process.env.HAVEN_LOG = saved.format;
    if (saved.level === undefined) delete process.env.HAVEN_LOG_LEVEL;
    else process.env.HAVEN_LOG_LEVEL = saved.level;
  }
  assert.equal(lines.length, 1);
  assert.match(
    lines[0]!,
    /^\d{4}-\d\d-\d\dT[\d:.]+Z warn {2}controller\.failover: failover of redis failed container=redis why="no backup up"$/,
  );
});

test('a line logger hands over the message and fields only (for components given a line sink)', () => {
  const lines: string[] = [];
  lineLogger('agent.probes', (l) => lines.push(l)).debug('watchdog: pinger is unhealthy', { failures: 3 });
  assert.deepEqual(lines, ['watchdog: pinger is unhealthy failures=3']);
});
