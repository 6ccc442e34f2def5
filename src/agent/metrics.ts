/**
 * What an agent exposes on `GET /metrics` (Prometheus text format, see
 * `core/metrics.ts`): its heartbeats' round trip to the controller and its
 * lease, checkpoints' freeze time, protection epochs (bytes shipped, commits
 * and failures, each protected container's newest commit age), probes and
 * containers by state.
 *
 * Counters and histograms change where the event happens, through children
 * resolved here once; gauges of state (containers, health, epoch age, lease)
 * are read at scrape time by {@link instrumentAgent}.
 */
import { registerProcessMetrics, Registry } from '../core/metrics.js';

/** The agent process's registry (one agent per process). */
export const agentMetrics = new Registry();
registerProcessMetrics(agentMetrics);

const beatsSent = agentMetrics.counter(
  'haven_agent_heartbeats_sent_total',
  'Heartbeats sent to the controller, by transport (datagram or stream).',
  ['transport'],
);
const rtt = agentMetrics.histogram(
  'haven_agent_heartbeat_rtt_seconds',
  "From a heartbeat's send to the controller's acknowledgement of it, by transport (acknowledgements are coalesced: about one per 90 ms).",
  ['transport'],
  [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
);

/** Per-transport heartbeat series, resolved once: a beat costs an addition, an acknowledgement a bucket scan. */
export const heartbeatMetrics = {
  datagram: { sent: beatsSent.labels('datagram'), rtt: rtt.labels('datagram') },
  stream: { sent: beatsSent.labels('stream'), rtt: rtt.labels('stream') },
} as const;

const leaseAge = agentMetrics.gauge(
  'haven_agent_lease_age_seconds',
  'Time since the controller last acknowledged a heartbeat; past 0.5 s a host that reaches no backup fences its primaries.',
);

const freeze = agentMetrics.histogram(
  'haven_agent_checkpoint_freeze_seconds',
  'How long a checkpoint kept the container frozen, by kind: epoch (protection) or request (the API).',
  ['kind'],
  [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5],
);
const freezeOfEpoch = freeze.labels('epoch');
/** Freeze time of a checkpoint asked for through the API. */
export const freezeOfRequest = freeze.labels('request');

const epochs = agentMetrics.counter(
  'haven_agent_epochs_total',
  'Protection epochs, by result: committed on the backup, or failed (the backup keeps its previous one).',
  ['result'],
);
const committed = epochs.labels('committed');
const failed = epochs.labels('failed');
const sentBytes = agentMetrics.counter(
  'haven_agent_epoch_sent_bytes_total',
  'Bytes of committed epochs that travelled to backups (only the chunks a backup lacked).',
);
const checkpointBytes = agentMetrics.counter(
  'haven_agent_epoch_checkpoint_bytes_total',
  'Bytes of the checkpoints of committed epochs, whole (sent plus what the backup already held).',
);
const epochSeconds = agentMetrics.histogram(
  'haven_agent_epoch_duration_seconds',
  'One epoch end to end: checkpoint, chunking, transfer and commit on the backup.',
  [],
  [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120],
);
const epochAge = agentMetrics.gauge(
  'haven_agent_epoch_age_seconds',
  "Per protected container, time since its newest epoch was committed on its backup (what a failover now would lose, minus the interval's work in flight).",
  ['container'],
);
const epochFailing = agentMetrics.gauge(
  'haven_agent_epoch_failing',
  "Per protected container, 1 while its last epoch failed (see the agent's log or `haven inspect`), else 0.",
  ['container'],
);

/** Records a committed epoch: its freeze, bytes sent and in all, and end-to-end time (milliseconds). */
export function epochCommitted(epoch: {
  frozenMs: number;
  sentBytes: number;
  totalBytes: number;
  epochMs: number;
}): void {
  committed.inc();
  freezeOfEpoch.observe(epoch.frozenMs / 1000);
  sentBytes.inc(epoch.sentBytes);
  checkpointBytes.inc(epoch.totalBytes);
  epochSeconds.observe(epoch.epochMs / 1000);
}

/** Records a failed epoch. */
export function epochFailed(): void {
  failed.inc();
}

const probes = agentMetrics.counter(
  'haven_agent_probes_total',
  'Application probe checks, by kind (exec, tcpSocket, httpGet) and result (success, failure).',
  ['kind', 'result'],
);
const probeSeries = {
  exec: { success: probes.labels('exec', 'success'), failure: probes.labels('exec', 'failure') },
  tcpSocket: {
    success: probes.labels('tcpSocket', 'success'),
    failure: probes.labels('tcpSocket', 'failure'),
  },
  httpGet: { success: probes.labels('httpGet', 'success'), failure: probes.labels('httpGet', 'failure') },
} as const;

/** Records one probe check. */
export function probeChecked(kind: 'exec' | 'tcpSocket' | 'httpGet', ok: boolean): void {
  probeSeries[kind][ok ? 'success' : 'failure'].inc();
}

const health = agentMetrics.gauge(
  'haven_agent_container_health',
  'Probed or watched containers by health (starting, healthy, unhealthy).',
  ['health'],
);
const containers = agentMetrics.gauge('haven_agent_containers', "This host's containers by state.", [
  'state',
]);

const STATES = ['running', 'paused', 'checkpointed', 'stopped', 'exited'];
const HEALTH = ['starting', 'healthy', 'unhealthy'];

/**
 * What {@link instrumentAgent} reads at each scrape: the host, protection and
 * prober, by the little it needs of each (structural, so that the replicator
 * and prober, which count into this module, are not imported back by it).
 */
export interface AgentSources {
  host: { list(): Promise<ReadonlyArray<{ state: string }>> };
  protection?: {
    statuses(): ReadonlyArray<{ name: string; committedAt: string | null; lastError: string | null }>;
  };
  prober?: { statuses(): ReadonlyArray<{ health: string }> };
  /** When the controller last acknowledged a heartbeat (ms since the epoch); absent outside a cluster. */
  lastAckAt?: () => number;
}

/**
 * Reads the agent's state gauges at each scrape: containers by state,
 * health, each protected container's epoch age, the lease's age. Call once
 * per process; returns a function that stops it.
 */
export function instrumentAgent(sources: AgentSources): () => void {
  return agentMetrics.onCollect(async () => {
    const now = Date.now();
    if (sources.lastAckAt) leaseAge.set((now - sources.lastAckAt()) / 1000);
    containers.reset();
    for (const state of STATES) containers.labels(state);
    for (const view of await sources.host.list()) containers.labels(view.state).inc();
    health.reset();
    for (const h of HEALTH) health.labels(h);
    for (const status of sources.prober?.statuses() ?? []) health.labels(status.health).inc();
    epochAge.reset();
    epochFailing.reset();
    for (const status of sources.protection?.statuses() ?? []) {
      // No epoch committed yet: no age (absent, not zero — nothing is protected yet).
      if (status.committedAt) epochAge.labels(status.name).set((now - Date.parse(status.committedAt)) / 1000);
      epochFailing.labels(status.name).set(status.lastError ? 1 : 0);
    }
  });
}
