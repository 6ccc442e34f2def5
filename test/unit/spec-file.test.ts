/**
 * Container spec files (`haven run -f`): the shipped examples parse into the
 * run request the flags would make, every mistake is an error naming the
 * file and the field, and flags override the file.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { runDraftFromFlags } from '../../src/cli/commands/run.js';
import { loadSpecFile, mergeRunDrafts, parseSpecFile } from '../../src/cli/spec-file.js';
import { clusterRunSchema } from '../../src/controller/schemas.js';
import { REPO_ROOT } from '../../src/core/config.js';
import { InvalidArgumentError } from '../../src/core/errors.js';

function errorOf(text: string): string {
  try {
    parseSpecFile(text, 'spec.yaml');
  } catch (error) {
    assert.ok(error instanceof InvalidArgumentError, String(error));
    return error.message;
  }
  assert.fail('expected an error');
}

test('examples/redis.yaml becomes a run request the controller accepts', async () => {
  const draft = await loadSpecFile(join(REPO_ROOT, 'examples', 'redis.yaml'));
  assert.equal(draft.name, 'redis');
  assert.equal(draft.image, 'redis');
  assert.deepEqual(draft.args?.slice(0, 3), ['/usr/bin/redis-server', '--bind', '0.0.0.0']);
  assert.ok(draft.args?.includes(''), 'an empty string argument survives (--save "")');
  assert.deepEqual(draft.env, ['TZ=UTC']);
  assert.deepEqual(draft.volumes, [{ volume: 'redis-data', path: '/data' }]);
  assert.equal(draft.cpuMillis, 500);
  assert.equal(draft.memoryBytes, 512 * 1024 * 1024);
  assert.deepEqual(draft.apart, ['redis-replica']);
  assert.deepEqual(draft.probe?.tcpSocket, { port: 6379 });
  assert.equal(draft.probe?.initialDelaySeconds, 2);
  assert.equal(draft.ha, 'checkpoint');
  assert.equal(draft.intervalMs, 1000);
  const request = clusterRunSchema.safeParse({ ...draft });
  assert.ok(request.success, JSON.stringify(!request.success && request.error.issues));
});

test('examples/watchdog.yaml: the watchdog, and an image path relative to the file', async () => {
  const draft = await loadSpecFile(join(REPO_ROOT, 'examples', 'watchdog.yaml'));
  assert.deepEqual(draft.watchdog, { timeoutSeconds: 2, initialDelaySeconds: 5 });
  assert.equal(draft.image, join(REPO_ROOT, 'examples', 'pinger-rootfs'));
  assert.ok(clusterRunSchema.safeParse({ ...draft, image: 'pinger' }).success);
});

test('the shipped examples are valid YAML the loader reads (no tabs, no duplicates)', async () => {
  for (const file of ['redis.yaml', 'watchdog.yaml']) {
    const text = await readFile(join(REPO_ROOT, 'examples', file), 'utf8');
    assert.doesNotThrow(() => parseSpecFile(text, file));
  }
});

test('a wrong type names the file and the field path', () => {
  const message = errorOf(
    'name: a\nimage: x\ncommand: [/bin/true]\nlivenessProbe:\n  tcpSocket: {port: 1}\n  periodSeconds: often\n',
  );
  assert.equal(message, 'spec.yaml: livenessProbe.periodSeconds: expected a number, got a string');
  assert.match(
    errorOf('name: a\ncommand: /bin/true\n'),
    /^spec\.yaml: command: expected a list, got a string$/,
  );
  assert.match(
    errorOf('name: a\nenv:\n  - {name: A, valu: 1}\n'),
    /env\[0\]\.valu: unknown field \(did you mean value\?\)/,
  );
});

test('unknown fields are errors, with a suggestion for a typo', () => {
  assert.match(
    errorOf('name: a\nlivenesProbe: {tcpSocket: {port: 1}}\n'),
    /^spec\.yaml: livenesProbe: unknown field \(did you mean livenessProbe\?\)$/,
  );
  assert.match(errorOf('name: a\nreplicas: 3\n'), /^spec\.yaml: replicas: unknown field$/);
  assert.match(
    errorOf('name: a\nwatchdog: {timeoutSecond: 2}\n'),
    /watchdog\.timeoutSecond: unknown field \(did you mean timeoutSeconds\?\)/,
  );
});

test('bad values: quantities, durations, enums, probes, YAML syntax', () => {
  assert.match(
    errorOf('resources: {memory: 512m}\n'),
    /resources\.memory: expected a memory size .* got "512m"/,
  );
  assert.match(errorOf('resources: {cpu: lots}\n'), /resources\.cpu: expected CPU such as 500m/);
  assert.match(errorOf('interval: 1 second\n'), /interval: expected a duration/);
  assert.match(
    errorOf('ha: always\n'),
    /ha: expected one of none, restart, checkpoint, continuous, got "always"/,
  );
  assert.match(
    errorOf('livenessProbe: {periodSeconds: 1}\n'),
    /livenessProbe: exactly one of exec, tcpSocket, httpGet/,
  );
  assert.match(errorOf('watchdog: {}\n'), /watchdog\.timeoutSeconds: is required/);
  assert.match(
    errorOf('watchdog: {timeoutSeconds: 0}\n'),
    /watchdog\.timeoutSeconds: Number must be greater/,
  );
  assert.match(errorOf('name: UPPER\n'), /^spec\.yaml: name: use lower-case/);
  assert.match(errorOf('name: a\nname: b\n'), /^spec\.yaml:2:\d+: duplicated mapping key/);
  assert.match(errorOf('name: [a\n'), /^spec\.yaml:\d+:\d+: /);
  assert.match(errorOf('- a\n- b\n'), /expected a mapping of fields/);
  assert.match(errorOf(''), /expected a mapping of fields/);
});

test('Kubernetes quantities: cpu in cores or millicores, memory in Ki/Mi/Gi or decimal units', () => {
  const resources = (r: string) => parseSpecFile(`resources: ${r}\n`, 'spec.yaml');
  assert.equal(resources('{cpu: 2}').cpuMillis, 2000);
  assert.equal(resources('{cpu: 0.25}').cpuMillis, 250);
  assert.equal(resources('{cpu: "1500m"}').cpuMillis, 1500);
  assert.equal(resources('{memory: 1Gi}').memoryBytes, 1024 ** 3);
  assert.equal(resources('{memory: 500M}').memoryBytes, 500e6);
  assert.equal(resources('{memory: 8388608}').memoryBytes, 8 * 1024 * 1024);
});

test('flags override the file: scalars replace, env and labels merge per key, -- replaces the command', () => {
  const file = parseSpecFile(
    [
      'name: web',
      'image: base',
      'command: [/bin/server]',
      'env: [{name: A, value: "1"}, {name: B, value: "2"}]',
      'nodeSelector: {zone: a, disk: ssd}',
      'ha: restart',
      'livenessProbe: {tcpSocket: {port: 80}}',
      'watchdog: {timeoutSeconds: 5}',
    ].join('\n'),
    'spec.yaml',
  );
  const flags = runDraftFromFlags({
    values: {
      env: ['B=3', 'C=4'],
      'label-require': ['zone=b'],
      ha: 'checkpoint',
      watchdog: '2s',
      'watchdog-delay': '1s',
    },
    positionals: ['web2'],
    rest: ['/bin/other', '--flag'],
  });
  const merged = mergeRunDrafts(file, flags);
  assert.equal(merged.name, 'web2');
  assert.equal(merged.image, 'base');
  assert.deepEqual(merged.args, ['/bin/other', '--flag']);
  assert.deepEqual(merged.env, ['A=1', 'B=3', 'C=4']);
  assert.deepEqual(merged.requireHostLabels, { zone: 'b', disk: 'ssd' });
  assert.equal(merged.ha, 'checkpoint');
  assert.deepEqual(merged.probe?.tcpSocket, { port: 80 }, 'no probe flag: the file probe stays');
  assert.deepEqual(merged.watchdog, { timeoutSeconds: 2, initialDelaySeconds: 1 });
  const withProbe = mergeRunDrafts(
    file,
    runDraftFromFlags({ values: { 'probe-exec': 'true' }, positionals: [], rest: [] }),
  );
  assert.deepEqual(withProbe.probe?.exec, { command: ['sh', '-c', 'true'] });
  assert.equal(withProbe.probe?.tcpSocket, undefined, 'a probe kind flag replaces the whole probe');
});

test('flags alone are checked as before', () => {
  assert.throws(
    () => runDraftFromFlags({ values: { 'probe-tcp': '1', 'probe-exec': 'x' }, positionals: [], rest: [] }),
    /one of --probe-exec/,
  );
  assert.throws(
    () => runDraftFromFlags({ values: { ha: 'maybe' }, positionals: [], rest: [] }),
    /invalid --ha/,
  );
  assert.throws(
    () => runDraftFromFlags({ values: { watchdog: 'soon' }, positionals: [], rest: [] }),
    /duration/,
  );
  assert.throws(
    () => runDraftFromFlags({ values: { 'watchdog-delay': '1s' }, positionals: [], rest: [] }),
    /needs --watchdog/,
  );
  assert.throws(
    () => runDraftFromFlags({ values: { cpu: '1.5' }, positionals: [], rest: [] }),
    /invalid --cpu/,
  );
});
