/**
 * The lab's fixed layout: paths, namespace and link names, addresses. Other
 * code (the controller, the demo, end-to-end tests) depends on these names,
 * so they are a contract: change them only together with
 * docs/ARCHITECTURE.md ("The lab").
 *
 *   netns "hvlab" (bridge only, no address, no uplink)
 *   ┌──────────────────────────────────────────────────────────────┐
 *   │ hvbr0 ── hvl-ctl ── hvl-client ── hvl-h1 … hvl-hN ── c<h><ns> │
 *   └────────┬──────────┬─────────────┬──────────────────────┬─────┘
 *   hvlab-ctl 10.88.0.2 │   hvlab-h1 10.88.0.11 …           containers
 *            hvlab-client 10.88.255.10                     10.88.1.x …
 */
import { join } from 'node:path';
import { shortHash } from '../runtime/network.js';

/** Every path the lab owns. */
export const LAB_PATHS = {
  /** Runtime dir: sockets, PID files, mount-namespace files; gone at `down`. */
  runDir: '/run/haven/lab',
  /** The controller's Unix socket, for the CLI in the root namespace. */
  controllerSocket: '/run/haven/lab/controller.sock',
  /** One persistent mount-namespace file per host (a private bind mount of itself). */
  mntDir: '/run/haven/lab/mnt',
  supervisorPid: '/run/haven/lab/supervisor.pid',
  /** Written by the supervisor: the PIDs it runs now. */
  status: '/run/haven/lab/status.json',
  /** State dir: the token, desired state, controller state, host disks, logs. */
  stateDir: '/var/lib/haven-lab',
  token: '/var/lib/haven-lab/token',
  labJson: '/var/lib/haven-lab/lab.json',
  controllerState: '/var/lib/haven-lab/controller',
  /** With --store etcd: each member's data dir (etcd/<member>), and the controllers' shared image store. */
  etcdDir: '/var/lib/haven-lab/etcd',
  controllerImages: '/var/lib/haven-lab/controller/images',
  hostsDir: '/var/lib/haven-lab/hosts',
  logsDir: '/var/lib/haven-lab/logs',
} as const;

/** Where a host sees its own disk and runc root (Haven's defaults, so a host looks like a machine). */
export const HOST_VIEW = {
  stateDir: '/var/lib/haven',
  runcRoot: '/run/haven/runc',
} as const;

/** The most hosts a lab may have (addresses 10.88.0.11 … 10.88.0.26). */
export const MAX_HOSTS = 16;
/** The network namespace holding the bridge, where agents attach containers. */
export const BRIDGE_NETNS = 'hvlab';
export const BRIDGE = 'hvbr0';
export const CONTROLLER_NETNS = 'hvlab-ctl';
export const CONTROLLER_ADDRESS = '10.88.0.2';
export const CONTROLLER_PORT = 7070;
export const CONTROLLER_URL = `http://${CONTROLLER_ADDRESS}:${CONTROLLER_PORT}`;
/** The most controllers a lab on etcd may have (addresses 10.88.0.2 … 10.88.0.6, one namespace). */
export const MAX_CONTROLLERS = 5;
/** Controller `i` (1-based) of a lab on etcd: all in the controller's namespace, 10.88.0.(1+i). */
export function controllerAddress(i: number): string {
  return `10.88.0.${1 + i}`;
}
/** Controller `i`'s API. */
export function controllerUrl(i: number): string {
  return `http://${controllerAddress(i)}:${CONTROLLER_PORT}`;
}
/** Members of the lab's etcd: on loopback inside the controller's namespace, clients from this port up. */
export const ETCD_CLIENT_PORT = 2379;
/** Their peer ports (raft), from this port up. */
export const ETCD_PEER_PORT = 2479;
/** etcd members of a lab on etcd. */
export const ETCD_MEMBERS = 3;
/**
 * The machine's loopback port where the lab forwards to the controller's
 * socket, for a browser (the dashboard): `http://127.0.0.1:7080/ui/`.
 */
export const DASHBOARD_PORT = 7080;
export const DASHBOARD_URL = `http://127.0.0.1:${DASHBOARD_PORT}`;
export const CLIENT_NETNS = 'hvlab-client';
export const CLIENT_ADDRESS = '10.88.255.10';
export const AGENT_PORT = 7070;
/** Prefix length of the lab's one L2 segment, 10.88.0.0/16. */
export const LAB_PREFIX = 16;
/** The cgroup (in the pids and freezer hierarchies) of the supervisor and the controller. */
export const LAB_CGROUP = '/haven-lab';

/** `h1` … `hN`. */
export function hostNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `h${i + 1}`);
}

/** The 1-based index of a host name (`h3` → 3), or undefined when it is not one. */
export function hostIndex(name: string): number | undefined {
  const match = /^h([1-9][0-9]?)$/.exec(name);
  const index = match ? Number(match[1]) : NaN;
  return index >= 1 && index <= MAX_HOSTS ? index : undefined;
}

/** A host's network namespace. */
export function hostNetns(host: string): string {
  return `hvlab-${host}`;
}

/** A host's address: h1 = 10.88.0.11. */
export function hostAddress(host: string): string {
  const index = hostIndex(host);
  if (index === undefined) throw new Error(`not a lab host: ${host}`);
  return `10.88.0.${10 + index}`;
}

/** The bridge-side veth of a lab namespace (`hvl-h1`, `hvl-ctl`, `hvl-client`). */
export function bridgeLink(name: string): string {
  return `hvl-${name}`;
}

/** A host's mount-namespace file. */
export function hostMountNs(host: string): string {
  return join(LAB_PATHS.mntDir, host);
}

/** A host's disk, as seen from the root namespace. */
export function hostDisk(host: string): string {
  return join(LAB_PATHS.hostsDir, host);
}

/** A host's log file (its agent's stdout and stderr). */
export function hostLog(host: string): string {
  return join(LAB_PATHS.logsDir, `${host}.log`);
}

/**
 * A host's cgroup, relative to each hierarchy's root: its agent lives in
 * `<this>/agent`, and runc puts its containers in `<this>/<name>` (as
 * `ContainerHost.cgroupParent()` does for the host name).
 */
export function hostCgroup(host: string): string {
  return `/haven/${shortHash(host)}`;
}
