import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseInvocation, type Command } from '../../src/cli/command.js';
import {
  exitCodeFor,
  InvalidArgumentError,
  NotFoundError,
  CorruptCheckpointError,
} from '../../src/core/errors.js';
import { parseVolumeFlag } from '../../src/host/container-host.js';

const fake: Command = {
  name: 'run',
  summary: '',
  usage: 'haven run NAME',
  options: { image: { type: 'string' }, volume: { type: 'string', multiple: true } },
  run: () => Promise.resolve(0),
};

test('everything after -- is the container command, flags included', () => {
  const inv = parseInvocation(fake, [
    'web',
    '--image',
    '/img',
    '--volume',
    'a:/a',
    '--',
    'sh',
    '-c',
    'echo --image',
  ]);
  assert.deepEqual(inv.positionals, ['web']);
  assert.equal(inv.values.image, '/img');
  assert.deepEqual(inv.values.volume, ['a:/a']);
  assert.deepEqual(inv.rest, ['sh', '-c', 'echo --image']);
});

test('unknown flags are errors that show the usage', () => {
  assert.throws(
    () => parseInvocation(fake, ['web', '--imgae', 'x']),
    (e: unknown) => e instanceof InvalidArgumentError && /usage: haven run/.test(e.message),
  );
});

test('volume flags', () => {
  assert.deepEqual(parseVolumeFlag('data:/var/lib/data'), { volume: 'data', path: '/var/lib/data' });
  for (const bad of ['data', ':/x', 'data:rel', 'data:/', 'data:/a/../b', '../v:/x'])
    assert.throws(() => parseVolumeFlag(bad), InvalidArgumentError, bad);
});

test('exit codes are stable per error class', () => {
  assert.equal(exitCodeFor(new InvalidArgumentError('x')), 64);
  assert.equal(exitCodeFor(new NotFoundError('x')), 65);
  assert.equal(exitCodeFor(new CorruptCheckpointError('x')), 66);
  assert.equal(exitCodeFor(new Error('x')), 70);
});
