/**
 * The dashboard in real Chromium (Debian's, driven by playwright-core,
 * headless) on a 3-host lab, reached as an operator would: the one-time
 * login URL from `haven lab status --json`, through the lab's loopback
 * forwarder. The page lists the hosts and a protected Redis; a migrate
 * action from the page (with its confirmation) moves another container;
 * `haven lab kill-host` of the protected Redis's host puts a failover on
 * the timeline, and the controller's /metrics counts both. The page loads
 * nothing but the controller's own origin.
 * Screenshots go to test-artifacts/dashboard-*.png.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { REPO_ROOT } from '../../src/core/config.js';
import { openRequest, readText } from '../../src/core/http-client.js';
import { REDIS_ARGS } from '../../src/fixtures/images.js';
import { DASHBOARD_PORT, DASHBOARD_URL, LAB_PATHS } from '../../src/lab/index.js';
import { haven, labWithRedis, ok, waitFor } from '../support/lab-cli.js';
import { parsePrometheusText, sampleValue, type MetricFamily } from '../support/prometheus-text.js';

const ARTIFACTS = join(REPO_ROOT, 'test-artifacts');

interface View {
  name: string;
  host: string;
  state: string;
  protection: { backup: string | null; committedEpoch: number | null };
}

const inspect = async (name: string): Promise<View> =>
  JSON.parse(await ok(['inspect', name, '--json'])) as View;

let browser: Browser | undefined;
let page: Page;
/** Every origin the page sent a request to. */
const origins = new Set<string>();
const pageErrors: string[] = [];

/** The lab controller's /metrics (through its Unix socket, with the lab's token), parsed. */
async function controllerMetrics(): Promise<Map<string, MetricFamily>> {
  const token = readFileSync(LAB_PATHS.token, 'utf8').trim();
  const res = await openRequest(`unix:${LAB_PATHS.controllerSocket}`, '/metrics', token, {});
  assert.equal(res.statusCode, 200);
  return parsePrometheusText(await readText(res));
}

/** Counters before the page acts. */
let metricsBefore = { migrated: 0, failedOver: 0 };

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `dashboard-${name}.png`), fullPage: true });
}

/** Whether something accepts connections on 127.0.0.1:port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  await labWithRedis();
  // kv is protected (it fails over when its host dies); cache is not (the page migrates it).
  const run = (name: string, ha: string[]): Promise<string> =>
    ok(['run', name, '--image', 'redis', '--memory', '256m', ...ha, '--', ...REDIS_ARGS]);
  await run('kv', ['--ha', 'checkpoint', '--interval', '1s']);
  await run('cache', []);
  await waitFor('the first committed epoch of kv', async () =>
    (await inspect('kv')).protection.committedEpoch !== null ? true : undefined,
  );
  const families = await controllerMetrics();
  metricsBefore = {
    migrated: sampleValue(families, 'haven_controller_migrations_total', { result: 'done' }) ?? 0,
    failedOver:
      sampleValue(families, 'haven_controller_failovers_total', { cause: 'host down', mode: 'checkpoint' }) ??
      0,
  };
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on('request', (r) => origins.add(new URL(r.url()).origin));
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.setDefaultTimeout(30_000);
});

after(async () => {
  await browser?.close();
  await haven(['lab', 'down']);
  // `lab down` leaves nothing: the forwarder's port is free again.
  assert.equal(await listening(DASHBOARD_PORT), false, `nothing listens on 127.0.0.1:${DASHBOARD_PORT}`);
});

test('the login URL from lab status opens a session; it works once; no session, no API', async () => {
  const status = JSON.parse(await ok(['lab', 'status', '--json'])) as { dashboard: string | null };
  assert.ok(
    status.dashboard?.startsWith(`${DASHBOARD_URL}/ui/login?token=`),
    `dashboard: ${status.dashboard}`,
  );
  const anonymous = await fetch(`${DASHBOARD_URL}/v1/hosts`);
  assert.equal(anonymous.status, 401, 'the API refuses a browser without a session');
  await page.goto(status.dashboard!);
  assert.equal(page.url(), `${DASHBOARD_URL}/ui/`, 'redirected to the page, the token gone from the URL');
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === 'haven_session');
  assert.ok(session, 'a session cookie');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');
  const again = await fetch(status.dashboard!, { redirect: 'manual' });
  assert.equal(again.status, 401, 'a login URL works once');
});

test('the page lists the lab hosts and the protected Redis with its protection', async () => {
  for (const h of ['h1', 'h2', 'h3'])
    await page.locator(`tr[data-host="${h}"] .badge`, { hasText: 'up' }).first().waitFor();
  const kv = await inspect('kv');
  const row = page.locator('tr[data-container="kv"]');
  await row.waitFor();
  await waitFor('kv row shows its host, backup and an epoch', async () => {
    const text = await row.innerText();
    return text.includes('checkpoint') && text.includes(kv.host) && /\b\d+\b/.test(text) ? true : undefined;
  });
  assert.match(await row.innerText(), new RegExp(kv.protection.backup ?? 'h\\d'));
  await page.locator('#stream-state', { hasText: 'live' }).waitFor();
  await page.locator('#events li[data-kind="container.protected"]').first().waitFor();
  await shot('1-cluster');
});

test('a migrate action from the page, once confirmed, moves the container', async () => {
  const before = await inspect('cache');
  const kv = await inspect('kv');
  // Away from kv's host, so the kill below leaves cache alone.
  const to = ['h1', 'h2', 'h3'].find((h) => h !== before.host && h !== kv.host) ?? 'h1';
  const row = page.locator('tr[data-container="cache"]');
  await row.locator('select').selectOption(to);
  await row.locator('button.migrate').click();
  const dialog = page.locator('.modal[role="dialog"]');
  await dialog.waitFor();
  assert.match(await dialog.innerText(), new RegExp(`from ${before.host} to ${to}`));
  await shot('2-confirm-migrate');
  await dialog.locator('button.confirm').click();
  await page.locator('.notice.ok', { hasText: `cache migrated to ${to}` }).waitFor({ timeout: 90_000 });
  const after = await inspect('cache');
  assert.equal(after.host, to);
  assert.equal(after.state, 'running');
  await page.locator('.timeline li[data-op="migration"][data-container="cache"]').waitFor();
  await page.locator('tr[data-container="cache"] td.host', { hasText: to }).waitFor();
  await shot('3-migrated');
});

test('kill-host of the protected Redis host puts its failover on the timeline', async () => {
  const kv = await waitFor('kv protected with a committed epoch', async () => {
    const view = await inspect('kv');
    return view.protection.backup && view.protection.committedEpoch !== null ? view : undefined;
  });
  await ok(['lab', 'kill-host', kv.host]);
  await page.locator(`tr[data-host="${kv.host}"] .badge`, { hasText: 'down' }).waitFor();
  const op = page.locator('.timeline li[data-op="failover"][data-container="kv"]');
  await op.waitFor({ timeout: 60_000 });
  const text = await op.innerText();
  assert.match(text, new RegExp(`${kv.host} → ${kv.protection.backup}`));
  assert.match(text, /detection \d+/);
  assert.match(text, /restore \d+/);
  assert.match(text, /unavailable/);
  await page.locator('tr[data-container="kv"] td.host', { hasText: kv.protection.backup! }).waitFor();
  await page.locator('#events li[data-kind="host.down"]').first().waitFor();
  await shot('4-failover');
  console.log(`# timeline: ${text.replace(/\s+/g, ' ')}`);
});

test("the controller's /metrics counted the page's migration and the failover", async () => {
  const families = await controllerMetrics();
  const count = (name: string, labels: Record<string, string>): number =>
    sampleValue(families, name, labels) ?? 0;
  const migrated = count('haven_controller_migrations_total', { result: 'done' });
  const failedOver = count('haven_controller_failovers_total', { cause: 'host down', mode: 'checkpoint' });
  console.log(`# metrics: migrations done ${migrated}, failovers (host down, checkpoint) ${failedOver}`);
  assert.ok(migrated > metricsBefore.migrated, 'haven_controller_migrations_total{result="done"} moved');
  assert.ok(
    failedOver > metricsBefore.failedOver,
    'haven_controller_failovers_total{cause="host down"} moved',
  );
});

test('the page loaded nothing from anywhere but the controller, and threw nothing', () => {
  assert.deepEqual([...origins], [DASHBOARD_URL]);
  assert.deepEqual(pageErrors, []);
});
