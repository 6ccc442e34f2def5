/** Records cut from a stream however its chunks fall; a handler can stop the rest. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RecordSplitter } from '../../src/core/records.js';

test('records come out whole whatever the chunking, and the remainder waits', () => {
  const seen: string[] = [];
  const lines = new RecordSplitter((l) => void seen.push(l));
  for (const chunk of ['{"a"', ':1}\n{"b":2}\n{"c', '":3']) lines.push(chunk);
  assert.deepEqual(seen, ['{"a":1}', '{"b":2}']);
  assert.equal(lines.pending, '{"c":3');
});

test('a custom separator (server-sent events) and a handler that stops', () => {
  const seen: string[] = [];
  const blocks = new RecordSplitter((b) => {
    seen.push(b);
    return b !== 'stop';
  }, '\n\n');
  blocks.push('id: 1\ndata: x\n\nstop\n\nlater\n\n');
  blocks.push('more\n\n');
  assert.deepEqual(seen, ['id: 1\ndata: x', 'stop']);
});
