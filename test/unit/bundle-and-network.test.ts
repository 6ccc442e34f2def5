import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ociConfig } from '../../src/runtime/runc/bundle.js';
import { containerNetnsName } from '../../src/runtime/network.js';
import { compileHostConfig } from '../../src/core/config.js';

test('the OCI config joins the network namespace Haven made and names the CRIU config', () => {
  const config = ociConfig({
    rootfs: '/s/c/rootfs',
    args: ['/bin/sh'],
    env: ['A=1'],
    hostname: 'c',
    netnsPath: '/run/netns/x',
    cgroupsPath: '/haven/h/c',
    memoryLimitBytes: 1 << 29,
    mounts: [{ source: '/s/v/data', destination: '/data' }],
    criuConfigFile: '/s/c/criu.conf',
    dev: { devDir: '/s/c/dev', shmDir: '/s/c/shm', emptyDir: '/s/c/empty' },
  }) as {
    linux: {
      namespaces: Array<{ type: string; path?: string }>;
      resources: { memory?: { limit: number } };
      cgroupsPath: string;
    };
    mounts: Array<{ destination: string; source: string }>;
    annotations: Record<string, string>;
    process: { terminal: boolean; env: string[] };
  };
  assert.deepEqual(
    config.linux.namespaces.find((n) => n.type === 'network'),
    { type: 'network', path: '/run/netns/x' },
  );
  assert.equal(config.linux.resources.memory?.limit, 1 << 29);
  assert.equal(config.annotations['org.criu.config'], '/s/c/criu.conf');
  assert.equal(config.process.terminal, false, 'CRIU needs pipes, not a terminal');
  assert.ok(config.mounts.some((m) => m.destination === '/data' && m.source === '/s/v/data'));
  assert.ok(config.process.env.includes('A=1'));
});

test('namespace names differ per host, so two hosts on one machine never collide', () => {
  const a = compileHostConfig({ hostName: 'a' }, {});
  const b = compileHostConfig({ hostName: 'b' }, {});
  assert.notEqual(containerNetnsName(a, 'redis'), containerNetnsName(b, 'redis'));
});
