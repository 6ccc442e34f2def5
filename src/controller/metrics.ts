/**
 * What the controller exposes on `GET /metrics` (Prometheus text format, see
 * `core/metrics.ts`). Most series are derived, not kept on the hot path:
 *
 *   - heartbeats by datagram are the receiver's own {@link DatagramStats},
 *     read at scrape time (the beat path already increments them);
 *   - hosts by state and each host's φ come from `listHosts()` at scrape;
 *   - failovers, switchovers, migrations, resumed operations, suspicions and events by
 *     kind are counted from the controller's event stream, which records
 *     every one of them with its cause, mode and timings — so the controller's
 *     logic carries no metrics code at all.
 *
 * Only heartbeats over HTTP (stream lines, report requests) and API requests
 * are counted where they happen, through children resolved once.
 */
import { registerProcessMetrics, Registry } from '../core/metrics.js';
import type { Controller } from './controller.js';
import type { DatagramStats } from './heartbeat-udp.js';
import type { StoredEvent } from './store.js';

/** The controller process's registry (one controller per process). */
export const controllerMetrics = new Registry();
registerProcessMetrics(controllerMetrics);

const heartbeats = controllerMetrics.counter(
  'haven_controller_heartbeats_total',
  'Heartbeats accepted, by transport: datagram (UDP), stream (NDJSON lines) or request (a report, one POST each).',
  ['transport'],
);
/** Per-transport children, resolved once: a beat costs one addition. */
export const heartbeatsByDatagram = heartbeats.labels('datagram');
export const heartbeatsOnStream = heartbeats.labels('stream');
export const heartbeatsByRequest = heartbeats.labels('request');

const datagramsRejected = controllerMetrics.counter(
  'haven_controller_heartbeat_datagrams_rejected_total',
  'Heartbeat datagrams not counted: refused (unknown host, boot or key: told to register) or malformed.',
  ['reason'],
);

const hosts = controllerMetrics.gauge('haven_controller_hosts', 'Registered hosts by liveness state.', [
  'state',
]);
const phi = controllerMetrics.gauge(
  'haven_controller_host_phi',
  "The failure detector's suspicion of each host now (phi accrual; suspected at 8).",
  ['host'],
);
const suspectAfter = controllerMetrics.gauge(
  'haven_controller_host_suspect_after_seconds',
  'The silence after which the detector would suspect each host, from its own heartbeat rhythm.',
  ['host'],
);
const suspicions = controllerMetrics.counter(
  'haven_controller_detector_suspicions_total',
  'Times the failure detector declared a host down (its heartbeats stopped for longer than its rhythm makes likely).',
  ['host'],
);
const failovers = controllerMetrics.counter(
  'haven_controller_failovers_total',
  'Containers failed over, by cause (host down, container exited, unhealthy) and protection mode (checkpoint, restart).',
  ['cause', 'mode'],
);
const failoverSeconds = controllerMetrics.histogram(
  'haven_controller_failover_duration_seconds',
  'From the failover decision to the container running on its new host with the intent moved.',
  [],
  [0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120],
);
const detectSeconds = controllerMetrics.histogram(
  'haven_controller_failover_detection_seconds',
  "A failed-over host's silence when it was declared down.",
  [],
  [0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10],
);
const failoversFailed = controllerMetrics.counter(
  'haven_controller_failovers_failed_total',
  'Failover attempts that failed (the event says whether it will be retried).',
);
const switchovers = controllerMetrics.counter(
  'haven_controller_switchovers_total',
  'Planned switchovers (haven failover NAME), by result: done, failed, rolled-back.',
  ['result'],
);
const switchoverSeconds = controllerMetrics.histogram(
  'haven_controller_switchover_duration_seconds',
  'Planned switchover from decision to the old copy removed.',
  [],
  [0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60],
);
const migrations = controllerMetrics.counter(
  'haven_controller_migrations_total',
  'Live migrations, by strategy (stop-copy, pre-copy) and result (done, failed: rolled back to the source).',
  ['strategy', 'result'],
);
const migrationDowntime = controllerMetrics.histogram(
  'haven_controller_migration_downtime_seconds',
  "A live migration's downtime: from the final checkpoint's start to the restore done on the destination.",
  [],
  [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
);
const migrationSeconds = controllerMetrics.histogram(
  'haven_controller_migration_duration_seconds',
  'A live migration from decision to the intent moved (every pre-copy round included).',
  [],
  [0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
);
const resumed = controllerMetrics.counter(
  'haven_controller_operations_resumed_total',
  'Failovers and switchovers finished after being resumed (by a restarted controller, or a retry), by kind.',
  ['kind'],
);
const events = controllerMetrics.counter(
  'haven_controller_events_total',
  'Cluster events recorded, by kind.',
  ['kind'],
);
const requests = controllerMetrics.counter(
  'haven_controller_api_requests_total',
  'API requests answered, by method, route (a template: /v1/containers/:name/checkpoint) and status.',
  ['method', 'route', 'status'],
);

/** Resources and actions a route label may name; anything else is `other`, so junk paths cannot grow the series. */
const RESOURCES = new Set(['health', 'hosts', 'images', 'containers', 'events']);
const ACTIONS = new Set([
  'heartbeat',
  'heartbeats',
  'cordon',
  'uncordon',
  'logs',
  'checkpoint',
  'restore',
  'stop',
  'failover',
  'migrate',
  'drain',
]);
const METHODS = new Set(['GET', 'POST', 'PUT', 'DELETE']);

/** The route template of a request path: `/v1/containers/r1/stop` → `/v1/containers/:name/stop`. */
export function routeTemplate(path: string): string {
  if (path === '/metrics') return path;
  const [v1, resource, id, action, ...extra] = path.split('/').filter((p) => p.length > 0);
  if (v1 !== 'v1' || !resource || !RESOURCES.has(resource) || extra.length > 0) return 'other';
  if (!id) return `/v1/${resource}`;
  const param = resource === 'hosts' || resource === 'containers' ? ':name' : ':ref';
  if (!action) return `/v1/${resource}/${param}`;
  return ACTIONS.has(action) ? `/v1/${resource}/${param}/${action}` : 'other';
}

/** Counts one answered API request (called when its response finishes). */
export function countRequest(method: string | undefined, path: string, status: number): void {
  const m = method && METHODS.has(method) ? method : 'other';
  requests.labels(m, routeTemplate(path), String(status)).inc();
}

/** Counts what one event says: its kind, and the failover, switchover or suspicion it records. */
export function countEvent(event: Pick<StoredEvent, 'kind' | 'subject' | 'data'>): void {
  events.labels(event.kind).inc();
  const data = event.data;
  const text = (v: unknown, otherwise: string): string =>
    typeof v === 'string' && v.length <= 64 ? v : otherwise;
  const seconds = (v: unknown): number | undefined =>
    typeof v === 'number' && v >= 0 ? v / 1000 : undefined;
  switch (event.kind) {
    case 'host.down':
      suspicions.labels(event.subject).inc();
      break;
    case 'container.failed-over': {
      failovers.labels(text(data.reason, 'host down'), text(data.mode, 'unknown')).inc();
      const took = seconds(data.failoverMs);
      if (took !== undefined) failoverSeconds.observe(took);
      const detected = seconds(data.detectMs);
      if (detected !== undefined && detected > 0) detectSeconds.observe(detected);
      if (data.resumed === true) resumed.labels('failover').inc();
      break;
    }
    case 'container.failover-failed':
      failoversFailed.inc();
      break;
    case 'container.switched-over': {
      switchovers.labels('done').inc();
      const took = seconds(data.totalMs);
      if (took !== undefined) switchoverSeconds.observe(took);
      if (data.resumed === true) resumed.labels('switchover').inc();
      break;
    }
    case 'container.switchover-failed':
      switchovers.labels(data.rolledBack === true ? 'rolled-back' : 'failed').inc();
      break;
    case 'container.migrated': {
      migrations.labels(text(data.strategy, 'unknown'), 'done').inc();
      const down = seconds(data.downtimeMs);
      if (down !== undefined) migrationDowntime.observe(down);
      const took = seconds(data.totalMs);
      if (took !== undefined) migrationSeconds.observe(took);
      if (data.resumed === true) resumed.labels('migration').inc();
      break;
    }
    case 'container.migration-failed':
      migrations.labels(text(data.strategy, 'unknown'), 'failed').inc();
      break;
  }
}

/**
 * Connects the registry to a running controller: counts its events as they
 * are recorded and, at each scrape, reads hosts, φ and the datagram
 * receiver's `stats`. Call once per process. Returns a function that
 * disconnects it.
 */
export function instrumentController(controller: Controller, stats?: DatagramStats): () => void {
  // Series that should read 0 before anything happened, not be absent.
  for (const state of ['up', 'down', 'unknown']) hosts.labels(state);
  for (const result of ['done', 'failed', 'rolled-back']) switchovers.labels(result);
  failoversFailed.labels();
  const refused = datagramsRejected.labels('refused');
  const malformed = datagramsRejected.labels('malformed');
  controller.events.on('event', countEvent);
  const stopCollecting = controllerMetrics.onCollect(async () => {
    if (stats) {
      heartbeatsByDatagram.set(stats.beats);
      refused.set(stats.refused);
      malformed.set(stats.malformed);
    }
    const views = await controller.listHosts();
    hosts.reset();
    phi.reset();
    suspectAfter.reset();
    for (const state of ['up', 'down', 'unknown']) hosts.labels(state);
    for (const view of views) {
      hosts.labels(view.state).inc();
      if (view.phi !== null) phi.labels(view.name).set(view.phi);
      if (view.suspectAfterMs !== null) suspectAfter.labels(view.name).set(view.suspectAfterMs / 1000);
    }
  });
  return () => {
    controller.events.off('event', countEvent);
    stopCollecting();
  };
}
