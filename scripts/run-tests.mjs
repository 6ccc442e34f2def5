#!/usr/bin/env node
// Runs Haven's test tiers file by file with node's test runner, prints each
// file's duration (so CI's time budget stays visible) and ends with one
// summary line: "tests: N passed, N failed, N skipped". Failed tests are
// recapped (name and error, without stacks) just before that line, so the
// tail of a long CI log says why, not only what, failed.
//
// Usage: node scripts/run-tests.mjs TIER... (unit, integration, e2e)
// Tiers live in dist/test/<tier>/ after `npm run build`. HAVEN_TEST_TIER=full
// tells tests to run their long variants (the `npm run test:full` tier).
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

const root = new URL('..', import.meta.url).pathname;
const tiers = process.argv.slice(2);
if (tiers.length === 0) {
  console.error('usage: run-tests.mjs unit|integration|e2e ...');
  process.exit(64);
}
const files = [];
for (const tier of tiers) {
  const dir = join(root, 'dist', 'test', tier);
  if (!existsSync(dir)) continue;
  for (const f of readdirSync(dir).sort()) if (f.endsWith('.test.js')) files.push(join(dir, f));
}
if (files.length === 0) {
  console.error('no test files found: run npm run build first');
  process.exit(1);
}

const tapDir = mkdtempSync(join(tmpdir(), 'haven-tap-'));
const totals = { pass: 0, fail: 0, skipped: 0 };
const durations = [];
/** Each failed test's TAP block (name, error, expected/actual), stacks left out. */
const failures = [];
for (const [i, file] of files.entries()) {
  const name = file.slice(join(root, 'dist', 'test').length + 1);
  const tap = join(tapDir, `${i}.tap`);
  console.log(`\n=== ${name}`);
  const started = Date.now();
  const result = spawnSync(
    process.execPath,
    [
      '--test',
      '--test-reporter=spec',
      '--test-reporter-destination=stdout',
      '--test-reporter=tap',
      `--test-reporter-destination=${tap}`,
      file,
    ],
    { stdio: 'inherit' },
  );
  const seconds = (Date.now() - started) / 1000;
  const text = existsSync(tap) ? readFileSync(tap, 'utf8') : '';
  const count = (key) => Number(new RegExp(`^# ${key} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
  let pass = count('pass');
  let fail = count('fail') + count('cancelled');
  const skipped = count('skipped') + count('todo');
  if (result.status !== 0 && fail === 0) fail = 1; // a crash outside any test still fails the file
  totals.pass += pass;
  totals.fail += fail;
  totals.skipped += skipped;
  durations.push({ name, seconds, pass, fail });
  failures.push(...failedTests(text).map((block) => `${name}: ${block}`));
  console.log(`--- ${name}: ${pass} passed, ${fail} failed, ${skipped} skipped in ${seconds.toFixed(1)} s`);
}

console.log('\nper-file durations:');
for (const d of durations)
  console.log(`  ${d.seconds.toFixed(1).padStart(7)} s  ${d.fail ? 'FAIL' : 'ok  '}  ${d.name}`);
console.log(
  `  ${durations
    .reduce((s, d) => s + d.seconds, 0)
    .toFixed(1)
    .padStart(7)} s  total`,
);
rmSync(tapDir, { recursive: true, force: true });
if (failures.length > 0) {
  console.log('\nfailures:');
  for (const f of failures) console.log(f);
}
console.log(`\ntests: ${totals.pass} passed, ${totals.fail} failed, ${totals.skipped} skipped`);
process.exit(totals.fail > 0 ? 1 : 0);

/**
 * The failed tests of one file's TAP output: each `not ok` line and its YAML
 * block up to the stack (at most 24 lines: a failure message names its
 * evidence; the full output is above in the log).
 */
function failedTests(tap) {
  const blocks = [];
  const lines = tap.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const head = /^\s*not ok \d+ - (.*)$/.exec(lines[i]);
    if (!head) continue;
    const block = [head[1]];
    for (let j = i + 1; j < lines.length && block.length < 24; j++) {
      const line = lines[j];
      if (/^\s*(ok|not ok) \d+ /.test(line) || /^\s*\.\.\.$/.test(line) || /^\s*stack: /.test(line)) break;
      if (/^\s*(---|duration_ms:|type:|location:|code:|name:|$)/.test(line)) continue;
      block.push(`    ${line.trim()}`);
    }
    blocks.push(block.join('\n'));
  }
  return blocks;
}
