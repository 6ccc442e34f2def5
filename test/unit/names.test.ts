import assert from 'node:assert/strict';
import { test } from 'node:test';
import { macForIp, parseEnv, parseIpv4Cidr, parseMemorySize, validateName } from '../../src/core/names.js';
import { InvalidArgumentError } from '../../src/core/errors.js';

test('valid names pass unchanged', () => {
  for (const name of ['redis', 'a', 'web-1', 'db_2.primary', '0x'])
    assert.equal(validateName(name, 'container'), name);
});

test('names that could escape a directory or confuse tools are refused', () => {
  for (const name of [
    '',
    '../x',
    '..',
    'a/b',
    '.hidden',
    '-flag',
    'UPPER',
    'a b',
    'a..b',
    'x'.repeat(64),
    'é',
    'a\nb',
  ]) {
    assert.throws(() => validateName(name, 'container'), InvalidArgumentError, JSON.stringify(name));
  }
  assert.throws(() => validateName(42, 'container'), /name is required/);
});

test('memory sizes', () => {
  assert.equal(parseMemorySize('512m'), 512 * 1024 ** 2);
  assert.equal(parseMemorySize('2G'), 2 * 1024 ** 3);
  assert.equal(parseMemorySize('8388608'), 8 * 1024 ** 2);
  for (const bad of ['', 'lots', '1t', '-5m', '1m'])
    assert.throws(() => parseMemorySize(bad), InvalidArgumentError, bad);
});

test('addresses', () => {
  assert.deepEqual(parseIpv4Cidr('10.88.1.2/16'), { address: '10.88.1.2', prefix: 16 });
  for (const bad of ['10.88.1.2', '10.88.1.300/16', '10.88.1.2/40', 'a.b.c.d/8', '10.88.1.2/16x']) {
    assert.throws(() => parseIpv4Cidr(bad), InvalidArgumentError, bad);
  }
  assert.equal(macForIp('10.88.1.2'), '02:48:0a:58:01:02');
});

test('environment entries', () => {
  assert.deepEqual(parseEnv(['A=1', 'B_C=x=y', 'D=']), ['A=1', 'B_C=x=y', 'D=']);
  for (const bad of ['A', '=1', '1A=2', 'A B=1'])
    assert.throws(() => parseEnv([bad]), InvalidArgumentError, bad);
});
