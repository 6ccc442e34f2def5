import assert from 'node:assert/strict';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { decodeFields, readDumpStats, readRestoreStats } from '../../src/runtime/runc/criu-images.js';

// A real stats-dump written by CRIU 4.2.1 for a 32 MB memhog (magic, stats magic, length, StatsEntry).
const REAL_STATS_DUMP = Buffer.from(
  '4059105506330957270000000a250890031091f20618fee4032084c70328a3403000389b404000480050085808600068007000',
  'hex',
);

test('decodes varints and nested messages', () => {
  const fields = decodeFields(Buffer.from([0x08, 0x96, 0x01, 0x12, 0x02, 0x08, 0x05]));
  assert.equal(fields.get(1), 150n);
  assert.deepEqual(fields.get(2), Buffer.from([0x08, 0x05]));
});

test("reads CRIU's own stats-dump", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'haven-stats-'));
  try {
    await writeFile(join(dir, 'stats-dump'), REAL_STATS_DUMP);
    const stats = readDumpStats(join(dir, 'stats-dump'));
    assert.ok(stats);
    assert.equal(stats.freezingMs, 0.4);
    assert.equal(stats.pagesWritten, 8219);
    assert.equal(stats.pagesScanned, 8227);
    assert.ok(stats.frozenMs > stats.memdumpMs);
    assert.equal(readRestoreStats(join(dir, 'stats-dump')), undefined, 'a dump file holds no restore stats');
    assert.equal(readDumpStats(join(dir, 'missing')), undefined);
  } finally {
    await rm(dir, { recursive: true });
  }
});
