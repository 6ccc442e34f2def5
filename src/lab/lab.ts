/**
 * The lab's operations: bring it up, tear it down, report it, and inject
 * faults (kill, revive, partition, heal, shape). Each is idempotent where
 * that makes sense, and every one that builds something removes what it
 * built when it fails, so a failed command never leaves half a lab.
 *
 *   up:    state ─► network ─► hosts ─► supervisor        (any failure ─► teardown)
 *   down:  supervisor ─► processes (cgroups) ─► mount namespaces ─► netns ─► cgroup dirs ─► files
 *
 * `HAVEN_LAB_FAIL_AFTER=<stage>` makes `up` fail right after that stage (a
 * failpoint, for the tests that prove the cleanup).
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmdirSync } from 'node:fs';
import { cp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FailedPreconditionError, HavenError, InvalidArgumentError, NotFoundError } from '../core/errors.js';
import { lastLines } from '../core/exec.js';
import { callJson } from '../core/http-client.js';
import { netnsPath } from '../runtime/network.js';
import {
  ensureCgroup,
  inCgroupTree,
  isAlive,
  killCgroupTree,
  removeCgroupIfEmpty,
  removeCgroupTree,
} from './cgroups.js';
import { ETCD_BIN } from './etcd.js';
import { createHost, createHostScript, destroyHost, mountNsDirScript, unmountUnder } from './hosts.js';
import {
  attachScript,
  bridgeScript,
  containerLinks,
  deleteNetns,
  parseRate,
  runScript,
  setLinks,
  parseLoss,
  setLinkLoss,
  shapeLink,
} from './net.js';
import {
  BRIDGE_NETNS,
  CLIENT_ADDRESS,
  CLIENT_NETNS,
  CONTROLLER_ADDRESS,
  CONTROLLER_NETNS,
  CONTROLLER_URL,
  DASHBOARD_URL,
  HOST_VIEW,
  LAB_CGROUP,
  LAB_PATHS,
  LAB_PREFIX,
  MAX_CONTROLLERS,
  MAX_HOSTS,
  bridgeLink,
  controllerAddress,
  controllerUrl,
  hostAddress,
  hostCgroup,
  hostIndex,
  hostMountNs,
  hostNames,
  hostNetns,
} from './paths.js';
import {
  newLabSpec,
  readLabSpec,
  readSupervisorStatus,
  readToken,
  requireLabSpec,
  writeLabSpec,
  writeNewToken,
  type HostState,
  type LabHost,
  type LabSpec,
} from './state.js';
import { CLI_MAIN, cleanEnv, inCgroup, labEtcdMembers } from './supervisor.js';
import { issueLabTls } from './tls.js';

/** The stages of `up`, in order; `HAVEN_LAB_FAIL_AFTER` names one. */
export const UP_STAGES = ['state', 'network', 'hosts', 'supervisor'] as const;
export type UpStage = (typeof UP_STAGES)[number];

/** A host as `haven lab status` reports it. */
export interface LabHostStatus {
  name: string;
  namespace: string;
  address: string;
  state: HostState;
  agentPid: number | null;
  shapedRate: string | null;
  lossPercent: number | null;
}

/** `haven lab status --json` when a lab is up. */
export interface LabStatus {
  up: true;
  controller: {
    url: string;
    socket: string;
    namespace: string;
    pid: number | null;
    state: 'up' | 'partitioned';
  };
  client: { namespace: string; address: string };
  hosts: LabHostStatus[];
  token: string;
  supervisorPid: number | null;
  /** The dashboard's loopback forwarder to the controller's socket (see forward.ts). */
  forward: { url: string; pid: number | null };
  /** `sqlite` (one controller) or `etcd` (several, on a 3-member etcd). */
  store: 'sqlite' | 'etcd';
  /** With `etcd`: every controller (the socket above reaches the leader) and every etcd member. */
  controllers?: Array<{ name: string; url: string; pid: number | null }>;
  etcd?: Array<{ name: string; url: string; pid: number | null; state: 'up' | 'killed' }>;
  /**
   * A one-time login URL of the dashboard (`…/ui/login?token=…`, valid for
   * two minutes), added by {@link labDashboardLogin}; null when the
   * controller could not be asked.
   */
  dashboard?: string | null;
}

/** Mount points `up` needs outside the lab's own paths (a host's view of its disk and runc root). */
const MOUNT_POINTS = ['/run/haven', HOST_VIEW.runcRoot, HOST_VIEW.stateDir] as const;

/** Validates a host count for `up`. */
export function checkHostCount(count: number): number {
  if (!Number.isInteger(count) || count < 1 || count > MAX_HOSTS) {
    throw new InvalidArgumentError(`--hosts must be a whole number from 1 to ${MAX_HOSTS}, not ${count}`);
  }
  return count;
}

function failpoint(): UpStage | undefined {
  const stage = process.env.HAVEN_LAB_FAIL_AFTER;
  if (stage === undefined || stage === '') return undefined;
  if (!(UP_STAGES as readonly string[]).includes(stage)) {
    throw new InvalidArgumentError(
      `HAVEN_LAB_FAIL_AFTER must be one of ${UP_STAGES.join(', ')}, not "${stage}"`,
    );
  }
  return stage as UpStage;
}

/**
 * Brings up a lab of `count` hosts. A no-op when a lab of that size is up
 * (it only restarts a supervisor that died); an error when one of another
 * size is. Returns false when it was already up.
 */
export async function labUp(
  count: number,
  onStage: (stage: UpStage) => void = () => undefined,
  controlPlane: { store: 'sqlite' | 'etcd'; controllers: number } = { store: 'sqlite', controllers: 1 },
  options: { tls?: boolean } = {},
): Promise<boolean> {
  const tls = options.tls === true;
  checkHostCount(count);
  if (controlPlane.store === 'sqlite' && controlPlane.controllers !== 1)
    throw new InvalidArgumentError('several controllers need a shared store: --store etcd');
  if (
    !Number.isInteger(controlPlane.controllers) ||
    controlPlane.controllers < 1 ||
    controlPlane.controllers > MAX_CONTROLLERS
  )
    throw new InvalidArgumentError(`--controllers must be a whole number from 1 to ${MAX_CONTROLLERS}`);
  if (controlPlane.store === 'etcd' && !existsSync(ETCD_BIN))
    throw new FailedPreconditionError(
      `--store etcd needs ${ETCD_BIN} (Debian's etcd-server; scripts/setup-host.sh installs it)`,
    );
  const failAfter = failpoint();
  let existing: LabSpec | undefined;
  try {
    existing = readLabSpec();
  } catch {
    existing = undefined; // malformed: torn down below and made anew
  }
  if (existing) {
    if (
      existing.controlPlane.store !== controlPlane.store ||
      existing.controlPlane.controllers !== controlPlane.controllers
    ) {
      throw new FailedPreconditionError(
        `a lab with ${existing.controlPlane.controllers} controller(s) on ${existing.controlPlane.store} is up: run haven lab down first`,
      );
    }
    if (existing.tls !== tls)
      throw new FailedPreconditionError(
        `a lab ${existing.tls ? 'with' : 'without'} TLS is up: run haven lab down first`,
      );
    if (existing.hosts.length !== count) {
      throw new FailedPreconditionError(
        `a lab of ${existing.hosts.length} hosts is up: run haven lab down before asking for ${count}`,
      );
    }
    if (!supervisorPid()) await startSupervisor();
    return false;
  }
  // Whatever a crashed earlier run left (lab.json is written first, so without it there is no lab).
  await labDown();
  const stage = (name: UpStage): void => {
    onStage(name);
    if (failAfter === name) {
      throw new HavenError(`lab up: failing after stage "${name}" (HAVEN_LAB_FAIL_AFTER)`, 'internal');
    }
  };
  try {
    // state: the lab's directories, token and desired state.
    const createdDirs = MOUNT_POINTS.filter((dir) => !existsSync(dir));
    for (const dir of [
      LAB_PATHS.stateDir,
      LAB_PATHS.logsDir,
      LAB_PATHS.controllerState,
      LAB_PATHS.hostsDir,
    ]) {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
    }
    mkdirSync(LAB_PATHS.runDir, { recursive: true, mode: 0o755 });
    writeNewToken();
    const etcd = controlPlane.store === 'etcd';
    if (etcd) mkdirSync(LAB_PATHS.etcdDir, { recursive: true, mode: 0o700 });
    // With --tls: the lab's CA and every certificate, before anything that would use them starts.
    if (tls) await issueLabTls(hostNames(count), controlPlane.controllers);
    writeLabSpec({
      ...newLabSpec(hostNames(count), createdDirs, {
        ...controlPlane,
        etcd: etcd ? Object.fromEntries(labEtcdMembers().map((m) => [m.name, 'up' as const])) : {},
      }),
      tls,
    });
    for (const dir of createdDirs) mkdirSync(dir, { recursive: true });
    stage('state');

    // network: the bridge, the controller's and the client's namespaces.
    await runScript([
      ...bridgeScript(),
      ...attachScript('ctl', CONTROLLER_NETNS, CONTROLLER_ADDRESS),
      // Controllers 2… of a lab on etcd: more addresses on the controller namespace's one link.
      ...Array.from(
        { length: etcd ? controlPlane.controllers - 1 : 0 },
        (_, i) => `ip -n ${CONTROLLER_NETNS} addr add ${controllerAddress(i + 2)}/${LAB_PREFIX} dev eth0`,
      ),
      ...attachScript('client', CLIENT_NETNS, CLIENT_ADDRESS),
    ]);
    stage('network');

    // hosts: one script for all, so N hosts cost one process start.
    await runScript([...mountNsDirScript(), ...hostNames(count).flatMap((h) => createHostScript(h))]);
    stage('hosts');

    await startSupervisor();
    stage('supervisor');
  } catch (error) {
    const left = await labDown();
    if (left.length > 0 && error instanceof Error) {
      error.message += `\n  and the cleanup left: ${left.join('; ')}`;
    }
    throw error;
  }
  return true;
}

/** The supervisor's PID when it runs (checked against its cgroup, so a stale PID file names no stranger). */
export function supervisorPid(): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(LAB_PATHS.supervisorPid, 'utf8').trim());
  } catch {
    return undefined;
  }
  return Number.isInteger(pid) && pid > 0 && isAlive(pid) && inCgroupTree(pid, LAB_CGROUP) ? pid : undefined;
}

/** Starts the supervisor detached (own session, output to its log) and waits until it reports. */
async function startSupervisor(): Promise<void> {
  const generation = requireLabSpec().generation;
  const logPath = `${LAB_PATHS.logsDir}/supervisor.log`;
  const out = openSync(logPath, 'a');
  let exited: string | undefined;
  try {
    const child = spawn(process.execPath, [CLI_MAIN, 'lab', 'supervise'], {
      detached: true,
      stdio: ['ignore', out, out],
      env: cleanEnv(),
    });
    child.once('exit', (code, signal) => (exited = signal ?? `exit ${code ?? '?'}`));
    child.unref();
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && exited === undefined) {
      const status = readSupervisorStatus();
      // Its first status with lab.json's generation: every process it should run has been started.
      if (status && status.supervisorPid === child.pid && status.generation >= generation) return;
      await sleep(25);
    }
  } finally {
    closeSync(out);
  }
  const tail = existsSync(logPath) ? lastLines(readFileSync(logPath, 'utf8'), 5) : [];
  throw new HavenError(
    `the lab supervisor did not start (${exited ?? 'no status after 10 s'}); ${logPath}:\n  ${tail.join('\n  ')}`,
    'unavailable',
  );
}

/** Stops the supervisor (it stops its children first); SIGKILL if it takes over 5 s. */
async function stopSupervisor(): Promise<void> {
  const pid = supervisorPid();
  if (pid === undefined) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 5_000;
  while (isAlive(pid) && Date.now() < deadline) await sleep(25);
  if (isAlive(pid)) process.kill(pid, 'SIGKILL');
}

/** Tells the supervisor lab.json changed and waits (≤ 3 s) until it has acted on `generation`. */
async function notifySupervisor(generation: number): Promise<void> {
  const pid = supervisorPid();
  if (pid === undefined) return;
  process.kill(pid, 'SIGHUP');
  const deadline = Date.now() + 3_000;
  while (Date.now() < deadline && isAlive(pid)) {
    if ((readSupervisorStatus()?.generation ?? 0) >= generation) return;
    await sleep(10);
  }
}

/**
 * Tears the lab down completely, whatever state it is in (also after a
 * failed `up`): processes, namespaces, mounts, links, cgroups, files.
 * Idempotent. Returns what could not be removed (empty when clean).
 * When HAVEN_KEEP_LAB_LOGS names a directory, the lab's logs are copied
 * there first (they go with the lab; tests and benchmarks keep them so).
 */
export async function labDown(): Promise<string[]> {
  const keep = process.env.HAVEN_KEEP_LAB_LOGS;
  if (keep && existsSync(LAB_PATHS.logsDir)) {
    await cp(LAB_PATHS.logsDir, join(keep, `logs-${Date.now()}`), { recursive: true }).catch(() => undefined);
  }
  let spec: LabSpec | undefined;
  try {
    spec = readLabSpec();
  } catch {
    spec = undefined;
  }
  const left: string[] = [];
  await stopSupervisor();
  // The lab's own cgroup: a supervisor that did not stop, the controller, `lab exec` commands.
  const stray = await killCgroupTree(LAB_CGROUP);
  if (stray.length > 0) left.push(`processes ${stray.join(' ')} in cgroup ${LAB_CGROUP}`);
  // lab.json's hosts, and any other whose namespaces exist (lab.json may be gone after a crash).
  const hosts = new Set(spec?.hosts.map((h) => h.name));
  for (const host of hostNames(MAX_HOSTS)) {
    if (existsSync(netnsPath(hostNetns(host))) || existsSync(hostMountNs(host))) hosts.add(host);
  }
  for (const host of hosts) left.push(...(await destroyHost(host)));
  await unmountUnder(LAB_PATHS.runDir);
  for (const netns of [CONTROLLER_NETNS, CLIENT_NETNS, BRIDGE_NETNS]) await deleteNetns(netns);
  left.push(...(await removeCgroupTree(LAB_CGROUP)).map((d) => `cgroup ${d}`));
  removeCgroupIfEmpty('/haven');
  await unmountUnder(LAB_PATHS.stateDir); // none expected; never let rm cross into a mount
  await rm(LAB_PATHS.runDir, { recursive: true, force: true });
  await rm(LAB_PATHS.stateDir, { recursive: true, force: true });
  for (const dir of [...(spec?.createdDirs ?? [])].reverse()) {
    try {
      rmdirSync(dir);
    } catch {
      // Not empty (someone else uses it now) or already gone: leave it.
    }
  }
  return left;
}

/** The lab as `haven lab status` reports it, or `{ up: false }`. */
export function labStatus(): LabStatus | { up: false } {
  const spec = readLabSpec();
  if (!spec) return { up: false };
  const status = readSupervisorStatus();
  const supervisor = supervisorPid();
  const live = (pid: number | null | undefined, cgroup: string): number | null =>
    pid != null && isAlive(pid) && inCgroupTree(pid, cgroup) ? pid : null;
  return {
    up: true,
    controller: {
      url: CONTROLLER_URL,
      socket: LAB_PATHS.controllerSocket,
      namespace: CONTROLLER_NETNS,
      pid: live(status?.controller.pid, LAB_CGROUP),
      state: spec.controller.partitioned ? 'partitioned' : 'up',
    },
    client: { namespace: CLIENT_NETNS, address: CLIENT_ADDRESS },
    hosts: spec.hosts.map((h) => ({
      name: h.name,
      namespace: hostNetns(h.name),
      address: hostAddress(h.name),
      state: h.state,
      agentPid: h.state === 'killed' ? null : live(status?.hosts[h.name]?.pid, hostCgroup(h.name)),
      shapedRate: h.shapedRate,
      lossPercent: h.lossPercent,
    })),
    token: LAB_PATHS.token,
    supervisorPid: supervisor ?? null,
    forward: { url: DASHBOARD_URL, pid: live(status?.forward?.pid, LAB_CGROUP) },
    store: spec.controlPlane.store,
    ...(spec.controlPlane.store === 'etcd'
      ? {
          controllers: Array.from({ length: spec.controlPlane.controllers }, (_, i) => ({
            name: `c${i + 1}`,
            url: controllerUrl(i + 1),
            pid: live(status?.controllers?.[`c${i + 1}`]?.pid, LAB_CGROUP),
          })),
          etcd: labEtcdMembers().map((m) => ({
            name: m.name,
            url: m.clientUrl,
            pid: live(status?.etcd?.[m.name]?.pid, LAB_CGROUP),
            state: spec.controlPlane.etcd[m.name] ?? 'up',
          })),
        }
      : {}),
  };
}

/**
 * Waits until the lab serves: its controller answers through the socket and
 * every host that should be up has registered there and is up. `haven lab
 * up` returns only then, so that the command after it finds a cluster (the
 * supervisor has only started the processes when {@link labUp} returns).
 * @throws HavenError (`unavailable`) naming what is not ready, after `timeoutMs`.
 */
export async function labWaitReady(timeoutMs = 60_000): Promise<void> {
  const expected = requireLabSpec()
    .hosts.filter((h) => h.state === 'up')
    .map((h) => h.name);
  const deadline = Date.now() + timeoutMs;
  let waitingFor = 'the controller (no answer on its socket)';
  while (Date.now() < deadline) {
    try {
      const hosts = await callJson<Array<{ name: string; state: string }>>(
        `unix:${LAB_PATHS.controllerSocket}`,
        '/v1/hosts',
        readToken(),
        { timeoutMs: 2_000 },
      );
      const up = new Set(hosts.filter((h) => h.state === 'up').map((h) => h.name));
      const notUp = expected.filter((name) => !up.has(name));
      if (notUp.length === 0) return;
      waitingFor = `host${notUp.length > 1 ? 's' : ''} ${notUp.join(', ')} (not up at the controller)`;
    } catch {
      waitingFor = 'the controller (no answer on its socket)';
    }
    await sleep(50);
  }
  throw new HavenError(
    `the lab is not ready after ${timeoutMs / 1000} s: waiting for ${waitingFor}; logs in ${LAB_PATHS.logsDir}`,
    'unavailable',
    true,
  );
}

/**
 * A one-time login URL of the lab's dashboard, on the loopback forwarder:
 * asked of the controller through its socket (a login token is the
 * controller's to give). Null when the controller does not answer within
 * `timeoutMs` (partitioned, restarting).
 */
export async function labDashboardLogin(timeoutMs = 3_000): Promise<string | null> {
  try {
    const grant = await callJson<{ path: string }>(
      `unix:${LAB_PATHS.controllerSocket}`,
      '/v1/dashboard/logins',
      readToken(),
      { method: 'POST', body: {}, timeoutMs },
    );
    return `${DASHBOARD_URL}${grant.path}`;
  } catch {
    return null;
  }
}

function findHost(spec: LabSpec, name: string): LabHost {
  const host = spec.hosts.find((h) => h.name === name);
  if (!host) {
    throw new NotFoundError(
      `no lab host "${name}": this lab has ${spec.hosts.map((h) => h.name).join(', ')}`,
    );
  }
  return host;
}

function requireAlive(host: LabHost): void {
  if (host.state === 'killed') {
    throw new FailedPreconditionError(`host ${host.name} is killed: run haven lab revive ${host.name} first`);
  }
}

/**
 * Kills host `name` as a power cut would: marks it killed (the supervisor
 * restarts it no more), SIGKILLs its agent and everything in its cgroups,
 * deletes its network namespace (its link goes down), its mount namespace
 * and its disk. Idempotent.
 */
export async function labKillHost(name: string): Promise<void> {
  const spec = requireLabSpec();
  const host = findHost(spec, name);
  if (host.state !== 'killed') {
    host.state = 'killed';
    host.keepClient = false;
    host.shapedRate = null;
    host.lossPercent = null;
    // First lab.json, then the kill: the supervisor must not restart what we kill.
    await notifySupervisor(writeLabSpec(spec));
  }
  // The links go down before anything is killed, as when a machine loses power:
  // processes killed while still connected would close their sockets and send
  // resets, a courtesy a dead host never pays its clients.
  await setLinks([bridgeLink(name), ...(await containerLinks(name))], 'down').catch(() => undefined);
  const left = await destroyHost(name);
  if (left.length > 0) {
    throw new HavenError(`host ${name} is killed but some of it remains: ${left.join('; ')}`, 'internal');
  }
}

/**
 * Kills etcd member `name` (SIGKILL) and keeps it down — or, with `revive`,
 * has the supervisor start it again on its data dir (it rejoins). A lab
 * on etcd only. Idempotent.
 */
export async function labSetEtcdMember(name: string, state: 'up' | 'killed'): Promise<void> {
  const spec = requireLabSpec();
  if (spec.controlPlane.store !== 'etcd')
    throw new FailedPreconditionError('this lab runs no etcd (--store etcd)');
  if (!(name in spec.controlPlane.etcd))
    throw new NotFoundError(`no etcd member "${name}" (${Object.keys(spec.controlPlane.etcd).join(', ')})`);
  if (spec.controlPlane.etcd[name] === state) return;
  spec.controlPlane.etcd[name] = state;
  // The supervisor SIGKILLs a member no longer wanted, and starts one wanted again.
  await notifySupervisor(writeLabSpec(spec));
  if (state === 'killed') {
    const pid = readSupervisorStatus()?.etcd?.[name]?.pid ?? null;
    const deadline = Date.now() + 3_000;
    while (pid !== null && isAlive(pid) && Date.now() < deadline) await sleep(10);
  }
}

/** Makes killed host `name` anew (empty disk, fresh namespaces) and has the supervisor start its agent. */
export async function labRevive(name: string): Promise<boolean> {
  const spec = requireLabSpec();
  const host = findHost(spec, name);
  if (host.state !== 'killed') return false;
  await destroyHost(name); // leftovers of an interrupted kill
  try {
    await createHost(name);
  } catch (error) {
    await destroyHost(name);
    throw error;
  }
  host.state = 'up';
  await notifySupervisor(writeLabSpec(spec));
  return true;
}

/**
 * Partitions host `name` (or the controller): its bridge link goes down,
 * processes keep running. A host's container links go down too, unless
 * `keepClient` (then only the host itself is cut off; its containers keep
 * their path to the client).
 */
export async function labPartition(name: string, keepClient = false): Promise<void> {
  const spec = requireLabSpec();
  if (name === 'controller') {
    await setLinks([bridgeLink('ctl')], 'down');
    spec.controller.partitioned = true;
  } else {
    const host = findHost(spec, name);
    requireAlive(host);
    const links = [bridgeLink(name), ...(keepClient ? [] : await containerLinks(name))];
    await setLinks(links, 'down');
    host.state = 'partitioned';
    host.keepClient = keepClient;
  }
  writeLabSpec(spec);
}

/** Ends a partition: the links of host `name` (and its containers), or the controller's, come back up. */
export async function labHeal(name: string): Promise<void> {
  const spec = requireLabSpec();
  if (name === 'controller') {
    await setLinks([bridgeLink('ctl')], 'up');
    spec.controller.partitioned = false;
  } else {
    const host = findHost(spec, name);
    requireAlive(host);
    await setLinks([bridgeLink(name), ...(await containerLinks(name))], 'up');
    host.state = 'up';
    host.keepClient = false;
  }
  writeLabSpec(spec);
}

/**
 * Shapes host `name`'s link: `rate` (tc's words, e.g. `1gbit`) both ways,
 * and/or `loss` (e.g. `2%`) of its packets dropped at random both ways;
 * `off` removes either.
 */
export async function labShape(name: string, shape: { rate?: string; loss?: string }): Promise<void> {
  const spec = requireLabSpec();
  const host = findHost(spec, name);
  requireAlive(host);
  // Validate both before changing either.
  const rate = shape.rate === undefined || shape.rate === 'off' ? null : shape.rate;
  if (rate !== null) parseRate(rate);
  const loss = shape.loss === undefined || shape.loss === 'off' ? null : parseLoss(shape.loss);
  if (shape.rate !== undefined) {
    await shapeLink(name, hostNetns(name), rate);
    host.shapedRate = rate;
  }
  if (shape.loss !== undefined) {
    await setLinkLoss(hostNetns(name), loss);
    host.lossPercent = loss;
  }
  writeLabSpec(spec);
}

/**
 * The argv that runs `command` inside a lab namespace set: a host's network
 * and mount namespaces, or the client's or controller's network namespace.
 * The command joins the cgroup of its host (or the lab's), so `kill-host`
 * and `down` end it too, as they would on a real machine.
 */
export function labExecArgv(target: string, command: readonly string[]): string[] {
  if (command.length === 0) throw new InvalidArgumentError('nothing to run: haven lab exec TARGET -- CMD...');
  const spec = requireLabSpec();
  if (target === 'client' || target === 'controller') {
    const netns = target === 'client' ? CLIENT_NETNS : CONTROLLER_NETNS;
    ensureCgroup(`${LAB_CGROUP}/exec`);
    return inCgroup(`${LAB_CGROUP}/exec`, ['nsenter', `--net=${netnsPath(netns)}`, '--', ...command]);
  }
  if (hostIndex(target) === undefined) {
    throw new InvalidArgumentError(`unknown target "${target}": a host (h1…), client or controller`);
  }
  requireAlive(findHost(spec, target));
  const cgroup = `${hostCgroup(target)}/exec`;
  ensureCgroup(cgroup);
  return inCgroup(cgroup, [
    'nsenter',
    `--net=${netnsPath(hostNetns(target))}`,
    `--mount=${hostMountNs(target)}`,
    '--',
    ...command,
  ]);
}
