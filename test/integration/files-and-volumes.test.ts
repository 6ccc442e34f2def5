/**
 * A container appending to a file on a volume and to a file in its writable
 * layer, both held open across the checkpoint: after checkpoint/restore both
 * files are whole (consecutive numbers, no gap, no repeat) and the appends
 * go on — in both checkpoint modes.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { busyboxImage } from '../../src/fixtures/images.js';
import { TestHost } from '../support/test-host.js';

let t: TestHost;
before(async () => {
  t = await TestHost.create('files');
});
after(async () => t?.dispose());

const APPENDER = [
  '/bin/sh',
  '-c',
  // Both files stay open (fd 3 and 4) so CRIU must restore them at the right size.
  'mkdir -p /var/app; exec 3>>/data/volume.log 4>>/var/app/layer.log; i=0; while true; do i=$((i+1)); echo $i >&3; echo $i >&4; sleep 0.02; done',
];

function numbers(text: string): number[] {
  return text.trim().split('\n').map(Number);
}

function assertWhole(values: number[], label: string): void {
  assert.ok(values.length > 0, `${label} is empty`);
  values.forEach((v, i) => assert.equal(v, i + 1, `${label}: line ${i + 1} is ${v}`));
}

test(
  'volume and writable-layer files stay whole and keep growing across checkpoint/restore',
  { timeout: 120_000 },
  async () => {
    const image = await busyboxImage();
    const ran = await t.cli([
      'run',
      'appender',
      '--image',
      image,
      '--volume',
      'vol1:/data',
      '--',
      ...APPENDER,
    ]);
    assert.equal(ran.code, 0, ran.stderr);
    const volumeFile = join(t.config.stateDir, 'volumes', 'vol1', 'data', 'volume.log');
    const layerFile = join(t.config.stateDir, 'containers', 'appender', 'upper', 'var', 'app', 'layer.log');
    await sleep(500);

    for (const mode of [['--leave-running'], []]) {
      const ck = await t.cli(['checkpoint', 'appender', ...mode]);
      assert.equal(ck.code, 0, ck.stderr);
      if (mode.length === 0) {
        const restored = await t.cli(['restore', 'appender']);
        assert.equal(restored.code, 0, restored.stderr);
      }
      const before = numbers(await readFile(volumeFile, 'utf8')).length;
      await sleep(600);
      const afterRestore = numbers(await readFile(volumeFile, 'utf8'));
      assert.ok(
        afterRestore.length > before,
        `appends continue after ${mode.join(' ') || 'stop'} checkpoint`,
      );
    }

    // Retention: only the newest --keep checkpoints stay on disk.
    for (let i = 0; i < 2; i++)
      assert.equal((await t.cli(['checkpoint', 'appender', '--leave-running', '--keep', '2'])).code, 0);
    const kept = await readdir(join(t.config.stateDir, 'containers', 'appender', 'checkpoints'));
    assert.equal(kept.length, 2, `kept ${kept.join(', ')}`);
    assert.equal((await t.host.inspect('appender')).checkpoints.length, 2);

    const stopped = await t.cli(['stop', 'appender', '--time', '1']);
    assert.equal(stopped.code, 0, stopped.stderr);
    const volumeValues = numbers(await readFile(volumeFile, 'utf8'));
    const layerValues = numbers(await readFile(layerFile, 'utf8'));
    assertWhole(volumeValues, 'volume.log');
    assertWhole(layerValues, 'layer.log');
    assert.ok(Math.abs(volumeValues.length - layerValues.length) <= 1, 'both files advanced together');
  },
);
