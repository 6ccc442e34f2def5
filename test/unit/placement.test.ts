/**
 * Placement's invariants, over random clusters and requests (fast-check):
 * never beyond a host's capacity, never on a cordoned or excluded host,
 * never against an anti-affinity rule or a required label, and it finds a
 * host whenever one fits.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  place,
  placeAll,
  type ClusterSnapshot,
  type HostSnapshot,
  type PlacedContainer,
  type PlacementRequest,
} from '../../src/controller/placement.js';

const GiB = 1024 ** 3;

/** CPU and memory already placed on a host, computed naively: the oracle for the index placement keeps. */
function usage(snapshot: ClusterSnapshot, host: string): { cpuMillis: number; memoryBytes: number } {
  let cpuMillis = 0;
  let memoryBytes = 0;
  for (const c of snapshot.containers) {
    if (c.host !== host) continue;
    cpuMillis += c.cpuMillis;
    memoryBytes += c.memoryBytes;
  }
  return { cpuMillis, memoryBytes };
}
const names = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'];

const hostArb = (name: string): fc.Arbitrary<HostSnapshot> =>
  fc.record({
    name: fc.constant(name),
    cpuMillis: fc.integer({ min: 500, max: 8000 }),
    memoryBytes: fc.integer({ min: 1, max: 16 }).map((g) => g * GiB),
    labels: fc.record({ zone: fc.constantFrom('x', 'y') }),
    schedulable: fc.boolean(),
  });

const clusterArb: fc.Arbitrary<ClusterSnapshot> = fc
  .integer({ min: 1, max: 6 })
  .chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => hostArb(`host-${i}`))))
  .chain((hosts) =>
    fc
      .array(
        fc.record({
          name: fc.constantFrom(...names),
          host: fc.constantFrom(...hosts.map((h) => h.name)),
          cpuMillis: fc.integer({ min: 0, max: 2000 }),
          memoryBytes: fc.integer({ min: 0, max: 4 }).map((g) => g * GiB),
          apart: fc.subarray(names, { maxLength: 2 }),
        }),
        { maxLength: 8 },
      )
      // A valid starting point: names unique, hosts within capacity.
      .map((all) => {
        const seen = new Set<string>();
        const containers: PlacedContainer[] = [];
        for (const c of all) {
          if (seen.has(c.name)) continue;
          const host = hosts.find((h) => h.name === c.host);
          const used = usage({ hosts, containers }, c.host);
          if (
            !host ||
            used.cpuMillis + c.cpuMillis > host.cpuMillis ||
            used.memoryBytes + c.memoryBytes > host.memoryBytes
          )
            continue;
          seen.add(c.name);
          containers.push(c);
        }
        return { hosts, containers };
      }),
  );

const requestArb = (cluster: ClusterSnapshot): fc.Arbitrary<PlacementRequest> =>
  fc.record(
    {
      name: fc.constantFrom('new-1', 'new-2', ...names),
      cpuMillis: fc.integer({ min: 0, max: 4000 }),
      memoryBytes: fc.integer({ min: 0, max: 8 }).map((g) => g * GiB),
      requireHostLabels: fc.option(fc.record({ zone: fc.constantFrom('x', 'y') }), { nil: undefined }),
      with: fc.subarray(names, { maxLength: 1 }),
      apart: fc.subarray(names, { maxLength: 3 }),
      excludeHosts: fc.subarray(
        cluster.hosts.map((h) => h.name),
        { maxLength: Math.min(2, cluster.hosts.length) },
      ),
    },
    { requiredKeys: ['name', 'cpuMillis', 'memoryBytes'] },
  );

const caseArb = clusterArb.chain((cluster) => fc.tuple(fc.constant(cluster), requestArb(cluster)));

/** Every rule, checked independently of the implementation. */
function allowed(cluster: ClusterSnapshot, request: PlacementRequest, host: HostSnapshot): boolean {
  const here = cluster.containers.filter((c) => c.host === host.name);
  const used = usage(cluster, host.name);
  return (
    host.schedulable &&
    !(request.excludeHosts ?? []).includes(host.name) &&
    Object.entries(request.requireHostLabels ?? {}).every(([k, v]) => host.labels[k] === v) &&
    (request.with ?? []).every((n) => here.some((c) => c.name === n)) &&
    !here.some((c) => (request.apart ?? []).includes(c.name) || c.apart.includes(request.name)) &&
    used.cpuMillis + request.cpuMillis <= host.cpuMillis &&
    used.memoryBytes + request.memoryBytes <= host.memoryBytes
  );
}

test('a chosen host satisfies every rule, and a host is found whenever one is allowed', () => {
  fc.assert(
    fc.property(caseArb, ([cluster, request]) => {
      const result = place(cluster, request);
      const anyAllowed = cluster.hosts.some((h) => allowed(cluster, request, h));
      if (result.ok) {
        const host = cluster.hosts.find((h) => h.name === result.host);
        assert.ok(host && allowed(cluster, request, host), `placed on ${result.host}, which breaks a rule`);
      } else {
        assert.equal(anyAllowed, false, 'refused although a host was allowed');
        assert.equal(Object.keys(result.reasons).length, cluster.hosts.length, 'one reason per host');
        assert.ok(!Object.values(result.reasons).includes('fits'), 'the fast check and the reasons agree');
      }
    }),
    { numRuns: 2000 },
  );
});

test('placing many in a row never overfills a host, uses no cordoned host, breaks no anti-affinity', () => {
  fc.assert(
    fc.property(
      clusterArb.chain((cluster) =>
        fc.tuple(fc.constant(cluster), fc.array(requestArb(cluster), { maxLength: 12 })),
      ),
      ([cluster, requests]) => {
        const unique = requests.map((r, i) => ({ ...r, name: `${r.name}-${i}` }));
        const results = placeAll(cluster, unique);
        const after: PlacedContainer[] = [...cluster.containers];
        results.forEach((result, i) => {
          const request = unique[i];
          if (!result.ok || !request) return;
          const host = cluster.hosts.find((h) => h.name === result.host);
          assert.ok(host && allowed({ hosts: cluster.hosts, containers: after }, request, host));
          after.push({ ...request, host: result.host, apart: request.apart ?? [] });
        });
        for (const host of cluster.hosts) {
          const used = usage({ hosts: cluster.hosts, containers: after }, host.name);
          assert.ok(used.cpuMillis <= host.cpuMillis && used.memoryBytes <= host.memoryBytes);
        }
      },
    ),
    { numRuns: 500 },
  );
});

test('the least loaded host wins, ties by name; a pin is still subject to the rules', () => {
  const hosts: HostSnapshot[] = ['h1', 'h2'].map((name) => ({
    name,
    cpuMillis: 4000,
    memoryBytes: 8 * GiB,
    labels: {},
    schedulable: true,
  }));
  const busy: ClusterSnapshot = {
    hosts,
    containers: [{ name: 'db', host: 'h1', cpuMillis: 2000, memoryBytes: GiB, apart: [] }],
  };
  assert.deepEqual(place(busy, { name: 'web', cpuMillis: 100, memoryBytes: GiB }), { ok: true, host: 'h2' });
  assert.deepEqual(place({ hosts, containers: [] }, { name: 'web', cpuMillis: 1, memoryBytes: 1 }), {
    ok: true,
    host: 'h1',
  });
  const pinned = place(busy, { name: 'web', cpuMillis: 100, memoryBytes: GiB, host: 'h1', apart: ['db'] });
  assert.equal(pinned.ok, false);
  assert.deepEqual(place(busy, { name: 'x', cpuMillis: 1, memoryBytes: 1, host: 'nope' }), {
    ok: false,
    reasons: { nope: 'no such host' },
  });
});
