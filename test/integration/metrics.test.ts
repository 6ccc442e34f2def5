/**
 * `/metrics` on a real loopback cluster: a controller and two agents as
 * separate processes (as in cluster.test.ts; the second agent is the backup
 * of a protected Redis). Shows: every `/metrics` needs the token and parses
 * as Prometheus text (strictly: test/support/prometheus-text.ts); heartbeat
 * counters and round trips move as beats flow; a checkpoint moves the
 * agent's freeze histogram; epochs move its epoch, byte and freeze series
 * and its per-container epoch age; a planned switchover moves the
 * controller's switchover, event and API request counters.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { REPO_ROOT } from '../../src/core/config.js';
import type { ExecResult } from '../../src/core/exec.js';
import { redisImage, REDIS_ARGS } from '../../src/fixtures/images.js';
import { runHaven, waitUntil } from '../../src/lab/cli-driver.js';
import { parsePrometheusText, sampleValue, type MetricFamily } from '../support/prometheus-text.js';
import { TestHost } from '../support/test-host.js';

const TOKEN = 'metrics-test-token-0123456789';
const ctlPort = 21_000 + (process.pid % 1000);
const controllerUrl = `http://127.0.0.1:${ctlPort}`;
let primary: TestHost;
let backup: TestHost;
let ctlDir: string;
const children: ChildProcess[] = [];
/** Agent URL by host name. */
const agentUrls = new Map<string, string>();

function haven(args: string[]): Promise<ExecResult> {
  return runHaven(args, { HAVEN_CONTROLLER: controllerUrl, HAVEN_TOKEN: TOKEN }, 180_000);
}

async function ok(args: string[]): Promise<string> {
  const r = await haven(args);
  assert.equal(r.code, 0, `haven ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function start(args: string[], env: Record<string, string> = {}): void {
  children.push(
    spawn(join(REPO_ROOT, 'bin', 'haven'), args, {
      env: { ...process.env, HAVEN_TOKEN: TOKEN, ...env },
      stdio: 'ignore',
    }),
  );
}

function startAgent(t: TestHost, port: number): void {
  const url = `http://127.0.0.1:${port}`;
  agentUrls.set(t.config.hostName, url);
  start(['agent', '--listen', `127.0.0.1:${port}`, '--controller', controllerUrl, '--advertise', url], {
    HAVEN_STATE_DIR: t.config.stateDir,
    HAVEN_RUNC_ROOT: t.config.runcRoot,
    HAVEN_HOST: t.config.hostName,
    HAVEN_NETNS: t.config.networkNamespace,
  });
}

/** Scrapes `url/metrics` with the token and parses it strictly (a parse error fails the test). */
async function scrape(url: string): Promise<Map<string, MetricFamily>> {
  const res = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  return parsePrometheusText(await res.text());
}

async function metric(url: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  return sampleValue(await scrape(url), name, labels) ?? 0;
}

/** Waits until `probe` reaches at least `atLeast`; returns what it read. */
function reaches(
  what: string,
  atLeast: number,
  probe: () => Promise<number>,
  timeoutMs = 30_000,
): Promise<number> {
  return waitUntil(
    what,
    async () => {
      const v = await probe();
      return v >= atLeast ? v : undefined;
    },
    timeoutMs,
  );
}

before(async () => {
  primary = await TestHost.create('metrics');
  backup = await primary.sibling('metrics-b');
  ctlDir = await mkdtemp(join(tmpdir(), 'haven-ctl-metrics-'));
  start(['controller', '--listen', `127.0.0.1:${ctlPort}`, '--state-dir', ctlDir]);
  startAgent(primary, ctlPort + 1000);
  startAgent(backup, ctlPort + 2000);
  await waitUntil(
    'both agents to join',
    async () => {
      const hosts = JSON.parse(await ok(['host', 'ls', '--json'])) as Array<{ state: string }>;
      return hosts.filter((h) => h.state === 'up').length === 2 ? true : undefined;
    },
    20_000,
  );
});

after(async () => {
  await haven(['rm', '--force', 'mr']);
  for (const child of children) {
    if (child.exitCode !== null) continue;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }
  await backup?.dispose();
  await primary?.dispose();
  if (ctlDir) await rm(ctlDir, { recursive: true, force: true });
});

test('/metrics needs the token; the controller and both agents answer text that parses', async () => {
  for (const url of [controllerUrl, ...agentUrls.values()]) {
    const refused = await fetch(`${url}/metrics`);
    assert.equal(refused.status, 401, `${url}/metrics without the token`);
    const wrong = await fetch(`${url}/metrics`, { headers: { authorization: 'Bearer nope' } });
    assert.equal(wrong.status, 401);
    const families = await scrape(url);
    assert.ok(families.size > 10, `${url}: ${families.size} families`);
    assert.ok((sampleValue(families, 'process_resident_memory_bytes') ?? 0) > 0);
  }
  const controller = await scrape(controllerUrl);
  assert.equal(sampleValue(controller, 'haven_controller_hosts', { state: 'up' }), 2);
  for (const name of agentUrls.keys()) {
    const phi = sampleValue(controller, 'haven_controller_host_phi', { host: name });
    assert.ok(phi !== undefined && phi >= 0 && phi < 8, `φ of ${name}: ${phi}`);
    assert.ok(
      (sampleValue(controller, 'haven_controller_host_suspect_after_seconds', { host: name }) ?? 0) > 0,
    );
  }
});

test('heartbeat counters and round trips move as beats flow', async () => {
  const agent = agentUrls.get(primary.config.hostName)!;
  const beats = (): Promise<number> =>
    metric(controllerUrl, 'haven_controller_heartbeats_total', { transport: 'datagram' });
  const before = await beats();
  const sentBefore = await metric(agent, 'haven_agent_heartbeats_sent_total', { transport: 'datagram' });
  // Two agents beating every 100 ms: at least a dozen more within a few seconds.
  await reaches('datagram heartbeats to be counted', before + 12, beats, 10_000);
  const families = await scrape(agent);
  assert.ok(
    (sampleValue(families, 'haven_agent_heartbeats_sent_total', { transport: 'datagram' }) ?? 0) > sentBefore,
  );
  const acked =
    sampleValue(families, 'haven_agent_heartbeat_rtt_seconds_count', { transport: 'datagram' }) ?? 0;
  assert.ok(acked > 0, 'acknowledgements were timed');
  const lease = sampleValue(families, 'haven_agent_lease_age_seconds');
  assert.ok(lease !== undefined && lease >= 0 && lease < 0.5, `lease age ${lease}`);
  assert.equal(
    sampleValue(await scrape(controllerUrl), 'haven_controller_heartbeat_datagrams_rejected_total', {
      reason: 'malformed',
    }),
    0,
  );
});

test(
  'a checkpoint, protection epochs and a switchover move the agent and controller counters',
  { timeout: 240_000 },
  async () => {
    await ok(['image', 'push', await redisImage(), '--name', 'redis', '--json']);
    await ok([
      'run',
      'mr',
      '--image',
      'redis',
      '--memory',
      '256m',
      '--host',
      primary.config.hostName,
      '--ha',
      'checkpoint',
      '--interval',
      '1s',
      '--',
      ...REDIS_ARGS,
    ]);
    const agent = agentUrls.get(primary.config.hostName)!;

    // A checkpoint asked for through the API: the agent's freeze histogram for requests moves.
    const frozenBefore = await metric(agent, 'haven_agent_checkpoint_freeze_seconds_count', {
      kind: 'request',
    });
    // (An epoch in flight at that moment may refuse it: nothing serializes the two; try again.)
    await waitUntil(
      'a checkpoint through the API',
      async () => ((await haven(['checkpoint', 'mr', '--leave-running'])).code === 0 ? true : undefined),
      20_000,
    );
    assert.equal(
      await metric(agent, 'haven_agent_checkpoint_freeze_seconds_count', { kind: 'request' }),
      frozenBefore + 1,
    );

    // Epochs to the backup: committed epochs, bytes shipped, their freezes, the container's epoch age.
    await reaches(
      'two epochs committed',
      2,
      () => metric(agent, 'haven_agent_epochs_total', { result: 'committed' }),
      60_000,
    );
    const families = await scrape(agent);
    assert.ok((sampleValue(families, 'haven_agent_epoch_sent_bytes_total') ?? 0) > 0, 'bytes shipped');
    assert.ok(
      (sampleValue(families, 'haven_agent_epoch_checkpoint_bytes_total') ?? 0) > 0,
      'checkpoint bytes',
    );
    assert.ok(
      (sampleValue(families, 'haven_agent_checkpoint_freeze_seconds_count', { kind: 'epoch' }) ?? 0) >= 2,
    );
    const age = sampleValue(families, 'haven_agent_epoch_age_seconds', { container: 'mr' });
    assert.ok(age !== undefined && age >= 0 && age < 30, `epoch age ${age}`);
    assert.equal(sampleValue(families, 'haven_agent_containers', { state: 'running' }), 1);

    // A planned switchover: the controller counts it, its event and the request.
    const failovers = (): Promise<number> =>
      metric(controllerUrl, 'haven_controller_api_requests_total', {
        method: 'POST',
        route: '/v1/containers/:name/failover',
        status: '200',
      });
    const requestsBefore = await failovers();
    await ok(['failover', 'mr']);
    const controller = await scrape(controllerUrl);
    assert.equal(sampleValue(controller, 'haven_controller_switchovers_total', { result: 'done' }), 1);
    assert.equal(sampleValue(controller, 'haven_controller_switchover_duration_seconds_count'), 1);
    assert.equal(
      sampleValue(controller, 'haven_controller_events_total', { kind: 'container.switched-over' }),
      1,
    );
    assert.equal(await failovers(), requestsBefore + 1);
    // Now it runs on the other host, whose agent reports it.
    await reaches(
      'the container running on the former backup',
      1,
      () => metric(agentUrls.get(backup.config.hostName)!, 'haven_agent_containers', { state: 'running' }),
      20_000,
    );
  },
);
