/**
 * `criu lazy-pages`' log as Haven reads it: per-process summaries summed,
 * processes that exited counted — and a short count is never by itself a
 * failure (a child that exits mid-transfer needs no more pages).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { lazyPagesSummary } from '../../src/runtime/runc/lazy-pages-log.js';

test('sums every process summary; counts the ones that exited', () => {
  const log = [
    '(00.010000) uffd: 41-5: Found 8211 pages to be handled by UFFD',
    '(00.010100) uffd: 42-6: Found 90 pages to be handled by UFFD',
    '(00.020000) uffd: 42-6: EXIT',
    '(00.020100) uffd: 42--6: UFFD transferred pages: (12/90)',
    '(05.000000) uffd: 41-5: uffd_copy: 0x7f0000000000/4096',
    '(06.000000) uffd: 41-5: UFFD transferred pages: (8211/8211)',
  ].join('\n');
  assert.deepEqual(lazyPagesSummary(log), { copied: 8223, total: 8301, processes: 2, exited: 1 });
});

test('no summary yet: undefined', () => {
  assert.equal(lazyPagesSummary('(00.01) uffd: 41-5: Found 10 pages to be handled by UFFD\n'), undefined);
  assert.equal(lazyPagesSummary(''), undefined);
});
