/**
 * bench/placement.ts: how long placement takes at cluster scale — 1,000
 * hosts, 10,000 containers placed one after another (each decision sees the
 * ones before it), with labels, anti-affinity pairs and some cordoned hosts.
 * The goal: placing 10,000 containers takes ≤ 1 s. Baseline in the
 * same run: the same decisions made naively (usage recomputed by scanning
 * every container for every host), to show what the per-decision index buys.
 *
 * Usage: node dist/bench/placement.js [--hosts 1000] [--containers 10000]
 */
import { performance } from 'node:perf_hooks';
import {
  place,
  placeAll,
  type ClusterSnapshot,
  type PlacedContainer,
  type PlacementRequest,
} from '../src/controller/placement.js';
import { benchArgs } from './support/args.js';

const { values } = benchArgs(import.meta.url, {
  options: { hosts: { type: 'string', default: '1000' }, containers: { type: 'string', default: '10000' } },
});
const hostCount = Number(values.hosts);
const containerCount = Number(values.containers);
const GiB = 1024 ** 3;

const snapshot: ClusterSnapshot = {
  hosts: Array.from({ length: hostCount }, (_, i) => ({
    name: `host-${String(i).padStart(4, '0')}`,
    cpuMillis: 32_000,
    memoryBytes: 128 * GiB,
    labels: { zone: `z${i % 3}` },
    schedulable: i % 50 !== 0, // 2% cordoned
  })),
  containers: [],
};
const requests: PlacementRequest[] = Array.from({ length: containerCount }, (_, i) => ({
  name: `c-${i}`,
  cpuMillis: 500 + (i % 7) * 100,
  memoryBytes: (1 + (i % 4)) * GiB,
  ...(i % 10 === 0 ? { requireHostLabels: { zone: `z${i % 3}` } } : {}),
  ...(i % 2 === 1 ? { apart: [`c-${i - 1}`] } : {}), // pairs kept apart, as a primary and its backup
}));

let started = performance.now();
const results = placeAll(snapshot, requests);
const indexedMs = performance.now() - started;
const placed = results.filter((r) => r.ok).length;

// Naive baseline: one independent decision per request on a growing snapshot (usage rescanned each time).
const naiveCount = Math.min(containerCount, 2000);
const containers: PlacedContainer[] = [];
started = performance.now();
for (const request of requests.slice(0, naiveCount)) {
  const result = place({ hosts: snapshot.hosts, containers }, request);
  if (result.ok) containers.push({ ...request, host: result.host, apart: request.apart ?? [] });
}
const naiveMs = ((performance.now() - started) / naiveCount) * containerCount;

console.log('| method | hosts | containers | placed | time (ms) | per decision (µs) |');
console.log('|---|---|---|---|---|---|');
console.log(
  `| placeAll (indexed batch) | ${hostCount} | ${containerCount} | ${placed} | ${indexedMs.toFixed(0)} | ${((indexedMs / containerCount) * 1000).toFixed(1)} |`,
);
console.log(
  `| place() per request, snapshot rebuilt (first ${naiveCount}, extrapolated) | ${hostCount} | ${containerCount} | - | ${naiveMs.toFixed(0)} | ${((naiveMs / containerCount) * 1000).toFixed(1)} |`,
);
