/** The benches' `--help`: the "Usage" paragraph of a module's header comment. */
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'node:test';
import { usageOf } from '../../bench/support/args.js';

function moduleWith(source: string): { url: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'bench-args-'));
  const file = join(dir, 'b.js');
  writeFileSync(file, source);
  return { url: pathToFileURL(file).href, done: () => rmSync(dir, { recursive: true, force: true }) };
}

test('usage is the header paragraph from "Usage" to the end of the comment, without the stars', () => {
  const m = moduleWith(
    '/**\n * bench/x.ts: what it measures.\n *\n * Usage: node x.js [--a 1]\n *   [--b]   (why)\n */\n/** another */\nconst x = 1;\n',
  );
  try {
    assert.equal(usageOf(m.url), 'Usage: node x.js [--a 1]\n  [--b]   (why)');
  } finally {
    m.done();
  }
});

test('a header without a usage says so', () => {
  const m = moduleWith('/** nothing here */\n');
  try {
    assert.equal(usageOf(m.url), '(no usage in the header comment)');
  } finally {
    m.done();
  }
});
