/**
 * Compatibility before moving (issue 6), on a 2-host lab whose host h2
 * reports — and checks restores against — a CPU that lacks one of this
 * machine's flags (the `HAVEN_TEST_CPU_MASK` test knob: both hosts share
 * one CPU here, so the lack is simulated in what h2's agent sees, nothing
 * else).
 *
 * 1. The hosts report their facts; h2's lack the masked flag.
 * 2. Migrating a container from h1 to h2 is refused before anything stops,
 *    naming the flag: no migration starts, the container runs on in h1 with
 *    the same process; without `--to` no host can take it.
 * 3. A protected container on h1 is not admitted: no backup can run its epochs.
 * 4. The other way is fine: a container on h2 (fewer flags) moves to h1
 *    (with `--compress zstd`, so a real migration crosses compressed frames).
 * 5. File-system tracking, on the same lab: a container that keeps
 *    appending to a file in its writable layer and one on a volume, beside a
 *    16 MB file it wrote at start, moves h2 → h1 by stop-and-copy. The sync
 *    rounds carry the 16 MB while it runs; the frozen round sends far less;
 *    and on h1 both logs count on without a gap or a repeat (files and memory
 *    agree at the freeze).
 */
import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { REDIS_ARGS } from '../../src/fixtures/images.js';
import { parseCpuFlags } from '../../src/host/compat.js';
import { events, haven, inspect, labWithRedis, ok, waitFor } from '../support/lab-cli.js';
import { assertCounts, counted } from '../support/migration.js';

interface View {
  name: string;
  host: string;
  state: string;
  pid: number;
}
interface HostFacts {
  name: string;
  machine?: { cpuFlags: string[]; kernel: string; criuVersion: string };
}

let flag: string;

before(async () => {
  // A flag every x86-64 CPU has, so the test means the same on any machine.
  const flags = parseCpuFlags(await readFile('/proc/cpuinfo', 'utf8'));
  flag = flags.includes('sse2') ? 'sse2' : flags[0]!;
  await labWithRedis(2, { HAVEN_TEST_CPU_MASK: `h2=${flag}` });
});

after(async () => {
  await haven(['lab', 'down']);
});

test('agents report their CPU flags, kernel and CRIU; the masked host lacks the flag', async () => {
  const hosts = JSON.parse(await ok(['host', 'ls', '--json'])) as HostFacts[];
  const h1 = hosts.find((h) => h.name === 'h1')?.machine;
  const h2 = hosts.find((h) => h.name === 'h2')?.machine;
  assert.ok(h1 && h2, JSON.stringify(hosts));
  assert.ok(h1.cpuFlags.includes(flag));
  assert.ok(!h2.cpuFlags.includes(flag));
  assert.match(h1.criuVersion, /^\d+\.\d+/);
  assert.equal(h1.kernel, h2.kernel);
});

test('a migration to a host lacking a CPU flag is refused before anything stops, with the reason', async () => {
  await ok(['run', 'kv', '--image', 'redis', '--host', 'h1', '--', ...REDIS_ARGS]);
  const before = await waitFor('kv running', async () => {
    const v = await inspect<View>('kv');
    return v.state === 'running' && v.pid > 0 ? v : undefined;
  });
  const refused = await haven(['migrate', 'kv', '--to', 'h2']);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, new RegExp(`h2: incompatible: .*lacks.*\\b${flag}\\b`));
  const placed = await haven(['migrate', 'kv']);
  assert.notEqual(placed.code, 0);
  assert.match(placed.stderr, /no host can take "kv".*incompatible/);
  const after = await inspect<View>('kv');
  assert.deepEqual([after.host, after.state, after.pid], ['h1', 'running', before.pid]);
  const started = (await events()).filter(
    (e) => e.kind === 'container.migration-started' && e.subject === 'kv',
  );
  assert.deepEqual(started, []);
});

test('a protected container is not admitted where no backup could run its epochs', async () => {
  const refused = await haven([
    'run',
    'safe',
    '--image',
    'redis',
    '--host',
    'h1',
    '--ha',
    'checkpoint',
    '--',
    ...REDIS_ARGS,
  ]);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /no room to protect "safe".*incompatible/);
});

test('from the host with fewer flags, migration goes ahead', async () => {
  await ok(['run', 'small', '--image', 'redis', '--host', 'h2', '--', ...REDIS_ARGS]);
  await waitFor('small running', async () =>
    (await inspect<View>('small')).state === 'running' ? true : undefined,
  );
  // Compressed (frame format 2): the destination restores from chunks verified by their raw hash.
  await ok(['migrate', 'small', '--to', 'h1', '--strategy', 'stop-copy', '--compress', 'zstd']);
  const moved = await waitFor('small on h1', async () => {
    const v = await inspect<View>('small');
    return v.host === 'h1' && v.state === 'running' ? v : undefined;
  });
  assert.equal(moved.host, 'h1');
});

interface FileSyncRound {
  round: number;
  changedFiles: number;
  readBytes: number;
  sentBytes: number;
}

test('files in the writable layer and on a volume sync while it runs; the freeze sends only what changed', async () => {
  const script =
    'dd if=/dev/urandom of=/big bs=1M count=16 2>/dev/null; i=0; ' +
    'while :; do echo $i >> /app.log; echo $i >> /logs/b.log; i=$((i+1)); usleep 5000; done';
  await ok([
    'run',
    'writer',
    '--image',
    'redis',
    '--host',
    'h2',
    '--volume',
    'logs:/logs',
    '--',
    '/bin/sh',
    '-c',
    script,
  ]);
  await waitFor('writer running', async () =>
    (await inspect<View>('writer')).state === 'running' ? true : undefined,
  );
  // The big file written whole (on h2's disk), the logs growing.
  await waitFor(
    'the 16 MB file written',
    async () => {
      const info = await stat('/var/lib/haven-lab/hosts/h2/containers/writer/upper/big').catch(
        () => undefined,
      );
      return info?.size === 16 << 20 ? true : undefined;
    },
    60_000,
  );
  await sleep(300);
  const report = JSON.parse(
    await ok(['migrate', 'writer', '--to', 'h1', '--strategy', 'stop-copy', '--json']),
  ) as { fileSync?: FileSyncRound[]; finalSentBytes: number; downtimeMs: number };
  const rounds = report.fileSync ?? [];
  process.stdout.write(
    `# file sync rounds ${JSON.stringify(rounds)}; frozen sent ${report.finalSentBytes} B; downtime ${report.downtimeMs} ms\n`,
  );
  assert.ok(rounds.length >= 1, JSON.stringify(report));
  assert.ok(rounds[0]!.readBytes >= 16 << 20, `first sync round read ${rounds[0]!.readBytes}`);
  assert.ok(rounds.reduce((s, r) => s + r.sentBytes, 0) >= 16 << 20);
  assert.ok(report.finalSentBytes < 8 << 20, `the freeze sent ${report.finalSentBytes} B`);
  await sleep(500); // it appends on h1
  await ok(['stop', 'writer']);
  assertCounts(await counted('h1', 'containers/writer/upper/app.log'), 'writable layer');
  assertCounts(await counted('h1', 'volumes/logs/data/b.log'), 'volume');
});
