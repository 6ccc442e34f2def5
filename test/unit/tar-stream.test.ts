/**
 * The tar stream reader that hashes archives as they are written and
 * extracted: it must see every member GNU tar writes (long names, pax
 * headers, links) with the right content hash, however the stream is cut
 * into chunks, and must notice a stream cut short.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, link, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { extractArchive } from '../../src/host/archive.js';
import { tarEnd, tarFile, TarFormatError, TarScanner, type TarMember } from '../../src/host/tar-stream.js';

let dir: string;
const longName = `${'d'.repeat(60)}/${'f'.repeat(80)}.img`;
const sha = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');
const content = new Map<string, Buffer>([
  ['tree/a.img', Buffer.alloc(70_000, 7)],
  ['tree/empty', Buffer.alloc(0)],
  ['tree/odd', Buffer.from('x'.repeat(513))],
  [`tree/${longName}`, Buffer.from('long')],
]);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'haven-tar-stream-'));
  for (const [name, data] of content) {
    await mkdir(join(dir, name, '..'), { recursive: true });
    await writeFile(join(dir, name), data);
  }
  await symlink('/etc', join(dir, 'tree', 'sym'));
  await link(join(dir, 'tree', 'odd'), join(dir, 'tree', 'hard'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function scan(archive: Buffer, chunk: number): { scanner: TarScanner; members: TarMember[] } {
  const members: TarMember[] = [];
  const scanner = new TarScanner((m) => members.push(m));
  for (let at = 0; at < archive.length; at += chunk) scanner.push(archive.subarray(at, at + chunk));
  scanner.finish();
  return { scanner, members };
}

/** The test tree as GNU tar writes it in `format` (`gnu`: long-name records; `pax`: extended headers). */
function treeArchive(format: string): Buffer {
  return execFileSync('tar', ['-c', `--format=${format}`, '--sort=name', '-f', '-', '-C', dir, 'tree']);
}

for (const format of ['gnu', 'pax']) {
  test(`every member of a ${format} archive is seen with its content hash, whatever the chunk size`, () => {
    const archive = treeArchive(format);
    for (const chunk of [1, 511, 512, 4096, 1 << 20]) {
      const { scanner, members } = scan(archive, chunk);
      for (const [name, data] of content) {
        assert.deepEqual(
          scanner.files.get(name),
          { size: data.length, sha256: sha(data) },
          `${name} @${chunk}`,
        );
      }
      assert.deepEqual(
        scanner.files.get('tree/hard'),
        scanner.files.get('tree/odd'),
        'a hard link has its target',
      );
      const sym = members.find((m) => m.name === 'tree/sym');
      assert.equal(sym?.type, '2');
      assert.equal(sym?.linkName, '/etc');
      assert.ok(
        members.some((m) => m.name === `tree/${longName}`),
        'long names come whole',
      );
      assert.ok(scanner.endOffset > 0);
    }
  });
}

for (const format of ['gnu', 'pax']) {
  test(`headers only: every member of a ${format} archive is seen while its content is skipped`, () => {
    const archive = treeArchive(format);
    const names = (members: TarMember[]): string[] => members.map((m) => `${m.type} ${m.name} ${m.linkName}`);
    const headers: TarMember[] = [];
    const scanner = new TarScanner((m) => headers.push(m), { headersOnly: true });
    let fed = 0;
    for (let offset = 0; !scanner.ended && offset < archive.length;) {
      const block = archive.subarray(offset, offset + 512);
      scanner.push(block);
      fed += block.length;
      offset += block.length + scanner.skipContent();
    }
    scanner.finish();
    assert.deepEqual(names(headers), names(scan(archive, 4096).members));
    assert.equal(scanner.files.size, 0, 'nothing hashed');
    assert.ok(fed < 70_000, `only headers were read (${fed} bytes of ${archive.length})`);
  });
}

test('headers only: an archive cut inside a member is noticed', () => {
  const archive = execFileSync('tar', ['-c', '-f', '-', '-C', dir, 'tree']);
  const cut = archive.subarray(0, 3000);
  const scanner = new TarScanner(() => undefined, { headersOnly: true });
  for (let offset = 0; !scanner.ended && offset < cut.length;) {
    const block = cut.subarray(offset, offset + 512);
    if (block.length === 0) break;
    scanner.push(block);
    offset += block.length + scanner.skipContent();
  }
  assert.throws(
    () => scanner.finish(),
    (e: unknown) => e instanceof TarFormatError && e.started,
  );
});

test('a stream cut short is noticed', () => {
  const archive = execFileSync('tar', ['-c', '-f', '-', '-C', dir, 'tree']);
  const scanner = new TarScanner();
  scanner.push(archive.subarray(0, 5000));
  assert.throws(
    () => scanner.finish(),
    (e: unknown) => e instanceof TarFormatError && e.started,
  );
  assert.throws(
    () => new TarScanner().push(Buffer.alloc(512, 65)),
    (e: unknown) => e instanceof TarFormatError && !e.started,
  );
});

test('members Haven appends are read back by GNU tar', async () => {
  const head = execFileSync('tar', ['-c', '-f', '-', '-C', dir, 'tree/odd']);
  const scanner = new TarScanner();
  scanner.push(head);
  const body = head.subarray(0, scanner.endOffset);
  const extra = tarFile('checkpoint/manifest.json', Buffer.from('{"ok":true}'), 1_700_000_000);
  const archive = Buffer.concat([body, extra, tarEnd(body.length + extra.length)]);
  assert.equal(archive.length % 10240, 0);
  const out = await mkdtemp(join(tmpdir(), 'haven-tar-append-'));
  try {
    execFileSync('tar', ['-x', '-f', '-', '-C', out], { input: archive });
    assert.equal(await readFile(join(out, 'checkpoint', 'manifest.json'), 'utf8'), '{"ok":true}');
    assert.equal((await readFile(join(out, 'tree', 'odd'))).length, 513);
    assert.deepEqual(scan(archive, 777).scanner.files.get('checkpoint/manifest.json'), {
      size: 11,
      sha256: sha('{"ok":true}'),
    });
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});

test('an archive that writes through a symbolic link of its own is refused before tar sees the member', async () => {
  const work = await mkdtemp(join(tmpdir(), 'haven-tar-symlink-'));
  try {
    const target = join(work, 'outside');
    await mkdir(join(work, 'src', 'checkpoint'), { recursive: true });
    await mkdir(target);
    await symlink(target, join(work, 'src', 'checkpoint', 'x'));
    const head = execFileSync('tar', ['-c', '-f', '-', '-C', join(work, 'src'), 'checkpoint']);
    const scanner = new TarScanner();
    scanner.push(head);
    const body = head.subarray(0, scanner.endOffset);
    const evil = tarFile('checkpoint/x/evil', Buffer.from('boom'), 1_700_000_000);
    const archive = join(work, 'evil.tar');
    await writeFile(archive, Buffer.concat([body, evil, tarEnd(body.length + evil.length)]));
    await mkdir(join(work, 'into'));
    await assert.rejects(extractArchive(archive, join(work, 'into')), /through a symbolic link it holds/);
    assert.equal(existsSync(join(target, 'evil')), false);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});
