/**
 * The Prometheus registry (core/metrics.ts) against the text format's
 * grammar, checked by a strict parser (test/support/prometheus-text.ts):
 * escapes, special values, histogram consistency, refusal of bad names; and
 * the controller's and agent's catalogues rendering as valid text with the
 * counts their events imply.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  agentMetrics,
  epochCommitted,
  epochFailed,
  heartbeatMetrics,
  probeChecked,
} from '../../src/agent/metrics.js';
import { controllerMetrics, countEvent, countRequest, routeTemplate } from '../../src/controller/metrics.js';
import { escapeLabelValue, formatValue, Registry } from '../../src/core/metrics.js';
import { parsePrometheusText, sampleValue } from '../support/prometheus-text.js';

test('counters, gauges and histograms render as text the strict parser accepts, escapes and all', async () => {
  const registry = new Registry();
  const requests = registry.counter(
    't_requests_total',
    'Requests.\nSecond line with a \\ backslash and "quotes".',
    ['route', 'status'],
  );
  const tricky = 'a\\b "quoted"\nnext line';
  requests.labels('/v1/x', '200').inc();
  requests.labels('/v1/x', '200').inc(2);
  requests.labels(tricky, '500').inc();
  const gauge = registry.gauge('t_temperature', 'A gauge.', ['kind']);
  gauge.labels('nan').set(NaN);
  gauge.labels('inf').set(Infinity);
  gauge.labels('neg').set(-Infinity);
  gauge.labels('small').set(1.5e-7);
  gauge.labels('big').set(-12345678901234567890);
  const plain = registry.counter('t_plain_total', 'No labels.');
  plain.inc();
  const latency = registry.histogram('t_latency_seconds', 'Latency.', ['op'], [0.1, 0.5, 1]);
  for (const v of [0.05, 0.1, 0.2, 0.5, 0.7, 1, 3]) latency.labels('read').observe(v);
  latency.labels('write'); // a child that saw nothing still renders, with zero counts

  const text = await registry.render();
  const families = parsePrometheusText(text);
  assert.deepEqual(
    [...families.keys()],
    ['t_requests_total', 't_temperature', 't_plain_total', 't_latency_seconds'],
  );
  assert.equal(
    families.get('t_requests_total')!.help,
    'Requests.\nSecond line with a \\ backslash and "quotes".',
  );
  assert.equal(families.get('t_requests_total')!.type, 'counter');
  assert.equal(sampleValue(families, 't_requests_total', { route: '/v1/x', status: '200' }), 3);
  assert.equal(sampleValue(families, 't_requests_total', { route: tricky }), 1, 'escaped value round-trips');
  assert.ok(Number.isNaN(sampleValue(families, 't_temperature', { kind: 'nan' })));
  assert.equal(sampleValue(families, 't_temperature', { kind: 'inf' }), Infinity);
  assert.equal(sampleValue(families, 't_temperature', { kind: 'neg' }), -Infinity);
  assert.equal(sampleValue(families, 't_temperature', { kind: 'small' }), 1.5e-7);
  assert.equal(sampleValue(families, 't_plain_total'), 1);
  // Upper bounds are inclusive; 3 is above every bound: only in +Inf.
  const le = (bound: string): number | undefined =>
    sampleValue(families, 't_latency_seconds_bucket', { op: 'read', le: bound });
  assert.deepEqual([le('0.1'), le('0.5'), le('1'), le('+Inf')], [2, 4, 6, 7]);
  assert.equal(sampleValue(families, 't_latency_seconds_count', { op: 'read' }), 7);
  assert.ok(Math.abs(sampleValue(families, 't_latency_seconds_sum', { op: 'read' })! - 5.55) < 1e-9);
  assert.equal(sampleValue(families, 't_latency_seconds_bucket', { op: 'write', le: '+Inf' }), 0);
  assert.match(text, /^t_requests_total\{route="a\\\\b \\"quoted\\"\\nnext line",status="500"\} 1$/m);
});

test('the format helpers: escapes and special values', () => {
  assert.equal(escapeLabelValue('x\\y"z\n'), 'x\\\\y\\"z\\n');
  assert.equal(formatValue(NaN), 'NaN');
  assert.equal(formatValue(Infinity), '+Inf');
  assert.equal(formatValue(-Infinity), '-Inf');
  assert.equal(formatValue(0.25), '0.25');
});

test('bad names, repeated registration, "le" on a histogram, wrong label counts and negative increments are refused', () => {
  const registry = new Registry();
  assert.throws(() => registry.counter('1bad', 'x'), /invalid metric name/);
  assert.throws(() => registry.counter('bad-name', 'x'), /invalid metric name/);
  assert.throws(() => registry.gauge('ok_name', 'x', ['bad-label']), /invalid label name/);
  assert.throws(() => registry.gauge('ok_name2', 'x', ['__reserved']), /invalid label name/);
  assert.throws(() => registry.gauge('ok_name3', 'x', ['a', 'a']), /repeated label/);
  assert.throws(() => registry.histogram('h_seconds', 'x', ['le']), /reserved/);
  assert.throws(() => registry.histogram('h2_seconds', 'x', [], [1, 0.5]), /ascending/);
  const c = registry.counter('c_total', 'x', ['a']);
  assert.throws(() => registry.counter('c_total', 'x'), /twice/);
  assert.throws(() => c.labels(), /takes 1 label/);
  assert.throws(() => c.labels('x').inc(-1), /cannot go down/);
});

test('collectors run before each render; one that fails leaves the scrape intact', async () => {
  const registry = new Registry();
  const g = registry.gauge('t_collected', 'Set at scrape time.');
  let n = 0;
  registry.onCollect(() => g.set(++n));
  const stop = registry.onCollect(() => Promise.reject(new Error('store down')));
  assert.equal(sampleValue(parsePrometheusText(await registry.render()), 't_collected'), 1);
  stop();
  assert.equal(sampleValue(parsePrometheusText(await registry.render()), 't_collected'), 2);
});

test('the strict parser itself refuses what Prometheus would', () => {
  const bad = [
    'x 1', // no final line feed
    'x{a="\\q"} 1\n', // unknown escape
    'x{a="1",a="2"} 1\n', // repeated label
    'x 1\nx 2\n', // repeated series
    'x one\n', // bad value
    '# TYPE x counter\nx -1\n', // negative counter
    '# TYPE x counter\nx 1\n# TYPE y gauge\ny 1\nx 2\n', // family split
    '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n', // counts fall
    '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n', // _count ≠ +Inf
    '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', // no +Inf
    '# TYPE x bogus\n', // unknown type
  ];
  for (const text of bad) assert.throws(() => parsePrometheusText(text), Error, JSON.stringify(text));
});

test('route templates keep the series bounded: names become :name, unknown paths "other"', () => {
  assert.equal(routeTemplate('/v1/containers'), '/v1/containers');
  assert.equal(routeTemplate('/v1/containers/redis'), '/v1/containers/:name');
  assert.equal(routeTemplate('/v1/containers/redis/checkpoint'), '/v1/containers/:name/checkpoint');
  assert.equal(routeTemplate('/v1/hosts/h1/heartbeat'), '/v1/hosts/:name/heartbeat');
  assert.equal(routeTemplate('/v1/images/sha256:abc'), '/v1/images/:ref');
  assert.equal(routeTemplate('/metrics'), '/metrics');
  assert.equal(routeTemplate('/v1/containers/redis/rm-rf'), 'other');
  assert.equal(routeTemplate('/v1/nothing/here'), 'other');
  assert.equal(routeTemplate('/etc/passwd'), 'other');
});

test("the controller's catalogue counts failovers, switchovers, suspicions and requests from what happened", async () => {
  countEvent({
    kind: 'container.failed-over',
    subject: 'redis',
    data: { reason: 'host down', mode: 'checkpoint', failoverMs: 1800, detectMs: 350 },
  });
  countEvent({
    kind: 'container.failed-over',
    subject: 'redis',
    data: { reason: 'container exited', mode: 'restart', failoverMs: 400, detectMs: 0, resumed: true },
  });
  countEvent({ kind: 'container.switched-over', subject: 'redis', data: { totalMs: 900 } });
  countEvent({ kind: 'container.switchover-failed', subject: 'redis', data: { rolledBack: true } });
  countEvent({ kind: 'host.down', subject: 'h1', data: { silentMs: 350 } });
  countRequest('GET', '/v1/containers/redis', 200);
  countRequest('BREW', '/v1/x', 404);
  const families = parsePrometheusText(await controllerMetrics.render());
  const v = (name: string, labels: Record<string, string> = {}): number | undefined =>
    sampleValue(families, name, labels);
  assert.equal(v('haven_controller_failovers_total', { cause: 'host down', mode: 'checkpoint' }), 1);
  assert.equal(v('haven_controller_failovers_total', { cause: 'container exited', mode: 'restart' }), 1);
  assert.equal(v('haven_controller_failover_duration_seconds_count'), 2);
  assert.equal(v('haven_controller_failover_duration_seconds_sum'), 2.2);
  assert.equal(
    v('haven_controller_failover_detection_seconds_count'),
    1,
    'a container failure has no detection time',
  );
  assert.equal(v('haven_controller_operations_resumed_total', { kind: 'failover' }), 1);
  assert.equal(v('haven_controller_switchovers_total', { result: 'done' }), 1);
  assert.equal(v('haven_controller_switchovers_total', { result: 'rolled-back' }), 1);
  assert.equal(v('haven_controller_detector_suspicions_total', { host: 'h1' }), 1);
  assert.equal(v('haven_controller_events_total', { kind: 'container.failed-over' }), 2);
  assert.equal(v('haven_controller_api_requests_total', { method: 'GET', route: '/v1/containers/:name' }), 1);
  assert.equal(
    v('haven_controller_api_requests_total', { method: 'other', route: 'other', status: '404' }),
    1,
  );
  assert.ok(v('process_resident_memory_bytes')! > 0);
});

test("the agent's catalogue counts epochs, bytes, freezes, probes and heartbeat round trips", async () => {
  epochCommitted({ frozenMs: 35, sentBytes: 1000, totalBytes: 16_000_000, epochMs: 400 });
  epochCommitted({ frozenMs: 40, sentBytes: 500, totalBytes: 16_000_000, epochMs: 300 });
  epochFailed();
  probeChecked('tcpSocket', true);
  probeChecked('exec', false);
  heartbeatMetrics.datagram.sent.inc();
  heartbeatMetrics.datagram.rtt.observe(0.0004);
  const families = parsePrometheusText(await agentMetrics.render());
  const v = (name: string, labels: Record<string, string> = {}): number | undefined =>
    sampleValue(families, name, labels);
  assert.equal(v('haven_agent_epochs_total', { result: 'committed' }), 2);
  assert.equal(v('haven_agent_epochs_total', { result: 'failed' }), 1);
  assert.equal(v('haven_agent_epoch_sent_bytes_total'), 1500);
  assert.equal(v('haven_agent_checkpoint_freeze_seconds_count', { kind: 'epoch' }), 2);
  assert.equal(v('haven_agent_checkpoint_freeze_seconds_bucket', { kind: 'epoch', le: '0.03' }), 0);
  assert.equal(v('haven_agent_checkpoint_freeze_seconds_bucket', { kind: 'epoch', le: '0.05' }), 2);
  assert.equal(v('haven_agent_probes_total', { kind: 'tcpSocket', result: 'success' }), 1);
  assert.equal(v('haven_agent_probes_total', { kind: 'exec', result: 'failure' }), 1);
  assert.equal(v('haven_agent_heartbeats_sent_total', { transport: 'datagram' }), 1);
  assert.equal(v('haven_agent_heartbeat_rtt_seconds_bucket', { transport: 'datagram', le: '0.0005' }), 1);
});

test('a counter increment on the hot path allocates nothing and costs next to nothing', () => {
  const registry = new Registry();
  const child = registry.counter('t_hot_total', 'x', ['transport']).labels('datagram');
  const started = performance.now();
  for (let i = 0; i < 1_000_000; i++) child.inc();
  const ms = performance.now() - started;
  assert.equal(child.value, 1_000_000);
  // ~1 ns each when warm; the bound is loose for a loaded CI machine.
  assert.ok(ms < 500, `1M increments took ${ms.toFixed(1)} ms`);
});
