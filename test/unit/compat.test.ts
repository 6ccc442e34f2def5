/**
 * Compatibility before moving: the rules (CPU flags, architecture, CRIU and
 * kernel versions), the test knob that hides CPU flags, and placement that
 * keeps a container's state — migration, failover, backups — off hosts that
 * cannot run its checkpoints, saying why.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { place, type ClusterSnapshot, type HostSnapshot } from '../../src/controller/placement.js';
import {
  incompatibility,
  majorMinor,
  maskedFlags,
  parseCpuFlags,
  type MachineFacts,
} from '../../src/host/compat.js';

const machine = (over: Partial<MachineFacts> = {}): MachineFacts => ({
  arch: 'x64',
  kernel: '6.18.0-1-amd64',
  criuVersion: '4.2.1',
  cpuFlags: ['avx', 'avx2', 'fpu', 'sse4_2'],
  ...over,
});

test('a host runs a checkpoint only with every CPU flag, the same architecture, and no older CRIU or kernel', () => {
  const needs = machine();
  assert.equal(incompatibility(needs, machine()), undefined);
  assert.equal(incompatibility(needs, machine({ cpuFlags: [...needs.cpuFlags, 'avx512f'] })), undefined);
  assert.match(incompatibility(needs, machine({ cpuFlags: ['avx', 'fpu'] }))!, /lacks .*SIGILL.*avx2 sse4_2/);
  assert.match(incompatibility(needs, machine({ arch: 'arm64' }))!, /taken on x64/);
  assert.match(
    incompatibility(needs, machine({ criuVersion: '4.1.1' }))!,
    /CRIU 4\.1\.1 is older than the 4\.2\.1/,
  );
  assert.equal(incompatibility(needs, machine({ criuVersion: '4.3' })), undefined);
  assert.equal(incompatibility(needs, machine({ criuVersion: '4.2.0' })), undefined); // same major.minor
  assert.match(
    incompatibility(needs, machine({ kernel: '6.1.0-28-amd64' }))!,
    /kernel 6\.1\.0-28-amd64 is older/,
  );
  assert.equal(incompatibility(needs, machine({ kernel: '6.19.1' })), undefined);
  assert.equal(incompatibility(needs, machine({ criuVersion: 'unknown' })), undefined);
  assert.deepEqual(majorMinor('6.18.0-1-amd64'), [6, 18]);
  assert.equal(majorMinor('unknown'), undefined);
});

test('the CPU mask test knob hides flags on every host or on the hosts it names, never adds one', () => {
  assert.deepEqual([...maskedFlags(undefined, 'h1')], []);
  assert.deepEqual([...maskedFlags('avx2, sse4_2', 'h1')].sort(), ['avx2', 'sse4_2']);
  assert.deepEqual([...maskedFlags('h2=avx2;h3=fpu,sse', 'h2')], ['avx2']);
  assert.deepEqual([...maskedFlags('h2=avx2;h3=fpu,sse', 'h3')].sort(), ['fpu', 'sse']);
  assert.deepEqual([...maskedFlags('h2=avx2', 'h1')], []);
  assert.deepEqual(parseCpuFlags('processor\t: 0\nflags\t\t: sse fpu  avx fpu\nbugs: x\n'), [
    'avx',
    'fpu',
    'sse',
  ]);
});

const host = (name: string, facts?: MachineFacts): HostSnapshot => ({
  name,
  cpuMillis: 4000,
  memoryBytes: 8e9,
  labels: {},
  schedulable: true,
  ...(facts ? { machine: facts } : {}),
});

test('placement keeps state from an origin off hosts that cannot run its checkpoints, and says why', () => {
  const snapshot: ClusterSnapshot = {
    hosts: [
      host('h1', machine()),
      host('h2', machine({ cpuFlags: ['avx', 'fpu', 'sse4_2'] })), // no avx2
      host('h3', machine({ cpuFlags: [...machine().cpuFlags, 'avx512f'] })),
    ],
    // h3 is busier: without the rule, h2 would win.
    containers: [{ name: 'other', host: 'h3', cpuMillis: 2000, memoryBytes: 1e9, apart: [] }],
  };
  const request = { name: 'db', cpuMillis: 500, memoryBytes: 1e9, excludeHosts: ['h1'] };
  assert.deepEqual(place(snapshot, request), { ok: true, host: 'h2' }); // a fresh start: anywhere
  assert.deepEqual(place(snapshot, { ...request, origin: 'h1' }), { ok: true, host: 'h3' });
  const refused = place(snapshot, { ...request, origin: 'h1', host: 'h2' });
  assert.equal(refused.ok, false);
  assert.match(!refused.ok ? refused.reasons.h2! : '', /^incompatible: .*avx2/);
  // From the host with fewer flags, every other host is fine.
  assert.deepEqual(place(snapshot, { ...request, origin: 'h2', excludeHosts: ['h2'] }), {
    ok: true,
    host: 'h1',
  });
  // A host that reported no facts is not judged; an origin without facts constrains nothing.
  const unknown: ClusterSnapshot = { hosts: [host('h1', machine()), host('h4')], containers: [] };
  assert.deepEqual(place(unknown, { ...request, origin: 'h1' }), { ok: true, host: 'h4' });
  const noOrigin: ClusterSnapshot = { hosts: [host('h1'), snapshot.hosts[1]!], containers: [] };
  assert.deepEqual(place(noOrigin, { ...request, origin: 'h1' }), { ok: true, host: 'h2' });
});
