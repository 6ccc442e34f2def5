/**
 * The controller's image registry: an upload is stored under its hash and
 * found by name or ID; an image whose tar went missing from the disk is
 * refused with a clear error (a 409 on the route), never a 500.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { FailedPreconditionError } from '../../src/core/errors.js';
import { ImageRegistry } from '../../src/controller/image-registry.js';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-registry-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('an image whose tar is gone is refused with a clear error; found again once pushed', async () => {
  const registry = new ImageRegistry(dir);
  const tar = Buffer.from('not really a tar, but bytes with a hash');
  const image = await registry.put(Readable.from([tar]), { name: 'app' });
  const { path } = await registry.tarPath('app');
  assert.equal((await registry.tarPath(image.id)).path, path);

  await rm(path);
  await assert.rejects(registry.tarPath('app'), (error: Error) => {
    assert.ok(error instanceof FailedPreconditionError, String(error));
    assert.match(error.message, /its data is gone from the controller \(ENOENT\): push it again/);
    return true;
  });

  await registry.put(Readable.from([tar]), { name: 'app' });
  assert.equal((await registry.tarPath('app')).path, path);
});
