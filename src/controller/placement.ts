/**
 * Placement: which host runs a container. A pure function of a cluster
 * snapshot and a request — no I/O, no clock, no randomness — so it can be
 * tested exhaustively (property tests in test/unit/placement.test.ts) and
 * replayed when a decision is questioned, as Nomad's scheduler is.
 *
 * Rules, in the vocabulary of VMware DRS:
 *   - a host must be schedulable (not cordoned, alive) and have room: the
 *     request's CPU and memory fit beside what is already placed there;
 *   - host affinity: every `requireHostLabels` entry must match the host's labels;
 *   - container affinity (`with`): the host must already run each named container;
 *   - container anti-affinity (`apart`): the host must run none of them, and no
 *     container already there may have declared itself apart from this one;
 *   - compatibility: a container whose state comes from a checkpoint taken on
 *     `origin` (migration, failover, a backup of its primary) goes only to a
 *     host that can run it — its CPU has every flag of the origin's, its
 *     CRIU and kernel are no older (`host/compat.ts`); a host that reported
 *     no facts is not judged (its agent still checks before restoring);
 *   - among the hosts left, the least loaded wins (the larger of its CPU and
 *     memory shares after placement), ties broken by name for determinism.
 */

import { incompatibility, type MachineFacts } from '../host/compat.js';

/** A host as placement sees it. */
export interface HostSnapshot {
  name: string;
  /** CPU capacity in millicores. */
  cpuMillis: number;
  memoryBytes: number;
  labels: Readonly<Record<string, string>>;
  /** Cordoned (draining) or not alive: takes nothing new. */
  schedulable: boolean;
  /** What the agent reported at registration: CPU flags, kernel, CRIU (absent: not known). */
  machine?: MachineFacts;
}

/** A container already placed on a host. */
export interface PlacedContainer {
  name: string;
  host: string;
  cpuMillis: number;
  memoryBytes: number;
  /** Names of containers this one must never share a host with. */
  apart: readonly string[];
}

/** The cluster at one instant. */
export interface ClusterSnapshot {
  hosts: readonly HostSnapshot[];
  containers: readonly PlacedContainer[];
}

/** What is asked for. */
export interface PlacementRequest {
  name: string;
  cpuMillis: number;
  memoryBytes: number;
  /** Labels the host must carry, e.g. `{ zone: "a" }`. */
  requireHostLabels?: Readonly<Record<string, string>>;
  /** Containers this one must run beside. */
  with?: readonly string[];
  /** Containers this one must never run beside. */
  apart?: readonly string[];
  /** Hosts to leave out (e.g. the primary's host when placing its backup). */
  excludeHosts?: readonly string[];
  /** Pin to one host (`haven run --host H`): still subject to every rule. */
  host?: string;
  /**
   * The host whose checkpoints this container's state will come from (where
   * it runs now, or ran): a candidate must be able to run them (see the
   * module comment). Absent for a fresh start.
   */
  origin?: string;
}

/** The decision: a host, or why none fits (one reason per host, for the operator). */
export type PlacementResult =
  { ok: true; host: string } | { ok: false; reasons: Readonly<Record<string, string>> };

/** Per-host totals and names, built once per decision (or batch) instead of per host. */
interface HostIndex {
  cpuMillis: number;
  memoryBytes: number;
  names: Set<string>;
  /** Names that containers on this host keep apart from. */
  apartFrom: Set<string>;
}

function indexOf(snapshot: ClusterSnapshot): Map<string, HostIndex> {
  const index = new Map<string, HostIndex>();
  for (const h of snapshot.hosts) {
    index.set(h.name, { cpuMillis: 0, memoryBytes: 0, names: new Set(), apartFrom: new Set() });
  }
  for (const c of snapshot.containers) addTo(index, c);
  return index;
}

function addTo(index: Map<string, HostIndex>, c: PlacedContainer): void {
  const entry = index.get(c.host);
  if (!entry) return; // a container on a host that left the snapshot takes no room anywhere
  entry.cpuMillis += c.cpuMillis;
  entry.memoryBytes += c.memoryBytes;
  entry.names.add(c.name);
  for (const name of c.apart) entry.apartFrom.add(name);
}

const alignedCache = new WeakMap<Map<string, HostIndex>, Array<HostIndex | undefined>>();

/** The index entries in the order of `hosts`, so the hot loop does no map lookups. */
function alignedIndex(
  hosts: readonly HostSnapshot[],
  index: Map<string, HostIndex>,
): Array<HostIndex | undefined> {
  let aligned = alignedCache.get(index);
  if (!aligned || aligned.length !== hosts.length) {
    aligned = hosts.map((h) => index.get(h.name));
    alignedCache.set(index, aligned);
  }
  return aligned;
}

/** Chooses a host for `request` in `snapshot`. */
export function place(snapshot: ClusterSnapshot, request: PlacementRequest): PlacementResult {
  return decide(snapshot.hosts, indexOf(snapshot), request);
}

/**
 * Places several containers one after another, each seeing the ones before
 * it (as a burst of `haven run` would). Pure, like {@link place}.
 */
export function placeAll(
  snapshot: ClusterSnapshot,
  requests: readonly PlacementRequest[],
): PlacementResult[] {
  const index = indexOf(snapshot);
  return requests.map((request) => {
    const result = decide(snapshot.hosts, index, request);
    if (result.ok) addTo(index, { ...request, host: result.host, apart: request.apart ?? [] });
    return result;
  });
}

function decide(
  hosts: readonly HostSnapshot[],
  index: Map<string, HostIndex>,
  request: PlacementRequest,
): PlacementResult {
  const candidates = request.host ? hosts.filter((h) => h.name === request.host) : hosts;
  if (request.host && candidates.length === 0) {
    return { ok: false, reasons: { [request.host]: 'no such host' } };
  }
  const rules = compileRules(request, hosts);
  let best: { host: string; load: number } | undefined;
  const aligned =
    candidates === hosts ? alignedIndex(hosts, index) : candidates.map((h) => index.get(h.name));
  for (let i = 0; i < candidates.length; i++) {
    const host = candidates[i];
    const here = aligned[i];
    if (!host || !here || !fits(host, here, request, rules)) continue;
    const load = Math.max(
      (here.cpuMillis + request.cpuMillis) / host.cpuMillis,
      (here.memoryBytes + request.memoryBytes) / host.memoryBytes,
    );
    if (!best || load < best.load || (load === best.load && host.name < best.host)) {
      best = { host: host.name, load };
    }
  }
  if (best) return { ok: true, host: best.host };
  // Only a refusal pays for the reasons, one per host, for the operator.
  const reasons: Record<string, string> = {};
  for (const host of candidates) {
    const here = index.get(host.name);
    reasons[host.name] = here ? (unfit(host, here, request, rules) ?? 'fits') : 'unknown host';
  }
  return { ok: false, reasons };
}

/** A request's rules in the shape the host loop checks fastest (made once per decision). */
interface CompiledRules {
  labels: ReadonlyArray<readonly [string, string]>;
  excluded: ReadonlySet<string>;
  with: readonly string[];
  apart: readonly string[];
  /** What the origin's checkpoints need, when it is known. */
  needs: MachineFacts | undefined;
}

function compileRules(request: PlacementRequest, hosts: readonly HostSnapshot[]): CompiledRules {
  return {
    labels: Object.entries(request.requireHostLabels ?? {}),
    excluded: new Set(request.excludeHosts ?? []),
    with: request.with ?? [],
    apart: request.apart ?? [],
    needs: request.origin ? hosts.find((h) => h.name === request.origin)?.machine : undefined,
  };
}

/** Why `host` cannot run what `rules` needs, or undefined (also when either side is unknown). */
function incompatible(host: HostSnapshot, rules: CompiledRules): string | undefined {
  if (!rules.needs || !host.machine || host.machine === rules.needs) return undefined;
  return incompatibility(rules.needs, host.machine);
}

/** The same rules as {@link unfit}, as a boolean: the hot loop builds no strings. */
function fits(host: HostSnapshot, here: HostIndex, request: PlacementRequest, rules: CompiledRules): boolean {
  if (!host.schedulable || here.cpuMillis + request.cpuMillis > host.cpuMillis) return false;
  if (here.memoryBytes + request.memoryBytes > host.memoryBytes) return false;
  if (rules.excluded.size > 0 && rules.excluded.has(host.name)) return false;
  for (const [key, value] of rules.labels) if (host.labels[key] !== value) return false;
  for (const name of rules.with) if (!here.names.has(name)) return false;
  for (const name of rules.apart) if (here.names.has(name)) return false;
  if (here.apartFrom.has(request.name)) return false;
  return incompatible(host, rules) === undefined;
}

function unfit(
  host: HostSnapshot,
  here: HostIndex,
  request: PlacementRequest,
  rules: CompiledRules,
): string | undefined {
  if (!host.schedulable) return 'cordoned or not alive';
  if (rules.excluded.has(host.name)) return 'excluded';
  for (const [key, value] of rules.labels) {
    if (host.labels[key] !== value) return `label ${key}=${value} missing`;
  }
  for (const name of rules.with) {
    if (!here.names.has(name)) return `affinity: "${name}" is not here`;
  }
  for (const name of rules.apart) {
    if (here.names.has(name)) return `anti-affinity: "${name}" is here`;
  }
  if (here.apartFrom.has(request.name))
    return `anti-affinity: a container here keeps apart from "${request.name}"`;
  if (here.cpuMillis + request.cpuMillis > host.cpuMillis) return 'not enough CPU';
  if (here.memoryBytes + request.memoryBytes > host.memoryBytes) return 'not enough memory';
  const why = incompatible(host, rules);
  if (why) return `incompatible: ${why}`;
  return undefined;
}
